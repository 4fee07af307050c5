//! `image.analyze` and `image.variants`: a photographer's upload, analysed and turned
//! into the variants a portfolio shows. The arguments are references: the image itself
//! is an object in the worker's object store (a local folder or S3), results go to
//! PostgreSQL (`image_analyses`, `image_variants`) and variants back to the store.

use crate::kind::{Audience, JobArgs, KindOptions};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Arguments of `image.analyze`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageAnalyze {
    /// The caller's id for the image (unique within the tenant).
    pub image_id: String,
    /// Object key of the uploaded image in the store.
    pub key: String,
    /// The portfolio (gallery) it belongs to: near-duplicates are looked for within it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portfolio: Option<String>,
    /// Keep the GPS position in the stored results (off by default: only whether the
    /// photo had one is recorded).
    #[serde(default)]
    pub allow_gps: bool,
    /// Ask the configured outside vision providers for categories, tags and alt text.
    #[serde(default)]
    pub vision: bool,
}

impl JobArgs for ImageAnalyze {
    const KIND: &'static str = "image.analyze";
    const AUDIENCE: Audience = Audience::Public;

    fn options() -> KindOptions {
        KindOptions {
            queue: "images".into(),
            max_attempts: 5,
            timeout: Some(Duration::from_secs(120)),
            ..KindOptions::default()
        }
    }
}

/// An image watermark for variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkArgs {
    /// Object key of the watermark (a PNG with alpha).
    pub key: String,
    /// `top_left`, `top_right`, `bottom_left`, `bottom_right` (default) or `center`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// 0.0 to 1.0 (default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opacity: Option<f32>,
    /// Width of the watermark as a share of the variant's width (default 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f32>,
}

/// Arguments of `image.variants`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageVariants {
    /// The caller's id for the image (unique within the tenant).
    pub image_id: String,
    /// Object key of the uploaded image in the store.
    pub key: String,
    /// Widths in pixels (default 320, 640, 1280, 2048); never upscaled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub widths: Option<Vec<u32>>,
    /// `jpeg` and/or `webp` (default both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formats: Option<Vec<String>>,
    /// An optional watermark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<WatermarkArgs>,
}

impl JobArgs for ImageVariants {
    const KIND: &'static str = "image.variants";
    const AUDIENCE: Audience = Audience::Public;

    fn options() -> KindOptions {
        KindOptions {
            queue: "images".into(),
            max_attempts: 5,
            timeout: Some(Duration::from_secs(180)),
            ..KindOptions::default()
        }
    }
}
