use fleet_images::{
    ColourConversion, Decoded, ExposureVerdict, Format, Limits, NEAR_DUPLICATE_DISTANCE, NearDuplicates, analyze,
    decode,
};
use image::DynamicImage;

use crate::support::*;

fn from_rgb(img: image::RgbImage) -> Decoded {
    // Through a lossless PNG round trip so the test goes through the public decode path.
    decode(&encode_png(&DynamicImage::ImageRgb8(img)), &Limits::default()).unwrap()
}

fn brighten(img: &image::RgbImage, factor: f32) -> image::RgbImage {
    let mut out = img.clone();
    out.pixels_mut().for_each(|p| p.0 = p.0.map(|v| (f32::from(v) * factor).round().min(255.0) as u8));
    out
}

#[test]
fn phash_matches_edits_of_the_same_photo_and_not_other_photos() {
    let original = decode_fixture("formats/people.jpg");
    let rgb = original.image.to_rgb8();
    let base = analyze(&original).unwrap().phash;

    let q60 = decode(&encode_jpeg(&rgb, 60), &Limits::default()).unwrap();
    let half = from_rgb(image::imageops::resize(&rgb, 300, 200, image::imageops::FilterType::Triangle));
    let brighter = from_rgb(brighten(&rgb, 1.1));
    let edits = [("q60", q60), ("half", half), ("brighter", brighter)];
    let mut worst = 0;
    for (name, edit) in &edits {
        let d = base.distance(analyze(edit).unwrap().phash);
        assert!(d <= NEAR_DUPLICATE_DISTANCE, "{name}: distance {d}");
        worst = worst.max(d);
    }

    let others = [
        "exif/orientation/landscape_1.jpg",
        "exif/gps/DSCN0010.jpg",
        "formats/tree.webp",
        "formats/dog_and_lake_cmyk_with_icc_profile.jpg",
    ];
    let mut closest = 64;
    for other in others {
        let d = base.distance(analyze(&decode_fixture(other)).unwrap().phash);
        assert!(d > NEAR_DUPLICATE_DISTANCE, "{other}: distance {d}");
        closest = closest.min(d);
    }
    eprintln!("pHash: worst edit distance {worst}, closest other photo {closest}");
}

#[test]
fn near_duplicates_group_edits_together() {
    let original = decode_fixture("formats/people.jpg");
    let rgb = original.image.to_rgb8();
    let mut set = NearDuplicates::new();
    set.add("people", analyze(&original).unwrap().phash);
    set.add("landscape", analyze(&decode_fixture("exif/orientation/landscape_1.jpg")).unwrap().phash);
    set.add("people-q60", analyze(&decode(&encode_jpeg(&rgb, 60), &Limits::default()).unwrap()).unwrap().phash);
    set.add("landscape-6", analyze(&decode_fixture("exif/orientation/landscape_6.jpg")).unwrap().phash);
    set.add("tree", analyze(&decode_fixture("formats/tree.webp")).unwrap().phash);
    assert_eq!(set.groups(), vec![vec!["people", "people-q60"], vec!["landscape", "landscape-6"]]);
}

#[test]
fn sharp_scores_above_blurred() {
    let original = decode_fixture("exif/gps/DSCN0010.jpg");
    let sharp = analyze(&original).unwrap().sharpness;
    let blurred = from_rgb(image::imageops::blur(&original.image.to_rgb8(), 3.0));
    let soft = analyze(&blurred).unwrap().sharpness;
    assert!(sharp > 2.0 * soft, "sharp {sharp} vs blurred {soft}");
}

#[test]
fn exposure_orders_dark_normal_bright() {
    let original = decode_fixture("exif/gps/DSCN0010.jpg");
    let rgb = original.image.to_rgb8();
    let normal = analyze(&original).unwrap().exposure;
    let dark = analyze(&from_rgb(brighten(&rgb, 0.25))).unwrap().exposure;
    let bright = analyze(&from_rgb(brighten(&rgb, 2.5))).unwrap().exposure;
    assert!(dark.mean_luma < normal.mean_luma && normal.mean_luma < bright.mean_luma);
    assert!(bright.clipped_highlights > normal.clipped_highlights);
    assert!(dark.crushed_shadows >= normal.crushed_shadows);
    assert_eq!(dark.verdict, ExposureVerdict::Under, "{dark:?}");
    assert_eq!(bright.verdict, ExposureVerdict::Over, "{bright:?}");
    assert_eq!(normal.verdict, ExposureVerdict::Normal, "{normal:?}");
}

#[test]
fn dominant_colours_cover_the_picture() {
    for f in ["formats/people.jpg", "formats/tree.webp", "formats/transparent_with_icc_profile.png"] {
        let a = analyze(&decode_fixture(f)).unwrap();
        assert!(!a.dominant_colours.is_empty() && a.dominant_colours.len() <= 5, "{f}");
        let sum: f64 = a.dominant_colours.iter().map(|c| c.share).sum();
        assert!((sum - 1.0).abs() < 1e-6, "{f}: {sum}");
        assert!(a.dominant_colours.windows(2).all(|w| w[0].share >= w[1].share));
    }
    // Three quarters red, one quarter blue.
    let img =
        image::RgbImage::from_fn(
            64,
            64,
            |_, y| if y < 48 { image::Rgb([220, 20, 20]) } else { image::Rgb([20, 20, 220]) },
        );
    let a = analyze(&from_rgb(img)).unwrap();
    assert_eq!(a.dominant_colours[0].hex, "#dc1414");
    assert!((a.dominant_colours[0].share - 0.75).abs() < 0.03, "{:?}", a.dominant_colours);
}

#[test]
fn analysis_reports_dimensions_and_format_and_serializes() {
    let a = analyze(&decode_fixture("exif/orientation/landscape_6.jpg")).unwrap();
    assert_eq!((a.width, a.height, a.format), (600, 450, Format::Jpeg));
    let json = serde_json::to_value(&a).unwrap();
    assert!(json["phash"].as_str().unwrap().len() == 16);
    let back: fleet_images::Analysis = serde_json::from_value(json).unwrap();
    assert_eq!(back, a);
    // Colour handling is reported on the decode.
    assert_eq!(decode_fixture("formats/people.jpg").colour, ColourConversion::Untagged);
}
