//! What AVIF costs per image: decoding a 12 MP AVIF, and encoding the four default widths
//! (320, 640, 1280, 2048) as AVIF next to JPEG + WebP. Meaningful in release only:
//!
//! ```sh
//! cargo run --release -p fleet-images --features jobs --example avif_cost
//! ```
//!
//! The source is a photo fixture upscaled to 4000 × 3000 with sensor-like grain (as the
//! `timing_12mp` test makes it), so the encoders do real work.

use std::time::{Duration, Instant};

use fleet_images::{Limits, OutputFormat, VariantSpec, decode, make_variants};

/// CPU time of this thread so far (user + system, from `/proc/thread-self/stat`, in clock
/// ticks of 10 ms): the figure that does not depend on what else the machine runs.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    Duration::from_millis(ticks * 10)
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn main() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/images/exif/gps/DSCN0010.jpg");
    let mut source = decode(&std::fs::read(fixture).unwrap(), &Limits::default()).unwrap();
    let mut big = image::imageops::resize(&source.image.to_rgb8(), 4000, 3000, image::imageops::FilterType::CatmullRom);
    let mut seed = 1u32;
    for p in big.pixels_mut() {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let n = ((seed >> 24) as i16 - 128) / 32;
        p.0 = p.0.map(|c| (i16::from(c) + n).clamp(0, 255) as u8);
    }
    source.image = image::DynamicImage::ImageRgb8(big);

    // A 12 MP AVIF to decode: the full-size image through the same encoder (speed 10: only
    // the decode is timed here).
    let t = Instant::now();
    let full = make_variants(
        &source,
        &VariantSpec {
            widths: vec![4000],
            formats: vec![OutputFormat::Avif],
            avif_speed: 10,
            ..VariantSpec::default()
        },
    )
    .unwrap()
    .remove(0);
    eprintln!("12 MP AVIF made in {:.1?} ({} KB)", t.elapsed(), full.byte_len / 1024);
    let c = cpu();
    let decodes: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let d = decode(&full.bytes, &Limits::default()).unwrap();
            assert_eq!((d.width(), d.height()), (4000, 3000));
            t.elapsed()
        })
        .collect();
    println!(
        "decode 12 MP AVIF (4000x3000, {} KB): wall median of 5 {:.0?}, CPU {:.0?} per decode",
        full.byte_len / 1024,
        median(decodes),
        (cpu() - c) / 5
    );

    let widths = vec![320, 640, 1280, 2048];
    let spec = |formats: Vec<OutputFormat>| VariantSpec { widths: widths.clone(), formats, ..VariantSpec::default() };
    let (t, c) = (Instant::now(), cpu());
    let jw = make_variants(&source, &spec(vec![OutputFormat::Jpeg, OutputFormat::Webp])).unwrap();
    let (t_jw, c_jw) = (t.elapsed(), cpu() - c);
    let (t, c) = (Instant::now(), cpu());
    let avif = make_variants(&source, &spec(vec![OutputFormat::Avif])).unwrap();
    let (t_avif, c_avif) = (t.elapsed(), cpu() - c);
    println!("4 widths JPEG + WebP (resize included): wall {t_jw:.2?}, CPU {c_jw:.2?}");
    println!(
        "4 widths AVIF q60 speed 10 (the default; resize included): wall {t_avif:.2?}, CPU {c_avif:.2?}, {} KB in all",
        avif.iter().map(|v| v.byte_len).sum::<usize>() / 1024
    );
    let (t, c) = (Instant::now(), cpu());
    let slow = make_variants(&source, &VariantSpec { avif_speed: 8, ..spec(vec![OutputFormat::Avif]) }).unwrap();
    println!(
        "4 widths AVIF q60 speed 8: wall {:.2?}, CPU {:.2?}, {} KB in all",
        t.elapsed(),
        cpu() - c,
        slow.iter().map(|v| v.byte_len).sum::<usize>() / 1024
    );
    // Quality at 1280w against a near-lossless reference of the same resize (JPEG q100, 4:4:4).
    let reference = make_variants(
        &source,
        &VariantSpec {
            widths: vec![1280],
            formats: vec![OutputFormat::Jpeg],
            jpeg_quality: 100,
            ..VariantSpec::default()
        },
    )
    .unwrap()
    .remove(0);
    let reference = decode(&reference.bytes, &Limits::default()).unwrap().image.to_rgb8();
    let psnr = |vs: &[fleet_images::Variant], f: OutputFormat| {
        let v = vs.iter().find(|v| v.width == 1280 && v.format == f).unwrap();
        let img = decode(&v.bytes, &Limits::default()).unwrap().image.to_rgb8();
        let mse: f64 = img
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
            .sum::<f64>()
            / img.as_raw().len() as f64;
        10.0 * (255.0f64 * 255.0 / mse).log10()
    };
    println!(
        "PSNR at 1280w: jpeg q80 {:.2} dB, webp q80 {:.2} dB, avif q60 speed 10 {:.2} dB, speed 8 {:.2} dB",
        psnr(&jw, OutputFormat::Jpeg),
        psnr(&jw, OutputFormat::Webp),
        psnr(&avif, OutputFormat::Avif),
        psnr(&slow, OutputFormat::Avif)
    );
    for w in widths.iter().rev() {
        let size = |vs: &[fleet_images::Variant], f| {
            vs.iter().find(|v| v.width == *w && v.format == f).map_or(0, |v| v.byte_len)
        };
        println!(
            "  {w:>4}w: jpeg {:>4} KB, webp {:>4} KB, avif {:>4} KB",
            size(&jw, OutputFormat::Jpeg) / 1024,
            size(&jw, OutputFormat::Webp) / 1024,
            size(&avif, OutputFormat::Avif) / 1024
        );
    }
    // Each AVIF width on its own, from a ready-made level (encode only).
    for w in widths.iter().rev() {
        let level = make_variants(
            &source,
            &VariantSpec { widths: vec![*w], formats: vec![OutputFormat::Jpeg], ..VariantSpec::default() },
        )
        .unwrap()
        .remove(0);
        let level = decode(&level.bytes, &Limits::default()).unwrap();
        let (t, c) = (Instant::now(), cpu());
        make_variants(
            &level,
            &VariantSpec { widths: vec![*w], formats: vec![OutputFormat::Avif], ..VariantSpec::default() },
        )
        .unwrap();
        println!("  AVIF encode {w:>4}w alone: wall {:.2?}, CPU {:.2?}", t.elapsed(), cpu() - c);
    }
}
