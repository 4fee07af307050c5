//! Parsing one raw email into what the timeline needs, under limits.
//!
//! `mail-parser` does the MIME work (multipart, encoded words in every charset with
//! `full_encoding`, quoted-printable, base64). Around it this module adds what a
//! mailbox full of real mail needs: a size cap and a nesting cap checked before the
//! parser sees the bytes, panic isolation (the parser still panics on some inputs), a
//! fallback for raw 8-bit headers (decoded with the message's charset or
//! windows-1252, as WHATWG does, instead of replacement characters), HTML-only mail
//! turned into text, body parts the parser could not delimit (no closing boundary)
//! recovered as text rather than listed as attachments, attachments listed but not
//! kept, and the time taken from `Date` only when it is sane, else from the server's
//! INTERNALDATE.

use crate::html::html_to_text;
use chrono::{DateTime, TimeZone, Utc};
use mail_parser::{HeaderName, HeaderValue, MessageParser, MimeHeaders, PartType};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Caps applied to every message before and after parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Largest raw message accepted, in bytes.
    pub max_bytes: usize,
    /// Deepest multipart nesting accepted.
    pub max_depth: usize,
    /// Most MIME parts accepted.
    pub max_parts: usize,
    /// Full text kept per message, in characters (the rest is cut).
    pub max_text_chars: usize,
    /// HTML converted to text at most, in bytes (larger HTML is tag-stripped instead).
    pub max_html_bytes: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_bytes: 25 * 1024 * 1024,
            max_depth: 20,
            max_parts: 500,
            max_text_chars: 150_000,
            max_html_bytes: 1024 * 1024,
        }
    }
}

/// Why a message was quarantined instead of parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum ParseFailure {
    /// Larger than [`ParseLimits::max_bytes`].
    #[error("message too large: {bytes} bytes (limit {limit})")]
    TooLarge {
        /// Size of the message.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Multipart nesting deeper than [`ParseLimits::max_depth`].
    #[error("multipart nested too deeply (limit {limit})")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// More parts than [`ParseLimits::max_parts`].
    #[error("too many MIME parts: {parts} (limit {limit})")]
    TooManyParts {
        /// Parts found.
        parts: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a message at all (no header could be read).
    #[error("not an email message")]
    NotAMessage,
    /// The parser panicked.
    #[error("parser panicked")]
    Panicked,
}

/// Where an entry's time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeSource {
    /// The message's `Date` header.
    DateHeader,
    /// The server's receipt time (IMAP INTERNALDATE), because `Date` was missing or not sane.
    InternalDate,
    /// The provider's timestamp (SMS and calls).
    Provider,
    /// When Fleet first saw it: nothing else was available.
    Ingested,
}

/// An email address with its display name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    /// Lower-cased address.
    pub address: String,
    /// Display name, decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An attachment, listed but not kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// File name, decoded (if the part has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `type/subtype`.
    pub content_type: String,
    /// Decoded size in bytes.
    pub size: usize,
}

/// One parsed email.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParsedMail {
    /// SHA-256 of the raw bytes (hex): the key the raw message is kept under.
    pub content_hash: String,
    /// `Message-ID` without angle brackets, if the message has a usable one.
    pub message_id: Option<String>,
    /// `In-Reply-To` ids.
    pub in_reply_to: Vec<String>,
    /// `References` ids, oldest first.
    pub references: Vec<String>,
    /// Decoded subject.
    pub subject: Option<String>,
    /// `From`.
    pub from: Vec<Mailbox>,
    /// `To`.
    pub to: Vec<Mailbox>,
    /// `Cc`.
    pub cc: Vec<Mailbox>,
    /// `List-Id`, when it came through a mailing list.
    pub list_id: Option<String>,
    /// Full text (plain part, else HTML turned into text), capped.
    pub text: String,
    /// Attachments (name, type, size).
    pub attachments: Vec<Attachment>,
    /// UTC time of the message.
    pub time: DateTime<Utc>,
    /// Where [`ParsedMail::time`] came from.
    pub time_source: TimeSource,
    /// Parts whose encoding could not be decoded exactly (kept, lossy).
    pub decode_problems: usize,
}

impl ParsedMail {
    /// A fingerprint of the body text that ignores whitespace and a trailing footer a
    /// mailing list may add: the first 2,000 non-space characters, hashed.
    pub fn body_fingerprint(&self) -> String {
        body_fingerprint(&self.text)
    }
}

/// The fingerprint [`ParsedMail::body_fingerprint`] computes, for any text.
pub fn body_fingerprint(text: &str) -> String {
    let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).take(2000).collect();
    hex::encode(&Sha256::digest(squeezed.as_bytes())[..12])
}

/// SHA-256 of `raw`, hex.
pub fn content_hash(raw: &[u8]) -> String {
    hex::encode(Sha256::digest(raw))
}

/// Parses `raw` under `limits`. `internal_date` is the server's receipt time, used when
/// `Date` is missing, unreadable, before 1980 or more than a day in the future.
pub fn parse_mail(
    raw: &[u8],
    limits: &ParseLimits,
    internal_date: Option<DateTime<Utc>>,
) -> Result<ParsedMail, ParseFailure> {
    if raw.len() > limits.max_bytes {
        return Err(ParseFailure::TooLarge { bytes: raw.len(), limit: limits.max_bytes });
    }
    // The parser nests per multipart level; count the levels before letting it in.
    if multipart_declarations(raw) > limits.max_depth.saturating_mul(limits.max_parts.max(1)).min(10_000)
        || nesting_estimate(raw) > limits.max_depth
    {
        return Err(ParseFailure::TooDeep { limit: limits.max_depth });
    }
    let parsed = catch_unwind(AssertUnwindSafe(|| parse_inner(raw, limits, internal_date)));
    match parsed {
        Ok(r) => r,
        Err(_) => Err(ParseFailure::Panicked),
    }
}

fn parse_inner(
    raw: &[u8],
    limits: &ParseLimits,
    internal_date: Option<DateTime<Utc>>,
) -> Result<ParsedMail, ParseFailure> {
    let msg = MessageParser::default().parse(raw).ok_or(ParseFailure::NotAMessage)?;
    if msg.headers().is_empty() {
        return Err(ParseFailure::NotAMessage);
    }
    if msg.parts.len() > limits.max_parts {
        return Err(ParseFailure::TooManyParts { parts: msg.parts.len(), limit: limits.max_parts });
    }
    if part_depth(&msg, 0, 0) > limits.max_depth {
        return Err(ParseFailure::TooDeep { limit: limits.max_depth });
    }
    let charset = msg.root_part().content_type().and_then(|ct| ct.attribute("charset")).map(str::to_owned);
    let subject = msg.subject().map(|s| {
        if s.contains('\u{FFFD}') {
            raw_header(&msg, raw, &HeaderName::Subject)
                .map(|b| decode_8bit(&b, charset.as_deref()))
                .unwrap_or_else(|| s.to_owned())
        } else {
            s.to_owned()
        }
    });
    let subject = subject.map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "));

    let text = body_text(&msg, raw, limits);
    let attachments = msg
        .attachments()
        .filter(|p| is_attachment(p))
        .map(|p| Attachment {
            name: p.attachment_name().map(str::to_owned),
            content_type: p
                .content_type()
                .map(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("octet-stream")).to_ascii_lowercase())
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
            size: p.len(),
        })
        .collect();

    let (time, time_source) = match msg.date().filter(|d| d.is_valid()).and_then(|d| sane_time(d.to_timestamp())) {
        Some(t) => (t, TimeSource::DateHeader),
        None => match internal_date {
            Some(t) => (t, TimeSource::InternalDate),
            None => (Utc::now(), TimeSource::Ingested),
        },
    };

    Ok(ParsedMail {
        content_hash: content_hash(raw),
        message_id: msg.message_id().and_then(normalise_message_id),
        in_reply_to: id_list(msg.in_reply_to()),
        references: id_list(msg.references()),
        subject,
        from: mailboxes(msg.from()),
        to: msg.all_to().flat_map(|a| mailboxes(Some(a))).collect(),
        cc: msg.all_cc().flat_map(|a| mailboxes(Some(a))).collect(),
        list_id: msg.header_raw("List-Id").map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
        text,
        attachments,
        time,
        time_source,
        decode_problems: msg.parts.iter().filter(|p| p.is_encoding_problem).count(),
    })
}

/// A `Date` in a believable range: after 1980, at most a day ahead of now.
fn sane_time(ts: i64) -> Option<DateTime<Utc>> {
    let t = Utc.timestamp_opt(ts, 0).single()?;
    let floor = Utc.with_ymd_and_hms(1980, 1, 1, 0, 0, 0).single()?;
    (t >= floor && t <= Utc::now() + chrono::Duration::days(1)).then_some(t)
}

/// A Message-ID without brackets or spaces; ids over 998 characters (the line limit)
/// are not ids.
pub fn normalise_message_id(id: &str) -> Option<String> {
    let id = id.trim().trim_start_matches('<').trim_end_matches('>').trim();
    if id.is_empty() || id.len() > 998 || id.chars().any(char::is_whitespace) {
        return None;
    }
    Some(id.to_owned())
}

fn id_list(v: &HeaderValue<'_>) -> Vec<String> {
    let mut out: Vec<String> = match v {
        HeaderValue::Text(t) => vec![t.to_string()],
        HeaderValue::TextList(l) => l.iter().map(|t| t.to_string()).collect(),
        _ => Vec::new(),
    }
    .iter()
    .filter_map(|s| normalise_message_id(s))
    .collect();
    out.dedup();
    out
}

fn mailboxes(a: Option<&mail_parser::Address<'_>>) -> Vec<Mailbox> {
    let Some(a) = a else { return Vec::new() };
    a.iter()
        .filter_map(|addr| {
            let address = addr.address()?.trim().to_lowercase();
            if !address.contains('@') {
                return None;
            }
            Some(Mailbox { address, name: addr.name().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()) })
        })
        .collect()
}

/// What a part's declared type makes it, for the text and the attachment list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Declared {
    /// `text/plain`, or no `Content-Type` (RFC 2045's default).
    Plain,
    /// `text/html`.
    Html,
    /// `multipart/*`: only a part whose boundary never came comes back as a leaf.
    Multipart,
    /// Anything else (`text/calendar`, `image/png`, `application/pdf`, …).
    Other,
}

fn declared(p: &mail_parser::MessagePart<'_>) -> Declared {
    let Some(ct) = p.content_type() else { return Declared::Plain };
    let subtype = ct.subtype().unwrap_or("plain");
    match ct.ctype() {
        t if t.eq_ignore_ascii_case("text") && subtype.eq_ignore_ascii_case("plain") => Declared::Plain,
        t if t.eq_ignore_ascii_case("text") && subtype.eq_ignore_ascii_case("html") => Declared::Html,
        t if t.eq_ignore_ascii_case("multipart") => Declared::Multipart,
        _ => Declared::Other,
    }
}

/// True when part `p` really is an attachment: `Content-Disposition: attachment`, a
/// file name, or a type the timeline does not show as text (a nested message, a PDF,
/// an image, a calendar invitation). A nameless plain or HTML part is not one, even
/// when the parser lists it among its attachments: that is a body part it gave up on
/// (no closing boundary) or an alternative of the body shown.
fn is_attachment(p: &mail_parser::MessagePart<'_>) -> bool {
    if matches!(p.body, PartType::Multipart(_)) {
        return false;
    }
    let disposition_attachment = p.content_disposition().is_some_and(|d| d.is_attachment());
    disposition_attachment
        || p.attachment_name().is_some()
        || !matches!(p.body, PartType::Text(_) | PartType::Html(_))
        || declared(p) == Declared::Other
}

/// The text of a body part the parser could not delimit (its closing boundary never
/// came, or a multipart's boundary never appeared), with what kind of text it is.
///
/// mail-parser keeps such a part as raw text (the bytes up to the end of the message,
/// still transfer-encoded, an HTML part relabelled as plain) and lists it as an
/// attachment; left there, the message shows no text. `None` for every other part.
fn recovered_text(p: &mail_parser::MessagePart<'_>, raw: &[u8]) -> Option<(Declared, String)> {
    let PartType::Text(text) = &p.body else { return None };
    if is_attachment(p) {
        return None;
    }
    let kind = declared(p);
    if !(p.is_encoding_problem || kind == Declared::Multipart) {
        // A well-formed alternative the parser chose not to show: not lost text.
        return None;
    }
    Some((kind, redecoded(p, raw).unwrap_or_else(|| text.to_string())))
}

/// The text of a part the parser kept undecoded because it could not find where it
/// ends: its raw bytes decoded with the part's transfer encoding and charset. `None`
/// for a part without that problem, or when the bytes do not decode.
fn redecoded(p: &mail_parser::MessagePart<'_>, raw: &[u8]) -> Option<String> {
    if !p.is_encoding_problem {
        return None;
    }
    let body = raw.get(p.offset_body as usize..p.offset_end as usize)?;
    let bytes = match p.content_transfer_encoding().map(str::to_ascii_lowercase).as_deref() {
        Some("base64") => {
            let compact: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
            mail_parser::decoders::base64::base64_decode(&compact)?
        }
        Some("quoted-printable") => mail_parser::decoders::quoted_printable::quoted_printable_decode(body)?,
        _ => return None,
    };
    let charset = p.content_type().and_then(|ct| ct.attribute("charset"));
    Some(match charset.and_then(|c| mail_parser::decoders::charsets::map::charset_decoder(c.as_bytes())) {
        Some(decode) => decode(&bytes),
        None => String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// The plain text of the message: its text parts, else its HTML parts as text, with
/// the text of body parts the parser could not delimit put back in their place.
fn body_text(msg: &mail_parser::Message<'_>, raw: &[u8], limits: &ParseLimits) -> String {
    // (part index, text) of the plain and the HTML bodies, in the message's order.
    let mut plain: Vec<(u32, String)> = msg
        .text_body
        .iter()
        .filter_map(|&i| match &msg.parts.get(i as usize)?.body {
            PartType::Text(t) => Some((i, redecoded(&msg.parts[i as usize], raw).unwrap_or_else(|| t.to_string()))),
            _ => None,
        })
        .collect();
    let mut html: Vec<(u32, String)> = msg
        .html_body
        .iter()
        .filter_map(|&i| match &msg.parts.get(i as usize)?.body {
            PartType::Html(h) => Some((i, redecoded(&msg.parts[i as usize], raw).unwrap_or_else(|| h.to_string()))),
            _ => None,
        })
        .collect();
    for &i in &msg.attachments {
        match msg.parts.get(i as usize).and_then(|p| recovered_text(p, raw)) {
            Some((Declared::Html, h)) => html.push((i, h)),
            Some((_, t)) => plain.push((i, t)),
            None => {}
        }
    }
    plain.sort_by_key(|(i, _)| *i);
    html.sort_by_key(|(i, _)| *i);
    let mut text = String::new();
    if !plain.is_empty() {
        for (_, t) in plain {
            text.push_str(&t);
            text.push('\n');
        }
    } else {
        for (_, h) in html {
            text.push_str(&html_to_text(&h, limits.max_html_bytes));
            text.push('\n');
        }
    }
    let text = text.replace('\0', "").replace("\r\n", "\n");
    let trimmed = text.trim();
    match trimmed.char_indices().nth(limits.max_text_chars) {
        Some((cut, _)) => trimmed[..cut].to_owned(),
        None => trimmed.to_owned(),
    }
}

/// Depth of the MIME tree below part `id`.
fn part_depth(msg: &mail_parser::Message<'_>, id: usize, depth: usize) -> usize {
    if depth > 64 {
        return depth;
    }
    match msg.parts.get(id).map(|p| &p.body) {
        Some(PartType::Multipart(children)) => {
            children.iter().map(|c| part_depth(msg, *c as usize, depth + 1)).max().unwrap_or(depth + 1)
        }
        _ => depth,
    }
}

/// How many parts declare themselves multipart.
fn multipart_declarations(raw: &[u8]) -> usize {
    let lower = raw.iter().map(u8::to_ascii_lowercase);
    let needle = b"multipart/";
    let mut count = 0;
    let mut matched = 0;
    for b in lower {
        if b == needle[matched] {
            matched += 1;
            if matched == needle.len() {
                count += 1;
                matched = 0;
            }
        } else {
            matched = usize::from(b == needle[0]);
        }
    }
    count
}

/// An upper bound of the multipart nesting: distinct boundaries opened before any of
/// them closes. Cheap, before the parser runs, so a 1,000-deep message costs a scan.
fn nesting_estimate(raw: &[u8]) -> usize {
    let mut open: Vec<Vec<u8>> = Vec::new();
    let mut deepest = 0;
    for line in raw.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let lower = line.to_ascii_lowercase();
        if let Some(pos) = find(&lower, b"boundary=") {
            let rest = &line[pos + 9..];
            let rest = rest.strip_prefix(b"\"").unwrap_or(rest);
            let end = rest.iter().position(|b| matches!(b, b'"' | b';' | b' ' | b'\t')).unwrap_or(rest.len());
            let boundary = rest[..end].to_vec();
            if !boundary.is_empty() && !open.contains(&boundary) {
                open.push(boundary);
                deepest = deepest.max(open.len());
            }
        } else if let Some(b) = line.strip_prefix(b"--") {
            // A closing delimiter ends its level and every level opened inside it.
            if let Some(idx) = open.iter().position(|o| b.strip_suffix(b"--") == Some(o.as_slice())) {
                open.truncate(idx);
            }
        }
    }
    deepest
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The raw bytes of header `name` of the top-level part, unfolded.
fn raw_header(msg: &mail_parser::Message<'_>, raw: &[u8], name: &HeaderName<'_>) -> Option<Vec<u8>> {
    let h = msg.root_part().headers.iter().find(|h| &h.name == name)?;
    let bytes = raw.get(h.offset_start as usize..h.offset_end as usize)?;
    let unfolded: Vec<u8> = bytes.iter().copied().filter(|b| *b != b'\r' && *b != b'\n').collect();
    Some(unfolded.trim_ascii().to_vec())
}

/// Decodes raw 8-bit header bytes: UTF-8 when valid, else the message's charset, else
/// windows-1252 (what WHATWG does with unlabelled 8-bit text).
pub fn decode_8bit(bytes: &[u8], charset: Option<&str>) -> String {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return s.to_owned();
    }
    let encoding = charset
        .and_then(|c| encoding_rs::Encoding::for_label(c.as_bytes()))
        .filter(|e| *e != encoding_rs::UTF_8)
        .unwrap_or(encoding_rs::WINDOWS_1252);
    encoding.decode_without_bom_handling(bytes).0.into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> ParsedMail {
        parse_mail(raw.as_bytes(), &ParseLimits::default(), None).expect("parsed")
    }

    const HEAD: &str = "From: Anna <anna@example.com>\r\nTo: studio@photo.example\r\nMessage-ID: <cut@x>\r\nSubject: Booking\r\nMIME-Version: 1.0\r\n";

    #[test]
    fn an_only_text_part_without_its_closing_boundary_is_the_text_and_no_attachment() {
        let p = parse(&format!(
            "{HEAD}Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\nPreamble.\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nWe would love to book you for June.\r\nSee you soon, Anna\r\n"
        ));
        assert_eq!(p.text, "We would love to book you for June.\nSee you soon, Anna");
        assert!(p.attachments.is_empty(), "{:?}", p.attachments);
    }

    #[test]
    fn an_unterminated_part_is_decoded_with_its_transfer_encoding_and_charset() {
        let p = parse(&format!(
            "{HEAD}Content-Type: multipart/alternative; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nCaf=E9 at ten, =\r\nthen the church.\r\n"
        ));
        assert_eq!(p.text, "Café at ten, then the church.");
        assert!(p.attachments.is_empty(), "{:?}", p.attachments);
        let p = parse(&format!(
            "{HEAD}Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nQ2Fmw6kgYXQg\r\ndGVuLg==\r\n"
        ));
        assert_eq!(p.text, "Café at ten.");
        assert!(p.attachments.is_empty());
    }

    #[test]
    fn an_unterminated_html_part_becomes_text() {
        let p = parse(&format!(
            "{HEAD}Content-Type: multipart/alternative; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/html\r\n\r\n<p>Hello there</p>\r\n"
        ));
        assert_eq!(p.text, "Hello there");
        assert!(p.attachments.is_empty());
    }

    #[test]
    fn a_multipart_whose_boundary_never_comes_is_text() {
        let p = parse(&format!("{HEAD}Content-Type: multipart/mixed; boundary=XX\r\n\r\nJust text, no parts.\r\n"));
        assert_eq!(p.text, "Just text, no parts.");
        assert!(p.attachments.is_empty());
    }

    #[test]
    fn real_attachments_stay_listed_beside_recovered_text() {
        let p = parse(&format!(
            "{HEAD}Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nThe contract.\r\n--XX\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=c.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--XX\r\nContent-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\nnotes\r\n--XX\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\nBEGIN:VCALENDAR\r\n--XX\r\nContent-Type: text/plain\r\n\r\nP.S. cut off here"
        ));
        assert_eq!(p.text, "The contract.\nP.S. cut off here");
        let listed: Vec<_> = p.attachments.iter().map(|a| (a.name.as_deref(), a.content_type.as_str())).collect();
        assert_eq!(listed, [(Some("c.pdf"), "application/pdf"), (None, "text/plain"), (None, "text/calendar")]);
    }

    #[test]
    fn a_second_alternative_is_neither_text_nor_attachment() {
        let p = parse(&format!(
            "{HEAD}Content-Type: multipart/alternative; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nPlain.\r\n--XX\r\nContent-Type: text/html\r\n\r\n<p>Rich.</p>\r\n--XX--\r\n"
        ));
        assert_eq!(p.text, "Plain.");
        assert!(p.attachments.is_empty());
    }
}
