//! Several sinks at once (for example Pub/Sub and BigQuery during a migration).
//!
//! Every event goes to every sink, concurrently. An event is `Delivered` only when every sink
//! delivered it; otherwise the sender retries it, and sinks that already delivered it see it
//! again (at-least-once delivery; downstream de-duplicates by event ID).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::join_all;

use crate::{EventSink, FailureCause, PreparedEvent, PublishFailure, PublishOutcome, SinkError};

/// Delivers each batch to all of its sinks.
pub struct FanoutSink {
    sinks: Vec<Arc<dyn EventSink>>,
}

impl FanoutSink {
    /// Fans out to `sinks`, which must not be empty.
    pub fn new(sinks: Vec<Arc<dyn EventSink>>) -> FanoutSink {
        assert!(!sinks.is_empty(), "a fan-out needs at least one sink");
        FanoutSink { sinks }
    }

    /// Each event's outcome from every sink's outcomes (`per_sink`, in the sinks' order).
    fn combine(&self, events: usize, per_sink: &[Vec<PublishOutcome>]) -> Vec<PublishOutcome> {
        (0..events)
            .map(|i| {
                combine_outcomes(self.sinks.iter().zip(per_sink).map(|(sink, outcomes)| {
                    const MISSING: &PublishOutcome = &PublishOutcome::Retryable(PublishFailure {
                        cause: FailureCause::Other,
                        message: String::new(),
                    });
                    (sink.name(), outcomes.get(i).unwrap_or(MISSING))
                }))
            })
            .collect()
    }
}

/// Combines one event's outcomes from several sinks: any retryable failure makes the event
/// retryable (a retry may succeed everywhere); otherwise any permanent failure is permanent.
/// The combined cause is that of the first failure of the winning kind.
pub fn combine_outcomes<'a>(
    outcomes: impl IntoIterator<Item = (&'a str, &'a PublishOutcome)>,
) -> PublishOutcome {
    let mut retryable = Vec::new();
    let mut permanent = Vec::new();
    let (mut retryable_cause, mut permanent_cause) = (None, None);
    for (sink, outcome) in outcomes {
        match outcome {
            PublishOutcome::Delivered => {}
            PublishOutcome::Retryable(failure) => {
                retryable_cause.get_or_insert(failure.cause);
                retryable.push(format!("{sink}: {failure}"));
            }
            PublishOutcome::Permanent(failure) => {
                permanent_cause.get_or_insert(failure.cause);
                permanent.push(format!("{sink}: {failure}"));
            }
        }
    }
    if let Some(cause) = retryable_cause {
        retryable.extend(permanent);
        PublishOutcome::retryable(cause, retryable.join("; "))
    } else if let Some(cause) = permanent_cause {
        PublishOutcome::permanent(cause, permanent.join("; "))
    } else {
        PublishOutcome::Delivered
    }
}

#[async_trait]
impl EventSink for FanoutSink {
    fn name(&self) -> &'static str {
        "fanout"
    }

    fn describe(&self) -> String {
        let parts: Vec<String> = self.sinks.iter().map(|sink| sink.describe()).collect();
        format!("all of: {}", parts.join("; "))
    }

    fn reads_attributes(&self) -> bool {
        self.sinks.iter().any(|sink| sink.reads_attributes())
    }

    async fn publish(&self, events: &[PreparedEvent]) -> Vec<PublishOutcome> {
        let per_sink = join_all(self.sinks.iter().map(|sink| sink.publish(events))).await;
        self.combine(events.len(), &per_sink)
    }

    async fn publish_ndjson(
        &self,
        events: &[PreparedEvent],
        ndjson: &Bytes,
    ) -> Vec<PublishOutcome> {
        let per_sink = join_all(
            self.sinks
                .iter()
                .map(|sink| sink.publish_ndjson(events, ndjson)),
        )
        .await;
        self.combine(events.len(), &per_sink)
    }

    async fn health(&self) -> Result<(), SinkError> {
        for result in join_all(self.sinks.iter().map(|sink| sink.health())).await {
            result?;
        }
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), SinkError> {
        let mut first_error = None;
        for result in join_all(self.sinks.iter().map(|sink| sink.shutdown())).await {
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{Measured, SinkMetrics};

    /// Counts how it was called: `publish`, or `publish_ndjson`.
    #[derive(Default)]
    struct Probe {
        publish: AtomicUsize,
        publish_ndjson: AtomicUsize,
    }

    #[async_trait]
    impl EventSink for Probe {
        fn name(&self) -> &'static str {
            "probe"
        }

        async fn publish(&self, events: &[PreparedEvent]) -> Vec<PublishOutcome> {
            self.publish.fetch_add(1, Ordering::SeqCst);
            vec![PublishOutcome::Delivered; events.len()]
        }

        async fn publish_ndjson(
            &self,
            events: &[PreparedEvent],
            _ndjson: &Bytes,
        ) -> Vec<PublishOutcome> {
            self.publish_ndjson.fetch_add(1, Ordering::SeqCst);
            vec![PublishOutcome::Delivered; events.len()]
        }

        async fn health(&self) -> Result<(), SinkError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_ndjson_text_reaches_every_sink_through_measured_and_arc() {
        let probes = [Arc::new(Probe::default()), Arc::new(Probe::default())];
        let metrics = SinkMetrics::new(&opentelemetry::global::meter("test"));
        let sinks: Vec<Arc<dyn EventSink>> = probes
            .iter()
            .map(|probe| {
                Arc::new(Measured::new(Arc::clone(probe), metrics.clone())) as Arc<dyn EventSink>
            })
            .collect();
        let fanout: Arc<dyn EventSink> = Arc::new(FanoutSink::new(sinks));
        let events = [crate::PreparedEvent::builder("a").payload("{}").build()];

        let outcomes = fanout
            .publish_ndjson(&events, &Bytes::from_static(b"{}\n"))
            .await;

        assert_eq!(outcomes, vec![PublishOutcome::Delivered]);
        for probe in &probes {
            assert_eq!(probe.publish_ndjson.load(Ordering::SeqCst), 1);
            assert_eq!(probe.publish.load(Ordering::SeqCst), 0);
        }
    }

    #[test]
    fn an_event_is_delivered_only_when_every_sink_delivered_it() {
        let delivered = PublishOutcome::Delivered;
        let retry = PublishOutcome::retryable(FailureCause::Timeout, "timeout");
        let reject = PublishOutcome::permanent(FailureCause::Rejected, "invalid row");
        assert_eq!(
            combine_outcomes([("a", &delivered), ("b", &delivered)]),
            PublishOutcome::Delivered
        );
        assert_eq!(
            combine_outcomes([("a", &delivered), ("b", &retry)]),
            PublishOutcome::retryable(FailureCause::Timeout, "b: timeout")
        );
        assert_eq!(
            combine_outcomes([("a", &reject), ("b", &delivered)]),
            PublishOutcome::permanent(FailureCause::Rejected, "a: invalid row")
        );
        assert_eq!(
            combine_outcomes([("a", &reject), ("b", &retry)]),
            PublishOutcome::retryable(FailureCause::Timeout, "b: timeout; a: invalid row")
        );
    }
}
