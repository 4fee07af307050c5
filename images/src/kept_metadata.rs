//! The metadata a variant may keep. Variants carry none by default; a request may keep some
//! fields of a fixed, safe set: the photographer's credit, `artist` and `copyright`
//! ([`fleet_jobs::catalogue::image::KEEPABLE_METADATA`]). Location is never kept, whatever is
//! asked: a request naming anything else (GPS or location names included) is refused before any
//! work ([`fleet_jobs::catalogue::image::check_kept_metadata`]), and the block written is built
//! from these two values alone, never copied from the source, so no other tag can come along.
//!
//! The values come from the source's EXIF (`Artist`, `Copyright`) and are written as a fresh
//! EXIF block of those tags only (`kamadak-exif`'s writer), put into the JPEG as an APP1
//! segment and into the WebP as an `EXIF` chunk (with the `VP8X` header that announces it) by
//! `img-parts`, and handed to the AVIF encoder (`ravif`), which stores it as the file's `Exif`
//! item.

use bytes::Bytes;
use exif::{Field, In, Tag, Value};
use img_parts::ImageEXIF;
use serde::{Deserialize, Serialize};

use crate::error::ImageError;
use crate::metadata::Metadata;
use crate::variants::OutputFormat;

/// Longest kept value, in bytes (a credit line, not a document).
pub const MAX_KEPT_VALUE_BYTES: usize = 1024;

/// The fields a variant keeps, with their values from the source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct KeptMetadata {
    /// `Artist`: who took the photo.
    pub artist: Option<String>,
    /// `Copyright`: who holds the rights.
    pub copyright: Option<String>,
}

impl KeptMetadata {
    /// The values of `fields` (names from the keepable set; others are ignored here, as the
    /// request was checked before) in the source's metadata. A field the source does not
    /// have is not written.
    pub fn from_source(source: &Metadata, fields: &[String]) -> Self {
        let wants = |name: &str| fields.iter().any(|f| f == name);
        KeptMetadata {
            artist: wants("artist").then(|| source.artist.as_deref().and_then(clean)).flatten(),
            copyright: wants("copyright").then(|| source.copyright.as_deref().and_then(clean)).flatten(),
        }
    }

    /// True when nothing is kept (the variant carries no metadata at all).
    pub fn is_empty(&self) -> bool {
        self.artist.is_none() && self.copyright.is_none()
    }

    /// A stable description for the recipe hash (the kept values change the output bytes).
    pub(crate) fn canonical(&self) -> String {
        format!("artist={:?};copyright={:?}", self.artist, self.copyright)
    }

    /// The EXIF block (a little-endian TIFF structure) of the kept tags only.
    fn exif_block(&self) -> Result<Vec<u8>, ImageError> {
        let ascii = |tag: Tag, v: &str| Field { tag, ifd_num: In::PRIMARY, value: Value::Ascii(vec![v.into()]) };
        let fields: Vec<Field> = [(Tag::Artist, &self.artist), (Tag::Copyright, &self.copyright)]
            .into_iter()
            .filter_map(|(tag, v)| v.as_deref().map(|v| ascii(tag, v)))
            .collect();
        let mut writer = exif::experimental::Writer::new();
        fields.iter().for_each(|f| writer.push_field(f));
        let mut out = std::io::Cursor::new(Vec::new());
        writer.write(&mut out, true).map_err(|e| ImageError::Internal(format!("EXIF writer: {e}")))?;
        Ok(out.into_inner())
    }

    /// The EXIF block for the AVIF encoder (which writes it as the file's `Exif` item), `None`
    /// when nothing is kept: AVIF gets its metadata at encoding, not afterwards.
    pub(crate) fn exif_for_avif(&self) -> Result<Option<Vec<u8>>, ImageError> {
        if self.is_empty() { Ok(None) } else { self.exif_block().map(Some) }
    }

    /// `encoded` (a variant just encoded, without metadata) with the kept tags in it; AVIF
    /// variants are returned as they are (their encoder was given [`Self::exif_for_avif`]).
    pub(crate) fn embed(&self, encoded: Vec<u8>, format: OutputFormat) -> Result<Vec<u8>, ImageError> {
        if self.is_empty() {
            return Ok(encoded);
        }
        let exif = Bytes::from(self.exif_block()?);
        let container = |e: img_parts::Error| ImageError::Internal(format!("writing the kept metadata: {e}"));
        let out = match format {
            OutputFormat::Jpeg => {
                let mut jpeg = img_parts::jpeg::Jpeg::from_bytes(encoded.into()).map_err(container)?;
                jpeg.set_exif(Some(exif));
                jpeg.encoder().bytes()
            }
            OutputFormat::Webp => {
                let mut webp = img_parts::webp::WebP::from_bytes(encoded.into()).map_err(container)?;
                webp.set_exif(Some(exif));
                webp.encoder().bytes()
            }
            // The AVIF encoder wrote the block itself ([`Self::exif_for_avif`]).
            OutputFormat::Avif => return Ok(encoded),
        };
        Ok(out.to_vec())
    }
}

/// A value as written: control characters dropped, trimmed, at most
/// [`MAX_KEPT_VALUE_BYTES`]; `None` when nothing is left.
fn clean(v: &str) -> Option<String> {
    let mut s: String = v.chars().filter(|c| !c.is_control()).collect::<String>().trim().to_owned();
    if s.len() > MAX_KEPT_VALUE_BYTES {
        let mut end = MAX_KEPT_VALUE_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Metadata {
        Metadata {
            artist: Some("Ada Lovelace".into()),
            copyright: Some("© 2026 Ada\0 Lovelace\n".into()),
            make: Some("NIKON".into()),
            gps_present: true,
            ..Metadata::default()
        }
    }

    #[test]
    fn only_the_named_fields_of_the_source_are_kept() {
        let kept = KeptMetadata::from_source(&source(), &["copyright".into()]);
        assert_eq!(kept, KeptMetadata { artist: None, copyright: Some("© 2026 Ada Lovelace".into()) });
        let none = KeptMetadata::from_source(&Metadata::default(), &["artist".into(), "copyright".into()]);
        assert!(none.is_empty());
        assert!(KeptMetadata::from_source(&source(), &[]).is_empty());
        let long = Metadata { artist: Some("é".repeat(MAX_KEPT_VALUE_BYTES)), ..Metadata::default() };
        let kept = KeptMetadata::from_source(&long, &["artist".into()]);
        assert_eq!(kept.artist.unwrap().len(), MAX_KEPT_VALUE_BYTES);
    }

    #[test]
    fn the_block_holds_the_kept_tags_and_nothing_else() {
        let kept = KeptMetadata::from_source(&source(), &["artist".into(), "copyright".into()]);
        let block = kept.exif_block().unwrap();
        let exif = exif::Reader::new().read_raw(block).unwrap();
        let tags: Vec<Tag> = exif.fields().map(|f| f.tag).collect();
        assert_eq!(tags, [Tag::Artist, Tag::Copyright]);
    }
}
