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
            ProbeAction::Report { steps, step_ms, pad_bytes } => {
                for step in 1..=u64::from(steps) {
                    ctx.progress_of(step, u64::from(steps), format!("step {step}"));
                    if step_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(step_ms)).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
                ctx.set_result(&serde_json::json!({"steps": steps, "pad": "x".repeat(pad_bytes)})).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_kit::testing::{
        TestJob, assert_give_up, assert_retry, assert_retry_after, assert_snooze, perform_job, perform_json,
    };

    fn probe(action: ProbeAction) -> ProbeArgs {
        ProbeArgs::new(action)
    }

    #[tokio::test]
    async fn report_reports_each_step_then_records_its_result() {
        let job = TestJob::new();
        job.perform(&Probe, probe(ProbeAction::Report { steps: 3, step_ms: 0, pad_bytes: 2 })).await.unwrap();
        let reported = job.reported();
        let done: Vec<_> = reported.progress.iter().map(|p| (p.done, p.message.as_str())).collect();
        assert_eq!(done, [(Some(1), "step 1"), (Some(2), "step 2"), (Some(3), "step 3")]);
        assert_eq!(reported.progress[2].percent, 100.0);
        assert_eq!(reported.result, Some(serde_json::json!({"steps": 3, "pad": "xx"})));
        let big = TestJob::new();
        let too_large =
            big.perform(&Probe, probe(ProbeAction::Report { steps: 1, step_ms: 0, pad_bytes: 70_000 })).await;
        assert!(assert_give_up(&too_large).contains("over the limit of 65536"), "{too_large:?}");
        assert_eq!(big.reported().result, None);
    }

    #[tokio::test]
    async fn fail_times_fails_exactly_its_first_attempts() {
        let action = || probe(ProbeAction::FailTimes { times: 2 });
        let first = TestJob::new().attempt(1, 5).perform(&Probe, action()).await;
        assert_eq!(assert_retry(&first), "probe: scripted failure 1 of 2");
        let second = TestJob::new().attempt(2, 5).perform(&Probe, action()).await;
        assert_eq!(assert_retry(&second), "probe: scripted failure 2 of 2");
        TestJob::new().attempt(3, 5).perform(&Probe, action()).await.unwrap();
    }

    #[tokio::test]
    async fn each_scripted_outcome_is_the_one_the_engine_acts_on() {
        perform_job(&Probe, probe(ProbeAction::Succeed)).await.unwrap();
        assert_eq!(assert_retry(&perform_job(&Probe, probe(ProbeAction::Fail)).await), "probe: scripted failure");
        assert_eq!(assert_give_up(&perform_job(&Probe, probe(ProbeAction::GiveUp)).await), "probe: scripted give-up");
        let asked = perform_job(&Probe, probe(ProbeAction::RetryAfter { ms: 1500, times: 1 })).await;
        assert_eq!(assert_retry_after(&asked), ("probe: asked to retry later", Duration::from_millis(1500)));
        let second = TestJob::new().attempt(2, 5);
        second.perform(&Probe, probe(ProbeAction::RetryAfter { ms: 1500, times: 1 })).await.unwrap();
        let until = now_ms() + 60_000;
        let snoozed = perform_job(&Probe, probe(ProbeAction::SnoozeUntil { ms: 250, until })).await;
        assert_eq!(assert_snooze(&snoozed), Duration::from_millis(250));
        perform_job(&Probe, probe(ProbeAction::SnoozeUntil { ms: 250, until: now_ms() - 1 })).await.unwrap();
        // A panic is a retryable failure, with the panic's words.
        let panicked = perform_job(&Probe, probe(ProbeAction::Panic)).await;
        assert_eq!(assert_retry(&panicked), "panicked: probe: scripted panic");
    }

    #[tokio::test]
    async fn a_sleep_past_the_timeout_is_a_retry_and_clients_write_probes_as_json() {
        let slow = TestJob::new().timeout(Duration::from_millis(20));
        let out = slow.perform(&Probe, probe(ProbeAction::Sleep { ms: 60_000 })).await;
        assert_eq!(assert_retry(&out), "timed out after 20 ms");
        perform_json(&Probe, r#"{"do": "sleep", "ms": 1, "tag": "quick"}"#).await.unwrap();
        let out = perform_json(&Probe, r#"{"do": "explode"}"#).await;
        assert!(assert_give_up(&out).starts_with(r#"arguments do not decode as kind "probe""#), "{out:?}");
    }

    #[test]
    fn the_limit_key_a_probe_names_is_in_its_tenants_namespace() {
        let args = probe(ProbeAction::Succeed).limited("webhook:endpoint:ep_1");
        assert_eq!(
            TestJob::new().tenant("mallory").limit_keys(&Probe, &args),
            ["tenant:mallory:webhook:endpoint:ep_1"]
        );
        assert_eq!(TestJob::new().limit_keys(&Probe, &args), ["webhook:endpoint:ep_1"]);
    }
}
