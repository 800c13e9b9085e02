//! Traces and metrics of the real binary reach an OTLP/gRPC collector: a root span per RPC that
//! links to (but does not join) the sender's trace, a child span per published payload, the
//! original's metrics; and a terminated gateway flushes what it still holds.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use telemetry_gateway_proto::v1::{Event, RecordEventsRequest};
use telemetry_gateway_testkit::client::{events_message, metadata_message, record_events_with};
use telemetry_gateway_testkit::events::{simple_events, unlicensed_metadata};
use telemetry_gateway_testkit::fake_bigquery::{FakeBigQuery, InsertReply};
use telemetry_gateway_testkit::fake_otlp::common::any_value::Value;
use telemetry_gateway_testkit::fake_otlp::trace::span::SpanKind;
use telemetry_gateway_testkit::fake_otlp::trace::status::StatusCode;
use telemetry_gateway_testkit::fake_otlp::{FakeOtlp, ReceivedMetric, ReceivedSpan};

use support::{GatewayProcess, with_sams};

const RPC_SPAN: &str = "telemetrygateway.v1.TelemeteryGatewayService/RecordEvents";
const PAYLOAD_SPAN: &str = "handlePublishEvents";
const PROCESSED_EVENTS: &str = "telemetry-gateway.record_events.processed_events";
const SENDER_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SENDER_SPAN_ID: &str = "00f067aa0ba902b7";
/// Long enough for anything the collector receives to be there because of a flush, not a timer.
const WAIT: Duration = Duration::from_secs(15);

/// A gateway whose sink is a fake BigQuery and whose telemetry goes to a fake collector, with
/// the given extra settings.
async fn gateway_with_collector(
    extra_env: &[(&str, &str)],
) -> (GatewayProcess, FakeOtlp, FakeBigQuery) {
    let otlp = FakeOtlp::start().await;
    let bigquery = FakeBigQuery::start().await;
    let otlp_endpoint = otlp.endpoint();
    let bigquery_endpoint = bigquery.v2_base_url();
    let mut env = vec![
        ("TELEMETRY_GATEWAY_EVENTS_SINKS", "bigquery"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID", "proj"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID", "telemetry"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID", "events"),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_ENDPOINT",
            bigquery_endpoint.as_str(),
        ),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_WRITE_API", "insert_all"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_endpoint.as_str()),
    ];
    env.extend_from_slice(extra_env);
    let gateway = GatewayProcess::start(&env);
    (gateway, otlp, bigquery)
}

/// Export quickly, so tests wait for the timers rather than for shutdown.
const QUICK_EXPORT: [(&str, &str); 2] = [
    ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
];

/// Export only at shutdown (within any test's lifetime).
const EXPORT_AT_SHUTDOWN: [(&str, &str); 2] = [
    ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "600000"),
];

/// On one stream carrying the sender's `traceparent`: a payload of 3 events BigQuery accepts,
/// then a payload of 2 it refuses (500). Returns the acknowledged IDs per payload.
async fn send_traced_stream(addr: SocketAddr, bigquery: &FakeBigQuery) -> Vec<Vec<String>> {
    bigquery.push_replies([InsertReply::ok(), InsertReply::status(500, "backendError")]);
    let payloads: [Vec<Event>; 2] = [simple_events("ok", 3), simple_events("refused", 2)];
    let mut messages: Vec<RecordEventsRequest> =
        vec![metadata_message(unlicensed_metadata("traced-instance"))];
    messages.extend(payloads.iter().cloned().map(events_message));
    let mut request = tonic::Request::new(tokio_stream::iter(messages));
    let traceparent = format!("00-{SENDER_TRACE_ID}-{SENDER_SPAN_ID}-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("ASCII"));
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    record_events_with(&mut client, request)
        .await
        .expect("the stream ends cleanly")
        .into_iter()
        .map(|response| response.succeeded_events)
        .collect()
}

fn id_bytes(hex: &str) -> Vec<u8> {
    let value = u128::from_str_radix(hex, 16).expect("hex");
    let bytes = value.to_be_bytes();
    bytes[bytes.len() - hex.len() / 2..].to_vec()
}

fn string(value: &str) -> Value {
    Value::StringValue(value.to_string())
}

fn payload_span_with_result(span: &ReceivedSpan, result: &str) -> bool {
    span.span.name == PAYLOAD_SPAN && span.attribute("result") == Some(&string(result))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rpc_is_a_new_root_span_linked_to_the_senders_trace() {
    let (mut gateway, otlp, bigquery) = gateway_with_collector(&QUICK_EXPORT).await;
    gateway.wait_for(&format!("traces go to OTLP at {}", otlp.endpoint()));
    let addr = gateway.address();

    send_traced_stream(addr, &bigquery).await;

    let rpc = otlp.wait_for_span(RPC_SPAN, WAIT).await;
    assert_eq!(rpc.span.kind, SpanKind::Server as i32);
    assert_eq!(rpc.span.trace_id.len(), 16);
    assert_ne!(
        rpc.span.trace_id,
        id_bytes(SENDER_TRACE_ID),
        "the sender's trace is not joined"
    );
    assert!(
        rpc.span.parent_span_id.is_empty(),
        "a root span, not a child of the sender's span: {:?}",
        rpc.span.parent_span_id
    );
    assert_eq!(rpc.span.links.len(), 1, "{:?}", rpc.span.links);
    assert_eq!(rpc.span.links[0].trace_id, id_bytes(SENDER_TRACE_ID));
    assert_eq!(rpc.span.links[0].span_id, id_bytes(SENDER_SPAN_ID));
    assert_eq!(rpc.attribute("rpc.system"), Some(&string("grpc")));
    assert_eq!(rpc.attribute("rpc.method"), Some(&string("RecordEvents")));
    assert_eq!(
        rpc.attribute("rpc.grpc.status_code"),
        Some(&Value::IntValue(0))
    );
    assert_eq!(
        rpc.attribute("source"),
        Some(&string("unlicensed_instance"))
    );
    assert_eq!(
        rpc.resource_attribute("service.name"),
        Some(&string("telemetry-gateway"))
    );
    assert_eq!(
        rpc.resource_attribute("service.version"),
        Some(&string(telemetry_gateway::version::version()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_published_payload_is_a_child_span_with_its_result() {
    let (mut gateway, otlp, bigquery) = gateway_with_collector(&QUICK_EXPORT).await;
    let addr = gateway.address();

    let acknowledged = send_traced_stream(addr, &bigquery).await;
    assert_eq!(acknowledged[0].len(), 3);
    assert!(acknowledged[1].is_empty(), "BigQuery refused the second");

    let rpc = otlp.wait_for_span(RPC_SPAN, WAIT).await;
    let succeeded = otlp
        .wait_for_span_where(WAIT, |span| payload_span_with_result(span, "success"))
        .await
        .expect("a span for the accepted payload");
    let failed = otlp
        .wait_for_span_where(WAIT, |span| {
            payload_span_with_result(span, "complete_failure")
        })
        .await
        .expect("a span for the refused payload");

    for payload in [&succeeded, &failed] {
        assert_eq!(payload.span.trace_id, rpc.span.trace_id);
        assert_eq!(payload.span.parent_span_id, rpc.span.span_id);
        assert_eq!(
            payload.attribute("source"),
            Some(&string("unlicensed_instance"))
        );
    }
    assert_eq!(succeeded.attribute("events"), Some(&Value::IntValue(3)));
    assert_eq!(succeeded.attribute("failed"), None);
    assert_ne!(
        succeeded.span.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );

    assert_eq!(failed.attribute("events"), Some(&Value::IntValue(2)));
    assert_eq!(failed.attribute("failed"), Some(&Value::IntValue(2)));
    let status = failed.span.status.clone().expect("a status");
    assert_eq!(status.code, StatusCode::Error as i32);
    assert_eq!(status.message, "all events in batch failed to submit");
}

/// The value of the processed-events point with these attributes.
fn processed(metric: &ReceivedMetric, succeeded: bool, result: &str) -> Option<i64> {
    metric.int_value(&[
        ("succeeded", Value::BoolValue(succeeded)),
        ("result", string(result)),
        ("source", string("unlicensed_instance")),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processed_events_are_exported_with_their_attributes() {
    let (mut gateway, otlp, bigquery) = gateway_with_collector(&QUICK_EXPORT).await;
    gateway.wait_for(&format!("metrics go to OTLP at {}", otlp.endpoint()));
    let addr = gateway.address();

    send_traced_stream(addr, &bigquery).await;

    let metric = otlp
        .wait_for_metric_where(PROCESSED_EVENTS, WAIT, |metric| {
            processed(metric, true, "success") == Some(3)
                && processed(metric, false, "complete_failure") == Some(2)
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no export with 3 succeeded and 2 failed events; last: {:#?}",
                otlp.metrics()
                    .iter()
                    .rev()
                    .find(|m| m.metric.name == PROCESSED_EVENTS)
            )
        });
    // Each payload adds both counts, either possibly zero (`docs/compatibility.md` §8).
    assert_eq!(processed(&metric, false, "success"), Some(0));
    assert_eq!(processed(&metric, true, "complete_failure"), Some(0));
    assert_eq!(
        metric.resource_attribute("service.name"),
        Some(&string("telemetry-gateway"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_the_gateway_flushes_spans_and_metrics() {
    let (mut gateway, otlp, bigquery) = gateway_with_collector(&[
        EXPORT_AT_SHUTDOWN[0],
        EXPORT_AT_SHUTDOWN[1],
        // Compressed, to check the setting is honoured (an unsupported one is only warned about).
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
    ])
    .await;
    let addr = gateway.address();
    send_traced_stream(addr, &bigquery).await;

    let status = tokio::task::block_in_place(|| gateway.terminate());

    assert!(status.success(), "{status:?}");
    let spans = otlp.spans();
    assert!(
        spans.iter().any(|s| s.span.name == RPC_SPAN),
        "the RPC span was flushed at exit"
    );
    assert_eq!(
        spans.iter().filter(|s| s.span.name == PAYLOAD_SPAN).count(),
        2
    );
    let metric = otlp
        .metrics()
        .into_iter()
        .rev()
        .find(|m| m.metric.name == PROCESSED_EVENTS)
        .expect("the metrics were flushed at exit");
    assert_eq!(processed(&metric, true, "success"), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_sdk_disabled_nothing_is_exported() {
    let (mut gateway, otlp, bigquery) = gateway_with_collector(&[
        QUICK_EXPORT[0],
        QUICK_EXPORT[1],
        ("OTEL_SDK_DISABLED", "true"),
    ])
    .await;
    gateway.wait_for("OTEL_SDK_DISABLED=true: no metrics or traces are recorded");
    let addr = gateway.address();
    let acknowledged = send_traced_stream(addr, &bigquery).await;
    assert_eq!(acknowledged[0].len(), 3);

    let status = tokio::task::block_in_place(|| gateway.terminate());

    assert!(status.success(), "{status:?}");
    assert!(otlp.spans().is_empty(), "{:?}", otlp.spans());
    assert!(otlp.metrics().is_empty(), "{:?}", otlp.metrics());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_service_call_has_a_scope_check_span_and_a_refusal_an_error_status() {
    use telemetry_gateway_testkit::client::managed_event_request;
    use telemetry_gateway_testkit::events::simple_event;
    use telemetry_gateway_testkit::fake_sams::{FakeSams, TokenGrant};

    let sams = FakeSams::start().await;
    sams.grant("svc-token", TokenGrant::events_writer());
    let url = sams.url();
    let (mut gateway, otlp, _bigquery) =
        gateway_with_collector(&with_sams(&url, &QUICK_EXPORT)).await;
    let addr = gateway.address();
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    let call = |token: &str, id: &str| managed_event_request("my-service", simple_event(id), token);
    client
        .record_event(call("svc-token", "managed-1"))
        .await
        .expect("a valid token is accepted");
    client
        .record_event(call("unknown-token", "managed-2"))
        .await
        .expect_err("an unknown token is refused");

    let unary = "telemetrygateway.v1.TelemeteryGatewayService/RecordEvent";
    let accepted = otlp
        .wait_for_span_where(WAIT, |span| {
            span.span.name == unary && span.attribute("source") == Some(&string("my-service"))
        })
        .await
        .expect("a span for the accepted call");
    assert!(accepted.span.parent_span_id.is_empty());
    let check = otlp
        .wait_for_span_where(WAIT, |span| {
            span.span.name == "CheckWriteEventsScope"
                && span.span.parent_span_id == accepted.span.span_id
        })
        .await
        .expect("the scope check is a child of the call's span");
    assert_eq!(
        check.attribute("client_id"),
        Some(&string("sams_cid_managed_service"))
    );

    let refused = otlp
        .wait_for_span_where(WAIT, |span| {
            span.span.name == unary
                && span.attribute("rpc.grpc.status_code")
                    == Some(&Value::IntValue(tonic::Code::PermissionDenied as i64))
        })
        .await
        .expect("a span for the refused call");
    let status = refused.span.status.clone().expect("a status");
    assert_eq!(status.code, StatusCode::Error as i32);
    assert_eq!(status.message, "permission denied");
}
