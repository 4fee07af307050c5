//! Progress and results through the HTTP API: a job's final progress and result on
//! `GET /v1/jobs/{queue}/{id}`, its `job.progress` events in order on its own tenant's
//! stream only, a burst of reports coalesced (the last one delivered), and an oversized
//! result refused with a clear error.

use crate::api::{Api, read_sse, stream_request};
use fleet_scheduler::api::auth;
use fleet_worker::Registry;
use serde_json::{Value, json};
use tower::ServiceExt;

fn report(steps: u32, step_ms: u64, pad_bytes: usize) -> Value {
    json!({"kind": "probe", "args": {"do": "report", "steps": steps, "step_ms": step_ms, "pad_bytes": pad_bytes}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_progress_is_streamed_to_its_tenant_and_its_result_kept_with_it() {
    let api = Api::new().await;
    let other = auth::create_api_key(&api.db.pool, "globex", "other", &[auth::Role::Enqueue]).await.unwrap();
    let mine = api.router.clone().oneshot(stream_request("/v1/stream", &api.key, None)).await.unwrap();
    let theirs = api.router.clone().oneshot(stream_request("/v1/stream", &other, None)).await.unwrap();
    let mut mine = mine.into_body().into_data_stream();
    let mut theirs = theirs.into_body().into_data_stream();

    // Five reports 300 ms apart: more than the 250 ms between writes, so each is sent.
    let (_, slow) = api.post("/v1/jobs", report(5, 300, 3)).await;
    // A thousand reports in a burst: coalesced.
    let (_, burst) = api.post("/v1/jobs", report(1000, 0, 0)).await;
    let (_, big) = api.post("/v1/jobs", report(1, 0, 70_000)).await;
    // Another tenant's job reports too, into its own stream only.
    let (_, globex) = api.call("POST", "/v1/jobs", Some(&other), Some(report(2, 0, 0)), &[]).await;
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();
    let (slow, burst, big, globex) = (id(&slow), id(&burst), id(&big), id(&globex));

    let worker = api.env.worker(api.env.config("default", 4), Registry::builtin()).await;
    let done =
        |ev: &[(String, String, Value)], job: &str| ev.iter().any(|(_, e, d)| e == "job.succeeded" && d["id"] == job);
    let events = read_sse(&mut mine, |ev| {
        done(ev, &slow) && done(ev, &burst) && ev.iter().any(|(_, e, d)| e == "job.dead" && d["id"] == big)
    })
    .await;
    let progress_of = |job: &str| -> Vec<u64> {
        events
            .iter()
            .filter(|(_, e, d)| e == "job.progress" && d["id"] == job)
            .map(|(_, _, d)| d["data"]["done"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(progress_of(&slow), [1, 2, 3, 4, 5], "each report, in order");
    let slow_event = events.iter().find(|(_, e, d)| e == "job.progress" && d["id"] == slow).unwrap();
    assert_eq!(slow_event.2["kind"], "probe");
    assert_eq!(slow_event.2["data"]["message"], "step 1");
    assert_eq!(slow_event.2["data"]["total"], 5);
    let burst_seen = progress_of(&burst);
    assert!(!burst_seen.is_empty() && burst_seen.len() <= 20, "a burst of 1000 is coalesced: {burst_seen:?}");
    assert!(burst_seen.windows(2).all(|w| w[0] < w[1]), "in order: {burst_seen:?}");
    assert_eq!(burst_seen.last(), Some(&1000), "the last report is always delivered");
    assert!(!events.iter().any(|(_, _, d)| d["id"] == globex), "another tenant's job is not in this stream");
    let progressed = |ev: &[(String, String, Value)]| {
        ev.iter().any(|(_, e, d)| e == "job.progress" && d["id"] == globex && d["data"]["done"] == 2)
    };
    let their_events = read_sse(&mut theirs, progressed).await;
    assert!(their_events.iter().all(|(_, _, d)| d["id"] == globex), "{their_events:?}");

    // The job shows its final progress and its result.
    let (status, job) = api.call("GET", &format!("/v1/jobs/default/{slow}"), Some(&api.key), None, &[]).await;
    assert_eq!(status, axum::http::StatusCode::OK, "{job}");
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["progress"]["percent"], 100.0);
    assert_eq!((job["progress"]["done"].as_u64(), job["progress"]["total"].as_u64()), (Some(5), Some(5)));
    assert_eq!(job["progress"]["message"], "step 5");
    assert_eq!(job["result"], json!({"steps": 5, "pad": "xxx"}));
    let (_, job) = api.call("GET", &format!("/v1/jobs/default/{burst}"), Some(&api.key), None, &[]).await;
    assert_eq!(job["progress"]["done"], 1000);
    // The oversized result: a clear, permanent error, and nothing recorded.
    let (_, job) = api.call("GET", &format!("/v1/jobs/default/{big}"), Some(&api.key), None, &[]).await;
    assert_eq!(job["state"], "dead");
    let error = job["errors"][0].as_str().unwrap();
    assert!(error.contains("over the limit of 65536 (64 KiB)"), "{error}");
    assert!(job.get("result").is_none(), "{job}");
    // The admin view shows them too.
    let info = api.env.client.job("default", &slow).await.unwrap().unwrap();
    assert_eq!(info.progress.as_ref().and_then(|p| p.done), Some(5));
    let result: Value = serde_json::from_str(info.result.as_ref().unwrap().get()).unwrap();
    assert_eq!(result, json!({"steps": 5, "pad": "xxx"}));
    worker.shutdown().await;
    api.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_description_has_the_jobs_progress_and_result() {
    let api = Api::new().await;
    let (_, doc) = api.call("GET", "/openapi.json", None, None, &[]).await;
    let job = &doc["components"]["schemas"]["JobView"]["properties"];
    assert!(job["progress"].is_object() && job["result"].is_object(), "{job}");
    let progress = &doc["components"]["schemas"]["ProgressView"]["properties"];
    for field in ["percent", "done", "total", "message", "at"] {
        assert!(progress[field].is_object(), "ProgressView.{field}: {progress}");
    }
    api.done().await;
}
