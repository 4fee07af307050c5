//! The dashboard in a real headless Chromium, driven through chromedriver (W3C WebDriver):
//! it refuses a bad key, shows the queues, updates live, and its Replay button works.

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
