use std::time::{Duration, Instant};

use fleet_images::{ColourConversion, Format, ImageError, Limits, decode, estimate_decoded_bytes, read_header, sniff};

use crate::support::*;

#[derive(serde::Deserialize)]
struct Truth {
    width: Option<u32>,
    height: Option<u32>,
    valid: bool,
}

#[test]
fn pngsuite_valid_files_decode_and_corrupt_ones_are_refused() {
    let truth: std::collections::BTreeMap<String, Truth> =
        serde_json::from_slice(&fixture("pngsuite/truth.json")).unwrap();
    let mut checked = (0, 0);
    for (name, t) in &truth {
        let path = format!("pngsuite/{name}");
        if !fixture_path(&path).exists() {
            continue;
        }
        let result = decode(&fixture(&path), &Limits::default());
        if t.valid {
            let d = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((Some(d.width()), Some(d.height())), (t.width, t.height), "{name}");
            assert_eq!(d.header.format, Format::Png);
            checked.0 += 1;
        } else {
            let err = result.err().unwrap_or_else(|| panic!("{name} must be refused"));
            assert!(err.is_permanent(), "{name}: {err}");
            checked.1 += 1;
        }
    }
    assert!(checked.0 > 150 && checked.1 >= 14, "{checked:?}");
}

#[test]
fn every_supported_format_decodes() {
    // (file, format, width, height, alpha)
    let cases = [
        ("formats/people.jpg", Format::Jpeg, 600, 400, false),
        ("formats/image-rs_jpg_progressive_cat.jpg", Format::Jpeg, 320, 240, false),
        ("formats/image-rs_png_apng_ball.png", Format::Png, 100, 100, true),
        ("formats/image-rs_png_16bpc_basn6a16.png", Format::Png, 32, 32, true),
        ("formats/transparent_with_icc_profile.png", Format::Png, 200, 150, true),
        ("formats/image-rs_webp_lossy_images_simple-rgb.webp", Format::Webp, 100, 100, false),
        ("formats/image-rs_webp_lossy_images_simple-gray.webp", Format::Webp, 100, 100, false),
        ("formats/image-rs_webp_lossless_images_simple.webp", Format::Webp, 0, 0, false),
        ("formats/image-rs_webp_extended_images_lossy_alpha.webp", Format::Webp, 0, 0, true),
        ("formats/image-rs_webp_extended_images_anim.webp", Format::Webp, 0, 0, true),
        ("formats/tree.webp", Format::Webp, 320, 241, false),
        ("formats/tree.avif", Format::Avif, 320, 241, false),
        ("formats/avif_basn6a16_10bit_444_limited_alpha.avif", Format::Avif, 32, 32, true),
        ("formats/image-rs_gif_anim_large-gif-anim-combine.gif", Format::Gif, 1000, 1000, false),
        ("formats/transparent.gif", Format::Gif, 327, 479, true),
    ];
    for (file, format, w, h, alpha) in cases {
        let d = decode_fixture(file);
        assert_eq!(d.header.format, format, "{file}");
        if w > 0 {
            assert_eq!((d.width(), d.height()), (w, h), "{file}");
        }
        if alpha {
            assert!(d.has_alpha(), "{file} should keep its alpha");
        }
        if !alpha && format != Format::Gif && format != Format::Webp {
            assert!(!d.has_alpha(), "{file} is opaque");
        }
    }
}

#[test]
fn frame_counts_come_from_the_header() {
    let limits = Limits::default();
    let frames = |f: &str| read_header(&fixture(f), &limits).unwrap().frames;
    assert!(frames("formats/image-rs_png_apng_ball.png").unwrap() > 1);
    assert!(frames("formats/image-rs_webp_extended_images_anim.webp").unwrap() > 1);
    assert!(frames("formats/image-rs_gif_anim_large-gif-anim-combine.gif").unwrap() > 1);
    assert_eq!(frames("formats/tree.webp"), Some(1));
    assert_eq!(frames("pngsuite/basn2c08.png"), Some(1));
}

#[test]
fn tiff_decodes() {
    let tiff = tiff_with_camera(40, 30);
    let d = decode(&tiff, &Limits::default()).unwrap();
    assert_eq!(d.header.format, Format::Tiff);
    assert_eq!((d.width(), d.height()), (40, 30));
    assert_eq!(d.image.to_rgb8().get_pixel(0, 0).0, [0, 80, 160]);

    let img16 = image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(8, 4, |x, _| image::Rgb([x as u16 * 8000, 0, 65535]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb16(img16).write_to(&mut out, image::ImageFormat::Tiff).unwrap();
    let d = decode(out.get_ref(), &Limits::default()).unwrap();
    assert_eq!(d.header.bytes_per_sample, 2);
    assert_eq!(d.image.to_rgb8().get_pixel(0, 0).0, [0, 0, 255]);
}

#[test]
fn detection_is_from_bytes_not_names() {
    // A PNG saved as .jpg: the name is never consulted.
    let bytes = fixture("formats/png_named.jpg");
    assert_eq!(sniff(&bytes).unwrap(), Format::Png);
    assert_eq!(decode(&bytes, &Limits::default()).unwrap().header.format, Format::Png);
}

#[test]
fn heic_and_svg_are_unsupported() {
    let limits = Limits::default();
    assert_eq!(decode(&fixture("formats/tree.heic"), &limits).unwrap_err(), ImageError::Unsupported("heic".into()));
    let svg = br#"<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>"#;
    let err = decode(svg, &limits).unwrap_err();
    assert_eq!(err.to_string(), "unsupported format: svg");
    assert!(err.is_permanent());
}

#[test]
fn deflate_bomb_png_is_refused_from_the_header() {
    // 50 000 × 50 000 grey, the first 8 000 rows of zeros present: ~390 KB on disk.
    let bomb = deflate_bomb_png(50_000, 50_000, 8_000);
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let start = Instant::now();
    let err = decode(&bomb, &Limits::default()).unwrap_err();
    assert!(matches!(err, ImageError::TooLarge(_)), "{err}");
    assert!(err.is_permanent());
    assert!(start.elapsed() < Duration::from_secs(1), "refusal must not decode: {:?}", start.elapsed());

    // A complete, valid 20 000 × 20 000 bomb (400 MB of pixels in ~390 KB) is over 100 MP too.
    let bomb = deflate_bomb_png(20_000, 20_000, 20_000);
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let err = decode(&bomb, &Limits::default()).unwrap_err();
    assert!(matches!(err, ImageError::TooLarge(_)), "{err}");
}

#[test]
fn small_bomb_within_limits_decodes_with_the_same_builder() {
    // Sanity check of the bomb builder: a small complete stream is a valid PNG.
    let png = deflate_bomb_png(300, 200, 200);
    let d = decode(&png, &Limits::default()).unwrap();
    assert_eq!((d.width(), d.height()), (300, 200));
    assert!(d.image.to_rgb8().pixels().all(|p| p.0 == [0, 0, 0]));
}

#[test]
fn jpeg_pixel_flood_is_refused_from_the_sof() {
    let mut jpeg = fixture("formats/people.jpg");
    // Patch height and width in the frame header (not the EXIF thumbnail's) to 65500.
    let sof = fleet_images::jpeg_markers::header_segments(&jpeg)
        .into_iter()
        .find(|s| matches!(s.marker, 0xC0 | 0xC2))
        .map(|s| s.data.as_ptr() as usize - jpeg.as_ptr() as usize)
        .unwrap();
    jpeg[sof + 1..sof + 3].copy_from_slice(&65_500u16.to_be_bytes());
    jpeg[sof + 3..sof + 5].copy_from_slice(&65_500u16.to_be_bytes());
    let header_err = read_header(&jpeg, &Limits::default()).unwrap_err();
    assert!(matches!(header_err, ImageError::TooLarge(_)), "{header_err}");
    let start = Instant::now();
    let err = decode(&jpeg, &Limits::default()).unwrap_err();
    assert!(matches!(err, ImageError::TooLarge(_)), "{err}");
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn custom_limits_apply() {
    let limits = Limits { max_pixels: 100 * 100, ..Limits::default() };
    assert!(matches!(decode(&fixture("formats/people.jpg"), &limits), Err(ImageError::TooLarge(_))));
    let limits = Limits { max_bytes: 1000, ..Limits::default() };
    assert!(matches!(decode(&fixture("formats/people.jpg"), &limits), Err(ImageError::TooLarge(_))));
}

#[test]
fn truncated_files_are_refused() {
    let limits = Limits::default();
    let jpeg = fixture("formats/people.jpg");
    for cut in [jpeg.len() * 6 / 10, jpeg.len() - 2, 300] {
        let err = decode(&jpeg[..cut], &limits).unwrap_err();
        assert!(matches!(err, ImageError::Truncated(_)), "cut at {cut}: {err}");
        assert!(err.is_permanent());
    }
    let progressive = fixture("formats/image-rs_jpg_progressive_cat.jpg");
    let err = decode(&progressive[..progressive.len() / 2], &limits).unwrap_err();
    assert!(matches!(err, ImageError::Truncated(_)), "{err}");

    // (An APNG cut in its later frames still has a whole first frame: that one decodes.)
    let png = fixture("formats/transparent_with_icc_profile.png");
    let err = decode(&png[..png.len() / 2], &limits).unwrap_err();
    assert!(err.is_permanent(), "{err}");
    let webp = fixture("formats/tree.webp");
    let err = decode(&webp[..webp.len() / 2], &limits).unwrap_err();
    assert!(err.is_permanent(), "{err}");
    let gif = fixture("formats/transparent.gif");
    assert!(decode(&gif[..gif.len() / 2], &limits).unwrap_err().is_permanent());
}

#[test]
fn garbage_after_a_valid_header_is_corrupt_not_a_panic() {
    let mut jpeg = fixture("formats/people.jpg");
    let sos = jpeg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    for b in &mut jpeg[sos + 20..sos + 2000] {
        *b = 0xFF;
    }
    // Either refused or decoded with damage, never a panic or a hang.
    if let Err(e) = decode(&jpeg, &Limits::default()) {
        assert!(e.is_permanent());
    }
    let err = decode(b"\xFF\xD8\xFF\xE0\x00\x10JFIF\0garbage", &Limits::default()).unwrap_err();
    assert!(err.is_permanent(), "{err}");
}

#[test]
fn cmyk_jpegs_become_srgb_not_inverted() {
    // YCCK without a profile (naive conversion).
    let ycck = decode_fixture("formats/cmyk.jpg");
    assert_eq!(ycck.colour, ColourConversion::CmykNaive);
    // CMYK with an embedded CMYK profile (moxcms).
    let dog = decode_fixture("formats/dog_and_lake_cmyk_with_icc_profile.jpg");
    assert_eq!(dog.colour, ColourConversion::CmykIcc, "{:?}", dog.warnings);
    assert_eq!((dog.width(), dog.height()), (369, 207));
    // A lake at golden hour: blue sky on top, warm grass at the bottom (a negative or a naive
    // conversion of non-inverted samples would flip both).
    let rgb = dog.image.to_rgb8();
    let sky = mean_rgb(&image::imageops::crop_imm(&rgb, 0, 0, 369, 25).to_image());
    let grass = mean_rgb(&image::imageops::crop_imm(&rgb, 0, 170, 369, 37).to_image());
    assert!(sky[2] > sky[0] + 10.0 && sky[2] > 120.0, "sky {sky:?}");
    assert!(grass[0] > grass[2] + 30.0, "grass {grass:?}");
    let mean = mean_rgb(&rgb);
    let luma = 0.299 * mean[0] + 0.587 * mean[1] + 0.114 * mean[2];
    assert!((60.0..200.0).contains(&luma), "{mean:?}");
    // "RED" in red letters on black.
    let red = ycck.image.to_rgb8();
    let dark = red.pixels().filter(|p| p.0.iter().all(|&c| c < 50)).count();
    assert!(dark > 100 * 100 / 3, "{dark} dark pixels");
    let reds = red.pixels().filter(|p| p.0[0] > 180 && p.0[1] < 80 && p.0[2] < 80).count();
    assert!(reds > 500, "{reds} red pixels");
}

#[test]
fn exif_orientations_all_come_out_upright() {
    let upright = decode_fixture("exif/orientation/landscape_1.jpg");
    let reference = upright.image.to_rgb8();
    for n in 1..=8 {
        let d = decode_fixture(&format!("exif/orientation/landscape_{n}.jpg"));
        assert_eq!(d.orientation, n, "landscape_{n}");
        assert_eq!((d.width(), d.height()), (600, 450), "landscape_{n}");
        let diff = mean_abs_diff(&reference, &d.image.to_rgb8());
        assert!(diff < 8.0, "landscape_{n} differs from landscape_1 by {diff}");
    }
}

#[test]
fn header_estimate_is_cheap_and_plausible() {
    let header = read_header(&fixture("formats/people.jpg"), &Limits::default()).unwrap();
    assert_eq!((header.width, header.height, header.channels), (600, 400, 3));
    let estimate = estimate_decoded_bytes(&header);
    assert!(estimate >= 600 * 400 * 3 * 2, "{estimate}");
    let prog = read_header(&fixture("formats/image-rs_jpg_progressive_cat.jpg"), &Limits::default()).unwrap();
    assert!(prog.progressive);
}

fn png_with_profile(profile: &moxcms::ColorProfile, rgb: [u8; 3]) -> Vec<u8> {
    use std::io::Write;
    let icc = profile.encode().unwrap();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&icc).unwrap();
    let mut chunk = b"test profile\0\0".to_vec();
    chunk.extend(z.finish().unwrap());
    let img = image::RgbImage::from_pixel(4, 4, image::Rgb(rgb));
    png_insert_after_ihdr(&encode_png(&image::DynamicImage::ImageRgb8(img)), b"iCCP", &chunk)
}

#[test]
fn rgb_icc_profiles_are_converted_to_srgb() {
    let p3 = decode(&png_with_profile(&moxcms::ColorProfile::new_display_p3(), [100, 150, 200]), &Limits::default())
        .unwrap();
    assert_eq!(p3.colour, ColourConversion::IccToSrgb, "{:?}", p3.warnings);
    let px = p3.image.to_rgb8().get_pixel(0, 0).0;
    // The same colour in the smaller sRGB gamut is more saturated: less red, a little more blue.
    assert_ne!(px, [100, 150, 200]);
    assert!(px[0] < 100 && px[2] >= 200 && px.iter().zip([100u8, 150, 200]).all(|(a, b)| a.abs_diff(b) < 40), "{px:?}");

    let srgb =
        decode(&png_with_profile(&moxcms::ColorProfile::new_srgb(), [100, 150, 200]), &Limits::default()).unwrap();
    assert_eq!(srgb.colour, ColourConversion::Srgb);
    assert_eq!(srgb.image.to_rgb8().get_pixel(0, 0).0, [100, 150, 200]);

    let dice = decode_fixture("formats/transparent_with_icc_profile.png");
    assert!(matches!(dice.colour, ColourConversion::Srgb | ColourConversion::IccToSrgb), "{dice:?}");
}

#[test]
fn a_scaled_jpeg_decode_covers_the_size_asked_for_upright_and_looks_the_same() {
    use fleet_images::decode_scaled;
    let limits = Limits::default();
    // landscape_6 is stored 450×600 and shown 600×450 (rotated): the size asked for is upright.
    for n in [1, 6, 8] {
        let bytes = fixture(&format!("exif/orientation/landscape_{n}.jpg"));
        let full = decode(&bytes, &limits).unwrap();
        let small = decode_scaled(&bytes, &limits, 290, 0).unwrap();
        assert_eq!(full.width(), 600, "landscape_{n}");
        assert!(small.width() >= 290 && small.width() < 600, "landscape_{n}: {}x{}", small.width(), small.height());
        assert_eq!(small.source_size(), (600, 450), "the source's upright size is kept");
        let back = image::imageops::resize(&small.image.to_rgb8(), 600, 450, image::imageops::FilterType::Triangle);
        let d = mean_abs_diff(&full.image.to_rgb8(), &back);
        assert!(d < 12.0, "landscape_{n}: the scaled decode shows the same upright picture (diff {d:.1})");
        let a = fleet_images::analyze(&small).unwrap();
        assert_eq!((a.width, a.height), (600, 450), "analysis reports the source's size");
    }
    // Asking for more than the image has decodes it whole; other formats are never scaled.
    let bytes = fixture("formats/people.jpg");
    let whole = decode(&bytes, &limits).unwrap();
    assert_eq!(decode_scaled(&bytes, &limits, 100_000, 0).unwrap().width(), whole.width());
    let png = fixture("pngsuite/basn6a08.png");
    assert_eq!(decode_scaled(&png, &limits, 1, 1).unwrap().width(), 32);
    // A truncated JPEG is refused on the scaled path too.
    assert!(matches!(decode_scaled(&bytes[..bytes.len() / 2], &limits, 100, 100), Err(ImageError::Truncated(_))));
}
