//! AVIF in and out: uploads decoded by libdav1d (8/10/12-bit, 4:4:4/4:2:0/4:0:0, alpha,
//! limited range, `irot`/`imir`), hostile files refused with one clear error, and AVIF variants
//! (rav1e) that an independent decoder reads back: libavif's `avifdec` (Debian's `libavif-bin`,
//! installed by `scripts/build-deps.sh`) when it is on the PATH, and always this crate's dav1d
//! path, a different codec library than the encoder's.

use fleet_images::{
    Format, ImageError, KeptMetadata, Limits, OutputFormat, VariantSpec, analyze, decode, make_variants, read_header,
};
use image::{DynamicImage, RgbImage, RgbaImage};

use crate::support::*;

/// Mean absolute difference per sample of two same-sized RGB images.
fn mean_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
    sum as f64 / a.as_raw().len() as f64
}

/// libavif's decoder (`avifdec`, with its own AV1 decoder choice), when installed: the AVIF
/// decoded to PNG and read back. `None` (with a note) when `avifdec` is not on the PATH.
fn avifdec(bytes: &[u8]) -> Option<RgbaImage> {
    let dir =
        std::env::temp_dir().join(format!("fleet-avifdec-{}-{}", std::process::id(), fleet_images::sha256_hex(bytes)));
    std::fs::create_dir_all(&dir).unwrap();
    let (input, output) = (dir.join("in.avif"), dir.join("out.png"));
    std::fs::write(&input, bytes).unwrap();
    let run = std::process::Command::new("avifdec").arg(&input).arg(&output).output();
    let decoded = match run {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("avifdec not installed (scripts/build-deps.sh installs libavif-bin): independent check skipped");
            None
        }
        Err(e) => panic!("avifdec: {e}"),
        Ok(out) => {
            assert!(out.status.success(), "avifdec refused the file: {}", String::from_utf8_lossy(&out.stderr));
            Some(image::open(&output).unwrap().into_rgba8())
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    decoded
}

#[test]
fn an_avif_decodes_to_the_same_picture_as_its_webp_twin() {
    let bytes = fixture("formats/tree.avif");
    let header = read_header(&bytes, &Limits::default()).unwrap();
    assert_eq!((header.format, header.width, header.height), (Format::Avif, 320, 241));
    let avif = decode(&bytes, &Limits::default()).unwrap();
    assert_eq!((avif.width(), avif.height(), avif.has_alpha(), avif.orientation), (320, 241, false, 1));
    // The same photo, encoded as WebP by the fixture's authors.
    let webp = decode_fixture("formats/tree.webp");
    let d = mean_diff(&avif.image.to_rgb8(), &webp.image.to_rgb8());
    assert!(d < 6.0, "AVIF and WebP of the same tree differ by {d:.2} per sample");
    // And what libavif makes of it.
    if let Some(reference) = avifdec(&bytes) {
        let d = mean_diff(&avif.image.to_rgb8(), &DynamicImage::ImageRgba8(reference).to_rgb8());
        assert!(d < 2.0, "dav1d path vs avifdec: {d:.2} per sample");
    }
}

#[test]
fn ten_bit_444_limited_range_with_alpha_keeps_colours_and_alpha() {
    // Made by libavif/aom from the 16-bit RGBA PNG beside it, nearly lossless (see the README).
    let decoded = decode_fixture("formats/avif_basn6a16_10bit_444_limited_alpha.avif");
    assert!(decoded.has_alpha());
    let png = decode_fixture("formats/image-rs_png_16bpc_basn6a16.png").image.into_rgba8();
    let avif = decoded.image.into_rgba8();
    let alpha_diff = avif.pixels().zip(png.pixels()).map(|(a, b)| a.0[3].abs_diff(b.0[3])).max().unwrap();
    assert!(alpha_diff <= 1, "alpha differs by {alpha_diff}");
    // Colours where the pixel is visible enough to matter.
    let (mut sum, mut n) = (0u64, 0u64);
    for (a, b) in avif.pixels().zip(png.pixels()) {
        if b.0[3] >= 128 {
            sum += (0..3).map(|c| u64::from(a.0[c].abs_diff(b.0[c]))).sum::<u64>();
            n += 3;
        }
    }
    assert!(n > 0 && (sum as f64 / n as f64) < 3.0, "colours differ by {:.2}", sum as f64 / n as f64);
}

#[test]
fn twelve_bit_greyscale_comes_out_grey() {
    let grey = decode_fixture("formats/avif_tree_12bit_grey.avif");
    assert_eq!((grey.width(), grey.height()), (320, 241));
    let rgb = grey.image.to_rgb8();
    assert!(rgb.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]), "4:0:0 must be grey");
    // The same tree: its luma, roughly.
    let colour = decode_fixture("formats/tree.avif").image.to_luma8();
    let luma = DynamicImage::ImageRgb8(rgb).to_luma8();
    let d: u64 = luma.as_raw().iter().zip(colour.as_raw()).map(|(a, b)| u64::from(a.abs_diff(*b))).sum();
    assert!((d as f64 / luma.as_raw().len() as f64) < 6.0);
}

#[test]
fn display_p3_avif_is_converted_to_srgb() {
    // A flat (200, 100, 50) in Display P3 (CICP 12/13/1, 4:4:4): in sRGB the red is deeper,
    // about (215, 93, 30).
    let p3 = decode_fixture("formats/avif_p3_16x16.avif");
    assert_eq!(p3.colour, fleet_images::ColourConversion::IccToSrgb, "{:?}", p3.warnings);
    let px = p3.image.to_rgb8().get_pixel(8, 8).0;
    for (got, want) in px.iter().zip([215u8, 93, 30]) {
        assert!(got.abs_diff(want) <= 4, "{px:?} is not P3 (200, 100, 50) in sRGB");
    }
}

#[test]
fn rotation_and_mirror_properties_are_applied() {
    // The tree with `irot` 1 (a quarter turn anticlockwise) and `imir` axis 0 (top and bottom
    // exchanged): displayed, it is the tree transposed.
    let turned = decode_fixture("formats/avif_tree_irot1_imir0.avif");
    assert_eq!((turned.width(), turned.height()), (241, 320));
    assert_eq!(turned.source_size(), (241, 320));
    let expected = decode_fixture("formats/tree.avif").image.rotate270().flipv();
    let d = mean_diff(&turned.image.to_rgb8(), &expected.to_rgb8());
    assert!(d < 4.0, "the turned tree differs by {d:.2} from the tree transposed");
    if let Some(reference) = avifdec(&fixture("formats/avif_tree_irot1_imir0.avif")) {
        // avifdec writes the stored (unturned) pixels: the properties are the reader's job.
        assert_eq!(reference.dimensions(), (320, 241));
    }
}

#[test]
fn truncated_and_corrupt_avifs_are_refused_with_a_clear_error() {
    let bytes = fixture("formats/tree.avif");
    let limits = Limits::default();
    let err = decode(&bytes[..bytes.len() / 2], &limits).unwrap_err();
    assert!(matches!(err, ImageError::Truncated(_)), "{err}");
    assert!(err.to_string().starts_with("truncated image: AVIF"), "{err}");
    // Cut anywhere: an error that says what is wrong, never a panic, never a picture.
    for cut in [40, 200, bytes.len() - 1000, bytes.len() - 10, bytes.len() - 1] {
        let err = decode(&bytes[..cut], &limits).unwrap_err();
        assert!(err.is_permanent() && matches!(err.kind(), "truncated" | "corrupt"), "cut at {cut}: {err}");
    }
    // The AV1 data overwritten: the sequence header is unreadable.
    let mdat = bytes.windows(4).position(|w| w == b"mdat").unwrap() + 4;
    let mut broken = bytes.clone();
    broken[mdat..mdat + 16].fill(0xFF);
    let err = decode(&broken, &limits).unwrap_err();
    assert!(err.is_permanent() && matches!(err.kind(), "corrupt" | "truncated"), "{err}");
    // Garbage in the middle of the tile data: refused or decoded, but never a panic.
    let mut noisy = bytes.clone();
    let mid = mdat + (bytes.len() - mdat) / 2;
    noisy[mid..mid + 64].iter_mut().for_each(|b| *b ^= 0x5A);
    if let Err(err) = decode(&noisy, &limits) {
        assert!(err.is_permanent(), "{err}");
    }
}

#[test]
fn an_avif_over_the_pixel_caps_is_refused_from_its_header() {
    let bytes = fixture("formats/tree.avif");
    let limits = Limits { max_pixels: 320 * 200, ..Limits::default() };
    let err = read_header(&bytes, &limits).unwrap_err();
    assert!(matches!(err, ImageError::TooLarge(_)), "{err}");
    let err = decode(&bytes, &Limits { max_width: 300, ..Limits::default() }).unwrap_err();
    assert!(matches!(err, ImageError::TooLarge(_)), "{err}");
}

#[test]
fn avif_variants_decode_back_upright_and_bare() {
    let decoded = decode(&fixture("exif/orientation/landscape_6.jpg"), &Limits::default()).unwrap();
    let spec = VariantSpec { widths: vec![160, 320], formats: vec![OutputFormat::Avif], ..VariantSpec::default() };
    let variants = make_variants(&decoded, &spec).unwrap();
    assert_eq!(
        variants.iter().map(|v| (v.width, v.format)).collect::<Vec<_>>(),
        [(320, OutputFormat::Avif), (160, OutputFormat::Avif)]
    );
    let upright = analyze(&decoded).unwrap().phash;
    for v in &variants {
        assert_eq!(&v.bytes[4..12], b"ftypavif");
        assert_eq!((OutputFormat::Avif.mime(), OutputFormat::Avif.extension()), ("image/avif", "avif"));
        let again = decode(&v.bytes, &Limits::default()).unwrap();
        assert_eq!((again.width(), again.height(), again.header.format), (v.width, v.height, Format::Avif));
        let d = upright.distance(analyze(&again).unwrap().phash);
        assert!(d <= 8, "{}w: pHash distance {d}", v.width);
        let m = fleet_images::read_metadata(&v.bytes, true);
        assert!(!m.exif_present && !m.gps_present, "{m:?}");
        assert!(!v.bytes.windows(4).any(|w| w == b"Exif" || w == b"mime"), "no EXIF or XMP item");
        if let Some(reference) = avifdec(&v.bytes) {
            assert_eq!(reference.dimensions(), (v.width, v.height));
            let d = mean_diff(&again.image.to_rgb8(), &DynamicImage::ImageRgba8(reference).to_rgb8());
            assert!(d < 2.0, "{}w: dav1d path vs avifdec differ by {d:.2}", v.width);
        }
    }
    // Smaller than the JPEG of the same width at the default settings.
    let jpeg = make_variants(&decoded, &VariantSpec { widths: vec![320], ..VariantSpec::default() }).unwrap();
    assert!(variants[0].byte_len < jpeg[0].byte_len, "{} vs {}", variants[0].byte_len, jpeg[0].byte_len);
}

#[test]
fn avif_variants_keep_the_credit_and_never_the_location() {
    let source = fixture("exif/gps/DSCN0010.jpg");
    assert!(fleet_images::read_metadata(&source, false).gps_present);
    let decoded = decode(&source, &Limits::default()).unwrap();
    let keep = KeptMetadata { artist: Some("Ada Lovelace".into()), copyright: Some("© 2026 Ada Lovelace".into()) };
    let spec = VariantSpec {
        widths: vec![200],
        formats: vec![OutputFormat::Avif],
        keep_metadata: keep,
        ..VariantSpec::default()
    };
    let v = make_variants(&decoded, &spec).unwrap().remove(0);
    let m = fleet_images::read_metadata(&v.bytes, true);
    assert_eq!(m.artist.as_deref(), Some("Ada Lovelace"));
    assert_eq!(m.copyright.as_deref(), Some("© 2026 Ada Lovelace"));
    assert!(!m.gps_present && m.gps.is_none() && m.make.is_none(), "{m:?}");
    // Still a valid AVIF for another decoder.
    if let Some(reference) = avifdec(&v.bytes) {
        assert_eq!(reference.dimensions(), (v.width, v.height));
    }
}

#[test]
fn gps_in_an_avif_xmp_item_is_found_and_never_reaches_a_variant() {
    // No EXIF; the position only in the XMP item (48°51.5'N 2°17.4'E).
    let bytes = fixture("formats/avif_xmp_gps.avif");
    let m = fleet_images::read_metadata(&bytes, true);
    assert!(!m.exif_present && m.gps_present, "{m:?}");
    let gps = m.gps.unwrap();
    assert!((gps.latitude - 48.858_33).abs() < 1e-4 && (gps.longitude - 2.29).abs() < 1e-4, "{gps:?}");
    assert!(fleet_images::read_metadata(&bytes, false).gps.is_none());
    let decoded = decode(&bytes, &Limits::default()).unwrap();
    let spec = VariantSpec { widths: vec![32], formats: vec![OutputFormat::Avif], ..VariantSpec::default() };
    let v = make_variants(&decoded, &spec).unwrap().remove(0);
    assert!(!fleet_images::read_metadata(&v.bytes, true).gps_present);
    assert!(!v.bytes.windows(8).any(|w| w == b"GPSLatit"), "no XMP in the variant");
}

#[test]
fn avif_variants_keep_alpha_and_settings_are_checked() {
    let decoded = decode_fixture("formats/transparent_with_icc_profile.png");
    let spec = VariantSpec { widths: vec![100], formats: vec![OutputFormat::Avif], ..VariantSpec::default() };
    let v = make_variants(&decoded, &spec).unwrap().remove(0);
    assert!(decode(&v.bytes, &Limits::default()).unwrap().has_alpha());
    for bad in [
        VariantSpec { avif_speed: 0, ..spec.clone() },
        VariantSpec { avif_speed: 11, ..spec.clone() },
        VariantSpec { avif_quality: 0, ..spec.clone() },
    ] {
        assert!(matches!(make_variants(&decoded, &bad), Err(ImageError::InvalidRequest(_))));
    }
    // AVIF settings change the recipe only when AVIF is made.
    let plain = VariantSpec::default();
    assert_eq!(plain.recipe_hash(), VariantSpec { avif_speed: 4, ..plain.clone() }.recipe_hash());
    assert_ne!(spec.recipe_hash(), VariantSpec { avif_speed: 4, ..spec.clone() }.recipe_hash());
}
