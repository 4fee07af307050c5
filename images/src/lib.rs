//! # fleet-images
//!
//! Fleet's images domain: a photographer's uploads analysed (format, size, perceptual hash,
//! sharpness, exposure, colours, EXIF, near-duplicates) and turned into the variants a
//! portfolio shows.
//!
//! # Layout
//!
//! Always built (the scheduler links only this, and so no image decoder):
//!
//! - [`store`]: every query on the image tables (`image_analyses`, `image_variants`,
//!   `image_near_duplicates`), each scoped by the tenant it serves: analyses and variants
//!   as the jobs record them (near-duplicate pairs found when an analysis lands), a
//!   portfolio's page as `GET /v1/portfolios/{portfolio}` reads it.
//! - [`uploads`]: presigned S3 PUT URLs for originals (`POST /v1/uploads`), each for a key
//!   Fleet makes under the tenant's prefix; and from [`storage`] its configuration
//!   ([`storage::StoreConfig`]) and key rules (the stores themselves are behind `jobs`).
//!
//! Behind the `jobs` feature (what the worker links): pure functions over bytes, no I/O,
//! which the handlers call on a blocking thread pool,
//!
//! - [`format`](mod@format): sniff the real format from the bytes, read the header (dimensions, frames) before
//!   any decoding, refuse pixel floods and bombs against [`Limits`] ([`limits`]).
//! - [`decode`](mod@decode): decode once into upright (EXIF orientation applied) 8-bit sRGB
//!   (ICC and CMYK converted), panics caught, truncation detected.
//! - [`metadata`]: camera, lens, date, orientation and GPS (only on request) from EXIF, and
//!   the GPS position from an XMP packet ([`xmp`]: bounded, no DTD) when the EXIF has none.
//! - [`analysis`]: perceptual hash, sharpness, exposure, dominant colours, a ThumbHash
//!   placeholder; near-duplicate groups.
//! - [`variants`]: resized JPEG and WebP outputs without metadata (or with only the artist
//!   and copyright a request keeps: [`kept_metadata`]; never a location), optional watermark,
//!   recipe hash.
//! - [`error`]: one error type; [`ImageError::is_permanent`] tells the runner to dead-letter.
//!
//! and what talks to the outside:
//!
//! - [`storage`]: object storage (a local folder or S3) for uploads and variants (its
//!   configuration and key rules are always built).
//! - [`vision`]: optional outside vision providers (categories, tags, alt text), SSRF-guarded.
//! - [`jobs`]: the `image.analyze` and `image.variants` handlers: read the upload from
//!   [`storage`], decode within the memory budget, ask [`vision`], write variants back and
//!   record the results through [`store`]; and `portfolio.select`, the step of a portfolio's
//!   workflow that keeps the photos that are not near-duplicates of a sharper one and adds
//!   their variants steps. They hold no SQL.
//!
//! A handler does, on its blocking thread:
//!
//! ```no_run
//! # fn run(bytes: &[u8]) -> Result<(), fleet_images::ImageError> {
//! use fleet_images::{Limits, VariantSpec};
//! let limits = Limits::default();
//! let header = fleet_images::read_header(bytes, &limits)?; // µs; admit by estimate_decoded_bytes
//! let _reserve = fleet_images::estimate_decoded_bytes(&header);
//! let decoded = fleet_images::decode(bytes, &limits)?;
//! let analysis = fleet_images::analyze(&decoded)?;
//! let metadata = fleet_images::read_metadata(bytes, false);
//! let variants = fleet_images::make_variants(&decoded, &VariantSpec::default())?;
//! # let _ = (analysis, metadata, variants); Ok(()) }
//! ```

pub mod store;
pub mod uploads;

#[cfg(feature = "jobs")]
pub mod analysis;
#[cfg(feature = "jobs")]
mod avif;
#[cfg(feature = "jobs")]
mod colour;
#[cfg(feature = "jobs")]
pub mod decode;
#[cfg(feature = "jobs")]
pub mod error;
#[cfg(feature = "jobs")]
pub mod format;
#[cfg(feature = "jobs")]
pub mod jobs;
#[cfg(feature = "jobs")]
pub mod jpeg_markers;
#[cfg(feature = "jobs")]
pub mod kept_metadata;
#[cfg(feature = "jobs")]
pub mod limits;
#[cfg(feature = "jobs")]
pub mod metadata;
#[cfg(feature = "jobs")]
mod resize;
pub mod storage;
#[cfg(feature = "jobs")]
pub mod variants;
#[cfg(feature = "jobs")]
pub mod vision;
#[cfg(feature = "jobs")]
pub mod xmp;

#[cfg(feature = "jobs")]
pub use analysis::{
    Analysis, DominantColour, Exposure, ExposureVerdict, NEAR_DUPLICATE_DISTANCE, NearDuplicates, PHash, analyze,
};
#[cfg(feature = "jobs")]
pub use decode::{ColourConversion, Decoded, decode, decode_scaled};
#[cfg(feature = "jobs")]
pub use error::ImageError;
#[cfg(feature = "jobs")]
pub use format::{Format, Header, read_header, sniff};
#[cfg(feature = "jobs")]
pub use kept_metadata::KeptMetadata;
#[cfg(feature = "jobs")]
pub use limits::{Limits, estimate_decoded_bytes};
#[cfg(feature = "jobs")]
pub use metadata::{GpsPosition, Metadata, read_metadata};
#[cfg(feature = "jobs")]
pub use variants::{
    OutputFormat, RECIPE_VERSION, Variant, VariantSpec, Watermark, WatermarkPosition, make_variants, sha256_hex,
};
