//! The gateway's OpenTelemetry instruments: the original's, under their original names, and ours.
//!
//! Instruments come from a [`Meter`] handed in by the binary (which decides where metrics go:
//! Prometheus, OTLP, nowhere); [`Metrics::global`] uses the global meter provider, a no-op until
//! one is installed. `docs/metrics.md` lists every instrument; keep the two in step.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge, UpDownCounter};

use crate::budget::InflightBudget;
use crate::error::Counted;
#[cfg(doc)]
use crate::error::ServerError;
use crate::pipeline::{DropReason, RefusalReason, Summary};
use crate::rpc::metrics::RpcMetrics;

/// The original's meter name for the server's instruments.
pub const METER_NAME: &str = "cmd/telemetry-gateway/internal/server";

/// Bucket boundaries for message sizes in bytes: 256 B to 10 MB (Pub/Sub's request limit).
const SIZE_BUCKETS: &[f64] = &[
    256.0,
    1024.0,
    4096.0,
    16_384.0,
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    10_000_000.0,
];

/// Bucket boundaries for event counts per payload and per stream.
const COUNT_BUCKETS: &[f64] = &[
    0.0, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10_000.0,
];

/// At most this many managed services' IDs become `source` label values; later ones are
/// counted under [`OTHER_SOURCE`], so the number of time series stays bounded.
pub const MAX_SERVICE_SOURCE_LABELS: usize = 100;

/// A service ID longer than this is counted under [`OTHER_SOURCE`].
const MAX_SOURCE_LABEL_BYTES: usize = 64;

/// The `source` label of managed services beyond [`MAX_SERVICE_SOURCE_LABELS`].
pub const OTHER_SOURCE: &str = "other";

/// `source` label values that are not a sender's choice.
const FIXED_SOURCES: [&str; 3] = ["licensed_instance", "unlicensed_instance", "invalid"];

/// The gateway's instruments.
#[derive(Clone, Debug)]
pub struct Metrics {
    meter: Meter,
    /// The managed services' IDs admitted as `source` label values.
    service_sources: Arc<Mutex<HashSet<String>>>,
    total_length: Histogram<u64>,
    payload_length: Histogram<u64>,
    processed_events: Counter<u64>,
    record_event_processed: Counter<u64>,
    published_message_size: Histogram<u64>,
    events_dropped: Counter<u64>,
    auth_failures: Counter<u64>,
    payloads_refused: Counter<u64>,
    open_streams: UpDownCounter<i64>,
    open_connections: UpDownCounter<i64>,
    connections_closed: Counter<u64>,
    dead_letters_written: Counter<u64>,
    dead_letters_failed: Counter<u64>,
    rpc: RpcMetrics,
}

impl Metrics {
    /// Instruments from the global meter provider.
    pub fn global() -> Metrics {
        Metrics::new(&opentelemetry::global::meter(METER_NAME))
    }

    /// Instruments from `meter`.
    pub fn new(meter: &Meter) -> Metrics {
        Metrics {
            meter: meter.clone(),
            service_sources: Arc::default(),
            total_length: meter
                .u64_histogram("telemetry-gateway.record_events.total_length")
                .with_description("Total number of events in record_events requests")
                .with_boundaries(COUNT_BUCKETS.to_vec())
                .build(),
            payload_length: meter
                .u64_histogram("telemetry-gateway.record_events.payload_length")
                // The misspelling is the original's.
                .with_description("Number of events in indvidiual record_events request payloads")
                .with_boundaries(COUNT_BUCKETS.to_vec())
                .build(),
            processed_events: meter
                .u64_counter("telemetry-gateway.record_events.processed_events")
                .with_description("Number of events processed")
                .build(),
            record_event_processed: meter
                .u64_counter("telemetry-gateway.record_event.processed_events")
                .with_description("Number of RecordEvent calls processed")
                .build(),
            published_message_size: meter
                .u64_histogram("telemetry-gateway.pubsub.published_message_size")
                .with_description("Size of published messages in bytes")
                .with_unit("By")
                .with_boundaries(SIZE_BUCKETS.to_vec())
                .build(),
            events_dropped: meter
                .u64_counter("telemetry-gateway.events.dropped")
                .with_description(
                    "Events acknowledged without being published, by reason \
                     (invalid, oversized, policy, rejected)",
                )
                .build(),
            auth_failures: meter
                .u64_counter("telemetry-gateway.auth.failures")
                .with_description("Streams and calls refused because the sender's identity did not check out, by reason")
                .build(),
            payloads_refused: meter
                .u64_counter("telemetry-gateway.payloads.refused")
                .with_description("Payloads refused before processing, by reason (memory_budget, rate_limit)")
                .build(),
            open_streams: meter
                .i64_up_down_counter("telemetry-gateway.record_events.open_streams")
                .with_description("RecordEvents streams currently open")
                .build(),
            open_connections: meter
                .i64_up_down_counter("telemetry-gateway.connections.open")
                .with_description("Connections open on the gRPC port")
                .build(),
            connections_closed: meter
                .u64_counter("telemetry-gateway.connections.closed")
                .with_description(
                    "Connections the gateway closed before any HTTP, by reason \
                     (opening_timeout, address_limit)",
                )
                .build(),
            dead_letters_written: meter
                .u64_counter("telemetry-gateway.dead_letters.written")
                .with_description("Dead letters handed to the dead-letter destination, by reason")
                .build(),
            dead_letters_failed: meter
                .u64_counter("telemetry-gateway.dead_letters.failed")
                .with_description(
                    "Dead letters lost, by reason and cause (queue_full, destination, shut_down)",
                )
                .build(),
            rpc: RpcMetrics::new(meter),
        }
    }

    /// The `source` label for a sender: `source` itself when it is one of the fixed values or an
    /// admitted service ID, [`OTHER_SOURCE`] once [`MAX_SERVICE_SOURCE_LABELS`] service IDs
    /// are in use. Only authenticated senders reach the instruments with their service ID (a
    /// refused stream is `invalid`).
    pub fn source_label(&self, source: &str) -> KeyValue {
        if FIXED_SOURCES.contains(&source) {
            return KeyValue::new("source", source.to_string());
        }
        let mut admitted = self
            .service_sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let label = if admitted.contains(source) {
            source
        } else if admitted.len() < MAX_SERVICE_SOURCE_LABELS
            && source.len() <= MAX_SOURCE_LABEL_BYTES
        {
            admitted.insert(source.to_string());
            source
        } else {
            OTHER_SOURCE
        };
        KeyValue::new("source", label.to_string())
    }

    /// Reports the bytes reserved in `budget` and its limit, whenever metrics are collected.
    /// Keep the returned gauges for as long as they should be reported.
    pub fn observe_budget(&self, budget: &InflightBudget) -> [ObservableGauge<u64>; 2] {
        let used = budget.clone();
        let limit = budget.limit() as u64;
        [
            self.meter
                .u64_observable_gauge("telemetry-gateway.inflight.used")
                .with_description(
                    "Bytes of event payloads held against the memory budget (decoded cost)",
                )
                .with_unit("By")
                .with_callback(move |observer| observer.observe(used.used() as u64, &[]))
                .build(),
            self.meter
                .u64_observable_gauge("telemetry-gateway.inflight.limit")
                .with_description("The memory budget for event payloads in flight (0: none)")
                .with_unit("By")
                .with_callback(move |observer| observer.observe(limit, &[]))
                .build(),
        ]
    }

    /// The standard per-RPC instruments.
    pub fn rpc(&self) -> &RpcMetrics {
        &self.rpc
    }

    /// A stream opened; the guard counts it as open until dropped.
    pub fn stream_opened(&self) -> OpenCount {
        OpenCount::new(&self.open_streams)
    }

    /// A connection was accepted; the guard counts it as open until dropped.
    pub fn connection_opened(&self) -> OpenCount {
        OpenCount::new(&self.open_connections)
    }

    /// The gateway closed a connection before any HTTP, for `reason`.
    pub fn connection_closed(&self, reason: ClosedConnection) {
        self.connections_closed
            .add(1, &[KeyValue::new("reason", reason.as_str())]);
    }

    /// A `RecordEvents` stream ended: `total` events across its payloads.
    pub fn stream_ended(&self, total: usize, failed: bool, source: &str) {
        self.total_length.record(
            total as u64,
            &[KeyValue::new("error", failed), self.source_label(source)],
        );
    }

    /// The size of an event's published message, whether or not it turns out oversized.
    pub fn message_rendered(&self, bytes: usize) {
        self.published_message_size.record(bytes as u64, &[]);
    }

    /// A payload was processed.
    pub fn payload_processed(&self, summary: &Summary, source: &str) {
        let result = KeyValue::new("result", summary.result.as_str());
        let source_kv = self.source_label(source);
        self.payload_length.record(
            summary.submitted as u64,
            &[result.clone(), source_kv.clone()],
        );
        // Twice per payload, either count possibly zero (`docs/compatibility.md` §8).
        self.processed_events.add(
            summary.succeeded.len() as u64,
            &[
                KeyValue::new("succeeded", true),
                result.clone(),
                source_kv.clone(),
            ],
        );
        self.processed_events.add(
            summary.failed.len() as u64,
            &[KeyValue::new("succeeded", false), result, source_kv.clone()],
        );
        for reason in DropReason::ALL {
            let count = summary
                .dropped
                .iter()
                .filter(|d| d.reason == reason)
                .count();
            if count > 0 {
                self.events_dropped.add(
                    count as u64,
                    &[KeyValue::new("reason", reason.as_str()), source_kv.clone()],
                );
            }
        }
    }

    /// An event was dropped outside a payload summary (the unary call's oversized event).
    pub fn event_dropped(&self, reason: DropReason, source: &str) {
        self.events_dropped.add(
            1,
            &[
                KeyValue::new("reason", reason.as_str()),
                self.source_label(source),
            ],
        );
    }

    /// A unary `RecordEvent` call that got as far as publishing ended.
    pub fn record_event_processed(&self, failed: bool, source: &str) {
        self.record_event_processed.add(
            1,
            &[KeyValue::new("error", failed), self.source_label(source)],
        );
    }

    /// A refusal was decided: counts it where `crate::error` says (see [`ServerError::report`]).
    pub fn refusal(&self, counted: Counted) {
        match counted {
            Counted::AuthFailure(reason) => self
                .auth_failures
                .add(1, &[KeyValue::new("reason", reason)]),
            Counted::PayloadRefused(reason) => {
                self.payloads_refused
                    .add(1, &[KeyValue::new("reason", reason)]);
            }
        }
    }

    /// A dead letter reached its destination.
    pub fn dead_letter_written(&self, reason: RefusalReason) {
        self.dead_letters_written
            .add(1, &[KeyValue::new("reason", reason.code())]);
    }

    /// A dead letter was lost: `cause` is `queue_full`, `destination` or `shut_down`.
    pub fn dead_letter_failed(&self, reason: RefusalReason, cause: &'static str) {
        self.dead_letters_failed.add(
            1,
            &[
                KeyValue::new("reason", reason.code()),
                KeyValue::new("cause", cause),
            ],
        );
    }
}

/// Why the gateway closed a connection before any HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedConnection {
    /// It sent too little within the opening timeout.
    OpeningTimeout,
    /// Its IP address already had as many connections open as one address may.
    AddressLimit,
    /// It was still open at its maximum age and the grace after it.
    MaxAge,
}

impl ClosedConnection {
    /// The `reason` attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedConnection::OpeningTimeout => "opening_timeout",
            ClosedConnection::AddressLimit => "address_limit",
            ClosedConnection::MaxAge => "max_age",
        }
    }
}

/// Counts a stream or a connection as open until dropped.
#[derive(Debug)]
pub struct OpenCount {
    counter: UpDownCounter<i64>,
}

impl OpenCount {
    fn new(counter: &UpDownCounter<i64>) -> OpenCount {
        counter.add(1, &[]);
        OpenCount {
            counter: counter.clone(),
        }
    }
}

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.counter.add(-1, &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(metrics: &Metrics, source: &str) -> String {
        metrics.source_label(source).value.to_string()
    }

    #[test]
    fn service_ids_become_labels_up_to_a_bound_then_other() {
        let metrics = Metrics::new(&opentelemetry::global::meter("test"));
        for i in 0..MAX_SERVICE_SOURCE_LABELS {
            assert_eq!(label(&metrics, &format!("svc-{i}")), format!("svc-{i}"));
        }
        assert_eq!(label(&metrics, "one-too-many"), OTHER_SOURCE);
        assert_eq!(label(&metrics, "svc-0"), "svc-0", "admitted IDs stay");
        for fixed in FIXED_SOURCES {
            assert_eq!(label(&metrics, fixed), fixed);
        }
        let fresh = Metrics::new(&opentelemetry::global::meter("test"));
        assert_eq!(label(&fresh, &"x".repeat(65)), OTHER_SOURCE, "too long");
    }
}
