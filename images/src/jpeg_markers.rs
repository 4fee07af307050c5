//! A JPEG marker walker: the frame header (SOF) before decoding, the Adobe colour transform, and
//! whether the file really ends with EOI. zune-jpeg (and so `image`) return `Ok` with grey fill for
//! a truncated JPEG; the walk is how we tell.

use crate::error::ImageError;

/// What the marker segments before the first scan say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JpegInfo {
    pub width: u16,
    pub height: u16,
    pub components: u8,
    pub precision: u8,
    pub progressive: bool,
    /// The Adobe APP14 transform byte (0 CMYK, 1 YCbCr, 2 YCCK) when the segment is present.
    pub adobe_transform: Option<u8>,
}

/// One marker segment: its marker byte and its payload (without the length field).
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// The byte after 0xFF (0xE1 for APP1, 0xDA for SOS …).
    pub marker: u8,
    /// Payload, without the two length bytes.
    pub data: &'a [u8],
}

/// Marker segments from SOI up to and including the first SOS (the metadata part of the file).
/// Stops early on malformed input.
pub fn header_segments(bytes: &[u8]) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return out;
    }
    let mut pos = 2;
    while let Some((marker, data, next)) = next_segment(bytes, pos) {
        out.push(Segment { marker, data });
        if marker == 0xDA || marker == 0xD9 {
            break;
        }
        pos = next;
    }
    out
}

/// Reads the next marker segment at `pos` (skipping fill bytes): (marker, payload, next position).
fn next_segment(bytes: &[u8], mut pos: usize) -> Option<(u8, &[u8], usize)> {
    if *bytes.get(pos)? != 0xFF {
        return None;
    }
    while *bytes.get(pos)? == 0xFF {
        pos += 1;
    }
    let marker = *bytes.get(pos)?;
    pos += 1;
    if is_standalone(marker) {
        return Some((marker, &[], pos));
    }
    let len = usize::from(u16::from_be_bytes([*bytes.get(pos)?, *bytes.get(pos + 1)?]));
    if len < 2 {
        return None;
    }
    let data = bytes.get(pos + 2..pos + len)?;
    Some((marker, data, pos + len))
}

fn is_standalone(marker: u8) -> bool {
    matches!(marker, 0x01 | 0xD0..=0xD9)
}

fn is_sof(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF)
}

/// Parses the frame header. Fails on a file with no SOF before the first scan.
pub(crate) fn scan_header(bytes: &[u8]) -> Result<JpegInfo, ImageError> {
    let mut adobe_transform = None;
    let mut pos = 2;
    loop {
        let Some((marker, data, next)) = next_segment(bytes, pos) else {
            return Err(if pos >= bytes.len() || next_segment_truncated(bytes, pos) {
                ImageError::Truncated("JPEG ends inside its header".into())
            } else {
                ImageError::Corrupt("JPEG header is malformed (no frame header before the data)".into())
            });
        };
        match marker {
            0xEE if data.len() >= 12 && data.starts_with(b"Adobe") => adobe_transform = Some(data[11]),
            m if is_sof(m) => {
                if data.len() < 6 {
                    return Err(ImageError::Corrupt("JPEG frame header too short".into()));
                }
                if matches!(m, 0xC3 | 0xC7 | 0xCB | 0xCF) {
                    return Err(ImageError::Unsupported("jpeg (lossless)".into()));
                }
                return Ok(JpegInfo {
                    precision: data[0],
                    height: u16::from_be_bytes([data[1], data[2]]),
                    width: u16::from_be_bytes([data[3], data[4]]),
                    components: data[5],
                    progressive: matches!(m, 0xC2 | 0xC6 | 0xCA | 0xCE),
                    adobe_transform,
                });
            }
            0xDA | 0xD9 => return Err(ImageError::Corrupt("JPEG has no frame header".into())),
            _ => {}
        }
        pos = next;
    }
}

fn next_segment_truncated(bytes: &[u8], pos: usize) -> bool {
    // A segment whose declared length runs past the end of the file.
    bytes.get(pos) == Some(&0xFF) && bytes.len() < pos + 4 + 65_535
}

/// True when the entropy-coded data is followed by an EOI marker, i.e. the file is complete.
/// Walks every segment and scan (progressive files have several), so trailing bytes after EOI
/// (camera maker notes, appended data) are fine and a cut file is caught.
pub(crate) fn ends_with_eoi(bytes: &[u8]) -> bool {
    let mut pos = 2;
    loop {
        let Some((marker, _data, next)) = next_segment(bytes, pos) else { return false };
        match marker {
            0xD9 => return true,
            0xDA => {
                // Entropy-coded data: runs until a 0xFF that is not stuffing (00) nor a restart marker.
                let mut p = next;
                loop {
                    let Some(off) = bytes.get(p..).and_then(|rest| rest.iter().position(|&b| b == 0xFF)) else {
                        return false;
                    };
                    p += off;
                    match bytes.get(p + 1) {
                        None => return false,
                        Some(0x00) | Some(0xD0..=0xD7) | Some(0xFF) => p += 1,
                        Some(_) => break,
                    }
                }
                pos = p;
            }
            _ => pos = next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_jpeg() -> Vec<u8> {
        let img = image::RgbImage::from_fn(32, 16, |x, y| image::Rgb([(x * 8) as u8, (y * 16) as u8, 128]));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut out).encode_image(&img).unwrap();
        out
    }

    #[test]
    fn reads_sof_and_eoi() {
        let jpeg = tiny_jpeg();
        let info = scan_header(&jpeg).unwrap();
        assert_eq!((info.width, info.height, info.components), (32, 16, 3));
        assert!(ends_with_eoi(&jpeg));
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"trailing garbage");
        assert!(ends_with_eoi(&trailing));
        assert!(!ends_with_eoi(&jpeg[..jpeg.len() - 2]));
        assert!(!ends_with_eoi(&jpeg[..jpeg.len() / 2]));
        assert!(header_segments(&jpeg).iter().any(|s| s.marker == 0xDA));
    }

    #[test]
    fn header_cut_short_is_truncated() {
        let jpeg = tiny_jpeg();
        assert!(matches!(scan_header(&jpeg[..10]), Err(ImageError::Truncated(_))));
    }
}
