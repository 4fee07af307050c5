//! The ticker: enqueues every due tick of every schedule.
//!
//! Exactly once per tick, with any number of replicas: each tick is enqueued with a
//! unique key derived from (schedule, tick time), and the enqueue script refuses a
//! second job with that key inside its window. Every replica may enqueue every tick;
//! all but one are no-ops, so a replica dying at any moment neither skips nor doubles
//! a tick.
