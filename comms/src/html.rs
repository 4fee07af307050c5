//! HTML mail turned into text, safely.
//!
//! `html2text` recurses over the DOM and has overflowed its stack on deep nesting, so
//! only HTML that is small and shallow enough goes to it (and inside `catch_unwind`);
//! anything else is tag-stripped by a flat scan that cannot recurse.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Deepest tag nesting handed to `html2text`.
const MAX_NESTING: usize = 200;
/// Most tags handed to `html2text`.
const MAX_TAGS: usize = 20_000;

/// Text of `html`, wrapped at 100 columns; HTML over `max_bytes`, nested deeper than
/// 200 or with over 20,000 tags is tag-stripped instead of rendered.
pub fn html_to_text(html: &str, max_bytes: usize) -> String {
    if html.len() <= max_bytes && shallow(html) {
        let rendered = catch_unwind(AssertUnwindSafe(|| html2text::from_read(html.as_bytes(), 100)));
        if let Ok(Ok(text)) = rendered {
            return text;
        }
    }
    strip_tags(&html[..floor_char_boundary(html, max_bytes.saturating_mul(4))])
}

fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0)
}

/// True when the tags nest at most [`MAX_NESTING`] deep and number at most [`MAX_TAGS`].
fn shallow(html: &str) -> bool {
    const VOID: &[&str] = &[
        "br", "img", "hr", "meta", "link", "input", "area", "base", "col", "embed", "source", "track", "wbr", "p",
        "li", "td", "tr", "th", "option",
    ];
    let mut depth: usize = 0;
    let mut tags = 0;
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        tags += 1;
        if tags > MAX_TAGS {
            return false;
        }
        let closing = rest.starts_with('/');
        let name: String = rest
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if name.is_empty() || VOID.contains(&name.as_str()) {
            continue;
        }
        let self_closing = rest.find('>').is_some_and(|e| rest[..e].ends_with('/'));
        if closing {
            depth = depth.saturating_sub(1);
        } else if !self_closing {
            depth += 1;
            if depth > MAX_NESTING {
                return false;
            }
        }
    }
    true
}

/// Text between tags, without `<script>` and `<style>` contents, entities for the
/// common characters decoded, whitespace collapsed.
pub fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let lower_head: String = rest.chars().take(8).collect::<String>().to_ascii_lowercase();
        let skip_to = if lower_head.starts_with("<script") {
            Some("</script")
        } else if lower_head.starts_with("<style") {
            Some("</style")
        } else {
            None
        };
        if let Some(end_tag) = skip_to {
            match rest.to_ascii_lowercase().find(end_tag) {
                Some(e) => rest = &rest[e..],
                None => {
                    rest = "";
                    break;
                }
            }
        }
        match rest.find('>') {
            Some(e) => {
                let tag = rest[1..e].to_ascii_lowercase();
                if tag.starts_with("br") || tag.starts_with("/p") || tag.starts_with("/div") || tag.starts_with("/tr") {
                    out.push('\n');
                } else {
                    out.push(' ');
                }
                rest = &rest[e + 1..];
            }
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    decoded
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_ordinary_html() {
        let t = html_to_text("<html><body><p>Hello <b>Anna</b></p><p>See you &amp; bye</p></body></html>", 1 << 20);
        assert!(t.contains("Hello **Anna**") || t.contains("Hello Anna"), "{t}");
        assert!(t.contains("See you & bye"), "{t}");
    }

    #[test]
    fn deep_html_is_stripped_not_rendered() {
        let html = format!("{}deep text{}", "<div>".repeat(50_000), "</div>".repeat(50_000));
        let t = html_to_text(&html, 1 << 20);
        assert_eq!(t, "deep text");
    }

    #[test]
    fn scripts_and_styles_are_dropped() {
        let t = strip_tags("<style>p{color:red}</style><p>a</p><script>alert(1)</script>b");
        assert_eq!(t, "a\nb");
    }
}
