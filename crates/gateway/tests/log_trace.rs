//! With `SRC_LOG_FORMAT=json_gcp`, a request's log line carries the trace and span IDs of the
//! span the real binary exports for it, in Cloud Logging's fields, so the two link up.

mod support;

use std::time::Duration;

use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{simple_events, unlicensed_metadata};
use telemetry_gateway_testkit::fake_otlp::FakeOtlp;

use support::GatewayProcess;

const RPC_SPAN: &str = "telemetrygateway.v1.TelemeteryGatewayService/RecordEvents";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_log_line_carries_the_trace_id_of_its_exported_span() {
    let otlp = FakeOtlp::start().await;
    let endpoint = otlp.endpoint();
    let mut gateway = GatewayProcess::start(&[
        ("SRC_LOG_FORMAT", "json_gcp"),
        ("GOOGLE_CLOUD_PROJECT", "telemetry-prod"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    let addr = gateway.address();
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    telemetry_gateway_testkit::record_events(
        &mut client,
        vec![
            metadata_message(unlicensed_metadata("traced-instance")),
            events_message(simple_events("t", 2)),
        ],
    )
    .await
    .expect("the stream succeeds");

    let line = gateway.wait_for("handling events submission stream for unlicensed instance");
    assert_eq!(line["severity"], "INFO");
    assert_eq!(line["SeverityText"], "INFO");
    assert_eq!(line["Body"], line["message"]);
    assert_eq!(line["Attributes"]["instanceID"], "traced-instance");
    assert_eq!(line["Resource"]["service.name"], "telemetry-gateway");
    let trace_id = line["TraceId"].as_str().expect("a TraceId").to_string();
    let span_id = line["SpanId"].as_str().expect("a SpanId").to_string();
    assert_eq!(
        line["logging.googleapis.com/trace"],
        format!("projects/telemetry-prod/traces/{trace_id}")
    );
    assert_eq!(line["logging.googleapis.com/spanId"], span_id.as_str());
    assert_eq!(line["logging.googleapis.com/trace_sampled"], true);

    let rpc = otlp.wait_for_span(RPC_SPAN, Duration::from_secs(15)).await;
    assert_eq!(hex(&rpc.span.trace_id), trace_id, "the RPC span's trace");
    assert_eq!(
        hex(&rpc.span.span_id),
        span_id,
        "logged inside the RPC span"
    );
    assert!(gateway.terminate().success());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
