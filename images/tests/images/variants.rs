use fleet_images::{
    ImageError, Limits, OutputFormat, VariantSpec, Watermark, WatermarkPosition, analyze, decode, make_variants,
};
use image::DynamicImage;

use crate::support::*;

fn redecode(bytes: &[u8]) -> (image::ImageFormat, DynamicImage) {
    let format = image::guess_format(bytes).unwrap();
    (format, image::load_from_memory(bytes).unwrap())
}

#[test]
fn default_spec_resizes_encodes_and_strips_metadata() {
    // Stored rotated with EXIF orientation 6 and carrying EXIF: outputs must be upright and bare.
    let source = fixture("exif/orientation/landscape_6.jpg");
    let decoded = decode(&source, &Limits::default()).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (600, 450));
    let spec = VariantSpec { widths: vec![160, 320, 640, 2048], ..VariantSpec::default() };
    let variants = make_variants(&decoded, &spec).unwrap();
    // 640 and 2048 collapse to the 600 px source width (never upscaled).
    let widths: Vec<u32> = variants.iter().map(|v| v.width).collect();
    assert_eq!(widths, vec![600, 600, 320, 320, 160, 160]);
    let upright_hash = analyze(&decoded).unwrap().phash;
    for v in &variants {
        assert_eq!(v.byte_len, v.bytes.len());
        assert_eq!(v.sha256, fleet_images::sha256_hex(&v.bytes));
        let expected_h = (450.0 * f64::from(v.width) / 600.0).round() as u32;
        assert_eq!(v.height, expected_h);
        let (format, img) = redecode(&v.bytes);
        assert_eq!((img.width(), img.height()), (v.width, v.height));
        match v.format {
            OutputFormat::Jpeg => {
                assert_eq!(format, image::ImageFormat::Jpeg);
                let segments = fleet_images::jpeg_markers::header_segments(&v.bytes);
                assert!(segments.iter().all(|s| s.marker != 0xE1), "JPEG variant has an APP1 (EXIF/XMP) segment");
                assert!(segments.iter().all(|s| s.marker != 0xE2), "JPEG variant has an APP2 (ICC) segment");
                assert!(!v.bytes.windows(4).any(|w| w == b"Exif"));
            }
            OutputFormat::Webp => {
                assert_eq!(format, image::ImageFormat::WebP);
                let chunks = webp_chunks(&v.bytes);
                assert!(
                    chunks.iter().all(|c| matches!(c, b"VP8 " | b"VP8L" | b"VP8X" | b"ALPH")),
                    "unexpected WebP chunks {chunks:?}"
                );
            }
            OutputFormat::Avif => unreachable!("AVIF is not in the default formats"),
        }
        // Upright: the variant looks like the upright decode.
        let again = decode(&v.bytes, &Limits::default()).unwrap();
        assert_eq!(again.orientation, 1);
        let d = upright_hash.distance(analyze(&again).unwrap().phash);
        assert!(d <= 8, "{}w {:?}: pHash distance {d}", v.width, v.format);
        let m = fleet_images::read_metadata(&v.bytes, true);
        assert!(!m.exif_present && !m.gps_present);
    }
}

#[test]
fn gps_never_reaches_a_variant() {
    let source = fixture("exif/gps/DSCN0010.jpg");
    assert!(fleet_images::read_metadata(&source, false).gps_present);
    let decoded = decode(&source, &Limits::default()).unwrap();
    let spec = VariantSpec { widths: vec![200], ..VariantSpec::default() };
    for v in make_variants(&decoded, &spec).unwrap() {
        let m = fleet_images::read_metadata(&v.bytes, true);
        assert!(!m.gps_present && !m.exif_present, "{:?}", v.format);
        assert!(!v.bytes.windows(4).any(|w| w == b"Exif" || w == b"EXIF" || w == b"XMP "));
    }
}

#[test]
fn alpha_is_flattened_for_jpeg_and_kept_for_webp() {
    let decoded = decode_fixture("formats/transparent_with_icc_profile.png");
    assert!(decoded.has_alpha());
    let spec = VariantSpec { widths: vec![100], ..VariantSpec::default() };
    let variants = make_variants(&decoded, &spec).unwrap();
    let jpeg = variants.iter().find(|v| v.format == OutputFormat::Jpeg).unwrap();
    let webp = variants.iter().find(|v| v.format == OutputFormat::Webp).unwrap();
    assert!(!redecode(&jpeg.bytes).1.color().has_alpha());
    assert!(redecode(&webp.bytes).1.color().has_alpha());
    // Fully transparent corners become white in the JPEG.
    let rgba = decoded.image.to_rgba8();
    if rgba.get_pixel(0, 0).0[3] == 0 {
        let corner = redecode(&jpeg.bytes).1.to_rgb8().get_pixel(0, 0).0;
        assert!(corner.iter().all(|&c| c > 240), "{corner:?}");
    }
}

#[test]
fn watermark_is_blended_in_the_chosen_corner() {
    let black = image::RgbImage::from_pixel(400, 300, image::Rgb([0, 0, 0]));
    let decoded = decode(&encode_png(&DynamicImage::ImageRgb8(black)), &Limits::default()).unwrap();
    let white_mark = image::RgbaImage::from_pixel(50, 50, image::Rgba([255, 255, 255, 255]));
    let spec = VariantSpec {
        widths: vec![400],
        formats: vec![OutputFormat::Jpeg],
        jpeg_quality: 95,
        watermark: Some(Watermark {
            image: encode_png(&DynamicImage::ImageRgba8(white_mark)),
            position: WatermarkPosition::BottomRight,
            opacity: 0.5,
            scale: 0.25,
            margin: 0.0,
        }),
        ..VariantSpec::default()
    };
    let v = &make_variants(&decoded, &spec).unwrap()[0];
    let img = redecode(&v.bytes).1.to_rgb8();
    let marked = img.get_pixel(400 - 50, 300 - 50).0;
    assert!(marked.iter().all(|&c| (110..=145).contains(&c)), "half-opaque white over black: {marked:?}");
    assert!(img.get_pixel(10, 10).0.iter().all(|&c| c < 10));
    assert!(img.get_pixel(400 - 120, 300 - 50).0.iter().all(|&c| c < 10), "mark is 100 px wide");

    let mut bad = spec.clone();
    bad.watermark.as_mut().unwrap().image = b"not an image".to_vec();
    assert!(matches!(make_variants(&decoded, &bad), Err(ImageError::InvalidRequest(_))));
}

#[test]
fn recipe_hash_is_deterministic_and_sensitive() {
    let spec = VariantSpec::default();
    assert_eq!(spec.recipe_hash(), VariantSpec::default().recipe_hash());
    assert_eq!(spec.recipe_hash().len(), 64);
    let reordered = VariantSpec { widths: vec![2048, 320, 1280, 640], ..VariantSpec::default() };
    assert_eq!(spec.recipe_hash(), reordered.recipe_hash());
    let other_quality = VariantSpec { jpeg_quality: 81, ..VariantSpec::default() };
    assert_ne!(spec.recipe_hash(), other_quality.recipe_hash());
    let json = serde_json::to_string(&other_quality).unwrap();
    let back: VariantSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back.recipe_hash(), other_quality.recipe_hash());
    let partial: VariantSpec = serde_json::from_str(r#"{"widths":[100]}"#).unwrap();
    assert_eq!(partial.formats, VariantSpec::default().formats);
}

#[test]
fn invalid_specs_are_permanent_errors() {
    let decoded = decode_fixture("formats/people.jpg");
    for spec in [
        VariantSpec { widths: vec![], ..VariantSpec::default() },
        VariantSpec { widths: vec![0], ..VariantSpec::default() },
        VariantSpec { formats: vec![], ..VariantSpec::default() },
        VariantSpec { jpeg_quality: 0, ..VariantSpec::default() },
        VariantSpec { webp_method: 9, ..VariantSpec::default() },
    ] {
        let err = make_variants(&decoded, &spec).unwrap_err();
        assert!(matches!(err, ImageError::InvalidRequest(_)) && err.is_permanent(), "{err}");
    }
}

#[test]
fn same_input_gives_same_bytes() {
    let decoded = decode_fixture("formats/tree.webp");
    let spec = VariantSpec { widths: vec![200, 100], ..VariantSpec::default() };
    let a = make_variants(&decoded, &spec).unwrap();
    let b = make_variants(&decoded, &spec).unwrap();
    assert_eq!(a.iter().map(|v| &v.sha256).collect::<Vec<_>>(), b.iter().map(|v| &v.sha256).collect::<Vec<_>>());
}

/// Figures for one 12 MP photo-like JPEG (run in release:
/// `cargo test --release -p fleet-image --test images timing_12mp -- --ignored --nocapture`).
#[test]
#[ignore]
fn timing_12mp() {
    use std::time::Instant;
    let small = decode_fixture("exif/gps/DSCN0010.jpg").image.to_rgb8();
    let mut big = image::imageops::resize(&small, 4000, 3000, image::imageops::FilterType::CatmullRom);
    // Sensor-like grain so the encoders do real work.
    let mut seed = 1u32;
    for p in big.pixels_mut() {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        // ±4 levels, the same on all channels (luma grain, as a low-ISO sensor gives).
        let n = ((seed >> 24) as i16 - 128) / 32;
        p.0 = p.0.map(|c| (i16::from(c) + n).clamp(0, 255) as u8);
    }
    let jpeg = encode_jpeg(&big, 92);
    drop(big);
    let t = Instant::now();
    let header = fleet_images::read_header(&jpeg, &Limits::default()).unwrap();
    let t_header = t.elapsed();
    let t = Instant::now();
    let decoded = decode(&jpeg, &Limits::default()).unwrap();
    let t_decode = t.elapsed();
    let t = Instant::now();
    let analysis = analyze(&decoded).unwrap();
    let t_analysis = t.elapsed();
    let t = Instant::now();
    let variants = make_variants(&decoded, &VariantSpec::default()).unwrap();
    let t_variants = t.elapsed();
    let spec_m2 = VariantSpec { webp_method: 2, ..VariantSpec::default() };
    let t = Instant::now();
    make_variants(&decoded, &spec_m2).unwrap();
    let t_variants_m2 = t.elapsed();
    eprintln!(
        "12 MP JPEG {} KB: header {t_header:?}, decode {t_decode:?}, analyze {t_analysis:?}, variants (m4) {t_variants:?}, variants (m2) {t_variants_m2:?}, estimate {} MB, sharpness {:.0}",
        jpeg.len() / 1024,
        fleet_images::estimate_decoded_bytes(&header) >> 20,
        analysis.sharpness
    );
    for v in variants {
        eprintln!("  {}w {:?}: {} KB", v.width, v.format, v.byte_len / 1024);
    }
    for (name, formats, widths) in [
        ("resize + jpeg", vec![OutputFormat::Jpeg], vec![320, 640, 1280, 2048]),
        ("resize + webp m4", vec![OutputFormat::Webp], vec![320, 640, 1280, 2048]),
        ("resize 2048 + jpeg", vec![OutputFormat::Jpeg], vec![2048]),
        ("resize 2048 + webp m4", vec![OutputFormat::Webp], vec![2048]),
    ] {
        let spec = VariantSpec { formats, widths, ..VariantSpec::default() };
        let t = Instant::now();
        make_variants(&decoded, &spec).unwrap();
        eprintln!("  {name}: {:?}", t.elapsed());
    }
}
