//! Caps on untrusted input, and the memory estimate the caller admits jobs with.

use serde::{Deserialize, Serialize};

use crate::error::ImageError;
use crate::format::Header;

/// Caps checked against the header before anything is decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Maximum width × height (default 100 MP).
    pub max_pixels: u64,
    /// Maximum width in pixels (default 20 000).
    pub max_width: u32,
    /// Maximum height in pixels (default 20 000).
    pub max_height: u32,
    /// Maximum size of the encoded input (default 64 MiB).
    pub max_bytes: u64,
    /// Largest embedded ICC profile honoured; bigger ones are ignored with a warning (default 4 MiB).
    pub max_icc_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: 100_000_000,
            max_width: 20_000,
            max_height: 20_000,
            max_bytes: 64 << 20,
            max_icc_bytes: 4 << 20,
        }
    }
}

impl Limits {
    /// Refuses a header over any cap with [`ImageError::TooLarge`].
    pub fn check(&self, header: &Header) -> Result<(), ImageError> {
        if header.width == 0 || header.height == 0 {
            return Err(ImageError::Corrupt(format!("header gives {}x{} pixels", header.width, header.height)));
        }
        if header.width > self.max_width || header.height > self.max_height {
            return Err(ImageError::TooLarge(format!(
                "{}x{} is over the {}x{} limit",
                header.width, header.height, self.max_width, self.max_height
            )));
        }
        if header.pixels() > self.max_pixels {
            return Err(ImageError::TooLarge(format!(
                "{}x{} = {} pixels is over the {} pixel limit",
                header.width,
                header.height,
                header.pixels(),
                self.max_pixels
            )));
        }
        Ok(())
    }

    /// The allocation cap handed to the `image` decoders: the largest image the pixel cap allows,
    /// at 16-bit RGBA, plus slack for decoder state. A decoder that wants more is refused.
    pub(crate) fn max_alloc_bytes(&self) -> u64 {
        self.max_pixels.saturating_mul(8).saturating_add(64 << 20)
    }
}

/// A conservative estimate of the peak memory one [`crate::decode`] plus analysis and variants of
/// this image needs, in bytes, so the caller can admit jobs against a memory budget before
/// decoding. It counts the decoder's output, its working copy (16-bit samples, progressive JPEG
/// coefficients, CMYK samples), the 8-bit RGB(A) result, one rotated copy, and the small copies for
/// analysis and variants.
pub fn estimate_decoded_bytes(header: &Header) -> u64 {
    let px = header.pixels();
    let channels = u64::from(header.channels.max(1));
    let sample = u64::from(header.bytes_per_sample.max(1));
    // What the decoder hands back.
    let decoded = px * channels * sample;
    // Working memory inside the decoder.
    let working = if header.progressive && header.format == crate::Format::Jpeg {
        // zune-jpeg keeps every coefficient as i16 for progressive images.
        px * channels * 2
    } else if header.cmyk {
        px * 4
    } else {
        0
    };
    // The 8-bit RGB(A) copy when the decoder output is not already that, and one more for a
    // rotation (apply_orientation allocates a new buffer for 90° turns).
    let rgb = px * if channels == 2 || channels == 4 { 4 } else { 3 };
    let converted = if sample > 1 || channels < 3 || header.cmyk { rgb } else { 0 };
    // Largest default variant (2048 px wide) at RGBA, plus analysis copies and encoder buffers.
    let small = 2048u64 * 2048 * 4 * 2 + (8 << 20);
    decoded + working + converted + rgb + small
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Format;

    fn header(width: u32, height: u32) -> Header {
        Header {
            format: Format::Jpeg,
            width,
            height,
            frames: None,
            channels: 3,
            bytes_per_sample: 1,
            progressive: false,
            cmyk: false,
        }
    }

    #[test]
    fn caps_pixels_and_sides() {
        let limits = Limits::default();
        assert!(limits.check(&header(4000, 3000)).is_ok());
        assert!(matches!(limits.check(&header(20_001, 10)), Err(ImageError::TooLarge(_))));
        assert!(matches!(limits.check(&header(15_000, 15_000)), Err(ImageError::TooLarge(_))));
        assert!(matches!(limits.check(&header(0, 10)), Err(ImageError::Corrupt(_))));
    }

    #[test]
    fn estimate_grows_with_pixels_and_progressive() {
        let base = estimate_decoded_bytes(&header(4000, 3000));
        assert!(base > 4000 * 3000 * 3 && base < 200 << 20, "{base}");
        let mut prog = header(4000, 3000);
        prog.progressive = true;
        assert!(estimate_decoded_bytes(&prog) > base);
        assert!(estimate_decoded_bytes(&header(8000, 6000)) > base);
    }
}
