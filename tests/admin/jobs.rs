//! The job browser and the actions on one job through the admin API: filters and cursor
//! paging over more than one round trip's worth of entries; retry now, cancel, delete and
//! replay need the admin role, refuse a job in the wrong state, and are audited; limit
//! keys and batches are listed for operators.

use super::http;
use axum::http::StatusCode;
use fleet_jobs::browse::JobFilter;
use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_jobs::{EnqueueOptions, JobState};
use fleet_scheduler::api::{ApiState, app, auth};
use fleet_tests::{TestDb, TestEnv};
use serde_json::{Value, json};
use std::collections::BTreeSet;

fn tagged(tag: &str) -> ProbeArgs {
    let mut a = ProbeArgs::new(ProbeAction::Succeed);
    a.tag = Some(tag.to_owned());
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_browser_filters_by_tenant_text_and_time_and_pages_with_a_cursor() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    // 600 ready jobs, alternating tenants; 7 of studio-7's mention a calendar.
    let jobs = (0..600).map(|i| {
        let tenant = if i % 2 == 0 { "studio-7" } else { "venue-3" };
        let tag =
            if i % 2 == 0 && i % 40 == 0 && i < 280 { format!("sync of the Calendar {i}") } else { format!("job {i}") };
        (tagged(&tag), EnqueueOptions { tenant: Some(tenant.into()), ..Default::default() })
    });
    env.client.enqueue_bulk_with(jobs).await.unwrap();

    // Every one of studio-7's 300 jobs, once, in pages of 120 that go on by cursor.
    let filter = JobFilter { tenant: Some("studio-7".into()), ..Default::default() };
    let (mut seen, mut cursor, mut pages) = (BTreeSet::new(), None::<String>, 0);
    loop {
        let page = env.client.browse("default", JobState::Ready, &filter, cursor.as_deref(), 120).await.unwrap();
        pages += 1;
        for j in &page.jobs {
            assert_eq!(j.tenant.as_deref(), Some("studio-7"));
            assert!(seen.insert(j.id.clone()), "{} listed twice", j.id);
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (300, 3));

    // Through the API: the text filter ignores case and looks in the arguments.
    let router = app(ApiState::new(env.client.clone(), db.pool.clone()), 1 << 20);
    let operator = auth::create_api_key(&db.pool, "ops", "viewer", &[auth::Role::Operator]).await.unwrap();
    let app_key = auth::create_api_key(&db.pool, "studio-7", "app", &[auth::Role::Enqueue]).await.unwrap();
    let get = |uri: String, key: String| {
        let router = router.clone();
        async move {
            let (s, body) = http(&router, "GET", &uri, Some(&key), None).await;
            (s, serde_json::from_str::<Value>(&body).unwrap_or(Value::Null))
        }
    };
    let (s, page) = get("/admin/v1/jobs?queue=default&tenant=studio-7&q=CALENDAR".into(), operator.clone()).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(page["jobs"].as_array().unwrap().len(), 7, "{page}");
    assert_eq!(page["next"], Value::Null);
    assert_eq!(page["scanned"], 300, "only the tenant's own ready lists are read");
    let (_, none) = get("/admin/v1/jobs?queue=default&tenant=venue-3&q=calendar".into(), operator.clone()).await;
    assert_eq!(none["jobs"].as_array().unwrap().len(), 0);
    // A time range: everything was enqueued before an hour from now, nothing after.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, after) = get(format!("/admin/v1/jobs?queue=default&from={later}&limit=5"), operator.clone()).await;
    assert_eq!(after["jobs"].as_array().unwrap().len(), 0);
    let (_, before) = get(format!("/admin/v1/jobs?queue=default&to={later}&limit=5"), operator.clone()).await;
    assert_eq!(before["jobs"].as_array().unwrap().len(), 5);
    assert!(before["next"].is_string());

    for bad in ["state=unknown", "cursor=1.2", "limit=0", "from=yesterday", "tenant=a%20b"] {
        let (s, e) = get(format!("/admin/v1/jobs?queue=default&{bad}"), operator.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {e}");
    }
    let (s, _) = get("/admin/v1/jobs?queue=default".into(), app_key).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a tenant's key cannot browse the fleet's jobs");
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_actions_need_admin_refuse_the_wrong_state_and_are_audited() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let router = app(ApiState::new(env.client.clone(), db.pool.clone()), 1 << 20);
    let operator = auth::create_api_key(&db.pool, "ops", "viewer", &[auth::Role::Operator]).await.unwrap();
    let admin = auth::create_api_key(&db.pool, "ops", "admin", &[auth::Role::Admin]).await.unwrap();
    let admin_id = admin.split('_').nth(1).unwrap().to_owned();
    let opts = EnqueueOptions { tenant: Some("studio-7".into()), ..Default::default() };
    let ready = env.client.enqueue_with(&tagged("ready"), opts.clone()).await.unwrap().0;
    let waiting = env
        .client
        .enqueue_with(
            &tagged("later"),
            EnqueueOptions { delay: Some(std::time::Duration::from_secs(3600)), ..opts.clone() },
        )
        .await
        .unwrap()
        .0;
    let call = |method: &'static str, uri: String, key: String, body: Option<Value>| {
        let router = router.clone();
        async move { http(&router, method, &uri, Some(&key), body).await }
    };
    let job = |id: &str, action: &str| format!("/admin/v1/queues/default/jobs/{id}{action}");

    // Operators read; only admins act.
    for (method, action) in [("POST", "/retry"), ("POST", "/cancel"), ("POST", "/replay"), ("DELETE", "")] {
        let (s, _) = call(method, job(&ready, action), operator.clone(), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {action}");
    }
    // Retry now: only a waiting (or dead) job; the waiting one becomes due at once.
    let (s, e) = call("POST", job(&ready, "/retry"), admin.clone(), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    let (s, e) = call("POST", job(&waiting, "/retry"), admin.clone(), None).await;
    assert_eq!(s, StatusCode::OK, "{e}");
    let w = env.worker(env.config("default", 2), fleet_worker::Registry::builtin()).await;
    fleet_tests::eventually("the retried job to run", std::time::Duration::from_secs(20), || async {
        (env.client.job_state("default", &waiting).await.unwrap() == Some(JobState::Succeeded)).then_some(())
    })
    .await;
    w.shutdown().await;

    // Delete needs a finished job; cancel an unfinished one.
    let pending = env.client.enqueue_with(&tagged("pending"), opts.clone()).await.unwrap().0;
    let (s, e) = call("DELETE", job(&pending, ""), admin.clone(), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    let (s, e) = call("POST", job(&pending, "/cancel"), admin.clone(), None).await;
    assert_eq!(s, StatusCode::OK, "{e}");
    let (s, e) = call("POST", job(&pending, "/cancel"), admin.clone(), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    let (s, e) = call("DELETE", job(&pending, ""), admin.clone(), None).await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert!(env.client.job("default", &pending).await.unwrap().is_none());
    let (s, _) = call("DELETE", job(&pending, ""), admin.clone(), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A succeeded job's record can be deleted too.
    let (s, e) = call("DELETE", job(&waiting, ""), admin.clone(), None).await;
    assert_eq!(s, StatusCode::OK, "{e}");

    // Replay: arguments checked against the kind; the copy keeps the job's tenant.
    let (s, e) = call("POST", job(&ready, "/replay"), admin.clone(), Some(json!({"args": {"do": "explode"}}))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (s, out) =
        call("POST", job(&ready, "/replay"), admin.clone(), Some(json!({"args": {"do": "succeed", "tag": "again"}})))
            .await;
    assert_eq!(s, StatusCode::CREATED, "{out}");
    let copy: Value = serde_json::from_str(&out).unwrap();
    let copy = env.client.job("default", copy["job"].as_str().unwrap()).await.unwrap().unwrap();
    let env_copy = copy.envelope.unwrap();
    assert_eq!(env_copy.tenant.as_deref(), Some("studio-7"));
    assert_eq!(serde_json::from_str::<Value>(env_copy.args.get()).unwrap(), json!({"do": "succeed", "tag": "again"}));

    // Every action is in the audit log, with who did it.
    let (_, log) = call("GET", "/admin/v1/audit".into(), operator.clone(), None).await;
    let log: Value = serde_json::from_str(&log).unwrap();
    let mut actions: Vec<(String, String)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap().to_owned(), e["target"].as_str().unwrap().to_owned()))
        .collect();
    actions.sort();
    let t = |id: &str| format!("queue:default/job:{id}");
    let mut want = vec![
        ("job.retry".to_owned(), t(&waiting)),
        ("job.cancel".to_owned(), t(&pending)),
        ("job.delete".to_owned(), t(&pending)),
        ("job.delete".to_owned(), t(&waiting)),
        ("job.replay".to_owned(), t(&ready)),
    ];
    want.sort();
    assert_eq!(actions, want);
    assert!(log["entries"].as_array().unwrap().iter().all(|e| e["actor"] == admin_id.as_str()), "{log}");

    // Limit keys and batches, for operators.
    let (s, _) =
        call("PUT", "/admin/v1/limits/ai:provider:acme".into(), admin.clone(), Some(json!({"rate": 2.0, "burst": 4})))
            .await;
    assert_eq!(s, StatusCode::OK);
    let (s, one) = call("GET", "/admin/v1/limits/ai:provider:acme".into(), operator.clone(), None).await;
    assert_eq!(s, StatusCode::OK);
    let one: Value = serde_json::from_str(&one).unwrap();
    assert_eq!(
        (one["tokens"].clone(), one["breaker"].clone(), one["overrides"]["rate"].clone()),
        (json!(4), json!("closed"), json!(2.0))
    );
    let (_, all) = call("GET", "/admin/v1/limits".into(), operator.clone(), None).await;
    let all: Value = serde_json::from_str(&all).unwrap();
    assert_eq!(
        all.as_array().unwrap().iter().map(|l| l["key"].clone()).collect::<Vec<_>>(),
        vec![json!("ai:provider:acme")]
    );
    let (s, batches) = call("GET", "/admin/v1/batches".into(), operator.clone(), None).await;
    assert_eq!((s, batches.as_str()), (StatusCode::OK, "[]"));
    db.drop_db().await;
    env.cleanup().await;
}
