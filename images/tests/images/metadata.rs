use fleet_images::{Limits, decode, read_metadata};

use crate::support::*;

/// DSCN0010.jpg (Nikon COOLPIX P6000) was taken near Arezzo.
const DSCN0010: (f64, f64) = (43.467448, 11.885127);

fn assert_near(actual: (f64, f64), expected: (f64, f64)) {
    assert!(
        (actual.0 - expected.0).abs() < 0.001 && (actual.1 - expected.1).abs() < 0.001,
        "{actual:?} vs {expected:?}"
    );
}

#[test]
fn gps_is_flagged_always_and_returned_only_when_allowed() {
    let jpeg = fixture("exif/gps/DSCN0010.jpg");
    let private = read_metadata(&jpeg, false);
    assert!(private.gps_present);
    assert_eq!(private.gps, None);
    assert_eq!(private.make.as_deref(), Some("NIKON"));
    assert_eq!(private.model.as_deref(), Some("COOLPIX P6000"));
    assert_eq!(private.taken_at.as_deref(), Some("2008-10-22T16:28:39"));
    let json = serde_json::to_string(&private).unwrap();
    assert!(!json.contains("43.4"), "{json}");

    let with_gps = read_metadata(&jpeg, true);
    let gps = with_gps.gps.expect("position");
    assert_near((gps.latitude, gps.longitude), DSCN0010);
}

#[test]
fn camera_and_lens_fields() {
    let canon = read_metadata(&fixture("exif/camera/Canon_40D.jpg"), false);
    assert_eq!(canon.make.as_deref(), Some("Canon"));
    assert_eq!(canon.model.as_deref(), Some("Canon EOS 40D"));
    assert_eq!(canon.orientation, Some(1));
    assert!(!canon.gps_present);
    let d300 = read_metadata(&fixture("exif/camera/32-lens_data.jpeg"), false);
    assert_eq!(d300.model.as_deref(), Some("NIKON D300"));
    assert_eq!(d300.artist.as_deref(), Some("Ilya Kurikhin"));
}

#[test]
fn lens_date_offset_and_southern_western_gps_from_written_exif() {
    use exif::{Field, In, Rational, Tag, Value};
    let ascii = |s: &str| Value::Ascii(vec![s.as_bytes().to_vec()]);
    let dms = |d: u32, m: u32, s100: u32| {
        Value::Rational(vec![
            Rational { num: d, denom: 1 },
            Rational { num: m, denom: 1 },
            Rational { num: s100, denom: 100 },
        ])
    };
    let fields = [
        Field { tag: Tag::Make, ifd_num: In::PRIMARY, value: ascii("FleetCam") },
        Field { tag: Tag::LensMake, ifd_num: In::PRIMARY, value: ascii("Zeiss") },
        Field { tag: Tag::LensModel, ifd_num: In::PRIMARY, value: ascii("Planar 50mm f/1.4") },
        Field { tag: Tag::DateTimeOriginal, ifd_num: In::PRIMARY, value: ascii("2024:03:05 07:08:09") },
        Field { tag: Tag::OffsetTimeOriginal, ifd_num: In::PRIMARY, value: ascii("-03:00") },
        Field { tag: Tag::GPSLatitudeRef, ifd_num: In::PRIMARY, value: ascii("S") },
        Field { tag: Tag::GPSLatitude, ifd_num: In::PRIMARY, value: dms(22, 54, 3000) },
        Field { tag: Tag::GPSLongitudeRef, ifd_num: In::PRIMARY, value: ascii("W") },
        Field { tag: Tag::GPSLongitude, ifd_num: In::PRIMARY, value: dms(43, 12, 0) },
    ];
    let mut writer = exif::experimental::Writer::new();
    fields.iter().for_each(|f| writer.push_field(f));
    let mut blob = std::io::Cursor::new(Vec::new());
    writer.write(&mut blob, false).unwrap();
    let png = png_insert_after_ihdr(&fixture("pngsuite/basn2c08.png"), b"eXIf", blob.get_ref());
    let m = read_metadata(&png, true);
    assert_eq!(m.lens_make.as_deref(), Some("Zeiss"));
    assert_eq!(m.lens_model.as_deref(), Some("Planar 50mm f/1.4"));
    assert_eq!(m.taken_at.as_deref(), Some("2024-03-05T07:08:09-03:00"));
    let gps = m.gps.unwrap();
    assert_near((gps.latitude, gps.longitude), (-(22.0 + 54.0 / 60.0 + 30.0 / 3600.0), -43.2));
}

#[test]
fn orientation_tag_is_reported() {
    for n in 1..=8u8 {
        let m = read_metadata(&fixture(&format!("exif/orientation/landscape_{n}.jpg")), false);
        assert_eq!(m.orientation, Some(n));
    }
}

#[test]
fn png_exif_chunk_is_read() {
    let exif = exif_payload_from_jpeg(&fixture("exif/gps/DSCN0010.jpg"));
    let png = png_insert_after_ihdr(&fixture("pngsuite/basn2c08.png"), b"eXIf", &exif);
    let m = read_metadata(&png, true);
    assert_eq!(m.model.as_deref(), Some("COOLPIX P6000"));
    assert!(m.gps_present);
    let gps = m.gps.unwrap();
    assert_near((gps.latitude, gps.longitude), DSCN0010);
    // And the PNG still decodes.
    assert_eq!(decode(&png, &Limits::default()).unwrap().width(), 32);
}

#[test]
fn webp_exif_chunk_is_read() {
    let exif = exif_payload_from_jpeg(&fixture("exif/gps/DSCN0010.jpg"));
    let webp = webp_with_exif(&fixture("formats/image-rs_webp_lossy_images_simple-rgb.webp"), 100, 100, &exif);
    let m = read_metadata(&webp, false);
    assert_eq!(m.make.as_deref(), Some("NIKON"));
    assert!(m.gps_present);
    assert_eq!(m.gps, None);
    assert_eq!(decode(&webp, &Limits::default()).unwrap().width(), 100);
}

#[test]
fn tiff_tags_are_read() {
    let m = read_metadata(&tiff_with_camera(8, 8), false);
    assert_eq!(m.make.as_deref(), Some("FleetCam"));
    assert_eq!(m.model.as_deref(), Some("Model T"));
}

#[test]
fn broken_exif_is_a_warning_never_a_failure() {
    for f in ["exif/invalid/image01551.jpg", "exif/invalid/image02206.jpg"] {
        let _ = read_metadata(&fixture(f), true);
        decode_fixture(f);
    }
    // An APP1 "Exif" segment full of garbage.
    let jpeg = fixture("exif/camera/Canon_40D.jpg");
    let mut app1 = vec![0xFF, 0xE1];
    let payload = b"Exif\0\0II*\0\xff\xff\xff\x7fgarbage garbage";
    app1.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    app1.extend_from_slice(payload);
    let mut broken = jpeg[..2].to_vec();
    broken.extend(app1);
    broken.extend_from_slice(&jpeg[2..]);
    let m = read_metadata(&broken, true);
    assert!(m.exif_warning.is_some(), "{m:?}");
    assert!(!m.gps_present);
    decode(&broken, &Limits::default()).unwrap();
}

#[test]
fn no_exif_and_other_formats_give_empty_metadata() {
    let m = read_metadata(&fixture("pngsuite/basn2c08.png"), true);
    assert!(!m.exif_present && m.exif_warning.is_none());
    let m = read_metadata(&fixture("formats/transparent.gif"), true);
    assert!(!m.exif_present);
    let m = read_metadata(&fixture("formats/tree.heic"), true);
    assert!(!m.exif_present);
    let m = read_metadata(b"not an image", true);
    assert!(!m.exif_present);
}
