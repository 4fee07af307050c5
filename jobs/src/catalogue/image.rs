//! `image.analyze` and `image.variants`: a photographer's upload, analysed and turned
//! into the variants a portfolio shows. The arguments are references: the image itself
//! is an object in the worker's object store (a local folder or S3), results go to
//! PostgreSQL (`image_analyses`, `image_variants`) and variants back to the store.

use crate::kind::{Audience, JobArgs, KindOptions};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Arguments of `image.analyze`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageAnalyze {
    /// The caller's id for the image (unique within the tenant).
    pub image_id: String,
    /// Object key of the uploaded image in the store.
    pub key: String,
    /// The portfolio (gallery) it belongs to: near-duplicates are looked for within it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portfolio: Option<String>,
    /// Keep the GPS position in the stored results (off by default: only whether the
    /// photo had one is recorded).
    #[serde(default)]
    pub allow_gps: bool,
    /// Ask the configured outside vision providers for categories, tags and alt text.
    #[serde(default)]
    pub vision: bool,
}

impl JobArgs for ImageAnalyze {
    const KIND: &'static str = "image.analyze";
    const AUDIENCE: Audience = Audience::Public;

    fn options() -> KindOptions {
        KindOptions {
            queue: "images".into(),
            max_attempts: 5,
            timeout: Some(Duration::from_secs(120)),
            ..KindOptions::default()
        }
    }
}

/// An image watermark for variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkArgs {
    /// Object key of the watermark (a PNG with alpha).
    pub key: String,
    /// `top_left`, `top_right`, `bottom_left`, `bottom_right` (default) or `center`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// 0.0 to 1.0 (default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opacity: Option<f32>,
    /// Width of the watermark as a share of the variant's width (default 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f32>,
}

/// Arguments of `image.variants`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageVariants {
    /// The caller's id for the image (unique within the tenant).
    pub image_id: String,
    /// Object key of the uploaded image in the store.
    pub key: String,
    /// Widths in pixels (default 320, 640, 1280, 2048; 1 to [`MAX_VARIANT_WIDTHS`] of
    /// [`MIN_VARIANT_WIDTH`] to [`MAX_VARIANT_WIDTH`]); never upscaled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub widths: Option<Vec<u32>>,
    /// `jpeg`, `webp` and/or `avif` (default `jpeg` and `webp`: AVIF costs several times the
    /// other two together, so it is made only when asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formats: Option<Vec<String>>,
    /// An optional watermark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<WatermarkArgs>,
    /// Metadata fields of the source written into the variants (default none): names from
    /// [`KEEPABLE_METADATA`] (`artist`, `copyright`). Location is never kept: any other name,
    /// GPS and location names first, is refused ([`check_kept_metadata`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_metadata: Option<Vec<String>>,
}

impl JobArgs for ImageVariants {
    const KIND: &'static str = "image.variants";
    const AUDIENCE: Audience = Audience::Public;

    fn options() -> KindOptions {
        KindOptions {
            queue: "images".into(),
            max_attempts: 5,
            timeout: Some(Duration::from_secs(180)),
            ..KindOptions::default()
        }
    }
}

/// Most widths one `image.variants` job makes (each in every format).
pub const MAX_VARIANT_WIDTHS: usize = 8;
/// Narrowest variant width accepted, in pixels.
pub const MIN_VARIANT_WIDTH: u32 = 16;
/// Widest variant width accepted, in pixels (a narrower source is never upscaled).
pub const MAX_VARIANT_WIDTH: u32 = 8192;

/// Checks a variants request against the documented maxima: 1 to 8 widths of 16 to
/// 8,192 pixels, formats among `jpeg` (or `jpg`), `webp` and `avif`, each once.
pub fn check_variant_request(widths: Option<&[u32]>, formats: Option<&[String]>) -> Result<(), String> {
    if let Some(w) = widths {
        if w.is_empty() || w.len() > MAX_VARIANT_WIDTHS {
            return Err(format!("variants take 1 to {MAX_VARIANT_WIDTHS} widths, not {}", w.len()));
        }
        if let Some(bad) = w.iter().find(|w| !(MIN_VARIANT_WIDTH..=MAX_VARIANT_WIDTH).contains(w)) {
            return Err(format!("variant width {bad} is outside {MIN_VARIANT_WIDTH} to {MAX_VARIANT_WIDTH} pixels"));
        }
    }
    if let Some(f) = formats {
        let mut seen = Vec::new();
        for format in f {
            let canonical = match format.as_str() {
                "jpeg" | "jpg" => "jpeg",
                "webp" => "webp",
                "avif" => "avif",
                other => return Err(format!("unknown variant format {other:?}: use jpeg, webp or avif")),
            };
            if seen.contains(&canonical) {
                return Err(format!("variant format {canonical} appears twice"));
            }
            seen.push(canonical);
        }
        if seen.is_empty() {
            return Err("variants take at least one format".into());
        }
    }
    Ok(())
}

/// The metadata fields a variant may keep: the photographer's credit. A fixed set, so that
/// nothing identifying where a photo was taken (GPS, place names) can ever be kept.
pub const KEEPABLE_METADATA: &[&str] = &["artist", "copyright"];

/// Checks the metadata a variants request keeps: names from [`KEEPABLE_METADATA`], each
/// once. Anything else is refused rather than ignored, so a caller never believes a field
/// was kept that was not; a location (GPS, place) is refused with its own reason: it is
/// never written into a variant, whatever is asked.
pub fn check_kept_metadata(fields: &[String]) -> Result<(), String> {
    const LOCATION: &[&str] =
        &["gps", "location", "latitude", "longitude", "altitude", "position", "coordinate", "place", "city", "country"];
    for (i, field) in fields.iter().enumerate() {
        let lower = field.to_ascii_lowercase();
        if LOCATION.iter().any(|l| lower.contains(l)) {
            return Err(format!(
                "metadata field {field:?} is a location: variants never keep where a photo was taken \
                 (keepable: {})",
                KEEPABLE_METADATA.join(", ")
            ));
        }
        if !KEEPABLE_METADATA.contains(&field.as_str()) {
            return Err(format!(
                "metadata field {field:?} cannot be kept in variants (keepable: {})",
                KEEPABLE_METADATA.join(", ")
            ));
        }
        if fields[..i].contains(field) {
            return Err(format!("metadata field {field:?} appears twice"));
        }
    }
    Ok(())
}

/// Longest object key accepted, in bytes (S3's limit).
pub const MAX_OBJECT_KEY_BYTES: usize = 1024;

/// The object-store prefix a tenant's keys live under: `tenants/<tenant>/`. Uploads,
/// watermarks and the variants Fleet writes for the tenant are all under it, so one
/// tenant can never name (read the EXIF of, or the variants of) another's objects.
pub fn tenant_object_prefix(tenant: &str) -> String {
    format!("tenants/{tenant}/")
}

/// Checks that `key` names an object the same way in every store (a local folder, S3):
/// 1 to 1024 bytes of `/`-separated segments, none empty, `.` or `..`; no leading `/`,
/// no backslash, no NUL or other control character. The reason is for an error message.
pub fn check_object_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("is empty");
    }
    if key.len() > MAX_OBJECT_KEY_BYTES {
        return Err("is longer than 1024 bytes");
    }
    if key.chars().any(|c| c.is_control()) {
        return Err("contains a control character (NUL included)");
    }
    if key.contains('\\') {
        return Err("contains a backslash");
    }
    if key.starts_with('/') {
        return Err("is absolute (starts with `/`)");
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err("has an empty segment (`//` or a trailing `/`)"),
            "." | ".." => return Err("has a `.` or `..` segment"),
            _ => {}
        }
    }
    Ok(())
}

/// Checks that `key` is an object key `tenant` may name: a well-formed key
/// ([`check_object_key`]) with no `%` (no percent-encoded form of anything) and no
/// look-alike of `/` and `.`, under [`tenant_object_prefix`] with at least one segment
/// after it. The key is refused rather than normalised: what is checked is what the
/// store is asked for. The error names the required prefix.
pub fn check_tenant_object_key(tenant: &str, key: &str) -> Result<(), String> {
    let prefix = tenant_object_prefix(tenant);
    let refuse = |why: &str| Err(format!("object key {key:?} {why}: keys must be under {prefix:?}"));
    // The one tenant-name rule (a plain path segment: no `/`, never `.` or `..`).
    crate::tenant::validate_tenant(tenant).map_err(|e| format!("tenant cannot own object keys: {e}"))?;
    if let Err(why) = check_object_key(key) {
        return refuse(why);
    }
    if key.contains('%') {
        return refuse("contains `%` (percent-encoding is not decoded)");
    }
    // Characters some layers fold into `/` or `.` (NFKC, lenient path handling).
    const LOOK_ALIKES: &[char] = &['\u{2215}', '\u{2044}', '\u{ff0f}', '\u{29f8}', '\u{ff0e}', '\u{2024}', '\u{fe52}'];
    if key.contains(LOOK_ALIKES) {
        return refuse("contains a look-alike of `/` or `.`");
    }
    if !key.starts_with(&prefix) {
        return refuse("is outside the tenant's prefix");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_requests_stay_within_the_documented_maxima() {
        let s = |v: &[&str]| v.iter().map(|f| f.to_string()).collect::<Vec<_>>();
        assert_eq!(check_variant_request(None, None), Ok(()));
        assert_eq!(check_variant_request(Some(&[16, 320, 8192]), Some(&s(&["jpg", "webp"]))), Ok(()));
        assert_eq!(check_variant_request(None, Some(&s(&["avif", "jpeg"]))), Ok(()));
        for widths in [&[][..], &[0], &[15], &[8193], &[u32::MAX], &[100, 200, 300, 400, 500, 600, 700, 800, 900]] {
            assert!(check_variant_request(Some(widths), None).is_err(), "{widths:?}");
        }
        for formats in [s(&[]), s(&["png"]), s(&["jpeg", "jpg"]), s(&["webp", "webp"]), s(&["avif", "avif"])] {
            assert!(check_variant_request(None, Some(&formats)).is_err(), "{formats:?}");
        }
    }

    #[test]
    fn only_the_credit_is_kept_and_never_a_location() {
        let s = |v: &[&str]| v.iter().map(|f| f.to_string()).collect::<Vec<_>>();
        assert_eq!(check_kept_metadata(&s(&[])), Ok(()));
        assert_eq!(check_kept_metadata(&s(&["copyright", "artist"])), Ok(()));
        for location in ["gps", "GPSLatitude", "location", "gps_position", "City", "longitude"] {
            let e = check_kept_metadata(&s(&["copyright", location])).unwrap_err();
            assert!(e.contains("never keep"), "{location}: {e}");
        }
        for other in ["make", "Copyright", "xmp", "all", "*", ""] {
            let e = check_kept_metadata(&s(&[other])).unwrap_err();
            assert!(e.contains("keepable: artist, copyright"), "{other}: {e}");
        }
        assert!(check_kept_metadata(&s(&["artist", "artist"])).unwrap_err().contains("twice"));
    }

    #[test]
    fn a_tenant_names_only_keys_under_its_own_prefix() {
        assert_eq!(tenant_object_prefix("acme"), "tenants/acme/");
        for good in
            ["tenants/acme/uploads/x.jpg", "tenants/acme/a", "tenants/acme/ünï côdé.jpg", "tenants/acme/a..b/.c"]
        {
            assert_eq!(check_tenant_object_key("acme", good), Ok(()), "{good:?}");
        }
        let long = format!("tenants/acme/{}", "a".repeat(1100));
        for bad in [
            "",
            "uploads/x.jpg",
            "tenants/acme",
            "tenants/acme/",
            "tenants/acme2/x.jpg",
            "tenants/acmex.jpg",
            "tenants/other/x.jpg",
            "/tenants/acme/x.jpg",
            "tenants/acme/../other/x.jpg",
            "tenants/acme/./x.jpg",
            "tenants/acme//x.jpg",
            "tenants//acme/x.jpg",
            "tenants/acme/x/",
            "tenants/acme\\..\\other\\x.jpg",
            "tenants/acme/%2e%2e/other/x.jpg",
            "tenants%2Facme/x.jpg",
            "tenants/acme/x\0.jpg",
            "tenants/acme/x\n.jpg",
            "tenants/acme/\u{ff0e}\u{ff0e}\u{ff0f}other/x.jpg",
            "tenants/acme/a\u{2215}b",
            &long,
        ] {
            let e = check_tenant_object_key("acme", bad).unwrap_err();
            assert!(e.contains("\"tenants/acme/\""), "{bad:?}: {e}");
        }
        for tenant in ["", "..", "a/b", "a\\b", "a%2f"] {
            assert!(check_tenant_object_key(tenant, &format!("tenants/{tenant}/x.jpg")).is_err(), "{tenant:?}");
        }
    }
}
