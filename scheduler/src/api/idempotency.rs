//! `Idempotency-Key` on every `POST` that creates or starts something (events, batches,
//! portfolios, uploads, endpoints and their secrets, sources, contacts, syncs): the first
//! request with a key runs; a retry with the same key and the same request gets the first
//! answer again (`Idempotent-Replayed: true`) and creates nothing; the same key with a
//! different request is refused (422 `idempotency_key_reused`).
//!
//! Keys are the caller's tenant's (two tenants' keys never meet) and kept 24 h. While the
//! first request runs, a concurrent retry waits for its answer (up to 10 s, then 409
//! `idempotency_key_in_use` with `Retry-After`). An answer that says "try again" (429 or
//! any 5xx) is not kept, so the retry runs for real. `POST /v1/jobs` and `/v1/jobs/bulk`
//! keep their own scheme (job ids derived from the key), which also survives a lost answer.
//!
//! Kept answers can hold secrets (a new endpoint's signing secret), so they are sealed with
//! `FLEET_SECRETS_KEY` like every other secret at rest; without that key this layer is off.

use super::ApiState;
use super::auth::Caller;
use super::error::ApiError;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use fleet_accounts::secrets::SecretBox;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// How long a finished request's answer is kept.
const KEEP_SECS: u64 = 24 * 3600;
/// How long a request in progress holds its key (a crashed scheduler's claim lapses).
const CLAIM_SECS: u64 = 60;
/// How long a concurrent retry waits for the first request's answer.
const WAIT: Duration = Duration::from_secs(10);
/// Largest answer kept (creation answers are small JSON documents).
const MAX_ANSWER: usize = 1 << 20;

/// What is kept of a finished request.
#[derive(Serialize, Deserialize)]
struct Kept {
    /// The request's fingerprint (method, path, query, body).
    f: String,
    /// Status code.
    s: u16,
    /// Content type.
    ct: Option<String>,
    /// Body, base64.
    b: String,
}

/// Whether `path` is a tenant's creating `POST` this layer covers.
fn covered(path: &str) -> bool {
    path.starts_with("/v1/") && !path.starts_with("/v1/jobs") && !path.starts_with("/v1/intake/")
}

/// The middleware (state: the API state and the request body limit).
pub(crate) async fn layer(State((state, max_body)): State<(ApiState, usize)>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST || !covered(req.uri().path()) || !req.headers().contains_key("idempotency-key") {
        return next.run(req).await;
    }
    let Some(seal) = state.secrets.clone() else {
        return next.run(req).await;
    };
    run(&state, &seal, max_body, req, next).await.unwrap_or_else(IntoResponse::into_response)
}

async fn run(
    state: &ApiState,
    seal: &SecretBox,
    max_body: usize,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let key = super::jobs::idempotency_key(req.headers())?.unwrap_or_default();
    let (mut parts, body) = req.into_parts();
    let caller = Caller::from_request_parts(&mut parts, state).await?;
    // The route's own extractor takes it from here: one key lookup, one rate count.
    parts.extensions.insert(caller.clone());
    let bytes = axum::body::to_bytes(body, max_body).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("request body over {max_body} bytes"))
    })?;
    let mut f = Sha256::new();
    f.update(parts.method.as_str().as_bytes());
    f.update(b"\0");
    f.update(parts.uri.path_and_query().map_or("", |p| p.as_str()).as_bytes());
    f.update(b"\0");
    f.update(&bytes);
    let fingerprint = hex::encode(f.finalize());
    let digest = hex::encode(Sha256::digest(format!("{}\0{key}", caller.tenant).as_bytes()));
    let redis_key = format!("{}:{{idem:{}}}:r:{digest}", state.client.prefix(), caller.tenant);
    let aad = format!("idempotency:{}:{digest}", caller.tenant);
    let mut conn = state.client.connection();
    let unavailable = |e: redis::RedisError| ApiError::unavailable("idempotency key", e);
    let started = Instant::now();
    loop {
        let claimed: Option<String> = redis::cmd("SET")
            .arg(&redis_key)
            .arg(format!("p:{fingerprint}"))
            .arg("NX")
            .arg("EX")
            .arg(CLAIM_SECS)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if claimed.is_some() {
            break;
        }
        let held: Option<String> =
            redis::cmd("GET").arg(&redis_key).query_async(&mut conn).await.map_err(unavailable)?;
        match held.as_deref() {
            None => continue, // lapsed between the two calls: claim again
            Some(p) if p.starts_with("p:") => {
                if p[2..] != fingerprint {
                    return Err(reused());
                }
                if started.elapsed() >= WAIT {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "idempotency_key_in_use",
                        "a request with this Idempotency-Key is still running; retry shortly",
                    )
                    .retry_after(1));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some(d) => {
                let text = seal
                    .open(&aad, d.strip_prefix("d:").unwrap_or(d))
                    .map_err(|e| ApiError::unavailable("idempotency key", e))?;
                let kept: Kept =
                    serde_json::from_str(&text).map_err(|e| ApiError::unavailable("idempotency key", e))?;
                if kept.f != fingerprint {
                    return Err(reused());
                }
                return Ok(replay(kept));
            }
        }
    }
    let res = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let status = res.status();
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        // Not an answer to keep: free the key so the retry runs.
        let _: Result<(), _> = redis::cmd("DEL").arg(&redis_key).query_async(&mut conn).await;
        return Ok(res);
    }
    let (head, body) = res.into_parts();
    let body = match axum::body::to_bytes(body, MAX_ANSWER).await {
        Ok(b) => b,
        Err(e) => {
            let _: Result<(), _> = redis::cmd("DEL").arg(&redis_key).query_async(&mut conn).await;
            return Err(ApiError::unavailable("reading the answer", e));
        }
    };
    let kept = Kept {
        f: fingerprint,
        s: status.as_u16(),
        ct: head.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned),
        b: base64::engine::general_purpose::STANDARD.encode(&body),
    };
    let stored = match seal.seal(&aad, &serde_json::to_string(&kept).unwrap_or_default()) {
        Ok(sealed) => redis::cmd("SET")
            .arg(&redis_key)
            .arg(format!("d:{sealed}"))
            .arg("EX")
            .arg(KEEP_SECS)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = stored {
        let _: Result<(), _> = redis::cmd("DEL").arg(&redis_key).query_async(&mut conn).await;
        // The work is done; the answer is still the caller's. A retry would run again.
        tracing::warn!(error = %e, "idempotency: the answer could not be kept");
    }
    Ok(Response::from_parts(head, Body::from(body)))
}

fn reused() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "this Idempotency-Key was used for a different request in the last 24 h",
    )
}

fn replay(kept: Kept) -> Response {
    let body = base64::engine::general_purpose::STANDARD.decode(kept.b).unwrap_or_default();
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = StatusCode::from_u16(kept.s).unwrap_or(StatusCode::OK);
    if let Some(ct) = kept.ct.and_then(|c| HeaderValue::from_str(&c).ok()) {
        res.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    res.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    res
}

#[cfg(test)]
mod tests {
    use super::covered;

    #[test]
    fn creating_posts_are_covered_and_jobs_and_intake_keep_their_own() {
        for p in ["/v1/events", "/v1/batches", "/v1/portfolios", "/v1/endpoints", "/v1/comms/contacts", "/v1/uploads"] {
            assert!(covered(p), "{p}");
        }
        for p in ["/v1/jobs", "/v1/jobs/bulk", "/v1/intake/stripe", "/admin/v1/queues/q/replay", "/healthz"] {
            assert!(!covered(p), "{p}");
        }
    }
}
