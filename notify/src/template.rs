//! Templates: Jinja2 syntax through `minijinja`, one variant per locale, each with the
//! parts the channels use (email subject, text and HTML bodies; SMS text; push title and
//! body). Every part is compiled when the template is registered, so a template that
//! does not compile is refused with the compiler's message and never reaches a send.
//!
//! Tenants write these templates, so rendering is bounded: undefined values are errors
//! (a missing field fails loudly instead of sending "Dear ,"), the HTML part is
//! auto-escaped, fuel caps the work and the bytes of one render (no endless loops, no
//! value built past the fuel's worth of bytes), `+` is refused (see [`check`]) and the
//! output size is capped.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Longest source of one part.
pub const MAX_PART: usize = 64 * 1024;
/// Most locales in one template.
pub const MAX_LOCALES: usize = 50;
/// Largest rendered part.
pub const MAX_OUTPUT: usize = 256 * 1024;
/// Instructions one render may run (minijinja fuel).
const FUEL: u64 = 200_000;

/// One locale's parts; each is optional, a channel without its part is not sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Email subject (also the in-app and push title when those are not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Plain-text body (email text part, in-app body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// HTML body (email HTML part), auto-escaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// SMS text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<String>,
    /// Web Push title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_title: Option<String>,
    /// Web Push body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_body: Option<String>,
}

impl Variant {
    fn parts(&self) -> [(&'static str, Option<&String>); 6] {
        [
            ("subject", self.subject.as_ref()),
            ("text", self.text.as_ref()),
            ("html", self.html.as_ref()),
            ("sms", self.sms.as_ref()),
            ("push_title", self.push_title.as_ref()),
            ("push_body", self.push_body.as_ref()),
        ]
    }
}

/// What one variant renders to for one notification.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Rendered {
    /// Email subject / title.
    pub subject: Option<String>,
    /// Plain text.
    pub text: Option<String>,
    /// HTML.
    pub html: Option<String>,
    /// SMS text.
    pub sms: Option<String>,
    /// Push title.
    pub push_title: Option<String>,
    /// Push body.
    pub push_body: Option<String>,
}

fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(50);
    // Parts are compiled under their part name: `html` is escaped, the others are not
    // (a subject or an SMS is not HTML).
    env.set_auto_escape_callback(|name| {
        if name == "html" { minijinja::AutoEscape::Html } else { minijinja::AutoEscape::None }
    });
    env
}

/// Checks a template's variants: locale names, sizes, and that every part compiles.
/// The error names the locale and part, then gives the compiler's message.
pub fn check(default_locale: &str, variants: &BTreeMap<String, Variant>) -> Result<(), String> {
    if variants.is_empty() {
        return Err("a template needs at least one locale variant".into());
    }
    if variants.len() > MAX_LOCALES {
        return Err(format!("at most {MAX_LOCALES} locales per template"));
    }
    if !variants.contains_key(default_locale) {
        return Err(format!("default_locale {default_locale:?} has no variant"));
    }
    let env = environment();
    for (locale, variant) in variants {
        check_locale(locale)?;
        if variant.parts().iter().all(|(_, p)| p.is_none()) {
            return Err(format!("locale {locale:?}: the variant has no parts"));
        }
        for (part, source) in variant.parts() {
            let Some(source) = source else { continue };
            if source.len() > MAX_PART {
                return Err(format!("locale {locale:?}, {part}: longer than {MAX_PART} bytes"));
            }
            match env.template_from_named_str(part, source) {
                Err(e) => return Err(format!("locale {locale:?}, {part}: {}", describe(&e))),
                Ok(t) => refuse_unbounded(&t).map_err(|e| format!("locale {locale:?}, {part}: {e}"))?,
            }
        }
    }
    Ok(())
}

/// Refuses what fuel does not bound. minijinja charges fuel for every byte a template
/// builds and checks it before allocating, with one exception: `+` on two lists is lazy
/// and free, until a chain of more than 32 of them is copied into one list at once, unpaid
/// (`{% set l = l + l %}` 40 times asks for 2^40 items). Notification templates have no
/// use for `+` on lists, and numbers are added by the app, so the operator is refused
/// outright (strings join with `~`, which is paid for).
fn refuse_unbounded(t: &minijinja::Template<'_, '_>) -> Result<(), String> {
    use minijinja::machinery::{Instruction, get_compiled_template};
    let compiled = get_compiled_template(t);
    let parts = std::iter::once(&compiled.instructions).chain(compiled.blocks.values());
    for instructions in parts {
        let mut pc = 0;
        while let Some(i) = instructions.get(pc) {
            if matches!(i, Instruction::Add) {
                let line = instructions.get_line(pc).map(|l| format!(" (line {l})")).unwrap_or_default();
                return Err(format!(
                    "the `+` operator is not allowed in notification templates{line}: join strings with `~` and add numbers before sending"
                ));
            }
            pc += 1;
        }
    }
    Ok(())
}

/// A locale tag as templates and recipients name it: `en`, `fr-CA`, `pt-BR`.
pub fn check_locale(locale: &str) -> Result<(), String> {
    let ok = !locale.is_empty()
        && locale.len() <= 35
        && locale.split('-').all(|p| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    if ok { Ok(()) } else { Err(format!("{locale:?} is not a locale tag (e.g. en, fr-CA)")) }
}

/// The compiler's message with its line, without minijinja's multi-line debug dump.
fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    if let Some(line) = e.line()
        && !msg.contains("line")
    {
        msg.push_str(&format!(" (line {line})"));
    }
    msg
}

/// The variant for `locale`: the exact tag, else its language (`fr-CA` → `fr`), else
/// `default_locale`'s.
pub fn pick<'a>(variants: &'a BTreeMap<String, Variant>, locale: &str, default_locale: &str) -> Option<&'a Variant> {
    let lang = locale.split('-').next().unwrap_or(locale);
    variants
        .get(locale)
        .or_else(|| variants.iter().find(|(k, _)| k.eq_ignore_ascii_case(locale)).map(|(_, v)| v))
        .or_else(|| variants.get(lang))
        .or_else(|| variants.get(default_locale))
}

/// Renders every part of `variant` with `data` (the notification's data, plus
/// `recipient` and `unsubscribe_url`).
pub fn render(variant: &Variant, data: &serde_json::Value) -> Result<Rendered, String> {
    let env = environment();
    let ctx = minijinja::Value::from(minijinja::value::Serde(data));
    let one = |part: &'static str, source: Option<&String>| -> Result<Option<String>, String> {
        let Some(source) = source else { return Ok(None) };
        let t = env.template_from_named_str(part, source).map_err(|e| format!("{part}: {}", describe(&e)))?;
        // Also at send time: a template stored before the check was made.
        refuse_unbounded(&t).map_err(|e| format!("{part}: {e}"))?;
        let out = t.render(&ctx).map_err(|e| format!("{part}: {}", describe(&e)))?;
        if out.len() > MAX_OUTPUT {
            return Err(format!("{part}: rendered to more than {MAX_OUTPUT} bytes"));
        }
        Ok(Some(out))
    };
    Ok(Rendered {
        subject: one("subject", variant.subject.as_ref())?.map(|s| s.replace(['\r', '\n'], " ")),
        text: one("text", variant.text.as_ref())?,
        html: one("html", variant.html.as_ref())?,
        sms: one("sms", variant.sms.as_ref())?,
        push_title: one("push_title", variant.push_title.as_ref())?,
        push_body: one("push_body", variant.push_body.as_ref())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variants(v: Variant) -> BTreeMap<String, Variant> {
        BTreeMap::from([("en".to_owned(), v)])
    }

    #[test]
    fn a_template_that_does_not_compile_is_refused_with_the_compilers_message() {
        let bad = Variant { subject: Some("Hi {{ name".into()), ..Variant::default() };
        let e = check("en", &variants(bad)).unwrap_err();
        assert!(e.starts_with("locale \"en\", subject: "), "{e}");
        assert!(e.contains("syntax error"), "{e}");
        let bad = Variant { html: Some("{% for x in xs %}".into()), ..Variant::default() };
        assert!(check("en", &variants(bad)).unwrap_err().contains("html"));
        let ok = Variant { subject: Some("Hi {{ name }}".into()), ..Variant::default() };
        assert!(check("en", &variants(ok.clone())).is_ok());
        assert!(check("fr", &variants(ok)).unwrap_err().contains("default_locale"));
    }

    #[test]
    fn html_is_escaped_other_parts_are_not_and_undefined_values_fail() {
        let v = Variant {
            subject: Some("Gallery for {{ couple }}".into()),
            html: Some("<p>{{ couple }}</p>".into()),
            ..Variant::default()
        };
        let r = render(&v, &serde_json::json!({"couple": "Ann & <Bo>"})).unwrap();
        assert_eq!(r.subject.as_deref(), Some("Gallery for Ann & <Bo>"));
        assert_eq!(r.html.as_deref(), Some("<p>Ann &amp; &lt;Bo&gt;</p>"));
        let e = render(&v, &serde_json::json!({})).unwrap_err();
        assert!(e.contains("undefined"), "{e}");
    }

    #[test]
    fn endless_templates_run_out_of_fuel() {
        let v = Variant {
            text: Some("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}".into()),
            ..Variant::default()
        };
        assert!(render(&v, &serde_json::json!({})).is_err());
    }

    /// Templates are written by tenants: growing a value costs fuel by the byte, and
    /// the cost is checked before the allocation, so none of these can build more than
    /// the fuel's worth of bytes (FUEL x 64, about 12.8 MB) on a worker.
    #[test]
    fn templates_that_build_huge_values_run_out_of_fuel_before_allocating() {
        let hostile = [
            r#"{{ "x" * 100000000 }}"#,
            r#"{% set ns = namespace(s="xxxxxxxxxxxxxxxx") %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"#,
            r#"{% set ns = namespace(s="xxxxxxxxxxxxxxxx") %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}"#,
            r#"{% set ns = namespace(l=[1, 2, 3, 4]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|list|length }}"#,
            r#"{% macro grow(l, n) %}{% if n %}{{ grow(l + l, n - 1) }}{% else %}{{ l|length }}{% endif %}{% endmacro %}{{ grow([1, 2], 45) }}"#,
            r#"{% set s = "xxxxxxxxxxxxxxxx" %}{% set s = s ~ s %}{% set s = s ~ s %}{% set s = s * 1000000 %}{{ s|length }}"#,
            r#"{{ range(100000)|join("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx") }}"#,
            r#"{{ "%100000000s"|format("x") }}"#,
            r#"{{ ("x" * 1000000)|replace("x", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx") }}"#,
            r#"{% set s %}{% for i in range(100000) %}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}{% endset %}{{ s ~ s ~ s ~ s }}"#,
            r#"{{ "x"|indent(100000000) }}{{ "x"|center(100000000) }}"#,
        ];
        for source in hostile {
            let v = Variant { text: Some(source.into()), ..Variant::default() };
            let started = std::time::Instant::now();
            let e = render(&v, &serde_json::json!({})).expect_err(source);
            assert!(started.elapsed() < std::time::Duration::from_secs(2), "{source} took {:?}", started.elapsed());
            assert!(e.contains("fuel") || e.contains("too large") || e.contains("`+`"), "{source}: {e}");
        }
        // `+` is refused when the template is registered, with where it is.
        let v = Variant { text: Some("Hi\n{{ 1 + guests }}".into()), ..Variant::default() };
        let e = check("en", &variants(v)).unwrap_err();
        assert!(e.contains("`+` operator") && e.contains("line 2"), "{e}");
        let ok = Variant { text: Some("{{ first ~ ' ' ~ last }}: {{ guests - 1 }}".into()), ..Variant::default() };
        assert!(check("en", &variants(ok)).is_ok());
    }

    #[test]
    fn locales_fall_back_to_the_language_then_the_default() {
        let mut vs = BTreeMap::new();
        for l in ["en", "fr"] {
            vs.insert(l.to_owned(), Variant { subject: Some(l.into()), ..Variant::default() });
        }
        let subject = |l: &str| pick(&vs, l, "en").unwrap().subject.clone().unwrap();
        assert_eq!(subject("fr-CA"), "fr");
        assert_eq!(subject("de"), "en");
        assert_eq!(subject("FR"), "fr");
        assert!(check_locale("en_US").is_err());
    }
}
