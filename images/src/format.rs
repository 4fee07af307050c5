//! Format sniffing and header reading: what the bytes are and how big they say they are, found
//! without decoding a single pixel, so a pixel flood or a decompression bomb is refused in
//! microseconds and before any large allocation.

use serde::{Deserialize, Serialize};

use crate::error::{ImageError, catch_decoder_panic};
use crate::limits::Limits;

/// The raster formats this crate decodes. Anything else is [`ImageError::Unsupported`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JPEG (baseline, progressive; greyscale, YCbCr, CMYK and YCCK).
    Jpeg,
    /// PNG, including APNG (first frame), every bit depth, palette and interlacing.
    Png,
    /// WebP lossy, lossless, with alpha, animated (first frame).
    Webp,
    /// GIF (first frame).
    Gif,
    /// TIFF (first page).
    Tiff,
    /// AVIF (AV1 in HEIF): the primary image, 8/10/12-bit, with its alpha plane; decoded by
    /// libdav1d (see [`crate::avif`]).
    Avif,
}

impl Format {
    /// The lower-case name used in errors, logs and serialized results.
    pub fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::Webp => "webp",
            Format::Gif => "gif",
            Format::Tiff => "tiff",
            Format::Avif => "avif",
        }
    }

    /// The `image` crate's format for the formats it decodes here; AVIF is not one of them
    /// (this crate decodes it itself, [`crate::avif`]).
    pub(crate) fn to_image_format(self) -> image::ImageFormat {
        match self {
            Format::Jpeg => image::ImageFormat::Jpeg,
            Format::Png => image::ImageFormat::Png,
            Format::Webp => image::ImageFormat::WebP,
            Format::Gif => image::ImageFormat::Gif,
            Format::Tiff => image::ImageFormat::Tiff,
            Format::Avif => image::ImageFormat::Avif,
        }
    }
}

/// Detects the format from the leading bytes (never from a file name). Known formats that this
/// crate refuses come back as `Unsupported("heic")`, `Unsupported("svg")` …
pub fn sniff(bytes: &[u8]) -> Result<Format, ImageError> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if starts(&[0xFF, 0xD8, 0xFF]) {
        return Ok(Format::Jpeg);
    }
    if starts(b"\x89PNG\r\n\x1a\n") {
        return Ok(Format::Png);
    }
    if bytes.len() >= 12 && starts(b"RIFF") && &bytes[8..12] == b"WEBP" {
        return Ok(Format::Webp);
    }
    if starts(b"GIF87a") || starts(b"GIF89a") {
        return Ok(Format::Gif);
    }
    if starts(b"II*\0") || starts(b"MM\0*") {
        return Ok(Format::Tiff);
    }
    if iso_bmff_brands(bytes).is_some_and(|brands| brands.iter().any(|b| *b == b"avif" || *b == b"avis")) {
        return Ok(Format::Avif);
    }
    Err(ImageError::Unsupported(unsupported_name(bytes).to_string()))
}

/// The major brand, then the compatible brands (up to the `ftyp` box size, at most 64 bytes) of an
/// ISO-BMFF file; `None` when it does not start with an `ftyp` box.
fn iso_bmff_brands(bytes: &[u8]) -> Option<Vec<&[u8]>> {
    if bytes.len() < 12 || &bytes[4..8] != b"ftyp" {
        return None;
    }
    let box_len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let end = box_len.clamp(12, 64).min(bytes.len());
    Some(std::iter::once(&bytes[8..12]).chain(bytes.get(16..end).unwrap_or(&[]).chunks_exact(4)).collect())
}

/// Names the formats we recognise but do not decode, for a clear dead-letter message.
fn unsupported_name(bytes: &[u8]) -> &'static str {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if let Some(brands) = iso_bmff_brands(bytes) {
        let has = |names: &[&[u8]]| brands.iter().any(|b| names.contains(b));
        if has(&[b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"]) {
            return "heic";
        }
        if has(&[b"jxl "]) {
            return "jxl";
        }
        return "iso-bmff";
    }
    if starts(&[0xFF, 0x0A]) || starts(b"\0\0\0\x0cJXL \r\n\x87\n") {
        return "jxl";
    }
    if starts(b"BM") {
        return "bmp";
    }
    if starts(&[0, 0, 1, 0]) {
        return "ico";
    }
    if starts(b"qoif") {
        return "qoi";
    }
    if starts(b"8BPS") {
        return "psd";
    }
    if starts(b"%PDF") {
        return "pdf";
    }
    if starts(b"DDS ") {
        return "dds";
    }
    if starts(&[0x76, 0x2F, 0x31, 0x01]) {
        return "exr";
    }
    if starts(b"#?RADIANCE") || starts(b"#?RGBE") {
        return "hdr";
    }
    if starts(&[0xFF, 0xD8]) {
        return "jpeg (no marker after SOI)";
    }
    let head = &bytes[..bytes.len().min(1024)];
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with('<') && text.contains("<svg") {
        return "svg";
    }
    if bytes.is_empty() {
        return "empty file";
    }
    "unknown"
}

/// What the header says, read before any pixel is decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The detected format.
    pub format: Format,
    /// Stored width in pixels (before EXIF orientation).
    pub width: u32,
    /// Stored height in pixels (before EXIF orientation).
    pub height: u32,
    /// Number of frames when cheap to know (APNG, animated WebP, GIF); `None` otherwise.
    pub frames: Option<u32>,
    /// Channels the decoder produces (1 grey … 4 RGBA/CMYK).
    pub channels: u8,
    /// Bytes per sample the decoder produces (1 or 2; 4 for float TIFF).
    pub bytes_per_sample: u8,
    /// Progressive JPEG (the decoder keeps all coefficients in memory) or interlaced PNG.
    pub progressive: bool,
    /// A CMYK or YCCK JPEG.
    pub cmyk: bool,
}

impl Header {
    /// Width × height.
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// Sniffs the format and reads the dimensions, then checks them against `limits`. Cheap: it reads
/// headers only (for JPEG it walks the marker segments up to the first scan).
pub fn read_header(bytes: &[u8], limits: &Limits) -> Result<Header, ImageError> {
    if bytes.len() as u64 > limits.max_bytes {
        return Err(ImageError::TooLarge(format!("{} bytes is over the {} byte limit", bytes.len(), limits.max_bytes)));
    }
    let format = sniff(bytes)?;
    let header = match format {
        Format::Jpeg => {
            let info = crate::jpeg_markers::scan_header(bytes)?;
            Header {
                format,
                width: u32::from(info.width),
                height: u32::from(info.height),
                frames: None,
                channels: if info.components == 1 { 1 } else { info.components.min(4) },
                bytes_per_sample: if info.precision > 8 { 2 } else { 1 },
                progressive: info.progressive,
                cmyk: info.components == 4,
            }
        }
        Format::Avif => crate::avif::read_header(bytes)?,
        _ => generic_header(bytes, format, limits)?,
    };
    limits.check(&header)?;
    Ok(header)
}

/// Header via the `image` decoder constructors, which read no pixel data.
fn generic_header(bytes: &[u8], format: Format, limits: &Limits) -> Result<Header, ImageError> {
    use image::ImageDecoder;
    let (width, height, color) = catch_decoder_panic("header reader", || {
        let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format.to_image_format());
        // Only dimension caps here: a header over them is refused by the decoder constructor.
        let mut l = image::Limits::default();
        l.max_image_width = Some(limits.max_width);
        l.max_image_height = Some(limits.max_height);
        l.max_alloc = Some(limits.max_alloc_bytes());
        reader.limits(l);
        let decoder = reader.into_decoder().map_err(ImageError::from_decode)?;
        let (w, h) = decoder.dimensions();
        Ok((w, h, decoder.color_type()))
    })?;
    let frames = match format {
        Format::Png => png_frame_count(bytes),
        Format::Webp => webp_frame_count(bytes),
        Format::Gif => Some(gif_frame_count(bytes)),
        _ => None,
    };
    let progressive = format == Format::Png && bytes.get(28) == Some(&1);
    Ok(Header {
        format,
        width,
        height,
        frames,
        channels: color.channel_count(),
        bytes_per_sample: color.bytes_per_pixel() / color.channel_count(),
        progressive,
        cmyk: false,
    })
}

/// APNG `acTL` frame count, read from the chunks before the first `IDAT`; `Some(1)` for a still PNG.
fn png_frame_count(bytes: &[u8]) -> Option<u32> {
    let mut pos = 8usize;
    while pos + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().ok()?) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        if kind == b"acTL" {
            let data = bytes.get(pos + 8..pos + 12)?;
            return Some(u32::from_be_bytes(data.try_into().ok()?));
        }
        if kind == b"IDAT" {
            return Some(1);
        }
        pos = pos.checked_add(12)?.checked_add(len)?;
    }
    None
}

/// Counts `ANMF` chunks of an animated WebP; `Some(1)` for a still one.
fn webp_frame_count(bytes: &[u8]) -> Option<u32> {
    let mut pos = 12usize;
    let mut frames = 0u32;
    let mut animated = false;
    while pos + 8 <= bytes.len() {
        let kind = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().ok()?) as usize;
        match kind {
            b"VP8X" => animated = bytes.get(pos + 8).is_some_and(|f| f & 0x02 != 0),
            b"ANMF" => frames += 1,
            _ => {}
        }
        // Chunks are padded to an even length.
        pos = pos.checked_add(8)?.checked_add(len + (len & 1))?;
    }
    Some(if animated { frames.max(1) } else { 1 })
}

/// Counts GIF image descriptors by skipping over data sub-blocks (no LZW decoding).
fn gif_frame_count(bytes: &[u8]) -> u32 {
    let mut frames = 0u32;
    let Some(&flags) = bytes.get(10) else { return 0 };
    let mut pos = 13usize;
    if flags & 0x80 != 0 {
        pos += 3 * (1usize << ((flags & 0x07) + 1));
    }
    let skip_sub_blocks = |mut p: usize| -> Option<usize> {
        loop {
            let n = *bytes.get(p)? as usize;
            p += 1;
            if n == 0 {
                return Some(p);
            }
            p += n;
        }
    };
    while let Some(&b) = bytes.get(pos) {
        match b {
            0x21 => match skip_sub_blocks(pos + 2) {
                Some(p) => pos = p,
                None => break,
            },
            0x2C => {
                frames += 1;
                let Some(&f) = bytes.get(pos + 9) else { break };
                pos += 10;
                if f & 0x80 != 0 {
                    pos += 3 * (1usize << ((f & 0x07) + 1));
                }
                match skip_sub_blocks(pos + 1) {
                    Some(p) => pos = p,
                    None => break,
                }
            }
            _ => break,
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_unsupported_names() {
        let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic";
        assert_eq!(sniff(heic), Err(ImageError::Unsupported("heic".into())));
        let avif = b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf";
        assert_eq!(sniff(avif), Ok(Format::Avif));
        // A HEIF whose compatible brands name AVIF (libheif writes `mif1` first).
        let avif = b"\0\0\0\x1cftypmif1\0\0\0\0mif1avifmiaf";
        assert_eq!(sniff(avif), Ok(Format::Avif));
        let svg = b"<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"/>";
        assert_eq!(sniff(svg), Err(ImageError::Unsupported("svg".into())));
        assert_eq!(sniff(b"BM\0\0"), Err(ImageError::Unsupported("bmp".into())));
        assert_eq!(sniff(b""), Err(ImageError::Unsupported("empty file".into())));
        assert_eq!(sniff(b"hello"), Err(ImageError::Unsupported("unknown".into())));
    }
}
