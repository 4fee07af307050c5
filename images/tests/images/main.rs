//! Tests of fleet-image against the fixtures in `tests/fixtures/images` (see its README for
//! sources and licences) and inputs built by the tests themselves (bombs, EXIF chunks, TIFF).

mod analysis;
mod avif;
mod decode;
mod metadata;
mod support;
mod variants;
