//! `fleetctl`: the operator's command line, on the data API (`fleet_jobs::admin`) and,
//! for schedules and calendar and comms sources, PostgreSQL. Tables by default, `--json`
//! for scripts; replay, purge and removing a source ask before they act unless `--yes`.

mod notify;
mod sources;

use clap::{Parser, Subcommand};
use fleet_jobs::admin::DeadFilter;
use fleet_jobs::{Client, JobState};
use serde::Serialize;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

/// Inspect and steer a Fleet deployment.
#[derive(Parser)]
#[command(name = "fleetctl", version)]
struct Args {
    /// Redis URL (`rediss://` for TLS; a Redis Cluster: several node URLs separated by commas).
    #[arg(long, env = "FLEET_REDIS_URL", default_value = "redis://127.0.0.1:6379", global = true)]
    redis_url: String,
    /// PEM file of the CA that signs a `rediss://` server's certificate (default: Mozilla's roots).
    #[arg(long, env = "FLEET_REDIS_CA_FILE", global = true)]
    redis_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate for a `rediss://` server that demands one (with --redis-client-key-file).
    #[arg(long, env = "FLEET_REDIS_CLIENT_CERT_FILE", global = true)]
    redis_client_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of --redis-client-cert-file.
    #[arg(long, env = "FLEET_REDIS_CLIENT_KEY_FILE", global = true)]
    redis_client_key_file: Option<std::path::PathBuf>,
    /// Key prefix of the deployment.
    #[arg(long, env = "FLEET_PREFIX", default_value = "fleet", global = true)]
    prefix: String,
    /// PostgreSQL URL (for schedules and the calendar and comms commands).
    #[arg(long, env = "FLEET_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/fleet", global = true)]
    database_url: String,
    /// PostgreSQL TLS mode: disable, prefer, require, verify-ca or verify-full (over the URL's
    /// `sslmode`; only verify-full checks the host name).
    #[arg(long, env = "FLEET_DATABASE_SSLMODE", global = true)]
    database_sslmode: Option<String>,
    /// PEM file of the CA that signs PostgreSQL's certificate (over the URL's `sslrootcert`).
    #[arg(long, env = "FLEET_DATABASE_SSLROOTCERT", global = true)]
    database_sslrootcert: Option<std::path::PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone)]
struct Select {
    /// These dead letters (repeatable).
    #[arg(long = "id")]
    ids: Vec<String>,
    /// Dead letters of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Dead letters whose reason contains this text.
    #[arg(long)]
    reason: Option<String>,
    /// Every dead letter of the queue.
    #[arg(long)]
    all: bool,
    /// At most this many.
    #[arg(long)]
    limit: Option<usize>,
}

impl Select {
    /// The selection as recorded in the audit log.
    fn params(&self, rate: Option<u32>) -> serde_json::Value {
        serde_json::json!({"ids": self.ids, "kind": self.kind, "reason": self.reason, "all": self.all,
            "limit": self.limit, "rate": rate})
    }

    fn filter(&self) -> Result<DeadFilter, String> {
        if self.ids.is_empty() && self.kind.is_none() && self.reason.is_none() && !self.all {
            return Err("say which dead letters: --id, --kind, --reason or --all".into());
        }
        if self.reason.as_deref() == Some("") {
            return Err("an empty --reason matches every dead letter: say --all".into());
        }
        Ok(DeadFilter {
            ids: self.ids.clone(),
            kind: self.kind.clone(),
            reason_contains: self.reason.clone(),
            died_before: None,
            limit: self.limit,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Queue(QueueCommand),
    /// Schedules stored in PostgreSQL: show, create, edit, delete, run now.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// The audit log: changes made by operators and admins, newest first (PostgreSQL).
    Audit {
        /// Only this action (e.g. queue.replay, schedule.edit, api_key.create).
        #[arg(long)]
        action: Option<String>,
        /// Only entries at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00Z).
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Only entries with an id below this (the previous page's last id).
        #[arg(long)]
        before: Option<i64>,
        /// Rows (at most 500).
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// The archive of finished jobs: search it, show one (PostgreSQL).
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// Calendar sources, occurrences and double bookings (PostgreSQL).
    #[command(subcommand)]
    Calendar(sources::CalendarCommand),
    /// Communication sources and timelines (PostgreSQL).
    #[command(subcommand)]
    Comms(sources::CommsCommand),
    /// Notifications and their send records (PostgreSQL).
    #[command(subcommand)]
    Notifications(notify::NotificationCommand),
}

/// `fleetctl archive ...`
#[derive(Subcommand, Debug)]
enum ArchiveCommand {
    /// Finished jobs, newest first, by any of the filters; prints the cursor of the next page.
    Search {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only this final state: succeeded, dead, cancelled or expired.
        #[arg(long)]
        state: Option<String>,
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Text in the arguments or the error (3 to 200 characters, case-insensitive).
        #[arg(long)]
        text: Option<String>,
        /// Finished at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Finished before this time (RFC 3339).
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// The cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
        /// Rows (at most 500).
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One archived job, whole: arguments, result, progress, error and failed attempts.
    Show {
        /// Queue.
        queue: String,
        /// Job id.
        id: String,
        /// That attempt's ending (default: the latest).
        #[arg(long)]
        attempt: Option<i32>,
    },
}

/// A schedule's definition given on the command line.
#[derive(clap::Args, Debug, Clone, Default)]
struct ScheduleFields {
    /// Cron expression (six fields with seconds, or five).
    #[arg(long)]
    cron: Option<String>,
    /// IANA time zone (default UTC).
    #[arg(long)]
    timezone: Option<String>,
    /// Job kind.
    #[arg(long)]
    kind: Option<String>,
    /// Job arguments as JSON.
    #[arg(long)]
    args: Option<String>,
    /// Queue (default: the kind's).
    #[arg(long)]
    queue: Option<String>,
    /// Priority: high, normal or low.
    #[arg(long)]
    priority: Option<String>,
    /// Attempts.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Missed ticks: skip or catch_up.
    #[arg(long)]
    missed: Option<String>,
    /// Catch-up window in seconds.
    #[arg(long)]
    catch_up_secs: Option<u64>,
}

impl ScheduleFields {
    /// `base` with the given fields over it, checked as the config's schedules are.
    fn apply(&self, mut spec: crate::schedule::ScheduleSpec) -> Result<crate::schedule::ScheduleSpec, String> {
        let quoted = |v: &str| serde_json::Value::String(v.to_owned());
        if let Some(v) = &self.cron {
            spec.cron = v.clone();
        }
        if let Some(v) = &self.timezone {
            spec.timezone = v.clone();
        }
        if let Some(v) = &self.kind {
            spec.kind = v.clone();
        }
        if let Some(v) = &self.args {
            spec.args = serde_json::from_str(v).map_err(|e| format!("--args is not JSON: {e}"))?;
        }
        if let Some(v) = &self.queue {
            spec.queue = Some(v.clone());
        }
        if let Some(v) = &self.priority {
            spec.priority = Some(serde_json::from_value(quoted(v)).map_err(|_| format!("unknown priority {v:?}"))?);
        }
        if let Some(v) = self.max_attempts {
            spec.max_attempts = Some(v);
        }
        if let Some(v) = &self.missed {
            spec.missed =
                serde_json::from_value(quoted(v)).map_err(|_| format!("--missed is skip or catch_up, not {v:?}"))?;
        }
        if let Some(v) = self.catch_up_secs {
            spec.catch_up_secs = v;
        }
        crate::schedule::Schedule::parse(spec.clone())?;
        Ok(spec)
    }
}

#[derive(Subcommand)]
enum ScheduleCommand {
    /// A stored schedule's definition.
    Show {
        /// Schedule name.
        name: String,
    },
    /// Store a new schedule (every scheduler runs it within 5 s).
    Create {
        /// Schedule name.
        name: String,
        #[command(flatten)]
        fields: ScheduleFields,
    },
    /// Change a stored schedule (the fields given; the others stay).
    Edit {
        /// Schedule name.
        name: String,
        #[command(flatten)]
        fields: ScheduleFields,
    },
    /// Delete a stored schedule and its state.
    Delete {
        /// Schedule name.
        name: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// Enqueue one run of a stored schedule's job now.
    Run {
        /// Schedule name.
        name: String,
    },
}

/// Where the deployment's stores are.
struct Stores {
    redis_url: String,
    redis_tls: fleet_jobs::RedisTls,
    prefix: String,
    database_url: String,
    database_tls: fleet_kit::postgres::PgTls,
}

impl Stores {
    /// A client on the deployment's Redis, knowing the partitioned queues declared in
    /// `FLEET_PARTITIONS` (`queue=n[,queue=n...]`, as in the workers' config).
    async fn client(&self) -> Result<Client, String> {
        let mut client = Client::connect_with(&self.redis_url, &self.redis_tls, self.prefix.clone())
            .await
            .map_err(|e| format!("Redis at {}: {e}", crate::db::redacted(&self.redis_url)))?;
        if let Ok(spec) = std::env::var("FLEET_PARTITIONS") {
            for (q, n) in fleet_jobs::partitions::parse_spec(&spec).map_err(|e| format!("FLEET_PARTITIONS: {e}"))? {
                client = client.with_partitions(&q, n).map_err(|e| format!("FLEET_PARTITIONS: {e}"))?;
            }
        }
        Ok(client)
    }

    /// Records a change made through fleetctl (as `fleetctl:<$USER>`); when PostgreSQL
    /// cannot be reached the change stays made and a warning says it is not audited.
    async fn audit(&self, action: &str, target: String, params: serde_json::Value, affected: i64) {
        let result = match self.db_within(std::time::Duration::from_secs(5)).await {
            Ok(db) => {
                let actor = crate::audit::local_actor("fleetctl");
                let change = crate::audit::Change { actor: &actor, tenant: None, action, target, params, affected };
                crate::audit::record(&db, change).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            eprintln!("fleetctl: warning: done, but not written to the audit log: {e}");
        }
    }

    async fn db(&self) -> Result<sqlx::PgPool, String> {
        self.db_within(std::time::Duration::from_secs(30)).await
    }

    /// A pool, giving up after `timeout` when PostgreSQL cannot be reached.
    async fn db_within(&self, timeout: std::time::Duration) -> Result<sqlx::PgPool, String> {
        self.database_tls.validate()?;
        let options = self
            .database_tls
            .connect_options(&self.database_url)
            .map_err(|e| format!("PostgreSQL at {}: {e}", crate::db::redacted(&self.database_url)))?;
        let mode = options.get_ssl_mode();
        sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(timeout)
            .connect_with(options)
            .await
            .map_err(|e| fleet_kit::postgres::describe_connect_error(&self.database_url, mode, &e))
    }
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Queues with their counters.
    Queues,
    /// Jobs of a queue in one state.
    Jobs {
        /// Queue.
        queue: String,
        /// ready, scheduled, running, retrying, succeeded, dead, cancelled, expired.
        #[arg(long, default_value = "ready")]
        state: String,
        /// Rows.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Rows to skip.
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// One job with its attempt history.
    Job {
        /// Queue.
        queue: String,
        /// Job id.
        id: String,
    },
    /// A workflow with its steps (state, job, error, result); `--cancel` cancels it as a
    /// whole.
    Workflow {
        /// Workflow id.
        id: String,
        /// Cancel it: queued and running steps' jobs are cancelled, waiting steps never start.
        #[arg(long)]
        cancel: bool,
    },
    /// Dead letters of a queue (`--group` counts them by reason).
    Dead {
        /// Queue.
        queue: String,
        /// Count by reason instead of listing.
        #[arg(long)]
        group: bool,
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only reasons containing this.
        #[arg(long)]
        reason: Option<String>,
        /// Rows.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Send dead letters back to ready with fresh attempts.
    Replay {
        /// Queue.
        queue: String,
        #[command(flatten)]
        select: Select,
        /// At most this many per second.
        #[arg(long)]
        rate: Option<u32>,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// Delete dead letters.
    Purge {
        /// Queue.
        queue: String,
        #[command(flatten)]
        select: Select,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// Stop starting jobs of a queue, fleet-wide.
    Pause {
        /// Queue.
        queue: String,
    },
    /// Start jobs of a queue again.
    Resume {
        /// Queue.
        queue: String,
    },
    /// Show or set a queue's own dead-letter caps (fleet-wide, at run time; a cap left
    /// out follows the workers' setting). With no option, prints them.
    DeadCaps {
        /// Queue.
        queue: String,
        /// Most dead letters kept.
        #[arg(long)]
        max_count: Option<u64>,
        /// Oldest dead letter kept, in seconds (0: no age limit).
        #[arg(long)]
        max_age_secs: Option<u64>,
        /// Forget the queue's own caps (back to the workers' settings).
        #[arg(long, conflicts_with_all = ["max_count", "max_age_secs"])]
        clear: bool,
    },
    /// Live worker instances of a queue.
    Workers {
        /// Queue.
        queue: String,
    },
    /// Tenants of a queue: jobs running and unfinished against their cap and quota.
    Tenants {
        /// Queue.
        queue: String,
        /// Rows.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Set a tenant's concurrency cap and queued-job quota on a queue (without --tenant:
    /// the default of every tenant); 0 removes a value.
    TenantLimits {
        /// Queue.
        queue: String,
        /// The tenant (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// Jobs of the tenant running at once, fleet-wide.
        #[arg(long)]
        concurrency: Option<u64>,
        /// Unfinished jobs of the tenant on the queue.
        #[arg(long)]
        quota: Option<u64>,
    },
    /// Override a limit key's rate, burst, concurrency and breaker at run time, fleet-wide
    /// (over the workers' config; an option left out is cleared).
    LimitOverride {
        /// Limit key (as in the workers' config, e.g. `google-calendar` or `smtp:acme`).
        key: String,
        /// Requests per second.
        #[arg(long)]
        rate: Option<f64>,
        /// Requests back to back before the rate applies.
        #[arg(long, default_value_t = 1)]
        burst: u32,
        /// Requests in flight at once.
        #[arg(long)]
        concurrency: Option<u32>,
        /// Consecutive failures that open the breaker.
        #[arg(long)]
        breaker_failures: Option<u32>,
        /// How long an open breaker stays open, in ms.
        #[arg(long, default_value_t = 30_000)]
        breaker_cooldown_ms: u64,
    },
    /// Schedules and their state (PostgreSQL).
    Schedules,
    /// Stop a schedule from enqueueing (its ticks count as missed).
    PauseSchedule {
        /// Schedule name.
        name: String,
    },
    /// Let a paused schedule enqueue again.
    ResumeSchedule {
        /// Schedule name.
        name: String,
    },
}

/// `text` safe for a terminal: control characters (a NUL, an escape sequence, a newline
/// in a cell) are written escaped, e.g. `\u{0}`, `\u{1b}`, `\n`; everything else as it is.
fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.into_iter().map(|r| r.iter().map(|c| printable(c)).collect()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(headers.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

fn parse_state(s: &str) -> Result<JobState, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        format!("unknown state {s:?}: ready, scheduled, running, retrying, succeeded, dead, cancelled, expired")
    })
}

fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    } else {
        println!("{}", text());
    }
}

fn confirm(question: &str, yes: bool) -> Result<bool, String> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(format!("{question}: refusing without --yes (stdin is not a terminal)"));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).map_err(|e| e.to_string())?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn ms(t: u64) -> String {
    chrono::DateTime::from_timestamp_millis(t as i64).map(|d| when(Some(d))).unwrap_or_default()
}

/// A time for a table cell (UTC, to the second; empty for none).
fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}

async fn execute(args: Args) -> Result<(), String> {
    let stores = Stores {
        redis_url: args.redis_url,
        redis_tls: fleet_jobs::RedisTls {
            ca_file: args.redis_ca_file,
            client_cert_file: args.redis_client_cert_file,
            client_key_file: args.redis_client_key_file,
        },
        prefix: args.prefix,
        database_url: args.database_url,
        database_tls: fleet_kit::postgres::PgTls {
            sslmode: args.database_sslmode,
            sslrootcert: args.database_sslrootcert,
        },
    };
    match args.command {
        Command::Queue(command) => queues(&stores, args.json, command).await,
        Command::Schedule(command) => schedule(&stores, args.json, command).await,
        Command::Audit { action, since, before, limit } => {
            let db = stores.db().await?;
            if !(1..=crate::audit::MAX_PAGE).contains(&limit) {
                return Err(format!("--limit must be 1 to {}", crate::audit::MAX_PAGE));
            }
            let q = crate::audit::Query { action, since, before, limit: Some(limit) };
            let page = crate::audit::list(&db, &q).await.map_err(|e| format!("reading the audit log: {e}"))?;
            print(args.json, &page, || {
                table(
                    &["ID", "AT", "WHO", "TENANT", "ACTION", "TARGET", "COUNT", "PARAMETERS"],
                    page.entries
                        .iter()
                        .map(|e| {
                            vec![
                                e.id.to_string(),
                                when(Some(e.at)),
                                e.actor.clone(),
                                e.tenant.clone().unwrap_or_default(),
                                e.action.clone(),
                                e.target.clone(),
                                e.affected.to_string(),
                                e.params.to_string(),
                            ]
                        })
                        .collect(),
                )
            });
            Ok(())
        }
        Command::Archive(command) => archived(&stores, args.json, command).await,
        Command::Calendar(command) => sources::calendar(&stores, args.json, command).await,
        Command::Comms(command) => sources::comms(&stores, args.json, command).await,
        Command::Notifications(command) => notify::notifications(&stores, args.json, command).await,
    }
}

async fn archived(stores: &Stores, json: bool, command: ArchiveCommand) -> Result<(), String> {
    let db = stores.db().await?;
    match command {
        ArchiveCommand::Search { queue, state, kind, tenant, text, from, to, cursor, limit } => {
            let q =
                crate::archive::Search { queue, state, kind, tenant, q: text, from, to, cursor, limit: Some(limit) };
            let page = crate::archive::search(&db, &q).await.map_err(|e| format!("searching the archive: {e}"))?;
            print(json, &page, || {
                let mut out = table(
                    &["FINISHED", "QUEUE", "ID", "KIND", "STATE", "TENANT", "ATTEMPT", "ERROR"],
                    page.jobs
                        .iter()
                        .map(|j| {
                            vec![
                                when(Some(j.finished_at)),
                                j.queue.clone(),
                                j.id.clone(),
                                j.kind.clone(),
                                j.state.clone(),
                                j.tenant.clone().unwrap_or_default(),
                                j.attempt.to_string(),
                                j.error.clone().unwrap_or_default(),
                            ]
                        })
                        .collect(),
                );
                if let Some(next) = &page.next {
                    out.push_str(&format!("next page: --cursor {next}\n"));
                }
                out
            });
            Ok(())
        }
        ArchiveCommand::Show { queue, id, attempt } => {
            fleet_jobs::keys::validate_queue_name(&queue)?;
            let job = crate::archive::get(&db, &queue, &id, attempt, None)
                .await
                .map_err(|e| format!("reading the archive: {e}"))?
                .ok_or_else(|| format!("no archived job {id} in queue {queue}"))?;
            // Nested data (arguments, result, attempts): JSON either way.
            println!("{}", serde_json::to_string_pretty(&job).unwrap_or_default());
            Ok(())
        }
    }
}

async fn queues(stores: &Stores, json: bool, command: QueueCommand) -> Result<(), String> {
    let client = stores.client().await?;
    let err = |e: fleet_jobs::Error| e.to_string();
    match command {
        QueueCommand::Queues => {
            let all = client.all_stats().await.map_err(err)?;
            let mut paused = Vec::new();
            for (q, _) in &all {
                paused.push(client.is_paused(q).await.map_err(err)?);
            }
            let rows: Vec<serde_json::Value> = all
                .iter()
                .zip(&paused)
                .map(|((q, s), p)| serde_json::json!({"queue": q, "paused": p, "stats": s}))
                .collect();
            print(json, &rows, || {
                table(
                    &["QUEUE", "READY", "SCHEDULED", "RUNNING", "RETRYING", "DEAD", "SUCCEEDED", "FAILED", "PAUSED"],
                    all.iter()
                        .zip(&paused)
                        .map(|((q, s), p)| {
                            vec![
                                q.clone(),
                                s.ready.to_string(),
                                s.scheduled.to_string(),
                                s.running.to_string(),
                                s.retrying.to_string(),
                                s.dead.to_string(),
                                s.succeeded.to_string(),
                                s.failed.to_string(),
                                if *p { "yes".into() } else { "".into() },
                            ]
                        })
                        .collect(),
                )
            });
        }
        QueueCommand::Jobs { queue, state, limit, offset } => {
            let state = parse_state(&state)?;
            let jobs = client.jobs_in_state(&queue, state, offset, limit).await.map_err(err)?;
            print(json, &jobs, || {
                table(
                    &["ID", "KIND", "STATE", "ATTEMPTS", "AT"],
                    jobs.iter()
                        .map(|j| {
                            vec![
                                j.id.clone(),
                                j.kind.clone(),
                                format!("{:?}", j.state).to_lowercase(),
                                j.attempts.to_string(),
                                j.at.map(ms).unwrap_or_default(),
                            ]
                        })
                        .collect(),
                )
            });
        }
        QueueCommand::Job { queue, id } => {
            let job =
                client.job(&queue, &id).await.map_err(err)?.ok_or_else(|| format!("no job {id} on queue {queue}"))?;
            print(json, &job, || {
                let state = format!("{:?}", job.state).to_lowercase();
                let mut s = format!("id        {}\nstate     {state}\nattempts  {}\n", printable(&id), job.attempts);
                if let Some(raw) = &job.raw_state {
                    s.push_str(&format!("raw state {}\n", printable(raw)));
                }
                if let Some(e) = &job.envelope {
                    s.push_str(&format!(
                        "kind      {}\nqueue     {}\nargs      {}\nenqueued  {}\n",
                        e.kind,
                        e.queue,
                        e.args.get(),
                        ms(e.enqueued_at)
                    ));
                } else {
                    let why = job.envelope_error.as_deref().unwrap_or("");
                    s.push_str(&format!("envelope  (undecodable: {why})\n"));
                    let lossy = if job.raw_envelope_lossy { " (not UTF-8, shown lossily)" } else { "" };
                    s.push_str(&format!("raw       {}{lossy}\n", printable(&job.raw_envelope)));
                    if let Some(hex) = &job.raw_envelope_hex {
                        s.push_str(&format!("raw hex   {hex}\n"));
                    }
                }
                for a in &job.history {
                    s.push_str(&format!(
                        "attempt {} at {} on {}: {}\n",
                        a.attempt,
                        ms(a.at),
                        printable(a.worker.as_deref().unwrap_or("?")),
                        printable(&a.error)
                    ));
                }
                if let Some(e) = &job.history_error {
                    s.push_str(&format!("history   {}\n", printable(e)));
                }
                if let Some(p) = &job.progress {
                    let of = match (p.done, p.total) {
                        (Some(d), Some(t)) => format!(" ({d} of {t})"),
                        _ => String::new(),
                    };
                    s.push_str(&format!("progress  {:.1}%{of} {} at {}\n", p.percent, printable(&p.message), ms(p.at)));
                }
                if let Some(r) = &job.result {
                    s.push_str(&format!("result    {}\n", printable(r.get())));
                }
                s.trim_end().to_owned()
            });
        }
        QueueCommand::Dead { queue, group, kind, reason, limit } => {
            if group {
                let groups = client.dead_by_reason(&queue).await.map_err(err)?;
                let rows: Vec<serde_json::Value> =
                    groups.iter().map(|(r, n)| serde_json::json!({"reason": r, "count": n})).collect();
                print(json, &rows, || {
                    table(&["COUNT", "REASON"], groups.iter().map(|(r, n)| vec![n.to_string(), r.clone()]).collect())
                });
            } else {
                let filter = DeadFilter { kind, reason_contains: reason, limit: Some(limit), ..Default::default() };
                let dead = client.dead_matching(&queue, &filter).await.map_err(err)?;
                print(json, &dead, || {
                    table(
                        &["ID", "KIND", "DIED", "ATTEMPTS", "REASON"],
                        dead.iter()
                            .map(|d| {
                                let kind = d.job.kind().to_owned();
                                vec![
                                    d.id.clone(),
                                    kind,
                                    ms(d.died_at),
                                    d.job.attempts.to_string(),
                                    d.reason.lines().next().unwrap_or("").to_owned(),
                                ]
                            })
                            .collect(),
                    )
                });
            }
        }
        QueueCommand::Replay { queue, select, rate, yes } => {
            let filter = select.filter()?;
            let n = client.dead_matching(&queue, &filter).await.map_err(err)?.len();
            if n == 0 {
                println!("no matching dead letters");
                return Ok(());
            }
            if !confirm(&format!("replay {n} dead letters of queue {queue}"), yes)? {
                return Err("cancelled".into());
            }
            let moved = client.replay(&queue, &filter, rate).await.map_err(err)?;
            stores.audit("queue.replay", format!("queue:{queue}"), select.params(rate), moved as i64).await;
            print(json, &serde_json::json!({"replayed": moved}), || format!("replayed {moved}"));
        }
        QueueCommand::Purge { queue, select, yes } => {
            let filter = select.filter()?;
            let n = client.dead_matching(&queue, &filter).await.map_err(err)?.len();
            if n == 0 {
                println!("no matching dead letters");
                return Ok(());
            }
            if !confirm(&format!("delete {n} dead letters of queue {queue} for good"), yes)? {
                return Err("cancelled".into());
            }
            let gone = client.purge(&queue, &filter).await.map_err(err)?;
            stores.audit("queue.purge", format!("queue:{queue}"), select.params(None), gone as i64).await;
            print(json, &serde_json::json!({"purged": gone}), || format!("purged {gone}"));
        }
        QueueCommand::Workflow { id, cancel } => {
            if cancel {
                let tenant =
                    client.workflow_tenant(&id).await.map_err(err)?.ok_or_else(|| format!("no workflow {id}"))?;
                let now = client.cancel_workflow(&id).await.map_err(err)?.ok_or_else(|| format!("no workflow {id}"))?;
                let word = serde_json::to_value(now).unwrap_or_default();
                stores
                    .audit(
                        "workflow.cancel",
                        format!("workflow:{id}"),
                        serde_json::json!({"tenant": tenant, "state": word}),
                        1,
                    )
                    .await;
            }
            let wf = client.workflow(&id).await.map_err(err)?.ok_or_else(|| format!("no workflow {id}"))?;
            let word = |v: serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            print(json, &wf, || {
                let mut s = format!(
                    "id        {}\nstate     {}\ntenant    {}\nsteps     {} ({} open, {} failed)\ncreated   {}\n",
                    printable(&wf.id),
                    word(serde_json::to_value(wf.state).unwrap_or_default()),
                    wf.tenant.as_deref().unwrap_or("-"),
                    wf.total,
                    wf.open,
                    wf.failed,
                    ms(wf.created_at),
                );
                if let Some(at) = wf.finished_at {
                    s.push_str(&format!("finished  {}\n", ms(at)));
                }
                s.push('\n');
                s.push_str(&table(
                    &["STEP", "STATE", "QUEUE", "JOB / WORKFLOW", "ERROR", "RESULT"],
                    wf.steps
                        .iter()
                        .map(|st| {
                            let result = st.result.as_ref().map(|r| r.get()).unwrap_or_default();
                            let result = if result.len() > 60 {
                                format!("{}…", &result[..result.floor_char_boundary(60)])
                            } else {
                                result.to_owned()
                            };
                            vec![
                                st.name.clone(),
                                word(serde_json::to_value(st.state).unwrap_or_default()),
                                st.queue.clone().unwrap_or_default(),
                                st.job_id.clone().or_else(|| st.workflow_id.clone()).unwrap_or_default(),
                                st.error.clone().unwrap_or_default(),
                                result,
                            ]
                        })
                        .collect(),
                ));
                s
            });
        }
        QueueCommand::Pause { queue } => {
            client.pause(&queue).await.map_err(err)?;
            stores.audit("queue.pause", format!("queue:{queue}"), serde_json::json!({}), 1).await;
            println!("paused {queue}");
        }
        QueueCommand::Resume { queue } => {
            client.resume(&queue).await.map_err(err)?;
            stores.audit("queue.resume", format!("queue:{queue}"), serde_json::json!({}), 1).await;
            println!("resumed {queue}");
        }
        QueueCommand::DeadCaps { queue, max_count, max_age_secs, clear } => {
            if clear || max_count.is_some() || max_age_secs.is_some() {
                let mut caps = if clear { Default::default() } else { client.dead_caps(&queue).await.map_err(err)? };
                if max_count.is_some() {
                    caps.max_count = max_count;
                }
                if max_age_secs.is_some() {
                    caps.max_age_secs = max_age_secs;
                }
                client.set_dead_caps(&queue, caps).await.map_err(err)?;
                let params = serde_json::to_value(caps).unwrap_or_default();
                stores.audit("queue.dead_caps", format!("queue:{queue}"), params, 1).await;
            }
            let caps = client.dead_caps(&queue).await.map_err(err)?;
            let show = |v: Option<u64>| v.map_or_else(|| "workers' setting".to_owned(), |n| n.to_string());
            print(json, &serde_json::json!({"queue": queue, "dead_caps": caps}), || {
                format!(
                    "{queue}: dead letters max count {}, max age secs {}",
                    show(caps.max_count),
                    show(caps.max_age_secs)
                )
            });
        }
        QueueCommand::Workers { queue } => {
            let ws = client.workers(&queue).await.map_err(err)?;
            print(json, &ws, || {
                table(
                    &["INSTANCE", "LAST SEEN", "RUNNING", "JOBS"],
                    ws.iter()
                        .map(|w| vec![w.instance.clone(), ms(w.last_seen), w.running.to_string(), w.jobs.join(" ")])
                        .collect(),
                )
            });
        }
        QueueCommand::Tenants { queue, limit } => {
            let ts = client.tenants(&queue, limit).await.map_err(err)?;
            let num = |n: u64| if n == 0 { "-".to_owned() } else { n.to_string() };
            print(json, &ts, || {
                table(
                    &["TENANT", "RUNNING", "CAP", "UNFINISHED", "QUOTA", "OWN LIMITS"],
                    ts.iter()
                        .map(|(t, u)| {
                            vec![
                                t.clone(),
                                u.running.to_string(),
                                num(u.concurrency),
                                u.open.to_string(),
                                num(u.quota),
                                if u.own_limits { "yes" } else { "no" }.to_owned(),
                            ]
                        })
                        .collect(),
                )
            });
        }
        QueueCommand::TenantLimits { queue, tenant, concurrency, quota } => {
            if concurrency.is_none() && quota.is_none() {
                return Err("give --concurrency and/or --quota (0 removes a value)".into());
            }
            let limits = fleet_jobs::tenant::TenantLimits { concurrency, quota };
            client.set_tenant_limits(&queue, tenant.as_deref(), limits).await.map_err(err)?;
            let target = format!("queue:{queue}/tenant:{}", tenant.as_deref().unwrap_or("*"));
            stores.audit("tenant.limits", target, serde_json::to_value(limits).unwrap_or_default(), 1).await;
            let who = tenant.as_deref().map_or("every tenant".to_owned(), |t| format!("tenant {t}"));
            let shown = |v: Option<u64>| match v {
                None => "unchanged".to_owned(),
                Some(0) => "none".to_owned(),
                Some(n) => n.to_string(),
            };
            println!(
                "limits of {who} on queue {queue} set: concurrency {}, quota {}",
                shown(concurrency),
                shown(quota)
            );
        }
        QueueCommand::LimitOverride { key, rate, burst, concurrency, breaker_failures, breaker_cooldown_ms } => {
            let spec = fleet_jobs::limits::LimitSpec {
                rate,
                burst,
                concurrency,
                breaker_failures,
                breaker_cooldown_ms,
                process_rate: None,
            };
            let limiter = fleet_jobs::limits::Limiter::new(
                client.connection(),
                client.prefix(),
                std::time::Duration::from_secs(30),
            );
            limiter.set_spec(&key, &spec).await.map_err(err)?;
            stores
                .audit("limit.override", format!("limit:{key}"), serde_json::to_value(&spec).unwrap_or_default(), 1)
                .await;
            print(json, &serde_json::json!({"key": key, "override": spec}), || format!("limit {key} overridden"));
        }
        QueueCommand::PauseSchedule { name } => {
            let db = stores.db().await?;
            crate::ticker::set_paused(&db, &name, true).await.map_err(|e| e.to_string())?;
            stores.audit("schedule.pause", format!("schedule:{name}"), serde_json::json!({}), 1).await;
            println!("paused schedule {name} (every scheduler sees it within 5 s)");
        }
        QueueCommand::ResumeSchedule { name } => {
            let db = stores.db().await?;
            crate::ticker::set_paused(&db, &name, false).await.map_err(|e| e.to_string())?;
            stores.audit("schedule.resume", format!("schedule:{name}"), serde_json::json!({}), 1).await;
            println!("resumed schedule {name}");
        }
        QueueCommand::Schedules => {
            let db = stores.db().await?;
            type Row = (
                String,
                Option<chrono::DateTime<chrono::Utc>>,
                Option<chrono::DateTime<chrono::Utc>>,
                i64,
                Option<String>,
            );
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT name, last_fired_at, next_fire_at, missed_ticks, CASE WHEN paused THEN 'paused' ELSE last_error END FROM schedule_state ORDER BY name",
            )
            .fetch_all(&db)
            .await
            .map_err(|e| format!("reading schedules: {e}"))?;
            let view: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| serde_json::json!({"name": r.0, "last_fired_at": r.1, "next_fire_at": r.2, "missed_ticks": r.3, "last_error": r.4}))
                .collect();
            print(json, &view, || {
                table(
                    &["SCHEDULE", "LAST FIRED", "NEXT", "MISSED", "ERROR"],
                    rows.iter()
                        .map(|r| {
                            vec![r.0.clone(), when(r.1), when(r.2), r.3.to_string(), r.4.clone().unwrap_or_default()]
                        })
                        .collect(),
                )
            });
        }
    }
    Ok(())
}

async fn schedule(stores: &Stores, json: bool, command: ScheduleCommand) -> Result<(), String> {
    let db = stores.db().await?;
    let dberr = |e: sqlx::Error| e.to_string();
    let show = |spec: &crate::schedule::ScheduleSpec| {
        print(json, spec, || serde_json::to_string_pretty(spec).unwrap_or_default());
    };
    let stored = |name: &str| {
        format!("no schedule {name:?} in PostgreSQL (a config-file schedule is changed in the config file)")
    };
    match command {
        ScheduleCommand::Show { name } => {
            let spec = crate::ticker::load_spec(&db, &name).await.map_err(dberr)?.ok_or_else(|| stored(&name))?;
            show(&spec);
        }
        ScheduleCommand::Create { name, fields } => {
            let (Some(_), Some(_)) = (&fields.cron, &fields.kind) else {
                return Err("a new schedule needs --cron and --kind".into());
            };
            let base = crate::schedule::ScheduleSpec {
                name: name.clone(),
                cron: String::new(),
                timezone: "UTC".into(),
                kind: String::new(),
                args: serde_json::json!({}),
                queue: None,
                priority: None,
                max_attempts: None,
                missed: Default::default(),
                catch_up_secs: 0,
                paused: false,
                dedup: None,
            };
            let spec = fields.apply(base)?;
            if !crate::ticker::store_spec(&db, &spec, false).await.map_err(dberr)? {
                return Err(format!("schedule {name:?} exists: use schedule edit"));
            }
            stores
                .audit(
                    "schedule.create",
                    format!("schedule:{name}"),
                    serde_json::to_value(&spec).unwrap_or_default(),
                    1,
                )
                .await;
            show(&spec);
        }
        ScheduleCommand::Edit { name, fields } => {
            let old = crate::ticker::load_spec(&db, &name).await.map_err(dberr)?.ok_or_else(|| stored(&name))?;
            let spec = fields.apply(old)?;
            if !crate::ticker::store_spec(&db, &spec, true).await.map_err(dberr)? {
                return Err(stored(&name));
            }
            stores
                .audit("schedule.edit", format!("schedule:{name}"), serde_json::to_value(&spec).unwrap_or_default(), 1)
                .await;
            show(&spec);
        }
        ScheduleCommand::Delete { name, yes } => {
            if !confirm(&format!("delete schedule {name}"), yes)? {
                return Err("cancelled".into());
            }
            if !crate::ticker::delete_spec(&db, &name).await.map_err(dberr)? {
                return Err(stored(&name));
            }
            stores.audit("schedule.delete", format!("schedule:{name}"), serde_json::json!({}), 1).await;
            println!("deleted schedule {name}");
        }
        ScheduleCommand::Run { name } => {
            let spec = crate::ticker::load_spec(&db, &name).await.map_err(dberr)?.ok_or_else(|| stored(&name))?;
            let s = crate::schedule::Schedule::parse(spec)?;
            let client = stores.client().await?;
            let id = crate::ticker::run_now(&client, &s).await.map_err(|e| e.to_string())?;
            stores.audit("schedule.run", format!("schedule:{name}"), serde_json::json!({"job": &id.0}), 1).await;
            print(json, &serde_json::json!({"schedule": name, "job": &id.0}), || format!("enqueued job {}", id.0));
        }
    }
    Ok(())
}

/// Runs `fleetctl`.
pub fn main() -> ExitCode {
    let args = Args::parse();
    fleet_jobs::tls::install_crypto_provider();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(execute(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetctl: {e}");
            ExitCode::FAILURE
        }
    }
}
