//! EXIF metadata (JPEG APP1, PNG `eXIf`, WebP `EXIF`, TIFF IFDs) through `kamadak-exif`, and
//! the GPS position of an XMP packet ([`crate::xmp`]) when the EXIF has none.
//! Metadata never fails an image: a broken block is reported in [`Metadata::exif_warning`]
//! (or [`Metadata::xmp_warning`]).
//! GPS is privacy-sensitive: its presence is always reported, the position only on request,
//! wherever it is stored (a photo whose position is only in XMP is no less located).

use exif::{Exif, In, Tag, Value};
use serde::{Deserialize, Serialize};

use crate::format::{Format, sniff};

/// Camera metadata read from EXIF.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Whether the bytes carry an EXIF block at all.
    pub exif_present: bool,
    /// Camera maker (`Make`).
    pub make: Option<String>,
    /// Camera model (`Model`).
    pub model: Option<String>,
    /// Lens maker (`LensMake`).
    pub lens_make: Option<String>,
    /// Lens model (`LensModel`).
    pub lens_model: Option<String>,
    /// When the photo was taken (`DateTimeOriginal`, else `DateTime`), as ISO 8601 local time
    /// (`2008-10-22T16:28:39`), with the offset when `OffsetTimeOriginal` gives one.
    pub taken_at: Option<String>,
    /// EXIF orientation (1–8) as stored. [`crate::decode()`] has already applied it to the pixels.
    pub orientation: Option<u8>,
    /// Software that wrote the file.
    pub software: Option<String>,
    /// `Artist`.
    pub artist: Option<String>,
    /// `Copyright`.
    pub copyright: Option<String>,
    /// True when the EXIF, or else the XMP packet, has a GPS latitude and longitude, whether
    /// or not they are returned.
    pub gps_present: bool,
    /// The position; only filled when the caller asked for it (`include_gps`).
    pub gps: Option<GpsPosition>,
    /// Why (part of) the EXIF could not be read, when it could not.
    pub exif_warning: Option<String>,
    /// Why the XMP packet (read for a position the EXIF lacks) could not be read, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xmp_warning: Option<String>,
}

/// A GPS position in decimal degrees (north and east positive).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GpsPosition {
    /// Latitude, −90…90.
    pub latitude: f64,
    /// Longitude, −180…180.
    pub longitude: f64,
    /// Altitude in metres above sea level, when present.
    pub altitude_m: Option<f64>,
}

/// Reads EXIF metadata from image bytes, and the GPS position from the XMP packet when the
/// EXIF has none. Never fails; GPS coordinates only with `include_gps`.
pub fn read_metadata(bytes: &[u8], include_gps: bool) -> Metadata {
    let format = match sniff(bytes) {
        Ok(f @ (Format::Jpeg | Format::Png | Format::Webp | Format::Tiff | Format::Avif)) => f,
        // GIF has no EXIF; unsupported formats are the decoder's business.
        Ok(Format::Gif) | Err(_) => return Metadata::default(),
    };
    let mut meta = read_exif(bytes, include_gps);
    if !meta.gps_present {
        // EXIF wins where both have a position: it is what cameras write; XMP is read
        // for the photos whose position an editor or a phone put only there.
        let xmp = crate::xmp::read_gps(bytes, format);
        meta.gps_present = xmp.present;
        meta.gps = if include_gps { xmp.position } else { None };
        meta.xmp_warning = xmp.warning;
    }
    meta
}

/// The EXIF block's metadata (default when there is none).
fn read_exif(bytes: &[u8], include_gps: bool) -> Metadata {
    let parsed = std::panic::catch_unwind(|| {
        let mut reader = exif::Reader::new();
        reader.continue_on_error(true);
        reader.read_from_container(&mut std::io::Cursor::new(bytes))
    });
    let mut warning = None;
    let exif = match parsed {
        Ok(Ok(exif)) => exif,
        Ok(Err(exif::Error::NotFound(_))) => return Metadata::default(),
        Ok(Err(e)) => match e.distill_partial_result(|errors| {
            let list: Vec<String> = errors.iter().take(5).map(ToString::to_string).collect();
            warning = Some(format!("EXIF partly unreadable: {}", list.join("; ")));
        }) {
            Ok(exif) => exif,
            Err(e) => {
                return Metadata {
                    exif_present: true,
                    exif_warning: Some(format!("EXIF unreadable: {e}")),
                    ..Metadata::default()
                };
            }
        },
        Err(_) => {
            return Metadata {
                exif_present: true,
                exif_warning: Some("EXIF parser panicked: block ignored".into()),
                ..Metadata::default()
            };
        }
    };
    let mut meta = from_exif(&exif, include_gps);
    meta.exif_warning = warning.or(meta.exif_warning);
    meta
}

fn from_exif(exif: &Exif, include_gps: bool) -> Metadata {
    let text = |tag: Tag| ascii(exif, tag);
    let (gps_present, gps, gps_warning) = gps(exif);
    Metadata {
        exif_present: true,
        make: text(Tag::Make),
        model: text(Tag::Model),
        lens_make: text(Tag::LensMake),
        lens_model: text(Tag::LensModel),
        taken_at: taken_at(exif),
        orientation: exif
            .get_field(Tag::Orientation, In::PRIMARY)
            .and_then(|f| f.value.get_uint(0))
            .and_then(|v| u8::try_from(v).ok())
            .filter(|v| (1..=8).contains(v)),
        software: text(Tag::Software),
        artist: text(Tag::Artist),
        copyright: text(Tag::Copyright),
        gps_present,
        gps: if include_gps { gps } else { None },
        exif_warning: gps_warning,
        xmp_warning: None,
    }
}

/// The first ASCII string of a tag, trimmed; `None` when absent or empty.
fn ascii(exif: &Exif, tag: Tag) -> Option<String> {
    let field = exif.get_field(tag, In::PRIMARY)?;
    let Value::Ascii(ref parts) = field.value else { return None };
    let joined = parts.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>().join(" ");
    let trimmed = joined.trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_string();
    (!trimmed.is_empty()).then_some(trimmed)
}

fn taken_at(exif: &Exif) -> Option<String> {
    let raw = [Tag::DateTimeOriginal, Tag::DateTimeDigitized, Tag::DateTime].into_iter().find_map(|tag| {
        let field = exif.get_field(tag, In::PRIMARY)?;
        let Value::Ascii(ref parts) = field.value else { return None };
        exif::DateTime::from_ascii(parts.first()?).ok()
    })?;
    if raw.year == 0 || raw.month == 0 || raw.day == 0 {
        return None;
    }
    let mut out =
        format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", raw.year, raw.month, raw.day, raw.hour, raw.minute, raw.second);
    if let Some(offset) = ascii(exif, Tag::OffsetTimeOriginal).filter(|o| valid_offset(o)) {
        out.push_str(&offset);
    }
    Some(out)
}

fn valid_offset(o: &str) -> bool {
    let b = o.as_bytes();
    b.len() == 6
        && (b[0] == b'+' || b[0] == b'-')
        && b[1..3].iter().all(u8::is_ascii_digit)
        && b[3] == b':'
        && b[4..6].iter().all(u8::is_ascii_digit)
}

/// (present, position, warning). Present means latitude and longitude tags exist.
fn gps(exif: &Exif) -> (bool, Option<GpsPosition>, Option<String>) {
    let lat = exif.get_field(Tag::GPSLatitude, In::PRIMARY);
    let lon = exif.get_field(Tag::GPSLongitude, In::PRIMARY);
    let (Some(lat), Some(lon)) = (lat, lon) else { return (false, None, None) };
    let reference = |tag: Tag| ascii(exif, tag).and_then(|s| s.chars().next()).map(|c| c.to_ascii_uppercase());
    let lat = degrees(&lat.value).map(|v| if reference(Tag::GPSLatitudeRef) == Some('S') { -v } else { v });
    let lon = degrees(&lon.value).map(|v| if reference(Tag::GPSLongitudeRef) == Some('W') { -v } else { v });
    match (lat, lon) {
        (Some(latitude), Some(longitude))
            if (-90.0..=90.0).contains(&latitude) && (-180.0..=180.0).contains(&longitude) =>
        {
            let altitude_m = exif.get_field(Tag::GPSAltitude, In::PRIMARY).and_then(|f| match f.value {
                Value::Rational(ref v) if !v.is_empty() && v[0].denom != 0 => {
                    let below = exif
                        .get_field(Tag::GPSAltitudeRef, In::PRIMARY)
                        .and_then(|r| r.value.get_uint(0))
                        .is_some_and(|r| r == 1);
                    let a = v[0].to_f64();
                    Some(if below { -a } else { a })
                }
                _ => None,
            });
            (true, Some(GpsPosition { latitude, longitude, altitude_m }), None)
        }
        _ => (true, None, Some("GPS position present but malformed".into())),
    }
}

/// Degrees, minutes, seconds rationals to decimal degrees.
fn degrees(value: &Value) -> Option<f64> {
    let Value::Rational(parts) = value else { return None };
    let mut total = 0.0;
    for (i, r) in parts.iter().take(3).enumerate() {
        if r.denom == 0 {
            if r.num == 0 {
                continue;
            }
            return None;
        }
        total += r.to_f64() / [1.0, 60.0, 3600.0][i];
    }
    (!parts.is_empty()).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small JPEG with `segments` (marker, payload) right after SOI.
    fn jpeg_with(segments: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(16, 8, image::Rgb([90, 120, 200]));
        let mut plain = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut plain).encode_image(&img).unwrap();
        let mut out = plain[..2].to_vec();
        for (marker, payload) in segments {
            out.extend_from_slice(&[0xFF, *marker]);
            out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
            out.extend_from_slice(payload);
        }
        out.extend_from_slice(&plain[2..]);
        out
    }

    fn xmp(lat: &str, lon: &str) -> Vec<u8> {
        let packet = format!(
            "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\
             <rdf:Description xmlns:exif=\"http://ns.adobe.com/exif/1.0/\" exif:GPSLatitude=\"{lat}\" \
             exif:GPSLongitude=\"{lon}\"/></rdf:RDF></x:xmpmeta>"
        );
        [&b"http://ns.adobe.com/xap/1.0/\0"[..], packet.as_bytes()].concat()
    }

    fn exif_gps(lat: u32) -> Vec<u8> {
        use exif::{Field, Rational};
        let r = |n| Value::Rational(vec![Rational { num: n, denom: 1 }, Rational { num: 0, denom: 1 }]);
        let fields = [
            Field { tag: Tag::GPSLatitudeRef, ifd_num: In::PRIMARY, value: Value::Ascii(vec![b"N".to_vec()]) },
            Field { tag: Tag::GPSLatitude, ifd_num: In::PRIMARY, value: r(lat) },
            Field { tag: Tag::GPSLongitudeRef, ifd_num: In::PRIMARY, value: Value::Ascii(vec![b"E".to_vec()]) },
            Field { tag: Tag::GPSLongitude, ifd_num: In::PRIMARY, value: r(7) },
        ];
        let mut writer = exif::experimental::Writer::new();
        fields.iter().for_each(|f| writer.push_field(f));
        let mut blob = std::io::Cursor::new(Vec::new());
        writer.write(&mut blob, false).unwrap();
        [&b"Exif\0\0"[..], blob.get_ref()].concat()
    }

    #[test]
    fn a_position_only_in_xmp_is_a_position_and_exif_wins_over_it() {
        let only_xmp = jpeg_with(&[(0xE1, xmp("10,30N", "20,15W"))]);
        let m = read_metadata(&only_xmp, false);
        assert!(m.gps_present && m.gps.is_none() && !m.exif_present, "{m:?}");
        let p = read_metadata(&only_xmp, true).gps.unwrap();
        assert_eq!((p.latitude, p.longitude), (10.5, -20.25));

        let both = jpeg_with(&[(0xE1, exif_gps(40)), (0xE1, xmp("10,30N", "20,15W"))]);
        let p = read_metadata(&both, true).gps.unwrap();
        assert_eq!((p.latitude, p.longitude), (40.0, 7.0), "the camera's EXIF is the position");

        let broken = jpeg_with(&[(0xE1, [&b"http://ns.adobe.com/xap/1.0/\0"[..], b"<x:xmpmeta"].concat())]);
        let m = read_metadata(&broken, true);
        assert!(!m.gps_present && m.xmp_warning.is_some(), "{m:?}");
        assert!(serde_json::to_string(&read_metadata(&only_xmp, false)).unwrap().contains("\"gps_present\":true"));
    }
}
