//! The dashboard in a real headless Chromium, driven through chromedriver (W3C WebDriver):
//! it refuses a bad key, shows the queues, updates live, and its Replay button works; its
//! pages (job browser, job, schedules, batches, workers, limits, tenants, audit) show what
//! the fleet holds and their actions change it. With `FLEET_DASHBOARD_SCREENSHOTS=<dir>`
//! the pages are saved there as PNG (the README's pictures come from `docs/`).

use super::{five_dead, two_foreign_dead};
use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_scheduler::api::{ApiState, app, auth};
use fleet_tests::{TestDb, TestEnv, eventually, free_port};
use serde_json::{Value, json};
use std::time::Duration;

/// A WebDriver session.
struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    _driver: tokio::process::Child,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver runs (install it with scripts/browser.sh)");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        eventually("chromedriver to be ready", Duration::from_secs(20), || {
            let (http, url) = (http.clone(), format!("{base}/status"));
            async move { http.get(url).send().await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await;
        let profile = std::env::temp_dir().join(format!("fleet-chrome-{port}"));
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     format!("--user-data-dir={}", profile.display())]
        }}}});
        let v = Self::send(&http, reqwest::Method::POST, &format!("{base}/session"), Some(caps)).await;
        let session = v["sessionId"].as_str().expect("a WebDriver session").to_owned();
        Browser { http, base, session, _driver: driver }
    }

    async fn send(http: &reqwest::Client, method: reqwest::Method, url: &str, body: Option<Value>) -> Value {
        let mut req = http.request(method, url);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let text = req.send().await.expect("webdriver").text().await.expect("webdriver body");
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        v["value"].clone()
    }

    async fn go(&self, url: &str) {
        Self::send(
            &self.http,
            reqwest::Method::POST,
            &format!("{}/session/{}/url", self.base, self.session),
            Some(json!({"url": url})),
        )
        .await;
    }

    /// Runs `script` in the page and returns its value.
    async fn js(&self, script: &str) -> Value {
        let url = format!("{}/session/{}/execute/sync", self.base, self.session);
        Self::send(&self.http, reqwest::Method::POST, &url, Some(json!({"script": script, "args": []}))).await
    }

    /// Waits until `script` returns `expected`.
    async fn until(&self, what: &str, script: &str, expected: Value) {
        eventually(what, Duration::from_secs(30), || async { (self.js(script).await == expected).then_some(()) }).await;
    }

    /// Runs `script` and waits until `check` returns `expected`.
    async fn act(&self, what: &str, script: &str, check: &str, expected: Value) {
        self.js(script).await;
        self.until(what, check, expected).await;
    }

    /// Resizes the window (CSS pixels).
    async fn resize(&self, width: u32, height: u32) {
        let url = format!("{}/session/{}/window/rect", self.base, self.session);
        Self::send(&self.http, reqwest::Method::POST, &url, Some(json!({"width": width, "height": height}))).await;
    }

    /// Saves a PNG of the window as `<dir>/<name>.png` when `FLEET_DASHBOARD_SCREENSHOTS`
    /// names a directory.
    async fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let Ok(dir) = std::env::var("FLEET_DASHBOARD_SCREENSHOTS") else { return };
        let url = format!("{}/session/{}/screenshot", self.base, self.session);
        let v = Self::send(&self.http, reqwest::Method::GET, &url, None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().expect("a screenshot")).expect("base64");
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).expect("write the screenshot");
    }

    async fn close(self) {
        let url = format!("{}/session/{}", self.base, self.session);
        Self::send(&self.http, reqwest::Method::DELETE, &url, None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_queues_live_and_replays_in_a_real_browser() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    five_dead(&env).await;
    // Two dead letters Fleet did not write (not UTF-8; not JSON with a garbage history).
    two_foreign_dead(&env).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = format!("http://{}", listener.local_addr().unwrap());
    let router = app(
        ApiState::new(env.client.clone(), db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests()),
        1 << 20,
    );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let admin = auth::create_api_key(&db.pool, "ops", "admin", &[auth::Role::Admin]).await.unwrap();
    let browser = Browser::start().await;

    // Without a valid key the page shows nothing of the fleet.
    browser.go(&format!("{site}/dashboard#key=fk_000000000000_nope")).await;
    browser
        .until(
            "the refusal",
            "return document.getElementById('login-error').textContent",
            json!("invalid or revoked API key"),
        )
        .await;
    assert_eq!(browser.js("return document.getElementById('queues-box').hidden").await, json!(true));

    // With one, the queues appear.
    browser.go(&format!("{site}/dashboard#key={admin}")).await;
    let cell = |n: usize| {
        format!("var r = document.querySelector('#queues tbody tr'); return r ? r.children[{n}].textContent : null;")
    };
    browser.until("the default queue with its 7 dead letters", &cell(5), json!("7")).await;
    assert_eq!(browser.js("return location.hash").await, json!(""), "the key left the address bar");

    // Live: jobs enqueued now show up without a reload.
    env.client.enqueue_bulk((0..3).map(|_| ProbeArgs::new(ProbeAction::Succeed))).await.unwrap();
    browser.until("the 3 new ready jobs", &cell(1), json!("3")).await;

    // The Replay button replays that reason's dead letters.
    browser.until("the dead-letter groups", "return document.querySelectorAll('button.replay').length", json!(4)).await;
    let reasons = "return Array.from(document.querySelectorAll('#dead td.reason')).map(td => td.textContent).sort()";
    assert_eq!(
        browser.js(reasons).await,
        json!([
            "(undecodable history)",
            "probe: scripted failure (attempt # of #: no attempts left)",
            "probe: scripted give-up",
            "undecodable envelope: invalid utf-# sequence"
        ]),
        "every group, the foreign dead letters' too"
    );
    browser.js("document.querySelector('button.replay').click(); return true").await;
    browser
        .until(
            "the replay",
            "return document.querySelector('button.replay').textContent.startsWith('replayed')",
            json!(true),
        )
        .await;
    let s = env.stats("default").await;
    assert!(s.replayed >= 2 && s.dead == 7 - s.replayed, "{s:?}");

    // A batch created through the API shows up with its progress.
    let app_key = auth::create_api_key(&db.pool, "acme", "app", &[auth::Role::Enqueue]).await.unwrap();
    let jobs: Vec<Value> = (0..5).map(|_| json!({"kind": "probe", "args": {"do": "succeed"}})).collect();
    let created = browser
        .http
        .post(format!("{site}/v1/batches"))
        .header("authorization", format!("Bearer {app_key}"))
        .header("content-type", "application/json")
        .body(json!({"jobs": jobs}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    browser
        .until(
            "the batch's progress bar",
            "var p = document.querySelector('#batches progress'); return p ? p.max : null;",
            json!(5),
        )
        .await;
    browser.close().await;
    db.drop_db().await;
    env.cleanup().await;
}

/// The app's side of live progress in a browser: its server exchanges the API key for a
/// stream token, and a page on the app's own origin (another port here) follows the
/// tenant's jobs with `EventSource`, never holding the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_the_apps_origin_follows_jobs_with_a_stream_token_and_no_api_key() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let fleet = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = format!("http://{}", fleet.local_addr().unwrap());
    let router = app(
        ApiState::new(env.client.clone(), db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests())
            .with_secrets(fleet_accounts::secrets::SecretBox::new(&"3c".repeat(32)).unwrap()),
        1 << 20,
    );
    tokio::spawn(async move { axum::serve(fleet, router).await.unwrap() });
    let key = auth::create_api_key(&db.pool, "acme", "app", &[auth::Role::Enqueue]).await.unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        http.post(format!("{site}{path}"))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    // The app's server side: one token for this page, job events only.
    let res = post("/v1/stream/tokens", json!({"ttl_secs": 300, "types": ["job.*"]})).await.unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let token: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    let token = token["token"].as_str().unwrap().to_owned();

    // The app's page, on its own origin.
    let page = format!(
        "<!doctype html><title>gallery</title><script>
         window.seen = []; window.errors = 0;
         const es = new EventSource({url});
         es.addEventListener('job.succeeded', e => window.seen.push(JSON.parse(e.data).id));
         es.onerror = () => window.errors++;
         </script>",
        url = serde_json::to_string(&format!("{site}/v1/stream?token={token}&after=0")).unwrap()
    );
    assert!(!page.contains(&key), "the page holds no API key");
    let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_site = format!("http://{}", app_listener.local_addr().unwrap());
    let app_router =
        axum::Router::new().route("/gallery", axum::routing::get(move || async move { axum::response::Html(page) }));
    tokio::spawn(async move { axum::serve(app_listener, app_router).await.unwrap() });

    let browser = Browser::start().await;
    browser.go(&format!("{app_site}/gallery")).await;
    let worker = env.worker(env.config("default", 2), fleet_worker::Registry::builtin()).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let res = post("/v1/jobs", json!({"kind": "probe", "args": {"do": "succeed"}})).await.unwrap();
        let v: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    browser.until("the page to see the 3 jobs succeed", "return window.seen.slice().sort()", json!(ids)).await;
    assert_eq!(browser.js("return window.errors").await, json!(0), "the cross-origin stream opened cleanly");
    browser.close().await;
    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}

/// `document.querySelectorAll(css).length`.
fn count(css: &str) -> String {
    format!("return document.querySelectorAll({}).length", serde_json::to_string(css).unwrap())
}

/// The text of the first element matching `css` (null when there is none).
fn text_of(css: &str) -> String {
    format!("var e = document.querySelector({}); return e ? e.textContent : null;", serde_json::to_string(css).unwrap())
}

/// Sets the value of the element `id` and clicks `button` (a CSS selector).
fn fill_and_click(fields: &[(&str, &str)], button: &str) -> String {
    let mut js = String::new();
    for (id, v) in fields {
        js.push_str(&format!("document.getElementById({:?}).value = {};", id, serde_json::to_string(v).unwrap()));
    }
    js.push_str(&format!("document.querySelector({}).click(); return true;", serde_json::to_string(button).unwrap()));
    js
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_page_finds_shows_and_acts_in_a_real_browser() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let (gave_up, failed) = five_dead(&env).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = format!("http://{}", listener.local_addr().unwrap());
    let router = app(
        ApiState::new(env.client.clone(), db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests()),
        1 << 20,
    );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let admin = auth::create_api_key(&db.pool, "ops", "admin", &[auth::Role::Admin]).await.unwrap();
    let app_key = auth::create_api_key(&db.pool, "studio-7", "app", &[auth::Role::Enqueue]).await.unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        http.post(format!("{site}{path}"))
            .header("authorization", format!("Bearer {app_key}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    // The tenant's job, due in an hour, about its calendar.
    let res = post(
        "/v1/jobs",
        json!({"kind": "probe", "args": {"do": "succeed", "tag": "calendar sync studio-7"}, "delay_ms": 3_600_000}),
    )
    .await
    .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let later: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    let later = later["id"].as_str().unwrap().to_owned();

    let browser = Browser::start().await;
    browser.resize(1280, 900).await;
    browser.go(&format!("{site}/dashboard#key={admin}")).await;
    browser.until("the queues", &count("#queues tbody tr"), json!(1)).await;
    browser.screenshot("dashboard").await;

    // Job browser: a queue's dead letters, then filtered by text, deep-linked.
    browser.go(&format!("{site}/dashboard#/jobs?queue=default&state=dead")).await;
    browser.until("the five dead letters", &count("#jobs tbody tr"), json!(5)).await;
    browser.go(&format!("{site}/dashboard#/jobs?queue=default&state=dead&q=GIVE-UP")).await;
    browser.until("the three that gave up", &count("#jobs tbody tr"), json!(3)).await;
    let listed = browser
        .js("return Array.from(document.querySelectorAll('#jobs tbody tr')).map(r => r.dataset.id).sort()")
        .await;
    let mut want = gave_up.clone();
    want.sort();
    assert_eq!(listed, json!(want));
    // The tenant's scheduled job, by tenant and text, through the filter form.
    browser
        .act(
            "the tenant's scheduled job",
            &fill_and_click(
                &[("f-state", "scheduled"), ("f-tenant", "studio-7"), ("f-q", "calendar"), ("f-kind", "")],
                "#jobs-filter button",
            ),
            &text_of("#jobs tbody tr a"),
            json!(later),
        )
        .await;
    assert_eq!(
        browser.js("return location.hash").await,
        json!("#/jobs?queue=default&state=scheduled&tenant=studio-7&q=calendar")
    );
    browser.screenshot("dashboard-jobs").await;

    // Job page: envelope, pretty args; retry now makes it run at once.
    browser.js("document.querySelector('#jobs tbody tr a').click(); return true").await;
    browser.until("the job page", &text_of("#job-state"), json!("scheduled")).await;
    let args: Value = serde_json::from_str(
        browser.js("return document.getElementById('job-args').textContent").await.as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(args, json!({"do": "succeed", "tag": "calendar sync studio-7"}));
    assert!(browser.js(&text_of("#job-envelope")).await.as_str().unwrap().contains("studio-7"));
    browser
        .act(
            "retry now",
            "document.getElementById('act-retry').click(); return true",
            &text_of("#act-result"),
            json!("retried: it runs as soon as a worker is free"),
        )
        .await;
    let worker = env.worker(env.config("default", 2), fleet_worker::Registry::builtin()).await;
    browser.until("the retried job to succeed", &text_of("#job-state"), json!("succeeded")).await;
    worker.shutdown().await;

    // A dead letter: error and attempts shown; retried, cancelled, deleted from its page.
    let dead = &failed[0];
    browser.go(&format!("{site}/dashboard#/job/default/{dead}")).await;
    browser.until("the dead letter", &text_of("#job-state"), json!("dead")).await;
    browser.until("its attempt", &count("#job-history tbody tr"), json!(1)).await;
    assert!(browser.js(&text_of("#job-last-error")).await.as_str().unwrap().contains("scripted failure"));
    browser.screenshot("dashboard-job").await;
    browser
        .act(
            "retry of the dead letter",
            "document.getElementById('act-retry').click(); return true",
            &text_of("#job-state"),
            json!("ready"),
        )
        .await;
    browser
        .act(
            "cancel",
            "document.getElementById('act-cancel').click(); return true",
            &text_of("#job-state"),
            json!("cancelled"),
        )
        .await;
    browser.js("document.getElementById('act-delete').click(); return true").await;
    assert_eq!(browser.js(&text_of("#act-delete")).await, json!("Really delete?"), "delete asks once more");
    browser
        .act(
            "delete",
            "document.getElementById('act-delete').click(); return true",
            &text_of("#job-state"),
            json!("gone"),
        )
        .await;
    assert!(env.client.job("default", dead).await.unwrap().is_none());

    // Replay with edited arguments: a new job of the same kind and tenant-less origin.
    let other = &gave_up[0];
    browser.go(&format!("{site}/dashboard#/job/default/{other}")).await;
    browser.until("the other dead letter", &text_of("#job-state"), json!("dead")).await;
    browser
        .act(
            "the replayed copy",
            "document.getElementById('replay-box').open = true; document.getElementById('replay-args').value = '{\"do\": \"succeed\"}'; document.getElementById('act-replay').click(); return true",
            "var a = document.querySelector('#replay-result a'); return a ? a.textContent.length > 0 : false",
            json!(true),
        )
        .await;
    let copy = browser.js(&text_of("#replay-result a")).await.as_str().unwrap().to_owned();
    let job = env.client.job("default", &copy).await.unwrap().expect("the copy");
    let copied: Value = serde_json::from_str(job.envelope.as_ref().unwrap().args.get()).unwrap();
    assert_eq!(copied, json!({"do": "succeed"}));
    assert_eq!(
        env.client.job_state("default", other).await.unwrap(),
        Some(fleet_jobs::JobState::Dead),
        "the original stays"
    );

    // Schedules: create, pause, resume, run now, edit, delete.
    browser.go(&format!("{site}/dashboard#/schedules")).await;
    browser.until("the empty list", &text_of("#sched-error"), json!("no schedules yet")).await;
    browser.js("document.getElementById('sched-new').click(); return true").await;
    browser.until("the editor", "return document.getElementById('sched-editor').hidden", json!(false)).await;
    let def = json!({"cron": "0 0 3 * * *", "timezone": "Europe/Berlin", "kind": "probe", "args": {"do": "succeed"}})
        .to_string();
    browser
        .act(
            "the new schedule",
            &fill_and_click(&[("sched-name", "nightly"), ("sched-def", &def)], "#sched-save"),
            &count("#schedules tr[data-schedule=nightly]"),
            json!(1),
        )
        .await;
    // Its next fire time, before any tick: 03:00 in Berlin is 01:00 or 02:00 UTC.
    let next = browser.js(&text_of("#schedules tr[data-schedule=nightly] td:nth-child(2)")).await;
    let next = next.as_str().unwrap();
    assert!(next.ends_with(" 01:00:00") || next.ends_with(" 02:00:00"), "{next}");
    browser
        .act(
            "pause",
            "document.querySelector('.sched-pause').click(); return true",
            &text_of("#schedules tbody tr td:nth-child(5)"),
            json!("yes"),
        )
        .await;
    browser
        .act(
            "resume",
            "document.querySelector('.sched-resume').click(); return true",
            &text_of("#schedules tbody tr td:nth-child(5)"),
            json!(""),
        )
        .await;
    let before = env.stats("default").await.ready;
    browser
        .act(
            "run now",
            "document.querySelector('.sched-run').click(); return true",
            &text_of(".sched-run"),
            json!("enqueued"),
        )
        .await;
    assert_eq!(env.stats("default").await.ready, before + 1, "run now enqueued one job");
    browser
        .act(
            "the editor with the definition",
            "document.querySelector('.sched-edit').click(); return true",
            "return document.getElementById('sched-def').value.includes('Europe/Berlin')",
            json!(true),
        )
        .await;
    let edited =
        json!({"cron": "0 30 4 * * *", "timezone": "UTC", "kind": "probe", "args": {"do": "succeed"}}).to_string();
    browser
        .act(
            "the edit",
            &fill_and_click(&[("sched-def", &edited)], "#sched-save"),
            &text_of("#sched-form-result"),
            json!("saved"),
        )
        .await;
    let stored: (String,) =
        sqlx::query_as("SELECT cron FROM schedules WHERE name = 'nightly'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(stored.0, "0 30 4 * * *");
    browser.screenshot("dashboard-schedules").await;
    browser.js("document.querySelector('.sched-delete').click(); return true").await;
    browser
        .act(
            "delete",
            "document.querySelector('.sched-delete').click(); return true",
            &count("#schedules tr[data-schedule=nightly]"),
            json!(0),
        )
        .await;

    // Batches with their progress.
    let jobs: Vec<Value> = (0..4).map(|_| json!({"kind": "probe", "args": {"do": "succeed"}})).collect();
    assert_eq!(post("/v1/batches", json!({"jobs": jobs})).await.unwrap().status().as_u16(), 201);
    browser.go(&format!("{site}/dashboard#/batches")).await;
    browser
        .until(
            "the batch",
            "var p = document.querySelector('#batch-list progress'); return p ? p.max : null;",
            json!(4),
        )
        .await;
    let mut cfg = env.config("default", 2);
    cfg.lease_ms = 600; // heartbeats (with the jobs held) every 200 ms
    let worker = env.worker(cfg, fleet_worker::Registry::builtin()).await;
    browser
        .until(
            "its progress, live",
            "var p = document.querySelector('#batch-list progress'); return p ? p.value : null;",
            json!(4),
        )
        .await;
    browser.screenshot("dashboard-batches").await;

    // Workers with what they run.
    let sleeping = env.client.enqueue(&ProbeArgs::new(ProbeAction::Sleep { ms: 60_000 })).await.unwrap();
    browser.go(&format!("{site}/dashboard#/workers")).await;
    browser
        .until(
            "the worker running the job",
            &format!("return document.querySelector('#workers a[href$=\"{}\"]') !== null", sleeping.0),
            json!(true),
        )
        .await;
    assert_eq!(browser.js(&text_of("#workers tbody tr td")).await, json!(worker.instance()));
    browser.screenshot("dashboard-workers").await;
    env.client.cancel("default", sleeping.as_str()).await.unwrap();
    worker.shutdown().await;

    // Limit keys: an override set from the form shows with its tokens; edited again.
    browser.go(&format!("{site}/dashboard#/limits")).await;
    browser
        .act(
            "the override",
            &fill_and_click(
                &[
                    ("l-key", "vision:provider:acme"),
                    ("l-rate", "5"),
                    ("l-burst", "3"),
                    ("l-fail", "4"),
                    ("l-cool", "30000"),
                ],
                "#limit-form button",
            ),
            &text_of("#limits tr[data-key='vision:provider:acme'] td:nth-child(7)"),
            json!("5/s, burst 3, breaker 4 / 30000 ms"),
        )
        .await;
    assert_eq!(
        browser.js(&text_of("#limits tr[data-key='vision:provider:acme'] td:nth-child(4)")).await,
        json!("3"),
        "a full bucket"
    );
    assert_eq!(
        browser.js(&text_of("#limits tr[data-key='vision:provider:acme'] td:nth-child(2)")).await,
        json!("closed")
    );
    browser.js("document.querySelector('.limit-edit').click(); return true").await;
    assert_eq!(browser.js("return document.getElementById('l-rate').value").await, json!("5"), "Edit fills the form");
    browser.screenshot("dashboard-limits").await;

    // Tenants with usage against quotas.
    post("/v1/jobs", json!({"kind": "probe", "args": {"do": "succeed"}})).await.unwrap();
    browser.go(&format!("{site}/dashboard#/tenants?queue=default")).await;
    browser
        .until("the tenant's open job", &text_of("#tenants tr[data-tenant=studio-7] td:nth-child(4)"), json!("1"))
        .await;
    browser.screenshot("dashboard-tenants").await;

    // The audit log holds every action taken above.
    browser.go(&format!("{site}/dashboard#/audit")).await;
    let actions = "return Array.from(new Set(Array.from(document.querySelectorAll('#audit tbody tr')).map(r => r.dataset.action))).sort()";
    browser
        .until(
            "every action",
            actions,
            json!([
                "job.cancel",
                "job.delete",
                "job.replay",
                "job.retry",
                "limit.override",
                "schedule.create",
                "schedule.delete",
                "schedule.edit",
                "schedule.pause",
                "schedule.resume",
                "schedule.run"
            ]),
        )
        .await;
    browser
        .act(
            "the filter",
            &fill_and_click(&[("a-action", "job.retry")], "#audit-form button"),
            &count("#audit tbody tr"),
            json!(2),
        )
        .await;
    browser.screenshot("dashboard-audit").await;

    // At a phone's width nothing spills sideways: wide tables scroll inside their box.
    browser.resize(390, 844).await;
    browser.go(&format!("{site}/dashboard#/jobs?queue=default&state=dead")).await;
    browser.until("the dead letters on a phone", &count("#jobs tbody tr"), json!(4)).await;
    assert_eq!(browser.js("return document.documentElement.scrollWidth <= window.innerWidth").await, json!(true));
    browser.screenshot("dashboard-phone").await;

    // The archive answers (the scheduler serves it): its tab is offered.
    assert_eq!(browser.js("return document.getElementById('tab-archive').hidden").await, json!(false));
    browser.close().await;
    db.drop_db().await;
    env.cleanup().await;
}

/// The job browser searches the archive (`GET /admin/v1/archive/jobs`) with the same
/// filters, sending the key in the header only: a job that finished long ago (a row of
/// the archive, no longer in Redis) is found by its tenant and the text of its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_browser_searches_the_archive_when_it_answers() {
    use std::sync::{Arc, Mutex};
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    env.client.enqueue(&ProbeArgs::new(ProbeAction::Succeed)).await.unwrap();
    sqlx::query(
        "INSERT INTO job_archive (tenant, queue, id, attempt, kind, state, args, error, enqueued_at, finished_at)
         VALUES ('studio-7', 'default', '01archived', 3, 'calendar.sync', 'dead', '{}'::jsonb,
                 '401 from the CalDAV server', now() - interval '2 days', now() - interval '1 day')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // What the browser asks of the archive: its query and whether it sent the key.
    let asked: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let seen = asked.clone();
    let record = axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
        let seen = seen.clone();
        async move {
            if req.uri().path().starts_with("/admin/v1/archive/jobs") {
                let authorized = req
                    .headers()
                    .get("authorization")
                    .is_some_and(|v| v.to_str().unwrap_or("").starts_with("Bearer fk_"));
                seen.lock().unwrap().push((req.uri().query().unwrap_or("").to_owned(), authorized));
            }
            next.run(req).await
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = format!("http://{}", listener.local_addr().unwrap());
    let router = app(ApiState::new(env.client.clone(), db.pool.clone()), 1 << 20).layer(record);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let admin = auth::create_api_key(&db.pool, "ops", "admin", &[auth::Role::Admin]).await.unwrap();
    let browser = Browser::start().await;
    browser.go(&format!("{site}/dashboard#key={admin}")).await;
    browser.until("the queues", &count("#queues tbody tr"), json!(1)).await;
    browser.go(&format!("{site}/dashboard#/jobs?queue=default&state=dead&tenant=studio-7&q=caldav")).await;
    browser.until("the archive tab", "return document.getElementById('tab-archive').hidden", json!(false)).await;
    browser.js("document.getElementById('tab-archive').click(); return true").await;
    browser.until("the archived job", &text_of("#jobs tbody tr a"), json!("01archived")).await;
    assert_eq!(
        browser.js("return location.hash").await,
        json!("#/jobs?queue=default&state=dead&tenant=studio-7&q=caldav&source=archive")
    );
    // Its page: read from the archive (the job left Redis long ago), without actions.
    browser.js("document.querySelector('#jobs tbody tr a').click(); return true").await;
    browser
        .until(
            "the archived job's page",
            "return document.getElementById('job-last-error').textContent",
            json!("401 from the CalDAV server"),
        )
        .await;
    let note = browser.js("return document.getElementById('job-error').textContent").await;
    assert!(note.as_str().unwrap_or("").starts_with("from the archive"), "{note}");
    assert_eq!(browser.js("return document.getElementById('job-state').textContent").await, json!("dead"));
    assert_eq!(browser.js("return document.getElementById('job-actions').hidden").await, json!(true));
    let asked = asked.lock().unwrap().clone();
    assert!(asked.iter().all(|(_, authorized)| *authorized), "{asked:?}");
    assert!(
        asked.iter().any(|(q, _)| q == "queue=default&state=dead&tenant=studio-7&q=caldav&limit=50"),
        "the same filters go to the archive: {asked:?}"
    );
    assert!(asked.iter().all(|(q, _)| !q.contains("fk_")), "never a key in a URL");
    browser.close().await;
    db.drop_db().await;
    env.cleanup().await;
}
