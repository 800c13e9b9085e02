//! The memory budget over real gRPC: payloads beyond it wait, then get `ResourceExhausted` with
//! a retry hint; nothing of a refused payload reaches the sink; room frees once payloads are
//! answered; `/-/ready` reports the exhaustion.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Setup, TestGateway};
use telemetry_gateway_server::InflightBudget;
use telemetry_gateway_server::budget::WEIGHT;
use telemetry_gateway_server::error::RETRY_PUSHBACK_TRAILER;
use telemetry_gateway_testkit::RecordingSink;
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{simple_events, unlicensed_metadata};
use telemetry_gateway_testkit::http::get;
use tonic::Code;

const EVENTS_PER_PAYLOAD: usize = 2_000;

/// A budget with room for one payload of [`EVENTS_PER_PAYLOAD`] events, not two.
async fn gateway(sink: Arc<RecordingSink>) -> TestGateway {
    let wire = prost::Message::encoded_len(&events_message(simple_events("x", EVENTS_PER_PAYLOAD)));
    TestGateway::start_with(Setup {
        sink,
        budget: InflightBudget::new(wire * WEIGHT * 3 / 2, Duration::from_millis(300)),
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.in_progress() == 0 {
        assert!(
            Instant::now() < deadline,
            "the first payload never reached the sink"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

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

    // Room again: the refused sender's retry is acknowledged, and the gateway is ready.
    assert_eq!(
        get(gateway.addr, "/-/ready", None)
            .await
            .expect("served")
            .status,
        200
    );
    let retried = send(&gateway, "second").await.expect("room again");
    assert_eq!(retried[0].succeeded_events.len(), EVENTS_PER_PAYLOAD);
}

#[tokio::test]
async fn a_payload_larger_than_the_whole_budget_is_admitted_alone() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = gateway(sink.clone()).await;
    let mut client = gateway.client().await;
    // Five times the payload the budget is sized for.
    let responses = telemetry_gateway_testkit::record_events(
        &mut client,
        vec![
            metadata_message(unlicensed_metadata("big")),
            events_message(simple_events("big", 5 * EVENTS_PER_PAYLOAD)),
            events_message(simple_events("after", 10)),
        ],
    )
    .await
    .expect("admitted");
    assert_eq!(responses[0].succeeded_events.len(), 5 * EVENTS_PER_PAYLOAD);
    assert_eq!(responses[1].succeeded_events.len(), 10);
}

/// Sends a raw gRPC request whose body is `first` and then nothing, leaving the request open;
/// returns the response's `grpc-status` and `grpc-message` once the server ends it.
async fn raw_call_stalling_after(
    addr: std::net::SocketAddr,
    path: &str,
    first: Vec<u8>,
) -> (String, String) {
    use http_body_util::{BodyExt, StreamBody};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let (frames, receiver) = tokio::sync::mpsc::channel::<
        Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >(1);
    frames
        .send(Ok(http_body::Frame::data(bytes::Bytes::from(first))))
        .await
        .expect("the body is open");
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .expect("a valid request");
    let response = client.request(request).await.expect("the server answers");
    let (parts, body) = response.into_parts();
    // A refusal before any message is a trailers-only response; otherwise it is in the trailers.
    let header = |map: &http::HeaderMap, name: &str| {
        map.get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let (status, message) = match header(&parts.headers, "grpc-status") {
        Some(status) => (
            status,
            header(&parts.headers, "grpc-message").unwrap_or_default(),
        ),
        None => {
            let collected = body.collect().await.expect("the response body ends");
            let trailers = collected.trailers().cloned().unwrap_or_default();
            (
                header(&trailers, "grpc-status").unwrap_or_default(),
                header(&trailers, "grpc-message").unwrap_or_default(),
            )
        }
    };
    drop(frames);
    (status, message)
}

/// A gRPC message header: uncompressed, `len` bytes follow.
fn message_header(len: u32) -> Vec<u8> {
    let mut header = vec![0u8];
    header.extend_from_slice(&len.to_be_bytes());
    header
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
    // A header declaring 8 MiB (reserving 32 MiB), a few bytes, then silence.
    let mut first = message_header(8 * 1024 * 1024);
    first.extend_from_slice(&[0u8; 16]);
    let (status, message) = raw_call_stalling_after(
        gateway.addr,
        "/telemetrygateway.v1.TelemeteryGatewayService/RecordEvents",
        first,
    )
    .await;
    assert_eq!(status, "4", "DeadlineExceeded: {message}");
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
    assert!(message.contains("first%20message"), "{message}");
    assert_eq!(budget.used(), 0);
}

#[tokio::test]
async fn compressed_payloads_reserve_their_decoded_size_and_are_answered() {
    let events = simple_events("gz", EVENTS_PER_PAYLOAD);
    let decoded = prost::Message::encoded_len(&events_message(events.clone()));
    // Room for the decoded payload once, and far more than its compressed wire size.
    let budget = InflightBudget::new(decoded * WEIGHT * 3 / 2, Duration::from_millis(300));
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
