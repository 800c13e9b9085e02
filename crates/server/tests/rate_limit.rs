//! The optional per-sender rate limit (ours: `docs/compatibility.md` §10), over a real socket. The
//! limits are slow enough (one event per second) that no refill happens while a test runs.

mod support;

use std::num::NonZeroU32;
use std::sync::Arc;

use telemetry_gateway_proto::v1::telemetery_gateway_service_client::TelemeteryGatewayServiceClient;
use telemetry_gateway_proto::v1::{RecordEventRequest, RecordEventsRequest, RecordEventsResponse};
use telemetry_gateway_server::error::RETRY_PUSHBACK_TRAILER;
use telemetry_gateway_server::{RateLimit, RateLimiter};
use telemetry_gateway_testkit::RecordingSink;
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{
    managed_metadata, simple_event, simple_events, unlicensed_metadata,
};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use support::{AllowAll, Setup, TestGateway};

/// One event per second, ten at once.
fn one_per_second_burst_ten() -> RateLimiter {
    let limit = RateLimit::new(
        NonZeroU32::new(1).expect("non-zero"),
        NonZeroU32::new(10).expect("non-zero"),
    );
    RateLimiter::new(limit)
}

async fn limited_gateway(sink: Arc<RecordingSink>) -> TestGateway {
    TestGateway::start_with(Setup {
        sink,
        managed: Arc::new(AllowAll),
        rate_limiter: Some(one_per_second_burst_ten()),
        ..Setup::default()
    })
    .await
}

/// Sends `messages` on one stream and collects the responses and, if the stream ended with
/// one, the error status.
async fn stream(
    client: &mut TelemeteryGatewayServiceClient<Channel>,
    messages: Vec<RecordEventsRequest>,
) -> (Vec<RecordEventsResponse>, Option<Status>) {
    let mut inbound = match client
        .record_events(Request::new(tokio_stream::iter(messages)))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), Some(status)),
    };
    let mut responses = Vec::new();
    loop {
        match inbound.message().await {
            Ok(Some(response)) => responses.push(response),
            Ok(None) => return (responses, None),
            Err(status) => return (responses, Some(status)),
        }
    }
}

fn acknowledged(responses: &[RecordEventsResponse]) -> Vec<usize> {
    responses.iter().map(|r| r.succeeded_events.len()).collect()
}

fn delivered_ids(sink: &RecordingSink) -> Vec<String> {
    sink.delivered().into_iter().map(|event| event.id).collect()
}

fn retry_pushback_ms(status: &Status) -> u64 {
    status
        .metadata()
        .get(RETRY_PUSHBACK_TRAILER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("a retry pushback trailer in milliseconds")
}

/// A refusal as a sender sees it, for inline snapshots; the retry delay, which depends on the
/// clock, is left out (`retry_pushback_ms` checks it).
fn refusal(status: &Status) -> String {
    let message = status.message();
    let message = match message.split_once("retry in ") {
        Some((before, _)) => format!("{before}retry in [delay]"),
        None => message.to_string(),
    };
    format!("{:?}: {message}", status.code())
}

#[tokio::test]
async fn a_sender_within_its_limit_is_acknowledged() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = limited_gateway(sink.clone()).await;
    let (responses, error) = stream(
        &mut gateway.client().await,
        vec![
            metadata_message(unlicensed_metadata("within")),
            events_message(simple_events("a", 6)),
            events_message(simple_events("b", 4)),
        ],
    )
    .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(acknowledged(&responses), [6, 4]);
    assert_eq!(sink.delivered().len(), 10);
}

#[tokio::test]
async fn a_sender_over_its_limit_is_refused_after_its_earlier_payloads_are_answered() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = limited_gateway(sink.clone()).await;
    let (responses, error) = stream(
        &mut gateway.client().await,
        vec![
            metadata_message(unlicensed_metadata("greedy")),
            events_message(simple_events("ok", 6)),
            events_message(simple_events("also-ok", 4)),
            events_message(simple_events("refused", 10)),
            events_message(simple_events("never-read", 1)),
        ],
    )
    .await;
    assert_eq!(acknowledged(&responses), [6, 4]);
    let status = error.expect("the stream ends with the refusal");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().starts_with(
            "rate limit of 1 events per second exceeded for unlicensed instance greedy; retry in"
        ),
        "{}",
        status.message()
    );
    let pushback = retry_pushback_ms(&status);
    assert!(
        (1000..=10_000).contains(&pushback),
        "ten tokens at one per second: {pushback} ms"
    );
    insta::assert_snapshot!(refusal(&status), @"ResourceExhausted: rate limit of 1 events per second exceeded for unlicensed instance greedy; retry in [delay]");
    let delivered = delivered_ids(&sink);
    assert_eq!(delivered.len(), 10);
    assert!(
        delivered
            .iter()
            .all(|id| !id.starts_with("refused") && !id.starts_with("never-read")),
        "nothing of the refused payload is published: {delivered:?}"
    );
}

#[tokio::test]
async fn the_limit_holds_across_streams_of_one_sender() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = limited_gateway(sink.clone()).await;
    let mut client = gateway.client().await;
    let (responses, error) = stream(
        &mut client,
        vec![
            metadata_message(unlicensed_metadata("reconnects")),
            events_message(simple_events("first", 10)),
        ],
    )
    .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(acknowledged(&responses), [10]);
    let (responses, error) = stream(
        &mut client,
        vec![
            metadata_message(unlicensed_metadata("reconnects")),
            events_message(simple_events("second", 1)),
        ],
    )
    .await;
    assert!(responses.is_empty());
    assert_eq!(
        error.map(|status| status.code()),
        Some(Code::ResourceExhausted)
    );
    assert_eq!(sink.delivered().len(), 10);
}

#[tokio::test]
async fn another_sender_is_unaffected() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = limited_gateway(sink.clone()).await;
    let mut client = gateway.client().await;
    let (_, error) = stream(
        &mut client,
        vec![
            metadata_message(unlicensed_metadata("noisy")),
            events_message(simple_events("noisy", 10)),
            events_message(simple_events("noisy-more", 10)),
        ],
    )
    .await;
    assert_eq!(
        error.map(|status| status.code()),
        Some(Code::ResourceExhausted)
    );
    let (responses, error) = stream(
        &mut client,
        vec![
            metadata_message(unlicensed_metadata("quiet")),
            events_message(simple_events("quiet", 10)),
        ],
    )
    .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(acknowledged(&responses), [10]);
    assert_eq!(sink.delivered().len(), 20);
}

#[tokio::test]
async fn unary_calls_of_a_managed_service_are_limited_too() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = limited_gateway(sink.clone()).await;
    let mut client = gateway.client().await;
    for i in 0..10 {
        client
            .record_event(RecordEventRequest {
                metadata: Some(managed_metadata("chatty")),
                event: Some(simple_event(format!("unary-{i}"))),
            })
            .await
            .expect("within the burst");
    }
    let status = client
        .record_event(RecordEventRequest {
            metadata: Some(managed_metadata("chatty")),
            event: Some(simple_event("unary-refused")),
        })
        .await
        .expect_err("over the limit");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("for service chatty"),
        "{}",
        status.message()
    );
    assert!(retry_pushback_ms(&status) >= 1000);
    insta::assert_snapshot!(refusal(&status), @"ResourceExhausted: rate limit of 1 events per second exceeded for service chatty; retry in [delay]");
    assert_eq!(sink.delivered().len(), 10);
}

#[tokio::test]
async fn without_a_rate_limiter_nothing_is_limited() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start(sink.clone()).await;
    let (responses, error) = stream(
        &mut gateway.client().await,
        vec![
            metadata_message(unlicensed_metadata("unlimited")),
            events_message(simple_events("a", 1000)),
            events_message(simple_events("b", 1000)),
        ],
    )
    .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(acknowledged(&responses), [1000, 1000]);
}
