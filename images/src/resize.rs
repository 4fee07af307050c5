//! Resizing 8-bit RGB/RGBA through `fast_image_resize` (SIMD, alpha premultiplied for RGBA).

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::DynamicImage;

use crate::error::ImageError;

/// Lanczos3 for variants people look at.
pub(crate) const QUALITY: ResizeAlg = ResizeAlg::Convolution(FilterType::Lanczos3);
/// Area average for analysis copies: cheap, and no ringing to confuse blur and colour measures.
pub(crate) const AREA: ResizeAlg = ResizeAlg::Convolution(FilterType::Box);

/// The size that fits `width × height` within `max_w × max_h`, keeping the aspect ratio, never
/// upscaling, never below 1 px.
pub(crate) fn fit_within(width: u32, height: u32, max_w: u32, max_h: u32) -> (u32, u32) {
    if width <= max_w && height <= max_h {
        return (width, height);
    }
    let scale = (f64::from(max_w) / f64::from(width)).min(f64::from(max_h) / f64::from(height));
    let w = ((f64::from(width) * scale).round() as u32).clamp(1, max_w);
    let h = ((f64::from(height) * scale).round() as u32).clamp(1, max_h);
    (w, h)
}

/// Resizes an `ImageRgb8`/`ImageRgba8` to exactly `width × height`.
pub(crate) fn resize(
    resizer: &mut Resizer,
    src: &DynamicImage,
    width: u32,
    height: u32,
    alg: ResizeAlg,
) -> Result<DynamicImage, ImageError> {
    let (pixel_type, data): (PixelType, &[u8]) = match src {
        DynamicImage::ImageRgb8(b) => (PixelType::U8x3, b.as_raw()),
        DynamicImage::ImageRgba8(b) => (PixelType::U8x4, b.as_raw()),
        _ => return Err(ImageError::Internal("resize expects 8-bit RGB or RGBA".into())),
    };
    if (src.width(), src.height()) == (width, height) {
        return Ok(src.clone());
    }
    let src_view = ImageRef::new(src.width(), src.height(), data, pixel_type)
        .map_err(|e| ImageError::Internal(format!("resize source: {e}")))?;
    let mut dst = Image::new(width, height, pixel_type);
    resizer
        .resize(&src_view, &mut dst, &ResizeOptions::new().resize_alg(alg))
        .map_err(|e| ImageError::Internal(format!("resize: {e}")))?;
    let raw = dst.into_vec();
    let out = match pixel_type {
        PixelType::U8x3 => image::RgbImage::from_raw(width, height, raw).map(DynamicImage::ImageRgb8),
        _ => image::RgbaImage::from_raw(width, height, raw).map(DynamicImage::ImageRgba8),
    };
    out.ok_or_else(|| ImageError::Internal("resize produced a short buffer".into()))
}

/// Composites RGBA onto white (for JPEG, and for analysis); RGB passes through.
pub(crate) fn flatten_onto_white(image: DynamicImage) -> image::RgbImage {
    match image {
        DynamicImage::ImageRgba8(rgba) => {
            let (w, h) = rgba.dimensions();
            let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
            for px in rgba.as_raw().chunks_exact(4) {
                let a = u32::from(px[3]);
                for &c in &px[..3] {
                    rgb.push(((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8);
                }
            }
            image::RgbImage::from_raw(w, h, rgb).expect("buffer sized from dimensions")
        }
        other => other.into_rgb8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_keep_aspect_and_never_upscale() {
        assert_eq!(fit_within(4000, 3000, 2048, u32::MAX), (2048, 1536));
        assert_eq!(fit_within(300, 200, 2048, u32::MAX), (300, 200));
        assert_eq!(fit_within(10_000, 3, 320, u32::MAX), (320, 1));
        assert_eq!(fit_within(3000, 4000, 512, 512), (384, 512));
    }

    #[test]
    fn flattens_transparent_to_white() {
        let rgba = image::RgbaImage::from_pixel(2, 1, image::Rgba([0, 0, 0, 0]));
        let rgb = flatten_onto_white(DynamicImage::ImageRgba8(rgba));
        assert_eq!(rgb.as_raw(), &[255u8; 6]);
    }
}
