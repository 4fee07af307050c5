//! Handler of the scripted `probe` kind (see `fleet_jobs::catalogue::probe`).

use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_jobs::envelope::now_ms;
use fleet_kit::{Handler, JobContext, JobError};
use std::time::Duration;

/// Does what its arguments say.
#[derive(Debug, Clone, Copy, Default)]
pub struct Probe;

impl Handler for Probe {
    type Args = ProbeArgs;

    fn tenant_limit_keys(&self, args: &ProbeArgs) -> Vec<String> {
        args.limit_key.iter().cloned().collect()
    }

    async fn handle(&self, args: ProbeArgs, ctx: JobContext) -> Result<(), JobError> {
        match args.action {
            ProbeAction::Succeed => Ok(()),
            ProbeAction::FailTimes { times } if ctx.attempt <= times => {
                Err(JobError::retry(format!("probe: scripted failure {} of {times}", ctx.attempt)))
            }
            ProbeAction::FailTimes { .. } => Ok(()),
            ProbeAction::Fail => Err(JobError::retry("probe: scripted failure")),
            ProbeAction::Panic => panic!("probe: scripted panic"),
            ProbeAction::Crash => {
                tracing::error!("probe: scripted crash, aborting the worker process");
                std::process::abort()
            }
            ProbeAction::Sleep { ms } => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            }
            ProbeAction::GiveUp => Err(JobError::give_up("probe: scripted give-up")),
            ProbeAction::RetryAfter { ms, times } if ctx.attempt <= times => {
                Err(JobError::retry_after("probe: asked to retry later", Duration::from_millis(ms)))
            }
            ProbeAction::RetryAfter { .. } => Ok(()),
            ProbeAction::SnoozeUntil { ms, until } if now_ms() < until => {
                Err(JobError::snooze(Duration::from_millis(ms)))
            }
            ProbeAction::SnoozeUntil { .. } => Ok(()),
        }
    }
}
