//! Unit tests of parsing, normalisation, dedup and threading, on messages built here.

use crate::contacts::ContactBook;
use crate::entry::{Direction, NewEntry, entry_from_mail};
use crate::parse::{ParseFailure, ParseLimits, ParsedMail, TimeSource, parse_mail};
use crate::timeline::{Ingested, Location, Timeline};
use base64::Engine as _;
use chrono::{TimeZone, Utc};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An encoded word of `text` in `charset` (B encoding).
fn encoded_word(text: &str, charset: &'static encoding_rs::Encoding, label: &str) -> String {
    let (bytes, _, unmappable) = charset.encode(text);
    assert!(!unmappable, "{text} fits {label}");
    format!("=?{label}?B?{}?=", b64(&bytes))
}

/// A simple text message.
fn simple(message_id: Option<&str>, subject: &str, body: &str) -> Vec<u8> {
    let mut m = String::from("From: Anna Smith <anna@example.com>\r\nTo: Studio <studio@photo.example>\r\n");
    if let Some(id) = message_id {
        m.push_str(&format!("Message-ID: <{id}>\r\n"));
    }
    m.push_str(&format!(
        "Date: Tue, 01 Dec 2026 10:00:00 +0100\r\nSubject: {subject}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ));
    m.into_bytes()
}

fn reply(message_id: &str, in_reply_to: &str, references: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: studio@photo.example\r\nTo: anna@example.com\r\nMessage-ID: <{message_id}>\r\nIn-Reply-To: <{in_reply_to}>\r\nReferences: {references}\r\nDate: Tue, 01 Dec 2026 12:00:00 +0000\r\nSubject: {subject}\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

fn parse(raw: &[u8]) -> ParsedMail {
    parse_mail(raw, &ParseLimits::default(), None).expect("parses")
}

fn book() -> ContactBook {
    let mut b = ContactBook::new("GB");
    b.add_client("client-anna", &["anna@example.com"], &["07911 123456"]);
    b.add_client("client-ben", &["ben@example.org"], &[]);
    b.add_own(&["studio@photo.example"], &["+447700900999"]);
    b
}

fn entry(raw: &[u8]) -> NewEntry {
    entry_from_mail(&parse(raw), "src-1", &book())
}

fn at(folder: &str, uid: u32) -> Location {
    Location { source: "src-1".into(), folder: folder.into(), uidvalidity: 1, uid }
}

// ---- parsing ----

#[test]
fn encoded_words_in_every_charset() {
    let cases: [(&str, &'static encoding_rs::Encoding, &str); 5] = [
        ("Café au lait — déjà vu", encoding_rs::UTF_8, "UTF-8"),
        ("Café crème à Genève", encoding_rs::WINDOWS_1252, "ISO-8859-1"),
        ("“Quoted” price: 50€", encoding_rs::WINDOWS_1252, "windows-1252"),
        ("結婚式の写真について", encoding_rs::ISO_2022_JP, "ISO-2022-JP"),
        ("婚礼摄影报价单", encoding_rs::GB18030, "GB18030"),
    ];
    for (text, enc, label) in cases {
        let raw = simple(Some("cs@x"), &encoded_word(text, enc, label), "body");
        assert_eq!(parse(&raw).subject.as_deref(), Some(text), "{label}");
    }
    // Q encoding, ISO-8859-1, split over two words.
    let raw = simple(Some("q@x"), "=?ISO-8859-1?Q?Caf=E9_cr=E8me?= =?ISO-8859-1?Q?_=E0_midi?=", "body");
    assert_eq!(parse(&raw).subject.as_deref(), Some("Café crème à midi"));
}

#[test]
fn bodies_in_legacy_charsets_are_decoded() {
    let (gb, _, _) = encoding_rs::GB18030.encode("您好，婚礼在六月。");
    let mut raw = b"From: a@example.com\r\nSubject: gb\r\nContent-Type: text/plain; charset=GB18030\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
    raw.extend_from_slice(b64(&gb).as_bytes());
    assert_eq!(parse(&raw).text, "您好，婚礼在六月。");

    let (jp, _, _) = encoding_rs::ISO_2022_JP.encode("写真の納品日");
    let mut raw = b"From: a@example.com\r\nSubject: jp\r\nContent-Type: text/plain; charset=ISO-2022-JP\r\nContent-Transfer-Encoding: 7bit\r\n\r\n".to_vec();
    raw.extend_from_slice(&jp);
    assert_eq!(parse(&raw).text, "写真の納品日");
}

#[test]
fn raw_8bit_headers_fall_back_to_the_charset_or_windows_1252() {
    let mut raw = b"From: a@example.com\r\nSubject: R\xe9servation confirm\xe9e \x96 d\xe9tails\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\nbody\r\n".to_vec();
    assert_eq!(parse(&raw).subject.as_deref(), Some("Réservation confirmée – détails"));
    // With a declared charset, that one is used.
    raw = b"From: a@example.com\r\nSubject: \xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n".to_vec();
    assert_eq!(parse(&raw).subject.as_deref(), Some("Привет"));
    let (koi, _, _) = encoding_rs::KOI8_R.encode("Привет");
    let mut raw = b"From: a@example.com\r\nSubject: ".to_vec();
    raw.extend_from_slice(&koi);
    raw.extend_from_slice(b"\r\nContent-Type: text/plain; charset=koi8-r\r\n\r\nbody\r\n");
    assert_eq!(parse(&raw).subject.as_deref(), Some("Привет"));
}

#[test]
fn multipart_with_quoted_printable_and_base64() {
    let html = b64("<p>Hello <b>HTML</b></p>".as_bytes());
    let raw = format!(
        "From: a@example.com\r\nSubject: mp\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=ISO-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nCaf=E9 at ten, a very long line that is soft=\r\n broken.\r\n--b1\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{html}\r\n--b1--\r\n"
    );
    let p = parse(raw.as_bytes());
    assert_eq!(p.text, "Café at ten, a very long line that is soft broken.");
    assert!(p.attachments.is_empty());
}

#[test]
fn html_only_mail_becomes_text() {
    let raw = b"From: a@example.com\r\nSubject: html\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><head><style>p{color:red}</style></head><body><p>Your <i>album</i> is ready.</p><script>alert(1)</script></body></html>\r\n";
    let p = parse(raw);
    assert!(p.text.contains("album") && p.text.contains("is ready."), "{}", p.text);
    assert!(!p.text.contains("alert") && !p.text.contains("color:red"), "{}", p.text);
}

#[test]
fn attachments_are_listed_not_kept() {
    let pdf = b64(&[0x25u8; 3000]);
    let raw = format!(
        "From: a@example.com\r\nSubject: att\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nSee the contract.\r\n--XX\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename*=UTF-8''Contrat%20sign%C3%A9.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{pdf}\r\n--XX--\r\n"
    );
    let p = parse(raw.as_bytes());
    assert_eq!(p.text, "See the contract.");
    assert_eq!(p.attachments.len(), 1);
    let a = &p.attachments[0];
    assert_eq!(a.name.as_deref(), Some("Contrat signé.pdf"));
    assert_eq!(a.content_type, "application/pdf");
    assert_eq!(a.size, 3000);
    assert!(!p.text.contains("%%%"));
}

#[test]
fn missing_or_bad_dates_fall_back_to_internaldate() {
    let internal = Utc.with_ymd_and_hms(2026, 11, 30, 8, 0, 0).unwrap();
    let limits = ParseLimits::default();
    let no_date = b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n";
    let p = parse_mail(no_date, &limits, Some(internal)).unwrap();
    assert_eq!((p.time, p.time_source), (internal, TimeSource::InternalDate));
    let bad = b"From: a@example.com\r\nDate: the day after tomorrow\r\nSubject: x\r\n\r\nbody\r\n";
    let p = parse_mail(bad, &limits, Some(internal)).unwrap();
    assert_eq!((p.time, p.time_source), (internal, TimeSource::InternalDate));
    let future = b"From: a@example.com\r\nDate: Fri, 01 Jan 2100 00:00:00 +0000\r\nSubject: x\r\n\r\nbody\r\n";
    assert_eq!(parse_mail(future, &limits, Some(internal)).unwrap().time_source, TimeSource::InternalDate);
    let good = b"From: a@example.com\r\nDate: Tue, 01 Dec 2026 10:00:00 +0100\r\nSubject: x\r\n\r\nbody\r\n";
    let p = parse_mail(good, &limits, Some(internal)).unwrap();
    assert_eq!(p.time, Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap());
    assert_eq!(p.time_source, TimeSource::DateHeader);
}

#[test]
fn size_and_depth_caps_quarantine() {
    let limits = ParseLimits { max_bytes: 10_000, ..ParseLimits::default() };
    let huge = simple(Some("h@x"), "huge", &"x".repeat(20_000));
    assert!(matches!(parse_mail(&huge, &limits, None), Err(ParseFailure::TooLarge { .. })));

    let mut deep = String::from("From: a@example.com\r\nSubject: deep\r\n");
    for i in 0..1000 {
        deep.push_str(&format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"));
    }
    deep.push_str("Content-Type: text/plain\r\n\r\nbottom\r\n");
    assert!(matches!(parse_mail(deep.as_bytes(), &ParseLimits::default(), None), Err(ParseFailure::TooDeep { .. })));
}

#[test]
fn malformed_mime_never_panics() {
    let cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\r\n\r\n".to_vec(),
        b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=\r\n\r\n--\r\n--\r\n".to_vec(),
        b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=\"x\"; charset=\"utf-8boundary=y\"\r\n\r\n--x\r\nno end".to_vec(),
        b"Subject: =?utf-8?B?broken\r\nFrom: =?x-unknown?Q?a=?= <a@example.com>\r\n\r\n\xff\xfe\x00".to_vec(),
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!!not base64@@@".to_vec(),
        [b"Subject: x\r\n".as_slice(), &[0xffu8; 5000]].concat(),
    ];
    for raw in cases {
        let _ = parse_mail(&raw, &ParseLimits::default(), None);
    }
}

#[test]
fn message_ids_are_normalised() {
    let p = parse(&simple(Some("  Abc.123@Mail.Example "), "x", "y"));
    assert_eq!(p.message_id.as_deref(), Some("Abc.123@Mail.Example"));
    let long = "a".repeat(1200) + "@x";
    let raw = format!("From: a@example.com\r\nMessage-ID: <{long}>\r\nSubject: x\r\n\r\nb\r\n");
    assert_eq!(parse(raw.as_bytes()).message_id, None);
}

// ---- normalisation ----

#[test]
fn entries_match_clients_and_tell_direction() {
    let inbound = entry(&simple(Some("i@x"), "Hi", "hello"));
    assert_eq!(inbound.client.as_deref(), Some("client-anna"));
    assert_eq!(inbound.direction, Direction::Inbound);
    assert_eq!(inbound.participants, vec!["anna@example.com", "studio@photo.example"]);
    assert_eq!(inbound.snippet, "hello");
    let outbound = entry(&reply("o@x", "i@x", "<i@x>", "Re: Hi", "answer"));
    assert_eq!(outbound.client.as_deref(), Some("client-anna"));
    assert_eq!(outbound.direction, Direction::Outbound);
    let stranger = entry(b"From: x@nowhere.example\r\nTo: studio@photo.example\r\nSubject: s\r\n\r\nb\r\n");
    assert_eq!(stranger.client, None);
}

// ---- dedup ----

#[test]
fn the_same_message_in_two_folders_is_one_entry() {
    let mut t = Timeline::new();
    let raw = simple(Some("two@x"), "Venue", "See you at the venue.");
    let a = t.ingest(entry(&raw), at("INBOX", 1));
    let b = t.ingest(entry(&raw), at("Archive", 7));
    assert!(matches!(a, Ingested::New(_)));
    assert_eq!(
        b,
        Ingested::Duplicate(match a {
            Ingested::New(id) => id,
            _ => unreachable!(),
        })
    );
    assert_eq!(t.len(), 1);
}

#[test]
fn a_self_cc_of_a_sent_mail_is_one_entry() {
    let sent = b"From: studio@photo.example\r\nTo: anna@example.com\r\nCc: studio@photo.example\r\nMessage-ID: <sent-1@photo.example>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\nSubject: Contract\r\n\r\nHere is the contract.\r\n".to_vec();
    let received = [
        b"Received: from mx.photo.example by imap.photo.example; Tue, 01 Dec 2026 10:00:02 +0000\r\nReturn-Path: <studio@photo.example>\r\n".as_slice(),
        &sent,
    ]
    .concat();
    let mut t = Timeline::new();
    t.ingest(entry(&sent), at("Sent", 1));
    t.ingest(entry(&received), at("INBOX", 1));
    assert_eq!(t.len(), 1);
    assert_eq!(t.entries()[0].entry.direction, Direction::Outbound);
}

#[test]
fn a_list_copy_with_a_rewritten_subject_is_one_entry() {
    let original = simple(Some("list-1@x"), "Menu tasting", "The tasting is on Friday.");
    let list_copy = b"From: Anna Smith <anna@example.com>\r\nTo: couples@lists.example\r\nMessage-ID: <list-1@x>\r\nList-Id: <couples.lists.example>\r\nDate: Tue, 01 Dec 2026 10:00:05 +0100\r\nSubject: [couples] Menu tasting\r\n\r\nThe tasting is on Friday.\r\n--\r\nYou are subscribed to couples. Unsubscribe: https://lists.example/u\r\n".to_vec();
    let mut t = Timeline::new();
    t.ingest(entry(&original), at("INBOX", 1));
    assert!(matches!(t.ingest(entry(&list_copy), at("Lists", 1)), Ingested::Duplicate(_)));
    assert_eq!(t.len(), 1);
}

#[test]
fn messages_without_message_id_are_never_dropped() {
    let mut t = Timeline::new();
    let a = simple(None, "No id", "first body");
    let b = simple(None, "No id", "second body");
    t.ingest(entry(&a), at("INBOX", 1));
    t.ingest(entry(&b), at("INBOX", 2));
    assert_eq!(t.len(), 2);
    // The very same bytes in another folder are still one message.
    assert!(matches!(t.ingest(entry(&a), at("Archive", 1)), Ingested::Duplicate(_)));
    assert_eq!(t.len(), 2);
}

#[test]
fn a_reused_message_id_with_different_content_is_not_hidden() {
    let mut t = Timeline::new();
    t.ingest(entry(&simple(Some("reused@x"), "Quote", "Price is 1,000.")), at("INBOX", 1));
    t.ingest(entry(&simple(Some("reused@x"), "Invoice", "Totally different text.")), at("INBOX", 2));
    assert_eq!(t.len(), 2);
    let both = t.by_message_id("reused@x");
    assert_eq!(both.len(), 2);
    assert!(both.iter().all(|e| e.id_collision));
}

// ---- threading ----

#[test]
fn a_thread_of_three_whose_parent_arrives_last() {
    let mut t = Timeline::new();
    let a = simple(Some("a@x"), "Dates", "Which dates are free?");
    let b = reply("b@x", "a@x", "<a@x>", "Re: Dates", "June 12.");
    let c = reply("c@x", "b@x", "<a@x> <b@x>", "Re: Re: Dates", "Booked!");
    let idc = t.ingest(entry(&c), at("INBOX", 3));
    let idb = t.ingest(entry(&b), at("INBOX", 2));
    let ida = t.ingest(entry(&a), at("INBOX", 1));
    let thread = |i: &Ingested| match i {
        Ingested::New(id) => t.get(id).unwrap().thread_id.clone(),
        Ingested::Duplicate(_) => panic!("not a duplicate"),
    };
    assert_eq!(thread(&ida), thread(&idb));
    assert_eq!(thread(&ida), thread(&idc));
}

#[test]
fn a_message_linking_two_threads_merges_them() {
    let mut t = Timeline::new();
    let x = t.ingest(entry(&reply("x@x", "p1@x", "<p1@x>", "Re: one", "1")), at("INBOX", 1));
    let y = t.ingest(entry(&reply("y@x", "p2@x", "<p2@x>", "Re: two", "2")), at("INBOX", 2));
    let id = |i: &Ingested| match i {
        Ingested::New(id) | Ingested::Duplicate(id) => id.clone(),
    };
    assert_ne!(t.get(&id(&x)).unwrap().thread_id, t.get(&id(&y)).unwrap().thread_id);
    t.ingest(entry(&reply("z@x", "p2@x", "<p1@x> <p2@x>", "Re: both", "3")), at("INBOX", 3));
    assert_eq!(t.get(&id(&x)).unwrap().thread_id, t.get(&id(&y)).unwrap().thread_id);
}

#[test]
fn subject_fallback_only_within_one_client_and_window() {
    let mut t = Timeline::new();
    let first = simple(Some("s1@x"), "Album delivery", "When is the album ready?");
    // An Outlook-style reply without References, from the same client.
    let again = b"From: anna@example.com\r\nTo: studio@photo.example\r\nMessage-ID: <s2@x>\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\nSubject: RE: Album delivery\r\n\r\nAny news?\r\n".to_vec();
    // Another client with the same subject.
    let other = b"From: ben@example.org\r\nTo: studio@photo.example\r\nMessage-ID: <s3@x>\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\nSubject: Album delivery\r\n\r\nMine too?\r\n".to_vec();
    // The same client, months later.
    let later = b"From: anna@example.com\r\nTo: studio@photo.example\r\nMessage-ID: <s4@x>\r\nDate: Mon, 01 Jun 2026 10:00:00 +0000\r\nSubject: Album delivery\r\n\r\nOld one.\r\n".to_vec();
    t.ingest(entry(&first), at("INBOX", 1));
    t.ingest(entry(&again), at("INBOX", 2));
    t.ingest(entry(&other), at("INBOX", 3));
    t.ingest(entry(&later), at("INBOX", 4));
    let th = |mid: &str| t.by_message_id(mid)[0].thread_id.clone();
    assert_eq!(th("s1@x"), th("s2@x"));
    assert_ne!(th("s1@x"), th("s3@x"));
    assert_ne!(th("s1@x"), th("s4@x"));
}

// ---- locations ----

#[test]
fn an_entry_leaves_when_its_last_copy_goes() {
    let mut t = Timeline::new();
    let raw = simple(Some("loc@x"), "x", "y");
    t.ingest(entry(&raw), at("INBOX", 1));
    t.ingest(entry(&raw), at("Archive", 1));
    assert_eq!(t.remove_location(&at("INBOX", 1)), None);
    assert_eq!(t.len(), 1);
    assert!(t.remove_location(&at("Archive", 1)).is_some());
    assert!(t.is_empty());
}

#[test]
fn a_new_uidvalidity_rekeys_without_duplicates() {
    let mut t = Timeline::new();
    let msgs: Vec<Vec<u8>> = (0..5).map(|i| simple(Some(&format!("v{i}@x")), "v", &format!("body {i}"))).collect();
    let nomid = simple(None, "no id", "kept");
    for (i, m) in msgs.iter().chain([&nomid]).enumerate() {
        t.ingest(entry(m), at("INBOX", i as u32 + 1));
    }
    let before: Vec<String> = t.entries().iter().map(|e| e.id.clone()).collect();
    for (i, m) in msgs.iter().chain([&nomid]).enumerate() {
        let loc = Location { uidvalidity: 2, uid: 100 + i as u32, ..at("INBOX", 0) };
        assert!(matches!(t.ingest(entry(m), loc), Ingested::Duplicate(_)));
    }
    assert_eq!(t.drop_stale_validity("src-1", "INBOX", 2), 0);
    let after: Vec<String> = t.entries().iter().map(|e| e.id.clone()).collect();
    assert_eq!(before, after);
    assert_eq!(t.uids("src-1", "INBOX", 1), Vec::<u32>::new());
    assert_eq!(t.uids("src-1", "INBOX", 2).len(), 6);
}
