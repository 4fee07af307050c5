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
    client.enqueue_bulk_with(jobs_a).await.expect("enqueue analyses");
    client.enqueue_bulk_with(jobs_v).await.expect("enqueue variants");

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
        "  decode ≥640       {:7.1} ms (DCT-scaled)",
        best(&mut || drop(fleet_images::decode_scaled(&bytes, &limits, 640, 640).expect("decode")))
    );
    println!("  analyze           {:7.1} ms", best(&mut || drop(fleet_images::analyze(&decoded).expect("analyze"))));
    let half = fleet_images::decode_scaled(&bytes, &limits, 2048, 0).expect("decode");
    println!(
        "  analyze (scaled)  {:7.1} ms",
        best(&mut || drop(
            fleet_images::analyze(&fleet_images::decode_scaled(&bytes, &limits, 640, 640).expect("d")).expect("a")
        ))
    );
    println!("  metadata          {:7.1} ms", best(&mut || drop(fleet_images::read_metadata(&bytes, false))));
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
}
