//! The standard gRPC server metrics under go-grpc-prometheus's names (the original registered
//! them: `docs/compatibility.md` §8): calls started, handled by status code, handling time,
//! messages received and sent, per method. docs/metrics.md lists them.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use tonic::Code;

/// The gRPC service these metrics (and the RPC spans) describe.
pub const SERVICE: &str = "telemetrygateway.v1.TelemeteryGatewayService";

/// go-grpc-prometheus's default handling-time buckets, in seconds.
const HANDLING_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One RPC method, as its labels.
#[derive(Debug, Clone, Copy)]
pub enum RpcMethod {
    /// `RecordEvents`, a bidirectional stream.
    RecordEvents,
    /// `RecordEvent`, unary.
    RecordEvent,
}

impl RpcMethod {
    /// The method's name.
    pub fn name(self) -> &'static str {
        match self {
            RpcMethod::RecordEvents => "RecordEvents",
            RpcMethod::RecordEvent => "RecordEvent",
        }
    }

    fn labels(self) -> [KeyValue; 3] {
        let kind = match self {
            RpcMethod::RecordEvents => "bidi_stream",
            RpcMethod::RecordEvent => "unary",
        };
        [
            KeyValue::new("grpc_type", kind),
            KeyValue::new("grpc_service", SERVICE),
            KeyValue::new("grpc_method", self.name()),
        ]
    }
}

/// The code's name as gRPC-Go spells it (`OK`, `Canceled`, `Unauthenticated`, ...).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The per-RPC instruments.
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    started: Counter<u64>,
    handled: Counter<u64>,
    handling: Histogram<f64>,
    received: Counter<u64>,
    sent: Counter<u64>,
}

impl RpcMetrics {
    /// Instruments from `meter`.
    pub fn new(meter: &Meter) -> RpcMetrics {
        RpcMetrics {
            started: meter
                .u64_counter("grpc_server_started")
                .with_description("Total number of RPCs started on the server.")
                .build(),
            handled: meter
                .u64_counter("grpc_server_handled")
                .with_description(
                    "Total number of RPCs completed on the server, regardless of success or failure.",
                )
                .build(),
            handling: meter
                .f64_histogram("grpc_server_handling")
                .with_description(
                    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
                )
                .with_unit("s")
                .with_boundaries(HANDLING_BUCKETS.to_vec())
                .build(),
            received: meter
                .u64_counter("grpc_server_msg_received")
                .with_description("Total number of RPC stream messages received on the server.")
                .build(),
            sent: meter
                .u64_counter("grpc_server_msg_sent")
                .with_description("Total number of gRPC stream messages sent by the server.")
                .build(),
        }
    }

    /// A call started.
    pub fn started(&self, method: RpcMethod) {
        self.started.add(1, &method.labels());
    }

    /// A message was received on the call.
    pub fn received(&self, method: RpcMethod) {
        self.received.add(1, &method.labels());
    }

    /// A message was sent on the call.
    pub fn sent(&self, method: RpcMethod) {
        self.sent.add(1, &method.labels());
    }

    /// The call ended with `code` after `elapsed`.
    pub fn handled(&self, method: RpcMethod, code: Code, elapsed: Duration) {
        let labels = method.labels();
        self.handling.record(elapsed.as_secs_f64(), &labels);
        let mut with_code = labels.to_vec();
        with_code.push(KeyValue::new("grpc_code", code_name(code)));
        self.handled.add(1, &with_code);
    }
}
