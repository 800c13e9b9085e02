//! The real `telemetry-gateway` binary with the BigQuery sink, in both write modes (the Storage
//! Write API, the default, and insertAll): against bqemulator (rows queried back), and against
//! fake endpoints together with the file sink (acknowledged only when both accepted).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde_json::Value;
use telemetry_gateway_proto::v1::{Event, RecordEventsRequestMetadata};
use telemetry_gateway_testkit::bigquery_emulator::BigQueryEmulator;
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{rich_event, simple_events, unlicensed_metadata};
use telemetry_gateway_testkit::fake_bigquery::{FakeBigQuery, InsertReply};
use telemetry_gateway_testkit::fake_bigquery_write::{AppendReply, FakeBigQueryWrite};
use telemetry_gateway_testkit::json::normalized_numbers;

use support::{GatewayProcess, run_to_completion};

/// Sends `payloads` on one RecordEvents stream and returns each payload's acknowledged IDs.
async fn send(
    addr: SocketAddr,
    metadata: &RecordEventsRequestMetadata,
    payloads: &[Vec<Event>],
) -> Vec<Vec<String>> {
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    let mut messages = vec![metadata_message(metadata.clone())];
    messages.extend(payloads.iter().cloned().map(events_message));
    telemetry_gateway_testkit::record_events(&mut client, messages)
        .await
        .expect("the stream succeeds")
        .into_iter()
        .map(|response| response.succeeded_events)
        .collect()
}

fn ids(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

/// The file sink and the BigQuery sink on `test-project.telemetry.events` at `endpoint`.
fn emulator_env(emulator: &BigQueryEmulator, write_api: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TELEMETRY_GATEWAY_EVENTS_SINKS", "file,bigquery".into()),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_WRITE_API",
            write_api.into(),
        ),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID",
            "test-project".into(),
        ),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID",
            "telemetry".into(),
        ),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID",
            "events".into(),
        ),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_ENDPOINT",
            emulator.v2_base_url(),
        ),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_STORAGE_ENDPOINT",
            emulator.storage_url(),
        ),
    ]
}

/// Every NDJSON line the gateway's file sink wrote, by event ID.
fn file_sink_payloads(gateway: &GatewayProcess) -> BTreeMap<String, Value> {
    gateway
        .file_sink_lines()
        .into_iter()
        .map(|json| {
            let id = json["event"]["id"]
                .as_str()
                .expect("an event ID")
                .to_string();
            (id, json)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_are_rows_of_the_bigquery_emulator_table_once_each_with_the_storage_write_api()
 {
    acknowledged_events_are_rows_of_the_emulator_table_once_each("storage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_are_rows_of_the_bigquery_emulator_table_once_each_with_insert_all() {
    acknowledged_events_are_rows_of_the_emulator_table_once_each("insert_all").await;
}

async fn acknowledged_events_are_rows_of_the_emulator_table_once_each(write_api: &str) {
    let emulator = BigQueryEmulator::start().await;
    emulator
        .create_events_table("test-project", "telemetry", "events")
        .await;
    let before = chrono::Utc::now();
    // File and BigQuery together: the file sink's lines are exactly what was published.
    let env = emulator_env(&emulator, write_api);
    let mut gateway = GatewayProcess::start(&as_refs(&env));
    let addr = gateway.address();
    let health = telemetry_gateway_testkit::http::get(addr, "/-/healthz", None)
        .await
        .expect("served");
    assert_eq!((health.status, health.body.as_str()), (200, "healthz: ok"));

    let mut rich = rich_event();
    rich.id = "rich-0".into();
    let payloads = vec![simple_events("a", 40), vec![rich], simple_events("b", 25)];
    let metadata = unlicensed_metadata("instance-bq");
    let acknowledged = send(addr, &metadata, &payloads).await;
    for (acked, payload) in acknowledged.iter().zip(&payloads) {
        assert_eq!(acked, &ids(payload));
    }

    let rows = emulator
        .query(
            "test-project",
            "SELECT event_id, event_timestamp, feature, action, source, payload, ingested_at \
             FROM `test-project.telemetry.events`",
        )
        .await;
    let published = file_sink_payloads(&gateway);
    let all_events: Vec<&Event> = payloads.iter().flatten().collect();
    assert_eq!(rows.len(), all_events.len(), "one row per event: {rows:#?}");
    let ids_in_table: BTreeSet<&str> = rows
        .iter()
        .filter_map(|row| row["event_id"].as_str())
        .collect();
    assert_eq!(
        ids_in_table.len(),
        all_events.len(),
        "each event exactly once"
    );
    for event in all_events {
        let row = rows
            .iter()
            .find(|row| row["event_id"] == event.id.as_str())
            .unwrap_or_else(|| panic!("no row for {}", event.id));
        assert_eq!(row["feature"], event.feature.as_str());
        assert_eq!(row["action"], event.action.as_str());
        assert_eq!(row["source"], "unlicensed_instance");
        let timestamp = event.timestamp.expect("a timestamp");
        // The REST API returns TIMESTAMP cells as microseconds since the epoch.
        let micros = timestamp.seconds * 1_000_000 + i64::from(timestamp.nanos / 1_000);
        assert_eq!(row["event_timestamp"], micros.to_string());
        let ingested: i64 = row["ingested_at"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .expect("ingested_at");
        assert!(
            ingested >= before.timestamp_micros()
                && ingested <= chrono::Utc::now().timestamp_micros()
        );
        let payload: Value = row["payload"]
            .as_str()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_else(|| panic!("payload of {} is JSON: {row:?}", event.id));
        assert_eq!(
            normalized_numbers(payload.clone()),
            normalized_numbers(published[&event.id].clone()),
            "the payload of {} is what was published",
            event.id
        );
    }
}

fn fake_env(fake: &FakeBigQuery) -> Vec<(&'static str, String)> {
    vec![
        ("TELEMETRY_GATEWAY_EVENTS_SINKS", "file,bigquery".into()),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_WRITE_API",
            "insert_all".into(),
        ),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID",
            "proj".into(),
        ),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID",
            "telemetry".into(),
        ),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID",
            "events".into(),
        ),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_ENDPOINT",
            fake.v2_base_url(),
        ),
    ]
}

fn as_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_file_and_bigquery_an_event_is_acknowledged_only_when_both_accepted_it() {
    let fake = FakeBigQuery::start().await;
    let env = fake_env(&fake);
    let mut gateway = GatewayProcess::start(&as_refs(&env));
    let addr = gateway.address();
    let destination = gateway.wait_for(
        "events go to all of: NDJSON files under ./data/events (rotated at 128 MiB); BigQuery table proj.telemetry.events (insertAll)",
    );
    assert_eq!(destination["sink"], "fanout");

    let accepted = simple_events("ok", 5);
    let refused = simple_events("500", 4);
    let partly = simple_events("part", 4);
    fake.push_replies([
        InsertReply::ok(),
        InsertReply::status(500, "backendError"),
        // Row 2 invalid, the others stopped because of it.
        InsertReply::invalid_and_stopped(&[2], 4),
    ]);
    let metadata = unlicensed_metadata("instance-fanout");
    let acknowledged = send(
        addr,
        &metadata,
        &[accepted.clone(), refused.clone(), partly.clone()],
    )
    .await;

    assert_eq!(acknowledged[0], ids(&accepted), "both sinks accepted");
    assert!(
        acknowledged[1].is_empty(),
        "BigQuery refused the request: nothing acknowledged although the file sink wrote it"
    );
    // An invalid row is permanent: an instance gets it acknowledged (and it is dropped) so it
    // stops retrying; the stopped rows are retryable and not acknowledged.
    assert_eq!(acknowledged[2], vec!["part-2".to_string()]);

    let on_disk = file_sink_payloads(&gateway);
    for id in ids(&accepted) {
        assert!(on_disk.contains_key(&id));
    }
    let in_bigquery: Vec<String> = fake
        .stored_rows()
        .iter()
        .filter_map(|row| row["insertId"].as_str().map(str::to_string))
        .collect();
    assert_eq!(in_bigquery, ids(&accepted));

    // The sender retries what was not acknowledged; now BigQuery takes it.
    let retried: Vec<Event> = refused
        .iter()
        .chain(partly.iter().filter(|e| e.id != "part-2"))
        .cloned()
        .collect();
    let acknowledged = send(addr, &metadata, std::slice::from_ref(&retried)).await;
    assert_eq!(acknowledged[0], ids(&retried));
}

fn fake_storage_env(fake: &FakeBigQueryWrite) -> Vec<(&'static str, String)> {
    vec![
        ("TELEMETRY_GATEWAY_EVENTS_SINKS", "file,bigquery".into()),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID",
            "proj".into(),
        ),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID",
            "telemetry".into(),
        ),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID",
            "events".into(),
        ),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_STORAGE_ENDPOINT",
            fake.url(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_storage_write_api_an_event_is_acknowledged_only_when_bigquery_committed_it() {
    let fake = FakeBigQueryWrite::start().await;
    let env = fake_storage_env(&fake);
    let mut gateway = GatewayProcess::start(&as_refs(&env));
    let addr = gateway.address();
    gateway.wait_for(
        "events go to all of: NDJSON files under ./data/events (rotated at 128 MiB); BigQuery table proj.telemetry.events (Storage Write API)",
    );

    let accepted = simple_events("ok", 5);
    let refused = simple_events("unavailable", 4);
    let partly = simple_events("part", 4);
    fake.push_replies([
        AppendReply::Committed,
        AppendReply::error(tonic::Code::Unavailable, "backend unavailable"),
        // Row 2 refused: nothing of the request committed, the other rows sent again.
        AppendReply::row_errors(&[2]),
    ]);
    let metadata = unlicensed_metadata("instance-storage");
    let acknowledged = send(
        addr,
        &metadata,
        &[accepted.clone(), refused.clone(), partly.clone()],
    )
    .await;

    assert_eq!(acknowledged[0], ids(&accepted), "both sinks accepted");
    assert!(
        acknowledged[1].is_empty(),
        "BigQuery refused the request: nothing acknowledged although the file sink wrote it"
    );
    // A refused row is permanent: an instance gets it acknowledged (and it is dropped) so it
    // stops retrying; the other rows went in on the second request.
    assert_eq!(acknowledged[2], ids(&partly));
    let committed: Vec<String> = fake
        .stored_rows()
        .iter()
        .filter_map(|row| row["event_id"].as_str().map(str::to_string))
        .collect();
    let mut expected = ids(&accepted);
    expected.extend(["part-0", "part-1", "part-3"].map(String::from));
    assert_eq!(committed, expected);

    // The sender retries what was not acknowledged; now BigQuery takes it.
    let acknowledged = send(addr, &metadata, std::slice::from_ref(&refused)).await;
    assert_eq!(acknowledged[0], ids(&refused));
}

#[tokio::test]
async fn healthz_reports_a_missing_bigquery_table_with_the_storage_write_api() {
    let fake = FakeBigQueryWrite::start().await;
    fake.set_table_missing(true);
    let env = fake_storage_env(&fake);
    let mut gateway = GatewayProcess::start(&as_refs(&env));
    let addr = gateway.address();

    let health = telemetry_gateway_testkit::http::get(addr, "/-/healthz", None)
        .await
        .expect("served");

    assert_eq!(health.status, 500);
    assert!(
        health.body.contains("bigquery") && health.body.contains("proj.telemetry.events"),
        "{}",
        health.body
    );
}

#[tokio::test]
async fn healthz_reports_a_missing_bigquery_table() {
    let fake = FakeBigQuery::start().await;
    fake.set_table_missing(true);
    let env = fake_env(&fake);
    let mut gateway = GatewayProcess::start(&as_refs(&env));
    let addr = gateway.address();

    let health = telemetry_gateway_testkit::http::get(addr, "/-/healthz", None)
        .await
        .expect("served");

    assert_eq!(health.status, 500);
    assert!(
        health.body.contains("bigquery") && health.body.contains("proj.telemetry.events"),
        "{}",
        health.body
    );
}

#[tokio::test]
async fn a_bigquery_table_id_alone_selects_the_bigquery_sink_instead_of_the_file_default() {
    let fake = FakeBigQueryWrite::start().await;
    let endpoint = fake.url();
    let mut gateway = GatewayProcess::start(&[
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID", "proj"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID", "telemetry"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID", "events"),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_STORAGE_ENDPOINT",
            &endpoint,
        ),
    ]);
    // The Storage Write API is the default mode.
    let line =
        gateway.wait_for("events go to BigQuery table proj.telemetry.events (Storage Write API)");
    assert_eq!(line["sink"], "bigquery");
    assert!(!gateway.dir().join("data").exists(), "no file sink");
}

#[test]
fn the_bigquery_sink_without_its_table_settings_fails_at_start_naming_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("TELEMETRY_GATEWAY_EVENTS_SINKS", "bigquery")],
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID",
        ),
        (
            &[("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID", "events")],
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID",
        ),
        (
            &[
                ("TELEMETRY_GATEWAY_EVENTS_SINKS", "file,bigquery"),
                ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID", "proj"),
                ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID", "events"),
            ],
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID",
        ),
        (
            &[
                ("TELEMETRY_GATEWAY_EVENTS_SINKS", "bigquery"),
                ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID", "proj"),
                ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID", "telemetry"),
            ],
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID",
        ),
        (
            // An emulator for insertAll but Google's real Storage Write API: refused.
            &[
                ("TELEMETRY_GATEWAY_EVENTS_SINKS", "bigquery"),
                ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID", "proj"),
                ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID", "telemetry"),
                ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID", "events"),
                (
                    "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_ENDPOINT",
                    "http://127.0.0.1:9/bigquery/v2",
                ),
            ],
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_STORAGE_ENDPOINT",
        ),
        (
            &[
                ("TELEMETRY_GATEWAY_EVENTS_SINKS", "bigquery"),
                ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_WRITE_API", "streaming"),
            ],
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_WRITE_API",
        ),
    ];
    for (env, expected) in cases {
        let output = run_to_completion(env, &[]);
        assert!(!output.status.success(), "{env:?} must not start");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expected),
            "{env:?}: stderr lacks {expected:?}:\n{stderr}"
        );
    }
}

/// A table that drifted from the schema (here a column changed type; BigQuery answers a dropped
/// column the same way) refuses every row as `invalid`: with the file sink beside it, instance
/// events must not be acknowledged (and so lost for BigQuery) but retried, and `/-/healthz` must
/// say what is wrong. (insertAll: the emulator's Storage Write API does not check column types.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_drifted_from_the_schema_acknowledges_nothing_and_fails_healthz() {
    let emulator = BigQueryEmulator::start().await;
    emulator
        .create_events_table_with_integer_column("test-project", "telemetry", "events", "feature")
        .await;
    let env = emulator_env(&emulator, "insert_all");
    let mut gateway = GatewayProcess::start(&as_refs(&env));
    let addr = gateway.address();

    let payload = simple_events("drift", 5);
    let acknowledged = send(addr, &unlicensed_metadata("instance-drift"), &[payload]).await;
    assert_eq!(
        acknowledged[0],
        Vec::<String>::new(),
        "nothing is acknowledged while the table refuses every row"
    );

    let health = telemetry_gateway_testkit::http::get(addr, "/-/healthz", None)
        .await
        .expect("served");
    assert_eq!(health.status, 500, "{}", health.body);
    assert!(
        health.body.contains("does not match the gateway's schema"),
        "{}",
        health.body
    );
}
