//! The `fleet-scheduler` command: run the scheduler (cron ticks + HTTP API), manage API
//! keys, or re-seal stored secrets after a key rotation.

use crate::api::auth::Role;
use crate::config::SchedulerConfig;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Fleet scheduler: cron schedules and the HTTP API.
#[derive(Parser)]
#[command(name = "fleet-scheduler", version)]
struct Args {
    /// TOML config file (FLEET_* environment variables override it).
    #[arg(long, short, env = "FLEET_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scheduler (the default).
    Run,
    /// Create an API key for a tenant and print it (shown once).
    CreateApiKey {
        /// Tenant the key acts for.
        #[arg(long)]
        tenant: String,
        /// A name to recognise the key by.
        #[arg(long, default_value = "")]
        name: String,
        /// Roles: enqueue, operator, admin (repeat for more than one).
        #[arg(long = "role", default_value = "enqueue")]
        roles: Vec<Role>,
    },
    /// Revoke an API key by its id (the part after `fk_`).
    RevokeApiKey {
        /// Key id.
        id: String,
    },
    /// Re-seal every stored secret (webhook endpoint secrets, calendar and comms source
    /// secrets) with the current key, `FLEET_SECRETS_KEY`, after a rotation; old keys in
    /// `FLEET_SECRETS_KEYS_OLD` open what they sealed. Also seals endpoint secrets still
    /// in plaintext. Prints counts per table; safe to re-run and to interrupt. Fails if a
    /// secret could not be opened with any configured key.
    ResealSecrets,
    /// Print the HTTP API's OpenAPI description (JSON) and exit. Needs no config and no
    /// running services, so clients can be generated from it offline.
    Openapi,
}

/// Runs the command.
pub fn main() -> ExitCode {
    let args = Args::parse();
    if matches!(args.command, Some(Command::Openapi)) {
        return match crate::api::openapi().to_pretty_json() {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleet-scheduler: cannot write the OpenAPI description: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // One rustls provider for the process (ring, as fleet_net's), before any TLS connection.
    fleet_jobs::tls::install_crypto_provider();
    let config = match SchedulerConfig::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-scheduler: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if config.log_format == crate::config::LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet-scheduler: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match args.command.unwrap_or(Command::Run) {
            Command::Run => crate::run(config, shutdown_signal()).await,
            Command::CreateApiKey { tenant, name, roles } => {
                let db = crate::db::connect_and_migrate_tls(&config.database_url, &config.database_tls, None).await?;
                fleet_jobs::tenant::validate_tenant(&tenant).map_err(anyhow::Error::msg)?;
                let key = crate::api::auth::create_api_key(&db, &tenant, &name, &roles).await?;
                // The id only (`fk_<id>_<secret>`): the secret is never recorded.
                let id = key.strip_prefix("fk_").and_then(|r| r.split_once('_')).map(|(id, _)| id).unwrap_or("");
                crate::audit::record(
                    &db,
                    crate::audit::Change {
                        actor: &crate::audit::local_actor("cli"),
                        tenant: None,
                        action: "api_key.create",
                        target: format!("key:{id}"),
                        params: serde_json::json!({"tenant": tenant, "name": name, "roles": roles}),
                        affected: 1,
                    },
                )
                .await?;
                println!("{key}");
                Ok(())
            }
            Command::RevokeApiKey { id } => {
                let db = crate::db::connect_and_migrate_tls(&config.database_url, &config.database_tls, None).await?;
                if crate::api::auth::revoke_api_key(&db, &id).await? {
                    crate::audit::record(
                        &db,
                        crate::audit::Change {
                            actor: &crate::audit::local_actor("cli"),
                            tenant: None,
                            action: "api_key.revoke",
                            target: format!("key:{id}"),
                            params: serde_json::json!({}),
                            affected: 1,
                        },
                    )
                    .await?;
                    println!("revoked {id}");
                    Ok(())
                } else {
                    anyhow::bail!("no active key with id {id}")
                }
            }
            Command::Openapi => unreachable!("answered before the config is read"),
            Command::ResealSecrets => {
                let secrets = fleet_accounts::secrets::SecretBox::from_env()
                    .map_err(|e| anyhow::anyhow!("FLEET_SECRETS_KEY: {e}"))?;
                let db = crate::db::connect_and_migrate_tls(&config.database_url, &config.database_tls, None).await?;
                println!("current key {}; old keys {:?}", secrets.key_id(), secrets.old_key_ids().collect::<Vec<_>>());
                let report = crate::reseal::reseal_all(&db, &secrets).await?;
                let mut failed = 0;
                for (table, counts) in &report {
                    println!("{table}: {counts}");
                    failed += counts.failed.len();
                }
                if failed > 0 {
                    anyhow::bail!(
                        "{failed} row(s) hold a secret that no configured key opens (add its key to FLEET_SECRETS_KEYS_OLD)"
                    );
                }
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-scheduler: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles_of(argv: &[&str]) -> Result<Vec<Role>, String> {
        match Args::try_parse_from(argv).map_err(|e| e.to_string())?.command {
            Some(Command::CreateApiKey { roles, .. }) => Ok(roles),
            _ => Err("not create-api-key".into()),
        }
    }

    #[test]
    fn create_api_key_takes_roles_by_name() {
        let base = ["fleet-scheduler", "create-api-key", "--tenant", "ops"];
        assert_eq!(roles_of(&base).unwrap(), vec![Role::Enqueue], "the default");
        let two = [&base[..], &["--role", "operator", "--role", "admin"]].concat();
        assert_eq!(roles_of(&two).unwrap(), vec![Role::Operator, Role::Admin]);
    }

    #[test]
    fn an_unknown_role_on_the_command_line_is_an_error_naming_the_valid_ones() {
        let e = roles_of(&["fleet-scheduler", "create-api-key", "--tenant", "ops", "--role", "admn"]).unwrap_err();
        for word in ["admn", "enqueue", "operator", "admin", "--role"] {
            assert!(e.contains(word), "{word}: {e}");
        }
    }
}
