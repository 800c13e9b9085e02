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

impl ServerError {
    /// The gRPC status code the contract assigns to this refusal.
    pub fn code(&self) -> Code {
        use ServerError as E;
        match self {
            E::MetadataTwice
            | E::EventsBeforeMetadata
            | E::EventRequired
            | E::InvalidEvent(_)
            | E::InvalidLicenseKey(_)
            | E::MissingInstanceId
            | E::MissingServiceId
            | E::LicenseKeyTooLong { .. }
            | E::UnaryExtraMessage
            | E::Malformed(_) => Code::InvalidArgument,
            E::UnsupportedIdentifier => Code::Unimplemented,
            E::PublishFailed(_) | E::TokenCheckFailed => Code::Internal,
            E::NoTokenHeader
            | E::NoTokenHeaderValue
            | E::InvalidTokenHeader(_)
            | E::ManagedAuthNotConfigured(_) => Code::Unauthenticated,
            E::Canceled => Code::Cancelled,
            E::PermissionDenied => Code::PermissionDenied,
            E::ShuttingDown | E::TokenCheckOverloaded => Code::Unavailable,
            E::OverBudget { .. }
            | E::RateLimited { .. }
            | E::MessageTooLarge(_)
            | E::TooManyEvents { .. }
            | E::MetadataTooLarge { .. }
            | E::UnaryTooLarge { .. }
            | E::MessageTooCostly { .. }
            | E::ConnectionShare { .. }
            | E::DecompressedTooLarge { .. } => Code::ResourceExhausted,
            E::StreamLifetime(_) | E::Idle(_) | E::TooSlow { .. } => Code::DeadlineExceeded,
        }
    }

    /// The counter and `reason` label this refusal is counted under, if any.
    pub fn counted(&self) -> Option<Counted> {
        use Counted::{AuthFailure, PayloadRefused};
        use ServerError as E;
        Some(match self {
            E::InvalidLicenseKey(_) => AuthFailure("invalid_license_key"),
            E::MissingInstanceId => AuthFailure("missing_instance_id"),
            E::MissingServiceId => AuthFailure("missing_service_id"),
            E::UnsupportedIdentifier => AuthFailure("unsupported_identifier"),
            E::NoTokenHeader | E::NoTokenHeaderValue => AuthFailure("missing_token"),
            E::InvalidTokenHeader(_) => AuthFailure("invalid_token_header"),
            E::TokenCheckFailed => AuthFailure("token_check_failed"),
            E::TokenCheckOverloaded => AuthFailure("token_check_overloaded"),
            E::PermissionDenied => AuthFailure("permission_denied"),
            E::ManagedAuthNotConfigured(_) => AuthFailure("managed_auth_not_configured"),
            E::OverBudget { .. } => PayloadRefused("memory_budget"),
            E::RateLimited { .. } => PayloadRefused("rate_limit"),
            E::TooManyEvents { .. } => PayloadRefused("max_events_per_payload"),
            E::MetadataTooLarge { .. } => PayloadRefused("max_metadata_bytes"),
            E::LicenseKeyTooLong { .. } => PayloadRefused("max_license_key_bytes"),
            E::UnaryTooLarge { .. } => PayloadRefused("max_unary_bytes"),
            E::MessageTooCostly { .. } => PayloadRefused("message_cost"),
            E::ConnectionShare { .. } => PayloadRefused("connection_share"),
            E::DecompressedTooLarge { .. } => PayloadRefused("max_decoded_bytes"),
            E::StreamLifetime(_) => PayloadRefused("stream_lifetime"),
            E::Idle(_) => PayloadRefused("idle_timeout"),
            E::TooSlow { .. } => PayloadRefused("min_receive_rate"),
            E::UnaryExtraMessage => PayloadRefused("unary_extra_message"),
            E::Malformed(_) => PayloadRefused("malformed"),
            E::MetadataTwice
            | E::EventsBeforeMetadata
            | E::EventRequired
            | E::InvalidEvent(_)
            | E::PublishFailed(_)
            | E::Canceled
            | E::ShuttingDown
            | E::MessageTooLarge(_) => return None,
        })
    }

    /// The level of the line logged where the refusal happens, if it has one of its own (every
    /// failed call is also in its RPC's closing line). The memory budget and the sender limits
    /// are warnings: a sender reaches them at will, so they never go to Sentry.
    pub fn level(&self) -> Option<Level> {
        use ServerError as E;
        match self {
            E::OverBudget { .. }
            | E::TooManyEvents { .. }
            | E::MetadataTooLarge { .. }
            | E::LicenseKeyTooLong { .. }
            | E::UnaryTooLarge { .. }
            | E::MessageTooCostly { .. }
            | E::ConnectionShare { .. }
            | E::DecompressedTooLarge { .. }
            | E::StreamLifetime(_)
            | E::Idle(_)
            | E::TooSlow { .. }
            | E::UnaryExtraMessage
            | E::Malformed(_) => Some(Level::WARN),
            E::MetadataTwice
            | E::EventsBeforeMetadata
            | E::EventRequired
            | E::InvalidEvent(_)
            | E::PublishFailed(_)
            | E::UnsupportedIdentifier
            | E::InvalidLicenseKey(_)
            | E::MissingInstanceId
            | E::MissingServiceId
            | E::NoTokenHeader
            | E::NoTokenHeaderValue
            | E::InvalidTokenHeader(_)
            | E::TokenCheckFailed
            | E::Canceled
            | E::TokenCheckOverloaded
            | E::PermissionDenied
            | E::ManagedAuthNotConfigured(_)
            | E::ShuttingDown
            | E::RateLimited { .. }
            | E::MessageTooLarge(_) => None,
        }
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
/// budget's refusals among them, already made from a [`ServerError`]) is returned unchanged, as
/// the original does.
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
