//! The HTTP API (next).
