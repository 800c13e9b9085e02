//! A sink that records what it is given and answers what the test tells it to.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use telemetry_gateway_sink::{EventSink, PreparedEvent, PublishOutcome, SinkError};

type OutcomeFn = dyn Fn(&PreparedEvent) -> PublishOutcome + Send + Sync;

/// Records every published event; outcomes come from a test-supplied function.
pub struct RecordingSink {
    published: Mutex<Vec<PreparedEvent>>,
    batches: AtomicUsize,
    in_progress: AtomicUsize,
    outcome: Box<OutcomeFn>,
    delay: Option<Duration>,
    healthy: Mutex<Result<(), String>>,
}

impl RecordingSink {
    /// A sink that delivers everything.
    pub fn new() -> RecordingSink {
        RecordingSink::with_outcome(|_| PublishOutcome::Delivered)
    }

    /// A sink whose outcome for each event is `outcome(event)`.
    pub fn with_outcome(
        outcome: impl Fn(&PreparedEvent) -> PublishOutcome + Send + Sync + 'static,
    ) -> RecordingSink {
        RecordingSink {
            published: Mutex::new(Vec::new()),
            batches: AtomicUsize::new(0),
            in_progress: AtomicUsize::new(0),
            outcome: Box::new(outcome),
            delay: None,
            healthy: Mutex::new(Ok(())),
        }
    }

    /// Makes every publish take `delay` first (a slow downstream).
    pub fn with_delay(mut self, delay: Duration) -> RecordingSink {
        self.delay = Some(delay);
        self
    }

    /// Events whose outcome was `Delivered`, in publish order.
    pub fn delivered(&self) -> Vec<PreparedEvent> {
        self.published
            .lock()
            .map(|events| {
                events
                    .iter()
                    .filter(|event| (self.outcome)(event).is_delivered())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every event handed to the sink, whatever its outcome, in publish order.
    pub fn published(&self) -> Vec<PreparedEvent> {
        self.published.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// How many `publish` calls were made.
    pub fn batches(&self) -> usize {
        self.batches.load(Ordering::SeqCst)
    }

    /// How many `publish` calls have started and not yet returned.
    pub fn in_progress(&self) -> usize {
        self.in_progress.load(Ordering::SeqCst)
    }

    /// Sets what `health()` reports.
    pub fn set_health(&self, health: Result<(), String>) {
        if let Ok(mut current) = self.healthy.lock() {
            *current = health;
        }
    }
}

impl Default for RecordingSink {
    fn default() -> Self {
        RecordingSink::new()
    }
}

#[async_trait]
impl EventSink for RecordingSink {
    fn name(&self) -> &'static str {
        "recording"
    }

    async fn publish(&self, events: &[PreparedEvent]) -> Vec<PublishOutcome> {
        if let Some(delay) = self.delay {
            self.in_progress.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            self.in_progress.fetch_sub(1, Ordering::SeqCst);
        }
        self.batches.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut published) = self.published.lock() {
            published.extend(events.iter().cloned());
        }
        events.iter().map(|event| (self.outcome)(event)).collect()
    }

    async fn health(&self) -> Result<(), SinkError> {
        let health = self.healthy.lock().map(|h| h.clone()).unwrap_or(Ok(()));
        health.map_err(|message| SinkError::Unhealthy {
            sink: "recording",
            message,
        })
    }
}
