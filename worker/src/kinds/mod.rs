//! Every kind Fleet ships, in one public list ([`shipped`]): the worker binary, the tests
//! and the benchmark build their registries from here. Each kind lives with its domain
//! (`fleet_webhooks::jobs`, `fleet_images::jobs`, `fleet_calendar::jobs`,
//! `fleet_comms::jobs`); [`probe`] is the scripted test kind.

pub mod probe;

use crate::{Registry, WorkerConfig};

/// Every kind Fleet ships, set up from the worker's config: the kinds that need
/// PostgreSQL when `database_url` is set (webhooks, images, calendar, comms), and the
/// scripted test kind `probe` when `test_kinds` is on. The worker binary runs exactly
/// this registry; tests and the benchmark start from it too.
pub async fn shipped(config: &WorkerConfig) -> anyhow::Result<Registry> {
    let mut registry = if config.test_kinds { Registry::builtin() } else { Registry::new() };
    if let Some(url) = &config.database_url {
        let db = crate::db::connect_and_migrate_tls(url, &config.database_tls).await?;
        let deliver =
            fleet_webhooks::jobs::Deliver::new(db.clone(), config.webhooks.clone()).map_err(anyhow::Error::msg)?;
        let client =
            fleet_jobs::Client::connect_with(&config.redis_url, &config.redis_tls, config.prefix.clone()).await?;
        // Vision providers use `[limits."ai:provider:*"]`, through the runtime's limits.
        let images = fleet_images::jobs::Images::new(db.clone(), &config.images).map_err(anyhow::Error::msg)?;
        // calendar.sync, comms.sync and webhook.deliver open sealed secrets with FLEET_SECRETS_KEY
        // (and FLEET_SECRETS_KEYS_OLD during a rotation).
        let secrets = fleet_accounts::secrets::SecretBox::from_env_if_set()
            .map_err(|e| anyhow::anyhow!("FLEET_SECRETS_KEY: {e}"))?;
        if let Some(b) = &secrets {
            tracing::info!(current = b.key_id(), old = ?b.old_key_ids().collect::<Vec<_>>(), "secrets keys loaded");
        }
        let relay = fleet_accounts::outbox::Relay::new(db.clone(), client.clone());
        match &config.calendar.push.public_url {
            Some(url) => tracing::info!(%url, "calendar push channels on: Google and Graph sources are notified there"),
            None => tracing::info!(
                "calendar push channels off (no calendar.push.public_url): Google and Graph sources stay polled"
            ),
        }
        let calendar = fleet_calendar::jobs::CalendarSyncHandler::new(db.clone(), secrets.clone())
            .with_settings(&config.calendar)
            .map_err(|e| anyhow::anyhow!("calendar.allow: {e}"))?
            .with_relay(relay.clone());
        registry = registry
            .with_database(db.clone())
            .register(calendar.push_handler())
            .register(calendar)
            .register(images.analyzer())
            .register(images.variants())
            // portfolio.select: the selection step of `POST /v1/portfolios`' workflows.
            .register(images.selector())
            // Endpoint secrets are sealed with FLEET_SECRETS_KEY too.
            .register(deliver.with_secrets(secrets.clone()))
            .register(fleet_webhooks::jobs::intake::Record::new(db.clone(), client.clone()))
            .register(fleet_webhooks::jobs::publish::Publish::new(db.clone(), client));
        // Source secrets need FLEET_SECRETS_KEY; without it, sources with a secret fail clearly.
        // New entries are published through the relay; SMS accounts use `[limits."sms:*"]`.
        // notify.send: SMTP relays from `[notify]`, in-app events on the tenant's stream.
        let notify = fleet_notify::jobs::SendNotification::new(db.clone(), &config.notify)
            .map_err(anyhow::Error::msg)?
            .with_stream(relay.client().clone());
        registry = registry.register(notify);
        registry = registry.register(
            fleet_comms::jobs::SyncSource::new(db, secrets)
                .with_allowed(config.comms.ranges().map_err(|e| anyhow::anyhow!("comms.allow: {e}"))?)
                .with_relay(relay),
        );
    } else {
        tracing::info!("no database_url: webhook and image jobs are not handled by this worker");
    }
    Ok(registry)
}
