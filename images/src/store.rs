//! The image tables in PostgreSQL (`image_analyses`, `image_variants`,
//! `image_near_duplicates`): every query on them, for the `image.analyze`,
//! `image.variants` and `portfolio.select` jobs, `GET /v1/portfolios/{portfolio}` and the
//! benchmark. Always built: the scheduler uses it without the `jobs` feature (and so
//! without decoders).
//!
//! Every function takes the tenant whose job or request it serves and reads or writes
//! that tenant's rows only: image ids are the tenant's own names, so another tenant's
//! image of the same id is another row, never seen.
//!
//! Near-duplicates are found when an analysis lands, not when a portfolio is read: the
//! new image's perceptual hash against the other images of its portfolio (one indexed
//! scan, O(N) per image), at most [`MAX_PAIRS_PER_IMAGE`] pairs kept per image. Reading a
//! portfolio reads stored pairs.

use sqlx::PgPool;

/// Perceptual-hash distance at or under which two images are near-duplicates (the image
/// library's threshold, `fleet_images::NEAR_DUPLICATE_DISTANCE` with the `jobs` feature).
pub const NEAR_DUPLICATE_DISTANCE: i32 = 10;

// The store's copy is the library's threshold, for as long as both exist.
#[cfg(feature = "jobs")]
const _: () = assert!(NEAR_DUPLICATE_DISTANCE as u32 == crate::analysis::NEAR_DUPLICATE_DISTANCE);

/// Most near-duplicate pairs one analysis records (the closest ones): a portfolio of N
/// identical photos stores at most this many pairs per image, not N².
pub const MAX_PAIRS_PER_IMAGE: i64 = 50;

/// Most near-duplicate pairs read for one page of a portfolio.
pub const MAX_PAIRS_READ: i64 = 5_000;

/// One image's analysis, as `image.analyze` records it.
#[derive(Debug, Clone)]
pub struct NewAnalysis<'a> {
    /// The tenant whose image it is (its job's tenant; empty for a job with none).
    pub tenant: &'a str,
    /// The tenant's id for the image.
    pub image_id: &'a str,
    /// The portfolio it belongs to, if any (near-duplicates are looked for within it).
    pub portfolio: Option<&'a str>,
    /// Its object key in the store.
    pub source_key: &'a str,
    /// SHA-256 of the upload, hex.
    pub source_sha256: &'a str,
    /// The format read from the bytes.
    pub format: &'a str,
    /// Width in pixels, upright.
    pub width: u32,
    /// Height in pixels, upright.
    pub height: u32,
    /// The 64-bit perceptual hash, as PostgreSQL's BIGINT holds it.
    pub phash: i64,
    /// Higher is sharper.
    pub sharpness: f64,
    /// Exposure verdict and figures.
    pub exposure: serde_json::Value,
    /// Dominant colours.
    pub colours: serde_json::Value,
    /// EXIF metadata (GPS only when the job allowed it) and decode warnings.
    pub metadata: serde_json::Value,
    /// Whether the photo carried a position (whether or not it is kept).
    pub gps_present: bool,
    /// The vision providers' outcome, if they were asked.
    pub vision: Option<serde_json::Value>,
    /// The ThumbHash placeholder, base64.
    pub thumbhash: Option<&'a str>,
}

/// Records an analysis (replacing the image's earlier one) and rewrites the image's
/// near-duplicate pairs, in one transaction. One analysis of a portfolio lands at a time
/// (an advisory lock on tenant and portfolio), so two images analysed at once each see
/// the other: the later one's scan runs after the earlier one commits.
pub async fn record_analysis(db: &PgPool, a: &NewAnalysis<'_>) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    if let Some(portfolio) = a.portfolio {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('images:' || $1 || ':' || $2))")
            .bind(a.tenant)
            .bind(portfolio)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "INSERT INTO image_analyses (tenant, image_id, portfolio, source_key, source_sha256, format, width, height, \
           phash, sharpness, exposure, colours, metadata, gps_present, vision, thumbhash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
         ON CONFLICT (tenant, image_id) DO UPDATE SET portfolio = EXCLUDED.portfolio, source_key = EXCLUDED.source_key, \
           source_sha256 = EXCLUDED.source_sha256, format = EXCLUDED.format, width = EXCLUDED.width, \
           height = EXCLUDED.height, phash = EXCLUDED.phash, sharpness = EXCLUDED.sharpness, \
           exposure = EXCLUDED.exposure, colours = EXCLUDED.colours, metadata = EXCLUDED.metadata, \
           gps_present = EXCLUDED.gps_present, vision = EXCLUDED.vision, thumbhash = EXCLUDED.thumbhash, \
           analyzed_at = now()",
    )
    .bind(a.tenant)
    .bind(a.image_id)
    .bind(a.portfolio)
    .bind(a.source_key)
    .bind(a.source_sha256)
    .bind(a.format)
    .bind(a.width as i32)
    .bind(a.height as i32)
    .bind(a.phash)
    .bind(a.sharpness)
    .bind(&a.exposure)
    .bind(&a.colours)
    .bind(&a.metadata)
    .bind(a.gps_present)
    .bind(&a.vision)
    .bind(a.thumbhash)
    .execute(&mut *tx)
    .await?;
    near_duplicates(&mut tx, a.tenant, a.image_id, a.portfolio, a.phash).await?;
    tx.commit().await
}

/// Rewrites the near-duplicate pairs of `image_id` (analysed again: its hash or portfolio
/// may have changed) against the other images of its portfolio: one indexed scan of the
/// tenant's portfolio, O(N) per image.
async fn near_duplicates(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &str,
    image_id: &str,
    portfolio: Option<&str>,
    phash: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM image_near_duplicates WHERE tenant = $1 AND (a = $2 OR b = $2)")
        .bind(tenant)
        .bind(image_id)
        .execute(&mut **tx)
        .await?;
    let Some(portfolio) = portfolio else { return Ok(()) };
    sqlx::query(
        "INSERT INTO image_near_duplicates (tenant, portfolio, a, b, distance) \
         SELECT $1, $2, LEAST($3, image_id), GREATEST($3, image_id), d FROM ( \
           SELECT image_id, bit_count((phash # $4)::bit(64))::int AS d FROM image_analyses \
           WHERE tenant = $1 AND portfolio = $2 AND image_id <> $3) o \
         WHERE d <= $5 ORDER BY d, image_id LIMIT $6 \
         ON CONFLICT (tenant, a, b) DO UPDATE SET portfolio = EXCLUDED.portfolio, distance = EXCLUDED.distance",
    )
    .bind(tenant)
    .bind(portfolio)
    .bind(image_id)
    .bind(phash)
    .bind(NEAR_DUPLICATE_DISTANCE)
    .bind(MAX_PAIRS_PER_IMAGE)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One variant written to the object store, as `image.variants` records it.
#[derive(Debug, Clone)]
pub struct NewVariant<'a> {
    /// The tenant whose image it is (its job's tenant; empty for a job with none).
    pub tenant: &'a str,
    /// The tenant's id for the image.
    pub image_id: &'a str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `jpeg` or `webp`.
    pub format: &'a str,
    /// Its object key (content-addressed).
    pub key: &'a str,
    /// Its size.
    pub bytes: usize,
    /// SHA-256 of its bytes, hex.
    pub sha256: &'a str,
    /// The recipe hash it was made with.
    pub recipe: &'a str,
}

/// Records a variant, replacing the image's earlier one of the same format and width.
pub async fn record_variant(db: &PgPool, v: &NewVariant<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO image_variants (tenant, image_id, width, height, format, key, bytes, sha256, recipe) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (tenant, image_id, format, width) DO UPDATE SET height = EXCLUDED.height, key = EXCLUDED.key, \
           bytes = EXCLUDED.bytes, sha256 = EXCLUDED.sha256, recipe = EXCLUDED.recipe, created_at = now()",
    )
    .bind(v.tenant)
    .bind(v.image_id)
    .bind(v.width as i32)
    .bind(v.height as i32)
    .bind(v.format)
    .bind(v.key)
    .bind(v.bytes as i32)
    .bind(v.sha256)
    .bind(v.recipe)
    .execute(db)
    .await?;
    Ok(())
}

/// A variant as a portfolio shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVariant {
    /// Width in pixels.
    pub width: i32,
    /// Height in pixels.
    pub height: i32,
    /// `jpeg` or `webp`.
    pub format: String,
    /// Its object key.
    pub key: String,
    /// Its size.
    pub bytes: i32,
}

/// An analysed image of a portfolio, with its variants.
#[derive(Debug, Clone)]
pub struct AnalysedImage {
    /// The tenant's id for the image.
    pub id: String,
    /// The format read from the bytes.
    pub format: String,
    /// Width in pixels, upright.
    pub width: i32,
    /// Height in pixels, upright.
    pub height: i32,
    /// The 64-bit perceptual hash, as PostgreSQL's BIGINT holds it.
    pub phash: i64,
    /// Higher is sharper.
    pub sharpness: f64,
    /// Exposure verdict and figures.
    pub exposure: serde_json::Value,
    /// Dominant colours.
    pub colours: serde_json::Value,
    /// EXIF metadata (GPS only when the upload allowed it).
    pub metadata: serde_json::Value,
    /// Whether the photo carried a position.
    pub gps_present: bool,
    /// The vision providers' outcome, if they were asked.
    pub vision: Option<serde_json::Value>,
    /// The ThumbHash placeholder, base64 (none for an analysis recorded before there was one).
    pub thumbhash: Option<String>,
    /// Its variants, by format then width.
    pub variants: Vec<StoredVariant>,
}

/// A page of a portfolio.
#[derive(Debug, Clone)]
pub struct PortfolioPage {
    /// This page's images, sharpest first (ties by id, descending).
    pub images: Vec<AnalysedImage>,
    /// Whether more images follow the last one.
    pub more: bool,
    /// Groups (two or more) of image ids of the whole portfolio that are near-duplicates
    /// of each other, from at most [`MAX_PAIRS_READ`] stored pairs.
    pub near_duplicates: Vec<Vec<String>>,
    /// Whether the portfolio has more pairs than the groups were made of.
    pub near_duplicates_truncated: bool,
}

/// id, format, width, height, phash, sharpness, exposure, colours, metadata, GPS present, vision,
/// thumbhash.
type AnalysisRow = (
    String,
    String,
    i32,
    i32,
    i64,
    f64,
    serde_json::Value,
    serde_json::Value,
    serde_json::Value,
    bool,
    Option<serde_json::Value>,
    Option<String>,
);

/// Up to `limit` analysed images of `tenant`'s `portfolio`, sharpest first, after the
/// image `after` (its sharpness and id; the first page without), with their variants and
/// the portfolio's near-duplicate groups. Every read is bounded: `limit` images (by an
/// index), their variants, at most [`MAX_PAIRS_READ`] stored pairs. A first page with no
/// images (the portfolio has none) reads nothing more.
pub async fn portfolio_page(
    db: &PgPool,
    tenant: &str,
    portfolio: &str,
    after: Option<(f64, &str)>,
    limit: i64,
) -> Result<PortfolioPage, sqlx::Error> {
    let rows: Vec<AnalysisRow> = sqlx::query_as(
        "SELECT image_id, format, width, height, phash, sharpness, exposure, colours, metadata, gps_present, vision, \
           thumbhash FROM image_analyses WHERE tenant = $1 AND portfolio = $2 \
           AND ($3::float8 IS NULL OR (sharpness, image_id) < ($3, $4)) \
         ORDER BY sharpness DESC, image_id DESC LIMIT $5",
    )
    .bind(tenant)
    .bind(portfolio)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1).unwrap_or(""))
    .bind(limit + 1)
    .fetch_all(db)
    .await?;
    if rows.is_empty() && after.is_none() {
        return Ok(PortfolioPage {
            images: Vec::new(),
            more: false,
            near_duplicates: Vec::new(),
            near_duplicates_truncated: false,
        });
    }
    let more = rows.len() as i64 > limit;
    let rows: Vec<AnalysisRow> = rows.into_iter().take(limit as usize).collect();
    let ids: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let variants: Vec<(String, i32, i32, String, String, i32)> = sqlx::query_as(
        "SELECT image_id, width, height, format, key, bytes FROM image_variants \
         WHERE tenant = $1 AND image_id = ANY($2) ORDER BY image_id, format, width",
    )
    .bind(tenant)
    .bind(&ids)
    .fetch_all(db)
    .await?;
    // Pairs stored by `image.analyze` when the analyses landed, of images still in this
    // portfolio (one moved elsewhere by a concurrent re-analysis is left out).
    let mut pairs: Vec<(String, String)> = sqlx::query_as(
        "SELECT d.a, d.b FROM image_near_duplicates d \
         JOIN image_analyses x ON x.tenant = d.tenant AND x.image_id = d.a AND x.portfolio = d.portfolio \
         JOIN image_analyses y ON y.tenant = d.tenant AND y.image_id = d.b AND y.portfolio = d.portfolio \
         WHERE d.tenant = $1 AND d.portfolio = $2 ORDER BY d.a, d.b LIMIT $3",
    )
    .bind(tenant)
    .bind(portfolio)
    .bind(MAX_PAIRS_READ + 1)
    .fetch_all(db)
    .await?;
    let near_duplicates_truncated = pairs.len() as i64 > MAX_PAIRS_READ;
    pairs.truncate(MAX_PAIRS_READ as usize);
    let images = rows
        .into_iter()
        .map(|(id, format, width, height, phash, sharpness, exposure, colours, metadata, gps_present, vision, th)| {
            let variants = variants
                .iter()
                .filter(|v| v.0 == id)
                .map(|(_, width, height, format, key, bytes)| StoredVariant {
                    width: *width,
                    height: *height,
                    format: format.clone(),
                    key: key.clone(),
                    bytes: *bytes,
                })
                .collect();
            AnalysedImage {
                id,
                format,
                width,
                height,
                phash,
                sharpness,
                exposure,
                colours,
                metadata,
                gps_present,
                vision,
                thumbhash: th,
                variants,
            }
        })
        .collect();
    Ok(PortfolioPage { images, more, near_duplicates: groups(&pairs), near_duplicates_truncated })
}

/// What a portfolio's selection step decides for the analysed photos of one upload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    /// Photos to vary: each one no near-duplicate of a sharper photo of the upload (the
    /// sharpest of each near-duplicate group, and every photo in no group), in the order
    /// the ids were given.
    pub kept: Vec<String>,
    /// Near-duplicates left out, each with the kept photo of its group: `(id, kept id)`.
    pub dropped: Vec<(String, String)>,
    /// Ids with no stored analysis in the portfolio (for instance moved to another one by
    /// a later analysis): neither kept nor dropped.
    pub missing: Vec<String>,
}

/// Chooses among the analysed photos `ids` of `tenant`'s `portfolio` (those whose
/// analysis succeeded in this upload): the photos are grouped as `GET
/// /v1/portfolios/{portfolio}` groups them (connected near-duplicate pairs, stored when
/// the analyses landed), only pairs with both photos among `ids` counting, and within a
/// group the sharpest photo is kept (ties: the one a page lists first) and the others are
/// dropped as its near-duplicates. Reads `tenant`'s rows only; bounded by `ids` (their
/// analyses, and at most [`MAX_PAIRS_PER_IMAGE`] pairs per photo).
pub async fn select_sharpest(
    db: &PgPool,
    tenant: &str,
    portfolio: &str,
    ids: &[String],
) -> Result<Selection, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Selection::default());
    }
    let rows: Vec<(String, f64)> = sqlx::query_as(
        "SELECT image_id, sharpness FROM image_analyses WHERE tenant = $1 AND portfolio = $2 AND image_id = ANY($3)",
    )
    .bind(tenant)
    .bind(portfolio)
    .bind(ids)
    .fetch_all(db)
    .await?;
    let pairs: Vec<(String, String)> = sqlx::query_as(
        "SELECT a, b FROM image_near_duplicates WHERE tenant = $1 AND portfolio = $2 \
           AND a = ANY($3) AND b = ANY($3) ORDER BY a, b LIMIT $4",
    )
    .bind(tenant)
    .bind(portfolio)
    .bind(ids)
    .bind(MAX_PAIRS_PER_IMAGE.saturating_mul(ids.len() as i64))
    .fetch_all(db)
    .await?;
    Ok(choose(ids, &rows, &pairs))
}

/// [`select_sharpest`] on rows already read: `sharpness` of the analysed photos, `pairs`
/// of near-duplicates among them.
fn choose(ids: &[String], sharpness: &[(String, f64)], pairs: &[(String, String)]) -> Selection {
    use std::collections::HashMap;
    let sharp: HashMap<&str, f64> = sharpness.iter().map(|(id, s)| (id.as_str(), *s)).collect();
    // Pairs of photos that have an analysis here (a pair's other photo may have moved).
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .filter(|(a, b)| sharp.contains_key(a.as_str()) && sharp.contains_key(b.as_str()))
        .cloned()
        .collect();
    // The kept photo of each grouped id: the group's first in a page's order (sharpness
    // descending, then id descending).
    let mut keeper: HashMap<String, String> = HashMap::new();
    for group in groups(&pairs) {
        let best = group
            .iter()
            .max_by(|a, b| sharp[a.as_str()].total_cmp(&sharp[b.as_str()]).then_with(|| a.cmp(b)))
            .expect("a group has two or more ids")
            .clone();
        for id in group {
            keeper.insert(id, best.clone());
        }
    }
    let mut out = Selection::default();
    for id in ids {
        if !sharp.contains_key(id.as_str()) {
            out.missing.push(id.clone());
            continue;
        }
        match keeper.get(id) {
            Some(best) if best != id => out.dropped.push((id.clone(), best.clone())),
            _ => out.kept.push(id.clone()),
        }
    }
    out
}

/// Connected groups of the near-duplicate pairs (union-find over the ids).
fn groups(pairs: &[(String, String)]) -> Vec<Vec<String>> {
    let mut parent: std::collections::BTreeMap<&str, &str> = Default::default();
    fn root<'a>(parent: &mut std::collections::BTreeMap<&'a str, &'a str>, x: &'a str) -> &'a str {
        let mut r = x;
        while let Some(&p) = parent.get(r).filter(|p| **p != r) {
            r = p;
        }
        parent.insert(x, r);
        r
    }
    for (a, b) in pairs {
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        if ra != rb {
            parent.insert(ra.max(rb), ra.min(rb));
        }
    }
    let mut out: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    let ids: Vec<&str> = parent.keys().copied().collect();
    for id in ids {
        let r = root(&mut parent, id);
        out.entry(r).or_default().push(id.to_owned());
    }
    out.into_values().filter(|g| g.len() > 1).collect()
}

/// How many variants `tenant` has and their bytes in all (the benchmark's figure).
pub async fn variant_totals(db: &PgPool, tenant: &str) -> Result<(i64, i64), sqlx::Error> {
    let (count, bytes): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), sum(bytes)::BIGINT FROM image_variants WHERE tenant = $1")
            .bind(tenant)
            .fetch_one(db)
            .await?;
    Ok((count, bytes.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::groups;

    #[test]
    fn the_sharpest_of_each_group_is_kept_and_the_others_name_it() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let p = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        let ids = s(&["a", "b", "c", "d", "e", "gone", "failed-elsewhere"]);
        // a ~ b ~ c (c the sharpest), d alone, e ~ gone (gone has no analysis here).
        let sharp: Vec<(String, f64)> = [("a", 10.0), ("b", 5.0), ("c", 20.0), ("d", 1.0), ("e", 3.0)]
            .iter()
            .map(|(i, v)| (i.to_string(), *v))
            .collect();
        let pairs = [p("a", "b"), p("b", "c"), p("e", "gone")];
        let got = super::choose(&ids, &sharp, &pairs);
        assert_eq!(got.kept, s(&["c", "d", "e"]));
        assert_eq!(got.dropped, vec![p("a", "c"), p("b", "c")]);
        assert_eq!(got.missing, s(&["gone", "failed-elsewhere"]));
        // Equal sharpness: the one a page lists first (the greater id) is kept.
        let tie = super::choose(&s(&["x", "y"]), &[("x".into(), 1.0), ("y".into(), 1.0)], &[p("x", "y")]);
        assert_eq!((tie.kept, tie.dropped), (s(&["y"]), vec![p("x", "y")]));
        assert_eq!(super::choose(&[], &[], &[]), super::Selection::default());
    }

    #[test]
    fn pairs_join_into_groups() {
        let p = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        let g = groups(&[p("a", "b"), p("c", "d"), p("b", "e"), p("d", "f")]);
        assert_eq!(g, vec![vec!["a", "b", "e"], vec!["c", "d", "f"]]);
        assert!(groups(&[]).is_empty());
    }
}
