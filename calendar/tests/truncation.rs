//! RFC 6578 §3.6 truncation: Radicale never truncates a sync report, so this one case runs
//! against a small local server that answers like servers that do (iCloud pages ~230 items and
//! marks the request URI 507). The same kind of server checks what a first pull asks for:
//! the bodies inside the sync report, and a `calendar-multiget` only for those left out.

use fleet_calendar::caldav::{CalDavClient, ClientOptions, CollectionState, PullMode, SyncOutcome, pull_changes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn page(items: &[(&str, &str)], removed: &[&str], token: &str, truncated: bool) -> String {
    let mut xml = String::from(r#"<?xml version="1.0"?><d:multistatus xmlns:d="DAV:">"#);
    for (href, etag) in items {
        xml.push_str(&format!(
            "<d:response><d:href>{href}</d:href><d:propstat><d:prop><d:getetag>{etag}</d:getetag></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>"
        ));
    }
    for href in removed {
        xml.push_str(&format!(
            "<d:response><d:href>{href}</d:href><d:status>HTTP/1.1 404 Not Found</d:status></d:response>"
        ));
    }
    if truncated {
        xml.push_str(
            "<d:response><d:href>/cal/</d:href><d:status>HTTP/1.1 507 Insufficient Storage</d:status></d:response>",
        );
    }
    xml.push_str(&format!("<d:sync-token>{token}</d:sync-token></d:multistatus>"));
    xml
}

#[tokio::test]
async fn truncated_sync_reports_are_followed_to_the_end() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut tokens_seen = Vec::new();
        for _ in 0..3 {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Read headers and the (small) body.
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            let text = String::from_utf8_lossy(&request).to_string();
            let token = text
                .split("<d:sync-token>")
                .nth(1)
                .and_then(|t| t.split("</d:sync-token>").next())
                .unwrap_or("")
                .to_owned();
            tokens_seen.push(token.clone());
            let body = match token.as_str() {
                "" => page(&[("/cal/1.ics", "\"a\""), ("/cal/2.ics", "\"a\"")], &[], "t1", true),
                "t1" => page(&[("/cal/2.ics", "\"b\""), ("/cal/3.ics", "\"a\"")], &["/cal/old.ics"], "t2", true),
                _ => page(&[("/cal/4.ics", "\"a\"")], &[], "t3", false),
            };
            let response = format!(
                "HTTP/1.1 207 Multi-Status\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(response.as_bytes()).await.unwrap();
        }
        tokens_seen
    });
    let client =
        CalDavClient::new(&format!("http://127.0.0.1:{port}/cal/"), None, None, ClientOptions::default()).unwrap();
    let outcome = client.sync_collection(None).await.unwrap();
    let SyncOutcome::Changes { changed, removed, token, pages } = outcome else { panic!("{outcome:?}") };
    assert_eq!(pages, 3);
    assert_eq!(token, "t3");
    let hrefs: Vec<(&str, Option<&str>)> = changed.iter().map(|c| (c.href.as_str(), c.etag.as_deref())).collect();
    assert_eq!(
        hrefs,
        [
            ("/cal/1.ics", Some("\"a\"")),
            ("/cal/2.ics", Some("\"b\"")),
            ("/cal/3.ics", Some("\"a\"")),
            ("/cal/4.ics", Some("\"a\""))
        ]
    );
    assert_eq!(removed, ["/cal/old.ics"]);
    assert_eq!(server.await.unwrap(), ["", "t1", "t2"]);
}

/// Reads one HTTP request (headers and body) from `socket`.
async fn read_request(socket: &mut tokio::net::TcpStream) -> String {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await.unwrap();
        request.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&request);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if request.len() >= end + 4 + length || n == 0 {
                return String::from_utf8_lossy(&request).into_owned();
            }
        }
    }
}

async fn answer(socket: &mut tokio::net::TcpStream, body: &str) {
    let response = format!(
        "HTTP/1.1 207 Multi-Status\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(response.as_bytes()).await.unwrap();
}

fn ics(uid: &str) -> String {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:{uid}\r\nDTSTART:20270101T100000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
}

fn data_response(href: &str, uid: &str) -> String {
    format!(
        "<d:response><d:href>{href}</d:href><d:propstat><d:prop><d:getetag>\"e\"</d:getetag><c:calendar-data>{}</c:calendar-data></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>",
        ics(uid)
    )
}

/// A first pull asks for the bodies inside the sync report: a server that sends them needs
/// one request; one that leaves them out gets a `calendar-multiget` for the missing ones.
#[tokio::test]
async fn a_first_pull_takes_bodies_from_the_sync_report_and_fetches_the_rest() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut requests = Vec::new();
        for _ in 0..2 {
            let (mut socket, _) = listener.accept().await.unwrap();
            let request = read_request(&mut socket).await;
            let body = if request.contains("sync-collection") {
                // 1.ics with its body, 2.ics without (as a server that ignores the property).
                format!(
                    r#"<?xml version="1.0"?><d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">{}<d:response><d:href>/cal/2.ics</d:href><d:propstat><d:prop><d:getetag>"e"</d:getetag></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat><d:propstat><d:prop><c:calendar-data/></d:prop><d:status>HTTP/1.1 404 Not Found</d:status></d:propstat></d:response><d:sync-token>t1</d:sync-token></d:multistatus>"#,
                    data_response("/cal/1.ics", "one")
                )
            } else {
                format!(
                    r#"<?xml version="1.0"?><d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">{}</d:multistatus>"#,
                    data_response("/cal/2.ics", "two")
                )
            };
            requests.push(request);
            answer(&mut socket, &body).await;
        }
        requests
    });
    let client =
        CalDavClient::new(&format!("http://127.0.0.1:{port}/cal/"), None, None, ClientOptions::default()).unwrap();
    let pull = pull_changes(&client, &CollectionState::default()).await.unwrap();
    assert_eq!(pull.mode, PullMode::Initial);
    let got: Vec<(&str, bool)> =
        pull.changed.iter().map(|o| (o.href.as_str(), String::from_utf8_lossy(&o.body).contains("UID:"))).collect();
    assert_eq!(got, [("/cal/1.ics", true), ("/cal/2.ics", true)]);
    assert!(String::from_utf8_lossy(&pull.changed[1].body).contains("UID:two"));
    assert_eq!(pull.state.token.as_deref(), Some("t1"));
    let requests = server.await.unwrap();
    assert!(requests[0].contains("<c:calendar-data/>"), "the sync report asks for the bodies: {}", requests[0]);
    assert!(requests[1].contains("calendar-multiget") && requests[1].contains("/cal/2.ics"));
    assert!(!requests[1].contains("/cal/1.ics"), "a body already sent is not fetched again: {}", requests[1]);
}
