//! The concerns every events RPC shares, each in its own file, apart from the protocol
//! (`crate::service`).
//!
//! A call passes through them in this order, outermost first (`crate::serve` stacks the HTTP
//! layers; [`Call::admit`] and `GrpcService` compose the rest):
//!
//! | # | concern | where | why here |
//! |---|---|---|---|
//! | 0 | connections open at once, how soon each must speak, when each is closed | [`connections`](crate::connections) | bounds connections before any HTTP |
//! | 1 | HTTP/2: streams per connection, keepalive | `crate::serve` (tonic) | bounds a connection before any of our work |
//! | 2 | memory budget and sender limits on the request body | [`BudgetLayer`](crate::budget::BudgetLayer) | a tower layer: it must see the bytes before tonic decodes them, and hold a message at the sender while there is no room |
//! | 3 | RPC metrics (`started`, `handled`, messages) | [`metrics`], counted by [`Call`] and the stream halves | every call is counted, the refused ones too |
//! | 4 | drain gate | [`gate`] | a call refused for shutdown holds nothing and opens no span |
//! | 5 | the RPC span and its status | [`span`] | only admitted calls are traced; the span covers the whole call, so every log line of it carries the trace |
//! | 6 | the stream's receive side: drain and lifetime, budget reservations | [`inbound`] | between payloads only, so a payload being processed is always answered |
//! | 7 | the stream's send side | [`outbound`] | counts responses; tells the protocol when the sender left |
//! | 8 | refusals counted and logged once | `ServerError::report` | where the call ends, so each is counted once |
//! | 9 | the stream's closing line and metrics | [`closing`] | after the outcome is known, before the last status is sent |
//!
//! Only 1 and 2 are tower layers (0 wraps the accepted connections). The rest cannot be: tonic
//! answers a stream as soon as its handler returns, while the stream goes on in a task of its
//! own, so a layer around the handler would see neither its messages nor how it ends; they are
//! helpers the handler composes instead, the same for the stream and the unary call.

use tonic::Status;

use crate::error::ServerError;
use crate::metrics::Metrics;

pub mod call;
pub mod closing;
pub mod gate;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod span;

pub use call::Call;
pub use inbound::Inbound;
pub use outbound::{Outbound, ResponseStream};

/// The gRPC path prefix of the events service.
pub const EVENTS_SERVICE_PATH: &str = "/telemetrygateway.v1.TelemeteryGatewayService/";

/// The path of the unary `RecordEvent`, whose body carries one message.
pub const UNARY_PATH: &str = "/telemetrygateway.v1.TelemeteryGatewayService/RecordEvent";

/// Why a stream ended before the sender half-closed it.
#[derive(Debug)]
pub enum Ended {
    /// The gateway refused to go on (reported where the stream ends).
    Refused(ServerError),
    /// Reading the request failed: tonic's error, or the budgeted body's refusal (which the body
    /// has reported).
    Receive(Status),
}

impl From<ServerError> for Ended {
    fn from(refused: ServerError) -> Ended {
        Ended::Refused(refused)
    }
}

impl Ended {
    /// The status the sender gets; a refusal is reported to `metrics` (once: here).
    pub fn into_status(self, metrics: &Metrics) -> Status {
        match self {
            Ended::Refused(refused) => {
                refused.report(metrics);
                refused.into()
            }
            Ended::Receive(status) => status,
        }
    }
}
