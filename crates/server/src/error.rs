//! Every error a sender can see, and its gRPC status: the one place where codes and the
//! contract's exact messages are decided.

use std::time::Duration;

use tonic::{Code, Status};

use crate::limits::LimitViolation;
use crate::managed::ManagedAuthError;

/// A request-level failure of `RecordEvents` or `RecordEvent`.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A second metadata message on one stream.
    #[error("received metadata more than once")]
    MetadataTwice,
    /// An events payload before any metadata.
    #[error("got events when metadata not yet received")]
    EventsBeforeMetadata,
    /// The license key did not parse or verify (or, opt-in, has expired).
    #[error("invalid license_key: {0}")]
    InvalidLicenseKey(String),
    /// An unlicensed instance without an instance ID.
    #[error("instance_id is required for unlicensed instance")]
    MissingInstanceId,
    /// A managed service without a service ID.
    #[error("service_id is required for managed services")]
    MissingServiceId,
    /// No identifier, or one this RPC does not accept.
    #[error("unsupported identifier type")]
    UnsupportedIdentifier,
    /// `RecordEvent` without an event.
    #[error("event is required")]
    EventRequired,
    /// `RecordEvent` with an event that fails validation or cannot be rendered.
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// `RecordEvent` whose event could not be handed off.
    #[error("failed to publish event: {0}")]
    PublishFailed(String),
    /// The managed-service token check failed.
    #[error(transparent)]
    ManagedAuth(#[from] ManagedAuthError),
    /// A message larger than the receive limit.
    #[error("{0}")]
    MessageTooLarge(String),
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
    },
    /// The sender went past one of its limits (sizes, counts, times, its share of the budget).
    #[error(transparent)]
    Limit(#[from] LimitViolation),
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
}

impl ServerError {
    /// The gRPC status code the contract assigns to this error.
    pub fn code(&self) -> Code {
        match self {
            ServerError::MetadataTwice
            | ServerError::EventsBeforeMetadata
            | ServerError::InvalidLicenseKey(_)
            | ServerError::MissingInstanceId
            | ServerError::MissingServiceId
            | ServerError::EventRequired
            | ServerError::InvalidEvent(_) => Code::InvalidArgument,
            ServerError::UnsupportedIdentifier => Code::Unimplemented,
            ServerError::PublishFailed(_) => Code::Internal,
            ServerError::ManagedAuth(err) => err.code(),
            ServerError::MessageTooLarge(_)
            | ServerError::OverBudget { .. }
            | ServerError::RateLimited { .. } => Code::ResourceExhausted,
            ServerError::ShuttingDown => Code::Unavailable,
            ServerError::Limit(violation) => violation.code(),
        }
    }
}

impl ServerError {
    /// When the sender should retry, for errors that say so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ServerError::OverBudget { retry_after }
            | ServerError::RateLimited { retry_after, .. } => Some(*retry_after),
            ServerError::Limit(violation) => violation.retry_after(),
            _ => None,
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
/// `OutOfRange`, where gRPC (and the original) say `ResourceExhausted`. Anything else is
/// returned unchanged (`docs/compatibility.md` §2).
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
}
