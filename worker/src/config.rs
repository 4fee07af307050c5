//! Worker configuration: defaults, then a TOML file, then `FLEET_*` environment
//! variables; checked at start with readable errors.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// One queue this worker serves.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Queue name.
    pub name: String,
    /// Jobs of this queue running at once in this process.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Most jobs leased per fetch (defaults to the concurrency, at most 100).
    #[serde(default)]
    pub fetch_batch: Option<usize>,
    /// Partitions of a hot queue (2 to 64; unset or 1: one queue, as always): the queue
    /// is that many physical queues, each its own hash tag (on a Redis Cluster, spread
    /// over the primaries), served here by one engine each, all taking their slots from
    /// one pool of `concurrency`. Every worker, scheduler and client of the queue must
    /// declare the same number (see `fleet_jobs::partitions`). The queue's own name is
    /// served too, with one slot: a job enqueued there by a producer that was not told of
    /// the partitions (a handler's or batch callback's enqueue, an older client) still runs.
    #[serde(default)]
    pub partitions: Option<u32>,
}

/// One physical queue a [`QueueConfig`] stands for, as one engine serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Physical {
    /// The physical queue's name.
    pub queue: String,
    /// Jobs it may run at once here.
    pub concurrency: usize,
    /// Most jobs leased per fetch.
    pub fetch_batch: usize,
    /// Whether its `concurrency` is the logical queue's, shared with the other partitions
    /// (one pool of slots for all of them), rather than its own.
    pub shared: bool,
}

impl QueueConfig {
    /// The physical queues this entry stands for: the queue itself, or its partitions,
    /// which share the queue's concurrency (a hot partition may use the slots idle ones
    /// leave; fetchers waiting for a slot get them in turn), plus the logical name with one
    /// slot of its own.
    pub fn physical(&self) -> Vec<Physical> {
        let n = self.partitions.unwrap_or(1).max(1);
        let batch = self.fetch_batch.unwrap_or(self.concurrency.min(100));
        let one = |queue: String, concurrency: usize, fetch_batch: usize, shared: bool| Physical {
            queue,
            concurrency,
            fetch_batch,
            shared,
        };
        if n == 1 {
            return vec![one(self.name.clone(), self.concurrency, batch, false)];
        }
        // A fetch takes at most a partition's fair share of the slots, so one partition's
        // backlog cannot take every slot in one call while the others wait.
        let share = self.concurrency.div_ceil(n as usize).max(1);
        let mut queues: Vec<Physical> = fleet_jobs::partitions::partition_queues(&self.name, n)
            .into_iter()
            .map(|p| one(p, self.concurrency, batch.min(share), true))
            .collect();
        // The catch-all: the logical name itself, for producers that do not know the partitions.
        queues.push(one(self.name.clone(), 1, 1, false));
        queues
    }
}

fn default_concurrency() -> usize {
    10
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The worker's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Redis URL, e.g. `redis://127.0.0.1:6379/0`, or `rediss://` for TLS; for a Redis
    /// Cluster, several node URLs separated by commas, or one `redis+cluster://` URL (see
    /// `fleet_jobs::conn`).
    pub redis_url: String,
    /// `[redis_tls]`: CA file and client certificate of a `rediss://` URL
    /// (`FLEET_REDIS_CA_FILE`, `FLEET_REDIS_CLIENT_CERT_FILE`, `FLEET_REDIS_CLIENT_KEY_FILE`).
    pub redis_tls: fleet_jobs::RedisTls,
    /// Key prefix: the deployment's namespace in Redis.
    pub prefix: String,
    /// Address of the `/healthz`, `/readyz` and `/metrics` endpoint; empty string disables it.
    pub listen: Option<SocketAddr>,
    /// Queues served.
    pub queues: Vec<QueueConfig>,
    /// Lease length in milliseconds; renewed every third of it. A job whose worker
    /// dies returns to ready this long after its last renewal.
    pub lease_ms: u64,
    /// How long running jobs may take to finish after SIGTERM, in seconds.
    pub shutdown_grace_secs: u64,
    /// Default timeout of one attempt, in seconds.
    pub job_timeout_secs: u64,
    /// Threads of the bounded pool for CPU-heavy work.
    pub cpu_threads: usize,
    /// How long succeeded job records are kept, in seconds (0 deletes them at once).
    pub retention_secs: u64,
    /// Most dead letters kept per queue.
    pub dead_max_count: u64,
    /// Oldest dead letter kept, in seconds.
    pub dead_max_age_secs: u64,
    /// Attempt records kept per job.
    pub history_cap: u32,
    /// Times a job may be running when its worker stops before it goes to the dead
    /// letters as "crashed its worker N times" (a queue's `conf` field `crash_limit`
    /// overrides it at run time).
    pub crash_limit: u32,
    /// Log format.
    pub log_format: LogFormat,
    /// Limits by limit key or key prefix ending in `*`, e.g.
    /// `[limits."webhook:endpoint:*"] rate = 20`.
    pub limits: std::collections::BTreeMap<String, fleet_jobs::limits::LimitSpec>,
    /// PostgreSQL URL; job kinds that keep records there (webhooks) run only with it.
    pub database_url: Option<String>,
    /// `[database_tls]`: `sslmode` and `sslrootcert` of the PostgreSQL connections
    /// (`FLEET_DATABASE_SSLMODE`, `FLEET_DATABASE_SSLROOTCERT`); see `fleet_kit::postgres`.
    pub database_tls: fleet_kit::postgres::PgTls,
    /// Webhook delivery settings.
    pub webhooks: fleet_webhooks::jobs::WebhookSettings,
    /// Image analysis and variants: object store, memory budget, vision providers.
    pub images: fleet_images::jobs::ImageSettings,
    /// Calendar sync settings (the SSRF guard's allow-list for calendar servers, and push
    /// channels: `[calendar.push] public_url`).
    pub calendar: fleet_calendar::jobs::CalendarSettings,
    /// Communication sync settings (the SSRF guard's allow-list for mail servers and SMS APIs).
    pub comms: fleet_calendar::jobs::SourceSettings,
    /// Notifications (`[notify]`): SMTP relays in failover order, the From address, the
    /// one-click unsubscribe URL.
    pub notify: fleet_notify::jobs::NotifySettings,
    /// Run the test and benchmark kind `probe` (which can abort the process on request).
    /// Off in production; the local demo, tests and benchmarks turn it on
    /// (`test_kinds = true` or `FLEET_TEST_KINDS=1`).
    pub test_kinds: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            redis_tls: Default::default(),
            prefix: "fleet".to_owned(),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            queues: vec![QueueConfig {
                name: "default".to_owned(),
                concurrency: 10,
                fetch_batch: None,
                partitions: None,
            }],
            lease_ms: 30_000,
            shutdown_grace_secs: 30,
            job_timeout_secs: 300,
            cpu_threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            retention_secs: 24 * 3600,
            dead_max_count: 100_000,
            dead_max_age_secs: 30 * 24 * 3600,
            history_cap: 10,
            crash_limit: 3,
            log_format: LogFormat::Text,
            limits: Default::default(),
            database_url: None,
            database_tls: Default::default(),
            webhooks: Default::default(),
            images: Default::default(),
            calendar: Default::default(),
            comms: Default::default(),
            notify: Default::default(),
            test_kinds: false,
        }
    }
}

/// A configuration problem, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// File path.
        path: String,
        /// Parser message (names the key and line).
        message: String,
    },
    /// An environment variable has a bad value.
    #[error("environment variable {var}={value:?} is invalid: {message}")]
    Env {
        /// Variable name.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// A setting is out of range.
    #[error("invalid setting {key}: {message}")]
    Invalid {
        /// Setting name.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl WorkerConfig {
    /// Loads defaults, then `path` (if given), then the environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg = match path {
            Some(p) => Self::from_file(p)?,
            None => WorkerConfig::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a TOML file (unset keys keep their defaults).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let display = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: display.clone(), source })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse { path: display, message })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies `FLEET_*` overrides read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn num<T: std::str::FromStr>(var: &'static str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.trim().parse().map_err(|e: T::Err| ConfigError::Env { var, value: v.to_owned(), message: e.to_string() })
        }
        if let Some(v) = get("FLEET_REDIS_URL") {
            self.redis_url = v;
        }
        self.redis_tls.apply_env(&get);
        if let Some(v) = get("FLEET_DATABASE_URL") {
            self.database_url = if v.trim().is_empty() { None } else { Some(v) };
        }
        self.database_tls.apply_env(&get);
        if let Some(v) = get("FLEET_WEBHOOK_ALLOW") {
            self.webhooks.allow = v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        }
        if let Some(v) = get("FLEET_CALENDAR_ALLOW") {
            self.calendar.allow = v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        }
        if let Some(v) = get("FLEET_CALENDAR_PUSH_URL") {
            self.calendar.push.public_url = Some(v.trim().to_owned()).filter(|v| !v.is_empty());
        }
        if let Some(v) = get("FLEET_COMMS_ALLOW") {
            self.comms.allow = v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        }
        if let Some(v) = get("FLEET_TEST_KINDS") {
            self.test_kinds = match v.trim() {
                "1" | "true" => true,
                "0" | "false" | "" => false,
                _ => {
                    return Err(ConfigError::Env {
                        var: "FLEET_TEST_KINDS",
                        value: v,
                        message: "expected 1/true or 0/false".into(),
                    });
                }
            };
        }
        if let Some(v) = get("FLEET_PREFIX") {
            self.prefix = v;
        }
        if let Some(v) = get("FLEET_LISTEN") {
            self.listen = if v.trim().is_empty() { None } else { Some(num("FLEET_LISTEN", &v)?) };
        }
        if let Some(v) = get("FLEET_QUEUES") {
            self.queues = parse_queues(&v).map_err(|message| ConfigError::Env {
                var: "FLEET_QUEUES",
                value: v.clone(),
                message,
            })?;
        }
        if let Some(v) = get("FLEET_CRASH_LIMIT") {
            self.crash_limit = num("FLEET_CRASH_LIMIT", &v)?;
        }
        if let Some(v) = get("FLEET_LEASE_MS") {
            self.lease_ms = num("FLEET_LEASE_MS", &v)?;
        }
        if let Some(v) = get("FLEET_SHUTDOWN_GRACE_SECS") {
            self.shutdown_grace_secs = num("FLEET_SHUTDOWN_GRACE_SECS", &v)?;
        }
        if let Some(v) = get("FLEET_JOB_TIMEOUT_SECS") {
            self.job_timeout_secs = num("FLEET_JOB_TIMEOUT_SECS", &v)?;
        }
        if let Some(v) = get("FLEET_CPU_THREADS") {
            self.cpu_threads = num("FLEET_CPU_THREADS", &v)?;
        }
        if let Some(v) = get("FLEET_RETENTION_SECS") {
            self.retention_secs = num("FLEET_RETENTION_SECS", &v)?;
        }
        if let Some(v) = get("FLEET_DEAD_MAX_COUNT") {
            self.dead_max_count = num("FLEET_DEAD_MAX_COUNT", &v)?;
        }
        if let Some(v) = get("FLEET_DEAD_MAX_AGE_SECS") {
            self.dead_max_age_secs = num("FLEET_DEAD_MAX_AGE_SECS", &v)?;
        }
        if let Some(v) = get("FLEET_LOG_FORMAT") {
            self.log_format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => {
                    return Err(ConfigError::Env {
                        var: "FLEET_LOG_FORMAT",
                        value: v,
                        message: "expected \"text\" or \"json\"".into(),
                    });
                }
            };
        }
        Ok(())
    }

    /// Checks ranges and names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        match fleet_jobs::RedisClient::open_with(&self.redis_url, &self.redis_tls) {
            Ok(_) => {}
            Err(e @ fleet_jobs::Error::RedisUrl(_)) => return invalid("redis_url", e.to_string()),
            Err(fleet_jobs::Error::Redis(e)) => {
                let url = fleet_net::redact_url(&self.redis_url);
                return invalid("redis_url", format!("{url:?} is not a Redis URL ({e})"));
            }
            Err(e) => return invalid("redis_tls", e.to_string()),
        }
        if let Err(m) = self.database_tls.validate() {
            return invalid("database_tls", m);
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return invalid("prefix", "must be non-empty and contain no braces".into());
        }
        if self.queues.is_empty() {
            return invalid("queues", "at least one queue is needed".into());
        }
        let mut seen = std::collections::HashSet::new();
        for q in &self.queues {
            if let Err(m) = fleet_jobs::keys::validate_queue_name(&q.name) {
                return invalid("queues.name", m);
            }
            if !seen.insert(&q.name) {
                return invalid("queues.name", format!("queue {:?} is listed twice", q.name));
            }
            if q.concurrency == 0 || q.concurrency > 100_000 {
                return invalid(
                    "queues.concurrency",
                    format!("{} for queue {:?}: must be 1 to 100000", q.concurrency, q.name),
                );
            }
            if let Some(b) = q.fetch_batch
                && (b == 0 || b > 1000)
            {
                return invalid("queues.fetch_batch", format!("{b} for queue {:?}: must be 1 to 1000", q.name));
            }
            if let Some(n) = q.partitions
                && (n == 0 || n > fleet_jobs::partitions::MAX_PARTITIONS)
            {
                return invalid(
                    "queues.partitions",
                    format!("{n} for queue {:?}: must be 1 to {}", q.name, fleet_jobs::partitions::MAX_PARTITIONS),
                );
            }
        }
        if self.lease_ms < 100 || self.lease_ms > 3_600_000 {
            return invalid("lease_ms", format!("{}: must be 100 to 3600000", self.lease_ms));
        }
        if self.cpu_threads == 0 {
            return invalid("cpu_threads", "must be at least 1".into());
        }
        if self.job_timeout_secs == 0 {
            return invalid("job_timeout_secs", "must be at least 1".into());
        }
        if self.history_cap == 0 {
            return invalid("history_cap", "must be at least 1".into());
        }
        if self.crash_limit == 0 {
            return invalid("crash_limit", "must be at least 1".into());
        }
        for c in &self.webhooks.allow {
            if let Err(m) = c.parse::<fleet_net::Cidr>() {
                return invalid("webhooks.allow", m);
            }
        }
        for (setting, allow) in [("calendar.allow", &self.calendar.allow), ("comms.allow", &self.comms.allow)] {
            for c in allow {
                if let Err(m) = c.parse::<fleet_net::Cidr>() {
                    return invalid(setting, m);
                }
            }
        }
        if let Err(m) = self.calendar.push.validate() {
            return invalid("calendar.push", m);
        }
        if self.database_url.is_some() && self.lease_ms < self.webhooks.timeout_ms + 5_000 {
            return invalid(
                "lease_ms",
                format!(
                    "{} is shorter than webhooks.timeout_ms + 5 s ({}): a slow delivery would be sent twice",
                    self.lease_ms,
                    self.webhooks.timeout_ms + 5_000
                ),
            );
        }
        for (pattern, spec) in &self.limits {
            let key = pattern.strip_suffix('*').unwrap_or(pattern);
            if !key.is_empty()
                && let Err(m) = fleet_jobs::limits::validate_limit_key(key)
            {
                return invalid("limits", m);
            }
            if let Err(m) = spec.validate() {
                return invalid("limits", format!("{pattern:?}: {m}"));
            }
        }
        Ok(())
    }

    /// The lease length.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
}

/// Parses `name=concurrency[,name=concurrency...]` (a bare name gets concurrency 10).
fn parse_queues(v: &str) -> Result<Vec<QueueConfig>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|part| {
            let (name, conc) = match part.split_once('=') {
                Some((n, c)) => (n.trim(), c.trim().parse().map_err(|_| format!("{c:?} is not a number in {part:?}"))?),
                None => (part, default_concurrency()),
            };
            Ok(QueueConfig { name: name.to_owned(), concurrency: conc, fetch_batch: None, partitions: None })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partitioned_queue_is_its_partitions_plus_the_logical_name_as_a_catch_all() {
        let q = QueueConfig { name: "emails".into(), concurrency: 30, fetch_batch: None, partitions: Some(3) };
        let physical = q.physical();
        assert_eq!(physical.len(), 4);
        // The partitions share the queue's 30 slots; each fetch takes at most a third.
        assert!(
            physical[..3]
                .iter()
                .all(|p| p.queue.starts_with("emails#") && (p.concurrency, p.fetch_batch, p.shared) == (30, 10, true))
        );
        assert_eq!(physical[3], Physical { queue: "emails".into(), concurrency: 1, fetch_batch: 1, shared: false });
        let plain = QueueConfig { partitions: None, ..q };
        assert_eq!(
            plain.physical(),
            [Physical { queue: "emails".into(), concurrency: 30, fetch_batch: 30, shared: false }]
        );
    }

    #[test]
    fn file_then_environment() {
        let mut cfg = WorkerConfig::from_toml(
            r#"
            prefix = "prod"
            [[queues]]
            name = "images"
            concurrency = 4
            "#,
        )
        .unwrap();
        assert_eq!(cfg.prefix, "prod");
        assert_eq!(cfg.lease_ms, 30_000);
        cfg.apply_env(|k| match k {
            "FLEET_QUEUES" => Some("webhooks=50, images".into()),
            "FLEET_LEASE_MS" => Some("5000".into()),
            "FLEET_DEAD_MAX_COUNT" => Some("500".into()),
            "FLEET_DEAD_MAX_AGE_SECS" => Some("3600".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!((cfg.dead_max_count, cfg.dead_max_age_secs), (500, 3600));
        assert_eq!(cfg.queues.len(), 2);
        assert_eq!(
            cfg.queues[0],
            QueueConfig { name: "webhooks".into(), concurrency: 50, fetch_batch: None, partitions: None }
        );
        assert_eq!(cfg.queues[1].concurrency, 10);
        assert_eq!(cfg.lease_ms, 5000);
        cfg.validate().unwrap();
    }

    #[test]
    fn errors_name_the_setting() {
        let err = WorkerConfig::from_toml("concurency = 3").unwrap_err();
        assert!(err.contains("concurency"), "{err}");
        let mut cfg = WorkerConfig::default();
        let e = cfg.apply_env(|k| (k == "FLEET_LEASE_MS").then(|| "soon".into())).unwrap_err();
        assert!(e.to_string().contains("FLEET_LEASE_MS"), "{e}");
        cfg.queues[0].concurrency = 0;
        let e = cfg.validate().unwrap_err();
        assert!(e.to_string().contains("queues.concurrency"), "{e}");
        let cfg = WorkerConfig { redis_url: "http://x".into(), ..WorkerConfig::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("redis_url"));
    }

    #[test]
    fn tls_settings_come_from_the_file_or_the_environment() {
        let mut cfg = WorkerConfig::from_toml(
            r#"
            redis_url = "rediss://:pw@redis.example.com:6380"
            [redis_tls]
            ca_file = "/nonexistent/redis-ca.pem"
            [database_tls]
            sslmode = "verify-full"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.database_tls.sslmode.as_deref(), Some("verify-full"));
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("redis_tls.ca_file") && e.contains("/nonexistent/redis-ca.pem"), "{e}");
        assert!(!e.contains("pw@"), "{e}");
        cfg.apply_env(|k| match k {
            "FLEET_REDIS_CA_FILE" => Some(String::new()),
            "FLEET_DATABASE_SSLMODE" => Some("verify-everything".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(cfg.redis_tls, fleet_jobs::RedisTls::default());
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("database_tls.sslmode"), "{e}");
    }
}
