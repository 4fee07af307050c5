//! The operators' data API and `fleetctl` against real Redis: replay moves exactly the
//! filtered dead letters, purge removes only what it names, destructive commands ask.

use fleet_jobs::admin::DeadFilter;
use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_jobs::{EnqueueOptions, JobState};
use fleet_tests::{TestEnv, n_final, redis_url};
use fleet_worker::Registry;
use std::time::Duration;

mod archive;
mod audit;
mod browser;
mod deadcaps;
mod jobs;
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
    let app_key = auth::create_api_key(&db.pool, "acme", "app", &[auth::Role::Enqueue]).await.unwrap();
    let operator = auth::create_api_key(&db.pool, "ops", "viewer", &[auth::Role::Operator]).await.unwrap();
    let admin = auth::create_api_key(&db.pool, "ops", "admin", &[auth::Role::Admin]).await.unwrap();

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
    let everything = serde_json::json!({"reason": ""});
    let (s, e) = http(&router, "POST", "/admin/v1/queues/default/purge", Some(&admin), Some(everything)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "an empty reason is not a filter: {e}");
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

use fleet_tests::{BINARY_ENVELOPE as BINARY, foreign_dead_letter as foreign_dead};

/// Two foreign dead letters: `bin` (not UTF-8, a NUL inside, a normal history) and `txt`
/// (UTF-8 but not JSON, with a history that is not UTF-8 either).
async fn two_foreign_dead(env: &TestEnv) {
    let hist = br#"[{"attempt":3,"at":1,"error":"undecodable envelope: invalid utf-8 sequence"}]"#;
    foreign_dead(env, "bin", BINARY, hist).await;
    foreign_dead(env, "txt", b"not json at all", b"\xff\x00[garbage").await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_any_bytes_are_listed_shown_replayed_and_purged_by_the_admin_api() {
    use axum::http::StatusCode;
    use fleet_scheduler::api::{ApiState, app, auth};
    use serde_json::{Value, json};
    let env = TestEnv::new().await;
    let db = fleet_tests::TestDb::new().await;
    five_dead(&env).await;
    two_foreign_dead(&env).await;
    let router = app(
        ApiState::new(env.client.clone(), db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests()),
        1 << 20,
    );
    let app_key = auth::create_api_key(&db.pool, "acme", "app", &[auth::Role::Enqueue]).await.unwrap();
    let admin = auth::create_api_key(&db.pool, "ops", "admin", &[auth::Role::Admin]).await.unwrap();
    let get = |uri: &'static str| {
        let (router, admin) = (router.clone(), admin.clone());
        async move {
            let (s, body) = http(&router, "GET", uri, Some(&admin), None).await;
            assert_eq!(s, StatusCode::OK, "{uri}: {body}");
            serde_json::from_str::<Value>(&body).unwrap_or_else(|e| panic!("{uri} ({e}): {body}"))
        }
    };

    let queues = get("/admin/v1/queues").await;
    assert_eq!(queues[0]["stats"]["dead"], 7);
    let listed = get("/admin/v1/queues/default/jobs?state=dead").await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 7, "{listed:?}");
    for id in ["bin", "txt"] {
        let row = listed.iter().find(|j| j["id"] == id).unwrap_or_else(|| panic!("{id} listed: {listed:?}"));
        assert_eq!((row["kind"].as_str(), row["state"].as_str()), (Some("(undecodable)"), Some("dead")));
    }
    let bin = get("/admin/v1/queues/default/jobs/bin").await;
    assert_eq!(bin["raw_envelope_lossy"], true);
    assert_eq!(bin["raw_envelope_hex"].as_str(), Some(hex(BINARY).as_str()), "the exact bytes");
    let lossy = bin["raw_envelope"].as_str().unwrap();
    assert!(lossy.starts_with("\u{fffd}\u{fffd}{\"kind\"") && lossy.contains('\0'), "{lossy:?}");
    assert_eq!(
        (bin["state"].as_str(), bin["attempts"].as_u64(), bin["envelope"].is_null()),
        (Some("dead"), Some(3), true)
    );
    assert!(bin["envelope_error"].as_str().unwrap().contains("not UTF-8"), "{bin}");
    let txt = get("/admin/v1/queues/default/jobs/txt").await;
    assert_eq!(
        (txt["raw_envelope"].as_str(), txt["raw_envelope_lossy"].as_bool()),
        (Some("not json at all"), Some(false))
    );
    assert!(txt["history_error"].as_str().unwrap().contains("garbage"), "{txt}");

    let dead = get("/admin/v1/queues/default/dead").await;
    let reason = |id: &str| dead.as_array().unwrap().iter().find(|d| d["id"] == id).map(|d| d["reason"].clone());
    assert_eq!(dead.as_array().unwrap().len(), 7, "{dead}");
    assert_eq!(reason("bin"), Some(json!("undecodable envelope: invalid utf-8 sequence")));
    assert_eq!(reason("txt"), Some(json!("(undecodable history)")));
    let only = get("/admin/v1/queues/default/dead?kind=%28undecodable%29").await;
    assert_eq!(only.as_array().unwrap().len(), 2, "{only}");
    let groups = get("/admin/v1/queues/default/dead/groups").await;
    let count = |r: &str| groups.as_array().unwrap().iter().find(|g| g["reason"] == r).map(|g| g["count"].clone());
    assert_eq!(count("undecodable envelope: invalid utf-# sequence"), Some(json!(1)), "{groups}");
    assert_eq!(count("(undecodable history)"), Some(json!(1)), "{groups}");

    // A tenant's view of a record with no tenant: not found, not unavailable.
    let (s, body) = http(&router, "GET", "/v1/jobs/default/bin", Some(&app_key), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");

    let post = |uri: &'static str, body: Value| {
        let (router, admin) = (router.clone(), admin.clone());
        async move {
            let (s, out) = http(&router, "POST", uri, Some(&admin), Some(body)).await;
            assert_eq!(s, StatusCode::OK, "{uri}: {out}");
            serde_json::from_str::<Value>(&out).unwrap()
        }
    };
    assert_eq!(post("/admin/v1/queues/default/replay", json!({"ids": ["bin"]})).await, json!({"replayed": 1}));
    let bin = env.client.job("default", "bin").await.unwrap().unwrap();
    assert_eq!((bin.state, bin.attempts, bin.raw_envelope_hex), (JobState::Ready, 0, Some(hex(BINARY))));
    assert_eq!(post("/admin/v1/queues/default/purge", json!({"ids": ["txt"]})).await, json!({"purged": 1}));
    assert!(env.client.job("default", "txt").await.unwrap().is_none());
    assert_eq!(post("/admin/v1/queues/default/purge", json!({"all": true})).await, json!({"purged": 5}));
    let s = env.stats("default").await;
    assert_eq!((s.dead, s.ready, s.replayed, s.purged), (0, 1, 1, 6));
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dead_letters_a_binary_envelope_and_keeps_its_bytes_for_the_tools() {
    let env = TestEnv::new().await;
    let k = env.client.keys("default");
    let _: () = redis::pipe()
        .hset(&k.jobs, "bin", BINARY)
        .hset(&k.state, "bin", "q1")
        .rpush(&k.ready[1], "bin")
        .hincr(&k.stats, "ready", 1)
        .query_async(&mut env.client.connection())
        .await
        .unwrap();
    let w = env.worker(env.config("default", 1), Registry::builtin()).await;
    let mut rx = w.events();
    let done = n_final(&mut rx, 1, Duration::from_secs(20)).await;
    assert_eq!(done[0].id, "bin");
    w.shutdown().await;

    let dead = env.client.dead_letters("default", 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("undecodable envelope"), "{}", dead[0].reason);
    let job = &dead[0].job;
    assert_eq!(job.state, JobState::Dead);
    assert!(job.raw_envelope_lossy);
    assert_eq!(job.raw_envelope_hex.as_deref(), Some(hex(BINARY).as_str()), "stored byte for byte");
    let groups = env.client.dead_by_reason("default").await.unwrap();
    assert_eq!(groups.iter().map(|g| g.1).sum::<usize>(), 1, "{groups:?}");
    let listed = env.client.jobs_in_state("default", JobState::Dead, 0, 10).await.unwrap();
    assert_eq!((listed.len(), listed[0].kind.as_str()), (1, "(undecodable)"));
    let (ok, out, err) = fleetctl(&env, &["purge", "default", "--id", "bin", "--yes"]);
    assert!(ok && out.contains("purged 1"), "{out} {err}");
    assert_eq!(env.stats("default").await.dead, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_with_a_garbage_state_is_listed_as_unknown_and_breaks_nothing() {
    use axum::http::StatusCode;
    use fleet_scheduler::api::{ApiState, app, auth};
    let env = TestEnv::new().await;
    let db = fleet_tests::TestDb::new().await;
    foreign_dead(&env, "odd", b"{}", b"[]").await;
    let k = env.client.keys("default");
    let _: () = redis::cmd("HSET")
        .arg(&k.state)
        .arg("odd")
        .arg(b"\xffz".as_slice())
        .query_async(&mut env.client.connection())
        .await
        .unwrap();
    let router = app(
        ApiState::new(env.client.clone(), db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests()),
        1 << 20,
    );
    let admin = auth::create_api_key(&db.pool, "ops", "admin", &[auth::Role::Admin]).await.unwrap();
    for uri in [
        "/admin/v1/queues",
        "/admin/v1/queues/default/jobs?state=dead",
        "/admin/v1/queues/default/jobs/odd",
        "/admin/v1/queues/default/dead",
        "/admin/v1/queues/default/dead/groups",
    ] {
        let (s, body) = http(&router, "GET", uri, Some(&admin), None).await;
        assert_eq!(s, StatusCode::OK, "{uri}: {body}");
        if uri.ends_with("/dead") || uri.ends_with("=dead") {
            assert!(body.contains(r#""id":"odd""#) && body.contains(r#""state":"unknown""#), "{uri}: {body}");
        }
        if uri.ends_with("/odd") {
            let job: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                (job["state"].as_str(), job["raw_state"].as_str()),
                (Some("unknown"), Some("\u{fffd}z")),
                "{body}"
            );
        }
    }
    // Replay needs a state Fleet wrote (it holds the priority); a purge by id always
    // gets rid of what the dead letters list.
    let (s, out) = http(
        &router,
        "POST",
        "/admin/v1/queues/default/purge",
        Some(&admin),
        Some(serde_json::json!({"ids": ["odd"]})),
    )
    .await;
    assert_eq!((s, out.as_str()), (StatusCode::OK, r#"{"purged":1}"#));
    assert!(env.client.job("default", "odd").await.unwrap().is_none(), "the record is gone");
    db.drop_db().await;
    env.cleanup().await;
}
