//! insertAll answers as per-event outcomes. Pure: no I/O.
//!
//! BigQuery lists the rows it did not insert in `insertErrors`, by index in the request. A row is
//! a permanent failure only when every error BigQuery gives for it has the reason `invalid` (the
//! row itself cannot be stored). Anything else — `stopped` (collateral of another row's error in
//! the same request), `timeout`, `backendError`, an unknown reason, or an error that names no row
//! we sent — is retryable, and no row that might not have been inserted is reported delivered.

use std::collections::BTreeMap;

use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::error_proto::ErrorProto;
use gcp_bigquery_client::model::table_data_insert_all_response::TableDataInsertAllResponse;

use crate::PublishOutcome;

/// The reason BigQuery gives for a row that does not fit the table.
const INVALID: &str = "invalid";

/// One outcome per row of a request of `rows` rows that BigQuery answered with `response`.
pub(crate) fn from_response(
    rows: usize,
    response: &TableDataInsertAllResponse,
) -> Vec<PublishOutcome> {
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
    for (index, errors) in errors_by_row {
        outcomes[index] = row_outcome(&errors);
    }
    if !unattributed.is_empty() {
        // We cannot tell which rows these errors are about, so none of the rest counts as inserted.
        let reason = format!(
            "insertAll reported errors for rows it did not identify: {}",
            unattributed.join("; ")
        );
        for outcome in &mut outcomes {
            if outcome.is_delivered() {
                *outcome = PublishOutcome::Retryable(reason.clone());
            }
        }
    }
    outcomes
}

fn row_outcome(errors: &[&ErrorProto]) -> PublishOutcome {
    let summary = summarize(errors);
    let all_invalid =
        !errors.is_empty() && errors.iter().all(|e| e.reason.as_deref() == Some(INVALID));
    if all_invalid {
        PublishOutcome::Permanent(format!("BigQuery rejected the row: {summary}"))
    } else {
        PublishOutcome::Retryable(format!("BigQuery did not insert the row: {summary}"))
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
        assert_eq!(from_response(3, &ok), vec![PublishOutcome::Delivered; 3]);
        let empty = response(r#"{"kind":"bigquery#tableDataInsertAllResponse","insertErrors":[]}"#);
        assert_eq!(from_response(2, &empty), vec![PublishOutcome::Delivered; 2]);
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
                {"index": 1, "errors": [{"reason": "invalid", "location": "event_timestamp", "debugInfo": "",
                  "message": "Invalid timestamp: 'yesterday'"}]},
                {"index": 2, "errors": [{"reason": "stopped", "location": "", "debugInfo": "", "message": ""}]}
              ]
            }"#,
        );
        let outcomes = from_response(3, &recorded);
        assert!(matches!(&outcomes[0], PublishOutcome::Retryable(r) if r.contains("stopped")));
        assert_eq!(
            outcomes[1],
            PublishOutcome::Permanent(
                "BigQuery rejected the row: invalid (event_timestamp): Invalid timestamp: 'yesterday'"
                    .into()
            )
        );
        assert!(matches!(&outcomes[2], PublishOutcome::Retryable(_)));
    }

    #[test]
    fn with_skip_invalid_rows_only_the_invalid_row_fails() {
        let recorded = response(
            r#"{"insertErrors":[{"index":1,"errors":[{"reason":"invalid","location":"payload","message":"Invalid JSON"}]}]}"#,
        );
        let outcomes = from_response(3, &recorded);
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
        let outcomes = from_response(4, &recorded);
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
        let outcomes = from_response(3, &recorded);
        assert!(matches!(&outcomes[0], PublishOutcome::Retryable(r) if r.contains("which row?")));
        assert!(matches!(&outcomes[1], PublishOutcome::Permanent(_)));
        assert!(matches!(&outcomes[2], PublishOutcome::Retryable(_)));
        let no_index = response(r#"{"insertErrors":[{"errors":[{"reason":"invalid"}]}]}"#);
        assert!(
            from_response(2, &no_index)
                .iter()
                .all(|o| matches!(o, PublishOutcome::Retryable(_)))
        );
    }
}
