//! A stream's closing: its line in the log and its stream metrics.

use std::time::Duration;

use tonic::Status;

use crate::metrics::Metrics;

/// A stream taking longer than this is logged as slow (a warning: a sender can hold a stream
/// open at will, so it is not an error and never reaches Sentry).
const SLOW_STREAM: Duration = Duration::from_secs(30);

/// A stream from `publisher` (`invalid` if it never identified itself) ended after `duration`,
/// having sent `events` events, with `error` if it failed.
pub fn stream_closed(
    metrics: &Metrics,
    publisher: &str,
    events: usize,
    duration: Duration,
    error: Option<&Status>,
) {
    metrics.stream_ended(events, error.is_some(), publisher);
    match error {
        Some(status) => tracing::warn!(
            source = publisher,
            code = ?status.code(),
            error = status.message(),
            events,
            duration = duration.as_secs_f64(),
            "request failed"
        ),
        None if duration > SLOW_STREAM => tracing::warn!(
            source = publisher,
            reason = "slow request",
            events,
            duration = duration.as_secs_f64(),
            "request done"
        ),
        None => tracing::info!(
            source = publisher,
            events,
            duration = duration.as_secs_f64(),
            "request done"
        ),
    }
}
