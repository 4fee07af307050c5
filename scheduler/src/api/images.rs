//! `/v1/portfolios`: a photographer's upload of N images becomes one batch of
//! `image.analyze` + `image.variants` jobs (queue `images`) with an optional completion
//! callback; the portfolio's analyses, variants and near-duplicate groups are read back
//! from [`fleet_images::store`], for the caller's tenant only. `/v1/uploads` hands out
//! presigned PUT URLs ([`fleet_images::uploads`]) so apps put originals straight into the
//! S3 store, under the caller's prefix.

use super::ApiState;
use super::auth::{Caller, Role};
use super::error::ApiError;
use super::jobs::{EnqueueRequest, prepare};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use fleet_images::store;
use fleet_jobs::JobArgs;
use fleet_jobs::batches::{Callback, Callbacks};
use fleet_jobs::catalogue::image::{check_kept_metadata, check_tenant_object_key, check_variant_request};
use fleet_jobs::catalogue::{ImageAnalyze, ImageVariants, WatermarkArgs};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

/// Most images in one portfolio request (two jobs each, within one batch).
pub const MAX_IMAGES: usize = 500;

/// One uploaded image.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadedImage {
    /// The caller's id for the image (unique within the tenant).
    id: String,
    /// Its object key in the store the workers read: under the caller's own prefix,
    /// `tenants/<tenant>/` (any other key is refused with 422).
    key: String,
}

/// Variant settings for the whole upload.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VariantRequest {
    /// Widths (default 320, 640, 1280, 2048; 1 to 8 of 16 to 8,192 pixels).
    #[serde(default)]
    widths: Option<Vec<u32>>,
    /// `jpeg`, `webp` and/or `avif` (default `jpeg` and `webp`; AVIF only when asked for).
    #[serde(default)]
    formats: Option<Vec<String>>,
    /// Watermark: `{"key", "position", "opacity", "scale"}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    watermark: Option<WatermarkArgs>,
    /// Metadata of the source written into the variants (default none): `artist`,
    /// `copyright`. Any other name is refused with 422, a location (GPS) name included:
    /// variants never say where a photo was taken.
    #[serde(default)]
    keep_metadata: Option<Vec<String>>,
}

/// A portfolio upload to process.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PortfolioRequest {
    /// The portfolio (gallery) name, e.g. `smith-jones-2027`.
    portfolio: String,
    /// The images (1 to 500).
    images: Vec<UploadedImage>,
    /// Keep GPS positions in the stored analyses (default: only whether there was one).
    #[serde(default)]
    allow_gps: bool,
    /// Ask the configured vision providers for categories, tags and alt text.
    #[serde(default)]
    vision: bool,
    /// Variant settings.
    #[serde(default)]
    variants: Option<VariantRequest>,
    /// A job enqueued once every analysis and variant job has finished, e.g. a
    /// `webhook.publish` of `portfolio.processed`.
    #[serde(default)]
    on_complete: Option<EnqueueRequest>,
}

/// The batch that processes an upload.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PortfolioAccepted {
    /// Follow it at `/v1/batches/{batch}` (and `/events`).
    batch: String,
    /// Jobs in the batch (two per image).
    jobs: usize,
}

fn raw<A: Serialize>(a: &A) -> Result<Box<RawValue>, ApiError> {
    serde_json::value::to_raw_value(a).map_err(|e| ApiError::invalid(e.to_string()))
}

/// Process an upload: one analysis and one variants job per image, in one batch.
#[utoipa::path(post, path = "/v1/portfolios", request_body = PortfolioRequest,
    responses((status = 201, body = PortfolioAccepted), (status = 401, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn create_portfolio(
    State(state): State<ApiState>,
    caller: Caller,
    Json(req): Json<PortfolioRequest>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Enqueue)?;
    if req.images.is_empty() || req.images.len() > MAX_IMAGES {
        return Err(ApiError::invalid(format!("a portfolio request holds 1 to {MAX_IMAGES} images")));
    }
    if req.portfolio.is_empty() || req.portfolio.len() > 200 {
        return Err(ApiError::invalid("portfolio must be 1 to 200 characters"));
    }
    let mut seen = std::collections::HashSet::new();
    for img in &req.images {
        if img.id.is_empty() || img.id.len() > 200 || img.key.is_empty() || img.key.len() > 1024 {
            return Err(ApiError::invalid("image ids are 1 to 200 characters and keys 1 to 1024"));
        }
        if !seen.insert(img.id.as_str()) {
            return Err(ApiError::invalid(format!("image id {:?} appears twice", img.id)));
        }
        // A tenant names only its own objects: `tenants/<tenant>/...`.
        check_tenant_object_key(&caller.tenant, &img.key).map_err(ApiError::invalid)?;
    }
    let variants = req.variants.unwrap_or_default();
    check_variant_request(variants.widths.as_deref(), variants.formats.as_deref()).map_err(ApiError::invalid)?;
    check_kept_metadata(variants.keep_metadata.as_deref().unwrap_or_default()).map_err(ApiError::invalid)?;
    if let Some(w) = &variants.watermark {
        check_tenant_object_key(&caller.tenant, &w.key).map_err(|e| ApiError::invalid(format!("watermark: {e}")))?;
    }
    let queue = ImageAnalyze::options().queue;
    let opts = || fleet_jobs::EnqueueOptions { tenant: Some(caller.tenant.clone()), ..Default::default() };
    let mut jobs = Vec::with_capacity(req.images.len() * 2);
    for img in &req.images {
        let analyze = ImageAnalyze {
            image_id: img.id.clone(),
            key: img.key.clone(),
            portfolio: Some(req.portfolio.clone()),
            allow_gps: req.allow_gps,
            vision: req.vision,
        };
        let vary = ImageVariants {
            image_id: img.id.clone(),
            key: img.key.clone(),
            widths: variants.widths.clone(),
            formats: variants.formats.clone(),
            watermark: variants.watermark.clone(),
            keep_metadata: variants.keep_metadata.clone(),
        };
        jobs.push((ImageAnalyze::KIND.to_owned(), raw(&analyze)?, ImageAnalyze::options(), opts()));
        jobs.push((ImageVariants::KIND.to_owned(), raw(&vary)?, ImageVariants::options(), opts()));
    }
    let on_complete = match req.on_complete {
        Some(r) => {
            let (kind, args, _, o) = prepare(r, &caller.tenant, &state.tenancy)?;
            Some(Callback { kind, args, queue: o.queue, priority: o.priority, max_attempts: o.max_attempts })
        }
        None => None,
    };
    let callbacks = Callbacks { on_success: None, on_complete, tenant: Some(caller.tenant.clone()) };
    let total = jobs.len();
    let batch = state.client.create_batch(&queue, jobs, &callbacks).await?;
    super::batches::record_batch(&state.db, &batch, &caller.tenant, &queue, total as i64, &callbacks).await?;
    Ok((StatusCode::CREATED, Json(PortfolioAccepted { batch, jobs: total })))
}

/// An original about to be uploaded.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadRequest {
    /// The file name (1 to 200 bytes, no path separators); kept in the key with anything
    /// but letters, digits, `.`, `-` and `_` replaced by `_`.
    name: String,
    /// `image/jpeg`, `image/png`, `image/webp`, `image/gif`, `image/tiff` or `image/avif`.
    content_type: String,
    /// The file's size in bytes (1 to 64 MiB); the PUT must be exactly this long.
    bytes: u64,
}

/// Where and how to PUT the original.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UploadGranted {
    /// `tenants/<tenant>/uploads/<uuid v7>/<name>`: pass it as an image's `key` to
    /// `POST /v1/portfolios` once the PUT has succeeded.
    key: String,
    /// The presigned PUT URL (SigV4; valid for this key, content type and size only).
    url: String,
    /// When the URL stops working (15 minutes after it was signed).
    expires_at: chrono::DateTime<chrono::Utc>,
    /// Headers the PUT must send with exactly these values (`content-type`, `content-length`).
    #[schema(value_type = Object)]
    headers: std::collections::BTreeMap<String, String>,
}

/// A presigned URL to PUT one original straight into the S3 store, at a key Fleet makes
/// under the caller's prefix. 422 for a name, type or size that cannot be signed; 501 when
/// the store is not S3 (a local store cannot take uploads).
#[utoipa::path(post, path = "/v1/uploads", request_body = UploadRequest,
    responses((status = 201, body = UploadGranted), (status = 401, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody), (status = 501, body = super::error::ErrorBody)))]
pub(crate) async fn create_upload(
    State(state): State<ApiState>,
    caller: Caller,
    Json(req): Json<UploadRequest>,
) -> Result<impl IntoResponse, ApiError> {
    use fleet_images::uploads::UploadError;
    caller.require(Role::Enqueue)?;
    let Some(signer) = &state.uploads else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_configured",
            "presigned uploads need an S3 store: set [images.storage] kind = \"s3\" (or FLEET_S3_*) in the \
             scheduler's config; with a local store, put originals into its folder directly",
        ));
    };
    let up = signer.sign_put(&caller.tenant, &req.name, &req.content_type, req.bytes).map_err(|e| match e {
        UploadError::Invalid(m) => ApiError::invalid(m),
        UploadError::Storage(e) => ApiError::internal("signing an upload URL", e),
    })?;
    let granted = UploadGranted { key: up.key, url: up.url, expires_at: up.expires_at, headers: up.headers };
    Ok((StatusCode::CREATED, Json(granted)))
}

/// One analysed image of a portfolio.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ImageView {
    id: String,
    format: String,
    width: i32,
    height: i32,
    /// Perceptual hash, 16 hex digits.
    phash: String,
    /// Higher is sharper (variance of the Laplacian on a 512 px copy).
    sharpness: f64,
    #[schema(value_type = Object)]
    exposure: serde_json::Value,
    #[schema(value_type = Object)]
    colours: serde_json::Value,
    /// Camera, lens, taken-at, orientation; GPS only when the upload allowed it.
    #[schema(value_type = Object)]
    metadata: serde_json::Value,
    gps_present: bool,
    #[schema(value_type = Option<Object>)]
    vision: Option<serde_json::Value>,
    /// A ThumbHash placeholder (base64): draw it blurred while the variants load. Absent for
    /// an image analysed before placeholders existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    thumbhash: Option<String>,
    /// Variants written: `{width, height, format, key, bytes}`.
    #[schema(value_type = Vec<Object>)]
    variants: Vec<serde_json::Value>,
}

/// A page of a portfolio's images and its near-duplicate groups.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PortfolioView {
    portfolio: String,
    /// This page's images, sharpest first.
    images: Vec<ImageView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    /// Groups (two or more) of image ids of the whole portfolio that are near-duplicates
    /// of each other, found when the analyses landed (from at most 5,000 pairs).
    near_duplicates: Vec<Vec<String>>,
    /// Whether the portfolio has more near-duplicate pairs than the groups were made of.
    near_duplicates_truncated: bool,
}

/// Paging of a portfolio.
#[derive(Debug, Default, Deserialize, IntoParams)]
pub(crate) struct PortfolioQuery {
    /// Images per page (1 to 500, default 100).
    limit: Option<i64>,
    /// The `next` of the previous page.
    cursor: Option<String>,
}

/// Images per page by default.
const DEFAULT_PAGE: i64 = 100;
/// Most images per page.
const MAX_PAGE: i64 = 500;

/// The opaque cursor after the image `id` of sharpness `sharpness`.
fn encode_cursor(sharpness: f64, id: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{:016x}~{id}", sharpness.to_bits()))
}

fn decode_cursor(cursor: &str) -> Option<(f64, String)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (bits, id) = raw.split_once('~')?;
    let sharpness = f64::from_bits(u64::from_str_radix(bits, 16).ok()?);
    (!sharpness.is_nan()).then(|| (sharpness, id.to_owned()))
}

/// A page of a portfolio's analysed images (sharpest first), their variants and the
/// portfolio's near-duplicate groups. Every read is bounded: a page of at most 500 images
/// (by an index), their variants, and at most 5,000 stored pairs.
#[utoipa::path(get, path = "/v1/portfolios/{portfolio}", params(("portfolio" = String, Path), PortfolioQuery),
    responses((status = 200, body = PortfolioView), (status = 401, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn get_portfolio(
    State(state): State<ApiState>,
    caller: Caller,
    Path(portfolio): Path<String>,
    Query(q): Query<PortfolioQuery>,
) -> Result<Json<PortfolioView>, ApiError> {
    let unavailable = |e| ApiError::unavailable("reading the portfolio", e);
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let after = match &q.cursor {
        Some(c) => Some(decode_cursor(c).ok_or_else(|| ApiError::invalid("malformed cursor"))?),
        None => None,
    };
    let after = after.as_ref().map(|(sharpness, id)| (*sharpness, id.as_str()));
    let page = store::portfolio_page(&state.db, &caller.tenant, &portfolio, after, limit).await.map_err(unavailable)?;
    if page.images.is_empty() && after.is_none() {
        return Err(ApiError::not_found(format!("no analysed images in portfolio {portfolio}")));
    }
    let next = page.images.last().filter(|_| page.more).map(|i| encode_cursor(i.sharpness, &i.id));
    let images = page
        .images
        .into_iter()
        .map(|i| ImageView {
            phash: format!("{:016x}", i.phash as u64),
            id: i.id,
            format: i.format,
            width: i.width,
            height: i.height,
            sharpness: i.sharpness,
            exposure: i.exposure,
            colours: i.colours,
            metadata: i.metadata,
            gps_present: i.gps_present,
            vision: i.vision,
            thumbhash: i.thumbhash,
            variants: i
                .variants
                .into_iter()
                .map(|v| {
                    serde_json::json!({"width": v.width, "height": v.height, "format": v.format, "key": v.key, "bytes": v.bytes})
                })
                .collect(),
        })
        .collect();
    Ok(Json(PortfolioView {
        portfolio,
        images,
        next,
        near_duplicates: page.near_duplicates,
        near_duplicates_truncated: page.near_duplicates_truncated,
    }))
}

#[cfg(test)]
mod tests {
    use super::{decode_cursor, encode_cursor};

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        for (s, id) in [(412.75, "img-001"), (0.0, "a~b/c"), (-1.5e-9, "ünï")] {
            assert_eq!(decode_cursor(&encode_cursor(s, id)), Some((s, id.to_owned())));
        }
        for bad in ["", "!!", "bm9waXBl", &encode_cursor(f64::NAN, "x")] {
            assert_eq!(decode_cursor(bad), None, "{bad:?}");
        }
    }
}
