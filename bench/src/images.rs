//! `fleet-bench run images`: a portfolio of 300 photos of 12 megapixels, analysed and
//! turned into 4 widths × JPEG and WebP by one `fleet-worker` process (the release
//! binary beside this one), then the same resizes by `vipsthumbnail` for a ratio.
//!
//! The photos are generated once (gradients, shapes and grain, so they compress like
//! photos) and reused. The jobs run for the tenant `bench`, so, like any tenant's, their
//! object keys are under `tenants/bench/` (the handlers give up on any other key): the
//! worker's local store is `target/bench-store/`, the photos are in its
//! `tenants/bench/photos/` and the variants land in `tenants/bench/variants/`. Set
//! `FLEET_BENCH_IMAGES` to change the count, `FLEET_BENCH_PG_URL` for PostgreSQL,
//! `FLEET_BENCH_VIPS=0` to skip libvips.

use fleet_jobs::catalogue::image::tenant_object_prefix;
use fleet_jobs::catalogue::{ImageAnalyze, ImageVariants};
use fleet_jobs::{Client, EnqueueOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const WIDTH: u32 = 4240;
const HEIGHT: u32 = 2832;
const WIDTHS: [u32; 4] = [320, 640, 1280, 2048];
/// The tenant the jobs run for.
const TENANT: &str = "bench";

/// A photo-like 12 MP JPEG: a sky-to-ground gradient, a few soft shapes, and grain.
fn synth_photo(seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let base = [(rnd() % 200) as f32, (rnd() % 200) as f32, (rnd() % 200) as f32];
    let shapes: Vec<(f32, f32, f32, [f32; 3])> = (0..12)
        .map(|_| {
            let cx = (rnd() % u64::from(WIDTH)) as f32;
            let cy = (rnd() % u64::from(HEIGHT)) as f32;
            let r = 150.0 + (rnd() % 900) as f32;
            (cx, cy, r, [(rnd() % 256) as f32, (rnd() % 256) as f32, (rnd() % 256) as f32])
        })
        .collect();
    let mut img = image::RgbImage::new(WIDTH, HEIGHT);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let t = y as f32 / HEIGHT as f32;
        let mut c = [base[0] * (1.0 - t) + 40.0 * t, base[1] * (1.0 - t) + 90.0 * t, base[2] * (1.0 - t) + 30.0 * t];
        for (cx, cy, r, col) in &shapes {
            let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
            if d2 < r * r {
                let w = 1.0 - d2 / (r * r);
                for i in 0..3 {
                    c[i] = c[i] * (1.0 - w * 0.7) + col[i] * w * 0.7;
                }
            }
        }
        let grain = (rnd() % 17) as f32 - 8.0;
        *px = image::Rgb([
            (c[0] + grain).clamp(0.0, 255.0) as u8,
            (c[1] + grain).clamp(0.0, 255.0) as u8,
            (c[2] + grain).clamp(0.0, 255.0) as u8,
        ]);
    }
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img).expect("encode");
    out
}

/// The photos, generated when missing (in parallel on both cores).
fn photos(dir: &Path, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("bench image folder");
    let paths: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("photo-{i:04}.jpg"))).collect();
    let missing: Vec<(usize, PathBuf)> = paths.iter().cloned().enumerate().filter(|(_, p)| !p.exists()).collect();
    if !missing.is_empty() {
        println!("  generating {} photos of {WIDTH}x{HEIGHT} into {}", missing.len(), dir.display());
        let chunks: Vec<Vec<(usize, PathBuf)>> = missing.chunks(missing.len().div_ceil(2)).map(<[_]>::to_vec).collect();
        std::thread::scope(|s| {
            for chunk in chunks {
                s.spawn(move || {
                    for (i, p) in chunk {
                        let tmp = p.with_extension("tmp");
                        std::fs::write(&tmp, synth_photo(i as u64 + 1)).expect("write photo");
                        std::fs::rename(&tmp, &p).expect("rename photo");
                    }
                });
            }
        });
    }
    paths
}

fn peak_rss_mb(child: &Child) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// CPU seconds (user + system) the child has used so far: less sensitive than wall time
/// to other work on a shared machine.
fn cpu_seconds(child: &Child) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // rest starts at field 3 (state): utime is field 14, stime 15.
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs the workload and prints its figures.
pub async fn run(client: &Client) {
    let n: usize = std::env::var("FLEET_BENCH_IMAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let exe_dir = std::env::current_exe().expect("own path").parent().expect("folder").to_path_buf();
    let target = exe_dir.parent().expect("target folder").to_path_buf();
    // The worker's store, and the photos under the tenant's prefix in it.
    let root = target.join("bench-store");
    let photos_key = format!("{}photos", tenant_object_prefix(TENANT));
    let dir = root.join(&photos_key);
    let paths = photos(&dir, n);
    let bytes: u64 = paths.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
    println!("images: {n} photos of {WIDTH}x{HEIGHT} ({:.1} MB of JPEG q90)", bytes as f64 / 1e6);

    // A database of the run's own.
    let base = std::env::var("FLEET_BENCH_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let name = format!("fleet_bench_img_{}", std::process::id());
    let mut admin =
        <sqlx::PgConnection as sqlx::Connection>::connect(&format!("{base}/postgres")).await.expect("PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.expect("create db");
    let db_url = format!("{base}/{name}");
    fleet_worker::db::connect_and_migrate(&db_url).await.expect("migrate");

    // Variants of an earlier run would be found and not written again.
    let out = root.join(format!("{}variants", tenant_object_prefix(TENANT)));
    let _ = std::fs::remove_dir_all(&out);
    let config = target.join("bench-images-worker.toml");
    std::fs::write(
        &config,
        format!(
            "redis_url = {redis:?}\nprefix = {prefix:?}\ndatabase_url = {db_url:?}\n\
             [[queues]]\nname = \"images\"\nconcurrency = 2\n\
             [images]\nvariants_prefix = \"variants\"\n[images.storage]\nkind = \"local\"\nroot = {root:?}\n",
            redis = crate::adapter::url(),
            prefix = client.prefix(),
            root = root.display().to_string(),
        ),
    )
    .expect("worker config");

    // One analysis and one variants job per photo, in that order (the two jobs of a photo
    // share one decode when they run close together). `POST /v1/portfolios` runs them as a
    // workflow instead: every analysis, then the selection, then the kept photos' variants,
    // which is the `kinds` order below without the selection's small step.
    let tenant = EnqueueOptions { tenant: Some(TENANT.into()), ..Default::default() };
    let mut jobs_a = Vec::new();
    let mut jobs_v = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let key = format!("{photos_key}/{}", p.file_name().expect("name").to_string_lossy());
        // What the handlers check: a key the tenant may name.
        fleet_jobs::catalogue::image::check_tenant_object_key(TENANT, &key).expect("a key under the tenant's prefix");
        let id = format!("photo-{i:04}");
        jobs_a.push((
            ImageAnalyze {
                image_id: id.clone(),
                key: key.clone(),
                portfolio: Some("bench".into()),
                allow_gps: false,
                vision: false,
            },
            tenant.clone(),
        ));
        jobs_v.push((
            ImageVariants {
                image_id: id,
                key,
                widths: Some(WIDTHS.to_vec()),
                formats: None,
                watermark: None,
                keep_metadata: None,
            },
            tenant.clone(),
        ));
    }
    // The queue holds a1, v1, a2, v2 … (FLEET_BENCH_IMAGES_ORDER=kinds: all analyses first,
    // as this benchmark did before 2026-12-05, and as a portfolio's workflow runs them).
    let by_kind = std::env::var("FLEET_BENCH_IMAGES_ORDER").is_ok_and(|v| v == "kinds");
    if by_kind {
        client.enqueue_bulk_with(jobs_a).await.expect("enqueue analyses");
        client.enqueue_bulk_with(jobs_v).await.expect("enqueue variants");
    } else {
        for (a, v) in jobs_a.into_iter().zip(jobs_v) {
            client.enqueue_with(&a.0, a.1).await.expect("enqueue analysis");
            client.enqueue_with(&v.0, v.1).await.expect("enqueue variants");
        }
    }
    println!(
        "  queue order: {}",
        if by_kind { "all analyses, then all variants" } else { "per photo: analysis, variants" }
    );

    let load0 = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("  load average at the start {}", load0.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    let t0 = Instant::now();
    let mut worker = Command::new(exe_dir.join("fleet-worker"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .env("FLEET_LISTEN", "")
        .spawn()
        .expect("start target/release/fleet-worker (cargo build --release first)");
    let mut peak = 0.0f64;
    loop {
        peak = peak.max(peak_rss_mb(&worker));
        let s = client.stats("images").await.expect("stats");
        if s.dead > 0 {
            // A dead job did no work: the time would measure nothing. Say why and stop.
            let _ = Command::new("kill").arg("-TERM").arg(worker.id().to_string()).status();
            let _ = worker.wait();
            let dead = client.dead_letters("images", 0, 1).await.expect("dead letters");
            let reason = dead.first().map(|d| d.reason.clone()).unwrap_or_default();
            let drop_db = format!("DROP DATABASE {name} WITH (FORCE)");
            sqlx::query(sqlx::AssertSqlSafe(drop_db)).execute(&mut admin).await.ok();
            panic!("{} image jobs died (first: {reason}): no figures", s.dead);
        }
        if s.succeeded >= 2 * n as i64 {
            break;
        }
        if let Ok(Some(status)) = worker.try_wait() {
            panic!("the worker exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = t0.elapsed().as_secs_f64();
    peak = peak.max(peak_rss_mb(&worker));
    let cpu = cpu_seconds(&worker);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let _ = Command::new("kill").arg("-TERM").arg(worker.id().to_string()).status();
    let _ = worker.wait();
    let db = sqlx::PgPool::connect(&db_url).await.expect("db");
    // Every job ran for the tenant "bench": its variants are all of them.
    let (variants, vbytes) = fleet_images::store::variant_totals(&db, TENANT).await.expect("count");
    println!(
        "  fleet-worker (concurrency 2, 2 cores): {n} analyses + {variants} variants in {wall:.1} s = {:.2} images/s, peak RSS {peak:.0} MB, {:.1} MB of variants",
        n as f64 / wall,
        vbytes as f64 / 1e6
    );
    println!(
        "  worker CPU {cpu:.1} s = {:.0} ms per photo (both jobs); load average at the end {}",
        cpu * 1000.0 / n as f64,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    db.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)"))).execute(&mut admin).await.ok();

    // The same resizes with libvips, two processes at a time (one per core).
    if std::env::var("FLEET_BENCH_VIPS").is_ok_and(|v| v == "0") {
        println!("  vipsthumbnail: skipped (FLEET_BENCH_VIPS=0)");
        return;
    }
    if Command::new("vipsthumbnail").arg("--vips-version").output().is_err() {
        println!("  vipsthumbnail: not installed (apt-get install libvips-tools) — no ratio");
        return;
    }
    let vout = target.join("bench-images-vips");
    let _ = std::fs::remove_dir_all(&vout);
    std::fs::create_dir_all(&vout).expect("vips folder");
    let t0 = Instant::now();
    let queue = std::sync::Mutex::new(paths.iter().collect::<Vec<_>>());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while let Some(p) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() {
                    let stem = p.file_stem().expect("stem").to_string_lossy().into_owned();
                    for w in WIDTHS {
                        for (ext, opts) in [("jpg", "[Q=80,strip]"), ("webp", "[Q=80,strip]")] {
                            let out = vout.join(format!("{stem}-{w}.{ext}{opts}"));
                            let ok = Command::new("vipsthumbnail")
                                .arg(p)
                                .arg("-s")
                                .arg(w.to_string())
                                .arg("-o")
                                .arg(out)
                                .status()
                                .is_ok_and(|s| s.success());
                            assert!(ok, "vipsthumbnail failed on {}", p.display());
                        }
                    }
                }
            });
        }
    });
    let vips = t0.elapsed().as_secs_f64();
    println!(
        "  vipsthumbnail (one call per output, 2 at a time): {} variants of {n} photos in {vips:.1} s = {:.2} images/s (resize only, no analysis); Fleet/vips time ratio {:.2}",
        n * WIDTHS.len() * 2,
        n as f64 / vips,
        wall / vips
    );
}

/// `fleet-bench image-steps <file>`: the time of each step on one image, in this
/// process (best of 3), to see where an image job's CPU goes.
pub fn steps(path: &str) {
    use fleet_images::{Limits, OutputFormat, VariantSpec};
    let bytes = std::fs::read(path).expect("read the image");
    let limits = Limits::default();
    let best = |f: &mut dyn FnMut()| {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1000.0
            })
            .fold(f64::MAX, f64::min)
    };
    let decoded = fleet_images::decode(&bytes, &limits).expect("decode");
    println!("{path}: {}x{} {:.1} MB", decoded.width(), decoded.height(), bytes.len() as f64 / 1e6);
    println!(
        "  decode            {:7.1} ms",
        best(&mut || drop(fleet_images::decode(&bytes, &limits).expect("decode")))
    );
    println!(
        "  decode ≥2048 wide {:7.1} ms (DCT-scaled)",
        best(&mut || drop(fleet_images::decode_scaled(&bytes, &limits, 2048, 0).expect("decode")))
    );
    println!(
        "  decode ≥640       {:7.1} ms (DCT-scaled; the analysis before 2026-12-05)",
        best(&mut || drop(fleet_images::decode_scaled(&bytes, &limits, 640, 640).expect("decode")))
    );
    let (aw, ah) = fleet_images::analysis::analysis_decode_size(decoded.header.width, decoded.header.height);
    println!(
        "  decode for analysis {:5.1} ms (DCT-scaled to a 512 px long side: {aw}x{ah} at least)",
        best(&mut || drop(fleet_images::decode_scaled(&bytes, &limits, aw, ah).expect("decode")))
    );
    println!("  analyze           {:7.1} ms", best(&mut || drop(fleet_images::analyze(&decoded).expect("analyze"))));
    let half = fleet_images::decode_scaled(&bytes, &limits, 2048, 0).expect("decode");
    println!(
        "  analyze (scaled)  {:7.1} ms",
        best(&mut || drop(
            fleet_images::analyze(&fleet_images::decode_scaled(&bytes, &limits, 640, 640).expect("d")).expect("a")
        ))
    );
    println!(
        "  analyze (⅛ scale) {:7.1} ms (with its decode)",
        best(&mut || drop(
            fleet_images::analyze(&fleet_images::decode_scaled(&bytes, &limits, aw, ah).expect("d")).expect("a")
        ))
    );
    println!(
        "  analyze (½ scale) {:7.1} ms (the variants' decode, shared: analysis only)",
        best(&mut || drop(fleet_images::analyze(&half).expect("a")))
    );
    println!("  metadata          {:7.1} ms", best(&mut || drop(fleet_images::read_metadata(&bytes, false))));
    println!("  sha256            {:7.1} ms", best(&mut || drop(fleet_images::sha256_hex(&bytes))));
    let widths = WIDTHS.to_vec();
    for (label, spec) in [
        ("4 widths both, defaults", VariantSpec { widths: widths.clone(), ..Default::default() }),
        (
            "4 widths JPEG    ",
            VariantSpec { widths: widths.clone(), formats: vec![OutputFormat::Jpeg], ..Default::default() },
        ),
        (
            "4 widths WebP m0 ",
            VariantSpec {
                widths: widths.clone(),
                formats: vec![OutputFormat::Webp],
                webp_method: 0,
                ..Default::default()
            },
        ),
        (
            "4 widths WebP m2 ",
            VariantSpec {
                widths: widths.clone(),
                formats: vec![OutputFormat::Webp],
                webp_method: 2,
                ..Default::default()
            },
        ),
        (
            "4 widths WebP m4 ",
            VariantSpec {
                widths: widths.clone(),
                formats: vec![OutputFormat::Webp],
                webp_method: 4,
                ..Default::default()
            },
        ),
    ] {
        let mut size = 0;
        let ms = best(&mut || {
            size = fleet_images::make_variants(&half, &spec).expect("variants").iter().map(|v| v.byte_len).sum();
        });
        println!("  {label}  {ms:7.1} ms  {:6.0} KB", size as f64 / 1024.0);
    }
    encoder_settings(&bytes);
}

/// The 2048 px level of `bytes` as the variants make it (½-scale decode, Lanczos3), RGB.
fn level_2048(bytes: &[u8]) -> (Vec<u8>, u32, u32) {
    use fast_image_resize::images::Image;
    use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
    let half = fleet_images::decode_scaled(bytes, &fleet_images::Limits::default(), 2048, 0).expect("decode");
    let src = half.image.to_rgb8();
    let (sw, sh) = src.dimensions();
    let (w, h) = (2048u32, (u64::from(sh) * 2048 / u64::from(sw)) as u32);
    let mut level = Image::new(w, h, PixelType::U8x3);
    let src_view =
        fast_image_resize::images::ImageRef::new(sw, sh, src.as_raw(), PixelType::U8x3).expect("source view");
    Resizer::new()
        .resize(&src_view, &mut level, &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3)))
        .expect("resize");
    (level.into_vec(), w, h)
}

/// `fleet-bench image-encode <file> <case>`: one encode of the 2048 px level, for
/// `valgrind --tool=callgrind` (instruction counts do not depend on the machine's load):
/// `none` (decode and resize only), `webp-m0` … `webp-m4`, `jpeg-opt`, `jpeg-std`.
pub fn encode_one(path: &str, case: &str) {
    let bytes = std::fs::read(path).expect("read the image");
    let (level, w, h) = level_2048(&bytes);
    let out = match case {
        "none" => Vec::new(),
        "jpeg-opt" | "jpeg-std" => {
            let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
            c.set_fastest_defaults();
            c.set_size(w as usize, h as usize);
            c.set_quality(80.0);
            c.set_optimize_coding(case == "jpeg-opt");
            let mut s = c.start_compress(Vec::new()).expect("start");
            s.write_scanlines(&level).expect("write");
            s.finish().expect("finish")
        }
        webp if webp.starts_with("webp-m") => {
            let mut c = libwebp_sys::WebPConfig::new().expect("config");
            c.lossless = 0;
            c.quality = 80.0;
            c.method = webp[6..].parse().expect("webp-m<0-6>");
            webp::Encoder::new(&level, webp::PixelLayout::Rgb, w, h).encode_advanced(&c).expect("webp").to_vec()
        }
        other => panic!("unknown case {other:?}"),
    };
    println!("{case}: {} bytes", out.len());
}

/// Encoder settings on one level (the 2048 px variant of `bytes`), each best of 3: time,
/// size and PSNR against the level, to choose the defaults in `fleet_images::variants`.
pub fn encoder_settings(bytes: &[u8]) {
    let (level, w, h) = level_2048(bytes);
    let best = |f: &mut dyn FnMut() -> Vec<u8>| {
        let mut out = Vec::new();
        let ms = (0..3)
            .map(|_| {
                let t = Instant::now();
                out = f();
                t.elapsed().as_secs_f64() * 1000.0
            })
            .fold(f64::MAX, f64::min);
        (ms, out)
    };
    let psnr = |decoded: &[u8]| {
        let mse = level.iter().zip(decoded).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum::<f64>()
            / level.len() as f64;
        10.0 * (255.0f64 * 255.0 / mse.max(1e-9)).log10()
    };
    println!("  encoder settings on the {w}x{h} level (best of 3; PSNR against the level):");
    type Tweak = fn(&mut libwebp_sys::WebPConfig);
    let webp_cases: [(&str, Tweak); 9] = [
        ("WebP q80 m4", |c| c.method = 4),
        ("WebP q80 m2 (default)", |c| c.method = 2),
        ("WebP q80 m1", |c| c.method = 1),
        ("WebP q80 m0", |c| c.method = 0),
        ("WebP q80 m0 segments 1", |c| {
            c.method = 0;
            c.segments = 1;
        }),
        ("WebP q80 m0 sns 0", |c| {
            c.method = 0;
            c.sns_strength = 0;
        }),
        ("WebP q80 m2 segments 1 sns 0", |c| {
            c.method = 2;
            c.segments = 1;
            c.sns_strength = 0;
        }),
        ("WebP q80 m0 segments 1 sns 0", |c| {
            c.method = 0;
            c.segments = 1;
            c.sns_strength = 0;
        }),
        ("WebP q75 m0", |c| {
            c.method = 0;
            c.quality = 75.0;
        }),
    ];
    for (label, tweak) in webp_cases {
        let (ms, out) = best(&mut || {
            let mut c = libwebp_sys::WebPConfig::new().expect("config");
            c.lossless = 0;
            c.quality = 80.0;
            tweak(&mut c);
            webp::Encoder::new(&level, webp::PixelLayout::Rgb, w, h).encode_advanced(&c).expect("webp").to_vec()
        });
        let back = webp::Decoder::new(&out).decode().expect("decode webp");
        println!("    {label:32} {ms:7.1} ms {:7.1} KB  PSNR {:.2} dB", out.len() as f64 / 1024.0, psnr(&back));
    }
    for (label, optimize, fastest) in [
        ("JPEG q80 fastest + optimized Huffman (default)", true, true),
        ("JPEG q80 fastest, standard Huffman", false, true),
    ] {
        let (ms, out) = best(&mut || {
            let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
            if fastest {
                c.set_fastest_defaults();
            }
            c.set_size(w as usize, h as usize);
            c.set_quality(80.0);
            c.set_optimize_coding(optimize);
            let mut s = c.start_compress(Vec::new()).expect("start");
            s.write_scanlines(&level).expect("write");
            s.finish().expect("finish")
        });
        let back = image::load_from_memory_with_format(&out, image::ImageFormat::Jpeg).expect("jpeg").to_rgb8();
        println!("    {label:32} {ms:7.1} ms {:7.1} KB  PSNR {:.2} dB", out.len() as f64 / 1024.0, psnr(back.as_raw()));
    }
}
