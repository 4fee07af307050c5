//! RFC 6578 §3.6 truncation: Radicale never truncates a sync report, so this one case runs
//! against a small local server that answers like servers that do (iCloud pages ~230 items and
//! marks the request URI 507).

use fleet_calendar::caldav::{CalDavClient, ClientOptions, SyncOutcome};
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
