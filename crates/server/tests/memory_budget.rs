//! The memory budget over real gRPC: payloads beyond it wait, then get `ResourceExhausted` with
//! a retry hint; nothing of a refused payload reaches the sink; room frees once payloads are
//! answered; `/-/ready` reports the exhaustion.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{Setup, TestGateway, framed, message_header, raw_call_stalling_after};
use telemetry_gateway_server::budget::request_cost;
use telemetry_gateway_server::error::RETRY_PUSHBACK_TRAILER;
use telemetry_gateway_server::{InflightBudget, Limits};
use telemetry_gateway_testkit::RecordingSink;
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{simple_events, unlicensed_metadata};
use telemetry_gateway_testkit::http::get;
use telemetry_gateway_testkit::wait::eventually;
use tonic::Code;

const EVENTS_PER_PAYLOAD: usize = 2_000;

/// The rendered metadata of [`unlicensed_metadata`], repeated in every event's payload.
fn metadata_json_len(instance: &str) -> usize {
    let mut json = Vec::new();
    telemetry_gateway_proto::render_metadata(&unlicensed_metadata(instance), &mut json);
    json.len()
}

/// What a payload of [`EVENTS_PER_PAYLOAD`] events costs once decoded.
fn payload_cost() -> usize {
    request_cost(
        &events_message(simple_events("first", EVENTS_PER_PAYLOAD)),
        metadata_json_len("second"),
    )
    .expect("a valid message")
}

/// A budget whose held part (three quarters of it) has room for `payloads` payloads of
/// [`EVENTS_PER_PAYLOAD`] events; one connection may hold all of it.
fn budget_for(payloads: f64) -> InflightBudget {
    InflightBudget::new(
        (payload_cost() as f64 * payloads * 4.0 / 3.0) as usize,
        Duration::from_millis(300),
    )
    .with_limits(Limits {
        connection_share_percent: 100,
        ..Limits::default()
    })
}

/// A budget with room for one payload of [`EVENTS_PER_PAYLOAD`] events, not two.
async fn gateway(sink: Arc<RecordingSink>) -> TestGateway {
    TestGateway::start_with(Setup {
        sink,
        budget: budget_for(1.5),
        ..Setup::default()
    })
    .await
}

async fn send(
    gateway: &TestGateway,
    instance: &str,
) -> Result<Vec<telemetry_gateway_proto::v1::RecordEventsResponse>, tonic::Status> {
    let mut client = gateway.client().await;
    telemetry_gateway_testkit::record_events(
        &mut client,
        vec![
            metadata_message(unlicensed_metadata(instance)),
            events_message(simple_events(instance, EVENTS_PER_PAYLOAD)),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_beyond_the_budget_is_refused_with_a_retry_hint_and_never_published() {
    let sink = Arc::new(RecordingSink::new().with_delay(Duration::from_secs(3)));
    let gateway = gateway(sink.clone()).await;
    assert_eq!(
        get(gateway.addr, "/-/ready", None)
            .await
            .expect("served")
            .status,
        200
    );

    let held = tokio::spawn({
        let addr = gateway.addr;
        async move {
            let mut client = telemetry_gateway_testkit::connect(addr)
                .await
                .expect("connect");
            telemetry_gateway_testkit::record_events(
                &mut client,
                vec![
                    metadata_message(unlicensed_metadata("first")),
                    events_message(simple_events("first", EVENTS_PER_PAYLOAD)),
                ],
            )
            .await
        }
    });
    // The first payload is admitted and held by the slow sink.
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(10),
        || async {
            match sink.in_progress() {
                0 => Err("the first payload never reached the sink".to_string()),
                _ => Ok(()),
            }
        },
    )
    .await;

    let refused = match send(&gateway, "second").await {
        Ok(responses) => panic!(
            "no room for a second payload, yet {} IDs were acknowledged",
            responses
                .iter()
                .map(|r| r.succeeded_events.len())
                .sum::<usize>()
        ),
        Err(status) => status,
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("memory budget"),
        "{}",
        refused.message()
    );
    assert_eq!(
        refused
            .metadata()
            .get(RETRY_PUSHBACK_TRAILER)
            .and_then(|v| v.to_str().ok()),
        Some("1000"),
        "a retry hint of max(wait, 1 s)"
    );
    let ready = get(gateway.addr, "/-/ready", None).await.expect("served");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("memory budget"), "{}", ready.body);

    let first = held
        .await
        .expect("task")
        .expect("the held payload is answered");
    assert_eq!(first[0].succeeded_events.len(), EVENTS_PER_PAYLOAD);
    assert!(
        sink.published().iter().all(|e| e.id.starts_with("first")),
        "nothing of the refused payload was published"
    );

    // Room again: the gateway is ready, and the refused sender's retry is acknowledged. The held
    // stream may return the receive buffer it kept a moment after its answer arrives, and until
    // then the recent refusal still reads as pressure: wait for ready.
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let ready = get(gateway.addr, "/-/ready", None).await.expect("served");
            match ready.status {
                200 => Ok(()),
                _ => Err(format!("never ready again: {}", ready.body)),
            }
        },
    )
    .await;
    let retried = send(&gateway, "second").await.expect("room again");
    assert_eq!(retried[0].succeeded_events.len(), EVENTS_PER_PAYLOAD);
}

#[tokio::test]
async fn a_payload_costing_more_than_a_connection_may_hold_is_refused_naming_the_limit() {
    let sink = Arc::new(RecordingSink::new());
    // A connection may hold half of the held part: room for 1.5 payloads, not 5.
    let budget = InflightBudget::new(payload_cost() * 4 / 3 * 3, Duration::from_millis(300));
    let gateway = TestGateway::start_with(Setup {
        sink: sink.clone(),
        budget: budget.clone(),
        ..Setup::default()
    })
    .await;
    let mut client = gateway.client().await;
    let refused = telemetry_gateway_testkit::record_events(
        &mut client,
        vec![
            metadata_message(unlicensed_metadata("big")),
            events_message(simple_events("big", 5 * EVENTS_PER_PAYLOAD)),
        ],
    )
    .await
    .expect_err("more than a connection may hold");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("TELEMETRY_GATEWAY_CONNECTION_SHARE_PERCENT"),
        "{}",
        refused.message()
    );
    assert!(sink.published().is_empty());
    assert_eq!(budget.used(), 0);
    let responses = telemetry_gateway_testkit::record_events(
        &mut client,
        vec![
            metadata_message(unlicensed_metadata("big")),
            events_message(simple_events("normal", EVENTS_PER_PAYLOAD)),
        ],
    )
    .await
    .expect("a payload that fits");
    assert_eq!(responses[0].succeeded_events.len(), EVENTS_PER_PAYLOAD);
}

#[tokio::test]
async fn a_stream_sends_payloads_as_large_as_it_may_one_after_the_other() {
    // Each payload takes nearly all the held part, and the stream keeps tonic's receive buffer
    // between them: the second is admitted all the same.
    let budget = budget_for(1.05);
    let gateway = TestGateway::start_with(Setup {
        budget: budget.clone(),
        ..Setup::default()
    })
    .await;
    let mut client = gateway.client().await;
    let responses = telemetry_gateway_testkit::record_events(
        &mut client,
        vec![
            metadata_message(unlicensed_metadata("first")),
            events_message(simple_events("first", EVENTS_PER_PAYLOAD)),
            events_message(simple_events("first", EVENTS_PER_PAYLOAD)),
            events_message(simple_events("first", EVENTS_PER_PAYLOAD)),
        ],
    )
    .await
    .expect("every payload admitted in turn");
    assert_eq!(responses.len(), 3);
    assert_eq!(budget.used(), 0);
}

#[tokio::test]
async fn a_message_that_stops_arriving_ends_its_stream_and_frees_its_room() {
    let budget = InflightBudget::new(64 * 1024 * 1024, Duration::from_millis(300))
        .with_stall_timeout(Duration::from_millis(500));
    let gateway = TestGateway::start_with(Setup {
        budget: budget.clone(),
        ..Setup::default()
    })
    .await;
    // The metadata, then a header declaring 8 MiB, a few bytes, and silence.
    let mut first = framed(&metadata_message(unlicensed_metadata("stalling")));
    first.extend(message_header(8 * 1024 * 1024));
    // An unknown varint field, eight times: valid so far.
    first.extend_from_slice(&[0x78, 0x01].repeat(8));
    let (status, message) = raw_call_stalling_after(
        gateway.addr,
        "/telemetrygateway.v1.TelemeteryGatewayService/RecordEvents",
        first,
    )
    .await;
    assert_eq!(status, "4", "DeadlineExceeded: {message}");
    assert!(
        message.contains("TELEMETRY_GATEWAY_MIN_RECEIVE_BYTES_PER_SECOND"),
        "{message}"
    );
    assert_eq!(budget.used(), 0, "the stalled message's room is returned");
}

#[tokio::test]
async fn a_first_message_too_large_for_metadata_is_refused_without_reserving() {
    let budget = InflightBudget::new(64 * 1024 * 1024, Duration::from_millis(300));
    let gateway = TestGateway::start_with(Setup {
        budget: budget.clone(),
        ..Setup::default()
    })
    .await;
    let (status, message) = raw_call_stalling_after(
        gateway.addr,
        "/telemetrygateway.v1.TelemeteryGatewayService/RecordEvents",
        message_header(80 * 1024 * 1024),
    )
    .await;
    assert_eq!(status, "8", "ResourceExhausted: {message}");
    assert!(
        message.contains("TELEMETRY_GATEWAY_MAX_METADATA_BYTES"),
        "{message}"
    );
    assert_eq!(budget.used(), 0);
}

#[tokio::test]
async fn compressed_payloads_reserve_their_decoded_size_and_are_answered() {
    let events = simple_events("gz", EVENTS_PER_PAYLOAD);
    let decoded = prost::Message::encoded_len(&events_message(events.clone()));
    // The decoded payload's cost and its decompressed copy: room for it once, not twice.
    let cost = request_cost(&events_message(events.clone()), metadata_json_len("gz"))
        .expect("a valid message")
        + decoded;
    let budget =
        InflightBudget::new(cost * 3 / 2 * 4 / 3, Duration::from_millis(300)).with_limits(Limits {
            connection_share_percent: 100,
            ..Limits::default()
        });
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start_with(Setup {
        sink: sink.clone(),
        budget: budget.clone(),
        ..Setup::default()
    })
    .await;
    let mut client = gateway
        .client()
        .await
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let responses = telemetry_gateway_testkit::record_events(
        &mut client,
        vec![
            metadata_message(unlicensed_metadata("gz")),
            events_message(events.clone()),
            events_message(simple_events("gz-again", EVENTS_PER_PAYLOAD)),
        ],
    )
    .await
    .expect("admitted one after the other");
    assert_eq!(
        responses
            .iter()
            .map(|r| r.succeeded_events.len())
            .collect::<Vec<_>>(),
        [EVENTS_PER_PAYLOAD, EVENTS_PER_PAYLOAD]
    );
    assert_eq!(budget.used(), 0);
}

#[tokio::test]
async fn a_unary_call_carrying_a_second_message_is_refused() {
    let budget = InflightBudget::new(64 * 1024 * 1024, Duration::from_millis(300));
    let gateway = TestGateway::start_with(Setup {
        budget: budget.clone(),
        ..Setup::default()
    })
    .await;
    let mut two = message_header(0);
    two.extend(message_header(0));
    let (status, message) = raw_call_stalling_after(
        gateway.addr,
        "/telemetrygateway.v1.TelemeteryGatewayService/RecordEvent",
        two,
    )
    .await;
    assert_eq!(status, "3", "InvalidArgument: {message}");
    assert_eq!(budget.used(), 0);
}
