//! The limits on what one sender may send or hold: every one has a default that real senders fit
//! in (see docs/security.md for each one's reason), and each violation is a
//! [`ServerError`](crate::ServerError) variant whose message names the setting.

use std::time::Duration;

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
