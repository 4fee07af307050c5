//! A job's progress and result live as long as its finished record and go with it.

use crate::{T, probe};
use fleet_jobs::catalogue::ProbeAction;
use fleet_tests::{TestEnv, until_final};
use fleet_worker::Registry;

async fn kept(env: &TestEnv, id: &str) -> (bool, bool) {
    let k = env.client.keys("default");
    redis::pipe()
        .hexists(&k.progress, id)
        .hexists(&k.results, id)
        .query_async(&mut env.client.connection())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_result_are_kept_with_the_record_and_deleted_with_it() {
    let env = TestEnv::new().await;
    let w = env.worker(env.config("default", 2), Registry::builtin()).await;
    let mut rx = w.events();
    let id = env.client.enqueue(&probe(ProbeAction::Report { steps: 3, step_ms: 0, pad_bytes: 1 })).await.unwrap();
    until_final(&mut rx, id.as_str(), T).await;
    let job = env.client.job("default", id.as_str()).await.unwrap().unwrap();
    assert_eq!(job.progress.as_ref().map(|p| (p.done, p.total)), Some((Some(3), Some(3))));
    let result: serde_json::Value = serde_json::from_str(job.result.as_ref().unwrap().get()).unwrap();
    assert_eq!(result, serde_json::json!({"steps": 3, "pad": "x"}));
    assert_eq!(kept(&env, id.as_str()).await, (true, true));
    w.shutdown().await;

    // Retention 0: the finished record goes at once, and its progress and result with it.
    let mut config = env.config("default", 2);
    config.retention_secs = 0;
    let w = env.worker(config, Registry::builtin()).await;
    let mut rx = w.events();
    let gone = env.client.enqueue(&probe(ProbeAction::Report { steps: 3, step_ms: 0, pad_bytes: 1 })).await.unwrap();
    until_final(&mut rx, gone.as_str(), T).await;
    assert!(env.client.job("default", gone.as_str()).await.unwrap().is_none());
    assert_eq!(kept(&env, gone.as_str()).await, (false, false));
    w.shutdown().await;
    env.cleanup().await;
}
