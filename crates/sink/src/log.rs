//! The log sink: the original gateway's "Pub/Sub disabled" mode.

use async_trait::async_trait;

use crate::{EventSink, PreparedEvent, PublishOutcome, SinkError};

/// Writes each event to the log at debug level as a `Publish` line with the fields `payload`
/// (the payload as text) and `attributes`, and nowhere else.
///
/// Useful for local development: the events are visible, but they are not stored, so an operator
/// who acknowledges events through this sink keeps only what the log pipeline keeps.
#[derive(Clone, Debug, Default)]
pub struct LogSink;

impl LogSink {
    /// A log sink.
    pub fn new() -> Self {
        LogSink
    }
}

#[async_trait]
impl EventSink for LogSink {
    fn name(&self) -> &'static str {
        "log"
    }

    async fn publish(&self, events: &[PreparedEvent]) -> Vec<PublishOutcome> {
        for event in events {
            // The original names the payload field `message`; in `tracing` that name is the
            // event's own message ("Publish"), and a second one would clobber it in JSON logs.
            tracing::debug!(
                payload = %String::from_utf8_lossy(&event.payload),
                attributes = ?event.attributes,
                "Publish"
            );
        }
        vec![PublishOutcome::Delivered; events.len()]
    }

    fn describe(&self) -> String {
        "the log (debug level \"Publish\" lines)".to_string()
    }

    async fn health(&self) -> Result<(), SinkError> {
        Ok(())
    }
}
