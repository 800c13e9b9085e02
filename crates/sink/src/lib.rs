//! Where events go once the gateway has accepted them.
//!
//! This crate owns the [`EventSink`] seam and its backends. A sink receives a batch of
//! [`PreparedEvent`]s (the exact payload bytes to deliver, their IDs and, for the sinks that read
//! them, their attributes) and returns one [`PublishOutcome`] per event, in the same order. The
//! gateway acknowledges an event to its sender only when the outcome is
//! [`PublishOutcome::Delivered`], so a sink must never report delivery before the event is
//! durably handed off.
//!
//! It knows nothing of gRPC, streams, senders or authentication.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

#[cfg(feature = "bigquery")]
pub mod bigquery;
mod builder;
pub mod discard;
pub mod fanout;
pub mod file;
pub mod log;
pub mod measured;
pub mod pubsub;

#[cfg(feature = "bigquery")]
pub use bigquery::{BigQuerySink, BigQuerySinkConfig};
pub use builder::PreparedEventBuilder;
pub use discard::DiscardSink;
pub use fanout::FanoutSink;
pub use file::{FileSink, FileSinkConfig};
pub use log::LogSink;
pub use measured::{Measured, SinkMetrics};
pub use pubsub::{PubSubSink, PubSubSinkConfig};

/// Message attributes, in key order (as published to Pub/Sub).
pub type Attributes = BTreeMap<String, String>;

/// An event rendered once, ready for every sink.
#[derive(Clone, Debug, PartialEq)]
pub struct PreparedEvent {
    /// The event ID chosen by the sender; the de-duplication key downstream.
    pub id: String,
    /// The event's feature, as sent.
    pub feature: String,
    /// The event's action, as sent.
    pub action: String,
    /// When the event happened, according to the sender.
    pub timestamp: prost_types::Timestamp,
    /// The compact JSON payload `{"event":...,"metadata":...}`, delivered as-is.
    pub payload: Bytes,
    /// The message attributes (`publisher.source`, `event.feature`, ...). Empty when no sink of
    /// the gateway reads them ([`EventSink::reads_attributes`]).
    pub attributes: Attributes,
}

/// What happened to one event handed to a sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Durably handed off: the event may be acknowledged.
    Delivered,
    /// Not delivered, but a later attempt may succeed (transport error, timeout, quota).
    Retryable(PublishFailure),
    /// Not delivered, and retrying the same event will not help (the backend rejected it).
    Permanent(PublishFailure),
}

/// Why an event was not delivered: a stable, low-cardinality cause for metrics (the `cause`
/// label of `telemetry-gateway.sink.failures`, see docs/operations.md) and the message for
/// people (logs, responses, dead letters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishFailure {
    /// The class of failure.
    pub cause: FailureCause,
    /// What went wrong, for people; it may contain backend details and is never a metric label.
    pub message: String,
}

impl fmt::Display for PublishFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The class of a publish failure. The set is closed and small so that it can label metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureCause {
    /// The backend did not answer in time.
    Timeout,
    /// The backend could not be reached or failed transiently (transport error, server error).
    Unavailable,
    /// The backend refused the event itself (BigQuery's `invalid` row errors).
    Rejected,
    /// The sink cannot write this event (not one NDJSON line, not encodable as a row, or a row
    /// too large for any request); the backend never saw it.
    Invalid,
    /// The destination table's schema does not match the gateway's rows.
    SchemaMismatch,
    /// Writing or syncing a local file failed.
    Io,
    /// The sink is shutting down or has shut down.
    ShutDown,
    /// The request was canceled before the sink answered (the sender went away).
    Canceled,
    /// Anything else (a backend answer the gateway cannot attribute).
    Other,
}

impl FailureCause {
    /// Every cause, in declaration order.
    pub const ALL: [FailureCause; 9] = [
        FailureCause::Timeout,
        FailureCause::Unavailable,
        FailureCause::Rejected,
        FailureCause::Invalid,
        FailureCause::SchemaMismatch,
        FailureCause::Io,
        FailureCause::ShutDown,
        FailureCause::Canceled,
        FailureCause::Other,
    ];

    /// The metric label value: `timeout`, `unavailable`, `rejected`, `invalid`,
    /// `schema_mismatch`, `io`, `shut_down`, `canceled` or `other`.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureCause::Timeout => "timeout",
            FailureCause::Unavailable => "unavailable",
            FailureCause::Rejected => "rejected",
            FailureCause::Invalid => "invalid",
            FailureCause::SchemaMismatch => "schema_mismatch",
            FailureCause::Io => "io",
            FailureCause::ShutDown => "shut_down",
            FailureCause::Canceled => "canceled",
            FailureCause::Other => "other",
        }
    }
}

impl fmt::Display for FailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PublishOutcome {
    /// Whether the event was durably handed off.
    pub fn is_delivered(&self) -> bool {
        matches!(self, PublishOutcome::Delivered)
    }

    /// A retryable failure of class `cause`.
    pub fn retryable(cause: FailureCause, message: impl Into<String>) -> PublishOutcome {
        PublishOutcome::Retryable(PublishFailure {
            cause,
            message: message.into(),
        })
    }

    /// A permanent failure of class `cause`.
    pub fn permanent(cause: FailureCause, message: impl Into<String>) -> PublishOutcome {
        PublishOutcome::Permanent(PublishFailure {
            cause,
            message: message.into(),
        })
    }

    /// The failure, unless the event was delivered.
    pub fn failure(&self) -> Option<&PublishFailure> {
        match self {
            PublishOutcome::Delivered => None,
            PublishOutcome::Retryable(failure) | PublishOutcome::Permanent(failure) => {
                Some(failure)
            }
        }
    }

    /// The class of the failure, unless the event was delivered.
    pub fn cause(&self) -> Option<FailureCause> {
        self.failure().map(|failure| failure.cause)
    }

    /// The same retryable failure for every event of a batch of `n`.
    pub fn all_retryable(
        n: usize,
        cause: FailureCause,
        reason: impl fmt::Display,
    ) -> Vec<PublishOutcome> {
        vec![PublishOutcome::retryable(cause, reason.to_string()); n]
    }
}

/// Errors a sink reports outside of per-event outcomes: set-up, health and shutdown.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink's configuration cannot work (a missing directory permission, say).
    #[error("{sink}: invalid configuration: {message}")]
    Config {
        /// The sink's name.
        sink: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The sink cannot currently accept events.
    #[error("{sink}: {message}")]
    Unhealthy {
        /// The sink's name.
        sink: &'static str,
        /// Why.
        message: String,
    },
    /// An I/O error in the sink itself.
    #[error("{sink}: {source}")]
    Io {
        /// The sink's name.
        sink: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl SinkError {
    /// A configuration error of `sink`.
    pub fn config(sink: &'static str, message: impl Into<String>) -> SinkError {
        SinkError::Config {
            sink,
            message: message.into(),
        }
    }

    /// `sink` cannot accept events now.
    pub fn unhealthy(sink: &'static str, message: impl Into<String>) -> SinkError {
        SinkError::Unhealthy {
            sink,
            message: message.into(),
        }
    }
}

/// A destination for prepared events.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// A short name for logs and metrics: `file`, `log`, `pubsub`, `bigquery`, ...
    fn name(&self) -> &'static str;

    /// Hands off a batch and returns exactly one outcome per event, in the input order.
    ///
    /// Returning [`PublishOutcome::Delivered`] is a promise: the event is durable downstream.
    /// Cancellation (the future being dropped) must never leave a delivered event unreported
    /// as anything but unacknowledged; the sender will then retry it.
    async fn publish(&self, events: &[PreparedEvent]) -> Vec<PublishOutcome>;

    /// [`publish`](Self::publish), for a batch whose payloads are also at hand as NDJSON text:
    /// `ndjson` holds each event's payload followed by a line break, in the events' order (the
    /// gateway renders a payload's events one after another into one buffer, and each event's
    /// `payload` is a slice of it). A sink that writes NDJSON writes it as one piece instead of
    /// a line at a time (the file sink, once it has checked that it is what it says); every
    /// other sink publishes the events as [`publish`](Self::publish) does, which is the default.
    async fn publish_ndjson(
        &self,
        events: &[PreparedEvent],
        ndjson: &Bytes,
    ) -> Vec<PublishOutcome> {
        let _ = ndjson;
        self.publish(events).await
    }

    /// Where this sink sends events, in one line for the start-up log
    /// (for example `NDJSON files under ./data/events`).
    fn describe(&self) -> String {
        self.name().to_string()
    }

    /// Whether this sink reads [`PreparedEvent::attributes`]. When no sink of a gateway does,
    /// the gateway leaves them empty: building them costs about nine allocations per event.
    /// A sink that writes only the payload (the file and discard sinks) says `false`.
    fn reads_attributes(&self) -> bool {
        true
    }

    /// Whether the sink can accept events now (the `/-/healthz` check).
    async fn health(&self) -> Result<(), SinkError>;

    /// Flushes anything buffered and releases resources; called once at shutdown.
    async fn shutdown(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A shared sink is a sink (so [`Measured`] can wrap a sink chosen at run time).
#[async_trait]
impl<S: EventSink + ?Sized> EventSink for std::sync::Arc<S> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    async fn publish(&self, events: &[PreparedEvent]) -> Vec<PublishOutcome> {
        (**self).publish(events).await
    }

    async fn publish_ndjson(
        &self,
        events: &[PreparedEvent],
        ndjson: &Bytes,
    ) -> Vec<PublishOutcome> {
        (**self).publish_ndjson(events, ndjson).await
    }

    fn describe(&self) -> String {
        (**self).describe()
    }

    fn reads_attributes(&self) -> bool {
        (**self).reads_attributes()
    }

    async fn health(&self) -> Result<(), SinkError> {
        (**self).health().await
    }

    async fn shutdown(&self) -> Result<(), SinkError> {
        (**self).shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_is_listed_in_declaration_order_with_a_distinct_label() {
        let mut labels = std::collections::BTreeSet::new();
        for (index, cause) in FailureCause::ALL.into_iter().enumerate() {
            assert_eq!(
                cause as usize, index,
                "{cause}: ALL must follow the declaration order"
            );
            assert!(labels.insert(cause.as_str()), "{cause}: label used twice");
        }
    }

    #[test]
    fn an_outcome_carries_its_cause_and_message() {
        let outcome = PublishOutcome::retryable(FailureCause::Timeout, "no answer within 30s");
        assert_eq!(outcome.cause(), Some(FailureCause::Timeout));
        let failure = outcome.failure().expect("a failure");
        assert_eq!(failure.to_string(), "no answer within 30s");
        assert_eq!(PublishOutcome::Delivered.cause(), None);
        assert_eq!(
            PublishOutcome::all_retryable(2, FailureCause::ShutDown, "stopping"),
            vec![PublishOutcome::retryable(FailureCause::ShutDown, "stopping"); 2]
        );
    }
}
