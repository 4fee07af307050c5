//! Scheduler configuration: defaults, then a TOML file, then `FLEET_*` environment
//! variables (read through an injectable reader, so tests pass their own); checked at
//! start with errors that name the setting or variable.
//!
//! Variables: `FLEET_REDIS_URL`, `FLEET_REDIS_CA_FILE`, `FLEET_REDIS_CLIENT_CERT_FILE`,
//! `FLEET_REDIS_CLIENT_KEY_FILE`, `FLEET_PREFIX`, `FLEET_DATABASE_URL`,
//! `FLEET_DATABASE_SSLMODE`, `FLEET_DATABASE_SSLROOTCERT`, `FLEET_API_LISTEN`,
//! `FLEET_LOG_FORMAT`, the S3 store presigned uploads go to (`[images.storage]`):
//! `FLEET_S3_ENDPOINT`, `FLEET_S3_BUCKET`, `FLEET_S3_REGION`, `FLEET_S3_ACCESS_KEY_ID`,
//! `FLEET_S3_SECRET_ACCESS_KEY`, `FLEET_S3_PATH_STYLE` (and `FLEET_CONFIG`, the file, read by
//! the command line).

use crate::schedule::{Schedule, ScheduleSpec};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

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

/// The scheduler's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Redis URL (`rediss://` for TLS); for a Redis Cluster, several node URLs separated by
    /// commas, or one `redis+cluster://` URL (see `fleet_jobs::conn`).
    pub redis_url: String,
    /// `[redis_tls]`: CA file and client certificate of a `rediss://` URL.
    pub redis_tls: fleet_jobs::RedisTls,
    /// Key prefix (must match the workers').
    pub prefix: String,
    /// PostgreSQL URL.
    pub database_url: String,
    /// `[database_tls]`: `sslmode` and `sslrootcert` (see `fleet_kit::postgres`).
    pub database_tls: fleet_kit::postgres::PgTls,
    /// Address of the HTTP API, `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (larger gets 413).
    pub max_body_bytes: usize,
    /// Log format: `text` or `json`.
    pub log_format: LogFormat,
    /// Schedules from the file (PostgreSQL's `schedules` table adds more at run time).
    pub schedules: Vec<ScheduleSpec>,
    /// Providers allowed to send webhooks to `/v1/intake/<name>`.
    pub intake: std::collections::BTreeMap<String, crate::api::intake::IntakeProvider>,
    /// What tenants may enqueue and where, and their default cap and quota per queue.
    pub tenants: crate::tenancy::TenancyConfig,
    /// `[api]`: per-key and per-provider request rates, request and statement timeouts,
    /// event streams per tenant.
    pub api: crate::api::limits::ApiLimits,
    /// `[images]`: the object store originals are uploaded to.
    pub images: ImagesConfig,
    /// `[archive]`: finished jobs copied into PostgreSQL, and their retention per queue
    /// and state.
    pub archive: crate::archiver::ArchiveConfig,
    /// `[retention]`: how long the other growing tables keep their rows.
    pub retention: crate::retention::RetentionConfig,
}

/// `[images]`: what the API needs of the images domain.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// `[images.storage]`: the store the workers read originals from, in the same shape as
    /// the worker's (`kind = "local"` or `kind = "s3"` with `endpoint`, `bucket`, `region`,
    /// `access_key_id`, `secret_access_key`, `path_style`). `POST /v1/uploads` presigns PUT
    /// URLs into it, so it only works with `kind = "s3"`; default local.
    pub storage: fleet_images::storage::StoreConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_tls: Default::default(),
            prefix: "fleet".into(),
            database_url: "postgres://postgres@127.0.0.1:5432/fleet".into(),
            database_tls: Default::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1 << 20,
            log_format: LogFormat::Text,
            schedules: Vec::new(),
            intake: Default::default(),
            tenants: Default::default(),
            api: Default::default(),
            images: Default::default(),
            archive: Default::default(),
            retention: Default::default(),
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
    /// A setting is out of range, malformed, or at odds with another.
    #[error("invalid setting {key}: {message}")]
    Invalid {
        /// Setting name (`api.rate_per_key`, `schedules`, `intake.<provider>`, ...).
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { key: key.into(), message: message.into() }
    }
}

impl SchedulerConfig {
    /// Loads defaults, then `path` (if given), then the process environment, then checks
    /// everything ([`SchedulerConfig::validate`]).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with(path, |k| std::env::var(k).ok())
    }

    /// [`SchedulerConfig::load`] with the environment read through `env`.
    pub fn load_with(path: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut cfg = match path {
            Some(p) => Self::from_file(p)?,
            None => SchedulerConfig::default(),
        };
        cfg.apply_env(env)?;
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

    /// Parses TOML text (unset keys keep their defaults).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies the `FLEET_*` overrides read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("FLEET_REDIS_URL") {
            self.redis_url = v;
        }
        self.redis_tls.apply_env(&get);
        if let Some(v) = get("FLEET_PREFIX") {
            self.prefix = v;
        }
        if let Some(v) = get("FLEET_DATABASE_URL") {
            self.database_url = v;
        }
        self.database_tls.apply_env(&get);
        if let Some(v) = get("FLEET_API_LISTEN") {
            self.listen = v.trim().parse().map_err(|e: std::net::AddrParseError| ConfigError::Env {
                var: "FLEET_API_LISTEN",
                value: v.clone(),
                message: format!("{e} (expected host:port, e.g. 0.0.0.0:8080)"),
            })?;
        }
        self.apply_s3_env(&get)?;
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

    /// `FLEET_S3_*`: sets `[images.storage]` to S3 (or changes the S3 store the file set).
    /// A store that was not S3 needs at least the endpoint, bucket and both keys.
    fn apply_s3_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        use fleet_images::storage::{S3Config, StoreConfig};
        const VARS: [&str; 6] = [
            "FLEET_S3_ENDPOINT",
            "FLEET_S3_BUCKET",
            "FLEET_S3_REGION",
            "FLEET_S3_ACCESS_KEY_ID",
            "FLEET_S3_SECRET_ACCESS_KEY",
            "FLEET_S3_PATH_STYLE",
        ];
        if VARS.iter().all(|v| get(v).is_none()) {
            return Ok(());
        }
        let mut s3 = match &self.images.storage {
            StoreConfig::S3(c) => c.clone(),
            StoreConfig::Local(_) => {
                let need = |var: &'static str| {
                    get(var).ok_or_else(|| ConfigError::Env {
                        var,
                        value: String::new(),
                        message: "must be set too: the S3 store needs FLEET_S3_ENDPOINT, FLEET_S3_BUCKET, \
                                  FLEET_S3_ACCESS_KEY_ID and FLEET_S3_SECRET_ACCESS_KEY"
                            .into(),
                    })
                };
                S3Config::new(
                    need("FLEET_S3_ENDPOINT")?,
                    need("FLEET_S3_BUCKET")?,
                    need("FLEET_S3_ACCESS_KEY_ID")?.into(),
                    need("FLEET_S3_SECRET_ACCESS_KEY")?.into(),
                )
            }
        };
        if let Some(v) = get("FLEET_S3_ENDPOINT") {
            s3.endpoint = v;
        }
        if let Some(v) = get("FLEET_S3_BUCKET") {
            s3.bucket = v;
        }
        if let Some(v) = get("FLEET_S3_REGION") {
            s3.region = v;
        }
        if let Some(v) = get("FLEET_S3_ACCESS_KEY_ID") {
            s3.access_key_id = v.into();
        }
        if let Some(v) = get("FLEET_S3_SECRET_ACCESS_KEY") {
            s3.secret_access_key = v.into();
        }
        if let Some(v) = get("FLEET_S3_PATH_STYLE") {
            s3.path_style = match v.as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => {
                    return Err(ConfigError::Env {
                        var: "FLEET_S3_PATH_STYLE",
                        value: v,
                        message: "expected true or false".into(),
                    });
                }
            };
        }
        self.images.storage = StoreConfig::S3(s3);
        Ok(())
    }

    /// Checks every setting and how they fit together: the URLs, the prefix, the body
    /// limit, `[api]`, the intake providers, the tenants' queues, and the schedules
    /// (each must parse, and no two may share a name).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match fleet_jobs::RedisClient::open_with(&self.redis_url, &self.redis_tls) {
            Ok(_) => {}
            Err(e @ fleet_jobs::Error::RedisUrl(_)) => return Err(ConfigError::invalid("redis_url", e.to_string())),
            Err(fleet_jobs::Error::Redis(e)) => {
                return Err(ConfigError::invalid("redis_url", format!("not a Redis URL ({e})")));
            }
            Err(e) => return Err(ConfigError::invalid("redis_tls", e.to_string())),
        }
        if !self.database_url.starts_with("postgres://") && !self.database_url.starts_with("postgresql://") {
            return Err(ConfigError::invalid("database_url", "expected postgres://user@host:port/database"));
        }
        self.database_tls.validate().map_err(|m| ConfigError::invalid("database_tls", m))?;
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(ConfigError::invalid("prefix", "must be non-empty and contain no braces"));
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::invalid("max_body_bytes", "must be at least 1"));
        }
        // `ApiLimits::validate` names its setting: "invalid setting api.<name>: ...".
        if let Err(message) = self.api.validate() {
            let (key, message) = message
                .strip_prefix("invalid setting ")
                .and_then(|m| m.split_once(": "))
                .map_or(("api".to_owned(), message.clone()), |(k, m)| (k.to_owned(), m.to_owned()));
            return Err(ConfigError::Invalid { key, message });
        }
        for (name, p) in &self.intake {
            p.validate(name).map_err(|m| ConfigError::invalid(format!("intake.{name}"), m))?;
        }
        for q in &self.tenants.queues {
            fleet_jobs::keys::validate_queue_name(q).map_err(|m| ConfigError::invalid("tenants.queues", m))?;
        }
        for (q, n) in &self.tenants.partitions {
            fleet_jobs::keys::validate_queue_name(q).map_err(|m| ConfigError::invalid("tenants.partitions", m))?;
            if *n == 0 || *n > fleet_jobs::partitions::MAX_PARTITIONS {
                return Err(ConfigError::invalid(
                    "tenants.partitions",
                    format!("{n} for queue {q:?}: must be 1 to {}", fleet_jobs::partitions::MAX_PARTITIONS),
                ));
            }
        }
        for (q, d) in &self.tenants.durability {
            fleet_jobs::keys::validate_queue_name(q).map_err(|m| ConfigError::invalid("tenants.durability", m))?;
            let max = fleet_jobs::client::MAX_REPLICATION_WAIT.as_millis() as u64;
            if d.replicas == 0 || d.timeout_ms == 0 || d.timeout_ms > max {
                return Err(ConfigError::invalid(
                    "tenants.durability",
                    format!("queue {q:?}: replicas must be at least 1 and timeout_ms 1 to {max}"),
                ));
            }
        }
        self.archive.check().map_err(|m| ConfigError::invalid("archive", m))?;
        self.retention.check().map_err(|m| ConfigError::invalid("retention", m))?;
        if let fleet_images::storage::StoreConfig::S3(c) = &self.images.storage {
            fleet_images::uploads::UploadSigner::new(c)
                .map_err(|e| ConfigError::invalid("images.storage", e.to_string()))?;
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.schedules {
            Schedule::parse(s.clone()).map_err(|m| ConfigError::invalid("schedules", m))?;
            if !names.insert(s.name.as_str()) {
                return Err(ConfigError::invalid(
                    "schedules",
                    format!("two schedules are named {:?} (a name picks one schedule)", s.name),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::limits::ApiLimits;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn the_shipped_configs_load_with_their_api_limits() {
        for file in ["local", "compose"] {
            let path =
                std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../deploy/{file}/scheduler.toml"));
            let cfg = SchedulerConfig::load_with(Some(&path), env(&[])).unwrap();
            assert_eq!(cfg.api, ApiLimits::default(), "{file}");
        }
    }

    #[test]
    fn defaults_then_file_then_environment() {
        let cfg = SchedulerConfig::load_with(None, env(&[])).unwrap();
        assert_eq!((cfg.prefix.as_str(), cfg.listen.port(), cfg.log_format), ("fleet", 8080, LogFormat::Text));
        let mut cfg = SchedulerConfig::from_toml(
            r#"
            prefix = "prod"
            listen = "0.0.0.0:9000"
            log_format = "json"
            [api]
            rate_per_key = 5
            "#,
        )
        .unwrap();
        assert_eq!((cfg.prefix.as_str(), cfg.listen.port(), cfg.log_format), ("prod", 9000, LogFormat::Json));
        assert_eq!((cfg.api.rate_per_key, cfg.api.burst_per_key), (5, 100), "unset keys keep their defaults");
        assert_eq!(cfg.max_body_bytes, 1 << 20);
        cfg.apply_env(env(&[
            ("FLEET_REDIS_URL", "redis://redis:6379/2"),
            ("FLEET_PREFIX", "staging"),
            ("FLEET_DATABASE_URL", "postgresql://fleet@pg/fleet"),
            ("FLEET_API_LISTEN", "127.0.0.1:7000"),
            ("FLEET_LOG_FORMAT", "text"),
        ]))
        .unwrap();
        assert_eq!(cfg.redis_url, "redis://redis:6379/2");
        assert_eq!(cfg.prefix, "staging");
        assert_eq!(cfg.database_url, "postgresql://fleet@pg/fleet");
        assert_eq!(cfg.listen, SocketAddr::from(([127, 0, 0, 1], 7000)));
        assert_eq!(cfg.log_format, LogFormat::Text);
        cfg.validate().unwrap();
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let dir = std::env::temp_dir().join(format!("fleet-scheduler-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("scheduler.toml");
        std::fs::write(&path, "prefix = \"from-file\"\nlisten = \"127.0.0.1:8181\"\n").unwrap();
        let cfg = SchedulerConfig::load_with(Some(&path), env(&[("FLEET_PREFIX", "from-env")])).unwrap();
        assert_eq!((cfg.prefix.as_str(), cfg.listen.port()), ("from-env", 8181));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_setting_or_the_variable() {
        let message = |e: ConfigError| e.to_string();
        let missing = SchedulerConfig::load_with(Some(Path::new("/nonexistent/scheduler.toml")), env(&[]));
        assert!(message(missing.unwrap_err()).contains("/nonexistent/scheduler.toml"));
        let e = SchedulerConfig::from_toml("lissen = \"127.0.0.1:1\"").unwrap_err();
        assert!(e.contains("lissen"), "{e}");
        assert!(SchedulerConfig::from_toml("log_format = \"yaml\"").unwrap_err().contains("yaml"));
        for (var, value) in [("FLEET_API_LISTEN", "localhost"), ("FLEET_LOG_FORMAT", "yaml")] {
            let e = SchedulerConfig::load_with(None, env(&[(var, value)])).unwrap_err();
            assert!(matches!(e, ConfigError::Env { var: v, .. } if v == var), "{e}");
            assert!(message(e).contains(var));
        }
        let checks: [(&[(&str, &str)], &str); 4] = [
            (&[("FLEET_REDIS_URL", "http://x")], "redis_url"),
            (&[("FLEET_DATABASE_URL", "mysql://x")], "database_url"),
            (&[("FLEET_PREFIX", "")], "prefix"),
            (&[("FLEET_PREFIX", "a{b}")], "prefix"),
        ];
        for (vars, key) in checks {
            let e = SchedulerConfig::load_with(None, env(vars)).unwrap_err();
            assert!(matches!(&e, ConfigError::Invalid { key: k, .. } if k == key), "{key}: {e}");
            assert!(message(e).starts_with(&format!("invalid setting {key}: ")));
        }
    }

    #[test]
    fn sections_are_checked_with_their_setting_named() {
        let invalid = |toml: &str| match SchedulerConfig::from_toml(toml).unwrap().validate() {
            Err(ConfigError::Invalid { key, message }) => (key, message),
            other => panic!("{toml}: {other:?}"),
        };
        assert_eq!(invalid("[api]\nrate_per_key = 0").0, "api.rate_per_key");
        assert_eq!(invalid("[api]\nrequest_timeout_secs = 0").0, "api.request_timeout_secs");
        assert!(SchedulerConfig::from_toml("[api]\nrate_per_kee = 5").is_err());
        assert_eq!(invalid("max_body_bytes = 0").0, "max_body_bytes");
        assert_eq!(invalid("[tenants]\nqueues = [\"a{b}\"]").0, "tenants.queues");
        assert_eq!(invalid("[intake.github]\nscheme = \"hmac_sha256\"\nsecrets = []").0, "intake.github");
        let (key, message) = invalid("[[schedules]]\nname = \"n\"\ncron = \"not cron\"\nkind = \"probe\"");
        assert_eq!(key, "schedules");
        assert!(message.contains("not cron"), "{message}");
    }

    #[test]
    fn the_upload_store_comes_from_the_file_or_the_environment() {
        use fleet_images::storage::ExposeSecret as _;
        use fleet_images::storage::StoreConfig;
        let cfg = SchedulerConfig::load_with(None, env(&[])).unwrap();
        assert!(matches!(cfg.images.storage, StoreConfig::Local(_)), "local by default");
        let file = r#"
            [images.storage]
            kind = "s3"
            endpoint = "http://127.0.0.1:9000"
            bucket = "photos"
            access_key_id = "from-file"
            secret_access_key = "file-secret"
            path_style = true
            "#;
        let mut cfg = SchedulerConfig::from_toml(file).unwrap();
        cfg.apply_env(env(&[("FLEET_S3_BUCKET", "other"), ("FLEET_S3_SECRET_ACCESS_KEY", "env-secret")])).unwrap();
        let StoreConfig::S3(c) = &cfg.images.storage else { panic!("s3 expected") };
        assert_eq!((c.endpoint.as_str(), c.bucket.as_str(), c.path_style), ("http://127.0.0.1:9000", "other", true));
        assert_eq!((c.access_key_id.expose_secret(), c.secret_access_key.expose_secret()), ("from-file", "env-secret"));
        cfg.validate().unwrap();

        let all = [
            ("FLEET_S3_ENDPOINT", "http://s3.local:9000"),
            ("FLEET_S3_BUCKET", "b"),
            ("FLEET_S3_ACCESS_KEY_ID", "k"),
            ("FLEET_S3_SECRET_ACCESS_KEY", "s"),
            ("FLEET_S3_REGION", "eu-west-1"),
            ("FLEET_S3_PATH_STYLE", "1"),
        ];
        let cfg = SchedulerConfig::load_with(None, env(&all)).unwrap();
        let StoreConfig::S3(c) = &cfg.images.storage else { panic!("s3 expected") };
        assert_eq!((c.bucket.as_str(), c.region.as_str(), c.path_style), ("b", "eu-west-1", true));
        let e = SchedulerConfig::load_with(None, env(&all[..2])).unwrap_err();
        assert!(matches!(&e, ConfigError::Env { var: "FLEET_S3_ACCESS_KEY_ID", .. }), "{e}");
        let e =
            SchedulerConfig::load_with(None, env(&[all[0], all[1], all[2], all[3], ("FLEET_S3_PATH_STYLE", "yes")]))
                .unwrap_err();
        assert!(e.to_string().contains("FLEET_S3_PATH_STYLE"), "{e}");
        let bad = file.replace("http://127.0.0.1:9000", "not a url");
        let e = SchedulerConfig::from_toml(&bad).unwrap().validate().unwrap_err();
        assert!(matches!(&e, ConfigError::Invalid { key, .. } if key == "images.storage"), "{e}");
        assert!(SchedulerConfig::from_toml("[images.storage]\nkind = \"s3\"\nbukcet = \"x\"").is_err());
    }

    #[test]
    fn tls_settings_come_from_the_file_or_the_environment() {
        let text = "redis_url = \"rediss://redis.example.com:6380\"\n[database_tls]\nsslmode = \"verify-full\"\n";
        let mut cfg = SchedulerConfig::from_toml(text).unwrap();
        cfg.validate().unwrap();
        cfg.apply_env(env(&[("FLEET_REDIS_CA_FILE", "/nonexistent/ca.pem"), ("FLEET_DATABASE_SSLMODE", "require")]))
            .unwrap();
        assert_eq!(cfg.database_tls.sslmode.as_deref(), Some("require"));
        let e = cfg.validate().unwrap_err();
        assert!(matches!(&e, ConfigError::Invalid { key, .. } if key == "redis_tls"), "{e}");
        assert!(e.to_string().contains("redis_tls.ca_file") && e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let e = SchedulerConfig::load_with(None, env(&[("FLEET_DATABASE_SSLMODE", "on")])).unwrap_err();
        assert!(e.to_string().contains("database_tls.sslmode"), "{e}");
    }

    #[test]
    fn two_schedules_cannot_share_a_name() {
        let one =
            "[[schedules]]\nname = \"digest\"\ncron = \"0 * * * * *\"\nkind = \"probe\"\nargs = { do = \"succeed\" }\n";
        SchedulerConfig::from_toml(one).unwrap().validate().unwrap();
        let other = "[[schedules]]\nname = \"digest\"\ncron = \"30 * * * * *\"\nkind = \"probe\"\nargs = { do = \"succeed\" }\n";
        let e = SchedulerConfig::from_toml(&format!("{one}{other}")).unwrap().validate().unwrap_err();
        assert!(e.to_string().starts_with("invalid setting schedules: ") && e.to_string().contains("digest"), "{e}");
    }
}
