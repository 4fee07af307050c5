//! The two provider APIs: request shapes and response parsing.
//!
//! * Google Cloud Vision v1: `POST {base}/v1/images:annotate` with
//!   `{"requests":[{"image":{"content":<base64>},"features":[{"type":"LABEL_DETECTION","maxResults":20}]}]}`;
//!   answer `responses[0].labelAnnotations[{description, score}]`, or
//!   `responses[0].error{code, message}` (a 2xx carrying an error), or a top-level
//!   `error{code, message, status}` with a non-2xx status. The key goes in the
//!   `x-goog-api-key` header, which Google APIs accept in place of `?key=`, so it is
//!   never part of a URL (URLs end up in logs, proxies and error texts).
//! * Azure AI Vision Image Analysis 4.0: `POST {base}/computervision/imageanalysis:analyze
//!   ?api-version=2023-10-01&features=tags,caption` with the key in
//!   `Ocp-Apim-Subscription-Key` and the image bytes as `application/octet-stream`;
//!   answer `captionResult{text, confidence}` and `tagsResult.values[{name, confidence}]`,
//!   or `error{code, message}`.

use super::client::GuardedClient;
use super::{Annotations, Label, ProviderConfig, SkipReason};
use base64::Engine as _;
use serde::Deserialize;
use std::time::Duration;

/// Most labels asked of Google.
const GOOGLE_MAX_RESULTS: u32 = 20;

/// `{base}/{path}` with `base`'s own path kept as a prefix.
fn endpoint(p: &ProviderConfig, path: &str) -> Result<reqwest::Url, SkipReason> {
    let url = format!("{}/{path}", p.base_url.trim_end_matches('/'));
    reqwest::Url::parse(&url).map_err(|e| SkipReason::InvalidResponse { message: format!("bad endpoint URL: {e}") })
}

fn invalid(e: serde_json::Error) -> SkipReason {
    // serde_json's messages name the position, not the content.
    SkipReason::InvalidResponse { message: format!("not the expected JSON: {e}") }
}

#[derive(Deserialize)]
struct ErrorObject {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

impl ErrorObject {
    fn text(&self) -> String {
        let code = match &self.code {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let head: Vec<String> = [code, self.status.clone()].into_iter().flatten().collect();
        let message = self.message.clone().unwrap_or_else(|| "no message".into());
        if head.is_empty() { message } else { format!("{} {message}", head.join(" ")) }
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorObject,
}

/// The message of a `{"error": {...}}` body (both providers use that shape).
fn error_message(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ErrorEnvelope>(body).ok().map(|e| e.error.text())
}

fn confidence(v: f32) -> f32 {
    if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GoogleAnswer {
    #[serde(default)]
    responses: Vec<GoogleResponse>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GoogleResponse {
    #[serde(default)]
    label_annotations: Vec<GoogleLabel>,
    #[serde(default)]
    error: Option<ErrorObject>,
}

#[derive(Deserialize)]
struct GoogleLabel {
    description: String,
    #[serde(default)]
    score: f32,
}

pub(super) async fn google(
    client: &GuardedClient,
    p: &ProviderConfig,
    image: &[u8],
    timeout: Duration,
) -> Result<Annotations, SkipReason> {
    let body = serde_json::json!({
        "requests": [{
            "image": { "content": base64::engine::general_purpose::STANDARD.encode(image) },
            "features": [{ "type": "LABEL_DETECTION", "maxResults": GOOGLE_MAX_RESULTS }],
        }]
    });
    let request = client
        .post(endpoint(p, "v1/images:annotate")?)?
        .header("x-goog-api-key", p.api_key_str())
        .header(reqwest::header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(body.to_string());
    let answer = client.send(request, timeout, error_message).await?;
    parse_google(&answer.0)
}

fn parse_google(body: &[u8]) -> Result<Annotations, SkipReason> {
    let answer: GoogleAnswer = serde_json::from_slice(body).map_err(invalid)?;
    let Some(first) = answer.responses.into_iter().next() else {
        return Err(SkipReason::InvalidResponse { message: "no response for the image".into() });
    };
    if let Some(e) = first.error {
        return Err(SkipReason::ProviderError { message: e.text().chars().take(300).collect() });
    }
    let tags = first
        .label_annotations
        .into_iter()
        .filter(|l| !l.description.trim().is_empty())
        .map(|l| Label { name: l.description, confidence: confidence(l.score) })
        .collect();
    Ok(Annotations { tags, caption: None })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AzureAnswer {
    #[serde(default)]
    caption_result: Option<AzureCaption>,
    #[serde(default)]
    tags_result: Option<AzureTags>,
    #[serde(default)]
    error: Option<ErrorObject>,
}

#[derive(Deserialize)]
struct AzureCaption {
    text: String,
    confidence: f32,
}

#[derive(Deserialize)]
struct AzureTags {
    #[serde(default)]
    values: Vec<AzureTag>,
}

#[derive(Deserialize)]
struct AzureTag {
    name: String,
    confidence: f32,
}

pub(super) async fn azure(
    client: &GuardedClient,
    p: &ProviderConfig,
    image: &[u8],
    timeout: Duration,
) -> Result<Annotations, SkipReason> {
    let mut url = endpoint(p, "computervision/imageanalysis:analyze")?;
    url.query_pairs_mut().append_pair("api-version", "2023-10-01").append_pair("features", "tags,caption");
    let request = client
        .post(url)?
        .header("Ocp-Apim-Subscription-Key", p.api_key_str())
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(image.to_vec());
    let answer = client.send(request, timeout, error_message).await?;
    parse_azure(&answer.0)
}

fn parse_azure(body: &[u8]) -> Result<Annotations, SkipReason> {
    let answer: AzureAnswer = serde_json::from_slice(body).map_err(invalid)?;
    if let Some(e) = answer.error {
        return Err(SkipReason::ProviderError { message: e.text().chars().take(300).collect() });
    }
    if answer.caption_result.is_none() && answer.tags_result.is_none() {
        return Err(SkipReason::InvalidResponse {
            message: "neither captionResult nor tagsResult in the answer".into(),
        });
    }
    let tags = answer
        .tags_result
        .map(|t| t.values)
        .unwrap_or_default()
        .into_iter()
        .filter(|t| !t.name.trim().is_empty())
        .map(|t| Label { name: t.name, confidence: confidence(t.confidence) })
        .collect();
    let caption = answer
        .caption_result
        .filter(|c| !c.text.trim().is_empty())
        .map(|c| Label { name: c.text, confidence: confidence(c.confidence) });
    Ok(Annotations { tags, caption })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_answers_parse() {
        let ok = br#"{"responses":[{"labelAnnotations":[
            {"mid":"/m/01","description":"Bride","score":0.97,"topicality":0.97},
            {"mid":"/m/02","description":"Veil","score":0.81}]}]}"#;
        let a = parse_google(ok).unwrap();
        assert_eq!(
            a.tags,
            vec![Label { name: "Bride".into(), confidence: 0.97 }, Label { name: "Veil".into(), confidence: 0.81 }]
        );
        assert!(parse_google(br#"{"responses":[{}]}"#).unwrap().tags.is_empty(), "an image with no labels");
        let err = br#"{"responses":[{"error":{"code":3,"message":"Bad image data."}}]}"#;
        assert!(
            matches!(parse_google(err), Err(SkipReason::ProviderError { message }) if message == "3 Bad image data.")
        );
        assert!(matches!(parse_google(br#"{"responses":[]}"#), Err(SkipReason::InvalidResponse { .. })));
        assert!(matches!(parse_google(b"<html>"), Err(SkipReason::InvalidResponse { .. })));
        assert_eq!(
            error_message(br#"{"error":{"code":403,"message":"denied","status":"PERMISSION_DENIED"}}"#).as_deref(),
            Some("403 PERMISSION_DENIED denied")
        );
    }

    #[test]
    fn azure_answers_parse() {
        let ok = br#"{"modelVersion":"2023-10-01","metadata":{"width":800,"height":600},
            "captionResult":{"text":"a bride and groom cutting a cake","confidence":0.83},
            "tagsResult":{"values":[{"name":"wedding","confidence":0.99},{"name":"cake","confidence":0.9}]}}"#;
        let a = parse_azure(ok).unwrap();
        assert_eq!(a.caption.unwrap().name, "a bride and groom cutting a cake");
        assert_eq!(a.tags.len(), 2);
        let err = br#"{"error":{"code":"InvalidImageSize","message":"Image must be at least 50 pixels"}}"#;
        assert!(
            matches!(parse_azure(err), Err(SkipReason::ProviderError { message }) if message.starts_with("InvalidImageSize"))
        );
        assert!(matches!(parse_azure(b"{}"), Err(SkipReason::InvalidResponse { .. })));
        assert!(matches!(parse_azure(b"null"), Err(SkipReason::InvalidResponse { .. })));
    }
}
