//! AppendRows answers, classified for per-event outcomes. Pure: no I/O.
//!
//! On the default stream an AppendRows request is atomic: either every row is committed (an
//! `append_result`), or none is. When BigQuery refuses rows it lists them in `row_errors` (the
//! row itself cannot be stored: a permanent failure of that event, as `invalid` is for
//! insertAll) and commits nothing else of the request, so the other rows must be sent again. Any
//! other error, for the request or the whole connection, leaves every row of the request
//! retryable; an `INVALID_ARGUMENT` or `SCHEMA_MISMATCH_EXTRA_FIELDS` error means the table no
//! longer fits the rows the gateway writes, which also makes the sink unhealthy until an append
//! succeeds again.

use std::collections::BTreeMap;

use gcp_bigquery_client::google::cloud::bigquery::storage::v1::append_rows_response::Response;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::row_error::RowErrorCode;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::storage_error::StorageErrorCode;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::{AppendRowsResponse, StorageError};
use gcp_bigquery_client::google::rpc::Status;
use prost::Message;

use crate::FailureCause;

/// The type URL of the `StorageError` detail BigQuery attaches to its errors.
const STORAGE_ERROR_TYPE: &str =
    "type.googleapis.com/google.cloud.bigquery.storage.v1.StorageError";

/// What BigQuery said about one AppendRows request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Every row of the request is committed.
    Committed,
    /// These rows (index in the request → BigQuery's reason) cannot be stored; nothing of the
    /// request was committed.
    RowErrors(BTreeMap<usize, String>),
    /// Nothing was committed, for a reason that is not any row's fault.
    Failed(Failure),
}

/// Why a whole request (or connection) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// For the retryable outcome of each row and the log.
    pub(crate) reason: String,
    /// The table does not accept the rows the gateway writes (schema mismatch): unhealthy.
    pub(crate) schema_mismatch: bool,
    /// The class of the failure, for metrics.
    pub(crate) cause: FailureCause,
}

/// Classifies the answer to a request of `rows` rows.
pub(crate) fn classify(rows: usize, response: &AppendRowsResponse) -> Answer {
    if !response.row_errors.is_empty() {
        let mut refused = BTreeMap::new();
        for error in &response.row_errors {
            let Some(index) = usize::try_from(error.index).ok().filter(|i| *i < rows) else {
                return Answer::Failed(Failure {
                    reason: format!(
                        "AppendRows reported an error for a row it did not identify (index {}): {}",
                        error.index, error.message
                    ),
                    schema_mismatch: false,
                    cause: FailureCause::Other,
                });
            };
            let code =
                RowErrorCode::try_from(error.code).map_or("UNKNOWN", |code| code.as_str_name());
            refused.insert(
                index,
                format!("BigQuery rejected the row: {code}: {}", error.message),
            );
        }
        return Answer::RowErrors(refused);
    }
    match &response.response {
        Some(Response::AppendResult(_)) => Answer::Committed,
        Some(Response::Error(status)) => Answer::Failed(rpc_failure(status)),
        None => Answer::Failed(Failure {
            reason: "AppendRows answered with neither a result nor an error".into(),
            schema_mismatch: false,
            cause: FailureCause::Other,
        }),
    }
}

/// A `google.rpc.Status` in an AppendRows response.
fn rpc_failure(status: &Status) -> Failure {
    let code = tonic::Code::from_i32(status.code);
    let storage_codes = storage_error_codes(&status.details);
    failure(code, &status.message, &storage_codes)
}

/// The RPC itself ended with `status` (the connection is gone).
pub(crate) fn stream_failure(status: &tonic::Status) -> Failure {
    let storage_codes = Status::decode(status.details())
        .map(|details| storage_error_codes(&details.details))
        .unwrap_or_default();
    failure(status.code(), status.message(), &storage_codes)
}

fn failure(code: tonic::Code, message: &str, storage_codes: &[StorageErrorCode]) -> Failure {
    let schema_mismatch = code == tonic::Code::InvalidArgument
        || storage_codes.contains(&StorageErrorCode::SchemaMismatchExtraFields);
    let storage = storage_codes
        .iter()
        .map(|code| code.as_str_name())
        .collect::<Vec<_>>()
        .join(", ");
    let reason = if storage.is_empty() {
        format!("AppendRows failed: {code:?}: {message}")
    } else {
        format!("AppendRows failed: {code:?} ({storage}): {message}")
    };
    let cause = if schema_mismatch {
        FailureCause::SchemaMismatch
    } else if code == tonic::Code::DeadlineExceeded {
        FailureCause::Timeout
    } else {
        FailureCause::Unavailable
    };
    Failure {
        reason,
        schema_mismatch,
        cause,
    }
}

/// The `StorageError` codes among an error's details.
fn storage_error_codes(details: &[prost_types::Any]) -> Vec<StorageErrorCode> {
    details
        .iter()
        .filter(|any| any.type_url == STORAGE_ERROR_TYPE)
        .filter_map(|any| StorageError::decode(any.value.as_slice()).ok())
        .filter_map(|error| StorageErrorCode::try_from(error.code).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gcp_bigquery_client::google::cloud::bigquery::storage::v1::RowError;
    use gcp_bigquery_client::google::cloud::bigquery::storage::v1::append_rows_response::AppendResult;

    fn committed() -> AppendRowsResponse {
        AppendRowsResponse {
            response: Some(Response::AppendResult(AppendResult { offset: None })),
            ..AppendRowsResponse::default()
        }
    }

    fn error(code: tonic::Code, message: &str, storage: Option<StorageErrorCode>) -> Status {
        Status {
            code: code as i32,
            message: message.into(),
            details: storage
                .map(|code| prost_types::Any {
                    type_url: STORAGE_ERROR_TYPE.into(),
                    value: StorageError {
                        code: code as i32,
                        entity: "projects/p/datasets/d/tables/t".into(),
                        error_message: message.into(),
                    }
                    .encode_to_vec(),
                })
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn an_append_result_commits_every_row() {
        assert_eq!(classify(3, &committed()), Answer::Committed);
    }

    /// BigQuery's shape for a request with bad rows: an INVALID_ARGUMENT error and the rows.
    #[test]
    fn row_errors_name_the_refused_rows_and_nothing_is_committed() {
        let response = AppendRowsResponse {
            response: Some(Response::Error(error(
                tonic::Code::InvalidArgument,
                "Errors found while processing rows. Please refer to the row_errors field for details.",
                None,
            ))),
            row_errors: vec![RowError {
                index: 1,
                code: RowErrorCode::FieldsError as i32,
                message: "Field payload: JSON parsing error".into(),
            }],
            ..AppendRowsResponse::default()
        };
        let Answer::RowErrors(refused) = classify(3, &response) else {
            panic!("row errors expected");
        };
        assert_eq!(refused.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(
            refused[&1],
            "BigQuery rejected the row: FIELDS_ERROR: Field payload: JSON parsing error"
        );
    }

    #[test]
    fn a_row_error_for_an_unknown_row_fails_the_whole_request() {
        let response = AppendRowsResponse {
            row_errors: vec![RowError {
                index: 9,
                code: 1,
                message: "which row?".into(),
            }],
            ..committed()
        };
        let Answer::Failed(failure) = classify(3, &response) else {
            panic!("a failure expected");
        };
        assert!(failure.reason.contains("which row?"), "{failure:?}");
        assert!(!failure.schema_mismatch);
    }

    #[test]
    fn request_errors_are_failures_and_schema_mismatches_say_so() {
        let cases = [
            (error(tonic::Code::Unavailable, "try again", None), false),
            (error(tonic::Code::ResourceExhausted, "quota", None), false),
            (
                error(
                    tonic::Code::NotFound,
                    "no table",
                    Some(StorageErrorCode::TableNotFound),
                ),
                false,
            ),
            (
                error(
                    tonic::Code::InvalidArgument,
                    "Input schema has more fields than BigQuery schema, extra fields: 'ingested_at'",
                    Some(StorageErrorCode::SchemaMismatchExtraFields),
                ),
                true,
            ),
            (
                error(tonic::Code::InvalidArgument, "cannot convert", None),
                true,
            ),
        ];
        for (status, schema_mismatch) in cases {
            let response = AppendRowsResponse {
                response: Some(Response::Error(status.clone())),
                ..AppendRowsResponse::default()
            };
            let Answer::Failed(failure) = classify(2, &response) else {
                panic!("a failure expected for {status:?}");
            };
            assert_eq!(failure.schema_mismatch, schema_mismatch, "{failure:?}");
            assert!(failure.reason.contains(&status.message), "{failure:?}");
        }
        let empty = AppendRowsResponse::default();
        assert!(matches!(classify(1, &empty), Answer::Failed(_)));
    }

    #[test]
    fn a_failed_rpc_reads_the_storage_error_from_its_details() {
        let details = error(
            tonic::Code::FailedPrecondition,
            "extra fields",
            Some(StorageErrorCode::SchemaMismatchExtraFields),
        );
        let status = tonic::Status::with_details(
            tonic::Code::FailedPrecondition,
            "extra fields",
            details.encode_to_vec().into(),
        );
        let failure = stream_failure(&status);
        assert!(failure.schema_mismatch);
        assert!(
            failure.reason.contains("SCHEMA_MISMATCH_EXTRA_FIELDS"),
            "{failure:?}"
        );
        let plain = stream_failure(&tonic::Status::unavailable("connection reset"));
        assert!(!plain.schema_mismatch);
        assert!(plain.reason.contains("connection reset"));
    }
}
