//! Hostile-tenant cases: secrets.
