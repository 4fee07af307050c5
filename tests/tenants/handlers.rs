//! Hostile-tenant cases: handlers.
