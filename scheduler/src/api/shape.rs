//! The layer around every route: a request timeout (503), errors in one shape, and
//! `X-Content-Type-Options: nosniff` on every answer.
//!
//! axum's extractors answer their rejections (malformed JSON 400, a body of the wrong
//! type 422, no JSON content type 415, a body over the limit 413, a bad path or query
//! 400) and the router its 404 and 405 in plain text. This layer rewrites any error answer
//! that is not JSON into the documented `{"error": {"code", "message"}}`, keeping its
//! status and headers (`Allow`, `Retry-After`), so every route answers errors alike
//! whichever extractor refused the request.

use super::ApiState;
use super::error::ApiError;
use super::limits;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Longest plain-text error body kept as the message.
const MAX_MESSAGE: usize = 512;

/// The middleware: timeout, error shape, nosniff.
pub(crate) async fn guard(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let timeout = state.limits.request_timeout();
    // Only the time to the response's head is bounded: an event stream's body goes on.
    let res = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            metrics::counter!("fleet_api_timeouts_total").increment(1);
            limits::timed_out(timeout)
        }
    };
    let mut res = shaped(res).await;
    res.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    res
}

/// The stable code of an error status.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

fn is_json(res: &Response) -> bool {
    res.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("application/problem+json"))
}

/// An error answer that is not JSON, rewritten into the error shape.
async fn shaped(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&res) {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    // Extractor rejections are a line of text; anything longer is cut.
    let text = match axum::body::to_bytes(body, 16 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let mut message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text };
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    let shaped = ApiError::new(status, code_of(status), message).into_response();
    let (new_parts, new_body) = shaped.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_ENCODING);
    for (name, value) in new_parts.headers.iter() {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, Body::new(new_body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plain_text_errors_become_the_error_shape_and_keep_their_headers() {
        let res = (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET")], "nope").into_response();
        let res = shaped(res).await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers()[header::ALLOW], "GET");
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(res.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "method_not_allowed");
        assert_eq!(v["error"]["message"], "nope");
    }

    #[tokio::test]
    async fn successes_and_json_errors_pass_untouched() {
        let ok = shaped((StatusCode::OK, "fine").into_response()).await;
        assert_eq!(axum::body::to_bytes(ok.into_body(), 100).await.unwrap(), "fine");
        let e = shaped(ApiError::invalid("x").into_response()).await;
        let body = axum::body::to_bytes(e.into_body(), 1000).await.unwrap();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["error"]["message"], "x");
    }
}
