//! `/v1/portfolios`: a photographer's upload of N images becomes one workflow (see
//! [`fleet_jobs::catalogue::portfolio`]): an `image.analyze` step per image, then a
//! `portfolio.select` step that keeps the photos that are not near-duplicates of a
//! sharper one and adds an `image.variants` step for each at run time, then the optional
//! completion callback. The app follows it at `GET /v1/workflows/{id}` and on
//! `/v1/stream`. The portfolio's analyses, variants and near-duplicate groups are read
//! back from [`fleet_images::store`], for the caller's tenant only. `/v1/uploads` hands
//! out presigned PUT URLs ([`fleet_images::uploads`]) so apps put originals straight
//! into the S3 store, under the caller's prefix.

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
use fleet_jobs::catalogue::image::{check_kept_metadata, check_tenant_object_key, check_variant_request};
use fleet_jobs::catalogue::portfolio::{CALLBACK_STEP, PortfolioImage, PortfolioSelect, SELECT_STEP, analyze_step};
use fleet_jobs::catalogue::{ImageAnalyze, WatermarkArgs};
use fleet_jobs::workflows::{Dependency, OnFailure, StepSpec, SubmitOptions, WorkflowSpec};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Most images in one portfolio request. A workflow holds up to
/// [`fleet_jobs::workflows::MAX_STEPS`] steps (two per image, plus the selection and the
/// callback, would allow 24,999); this cap keeps one request, and so the selection step's
/// arguments (every image's id and key), within the 1 MiB body limit with room for long
/// keys, and every analysis of an upload enqueued at once well within the default
/// queued-job quota (10,000 per tenant and queue).
pub const MAX_IMAGES: usize = 5_000;

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
    /// The images (1 to 5,000). Image `n` (from 0) is analysed by step `analyze-<n>` and,
    /// when kept, varied by step `variants-<n>`.
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
    /// A job run once after the selection and every variants step have ended, whether or
    /// not some failed (step `on-complete`), e.g. a `webhook.publish` of
    /// `portfolio.processed`. Its `kind`, `args`, `queue`, `priority`, `max_attempts` and
    /// `timeout_ms` apply.
    #[serde(default)]
    on_complete: Option<EnqueueRequest>,
}

/// The workflow that processes an upload.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PortfolioAccepted {
    /// The workflow's id: follow it at `/v1/workflows/{workflow}` and on `/v1/stream`.
    workflow: String,
    /// `running`.
    state: String,
    /// Images in the upload.
    images: usize,
    /// Steps submitted: one analysis per image, the selection, and the callback when
    /// asked for (the selection adds one variants step per kept image as it runs).
    steps: usize,
}

/// Process an upload as a workflow: one analysis step per image, a selection step that
/// adds a variants step for each image that is not a near-duplicate of a sharper one,
/// then the optional callback.
#[utoipa::path(post, path = "/v1/portfolios", request_body = PortfolioRequest,
    responses((status = 201, body = PortfolioAccepted), (status = 401, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody), (status = 429, body = super::error::ErrorBody)))]
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
    let callback = match req.on_complete {
        Some(r) => {
            let (kind, args, _, o) = prepare(r, &caller.tenant, &state.tenancy)?;
            let mut step = StepSpec::job(CALLBACK_STEP, kind, &args).map_err(ApiError::from)?;
            step.queue = o.queue;
            step.priority = o.priority;
            step.max_attempts = o.max_attempts;
            step.timeout_ms = o.timeout.map(|t| t.as_millis() as u64);
            // After the selection and so after every variants step it adds, whatever failed.
            Some(step.after_with(SELECT_STEP, OnFailure::Run))
        }
        None => None,
    };
    // Every analysis is enqueued at once: a tenant without room for them under its quota
    // is refused now (429, nothing created) rather than given a workflow whose analyses
    // all fail.
    let queue = ImageAnalyze::options().queue;
    let usage = state.client.tenant_usage(&queue, &caller.tenant).await?;
    if usage.quota > 0 && usage.open + req.images.len() as u64 > usage.quota {
        return Err(fleet_jobs::Error::QuotaExceeded {
            tenant: caller.tenant.clone(),
            queue,
            open: usage.open,
            quota: usage.quota,
        }
        .into());
    }
    let mut steps = Vec::with_capacity(req.images.len() + 2);
    for (n, img) in req.images.iter().enumerate() {
        let analyze = ImageAnalyze {
            image_id: img.id.clone(),
            key: img.key.clone(),
            portfolio: Some(req.portfolio.clone()),
            allow_gps: req.allow_gps,
            vision: req.vision,
        };
        steps.push(StepSpec::job(analyze_step(n), ImageAnalyze::KIND, &analyze).map_err(ApiError::from)?);
    }
    let select = PortfolioSelect {
        portfolio: req.portfolio.clone(),
        images: req.images.iter().map(|i| PortfolioImage { id: i.id.clone(), key: i.key.clone() }).collect(),
        widths: variants.widths,
        formats: variants.formats,
        watermark: variants.watermark,
        keep_metadata: variants.keep_metadata,
    };
    let mut select = StepSpec::job(SELECT_STEP, PortfolioSelect::KIND, &select).map_err(ApiError::from)?;
    // A failed analysis holds up nothing: that photo just gets no variants.
    select.depends_on = (0..req.images.len()).map(|n| Dependency::on(analyze_step(n), OnFailure::Run)).collect();
    steps.push(select);
    steps.extend(callback);
    let spec = WorkflowSpec { steps };
    let opts =
        SubmitOptions { id: None, tenant: Some(caller.tenant.clone()), step_quota: Some(state.tenancy.workflow_steps) };
    let workflow = state.client.submit_workflow(&spec, opts).await?;
    let accepted =
        PortfolioAccepted { workflow, state: "running".into(), images: req.images.len(), steps: spec.steps.len() };
    Ok((StatusCode::CREATED, Json(accepted)))
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
