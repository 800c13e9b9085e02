//! What a payload's outcome writes to the log, bounded whatever the sender sent
//! (`docs/operations.md#logs`): one summary line per payload with counts by reason and a sample
//! of IDs, at most one `ERROR` line per kind of failure (what Sentry receives), and per-event
//! detail only at debug level.

use std::borrow::Cow;
use std::time::Duration;

use crate::pipeline::{DropReason, EventFailure, OversizedSample, Summary};

/// At most this many event IDs are named in one log line.
pub const SAMPLED_IDS: usize = 10;

/// At most this many kinds of failure (distinct error and retryability) of one payload get an
/// `ERROR` line of their own; the rest are counted in the summary line.
pub const LOGGED_FAILURE_KINDS: usize = 5;

/// Longest sender-controlled text (an ID, a feature) repeated in a log field, in bytes.
const MAX_ID_BYTES: usize = 64;

/// Longest error or detail text in a log field, in bytes.
const MAX_DETAIL_BYTES: usize = 512;

/// A publish slower than this is flagged in the payload's log line (`docs/compatibility.md` §2).
const SLOW_PUBLISH: Duration = Duration::from_secs(10);

/// Why a canceled payload's events failed, as its summary line says.
pub const CANCELED: &str = "context canceled: the sender went away";

/// Logs what became of a payload.
pub fn log_summary(summary: &Summary, publisher: &str, duration: Duration, canceled: bool) {
    for dropped in &summary.dropped {
        tracing::debug!(
            source = publisher,
            eventID = %bounded(&dropped.id, MAX_ID_BYTES),
            reason = dropped.reason.as_str(),
            detail = %bounded(&dropped.detail, MAX_DETAIL_BYTES),
            "dropped event"
        );
    }
    for failure in &summary.failed {
        tracing::debug!(
            source = publisher,
            eventID = %bounded(&failure.id, MAX_ID_BYTES),
            retryable = failure.retryable,
            error = %bounded(&failure.error, MAX_DETAIL_BYTES),
            "event not acknowledged"
        );
    }
    if !summary.dropped.is_empty() {
        log_dropped(summary, publisher);
    }
    if let Some(oversized) = &summary.oversized {
        let count = summary
            .dropped
            .iter()
            .filter(|dropped| dropped.reason == DropReason::Oversized)
            .count();
        log_oversized(oversized, count, publisher);
    }
    if summary.submitted == 0 {
        tracing::info!(source = publisher, "empty events payload");
        return;
    }
    if summary.failed.is_empty() {
        tracing::info!(
            source = publisher,
            result = summary.result.as_str(),
            submitted = summary.submitted,
            succeeded = summary.succeeded.len(),
            failed = 0,
            dropped = summary.dropped.len(),
            duplicates = summary.duplicates,
            duration = duration.as_secs_f64(),
            "{}",
            summary.result.message()
        );
        return;
    }
    if canceled {
        // The original logs canceled publishes as plain strings, keeping them out of Sentry.
        tracing::warn!(
            source = publisher,
            result = summary.result.as_str(),
            submitted = summary.submitted,
            succeeded = summary.succeeded.len(),
            failed = summary.failed.len(),
            duration = duration.as_secs_f64(),
            reason = CANCELED,
            "{}",
            summary.result.message()
        );
        return;
    }
    let kinds = failure_kinds(&summary.failed);
    // One line per kind of failure, carrying an `error` field: what Sentry receives.
    for kind in &kinds.logged {
        let first = kind.first;
        tracing::error!(
            source = publisher,
            eventID = %bounded(&first.id, MAX_ID_BYTES),
            eventFeature = %bounded(&first.feature, MAX_ID_BYTES),
            eventAction = %bounded(&first.action, MAX_ID_BYTES),
            retryable = first.retryable,
            error = %bounded(&first.error, MAX_DETAIL_BYTES),
            events = kind.count,
            sampleIDs = %sample_ids(kind.ids.iter().copied()),
            "failed to publish event: feature:{:?} action:{:?} id:{:?}",
            bounded(&first.feature, MAX_ID_BYTES),
            bounded(&first.action, MAX_ID_BYTES),
            bounded(&first.id, MAX_ID_BYTES),
        );
    }
    tracing::error!(
        source = publisher,
        result = summary.result.as_str(),
        submitted = summary.submitted,
        succeeded = summary.succeeded.len(),
        failed = summary.failed.len(),
        dropped = summary.dropped.len(),
        duplicates = summary.duplicates,
        duration = duration.as_secs_f64(),
        publishDurationError = (duration > SLOW_PUBLISH).then_some("slow publish"),
        failureKinds = kinds.logged.len() + kinds.unlogged,
        failedIDs = %sample_ids(summary.failed.iter().map(|f| f.id.as_str())),
        "{}",
        summary.result.message()
    );
}

/// The summary of a payload's dropped events: counts by reason, an example of each reason's
/// detail, and a sample of IDs.
fn log_dropped(summary: &Summary, publisher: &str) {
    let mut counts = [0usize; DropReason::ALL.len()];
    let mut examples: [Option<&str>; DropReason::ALL.len()] = Default::default();
    for dropped in &summary.dropped {
        let index = dropped.reason as usize;
        counts[index] += 1;
        examples[index].get_or_insert(&dropped.detail);
    }
    let count = |reason: DropReason| Some(counts[reason as usize]).filter(|&n| n > 0);
    let examples: Vec<String> = DropReason::ALL
        .iter()
        .filter_map(|&reason| {
            examples[reason as usize]
                .map(|detail| format!("{}: {}", reason.as_str(), bounded(detail, MAX_DETAIL_BYTES)))
        })
        .collect();
    tracing::info!(
        source = publisher,
        dropped = summary.dropped.len(),
        invalid = count(DropReason::Invalid),
        oversized = count(DropReason::Oversized),
        policy = count(DropReason::Policy),
        rejected = count(DropReason::Rejected),
        examples = %examples.join("; "),
        sampleIDs = %sample_ids(summary.dropped.iter().map(|d| d.id.as_str())),
        "dropped events"
    );
}

/// One `ERROR` line (so one Sentry event) for a payload's oversized events, naming the first.
pub fn log_oversized(oversized: &OversizedSample, count: usize, publisher: &str) {
    tracing::error!(
        source = publisher,
        error = "event is oversized",
        eventID = %bounded(&oversized.id, MAX_ID_BYTES),
        eventFeature = %bounded(&oversized.feature, MAX_ID_BYTES),
        eventAction = %bounded(&oversized.action, MAX_ID_BYTES),
        size = oversized.size,
        events = count,
        eventSnippet = %oversized.snippet,
        "discarding oversized events"
    );
}

/// Failures of one kind: same error, same retryability.
struct FailureKind<'a> {
    first: &'a EventFailure,
    count: usize,
    ids: Vec<&'a str>,
}

/// A payload's failures by kind: the first [`LOGGED_FAILURE_KINDS`] kinds, and how many more.
struct FailureKinds<'a> {
    logged: Vec<FailureKind<'a>>,
    unlogged: usize,
}

fn failure_kinds(failed: &[EventFailure]) -> FailureKinds<'_> {
    let mut kinds = FailureKinds {
        logged: Vec::new(),
        unlogged: 0,
    };
    let mut unlogged_errors: Vec<(&str, bool)> = Vec::new();
    for failure in failed {
        let same = |kind: &&mut FailureKind<'_>| {
            kind.first.error == failure.error && kind.first.retryable == failure.retryable
        };
        if let Some(kind) = kinds.logged.iter_mut().find(same) {
            kind.count += 1;
            if kind.ids.len() < SAMPLED_IDS {
                kind.ids.push(&failure.id);
            }
        } else if kinds.logged.len() < LOGGED_FAILURE_KINDS {
            kinds.logged.push(FailureKind {
                first: failure,
                count: 1,
                ids: vec![&failure.id],
            });
        } else if unlogged_errors.len() < LOGGED_FAILURE_KINDS
            && !unlogged_errors.contains(&(failure.error.as_str(), failure.retryable))
        {
            // Counted up to a bound: beyond it the summary says "at least".
            unlogged_errors.push((&failure.error, failure.retryable));
        }
    }
    kinds.unlogged = unlogged_errors.len();
    kinds
}

/// Up to [`SAMPLED_IDS`] IDs, each bounded, then how many more.
fn sample_ids<'a>(ids: impl ExactSizeIterator<Item = &'a str>) -> String {
    let total = ids.len();
    let mut sample: Vec<String> = ids
        .take(SAMPLED_IDS)
        .map(|id| format!("{:?}", bounded(id, MAX_ID_BYTES)))
        .collect();
    if total > SAMPLED_IDS {
        sample.push(format!("and {} more", total - SAMPLED_IDS));
    }
    sample.join(", ")
}

/// `text` cut to at most `max` bytes on a character boundary, marked with `...` when cut.
pub fn bounded(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}...", &text[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(bounded("short", 64), "short");
        assert_eq!(bounded("abcdef", 3), "abc...");
        assert_eq!(bounded("ééé", 3), "é...");
    }

    #[test]
    fn an_id_sample_is_bounded_and_says_how_many_more() {
        let ids: Vec<String> = (0..100_000).map(|i| format!("id-{i}")).collect();
        let sample = sample_ids(ids.iter().map(String::as_str));
        assert!(sample.starts_with(r#""id-0", "id-1""#), "{sample}");
        assert!(sample.ends_with("and 99990 more"), "{sample}");
        let long = "x".repeat(10_000);
        assert!(sample_ids([long.as_str()].into_iter()).len() < MAX_ID_BYTES + 10);
    }

    #[test]
    fn failures_are_grouped_by_error_and_retryability_up_to_a_bound() {
        let failure = |i: usize, error: String| EventFailure {
            id: format!("id-{i}"),
            feature: "f".into(),
            action: "a".into(),
            error,
            retryable: true,
        };
        let failed: Vec<EventFailure> = (0..1000)
            .map(|i| failure(i, format!("error {}", i % 20)))
            .collect();
        let kinds = failure_kinds(&failed);
        assert_eq!(kinds.logged.len(), LOGGED_FAILURE_KINDS);
        assert_eq!(kinds.logged[0].count, 50);
        assert_eq!(kinds.logged[0].ids.len(), SAMPLED_IDS);
        assert_eq!(kinds.unlogged, LOGGED_FAILURE_KINDS);
    }
}
