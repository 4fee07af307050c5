//! A queue's dead-letter caps set at run time, through fleetctl and the admin API, and
//! applied by the workers' janitor with no worker restart.

use crate::{fleetctl, http};
use fleet_jobs::backend::{EngineConfig, calls};
use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_jobs::deadcaps::DeadCaps;
use fleet_tests::{TestEnv, n_final};
use fleet_worker::Registry;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_caps_are_set_at_run_time_and_evict_at_the_next_janitor_pass() {
    use axum::http::StatusCode;
    use fleet_scheduler::api::{ApiState, app, auth};
    let env = TestEnv::new().await;
    let w = env.worker(env.config("default", 4), Registry::builtin()).await;
    let mut rx = w.events();
    env.client.enqueue_bulk((0..6).map(|_| ProbeArgs::new(ProbeAction::GiveUp))).await.unwrap();
    n_final(&mut rx, 6, Duration::from_secs(20)).await;
    w.shutdown().await;
    assert_eq!(env.stats("default").await.dead, 6);

    let (ok, out, err) = fleetctl(&env, &["dead-caps", "default", "--max-count", "4", "--json"]);
    assert!(ok, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["dead_caps"]["max_count"], 4);
    // One janitor pass (what every worker runs each heartbeat interval) applies the cap.
    let cfg = EngineConfig::new(env.prefix.clone(), "default", "w");
    let swept = calls::janitor(&mut env.client.connection(), &env.client.keys("default"), &cfg, 500).await.unwrap();
    assert_eq!(swept.evicted, 2);
    let s = env.stats("default").await;
    assert_eq!((s.dead, s.evicted), (4, 2));

    let db = fleet_tests::TestDb::new().await;
    let router = app(
        ApiState::new(env.client.clone(), db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests()),
        1 << 20,
    );
    let operator = auth::create_api_key(&db.pool, "ops", "viewer", &[auth::Role::Operator]).await.unwrap();
    let admin = auth::create_api_key(&db.pool, "ops", "admin", &[auth::Role::Admin]).await.unwrap();
    let caps = serde_json::json!({"max_count": 1, "max_age_secs": 3600});
    let uri = "/admin/v1/queues/default/dead-caps";
    assert_eq!(http(&router, "PUT", uri, Some(&operator), Some(caps.clone())).await.0, StatusCode::FORBIDDEN);
    let (s, body) = http(&router, "PUT", uri, Some(&admin), Some(caps)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        serde_json::from_str::<DeadCaps>(&body).unwrap(),
        DeadCaps { max_count: Some(1), max_age_secs: Some(3600) }
    );
    let (s, body) = http(&router, "GET", uri, Some(&operator), None).await;
    assert_eq!((s, body.contains("\"max_count\":1")), (StatusCode::OK, true), "{body}");
    calls::janitor(&mut env.client.connection(), &env.client.keys("default"), &cfg, 500).await.unwrap();
    assert_eq!(env.stats("default").await.dead, 1);

    let (ok, _, err) = fleetctl(&env, &["dead-caps", "default", "--clear"]);
    assert!(ok, "{err}");
    assert_eq!(env.client.dead_caps("default").await.unwrap(), DeadCaps::default());
    db.drop_db().await;
    env.cleanup().await;
}
