//! The log sink: every event is a debug `Publish` line and counts as delivered.

mod common;

use telemetry_gateway_sink::{EventSink, LogSink, PublishOutcome};

use common::events;

#[tokio::test]
async fn every_event_is_delivered() {
    let outcomes = LogSink::new().publish(&events("log", 3)).await;
    assert_eq!(outcomes, vec![PublishOutcome::Delivered; 3]);
}

#[tokio::test]
async fn empty_batch_has_no_outcomes() {
    assert!(LogSink::new().publish(&[]).await.is_empty());
}

#[tokio::test]
async fn is_always_healthy() {
    assert!(LogSink::new().health().await.is_ok());
}

#[test]
fn names_and_describes_itself() {
    assert_eq!(LogSink::new().name(), "log");
    assert_eq!(
        LogSink::new().describe(),
        "the log (debug level \"Publish\" lines)"
    );
}
