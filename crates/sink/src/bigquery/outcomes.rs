//! insertAll answers as per-event outcomes. Pure: no I/O.
//!
//! BigQuery lists the rows it did not insert in `insertErrors`, by index in the request. A row is
//! a permanent failure only when every error BigQuery gives for it has the reason `invalid` *and*
//! is caused by the event (see [`invalid_row_cause`]): an `invalid` that says the table no longer
//! matches the schema is retryable, because retrying succeeds once the table is repaired, and
//! acknowledging it would lose every instance event meanwhile. Anything else — `stopped`
//! (collateral of another row's error in the same request), `timeout`, `backendError`, an unknown
//! reason, or an error that names no row we sent — is retryable, and no row that might not have
//! been inserted is reported delivered.

use std::collections::BTreeMap;

use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::error_proto::ErrorProto;
use gcp_bigquery_client::model::table_data_insert_all_response::TableDataInsertAllResponse;

use crate::{FailureCause, PublishOutcome};

/// The reason BigQuery gives for a row that does not fit the table.
const INVALID: &str = "invalid";

/// The column that carries what the sender sent; every other column holds values the gateway
/// writes itself, always of the schema's type (`deploy/bigquery/events.schema.json`).
const SENDER_COLUMN: &str = "payload";

/// Phrases of BigQuery's row errors that describe the table, not the row.
const SCHEMA_PHRASES: [&str; 3] = ["no such field", "missing required field", "schema"];

/// Whose fault an `invalid` row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidCause {
    /// The event's own content cannot be stored (its payload, or the row as a whole): permanent.
    Event,
    /// The table does not match the gateway's schema (a column missing, added as required, or of
    /// another type): retryable, and the sink is unhealthy until an insert works again.
    Table,
}

/// Tells an event-caused `invalid` row error from a table-caused one, by the error's `location`
/// (the column, possibly empty) and `message`. Shared by every BigQuery write path.
///
/// - a message about the table's fields (`no such field: x.`, `Missing required field: x.`,
///   anything naming the schema) is the table's fault;
/// - an error located at a column other than `payload` is the table's fault too: the gateway
///   writes those values itself, always of the schema's type, so a refusal means the column
///   changed;
/// - an error at `payload` (or inside it), or about the row as a whole, is the event's.
pub fn invalid_row_cause(location: Option<&str>, message: Option<&str>) -> InvalidCause {
    let message = message.unwrap_or_default().to_ascii_lowercase();
    if SCHEMA_PHRASES.iter().any(|phrase| message.contains(phrase)) {
        return InvalidCause::Table;
    }
    let column = location
        .unwrap_or_default()
        .split(['.', '['])
        .next()
        .unwrap_or_default()
        .trim();
    if column.is_empty() || column == SENDER_COLUMN {
        InvalidCause::Event
    } else {
        InvalidCause::Table
    }
}

/// The outcomes of one insertAll request, and whether BigQuery said the table does not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// One per row, in request order.
    pub(crate) outcomes: Vec<PublishOutcome>,
    /// A table-caused row error (see [`invalid_row_cause`]), for the sink's health.
    pub(crate) schema_mismatch: Option<String>,
}

/// One outcome per row of a request of `rows` rows that BigQuery answered with `response`.
pub(crate) fn from_response(rows: usize, response: &TableDataInsertAllResponse) -> Answer {
    let mut errors_by_row: BTreeMap<usize, Vec<&ErrorProto>> = BTreeMap::new();
    let mut unattributed = Vec::new();
    for insert_error in response.insert_errors.iter().flatten() {
        let errors: Vec<&ErrorProto> = insert_error.errors.iter().flatten().collect();
        match insert_error
            .index
            .and_then(|index| usize::try_from(index).ok())
            .filter(|index| *index < rows)
        {
            Some(index) => errors_by_row.entry(index).or_default().extend(errors),
            None => unattributed.push(format!(
                "index {:?}: {}",
                insert_error.index,
                summarize(&errors)
            )),
        }
    }
    let mut outcomes = vec![PublishOutcome::Delivered; rows];
    let mut schema_mismatch = None;
    for (index, errors) in errors_by_row {
        let table_errors: Vec<&ErrorProto> = errors
            .iter()
            .copied()
            .filter(|e| {
                e.reason.as_deref() == Some(INVALID)
                    && invalid_row_cause(e.location.as_deref(), e.message.as_deref())
                        == InvalidCause::Table
            })
            .collect();
        if !table_errors.is_empty() {
            let reason = format!(
                "the BigQuery table does not match the gateway's schema: {}",
                summarize(&table_errors)
            );
            schema_mismatch.get_or_insert_with(|| reason.clone());
            outcomes[index] = PublishOutcome::retryable(FailureCause::SchemaMismatch, reason);
        } else {
            outcomes[index] = row_outcome(&errors);
        }
    }
    if !unattributed.is_empty() {
        // We cannot tell which rows these errors are about, so none of the rest counts as inserted.
        let reason = format!(
            "insertAll reported errors for rows it did not identify: {}",
            unattributed.join("; ")
        );
        for outcome in &mut outcomes {
            if outcome.is_delivered() {
                *outcome = PublishOutcome::retryable(FailureCause::Other, reason.clone());
            }
        }
    }
    Answer {
        outcomes,
        schema_mismatch,
    }
}

fn row_outcome(errors: &[&ErrorProto]) -> PublishOutcome {
    let summary = summarize(errors);
    let all_invalid =
        !errors.is_empty() && errors.iter().all(|e| e.reason.as_deref() == Some(INVALID));
    if all_invalid {
        PublishOutcome::permanent(
            FailureCause::Rejected,
            format!("BigQuery rejected the row: {summary}"),
        )
    } else {
        PublishOutcome::retryable(
            FailureCause::Unavailable,
            format!("BigQuery did not insert the row: {summary}"),
        )
    }
}

/// `reason: message` for each error, or a placeholder when BigQuery gave none.
fn summarize(errors: &[&ErrorProto]) -> String {
    if errors.is_empty() {
        return "no reason given".to_string();
    }
    errors
        .iter()
        .map(|error| {
            let reason = error.reason.as_deref().unwrap_or("unknown");
            match (error.location.as_deref(), error.message.as_deref()) {
                (Some(location), Some(message)) if !location.is_empty() && !message.is_empty() => {
                    format!("{reason} ({location}): {message}")
                }
                (_, Some(message)) if !message.is_empty() => format!("{reason}: {message}"),
                _ => reason.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a whole request failed, for the retryable outcome of each of its rows.
pub(crate) fn request_error(err: &BQError) -> String {
    match err {
        BQError::ResponseError { error } => {
            let error = &error.error;
            let reasons: Vec<&str> = error
                .errors
                .iter()
                .filter_map(|e| e.get("reason").map(String::as_str))
                .collect();
            format!(
                "insertAll failed with HTTP {} {} ({}): {}",
                error.code,
                error.status,
                reasons.join(", "),
                error.message
            )
        }
        BQError::RequestError(err) => match err.status() {
            Some(status) => format!("insertAll failed with HTTP {status}: {err}"),
            None => format!("insertAll request failed: {err}"),
        },
        other => format!("insertAll failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(json: &str) -> TableDataInsertAllResponse {
        serde_json::from_str(json).expect("an insertAll response")
    }

    #[test]
    fn no_insert_errors_means_every_row_was_inserted() {
        let ok = response(r#"{"kind":"bigquery#tableDataInsertAllResponse"}"#);
        assert_eq!(
            from_response(3, &ok).outcomes,
            vec![PublishOutcome::Delivered; 3]
        );
        let empty = response(r#"{"kind":"bigquery#tableDataInsertAllResponse","insertErrors":[]}"#);
        assert_eq!(
            from_response(2, &empty).outcomes,
            vec![PublishOutcome::Delivered; 2]
        );
    }

    /// The shape BigQuery returns when one row of a request does not fit the table and
    /// `skipInvalidRows` is false: the bad row is `invalid`, every other row `stopped`.
    #[test]
    fn invalid_rows_are_permanent_and_stopped_rows_retryable() {
        let recorded = response(
            r#"{
              "kind": "bigquery#tableDataInsertAllResponse",
              "insertErrors": [
                {"index": 0, "errors": [{"reason": "stopped", "location": "", "debugInfo": "", "message": ""}]},
                {"index": 1, "errors": [{"reason": "invalid", "location": "payload", "debugInfo": "",
                  "message": "Invalid JSON: nesting too deep"}]},
                {"index": 2, "errors": [{"reason": "stopped", "location": "", "debugInfo": "", "message": ""}]}
              ]
            }"#,
        );
        let outcomes = from_response(3, &recorded).outcomes;
        assert!(
            matches!(&outcomes[0], PublishOutcome::Retryable(r) if r.message.contains("stopped"))
        );
        assert_eq!(
            outcomes[1],
            PublishOutcome::permanent(
                FailureCause::Rejected,
                "BigQuery rejected the row: invalid (payload): Invalid JSON: nesting too deep"
            )
        );
        assert!(matches!(&outcomes[2], PublishOutcome::Retryable(_)));
    }

    #[test]
    fn with_skip_invalid_rows_only_the_invalid_row_fails() {
        let recorded = response(
            r#"{"insertErrors":[{"index":1,"errors":[{"reason":"invalid","location":"payload","message":"Invalid JSON"}]}]}"#,
        );
        let outcomes = from_response(3, &recorded).outcomes;
        assert_eq!(outcomes[0], PublishOutcome::Delivered);
        assert!(matches!(&outcomes[1], PublishOutcome::Permanent(_)));
        assert_eq!(outcomes[2], PublishOutcome::Delivered);
    }

    #[test]
    fn a_row_with_any_reason_other_than_invalid_is_retryable() {
        let recorded = response(
            r#"{"insertErrors":[
                {"index":0,"errors":[{"reason":"invalid","message":"bad"},{"reason":"backendError","message":"oops"}]},
                {"index":1,"errors":[{"reason":"timeout"}]},
                {"index":2,"errors":[]},
                {"index":3}
            ]}"#,
        );
        let outcomes = from_response(4, &recorded).outcomes;
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, PublishOutcome::Retryable(_))),
            "{outcomes:?}"
        );
    }

    #[test]
    fn an_error_for_an_unknown_row_makes_every_other_row_retryable() {
        let recorded = response(
            r#"{"insertErrors":[
                {"index":1,"errors":[{"reason":"invalid","message":"bad"}]},
                {"index":7,"errors":[{"reason":"invalid","message":"which row?"}]}
            ]}"#,
        );
        let outcomes = from_response(3, &recorded).outcomes;
        assert!(
            matches!(&outcomes[0], PublishOutcome::Retryable(r) if r.message.contains("which row?"))
        );
        assert!(matches!(&outcomes[1], PublishOutcome::Permanent(_)));
        assert!(matches!(&outcomes[2], PublishOutcome::Retryable(_)));
        let no_index = response(r#"{"insertErrors":[{"errors":[{"reason":"invalid"}]}]}"#);
        assert!(
            from_response(2, &no_index)
                .outcomes
                .iter()
                .all(|o| matches!(o, PublishOutcome::Retryable(_)))
        );
    }

    #[test]
    fn invalid_rows_are_told_apart_by_location_and_message() {
        use InvalidCause::{Event, Table};
        let cases = [
            (
                Some("payload"),
                Some("Invalid JSON: nesting too deep"),
                Event,
            ),
            (Some("payload.event"), Some("value too large"), Event),
            (
                None,
                Some("Row larger than the maximum allowed size"),
                Event,
            ),
            (Some(""), None, Event),
            (Some("source"), Some("no such field: source."), Table),
            (
                Some("region"),
                Some("Missing required field: region."),
                Table,
            ),
            (
                Some("event_timestamp"),
                Some("Cannot convert value to integer."),
                Table,
            ),
            (Some("feature"), Some("Field value too long"), Table),
            (None, Some("Row does not match the table schema"), Table),
            (Some("payload"), Some("no such field: payload."), Table),
        ];
        for (location, message, cause) in cases {
            assert_eq!(
                invalid_row_cause(location, message),
                cause,
                "{location:?} {message:?}"
            );
        }
    }

    /// What BigQuery answers for every row once a column the gateway writes is dropped from the
    /// table: each row `invalid`, located at the missing column.
    #[test]
    fn a_table_missing_a_column_makes_rows_retryable_and_reports_the_mismatch() {
        let recorded = response(
            r#"{"insertErrors":[
                {"index":0,"errors":[{"reason":"invalid","location":"source","message":"no such field: source."}]},
                {"index":1,"errors":[{"reason":"invalid","location":"source","message":"no such field: source."}]},
                {"index":2,"errors":[{"reason":"invalid","location":"payload","message":"Invalid JSON"}]}
            ]}"#,
        );
        let answer = from_response(3, &recorded);
        assert!(
            matches!(&answer.outcomes[0], PublishOutcome::Retryable(r) if r.message.contains("does not match")),
            "{answer:?}"
        );
        assert!(matches!(&answer.outcomes[1], PublishOutcome::Retryable(_)));
        assert!(matches!(&answer.outcomes[2], PublishOutcome::Permanent(_)));
        assert!(
            answer
                .schema_mismatch
                .is_some_and(|m| m.contains("no such field: source.")),
        );
        let event_caused = response(
            r#"{"insertErrors":[{"index":0,"errors":[{"reason":"invalid","location":"payload","message":"bad"}]}]}"#,
        );
        assert_eq!(from_response(1, &event_caused).schema_mismatch, None);
    }
}
