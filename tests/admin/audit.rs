//! The audit log and the schedules API: every admin action leaves exactly one entry with
//! who (the key id, never its secret), what, the filter and how many items it touched; a
//! refused one leaves none. Schedules created through the API are ticked, edited, run
//! now and deleted; config-file schedules are refused; an invalid cron is a 422.

use super::{five_dead, fleetctl, http};
use axum::http::StatusCode;
use fleet_scheduler::api::{ApiState, app, auth};
use fleet_scheduler::schedule::{Missed, ScheduleSpec};
use fleet_scheduler::ticker::Ticker;
use fleet_tests::{TestDb, TestEnv};
use serde_json::{Value, json};

fn spec(name: &str, cron: &str) -> ScheduleSpec {
    ScheduleSpec {
        name: name.into(),
        cron: cron.into(),
        timezone: "UTC".into(),
        kind: "probe".into(),
        args: json!({"do": "succeed"}),
        queue: None,
        priority: None,
        max_attempts: None,
        missed: Missed::Skip,
        catch_up_secs: 0,
        paused: false,
        dedup: None,
    }
}

fn key_id(key: &str) -> String {
    key.strip_prefix("fk_").unwrap().split_once('_').unwrap().0.to_owned()
}

async fn entries(router: &axum::Router, key: &str, query: &str) -> Vec<Value> {
    let (s, body) = http(router, "GET", &format!("/admin/v1/audit{query}"), Some(key), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    page["entries"].as_array().unwrap().clone()
}

/// (method, uri, body, action, target, affected)
type Action = (&'static str, &'static str, Option<Value>, &'static str, &'static str, i64);

async fn count(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM admin_audit").fetch_one(&db.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_action_leaves_one_audit_entry_and_a_refused_one_none() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    five_dead(&env).await;
    let router = app(
        ApiState::new(env.client.clone(), db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests())
            .with_config_schedules(vec![spec("from-config", "0 0 * * * *")]),
        1 << 20,
    );
    let app_key = auth::create_api_key(&db.pool, "acme", "app", &[auth::Role::Enqueue]).await.unwrap();
    let operator = auth::create_api_key(&db.pool, "ops", "viewer", &[auth::Role::Operator]).await.unwrap();
    let admin = auth::create_api_key(&db.pool, "ops", "admin", &[auth::Role::Admin]).await.unwrap();
    let body = json!({"cron": "*/5 * * * * *", "kind": "probe", "args": {"do": "succeed"}});
    let edited = json!({"cron": "*/10 * * * * *", "kind": "probe", "args": {"do": "succeed"}});

    let actions: Vec<Action> = vec![
        (
            "POST",
            "/admin/v1/queues/default/replay",
            Some(json!({"reason": "give-up"})),
            "queue.replay",
            "queue:default",
            3,
        ),
        ("POST", "/admin/v1/queues/default/purge", Some(json!({"all": true})), "queue.purge", "queue:default", 2),
        ("POST", "/admin/v1/queues/default/pause", None, "queue.pause", "queue:default", 1),
        ("POST", "/admin/v1/queues/default/resume", None, "queue.resume", "queue:default", 1),
        (
            "PUT",
            "/admin/v1/queues/default/dead-caps",
            Some(json!({"max_count": 10, "max_age_secs": null})),
            "queue.dead_caps",
            "queue:default",
            1,
        ),
        (
            "PUT",
            "/admin/v1/queues/default/tenants/acme",
            Some(json!({"concurrency": 3})),
            "tenant.limits",
            "queue:default/tenant:acme",
            1,
        ),
        (
            "PUT",
            "/admin/v1/limits/partner-api",
            Some(json!({"rate": 5.0, "burst": 2, "concurrency": 4})),
            "limit.override",
            "limit:partner-api",
            1,
        ),
        ("POST", "/admin/v1/schedules/nightly", Some(body), "schedule.create", "schedule:nightly", 1),
        ("PUT", "/admin/v1/schedules/nightly", Some(edited), "schedule.edit", "schedule:nightly", 1),
        ("POST", "/admin/v1/schedules/nightly/run", None, "schedule.run", "schedule:nightly", 1),
        ("POST", "/admin/v1/schedules/nightly/pause", None, "schedule.pause", "schedule:nightly", 1),
        ("POST", "/admin/v1/schedules/nightly/resume", None, "schedule.resume", "schedule:nightly", 1),
        ("DELETE", "/admin/v1/schedules/nightly", None, "schedule.delete", "schedule:nightly", 1),
    ];
    for (i, (method, uri, body, action, target, affected)) in actions.iter().enumerate() {
        for refused in [&app_key, &operator] {
            let (s, e) = http(&router, method, uri, Some(refused), body.clone()).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{method} {uri}: {e}");
        }
        assert_eq!(count(&db).await, i as i64, "a refused {action} leaves no entry");
        let (s, out) = http(&router, method, uri, Some(&admin), body.clone()).await;
        assert!(s.is_success(), "{method} {uri}: {s} {out}");
        assert!(!out.contains(admin.rsplit('_').next().unwrap()));
        let found = entries(&router, &operator, &format!("?action={action}")).await;
        assert_eq!(found.len(), 1, "{action}: exactly one entry: {found:?}");
        let e = &found[0];
        assert_eq!(e["actor"], key_id(&admin), "{e}");
        assert_eq!(e["tenant"], "ops", "{e}");
        assert_eq!(e["target"], *target, "{e}");
        assert_eq!(e["affected"], *affected, "{action}: {e}");
        assert_eq!(count(&db).await, i as i64 + 1);
    }
    let all = entries(&router, &operator, "").await;
    assert_eq!(all.len(), actions.len());
    assert_eq!(all[0]["action"], "schedule.delete", "newest first");
    let replay = all.iter().find(|e| e["action"] == "queue.replay").unwrap();
    assert_eq!(replay["params"]["reason"], "give-up", "the filter is recorded: {replay}");
    let edit = all.iter().find(|e| e["action"] == "schedule.edit").unwrap();
    assert_eq!(edit["params"]["cron"], "*/10 * * * * *", "{edit}");
    let secret = admin.rsplit('_').next().unwrap();
    let dump: String = sqlx::query_scalar("SELECT string_agg(row_to_json(a)::text, '') FROM admin_audit a")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!dump.contains(secret), "no secret in the audit log");

    // Paged by id, newest first; `since` filters by time.
    let (_, first) = http(&router, "GET", "/admin/v1/audit?limit=5", Some(&operator), None).await;
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["entries"].as_array().unwrap().len(), 5);
    let next = first["next"].as_i64().expect("a next page");
    let rest = entries(&router, &operator, &format!("?before={next}&limit=500")).await;
    assert_eq!(rest.len(), actions.len() - 5);
    assert!(entries(&router, &operator, "?since=2999-01-01T00:00:00Z").await.is_empty());
    assert_eq!(entries(&router, &operator, "?since=2000-01-01T00:00:00Z").await.len(), actions.len());
    assert_eq!(http(&router, "GET", "/admin/v1/audit", Some(&app_key), None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        http(&router, "GET", "/admin/v1/audit?limit=0", Some(&operator), None).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    // Refusals leave nothing: a config-file schedule, an invalid cron, an unknown name.
    let before = count(&db).await;
    let (s, e) = http(
        &router,
        "PUT",
        "/admin/v1/schedules/from-config",
        Some(&admin),
        Some(json!({"cron": "* * * * * *", "kind": "probe"})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(e.contains("config_owned"), "{e}");
    assert_eq!(
        http(&router, "DELETE", "/admin/v1/schedules/from-config", Some(&admin), None).await.0,
        StatusCode::CONFLICT
    );
    let (s, e) = http(
        &router,
        "POST",
        "/admin/v1/schedules/bad",
        Some(&admin),
        Some(json!({"cron": "61 * * * * *", "kind": "probe"})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(e.contains("invalid_schedule") && e.contains("cron"), "{e}");
    let (s, e) = http(
        &router,
        "POST",
        "/admin/v1/schedules/bad",
        Some(&admin),
        Some(json!({"cron": "* * * * *", "kind": "nope"})),
    )
    .await;
    assert!(s == StatusCode::UNPROCESSABLE_ENTITY && e.contains("invalid_schedule"), "{e}");
    assert_eq!(
        http(
            &router,
            "PUT",
            "/admin/v1/schedules/none",
            Some(&admin),
            Some(json!({"cron": "* * * * *", "kind": "probe", "args": {"do": "succeed"}}))
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(http(&router, "DELETE", "/admin/v1/schedules/none", Some(&admin), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(count(&db).await, before, "refused changes are not audited");
    // A config-file schedule can be run now (audited) and read with its owner.
    let (s, out) = http(&router, "POST", "/admin/v1/schedules/from-config/run", Some(&admin), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{out}");
    let (s, out) = http(&router, "GET", "/admin/v1/schedules/from-config", Some(&operator), None).await;
    assert!(s == StatusCode::OK && out.contains(r#""owner":"config""#), "{out}");
    assert_eq!(count(&db).await, before + 1);

    // fleetctl records its changes as fleetctl:<user>, and lists the log.
    let pg = ["--database-url", db.url.as_str()];
    let (ok, _, err) = fleetctl(&env, &[&["pause", "default"][..], &pg[..]].concat());
    assert!(ok && err.is_empty(), "{err}");
    let (ok, out, err) = fleetctl(&env, &[&["audit", "--json", "--action", "queue.pause"][..], &pg[..]].concat());
    assert!(ok, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    let pauses = page["entries"].as_array().unwrap();
    assert_eq!(pauses.len(), 2, "{out}");
    assert!(pauses[0]["actor"].as_str().unwrap().starts_with("fleetctl:"), "{out}");
    let (ok, out, _) = fleetctl(&env, &[&["audit"][..], &pg[..]].concat());
    assert!(ok && out.starts_with("ID") && out.contains("schedule.run"), "{out}");
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_created_through_the_api_is_ticked_edited_run_now_and_deleted() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let router = app(ApiState::new(env.client.clone(), db.pool.clone()), 1 << 20);
    let admin = auth::create_api_key(&db.pool, "ops", "admin", &[auth::Role::Admin]).await.unwrap();
    let mut ticker = Ticker::new(env.client.clone(), Some(db.pool.clone()), vec![]);
    ticker.reload().await;
    let t0 = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now() - chrono::Duration::seconds(600), 0);
    let at = |secs: i64| t0 + chrono::Duration::seconds(secs) + chrono::Duration::milliseconds(250);

    let every_second = json!({"cron": "* * * * * *", "kind": "probe", "args": {"do": "succeed"}});
    let (s, out) = http(&router, "POST", "/admin/v1/schedules/pulse", Some(&admin), Some(every_second)).await;
    assert_eq!(s, StatusCode::CREATED, "{out}");
    let (s, _) = http(
        &router,
        "POST",
        "/admin/v1/schedules/pulse",
        Some(&admin),
        Some(json!({"cron": "* * * * * *", "kind": "probe", "args": {"do": "succeed"}})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "a second create is refused");
    assert!(ticker.reload().await.is_empty());
    assert_eq!(ticker.schedules().len(), 1);
    ticker.tick(at(0)).await;
    let report = ticker.tick(at(3)).await;
    let times: Vec<i64> = report.enqueued.iter().map(|(_, t)| (*t - t0).num_seconds()).collect();
    assert_eq!(times, vec![1, 2, 3], "every second, on time");

    // Edited to every 2 s: the next reload follows it.
    let (s, out) = http(
        &router,
        "PUT",
        "/admin/v1/schedules/pulse",
        Some(&admin),
        Some(json!({"cron": "*/2 * * * * *", "kind": "probe", "args": {"do": "succeed"}})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{out}");
    ticker.reload().await;
    assert_eq!(ticker.schedules()[0].spec.cron, "*/2 * * * * *");
    let report = ticker.tick(at(7)).await;
    let times: Vec<i64> = report.enqueued.iter().map(|(_, t)| t.timestamp()).filter(|t| t % 2 != 0).collect();
    assert!(times.is_empty() && !report.enqueued.is_empty(), "only even seconds: {:?}", report.enqueued);

    // Run now: one job at once, whatever the ticks.
    let before = env.stats("default").await.enqueued;
    let (s, out) = http(&router, "POST", "/admin/v1/schedules/pulse/run", Some(&admin), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{out}");
    let job: Value = serde_json::from_str(&out).unwrap();
    let id = job["job"].as_str().unwrap();
    assert_eq!(env.stats("default").await.enqueued, before + 1, "exactly one job");
    let state = env.client.job_state("default", id).await.unwrap();
    assert_eq!(state, Some(fleet_jobs::JobState::Ready), "runs now");

    // Deleted: no more ticks, and its state is gone.
    let (s, _) = http(&router, "DELETE", "/admin/v1/schedules/pulse", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK);
    ticker.reload().await;
    assert!(ticker.schedules().is_empty());
    assert!(ticker.tick(at(20)).await.enqueued.is_empty());
    assert_eq!(
        http(&router, "POST", "/admin/v1/schedules/pulse/run", Some(&admin), None).await.0,
        StatusCode::NOT_FOUND
    );
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_creates_edits_runs_and_deletes_schedules_and_overrides_limits_each_audited() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let ctl = |args: &[&str]| fleetctl(&env, &[args, &["--database-url", db.url.as_str()][..]].concat());
    let (ok, _, err) = ctl(&["schedule", "create", "tidy", "--cron", "61 * * * * *", "--kind", "probe"]);
    assert!(!ok && err.contains("cron"), "an invalid cron is refused: {err}");
    let create =
        ["schedule", "create", "tidy", "--cron", "0 */5 * * * *", "--kind", "probe", "--args", r#"{"do":"succeed"}"#];
    let (ok, _, err) = ctl(&create);
    assert!(ok, "{err}");
    let (ok, out, err) = ctl(&["schedule", "edit", "tidy", "--cron", "0 */10 * * * *", "--json"]);
    assert!(ok && out.contains("0 */10 * * * *"), "{out}{err}");
    let (ok, out, err) = ctl(&["schedule", "run", "tidy", "--json"]);
    assert!(ok, "{err}");
    let run: Value = serde_json::from_str(&out).unwrap();
    let id = run["job"].as_str().unwrap();
    assert!(env.client.job("default", id).await.unwrap().is_some(), "one job enqueued now");
    let (ok, _, err) = ctl(&["schedule", "delete", "tidy", "--yes"]);
    assert!(ok, "{err}");
    let (ok, _, err) = ctl(&["schedule", "show", "tidy"]);
    assert!(!ok && err.contains("no schedule"), "{err}");
    let (ok, _, err) = ctl(&["limit-override", "partner-api", "--rate", "5", "--concurrency", "2"]);
    assert!(ok, "{err}");
    let actions: Vec<(String, String)> =
        sqlx::query_as("SELECT action, target FROM admin_audit ORDER BY id").fetch_all(&db.pool).await.unwrap();
    let want: Vec<(String, String)> = [
        ("schedule.create", "schedule:tidy"),
        ("schedule.edit", "schedule:tidy"),
        ("schedule.run", "schedule:tidy"),
        ("schedule.delete", "schedule:tidy"),
        ("limit.override", "limit:partner-api"),
    ]
    .iter()
    .map(|(a, t)| (a.to_string(), t.to_string()))
    .collect();
    assert_eq!(actions, want, "one entry per change, none for the refused create");
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_and_revoking_an_api_key_is_audited_by_id_never_by_secret() {
    let db = TestDb::new().await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-scheduler-e2e"))
            .args(args)
            .env_remove("FLEET_CONFIG")
            .env("FLEET_DATABASE_URL", &db.url)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run fleet-scheduler");
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        (out.status.success(), text(out.stdout), text(out.stderr))
    };
    let (ok, key, err) = run(&["create-api-key", "--tenant", "ops", "--name", "night-shift", "--role", "admin"]);
    assert!(ok, "{err}");
    let key = key.trim().to_owned();
    let id = key_id(&key);
    let (ok, _, err) = run(&["revoke-api-key", &id]);
    assert!(ok, "{err}");
    let rows: Vec<(String, String, String, Value)> =
        sqlx::query_as("SELECT actor, action, target, params FROM admin_audit ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0].0.starts_with("cli:"), "{rows:?}");
    assert_eq!((rows[0].1.as_str(), rows[0].2.clone()), ("api_key.create", format!("key:{id}")));
    assert_eq!(rows[0].3["roles"], json!(["admin"]));
    assert_eq!((rows[1].1.as_str(), rows[1].2.clone()), ("api_key.revoke", format!("key:{id}")));
    let secret = key.rsplit('_').next().unwrap();
    assert!(!format!("{rows:?}").contains(secret), "no secret in the audit log");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_past_the_retention_are_pruned_in_bounded_batches_by_the_retention_task() {
    use fleet_scheduler::retention::{self, RetentionConfig};
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO admin_audit (actor, action, target, at)
         SELECT 'k', 'queue.pause', 'queue:q', now() - interval '100 days' FROM generate_series(1, 1500)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let change = fleet_scheduler::audit::Change {
        actor: "k",
        tenant: Some("ops"),
        action: "queue.resume",
        target: "queue:q".into(),
        params: json!({}),
        affected: 1,
    };
    fleet_scheduler::audit::record(&db.pool, change).await.unwrap();
    let tables = RetentionConfig { batch: 1000, ..Default::default() };
    let audit = retention::targets(&Default::default(), &tables).into_iter().find(|t| t.name == "admin_audit").unwrap();
    assert_eq!(retention::prune_batch(&db.pool, &audit, 1000).await.unwrap(), 1000, "one statement, one batch");
    assert_eq!(count(&db).await, 1 + 500);
    let pass = retention::pass(&db.pool, &Default::default(), &tables).await;
    assert!(pass.contains(&("admin_audit".into(), 500)), "{pass:?}");
    assert_eq!(count(&db).await, 1, "the recent entry stays");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_reads_and_cancels_any_tenants_workflow_through_the_api_and_fleetctl_each_audited() {
    use fleet_jobs::workflows::{StepSpec, SubmitOptions, WorkflowSpec};
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let router = app(
        ApiState::new(env.client.clone(), db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests()),
        1 << 20,
    );
    let app_key = auth::create_api_key(&db.pool, "acme", "app", &[auth::Role::Enqueue]).await.unwrap();
    let admin = auth::create_api_key(&db.pool, "ops", "admin", &[auth::Role::Admin]).await.unwrap();
    let parked = || WorkflowSpec {
        steps: vec![
            StepSpec::job("first", "probe", &json!({"do": "succeed"})).unwrap().queue("nobody"),
            StepSpec::job("second", "probe", &json!({"do": "succeed"})).unwrap().queue("nobody").after(["first"]),
        ],
    };
    let opts = || SubmitOptions { tenant: Some("acme".into()), ..Default::default() };
    let one = env.client.submit_workflow(&parked(), opts()).await.unwrap();
    let two = env.client.submit_workflow(&parked(), opts()).await.unwrap();

    let uri = format!("/admin/v1/workflows/{one}");
    let (s, _) = http(&router, "GET", &uri, Some(&app_key), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a tenant's key is not an admin's");
    let (s, body) = http(&router, "GET", &uri, Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((view["tenant"].as_str(), view["steps"][0]["state"].as_str()), (Some("acme"), Some("enqueued")));
    let (s, body) = http(&router, "DELETE", &uri, Some(&admin), None).await;
    assert_eq!(
        (s, serde_json::from_str::<Value>(&body).unwrap()["state"].clone()),
        (StatusCode::OK, json!("cancelled"))
    );
    let (s, _) = http(&router, "GET", "/admin/v1/workflows/no-such", Some(&admin), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let ctl = |args: &[&str]| fleetctl(&env, &[args, &["--database-url", db.url.as_str()][..]].concat());
    let (ok, out, err) = ctl(&["workflow", &two]);
    assert!(ok && out.contains("state     running") && out.contains("second") && out.contains("waiting"), "{out}{err}");
    let (ok, out, err) = ctl(&["workflow", &two, "--cancel", "--json"]);
    assert!(ok, "{err}");
    let cancelled: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cancelled["state"], "cancelled");
    assert!(cancelled["steps"].as_array().unwrap().iter().all(|s| s["state"] == "cancelled"), "{out}");

    let actions: Vec<(String, String)> =
        sqlx::query_as("SELECT action, target FROM admin_audit ORDER BY id").fetch_all(&db.pool).await.unwrap();
    let want = vec![
        ("workflow.cancel".to_owned(), format!("workflow:{one}")),
        ("workflow.cancel".to_owned(), format!("workflow:{two}")),
    ];
    assert_eq!(actions, want);
    db.drop_db().await;
    env.cleanup().await;
}
