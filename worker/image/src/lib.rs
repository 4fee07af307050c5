//! Fleet's image processing library: pure functions over bytes, for the worker's `image.analyze`
//! and `image.variants` handlers, which call it from a blocking thread pool. No I/O, no network.
//!
//! # Layout
//!
//! - [`format`]: sniff the real format from the bytes, read the header (dimensions, frames) before
//!   any decoding, refuse pixel floods and bombs against [`Limits`] ([`limits`]).
//! - [`decode`](mod@decode): decode once into upright (EXIF orientation applied) 8-bit sRGB
//!   (ICC and CMYK converted), panics caught, truncation detected.
//! - [`metadata`]: camera, lens, date, orientation and GPS (only on request) from EXIF.
//! - [`analysis`]: perceptual hash, sharpness, exposure, dominant colours; near-duplicate groups.
//! - [`variants`]: resized JPEG and WebP outputs without metadata, optional watermark, recipe hash.
//! - [`error`]: one error type; [`ImageError::is_permanent`] tells the runner to dead-letter.
//!
//! A handler does, on its blocking thread:
//!
//! ```no_run
//! # fn run(bytes: &[u8]) -> Result<(), fleet_image::ImageError> {
//! use fleet_image::{Limits, VariantSpec};
//! let limits = Limits::default();
//! let header = fleet_image::read_header(bytes, &limits)?; // µs; admit by estimate_decoded_bytes
//! let _reserve = fleet_image::estimate_decoded_bytes(&header);
//! let decoded = fleet_image::decode(bytes, &limits)?;
//! let analysis = fleet_image::analyze(&decoded)?;
//! let metadata = fleet_image::read_metadata(bytes, false);
//! let variants = fleet_image::make_variants(&decoded, &VariantSpec::default())?;
//! # let _ = (analysis, metadata, variants); Ok(()) }
//! ```

pub mod analysis;
mod colour;
pub mod decode;
pub mod error;
pub mod format;
pub mod jpeg_markers;
pub mod limits;
pub mod metadata;
mod resize;
pub mod variants;

pub use analysis::{
    Analysis, DominantColour, Exposure, ExposureVerdict, NEAR_DUPLICATE_DISTANCE, NearDuplicates, PHash, analyze,
};
pub use decode::{ColourConversion, Decoded, decode, decode_scaled};
pub use error::ImageError;
pub use format::{Format, Header, read_header, sniff};
pub use limits::{Limits, estimate_decoded_bytes};
pub use metadata::{GpsPosition, Metadata, read_metadata};
pub use variants::{
    OutputFormat, RECIPE_VERSION, Variant, VariantSpec, Watermark, WatermarkPosition, make_variants, sha256_hex,
};
