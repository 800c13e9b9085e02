//! Every refusal a sender can see, in one place: each is one [`ServerError`] variant, and this
//! file decides its message (the contract's exact words), its gRPC status code, the metric it is
//! counted under, whether it is logged where it happens, and its retry hint. Nothing else in the
//! crate builds a `Status` of its own.

use std::time::Duration;

use tonic::{Code, Status};
use tracing::Level;

use crate::metrics::Metrics;

/// A request-level failure of `RecordEvents` or `RecordEvent`: one variant per refusal.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServerError {
    // --- The protocol.
    /// A second metadata message on one stream.
    #[error("received metadata more than once")]
    MetadataTwice,
    /// An events payload before any metadata.
    #[error("got events when metadata not yet received")]
    EventsBeforeMetadata,
    /// `RecordEvent` without an event.
    #[error("event is required")]
    EventRequired,
    /// `RecordEvent` with an event that fails validation or cannot be rendered.
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// `RecordEvent` whose event could not be handed off.
    #[error("failed to publish event: {0}")]
    PublishFailed(String),

    // --- Who is sending.
    /// No identifier, or one this RPC does not accept.
    #[error("unsupported identifier type")]
    UnsupportedIdentifier,
    /// The license key did not parse or verify (or, opt-in, has expired).
    #[error("invalid license_key: {0}")]
    InvalidLicenseKey(String),
    /// An unlicensed instance without an instance ID.
    #[error("instance_id is required for unlicensed instance")]
    MissingInstanceId,
    /// A managed service without a service ID.
    #[error("service_id is required for managed services")]
    MissingServiceId,

    // --- The managed-service token check (`crate::managed`), by the original's rules.
    /// The request carries no metadata at all (never over HTTP/2).
    #[error("no token header")]
    NoTokenHeader,
    /// There is no single non-empty `authorization` value.
    #[error("no token header value")]
    NoTokenHeaderValue,
    /// The `authorization` value is not `Bearer <token>`.
    #[error("invalid token header: {0}")]
    InvalidTokenHeader(String),
    /// Token introspection failed (SAMS unreachable, say).
    #[error("unable to validate token")]
    TokenCheckFailed,
    /// The caller went away during introspection.
    #[error("request canceled")]
    Canceled,
    /// Too many token checks were in progress for this one to start in time.
    #[error("too many token checks in progress; retry later")]
    TokenCheckOverloaded,
    /// The token is inactive or lacks the required scope.
    #[error("permission denied")]
    PermissionDenied,
    /// The gateway has no way to check tokens.
    #[error("{0}")]
    ManagedAuthNotConfigured(String),

    // --- Load.
    /// The gateway is draining for shutdown; the sender should retry elsewhere or later.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The gateway holds as many bytes of events as its memory budget allows.
    #[error(
        "the gateway is over its memory budget for events in flight; retry in {}s",
        retry_after.as_millis().div_ceil(1000).max(1)
    )]
    OverBudget {
        /// When the sender should try again.
        retry_after: Duration,
        /// The budget, for the log line.
        limit: usize,
        /// The bytes reserved when the message was refused, for the log line.
        used: usize,
    },
    /// The sender exceeded its events-per-second limit.
    #[error(
        "rate limit of {limit} events per second exceeded for {sender}; retry in {}s",
        retry_after.as_millis().div_ceil(1000).max(1)
    )]
    RateLimited {
        /// Who (the instance ID or service ID).
        sender: String,
        /// The configured limit.
        limit: u32,
        /// When the sender should try again.
        retry_after: Duration,
    },

    // --- The sender limits (`crate::limits::Limits`); each message names its setting.
    /// A message larger than tonic's receive limit.
    #[error("{0}")]
    MessageTooLarge(String),
    /// Too many events in one payload.
    #[error("a payload may carry at most {max} events (TELEMETRY_GATEWAY_MAX_EVENTS_PER_PAYLOAD)")]
    TooManyEvents {
        /// The limit.
        max: usize,
    },
    /// The metadata message is too large.
    #[error(
        "the metadata message of {len} bytes exceeds the limit of {max} bytes \
         (TELEMETRY_GATEWAY_MAX_METADATA_BYTES)"
    )]
    MetadataTooLarge {
        /// Its declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The license key is too long to be one.
    #[error(
        "invalid license_key: {len} bytes exceeds the limit of {max} bytes \
         (TELEMETRY_GATEWAY_MAX_LICENSE_KEY_BYTES)"
    )]
    LicenseKeyTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A unary call's first message is too large.
    #[error("the request of {len} bytes exceeds the limit of {max} bytes for a single event")]
    UnaryTooLarge {
        /// Its declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// One message would cost more memory than one connection may hold.
    #[error(
        "the message would take {cost} bytes of memory once decoded, more than the {max} bytes \
         one connection may hold (TELEMETRY_GATEWAY_MAX_INFLIGHT_BYTES × \
         TELEMETRY_GATEWAY_CONNECTION_SHARE_PERCENT)"
    )]
    MessageTooCostly {
        /// What it would cost.
        cost: usize,
        /// The connection's share.
        max: usize,
    },
    /// The connection's other streams already hold its share of the budget.
    #[error(
        "this connection holds its share of the memory budget \
         (TELEMETRY_GATEWAY_CONNECTION_SHARE_PERCENT); retry in {}s",
        retry_after.as_millis().div_ceil(1000).max(1)
    )]
    ConnectionShare {
        /// When to try again.
        retry_after: Duration,
    },
    /// A compressed message decompresses to more than allowed.
    #[error(
        "the message decompresses to more than {max} bytes \
         (TELEMETRY_GATEWAY_GRPC_MAX_RECEIVE_MESSAGE_BYTES)"
    )]
    DecompressedTooLarge {
        /// The limit.
        max: usize,
    },
    /// A compressed metadata message decompresses past the metadata limit.
    #[error(
        "the metadata message decompresses to more than {max} bytes \
         (TELEMETRY_GATEWAY_MAX_METADATA_BYTES)"
    )]
    MetadataDecompressedTooLarge {
        /// The limit.
        max: usize,
    },
    /// The stream stayed open too long.
    #[error(
        "the stream exceeded its lifetime of {}s (TELEMETRY_GATEWAY_STREAM_LIFETIME); \
         open a new one",
        .0.as_secs_f64()
    )]
    StreamLifetime(Duration),
    /// No message arrived for too long.
    #[error(
        "no message arrived for {}s (TELEMETRY_GATEWAY_STREAM_IDLE_TIMEOUT)",
        .0.as_secs_f64()
    )]
    Idle(Duration),
    /// An admitted message arrived too slowly.
    #[error(
        "the message arrived slower than {rate} bytes/s after {}s \
         (TELEMETRY_GATEWAY_MIN_RECEIVE_BYTES_PER_SECOND)",
        grace.as_secs_f64()
    )]
    TooSlow {
        /// The minimum rate.
        rate: usize,
        /// The grace before it applies.
        grace: Duration,
    },
    /// A unary call with more than one message.
    #[error("a unary call carries exactly one message")]
    UnaryExtraMessage,
    /// Not a valid message, or compressed without a known encoding.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// The counter a refusal is counted in, with its `reason` label (docs/metrics.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// `telemetry-gateway.auth.failures`: the sender's identity did not check out.
    AuthFailure(&'static str),
    /// `telemetry-gateway.payloads.refused`: load or a sender limit.
    PayloadRefused(&'static str),
}

/// How one refusal reaches the sender and the operator: its row in [`ServerError::wire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wire {
    /// The gRPC status code.
    pub code: Code,
    /// The counter and label it is counted under, if any.
    pub counted: Option<Counted>,
    /// The level of the line logged where it happens, if it has one of its own (every failed
    /// call is also in its RPC's closing line).
    pub level: Option<Level>,
}

/// Refused, not counted: the sender's mistake or the call's own end.
const fn plain(code: Code) -> Wire {
    Wire {
        code,
        counted: None,
        level: None,
    }
}

/// The sender's identity did not check out.
const fn auth(code: Code, reason: &'static str) -> Wire {
    Wire {
        code,
        counted: Some(Counted::AuthFailure(reason)),
        level: None,
    }
}

/// A sender limit or the memory budget: counted, and a warning where it happens (a sender
/// reaches them at will, so they never go to Sentry).
const fn limit(code: Code, reason: &'static str) -> Wire {
    Wire {
        code,
        counted: Some(Counted::PayloadRefused(reason)),
        level: Some(Level::WARN),
    }
}

impl ServerError {
    /// Every refusal's row: its code, its metric and its log level. One arm per variant, so a
    /// new refusal cannot be added without deciding all three.
    pub fn wire(&self) -> Wire {
        use Code::{
            Cancelled, DeadlineExceeded, Internal, InvalidArgument, PermissionDenied,
            ResourceExhausted, Unauthenticated, Unavailable, Unimplemented,
        };
        use ServerError as E;
        match self {
            E::MetadataTwice => plain(InvalidArgument),
            E::EventsBeforeMetadata => plain(InvalidArgument),
            E::EventRequired => plain(InvalidArgument),
            E::InvalidEvent(_) => plain(InvalidArgument),
            E::PublishFailed(_) => plain(Internal),
            E::UnsupportedIdentifier => auth(Unimplemented, "unsupported_identifier"),
            E::InvalidLicenseKey(_) => auth(InvalidArgument, "invalid_license_key"),
            E::MissingInstanceId => auth(InvalidArgument, "missing_instance_id"),
            E::MissingServiceId => auth(InvalidArgument, "missing_service_id"),
            E::NoTokenHeader => auth(Unauthenticated, "missing_token"),
            E::NoTokenHeaderValue => auth(Unauthenticated, "missing_token"),
            E::InvalidTokenHeader(_) => auth(Unauthenticated, "invalid_token_header"),
            E::TokenCheckFailed => auth(Internal, "token_check_failed"),
            E::Canceled => plain(Cancelled),
            E::TokenCheckOverloaded => auth(Unavailable, "token_check_overloaded"),
            E::PermissionDenied => auth(PermissionDenied, "permission_denied"),
            E::ManagedAuthNotConfigured(_) => auth(Unauthenticated, "managed_auth_not_configured"),
            E::ShuttingDown => plain(Unavailable),
            E::OverBudget { .. } => limit(ResourceExhausted, "memory_budget"),
            // Counted, but with no line of its own: a sender over its rate may be refused often.
            E::RateLimited { .. } => Wire {
                counted: Some(Counted::PayloadRefused("rate_limit")),
                ..plain(ResourceExhausted)
            },
            E::MessageTooLarge(_) => plain(ResourceExhausted),
            E::TooManyEvents { .. } => limit(ResourceExhausted, "max_events_per_payload"),
            E::MetadataTooLarge { .. } => limit(ResourceExhausted, "max_metadata_bytes"),
            E::LicenseKeyTooLong { .. } => limit(InvalidArgument, "max_license_key_bytes"),
            E::UnaryTooLarge { .. } => limit(ResourceExhausted, "max_unary_bytes"),
            E::MessageTooCostly { .. } => limit(ResourceExhausted, "message_cost"),
            E::ConnectionShare { .. } => limit(ResourceExhausted, "connection_share"),
            E::DecompressedTooLarge { .. } => limit(ResourceExhausted, "max_decoded_bytes"),
            E::MetadataDecompressedTooLarge { .. } => {
                limit(ResourceExhausted, "max_metadata_bytes")
            }
            E::StreamLifetime(_) => limit(DeadlineExceeded, "stream_lifetime"),
            E::Idle(_) => limit(DeadlineExceeded, "idle_timeout"),
            E::TooSlow { .. } => limit(DeadlineExceeded, "min_receive_rate"),
            E::UnaryExtraMessage => limit(InvalidArgument, "unary_extra_message"),
            E::Malformed(_) => limit(InvalidArgument, "malformed"),
        }
    }

    /// The gRPC status code the contract assigns to this refusal.
    pub fn code(&self) -> Code {
        self.wire().code
    }

    /// The counter and `reason` label this refusal is counted under, if any.
    pub fn counted(&self) -> Option<Counted> {
        self.wire().counted
    }

    /// The level of the refusal's own log line, if it has one.
    pub fn level(&self) -> Option<Level> {
        self.wire().level
    }

    /// When the sender should retry, for refusals that pass.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ServerError::OverBudget { retry_after, .. }
            | ServerError::RateLimited { retry_after, .. }
            | ServerError::ConnectionShare { retry_after } => Some(*retry_after),
            // Everything else is refused for good, or the sender is told nothing about when.
            _ => None,
        }
    }

    /// Counts this refusal in `metrics` and writes its own log line, if it has one. Call it
    /// once per refusal, where the call it ends is ended.
    pub fn report(&self, metrics: &Metrics) {
        let counted = self.counted();
        if let Some(counted) = counted {
            metrics.refusal(counted);
        }
        if self.level() != Some(Level::WARN) {
            return;
        }
        match (self, counted) {
            (ServerError::OverBudget { limit, used, .. }, _) => {
                tracing::warn!(limit, used, "payload refused: the memory budget is used up")
            }
            (_, Some(Counted::PayloadRefused(reason))) => {
                tracing::warn!(reason, error = %self, "sender limit reached");
            }
            _ => {}
        }
    }
}

/// The trailer gRPC clients read as a retry hint (gRFC A6), in milliseconds.
pub const RETRY_PUSHBACK_TRAILER: &str = "grpc-retry-pushback-ms";

impl From<ServerError> for Status {
    fn from(err: ServerError) -> Status {
        let mut status = Status::new(err.code(), err.to_string());
        if let Some(retry_after) = err.retry_after()
            && let Ok(value) = retry_after.as_millis().to_string().parse()
        {
            status.metadata_mut().insert(RETRY_PUSHBACK_TRAILER, value);
        }
        status
    }
}

/// Maps an error from reading the request stream: tonic reports an over-limit message as
/// `OutOfRange`, where gRPC (and the original) say `ResourceExhausted`. Anything else (the
/// budget's refusals among them, already made from a [`ServerError`]) is returned unchanged
/// (`docs/compatibility.md` §2).
pub fn receive_error(status: Status) -> Status {
    if status.code() == Code::OutOfRange
        && status
            .message()
            .contains("decoded message length too large")
    {
        return ServerError::MessageTooLarge(status.message().to_string()).into();
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_messages_and_codes() {
        let cases: Vec<(ServerError, Code, &str)> = vec![
            (
                ServerError::MetadataTwice,
                Code::InvalidArgument,
                "received metadata more than once",
            ),
            (
                ServerError::EventsBeforeMetadata,
                Code::InvalidArgument,
                "got events when metadata not yet received",
            ),
            (
                ServerError::InvalidLicenseKey("bad".into()),
                Code::InvalidArgument,
                "invalid license_key: bad",
            ),
            (
                ServerError::MissingInstanceId,
                Code::InvalidArgument,
                "instance_id is required for unlicensed instance",
            ),
            (
                ServerError::MissingServiceId,
                Code::InvalidArgument,
                "service_id is required for managed services",
            ),
            (
                ServerError::UnsupportedIdentifier,
                Code::Unimplemented,
                "unsupported identifier type",
            ),
            (
                ServerError::EventRequired,
                Code::InvalidArgument,
                "event is required",
            ),
            (
                ServerError::PublishFailed("boom".into()),
                Code::Internal,
                "failed to publish event: boom",
            ),
        ];
        for (err, code, message) in cases {
            let status = Status::from(err);
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }

    #[test]
    fn refusals_for_load_carry_a_retry_hint() {
        let status = Status::from(ServerError::OverBudget {
            retry_after: Duration::from_millis(1500),
            limit: 1000,
            used: 1000,
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "the gateway is over its memory budget for events in flight; retry in 2s",
            "1.5 s rounds up"
        );
        assert_eq!(
            status
                .metadata()
                .get(RETRY_PUSHBACK_TRAILER)
                .and_then(|v| v.to_str().ok()),
            Some("1500")
        );
        let limited = Status::from(ServerError::RateLimited {
            sender: "instance abc".into(),
            limit: 100,
            retry_after: Duration::from_secs(2),
        });
        assert_eq!(limited.code(), Code::ResourceExhausted);
        assert_eq!(
            limited.message(),
            "rate limit of 100 events per second exceeded for instance abc; retry in 2s"
        );
    }

    #[test]
    fn oversized_messages_are_resource_exhausted() {
        let status = receive_error(Status::out_of_range(
            "Error, decoded message length too large: found 10 bytes, the limit is: 5 bytes",
        ));
        assert_eq!(status.code(), Code::ResourceExhausted);
        let other = receive_error(Status::out_of_range("something else"));
        assert_eq!(other.code(), Code::OutOfRange);
    }

    #[test]
    fn every_refusal_has_its_code_label_level_and_hint() {
        use Counted::{AuthFailure, PayloadRefused};
        let second = Duration::from_secs(1);
        type Row = (ServerError, Code, Option<Counted>, Option<Level>, bool);
        let table: Vec<Row> = vec![
            (
                ServerError::ShuttingDown,
                Code::Unavailable,
                None,
                None,
                false,
            ),
            (ServerError::Canceled, Code::Cancelled, None, None, false),
            (
                ServerError::NoTokenHeaderValue,
                Code::Unauthenticated,
                Some(AuthFailure("missing_token")),
                None,
                false,
            ),
            (
                ServerError::TokenCheckOverloaded,
                Code::Unavailable,
                Some(AuthFailure("token_check_overloaded")),
                None,
                false,
            ),
            (
                ServerError::RateLimited {
                    sender: "s".into(),
                    limit: 1,
                    retry_after: second,
                },
                Code::ResourceExhausted,
                Some(PayloadRefused("rate_limit")),
                None,
                true,
            ),
            (
                ServerError::ConnectionShare {
                    retry_after: second,
                },
                Code::ResourceExhausted,
                Some(PayloadRefused("connection_share")),
                Some(Level::WARN),
                true,
            ),
            (
                ServerError::MetadataDecompressedTooLarge { max: 1 },
                Code::ResourceExhausted,
                Some(PayloadRefused("max_metadata_bytes")),
                Some(Level::WARN),
                false,
            ),
            (
                ServerError::LicenseKeyTooLong { len: 2, max: 1 },
                Code::InvalidArgument,
                Some(PayloadRefused("max_license_key_bytes")),
                Some(Level::WARN),
                false,
            ),
            (
                ServerError::StreamLifetime(second),
                Code::DeadlineExceeded,
                Some(PayloadRefused("stream_lifetime")),
                Some(Level::WARN),
                false,
            ),
            (
                ServerError::MessageTooLarge("big".into()),
                Code::ResourceExhausted,
                None,
                None,
                false,
            ),
        ];
        for (err, code, counted, level, hint) in table {
            assert_eq!(
                (
                    err.code(),
                    err.counted(),
                    err.level(),
                    err.retry_after().is_some()
                ),
                (code, counted, level, hint),
                "{err:?}"
            );
        }
    }
}
