//! A Telemetry Gateway client for Rust services (the `client` feature): an [`Exporter`] that
//! streams events over `RecordEvents` and reports exactly which were recorded, a unary
//! [`Exporter::record_event`] for managed services, and an [`EventBuilder`] that makes valid
//! events with UUID v7 IDs.
//!
//! Like the original's `Dial`, the exporter refuses plaintext `http://` endpoints unless the
//! caller allows them, pings the connection every 20 s (10 s timeout), and compresses with gzip.
//! Payloads stay below 1 MiB as the original instance exporter's do. Delivery is at least once:
//! retry what [`ExportReport::not_recorded`] lists, under the same IDs.
//!
//! The guide with a complete example is `docs/client.md`, compiled here as a doc test.
#![cfg_attr(doctest, doc = include_str!("../../../docs/client.md"))]

mod chunk;
mod event;
mod exporter;
mod sender;

use std::time::Duration;

pub use chunk::{Chunks, MAX_PAYLOAD_BYTES, chunk_events, event_field_len, request_len};
pub use event::{BuildError, EventBuilder};
pub use exporter::{ExportProgress, ExportReport, Exporter, ExporterBuilder};
pub use sender::Sender;

/// What went wrong talking to the gateway.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A plaintext endpoint without [`ExporterBuilder::allow_plaintext`] (the original's message).
    #[error("insecure target Telemetry Gateway {0:?}")]
    InsecureTarget(String),
    /// The endpoint is not an `https://` or `http://` URL with a host.
    #[error("invalid Telemetry Gateway URL {url:?}: {reason}")]
    InvalidEndpoint {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No sender was set on the builder.
    #[error("no sender: set a licensed instance, an unlicensed instance or a managed service")]
    MissingSender,
    /// The sender lacks something the gateway requires.
    #[error("invalid sender: {0}")]
    InvalidSender(&'static str),
    /// The TLS settings or the CA certificate were refused.
    #[error("configuring TLS: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// The connection could not be established.
    #[error("connecting to the Telemetry Gateway: {0}")]
    Connect(#[source] tonic::transport::Error),
    /// The gateway (or the transport) ended the call with a status.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// No answer within the request timeout.
    #[error("no answer from the Telemetry Gateway within {0:?}")]
    Timeout(Duration),
}
