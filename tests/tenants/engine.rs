//! Hostile-tenant cases: engine.
