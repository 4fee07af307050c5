//! The GPS position in an XMP packet (Adobe's RDF/XML metadata), for photos whose position
//! is stored there and not in EXIF (some editors and phones write only XMP).
//!
//! The packet is found by the container, never by searching the whole file for `<x:xmpmeta`:
//! a JPEG APP1 segment that starts with `http://ns.adobe.com/xap/1.0/\0`, a PNG `iTXt` chunk
//! keyed `XML:com.adobe.xmp` (deflated or not), a WebP `XMP ` chunk, an AVIF item of type `mime`
//! and content type `application/rdf+xml`. JPEG's Extended XMP (a
//! packet split over several segments) is not joined: writers put the GPS properties in the
//! main packet, which is what is read.
//!
//! The packet is untrusted XML, so it is bounded: at most [`MAX_XMP_BYTES`] (inflated too),
//! at most [`MAX_XMP_NODES`] nodes, and no DTD (`roxmltree` refuses one, so no entity is ever
//! declared, let alone expanded; only XML's five predefined entities and character
//! references are read).
//!
//! XMP writes a coordinate as `exif:GPSLatitude` / `exif:GPSLongitude` in the EXIF schema's
//! namespace (`http://ns.adobe.com/exif/1.0/`), as an attribute of an `rdf:Description` or
//! as an element, in the form `DDD,MM,SSk` or `DDD,MM.mmk` (k is N, S, E or W). Plain
//! decimal degrees (`43.4674N`, `-22.9`) are read as well: some writers use them.

use std::borrow::Cow;

use crate::format::Format;
use crate::jpeg_markers::header_segments;
use crate::metadata::GpsPosition;

/// Largest XMP packet read, in bytes (after inflating a compressed PNG `iTXt`). A JPEG
/// segment holds at most 64 KiB; a larger packet elsewhere is not a photo's metadata.
pub const MAX_XMP_BYTES: usize = 1 << 20;
/// Most XML nodes parsed in one packet (a real packet has a few hundred).
pub const MAX_XMP_NODES: u32 = 20_000;

/// The APP1 signature of the main XMP packet in a JPEG.
const JPEG_XMP_SIGNATURE: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";
/// The keyword of the PNG `iTXt` chunk that holds XMP.
const PNG_XMP_KEYWORD: &[u8] = b"XML:com.adobe.xmp";
/// The namespace of XMP's EXIF schema (where the GPS properties live).
const EXIF_NS: &str = "http://ns.adobe.com/exif/1.0/";

/// What an XMP packet says about the position.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct XmpGps {
    /// Both a latitude and a longitude property are there (well-formed or not).
    pub present: bool,
    /// The position, when both parse and are in range.
    pub position: Option<GpsPosition>,
    /// Why the packet or its position could not be read.
    pub warning: Option<String>,
}

/// The GPS position of the XMP packet in `bytes` (of the given format), if there is one.
/// Never fails: a broken packet is a warning.
pub(crate) fn read_gps(bytes: &[u8], format: Format) -> XmpGps {
    match packet(bytes, format) {
        Ok(Some(packet)) => gps_of_packet(&packet),
        Ok(None) => XmpGps::default(),
        Err(warning) => XmpGps { warning: Some(warning), ..XmpGps::default() },
    }
}

/// The main XMP packet of the file, by its container. `Err` says why a packet that is there
/// cannot be read.
fn packet(bytes: &[u8], format: Format) -> Result<Option<Cow<'_, [u8]>>, String> {
    let found = match format {
        Format::Jpeg => header_segments(bytes)
            .into_iter()
            .find(|s| s.marker == 0xE1 && s.data.starts_with(JPEG_XMP_SIGNATURE))
            .map(|s| Cow::Borrowed(&s.data[JPEG_XMP_SIGNATURE.len()..])),
        Format::Png => png_packet(bytes)?,
        Format::Webp => riff_chunk(bytes, b"XMP ").map(Cow::Borrowed),
        Format::Avif => crate::avif::xmp_packet(bytes)?.map(Cow::Owned),
        Format::Gif | Format::Tiff => None,
    };
    match found {
        Some(p) if p.len() > MAX_XMP_BYTES => Err(format!("XMP packet larger than {MAX_XMP_BYTES} bytes: ignored")),
        other => Ok(other),
    }
}

/// The `iTXt` chunk keyed `XML:com.adobe.xmp` before the image data, inflated when it is
/// compressed (at most [`MAX_XMP_BYTES`]).
fn png_packet(bytes: &[u8]) -> Result<Option<Cow<'_, [u8]>>, String> {
    let mut pos = 8;
    while let Some(header) = bytes.get(pos..pos + 8) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = &header[4..8];
        let Some(data) = bytes.get(pos + 8..(pos + 8).saturating_add(len)) else { return Ok(None) };
        match kind {
            b"IDAT" | b"IEND" => return Ok(None),
            b"iTXt" if data.starts_with(PNG_XMP_KEYWORD) && data.get(PNG_XMP_KEYWORD.len()) == Some(&0) => {
                // keyword \0, compression flag, method, language \0, translated keyword \0, text.
                let rest = &data[PNG_XMP_KEYWORD.len() + 1..];
                let [flag, _method, rest @ ..] = rest else { return Err("XMP iTXt chunk is cut short".into()) };
                let mut fields = rest.splitn(3, |&b| b == 0);
                let (Some(_language), Some(_translated), Some(text)) = (fields.next(), fields.next(), fields.next())
                else {
                    return Err("XMP iTXt chunk is cut short".into());
                };
                if *flag == 0 {
                    return Ok(Some(Cow::Borrowed(text)));
                }
                return miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(text, MAX_XMP_BYTES)
                    .map(|v| Some(Cow::Owned(v)))
                    .map_err(|e| {
                        format!("XMP iTXt chunk does not inflate within {MAX_XMP_BYTES} bytes: {:?}", e.status)
                    });
            }
            _ => {}
        }
        pos += 12 + len;
    }
    Ok(None)
}

/// The payload of the first RIFF chunk `id` of a WebP file.
fn riff_chunk<'a>(bytes: &'a [u8], id: &[u8; 4]) -> Option<&'a [u8]> {
    let mut pos = 12;
    while let Some(header) = bytes.get(pos..pos + 8) {
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let data = bytes.get(pos + 8..(pos + 8).saturating_add(len))?;
        if &header[..4] == id {
            return Some(data);
        }
        // Chunks are padded to an even size.
        pos += 8 + len + (len & 1);
    }
    None
}

/// The position in one packet.
fn gps_of_packet(packet: &[u8]) -> XmpGps {
    let text = match std::str::from_utf8(packet) {
        Ok(t) => t,
        Err(_) => return XmpGps { warning: Some("XMP packet is not UTF-8: ignored".into()), ..XmpGps::default() },
    };
    // Writers pad the packet with NULs or spaces; a BOM may open it.
    let text = text.trim_start_matches('\u{feff}').trim_end_matches(|c: char| c == '\0' || c.is_whitespace());
    let options = roxmltree::ParsingOptions { allow_dtd: false, nodes_limit: MAX_XMP_NODES };
    let doc = match roxmltree::Document::parse_with_options(text, options) {
        Ok(doc) => doc,
        Err(e) => return XmpGps { warning: Some(format!("XMP packet unreadable: {e}")), ..XmpGps::default() },
    };
    let property = |name: &str| -> Option<String> {
        doc.descendants().filter(|n| n.is_element()).find_map(|n| {
            if let Some(v) = n.attribute((EXIF_NS, name)) {
                return Some(v.trim().to_owned());
            }
            let tag = n.tag_name();
            (tag.namespace() == Some(EXIF_NS) && tag.name() == name).then(|| n.text().unwrap_or("").trim().to_owned())
        })
    };
    let (Some(lat), Some(lon)) = (property("GPSLatitude"), property("GPSLongitude")) else {
        return XmpGps::default();
    };
    match (coordinate(&lat, 'N', 'S', 90.0), coordinate(&lon, 'E', 'W', 180.0)) {
        (Some(latitude), Some(longitude)) => {
            let below = property("GPSAltitudeRef").is_some_and(|r| r == "1");
            let altitude_m = property("GPSAltitude").and_then(|a| rational(&a)).map(|a| if below { -a } else { a });
            XmpGps { present: true, position: Some(GpsPosition { latitude, longitude, altitude_m }), warning: None }
        }
        _ => {
            XmpGps { present: true, position: None, warning: Some("GPS position present in XMP but malformed".into()) }
        }
    }
}

/// An XMP GPSCoordinate (`DDD,MM,SSk`, `DDD,MM.mmk`, `DDD.ddk`) or signed decimal degrees,
/// to decimal degrees with `positive` (N, E) positive, within ±`max`.
fn coordinate(s: &str, positive: char, negative: char, max: f64) -> Option<f64> {
    let s = s.trim();
    let last = s.chars().next_back()?;
    let (body, sign) = if last.is_ascii_alphabetic() {
        let dir = last.to_ascii_uppercase();
        let sign = if dir == positive {
            1.0
        } else if dir == negative {
            -1.0
        } else {
            return None;
        };
        (&s[..s.len() - 1], Some(sign))
    } else {
        (s, None)
    };
    let parts: Vec<&str> = body.split(',').map(str::trim).collect();
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    let mut values = Vec::with_capacity(3);
    for (i, p) in parts.iter().enumerate() {
        // A sign only on plain decimal degrees without a direction letter.
        let signed_ok = i == 0 && parts.len() == 1 && sign.is_none();
        if p.is_empty() || (!signed_ok && p.starts_with(['-', '+'])) {
            return None;
        }
        let v: f64 = p.parse().ok().filter(|v: &f64| v.is_finite())?;
        if i > 0 && !(0.0..60.0).contains(&v) {
            return None;
        }
        values.push(v);
    }
    let magnitude = values.iter().zip([1.0, 60.0, 3600.0]).map(|(v, d)| v / d).sum::<f64>();
    let value = magnitude * sign.unwrap_or(1.0);
    (value.abs() <= max).then_some(value)
}

/// An XMP rational (`1234/10`) or a decimal.
fn rational(s: &str) -> Option<f64> {
    let v = match s.split_once('/') {
        Some((n, d)) => {
            let (n, d): (f64, f64) = (n.trim().parse().ok()?, d.trim().parse().ok()?);
            if d == 0.0 {
                return None;
            }
            n / d
        }
        None => s.trim().parse().ok()?,
    };
    v.is_finite().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet_with(description: &str) -> String {
        format!(
            "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\
             <x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\
             {description}</rdf:RDF></x:xmpmeta>{}<?xpacket end=\"w\"?>\0\0",
            " ".repeat(200)
        )
    }

    #[test]
    fn coordinates_in_every_form_xmp_writes() {
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(close(coordinate("43,28.0468N", 'N', 'S', 90.0), 43.0 + 28.0468 / 60.0));
        assert!(close(coordinate("43,28,2.81N", 'N', 'S', 90.0), 43.0 + 28.0 / 60.0 + 2.81 / 3600.0));
        assert!(close(coordinate("22,54,30S", 'N', 'S', 90.0), -(22.0 + 54.0 / 60.0 + 30.0 / 3600.0)));
        assert!(close(coordinate("043,12.0w", 'E', 'W', 180.0), -43.2));
        assert!(close(coordinate("11.885127E", 'E', 'W', 180.0), 11.885127));
        assert!(close(coordinate("-22.9", 'N', 'S', 90.0), -22.9));
        for bad in ["", "N", "91,0N", "43,60N", "43,28,61N", "43,28E", "-43,28N", "43,,1N", "1,2,3,4N", "abcN", "NaN"] {
            assert_eq!(coordinate(bad, 'N', 'S', 90.0), None, "{bad:?}");
        }
        assert_eq!(rational("1234/10"), Some(123.4));
        assert_eq!(rational("5/0"), None);
    }

    fn attrs_packet() -> String {
        packet_with(
            "<rdf:Description rdf:about=\"\" xmlns:exif=\"http://ns.adobe.com/exif/1.0/\" \
             exif:GPSLatitude=\"48,51.3984N\" exif:GPSLongitude=\"2,17,40.2E\" exif:GPSAltitude=\"355/10\" \
             exif:GPSAltitudeRef=\"1\"/>",
        )
    }

    #[test]
    fn attributes_and_elements_are_read_in_the_exif_namespace_only() {
        let attrs = attrs_packet();
        let g = gps_of_packet(attrs.as_bytes());
        let p = g.position.expect("position");
        assert!(g.present && g.warning.is_none());
        assert!(
            (p.latitude - (48.0 + 51.3984 / 60.0)).abs() < 1e-9
                && (p.longitude - (2.0 + 17.0 / 60.0 + 40.2 / 3600.0)).abs() < 1e-9
        );
        assert_eq!(p.altitude_m, Some(-35.5));

        // Element form, another prefix for the same namespace.
        let elements = packet_with(
            "<rdf:Description rdf:about=\"\" xmlns:e=\"http://ns.adobe.com/exif/1.0/\">\
             <e:GPSLatitude>22,54.5S</e:GPSLatitude><e:GPSLongitude>43,12W</e:GPSLongitude></rdf:Description>",
        );
        let p = gps_of_packet(elements.as_bytes()).position.expect("position");
        assert!((p.latitude + 22.908_333_333).abs() < 1e-6 && (p.longitude + 43.2).abs() < 1e-9, "{p:?}");

        // The same names in another namespace are not a position.
        let other = packet_with(
            "<rdf:Description xmlns:o=\"http://example.com/other/\" o:GPSLatitude=\"1,0N\" o:GPSLongitude=\"1,0E\"/>",
        );
        assert_eq!(gps_of_packet(other.as_bytes()), XmpGps::default());

        let malformed = packet_with(
            "<rdf:Description xmlns:exif=\"http://ns.adobe.com/exif/1.0/\" exif:GPSLatitude=\"north\" \
             exif:GPSLongitude=\"2,17E\"/>",
        );
        let g = gps_of_packet(malformed.as_bytes());
        assert!(g.present && g.position.is_none() && g.warning.is_some(), "{g:?}");
    }

    #[test]
    fn a_webp_xmp_chunk_is_read_after_odd_sized_chunks() {
        let chunk = |id: &[u8; 4], data: &[u8]| {
            let mut c = id.to_vec();
            c.extend_from_slice(&(data.len() as u32).to_le_bytes());
            c.extend_from_slice(data);
            if data.len() % 2 == 1 {
                c.push(0);
            }
            c
        };
        let body = [
            b"WEBP".to_vec(),
            chunk(b"VP8X", &[0x04, 0, 0, 0, 9, 0, 0, 9, 0, 0]),
            chunk(b"ICCP", b"odd"),
            chunk(b"XMP ", attrs_packet().as_bytes()),
        ]
        .concat();
        let webp = [b"RIFF".to_vec(), (body.len() as u32).to_le_bytes().to_vec(), body].concat();
        let g = read_gps(&webp, Format::Webp);
        assert!(g.present && g.position.is_some(), "{g:?}");
        assert_eq!(read_gps(&webp[..webp.len() - 40], Format::Webp), XmpGps::default(), "a cut chunk is no packet");
    }

    #[test]
    fn hostile_packets_are_warnings() {
        // An entity declaration (the start of a billion-laughs packet) is refused, not expanded.
        let laughs = "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;\">]>\
                      <x:xmpmeta xmlns:x=\"adobe:ns:meta/\">&b;</x:xmpmeta>";
        let g = gps_of_packet(laughs.as_bytes());
        assert!(!g.present && g.warning.is_some(), "{g:?}");
        let g = gps_of_packet(b"\xff\xfe<x/>");
        assert!(g.warning.is_some_and(|w| w.contains("UTF-8")));
        let deep = format!("<a>{}</a>", "<b/>".repeat(MAX_XMP_NODES as usize + 1));
        assert!(gps_of_packet(deep.as_bytes()).warning.is_some());
        // A deflated PNG packet that inflates past the cap is not inflated further.
        let png = |flag: u8, text: &[u8]| {
            let data = [PNG_XMP_KEYWORD, &[0, flag, 0, 0, 0], text].concat();
            let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
            png.extend_from_slice(&(data.len() as u32).to_be_bytes());
            png.extend_from_slice(b"iTXt");
            png.extend_from_slice(&data);
            png.extend_from_slice(&[0; 4]);
            png
        };
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut z, &vec![b' '; MAX_XMP_BYTES + 1]).unwrap();
        let bomb = png(1, &z.finish().unwrap());
        assert!(read_gps(&bomb, Format::Png).warning.is_some_and(|w| w.contains("inflate")));
        let plain = png(0, attrs_packet().as_bytes());
        assert!(read_gps(&plain, Format::Png).position.is_some());
    }
}
