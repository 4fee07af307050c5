//! # fleet-accounts
//!
//! What every connected account has, whatever its domain (a CalDAV or Google calendar, an
//! IMAP mailbox, an SMS account, a webhook endpoint's signing secret): one home, so no
//! domain borrows another's.
//!
//! ## Layout
//!
//! * [`secrets`]: secrets at rest, sealed with AES-256-GCM under versioned keys
//!   (`FLEET_SECRETS_KEY`, `FLEET_SECRETS_KEYS_OLD`), bound to their row.
//! * [`cron`]: cron expressions as Fleet reads them (schedules and source sync schedules),
//!   refusing those that never fire.
//! * [`sources`]: what calendar and comms sources share in the API, `fleetctl` and the
//!   ticker: store errors, sync schedules and status, sealing, one pending sync per source.
//! * [`allow`]: the address ranges a tenant's servers may be at besides public ones (the
//!   SSRF guard's allow-list, per domain in the worker's config).
//! * [`outbox`]: the relay that publishes domain events written in a change's own
//!   transaction to the tenant's webhooks and live stream, exactly once per change.
//! * [`oauth`] (feature `oauth`, which the domains' `jobs` features enable): OAuth 2.0
//!   access-token refresh for provider calendars and XOAUTH2 mailboxes alike.

pub mod allow;
pub mod cron;
#[cfg(feature = "oauth")]
pub mod oauth;
pub mod outbox;
pub mod secrets;
pub mod sources;
