//! A sink wrapper that measures publish latency and outcomes per backend.

use std::time::Instant;

use async_trait::async_trait;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};

use crate::{EventSink, PreparedEvent, PublishOutcome, SinkError};

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
        }
    }
}

/// Wraps a sink, recording `telemetry-gateway.sink.publish_duration` and
/// `telemetry-gateway.sink.events` with the attribute `sink` = its name.
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
}

#[async_trait]
impl<S: EventSink> EventSink for Measured<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn publish(&self, events: &[PreparedEvent]) -> Vec<PublishOutcome> {
        let started = Instant::now();
        let outcomes = self.inner.publish(events).await;
        self.metrics.duration.record(
            started.elapsed().as_secs_f64(),
            std::slice::from_ref(&self.sink),
        );
        let (mut delivered, mut retryable, mut permanent) = (0u64, 0u64, 0u64);
        for outcome in &outcomes {
            match outcome {
                PublishOutcome::Delivered => delivered += 1,
                PublishOutcome::Retryable(_) => retryable += 1,
                PublishOutcome::Permanent(_) => permanent += 1,
            }
        }
        for (outcome, count) in [
            ("delivered", delivered),
            ("retryable", retryable),
            ("permanent", permanent),
        ] {
            if count > 0 {
                self.metrics.events.add(
                    count,
                    &[self.sink.clone(), KeyValue::new("outcome", outcome)],
                );
            }
        }
        outcomes
    }

    async fn health(&self) -> Result<(), SinkError> {
        self.inner.health().await
    }

    async fn shutdown(&self) -> Result<(), SinkError> {
        self.inner.shutdown().await
    }
}
