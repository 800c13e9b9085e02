//! Test support for the Telemetry Gateway: license minting, a recording sink with programmable
//! outcomes, event builders, a gRPC client helper and a minimal HTTP client for diagnostics; with
//! the `harnesses` feature, also the Pub/Sub and BigQuery emulator harnesses and the fake
//! BigQuery (insertAll and Storage Write), SAMS, OTLP and Sentry servers.
//!
//! Dev-only: no runtime crate depends on it. It does not depend on the server crate either, so
//! the server's own tests can use it without two copies of the server's types.

#[cfg(feature = "harnesses")]
pub mod bigquery_emulator;
pub mod client;
pub mod events;
#[cfg(feature = "harnesses")]
pub mod fake_bigquery;
#[cfg(feature = "harnesses")]
pub mod fake_bigquery_write;
#[cfg(feature = "harnesses")]
pub mod fake_otlp;
#[cfg(feature = "harnesses")]
pub mod fake_sams;
#[cfg(feature = "harnesses")]
pub mod fake_sentry;
pub mod http;
pub mod json;
pub mod license;
#[cfg(feature = "harnesses")]
pub mod pubsub_emulator;
pub mod pypi;
pub mod sink;
pub mod wait;

pub use client::{connect, record_events};
pub use sink::RecordingSink;
