//! The discard sink: a benchmarking aid that throws events away.
//!
//! **NOT FOR PRODUCTION.** It reports every event as delivered and keeps none of them: senders
//! delete what this sink acknowledges, so every event it receives is lost for good. Use it only to
//! measure the gateway without a backend in the way.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::{EventSink, PreparedEvent, PublishOutcome, SinkError};

/// Drops every event and reports it [`PublishOutcome::Delivered`]; counts what it dropped.
///
/// **Acknowledged events are lost.** For benchmarks only, never for production.
#[derive(Debug, Default)]
pub struct DiscardSink {
    events: AtomicU64,
    bytes: AtomicU64,
}

impl DiscardSink {
    /// A discard sink with zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many events were discarded so far.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// How many payload bytes were discarded so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl EventSink for DiscardSink {
    fn name(&self) -> &'static str {
        "discard"
    }

    async fn publish(&self, events: &[PreparedEvent]) -> Vec<PublishOutcome> {
        let bytes: usize = events.iter().map(|event| event.payload.len()).sum();
        self.events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        vec![PublishOutcome::Delivered; events.len()]
    }

    /// Only the payloads' sizes are counted.
    fn reads_attributes(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        "nowhere: events are discarded (benchmarking only, acknowledged events are lost)"
            .to_string()
    }

    async fn health(&self) -> Result<(), SinkError> {
        Ok(())
    }
}
