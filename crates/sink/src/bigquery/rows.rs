//! Events as insertAll rows, cut into requests within BigQuery's limits. Pure: no I/O.

use chrono::{DateTime, Datelike, Utc};
use gcp_bigquery_client::model::table_data_insert_all_request_rows::TableDataInsertAllRequestRows;
use serde_json::{Value, json};

use crate::PreparedEvent;

/// Rows per insertAll request: BigQuery's recommended maximum.
pub const MAX_ROWS_PER_REQUEST: usize = 500;

/// Bytes per insertAll request body: BigQuery refuses requests over 10 MB, so we stay at or under
/// 10,000,000 (decimal) bytes.
pub const MAX_REQUEST_BYTES: usize = 10_000_000;

/// What the request around the rows costs: `{"ignoreUnknownValues":false,"rows":[...],
/// "skipInvalidRows":true}` plus room to spare.
const ENVELOPE_BYTES: usize = 256;

/// The attribute that names who published an event.
pub(crate) const SOURCE_ATTRIBUTE: &str = "publisher.source";

/// One insertAll request: its rows and the index of each row's event in the published batch.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) indices: Vec<usize>,
    pub(crate) rows: Vec<TableDataInsertAllRequestRows>,
}

/// A batch cut into requests, plus the events that cannot be inserted at all.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) requests: Vec<Request>,
    /// Events no request can carry (index and reason): they are permanent failures.
    pub(crate) rejected: Vec<(usize, String)>,
}

/// The row of `event`, following `deploy/bigquery/events.schema.json`.
pub(crate) fn row(event: &PreparedEvent, ingested_at: DateTime<Utc>) -> Result<Value, String> {
    let payload = std::str::from_utf8(&event.payload)
        .map_err(|err| format!("payload is not UTF-8: {err}"))?;
    Ok(json!({
        "event_id": event.id,
        "event_timestamp": bigquery_timestamp(&event.timestamp),
        "feature": event.feature,
        "action": event.action,
        "source": event.attributes.get(SOURCE_ATTRIBUTE),
        // insertAll takes JSON column values as JSON text.
        "payload": payload,
        "ingested_at": format_timestamp(ingested_at),
    }))
}

/// The timestamp as BigQuery TIMESTAMP text, or `None` (NULL) when BigQuery cannot hold it.
fn bigquery_timestamp(timestamp: &prost_types::Timestamp) -> Option<String> {
    bigquery_time(timestamp).map(format_timestamp)
}

/// The timestamp, or `None` when BigQuery's TIMESTAMP cannot hold it (outside years 1 to 9999,
/// or not a valid timestamp at all).
pub(crate) fn bigquery_time(timestamp: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(timestamp.nanos).ok()?;
    let time = DateTime::from_timestamp(timestamp.seconds, nanos)?;
    (1..=9999).contains(&time.year()).then_some(time)
}

fn format_timestamp(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Cuts `events` into insertAll requests of at most `max_rows` rows and `max_bytes` bytes each,
/// in input order; an event whose row alone exceeds `max_bytes` is rejected.
pub(crate) fn plan(
    events: &[PreparedEvent],
    ingested_at: DateTime<Utc>,
    max_rows: usize,
    max_bytes: usize,
) -> Plan {
    let max_rows = max_rows.max(1);
    let mut plan = Plan::default();
    let mut current = Request {
        indices: Vec::new(),
        rows: Vec::new(),
    };
    let mut current_bytes = ENVELOPE_BYTES;
    for (index, event) in events.iter().enumerate() {
        let row = match row(event, ingested_at) {
            Ok(json) => TableDataInsertAllRequestRows {
                insert_id: Some(event.id.clone()),
                json,
            },
            Err(reason) => {
                plan.rejected.push((index, reason));
                continue;
            }
        };
        // The row as it will be sent, plus the comma that separates it from the next.
        let row_bytes = serde_json::to_vec(&row).map_or(usize::MAX, |bytes| bytes.len() + 1);
        if row_bytes.saturating_add(ENVELOPE_BYTES) > max_bytes {
            plan.rejected.push((
                index,
                format!(
                    "row of {row_bytes} bytes exceeds the insertAll request limit of {max_bytes} bytes"
                ),
            ));
            continue;
        }
        if !current.rows.is_empty()
            && (current.rows.len() == max_rows || current_bytes + row_bytes > max_bytes)
        {
            plan.requests.push(std::mem::replace(
                &mut current,
                Request {
                    indices: Vec::new(),
                    rows: Vec::new(),
                },
            ));
            current_bytes = ENVELOPE_BYTES;
        }
        current.indices.push(index);
        current.rows.push(row);
        current_bytes += row_bytes;
    }
    if !current.rows.is_empty() {
        plan.requests.push(current);
    }
    plan
}

/// The event both row encodings are tested with: a licensed instance's, with nanoseconds.
#[cfg(test)]
pub(crate) fn test_event(id: &str, payload: &str) -> PreparedEvent {
    PreparedEvent::builder(id)
        .feature("cody.completion")
        .action("accepted")
        .timestamp(1_700_000_000, 123_456_789)
        .payload(payload.to_string())
        .attribute(SOURCE_ATTRIBUTE, "licensed_instance")
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_event as event;

    fn ingested_at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid")
    }

    #[test]
    fn a_row_has_every_column_of_the_schema() {
        let row = row(&event("e1", r#"{"event":{"id":"e1"}}"#), ingested_at()).expect("a row");
        assert_eq!(
            row,
            json!({
                "event_id": "e1",
                "event_timestamp": "2023-11-14T22:13:20.123456Z",
                "feature": "cody.completion",
                "action": "accepted",
                "source": "licensed_instance",
                "payload": r#"{"event":{"id":"e1"}}"#,
                "ingested_at": "2027-01-15T08:00:00.000000Z",
            })
        );
        let schema: Vec<Value> = serde_json::from_str(include_str!(
            "../../../../deploy/bigquery/events.schema.json"
        ))
        .expect("the schema is JSON");
        let columns: Vec<&str> = schema
            .iter()
            .filter_map(|field| field["name"].as_str())
            .collect();
        let mut keys: Vec<&str> = row
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut sorted_columns = columns.clone();
        keys.sort_unstable();
        sorted_columns.sort_unstable();
        assert_eq!(keys, sorted_columns);
    }

    #[test]
    fn timestamps_bigquery_cannot_hold_become_null() {
        let mut out_of_range = event("e1", "{}");
        out_of_range.timestamp.seconds = 300_000_000_000; // year 11476
        assert_eq!(
            row(&out_of_range, ingested_at()).expect("a row")["event_timestamp"],
            Value::Null
        );
        let mut negative_nanos = event("e2", "{}");
        negative_nanos.timestamp.nanos = -1;
        assert_eq!(
            row(&negative_nanos, ingested_at()).expect("a row")["event_timestamp"],
            Value::Null
        );
    }

    #[test]
    fn a_missing_source_attribute_is_null() {
        let mut event = event("e1", "{}");
        event.attributes.clear();
        assert_eq!(
            row(&event, ingested_at()).expect("a row")["source"],
            Value::Null
        );
    }

    #[test]
    fn requests_hold_at_most_max_rows_in_input_order_with_the_id_as_insert_id() {
        let events: Vec<PreparedEvent> = (0..1203).map(|i| event(&format!("e{i}"), "{}")).collect();
        let plan = plan(
            &events,
            ingested_at(),
            MAX_ROWS_PER_REQUEST,
            MAX_REQUEST_BYTES,
        );
        let sizes: Vec<usize> = plan.requests.iter().map(|r| r.rows.len()).collect();
        assert_eq!(sizes, [500, 500, 203]);
        let indices: Vec<usize> = plan
            .requests
            .iter()
            .flat_map(|r| r.indices.clone())
            .collect();
        assert_eq!(indices, (0..1203).collect::<Vec<_>>());
        for request in &plan.requests {
            for (index, row) in request.indices.iter().zip(&request.rows) {
                assert_eq!(row.insert_id.as_deref(), Some(events[*index].id.as_str()));
            }
        }
        assert!(plan.rejected.is_empty());
    }

    #[test]
    fn requests_stay_under_the_byte_limit() {
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(3_000_000));
        let events: Vec<PreparedEvent> = (0..7).map(|i| event(&format!("e{i}"), &big)).collect();
        let plan = plan(
            &events,
            ingested_at(),
            MAX_ROWS_PER_REQUEST,
            MAX_REQUEST_BYTES,
        );
        let sizes: Vec<usize> = plan.requests.iter().map(|r| r.rows.len()).collect();
        assert_eq!(sizes, [3, 3, 1]);
        for request in &plan.requests {
            let body = json!({"ignoreUnknownValues": false, "rows": request.rows, "skipInvalidRows": true});
            let bytes = serde_json::to_vec(&body).expect("serializes").len();
            assert!(bytes <= MAX_REQUEST_BYTES, "{bytes} bytes");
        }
    }

    #[test]
    fn a_row_too_large_for_any_request_is_rejected_and_the_rest_still_sent() {
        // Quotes double in size once the payload is a JSON string inside the row.
        let huge = format!(r#"{{"q":"{}"}}"#, "\\\"".repeat(2_600_000));
        let events = [
            event("small", "{}"),
            event("huge", &huge),
            event("after", "{}"),
        ];
        let plan = plan(
            &events,
            ingested_at(),
            MAX_ROWS_PER_REQUEST,
            MAX_REQUEST_BYTES,
        );
        assert_eq!(plan.rejected.len(), 1);
        assert_eq!(plan.rejected[0].0, 1);
        assert!(
            plan.rejected[0]
                .1
                .contains("exceeds the insertAll request limit")
        );
        let indices: Vec<usize> = plan
            .requests
            .iter()
            .flat_map(|r| r.indices.clone())
            .collect();
        assert_eq!(indices, [0, 2]);
    }
}
