//! Telemetry of a worker process: logs to stderr (text or JSON lines) and, when an
//! OTLP endpoint is configured, the spans of jobs exported over OTLP/HTTP to any
//! OpenTelemetry collector or backend (Jaeger, Tempo, Honeycomb, ...).
//!
//! The standard OpenTelemetry variables configure the export:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns it on,
//! `OTEL_EXPORTER_OTLP_PROTOCOL` picks `http/protobuf` (default) or `http/json`,
//! `OTEL_EXPORTER_OTLP_HEADERS` adds headers (e.g. an API key) and `OTEL_SERVICE_NAME`
//! names the service (default `fleet-worker`). A job enqueued with a W3C `traceparent`
//! (the HTTP API keeps the request's) is exported as a child span of that remote parent,
//! so the job appears inside the trace of the request that enqueued it.

use crate::config::LogFormat;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// What [`init`] started; [`Telemetry::shutdown`] flushes the spans still buffered.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans still buffered (bounded by the exporter's timeout). Call it after
    /// the worker stopped, while the runtime given to [`init`] is still alive.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("telemetry: flushing spans at shutdown failed: {e}");
        }
    }
}

/// Installs the global subscriber: logs filtered by `RUST_LOG` (default `info`) and,
/// when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set,
/// span export. Exports run on `runtime`. A misconfigured export is reported on stderr
/// and leaves logging on.
pub fn init(format: LogFormat, runtime: &tokio::runtime::Handle) -> Telemetry {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // The log filter applies to log lines only: spans are exported whatever `RUST_LOG` says.
    let fmt = match format {
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
        LogFormat::Text => fmt.with_filter(filter).boxed(),
    };
    let provider = match otlp_provider(runtime) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("telemetry: span export is off: {e}");
            None
        }
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("fleet-worker")).with_filter(JobSpans));
    tracing_subscriber::registry().with(fmt).with(otel).init();
    Telemetry { provider }
}

use tracing_subscriber::Layer as _;

/// Only the `job` span and what runs inside it (at info level and above) are exported:
/// the engine's own loops (fetch, ack, heartbeat) would be noise in a trace backend.
struct JobSpans;

impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> tracing_subscriber::layer::Filter<S>
    for JobSpans
{
    fn enabled(&self, meta: &tracing::Metadata<'_>, cx: &tracing_subscriber::layer::Context<'_, S>) -> bool {
        if meta.is_span() && meta.name() == "job" {
            return true;
        }
        // Info and above only: a library's debug chatter inside a job is not part of its trace.
        *meta.level() <= tracing::Level::INFO
            && cx.lookup_current().is_some_and(|span| span.scope().any(|s| s.name() == "job"))
    }
}

fn otlp_provider(runtime: &tokio::runtime::Handle) -> Result<Option<SdkTracerProvider>, String> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Ok(None);
    }
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref().map(str::trim) {
        Err(_) | Ok("") | Ok("http/protobuf") => Protocol::HttpBinary,
        Ok("http/json") => Protocol::HttpJson,
        Ok(other) => return Err(format!("OTEL_EXPORTER_OTLP_PROTOCOL={other:?}: use http/protobuf or http/json")),
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_http_client(OtlpHttp { http, runtime: runtime.clone() })
        .build()
        .map_err(|e| e.to_string())?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "fleet-worker".to_owned());
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    Ok(Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build()))
}

/// The exporter's HTTP client: the workspace's reqwest, run on the worker's runtime
/// (the batch processor exports from a thread of its own).
#[derive(Debug)]
struct OtlpHttp {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttp {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = http.execute(request).await?;
            let mut out = http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                out = out.header(name, value);
            }
            // Collectors answer small bodies (partial-success notes): cap what is read.
            let body = response.bytes().await?;
            let body = body.slice(..body.len().min(64 * 1024));
            Ok::<_, opentelemetry_http::HttpError>(out.body(body)?)
        });
        sent.await?
    }
}

/// Makes `span` a child of the remote span in a W3C `traceparent`, when it is one.
pub(crate) fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let Some((trace, parent)) = fleet_jobs::envelope::parse_traceparent(traceparent) else { return };
    let flags = traceparent.rsplit('-').next().and_then(|f| u8::from_str_radix(f, 16).ok()).unwrap_or(0);
    let (Ok(trace), Ok(parent)) = (TraceId::from_hex(trace), SpanId::from_hex(parent)) else { return };
    let remote = SpanContext::new(trace, parent, TraceFlags::new(flags & 1), true, TraceState::default());
    let cx = opentelemetry::Context::new().with_remote_span_context(remote);
    // Without an export layer there is nothing to set, and that is fine.
    let _ = span.set_parent(cx);
}
