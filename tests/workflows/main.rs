//! Workflows end to end against the real Redis, with in-process workers: results passed
//! between steps, each failure policy after a dead-lettered step, a cancelled step, a
//! step whose worker died, a workflow cancelled midway, fan-out at run time, a
//! 10,000-step fan-out/fan-in, nesting, and the HTTP API's tenant isolation.
//! Every test waits for the workflow's state with a timeout.

use fleet_jobs::backend::{EngineConfig, calls};
use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_jobs::workflows::{
    OnFailure, StepSpec, StepState, SubmitOptions, WorkflowSpec, WorkflowState, WorkflowStatus, step_job_id,
};
use fleet_jobs::{JobArgs, JobState};
use fleet_kit::{Handler, JobContext, JobError};
use fleet_tests::{TestEnv, eventually};
use fleet_worker::{QueueConfig, Registry, WorkerConfig};
use serde::{Deserialize, Serialize};
use std::time::Duration;

mod api;

const T: Duration = Duration::from_secs(30);

/// The test step: records `emit` as its result, or the sum of its dependencies'
/// numeric results (`sum`), and adds `fan_out` steps at run time.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Step {
    #[serde(default)]
    emit: Option<i64>,
    #[serde(default)]
    sum: Vec<String>,
    #[serde(default)]
    sum_all: bool,
    #[serde(default)]
    fan_out: u32,
}

impl JobArgs for Step {
    const KIND: &'static str = "wftest";
}

struct StepHandler;

impl Handler for StepHandler {
    type Args = Step;

    async fn handle(&self, args: Step, ctx: JobContext) -> Result<(), JobError> {
        let wf = ctx.workflow().ok_or_else(|| JobError::give_up("not a workflow step"))?;
        if args.fan_out > 0 {
            let steps: Vec<StepSpec> = (0..args.fan_out)
                .map(|i| {
                    StepSpec::job(
                        format!("leaf-{i}"),
                        Step::KIND,
                        &Step { emit: Some(i64::from(i)), ..Step::default() },
                    )
                })
                .collect::<Result<_, _>>()?;
            wf.add_steps(&steps).await?;
        }
        let mut total = None;
        if args.sum_all {
            let all = wf.results().await?;
            total =
                Some(all.iter().filter(|(k, _)| k.starts_with("leaf-")).filter_map(|(_, v)| v.as_i64()).sum::<i64>());
        } else if !args.sum.is_empty() {
            let mut s = 0;
            for name in &args.sum {
                s += wf.result(name).await?.and_then(|v| v.as_i64()).unwrap_or(0);
            }
            total = Some(s);
        }
        if let Some(v) = total.or(args.emit) {
            ctx.set_result(&v).await?;
        }
        Ok(())
    }
}

fn registry() -> Registry {
    Registry::builtin().register(StepHandler)
}

fn config(env: &TestEnv, queues: &[&str]) -> WorkerConfig {
    let mut c = env.config(queues[0], 16);
    c.queues = queues
        .iter()
        .map(|q| QueueConfig { name: (*q).to_owned(), concurrency: 16, fetch_batch: None, partitions: None })
        .collect();
    c
}

fn step(name: &str, args: Step) -> StepSpec {
    StepSpec::job(name, Step::KIND, &args).unwrap()
}

fn probe(name: &str, action: ProbeAction) -> StepSpec {
    StepSpec::job(name, ProbeArgs::KIND, &ProbeArgs::new(action)).unwrap().max_attempts(1)
}

async fn until_final(env: &TestEnv, id: &str, timeout: Duration) -> WorkflowStatus {
    eventually(&format!("workflow {id} to end"), timeout, || async {
        env.client.workflow_state(id).await.unwrap().filter(|s| s.is_final())
    })
    .await;
    env.client.workflow(id).await.unwrap().unwrap()
}

async fn until_step(env: &TestEnv, id: &str, name: &str, state: StepState) -> WorkflowStatus {
    eventually(&format!("step {name} of {id} to be {state:?}"), T, || async {
        env.client.workflow(id).await.unwrap().filter(|s| s.steps.iter().any(|st| st.name == name && st.state == state))
    })
    .await
}

fn state_of(s: &WorkflowStatus, name: &str) -> StepState {
    s.steps.iter().find(|st| st.name == name).unwrap_or_else(|| panic!("no step {name}")).state
}

fn result_of(s: &WorkflowStatus, name: &str) -> Option<serde_json::Value> {
    let st = s.steps.iter().find(|st| st.name == name)?;
    st.result.as_ref().map(|r| serde_json::from_str(r.get()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_pass_between_steps_across_queues() {
    let env = TestEnv::new().await;
    let w = env.worker(config(&env, &["wf-a", "wf-b"]), registry()).await;
    let spec = WorkflowSpec {
        steps: vec![
            step("two", Step { emit: Some(2), ..Step::default() }).queue("wf-a"),
            step("three", Step { emit: Some(3), ..Step::default() }).queue("wf-b"),
            step("sum", Step { sum: vec!["two".into(), "three".into()], ..Step::default() })
                .queue("wf-a")
                .after(["two", "three"]),
        ],
    };
    let id = env.client.submit_workflow(&spec, SubmitOptions::default()).await.unwrap();
    let s = until_final(&env, &id, T).await;
    assert_eq!(s.state, WorkflowState::Succeeded, "{s:?}");
    assert_eq!(result_of(&s, "sum"), Some(serde_json::json!(5)));
    assert_eq!((s.total, s.open, s.failed), (3, 0, 0));
    // Submitting the same id again creates nothing new.
    let again = env.client.submit_workflow(&spec, SubmitOptions { id: Some(id.clone()), ..Default::default() }).await;
    assert_eq!(again.unwrap(), id);
    assert_eq!(env.stats("wf-a").await.enqueued, 2);
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_policy_resolves_the_dependants_of_a_dead_lettered_step() {
    let env = TestEnv::new().await;
    let w = env.worker(config(&env, &["default"]), registry()).await;
    let ok = || Step { emit: Some(1), ..Step::default() };
    let spec = WorkflowSpec {
        steps: vec![
            probe("bad", ProbeAction::GiveUp),
            step("fails", ok()).after(["bad"]),
            step("after-fails", ok()).after(["fails"]),
            step("skipped", ok()).after_with("bad", OnFailure::Skip),
            step("after-skipped", ok()).after(["skipped"]),
            step("after-skipped-run", ok()).after_with("skipped", OnFailure::Run),
            step("runs", ok()).after_with("bad", OnFailure::Run),
            step("good", ok()),
            step("mixed", ok()).after(["good"]).after_with("bad", OnFailure::Skip),
        ],
    };
    let id = env.client.submit_workflow(&spec, SubmitOptions::default()).await.unwrap();
    let s = until_final(&env, &id, T).await;
    assert_eq!(s.state, WorkflowState::Failed);
    let expect = [
        ("bad", StepState::Failed),
        ("fails", StepState::Failed),
        ("after-fails", StepState::Failed),
        ("skipped", StepState::Skipped),
        ("after-skipped", StepState::Skipped),
        ("after-skipped-run", StepState::Succeeded),
        ("runs", StepState::Succeeded),
        ("good", StepState::Succeeded),
        ("mixed", StepState::Skipped),
    ];
    for (name, state) in expect {
        assert_eq!(state_of(&s, name), state, "step {name}: {s:?}");
    }
    // The dead-lettered step is in the dead letters; the failed dependants never ran.
    let bad = env.client.job_state("default", step_job_id(&id, "bad").as_str()).await.unwrap();
    assert_eq!(bad, Some(JobState::Dead));
    assert_eq!(env.client.job_state("default", step_job_id(&id, "fails").as_str()).await.unwrap(), None);
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_step_resolves_its_dependants_without_any_worker_on_its_queue() {
    let env = TestEnv::new().await;
    let w = env.worker(config(&env, &["default"]), registry()).await;
    let ok = || Step { emit: Some(1), ..Step::default() };
    let spec = WorkflowSpec {
        steps: vec![
            step("stuck", ok()).queue("nobody"),
            step("runs", ok()).after_with("stuck", OnFailure::Run),
            step("fails", ok()).after(["stuck"]),
        ],
    };
    let id = env.client.submit_workflow(&spec, SubmitOptions::default()).await.unwrap();
    let job = step_job_id(&id, "stuck");
    assert_eq!(env.client.job_state("nobody", job.as_str()).await.unwrap(), Some(JobState::Ready));
    env.client.cancel("nobody", job.as_str()).await.unwrap();
    let s = until_final(&env, &id, T).await;
    assert_eq!(s.state, WorkflowState::Failed);
    assert_eq!(state_of(&s, "stuck"), StepState::Cancelled);
    assert_eq!(state_of(&s, "runs"), StepState::Succeeded);
    assert_eq!(state_of(&s, "fails"), StepState::Failed);
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_worker_died_dead_letters_and_its_dependants_go_on() {
    let env = TestEnv::new().await;
    // One lost lease is enough to dead-letter a job on this queue.
    let keys = env.client.keys("default");
    let _: () = redis::cmd("HSET")
        .arg(&keys.conf)
        .arg("crash_limit")
        .arg(1)
        .query_async(&mut env.client.connection())
        .await
        .unwrap();
    let spec = WorkflowSpec {
        steps: vec![
            step("lost", Step { emit: Some(1), ..Step::default() }),
            step("after", Step { emit: Some(2), ..Step::default() }).after_with("lost", OnFailure::Run),
        ],
    };
    let id = env.client.submit_workflow(&spec, SubmitOptions::default()).await.unwrap();
    // A worker leases the step, then dies: it never completes and never renews.
    let mut dying = EngineConfig::new(&env.prefix, "default", "dying");
    dying.lease = Duration::from_millis(1);
    let leased = calls::lease_for(&mut env.client.connection(), &keys, &dying, 10, false).await.unwrap();
    assert_eq!(leased.jobs.len(), 1);
    // A live worker's heartbeat takes the lease back: the step dies, and the workflow goes on.
    let w = env.worker(config(&env, &["default"]), registry()).await;
    let s = until_final(&env, &id, T).await;
    assert_eq!(state_of(&s, "lost"), StepState::Failed, "{s:?}");
    assert_eq!(state_of(&s, "after"), StepState::Succeeded);
    assert_eq!(s.state, WorkflowState::Failed);
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_cancelled_midway_cancels_queued_running_and_waiting_steps() {
    let env = TestEnv::new().await;
    let w = env.worker(config(&env, &["default"]), registry()).await;
    let spec = WorkflowSpec {
        steps: vec![
            step("first", Step { emit: Some(1), ..Step::default() }),
            step("queued", Step::default()).queue("nobody").after(["first"]),
            probe("running", ProbeAction::Sleep { ms: 60_000 }).after(["first"]),
            step("waiting", Step::default()).after(["queued", "running"]),
        ],
    };
    let id = env.client.submit_workflow(&spec, SubmitOptions::default()).await.unwrap();
    until_step(&env, &id, "queued", StepState::Enqueued).await;
    let running = step_job_id(&id, "running");
    // The status shows the step whose job runs now as running, the others as they are.
    let s = until_step(&env, &id, "running", StepState::Running).await;
    assert_eq!(state_of(&s, "queued"), StepState::Enqueued);
    assert_eq!(state_of(&s, "waiting"), StepState::Waiting);
    assert_eq!(env.client.job_state("default", running.as_str()).await.unwrap(), Some(JobState::Running));
    assert_eq!(env.client.cancel_workflow(&id).await.unwrap(), Some(WorkflowState::Cancelled));
    let s = env.client.workflow(&id).await.unwrap().unwrap();
    assert_eq!(s.state, WorkflowState::Cancelled);
    assert_eq!(state_of(&s, "first"), StepState::Succeeded);
    for name in ["queued", "running", "waiting"] {
        assert_eq!(state_of(&s, name), StepState::Cancelled, "{name}");
    }
    let queued = step_job_id(&id, "queued");
    assert_eq!(env.client.job_state("nobody", queued.as_str()).await.unwrap(), Some(JobState::Cancelled));
    assert_eq!(env.client.job_state("default", running.as_str()).await.unwrap(), Some(JobState::Cancelled));
    // The cancelled jobs' ends reach the workflow and change nothing.
    eventually("the outbox to be applied", T, || async {
        let n: i64 = redis::cmd("HLEN")
            .arg(format!("{}:{{default}}:wfout", env.prefix))
            .query_async(&mut env.client.connection())
            .await
            .unwrap();
        (n == 0).then_some(())
    })
    .await;
    assert_eq!(env.client.workflow(&id).await.unwrap().unwrap().state, WorkflowState::Cancelled);
    assert_eq!(env.client.cancel_workflow(&id).await.unwrap(), Some(WorkflowState::Cancelled));
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_added_at_run_time_are_waited_for_by_the_fan_in() {
    let env = TestEnv::new().await;
    let w = env.worker(config(&env, &["default"]), registry()).await;
    let spec = WorkflowSpec {
        steps: vec![
            step("split", Step { fan_out: 20, ..Step::default() }),
            step("gather", Step { sum_all: true, ..Step::default() }).after(["split"]),
        ],
    };
    let id = env.client.submit_workflow(&spec, SubmitOptions::default()).await.unwrap();
    let s = until_final(&env, &id, T).await;
    assert_eq!(s.state, WorkflowState::Succeeded, "{s:?}");
    assert_eq!(s.total, 22);
    assert_eq!(result_of(&s, "gather"), Some(serde_json::json!((0..20).sum::<i64>())));
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_step_fan_out_and_fan_in_finishes() {
    let env = TestEnv::new().await;
    let mut c = config(&env, &["default"]);
    c.queues[0].concurrency = 64;
    let w = env.worker(c, registry()).await;
    let n = 10_000;
    let mut steps: Vec<StepSpec> =
        (0..n).map(|i| step(&format!("leaf-{i}"), Step { emit: Some(1), ..Step::default() })).collect();
    steps.push(step("gather", Step { sum_all: true, ..Step::default() }).after((0..n).map(|i| format!("leaf-{i}"))));
    let id = env.client.submit_workflow(&WorkflowSpec { steps }, SubmitOptions::default()).await.unwrap();
    let s = until_final(&env, &id, Duration::from_secs(300)).await;
    assert_eq!(s.state, WorkflowState::Succeeded);
    assert_eq!(s.total, n + 1);
    assert_eq!(result_of(&s, "gather"), Some(serde_json::json!(n)));
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_workflow_is_one_step_of_its_parent() {
    let env = TestEnv::new().await;
    let w = env.worker(config(&env, &["default"]), registry()).await;
    let ok = |v| Step { emit: Some(v), ..Step::default() };
    let inner = WorkflowSpec { steps: vec![step("x", ok(1)), step("y", ok(2)).after(["x"])] };
    let failing = WorkflowSpec { steps: vec![probe("boom", ProbeAction::GiveUp)] };
    let spec = WorkflowSpec {
        steps: vec![
            step("a", ok(1)),
            StepSpec::nested("inner", inner).after(["a"]),
            step("z", ok(3)).after(["inner"]),
            StepSpec::nested("broken", failing),
            step("after-broken", ok(4)).after(["broken"]),
        ],
    };
    let id = env.client.submit_workflow(&spec, SubmitOptions::default()).await.unwrap();
    let s = until_final(&env, &id, T).await;
    assert_eq!(state_of(&s, "inner"), StepState::Succeeded, "{s:?}");
    assert_eq!(state_of(&s, "z"), StepState::Succeeded);
    assert_eq!(state_of(&s, "broken"), StepState::Failed);
    assert_eq!(state_of(&s, "after-broken"), StepState::Failed);
    assert_eq!(s.state, WorkflowState::Failed);
    let child = s.steps.iter().find(|st| st.name == "inner").unwrap().workflow_id.clone().unwrap();
    let inner = env.client.workflow(&child).await.unwrap().unwrap();
    assert_eq!((inner.state, inner.parent.as_deref()), (WorkflowState::Succeeded, Some(id.as_str())));
    w.shutdown().await;
    env.cleanup().await;
}

fn tenant_opts(tenant: &str, quota: u64) -> SubmitOptions {
    SubmitOptions { tenant: Some(tenant.into()), step_quota: Some(quota), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_open_workflow_steps_are_held_to_its_quota() {
    let env = TestEnv::new().await;
    let parked = || WorkflowSpec {
        steps: vec![
            step("a", Step::default()).queue("nobody"),
            step("b", Step::default()).queue("nobody").after(["a"]),
            step("c", Step::default()).queue("nobody").after(["b"]),
        ],
    };
    let first = env.client.submit_workflow(&parked(), tenant_opts("studio-q", 5)).await.unwrap();
    assert_eq!(env.client.workflow_steps_used("studio-q").await.unwrap(), (3, 5));
    // Three more would pass five: refused, and nothing is stored.
    match env.client.submit_workflow(&parked(), tenant_opts("studio-q", 5)).await {
        Err(fleet_jobs::Error::WorkflowQuotaExceeded { tenant, open, asked, quota }) => {
            assert_eq!((tenant.as_str(), open, asked, quota), ("studio-q", 3, 3, 5));
        }
        other => panic!("expected the workflow quota to refuse, got {other:?}"),
    }
    // Another tenant has a quota of its own.
    env.client.submit_workflow(&parked(), tenant_opts("studio-r", 5)).await.unwrap();
    // A workflow that ends gives its steps back.
    assert_eq!(env.client.cancel_workflow(&first).await.unwrap(), Some(WorkflowState::Cancelled));
    assert_eq!(env.client.workflow_steps_used("studio-q").await.unwrap().0, 0);
    let second = env.client.submit_workflow(&parked(), tenant_opts("studio-q", 5)).await.unwrap();
    // A workflow whose end was never given back (its state gone) is found when the tenant
    // reaches the quota, and its steps are freed.
    let key = format!("{}:{{wf:{second}}}:meta", env.prefix);
    redis::cmd("DEL").arg(&key).query_async::<()>(&mut env.client.connection()).await.unwrap();
    // (The refusal above looked already; the next look is allowed a minute later.)
    let swept = format!("{}:wfquota:studio-q:swept", env.prefix);
    redis::cmd("DEL").arg(&swept).query_async::<()>(&mut env.client.connection()).await.unwrap();
    env.client.submit_workflow(&parked(), tenant_opts("studio-q", 5)).await.unwrap();
    assert_eq!(env.client.workflow_steps_used("studio-q").await.unwrap().0, 3);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_past_the_quota_fails_its_step_and_the_workflow_ends() {
    let env = TestEnv::new().await;
    let w = env.worker(config(&env, &["default"]), registry()).await;
    let spec = WorkflowSpec {
        steps: vec![
            step("split", Step { fan_out: 20, ..Step::default() }).max_attempts(1),
            step("gather", Step { sum_all: true, ..Step::default() }).after(["split"]),
        ],
    };
    let id = env.client.submit_workflow(&spec, tenant_opts("studio-f", 10)).await.unwrap();
    let s = until_final(&env, &id, T).await;
    assert_eq!(s.state, WorkflowState::Failed, "{s:?}");
    assert_eq!(state_of(&s, "split"), StepState::Failed);
    assert_eq!(state_of(&s, "gather"), StepState::Failed);
    assert_eq!(s.total, 2, "no step was added: {s:?}");
    let (used, _) = env.client.workflow_steps_used("studio-f").await.unwrap();
    assert_eq!(used, 0, "an ended workflow holds no quota");
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_cut_off_after_storing_is_finished_by_a_worker() {
    let env = TestEnv::new().await;
    let spec = WorkflowSpec {
        steps: vec![
            step("two", Step { emit: Some(2), ..Step::default() }),
            step("three", Step { emit: Some(3), ..Step::default() }),
            step("sum", Step { sum: vec!["two".into(), "three".into()], ..Step::default() }).after(["two", "three"]),
        ],
    };
    // The submitter stored the workflow and died before enqueueing its first steps.
    let id = env.client.store_workflow_only(&spec, SubmitOptions::default()).await.unwrap();
    assert_eq!(env.stats("default").await.enqueued, 0);
    // A fresh mark is left alone (its submitter may still be at work) ...
    assert_eq!(env.client.resume_submissions().await.unwrap(), 0);
    // ... one older than the grace period is taken up by a worker's heartbeat.
    redis::cmd("ZADD")
        .arg(format!("{}:wfsubmits", env.prefix))
        .arg("XX")
        .arg(1)
        .arg(&id)
        .query_async::<()>(&mut env.client.connection())
        .await
        .unwrap();
    let w = env.worker(config(&env, &["default"]), registry()).await;
    let s = until_final(&env, &id, T).await;
    assert_eq!(s.state, WorkflowState::Succeeded, "{s:?}");
    assert_eq!(result_of(&s, "sum"), Some(serde_json::json!(5)));
    assert_eq!(env.stats("default").await.enqueued, 3, "each step enqueued once");
    let marks: i64 = redis::cmd("ZCARD")
        .arg(format!("{}:wfsubmits", env.prefix))
        .query_async(&mut env.client.connection())
        .await
        .unwrap();
    assert_eq!(marks, 0);
    w.shutdown().await;
    env.cleanup().await;
}
