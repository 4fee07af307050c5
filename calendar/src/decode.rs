//! Bytes → iCalendar text, at the byte level.
//!
//! Unfolding happens on bytes, before any decoding: RFC 5545 §3.1 allows a fold inside a
//! multi-octet UTF-8 sequence, and a strict decode of the folded bytes fails while a lossy
//! one turns the character into U+FFFD.

use thiserror::Error;

/// Why a body is not an iCalendar object. A sync must never read this as "everything was deleted".
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The body is empty or only whitespace.
    #[error("empty body")]
    Empty,
    /// The body looks like an HTML page (a login or error page served with 200).
    #[error("HTML instead of iCalendar")]
    Html,
    /// The body has no `BEGIN:VCALENDAR` (or bare `BEGIN:VEVENT`) line.
    #[error("not iCalendar: no BEGIN:VCALENDAR")]
    NotICalendar,
    /// The body is not one complete iCalendar object: a BEGIN without its END (a download cut
    /// short), or an END that closes something else. Applying what it holds would delete every
    /// event after the cut and read a cut property as whatever its prefix says.
    #[error("incomplete iCalendar ({0}): truncated download?")]
    Incomplete(String),
}

/// Decodes an iCalendar body: strips a BOM, unfolds lines (CRLF, bare LF or bare CR followed by
/// a space or tab), normalises line ends to CRLF, drops NUL bytes (never valid in iCalendar,
/// and refused by PostgreSQL in text) and decodes UTF-8, or Latin-1 when the bytes are not
/// UTF-8. Returns an error when the body is not iCalendar at all.
///
/// This reads whatever complete events a cut body holds (see [`decode_complete`] for what a
/// sync accepts).
pub fn decode(body: &[u8]) -> Result<String, DecodeError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let trimmed = body.trim_ascii_start();
    if trimmed.is_empty() {
        return Err(DecodeError::Empty);
    }
    let head = &trimmed[..trimmed.len().min(512)];
    let head_lower = head.to_ascii_lowercase();
    if head_lower.starts_with(b"<!doctype")
        || head_lower.starts_with(b"<html")
        || head_lower.starts_with(b"<?xml")
        || head_lower.starts_with(b"<head")
    {
        return Err(DecodeError::Html);
    }
    let unfolded = unfold(trimmed);
    if !contains_begin(&unfolded) {
        return Err(DecodeError::NotICalendar);
    }
    Ok(match String::from_utf8(unfolded) {
        Ok(text) => text,
        // Not UTF-8: a legacy charset. Latin-1 maps every byte to a char, so nothing is lost.
        Err(err) => err.into_bytes().iter().map(|&b| b as char).collect(),
    })
}

/// [`decode`], and then refuses a body that is not whole: every `BEGIN:` closed by its `END:`,
/// in order, and at least one component. A sync applies a fetched object as the complete
/// state of what it holds, so a body cut short (a dropped connection, a proxy's size limit)
/// must be refused like an HTML page, never applied as "the events after the cut were
/// deleted".
pub fn decode_complete(body: &[u8]) -> Result<String, DecodeError> {
    let text = decode(body)?;
    check_balanced(&text)?;
    Ok(text)
}

/// Whether every component of `text` (unfolded, CRLF lines) is closed, in order.
fn check_balanced(text: &str) -> Result<(), DecodeError> {
    let mut open: Vec<&str> = Vec::new();
    for line in text.split("\r\n") {
        let Some((name, value)) = line.split_once(':') else { continue };
        if name.eq_ignore_ascii_case("BEGIN") {
            open.push(value.trim());
        } else if name.eq_ignore_ascii_case("END") {
            match open.pop() {
                Some(begun) if begun.eq_ignore_ascii_case(value.trim()) => {}
                Some(begun) => {
                    return Err(DecodeError::Incomplete(format!(
                        "END:{} where END:{begun} was expected",
                        value.trim()
                    )));
                }
                None => return Err(DecodeError::Incomplete(format!("END:{} without BEGIN", value.trim()))),
            }
        }
    }
    match open.last() {
        Some(begun) => Err(DecodeError::Incomplete(format!("no END:{begun}"))),
        None => Ok(()),
    }
}

/// How many NUL bytes `body` holds ([`decode`] drops them; a sync reports how many).
pub fn nul_bytes(body: &[u8]) -> usize {
    body.iter().filter(|&&b| b == 0).count()
}

fn contains_begin(bytes: &[u8]) -> bool {
    bytes.split(|&b| b == b'\n').any(|line| {
        let line = line.trim_ascii();
        (line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"BEGIN:VCALENDAR"))
            || (line.len() >= 12 && line[..12].eq_ignore_ascii_case(b"BEGIN:VEVENT"))
    })
}

/// Removes line folds and NUL bytes and normalises line ends to CRLF, on bytes.
fn unfold(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'\r' || b == b'\n' {
            // One line end: CRLF, LF or CR.
            let mut end = i + 1;
            if b == b'\r' && input.get(end) == Some(&b'\n') {
                end += 1;
            }
            if matches!(input.get(end), Some(b' ' | b'\t')) {
                // A fold: drop the line end and the one whitespace after it.
                i = end + 1;
                continue;
            }
            out.extend_from_slice(b"\r\n");
            i = end;
            continue;
        }
        if b != 0 {
            out.push(b);
        }
        i += 1;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Joins decoded calendar objects into one text for [`crate::parse`], keeping each distinct
/// VTIMEZONE once. CalDAV servers put the same VTIMEZONE into every object (Radicale does), and
/// parsing a calendar of 5,000 objects with 5,000 copies of it cost seconds; a VTIMEZONE that
/// differs from the ones before it, even under the same TZID, is kept as it was.
pub fn join_objects<'a>(bodies: impl IntoIterator<Item = &'a str>) -> String {
    let mut seen: std::collections::HashSet<&'a str> = std::collections::HashSet::new();
    let mut out = String::new();
    for body in bodies {
        let mut block_start: Option<usize> = None;
        let mut offset = 0;
        for line in body.split_inclusive('\n') {
            let name = line.trim_end_matches(['\r', '\n']);
            match block_start {
                None if name.eq_ignore_ascii_case("BEGIN:VTIMEZONE") => block_start = Some(offset),
                None => out.push_str(line),
                Some(start) if name.eq_ignore_ascii_case("END:VTIMEZONE") => {
                    let block = &body[start..offset + line.len()];
                    if seen.insert(block) {
                        out.push_str(block);
                    }
                    block_start = None;
                }
                Some(_) => {}
            }
            offset += line.len();
        }
        // A VTIMEZONE cut off by the end of the object is passed on as it is.
        if let Some(start) = block_start {
            out.push_str(&body[start..]);
        }
        if !out.is_empty() && !out.ends_with('\n') {
            out.push_str("\r\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_inside_a_utf8_sequence_is_joined_before_decoding() {
        // "Müller" with the fold between the two bytes of "ü" (0xC3 0xBC).
        let body = b"BEGIN:VCALENDAR\r\nSUMMARY:M\xC3\r\n \xBCller\r\nEND:VCALENDAR\r\n";
        let text = decode(body).unwrap();
        assert!(text.contains("SUMMARY:M\u{fc}ller\r\n"), "{text}");
    }

    #[test]
    fn bom_bare_lf_and_latin1() {
        let body = b"\xEF\xBB\xBFBEGIN:VCALENDAR\nSUMMARY:caf\xE9\n  x\nEND:VCALENDAR";
        let text = decode(body).unwrap();
        assert_eq!(text, "BEGIN:VCALENDAR\r\nSUMMARY:caf\u{e9} x\r\nEND:VCALENDAR\r\n");
    }

    #[test]
    fn not_icalendar_bodies() {
        assert_eq!(decode(b""), Err(DecodeError::Empty));
        assert_eq!(decode(b"  \r\n"), Err(DecodeError::Empty));
        assert_eq!(decode(b"<!DOCTYPE html><html><body>Sign in</body></html>"), Err(DecodeError::Html));
        assert_eq!(decode(b"{\"error\":\"nope\"}"), Err(DecodeError::NotICalendar));
    }

    #[test]
    fn a_cut_body_is_incomplete_a_whole_one_is_not() {
        let whole = b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:a\r\nDTSTART:20270612T140000Z\r\nDTEND:20270612T150000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        assert!(decode_complete(whole).is_ok());
        let cut = &whole[..whole.windows(5).position(|w| w == b"DTEND").unwrap() + 9];
        assert_eq!(decode_complete(cut), Err(DecodeError::Incomplete("no END:VEVENT".into())));
        assert!(decode(cut).is_ok(), "decode alone still reads what a cut body holds");
        let crossed = b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:a\r\nEND:VCALENDAR\r\n";
        assert_eq!(
            decode_complete(crossed),
            Err(DecodeError::Incomplete("END:VCALENDAR where END:VEVENT was expected".into()))
        );
        let bare = b"BEGIN:VEVENT\nUID:a\nDTSTART:20270612T140000Z\nEND:VEVENT\n";
        assert!(decode_complete(bare).is_ok());
    }

    #[test]
    fn nul_bytes_are_dropped() {
        let body = b"BEGIN:VCALENDAR\r\nSUMMARY:a\0b\r\nEND:VCALENDAR\r\n";
        assert_eq!(nul_bytes(body), 1);
        assert_eq!(decode(body).unwrap(), "BEGIN:VCALENDAR\r\nSUMMARY:ab\r\nEND:VCALENDAR\r\n");
    }

    #[test]
    fn joined_objects_keep_each_distinct_vtimezone_once() {
        let tz = "BEGIN:VTIMEZONE\r\nTZID:Europe/London\r\nBEGIN:STANDARD\r\nDTSTART:20001029T020000\r\n\
                  TZOFFSETFROM:+0100\r\nTZOFFSETTO:+0000\r\nEND:STANDARD\r\nEND:VTIMEZONE\r\n";
        let other = tz.replace("+0000", "+0030");
        let object = |uid: &str, tz: &str| {
            format!(
                "BEGIN:VCALENDAR\r\nVERSION:2.0\r\n{tz}BEGIN:VEVENT\r\nUID:{uid}\r\n\
                 DTSTART;TZID=Europe/London:20270101T090000\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
            )
        };
        let bodies = [object("a", tz), object("b", tz), object("c", &other), object("d", "")];
        let joined = join_objects(bodies.iter().map(String::as_str));
        assert_eq!(joined.matches("BEGIN:VTIMEZONE").count(), 2, "{joined}");
        assert_eq!(joined.matches("TZOFFSETTO:+0030").count(), 1);
        for uid in ["a", "b", "c", "d"] {
            assert!(joined.contains(&format!("UID:{uid}\r\n")));
        }
        let calendar = crate::parse(&joined);
        assert_eq!(calendar.events.len(), 4);
        // Without the duplicates, the text is what the objects say.
        let plain = object("x", "");
        assert_eq!(join_objects([plain.as_str()]), plain);
    }
}
