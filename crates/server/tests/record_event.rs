//! The unary RecordEvent (`docs/compatibility.md` §3), over a real socket.

mod support;

use std::sync::Arc;

use telemetry_gateway_proto::v1::{RecordEventRequest, RecordEventsRequestMetadata};
use telemetry_gateway_sink::{FailureCause, PublishOutcome};
use telemetry_gateway_testkit::RecordingSink;
use telemetry_gateway_testkit::events::{managed_metadata, simple_event, unlicensed_metadata};
use tonic::Code;

use support::{AllowAll, Setup, TestGateway, payload_json};

/// Calls `RecordEvent` once.
async fn send(
    gateway: &TestGateway,
    metadata: Option<RecordEventsRequestMetadata>,
    event: Option<telemetry_gateway_proto::v1::Event>,
) -> Result<(), tonic::Status> {
    gateway
        .client()
        .await
        .record_event(RecordEventRequest { metadata, event })
        .await
        .map(|_| ())
}

async fn managed_gateway(sink: Arc<RecordingSink>) -> TestGateway {
    TestGateway::start_with(Setup {
        sink,
        managed: Arc::new(AllowAll),
        ..Setup::default()
    })
    .await
}

#[tokio::test]
async fn an_event_from_a_managed_service_is_published_with_its_service_id() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = managed_gateway(sink.clone()).await;
    let mut event = simple_event("unary-1");
    event
        .parameters
        .as_mut()
        .expect("parameters")
        .legacy_metadata
        .insert("old".into(), 7);
    send(&gateway, Some(managed_metadata("my-service")), Some(event))
        .await
        .expect("published");
    let delivered = sink.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].attributes["publisher.source"], "my-service");
    let payload = payload_json(&delivered[0]);
    assert_eq!(
        payload["event"]["parameters"]["metadata"]["old"], 7,
        "ours: the unary path migrates legacy metadata too"
    );
    assert_eq!(
        payload["metadata"]["identifier"]["managedService"]["serviceId"],
        "my-service"
    );
    assert_eq!(
        payload["metadata"]["identifier"]["managedService"]["serviceEnvironment"],
        "dev"
    );
}

#[tokio::test]
async fn the_event_is_required_and_checked_first() {
    let gateway = managed_gateway(Arc::new(RecordingSink::new())).await;
    let status = send(&gateway, None, None).await.expect_err("no event");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "event is required");
}

#[tokio::test]
async fn instance_identifiers_are_unimplemented() {
    let gateway = managed_gateway(Arc::new(RecordingSink::new())).await;
    for metadata in [
        Some(unlicensed_metadata("instance")),
        Some(RecordEventsRequestMetadata::default()),
        None,
    ] {
        let status = send(&gateway, metadata, Some(simple_event("x")))
            .await
            .expect_err("only managed services");
        assert_eq!(status.code(), Code::Unimplemented);
        assert_eq!(status.message(), "unsupported identifier type");
    }
}

#[tokio::test]
async fn a_managed_service_needs_a_service_id() {
    let gateway = managed_gateway(Arc::new(RecordingSink::new())).await;
    let status = send(
        &gateway,
        Some(managed_metadata("")),
        Some(simple_event("x")),
    )
    .await
    .expect_err("no service ID");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "service_id is required for managed services"
    );
}

#[tokio::test]
async fn without_sams_configuration_managed_calls_are_unauthenticated() {
    let gateway = TestGateway::start(Arc::new(RecordingSink::new())).await;
    let status = send(
        &gateway,
        Some(managed_metadata("my-service")),
        Some(simple_event("x")),
    )
    .await
    .expect_err("SAMS not configured");
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn an_invalid_event_is_invalid_argument_and_not_published() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = managed_gateway(sink.clone()).await;
    let mut event = simple_event("bad");
    event.feature = "Bad".into();
    let status = send(&gateway, Some(managed_metadata("my-service")), Some(event))
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "invalid event: invalid event 'feature' or 'action': 'feature' must start with a \
         lowercase letter and contain only letters, dashes, and dots"
    );
    assert!(sink.published().is_empty());
}

#[tokio::test]
async fn a_publish_failure_is_internal() {
    let sink = Arc::new(RecordingSink::with_outcome(|_| {
        PublishOutcome::retryable(FailureCause::Unavailable, "topic unavailable")
    }));
    let gateway = managed_gateway(sink).await;
    let status = send(
        &gateway,
        Some(managed_metadata("my-service")),
        Some(simple_event("x")),
    )
    .await
    .expect_err("publish fails");
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(
        status.message(),
        "failed to publish event: topic unavailable"
    );
}
