//! The span of one RPC, and how its outcome is written on it.

use tonic::Code;
use tonic::metadata::MetadataMap;
use tracing::field::Empty;

use crate::rpc::metrics::SERVICE;
use crate::tracing_context::link_sender_trace;

/// The span of one RPC. A sender's W3C trace context is linked, never used as the parent: a
/// sender must not be able to attach our spans to its traces (or sample them away).
pub fn rpc_span(method: &'static str, headers: &MetadataMap) -> tracing::Span {
    let span = tracing::info_span!(
        // A root whatever span is current: each RPC starts a trace of its own.
        parent: None,
        "telemetrygateway.v1.TelemeteryGatewayService",
        otel.name = format!("{SERVICE}/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = SERVICE,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        source = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    link_sender_trace(&span, headers);
    span
}

/// Writes the call's outcome on its span: the gRPC code, and for a failure the error status and
/// its message.
pub fn record_outcome(span: &tracing::Span, code: Code, error: Option<&str>) {
    span.record("rpc.grpc.status_code", code as i32);
    if let Some(message) = error {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", message);
    }
}
