//! Scheduler configuration: defaults, then a TOML file, then `FLEET_*` variables.

use crate::schedule::{Schedule, ScheduleSpec};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

/// The scheduler's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Redis URL.
    pub redis_url: String,
    /// Key prefix (must match the workers').
    pub prefix: String,
    /// PostgreSQL URL.
    pub database_url: String,
    /// Address of the HTTP API, `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (larger gets 413).
    pub max_body_bytes: usize,
    /// Log format: `text` or `json`.
    pub log_format: String,
    /// Schedules from the file (PostgreSQL's `schedules` table adds more at run time).
    pub schedules: Vec<ScheduleSpec>,
    /// Providers allowed to send webhooks to `/v1/intake/<name>`.
    pub intake: std::collections::BTreeMap<String, crate::api::intake::IntakeProvider>,
    /// What tenants may enqueue and where, and their default cap and quota per queue.
    pub tenants: crate::tenancy::TenancyConfig,
    /// `[api]`: per-key and per-provider request rates, request and statement timeouts,
    /// event streams per tenant.
    pub api: crate::api::limits::ApiLimits,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            redis_url: "redis://127.0.0.1:6379".into(),
            prefix: "fleet".into(),
            database_url: "postgres://postgres@127.0.0.1:5432/fleet".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1 << 20,
            log_format: "text".into(),
            schedules: Vec::new(),
            intake: Default::default(),
            tenants: Default::default(),
            api: Default::default(),
        }
    }
}

impl SchedulerConfig {
    /// Loads defaults, then `path`, then the environment, then checks everything
    /// (every schedule must parse), with messages that name the setting.
    pub fn load(path: Option<&Path>) -> Result<Self, String> {
        let mut cfg = match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| format!("cannot read config file {}: {e}", p.display()))?;
                toml::from_str(&text).map_err(|e| format!("config file {} is invalid: {e}", p.display()))?
            }
            None => SchedulerConfig::default(),
        };
        let env = |k: &str| std::env::var(k).ok();
        if let Some(v) = env("FLEET_REDIS_URL") {
            cfg.redis_url = v;
        }
        if let Some(v) = env("FLEET_PREFIX") {
            cfg.prefix = v;
        }
        if let Some(v) = env("FLEET_DATABASE_URL") {
            cfg.database_url = v;
        }
        if let Some(v) = env("FLEET_API_LISTEN") {
            cfg.listen = v.parse().map_err(|e| format!("FLEET_API_LISTEN={v:?} is invalid: {e}"))?;
        }
        if let Some(v) = env("FLEET_LOG_FORMAT") {
            cfg.log_format = v;
        }
        redis::Client::open(cfg.redis_url.as_str()).map_err(|e| format!("invalid setting redis_url: {e}"))?;
        if !cfg.database_url.starts_with("postgres://") && !cfg.database_url.starts_with("postgresql://") {
            return Err("invalid setting database_url: expected postgres://user@host:port/database".into());
        }
        if !matches!(cfg.log_format.as_str(), "text" | "json") {
            return Err(format!("invalid setting log_format {:?}: expected text or json", cfg.log_format));
        }
        cfg.api.validate()?;
        for (name, p) in &cfg.intake {
            p.validate(name)?;
        }
        for q in &cfg.tenants.queues {
            fleet_jobs::keys::validate_queue_name(q).map_err(|e| format!("invalid setting tenants.queues: {e}"))?;
        }
        for s in &cfg.schedules {
            Schedule::parse(s.clone()).map_err(|e| format!("invalid schedule: {e}"))?;
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_configs_load_with_their_api_limits() {
        for file in ["local", "compose"] {
            let path =
                std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../deploy/{file}/scheduler.toml"));
            let cfg = SchedulerConfig::load(Some(&path)).unwrap();
            assert_eq!(cfg.api, crate::api::limits::ApiLimits::default(), "{file}");
        }
    }

    #[test]
    fn api_limits_are_checked() {
        let cfg: SchedulerConfig = toml::from_str("[api]\nrate_per_key = 0").unwrap();
        assert!(cfg.api.validate().unwrap_err().contains("api.rate_per_key"));
        assert!(toml::from_str::<SchedulerConfig>("[api]\nrate_per_kee = 5").is_err());
        let cfg: SchedulerConfig = toml::from_str("[api]\nrate_per_key = 5").unwrap();
        assert_eq!((cfg.api.rate_per_key, cfg.api.burst_per_key), (5, 100));
    }
}
