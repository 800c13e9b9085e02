//! Test support for the Telemetry Gateway: license minting, a recording sink with programmable
//! outcomes, event builders, a gRPC client helper and a minimal HTTP client for diagnostics.
//!
//! Dev-only: no runtime crate depends on it. It does not depend on the server crate either, so
//! the server's own tests can use it without two copies of the server's types.

pub mod client;
pub mod events;
pub mod http;
pub mod json;
pub mod license;
pub mod sink;

pub use client::{connect, record_events};
pub use sink::RecordingSink;
