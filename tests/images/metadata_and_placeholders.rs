//! What independent tools found wrong with the image kinds, through the product's path (the
//! API, the worker, the `image.analyze` / `image.variants` handlers, the object store):
//! a GPS position stored only in XMP, the ThumbHash placeholder of each analysis, and the
//! metadata a variant may keep (the credit, never the location), read back by `exiftool`
//! when it is installed and by `kamadak-exif` always.

use super::{Store, fixture, settings};
use fleet_images::jobs::Images;
use fleet_jobs::EnqueueOptions;
use fleet_jobs::catalogue::ImageAnalyze;
use fleet_tests::{TestDb, TestEnv, n_final};
use fleet_worker::{QueueConfig, Registry};
use std::time::Duration;

/// The Eiffel Tower, as XMP writes it (`DDD,MM.mmk`): 48°51.504'N 2°17.67'E.
const EIFFEL: (f64, f64) = (48.8584, 2.2945);

/// An XMP packet as Lightroom writes it: the position in the EXIF schema's namespace, as
/// attributes of `rdf:Description`, or as elements (another prefix for the same namespace).
fn xmp_packet(as_elements: bool) -> String {
    let position = if as_elements {
        "xmlns:e=\"http://ns.adobe.com/exif/1.0/\">\
         <e:GPSLatitude>48,51,30.24N</e:GPSLatitude><e:GPSLongitude>2,17,40.2E</e:GPSLongitude>\
         <e:GPSAltitude>330/10</e:GPSAltitude></rdf:Description>"
    } else {
        "xmlns:exif=\"http://ns.adobe.com/exif/1.0/\" exif:GPSLatitude=\"48,51.504N\" \
         exif:GPSLongitude=\"2,17.67E\" exif:GPSVersionID=\"2.3.0.0\"/>"
    };
    format!(
        "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\n\
         <x:xmpmeta xmlns:x=\"adobe:ns:meta/\" x:xmptk=\"Adobe XMP Core 7.0\">\n\
         <rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\n\
         <rdf:Description rdf:about=\"\" xmlns:xmp=\"http://ns.adobe.com/xap/1.0/\" \
         xmp:CreatorTool=\"Adobe Lightroom\" {position}\n\
         </rdf:RDF>\n</x:xmpmeta>\n{}\n<?xpacket end=\"w\"?>",
        " ".repeat(512)
    )
}

/// A real JPEG with an APP1 XMP segment right after SOI: the position only there.
fn jpeg_with_xmp(jpeg: &[u8], xmp: &str) -> Vec<u8> {
    let payload = [&b"http://ns.adobe.com/xap/1.0/\0"[..], xmp.as_bytes()].concat();
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&u16::try_from(payload.len() + 2).unwrap().to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A real PNG with an uncompressed `iTXt` chunk keyed `XML:com.adobe.xmp` after IHDR.
fn png_with_xmp(png: &[u8], xmp: &str) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    let data = [&b"XML:com.adobe.xmp\0\0\0\0\0"[..], xmp.as_bytes()].concat();
    let body = [&b"iTXt"[..], &data].concat();
    let ihdr_end = 8 + 12 + 13;
    let mut out = png[..ihdr_end].to_vec();
    out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out.extend_from_slice(&png[ihdr_end..]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gps_position_stored_only_in_xmp_is_detected_and_kept_only_when_allowed() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let store = Store::new("xmp");
    // people.jpg has no EXIF at all; the PNG neither: XMP is the only place of the position.
    let jpeg = jpeg_with_xmp(&fixture("formats/people.jpg"), &xmp_packet(false));
    assert!(fleet_images::decode(&jpeg, &fleet_images::Limits::default()).is_ok(), "still a valid JPEG");
    let png = png_with_xmp(&fixture("pngsuite/basn2c08.png"), &xmp_packet(true));
    store.put("tenants/studio/up/xmp.jpg", &jpeg);
    store.put("tenants/studio/up/xmp.png", &png);

    let tenant = EnqueueOptions { tenant: Some("studio".into()), ..Default::default() };
    let analyze = |id: &str, key: &str, allow_gps: bool| {
        let args = ImageAnalyze {
            image_id: id.into(),
            key: format!("tenants/studio/up/{key}"),
            portfolio: Some("paris".into()),
            allow_gps,
            vision: false,
        };
        (args, tenant.clone())
    };
    env.client
        .enqueue_bulk_with(vec![
            analyze("jpeg", "xmp.jpg", false),
            analyze("jpeg-allowed", "xmp.jpg", true),
            analyze("png", "xmp.png", false),
            analyze("png-allowed", "xmp.png", true),
        ])
        .await
        .unwrap();
    let images = Images::new(db.pool.clone(), &settings(&store)).unwrap();
    let mut cfg = env.config("images", 2);
    cfg.queues = vec![QueueConfig { name: "images".into(), concurrency: 2, fetch_batch: None, partitions: None }];
    let worker = env.worker(cfg, Registry::new().register(images.analyzer())).await;
    let mut rx = worker.events();
    n_final(&mut rx, 4, Duration::from_secs(120)).await;
    assert_eq!(env.stats("images").await.succeeded, 4);

    let rows: Vec<(String, bool, serde_json::Value)> =
        sqlx::query_as("SELECT image_id, gps_present, metadata FROM image_analyses WHERE tenant = 'studio'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let row = |id: &str| rows.iter().find(|r| r.0 == id).unwrap_or_else(|| panic!("analysis of {id}"));
    for id in ["jpeg", "png"] {
        let (_, present, metadata) = row(id);
        assert!(present, "{id}: the position in XMP is a position: {metadata}");
        assert!(metadata["gps"].is_null(), "{id}: withheld unless allowed: {metadata}");
        assert!(!metadata.to_string().contains("48.8"), "{id}: {metadata}");
        let (_, present, metadata) = row(&format!("{id}-allowed"));
        assert!(present);
        let (lat, lon) = (metadata["gps"]["latitude"].as_f64(), metadata["gps"]["longitude"].as_f64());
        let (lat, lon) = (lat.expect("kept when allowed"), lon.expect("kept when allowed"));
        assert!((lat - EIFFEL.0).abs() < 1e-4 && (lon - EIFFEL.1).abs() < 1e-4, "{id}: {metadata}");
        assert!(metadata["xmp_warning"].is_null(), "{metadata}");
    }
    assert_eq!(row("png-allowed").2["gps"]["altitude_m"].as_f64(), Some(33.0));
    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}

/// The tags `exiftool` finds in `bytes` (metadata groups only, `-G1` names); `None` when it
/// is not installed (`apt-get install libimage-exiftool-perl`).
fn exiftool_tags(bytes: &[u8], name: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let dir = std::env::temp_dir().join(format!("fleet-exiftool-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new("exiftool")
        .args(["-j", "-G1", "-a", "-EXIF:all", "-XMP:all", "-IPTC:all", "-GPS:all", "-MakerNotes:all"])
        .arg(&path)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        other => other.expect("exiftool runs"),
    };
    assert!(out.status.success(), "exiftool: {}", String::from_utf8_lossy(&out.stderr));
    let mut list: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_slice(&out.stdout).unwrap();
    let mut tags = list.pop().unwrap();
    tags.remove("SourceFile");
    Some(tags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portfolio_shows_thumbhashes_and_its_variants_keep_the_credit_asked_for_and_never_the_location() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use fleet_scheduler::api::{ApiState, app, auth};
    use serde_json::{Value, json};
    use tower::ServiceExt;

    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let store = Store::new("kept");
    // A Nikon D300 photo with Artist and Copyright in its EXIF, a position added in XMP;
    // and DSCN0010 with a position in its EXIF and no credit at all.
    let credited = jpeg_with_xmp(&fixture("exif/camera/32-lens_data.jpeg"), &xmp_packet(false));
    store.put("tenants/studio/up/credited.jpg", &credited);
    store.put("tenants/studio/up/located.jpg", &fixture("exif/gps/DSCN0010.jpg"));
    store.put("tenants/studio/up/tree.webp", &fixture("formats/tree.webp"));

    let key = auth::create_api_key(&db.pool, "studio", "uploads", &[auth::Role::Enqueue]).await.unwrap();
    let api = app(
        ApiState::new(env.client.clone(), db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests()),
        1 << 20,
    );
    let call = |method: &str, uri: &str, body: Option<Value>| {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty))
            .unwrap();
        let api = api.clone();
        async move {
            let res = api.oneshot(req).await.unwrap();
            let status = res.status();
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 22).await.unwrap();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null))
        }
    };
    // A location is never kept, whatever is asked; nor is anything outside the credit.
    for keep in [json!(["copyright", "gps"]), json!(["GPSLatitude"]), json!(["location"]), json!(["make"])] {
        let body = json!({"portfolio": "x", "images": [{"id": "a", "key": "tenants/studio/up/credited.jpg"}],
            "variants": {"keep_metadata": keep}});
        let (s, body) = call("POST", "/v1/portfolios", Some(body)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{keep}: {body}");
        assert!(body.to_string().contains("keepable: artist, copyright"), "{body}");
    }
    let upload = json!({
        "portfolio": "credits",
        "images": [
            {"id": "credited", "key": "tenants/studio/up/credited.jpg"},
            {"id": "located", "key": "tenants/studio/up/located.jpg"},
            {"id": "tree", "key": "tenants/studio/up/tree.webp"}
        ],
        "allow_gps": true,
        "variants": {"widths": [320], "keep_metadata": ["copyright"]}
    });
    let (s, accepted) = call("POST", "/v1/portfolios", Some(upload)).await;
    assert_eq!(s, StatusCode::CREATED, "{accepted}");

    let images = Images::new(db.pool.clone(), &settings(&store)).unwrap();
    let registry = Registry::new().register(images.analyzer()).register(images.variants()).register(images.selector());
    let mut cfg = env.config("images", 2);
    cfg.queues = vec![QueueConfig { name: "images".into(), concurrency: 2, fetch_batch: None, partitions: None }];
    let worker = env.worker(cfg, registry).await;
    let mut rx = worker.events();
    // Three analyses, the selection, three variants steps (the photos are not alike).
    n_final(&mut rx, 7, Duration::from_secs(120)).await;
    assert_eq!(env.stats("images").await.succeeded, 7);

    let (s, view) = call("GET", "/v1/portfolios/credits", None).await;
    assert_eq!(s, StatusCode::OK, "{view}");
    let image = |id: &str| {
        view["images"].as_array().unwrap().iter().find(|i| i["id"] == id).unwrap_or_else(|| panic!("{id}: {view}"))
    };
    // The placeholder: decoded by the ThumbHash crate, the source's shape and colour.
    for (id, src) in [
        ("credited", credited.clone()),
        ("located", fixture("exif/gps/DSCN0010.jpg")),
        ("tree", fixture("formats/tree.webp")),
    ] {
        use base64::Engine;
        let hash = image(id)["thumbhash"].as_str().unwrap_or_else(|| panic!("{id} has a thumbhash: {view}"));
        let hash = base64::engine::general_purpose::STANDARD.decode(hash).unwrap();
        assert!(hash.len() <= 32, "{id}: a placeholder of a few bytes, not {}", hash.len());
        let (w, h, rgba) = thumbhash::thumb_hash_to_rgba(&hash).expect("the crate's decoder reads it");
        assert_eq!(rgba.len(), w * h * 4);
        let source = image::load_from_memory(&src).unwrap().to_rgb8();
        let (sw, sh) = (image(id)["width"].as_f64().unwrap(), image(id)["height"].as_f64().unwrap());
        let aspect = (w as f64 / h as f64) / (sw / sh);
        assert!((0.85..1.18).contains(&aspect), "{id}: {w}x{h} for {sw}x{sh}");
        let (r, g, b, _) = thumbhash::thumb_hash_to_average_rgba(&hash).unwrap();
        let n = f64::from(source.width() * source.height());
        let mean = |c: usize| source.pixels().map(|p| f64::from(p.0[c])).sum::<f64>() / n / 255.0;
        for (c, got) in [r, g, b].into_iter().enumerate() {
            assert!((f64::from(got) - mean(c)).abs() < 0.08, "{id}: channel {c}: {got} vs {}", mean(c));
        }
    }
    let credited_view = image("credited");
    assert_eq!(credited_view["gps_present"], true, "the XMP position: {credited_view}");
    assert!((credited_view["metadata"]["gps"]["latitude"].as_f64().unwrap() - EIFFEL.0).abs() < 1e-4);

    // The variants keep the copyright, and nothing else: no artist (not asked), no camera,
    // no GPS (from the EXIF of one, the XMP of the other), no XMP at all.
    let mut checked = 0;
    for img in view["images"].as_array().unwrap() {
        let id = img["id"].as_str().unwrap();
        for v in img["variants"].as_array().unwrap() {
            let key = v["key"].as_str().unwrap();
            let bytes = store.get(key);
            assert!(!bytes.windows(4).any(|w| w == b"XMP " || w == b"xmp:"), "{key}");
            let meta = fleet_images::read_metadata(&bytes, true);
            assert!(!meta.gps_present && meta.gps.is_none(), "{key}: {meta:?}");
            assert_eq!((meta.make.as_deref(), meta.model.as_deref(), meta.artist.as_deref()), (None, None, None));
            let exif = exif::Reader::new().read_from_container(&mut std::io::Cursor::new(&bytes));
            if id == "credited" {
                assert_eq!(meta.copyright.as_deref(), Some("Ilya Kurikhin"), "{key}: {meta:?}");
                let exif = exif.expect("an EXIF block");
                let tags: Vec<exif::Tag> = exif.fields().map(|f| f.tag).collect();
                assert_eq!(tags, [exif::Tag::Copyright], "{key}");
                if let Some(tags) = exiftool_tags(&bytes, &format!("{id}.{}", v["format"].as_str().unwrap())) {
                    let names: Vec<&String> = tags.keys().collect();
                    assert_eq!(names, ["IFD0:Copyright"], "{key}: exiftool reads {tags:?}");
                    assert_eq!(tags["IFD0:Copyright"], "Ilya Kurikhin");
                }
            } else {
                // Nothing to keep: no EXIF block at all.
                assert!(exif.is_err(), "{key}: {meta:?}");
                if let Some(tags) = exiftool_tags(&bytes, &format!("{id}.{}", v["format"].as_str().unwrap())) {
                    assert!(tags.is_empty(), "{key}: exiftool reads {tags:?}");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 6, "320 px in JPEG and WebP for each image: {view}");
    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}
