//! Safe decode: header first (limits), then pixels with decoder allocation caps, panics caught,
//! truncation detected, colour converted to sRGB and EXIF orientation applied. The result is
//! always 8-bit RGB or RGBA, upright, sRGB — what analysis and variants expect.

use image::{DynamicImage, ImageDecoder, metadata::Orientation};
use serde::{Deserialize, Serialize};

use crate::colour::{self, Profile};
use crate::error::{ImageError, catch_decoder_panic};
use crate::format::{Format, Header, read_header};
use crate::jpeg_markers;
use crate::limits::Limits;

/// What happened to the colours on the way to sRGB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColourConversion {
    /// No embedded profile: the samples are taken as sRGB.
    Untagged,
    /// An sRGB (or sRGB-equivalent) profile: nothing to do.
    Srgb,
    /// An RGB profile (Display P3, Adobe RGB, ProPhoto …) converted to sRGB.
    IccToSrgb,
    /// CMYK converted through its embedded profile.
    CmykIcc,
    /// CMYK or YCCK without a usable profile: naive conversion.
    CmykNaive,
    /// A profile was present but unusable (unreadable, too large, grey): ignored, see warnings.
    IccIgnored,
}

/// A decoded image: 8-bit RGB or RGBA, upright (EXIF orientation applied), sRGB.
#[derive(Clone)]
pub struct Decoded {
    /// The pixels; always `DynamicImage::ImageRgb8` or `DynamicImage::ImageRgba8`. RGBA only when
    /// some pixel is not fully opaque.
    pub image: DynamicImage,
    /// The header as read before decoding (stored, not upright, dimensions).
    pub header: Header,
    /// The EXIF orientation (1–8) that was applied to the pixels; 1 when there was none.
    pub orientation: u8,
    /// How colours were brought to sRGB.
    pub colour: ColourConversion,
    /// Things that did not stop the decode (an unreadable ICC profile …).
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for Decoded {
    // Not derived: a derived Debug would print every pixel.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoded")
            .field("width", &self.width())
            .field("height", &self.height())
            .field("has_alpha", &self.has_alpha())
            .field("header", &self.header)
            .field("orientation", &self.orientation)
            .field("colour", &self.colour)
            .field("warnings", &self.warnings)
            .finish()
    }
}

impl Decoded {
    /// Upright width.
    pub fn width(&self) -> u32 {
        self.image.width()
    }

    /// Upright height.
    pub fn height(&self) -> u32 {
        self.image.height()
    }

    /// Upright size of the source image (larger than the pixels after [`decode_scaled`]).
    pub fn source_size(&self) -> (u32, u32) {
        if (5..=8).contains(&self.orientation) {
            (self.header.height, self.header.width)
        } else {
            (self.header.width, self.header.height)
        }
    }

    /// Whether the pixels carry an alpha channel (some pixel is not opaque).
    pub fn has_alpha(&self) -> bool {
        matches!(self.image, DynamicImage::ImageRgba8(_))
    }
}

/// Decodes untrusted bytes (first frame of animations) within `limits`.
///
/// Errors: [`ImageError::Unsupported`] (HEIC, SVG …), [`ImageError::TooLarge`] (refused from
/// the header, before any pixel allocation), [`ImageError::Truncated`], [`ImageError::Corrupt`]
/// (including decoder panics). All of them are permanent.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Decoded, ImageError> {
    let header = read_header(bytes, limits)?;
    catch_decoder_panic("decoder", || decode_pixels(bytes, header, limits, None))
}

/// Like [`decode`], but a JPEG may come out smaller, as long as its upright size is at least
/// `min_width` × `min_height`: libjpeg-turbo decodes at 1/8 … 7/8 of the size straight from the
/// DCT coefficients, several times cheaper than a full decode followed by a resize. Analysis
/// needs ~512 px, the largest variant its own width. Other formats decode at full size.
pub fn decode_scaled(bytes: &[u8], limits: &Limits, min_width: u32, min_height: u32) -> Result<Decoded, ImageError> {
    let header = read_header(bytes, limits)?;
    catch_decoder_panic("decoder", || decode_pixels(bytes, header, limits, Some((min_width, min_height))))
}

fn decode_pixels(
    bytes: &[u8],
    header: Header,
    limits: &Limits,
    at_least: Option<(u32, u32)>,
) -> Result<Decoded, ImageError> {
    let mut warnings = Vec::new();
    if header.format == Format::Jpeg && !jpeg_markers::ends_with_eoi(bytes) {
        return Err(ImageError::Truncated("JPEG data ends without an end-of-image marker".into()));
    }
    let (image, icc, orientation, mut colour) = if header.cmyk {
        decode_cmyk_jpeg(bytes, &header, limits, &mut warnings)?
    } else if let (Format::Jpeg, Some(min)) = (header.format, at_least) {
        decode_jpeg_scaled(bytes, &header, limits, min)?
    } else if header.format == Format::Avif {
        let avif = crate::avif::decode(bytes, &header, limits)?;
        warnings.extend(avif.warnings);
        (avif.image, avif.icc, avif.orientation, ColourConversion::Untagged)
    } else {
        decode_generic(bytes, &header, limits)?
    };
    let mut image = to_rgb8_or_rgba8(image);

    if let Some(icc) = icc {
        colour = convert_rgb_profile(&mut image, &icc, limits, &mut warnings);
    }
    // An alpha channel that is opaque everywhere only costs: drop it (resizing RGBA premultiplies,
    // JPEG output would flatten).
    let mut image = match image {
        DynamicImage::ImageRgba8(rgba) if rgba.pixels().all(|p| p.0[3] == 255) => {
            DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(rgba).into_rgb8())
        }
        other => other,
    };
    image.apply_orientation(orientation);
    Ok(Decoded { image, header, orientation: orientation_to_exif(orientation), colour, warnings })
}

type Pixels = (DynamicImage, Option<Vec<u8>>, Orientation, ColourConversion);

/// Every format except CMYK JPEG, through `image` with dimension and allocation caps.
fn decode_generic(bytes: &[u8], header: &Header, limits: &Limits) -> Result<Pixels, ImageError> {
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), header.format.to_image_format());
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_width);
    l.max_image_height = Some(limits.max_height);
    l.max_alloc = Some(limits.max_alloc_bytes());
    reader.limits(l);
    let mut decoder = reader.into_decoder().map_err(ImageError::from_decode)?;
    // Metadata problems never fail the decode: a broken profile or EXIF is ignored.
    let icc = decoder.icc_profile().ok().flatten();
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder).map_err(ImageError::from_decode)?;
    Ok((image, icc, orientation, ColourConversion::Untagged))
}

/// A YCbCr or grey JPEG at the smallest n/8 scale whose upright size is at least `min`, through
/// libjpeg-turbo (mozjpeg); at full scale, the generic path.
fn decode_jpeg_scaled(bytes: &[u8], header: &Header, limits: &Limits, min: (u32, u32)) -> Result<Pixels, ImageError> {
    let (icc, orientation) = {
        let reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Jpeg);
        let mut decoder = reader.into_decoder().map_err(ImageError::from_decode)?;
        (decoder.icc_profile().ok().flatten(), decoder.orientation().unwrap_or(Orientation::NoTransforms))
    };
    let swapped = matches!(
        orientation,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    );
    let (need_w, need_h) = if swapped { (min.1, min.0) } else { min };
    let fits = |n: u32| {
        u64::from(header.width) * u64::from(n) >= u64::from(need_w) * 8
            && u64::from(header.height) * u64::from(n) >= u64::from(need_h) * 8
    };
    let Some(n) = (1..8u32).find(|&n| fits(n)) else { return decode_generic(bytes, header, limits) };
    let mut d = mozjpeg::Decompress::new_mem(bytes).map_err(|e| ImageError::Corrupt(format!("JPEG: {e}")))?;
    d.scale(n as u8);
    let mut started = d.rgb().map_err(|e| ImageError::Corrupt(format!("JPEG: {e}")))?;
    let (w, h) = (started.width() as u32, started.height() as u32);
    let rgb = started.read_scanlines::<u8>().map_err(|e| ImageError::Corrupt(format!("JPEG: {e}")))?;
    started.finish().map_err(|e| ImageError::Corrupt(format!("JPEG: {e}")))?;
    let buffer = image::RgbImage::from_raw(w, h, rgb)
        .ok_or_else(|| ImageError::Corrupt("JPEG decoder returned a short buffer".into()))?;
    Ok((DynamicImage::ImageRgb8(buffer), icc, orientation, ColourConversion::Untagged))
}

/// CMYK/YCCK JPEG: zune-jpeg directly, for the raw CMYK samples the ICC transform needs (`image`
/// only offers its naive RGB).
fn decode_cmyk_jpeg(
    bytes: &[u8],
    header: &Header,
    limits: &Limits,
    warnings: &mut Vec<String>,
) -> Result<Pixels, ImageError> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;

    let info = jpeg_markers::scan_header(bytes)?;
    // Without an APP14 transform byte, 4 components are plain CMYK; Adobe writes them inverted.
    let ycck = info.adobe_transform == Some(2);
    let adobe_inverted = info.adobe_transform.is_some();
    let options = DecoderOptions::default()
        .set_max_width(limits.max_width as usize)
        .set_max_height(limits.max_height as usize)
        .jpeg_set_out_colorspace(if ycck { ColorSpace::RGB } else { ColorSpace::CMYK });
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(|e| ImageError::Corrupt(format!("JPEG: {e:?}")))?;
    let icc = decoder.icc_profile();
    let orientation =
        decoder.exif().and_then(|exif| Orientation::from_exif_chunk(exif)).unwrap_or(Orientation::NoTransforms);
    let mut samples = decoder.decode().map_err(|e| ImageError::Corrupt(format!("JPEG: {e:?}")))?;
    let (w, h) = (header.width, header.height);

    let profile = match &icc {
        Some(icc) if icc.len() <= limits.max_icc_bytes => match Profile::parse(icc) {
            Ok(p) if p.is_cmyk() => Some(p),
            Ok(_) => {
                warnings.push("CMYK JPEG with a non-CMYK ICC profile: profile ignored".into());
                None
            }
            Err(e) => {
                warnings.push(e);
                None
            }
        },
        Some(icc) => {
            warnings.push(format!("ICC profile of {} bytes is over the limit: ignored", icc.len()));
            None
        }
        None => None,
    };
    let (rgb, colour) = if ycck {
        // zune-jpeg converts YCCK straight to RGB (the Adobe-inverted naive formula); it cannot
        // hand out the CMYK samples, so a profile cannot be applied.
        if profile.is_some() {
            warnings.push("YCCK JPEG: embedded CMYK profile not applied (naive conversion)".into());
        }
        (samples, ColourConversion::CmykNaive)
    } else {
        match profile {
            Some(p) => match colour::cmyk_to_srgb(&mut samples, w as usize, adobe_inverted, &p) {
                Ok(rgb) => (rgb, ColourConversion::CmykIcc),
                Err(e) => {
                    warnings.push(e);
                    // cmyk_to_srgb un-inverted the samples before failing.
                    (colour::cmyk_to_rgb_naive(&samples, false), ColourConversion::CmykNaive)
                }
            },
            None => (colour::cmyk_to_rgb_naive(&samples, adobe_inverted), ColourConversion::CmykNaive),
        }
    };
    let buffer = image::RgbImage::from_raw(w, h, rgb)
        .ok_or_else(|| ImageError::Corrupt("JPEG decoder returned a short buffer".into()))?;
    Ok((DynamicImage::ImageRgb8(buffer), None, orientation, colour))
}

/// 8-bit RGB or RGBA, whatever came out of the decoder (grey, palette-expanded, 16-bit, float).
fn to_rgb8_or_rgba8(image: DynamicImage) -> DynamicImage {
    match image {
        DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => image,
        other if other.color().has_alpha() => DynamicImage::ImageRgba8(other.into_rgba8()),
        other => DynamicImage::ImageRgb8(other.into_rgb8()),
    }
}

/// Applies an embedded RGB profile. Grey profiles on grey images and sRGB profiles are left alone.
fn convert_rgb_profile(
    image: &mut DynamicImage,
    icc: &[u8],
    limits: &Limits,
    warnings: &mut Vec<String>,
) -> ColourConversion {
    if icc.len() > limits.max_icc_bytes {
        warnings.push(format!("ICC profile of {} bytes is over the limit: ignored", icc.len()));
        return ColourConversion::IccIgnored;
    }
    let profile = match Profile::parse(icc) {
        Ok(p) => p,
        Err(e) => {
            warnings.push(e);
            return ColourConversion::IccIgnored;
        }
    };
    if !profile.is_rgb() {
        warnings.push("non-RGB ICC profile on an RGB image: ignored".into());
        return ColourConversion::IccIgnored;
    }
    if profile.is_srgb_like() {
        return ColourConversion::Srgb;
    }
    let width = image.width() as usize;
    let result = match image {
        DynamicImage::ImageRgb8(buf) => colour::rgb_to_srgb_in_place(buf, width, 3, &profile),
        DynamicImage::ImageRgba8(buf) => colour::rgb_to_srgb_in_place(buf, width, 4, &profile),
        _ => Err("unexpected pixel layout".into()),
    };
    match result {
        Ok(()) => ColourConversion::IccToSrgb,
        Err(e) => {
            warnings.push(e);
            ColourConversion::IccIgnored
        }
    }
}

fn orientation_to_exif(o: Orientation) -> u8 {
    match o {
        Orientation::NoTransforms => 1,
        Orientation::FlipHorizontal => 2,
        Orientation::Rotate180 => 3,
        Orientation::FlipVertical => 4,
        Orientation::Rotate90FlipH => 5,
        Orientation::Rotate90 => 6,
        Orientation::Rotate270FlipH => 7,
        Orientation::Rotate270 => 8,
    }
}
