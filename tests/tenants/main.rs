//! The hostile-tenant suite: tenant B's key tries to read, change, trigger or learn about
//! tenant A's things, and to crash, slow or starve the fleet. Each case asserts what a
//! user relies on: 404/422/429, nothing changed for A, the worker alive.

mod api;
mod engine;
mod handlers;
mod kinds;
mod secrets;
