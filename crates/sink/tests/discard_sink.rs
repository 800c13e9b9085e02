//! The discard sink: reports delivery, keeps nothing, counts what it dropped.

mod common;

use telemetry_gateway_sink::{DiscardSink, EventSink, PublishOutcome};

use common::events;

#[tokio::test]
async fn every_event_is_reported_delivered() {
    let outcomes = DiscardSink::new().publish(&events("discard", 4)).await;
    assert_eq!(outcomes, vec![PublishOutcome::Delivered; 4]);
}

#[tokio::test]
async fn counts_discarded_events_and_payload_bytes() {
    let sink = DiscardSink::new();
    let first = events("first", 2);
    let second = events("second", 3);
    sink.publish(&first).await;
    sink.publish(&second).await;
    sink.publish(&[]).await;

    let bytes: usize = first
        .iter()
        .chain(&second)
        .map(|event| event.payload.len())
        .sum();
    assert_eq!(sink.events(), 5);
    assert_eq!(sink.bytes(), bytes as u64);
}

#[tokio::test]
async fn is_always_healthy() {
    assert!(DiscardSink::new().health().await.is_ok());
}

#[test]
fn names_itself_discard() {
    assert_eq!(DiscardSink::new().name(), "discard");
}
