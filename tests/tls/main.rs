//! Redis and PostgreSQL over TLS, against the servers `scripts/tls-services.sh` starts (a
//! TLS-only Redis and a PostgreSQL with ssl=on, both with a certificate for 127.0.0.1
//! signed by a throwaway CA). The URLs and the CA come from the variables that script
//! prints (`FLEET_TEST_REDIS_TLS_URL`, `FLEET_TEST_PG_TLS_URL`, `FLEET_TEST_TLS_CA`,
//! `FLEET_TEST_TLS_OTHER_CA`), with the same defaults.

use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_jobs::{Client, RedisTls};
use fleet_kit::postgres::PgTls;
use fleet_tests::{TestEnv, n_final};
use fleet_worker::{QueueConfig, Registry, WorkerConfig};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const FLEETCTL: &str = env!("CARGO_BIN_EXE_fleetctl-e2e");
const START: &str = "Start the TLS services with `scripts/tls-services.sh` (scripts/test.sh does).";

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn redis_tls_url() -> String {
    var("FLEET_TEST_REDIS_TLS_URL", "rediss://127.0.0.1:6390")
}

fn pg_tls_url() -> String {
    var("FLEET_TEST_PG_TLS_URL", "postgres://postgres@127.0.0.1:5440")
}

/// The test CA, checked to exist (with what to run when it does not).
fn ca() -> PathBuf {
    let ca = PathBuf::from(var("FLEET_TEST_TLS_CA", "/tmp/fleet-tls/tls/ca.pem"));
    assert!(ca.is_file(), "the test CA {} is missing. {START}", ca.display());
    ca
}

fn other_ca() -> PathBuf {
    PathBuf::from(var("FLEET_TEST_TLS_OTHER_CA", "/tmp/fleet-tls/tls/other-ca.pem"))
}

async fn fleetctl(args: &[&str], vars: &[(&str, &str)]) -> (bool, String, String) {
    let out = tokio::process::Command::new(FLEETCTL)
        .args(args)
        .env_remove("FLEET_REDIS_CA_FILE")
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run fleetctl");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_end_to_end_over_tls_redis_and_a_wrong_ca_is_refused() {
    let url = redis_tls_url();
    let ca = ca();
    let tls = RedisTls { ca_file: Some(ca.clone()), ..RedisTls::default() };
    let prefix = format!("test-{}", uuid::Uuid::now_v7().simple());
    let client =
        match tokio::time::timeout(Duration::from_secs(5), Client::connect_with(&url, &tls, prefix.clone())).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!("the TLS Redis at {url}: {e}. {START}"),
            Err(_) => panic!("the TLS Redis at {url} did not answer within 5 s. {START}"),
        };
    let env = TestEnv { prefix: prefix.clone(), client };

    // The worker, configured the way an operator does it: URL and CA file from the environment.
    let mut config = WorkerConfig {
        prefix: prefix.clone(),
        listen: None,
        queues: vec![QueueConfig { name: "default".into(), concurrency: 4, fetch_batch: None, partitions: None }],
        lease_ms: 5_000,
        shutdown_grace_secs: 10,
        ..WorkerConfig::default()
    };
    let ca_text = ca.to_str().unwrap().to_owned();
    config
        .apply_env(|k| match k {
            "FLEET_REDIS_URL" => Some(url.clone()),
            "FLEET_REDIS_CA_FILE" => Some(ca_text.clone()),
            _ => None,
        })
        .unwrap();
    config.validate().unwrap();
    let worker = fleet_worker::start(config.clone(), Registry::builtin()).await.expect("worker starts over TLS");
    let mut rx = worker.events();
    let jobs: Vec<_> = (0..20).map(|i| ProbeArgs::new(ProbeAction::Succeed).tagged(i.to_string())).collect();
    for args in &jobs {
        env.client.enqueue(args).await.unwrap();
    }
    let done = n_final(&mut rx, jobs.len(), T).await;
    assert!(done.iter().all(|e| e.outcome == fleet_jobs::backend::Outcome::Succeeded), "{done:?}");
    let stats = env.stats("default").await;
    assert_eq!((stats.succeeded, stats.ready, stats.running), (20, 0, 0));
    worker.shutdown().await;

    // fleetctl, with the CA file from its variable.
    let base = ["--redis-url", url.as_str(), "--prefix", prefix.as_str(), "--json", "queues"];
    let (ok, out, err) = fleetctl(&base, &[("FLEET_REDIS_CA_FILE", &ca_text)]).await;
    assert!(ok, "fleetctl over TLS: {err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let default = rows.as_array().unwrap().iter().find(|r| r["queue"] == "default").expect("the queue is listed");
    assert_eq!(default["stats"]["succeeded"], 20, "{out}");

    // A CA that did not sign the server's certificate: the handshake fails and says so,
    // without the password of the URL; the worker stops at once instead of retrying.
    let secret_url = url.replacen("rediss://", "rediss://:hunter2@", 1);
    let wrong = RedisTls { ca_file: Some(other_ca()), ..RedisTls::default() };
    let e = fleet_jobs::connect_with(&secret_url, &wrong).await.map(|_| ()).unwrap_err();
    assert!(matches!(e, fleet_jobs::Error::TlsHandshake { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("TLS handshake with Redis at 127.0.0.1:") && text.contains("certificate"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    // Mozilla's roots (no CA file) do not trust the test CA either.
    let e = fleet_jobs::connect(&url).await.map(|_| ()).unwrap_err();
    assert!(matches!(e, fleet_jobs::Error::TlsHandshake { .. }), "{e}");
    let refused = WorkerConfig { redis_url: secret_url.clone(), redis_tls: wrong, ..config };
    let e = tokio::time::timeout(T, fleet_worker::start(refused, Registry::builtin()))
        .await
        .expect("a refused certificate ends the start instead of retrying")
        .unwrap_err()
        .to_string();
    assert!(e.contains("TLS handshake") && !e.contains("hunter2"), "{e}");
    let other = other_ca();
    let (ok, _, err) = fleetctl(&base, &[("FLEET_REDIS_CA_FILE", other.to_str().unwrap())]).await;
    assert!(!ok && err.contains("TLS handshake"), "{err}");
    // Mutual TLS: the server checks a client certificate that is presented (the test
    // Redis runs with `--tls-auth-clients optional`): one of the test CA is let in, one of
    // another CA is turned away, which shows the certificate is sent.
    let dir = ca.parent().unwrap();
    let mutual = |name: &str| RedisTls {
        ca_file: Some(ca.clone()),
        client_cert_file: Some(dir.join(format!("{name}.pem"))),
        client_key_file: Some(dir.join(format!("{name}.key"))),
    };
    let mut conn =
        fleet_jobs::connect_with(&url, &mutual("client")).await.expect("a client certificate of the test CA");
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
    let refused = async {
        let mut conn = fleet_jobs::connect_with(&url, &mutual("other-client")).await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(fleet_jobs::Error::from)
    };
    assert!(refused.await.is_err(), "a client certificate of another CA is refused");

    // An unreadable CA file names the setting and the file.
    let (ok, _, err) = fleetctl(&base, &[("FLEET_REDIS_CA_FILE", "/nonexistent/ca.pem")]).await;
    assert!(!ok && err.contains("FLEET_REDIS_CA_FILE") && err.contains("/nonexistent/ca.pem"), "{err}");

    env.cleanup().await;
}

/// A server that answers PostgreSQL's SSLRequest with `N` (no TLS here), as a server
/// without ssl=on does, and then hangs up.
async fn plain_postgres() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                if socket.read_exact(&mut request).await.is_ok() && request == [0, 0, 0, 8, 4, 210, 22, 47] {
                    let _ = socket.write_all(b"N").await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_with_verify_full_migrates_and_require_refuses_a_plain_server() {
    let base = pg_tls_url();
    let verify_full = PgTls { sslmode: Some("verify-full".into()), sslrootcert: Some(ca()) };
    verify_full.validate().unwrap();
    let admin_options = verify_full.connect_options(&format!("{base}/postgres")).unwrap();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect_with(&admin_options)
        .await
        .unwrap_or_else(|e| panic!("the TLS PostgreSQL at {base}: {e}. {START}"));
    let name = format!("fleet_tls_{}", uuid::Uuid::now_v7().simple());
    // The name is generated here (hex digits only): safe to splice.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.unwrap();
    let url = format!("{base}/{name}");

    // The worker's pool and the scheduler's, each migrating, both over verified TLS.
    let worker_pool = fleet_worker::db::connect_and_migrate_tls(&url, &verify_full).await.expect("worker pool");
    let scheduler_pool = fleet_scheduler::db::connect_and_migrate_tls(&url, &verify_full, Some(Duration::from_secs(5)))
        .await
        .expect("scheduler pool");
    for pool in [&worker_pool, &scheduler_pool] {
        let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(pool)
            .await
            .unwrap();
        assert!(ssl, "the connection is encrypted");
        let migrations: i64 =
            sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success").fetch_one(pool).await.unwrap();
        assert_eq!(migrations, fleet_worker::db::MIGRATOR.iter().count() as i64);
    }
    // The same through the URL alone, as libpq spells it.
    let in_url = format!("{url}?sslmode=verify-full&sslrootcert={}", ca().display());
    let pool = fleet_worker::db::connect_and_migrate(&in_url).await.expect("sslmode in the URL");
    pool.close().await;
    worker_pool.close().await;
    scheduler_pool.close().await;

    // Only verify-full checks the host name: 127.0.0.2 reaches the same server, but its
    // certificate names 127.0.0.1 and localhost only.
    let other_name = url.replacen("127.0.0.1", "127.0.0.2", 1);
    let verify_ca = PgTls { sslmode: Some("verify-ca".into()), ..verify_full.clone() };
    let pool =
        fleet_worker::db::connect_and_migrate_tls(&other_name, &verify_ca).await.expect("verify-ca ignores the name");
    pool.close().await;
    let e = fleet_worker::db::connect_and_migrate_tls(&other_name, &verify_full).await.unwrap_err().to_string();
    assert!(
        e.contains("TLS with PostgreSQL") && e.contains("sslmode verify-full") && e.contains("not valid for name"),
        "{e}"
    );

    // verify-full with a CA that did not sign the server's certificate: refused at once.
    let wrong = PgTls { sslrootcert: Some(other_ca()), ..verify_full.clone() };
    let e = fleet_worker::db::connect_and_migrate_tls(&url, &wrong).await.unwrap_err().to_string();
    assert!(e.contains("TLS with PostgreSQL") && e.contains("sslmode verify-full"), "{e}");

    // `require` against a server that offers no TLS fails and says why, without the password.
    let port = plain_postgres().await;
    let plain = format!("postgres://fleet:s3cret@127.0.0.1:{port}/fleet");
    let require = PgTls { sslmode: Some("require".into()), sslrootcert: None };
    for e in [
        fleet_worker::db::connect_and_migrate_tls(&plain, &require).await.unwrap_err().to_string(),
        fleet_scheduler::db::connect_and_migrate_tls(&plain, &require, None).await.unwrap_err().to_string(),
    ] {
        assert!(e.contains("sslmode require") && e.contains("server does not support TLS"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await;
}
