//! The Telemetry Gateway server: the gRPC service and the HTTP diagnostics, on one port.
//!
//! This crate owns the per-request pipeline (identify the sender, prepare events, hand them to
//! the sink, summarize outcomes into the response) and the mapping of errors to gRPC statuses.
//! It knows sinks only through the `EventSink` trait and credentials only through the license
//! verifier and the [`ManagedServiceAuthorizer`] seam; configuration parsing, logging set-up and
//! process signals belong to the binary.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shared_limit::{CallPermits, HEALTH_CHECK_DEADLINE, MAX_SMALL_SERVICE_CALLS};
use telemetry_gateway_proto::FILE_DESCRIPTOR_SET;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;

pub mod budget;
pub mod connections;
pub mod dead_letter;
pub mod diagnostics;
pub mod error;
pub mod lifecycle;
pub mod limits;
pub mod managed;
pub mod metrics;
pub mod payload_log;
pub mod pipeline;
pub mod rate_limit;
pub mod rpc;
pub mod secret;
pub mod service;
mod shared_limit;
pub mod skim;
pub mod source;
pub mod tracing_context;

pub use budget::InflightBudget;
pub use connections::ConnectionLimits;
pub use dead_letter::{DeadLetterOptions, DeadLetters};
pub use diagnostics::Diagnostics;
pub use error::ServerError;
pub use lifecycle::Lifecycle;
pub use limits::Limits;
pub use managed::{ManagedAuthError, ManagedServiceAuthorizer, NotConfigured, SamsAuthorizer};
pub use metrics::Metrics;
pub use pipeline::EventPolicy;
pub use rate_limit::{RateLimit, RateLimiter};
pub use secret::Secret;
pub use service::{EventGateway, GrpcService};
pub use source::{Source, SourceKind};

/// The default limit on one received gRPC message: 90 MiB (`docs/compatibility.md` §1).
pub const DEFAULT_MAX_RECEIVE_MESSAGE_BYTES: usize = 90 * 1024 * 1024;

/// Transport settings of the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The largest gRPC message accepted; larger ones get `ResourceExhausted`.
    pub max_receive_message_bytes: usize,
    /// The version served at `/-/version`.
    pub version: String,
    /// The bearer secret for `/-/healthz`, if any.
    pub diagnostics_secret: Option<Secret>,
    /// The registry served at `/metrics` (none: no `/metrics` route).
    pub prometheus: Option<prometheus::Registry>,
    /// How many connections may be open, and how soon each must start talking.
    pub connections: ConnectionLimits,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_receive_message_bytes: DEFAULT_MAX_RECEIVE_MESSAGE_BYTES,
            version: env!("CARGO_PKG_VERSION").to_string(),
            diagnostics_secret: None,
            prometheus: None,
            connections: ConnectionLimits::default(),
        }
    }
}

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built from the descriptors.
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The listener's address could not be read.
    #[error("reading the listen address: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves gRPC (h2c) and HTTP diagnostics on `listener` until `shutdown` completes, then drains:
/// `/-/ready` turns not-ready, new streams and calls get `Unavailable`, streams waiting for their
/// next message are ended, payloads being processed finish and are answered; once none is left
/// the server stops. Bounding how long that may take is the caller's business.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<EventGateway>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let lifecycle = gateway.lifecycle().clone();
    let budget = gateway.budget().clone();
    let max_streams = budget.limits().max_streams_per_connection;
    let _budget_gauges = gateway.metrics().observe_budget(&budget);
    let budget_layer = budget::BudgetLayer::new(budget, gateway.metrics().clone());
    let metrics = gateway.metrics().clone();
    let routes = routes(gateway, &options).await?;
    let shutdown = async move {
        shutdown.await;
        lifecycle.start_draining();
        tracing::info!(
            in_progress = lifecycle.active(),
            "draining: refusing new streams"
        );
        lifecycle.idle().await;
        tracing::info!("drained: stopping the server");
    };
    // Nagle's algorithm would hold a response's last segment until the sender's delayed ACK
    // (tens of ms); the server's own `tcp_nodelay` applies only to listeners it binds itself.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let incoming = connections::limited(incoming, options.connections, metrics);
    // The HTTP stack, outermost first (`rpc` documents the whole order, down to the protocol):
    // `connections` bounds how many connections are open and how soon each must speak; tonic's
    // HTTP/2 settings bound each connection before any of our work; then the budget
    // layer, which must see each events message's bytes before tonic decodes them, to hold them
    // at the sender while there is no room. Everything per call (metrics, drain gate, span) sits
    // inside, in the handlers: tonic answers a stream when its handler returns, so a layer here
    // would not see how the stream ends.
    let mut server = tonic::transport::Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(max_streams)
        .initial_connection_window_size(options.connections.window_bytes)
        .initial_stream_window_size(options.connections.window_bytes)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if !options.connections.max_age.is_zero() {
        // No `max_connection_age_grace`: with one, tonic skips the GOAWAY and cuts the
        // connection at age + grace. Without, the streams in progress finish after the GOAWAY,
        // each within its lifetime, a client that stops answering pings is cut by the
        // keepalive, and `connections` closes what is left at age + grace.
        server = server.max_connection_age(options.connections.max_age);
    }
    server
        .layer(budget_layer)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// What one connection may make the gateway hold outside the budget, in flow-control windows:
/// its unread DATA (one window) and h2's record of each unread frame. h2 lets a frame cost as
/// little as 256 bytes of the window and of its budget for small frames (half a window), so a
/// window sent in the smallest frames it allows is about 6,000 frames per MiB, each queued with
/// some 100-300 bytes of bookkeeping: a probe measured 2.7 MiB per connection with a 1 MiB
/// window (`unread_windows_framed_to_pin_read_buffers_stay_within_the_memory_bound`).
const WINDOWS_PER_CONNECTION: u64 = 3;

/// The most bytes of request headers hyper accepts per HTTP/2 request (its default, set here
/// so that [`memory_bound`] stays true). A `RecordEvents` stream keeps its request's headers
/// for its life, since identifying a managed service reads them when the metadata arrives.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// What an open stream holds besides its request headers: h2's and hyper's records of it, its
/// task and span. A probe measured about 17 KiB per stream (100 waiting streams on a connection,
/// debug build).
const STREAM_STATE_BYTES: u64 = 20 * 1024;

/// The most an HTTP/1 connection holds: hyper's read buffer for a request head, at most about
/// 400 KiB (`8192 + 4096 * 100`, its default), until the head is complete.
const HTTP1_READ_BUFFER_BYTES: u64 = 8192 + 4096 * 100;

/// What one connection may make the gateway hold outside the budget: over HTTP/2, about three
/// flow-control windows of unread DATA ([`WINDOWS_PER_CONNECTION`]) and each of its streams'
/// request headers and state; over HTTP/1, a request head.
pub fn connection_bound(max_streams_per_connection: u32, connections: &ConnectionLimits) -> u64 {
    let per_stream = u64::from(MAX_HEADER_LIST_BYTES) + STREAM_STATE_BYTES;
    let http2 = WINDOWS_PER_CONNECTION * u64::from(connections.window_bytes)
        + u64::from(max_streams_per_connection) * per_stream;
    http2.max(HTTP1_READ_BUFFER_BYTES)
}

/// The most memory that senders can make the gateway hold, beyond its own fixed needs (the
/// runtime, the sinks' buffers): the budget, what each connection may hold outside it
/// ([`connection_bound`]), and the health and reflection calls (8 MiB). `None` when the budget
/// or the connection limit is off, since then nothing bounds it (docs/security.md).
pub fn memory_bound(
    budget_bytes: usize,
    max_streams_per_connection: u32,
    connections: &ConnectionLimits,
) -> Option<u64> {
    if budget_bytes == 0 || connections.max_connections == 0 {
        return None;
    }
    Some(
        (budget_bytes as u64)
            .saturating_add(
                (connections.max_connections as u64)
                    .saturating_mul(connection_bound(max_streams_per_connection, connections)),
            )
            .saturating_add(SMALL_CALLS_BYTES),
    )
}

/// What the health and reflection calls may hold together: their requests, in the places for
/// health checks and for the other calls.
const SMALL_CALLS_BYTES: u64 = 2 * (MAX_SMALL_SERVICE_CALLS * SMALL_REQUEST_BYTES) as u64;

/// Binds `addr`; a convenience for callers that do not need the listener first.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The most bytes a health check or reflection request may declare: a service, file or symbol
/// name. These services are outside the memory budget, and tonic reserves a message's declared
/// length when its header arrives, so with tonic's default (4 MiB) every such stream could hold
/// 4 MiB by sending a header and never the last byte (docs/security.md).
const SMALL_REQUEST_BYTES: usize = 16 * 1024;

async fn routes(gateway: Arc<EventGateway>, options: &ServerOptions) -> Result<Routes, ServeError> {
    let diagnostics = diagnostics::router(Diagnostics {
        version: options.version.clone(),
        secret: options.diagnostics_secret.clone(),
        sink: gateway.sink().clone(),
        lifecycle: gateway.lifecycle().clone(),
        prometheus: options.prometheus.clone(),
        budget: gateway.budget().clone(),
        started: Arc::default(),
        startup_check: Arc::default(),
        health: Arc::default(),
    });
    let events =
        GrpcService::new(gateway).max_decoding_message_size(options.max_receive_message_bytes);

    // Health and reflection share one limit on their calls in progress, so that their requests
    // (outside the budget) cannot hold more than `MAX_SMALL_SERVICE_CALLS` x 16 KiB together.
    let small_calls = CallPermits::new(MAX_SMALL_SERVICE_CALLS, HEALTH_CHECK_DEADLINE);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<GrpcService>().await;
    let health_service = health_service.max_decoding_message_size(SMALL_REQUEST_BYTES);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()?
        .max_decoding_message_size(SMALL_REQUEST_BYTES);
    let reflection_v1alpha = reflection()
        .build_v1alpha()?
        .max_decoding_message_size(SMALL_REQUEST_BYTES);

    Ok(Routes::from(diagnostics)
        .add_service(events)
        .add_service(small_calls.limit(health_service))
        .add_service(small_calls.limit(reflection_v1))
        .add_service(small_calls.limit(reflection_v1alpha)))
}
