//! `portfolio.select`: the middle step of a portfolio's workflow (`POST /v1/portfolios`).
//!
//! A portfolio upload is a workflow: one `image.analyze` step per photo
//! ([`analyze_step`]), then this selection step ([`SELECT_STEP`]), which depends on every
//! analysis with the `run` policy (a failed analysis holds up nothing: that photo just
//! gets no variants), reads the stored analyses of the job's tenant, keeps the photos
//! that are not near-duplicates of a sharper one, and adds one `image.variants` step per
//! kept photo at run time ([`variants_step`]); then, when asked for, the completion
//! callback ([`CALLBACK_STEP`]), which depends on the selection step with `run` and so
//! waits for every variants step it added too.
//!
//! Step names are derived from the photo's position in the request, never from its id
//! (ids may hold any character; step names may not): photo `n` (from 0) is analysed by
//! `analyze-<n>` and varied by `variants-<n>`. The arguments keep the mapping.

use crate::catalogue::WatermarkArgs;
use crate::kind::{Audience, JobArgs, KindOptions};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The name of the selection step.
pub const SELECT_STEP: &str = "select";
/// The name of the completion callback's step.
pub const CALLBACK_STEP: &str = "on-complete";

/// The step that analyses photo `n` (its position in the request, from 0).
pub fn analyze_step(n: usize) -> String {
    format!("analyze-{n}")
}

/// The step that makes the variants of photo `n` (added by the selection step when the
/// photo is kept).
pub fn variants_step(n: usize) -> String {
    format!("variants-{n}")
}

/// One photo of the upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortfolioImage {
    /// The caller's id for the image.
    pub id: String,
    /// Its object key in the store (under the tenant's prefix).
    pub key: String,
}

/// Arguments of `portfolio.select`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortfolioSelect {
    /// The portfolio the photos were analysed into.
    pub portfolio: String,
    /// The photos in request order: photo `n` is analysed by step [`analyze_step`]`(n)`.
    pub images: Vec<PortfolioImage>,
    /// Variant widths for the kept photos (`image.variants`' default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub widths: Option<Vec<u32>>,
    /// Variant formats (`image.variants`' default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formats: Option<Vec<String>>,
    /// An optional watermark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<WatermarkArgs>,
    /// Metadata kept in the variants (`artist`, `copyright`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_metadata: Option<Vec<String>>,
}

impl JobArgs for PortfolioSelect {
    const KIND: &'static str = "portfolio.select";
    // Only `POST /v1/portfolios` builds it (as a step of the tenant's workflow).
    const AUDIENCE: Audience = Audience::Internal;

    fn options() -> KindOptions {
        KindOptions {
            queue: "images".into(),
            max_attempts: 5,
            timeout: Some(Duration::from_secs(60)),
            ..KindOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_are_valid_whatever_the_image_ids() {
        for n in [0, 7, 49_999] {
            crate::workflows::validate_step_name(&analyze_step(n)).unwrap();
            crate::workflows::validate_step_name(&variants_step(n)).unwrap();
        }
        crate::workflows::validate_step_name(SELECT_STEP).unwrap();
        crate::workflows::validate_step_name(CALLBACK_STEP).unwrap();
        assert_ne!(analyze_step(1), variants_step(1));
    }
}
