//! `image.analyze` and `image.variants`, one attempt at a time through
//! `fleet_kit::testing`: uploads in a local store under a folder of each test's own, a
//! database of each test's own where results are written.

use fleet_images::jobs::{ImageSettings, Images};
use fleet_images::storage::{LocalConfig, StoreConfig};
use fleet_jobs::catalogue::{ImageAnalyze, ImageVariants};
use fleet_kit::testing::{TestDb, TestJob, assert_give_up, unreachable_database};
use sqlx::PgPool;
use std::path::{Path, PathBuf};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A local store's folder, removed when the test ends.
struct Uploads(PathBuf);

impl Uploads {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fleet-images-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Uploads(dir)
    }

    /// Puts `bytes` at `key`, as the API's upload does.
    fn put(&self, key: &str, bytes: &[u8]) {
        let path = self.0.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// Every file under the store, as keys.
    fn keys(&self) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(root, &path, out);
                } else {
                    out.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.0, &self.0, &mut out);
        out.sort();
        out
    }

    fn images(&self, db: PgPool) -> Images {
        let settings = ImageSettings {
            storage: StoreConfig::Local(LocalConfig { root: self.0.clone() }),
            ..ImageSettings::default()
        };
        Images::new(db, &settings).unwrap()
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/images").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn analyze(key: &str) -> ImageAnalyze {
    ImageAnalyze { image_id: "img_1".into(), key: key.into(), portfolio: None, allow_gps: false, vision: false }
}

fn variants(key: &str) -> ImageVariants {
    ImageVariants {
        image_id: "img_1".into(),
        key: key.into(),
        widths: Some(vec![160, 320]),
        formats: Some(vec!["jpeg".into(), "webp".into()]),
        watermark: None,
        keep_metadata: None,
    }
}

#[tokio::test]
async fn a_key_outside_the_tenants_namespace_gives_up_before_the_store_is_read() {
    let uploads = Uploads::new("namespace");
    // Another tenant's upload is there: reading it would decode it and reach the database.
    uploads.put("tenants/t2/photo.jpg", &fixture("formats/people.jpg"));
    let images = uploads.images(unreachable_database());
    let job = TestJob::new().tenant("t1");

    let out = job.perform(&images.analyzer(), analyze("tenants/t2/photo.jpg")).await;
    let why = assert_give_up(&out);
    assert!(why.contains(r#"keys must be under "tenants/t1/""#), "{why}");
    let out = job.perform(&images.variants(), variants("tenants/t2/photo.jpg")).await;
    assert!(assert_give_up(&out).contains(r#"keys must be under "tenants/t1/""#), "{out:?}");
    assert_eq!(uploads.keys(), ["tenants/t2/photo.jpg"], "no variant written anywhere");
}

#[tokio::test]
async fn a_truncated_or_disguised_upload_gives_up_with_what_is_wrong_with_it() {
    let uploads = Uploads::new("hostile");
    let jpeg = fixture("formats/people.jpg");
    uploads.put("tenants/t1/cut.jpg", &jpeg[..jpeg.len() / 2]);
    uploads.put("tenants/t1/page.jpg", b"<!doctype html><title>login</title>");
    let images = uploads.images(unreachable_database());
    let job = TestJob::new().tenant("t1");

    let out = job.perform(&images.analyzer(), analyze("tenants/t1/cut.jpg")).await;
    assert!(assert_give_up(&out).starts_with("truncated image"), "{out:?}");
    let out = job.perform(&images.variants(), variants("tenants/t1/cut.jpg")).await;
    assert!(assert_give_up(&out).starts_with("truncated image"), "{out:?}");
    let out = job.perform(&images.analyzer(), analyze("tenants/t1/page.jpg")).await;
    assert!(assert_give_up(&out).starts_with("unsupported format"), "{out:?}");
    let out = job.perform(&images.analyzer(), analyze("tenants/t1/missing.jpg")).await;
    assert!(assert_give_up(&out).contains("not found in the store"), "{out:?}");
    assert_eq!(uploads.keys(), ["tenants/t1/cut.jpg", "tenants/t1/page.jpg"], "no variant written");
}

#[tokio::test]
async fn a_real_jpeg_is_analysed_and_its_variants_land_under_the_tenants_prefix() {
    let db = TestDb::new(&MIGRATOR).await;
    let uploads = Uploads::new("real");
    let jpeg = fixture("formats/people.jpg");
    let header = fleet_images::read_header(&jpeg, &fleet_images::Limits::default()).unwrap();
    uploads.put("tenants/t1/people.jpg", &jpeg);
    let images = uploads.images(db.pool.clone());
    let job = TestJob::new().tenant("t1");

    job.perform(&images.analyzer(), analyze("tenants/t1/people.jpg")).await.unwrap();
    let (format, width, height, sha): (String, i32, i32, String) =
        sqlx::query_as("SELECT format, width, height, source_sha256 FROM image_analyses WHERE tenant = 't1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((format.as_str(), width as u32, height as u32), ("jpeg", header.width, header.height));
    assert_eq!(sha, fleet_images::sha256_hex(&jpeg));

    job.perform(&images.variants(), variants("tenants/t1/people.jpg")).await.unwrap();
    let rows: Vec<(String, i32, String)> =
        sqlx::query_as("SELECT format, width, key FROM image_variants WHERE tenant = 't1' ORDER BY format, width")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let shape: Vec<(&str, i32)> = rows.iter().map(|(f, w, _)| (f.as_str(), *w)).collect();
    assert_eq!(shape, [("jpg", 160), ("jpg", 320), ("webp", 160), ("webp", 320)]);
    let stored = uploads.keys();
    for (_, _, key) in &rows {
        assert!(key.starts_with(&format!("tenants/t1/variants/{sha}/")), "{key}");
        assert!(stored.contains(key), "{key} is in the store: {stored:?}");
    }
    // A retry rewrites nothing: the same keys, no new objects.
    job.attempt(2, 5).perform(&images.variants(), variants("tenants/t1/people.jpg")).await.unwrap();
    assert_eq!(uploads.keys(), stored);
    db.drop_db().await;
}

#[tokio::test]
async fn an_avif_upload_is_analysed_and_gets_avif_variants_when_asked() {
    let db = TestDb::new(&MIGRATOR).await;
    let uploads = Uploads::new("avif");
    let avif = fixture("formats/tree.avif");
    uploads.put("tenants/t1/tree.avif", &avif);
    let images = uploads.images(db.pool.clone());
    let job = TestJob::new().tenant("t1");

    job.perform(&images.analyzer(), analyze("tenants/t1/tree.avif")).await.unwrap();
    let (format, width, height): (String, i32, i32) =
        sqlx::query_as("SELECT format, width, height FROM image_analyses WHERE tenant = 't1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((format.as_str(), width, height), ("avif", 320, 241));

    let args = ImageVariants { formats: Some(vec!["avif".into(), "jpeg".into()]), ..variants("tenants/t1/tree.avif") };
    job.perform(&images.variants(), args).await.unwrap();
    let rows: Vec<(String, i32, String)> =
        sqlx::query_as("SELECT format, width, key FROM image_variants WHERE tenant = 't1' ORDER BY format, width")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let shape: Vec<(&str, i32)> = rows.iter().map(|(f, w, _)| (f.as_str(), *w)).collect();
    assert_eq!(shape, [("avif", 160), ("avif", 320), ("jpg", 160), ("jpg", 320)]);
    for (format, width, key) in rows.iter().filter(|(f, _, _)| f == "avif") {
        assert!(key.ends_with(&format!("/{width}.{format}")), "{key}");
        let stored = std::fs::read(uploads.0.join(key)).unwrap();
        let back = fleet_images::decode(&stored, &fleet_images::Limits::default()).unwrap();
        assert_eq!((back.header.format, back.width() as i32), (fleet_images::Format::Avif, *width));
    }
    db.drop_db().await;
}

#[tokio::test]
async fn a_truncated_avif_gives_up_with_one_clear_error() {
    let uploads = Uploads::new("avif-cut");
    let avif = fixture("formats/tree.avif");
    uploads.put("tenants/t1/cut.avif", &avif[..avif.len() / 2]);
    let images = uploads.images(unreachable_database());
    let job = TestJob::new().tenant("t1");

    let out = job.perform(&images.analyzer(), analyze("tenants/t1/cut.avif")).await;
    let why = assert_give_up(&out);
    assert!(why.starts_with("truncated image: AVIF"), "{why}");
    let args = ImageVariants { formats: Some(vec!["avif".into()]), ..variants("tenants/t1/cut.avif") };
    let out = job.perform(&images.variants(), args).await;
    assert!(assert_give_up(&out).starts_with("truncated image: AVIF"), "{out:?}");
    assert_eq!(uploads.keys(), ["tenants/t1/cut.avif"], "no variant written");
}

/// The photo's two jobs share one decode (`jobs/share.rs`): an analysis after the variants
/// takes their pixels and finds what an analysis of its own finds; an object replaced under
/// the same key between the two is decoded afresh, never served from the other's pixels.
#[tokio::test]
async fn the_analysis_after_the_variants_shares_their_decode_but_never_another_files() {
    let db = TestDb::new(&MIGRATOR).await;
    let uploads = Uploads::new("share");
    let people = fixture("formats/people.jpg");
    let cat = fixture("formats/image-rs_jpg_progressive_cat.jpg");
    let job = TestJob::new().tenant("t1");
    let row = |pool: PgPool| async move {
        sqlx::query_as::<_, (i32, i32, i64, String)>(
            "SELECT width, height, phash, source_sha256 FROM image_analyses WHERE tenant = 't1'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };

    // Alone: the analysis decodes for itself.
    uploads.put("tenants/t1/a.jpg", &people);
    job.perform(&uploads.images(db.pool.clone()).analyzer(), analyze("tenants/t1/a.jpg")).await.unwrap();
    let alone = row(db.pool.clone()).await;

    // After the variants, in the same worker: their pixels.
    let images = uploads.images(db.pool.clone());
    job.perform(&images.variants(), variants("tenants/t1/a.jpg")).await.unwrap();
    job.perform(&images.analyzer(), analyze("tenants/t1/a.jpg")).await.unwrap();
    let shared = row(db.pool.clone()).await;
    assert_eq!((shared.0, shared.1, &shared.3), (600, 400, &alone.3));
    let distance = ((shared.2 ^ alone.2) as u64).count_ones();
    assert!(distance <= 2, "phash {:016x} vs {:016x}", shared.2, alone.2);

    // The object replaced between the two jobs: the analysis is of the new bytes.
    let images = uploads.images(db.pool.clone());
    job.perform(&images.variants(), variants("tenants/t1/a.jpg")).await.unwrap();
    uploads.put("tenants/t1/a.jpg", &cat);
    job.perform(&images.analyzer(), analyze("tenants/t1/a.jpg")).await.unwrap();
    let replaced = row(db.pool.clone()).await;
    assert_eq!((replaced.0, replaced.1), (320, 240));
    assert_eq!(replaced.3, fleet_images::sha256_hex(&cat));
    db.drop_db().await;
}
