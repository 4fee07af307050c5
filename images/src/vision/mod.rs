//! Optional outside vision APIs: categories, tags and alt text for photographers'
//! images, over the HTTP APIs the providers really speak.
//!
//! * [`VisionConfig`]: providers in the order to try them, each Google Cloud Vision
//!   v1 (`LABEL_DETECTION`) or Azure AI Vision Image Analysis 4.0 (`tags,caption`).
//! * [`Vision::analyze`] tries them in order. A provider that times out, answers
//!   429 or 5xx, refuses the request, answers garbage or an error object is skipped
//!   for the next; the outcome names the provider that answered and every skipped
//!   one with its reason ([`Skip`]). When none answers the outcome is
//!   [`VisionOutcome::Unavailable`]: vision never fails the caller's own analysis.
//! * Labels under the provider's `min_confidence` are dropped; the rest are mapped
//!   to a wedding [`Category`] by a keyword table ([`categorize`]).
//! * A 429 carries its `Retry-After` ([`SkipReason::RateLimited`]), so the caller can
//!   hold the provider back fleet-wide under [`Vision::limit_key`] and pass held
//!   providers to [`Vision::analyze_skipping`].
//! * Every request goes through the webhook SSRF guard (loopback only when the
//!   config allows it), never follows redirects, reads at most `max_response_bytes`
//!   and runs under the provider's timeout and one total deadline per call.
//! * API keys are sent in headers (never in URLs), and appear in no `Debug` output,
//!   error or skip reason: provider messages are scrubbed of them.

mod category;
mod client;
mod providers;
#[cfg(test)]
mod tests;

pub use category::{Category, categorize};

use client::GuardedClient;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Which API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Google Cloud Vision v1, `POST {base}/v1/images:annotate`, `LABEL_DETECTION`.
    Google,
    /// Azure AI Vision Image Analysis 4.0, `POST {base}/computervision/imageanalysis:analyze`.
    Azure,
}

/// One provider (`[[vision.providers]]`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// A stable name, used in outcomes and the limit key `ai:provider:<name>`.
    pub name: String,
    /// The API it speaks.
    pub kind: ProviderKind,
    /// e.g. `https://vision.googleapis.com` or `https://<resource>.cognitiveservices.azure.com`.
    pub base_url: String,
    /// The API key (Google: `x-goog-api-key`; Azure: `Ocp-Apim-Subscription-Key`).
    pub api_key: SecretString,
    /// Deadline of one request to this provider, ms.
    #[serde(default = "default_provider_timeout_ms")]
    pub timeout_ms: u64,
    /// Labels below this confidence (0..=1) are dropped.
    #[serde(default = "default_min_confidence")]
    pub min_confidence: f32,
}

fn default_provider_timeout_ms() -> u64 {
    10_000
}
fn default_min_confidence() -> f32 {
    0.5
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &"[REDACTED]")
            .field("timeout_ms", &self.timeout_ms)
            .field("min_confidence", &self.min_confidence)
            .finish()
    }
}

/// Vision settings (`[vision]` in the worker config). No providers: vision is off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VisionConfig {
    /// Providers, in the order they are tried.
    pub providers: Vec<ProviderConfig>,
    /// Address ranges allowed besides public ones (e.g. `["127.0.0.0/8"]` in tests).
    pub allow: Vec<String>,
    /// Deadline of one [`Vision::analyze`] call across all providers, ms.
    pub total_timeout_ms: u64,
    /// Connect timeout, ms.
    pub connect_timeout_ms: u64,
    /// Most response bytes read from a provider; a larger answer is skipped.
    pub max_response_bytes: usize,
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            providers: Vec::new(),
            allow: Vec::new(),
            total_timeout_ms: 20_000,
            connect_timeout_ms: 3_000,
            max_response_bytes: 1024 * 1024,
        }
    }
}

/// A label with the provider's confidence (0..=1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Label {
    /// The label, as the provider wrote it.
    pub name: String,
    /// Confidence, 0..=1.
    pub confidence: f32,
}

/// What one provider said about an image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VisionResult {
    /// The provider that answered.
    pub provider: String,
    /// The wedding category, from the tags and caption.
    pub category: Category,
    /// Confidence in `category`, 0..=1.
    pub category_confidence: f32,
    /// Tags at or above the provider's threshold, most confident first.
    pub tags: Vec<Label>,
    /// A caption for alt text (Azure's `captionResult`; Google's labels have none).
    pub alt_text: Option<Label>,
    /// Providers tried before this one, and why they were passed over.
    pub skipped: Vec<Skip>,
}

/// The outcome of [`Vision::analyze`]: never an error.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum VisionOutcome {
    /// A provider answered.
    Analyzed(VisionResult),
    /// No provider answered (or none is configured); the reasons, in order.
    Unavailable {
        /// Every provider, and why it gave nothing.
        skipped: Vec<Skip>,
    },
}

impl VisionOutcome {
    /// The result, if a provider answered.
    pub fn result(&self) -> Option<&VisionResult> {
        match self {
            VisionOutcome::Analyzed(r) => Some(r),
            VisionOutcome::Unavailable { .. } => None,
        }
    }

    /// Providers passed over, and why.
    pub fn skipped(&self) -> &[Skip] {
        match self {
            VisionOutcome::Analyzed(r) => &r.skipped,
            VisionOutcome::Unavailable { skipped } => skipped,
        }
    }
}

/// A provider passed over.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skip {
    /// Its name.
    pub provider: String,
    /// Why.
    pub reason: SkipReason,
}

impl Skip {
    /// How long the provider asked to be left alone (a 429's `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self.reason {
            SkipReason::RateLimited { retry_after } => retry_after,
            _ => None,
        }
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.provider, self.reason)
    }
}

/// Why a provider gave nothing. Texts are scrubbed of the provider's API key.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SkipReason {
    /// The caller held it back (e.g. still inside a fleet-wide `Retry-After`).
    #[error("held back by the caller")]
    HeldBack,
    /// The call's total deadline ran out before this provider's turn.
    #[error("no time left in the call's deadline")]
    NoTimeLeft,
    /// No answer within the provider's timeout.
    #[error("timed out after {timeout_ms} ms")]
    Timeout {
        /// The timeout that ran out, ms.
        timeout_ms: u64,
    },
    /// 429: hold the provider back (fleet-wide) for `retry_after` when given.
    #[error("rate limited (429){}", retry_after.map(|d| format!(", retry after {} s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        /// The `Retry-After`, clamped to 1 s..10 h (whole seconds in JSON).
        #[serde(serialize_with = "seconds")]
        retry_after: Option<Duration>,
    },
    /// 5xx.
    #[error("server error (HTTP {status})")]
    ServerError {
        /// The status.
        status: u16,
    },
    /// Another non-2xx status: a bad key, quota, unsupported image or region.
    #[error("refused the request (HTTP {status}): {message}")]
    Rejected {
        /// The status.
        status: u16,
        /// The provider's error message, if it gave one.
        message: String,
    },
    /// A 2xx answer carrying an error object.
    #[error("answered with an error: {message}")]
    ProviderError {
        /// The provider's message (and code).
        message: String,
    },
    /// A 2xx answer that is not the expected JSON, or too large.
    #[error("invalid response: {message}")]
    InvalidResponse {
        /// What is wrong with it.
        message: String,
    },
    /// The SSRF guard refused the provider's address.
    #[error("refused by the SSRF guard: {message}")]
    Refused {
        /// Which address or name.
        message: String,
    },
    /// Could not connect or the connection broke.
    #[error("connection failed: {message}")]
    Connection {
        /// The chain of causes.
        message: String,
    },
}

fn seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    d.map(|d| d.as_secs()).serialize(s)
}

/// What a provider's answer holds, before thresholds and mapping.
#[derive(Debug, Default)]
struct Annotations {
    tags: Vec<Label>,
    caption: Option<Label>,
}

/// The configured providers, behind one HTTP client.
pub struct Vision {
    providers: Vec<ProviderConfig>,
    client: GuardedClient,
    total_timeout: Duration,
}

impl std::fmt::Debug for Vision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vision")
            .field("providers", &self.providers)
            .field("total_timeout", &self.total_timeout)
            .finish_non_exhaustive()
    }
}

/// A config that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid vision config: {0}")]
pub struct VisionConfigError(String);

impl Vision {
    /// Checks `config` and builds the client: names unique and non-empty, base URLs
    /// `http(s)` without a query, thresholds in 0..=1, timeouts above zero, the
    /// allow-list parses.
    pub fn new(config: VisionConfig) -> Result<Vision, VisionConfigError> {
        let bad = |m: String| Err(VisionConfigError(m));
        let mut names = std::collections::HashSet::new();
        for p in &config.providers {
            if p.name.trim().is_empty() {
                return bad("a provider has an empty name".into());
            }
            if !names.insert(p.name.as_str()) {
                return bad(format!("provider name {:?} is used twice", p.name));
            }
            match reqwest::Url::parse(&p.base_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.query().is_none() && u.host().is_some() => {}
                _ => {
                    let url = fleet_net::redact_url(&p.base_url);
                    return bad(format!(
                        "provider {:?}: base_url {url:?} must be an http(s) URL without a query",
                        p.name
                    ));
                }
            }
            if !(0.0..=1.0).contains(&p.min_confidence) {
                return bad(format!("provider {:?}: min_confidence must be within 0..=1", p.name));
            }
            if p.timeout_ms == 0 {
                return bad(format!("provider {:?}: timeout_ms must be above 0", p.name));
            }
        }
        if config.total_timeout_ms == 0 {
            return bad("total_timeout_ms must be above 0".into());
        }
        let client = GuardedClient::new(&config.allow, config.connect_timeout_ms, config.max_response_bytes)
            .map_err(VisionConfigError)?;
        Ok(Vision {
            providers: config.providers,
            client,
            total_timeout: Duration::from_millis(config.total_timeout_ms),
        })
    }

    /// The fleet-wide limit key of `provider`: `ai:provider:<name>`.
    pub fn limit_key(&self, provider: &str) -> String {
        format!("ai:provider:{provider}")
    }

    /// Names of the configured providers, in order.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        self.providers.iter().map(|p| p.name.as_str())
    }

    /// Analyzes `image` (JPEG, PNG, ...) with the first provider that answers.
    pub async fn analyze(&self, image: &[u8]) -> VisionOutcome {
        self.analyze_skipping(image, &[]).await
    }

    /// Like [`Vision::analyze`], passing over the providers named in `held_back`.
    pub async fn analyze_skipping(&self, image: &[u8], held_back: &[&str]) -> VisionOutcome {
        self.analyze_gated(image, &HeldBack(held_back)).await
    }

    /// Like [`Vision::analyze`], asking `gate` before each provider's turn (a fleet-wide
    /// rate limit, concurrency cap or breaker may hold it back) and telling it how the
    /// call went, so only providers actually called use up their limits.
    pub async fn analyze_gated(&self, image: &[u8], gate: &impl ProviderGate) -> VisionOutcome {
        let deadline = Instant::now() + self.total_timeout;
        let mut skipped = Vec::new();
        for p in &self.providers {
            let skip = |reason| Skip { provider: p.name.clone(), reason };
            let left = deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(1) {
                skipped.push(skip(SkipReason::NoTimeLeft));
                continue;
            }
            if !gate.admit(&p.name).await {
                skipped.push(skip(SkipReason::HeldBack));
                continue;
            }
            let timeout = left.min(Duration::from_millis(p.timeout_ms));
            let answer = self.call(p, image, timeout).await;
            gate.settle(&p.name, answer.as_ref().map(|_| ())).await;
            match answer {
                Ok(found) => {
                    let result = finish(p, found, std::mem::take(&mut skipped));
                    tracing::debug!(provider = %p.name, category = ?result.category,
                        tags = result.tags.len(), skipped = result.skipped.len(), "vision answered");
                    return VisionOutcome::Analyzed(result);
                }
                Err(reason) => {
                    tracing::info!(provider = %p.name, reason = %reason, "vision provider skipped");
                    skipped.push(skip(reason));
                }
            }
        }
        VisionOutcome::Unavailable { skipped }
    }

    async fn call(&self, p: &ProviderConfig, image: &[u8], timeout: Duration) -> Result<Annotations, SkipReason> {
        let attempt = async {
            match p.kind {
                ProviderKind::Google => providers::google(&self.client, p, image, timeout).await,
                ProviderKind::Azure => providers::azure(&self.client, p, image, timeout).await,
            }
        };
        // reqwest's per-request timeout covers connect to last byte; this one also
        // covers resolving and parsing, whatever happens inside.
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(SkipReason::Timeout { timeout_ms: timeout.as_millis() as u64 }),
        };
        result.map_err(|r| scrub(r, p.api_key_str()))
    }
}

/// Asked by [`Vision::analyze_gated`] before and after each provider's call.
pub trait ProviderGate: Sync {
    /// Whether `provider` may be called now; `false` passes it over (`held_back`).
    fn admit(&self, provider: &str) -> impl std::future::Future<Output = bool> + Send;
    /// How the call to an admitted provider went.
    fn settle(&self, provider: &str, outcome: Result<(), &SkipReason>) -> impl std::future::Future<Output = ()> + Send;
}

/// A gate that holds back a fixed list of providers.
struct HeldBack<'a>(&'a [&'a str]);

impl ProviderGate for HeldBack<'_> {
    async fn admit(&self, provider: &str) -> bool {
        !self.0.contains(&provider)
    }
    async fn settle(&self, _: &str, _: Result<(), &SkipReason>) {}
}

impl ProviderConfig {
    fn api_key_str(&self) -> &str {
        secrecy::ExposeSecret::expose_secret(&self.api_key)
    }
}

/// Removes the API key from every text of a skip reason (providers may echo it).
fn scrub(reason: SkipReason, key: &str) -> SkipReason {
    if key.is_empty() {
        return reason;
    }
    let clean = |s: String| s.replace(key, "[REDACTED]");
    match reason {
        SkipReason::Rejected { status, message } => SkipReason::Rejected { status, message: clean(message) },
        SkipReason::ProviderError { message } => SkipReason::ProviderError { message: clean(message) },
        SkipReason::InvalidResponse { message } => SkipReason::InvalidResponse { message: clean(message) },
        SkipReason::Refused { message } => SkipReason::Refused { message: clean(message) },
        SkipReason::Connection { message } => SkipReason::Connection { message: clean(message) },
        other => other,
    }
}

/// Applies the threshold and the category table to an answer.
fn finish(p: &ProviderConfig, found: Annotations, skipped: Vec<Skip>) -> VisionResult {
    let keep = |l: &Label| l.confidence.is_finite() && l.confidence >= p.min_confidence;
    let mut tags: Vec<Label> = found.tags.into_iter().filter(keep).collect();
    tags.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    let alt_text = found.caption.filter(keep);
    let (category, category_confidence) = categorize(&tags, alt_text.as_ref());
    VisionResult { provider: p.name.clone(), category, category_confidence, tags, alt_text, skipped }
}
