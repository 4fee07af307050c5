//! `image.analyze` and `image.variants`: a photographer's uploads, analysed and turned
//! into the variants a portfolio shows; and `portfolio.select` ([`Select`]), which picks
//! the photos of a portfolio upload that get variants.
//!
//! Both read the upload from the object store ([`crate::storage`]), read its header
//! first (format from the bytes, dimensions against the pixel budget: a bomb is refused
//! before any pixel is decoded), wait for room in the process's memory budget for the
//! decoded pixels, and decode on the bounded CPU pool ([`fleet_image`]). An image that
//! cannot be decoded (corrupt, truncated, unsupported, too large) is a permanent error:
//! one clear dead letter, no retries. Results go to PostgreSQL through [`crate::store`]
//! (with the near-duplicate pairs of the image's portfolio); variants go back to the
//! object store under content-addressed keys, so a retry rewrites nothing.
//!
//! The job's tenant is the authority: it names only object keys under its own prefix
//! `tenants/<tenant>/` (the API refuses others; the handlers check again and give up),
//! and its variants are written under that prefix
//! (`tenants/<tenant>/variants/<sha256>/<recipe>/<width>.<ext>`).

mod select;
mod share;

use crate::storage::{ObjectStore, StorageError, StoreConfig};
use crate::store;
use crate::vision::{ProviderGate, SkipReason, Vision, VisionConfig};
use crate::{ImageError, Limits, OutputFormat, VariantSpec, Watermark, WatermarkPosition};
use fleet_jobs::catalogue::image::{
    check_kept_metadata, check_tenant_object_key, check_variant_request, tenant_object_prefix,
};
use fleet_jobs::catalogue::{ImageAnalyze, ImageVariants};
use fleet_kit::limits::{AttemptLimits, Verdict};
use fleet_kit::{Handler, JobContext, JobError};
pub use select::{Dropped, Select, SelectionResult};
use serde::Deserialize;
use share::{DecodeShare, Taker};
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Settings of the image kinds (`[images]` in the worker's config).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageSettings {
    /// Where uploads are read and variants written.
    pub storage: StoreConfig,
    /// Decoded pixels held at once by this process, in MiB: image jobs wait for room,
    /// so a burst of large photos cannot exhaust memory.
    pub memory_budget_mb: u64,
    /// Largest image accepted, in megapixels (checked from the header before decoding).
    pub max_megapixels: u64,
    /// Largest upload accepted, in MiB.
    pub max_upload_mb: u64,
    /// Key prefix of the variants in the store, under the tenant's own prefix
    /// (`tenants/<tenant>/<variants_prefix>/...`; a job with no tenant writes under
    /// `<variants_prefix>/...`).
    pub variants_prefix: String,
    /// Optional outside vision providers (tried in order).
    pub vision: Option<VisionConfig>,
}

impl Default for ImageSettings {
    fn default() -> Self {
        ImageSettings {
            storage: StoreConfig::default(),
            memory_budget_mb: 768,
            max_megapixels: 100,
            max_upload_mb: 100,
            variants_prefix: "variants".to_owned(),
            vision: None,
        }
    }
}

/// What both image handlers share.
#[derive(Debug, Clone)]
pub struct Images {
    db: PgPool,
    store: Arc<dyn ObjectStore>,
    limits: Limits,
    /// Permits are MiB of decoded pixels.
    memory: Arc<Semaphore>,
    budget_mb: u32,
    variants_prefix: String,
    vision: Option<Arc<Vision>>,
    /// Decoded uploads left by one of a photo's two jobs for the other.
    share: Arc<DecodeShare>,
}

impl Images {
    /// Handlers on `db` with `settings` (the store and vision settings are checked here).
    pub fn new(db: PgPool, settings: &ImageSettings) -> Result<Self, String> {
        let store = crate::storage::from_config(&settings.storage).map_err(|e| format!("[images.storage]: {e}"))?;
        let vision = match &settings.vision {
            Some(v) => Some(Arc::new(Vision::new(v.clone()).map_err(|e| format!("[images.vision]: {e}"))?)),
            None => None,
        };
        let limits = Limits {
            max_pixels: settings.max_megapixels * 1_000_000,
            max_bytes: settings.max_upload_mb * 1024 * 1024,
            ..Limits::default()
        };
        let budget_mb = settings.memory_budget_mb.clamp(64, u64::from(u32::MAX >> 3)) as u32;
        Ok(Images {
            db,
            store,
            limits,
            memory: Arc::new(Semaphore::new(budget_mb as usize)),
            budget_mb,
            variants_prefix: settings.variants_prefix.trim_matches('/').to_owned(),
            vision,
            // An eighth of the budget, at most 64 MiB: seven 12 MP photos at ½ scale.
            share: Arc::new(DecodeShare::new((budget_mb as usize / 8).min(64) << 20)),
        })
    }

    /// Asks the vision providers about `jpeg`, each through its fleet-wide limits
    /// (`[limits."ai:provider:*"]`, see [`LimitGate`]).
    async fn ask_vision(&self, vision: &Vision, jpeg: &[u8], limits: &AttemptLimits) -> crate::vision::VisionOutcome {
        vision.analyze_gated(jpeg, &LimitGate { vision, limits }).await
    }

    /// The `image.analyze` handler.
    pub fn analyzer(&self) -> Analyze {
        Analyze(self.clone())
    }

    /// The `image.variants` handler.
    pub fn variants(&self) -> Variants {
        Variants(self.clone())
    }

    /// The `portfolio.select` handler (the selection step of a portfolio's workflow).
    pub fn selector(&self) -> Select {
        Select::new(self.db.clone())
    }

    /// The upload's bytes; one over the size limit is refused from its length, never read
    /// into memory whole.
    async fn source(&self, key: &str) -> Result<bytes::Bytes, JobError> {
        match self.store.get_at_most(key, self.limits.max_bytes).await {
            Ok(Some(b)) => Ok(b),
            Ok(None) => Err(JobError::give_up(format!("source image {key:?} not found in the store"))),
            Err(e) => Err(storage_error(e)),
        }
    }

    /// Reads the header (refusing what the limits refuse), then waits for room in the
    /// memory budget for the decoded pixels. The permit is held until it is dropped.
    async fn admit(&self, bytes: &[u8]) -> Result<(tokio::sync::OwnedSemaphorePermit, crate::Header), JobError> {
        let header = crate::read_header(bytes, &self.limits).map_err(image_error)?;
        // Decoded pixels plus the working copies (resize, encode): about twice the estimate.
        let mb = (crate::estimate_decoded_bytes(&header) * 2).div_ceil(1024 * 1024);
        let permits = (mb as u32).clamp(1, self.budget_mb);
        let permit = self
            .memory
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| JobError::retry("memory budget closed"))?;
        Ok((permit, header))
    }

    /// The upload's pixels, upright and sRGB, at least `need` large (see
    /// [`crate::decode_scaled`]): the sibling job's if it left large enough ones (or is
    /// decoding them), else decoded here at `plan` on the CPU pool and left for it.
    #[allow(clippy::too_many_arguments)]
    async fn pixels(
        &self,
        ctx: &JobContext,
        key: &str,
        source: &bytes::Bytes,
        sha256: &str,
        need: (u32, u32),
        plan: (u32, u32),
        for_sibling: bool,
        taker: Taker,
    ) -> Result<Arc<crate::Decoded>, JobError> {
        let limits = self.limits.clone();
        let src = source.clone();
        self.share
            .get(key, sha256, need, plan, for_sibling, taker, |(w, h)| async move {
                ctx.blocking(move || crate::decode_scaled(&src, &limits, w, h)).await?.map_err(image_error)
            })
            .await
    }

    fn tenant(ctx: &JobContext) -> String {
        ctx.tenant.clone().unwrap_or_default()
    }

    /// Checks that the job's tenant may name `key` (defence in depth: the API refuses
    /// such keys already): with a tenant, the key must be under `tenants/<tenant>/`
    /// ([`check_tenant_object_key`]), or the job gives up. A job with no tenant was
    /// enqueued by Fleet's operators or benchmarks, never by the public API (which always
    /// sets the envelope's tenant from the caller's key): any key the store accepts.
    fn check_key(ctx: &JobContext, key: &str) -> Result<(), JobError> {
        match &ctx.tenant {
            Some(tenant) => check_tenant_object_key(tenant, key).map_err(JobError::give_up),
            None => crate::storage::validate_key(key).map_err(|e| JobError::give_up(e.to_string())),
        }
    }

    /// Where the variants of the job's tenant go: under the tenant's prefix
    /// (`tenants/<tenant>/variants/...` by default), so a tenant can never name, nor read,
    /// another's variants; a job with no tenant writes under the bare prefix.
    fn variants_base(&self, ctx: &JobContext) -> String {
        let tenant = ctx.tenant.as_deref().map(tenant_object_prefix).unwrap_or_default();
        format!("{tenant}{}", self.variants_prefix).trim_matches('/').to_owned()
    }
}

/// Holds the vision providers to their fleet-wide limits (`ai:provider:<name>`), taken
/// through the job's [`AttemptLimits`] as its turn comes: a provider over its rate, at
/// its concurrency cap or with an open breaker is passed over for the next one, a 429
/// holds it back fleet-wide for its `Retry-After`, and its failures feed its breaker.
struct LimitGate<'a> {
    vision: &'a Vision,
    limits: &'a AttemptLimits,
}

impl ProviderGate for LimitGate<'_> {
    async fn admit(&self, provider: &str) -> bool {
        // A wait passes the provider over: the next one may answer now.
        self.limits.admit(&self.vision.limit_key(provider)).await.is_ok()
    }

    async fn settle(&self, provider: &str, outcome: Result<(), &SkipReason>) {
        let verdict = match outcome {
            Ok(()) => Verdict::Healthy,
            Err(SkipReason::RateLimited { retry_after }) => {
                Verdict::SlowDown(retry_after.unwrap_or(std::time::Duration::from_secs(5)))
            }
            Err(SkipReason::Timeout { .. } | SkipReason::ServerError { .. } | SkipReason::Connection { .. }) => {
                Verdict::Failing
            }
            // A refused request or an answer it could not read says nothing about an outage.
            Err(_) => Verdict::Neutral,
        };
        self.limits.settle(&self.vision.limit_key(provider), verdict).await;
    }
}

fn image_error(e: ImageError) -> JobError {
    if e.is_permanent() { JobError::give_up(e) } else { JobError::retry(e) }
}

fn storage_error(e: StorageError) -> JobError {
    if e.is_retryable() {
        JobError::retry(format!("object store: {e}"))
    } else {
        JobError::give_up(format!("object store: {e}"))
    }
}

fn db_error(e: sqlx::Error) -> JobError {
    JobError::retry(format!("database: {e}"))
}

/// Handler of `image.analyze`.
#[derive(Debug, Clone)]
pub struct Analyze(Images);

impl Handler for Analyze {
    type Args = ImageAnalyze;

    async fn handle(&self, a: ImageAnalyze, ctx: JobContext) -> Result<(), JobError> {
        let images = &self.0;
        Images::check_key(&ctx, &a.key)?;
        let bytes = images.source(&a.key).await?;
        let (permit, header) = images.admit(&bytes).await?;
        let (allow_gps, want_vision) = (a.allow_gps, a.vision && images.vision.is_some());
        let source_sha256 = crate::sha256_hex(&bytes);
        // Analysis works on a ~512 px copy (⅛ scale for a 12 MP JPEG); vision gets 640 px.
        let need =
            if want_vision { (640, 640) } else { crate::analysis::analysis_decode_size(header.width, header.height) };
        // Larger when this photo's variants job is expected next, so it decodes nothing.
        let (plan, for_sibling) = images.share.analysis_plan(need);
        let decoded =
            images.pixels(&ctx, &a.key, &bytes, &source_sha256, need, plan, for_sibling, Taker::Analysis).await?;
        let src = bytes.clone();
        let (analysis, metadata, decoded_warnings, preview) = ctx
            .blocking(move || -> Result<_, ImageError> {
                let analysis = crate::analyze(&decoded)?;
                let metadata = crate::read_metadata(&src, allow_gps);
                // Vision providers get a small upright JPEG with no metadata, never the upload.
                let preview = if want_vision {
                    let spec =
                        VariantSpec { widths: vec![640], formats: vec![OutputFormat::Jpeg], ..Default::default() };
                    crate::make_variants(&decoded, &spec)?.into_iter().next().map(|v| v.bytes)
                } else {
                    None
                };
                Ok((analysis, metadata, decoded.warnings.clone(), preview))
            })
            .await?
            .map_err(image_error)?;
        drop(permit);

        // A provider outage never fails the local analysis: the outcome records why.
        let vision = match (&images.vision, preview) {
            (Some(v), Some(jpeg)) => {
                Some(serde_json::to_value(images.ask_vision(v, &jpeg, ctx.limits()).await).unwrap_or_default())
            }
            _ => None,
        };
        let mut metadata_json = serde_json::to_value(&metadata).unwrap_or_default();
        if !decoded_warnings.is_empty() {
            metadata_json["decode_warnings"] = serde_json::json!(decoded_warnings);
        }
        let tenant = Images::tenant(&ctx);
        let phash = analysis.phash.0 as i64;
        let analysed = store::NewAnalysis {
            tenant: &tenant,
            image_id: &a.image_id,
            portfolio: a.portfolio.as_deref(),
            source_key: &a.key,
            source_sha256: &source_sha256,
            format: analysis.format.name(),
            width: analysis.width,
            height: analysis.height,
            phash,
            sharpness: analysis.sharpness,
            exposure: serde_json::to_value(analysis.exposure).unwrap_or_default(),
            colours: serde_json::to_value(&analysis.dominant_colours).unwrap_or_default(),
            metadata: metadata_json,
            gps_present: metadata.gps_present,
            vision,
            thumbhash: Some(&analysis.thumbhash),
        };
        store::record_analysis(&images.db, &analysed).await.map_err(db_error)?;
        // What a workflow step (or the job's record) shows of it: the figures the
        // selection works from; the rest is in `GET /v1/portfolios/{portfolio}`.
        ctx.set_result(&serde_json::json!({
            "image_id": a.image_id, "format": analysis.format.name(), "width": analysis.width,
            "height": analysis.height, "phash": format!("{:016x}", analysis.phash.0), "sharpness": analysis.sharpness,
        }))
        .await?;
        tracing::info!(image_id = %a.image_id, format = analysis.format.name(), width = analysis.width,
            height = analysis.height, phash = %analysis.phash, "image analysed");
        Ok(())
    }
}

/// Handler of `image.variants`.
#[derive(Debug, Clone)]
pub struct Variants(Images);

impl Variants {
    async fn spec(&self, a: &ImageVariants) -> Result<VariantSpec, JobError> {
        check_variant_request(a.widths.as_deref(), a.formats.as_deref()).map_err(JobError::give_up)?;
        check_kept_metadata(a.keep_metadata.as_deref().unwrap_or_default()).map_err(JobError::give_up)?;
        let mut spec = VariantSpec::default();
        if let Some(w) = &a.widths {
            spec.widths = w.clone();
        }
        if let Some(f) = &a.formats {
            spec.formats = f
                .iter()
                .map(|f| match f.as_str() {
                    "jpeg" | "jpg" => Ok(OutputFormat::Jpeg),
                    "webp" => Ok(OutputFormat::Webp),
                    "avif" => Ok(OutputFormat::Avif),
                    other => {
                        Err(JobError::give_up(format!("unknown variant format {other:?}: use jpeg, webp or avif")))
                    }
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(w) = &a.watermark {
            let image = self.0.source(&w.key).await?.to_vec();
            let position = match w.position.as_deref().unwrap_or("bottom_right") {
                "top_left" => WatermarkPosition::TopLeft,
                "top_right" => WatermarkPosition::TopRight,
                "bottom_left" => WatermarkPosition::BottomLeft,
                "bottom_right" => WatermarkPosition::BottomRight,
                "center" => WatermarkPosition::Center,
                other => return Err(JobError::give_up(format!("unknown watermark position {other:?}"))),
            };
            spec.watermark = Some(Watermark {
                image,
                position,
                opacity: w.opacity.unwrap_or(0.5),
                scale: w.scale.unwrap_or(0.2),
                margin: 0.02,
            });
        }
        Ok(spec)
    }
}

impl Handler for Variants {
    type Args = ImageVariants;

    async fn handle(&self, a: ImageVariants, ctx: JobContext) -> Result<(), JobError> {
        let images = &self.0;
        Images::check_key(&ctx, &a.key)?;
        if let Some(w) = &a.watermark {
            Images::check_key(&ctx, &w.key)?;
        }
        let mut spec = self.spec(&a).await?;
        let bytes = images.source(&a.key).await?;
        if let Some(fields) = a.keep_metadata.as_deref().filter(|f| !f.is_empty()) {
            // Never the position: the values are read without it, and only the named credit is kept.
            spec.keep_metadata = crate::KeptMetadata::from_source(&crate::read_metadata(&bytes, false), fields);
        }
        let source_sha256 = crate::sha256_hex(&bytes);
        let recipe = spec.recipe_hash();
        let tenant = Images::tenant(&ctx);
        let base = [images.variants_base(&ctx).as_str(), &source_sha256, &recipe[..recipe.len().min(16)]]
            .iter()
            .filter(|p| !p.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("/");

        let (permit, header) = images.admit(&bytes).await?;
        // The largest width is all the variants need: a JPEG decodes at the smallest DCT
        // scale that still covers it (or the analysis job decoded that much already).
        let widest = spec.widths.iter().copied().max().unwrap_or(0);
        images.share.expect_variants(widest);
        let need = (widest, 0);
        // Asking for the analysis's size as well costs nothing when the widest width is
        // 512 or more (the same scale covers both), and lets an analysis arriving during
        // the decode wait for it instead of decoding too.
        let (_, q) = crate::analysis::analysis_decode_size(header.width, header.height);
        let plan = (widest, q);
        let decoded = images.pixels(&ctx, &a.key, &bytes, &source_sha256, need, plan, false, Taker::Variants).await?;
        let variants = ctx.blocking(move || crate::make_variants(&decoded, &spec)).await?.map_err(image_error)?;
        drop(permit);

        for v in &variants {
            let key = format!("{base}/{}.{}", v.width, v.format.extension());
            // Content-addressed: an object already there from an earlier attempt is the same.
            let present =
                images.store.head(&key).await.map_err(storage_error)?.is_some_and(|m| m.size == v.byte_len as u64);
            if !present {
                images
                    .store
                    .put(&key, bytes::Bytes::from(v.bytes.clone()), v.format.mime())
                    .await
                    .map_err(storage_error)?;
            }
            let written = store::NewVariant {
                tenant: &tenant,
                image_id: &a.image_id,
                width: v.width,
                height: v.height,
                format: v.format.extension(),
                key: &key,
                bytes: v.byte_len,
                sha256: &v.sha256,
                recipe: &recipe,
            };
            store::record_variant(&images.db, &written).await.map_err(db_error)?;
        }
        let written: Vec<serde_json::Value> = variants
            .iter()
            .map(|v| {
                serde_json::json!({"width": v.width, "height": v.height, "format": v.format.extension(),
                    "key": format!("{base}/{}.{}", v.width, v.format.extension()), "bytes": v.byte_len})
            })
            .collect();
        ctx.set_result(&serde_json::json!({"image_id": a.image_id, "variants": written})).await?;
        tracing::info!(image_id = %a.image_id, variants = variants.len(), "image variants written");
        Ok(())
    }
}
