//! `fleetctl calendar …` and `fleetctl comms …`: calendar and comms sources through the
//! same store functions as the HTTP API ([`fleet_calendar::store`], [`fleet_comms::store`]),
//! across tenants unless `--tenant` narrows them. Secrets are read from an environment
//! variable or stdin, sealed with `FLEET_SECRETS_KEY`, and never printed.

use super::{Stores, confirm, print, table, when};
use chrono::{DateTime, NaiveDate, Utc};
use clap::Subcommand;
use fleet_accounts::secrets::SecretBox;
use fleet_accounts::sources::{SourceTable, StoreError, sync_now};
use fleet_calendar::store::{self as calendar_store, CalendarSourceRequest, Window};
use fleet_comms::store::{self as comms_store, PageQuery, SourceRequest, TimelinePage};
use std::io::Read;

/// Where a source's password comes from (never a command-line argument).
#[derive(clap::Args, Debug, Clone)]
pub(super) struct Password {
    /// Read the password (or token) from this environment variable.
    #[arg(long, value_name = "VAR", conflicts_with = "password_stdin")]
    password_env: Option<String>,
    /// Read the password (or token) from standard input (a trailing newline is dropped).
    #[arg(long)]
    password_stdin: bool,
}

impl Password {
    fn read(&self) -> Result<Option<String>, String> {
        let password = if let Some(var) = &self.password_env {
            std::env::var(var).map_err(|_| format!("--password-env: the environment variable {var} is not set"))?
        } else if self.password_stdin {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map_err(|e| format!("reading the password from stdin: {e}"))?;
            s.trim_end_matches(['\n', '\r']).to_owned()
        } else {
            return Ok(None);
        };
        if password.is_empty() {
            return Err("the password is empty".into());
        }
        Ok(Some(password))
    }
}

/// What calendar and comms sources both offer.
#[derive(Subcommand)]
pub(super) enum SourceCommand {
    /// One source: its sync state (calendar: token or validators, quarantine reason; comms:
    /// per-folder cursors), last error and last report.
    State {
        /// Source id.
        id: String,
    },
    /// Remove a source with what only it holds (calendar: events, occurrences, its
    /// conflicts resolved; comms: cursors and the entries no other source holds).
    Remove {
        /// Source id.
        id: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// Sync a source now (the pending sync's job while one is pending).
    Sync {
        /// Source id.
        id: String,
    },
}

#[derive(Subcommand)]
pub(super) enum CalendarCommand {
    /// Calendar sources with their sync state.
    Sources {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this supplier's.
        #[arg(long)]
        supplier: Option<String>,
    },
    /// Register a calendar source.
    Add {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Supplier whose bookings these are.
        #[arg(long)]
        supplier: String,
        /// caldav (a collection URL), ics (a feed URL), google or graph (a calendar API URL,
        /// with the OAuth access token as password).
        #[arg(long, value_parser = ["caldav", "ics", "google", "graph"])]
        kind: String,
        /// Collection, feed or calendar API URL.
        #[arg(long)]
        url: String,
        /// Login name.
        #[arg(long)]
        username: Option<String>,
        #[command(flatten)]
        password: Password,
        /// Five-field cron expression in UTC (default `*/15 * * * *`).
        #[arg(long)]
        schedule: Option<String>,
        /// Quarantine a fetch deleting more than this share of the events (default 0.5).
        #[arg(long)]
        max_delete_share: Option<f64>,
    },
    #[command(flatten)]
    Source(SourceCommand),
    /// Release a quarantined source: its next sync (enqueued now) applies the fetch even
    /// past the mass-deletion guard, once.
    Release {
        /// Source id.
        id: String,
    },
    /// A supplier's occurrences in a window.
    Occurrences {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Supplier.
        #[arg(long)]
        supplier: String,
        /// From (RFC 3339 or YYYY-MM-DD; default now).
        #[arg(long, value_parser = parse_time)]
        from: Option<DateTime<Utc>>,
        /// To (RFC 3339 or YYYY-MM-DD; default 24 months after from).
        #[arg(long, value_parser = parse_time)]
        to: Option<DateTime<Utc>>,
    },
    /// A supplier's open double bookings.
    Conflicts {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Supplier.
        #[arg(long)]
        supplier: String,
    },
}

#[derive(Subcommand)]
pub(super) enum CommsCommand {
    /// Communication sources with their sync state.
    Sources {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Register a source: imap (--host --port --user, password), sms (--api-base
    /// --account-sid, the auth token as password) or in_app (nothing else).
    Add {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// imap, sms or in_app.
        #[arg(long, value_parser = ["imap", "sms", "in_app"])]
        kind: String,
        /// A name for people.
        #[arg(long, default_value = "")]
        name: String,
        /// IMAP host.
        #[arg(long)]
        host: Option<String>,
        /// IMAP port.
        #[arg(long)]
        port: Option<u16>,
        /// IMAP over implicit TLS.
        #[arg(long)]
        tls: bool,
        /// IMAP with STARTTLS (refused by the server: an error, never plain text).
        #[arg(long)]
        starttls: bool,
        /// IMAP with `AUTHENTICATE XOAUTH2`: the password is an OAuth2 access token.
        #[arg(long)]
        xoauth2: bool,
        /// IMAP login.
        #[arg(long)]
        user: Option<String>,
        /// SMS: the API's base URL.
        #[arg(long)]
        api_base: Option<String>,
        /// SMS: the account id.
        #[arg(long)]
        account_sid: Option<String>,
        /// IMAP folders to read (repeatable; default every selectable folder).
        #[arg(long = "folder")]
        folders: Vec<String>,
        /// Region for phone numbers without a country code (default GB).
        #[arg(long)]
        default_region: Option<String>,
        #[command(flatten)]
        password: Password,
        /// Five-field cron expression in UTC (default `*/5 * * * *`).
        #[arg(long)]
        schedule: Option<String>,
    },
    #[command(flatten)]
    Source(SourceCommand),
    /// The entries a source brought in, newest first.
    Entries {
        /// Source id.
        id: String,
        #[command(flatten)]
        page: Page,
    },
    /// A client's timeline across sources, newest first.
    Timeline {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Client.
        #[arg(long)]
        client: String,
        #[command(flatten)]
        page: Page,
    },
    /// Messages of a source that could not be parsed, and why.
    Quarantine {
        /// Source id.
        id: String,
    },
}

/// Paging of entries.
#[derive(clap::Args, Debug, Clone)]
pub(super) struct Page {
    /// Entries per page (1 to 200).
    #[arg(long, default_value_t = 50)]
    limit: i64,
    /// The `next` of the previous page.
    #[arg(long)]
    cursor: Option<String>,
}

impl Page {
    fn query(self) -> PageQuery {
        PageQuery { limit: Some(self.limit), cursor: self.cursor }
    }
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        .map_err(|_| format!("{s:?} is neither RFC 3339 (2027-06-01T00:00:00Z) nor a date (2027-06-01)"))
}

fn store_err(e: StoreError) -> String {
    e.to_string()
}

/// The key for sealing secrets: none when `FLEET_SECRETS_KEY` is unset (registering a
/// source with a password then says so), an error when it is malformed.
fn secrets() -> Result<Option<SecretBox>, String> {
    SecretBox::from_env_if_set().map_err(|e| format!("FLEET_SECRETS_KEY: {e}"))
}

fn compact(v: &Option<serde_json::Value>) -> String {
    v.as_ref().map(|v| v.to_string()).unwrap_or_default()
}

/// `key  value` lines.
fn fields(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter().map(|(k, v)| format!("{k:<width$}  {v}").trim_end().to_owned()).collect::<Vec<_>>().join("\n")
}

fn calendar_fields(s: &calendar_store::CalendarSourceView) -> String {
    fields(&[
        ("id", s.id.clone()),
        ("tenant", s.tenant.clone()),
        ("supplier", s.supplier.clone()),
        ("kind", s.kind.clone()),
        ("url", s.url.clone()),
        ("username", s.username.clone().unwrap_or_default()),
        ("password", if s.has_password { "(sealed)".into() } else { String::new() }),
        ("schedule", s.sync.schedule.clone()),
        ("next sync", when(Some(s.sync.next_sync_at))),
        ("last sync", when(s.sync.last_sync_at)),
        ("last ok", when(s.sync.last_ok_at)),
        ("last error", s.sync.last_error.clone().unwrap_or_default()),
        ("quarantined", s.quarantined.clone().unwrap_or_default()),
        ("state", s.state.to_string()),
        ("last report", compact(&s.sync.last_report)),
    ])
}

fn comms_fields(s: &comms_store::SourceView) -> String {
    let mut out = fields(&[
        ("id", s.id.clone()),
        ("tenant", s.tenant.clone()),
        ("kind", s.kind.clone()),
        ("name", s.name.clone()),
        ("config", s.config.to_string()),
        ("secret", if s.has_secret { "(sealed)".into() } else { String::new() }),
        ("schedule", s.sync.schedule.clone()),
        ("next sync", when(Some(s.sync.next_sync_at))),
        ("last sync", when(s.sync.last_sync_at)),
        ("last ok", when(s.sync.last_ok_at)),
        ("last error", s.sync.last_error.clone().unwrap_or_default()),
        ("quarantined", s.quarantined.to_string()),
        ("last report", compact(&s.sync.last_report)),
    ]);
    let cursors = s.cursors.as_array().cloned().unwrap_or_default();
    if !cursors.is_empty() {
        let cell = |c: &serde_json::Value, k: &str| match &c[k] {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        out.push_str("\n\n");
        out.push_str(&table(
            &["FOLDER", "UIDVALIDITY", "UIDNEXT", "LAST UID", "HIGHESTMODSEQ"],
            cursors
                .iter()
                .map(|c| {
                    ["folder", "uidvalidity", "uidnext", "last_uid", "highestmodseq"]
                        .iter()
                        .map(|k| cell(c, k))
                        .collect()
                })
                .collect(),
        ));
    }
    out
}

fn entries_table(page: &TimelinePage) -> String {
    let text = |e: &serde_json::Value, k: &str| e[k].as_str().unwrap_or_default().to_owned();
    let mut out = table(
        &["TIME", "CHANNEL", "DIRECTION", "CLIENT", "SUBJECT", "ID"],
        page.entries
            .iter()
            .map(|e| {
                let subject = e["subject"].as_str().or(e["snippet"].as_str()).unwrap_or_default();
                vec![
                    text(e, "time"),
                    text(e, "channel"),
                    text(e, "direction"),
                    text(e, "client"),
                    subject.chars().take(60).collect(),
                    text(e, "id"),
                ]
            })
            .collect(),
    );
    if let Some(next) = &page.next {
        out.push_str(&format!("\nmore: --cursor '{next}'"));
    }
    out
}

async fn source(
    stores: &Stores,
    db: &sqlx::PgPool,
    json: bool,
    table: SourceTable,
    command: SourceCommand,
) -> Result<(), String> {
    match (command, table) {
        (SourceCommand::State { id }, SourceTable::Calendar) => {
            let view = calendar_store::get(db, None, &id).await.map_err(store_err)?;
            print(json, &view, || calendar_fields(&view));
        }
        (SourceCommand::State { id }, SourceTable::Comms) => {
            let view = comms_store::get(db, None, &id).await.map_err(store_err)?;
            print(json, &view, || comms_fields(&view));
        }
        (SourceCommand::Remove { id, yes }, table) => {
            let what = match table {
                SourceTable::Calendar => {
                    let view = calendar_store::get(db, None, &id).await.map_err(store_err)?;
                    format!("calendar source {id} of {}/{} with its events and occurrences", view.tenant, view.supplier)
                }
                SourceTable::Comms => {
                    let view = comms_store::get(db, None, &id).await.map_err(store_err)?;
                    format!("{} source {id} of {} with the entries only it holds", view.kind, view.tenant)
                }
            };
            if !confirm(&format!("remove {what}"), yes)? {
                return Err("cancelled".into());
            }
            match table {
                SourceTable::Calendar => calendar_store::delete(db, None, &id).await,
                SourceTable::Comms => comms_store::delete(db, None, &id).await,
            }
            .map_err(store_err)?;
            print(json, &serde_json::json!({"removed": id}), || format!("removed {id}"));
        }
        (SourceCommand::Sync { id }, table) => {
            let job = sync_now(db, &stores.client().await?, table, None, &id).await.map_err(store_err)?;
            print(json, &serde_json::json!({"source": id, "job": job.to_string()}), || {
                format!("sync of {id} enqueued: job {job}")
            });
        }
    }
    Ok(())
}

pub(super) async fn calendar(stores: &Stores, json: bool, command: CalendarCommand) -> Result<(), String> {
    let db = stores.db().await?;
    match command {
        CalendarCommand::Sources { tenant, supplier } => {
            let list = calendar_store::list(&db, tenant.as_deref(), supplier.as_deref()).await.map_err(store_err)?;
            print(json, &list, || {
                table(
                    &["ID", "TENANT", "SUPPLIER", "KIND", "SCHEDULE", "NEXT SYNC", "LAST OK", "PROBLEM"],
                    list.iter()
                        .map(|s| {
                            let problem = s.quarantined.as_ref().map(|q| format!("quarantined: {q}"));
                            vec![
                                s.id.clone(),
                                s.tenant.clone(),
                                s.supplier.clone(),
                                s.kind.clone(),
                                s.sync.schedule.clone(),
                                when(Some(s.sync.next_sync_at)),
                                when(s.sync.last_ok_at),
                                problem.or(s.sync.last_error.clone()).unwrap_or_default(),
                            ]
                        })
                        .collect(),
                )
            });
        }
        CalendarCommand::Add { tenant, supplier, kind, url, username, password, schedule, max_delete_share } => {
            let req = CalendarSourceRequest {
                supplier,
                kind,
                url,
                username,
                password: password.read()?,
                max_delete_share,
                schedule,
                push: None,
            };
            let secrets = if req.password.is_some() { secrets()? } else { None };
            let view = calendar_store::create(&db, secrets.as_ref(), &tenant, req).await.map_err(store_err)?;
            print(json, &view, || format!("added {}\n{}", view.id, calendar_fields(&view)));
        }
        CalendarCommand::Source(command) => source(stores, &db, json, SourceTable::Calendar, command).await?,
        CalendarCommand::Release { id } => {
            let job = calendar_store::release(&db, &stores.client().await?, None, &id).await.map_err(store_err)?;
            print(json, &serde_json::json!({"source": id, "released": true, "job": job.to_string()}), || {
                format!("released {id}: job {job} applies its next fetch past the deletion guard")
            });
        }
        CalendarCommand::Occurrences { tenant, supplier, from, to } => {
            let list =
                calendar_store::occurrences(&db, &tenant, &supplier, &Window { from, to }).await.map_err(store_err)?;
            print(json, &list, || {
                table(
                    &["START", "END", "LOCAL START", "ZONE", "STATUS", "UID", "SUMMARY", "SOURCE"],
                    list.iter()
                        .map(|o| {
                            vec![
                                when(Some(o.start)),
                                when(Some(o.end)),
                                o.start_local.format("%Y-%m-%d %H:%M").to_string(),
                                o.zone
                                    .clone()
                                    .unwrap_or_else(|| if o.all_day { "all day".into() } else { String::new() }),
                                format!("{}{}", o.status.to_lowercase(), if o.transparent { " (free)" } else { "" }),
                                o.uid.clone(),
                                o.summary.clone().unwrap_or_default(),
                                o.source.clone(),
                            ]
                        })
                        .collect(),
                )
            });
        }
        CalendarCommand::Conflicts { tenant, supplier } => {
            let list = calendar_store::conflicts(&db, &tenant, &supplier).await.map_err(store_err)?;
            let side = |v: &serde_json::Value| {
                format!("{} {}", v["source"].as_str().unwrap_or_default(), v["occurrence"].as_str().unwrap_or_default())
            };
            print(json, &list, || {
                table(
                    &["ID", "START", "END", "A", "B"],
                    list.iter()
                        .map(|c| vec![c.id.clone(), when(Some(c.start)), when(Some(c.end)), side(&c.a), side(&c.b)])
                        .collect(),
                )
            });
        }
    }
    Ok(())
}

pub(super) async fn comms(stores: &Stores, json: bool, command: CommsCommand) -> Result<(), String> {
    let db = stores.db().await?;
    match command {
        CommsCommand::Sources { tenant } => {
            let list = comms_store::list(&db, tenant.as_deref()).await.map_err(store_err)?;
            print(json, &list, || {
                table(
                    &["ID", "TENANT", "KIND", "NAME", "SCHEDULE", "NEXT SYNC", "LAST OK", "QUARANTINED", "ERROR"],
                    list.iter()
                        .map(|s| {
                            vec![
                                s.id.clone(),
                                s.tenant.clone(),
                                s.kind.clone(),
                                s.name.clone(),
                                s.sync.schedule.clone(),
                                when(Some(s.sync.next_sync_at)),
                                when(s.sync.last_ok_at),
                                s.quarantined.to_string(),
                                s.sync.last_error.clone().unwrap_or_default(),
                            ]
                        })
                        .collect(),
                )
            });
        }
        CommsCommand::Add {
            tenant,
            kind,
            name,
            host,
            port,
            tls,
            starttls,
            xoauth2,
            user,
            api_base,
            account_sid,
            folders,
            default_region,
            password,
            schedule,
        } => {
            let req = SourceRequest {
                kind,
                name,
                host,
                port,
                tls,
                starttls,
                auth: xoauth2.then_some(fleet_comms::account::AuthMethod::Xoauth2),
                user,
                password: password.read()?,
                api_base,
                account_sid,
                folders: (!folders.is_empty()).then_some(folders),
                default_region,
                schedule,
            };
            let secrets = if req.password.is_some() { secrets()? } else { None };
            let view = comms_store::create(&db, secrets.as_ref(), &tenant, req).await.map_err(store_err)?;
            print(json, &view, || format!("added {}\n{}", view.id, comms_fields(&view)));
        }
        CommsCommand::Source(command) => source(stores, &db, json, SourceTable::Comms, command).await?,
        CommsCommand::Entries { id, page } => {
            let page = comms_store::source_entries(&db, None, &id, &page.query()).await.map_err(store_err)?;
            print(json, &page, || entries_table(&page));
        }
        CommsCommand::Timeline { tenant, client, page } => {
            let page = comms_store::client_timeline(&db, &tenant, &client, &page.query()).await.map_err(store_err)?;
            print(json, &page, || entries_table(&page));
        }
        CommsCommand::Quarantine { id } => {
            let list = comms_store::quarantine(&db, None, &id).await.map_err(store_err)?;
            print(json, &list, || {
                table(
                    &["QUARANTINED", "FOLDER", "UIDVALIDITY", "UID", "SIZE", "REASON"],
                    list.iter()
                        .map(|q| {
                            vec![
                                when(Some(q.quarantined_at)),
                                q.folder.clone(),
                                q.uidvalidity.to_string(),
                                q.uid.to_string(),
                                q.size.to_string(),
                                q.reason["reason"].as_str().map(str::to_owned).unwrap_or_else(|| q.reason.to_string()),
                            ]
                        })
                        .collect(),
                )
            });
        }
    }
    Ok(())
}
