//! Colour management: every embedded ICC profile (RGB or CMYK) becomes sRGB through `moxcms`, so
//! wide-gamut photos do not turn dull and CMYK prints do not turn inverted or muddy.

use moxcms::{ColorProfile, DataColorSpace, Layout, TransformOptions};

/// Rows transformed per step: bounds the scratch buffer to a few MB whatever the image size.
const ROWS_PER_STEP: usize = 64;

/// A parsed embedded profile.
pub(crate) struct Profile(ColorProfile);

impl Profile {
    pub(crate) fn parse(icc: &[u8]) -> Result<Self, String> {
        ColorProfile::new_from_slice(icc).map(Profile).map_err(|e| format!("unreadable ICC profile: {e:?}"))
    }

    pub(crate) fn is_rgb(&self) -> bool {
        self.0.color_space == DataColorSpace::Rgb
    }

    pub(crate) fn is_cmyk(&self) -> bool {
        self.0.color_space == DataColorSpace::Cmyk
    }

    /// True for a matrix/shaper RGB profile with sRGB's colorants: transforming it would be a no-op
    /// (give or take rounding), so it is skipped to save a pass over the pixels. The tone curve is
    /// not compared: profiles with sRGB primaries and another curve are vanishingly rare in photos.
    pub(crate) fn is_srgb_like(&self) -> bool {
        let srgb = ColorProfile::new_srgb();
        let p = &self.0;
        let close = |a: &moxcms::Xyzd, b: &moxcms::Xyzd| {
            (a.x - b.x).abs() < 0.003 && (a.y - b.y).abs() < 0.003 && (a.z - b.z).abs() < 0.003
        };
        self.is_rgb()
            && p.lut_a_to_b_perceptual.is_none()
            && p.lut_a_to_b_colorimetric.is_none()
            && close(&p.red_colorant, &srgb.red_colorant)
            && close(&p.green_colorant, &srgb.green_colorant)
            && close(&p.blue_colorant, &srgb.blue_colorant)
    }
}

/// Converts interleaved 8-bit RGB (`channels == 3`) or RGBA (`4`, alpha untouched) pixels from
/// `profile` to sRGB, in place, a band of rows at a time.
pub(crate) fn rgb_to_srgb_in_place(
    pixels: &mut [u8],
    width: usize,
    channels: usize,
    profile: &Profile,
) -> Result<(), String> {
    let layout = if channels == 4 { Layout::Rgba } else { Layout::Rgb };
    let transform = profile
        .0
        .create_transform_8bit(layout, &ColorProfile::new_srgb(), layout, TransformOptions::default())
        .map_err(|e| format!("ICC transform unavailable: {e:?}"))?;
    let band = width * channels * ROWS_PER_STEP;
    let mut scratch = vec![0u8; band.min(pixels.len())];
    for chunk in pixels.chunks_mut(band) {
        let out = &mut scratch[..chunk.len()];
        transform.transform(chunk, out).map_err(|e| format!("ICC transform failed: {e:?}"))?;
        chunk.copy_from_slice(out);
    }
    Ok(())
}

/// Converts interleaved 8-bit CMYK to 8-bit sRGB through a CMYK profile. `adobe_inverted` says the
/// samples are stored inverted (255 = no ink), as Photoshop writes them; they are un-inverted first.
pub(crate) fn cmyk_to_srgb(
    cmyk: &mut [u8],
    width: usize,
    adobe_inverted: bool,
    profile: &Profile,
) -> Result<Vec<u8>, String> {
    let transform = profile
        .0
        .create_transform_8bit(Layout::Rgba, &ColorProfile::new_srgb(), Layout::Rgb, TransformOptions::default())
        .map_err(|e| format!("CMYK transform unavailable: {e:?}"))?;
    if adobe_inverted {
        cmyk.iter_mut().for_each(|v| *v = 255 - *v);
    }
    let pixels = cmyk.len() / 4;
    let mut rgb = vec![0u8; pixels * 3];
    let band = width * ROWS_PER_STEP;
    for (src, dst) in cmyk.chunks(band * 4).zip(rgb.chunks_mut(band * 3)) {
        transform.transform(src, dst).map_err(|e| format!("CMYK transform failed: {e:?}"))?;
    }
    Ok(rgb)
}

/// CMYK without a usable profile: the naive formula on Adobe-inverted samples
/// (R = C' × K' / 255 where C' = 255 − C). Not colour-accurate, but never inverted.
pub(crate) fn cmyk_to_rgb_naive(cmyk: &[u8], adobe_inverted: bool) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let inv = |v: u8| if adobe_inverted { v } else { 255 - v };
        let k = u32::from(inv(px[3]));
        for &c in &px[..3] {
            rgb.push(((u32::from(inv(c)) * k + 127) / 255) as u8);
        }
    }
    rgb
}
