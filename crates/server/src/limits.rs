//! The limits on what one sender may send or hold: every one has a default that real senders fit
//! in (see docs/security.md for each one's reason), and each violation is a [`LimitViolation`]
//! that names the setting.

use std::time::Duration;

use tonic::Code;

/// The limits on senders.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Events in one payload (the instance exporter sends at most 10,000 per export).
    pub max_events_per_payload: usize,
    /// Bytes of a stream's first (metadata) message.
    pub max_metadata_bytes: usize,
    /// Bytes of a license key, checked before it is parsed.
    pub max_license_key_bytes: usize,
    /// How long a `RecordEvents` stream may stay open (the original cut them at 2 minutes).
    pub stream_lifetime: Duration,
    /// How long a stream may go without sending its next message.
    pub idle_timeout: Duration,
    /// The slowest a message may arrive, on average, once its grace has passed.
    pub min_receive_bytes_per_second: usize,
    /// How long an admitted message may take before the minimum rate applies.
    pub receive_grace: Duration,
    /// Concurrent streams on one HTTP/2 connection.
    pub max_streams_per_connection: u32,
    /// The percentage of each part of the memory budget one connection may hold.
    pub connection_share_percent: u8,
    /// The most a compressed message may decompress to.
    pub max_decoded_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_events_per_payload: 20_000,
            max_metadata_bytes: 64 * 1024,
            max_license_key_bytes: 16 * 1024,
            stream_lifetime: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(30),
            min_receive_bytes_per_second: 16 * 1024,
            receive_grace: Duration::from_secs(10),
            max_streams_per_connection: 100,
            connection_share_percent: 50,
            max_decoded_message_bytes: crate::DEFAULT_MAX_RECEIVE_MESSAGE_BYTES,
        }
    }
}

/// A sender went past one of its [`Limits`] (or sent something that cannot be priced).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitViolation {
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

impl LimitViolation {
    /// The gRPC status code.
    pub fn code(&self) -> Code {
        match self {
            LimitViolation::LicenseKeyTooLong { .. }
            | LimitViolation::UnaryExtraMessage
            | LimitViolation::Malformed(_) => Code::InvalidArgument,
            LimitViolation::StreamLifetime(_)
            | LimitViolation::Idle(_)
            | LimitViolation::TooSlow { .. } => Code::DeadlineExceeded,
            LimitViolation::TooManyEvents { .. }
            | LimitViolation::MetadataTooLarge { .. }
            | LimitViolation::UnaryTooLarge { .. }
            | LimitViolation::MessageTooCostly { .. }
            | LimitViolation::ConnectionShare { .. }
            | LimitViolation::DecompressedTooLarge { .. } => Code::ResourceExhausted,
        }
    }

    /// The `reason` label of `payloads.refused`.
    pub fn reason(&self) -> &'static str {
        match self {
            LimitViolation::TooManyEvents { .. } => "max_events_per_payload",
            LimitViolation::MetadataTooLarge { .. } => "max_metadata_bytes",
            LimitViolation::LicenseKeyTooLong { .. } => "max_license_key_bytes",
            LimitViolation::UnaryTooLarge { .. } => "max_unary_bytes",
            LimitViolation::MessageTooCostly { .. } => "message_cost",
            LimitViolation::ConnectionShare { .. } => "connection_share",
            LimitViolation::DecompressedTooLarge { .. } => "max_decoded_bytes",
            LimitViolation::StreamLifetime(_) => "stream_lifetime",
            LimitViolation::Idle(_) => "idle_timeout",
            LimitViolation::TooSlow { .. } => "min_receive_rate",
            LimitViolation::UnaryExtraMessage => "unary_extra_message",
            LimitViolation::Malformed(_) => "malformed",
        }
    }

    /// When the sender should retry, for violations that pass.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LimitViolation::ConnectionShare { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}
