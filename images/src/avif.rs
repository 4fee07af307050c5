//! AVIF input: AV1 still images in a HEIF container.
//!
//! - The container by `avif-parse` (fallible allocations; it reads the AV1 sequence header, whose
//!   maximum frame size is what the decoder will allocate, so the pixel caps are checked on it
//!   before any pixel buffer exists).
//! - The pixels by libdav1d (Debian's `libdav1d-dev`, see `scripts/build-deps.sh`) through the
//!   `dav1d` crate, one thread, film grain applied, with libdav1d's own frame-size limit set to
//!   the pixel cap as a second fence.
//! - YUV → 8-bit RGB(A) by `yuv` (BT.601/709/2020, limited and full range, 4:2:0/4:2:2/4:4:4,
//!   8/10/12 bits).
//! - The item properties neither crate hands out (`colr` CICP or ICC, `irot`, `imir`), read here
//!   from the primary item's associations.
//!
//! Not handled: HDR transfer functions (PQ, HLG) are not tone-mapped (a warning says so), `clap`
//! cropping is ignored, grid (tiled) images and image sequences beyond the primary item are
//! refused by the container parser with a clear error.

use dav1d::PlanarImageComponent as Plane;
use image::{DynamicImage, RgbImage, RgbaImage, metadata::Orientation};
use yuv::{YuvPlanarImage, YuvRange, YuvStandardMatrix};

use crate::error::{ImageError, catch_decoder_panic};
use crate::format::{Format, Header};
use crate::limits::Limits;

/// The header of an AVIF file, from the AV1 sequence header of its primary item (and its alpha
/// item): no pixel is decoded.
pub(crate) fn read_header(bytes: &[u8]) -> Result<Header, ImageError> {
    let data = parse(bytes)?;
    let meta = data.primary_item_metadata().map_err(container_error)?;
    let alpha = data.alpha_item_metadata().map_err(container_error)?;
    if let Some(a) = &alpha
        && (a.max_frame_width != meta.max_frame_width || a.max_frame_height != meta.max_frame_height)
    {
        return Err(ImageError::Corrupt(format!(
            "AVIF alpha plane is {}x{}, the image {}x{}",
            a.max_frame_width, a.max_frame_height, meta.max_frame_width, meta.max_frame_height
        )));
    }
    Ok(Header {
        format: Format::Avif,
        width: meta.max_frame_width.get(),
        height: meta.max_frame_height.get(),
        frames: None,
        channels: if alpha.is_some() { 4 } else { 3 },
        bytes_per_sample: if meta.bit_depth > 8 { 2 } else { 1 },
        progressive: false,
        cmyk: false,
    })
}

/// Decoded AVIF pixels: 8-bit RGB or RGBA (not yet upright), the embedded ICC profile if any,
/// the orientation from `irot`/`imir`, and warnings.
pub(crate) struct AvifPixels {
    pub(crate) image: DynamicImage,
    pub(crate) icc: Option<Vec<u8>>,
    pub(crate) orientation: Orientation,
    pub(crate) warnings: Vec<String>,
}

/// Decodes the primary item (and its alpha) of an AVIF whose header passed the limits.
pub(crate) fn decode(bytes: &[u8], header: &Header, limits: &Limits) -> Result<AvifPixels, ImageError> {
    let data = parse(bytes)?;
    let mut warnings = Vec::new();
    let props = match primary_properties(bytes) {
        Ok(p) => p,
        Err(e) => {
            warnings.push(format!("AVIF item properties unreadable ({e}): colours taken as BT.601 sRGB"));
            Properties::default()
        }
    };
    let colour = decode_av1(&data.primary_item, header, limits, "image")?;
    let coding = yuv_coding(props.nclx.as_ref(), &mut warnings);
    let mut image = to_rgb(&colour, coding)?;
    if let Some(alpha_item) = &data.alpha_item {
        let alpha = decode_av1(alpha_item, header, limits, "alpha plane")?;
        if (alpha.width(), alpha.height()) != (colour.width(), colour.height()) {
            return Err(ImageError::Corrupt(format!(
                "AVIF alpha plane is {}x{}, the image {}x{}",
                alpha.width(),
                alpha.height(),
                colour.width(),
                colour.height()
            )));
        }
        let mut rgba = image.into_rgba8();
        put_alpha(&mut rgba, &alpha, data.premultiplied_alpha);
        image = DynamicImage::ImageRgba8(rgba);
    }
    if let Some(nclx) = &props.nclx
        && matches!(nclx.transfer, 16 | 18)
    {
        warnings.push("AVIF with an HDR transfer function (PQ/HLG): not tone-mapped".into());
    }
    let icc = match (props.icc, props.nclx.as_ref()) {
        (Some(icc), _) => Some(icc),
        (None, Some(nclx)) => cicp_profile(nclx, &mut warnings),
        (None, None) => None,
    };
    Ok(AvifPixels { image, icc, orientation: orientation(props.rotation, props.mirror), warnings })
}

/// The container, after a walk over the top-level boxes: a file cut inside one (the usual
/// truncation: inside `mdat`) is `Truncated`, said before the parser sees it. The parser runs
/// under `catch_unwind` (it has debug assertions on malformed boxes).
fn parse(bytes: &[u8]) -> Result<avif_parse::AvifData, ImageError> {
    let mut rest = bytes;
    while !rest.is_empty() {
        match next_box(rest) {
            Ok((_, after)) => rest = after,
            Err(e) => return Err(ImageError::Truncated(format!("AVIF data ends early: {e}"))),
        }
    }
    catch_decoder_panic("AVIF container parser", || {
        avif_parse::read_avif(&mut std::io::Cursor::new(bytes)).map_err(container_error)
    })
}

fn container_error(e: avif_parse::Error) -> ImageError {
    match e {
        avif_parse::Error::UnexpectedEOF => ImageError::Truncated("AVIF data ends inside a box".into()),
        avif_parse::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Truncated("AVIF data ends inside a box".into())
        }
        avif_parse::Error::Unsupported(what) => ImageError::Unsupported(format!("avif ({what})")),
        avif_parse::Error::OutOfMemory => ImageError::TooLarge("AVIF container: out of memory".into()),
        other => ImageError::Corrupt(format!("AVIF container: {other}")),
    }
}

/// One AV1 frame through libdav1d, single-threaded, at most the header's size.
fn decode_av1(obus: &[u8], header: &Header, limits: &Limits, what: &str) -> Result<dav1d::Picture, ImageError> {
    let corrupt = |e: dav1d::Error| ImageError::Corrupt(format!("AVIF {what}: AV1 decoder: {e}"));
    let mut settings = dav1d::Settings::new();
    settings.set_n_threads(1);
    settings.set_max_frame_delay(1);
    settings.set_apply_grain(true);
    // libdav1d refuses frames over this many pixels itself (0 would mean no limit).
    settings.set_frame_size_limit(u32::try_from(limits.max_pixels).unwrap_or(u32::MAX).max(1));
    let mut decoder = dav1d::Decoder::with_settings(&settings).map_err(corrupt)?;
    let mut pending = match decoder.send_data(obus.to_vec(), None, None, None) {
        Ok(()) => false,
        Err(dav1d::Error::Again) => true,
        Err(e) => return Err(corrupt(e)),
    };
    // One still frame: a few rounds at most; a decoder that has all the data and still no
    // picture has seen an incomplete frame.
    let mut picture = None;
    for _ in 0..16 {
        match decoder.get_picture() {
            Ok(p) => {
                picture = Some(p);
                break;
            }
            Err(dav1d::Error::Again) if pending => match decoder.send_pending_data() {
                Ok(()) => pending = false,
                Err(dav1d::Error::Again) => {}
                Err(e) => return Err(corrupt(e)),
            },
            Err(dav1d::Error::Again) => break,
            Err(e) => return Err(corrupt(e)),
        }
    }
    let picture =
        picture.ok_or_else(|| ImageError::Truncated(format!("AVIF {what}: the AV1 data holds no complete frame")))?;
    if picture.width() == 0
        || picture.height() == 0
        || picture.width() > header.width
        || picture.height() > header.height
    {
        return Err(ImageError::Corrupt(format!(
            "AVIF {what}: frame of {}x{} in a sequence of at most {}x{}",
            picture.width(),
            picture.height(),
            header.width,
            header.height
        )));
    }
    Ok(picture)
}

/// How the colour planes are coded.
#[derive(Debug, Clone, Copy)]
struct Coding {
    range: YuvRange,
    matrix: YuvStandardMatrix,
    /// Matrix coefficients 0: the planes are G, B, R (lossless RGB AVIF).
    identity: bool,
}

/// The YUV range and matrix from the `colr` CICP box (BT.601 full range without one, as libavif).
fn yuv_coding(nclx: Option<&Nclx>, warnings: &mut Vec<String>) -> Coding {
    let Some(n) = nclx else {
        return Coding { range: YuvRange::Full, matrix: YuvStandardMatrix::Bt601, identity: false };
    };
    let range = if n.full_range { YuvRange::Full } else { YuvRange::Limited };
    let matrix = match n.matrix {
        1 => YuvStandardMatrix::Bt709,
        2 | 5 | 6 => YuvStandardMatrix::Bt601,
        4 => YuvStandardMatrix::Fcc,
        7 => YuvStandardMatrix::Smpte240,
        9 | 10 => YuvStandardMatrix::Bt2020,
        // 0 (identity) never reaches the matrix converter.
        0 => YuvStandardMatrix::Bt601,
        other => {
            warnings.push(format!("AVIF matrix coefficients {other} not supported: BT.601 used"));
            YuvStandardMatrix::Bt601
        }
    };
    Coding { range, matrix, identity: n.matrix == 0 }
}

/// An ICC profile for CICP colour primaries other than sRGB's (Display P3, BT.2020 …), so the
/// common ICC → sRGB path converts them; `None` for sRGB/BT.709 or unspecified primaries.
fn cicp_profile(nclx: &Nclx, warnings: &mut Vec<String>) -> Option<Vec<u8>> {
    use moxcms::{CicpColorPrimaries, CicpProfile, ColorProfile, MatrixCoefficients, TransferCharacteristics};
    if matches!(nclx.primaries, 1 | 2) || matches!(nclx.transfer, 16 | 18) {
        return None;
    }
    let primaries = CicpColorPrimaries::try_from(nclx.primaries as u8).ok()?;
    // Unspecified transfer (2): the sRGB curve, what such files are made with.
    let transfer = TransferCharacteristics::try_from(if nclx.transfer == 2 { 13 } else { nclx.transfer as u8 }).ok()?;
    let cicp = CicpProfile {
        color_primaries: primaries,
        transfer_characteristics: transfer,
        matrix_coefficients: MatrixCoefficients::Identity,
        full_range: true,
    };
    match ColorProfile::new_from_cicp(cicp).encode() {
        Ok(icc) => Some(icc),
        Err(e) => {
            warnings.push(format!("AVIF colour primaries {}: no profile ({e}); taken as sRGB", nclx.primaries));
            None
        }
    }
}

/// Bytes per sample of a picture (1 for 8-bit, 2 for 10/12-bit).
fn sample_bytes(p: &dav1d::Picture) -> usize {
    if p.bit_depth() > 8 { 2 } else { 1 }
}

/// A high-bit-depth plane as `u16` samples (libdav1d stores them little-endian in native `u16`s).
fn plane_u16(p: &dav1d::Picture, c: Plane) -> Vec<u16> {
    p.plane(c).chunks_exact(2).map(|b| u16::from_ne_bytes([b[0], b[1]])).collect()
}

/// The colour planes as 8-bit RGB (8-bit sources) or RGBA (10/12-bit sources; the alpha is opaque).
fn to_rgb(p: &dav1d::Picture, coding: Coding) -> Result<DynamicImage, ImageError> {
    use dav1d::PixelLayout::{I400, I420, I422, I444};
    let (w, h) = (p.width(), p.height());
    let convert = |e: yuv::YuvError| ImageError::Corrupt(format!("AVIF: YUV conversion: {e}"));
    let n = w as usize * h as usize;
    let bytes = sample_bytes(p);
    let Coding { range, matrix, identity } = coding;
    if p.pixel_layout() == I400 || (identity && p.pixel_layout() == I444) {
        return Ok(DynamicImage::ImageRgb8(manual_rgb(p, range)));
    }
    if bytes == 1 {
        let (y, u, v) = (p.plane(Plane::Y), p.plane(Plane::U), p.plane(Plane::V));
        let planar = YuvPlanarImage {
            y_plane: &y,
            y_stride: p.stride(Plane::Y),
            u_plane: &u,
            u_stride: p.stride(Plane::U),
            v_plane: &v,
            v_stride: p.stride(Plane::V),
            width: w,
            height: h,
        };
        let mut rgb = vec![0u8; n * 3];
        match p.pixel_layout() {
            I420 => yuv::yuv420_to_rgb(&planar, &mut rgb, w * 3, range, matrix),
            I422 => yuv::yuv422_to_rgb(&planar, &mut rgb, w * 3, range, matrix),
            I444 | I400 => yuv::yuv444_to_rgb(&planar, &mut rgb, w * 3, range, matrix),
        }
        .map_err(convert)?;
        let buffer = RgbImage::from_raw(w, h, rgb).ok_or_else(|| ImageError::Corrupt("AVIF: short buffer".into()))?;
        return Ok(DynamicImage::ImageRgb8(buffer));
    }
    let (y, u, v) = (plane_u16(p, Plane::Y), plane_u16(p, Plane::U), plane_u16(p, Plane::V));
    let planar = YuvPlanarImage {
        y_plane: &y,
        y_stride: p.stride(Plane::Y) / 2,
        u_plane: &u,
        u_stride: p.stride(Plane::U) / 2,
        v_plane: &v,
        v_stride: p.stride(Plane::V) / 2,
        width: w,
        height: h,
    };
    let mut rgba = vec![0u8; n * 4];
    let twelve = p.bit_depth() == 12;
    match (p.pixel_layout(), twelve) {
        (I420, false) => yuv::i010_to_rgba(&planar, &mut rgba, w * 4, range, matrix),
        (I420, true) => yuv::i012_to_rgba(&planar, &mut rgba, w * 4, range, matrix),
        (I422, false) => yuv::i210_to_rgba(&planar, &mut rgba, w * 4, range, matrix),
        (I422, true) => yuv::i212_to_rgba(&planar, &mut rgba, w * 4, range, matrix),
        (I444 | I400, false) => yuv::i410_to_rgba(&planar, &mut rgba, w * 4, range, matrix),
        (I444 | I400, true) => yuv::i412_to_rgba(&planar, &mut rgba, w * 4, range, matrix),
    }
    .map_err(convert)?;
    let buffer = RgbaImage::from_raw(w, h, rgba).ok_or_else(|| ImageError::Corrupt("AVIF: short buffer".into()))?;
    Ok(DynamicImage::ImageRgba8(buffer))
}

/// Greyscale (4:0:0) or identity-matrix (GBR 4:4:4) pictures, converted sample by sample.
fn manual_rgb(p: &dav1d::Picture, range: YuvRange) -> RgbImage {
    let (w, h) = (p.width() as usize, p.height() as usize);
    let depth = p.bit_depth() as u32;
    let max = f32::from(((1u32 << depth) - 1) as u16);
    let to8 = |v: u32, luma: bool| -> u8 {
        let v = v as f32;
        let scaled = match range {
            YuvRange::Full => v / max,
            YuvRange::Limited => {
                let (lo, span) = if luma { (16.0, 219.0) } else { (16.0, 224.0) };
                let k = f32::from(1u16 << (depth - 8));
                (v / k - lo) / span
            }
        };
        (scaled.clamp(0.0, 1.0) * 255.0).round() as u8
    };
    let planes: Vec<(Vec<u8>, usize)> = [Plane::Y, Plane::U, Plane::V]
        .into_iter()
        .take(if p.pixel_layout() == dav1d::PixelLayout::I400 { 1 } else { 3 })
        .map(|c| (p.plane(c).to_vec(), p.stride(c) as usize))
        .collect();
    let bytes = sample_bytes(p);
    let sample = |plane: usize, x: usize, y: usize| -> u32 {
        let (data, stride) = &planes[plane];
        let i = y * stride + x * bytes;
        if bytes == 1 { u32::from(data[i]) } else { u32::from(u16::from_ne_bytes([data[i], data[i + 1]])) }
    };
    let mut out = RgbImage::new(w as u32, h as u32);
    for (x, y, px) in out.enumerate_pixels_mut() {
        let (x, y) = (x as usize, y as usize);
        px.0 = if planes.len() == 1 {
            let g = to8(sample(0, x, y), true);
            [g, g, g]
        } else {
            // Identity matrix: Y is green, U (Cb) blue, V (Cr) red.
            [to8(sample(2, x, y), true), to8(sample(0, x, y), true), to8(sample(1, x, y), true)]
        };
    }
    out
}

/// Sets the alpha channel from the alpha item's luma plane (full range, as AVIF writers store it),
/// un-premultiplying the colours when the file says they are premultiplied.
fn put_alpha(rgba: &mut RgbaImage, alpha: &dav1d::Picture, premultiplied: bool) {
    let bytes = sample_bytes(alpha);
    let shift = alpha.bit_depth().saturating_sub(8) as u32;
    let plane = alpha.plane(Plane::Y);
    let stride = alpha.stride(Plane::Y) as usize;
    for (x, y, px) in rgba.enumerate_pixels_mut() {
        let i = y as usize * stride + x as usize * bytes;
        let a =
            if bytes == 1 { plane[i] } else { (u16::from_ne_bytes([plane[i], plane[i + 1]]) >> shift).min(255) as u8 };
        if premultiplied && a > 0 && a < 255 {
            for c in 0..3 {
                px.0[c] = ((u32::from(px.0[c]) * 255 + u32::from(a) / 2) / u32::from(a)).min(255) as u8;
            }
        }
        px.0[3] = a;
    }
}

/// `irot` (anticlockwise quarter turns) then `imir` (ISO/IEC 23008-12:2022 6.5.12: axis 0
/// exchanges top and bottom, 1 left and right) as one of the eight EXIF orientations (`image`
/// turns clockwise, then flips left↔right).
fn orientation(rotation: u8, mirror: Option<u8>) -> Orientation {
    use Orientation::*;
    match (rotation & 3, mirror) {
        (0, None) => NoTransforms,
        (0, Some(0)) => FlipVertical,
        (0, Some(_)) => FlipHorizontal,
        (1, None) => Rotate270,
        (1, Some(0)) => Rotate90FlipH,
        (1, Some(_)) => Rotate270FlipH,
        (2, None) => Rotate180,
        (2, Some(0)) => FlipHorizontal,
        (2, Some(_)) => FlipVertical,
        (_, None) => Rotate90,
        (_, Some(0)) => Rotate270FlipH,
        (_, Some(_)) => Rotate90FlipH,
    }
}

/// CICP from a `colr` box of type `nclx`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Nclx {
    primaries: u16,
    transfer: u16,
    matrix: u16,
    full_range: bool,
}

/// The primary item's properties this module needs.
#[derive(Debug, Default)]
struct Properties {
    nclx: Option<Nclx>,
    icc: Option<Vec<u8>>,
    rotation: u8,
    mirror: Option<u8>,
}

/// An ISO-BMFF box: its four-character type and its body.
type Bmff<'a> = ([u8; 4], &'a [u8]);

/// The first ISO-BMFF box of `data` and what follows it.
fn next_box(data: &[u8]) -> Result<(Bmff<'_>, &[u8]), String> {
    let be32 = |at: usize| data.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let short = || "box header cut short".to_string();
    let size = be32(0).ok_or_else(short)?;
    let kind = data.get(4..8).ok_or_else(short)?;
    let kind = [kind[0], kind[1], kind[2], kind[3]];
    let (header, size) = match size {
        0 => (8, data.len() as u64),
        1 => (16, (u64::from(be32(8).ok_or_else(short)?) << 32) | u64::from(be32(12).ok_or_else(short)?)),
        n => (8, u64::from(n)),
    };
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| s >= header && s <= data.len())
        .ok_or_else(|| format!("box {} is cut short", String::from_utf8_lossy(&kind)))?;
    Ok(((kind, &data[header..size]), &data[size..]))
}

/// The ISO-BMFF boxes of `data` in order, as (type, body).
fn boxes(mut data: &[u8]) -> Result<Vec<Bmff<'_>>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let (found, rest) = next_box(data)?;
        out.push(found);
        data = rest;
    }
    Ok(out)
}

fn find_box<'a>(data: &'a [u8], kind: &[u8; 4]) -> Result<Option<&'a [u8]>, String> {
    let mut data = data;
    while !data.is_empty() {
        let ((k, body), rest) = next_box(data)?;
        if &k == kind {
            return Ok(Some(body));
        }
        data = rest;
    }
    Ok(None)
}

/// `colr`, `irot` and `imir` associated (`ipma`) with the primary item (`pitm`).
fn primary_properties(bytes: &[u8]) -> Result<Properties, String> {
    let meta = find_box(bytes, b"meta")?.ok_or("no meta box")?;
    let meta = meta.get(4..).ok_or("short meta box")?;
    let pitm = find_box(meta, b"pitm")?.ok_or("no pitm box")?;
    let primary = match pitm.first() {
        Some(0) => u32::from(u16::from_be_bytes(pitm.get(4..6).ok_or("short pitm")?.try_into().unwrap_or_default())),
        Some(_) => u32::from_be_bytes(pitm.get(4..8).ok_or("short pitm")?.try_into().unwrap_or_default()),
        None => return Err("empty pitm".into()),
    };
    let iprp = find_box(meta, b"iprp")?.ok_or("no iprp box")?;
    let ipco = find_box(iprp, b"ipco")?.ok_or("no ipco box")?;
    let properties = boxes(ipco)?;
    let mut props = Properties::default();
    for (kind, body) in boxes(iprp)? {
        if &kind != b"ipma" {
            continue;
        }
        for index in ipma_associations(body, primary)? {
            let Some((kind, body)) = index.checked_sub(1).and_then(|i| properties.get(i)) else { continue };
            match kind {
                b"colr" => match body.get(0..4) {
                    Some(b"nclx") if body.len() >= 11 => {
                        let u16_at = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
                        props.nclx.get_or_insert(Nclx {
                            primaries: u16_at(4),
                            transfer: u16_at(6),
                            matrix: u16_at(8),
                            full_range: body[10] & 0x80 != 0,
                        });
                    }
                    Some(b"prof" | b"rICC") => {
                        props.icc.get_or_insert_with(|| body[4..].to_vec());
                    }
                    _ => {}
                },
                b"irot" => props.rotation = body.first().map_or(0, |b| b & 3),
                b"imir" => props.mirror = body.first().map(|b| b & 1),
                _ => {}
            }
        }
    }
    Ok(props)
}

/// The XMP packet of an AVIF: the item of type `mime` whose content type is
/// `application/rdf+xml` (`iinf`/`infe`), its bytes by `iloc` (in the file or in `idat`).
/// `Ok(None)` when there is none; `Err` says why one that is there cannot be read.
pub(crate) fn xmp_packet(bytes: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let Some(meta) = find_box(bytes, b"meta")? else { return Ok(None) };
    let meta = meta.get(4..).ok_or("short meta box")?;
    let Some(iinf) = find_box(meta, b"iinf")? else { return Ok(None) };
    let entries = match iinf.first() {
        Some(0) => iinf.get(6..),
        Some(_) => iinf.get(8..),
        None => None,
    }
    .ok_or("short iinf box")?;
    let mut xmp_item = None;
    for (kind, infe) in boxes(entries)? {
        let version = infe.first().copied().unwrap_or(0);
        if &kind != b"infe" || version < 2 {
            continue;
        }
        // version 2: item_ID u16; 3: u32; then protection index u16, item type, name\0, type\0.
        let id_len = if version == 2 { 2 } else { 4 };
        let id = infe.get(4..4 + id_len).ok_or("short infe box")?;
        let id = id.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        let rest = infe.get(4 + id_len + 2..).ok_or("short infe box")?;
        if rest.get(..4) != Some(b"mime") {
            continue;
        }
        let mut strings = rest[4..].split(|b| *b == 0);
        let _name = strings.next();
        if strings.next() == Some(b"application/rdf+xml") {
            xmp_item = Some(id);
            break;
        }
    }
    let Some(item) = xmp_item else { return Ok(None) };
    let iloc = find_box(meta, b"iloc")?.ok_or("XMP item without an iloc box")?;
    let idat = find_box(meta, b"idat")?;
    item_data(iloc, item, bytes, idat).map(Some)
}

/// The bytes of `item` by the `iloc` box: its extents, in the file (construction method 0) or in
/// `idat` (1), joined; at most [`crate::xmp::MAX_XMP_BYTES`] + 1, so an oversized packet is
/// still seen as one.
fn item_data(iloc: &[u8], item: u32, file: &[u8], idat: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<u64, String> {
        let v = iloc.get(pos..pos + n).ok_or("short iloc box")?;
        pos += n;
        Ok(v.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    };
    let version = take(1)?;
    take(3)?;
    let sizes = take(2)?;
    let (offset_size, length_size, base_size) =
        (((sizes >> 12) & 15) as usize, ((sizes >> 8) & 15) as usize, ((sizes >> 4) & 15) as usize);
    let index_size = if version >= 1 { (sizes & 15) as usize } else { 0 };
    let count = take(if version < 2 { 2 } else { 4 })?;
    for _ in 0..count {
        let id = take(if version < 2 { 2 } else { 4 })?;
        let method = if version >= 1 { take(2)? & 15 } else { 0 };
        take(2)?; // data_reference_index
        let base = take(base_size)?;
        let extents = take(2)?;
        let mut data = Vec::new();
        for _ in 0..extents {
            take(index_size)?;
            let offset = take(offset_size)?;
            let length = take(length_size)?;
            if id != u64::from(item) {
                continue;
            }
            let source = match method {
                0 => file,
                1 => idat.ok_or("item in idat without an idat box")?,
                other => return Err(format!("item construction method {other} not supported")),
            };
            let start = usize::try_from(base.saturating_add(offset)).map_err(|_| "extent offset overflows")?;
            let end = if length == 0 {
                source.len()
            } else {
                start.saturating_add(usize::try_from(length).map_err(|_| "extent length overflows")?)
            };
            let extent = source.get(start..end).ok_or("extent outside the file")?;
            let room = (crate::xmp::MAX_XMP_BYTES + 1).saturating_sub(data.len());
            data.extend_from_slice(&extent[..extent.len().min(room)]);
        }
        if id == u64::from(item) {
            return Ok(data);
        }
    }
    Err("XMP item not in the iloc box".into())
}

/// The 1-based property indices `ipma` associates with `item`.
fn ipma_associations(body: &[u8], item: u32) -> Result<Vec<usize>, String> {
    let short = || "short ipma".to_string();
    let version = *body.first().ok_or_else(short)?;
    let wide_index = body.get(3).ok_or_else(short)? & 1 != 0;
    let count = u32::from_be_bytes(body.get(4..8).ok_or_else(short)?.try_into().map_err(|_| short())?);
    let mut pos = 8usize;
    for _ in 0..count {
        let id = if version < 1 {
            let v = u32::from(u16::from_be_bytes(
                body.get(pos..pos + 2).ok_or_else(short)?.try_into().map_err(|_| short())?,
            ));
            pos += 2;
            v
        } else {
            let v = u32::from_be_bytes(body.get(pos..pos + 4).ok_or_else(short)?.try_into().map_err(|_| short())?);
            pos += 4;
            v
        };
        let n = usize::from(*body.get(pos).ok_or_else(short)?);
        pos += 1;
        let mut indices = Vec::with_capacity(n);
        for _ in 0..n {
            let index = if wide_index {
                let v = u16::from_be_bytes(body.get(pos..pos + 2).ok_or_else(short)?.try_into().map_err(|_| short())?);
                pos += 2;
                usize::from(v & 0x7FFF)
            } else {
                let v = *body.get(pos).ok_or_else(short)?;
                pos += 1;
                usize::from(v & 0x7F)
            };
            indices.push(index);
        }
        if id == item {
            return Ok(indices);
        }
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orientation_composes_rotation_then_mirror() {
        // [a b; c d] = [0 1; 2 3].
        let img = RgbImage::from_fn(2, 2, |x, y| image::Rgb([(y * 2 + x) as u8, 0, 0]));
        let turned = |rotation, mirror| {
            let mut d = DynamicImage::ImageRgb8(img.clone());
            d.apply_orientation(orientation(rotation, mirror));
            d.into_rgb8().pixels().map(|p| p.0[0]).collect::<Vec<_>>()
        };
        assert_eq!(turned(0, None), [0, 1, 2, 3]);
        // A quarter turn anticlockwise: [b d; a c].
        assert_eq!(turned(1, None), [1, 3, 0, 2]);
        assert_eq!(turned(2, None), [3, 2, 1, 0]);
        assert_eq!(turned(3, None), [2, 0, 3, 1]);
        // Axis 0: top and bottom exchanged; axis 1: left and right.
        assert_eq!(turned(0, Some(0)), [2, 3, 0, 1]);
        assert_eq!(turned(0, Some(1)), [1, 0, 3, 2]);
        // Rotation first, then the mirror.
        assert_eq!(turned(1, Some(0)), [0, 2, 1, 3]);
        assert_eq!(turned(1, Some(1)), [3, 1, 2, 0]);
        assert_eq!(turned(2, Some(0)), [1, 0, 3, 2]);
        assert_eq!(turned(3, Some(0)), [3, 1, 2, 0]);
        assert_eq!(turned(3, Some(1)), [0, 2, 1, 3]);
    }

    #[test]
    fn ipma_finds_the_items_properties() {
        // version 0, flags 0, 2 entries: item 1 → [1, 0x82 (essential 2)], item 2 → [3].
        let body = [0, 0, 0, 0, 0, 0, 0, 2, 0, 1, 2, 1, 0x82, 0, 2, 1, 3];
        assert_eq!(ipma_associations(&body, 1).unwrap(), [1, 2]);
        assert_eq!(ipma_associations(&body, 2).unwrap(), [3]);
        assert_eq!(ipma_associations(&body, 9).unwrap(), Vec::<usize>::new());
        assert!(ipma_associations(&body[..12], 2).is_err());
    }
}
