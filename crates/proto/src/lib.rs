//! The Telemetry Gateway protocol, usable on its own by any Rust service.
//!
//! This crate owns the wire types (generated from `proto/` by `cargo xtask codegen` and checked
//! in), the encoded descriptor set (for reflection and generic JSON), the canonical proto3 JSON
//! rendering of events and request metadata, feature/action and event validation with the
//! original service's messages, legacy-metadata migration, and UUID v7 event IDs.
//!
//! It knows nothing of servers, sinks or authentication: its only networking code is the
//! generated tonic client and server glue, which is transport-agnostic.
//! With the `client` feature it also offers `client`, an exporter that sends events to a
//! gateway over TLS (the default build has no networking code).

use std::sync::LazyLock;

use prost_reflect::DescriptorPool;

#[cfg(feature = "client")]
pub mod client;
pub mod event_id;
pub mod json;
pub mod migrate;
pub mod validate;
pub mod wire;

/// Generated types and gRPC glue for `telemetrygateway.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!("gen/telemetrygateway.v1.rs");
}

/// The encoded `FileDescriptorSet` of the protocol, including its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/descriptor.bin");

/// The protocol's descriptors, decoded once.
pub static DESCRIPTOR_POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(FILE_DESCRIPTOR_SET)
        .expect("the checked-in descriptor set is produced by `cargo xtask codegen` and is valid")
});

/// The fully qualified gRPC service name, misspelling included.
pub const SERVICE_NAME: &str = "telemetrygateway.v1.TelemeteryGatewayService";

pub use event_id::new_event_id;
pub use json::{RenderError, from_json, render_event, render_metadata, render_view};
pub use migrate::migrate_legacy_metadata;
pub use validate::{
    EventError, FeatureActionError, validate_event, validate_feature_action, validate_view,
};
