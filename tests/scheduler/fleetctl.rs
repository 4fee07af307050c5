//! `fleetctl calendar …` and `fleetctl comms …`, run as the real binary against a test
//! database and Redis namespace: `--json` output, secrets sealed and never printed,
//! clear errors, removal that asks first.

use super::sources::{entry, feed};
use fleet_accounts::secrets::SecretBox;
use fleet_calendar::store as calendar_store;
use fleet_tests::{TestDb, TestEnv, redis_url};
use serde_json::{Value, json};
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

const FLEETCTL: &str = env!("CARGO_BIN_EXE_fleetctl-e2e");
const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// What one run printed.
struct Run {
    ok: bool,
    out: String,
    err: String,
}

impl Run {
    /// Its stdout as JSON, after checking that it succeeded.
    fn json(&self) -> Value {
        assert!(self.ok, "fleetctl failed: {}", self.err);
        serde_json::from_str(&self.out).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.out))
    }
}

/// Runs fleetctl on the test's stores with `vars` set (and no `FLEET_SECRETS_KEY` unless
/// among them), feeding `stdin`.
async fn fleetctl(env: &TestEnv, db: &TestDb, args: &[&str], vars: &[(&str, &str)], stdin: &str) -> Run {
    let mut cmd = tokio::process::Command::new(FLEETCTL);
    cmd.args(["--redis-url", &redis_url(), "--prefix", &env.prefix, "--database-url", &db.url])
        .args(args)
        .env_remove("FLEET_SECRETS_KEY")
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run fleetctl");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let done = child.wait_with_output().await.unwrap();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    Run { ok: done.status.success(), out: text(done.stdout), err: text(done.stderr) }
}

async fn sealed(db: &TestDb, table: &str, id: &str) -> String {
    let sql = format!("SELECT secret FROM {table} WHERE id = $1");
    let secret: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(id).fetch_one(&db.pool).await.unwrap();
    SecretBox::new(KEY).unwrap().open(id, &secret).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_adds_reads_syncs_releases_and_removes_calendar_sources() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let ctl = |args: &'static [&'static str]| fleetctl(&env, &db, args, &[], "");
    let with_key = [("FLEET_SECRETS_KEY", KEY), ("STUDIO7_PW", "app-pw-never-printed")];
    let add: &[&str] = &[
        "calendar",
        "add",
        "--tenant",
        "acme",
        "--supplier",
        "studio-7",
        "--kind",
        "caldav",
        "--url",
        "https://dav.example.com/cal/studio-7/",
        "--username",
        "studio7",
        "--password-env",
        "STUDIO7_PW",
        "--json",
    ];
    let run = fleetctl(&env, &db, add, &with_key, "").await;
    let added = run.json();
    assert!(!run.out.contains("app-pw-never-printed") && !run.err.contains("app-pw-never-printed"));
    let id = added["id"].as_str().unwrap().to_owned();
    assert_eq!((added["has_password"].as_bool(), added["schedule"].as_str()), (Some(true), Some("*/15 * * * *")));
    assert_eq!(sealed(&db, "calendar_sources", &id).await, "app-pw-never-printed", "sealed with FLEET_SECRETS_KEY");

    let no_key = fleetctl(&env, &db, add, &with_key[1..], "").await;
    assert!(!no_key.ok && no_key.err.contains("FLEET_SECRETS_KEY"), "{}", no_key.err);
    let unset = fleetctl(&env, &db, add, &with_key[..1], "").await;
    assert!(!unset.ok && unset.err.contains("STUDIO7_PW is not set"), "{}", unset.err);
    let bad =
        ["calendar", "add", "--tenant", "acme", "--supplier", "s", "--kind", "ics", "--url", "https://x.example/c.ics"];
    let run = fleetctl(&env, &db, &[&bad[..], &["--schedule", "daily"]].concat(), &[], "").await;
    assert!(!run.ok && run.err.contains("five-field cron"), "{}", run.err);
    let run = fleetctl(
        &env,
        &db,
        &["calendar", "add", "--tenant", "acme", "--supplier", "s", "--kind", "google", "--url", "https://x.example/"],
        &[],
        "",
    )
    .await;
    assert!(!run.ok && run.err.contains("needs its OAuth access token"), "{}", run.err);
    let graph = [
        "calendar",
        "add",
        "--tenant",
        "initech",
        "--supplier",
        "s",
        "--kind",
        "graph",
        "--url",
        "https://graph.microsoft.com/v1.0/me/calendars/AAMk",
        "--password-stdin",
        "--json",
    ];
    let graph = fleetctl(&env, &db, &graph, &[("FLEET_SECRETS_KEY", KEY)], "eyJ0eXAi.access.token\n").await.json();
    assert_eq!((graph["kind"].as_str(), graph["has_password"].as_bool()), (Some("graph"), Some(true)));
    let feed_source = calendar_store::create(&db.pool, None, "globex", feed(Some("0 6 * * *"))).await.unwrap();

    let all = ctl(&["calendar", "sources", "--json"]).await.json();
    assert_eq!(all.as_array().unwrap().len(), 3);
    let acme = ctl(&["calendar", "sources", "--tenant", "acme", "--json"]).await.json();
    assert_eq!(acme.as_array().unwrap().len(), 1);
    assert!(
        acme[0].get("secret").is_none() && !acme.to_string().contains("v1:") && !acme.to_string().contains("v2:"),
        "no sealed secret either: {acme}"
    );
    let table = ctl(&["calendar", "sources", "--supplier", "studio-7"]).await;
    assert!(
        table.out.starts_with("ID") && table.out.contains("SUPPLIER") && table.out.contains(&feed_source.id),
        "{}",
        table.out
    );
    let state = fleetctl(&env, &db, &["calendar", "state", &id, "--json"], &[], "").await.json();
    assert_eq!((state["username"].as_str(), state["quarantined"].clone()), (Some("studio7"), Value::Null));

    let first = fleetctl(&env, &db, &["calendar", "sync", &id, "--json"], &[], "").await.json();
    let again = fleetctl(&env, &db, &["calendar", "sync", &id, "--json"], &[], "").await.json();
    assert_eq!(first["job"], again["job"], "one pending sync per source");
    assert_eq!(env.stats("calendar").await.enqueued, 1);
    let missing = ctl(&["calendar", "sync", "cal_nope"]).await;
    assert!(!missing.ok && missing.err.contains("no source cal_nope"), "{}", missing.err);

    let run = fleetctl(&env, &db, &["calendar", "release", &id], &[], "").await;
    assert!(!run.ok && run.err.contains("not quarantined"), "{}", run.err);
    sqlx::query("UPDATE calendar_sources SET quarantined = 'would delete 5 of 6 events' WHERE id = $1")
        .bind(&id)
        .execute(&db.pool)
        .await
        .unwrap();
    let released = fleetctl(&env, &db, &["calendar", "release", &id, "--json"], &[], "").await.json();
    assert_eq!(released["released"], true);
    assert_ne!(released["job"], first["job"], "a fresh sync, not the earlier one");
    let state = fleetctl(&env, &db, &["calendar", "state", &id, "--json"], &[], "").await.json();
    assert_eq!((state["quarantined"].clone(), state["state"]["force_apply"].clone()), (Value::Null, json!(true)));

    for (key, start, end) in
        [("a|", "2027-06-12T18:00:00Z", "2027-06-12T20:00:00Z"), ("b|", "2027-06-12T19:00:00Z", "2027-06-12T21:00:00Z")]
    {
        sqlx::query(
            "INSERT INTO calendar_occurrences (source_id, key, tenant, supplier, uid, start_at, end_at, start_local, end_local,
               zone, all_day, status, transparent, summary, fingerprint)
             VALUES ($1, $2, 'acme', 'studio-7', $3, $4::timestamptz, $5::timestamptz, ($4::timestamptz AT TIME ZONE 'Europe/London'),
               ($5::timestamptz AT TIME ZONE 'Europe/London'), 'Europe/London', false, 'CONFIRMED', false, 'Wedding', 'f')",
        )
        .bind(&id)
        .bind(key)
        .bind(key.trim_end_matches('|'))
        .bind(start)
        .bind(end)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    sqlx::query("INSERT INTO calendar_conflicts (id, tenant, supplier, a_source, a_key, b_source, b_key, start_at, end_at)
                 VALUES ('cf_1', 'acme', 'studio-7', $1, 'a|', $1, 'b|', '2027-06-12T19:00:00Z', '2027-06-12T20:00:00Z')")
        .bind(&id)
        .execute(&db.pool)
        .await
        .unwrap();
    let window = ["--tenant", "acme", "--supplier", "studio-7", "--from", "2027-01-01", "--to", "2028-01-01T00:00:00Z"];
    let args = [&["calendar", "occurrences"][..], &window, &["--json"]].concat();
    let occurrences = fleetctl(&env, &db, &args, &[], "").await.json();
    let uids: Vec<&str> = occurrences.as_array().unwrap().iter().map(|o| o["uid"].as_str().unwrap()).collect();
    assert_eq!(uids, ["a", "b"]);
    assert_eq!(occurrences[0]["start_local"], "2027-06-12T19:00:00");
    let outside = ctl(&[
        "calendar",
        "occurrences",
        "--tenant",
        "acme",
        "--supplier",
        "studio-7",
        "--from",
        "2028-01-01",
        "--json",
    ])
    .await;
    assert_eq!(outside.json(), json!([]));
    let conflicts =
        ctl(&["calendar", "conflicts", "--tenant", "acme", "--supplier", "studio-7", "--json"]).await.json();
    assert_eq!((conflicts[0]["id"].as_str(), conflicts[0]["b"]["occurrence"].as_str()), (Some("cf_1"), Some("b|")));

    let refused = fleetctl(&env, &db, &["calendar", "remove", &id], &[], "").await;
    assert!(!refused.ok && refused.err.contains("refusing without --yes"), "{}", refused.err);
    let removed = fleetctl(&env, &db, &["calendar", "remove", &id, "--yes", "--json"], &[], "").await.json();
    assert_eq!(removed["removed"], id.as_str());
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM calendar_conflicts WHERE resolved_at IS NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(open, 0, "its conflicts are resolved");
    assert_eq!(ctl(&["calendar", "sources", "--json"]).await.json().as_array().unwrap().len(), 2);
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_adds_comms_sources_and_reads_their_state_entries_timeline_and_quarantine() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let imap: &[&str] = &[
        "comms",
        "add",
        "--tenant",
        "acme",
        "--kind",
        "imap",
        "--name",
        "studio inbox",
        "--host",
        "127.0.0.1",
        "--port",
        "10143",
        "--user",
        "fleet",
        "--folder",
        "INBOX",
        "--password-stdin",
        "--json",
    ];
    let run = fleetctl(&env, &db, imap, &[("FLEET_SECRETS_KEY", KEY)], "imap-pw-never-printed\n").await;
    let mailbox = run.json();
    assert!(!run.out.contains("imap-pw-never-printed"));
    let mailbox = mailbox["id"].as_str().unwrap().to_owned();
    assert_eq!(sealed(&db, "comms_sources", &mailbox).await, "imap-pw-never-printed", "the newline is not part of it");
    let chat =
        fleetctl(&env, &db, &["comms", "add", "--tenant", "acme", "--kind", "in_app", "--json"], &[], "").await.json();
    assert_eq!((chat["config"].clone(), chat["has_secret"].clone()), (json!({}), json!(false)));
    let chat = chat["id"].as_str().unwrap().to_owned();
    let sms = [
        "comms",
        "add",
        "--tenant",
        "acme",
        "--kind",
        "sms",
        "--api-base",
        "https://api.example.com",
        "--password-stdin",
    ];
    let run = fleetctl(&env, &db, &sms, &[("FLEET_SECRETS_KEY", KEY)], "token").await;
    assert!(!run.ok && run.err.contains("account_sid"), "{}", run.err);
    let listed = fleetctl(&env, &db, &["comms", "sources", "--json"], &[], "").await.json();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[0]["config"]["folders"], json!(["INBOX"]));

    sqlx::query("INSERT INTO comms_cursors (source_id, folder, uidvalidity, uidnext, last_uid, highestmodseq) VALUES ($1, 'INBOX', 1700000000, 42, 41, 99)")
        .bind(&mailbox)
        .execute(&db.pool)
        .await
        .unwrap();
    let state = fleetctl(&env, &db, &["comms", "state", &mailbox, "--json"], &[], "").await.json();
    assert_eq!(
        (state["cursors"][0]["folder"].as_str(), state["cursors"][0]["uidnext"].as_i64()),
        (Some("INBOX"), Some(42))
    );
    let table = fleetctl(&env, &db, &["comms", "state", &mailbox], &[], "").await;
    assert!(table.out.contains("UIDVALIDITY") && table.out.contains("1700000000"), "{}", table.out);

    let ids = [
        entry(&db, "acme", &chat, "anna", 1).await,
        entry(&db, "acme", &chat, "anna", 2).await,
        entry(&db, "acme", &chat, "anna", 3).await,
    ];
    entry(&db, "acme", &mailbox, "anna", 4).await;
    let first = fleetctl(&env, &db, &["comms", "entries", &chat, "--limit", "2", "--json"], &[], "").await.json();
    let page_ids: Vec<&str> = first["entries"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(page_ids, [ids[2].as_str(), ids[1].as_str()]);
    let next = first["next"].as_str().unwrap();
    let rest = fleetctl(&env, &db, &["comms", "entries", &chat, "--limit", "2", "--cursor", next, "--json"], &[], "")
        .await
        .json();
    assert_eq!((rest["entries"][0]["id"].as_str(), rest.get("next")), (Some(ids[0].as_str()), None));
    let timeline =
        fleetctl(&env, &db, &["comms", "timeline", "--tenant", "acme", "--client", "anna", "--json"], &[], "")
            .await
            .json();
    assert_eq!(timeline["entries"].as_array().unwrap().len(), 4, "across both sources");
    let table =
        fleetctl(&env, &db, &["comms", "timeline", "--tenant", "acme", "--client", "anna", "--limit", "1"], &[], "")
            .await;
    assert!(table.out.contains("CHANNEL") && table.out.contains("more: --cursor"), "{}", table.out);

    sqlx::query(
        "INSERT INTO comms_quarantine (source_id, folder, uidvalidity, uid, tenant, reason, content_hash, size)
                 VALUES ($1, 'INBOX', 1700000000, 7, 'acme', '{\"reason\": \"too_deep\"}', 'ab12', 90000)",
    )
    .bind(&mailbox)
    .execute(&db.pool)
    .await
    .unwrap();
    let quarantined = fleetctl(&env, &db, &["comms", "quarantine", &mailbox, "--json"], &[], "").await.json();
    assert_eq!(
        (quarantined[0]["uid"].as_i64(), quarantined[0]["reason"]["reason"].as_str()),
        (Some(7), Some("too_deep"))
    );

    let synced = fleetctl(&env, &db, &["comms", "sync", &chat, "--json"], &[], "").await.json();
    let job = env.client.job("comms", synced["job"].as_str().unwrap()).await.unwrap().unwrap();
    assert_eq!(job.envelope.unwrap().kind, "comms.sync");
    let removed = fleetctl(&env, &db, &["comms", "remove", &chat, "--yes", "--json"], &[], "").await.json();
    assert_eq!(removed["removed"], chat.as_str());
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM comms_entries").fetch_one(&db.pool).await.unwrap();
    assert_eq!(left, 1, "only the mailbox's entry stays");
    db.drop_db().await;
    env.cleanup().await;
}

use fleet_tests::{BINARY_ENVELOPE as BINARY, foreign_dead_letter as foreign_dead};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_lists_shows_groups_replays_and_purges_dead_letters_of_any_bytes() {
    use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    // A dead letter of Fleet's own, and two that something else wrote.
    let w = env.worker(env.config("default", 1), fleet_worker::Registry::builtin()).await;
    let mut rx = w.events();
    let opts = fleet_jobs::EnqueueOptions::default().max_attempts(1);
    let normal = env.client.enqueue_with(&ProbeArgs::new(ProbeAction::Fail), opts).await.unwrap().0;
    fleet_tests::n_final(&mut rx, 1, std::time::Duration::from_secs(20)).await;
    w.shutdown().await;
    let hist = br#"[{"attempt":3,"at":1,"error":"undecodable envelope: invalid utf-8 sequence"}]"#;
    foreign_dead(&env, "bin", BINARY, hist).await;
    foreign_dead(&env, "txt", b"not json at all", b"\xff\x00[garbage").await;
    let ctl = |args: &'static [&'static str]| fleetctl(&env, &db, args, &[], "");

    let run = ctl(&["dead", "default"]).await;
    assert!(run.ok, "{}", run.err);
    assert_eq!(run.out.lines().count(), 4, "a header and three rows: {}", run.out);
    for id in ["bin", "txt", normal.as_str()] {
        assert!(run.out.lines().any(|l| l.starts_with(id)), "{id} listed: {}", run.out);
    }
    assert!(run.out.contains("(undecodable)") && run.out.contains("(undecodable history)"), "{}", run.out);
    let dead = ctl(&["dead", "default", "--json"]).await.json();
    let bin = dead.as_array().unwrap().iter().find(|d| d["id"] == "bin").unwrap().clone();
    assert_eq!((bin["job"]["raw_envelope_lossy"].as_bool(), bin["job"]["state"].as_str()), (Some(true), Some("dead")));

    let groups = ctl(&["dead", "default", "--group", "--json"]).await.json();
    let count = |r: &str| groups.as_array().unwrap().iter().find(|g| g["reason"] == r).map(|g| g["count"].clone());
    assert_eq!(count("undecodable envelope: invalid utf-# sequence"), Some(json!(1)), "{groups}");
    assert_eq!(count("(undecodable history)"), Some(json!(1)), "{groups}");
    let run = ctl(&["dead", "default", "--group"]).await;
    assert!(run.ok && run.out.contains("undecodable envelope") && run.out.lines().count() == 4, "{}", run.out);

    let run = ctl(&["jobs", "default", "--state", "dead"]).await;
    assert!(run.ok && run.out.lines().count() == 4, "{} {}", run.out, run.err);
    let run = ctl(&["job", "default", "bin"]).await;
    assert!(run.ok, "{}", run.err);
    let hex: String = BINARY.iter().map(|b| format!("{b:02x}")).collect();
    assert!(run.out.contains("state     dead") && run.out.contains("not UTF-8, shown lossily"), "{}", run.out);
    assert!(run.out.contains(&format!("raw hex   {hex}")), "the exact bytes: {}", run.out);
    assert!(
        run.out.contains("\u{fffd}\u{fffd}{") && run.out.contains("\\u{0}") && !run.out.contains('\0'),
        "{}",
        run.out
    );
    let run = ctl(&["job", "default", "txt"]).await;
    assert!(run.ok && run.out.contains("raw       not json at all") && run.out.contains("garbage"), "{}", run.out);
    let txt = ctl(&["job", "default", "txt", "--json"]).await.json();
    assert_eq!(txt["raw_envelope_lossy"], false);

    let replayed = ctl(&["replay", "default", "--id", "bin", "--yes", "--json"]).await.json();
    assert_eq!(replayed, json!({"replayed": 1}));
    assert_eq!(env.client.job_state("default", "bin").await.unwrap(), Some(fleet_jobs::JobState::Ready));
    let run = ctl(&["purge", "default", "--id", "txt", "--yes"]).await;
    assert!(run.ok && run.out.contains("purged 1"), "{} {}", run.out, run.err);
    assert!(env.client.job("default", "txt").await.unwrap().is_none());
    let run = ctl(&["purge", "default", "--all", "--yes"]).await;
    assert!(run.ok && run.out.contains("purged 1"), "{} {}", run.out, run.err);
    let s = env.stats("default").await;
    assert_eq!((s.dead, s.ready, s.replayed, s.purged), (0, 1, 1, 2));
    db.drop_db().await;
    env.cleanup().await;
}
