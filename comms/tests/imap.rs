//! IMAP sync against a real Dovecot (`scripts/dovecot.sh`), each test with a user of
//! its own (appended to the server's passwd-file), loaded over IMAP with mail built here.

use base64::Engine as _;
use fleet_comms::contacts::ContactBook;
use fleet_comms::imap::Session;
use fleet_comms::imap::{
    FolderBatch, FolderCursor, ImapAccount, MemoryStore, StoreError, SyncError, SyncOptions, SyncStore, sync_account,
};
use fleet_comms::parse::{ParseFailure, ParseLimits, TimeSource};
use futures::TryStreamExt;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

fn port() -> u16 {
    std::env::var("FLEET_TEST_IMAP_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(10143)
}

fn dovecot_dir() -> String {
    std::env::var("FLEET_DOVECOT_DIR").unwrap_or_else(|_| "/tmp/fleet-dovecot".into())
}

/// Starts the project's Dovecot once per test process (the script does nothing when it runs).
fn ensure_dovecot() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/dovecot.sh");
        let out = std::process::Command::new("bash").arg(script).output().expect("run scripts/dovecot.sh");
        assert!(
            out.status.success(),
            "scripts/dovecot.sh failed (Dovecot is needed for these tests): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// A fresh IMAP user with an empty mailbox.
fn new_user() -> ImapAccount {
    ensure_dovecot();
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let user = format!("t{}x{}x{}", std::process::id(), nanos % 1_000_000_000_000, N.fetch_add(1, Ordering::Relaxed));
    let password = format!("pw-{nanos}");
    std::fs::write(format!("{}/users/{user}", dovecot_dir()), format!("{user}:{{PLAIN}}{password}::::::\n"))
        .expect("Dovecot's users folder (scripts/dovecot.sh makes it)");
    ImapAccount::plain("127.0.0.1", port(), user, password)
}

async fn admin(account: &ImapAccount) -> Session {
    fleet_comms::imap::connect(account, Duration::from_secs(10)).await.expect("admin login")
}

async fn append(s: &mut Session, folder: &str, raw: &[u8], flags: Option<&str>, internal: Option<&str>) {
    let date = internal.map(|d| format!("\"{d}\""));
    s.append(folder, flags, date.as_deref(), raw).await.unwrap_or_else(|e| panic!("APPEND to {folder}: {e}"));
}

async fn create(s: &mut Session, folder: &str) {
    s.create(folder).await.unwrap_or_else(|e| panic!("CREATE {folder}: {e}"));
}

fn book() -> Arc<ContactBook> {
    let mut b = ContactBook::new("GB");
    b.add_client("client-anna", &["anna@example.com"], &["07911 123456"]);
    b.add_own(&["studio@photo.example"], &[]);
    Arc::new(b)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn mail(id: Option<&str>, subject: &str, body: &str) -> Vec<u8> {
    let mut m = String::from("From: Anna Smith <anna@example.com>\r\nTo: studio@photo.example\r\n");
    if let Some(id) = id {
        m.push_str(&format!("Message-ID: <{id}>\r\n"));
    }
    m.push_str(&format!(
        "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nSubject: {subject}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ));
    m.into_bytes()
}

fn reply(id: &str, parent: &str, refs: &str, body: &str) -> Vec<u8> {
    format!("From: studio@photo.example\r\nTo: anna@example.com\r\nMessage-ID: <{id}>\r\nIn-Reply-To: <{parent}>\r\nReferences: {refs}\r\nDate: Tue, 01 Dec 2026 12:00:00 +0000\r\nSubject: Re: Dates\r\n\r\n{body}\r\n").into_bytes()
}

fn encoded(text: &str, enc: &'static encoding_rs::Encoding, label: &str) -> String {
    format!("=?{label}?B?{}?=", b64(&enc.encode(text).0))
}

fn charset_cases() -> Vec<(String, Vec<u8>)> {
    let cases: [(&str, &'static encoding_rs::Encoding, &str); 5] = [
        ("Café au lait — déjà vu", encoding_rs::UTF_8, "UTF-8"),
        ("Crème brûlée à Genève", encoding_rs::WINDOWS_1252, "ISO-8859-1"),
        ("“Quoted” price 50€", encoding_rs::WINDOWS_1252, "windows-1252"),
        ("結婚式の写真について", encoding_rs::ISO_2022_JP, "ISO-2022-JP"),
        ("婚礼摄影报价单", encoding_rs::GB18030, "GB18030"),
    ];
    let mut out: Vec<(String, Vec<u8>)> = cases
        .iter()
        .enumerate()
        .map(|(i, (text, enc, label))| {
            (text.to_string(), mail(Some(&format!("cs{i}@x")), &encoded(text, enc, label), "charset"))
        })
        .collect();
    out.push((
        "Réservation confirmée".into(),
        b"From: anna@example.com\r\nMessage-ID: <raw8@x>\r\nSubject: R\xe9servation confirm\xe9e\r\n\r\nraw 8-bit header\r\n".to_vec(),
    ));
    out
}

async fn sync(account: &ImapAccount, store: &mut MemoryStore) -> fleet_comms::imap::SyncReport {
    sync_account(account, "src", &book(), store, &SyncOptions::default()).await.expect("sync")
}

fn entry_count_by_mid(store: &MemoryStore, mid: &str) -> usize {
    store.timeline.by_message_id(mid).len()
}

#[tokio::test]
async fn a_built_mailbox_syncs_once_with_charsets_duplicates_threads_and_deletions() {
    let account = new_user();
    let mut s = admin(&account).await;
    create(&mut s, "Archive").await;
    for (_, raw) in charset_cases() {
        append(&mut s, "INBOX", &raw, None, None).await;
    }
    // The same message in two folders.
    let dup = mail(Some("dup@x"), "Both folders", "I am in INBOX and Archive.");
    append(&mut s, "INBOX", &dup, None, None).await;
    append(&mut s, "Archive", &dup, None, None).await;
    // A thread of three whose parent arrives last.
    append(&mut s, "INBOX", &reply("c@x", "b@x", "<a@x> <b@x>", "third"), None, None).await;
    append(&mut s, "INBOX", &reply("b@x", "a@x", "<a@x>", "second"), None, None).await;
    append(&mut s, "Archive", &mail(Some("a@x"), "Dates", "first"), None, None).await;
    // A deleted message, one without Date, one without Message-ID.
    append(&mut s, "INBOX", &mail(Some("gone@x"), "Deleted", "bye"), Some("(\\Deleted)"), None).await;
    append(
        &mut s,
        "INBOX",
        b"From: anna@example.com\r\nMessage-ID: <nodate@x>\r\nSubject: No date\r\n\r\nwhen?\r\n",
        None,
        Some("24-Nov-2026 09:30:00 +0000"),
    )
    .await;
    append(&mut s, "INBOX", &mail(None, "No id", "anonymous but kept"), None, None).await;
    s.logout().await.ok();

    let mut store = MemoryStore::default();
    let report = sync(&account, &mut store).await;
    assert!(report.condstore, "Dovecot offers CONDSTORE");
    assert_eq!(report.folders.iter().map(|f| f.folder.as_str()).collect::<Vec<_>>(), ["INBOX", "Archive"]);
    let t = &store.timeline;
    for (i, (text, _)) in charset_cases().iter().enumerate() {
        let mid = if i < 5 { format!("cs{i}@x") } else { "raw8@x".into() };
        assert_eq!(t.by_message_id(&mid)[0].entry.subject.as_deref(), Some(text.as_str()), "{mid}");
    }
    assert_eq!(entry_count_by_mid(&store, "dup@x"), 1, "one entry for two folders");
    let th: Vec<String> = ["a@x", "b@x", "c@x"].iter().map(|m| t.by_message_id(m)[0].thread_id.clone()).collect();
    assert!(th[0] == th[1] && th[1] == th[2], "one thread: {th:?}");
    assert_eq!(entry_count_by_mid(&store, "gone@x"), 0, "\\Deleted is not in the timeline");
    let nodate = t.by_message_id("nodate@x")[0];
    assert_eq!(nodate.entry.time_source, TimeSource::InternalDate);
    assert_eq!(nodate.entry.time.to_rfc3339(), "2026-11-24T09:30:00+00:00");
    assert_eq!(t.entries().iter().filter(|e| e.entry.message_id.is_none()).count(), 1);
    assert_eq!(t.len(), 6 + 1 + 3 + 1 + 1);
    assert!(t.entries().iter().all(|e| t.raw(&e.entry.content_hash).is_some()), "raw kept by content hash");
    assert_eq!(t.client_timeline("client-anna").len(), t.len(), "every message is Anna's");
}

#[tokio::test]
async fn incremental_sync_fetches_only_new_mail_and_drops_deleted() {
    let account = new_user();
    let mut s = admin(&account).await;
    for i in 0..5 {
        append(&mut s, "INBOX", &mail(Some(&format!("m{i}@x")), "m", &format!("body {i}")), None, None).await;
    }
    let mut store = MemoryStore::default();
    let first = sync(&account, &mut store).await;
    assert_eq!(first.total(|f| f.new), 5);

    // Nothing changed: nothing fetched.
    let idle = sync(&account, &mut store).await;
    assert!(idle.folders.iter().all(|f| f.unchanged), "{idle:?}");
    assert_eq!(idle.total(|f| f.fetched_bytes), 0);

    // Two new, one flagged \Deleted, one expunged.
    append(&mut s, "INBOX", &mail(Some("n1@x"), "n", "new 1"), None, None).await;
    append(&mut s, "INBOX", &mail(Some("n2@x"), "n", "new 2"), None, None).await;
    s.select("INBOX").await.unwrap();
    s.uid_store("1", "+FLAGS (\\Deleted)").await.unwrap().try_collect::<Vec<_>>().await.unwrap();
    s.uid_store("2", "+FLAGS (\\Deleted)").await.unwrap().try_collect::<Vec<_>>().await.unwrap();
    s.uid_expunge("2").await.unwrap().try_collect::<Vec<_>>().await.unwrap();
    let inc = sync(&account, &mut store).await;
    assert_eq!(inc.total(|f| f.fetched), 2, "only the new mail is downloaded: {inc:?}");
    assert_eq!(inc.total(|f| f.new), 2);
    assert_eq!(inc.total(|f| f.removed), 2);
    let mids: BTreeSet<String> = store.timeline.entries().iter().filter_map(|e| e.entry.message_id.clone()).collect();
    assert_eq!(mids, ["m2@x", "m3@x", "m4@x", "n1@x", "n2@x"].iter().map(|s| s.to_string()).collect());
    // Undeleting brings it back.
    s.uid_store("1", "-FLAGS (\\Deleted)").await.unwrap().try_collect::<Vec<_>>().await.unwrap();
    let back = sync(&account, &mut store).await;
    assert_eq!(back.total(|f| f.new), 1);
    assert_eq!(entry_count_by_mid(&store, "m0@x"), 1);
}

#[tokio::test]
async fn a_uidvalidity_change_creates_no_duplicates() {
    let account = new_user();
    let mut s = admin(&account).await;
    create(&mut s, "Work").await;
    let msgs: Vec<Vec<u8>> = (0..8)
        .map(|i| {
            let id = format!("w{i}@x");
            mail(if i == 3 { None } else { Some(id.as_str()) }, "w", &format!("work {i}"))
        })
        .collect();
    for m in &msgs {
        append(&mut s, "Work", m, None, None).await;
    }
    let mut store = MemoryStore::default();
    sync(&account, &mut store).await;
    let before: Vec<String> = store.timeline.entries().iter().map(|e| e.id.clone()).collect();
    assert_eq!(before.len(), 8);
    // Recreate the folder: a new UIDVALIDITY, the same messages.
    s.delete("Work").await.unwrap();
    create(&mut s, "Work").await;
    for m in &msgs {
        append(&mut s, "Work", m, None, None).await;
    }
    let report = sync(&account, &mut store).await;
    let work = report.folders.iter().find(|f| f.folder == "Work").unwrap();
    assert!(work.uidvalidity_changed);
    assert_eq!(work.new, 0, "no duplicates after a UIDVALIDITY change");
    let after: Vec<String> = store.timeline.entries().iter().map(|e| e.id.clone()).collect();
    assert_eq!(before, after);
}

/// A store that fails its `n`th commit, as a sync killed midway would leave things.
struct FailingStore<'a> {
    inner: &'a mut MemoryStore,
    fail_at: usize,
    commits: usize,
}

impl SyncStore for FailingStore<'_> {
    async fn cursor(&mut self, source: &str, folder: &str) -> Result<Option<FolderCursor>, StoreError> {
        self.inner.cursor(source, folder).await
    }
    async fn known_uids(&mut self, source: &str, folder: &str, v: u32) -> Result<BTreeSet<u32>, StoreError> {
        self.inner.known_uids(source, folder, v).await
    }
    async fn commit(&mut self, batch: FolderBatch) -> Result<fleet_comms::imap::CommitCounts, StoreError> {
        self.commits += 1;
        if self.commits == self.fail_at {
            return Err(StoreError("killed".into()));
        }
        self.inner.commit(batch).await
    }
}

#[tokio::test]
async fn a_killed_sync_resumes_without_loss_or_duplicates() {
    let account = new_user();
    let mut s = admin(&account).await;
    for i in 0..10 {
        append(&mut s, "INBOX", &mail(Some(&format!("k{i}@x")), "k", &format!("kill {i}")), None, None).await;
    }
    let options = SyncOptions { chunk: 3, ..SyncOptions::default() };
    let mut store = MemoryStore::default();
    let mut failing = FailingStore { inner: &mut store, fail_at: 3, commits: 0 };
    let err = sync_account(&account, "src", &book(), &mut failing, &options).await.unwrap_err();
    assert!(matches!(err, SyncError::Store(_)));
    assert_eq!(store.timeline.len(), 6, "two chunks committed before the kill");
    let report = sync_account(&account, "src", &book(), &mut store, &options).await.unwrap();
    assert_eq!(report.total(|f| f.fetched), 4, "the resumed run fetches only what was not committed");
    assert_eq!(report.total(|f| f.duplicates), 0);
    assert_eq!(store.timeline.len(), 10);
}

#[tokio::test]
async fn hostile_mail_is_quarantined_and_the_sync_goes_on() {
    let account = new_user();
    let mut s = admin(&account).await;
    append(&mut s, "INBOX", &mail(Some("before@x"), "ok", "before"), None, None).await;
    // A 1,000-deep multipart.
    let mut deep = String::from("From: x@example.com\r\nMessage-ID: <deep@x>\r\nSubject: deep\r\n");
    for i in 0..1000 {
        deep.push_str(&format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"));
    }
    deep.push_str("Content-Type: text/plain\r\n\r\nbottom\r\n");
    append(&mut s, "INBOX", deep.as_bytes(), None, None).await;
    // A huge message (over the cap below).
    let huge = mail(Some("huge@x"), "huge", &"0123456789abcdef\r\n".repeat(200_000));
    append(&mut s, "INBOX", &huge, None, None).await;
    // Malformed MIME: missing end boundary, the boundary glued into the charset.
    let malformed = b"From: x@example.com\r\nMessage-ID: <malformed@x>\r\nSubject: broken\r\nContent-Type: multipart/mixed; boundary=\"zz\"; charset=\"utf-8boundary=yy\"\r\n\r\n--zz\r\nContent-Type: text/plain; charset=x-unknown\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64\r\n--zz\r\nContent-Type: text/html\r\n\r\n<p>unterminated";
    append(&mut s, "INBOX", malformed, None, None).await;
    // Hostile HTML: 50,000 nested divs and 6,000 links.
    let html = format!(
        "From: x@example.com\r\nMessage-ID: <html@x>\r\nSubject: html\r\nContent-Type: text/html\r\n\r\n{}{}deep text{}",
        "<a href=\"http://e.example/\">l</a>".repeat(6000),
        "<div>".repeat(50_000),
        "</div>".repeat(50_000)
    );
    append(&mut s, "INBOX", html.as_bytes(), None, None).await;
    append(&mut s, "INBOX", &mail(Some("after@x"), "ok", "after"), None, None).await;

    let options = SyncOptions {
        limits: ParseLimits { max_bytes: 1024 * 1024, ..ParseLimits::default() },
        ..SyncOptions::default()
    };
    let mut store = MemoryStore::default();
    let started = Instant::now();
    let report = sync_account(&account, "src", &book(), &mut store, &options).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    let t = &store.timeline;
    assert_eq!(entry_count_by_mid(&store, "before@x"), 1);
    assert_eq!(entry_count_by_mid(&store, "after@x"), 1, "the sync went on: {report:?}");
    let reasons: Vec<(String, ParseFailure)> = t
        .quarantine()
        .iter()
        .map(|q| (String::from_utf8_lossy(t.raw(&q.content_hash).unwrap_or_default()).into_owned(), q.failure.clone()))
        .collect();
    assert!(
        reasons.iter().any(|(raw, f)| raw.contains("<deep@x>") && matches!(f, ParseFailure::TooDeep { .. })),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|(raw, f)| raw.contains("<huge@x>") && matches!(f, ParseFailure::TooLarge { .. })));
    assert!(report.total(|f| f.fetched_bytes) < 2 * 1024 * 1024, "the huge body was not downloaded");
    // Malformed MIME and hostile HTML parse (best effort) or are quarantined, never both lost.
    for mid in ["malformed@x", "html@x"] {
        let kept = entry_count_by_mid(&store, mid) == 1 || reasons.iter().any(|(raw, _)| raw.contains(mid));
        assert!(kept, "{mid} is in the timeline or in quarantine");
    }
    // A second run does not fetch the quarantined ones again.
    let again = sync_account(&account, "src", &book(), &mut store, &options).await.unwrap();
    assert_eq!(again.total(|f| f.fetched), 0, "{again:?}");
}

#[tokio::test]
async fn a_wrong_password_is_an_auth_error_without_the_password() {
    let mut account = new_user();
    account.password = "not-the-password-s3cr3t".into();
    let mut store = MemoryStore::default();
    let err = sync_account(&account, "src", &book(), &mut store, &SyncOptions::default()).await.unwrap_err();
    assert!(matches!(err, SyncError::Auth { .. }), "{err}");
    assert!(!err.to_string().contains("s3cr3t"));
    assert!(!err.is_transient());
}

#[tokio::test]
async fn noselect_folders_are_skipped_and_folders_are_configurable() {
    let mut account = new_user();
    let mut s = admin(&account).await;
    create(&mut s, "Clients/Anna").await;
    append(&mut s, "Clients/Anna", &mail(Some("anna@x"), "a", "in a child folder"), None, None).await;
    // Make the parent \Noselect the way servers do: it exists only as a parent.
    let _ = s.delete("Clients").await;
    let names: Vec<_> = s.list(Some(""), Some("*")).await.unwrap().try_collect::<Vec<_>>().await.unwrap();
    let noselect: Vec<String> = names
        .iter()
        .filter(|n| n.attributes().iter().any(|a| matches!(a, async_imap::types::NameAttribute::NoSelect)))
        .map(|n| n.name().to_owned())
        .collect();
    append(&mut s, "INBOX", &mail(Some("inbox@x"), "i", "inbox"), None, None).await;
    let mut store = MemoryStore::default();
    let report = sync(&account, &mut store).await;
    let synced: Vec<&str> = report.folders.iter().map(|f| f.folder.as_str()).collect();
    for n in &noselect {
        assert!(!synced.contains(&n.as_str()), "{n} is \\Noselect");
    }
    assert!(report.folders.iter().all(|f| f.error.is_none()), "{report:?}");
    assert_eq!(store.timeline.len(), 2);

    account.folders = Some(vec!["INBOX".into()]);
    let mut only_inbox = MemoryStore::default();
    let report = sync(&account, &mut only_inbox).await;
    assert_eq!(report.folders.len(), 1);
    assert_eq!(only_inbox.timeline.len(), 1);
}

/// `cargo test -p fleet-comms --release --test imap -- --ignored --nocapture bench`:
/// messages per second from the local Dovecot for a 10,000-message mailbox, full and
/// incremental, and the duplicates after a forced UIDVALIDITY change.
#[tokio::test]
#[ignore = "benchmark: run by hand, prints figures"]
async fn bench_ten_thousand_messages() {
    let n: usize = std::env::var("FLEET_BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let account = new_user();
    let mut s = admin(&account).await;
    create(&mut s, "Bench").await;
    let body = "Hello, we would love to book you for our wedding next June. ".repeat(40);
    let msgs: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let parent = if i % 3 == 0 { String::new() } else { format!("In-Reply-To: <b{}@x>\r\n", i - 1) };
            format!("From: Anna <anna@example.com>\r\nTo: studio@photo.example\r\nMessage-ID: <b{i}@x>\r\n{parent}Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nSubject: Booking {i}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{i}: {body}\r\n").into_bytes()
        })
        .collect();
    let load = Instant::now();
    load_parallel(&account, "Bench", &msgs).await;
    println!("loaded {n} messages with APPEND in {:.1} s", load.elapsed().as_secs_f64());

    let mut store = MemoryStore::default();
    let mut acc = account.clone();
    acc.folders = Some(vec!["Bench".into()]);
    let t = Instant::now();
    let full = sync_account(&acc, "src", &book(), &mut store, &SyncOptions::default()).await.unwrap();
    let full_s = t.elapsed().as_secs_f64();
    println!(
        "full sync: {n} messages, {:.1} MiB in {full_s:.2} s = {:.0} msgs/s",
        full.total(|f| f.fetched_bytes) as f64 / 1048576.0,
        n as f64 / full_s
    );
    let t = Instant::now();
    let idle = sync_account(&acc, "src", &book(), &mut store, &SyncOptions::default()).await.unwrap();
    println!(
        "idle incremental sync: {:.1} ms, {} bytes fetched",
        t.elapsed().as_secs_f64() * 1000.0,
        idle.total(|f| f.fetched_bytes)
    );
    let extra: Vec<Vec<u8>> =
        (0..100).map(|i| mail(Some(&format!("extra{i}@x")), "extra", &format!("extra {i}"))).collect();
    load_parallel(&account, "Bench", &extra).await;
    let t = Instant::now();
    let inc = sync_account(&acc, "src", &book(), &mut store, &SyncOptions::default()).await.unwrap();
    let inc_s = t.elapsed().as_secs_f64();
    println!(
        "incremental sync: {} new of {} in {:.1} ms = {:.0} msgs/s",
        inc.total(|f| f.new),
        n + 100,
        inc_s * 1000.0,
        inc.total(|f| f.new) as f64 / inc_s
    );
    let before = store.timeline.len();
    s.delete("Bench").await.unwrap();
    create(&mut s, "Bench").await;
    load_parallel(&account, "Bench", &[msgs, extra].concat()).await;
    let t = Instant::now();
    let re = sync_account(&acc, "src", &book(), &mut store, &SyncOptions::default()).await.unwrap();
    println!(
        "forced UIDVALIDITY change: re-read {} messages in {:.2} s; duplicates created: {} (entries {} → {})",
        re.total(|f| f.fetched),
        t.elapsed().as_secs_f64(),
        store.timeline.len() - before,
        before,
        store.timeline.len()
    );
    assert!(re.folders[0].uidvalidity_changed);
}

async fn load_parallel(account: &ImapAccount, folder: &str, msgs: &[Vec<u8>]) {
    let lanes = 4;
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let account = account.clone();
        let folder = folder.to_owned();
        let mine: Vec<Vec<u8>> = msgs.iter().skip(lane).step_by(lanes).cloned().collect();
        tasks.push(tokio::spawn(async move {
            let mut s = admin(&account).await;
            for m in mine {
                append(&mut s, &folder, &m, None, None).await;
            }
            s.logout().await.ok();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn tls_port() -> u16 {
    std::env::var("FLEET_TEST_IMAPS_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(10993)
}

/// The test CA `scripts/dovecot.sh` made (the server certificate is for 127.0.0.1 and localhost).
fn test_ca() -> String {
    format!("{}/tls/ca.pem", dovecot_dir())
}

#[tokio::test]
async fn implicit_tls_and_starttls_sync_with_an_extra_ca_and_refuse_an_unknown_one() {
    let plain = new_user();
    let mut s = admin(&plain).await;
    append(&mut s, "INBOX", &mail(Some("tls1@x"), "Over TLS", "sealed"), None, None).await;
    s.logout().await.ok();

    // Implicit TLS on the imaps port, trusting the test CA besides Mozilla's roots.
    let mut tls = plain.clone();
    tls.port = tls_port();
    tls.tls = true;
    tls.ca_file = Some(test_ca());
    let session = fleet_comms::imap::connect(&tls, Duration::from_secs(10)).await.expect("TLS login");
    assert!(session.get_ref().is_tls());
    drop(session);
    let mut store = MemoryStore::default();
    let report = sync(&tls, &mut store).await;
    assert_eq!(report.total(|f| f.new), 1);

    // STARTTLS on the plain port: the same mailbox, nothing new.
    let mut starttls = plain.clone();
    starttls.starttls = true;
    starttls.ca_file = Some(test_ca());
    let session = fleet_comms::imap::connect(&starttls, Duration::from_secs(10)).await.expect("STARTTLS login");
    assert!(session.get_ref().is_tls(), "the connection was upgraded before LOGIN");
    drop(session);
    let report = sync_account(&starttls, "src", &book(), &mut store, &SyncOptions::default()).await.unwrap();
    assert_eq!(report.total(|f| f.new), 0);
    assert_eq!(store.timeline.len(), 1);

    // Without the test CA the certificate is unknown: no login is attempted.
    let mut untrusted = tls.clone();
    untrusted.ca_file = None;
    let err = fleet_comms::imap::connect(&untrusted, Duration::from_secs(10)).await.map(|_| ()).unwrap_err();
    assert!(matches!(&err, SyncError::Connect { reason, .. } if reason.contains("TLS")), "{err}");
    assert!(!err.to_string().contains(&plain.password));
    // A name the certificate does not cover is refused too.
    let mut wrong_name = tls.clone();
    wrong_name.host = "127.0.0.2".into();
    assert!(fleet_comms::imap::connect(&wrong_name, Duration::from_secs(10)).await.is_err());
}

/// An HS256 JWT for `user` signed with the test Dovecot's OAuth2 key (`scripts/dovecot.sh`).
fn oauth2_token(user: &str, valid_for: i64) -> String {
    use hmac::{Hmac, Mac};
    let key = std::fs::read_to_string(format!("{}/oauth2/secret", dovecot_dir())).expect("the test OAuth2 key");
    let b64u = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let now = chrono::Utc::now().timestamp();
    let header = b64u(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64u(
        serde_json::json!({"sub": user, "iat": now - 10, "nbf": now - 10, "exp": now + valid_for})
            .to_string()
            .as_bytes(),
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.trim().as_bytes()).unwrap();
    mac.update(format!("{header}.{claims}").as_bytes());
    format!("{header}.{claims}.{}", b64u(&mac.finalize().into_bytes()))
}

#[tokio::test]
async fn xoauth2_logs_in_with_a_bearer_token_and_a_bad_token_is_an_auth_error_without_it() {
    let plain = new_user();
    let mut s = admin(&plain).await;
    append(&mut s, "INBOX", &mail(Some("oauth1@x"), "Over OAuth", "token"), None, None).await;
    s.logout().await.ok();

    // Dovecot's oauth2 passdb validates the JWT locally; the password is not used.
    let mut account = plain.clone();
    account.tls = true;
    account.port = tls_port();
    account.ca_file = Some(test_ca());
    account.auth = fleet_comms::imap::AuthMethod::Xoauth2;
    account.password = oauth2_token(&plain.user, 600);
    let mut store = MemoryStore::default();
    let report = sync(&account, &mut store).await;
    assert_eq!(report.total(|f| f.new), 1);

    // An expired token and a token for someone else are refused, and never echoed.
    for bad in [oauth2_token(&plain.user, -60), oauth2_token("someone-else", 600)] {
        account.password = bad.clone();
        let err = fleet_comms::imap::connect(&account, Duration::from_secs(10)).await.map(|_| ()).unwrap_err();
        assert!(matches!(err, SyncError::Auth { .. }), "{err}");
        assert!(!err.to_string().contains(&bad), "{err}");
    }
}
