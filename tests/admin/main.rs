//! The operators' data API and `fleetctl` against real Redis: replay moves exactly the
//! filtered dead letters, purge removes only what it names, destructive commands ask.

use fleet_jobs::admin::DeadFilter;
use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_jobs::{EnqueueOptions, JobState};
use fleet_tests::{TestEnv, n_final, redis_url};
use fleet_worker::Registry;
use std::time::Duration;

mod browser;
mod deadcaps;
mod traces;

const FLEETCTL: &str = env!("CARGO_BIN_EXE_fleetctl-e2e");

/// Five dead letters: three gave up, two ran out of attempts.
async fn five_dead(env: &TestEnv) -> (Vec<String>, Vec<String>) {
    let w = env.worker(env.config("default", 5), Registry::builtin()).await;
    let mut rx = w.events();
    let gave_up = env.client.enqueue_bulk((0..3).map(|_| ProbeArgs::new(ProbeAction::GiveUp))).await.unwrap();
    let failed = env
        .client
        .enqueue_bulk_with(
            (0..2).map(|_| (ProbeArgs::new(ProbeAction::Fail), EnqueueOptions::default().max_attempts(1))),
        )
        .await
        .unwrap();
    n_final(&mut rx, 5, Duration::from_secs(20)).await;
    w.shutdown().await;
    (gave_up.into_iter().map(|i| i.0).collect(), failed.into_iter().map(|i| i.0).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_moves_exactly_the_filtered_dead_letters_and_purge_only_what_it_names() {
    let env = TestEnv::new().await;
    let (gave_up, failed) = five_dead(&env).await;
    let groups = env.client.dead_by_reason("default").await.unwrap();
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(groups[0].1, 3);
    assert!(groups[0].0.contains("give-up"));

    let filter = DeadFilter { reason_contains: Some("give-up".into()), ..Default::default() };
    assert_eq!(env.client.replay("default", &filter, None).await.unwrap(), 3);
    for id in &gave_up {
        let job = env.client.job("default", id).await.unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Ready, 0), "replayed with fresh attempts");
        assert_eq!(job.history.len(), 1, "its history is kept");
    }
    for id in &failed {
        assert_eq!(env.client.job_state("default", id).await.unwrap(), Some(JobState::Dead), "not matched, not moved");
    }
    let s = env.stats("default").await;
    assert_eq!((s.dead, s.ready, s.replayed), (2, 3, 3));

    let one = DeadFilter { ids: vec![failed[0].clone()], ..Default::default() };
    assert_eq!(env.client.purge("default", &one).await.unwrap(), 1);
    assert!(env.client.job("default", &failed[0]).await.unwrap().is_none());
    assert_eq!(env.client.job_state("default", &failed[1]).await.unwrap(), Some(JobState::Dead));
    assert_eq!(
        env.client.job_state("default", &gave_up[0]).await.unwrap(),
        Some(JobState::Ready),
        "purge touches only dead letters"
    );
    // Replaying an id that is not dead does nothing.
    let not_dead = DeadFilter { ids: vec![gave_up[0].clone()], ..Default::default() };
    assert_eq!(env.client.replay("default", &not_dead, None).await.unwrap(), 0);
    let listed = env.client.jobs_in_state("default", JobState::Ready, 0, 10).await.unwrap();
    assert_eq!(listed.len(), 3);
    env.cleanup().await;
}

pub(crate) fn fleetctl(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(FLEETCTL)
        .args(["--redis-url", &redis_url(), "--prefix", &env.prefix])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run fleetctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_shows_queues_and_dead_letters_and_asks_before_destroying() {
    let env = TestEnv::new().await;
    five_dead(&env).await;
    let (ok, out, _) = fleetctl(&env, &["queues", "--json"]);
    assert!(ok);
    let queues: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(queues[0]["queue"], "default");
    assert_eq!(queues[0]["stats"]["dead"], 5);
    let (ok, out, _) = fleetctl(&env, &["queues"]);
    assert!(ok && out.starts_with("QUEUE") && out.contains("default"), "{out}");
    let (ok, out, _) = fleetctl(&env, &["dead", "default", "--group"]);
    assert!(ok && out.contains("probe: scripted give-up"), "{out}");

    let (ok, _, err) = fleetctl(&env, &["purge", "default", "--all"]);
    assert!(!ok && err.contains("refusing without --yes"), "{err}");
    assert_eq!(env.stats("default").await.dead, 5, "nothing purged without confirmation");
    let (ok, _, err) = fleetctl(&env, &["replay", "default", "--yes"]);
    assert!(!ok && err.contains("--id, --kind, --reason or --all"), "{err}");

    let (ok, out, _) = fleetctl(&env, &["replay", "default", "--reason", "scripted failure", "--yes", "--json"]);
    assert!(ok, "{out}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["replayed"], 2);
    let (ok, out, _) = fleetctl(&env, &["purge", "default", "--all", "--yes"]);
    assert!(ok && out.contains("purged 3"), "{out}");
    let s = env.stats("default").await;
    assert_eq!((s.dead, s.ready), (0, 2));
    let (ok, out, _) = fleetctl(&env, &["jobs", "default", "--state", "ready"]);
    assert!(ok && out.lines().count() == 3, "{out}");
    let (ok, _, err) = fleetctl(&env, &["jobs", "default", "--state", "sleeping"]);
    assert!(!ok && err.contains("unknown state"), "{err}");
    env.cleanup().await;
}

pub(crate) async fn http(
    router: &axum::Router,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: Option<serde_json::Value>,
) -> (axum::http::StatusCode, String) {
    use tower::ServiceExt;
    let mut req = axum::http::Request::builder().method(method).uri(uri).header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let body = body.map(|b| axum::body::Body::from(b.to_string())).unwrap_or_else(axum::body::Body::empty);
    let res = router.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = res.status();
    let mut stream = res.into_body().into_data_stream();
    let mut text = String::new();
    // A stream never ends: read its first event only.
    while let Ok(Some(Ok(chunk))) =
        tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut stream)).await
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
        if uri.ends_with("/stream") && text.contains("\n\n") {
            break;
        }
    }
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_an_operator_key_and_an_admin_role_to_change_anything() {
    use axum::http::StatusCode;
    use fleet_scheduler::api::{ApiState, app, auth};
    let env = TestEnv::new().await;
    let db = fleet_tests::TestDb::new().await;
    five_dead(&env).await;
    let router = app(
        ApiState::new(env.client.clone(), db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests()),
        1 << 20,
    );
    let app_key = auth::create_api_key(&db.pool, "acme", "app", &["enqueue"]).await.unwrap();
    let operator = auth::create_api_key(&db.pool, "ops", "viewer", &["operator"]).await.unwrap();
    let admin = auth::create_api_key(&db.pool, "ops", "admin", &["admin"]).await.unwrap();

    assert_eq!(http(&router, "GET", "/admin/v1/queues", None, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(http(&router, "GET", "/admin/v1/queues", Some(&app_key), None).await.0, StatusCode::FORBIDDEN);
    let (s, body) = http(&router, "GET", "/admin/v1/queues", Some(&operator), None).await;
    assert_eq!(s, StatusCode::OK);
    let queues: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(queues[0]["queue"], "default");
    assert_eq!(queues[0]["stats"]["dead"], 5);
    let (s, groups) = http(&router, "GET", "/admin/v1/queues/default/dead/groups", Some(&operator), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(groups.contains("scripted give-up"), "{groups}");

    let replay = serde_json::json!({"reason": "give-up"});
    assert_eq!(
        http(&router, "POST", "/admin/v1/queues/default/replay", Some(&operator), Some(replay.clone())).await.0,
        StatusCode::FORBIDDEN
    );
    let (s, out) = http(&router, "POST", "/admin/v1/queues/default/replay", Some(&admin), Some(replay)).await;
    assert_eq!((s, out.as_str()), (StatusCode::OK, r#"{"replayed":3}"#));
    let (s, e) =
        http(&router, "POST", "/admin/v1/queues/default/purge", Some(&admin), Some(serde_json::json!({}))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(
        http(&router, "GET", "/admin/v1/queues/bad%7Bq%7D/jobs", Some(&operator), None).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    let (s, event) = http(&router, "GET", "/admin/v1/stream", Some(&operator), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(event.starts_with("event: queues\ndata: "), "{event}");
    let data: serde_json::Value =
        serde_json::from_str(event.lines().nth(1).unwrap().trim_start_matches("data: ")).unwrap();
    assert!(data["queues"].is_array() && data["batches"].is_array(), "{data}");
    let (s, page) = http(&router, "GET", "/dashboard", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("Operator key") && page.contains("/admin/v1/stream"));
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_workers_are_listed_with_the_jobs_they_run() {
    let env = TestEnv::new().await;
    let mut cfg = env.config("default", 2);
    cfg.lease_ms = 600; // heartbeats every 200 ms
    let w = env.worker(cfg, Registry::builtin()).await;
    let id = env.client.enqueue(&ProbeArgs::new(ProbeAction::Sleep { ms: 20_000 })).await.unwrap();
    let workers = fleet_tests::eventually("the worker to report its job", Duration::from_secs(20), || async {
        let ws = env.client.workers("default").await.unwrap();
        ws.iter().any(|w| w.jobs.contains(&id.0)).then_some(ws)
    })
    .await;
    assert_eq!(workers.len(), 1);
    assert_eq!((workers[0].instance.as_str(), workers[0].running), (w.instance(), 1));
    let (ok, out, _) = fleetctl(&env, &["workers", "default"]);
    assert!(ok && out.contains(w.instance()) && out.contains(id.as_str()), "{out}");
    env.client.cancel("default", id.as_str()).await.unwrap();
    w.shutdown().await;
    assert!(env.client.workers("default").await.unwrap().is_empty(), "a stopped worker leaves the list");
    env.cleanup().await;
}
