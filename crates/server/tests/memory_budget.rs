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
