//! Events as Storage Write API rows: one protobuf message per event, described to BigQuery by a
//! descriptor built from `deploy/bigquery/events.schema.json`, cut into AppendRows requests within
//! the API's limits. Pure: no I/O.

use std::sync::LazyLock;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::ProtoSchema;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto};
use serde::Deserialize;

use super::rows::{SOURCE_ATTRIBUTE, bigquery_time};
use crate::PreparedEvent;

/// Bytes per AppendRows request: BigQuery refuses requests over 10 MB.
pub const MAX_APPEND_REQUEST_BYTES: usize = 10_000_000;

/// Room kept in each request for everything but the rows: the writer schema (about 200 bytes),
/// the stream name (a table path of up to about 2 KB), the trace ID and the protobuf framing.
/// A unit test checks the real overhead stays far below it.
pub const APPEND_REQUEST_HEADROOM: usize = 64 * 1024;

/// The table schema the gateway writes, as shipped for `bq mk`.
const SCHEMA_JSON: &str = include_str!("../../../../deploy/bigquery/events.schema.json");

/// One row of the events table, in the field numbers of [`writer_schema`] (a column's number is
/// its position in the schema file, from 1). `bytes` fields are sent where the descriptor says
/// `string`: the wire format is the same, and the payload is checked to be UTF-8 first, so it
/// is shared rather than copied.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct EventRow {
    #[prost(string, required, tag = "1")]
    pub(crate) event_id: String,
    /// Microseconds since the epoch (TIMESTAMP); absent (NULL) outside BigQuery's range.
    #[prost(int64, optional, tag = "2")]
    pub(crate) event_timestamp: Option<i64>,
    #[prost(string, optional, tag = "3")]
    pub(crate) feature: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub(crate) action: Option<String>,
    #[prost(string, optional, tag = "5")]
    pub(crate) source: Option<String>,
    /// The JSON column, as JSON text.
    #[prost(bytes = "bytes", optional, tag = "6")]
    pub(crate) payload: Option<Bytes>,
    #[prost(int64, optional, tag = "7")]
    pub(crate) ingested_at: Option<i64>,
}

/// A column of `deploy/bigquery/events.schema.json`.
#[derive(Debug, Deserialize)]
struct Column {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    mode: Option<String>,
}

/// The writer schema sent with the first request of each connection: a message with one field
/// per column of the shipped schema, typed as the Storage Write API expects (TIMESTAMP as int64
/// microseconds, JSON as string).
pub(crate) fn writer_schema() -> ProtoSchema {
    static SCHEMA: LazyLock<ProtoSchema> = LazyLock::new(|| {
        let descriptor = descriptor_from_schema(SCHEMA_JSON)
            .unwrap_or_else(|err| panic!("deploy/bigquery/events.schema.json: {err}"));
        ProtoSchema {
            proto_descriptor: Some(descriptor),
        }
    });
    SCHEMA.clone()
}

/// The protobuf descriptor of a BigQuery JSON schema of scalar columns.
fn descriptor_from_schema(schema_json: &str) -> Result<DescriptorProto, String> {
    let columns: Vec<Column> =
        serde_json::from_str(schema_json).map_err(|err| format!("not a BigQuery schema: {err}"))?;
    let field = columns
        .iter()
        .enumerate()
        .map(|(position, column)| {
            let kind = match column.kind.as_str() {
                "STRING" | "JSON" => Type::String,
                "TIMESTAMP" | "INTEGER" | "INT64" => Type::Int64,
                other => return Err(format!("column {}: unsupported type {other}", column.name)),
            };
            let label = match column.mode.as_deref().unwrap_or("NULLABLE") {
                "REQUIRED" => Label::Required,
                "NULLABLE" => Label::Optional,
                other => return Err(format!("column {}: unsupported mode {other}", column.name)),
            };
            Ok(FieldDescriptorProto {
                name: Some(column.name.clone()),
                number: Some(i32::try_from(position + 1).map_err(|err| err.to_string())?),
                label: Some(label.into()),
                r#type: Some(kind.into()),
                ..FieldDescriptorProto::default()
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(DescriptorProto {
        name: Some("EventRow".to_string()),
        field,
        ..DescriptorProto::default()
    })
}

/// The columns of the shipped schema: (name, BigQuery type, REQUIRED).
pub(crate) fn schema_columns() -> Vec<(String, String, bool)> {
    let columns: Vec<Column> = serde_json::from_str(SCHEMA_JSON).unwrap_or_default();
    columns
        .into_iter()
        .map(|c| {
            let required = c.mode.as_deref() == Some("REQUIRED");
            (c.name, c.kind, required)
        })
        .collect()
}

/// The row of `event`, or why it cannot be one.
pub(crate) fn row(event: &PreparedEvent, ingested_at: DateTime<Utc>) -> Result<EventRow, String> {
    std::str::from_utf8(&event.payload).map_err(|err| format!("payload is not UTF-8: {err}"))?;
    Ok(EventRow {
        event_id: event.id.clone(),
        event_timestamp: bigquery_time(&event.timestamp).map(|t| t.timestamp_micros()),
        feature: Some(event.feature.clone()),
        action: Some(event.action.clone()),
        source: event.attributes.get(SOURCE_ATTRIBUTE).cloned(),
        payload: Some(event.payload.clone()),
        ingested_at: Some(ingested_at.timestamp_micros()),
    })
}

/// One AppendRows request's rows: each serialized, with the index of its event in the batch.
#[derive(Debug, Default)]
pub(crate) struct Append {
    pub(crate) indices: Vec<usize>,
    pub(crate) rows: Vec<Vec<u8>>,
}

/// A batch cut into appends, plus the events that cannot be written at all.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) appends: Vec<Append>,
    /// Events no request can carry (index and reason): they are permanent failures.
    pub(crate) rejected: Vec<(usize, String)>,
}

/// What a serialized row adds to a request: the `serialized_rows` tag, its length, the row.
fn framed_len(row_len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(row_len as u64) + row_len
}

/// Cuts `events` into appends of at most `max_rows` rows and `max_bytes` bytes of framed rows
/// each, in input order; an event whose row alone exceeds `max_bytes` is rejected.
pub(crate) fn plan(
    events: &[PreparedEvent],
    ingested_at: DateTime<Utc>,
    max_rows: usize,
    max_bytes: usize,
) -> Plan {
    let max_rows = max_rows.max(1);
    let mut plan = Plan::default();
    let mut current = Append::default();
    let mut current_bytes = 0;
    for (index, event) in events.iter().enumerate() {
        let encoded = match row(event, ingested_at) {
            Ok(row) => row.encode_to_vec(),
            Err(reason) => {
                plan.rejected.push((index, reason));
                continue;
            }
        };
        let row_bytes = framed_len(encoded.len());
        if row_bytes > max_bytes {
            plan.rejected.push((
                index,
                format!(
                    "row of {row_bytes} bytes exceeds the AppendRows request limit of {max_bytes} bytes"
                ),
            ));
            continue;
        }
        if !current.rows.is_empty()
            && (current.rows.len() == max_rows || current_bytes + row_bytes > max_bytes)
        {
            plan.appends.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current.indices.push(index);
        current.rows.push(encoded);
        current_bytes += row_bytes;
    }
    if !current.rows.is_empty() {
        plan.appends.push(current);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use gcp_bigquery_client::google::cloud::bigquery::storage::v1::append_rows_request::{
        ProtoData, Rows,
    };
    use gcp_bigquery_client::google::cloud::bigquery::storage::v1::{AppendRowsRequest, ProtoRows};
    use prost_reflect::{DescriptorPool, DynamicMessage, Value};
    use prost_types::{FileDescriptorProto, FileDescriptorSet};

    use crate::bigquery::rows::test_event as event;

    fn ingested_at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid")
    }

    /// Decodes `row` with the writer schema exactly as BigQuery does: by the descriptor alone.
    fn decode_with_writer_schema(row: &[u8]) -> DynamicMessage {
        let file = FileDescriptorProto {
            name: Some("events.proto".into()),
            syntax: Some("proto2".into()),
            message_type: vec![writer_schema().proto_descriptor.expect("a descriptor")],
            ..FileDescriptorProto::default()
        };
        let pool = DescriptorPool::from_file_descriptor_set(FileDescriptorSet { file: vec![file] })
            .expect("the writer schema is a valid descriptor");
        let message = pool.get_message_by_name("EventRow").expect("EventRow");
        DynamicMessage::decode(message, row).expect("the row decodes with the writer schema")
    }

    #[test]
    fn the_writer_schema_has_every_column_of_the_schema_file_and_decodes_rows() {
        let descriptor = writer_schema().proto_descriptor.expect("a descriptor");
        let names: Vec<&str> = descriptor.field.iter().map(|f| f.name()).collect();
        let columns: Vec<String> = schema_columns().into_iter().map(|c| c.0).collect();
        assert_eq!(names, columns);

        let row = row(&event("e1", r#"{"event":{"id":"e1"}}"#), ingested_at()).expect("a row");
        let decoded = decode_with_writer_schema(&row.encode_to_vec());
        let field = |name: &str| decoded.get_field_by_name(name).expect(name).into_owned();
        assert_eq!(field("event_id"), Value::String("e1".into()));
        assert_eq!(
            field("event_timestamp"),
            Value::I64(1_700_000_000_123_456),
            "microseconds, truncated"
        );
        assert_eq!(field("feature"), Value::String("cody.completion".into()));
        assert_eq!(field("action"), Value::String("accepted".into()));
        assert_eq!(field("source"), Value::String("licensed_instance".into()));
        assert_eq!(
            field("payload"),
            Value::String(r#"{"event":{"id":"e1"}}"#.into())
        );
        assert_eq!(field("ingested_at"), Value::I64(1_800_000_000_000_000));
    }

    #[test]
    fn out_of_range_timestamps_and_a_missing_source_are_null() {
        let mut odd = event("e1", "{}");
        odd.timestamp.seconds = 300_000_000_000; // year 11476
        odd.attributes.clear();
        let decoded =
            decode_with_writer_schema(&row(&odd, ingested_at()).expect("a row").encode_to_vec());
        assert!(!decoded.has_field_by_name("event_timestamp"));
        assert!(!decoded.has_field_by_name("source"));
        assert!(decoded.has_field_by_name("ingested_at"));
    }

    #[test]
    fn a_payload_that_is_not_utf8_is_rejected() {
        let mut bad = event("e1", "{}");
        bad.payload = Bytes::from_static(b"\xff\xfe");
        let plan = plan(&[bad, event("e2", "{}")], ingested_at(), 500, 1_000_000);
        assert_eq!(plan.rejected.len(), 1);
        assert_eq!(plan.rejected[0].0, 0);
        assert_eq!(plan.appends.len(), 1);
        assert_eq!(plan.appends[0].indices, [1]);
    }

    #[test]
    fn appends_hold_at_most_max_rows_in_input_order() {
        let events: Vec<PreparedEvent> = (0..1203).map(|i| event(&format!("e{i}"), "{}")).collect();
        let plan = plan(&events, ingested_at(), 500, 1_000_000);
        let sizes: Vec<usize> = plan.appends.iter().map(|a| a.rows.len()).collect();
        assert_eq!(sizes, [500, 500, 203]);
        let indices: Vec<usize> = plan
            .appends
            .iter()
            .flat_map(|a| a.indices.clone())
            .collect();
        assert_eq!(indices, (0..1203).collect::<Vec<_>>());
    }

    #[test]
    fn requests_stay_under_the_api_limit_with_the_schema_and_a_long_table_path() {
        let pad = "x".repeat(3_000_000);
        let big = format!(r#"{{"pad":"{pad}"}}"#);
        let events: Vec<PreparedEvent> = (0..7).map(|i| event(&format!("e{i}"), &big)).collect();
        let max_bytes = MAX_APPEND_REQUEST_BYTES - APPEND_REQUEST_HEADROOM;
        let plan = plan(&events, ingested_at(), 500, max_bytes);
        let sizes: Vec<usize> = plan.appends.iter().map(|a| a.rows.len()).collect();
        assert_eq!(sizes, [3, 3, 1]);
        let long_name = format!(
            "projects/{}/datasets/{}/tables/{}/streams/_default",
            "p".repeat(30),
            "d".repeat(1024),
            "t".repeat(1024)
        );
        for append in plan.appends {
            let request = AppendRowsRequest {
                write_stream: long_name.clone(),
                trace_id: "telemetry-gateway".into(),
                rows: Some(Rows::ProtoRows(ProtoData {
                    writer_schema: Some(writer_schema()),
                    rows: Some(ProtoRows {
                        serialized_rows: append.rows,
                    }),
                })),
                ..AppendRowsRequest::default()
            };
            let bytes = request.encoded_len();
            assert!(bytes <= MAX_APPEND_REQUEST_BYTES, "{bytes} bytes");
        }
        // The overhead itself is a small fraction of the headroom.
        let empty = AppendRowsRequest {
            write_stream: long_name,
            trace_id: "telemetry-gateway".into(),
            rows: Some(Rows::ProtoRows(ProtoData {
                writer_schema: Some(writer_schema()),
                rows: Some(ProtoRows::default()),
            })),
            ..AppendRowsRequest::default()
        };
        assert!(
            empty.encoded_len() * 8 < APPEND_REQUEST_HEADROOM,
            "{}",
            empty.encoded_len()
        );
    }

    #[test]
    fn a_row_too_large_for_any_request_is_rejected_and_the_rest_still_sent() {
        let huge = format!(r#"{{"q":"{}"}}"#, "x".repeat(9_990_000));
        let events = [
            event("small", "{}"),
            event("huge", &huge),
            event("after", "{}"),
        ];
        let plan = plan(
            &events,
            ingested_at(),
            500,
            MAX_APPEND_REQUEST_BYTES - APPEND_REQUEST_HEADROOM,
        );
        assert_eq!(plan.rejected.len(), 1);
        assert_eq!(plan.rejected[0].0, 1);
        assert!(
            plan.rejected[0]
                .1
                .contains("exceeds the AppendRows request limit")
        );
        let indices: Vec<usize> = plan
            .appends
            .iter()
            .flat_map(|a| a.indices.clone())
            .collect();
        assert_eq!(indices, [0, 2]);
    }

    #[test]
    fn an_unsupported_schema_is_refused() {
        let err = descriptor_from_schema(r#"[{"name":"n","type":"NUMERIC"}]"#)
            .expect_err("NUMERIC is not written by the gateway");
        assert!(err.contains("unsupported type NUMERIC"), "{err}");
    }
}
