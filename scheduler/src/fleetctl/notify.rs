//! `fleetctl notifications`: a notification and each channel's send record (PostgreSQL,
//! any tenant's: operators use it to answer "did the email go out, through which relay,
//! with which Message-ID?").

use super::{Stores, print, table, when};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub(super) enum NotificationCommand {
    /// One notification: its status and each channel's provider, status, message id and error.
    Show {
        /// The notification's id.
        id: String,
    },
}

pub(super) async fn notifications(stores: &Stores, json: bool, command: NotificationCommand) -> Result<(), String> {
    let db = stores.db().await?;
    match command {
        NotificationCommand::Show { id } => {
            let n = fleet_notify::store::get_notification(&db, None, &id).await.map_err(|e| e.to_string())?;
            print(json, &n, || {
                let mut out = format!(
                    "notification {}\nrecipient {}  template {}  category {}{}\nstatus {}{}\ncreated {}\n\n",
                    n.id,
                    n.recipient,
                    n.template,
                    n.category,
                    if n.urgent { " (urgent)" } else { "" },
                    n.status,
                    n.deferred_until.map(|t| format!(" until {}", when(Some(t)))).unwrap_or_default(),
                    when(Some(n.created_at)),
                );
                out.push_str(&table(
                    &["CHANNEL", "PROVIDER", "STATUS", "MESSAGE ID", "ATTEMPTS", "ERROR"],
                    n.sends
                        .iter()
                        .map(|s| {
                            vec![
                                s.channel.clone(),
                                s.provider.clone().unwrap_or_default(),
                                s.status.clone(),
                                s.provider_message_id.clone().unwrap_or_default(),
                                s.attempts.to_string(),
                                s.error.clone().unwrap_or_default(),
                            ]
                        })
                        .collect(),
                ));
                out
            });
            Ok(())
        }
    }
}
