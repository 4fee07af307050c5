//! Every kind Fleet ships, in one public list: the worker binary, the tests and the
//! benchmark build their registries from here. Each kind lives with its domain
//! (`fleet_webhooks::jobs`, `fleet_images::jobs`, `fleet_calendar::jobs`,
//! `fleet_comms::jobs`); `probe` is the scripted test kind.

pub mod probe;
