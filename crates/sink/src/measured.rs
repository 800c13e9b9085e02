//! A sink wrapper that measures publish latency and outcomes per backend.

use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};

use crate::{EventSink, FailureCause, PreparedEvent, PublishOutcome, SinkError};

/// The meter name of the sink instruments.
pub const METER_NAME: &str = "telemetry-gateway/sink";

/// Bucket boundaries for publish latency in seconds: 1 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Instruments shared by every measured sink.
#[derive(Clone, Debug)]
pub struct SinkMetrics {
    duration: Histogram<f64>,
    events: Counter<u64>,
    failures: Counter<u64>,
}

impl SinkMetrics {
    /// Instruments from the global meter provider.
    pub fn global() -> SinkMetrics {
        SinkMetrics::new(&opentelemetry::global::meter(METER_NAME))
    }

    /// Instruments from `meter`.
    pub fn new(meter: &Meter) -> SinkMetrics {
        SinkMetrics {
            duration: meter
                .f64_histogram("telemetry-gateway.sink.publish_duration")
                .with_description("Time a sink took to hand off one batch of events")
                .with_unit("s")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            events: meter
                .u64_counter("telemetry-gateway.sink.events")
                .with_description(
                    "Events handed to a sink, by outcome (delivered, retryable, permanent)",
                )
                .build(),
            failures: meter
                .u64_counter("telemetry-gateway.sink.failures")
                .with_description(
                    "Events a sink did not deliver, by outcome (retryable, permanent) and cause",
                )
                .build(),
        }
    }
}

/// Wraps a sink, recording `telemetry-gateway.sink.publish_duration`,
/// `telemetry-gateway.sink.events` and `telemetry-gateway.sink.failures` with the attribute
/// `sink` = its name (and `outcome`, `cause` on the counters).
pub struct Measured<S> {
    inner: S,
    metrics: SinkMetrics,
    sink: KeyValue,
}

impl<S: EventSink> Measured<S> {
    /// Measures `inner`.
    pub fn new(inner: S, metrics: SinkMetrics) -> Measured<S> {
        let sink = KeyValue::new("sink", inner.name());
        Measured {
            inner,
            metrics,
            sink,
        }
    }

    /// Runs one publish call of the inner sink and records how long it took and its outcomes.
    async fn measure(
        &self,
        publish: impl Future<Output = Vec<PublishOutcome>>,
    ) -> Vec<PublishOutcome> {
        let started = Instant::now();
        let outcomes = publish.await;
        self.metrics.duration.record(
            started.elapsed().as_secs_f64(),
            std::slice::from_ref(&self.sink),
        );
        let tally = Tally::of(&outcomes);
        for (outcome, count) in [
            ("delivered", tally.delivered),
            ("retryable", tally.failed[0].iter().sum()),
            ("permanent", tally.failed[1].iter().sum()),
        ] {
            if count > 0 {
                self.metrics.events.add(
                    count,
                    &[self.sink.clone(), KeyValue::new("outcome", outcome)],
                );
            }
        }
        for (outcome, counts) in ["retryable", "permanent"].into_iter().zip(&tally.failed) {
            for (cause, &count) in FailureCause::ALL.iter().zip(counts) {
                if count > 0 {
                    self.metrics.failures.add(
                        count,
                        &[
                            self.sink.clone(),
                            KeyValue::new("outcome", outcome),
                            KeyValue::new("cause", cause.as_str()),
                        ],
                    );
                }
            }
        }
        outcomes
    }
}

/// One batch's outcomes, counted: delivered, and failures per cause (index of
/// [`FailureCause::ALL`]), retryable (`[0]`) and permanent (`[1]`).
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    delivered: u64,
    failed: [[u64; FailureCause::ALL.len()]; 2],
}

impl Tally {
    fn of(outcomes: &[PublishOutcome]) -> Tally {
        let mut tally = Tally::default();
        for outcome in outcomes {
            match outcome {
                PublishOutcome::Delivered => tally.delivered += 1,
                PublishOutcome::Retryable(failure) => tally.failed[0][failure.cause as usize] += 1,
                PublishOutcome::Permanent(failure) => tally.failed[1][failure.cause as usize] += 1,
            }
        }
        tally
    }
}

#[async_trait]
impl<S: EventSink> EventSink for Measured<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn reads_attributes(&self) -> bool {
        self.inner.reads_attributes()
    }

    async fn publish(&self, events: &[PreparedEvent]) -> Vec<PublishOutcome> {
        self.measure(self.inner.publish(events)).await
    }

    async fn publish_ndjson(
        &self,
        events: &[PreparedEvent],
        ndjson: &Bytes,
    ) -> Vec<PublishOutcome> {
        self.measure(self.inner.publish_ndjson(events, ndjson))
            .await
    }

    async fn health(&self) -> Result<(), SinkError> {
        self.inner.health().await
    }

    async fn shutdown(&self) -> Result<(), SinkError> {
        self.inner.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_tallied_by_outcome_and_cause() {
        let outcomes = [
            PublishOutcome::Delivered,
            PublishOutcome::retryable(FailureCause::Timeout, "slow"),
            PublishOutcome::retryable(FailureCause::Timeout, "slow again"),
            PublishOutcome::permanent(FailureCause::Rejected, "bad row"),
            PublishOutcome::retryable(FailureCause::Other, "?"),
            PublishOutcome::Delivered,
        ];
        let tally = Tally::of(&outcomes);
        let at = |cause: FailureCause| {
            FailureCause::ALL
                .iter()
                .position(|c| *c == cause)
                .expect("every cause is in ALL")
        };
        let mut failed = [[0; FailureCause::ALL.len()]; 2];
        failed[0][at(FailureCause::Timeout)] = 2;
        failed[0][at(FailureCause::Other)] = 1;
        failed[1][at(FailureCause::Rejected)] = 1;
        assert_eq!(
            tally,
            Tally {
                delivered: 2,
                failed
            }
        );
    }
}
