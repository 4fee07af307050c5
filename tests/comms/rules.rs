//! One table of dedup and threading cases, run against the in-memory timeline and the
//! PostgreSQL timeline (a database for the test, a tenant per case and run), so the two
//! cannot drift: both apply `fleet_comms::timeline::decide`, and this is where that
//! shows.
//!
//! Each case is a list of messages, each seen at a location of its own. It runs three
//! times: in memory one message at a time, in PostgreSQL one commit per message, and in
//! PostgreSQL with every message in one commit (the batched path decides a whole chunk
//! from what it read up front). The entry each location ends up in (id, thread,
//! collision flag, the whole document) must be the same in all three, and the
//! expectations of the case must hold: steps marked with the same letter share the
//! entry (or the thread), different letters do not.

use chrono::{DateTime, Duration, TimeZone, Utc};
use fleet_comms::entry::{Channel, Direction, NewEntry, TimelineEntry};
use fleet_comms::imap::{CommitCounts, FetchedItem, FolderBatch, FolderCursor, MemoryStore, SyncStore};
use fleet_comms::parse::{TimeSource, body_fingerprint, content_hash};
use fleet_comms::store::{self, PgStore, SourceRequest};
use fleet_comms::timeline::Location;
use fleet_tests::TestDb;

/// A message of a case, built from a few knobs.
#[derive(Clone)]
struct Msg(NewEntry);

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap()
}

/// An email with Message-ID `mid` (or none), no client, subject "Booking", body "hello".
fn mail(mid: Option<&str>) -> Msg {
    Msg(NewEntry {
        client: None,
        source: String::new(),
        channel: Channel::Email,
        direction: Direction::Inbound,
        participants: vec!["someone@example.com".into()],
        subject: Some("Booking".into()),
        snippet: String::new(),
        text: String::new(),
        time: start(),
        time_source: TimeSource::DateHeader,
        message_id: mid.map(str::to_owned),
        parents: Vec::new(),
        content_hash: String::new(),
        body_fingerprint: String::new(),
        via_list: false,
        attachments: Vec::new(),
        status: None,
    })
    .body("hello")
}

/// An SMS with provider id `sid` and delivery status `status`.
fn sms(sid: &str, status: &str) -> Msg {
    let mut m = mail(Some(&format!("sms:{sid}"))).client("anna").body("See you at 3");
    m.0.channel = Channel::Sms;
    m.0.subject = None;
    m.0.time_source = TimeSource::Provider;
    m.0.status = Some(status.into());
    // The provider's id is the content: a re-read is the same record.
    m.0.content_hash = content_hash(format!("sms {sid}").as_bytes());
    m
}

impl Msg {
    fn client(mut self, client: &str) -> Msg {
        self.0.client = Some(client.into());
        self
    }
    fn subject(mut self, subject: &str) -> Msg {
        self.0.subject = Some(subject.into());
        self.rehash()
    }
    fn body(mut self, text: &str) -> Msg {
        self.0.text = text.into();
        self.0.snippet = text.into();
        self.0.body_fingerprint = body_fingerprint(text);
        self.rehash()
    }
    /// In-Reply-To then References, newest first.
    fn parents(mut self, parents: &[&str]) -> Msg {
        self.0.parents = parents.iter().map(|p| (*p).to_owned()).collect();
        self.rehash()
    }
    /// Days after the case's start.
    fn day(mut self, days: i64) -> Msg {
        self.0.time = start() + Duration::days(days);
        self.rehash()
    }
    fn via_list(mut self) -> Msg {
        self.0.via_list = true;
        self.rehash()
    }
    /// The raw message's hash follows what the message says (SMS: its id, kept).
    fn rehash(mut self) -> Msg {
        if self.0.channel == Channel::Email {
            let e = &self.0;
            let raw = format!("{:?}|{:?}|{:?}|{}|{}", e.message_id, e.parents, e.subject, e.time, e.text);
            self.0.content_hash = content_hash(raw.as_bytes());
        }
        self
    }
}

/// One message of a case and what it should end up as.
struct Step {
    msg: Msg,
    /// Steps with the same letter are one entry.
    entry: char,
    /// Steps with the same letter are in one thread.
    thread: char,
    /// Its entry is flagged `id_collision`.
    collision: bool,
    /// Its entry's status at the end.
    status: Option<&'static str>,
}

fn step(msg: Msg, entry: char, thread: char) -> Step {
    Step { msg, entry, thread, collision: false, status: None }
}

fn collided(msg: Msg, entry: char, thread: char) -> Step {
    Step { collision: true, ..step(msg, entry, thread) }
}

struct Case {
    name: &'static str,
    steps: Vec<Step>,
}

fn cases() -> Vec<Case> {
    let venue = mail(Some("two@x")).body("See you at the venue.");
    let list = mail(Some("list-1@x")).client("anna").subject("Menu tasting").body("The tasting is on Friday.");
    let reused = mail(Some("reused@x")).subject("Quote").body("Price is 1,000.");
    let reused_again = mail(Some("reused@x")).subject("Invoice").body("Totally different text.");
    vec![
        Case {
            name: "the same message in two folders is one entry",
            steps: vec![step(venue.clone(), 'a', 'A'), step(venue, 'a', 'A')],
        },
        Case {
            name: "a list copy with a rewritten subject and a footer is one entry",
            steps: vec![
                step(list, 'a', 'A'),
                step(
                    mail(Some("list-1@x"))
                        .client("anna")
                        .subject("[couples] Menu tasting")
                        .body("The tasting is on Friday.\n--\nUnsubscribe: https://lists.example/u")
                        .via_list(),
                    'a',
                    'A',
                ),
            ],
        },
        Case {
            name: "a reused Message-ID with other content is a second entry and both are flagged",
            steps: vec![
                collided(reused.clone(), 'a', 'A'),
                collided(reused_again.clone(), 'b', 'A'),
                // Seen again in another folder: the collision entry, not a third one.
                collided(reused_again, 'b', 'A'),
                collided(reused, 'a', 'A'),
            ],
        },
        Case {
            name: "mail without a Message-ID is never dropped and one entry per content",
            steps: vec![
                step(mail(None).body("first body"), 'a', 'A'),
                step(mail(None).body("second body"), 'b', 'B'),
                step(mail(None).body("first body"), 'a', 'A'),
            ],
        },
        Case {
            name: "a thread of three whose parent arrives last",
            steps: vec![
                step(mail(Some("c@x")).parents(&["b@x", "a@x"]).body("Booked!"), 'c', 'T'),
                step(mail(Some("b@x")).parents(&["a@x"]).body("June 12."), 'b', 'T'),
                step(mail(Some("a@x")).body("Which dates are free?"), 'a', 'T'),
            ],
        },
        Case {
            name: "a message linking two threads merges them, remembered ids too",
            steps: vec![
                step(mail(Some("x@x")).parents(&["p1@x"]).body("1"), 'x', 'T'),
                step(mail(Some("y@x")).parents(&["p2@x"]).body("2"), 'y', 'T'),
                step(mail(Some("z@x")).parents(&["p2@x", "p1@x"]).body("3"), 'z', 'T'),
                // A later reply to a parent only ever referenced joins the merged thread.
                step(mail(Some("w@x")).parents(&["p1@x"]).body("4"), 'w', 'T'),
                step(mail(Some("p2@x")).body("the parent at last"), 'p', 'T'),
                step(mail(Some("q@x")).body("unrelated"), 'q', 'Q'),
            ],
        },
        Case {
            name: "a message without references threads by subject within one client and the window",
            steps: vec![
                step(mail(Some("s1@x")).client("anna").subject("Album delivery").body("When?"), 'a', 'A'),
                step(
                    mail(Some("s2@x")).client("anna").subject("RE: Album delivery").body("Any news?").day(2),
                    'b',
                    'A',
                ),
                step(mail(Some("s3@x")).client("ben").subject("Album delivery").body("Mine too?").day(2), 'c', 'C'),
                step(mail(Some("s4@x")).client("anna").subject("Album delivery").body("Old one.").day(-183), 'd', 'D'),
                // A reply is never placed by subject, only by its references.
                step(
                    mail(Some("s5@x")).client("anna").subject("Re: Album delivery").parents(&["elsewhere@x"]).day(1),
                    'e',
                    'E',
                ),
            ],
        },
        Case {
            name: "the subject fallback takes the nearest entry, replies included",
            steps: vec![
                step(mail(Some("n1@x")).client("anna").subject("Plan").body("first plan"), 'a', 'A'),
                step(
                    mail(Some("n2@x")).client("anna").subject("Re: Plan").parents(&["lost@x"]).body("reply").day(10),
                    'b',
                    'B',
                ),
                step(mail(Some("n3@x")).client("anna").subject("Plan").body("new plan").day(11), 'c', 'B'),
                step(mail(Some("n4@x")).client("anna").subject("Plan").body("early plan").day(-1), 'd', 'A'),
            ],
        },
        Case {
            name: "the subject fallback between two entries as near breaks the tie to the earlier one",
            steps: vec![
                step(mail(Some("t1@x")).client("anna").subject("Tie").body("after").day(2), 'a', 'A'),
                step(mail(Some("t2@x")).client("anna").subject("Tie").parents(&["g@x"]).body("before"), 'b', 'B'),
                step(mail(Some("t3@x")).client("anna").subject("Tie").body("between").day(1), 'c', 'B'),
            ],
        },
        Case {
            name: "an SMS read again is one entry whose status only moves forward",
            steps: vec![
                Step { status: Some("delivered"), ..step(sms("SM1", "queued"), 'a', 'A') },
                Step { status: Some("delivered"), ..step(sms("SM1", "delivered"), 'a', 'A') },
                Step { status: Some("delivered"), ..step(sms("SM1", "sent"), 'a', 'A') },
                Step { status: Some("sent"), ..step(sms("SM2", "sent"), 'b', 'B') },
            ],
        },
    ]
}

/// How a case is fed to a store.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Feed {
    /// One commit per message.
    OneByOne,
    /// Every message in one commit.
    OneCommit,
}

fn location(source: &str, i: usize) -> Location {
    Location { source: source.to_owned(), folder: "INBOX".into(), uidvalidity: 1, uid: i as u32 + 1 }
}

/// Feeds `case` to `store`; returns the total counts.
async fn feed<S: SyncStore>(store: &mut S, source: &str, case: &Case, how: Feed) -> CommitCounts {
    let items: Vec<FetchedItem> = case
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut entry = s.msg.0.clone();
            entry.source = source.to_owned();
            FetchedItem {
                location: location(source, i),
                outcome: Ok(entry),
                raw: s.msg.0.content_hash.clone().into_bytes(),
            }
        })
        .collect();
    let batches: Vec<Vec<FetchedItem>> = match how {
        Feed::OneByOne => items.into_iter().map(|i| vec![i]).collect(),
        Feed::OneCommit => vec![items],
    };
    let mut total = CommitCounts::default();
    for items in batches {
        let last_uid = items.iter().map(|i| i.location.uid).max().unwrap_or(0);
        let cursor = FolderCursor { uidvalidity: 1, uidnext: last_uid + 1, last_uid, highestmodseq: None };
        let batch = FolderBatch {
            source: source.to_owned(),
            folder: "INBOX".into(),
            cursor,
            items,
            removed: Vec::new(),
            drop_stale_validity: false,
        };
        let counts = store.commit(batch).await.unwrap_or_else(|e| panic!("{}: commit: {e}", case.name));
        total.new += counts.new;
        total.duplicates += counts.duplicates;
    }
    total
}

/// True when `a` and `b` relate the steps the same way (same letter ⇔ same value).
fn same_partition<T: PartialEq>(letters: &[char], values: &[T]) -> bool {
    (0..letters.len()).all(|i| (0..letters.len()).all(|j| (letters[i] == letters[j]) == (values[i] == values[j])))
}

fn check(case: &Case, run: &str, got: &[TimelineEntry]) {
    let entries: Vec<char> = case.steps.iter().map(|s| s.entry).collect();
    let threads: Vec<char> = case.steps.iter().map(|s| s.thread).collect();
    let ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
    let thread_ids: Vec<&str> = got.iter().map(|e| e.thread_id.as_str()).collect();
    assert!(same_partition(&entries, &ids), "{} ({run}): entries {entries:?}, got {ids:?}", case.name);
    assert!(same_partition(&threads, &thread_ids), "{} ({run}): threads {threads:?}, got {thread_ids:?}", case.name);
    for (i, (s, e)) in case.steps.iter().zip(got).enumerate() {
        assert_eq!(e.id_collision, s.collision, "{} ({run}): step {i} id_collision", case.name);
        if s.status.is_some() {
            assert_eq!(e.entry.status.as_deref(), s.status, "{} ({run}): step {i} status", case.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_table_of_dedup_and_threading_cases_holds_in_memory_and_in_postgres_alike() {
    let db = TestDb::new().await;
    for (n, case) in cases().iter().enumerate() {
        // In memory, one message at a time: the reference the other runs are held to.
        let mut memory = MemoryStore::default();
        let source = "src";
        let counts = feed(&mut memory, source, case, Feed::OneByOne).await;
        let reference: Vec<TimelineEntry> = (0..case.steps.len())
            .map(|i| {
                let id = memory.timeline.entry_at(&location(source, i)).expect("every step has an entry");
                memory.timeline.get(id).cloned().expect("the entry exists")
            })
            .collect();
        check(case, "memory", &reference);
        let distinct: std::collections::HashSet<char> = case.steps.iter().map(|s| s.entry).collect();
        assert_eq!(counts.new, distinct.len(), "{}: new entries in memory", case.name);

        for how in [Feed::OneByOne, Feed::OneCommit] {
            // A tenant and a source of its own per case and run: nothing is shared.
            let tenant = format!("t{n}-{how:?}").to_lowercase();
            let req = SourceRequest { kind: "in_app".into(), ..Default::default() };
            let source = store::create(&db.pool, None, &tenant, req).await.expect("register a source").id;
            let mut pg = PgStore::new(db.pool.clone(), tenant.as_str());
            let pg_counts = feed(&mut pg, &source, case, how).await;
            assert_eq!(
                (pg_counts.new, pg_counts.duplicates),
                (counts.new, counts.duplicates),
                "{} ({how:?})",
                case.name
            );
            let mut got = Vec::new();
            for i in 0..case.steps.len() {
                let e = pg.entry_at(&location(&source, i)).await.expect("read the entry");
                got.push(e.unwrap_or_else(|| panic!("{} ({how:?}): step {i} has no entry", case.name)));
            }
            check(case, &format!("postgres {how:?}"), &got);
            // The very same entries, threads and documents as in memory (the source aside).
            for (i, (mut p, m)) in got.into_iter().zip(&reference).enumerate() {
                p.entry.source = m.entry.source.clone();
                assert_eq!(&p, m, "{} ({how:?}): step {i} differs from the in-memory timeline", case.name);
            }
        }
    }
    db.drop_db().await;
}
