//! Web variants: resized (never upscaled, aspect kept) with Lanczos3 in a cascade from the largest
//! width down, optionally watermarked, encoded as JPEG (libjpeg-turbo through `mozjpeg`), lossy WebP
//! (libwebp) and, when asked for, AVIF (rav1e through `ravif`: several times slower than the other
//! two together, so not in the default formats).
//! Outputs carry no metadata at all (no EXIF, no GPS, no XMP, no ICC: pixels are already sRGB),
//! unless the spec keeps some of the photographer's credit ([`KeptMetadata`]: artist and
//! copyright only; never a location).

use fast_image_resize::Resizer;
use image::DynamicImage;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::decode::{Decoded, decode};
use crate::error::{ImageError, catch_encoder_panic};
use crate::kept_metadata::KeptMetadata;
use crate::limits::Limits;
use crate::resize::{self, QUALITY};

/// Bump when the pipeline changes output bytes for the same spec (encoder settings, resampling),
/// so stored variants keyed by [`VariantSpec::recipe_hash`] are not reused.
pub const RECIPE_VERSION: u32 = 2;

/// WebP cannot be wider or taller than this.
const WEBP_MAX_SIDE: u32 = 16_383;
/// libjpeg's largest side.
const JPEG_MAX_SIDE: u32 = 65_500;
/// AV1's largest frame side (16-bit `max_frame_width_minus_1`).
const AVIF_MAX_SIDE: u32 = 65_536;

/// An output encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// Baseline JPEG, 4:2:0 below q90, alpha flattened onto white.
    Jpeg,
    /// Lossy WebP (alpha kept).
    Webp,
    /// AVIF (AV1, 8-bit 4:2:0 YCbCr, alpha kept), encoded by rav1e at [`VariantSpec::avif_speed`].
    Avif,
}

impl OutputFormat {
    /// File extension without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Webp => "webp",
            OutputFormat::Avif => "avif",
        }
    }

    /// MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Webp => "image/webp",
            OutputFormat::Avif => "image/avif",
        }
    }
}

/// Where a watermark goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatermarkPosition {
    /// Top-left corner.
    TopLeft,
    /// Top-right corner.
    TopRight,
    /// Bottom-left corner.
    BottomLeft,
    /// Bottom-right corner.
    BottomRight,
    /// Centred.
    Center,
}

/// An image watermark (typically a PNG with alpha), blended over every variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Watermark {
    /// The encoded watermark image (PNG, WebP …), at most 4096×4096.
    #[serde(with = "base64_bytes")]
    pub image: Vec<u8>,
    /// Placement.
    pub position: WatermarkPosition,
    /// 0 (invisible) … 1 (as drawn, alpha respected).
    pub opacity: f32,
    /// Watermark width as a share of the variant width (0 < scale ≤ 1), aspect kept.
    pub scale: f32,
    /// Gap to the edges as a share of the variant width (ignored for `Center`).
    pub margin: f32,
}

/// What to produce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VariantSpec {
    /// Target widths. A width at or above the source width yields one variant at the source
    /// width (never upscaled); duplicates collapse.
    pub widths: Vec<u32>,
    /// Output formats; each width is encoded in each. Default JPEG and WebP; add `avif` to get
    /// AVIF too (it costs several times the other two together, see BENCHMARKS.md).
    pub formats: Vec<OutputFormat>,
    /// JPEG quality, 1–100.
    pub jpeg_quality: u8,
    /// WebP quality, 1–100.
    pub webp_quality: u8,
    /// libwebp effort, 0 (fastest) – 6 (smallest). Default 1: on the 2048 px level of a
    /// 12 MP photo it takes 14 % fewer instructions than method 2 for files 0.6 % bigger at
    /// the same PSNR, and far fewer than libwebp's default 4 (`fleet-bench image-steps`,
    /// `image-encode` under callgrind; BENCHMARKS.md). Method 0 saves another 22 % for 8 % bigger files.
    pub webp_method: u8,
    /// AVIF quality, 1–100 (ravif's scale; 60 looks like JPEG ~80 at a third of the bytes).
    pub avif_quality: u8,
    /// rav1e speed, 1 (slowest, smallest) – 10 (fastest). Default 10: on a 12 MP photo's four
    /// widths 3.6× less CPU than speed 8 for files 5 % bigger at the same PSNR
    /// (`examples/avif_cost.rs`, BENCHMARKS.md); still the most expensive step by far.
    pub avif_speed: u8,
    /// Optional watermark.
    pub watermark: Option<Watermark>,
    /// Metadata written into every variant (default none): the source's artist and/or
    /// copyright, when the request keeps them.
    pub keep_metadata: KeptMetadata,
}

impl Default for VariantSpec {
    fn default() -> Self {
        VariantSpec {
            widths: vec![320, 640, 1280, 2048],
            formats: vec![OutputFormat::Jpeg, OutputFormat::Webp],
            jpeg_quality: 80,
            webp_quality: 80,
            webp_method: 1,
            avif_quality: 60,
            avif_speed: 10,
            watermark: None,
            keep_metadata: KeptMetadata::default(),
        }
    }
}

impl VariantSpec {
    /// A deterministic hash of everything that changes the output bytes (and [`RECIPE_VERSION`]),
    /// as 64 hex digits. With `sha256(source)` it makes an idempotent storage key: a retried job
    /// finds finished variants under the same key.
    pub fn recipe_hash(&self) -> String {
        let mut widths = self.widths.clone();
        widths.sort_unstable();
        widths.dedup();
        let mut formats: Vec<&str> = self.formats.iter().map(|f| f.extension()).collect();
        formats.sort_unstable();
        formats.dedup();
        let mut canonical = format!(
            "fleet-image/v{RECIPE_VERSION};widths={widths:?};formats={formats:?};jpeg_q={};webp_q={};webp_m={}",
            self.jpeg_quality, self.webp_quality, self.webp_method
        );
        if let Some(w) = &self.watermark {
            canonical.push_str(&format!(
                ";watermark={};pos={:?};opacity={};scale={};margin={}",
                hex::encode(Sha256::digest(&w.image)),
                w.position,
                w.opacity,
                w.scale,
                w.margin
            ));
        }
        // Only when AVIF is asked for, so the recipes of JPEG/WebP variants stay what they were.
        if self.formats.contains(&OutputFormat::Avif) {
            canonical.push_str(&format!(";avif_q={};avif_s={}", self.avif_quality, self.avif_speed));
        }
        // Only when something is kept, so the recipes of plain variants stay what they were.
        if !self.keep_metadata.is_empty() {
            canonical.push_str(&format!(";keep={}", self.keep_metadata.canonical()));
        }
        hex::encode(Sha256::digest(canonical.as_bytes()))
    }

    fn validate(&self) -> Result<(), ImageError> {
        let bad = |m: String| Err(ImageError::InvalidRequest(m));
        if self.widths.is_empty() || self.widths.contains(&0) {
            return bad(format!("widths must be non-empty and positive: {:?}", self.widths));
        }
        if self.formats.is_empty() {
            return bad("formats must not be empty".into());
        }
        for q in [self.jpeg_quality, self.webp_quality, self.avif_quality] {
            if !(1..=100).contains(&q) {
                return bad(format!("quality {q} is outside 1–100"));
            }
        }
        if self.webp_method > 6 {
            return bad(format!("webp_method {} is outside 0–6", self.webp_method));
        }
        if !(1..=10).contains(&self.avif_speed) {
            return bad(format!("avif_speed {} is outside 1–10", self.avif_speed));
        }
        if let Some(w) = &self.watermark {
            let in_unit = |v: f32| v.is_finite() && (0.0..=1.0).contains(&v);
            if !(in_unit(w.opacity) && in_unit(w.margin) && w.scale > 0.0 && w.scale <= 1.0) {
                return bad("watermark opacity, margin must be in 0–1 and scale in (0, 1]".into());
            }
        }
        Ok(())
    }
}

/// One encoded variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// Output width.
    pub width: u32,
    /// Output height.
    pub height: u32,
    /// Encoding.
    pub format: OutputFormat,
    /// Size of `bytes`.
    pub byte_len: usize,
    /// SHA-256 of `bytes`, hex.
    pub sha256: String,
    /// The encoded file (not serialized: the caller stores it).
    #[serde(skip)]
    pub bytes: Vec<u8>,
}

/// SHA-256 of some bytes as 64 hex digits (for `sha256(source) + recipe` storage keys).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Produces every width × format of `spec` from a decoded (upright, sRGB) image, largest width
/// first. The resize cascades: each width is made from the next larger one, which is several
/// times cheaper than resizing the full image each time and looks the same with Lanczos3.
pub fn make_variants(decoded: &Decoded, spec: &VariantSpec) -> Result<Vec<Variant>, ImageError> {
    spec.validate()?;
    let source = &decoded.image;
    let (src_w, src_h) = (source.width(), source.height());
    let mut widths: Vec<u32> = spec.widths.iter().map(|&w| w.min(src_w)).collect();
    widths.sort_unstable_by(|a, b| b.cmp(a));
    widths.dedup();
    let watermark = spec.watermark.as_ref().map(LoadedWatermark::load).transpose()?;

    let mut resizer = Resizer::new();
    let mut out = Vec::with_capacity(widths.len() * spec.formats.len());
    let mut previous: Option<DynamicImage> = None;
    for width in widths {
        let height = ((u64::from(src_h) * u64::from(width) + u64::from(src_w) / 2) / u64::from(src_w)).max(1) as u32;
        let from = previous.as_ref().unwrap_or(source);
        let level = resize::resize(&mut resizer, from, width, height, QUALITY)?;
        let marked = match &watermark {
            Some(wm) => {
                let mut copy = level.clone();
                wm.apply(&mut resizer, &mut copy)?;
                Some(copy)
            }
            None => None,
        };
        let pixels = marked.as_ref().unwrap_or(&level);
        for &format in &spec.formats {
            let bytes = catch_encoder_panic("encoder", || encode(pixels, format, spec))?;
            let bytes = spec.keep_metadata.embed(bytes, format)?;
            out.push(Variant { width, height, format, byte_len: bytes.len(), sha256: sha256_hex(&bytes), bytes });
        }
        previous = Some(level);
    }
    Ok(out)
}

fn encode(image: &DynamicImage, format: OutputFormat, spec: &VariantSpec) -> Result<Vec<u8>, ImageError> {
    let (w, h) = (image.width(), image.height());
    match format {
        OutputFormat::Jpeg => {
            if w > JPEG_MAX_SIDE || h > JPEG_MAX_SIDE {
                return Err(ImageError::InvalidRequest(format!("{w}x{h} is too large for JPEG")));
            }
            let rgb;
            let data: &[u8] = match image {
                DynamicImage::ImageRgb8(b) => b.as_raw(),
                other => {
                    rgb = resize::flatten_onto_white(other.clone());
                    rgb.as_raw()
                }
            };
            // libjpeg-turbo through mozjpeg: its fastest profile (baseline, no trellis) with
            // optimized Huffman tables. Only the JFIF APP0 header is written: no EXIF, no ICC
            // (the kept metadata, if any, is added afterwards).
            // Errors arrive as panics; the caller's `catch_encoder_panic` turns them into errors.
            let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
            c.set_fastest_defaults();
            c.set_size(w as usize, h as usize);
            c.set_quality(f32::from(spec.jpeg_quality));
            c.set_optimize_coding(true);
            let mut started = c
                .start_compress(Vec::with_capacity(data.len() / 8))
                .map_err(|e| ImageError::Internal(format!("JPEG encoder: {e}")))?;
            started.write_scanlines(data).map_err(|e| ImageError::Internal(format!("JPEG encoder: {e}")))?;
            started.finish().map_err(|e| ImageError::Internal(format!("JPEG encoder: {e}")))
        }
        OutputFormat::Webp => {
            if w > WEBP_MAX_SIDE || h > WEBP_MAX_SIDE {
                return Err(ImageError::InvalidRequest(format!("{w}x{h} is too large for WebP")));
            }
            let (layout, data) = match image {
                DynamicImage::ImageRgb8(b) => (webp::PixelLayout::Rgb, b.as_raw()),
                DynamicImage::ImageRgba8(b) => (webp::PixelLayout::Rgba, b.as_raw()),
                _ => return Err(ImageError::Internal("WebP encoder expects RGB or RGBA".into())),
            };
            let mut config =
                libwebp_sys::WebPConfig::new().map_err(|()| ImageError::Internal("libwebp config init".into()))?;
            config.lossless = 0;
            config.quality = f32::from(spec.webp_quality);
            config.method = i32::from(spec.webp_method);
            config.alpha_compression = 1;
            let memory = webp::Encoder::new(data, layout, w, h)
                .encode_advanced(&config)
                .map_err(|e| ImageError::Internal(format!("WebP encoder: {e:?}")))?;
            Ok(memory.to_vec())
        }
        OutputFormat::Avif => {
            if w > AVIF_MAX_SIDE || h > AVIF_MAX_SIDE {
                return Err(ImageError::InvalidRequest(format!("{w}x{h} is too large for AVIF")));
            }
            // rav1e through ravif, single-threaded (no `threading` feature: the caller owns the
            // threads), 8-bit 4:2:0. The kept metadata (artist, copyright), if any, goes in as the
            // file's EXIF item: ravif writes nothing else (no ICC: pixels are sRGB, tagged by the
            // `colr` box it writes).
            let encoder = ravif::Encoder::new()
                .with_quality(f32::from(spec.avif_quality))
                .with_alpha_quality(f32::from(spec.avif_quality))
                .with_speed(spec.avif_speed)
                .with_bit_depth(ravif::BitDepth::Eight);
            let encoder = match spec.keep_metadata.exif_for_avif()? {
                Some(exif) => encoder.with_exif(exif),
                None => encoder,
            };
            let encoded = match image {
                DynamicImage::ImageRgb8(b) => {
                    let px: Vec<ravif::RGB8> =
                        b.as_raw().chunks_exact(3).map(|c| ravif::RGB8::new(c[0], c[1], c[2])).collect();
                    encoder.encode_rgb(ravif::Img::new(&px[..], w as usize, h as usize))
                }
                DynamicImage::ImageRgba8(b) => {
                    let px: Vec<ravif::RGBA8> =
                        b.as_raw().chunks_exact(4).map(|c| ravif::RGBA8::new(c[0], c[1], c[2], c[3])).collect();
                    encoder.encode_rgba(ravif::Img::new(&px[..], w as usize, h as usize))
                }
                _ => return Err(ImageError::Internal("AVIF encoder expects RGB or RGBA".into())),
            };
            encoded.map(|e| e.avif_file).map_err(|e| ImageError::Internal(format!("AVIF encoder: {e}")))
        }
    }
}

/// The watermark decoded once per job.
struct LoadedWatermark {
    /// Always `ImageRgba8`.
    image: DynamicImage,
    position: WatermarkPosition,
    opacity: f32,
    scale: f32,
    margin: f32,
}

impl LoadedWatermark {
    fn load(w: &Watermark) -> Result<Self, ImageError> {
        let limits = Limits { max_width: 4096, max_height: 4096, max_pixels: 4096 * 4096, ..Limits::default() };
        let decoded =
            decode(&w.image, &limits).map_err(|e| ImageError::InvalidRequest(format!("watermark image: {e}")))?;
        Ok(LoadedWatermark {
            image: DynamicImage::ImageRgba8(decoded.image.into_rgba8()),
            position: w.position,
            opacity: w.opacity,
            scale: w.scale,
            margin: w.margin,
        })
    }

    /// Scales the watermark to the variant and alpha-blends it in place.
    fn apply(&self, resizer: &mut Resizer, target: &mut DynamicImage) -> Result<(), ImageError> {
        let (tw, th) = (target.width(), target.height());
        let want_w = ((tw as f32 * self.scale).round() as u32).max(1);
        let (ww, wh) = (self.image.width(), self.image.height());
        let want_h = ((u64::from(wh) * u64::from(want_w)) / u64::from(ww).max(1)).max(1) as u32;
        let (mw, mh) = resize::fit_within(want_w, want_h, tw, th);
        let mark = resize::resize(resizer, &self.image, mw, mh, QUALITY)?.into_rgba8();
        let margin = (tw as f32 * self.margin).round() as u32;
        let (x0, y0) = match self.position {
            WatermarkPosition::TopLeft => (margin, margin),
            WatermarkPosition::TopRight => (tw.saturating_sub(mw + margin), margin),
            WatermarkPosition::BottomLeft => (margin, th.saturating_sub(mh + margin)),
            WatermarkPosition::BottomRight => (tw.saturating_sub(mw + margin), th.saturating_sub(mh + margin)),
            WatermarkPosition::Center => ((tw - mw) / 2, (th - mh) / 2),
        };
        let (channels, buf): (usize, &mut [u8]) = match target {
            DynamicImage::ImageRgb8(b) => (3, &mut **b),
            DynamicImage::ImageRgba8(b) => (4, &mut **b),
            _ => return Err(ImageError::Internal("watermark target must be RGB or RGBA".into())),
        };
        for (mx, my, px) in mark.enumerate_pixels() {
            let (x, y) = (x0 + mx, y0 + my);
            if x >= tw || y >= th {
                continue;
            }
            let a = f32::from(px.0[3]) / 255.0 * self.opacity;
            if a <= 0.0 {
                continue;
            }
            let i = (y as usize * tw as usize + x as usize) * channels;
            for c in 0..3 {
                let under = f32::from(buf[i + c]);
                buf[i + c] = (f32::from(px.0[c]) * a + under * (1.0 - a)).round() as u8;
            }
        }
        Ok(())
    }
}

/// Watermark bytes as base64 in JSON.
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}
