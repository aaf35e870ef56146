//! Logging, and traces to an OpenTelemetry collector.
//!
//! [`install`] sets up the process's `tracing` subscriber: log lines to
//! standard error filtered by `AHV_LOG` (default `warn`), and — when given a
//! collector's address — every span at `info` and above exported over
//! OTLP/HTTP (protobuf) to `<endpoint>/v1/traces`. Each layer has its own
//! filter, so a quiet log does not silence the exported spans.
//!
//! The API's request span is parented on the request's W3C `traceparent`
//! ([`set_remote_parent`]), so the exported spans join the caller's trace,
//! with the same 128-bit trace id as the request's events and audit deltas;
//! without a `traceparent`, the request takes the trace id the exporter gave
//! its span ([`span_ids`]). Spans are batched and sent by the SDK's own
//! thread; [`Telemetry::shutdown`] sends what is queued before the process
//! ends.

use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use thiserror::Error;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How long one export may take (connect, send, answer).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why telemetry could not be set up.
#[derive(Debug, Error)]
pub enum TelemetryError {
    /// The collector's address is not an `http://` or `https://` URL.
    #[error(
        "OTLP endpoint {endpoint:?}: expected http://HOST:PORT (the collector's OTLP/HTTP address)"
    )]
    Endpoint {
        /// The address given.
        endpoint: String,
    },
    /// The exporter could not be built.
    #[error("OTLP exporter for {endpoint}: {source}")]
    Exporter {
        /// The address given.
        endpoint: String,
        /// What the SDK said.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// A subscriber was already installed in this process.
    #[error("the tracing subscriber is already installed: {0}")]
    Installed(String),
}

/// The exporter installed by [`install`], if any.
#[must_use = "call shutdown() before the process ends, or queued spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still queued and stops the exporter (a collector
    /// that does not answer costs at most the export timeout).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            tracing::warn!("exporting the last spans: {e}");
        }
    }
}

/// Installs the process's subscriber: logs to standard error (`AHV_LOG`,
/// default `warn`; ANSI colours on a terminal) and, with `otlp_endpoint`
/// (e.g. `http://127.0.0.1:4318`), spans exported to the collector.
///
/// # Errors
/// The endpoint is not an HTTP URL, the exporter cannot be built, or a
/// subscriber is already installed.
pub fn install(otlp_endpoint: Option<&str>) -> Result<Telemetry, TelemetryError> {
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(log_filter(std::env::var("AHV_LOG").ok().as_deref()));
    let provider = otlp_endpoint.map(provider).transpose()?;
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("ahv"))
            // Never the HTTP stack's own spans (the exporter's requests).
            .with_filter(tracing_subscriber::EnvFilter::new(
                "info,hyper=off,h2=off,ureq=off,tower=off,rustls=off",
            ))
    });
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError::Installed(e.to_string()))?;
    Ok(Telemetry { provider })
}

/// The log filter `AHV_LOG` asks for (default `warn`; a bad one is `warn`).
/// At debug or trace the MCP library would log every tool call's input and
/// answer in full (which may hold what agents were handed), so it stays at
/// `info` unless `AHV_LOG` names it.
fn log_filter(spec: Option<&str>) -> tracing_subscriber::EnvFilter {
    let spec = spec.unwrap_or("warn");
    let spec = if (spec.contains("debug") || spec.contains("trace")) && !spec.contains("rmcp") {
        format!("{spec},rmcp=info")
    } else {
        spec.to_string()
    };
    tracing_subscriber::EnvFilter::try_new(spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
}

fn provider(endpoint: &str) -> Result<SdkTracerProvider, TelemetryError> {
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(TelemetryError::Endpoint {
            endpoint: endpoint.into(),
        });
    }
    // `with_endpoint` is used as given: the signal's path is ours to add.
    let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(UreqClient::new(EXPORT_TIMEOUT))
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint.into(),
            source,
        })?;
    Ok(SdkTracerProvider::builder()
        // Exports on the SDK's own thread: never on a tokio worker.
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name("agent-hypervisor")
                .build(),
        )
        .build())
}

/// Makes `span` (not yet entered) a child of span `parent` of trace `trace`,
/// from a request's `traceparent`. Returns the id the exported span has,
/// `None` when no exporter is installed.
pub fn set_remote_parent(span: &tracing::Span, trace: u128, parent: u64) -> Option<u64> {
    let remote = SpanContext::new(
        trace.into(),
        parent.into(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote))
        .ok()?;
    span_ids(span).map(|(_, id)| id)
}

/// The trace id and span id the exporter gave `span`; `None` when no
/// exporter is installed (or the span is disabled).
pub fn span_ids(span: &tracing::Span) -> Option<(u128, u64)> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.span_id() != SpanId::INVALID).then(|| {
        (
            u128::from_be_bytes(sc.trace_id().to_bytes()),
            u64::from_be_bytes(sc.span_id().to_bytes()),
        )
    })
}

/// The exporter's HTTP client: a blocking ureq agent (the SDK's batch
/// processor calls it on its own thread), bounded in time and answer size.
#[derive(Debug)]
struct UreqClient(ureq::Agent);

impl UreqClient {
    fn new(timeout: Duration) -> UreqClient {
        UreqClient(ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                // The exporter reads the status itself (and retries 429/503).
                .http_status_as_error(false)
                .build(),
        ))
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for UreqClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let (parts, body) = request.into_parts();
        let response = self.0.run(opentelemetry_http::Request::from_parts(
            parts,
            body.as_ref(),
        ))?;
        let (parts, body) = response.into_parts();
        let bytes = body.into_with_config().limit(1 << 20).read_to_vec()?;
        Ok(opentelemetry_http::Response::from_parts(
            parts,
            opentelemetry_http::Bytes::from(bytes),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verbose_log_keeps_the_mcp_library_at_info_unless_named() {
        assert_eq!(log_filter(None).to_string(), "warn");
        assert_eq!(log_filter(Some("debug")).to_string(), "rmcp=info,debug");
        assert_eq!(log_filter(Some("rmcp=trace")).to_string(), "rmcp=trace");
        assert_eq!(log_filter(Some("info")).to_string(), "info");
        assert_eq!(log_filter(Some("==bad")).to_string(), "warn");
    }
}
