//! Hostile-tenant cases: api.
