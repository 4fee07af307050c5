//! URLs as shown to anyone but the tenant that gave them, at the moment it gave them:
//! logs, error strings, attempt rows, job error histories, listings and the dashboard.
//!
//! The user information and the query string are where a URL carries credentials
//! (`https://user:pass@host/`, `?token=...`, `?sig=...`), so both are replaced by
//! `***`, as is a fragment; scheme, host, port and path are kept so an operator can
//! still tell endpoints apart:
//!
//! `https://user:pass@hooks.example.com/x?token=abc#frag` → `https://***@hooks.example.com/x?***#***`
//!
//! Text-based, so it works the same on URLs that do not parse (which are the ones most
//! likely to end up in an error message).

/// `url` with its user information, query string and fragment replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    let rest = if scheme.is_empty() {
        rest
    } else {
        let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        tail
    };
    let query = rest.find('?');
    let fragment = rest.find('#');
    let path_end = [query, fragment].into_iter().flatten().min().unwrap_or(rest.len());
    out.push_str(&rest[..path_end]);
    if query.is_some_and(|q| fragment.is_none_or(|f| q < f)) {
        out.push_str("?***");
    }
    if fragment.is_some() {
        out.push_str("#***");
    }
    out
}

/// `text` with every `http://` or `https://` URL in it redacted by [`redact_url`]. A URL
/// ends at whitespace or at a character that cannot be part of one unescaped (`"`, `'`,
/// `<`, `>`, `` ` ``, or a closing `)`).
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let start = match (find_ci(rest, "http://"), find_ci(rest, "https://")) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => break,
        };
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | ')'))
            .unwrap_or(tail.len());
        out.push_str(&redact_url(&tail[..end]));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    haystack.as_bytes().windows(needle.len()).position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_query_and_fragment_are_hidden() {
        assert_eq!(
            redact_url("https://user:pass@hooks.example.com/x?token=abc"),
            "https://***@hooks.example.com/x?***"
        );
        assert_eq!(
            redact_url("https://hooks.example.com:8443/a/b?sig=1#frag"),
            "https://hooks.example.com:8443/a/b?***#***"
        );
        assert_eq!(redact_url("http://h.example/p#only"), "http://h.example/p#***");
        assert_eq!(redact_url("http://h.example/p#f?not-a-query"), "http://h.example/p#***");
        assert_eq!(redact_url("https://h.example?x=1"), "https://h.example?***");
        assert_eq!(redact_url("https://a@b@h.example/"), "https://***@h.example/");
        // Nothing to hide: unchanged.
        assert_eq!(redact_url("https://hooks.example.com/x"), "https://hooks.example.com/x");
        assert_eq!(redact_url("http://[::1]:8080/p"), "http://[::1]:8080/p");
        // Not a URL at all: the query is still hidden.
        assert_eq!(redact_url("/path?token=abc"), "/path?***");
        // An '@' in the path is not user information.
        assert_eq!(redact_url("https://h.example/@me?k=v"), "https://h.example/@me?***");
    }

    #[test]
    fn urls_inside_text_are_redacted() {
        let e = "error sending request for url (https://u:p@h.example/x?token=abc): connection refused";
        assert_eq!(
            redact_urls_in(e),
            "error sending request for url (https://***@h.example/x?***): connection refused"
        );
        assert_eq!(
            redact_urls_in("GET HTTP://h/a?k=1 then \"https://h/b?s=2\""),
            "GET HTTP://h/a?*** then \"https://h/b?***\""
        );
        assert_eq!(redact_urls_in("no url here ?token=x"), "no url here ?token=x");
        assert_eq!(redact_urls_in("é https://h/é?é=1 é"), "é https://h/é?*** é");
    }
}
