//! `portfolio.select`: after every analysis of a portfolio upload, keep the photos that
//! are not near-duplicates of a sharper one and add an `image.variants` step for each
//! (see [`fleet_jobs::catalogue::portfolio`] for the workflow it is part of).
//!
//! Which analyses succeeded is read from the workflow (the step states); what they found
//! from PostgreSQL, for the job's tenant only ([`store::select_sharpest`]): nothing in
//! the arguments names a tenant, so a step can only ever read its own tenant's photos.

use super::db_error;
use crate::store;
use fleet_jobs::JobArgs;
use fleet_jobs::catalogue::ImageVariants;
use fleet_jobs::catalogue::portfolio::{PortfolioSelect, analyze_step, variants_step};
use fleet_jobs::progress::MAX_RESULT_BYTES;
use fleet_jobs::workflows::{StepSpec, StepState};
use fleet_kit::{Handler, JobContext, JobError};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::HashSet;

/// Handler of `portfolio.select`.
#[derive(Debug, Clone)]
pub struct Select {
    db: PgPool,
}

impl Select {
    pub(super) fn new(db: PgPool) -> Self {
        Select { db }
    }
}

/// One photo left out: a near-duplicate of a sharper photo that was kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dropped {
    /// The photo left out.
    pub id: String,
    /// The kept photo of its near-duplicate group.
    pub duplicate_of: String,
}

/// What the selection step records as its result (`GET /v1/workflows/{id}`, step
/// `select`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SelectionResult {
    /// Photos whose analysis succeeded in this upload.
    pub analysed: usize,
    /// How many were kept (each got a `variants-<n>` step).
    pub kept_count: usize,
    /// How many were left out as near-duplicates.
    pub dropped_count: usize,
    /// How many got no variants because their analysis failed (or was not found).
    pub unanalysed_count: usize,
    /// The kept photos' ids.
    pub kept: Vec<String>,
    /// The photos left out, each with the kept photo it duplicates.
    pub dropped: Vec<Dropped>,
    /// The photos whose analysis failed.
    pub unanalysed: Vec<String>,
    /// Whether the lists were cut short to fit a step's result (the counts are whole).
    pub truncated: bool,
}

impl SelectionResult {
    /// Shortens the lists (longest first, by halves) until the JSON fits in `limit` bytes.
    fn fit(mut self, limit: usize) -> Self {
        while serde_json::to_vec(&self).map(|v| v.len()).unwrap_or(usize::MAX) > limit {
            let (k, d, u) = (self.kept.len(), self.dropped.len(), self.unanalysed.len());
            if k + d + u == 0 {
                break;
            }
            self.truncated = true;
            if k >= d && k >= u {
                self.kept.truncate(k / 2);
            } else if d >= u {
                self.dropped.truncate(d / 2);
            } else {
                self.unanalysed.truncate(u / 2);
            }
        }
        self
    }
}

impl Handler for Select {
    type Args = PortfolioSelect;

    async fn handle(&self, a: PortfolioSelect, ctx: JobContext) -> Result<(), JobError> {
        let (Some(wf), Some(client)) = (ctx.workflow(), ctx.report.client()) else {
            return Err(JobError::give_up("portfolio.select runs only as a step of a portfolio's workflow"));
        };
        let status = client
            .workflow(wf.workflow())
            .await?
            .ok_or_else(|| JobError::give_up(format!("workflow {} is gone", wf.workflow())))?;
        let succeeded: HashSet<&str> =
            status.steps.iter().filter(|s| s.state == StepState::Succeeded).map(|s| s.name.as_str()).collect();
        let analysed: Vec<String> = a
            .images
            .iter()
            .enumerate()
            .filter(|(n, _)| succeeded.contains(analyze_step(*n).as_str()))
            .map(|(_, img)| img.id.clone())
            .collect();
        let tenant = ctx.tenant.clone().unwrap_or_default();
        let chosen = store::select_sharpest(&self.db, &tenant, &a.portfolio, &analysed).await.map_err(db_error)?;
        let kept: HashSet<&str> = chosen.kept.iter().map(String::as_str).collect();
        let steps = a
            .images
            .iter()
            .enumerate()
            .filter(|(_, img)| kept.contains(img.id.as_str()))
            .map(|(n, img)| {
                let args = ImageVariants {
                    image_id: img.id.clone(),
                    key: img.key.clone(),
                    widths: a.widths.clone(),
                    formats: a.formats.clone(),
                    watermark: a.watermark.clone(),
                    keep_metadata: a.keep_metadata.clone(),
                };
                StepSpec::job(variants_step(n), ImageVariants::KIND, &args)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Added before the result: a retry adds nothing twice (names are kept) and the
        // workflow's later steps wait for every one of them.
        wf.add_steps(&steps).await?;
        let analysed_set: HashSet<&str> = analysed.iter().map(String::as_str).collect();
        let mut unanalysed: Vec<String> =
            a.images.iter().filter(|i| !analysed_set.contains(i.id.as_str())).map(|i| i.id.clone()).collect();
        unanalysed.extend(chosen.missing.iter().cloned());
        let result = SelectionResult {
            analysed: chosen.kept.len() + chosen.dropped.len(),
            kept_count: chosen.kept.len(),
            dropped_count: chosen.dropped.len(),
            unanalysed_count: unanalysed.len(),
            kept: chosen.kept.clone(),
            dropped: chosen
                .dropped
                .iter()
                .map(|(id, of)| Dropped { id: id.clone(), duplicate_of: of.clone() })
                .collect(),
            unanalysed,
            truncated: false,
        }
        // A little under the limit: the result travels inside a JSON entry.
        .fit(MAX_RESULT_BYTES - 1024);
        ctx.set_result(&result).await?;
        tracing::info!(portfolio = %a.portfolio, kept = result.kept_count, dropped = result.dropped_count,
            unanalysed = result.unanalysed_count, "portfolio selection made");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_selection_is_cut_to_fit_with_whole_counts() {
        let ids = |p: &str, n: usize| (0..n).map(|i| format!("{p}-{i:0>150}")).collect::<Vec<_>>();
        let big = SelectionResult {
            analysed: 6000,
            kept_count: 5000,
            dropped_count: 1000,
            unanalysed_count: 10,
            kept: ids("k", 5000),
            dropped: ids("d", 1000).into_iter().map(|id| Dropped { id, duplicate_of: "x".into() }).collect(),
            unanalysed: ids("u", 10),
            truncated: false,
        };
        let fitted = big.clone().fit(MAX_RESULT_BYTES - 1024);
        assert!(serde_json::to_vec(&fitted).unwrap().len() <= MAX_RESULT_BYTES - 1024);
        assert!(fitted.truncated && !fitted.kept.is_empty() && !fitted.unanalysed.is_empty());
        assert_eq!((fitted.kept_count, fitted.dropped_count, fitted.unanalysed_count), (5000, 1000, 10));
        let small = SelectionResult { kept: ids("k", 3), kept_count: 3, ..big };
        let small = SelectionResult { dropped: vec![], unanalysed: vec![], ..small };
        assert_eq!(small.clone().fit(MAX_RESULT_BYTES), small, "what fits is left whole");
    }
}
