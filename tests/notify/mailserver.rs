//! Email through a real mail server: the project's Postfix (`scripts/postfix.sh`:
//! STARTTLS on one port, implicit TLS on another, AUTH required, checked by Dovecot)
//! delivering into the project's Dovecot, where the test reads the email back over IMAP
//! from the recipient's mailbox (a Dovecot user of the test's own). DKIM signatures are
//! checked by dkimpy (`dkim_verify.py`), not by the code that made them.

use super::{UNSUBSCRIBE, booking_template, call, notification, settings};
use fleet_comms::imap::ImapAccount;
use fleet_jobs::catalogue::NotifySend;
use fleet_kit::testing::TestJob;
use fleet_notify::jobs::{DkimKey, SendNotification, SmtpRelay};
use fleet_notify::store::{self, RecipientRequest};
use fleet_scheduler::api::{ApiState, app, auth};
use fleet_tests::{TestDb, TestEnv, n_final};
use fleet_worker::{QueueConfig, Registry};
use futures::TryStreamExt;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn dovecot_dir() -> String {
    std::env::var("FLEET_DOVECOT_DIR").unwrap_or_else(|_| "/tmp/fleet-dovecot".into())
}

/// The test CA of `scripts/dovecot.sh`, which signs the certificate Postfix presents.
fn ca_file() -> String {
    format!("{}/tls/ca.pem", dovecot_dir())
}

fn ensure_postfix() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/postfix.sh");
        let out = std::process::Command::new("bash").arg(script).output().expect("run scripts/postfix.sh");
        assert!(out.status.success(), "scripts/postfix.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    });
}

fn port(var: &str, default: u16) -> u16 {
    std::env::var(var).ok().and_then(|p| p.parse().ok()).unwrap_or(default)
}

fn submission_port() -> u16 {
    port("FLEET_TEST_SUBMISSION_PORT", 10587)
}

fn smtps_port() -> u16 {
    port("FLEET_TEST_SMTPS_PORT", 10465)
}

/// A Dovecot user of this test's own (its mailbox starts empty): its address at
/// fleet.test, and how to read its mailbox (IMAP over implicit TLS, the test CA).
/// Tenant `studio` with the booking template and recipient `anna`, whose mailbox is a new
/// Dovecot user's; plus another new user, the relay login. Returns anna's address, her
/// mailbox and the login.
async fn studio_with_anna(db: &TestDb) -> (String, ImapAccount, ImapAccount) {
    let (to, mailbox) = mail_user();
    let (_, sender) = mail_user();
    store::put_template(&db.pool, "studio", "booking", booking_template()).await.unwrap();
    let recipient = RecipientRequest { email: Some(to.clone()), ..Default::default() };
    store::put_recipient(&db.pool, "studio", "anna", recipient).await.unwrap();
    (to, mailbox, sender)
}

fn mail_user() -> (String, ImapAccount) {
    ensure_postfix();
    let user = format!("m{}", uuid::Uuid::now_v7().simple());
    let password = format!("pw-{}", uuid::Uuid::now_v7().simple());
    std::fs::write(format!("{}/users/{user}", dovecot_dir()), format!("{user}:{{PLAIN}}{password}::::::\n"))
        .expect("Dovecot's users folder (scripts/dovecot.sh makes it)");
    let mut account = ImapAccount::plain("127.0.0.1", port("FLEET_TEST_IMAPS_PORT", 10993), user.clone(), password);
    account.tls = true;
    account.ca_file = Some(ca_file());
    (format!("{user}@fleet.test"), account)
}

/// A relay to the test Postfix, logging in as `login`'s user with `password`.
fn postfix_relay(name: &str, tls: &str, login: &ImapAccount, password: &str, trust_ca: bool) -> SmtpRelay {
    let port = if tls == "implicit" { smtps_port() } else { submission_port() };
    let ca = if trust_ca { format!("ca_file = {:?}\n", ca_file()) } else { String::new() };
    toml::from_str(&format!(
        "name = {name:?}\nhost = \"127.0.0.1\"\nport = {port}\ntls = {tls:?}\nuser = {:?}\npassword = {password:?}\n{ca}",
        login.user
    ))
    .unwrap()
}

/// The messages in `account`'s INBOX (raw, CRLF), once there are `n` of them.
async fn read_back(account: &ImapAccount, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut s = fleet_comms::imap::connect(account, Duration::from_secs(10)).await.expect("IMAP login");
        let mailbox = s.select("INBOX").await.expect("SELECT INBOX");
        let mut out = Vec::new();
        if mailbox.exists > 0 {
            let fetched: Vec<_> = s.fetch("1:*", "BODY.PEEK[]").await.unwrap().try_collect().await.unwrap();
            out = fetched.iter().filter_map(|f| f.body()).map(|b| String::from_utf8_lossy(b).into_owned()).collect();
        }
        s.logout().await.ok();
        if out.len() >= n {
            assert_eq!(out.len(), n, "more messages than sent: {out:?}");
            return out;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {n} message(s) in {}'s INBOX", account.user);
        // Postfix hands the message to Dovecot within milliseconds; ask again shortly.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The header block, unfolded, lowercase names; repeated headers joined with "\n".
fn headers(raw: &str) -> BTreeMap<String, String> {
    let raw = raw.replace("\r\n", "\n");
    let head = raw.split("\n\n").next().unwrap_or("").replace("\n ", " ").replace("\n\t", " ");
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in head.lines().filter_map(|l| l.split_once(':')) {
        let (k, v) = (k.to_ascii_lowercase(), v.trim().to_owned());
        out.entry(k).and_modify(|e| *e = format!("{e}\n{v}")).or_insert(v);
    }
    out
}

/// A fresh 2048-bit RSA key (PKCS#8 PEM, as `openssl genpkey` writes) and its DKIM TXT
/// record (`v=DKIM1; k=rsa; p=<SubjectPublicKeyInfo, base64>`).
fn dkim_key() -> (String, String) {
    use base64::Engine;
    let dir = std::env::temp_dir().join(format!("fleet-dkim-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    let ok = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&key)
        .output()
        .expect("openssl")
        .status
        .success();
    assert!(ok, "openssl genpkey");
    let der = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .expect("openssl");
    assert!(der.status.success());
    let pem = std::fs::read_to_string(&key).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    (pem, format!("v=DKIM1; k=rsa; p={}", base64::engine::general_purpose::STANDARD.encode(der.stdout)))
}

/// A fresh Ed25519 key (PKCS#8 PEM) and its DKIM record (RFC 8463: `k=ed25519`, `p=`
/// the raw 32-byte public key, the end of its SubjectPublicKeyInfo).
fn ed25519_key() -> (String, String) {
    use base64::Engine;
    let dir = std::env::temp_dir().join(format!("fleet-dkim-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    let out = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl genpkey ed25519");
    let der = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .expect("openssl");
    assert!(der.status.success() && der.stdout.len() == 44);
    let pem = std::fs::read_to_string(&key).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    (pem, format!("v=DKIM1; k=ed25519; p={}", base64::engine::general_purpose::STANDARD.encode(&der.stdout[12..])))
}

/// What `openssl <args>` prints, given `input`.
fn openssl(args: &[&str], input: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl {args:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// dkimpy's verdict on `raw`, the public key given as the TXT record at `name`.
fn dkim_verify(name: &str, record: &str, raw: &str) -> serde_json::Value {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/notify/dkim_verify.py");
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args([script, name, record])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (dkimpy: apt-get install python3-dkim)");
    child.stdin.take().unwrap().write_all(raw.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!("dkim_verify.py: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_becomes_an_email_through_postfix_with_starttls_and_auth_read_back_over_imap_and_dkim_verified() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let key = auth::create_api_key(&db.pool, "studio", "notify", &[auth::Role::Enqueue]).await.unwrap();
    let api = app(ApiState::new(env.client.clone(), db.pool.clone()), 1 << 20);
    let (to, mailbox) = mail_user();
    let (_, sender) = mail_user(); // the relay login
    let (pem, record) = dkim_key();

    let (s, v) =
        call(&api, &key, "PUT", "/v1/notify/templates/booking", serde_json::to_value(booking_template()).unwrap())
            .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(&api, &key, "PUT", "/v1/notify/recipients/anna", serde_json::json!({"email": to})).await;
    assert_eq!(s, 200, "{v}");
    let event = serde_json::json!({"recipient": "anna", "template": "booking", "category": "booking",
        "data": {"name": "Anna", "date": "12 June"}, "dedup_key": "booking-7-confirmed"});
    let (s, created) = call(&api, &key, "POST", "/v1/notifications", event).await;
    assert_eq!(s, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();

    let mut cfg = settings(vec![postfix_relay("submission", "starttls", &sender, &sender.password, true)]);
    cfg.dkim = vec![
        toml::from_str::<DkimKey>(&format!(
            "domain = \"studio.example\"\nselector = \"fleet2026\"\nprivate_key = {pem:?}"
        ))
        .unwrap(),
    ];
    // The key never shows in the settings' debug output.
    assert!(!format!("{:?}", cfg.dkim).contains("PRIVATE KEY"));
    let handler = SendNotification::new(db.pool.clone(), &cfg).unwrap();
    let mut wcfg = env.config("notify", 2);
    wcfg.queues = vec![QueueConfig { name: "notify".into(), concurrency: 2, fetch_batch: None, partitions: None }];
    let worker = env.worker(wcfg, Registry::new().register(handler)).await;
    let mut rx = worker.events();
    n_final(&mut rx, 1, Duration::from_secs(60)).await;

    let (_, n) = call(&api, &key, "GET", &format!("/v1/notifications/{id}"), serde_json::Value::Null).await;
    assert_eq!(n["status"], "sent", "{n}");
    let email = n["sends"].as_array().unwrap().iter().find(|s| s["channel"] == "email").unwrap().clone();
    assert_eq!((email["status"].as_str(), email["provider"].as_str()), (Some("sent"), Some("submission")), "{n}");
    let message_id = email["provider_message_id"].as_str().unwrap().to_owned();

    // Read back from the recipient's mailbox over IMAP.
    let raw = read_back(&mailbox, 1).await.remove(0);
    let h = headers(&raw);
    assert_eq!(h["message-id"], message_id, "the Message-ID Fleet stored");
    assert_eq!(h["subject"], "Booking confirmed for 12 June");
    assert!(h["from"].contains("Studio Lumen") && h["from"].contains("<notify@studio.example>"), "{h:?}");
    assert_eq!(h["to"], to);
    assert!(h["content-type"].starts_with("multipart/alternative"), "{h:?}");
    assert!(raw.contains("Content-Type: text/plain") && raw.contains("Content-Type: text/html"), "{raw}");
    assert!(raw.contains("<b>12 June</b>"), "{raw}");
    let unsubscribe = h["list-unsubscribe"].trim_matches(['<', '>']).to_owned();
    assert!(unsubscribe.starts_with(&format!("{UNSUBSCRIBE}/")), "{h:?}");
    assert_eq!(h["list-unsubscribe-post"], "List-Unsubscribe=One-Click");
    // Postfix's trace: received over TLS from an authenticated client (ESMTPSA).
    assert!(h["received"].contains("with ESMTPSA"), "{}", h["received"]);

    // DKIM, checked by dkimpy with the public key as the TXT record would publish it.
    let name = "fleet2026._domainkey.studio.example";
    let verdict = dkim_verify(name, &record, &raw);
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!((verdict["domain"].as_str(), verdict["selector"].as_str()), (Some("studio.example"), Some("fleet2026")));
    assert_eq!(verdict["algorithm"], "rsa-sha256");
    let signed: Vec<&str> = verdict["headers"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    for header in ["from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post"] {
        assert!(signed.contains(&header), "{header} is signed: {verdict}");
    }
    // A changed unsubscribe header, a changed body, or another key: not verified.
    let forged = raw.replace(&unsubscribe, "https://evil.example/unsubscribe");
    assert_eq!(dkim_verify(name, &record, &forged)["ok"], false);
    let forged = raw.replace("<b>12 June</b>", "<b>13 June</b>");
    assert_eq!(dkim_verify(name, &record, &forged)["ok"], false);
    let (_, other) = dkim_key();
    assert_eq!(dkim_verify(name, &other, &raw)["ok"], false);

    worker.shutdown().await;
    env.cleanup().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_through_postfix_over_implicit_tls_is_read_back_and_a_wrong_password_is_a_clear_recorded_error() {
    let db = TestDb::new().await;
    let (to, mailbox, sender) = studio_with_anna(&db).await;

    // Implicit TLS (TLS from the first byte), AUTH: delivered.
    let relays = vec![postfix_relay("submissions", "implicit", &sender, &sender.password, true)];
    let handler = SendNotification::new(db.pool.clone(), &settings(relays)).unwrap();
    let id = notification(&db, "studio", "anna", "booking", false).await;
    TestJob::new().tenant("studio").perform(&handler, NotifySend { notification: id.clone() }).await.unwrap();
    let n = store::get_notification(&db.pool, Some("studio"), &id).await.unwrap();
    assert_eq!(n.status, "sent", "{n:?}");
    let message_id = n.sends[0].provider_message_id.clone().unwrap();
    let raw = read_back(&mailbox, 1).await.remove(0);
    let h = headers(&raw);
    assert_eq!(h["message-id"], message_id);
    assert_eq!(h["to"], to);
    assert_eq!(h["list-unsubscribe-post"], "List-Unsubscribe=One-Click");
    assert!(h["received"].contains("with ESMTPSA"), "{}", h["received"]);
    // Not signed: no DKIM key is configured.
    assert!(!h.contains_key("dkim-signature"), "{h:?}");

    // A wrong password: the send fails, the record says the login was refused, and the
    // password is nowhere in it.
    let secret = format!("wrong-{}", uuid::Uuid::now_v7().simple());
    for tls in ["starttls", "implicit"] {
        let relays = vec![postfix_relay("submission", tls, &sender, &secret, true)];
        let handler = SendNotification::new(db.pool.clone(), &settings(relays)).unwrap();
        let id = notification(&db, "studio", "anna", "booking", false).await;
        let r = TestJob::new().tenant("studio").perform(&handler, NotifySend { notification: id.clone() }).await;
        let err = format!("{:?}", r.unwrap_err());
        assert!(!err.contains(&secret), "{err}");
        let n = store::get_notification(&db.pool, Some("studio"), &id).await.unwrap();
        assert_eq!(n.status, "retrying", "{n:?}");
        let email = n.sends.iter().find(|s| s.channel == "email").unwrap();
        assert_eq!(email.status, "failed", "{n:?}");
        let error = email.error.clone().unwrap();
        assert!(
            error.contains("refused the login") && error.contains(&sender.user) && error.contains("535"),
            "{error}"
        );
        assert!(!error.contains(&secret), "{error}");
        assert!(!format!("{n:?}").contains(&secret));
    }
    // Nothing more arrived.
    assert_eq!(read_back(&mailbox, 1).await.len(), 1);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_certificate_is_not_trusted_is_refused_before_any_login() {
    let db = TestDb::new().await;
    let (_, mailbox, sender) = studio_with_anna(&db).await;

    // The test CA is not among Mozilla's roots: without ca_file, neither STARTTLS nor
    // implicit TLS gets past the handshake, so the password is never sent.
    for tls in ["starttls", "implicit"] {
        let relays = vec![postfix_relay("submission", tls, &sender, &sender.password, false)];
        let handler = SendNotification::new(db.pool.clone(), &settings(relays)).unwrap();
        let id = notification(&db, "studio", "anna", "booking", false).await;
        let r = TestJob::new().tenant("studio").perform(&handler, NotifySend { notification: id.clone() }).await;
        assert!(r.is_err());
        let n = store::get_notification(&db.pool, Some("studio"), &id).await.unwrap();
        let email = n.sends.iter().find(|s| s.channel == "email").unwrap();
        assert_eq!(email.status, "failed", "{n:?}");
        let error = email.error.clone().unwrap();
        assert!(error.contains("certificate is not trusted"), "{tls}: {error}");
        assert!(!error.contains(&sender.password), "{error}");
    }
    // And with the CA trusted, the same relay delivers.
    let relays = vec![postfix_relay("submission", "starttls", &sender, &sender.password, true)];
    let handler = SendNotification::new(db.pool.clone(), &settings(relays)).unwrap();
    let id = notification(&db, "studio", "anna", "booking", false).await;
    TestJob::new().tenant("studio").perform(&handler, NotifySend { notification: id.clone() }).await.unwrap();
    assert_eq!(read_back(&mailbox, 1).await.len(), 1);
    db.drop_db().await;
}

#[tokio::test]
async fn dkim_settings_are_checked_and_name_the_setting_never_the_key() {
    let (pem, _) = dkim_key();
    let key =
        |extra: &str| toml::from_str::<DkimKey>(&format!("domain = \"studio.example\"\nselector = \"s1\"\n{extra}"));
    let try_new = |keys: Vec<DkimKey>| {
        let mut s = settings(Vec::new());
        s.from = Some("Studio <notify@studio.example>".into());
        s.dkim = keys;
        // A lazily connecting pool: settings are checked before any query.
        let pool = sqlx::PgPool::connect_lazy("postgres://localhost/none").unwrap();
        SendNotification::new(pool, &s).map(|_| ())
    };
    // PKCS#8 (openssl genpkey) and PKCS#1 (openssl rsa -traditional) both load, and an
    // Ed25519 key as PKCS#8 or as the base64 of its seed.
    try_new(vec![key(&format!("private_key = {pem:?}")).unwrap()]).unwrap();
    let pkcs1 = openssl(&["rsa", "-traditional"], pem.as_bytes());
    assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"), "{pkcs1}");
    try_new(vec![key(&format!("private_key = {pkcs1:?}")).unwrap()]).unwrap();
    let (ed, _) = ed25519_key();
    try_new(vec![key(&format!("algorithm = \"ed25519\"\nprivate_key = {ed:?}")).unwrap()]).unwrap();
    try_new(vec![
        key("algorithm = \"ed25519\"\nprivate_key = \"nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=\"").unwrap(),
    ])
    .unwrap();
    // An RSA key where an Ed25519 one is expected, and a key too short to trust.
    assert!(try_new(vec![key(&format!("algorithm = \"ed25519\"\nprivate_key = {pem:?}")).unwrap()]).is_err());
    let short = openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:768"], b"");
    let err = try_new(vec![key(&format!("private_key = {short:?}")).unwrap()]).unwrap_err();
    assert!(err.contains("768 bits"), "{err}");
    // Unknown fields, two key sources, a bad key, a short key, a key for another domain.
    assert!(key("secret = \"x\"").is_err());
    let err = try_new(vec![key(&format!("private_key = {pem:?}\nprivate_key_env = \"X\"")).unwrap()]).unwrap_err();
    assert!(err.contains("exactly one"), "{err}");
    let garbage = "-----BEGIN PRIVATE KEY-----\nTUlJQ2VnSUJB\n-----END PRIVATE KEY-----\n";
    let err = try_new(vec![key(&format!("private_key = {garbage:?}")).unwrap()]).unwrap_err();
    assert!(err.contains("notify.dkim") && !err.contains("TUlJQ2VnSUJB"), "{err}");
    let mut other = key(&format!("private_key = {pem:?}")).unwrap();
    other.domain = "other.example".into();
    let err = try_new(vec![other]).unwrap_err();
    assert!(err.contains("no key for \"studio.example\""), "{err}");
    let err = try_new(vec![key("private_key_file = \"/nonexistent/dkim.pem\"").unwrap()]).unwrap_err();
    assert!(err.contains("/nonexistent/dkim.pem"), "{err}");
    let mut bad = key(&format!("private_key = {pem:?}")).unwrap();
    bad.selector = "s1; x=y".into();
    assert!(try_new(vec![bad]).unwrap_err().contains("selector"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ed25519_dkim_signature_through_postfix_verifies_with_dkimpy() {
    let db = TestDb::new().await;
    let (_, mailbox, sender) = studio_with_anna(&db).await;
    let (pem, record) = ed25519_key();
    let mut cfg = settings(vec![postfix_relay("submissions", "implicit", &sender, &sender.password, true)]);
    cfg.dkim = vec![
        toml::from_str::<DkimKey>(&format!(
            "domain = \"Studio.Example\"\nselector = \"ed1\"\nalgorithm = \"ed25519\"\nprivate_key = {pem:?}"
        ))
        .unwrap(),
    ];
    let handler = SendNotification::new(db.pool.clone(), &cfg).unwrap();
    let id = notification(&db, "studio", "anna", "booking", false).await;
    TestJob::new().tenant("studio").perform(&handler, NotifySend { notification: id.clone() }).await.unwrap();
    let raw = read_back(&mailbox, 1).await.remove(0);
    let verdict = dkim_verify("ed1._domainkey.studio.example", &record, &raw);
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["algorithm"], "ed25519-sha256");
    assert_eq!(verdict["domain"], "studio.example", "the domain as configured, lowercased");
    assert_eq!(dkim_verify("ed1._domainkey.studio.example", &record, &raw.replace("12 June", "13 June"))["ok"], false);
    db.drop_db().await;
}

/// `cargo nextest run -p fleet-tests --test notify --run-ignored only bench_`: 200
/// notifications sent 8 at a time through Postfix (STARTTLS + AUTH, the pooled
/// transport), without and with a DKIM RSA-2048 signature, each `notify.send` timed, then
/// all 200 read back over IMAP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_emails_through_postfix() {
    for dkim in [false, true] {
        bench_run(dkim).await;
    }
}

async fn bench_run(dkim: bool) {
    const N: usize = 200;
    let db = TestDb::new().await;
    let (_, mailbox, sender) = studio_with_anna(&db).await;
    let mut cfg = settings(vec![postfix_relay("submission", "starttls", &sender, &sender.password, true)]);
    if dkim {
        let (pem, _) = dkim_key();
        let key = format!("domain = \"studio.example\"\nselector = \"b\"\nprivate_key = {pem:?}");
        cfg.dkim = vec![toml::from_str::<DkimKey>(&key).unwrap()];
    }
    let handler = SendNotification::new(db.pool.clone(), &cfg).unwrap();
    let mut ids = Vec::new();
    for _ in 0..N {
        ids.push(notification(&db, "studio", "anna", "booking", false).await);
    }
    let started = Instant::now();
    let times = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let ids = std::sync::Arc::new(std::sync::Mutex::new(ids));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (handler, times, ids) = (handler.clone(), times.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(id) = ids.lock().unwrap().pop() else { break };
                let t = Instant::now();
                TestJob::new().tenant("studio").perform(&handler, NotifySend { notification: id }).await.unwrap();
                times.lock().unwrap().push(t.elapsed());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let sent = started.elapsed();
    let got = read_back(&mailbox, N).await.len();
    let delivered = started.elapsed();
    let mut times = times.lock().unwrap().clone();
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    println!(
        "{N} emails (DKIM {}): sent in {sent:.2?} ({:.0}/s), all {got} in the IMAP mailbox after {delivered:.2?}; \
         notify.send p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        if dkim { "rsa-2048" } else { "off" },
        N as f64 / sent.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        times[times.len() - 1]
    );
    db.drop_db().await;
}
