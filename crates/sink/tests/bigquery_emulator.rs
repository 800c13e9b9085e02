//! The BigQuery sink against bqemulator, in both write modes: batches cut by rows and by bytes
//! land as exactly one row per event, and a missing table is retryable.

mod common;

use std::time::Duration;

use telemetry_gateway_sink::bigquery::WriteApi;
use telemetry_gateway_sink::{BigQuerySink, BigQuerySinkConfig, EventSink, PublishOutcome};
use telemetry_gateway_testkit::bigquery_emulator::BigQueryEmulator;

use common::{event_with_payload, events};

const PROJECT: &str = "test-project";

fn config(emulator: &BigQueryEmulator, write_api: WriteApi, table: &str) -> BigQuerySinkConfig {
    BigQuerySinkConfig {
        write_api,
        endpoint: Some(emulator.v2_base_url()),
        storage_endpoint: Some(emulator.storage_url()),
        request_timeout: Duration::from_secs(60),
        ..BigQuerySinkConfig::new(PROJECT, "telemetry", table)
    }
}

async fn rows_and_bytes_batches_land_once_each(write_api: WriteApi) {
    let emulator = BigQueryEmulator::start().await;
    emulator
        .create_events_table(PROJECT, "telemetry", "events")
        .await;
    let sink = BigQuerySink::connect(config(&emulator, write_api, "events"))
        .await
        .expect("the sink connects");
    assert!(sink.health().await.is_ok(), "{:?}", sink.health().await);

    // More rows than one request takes, then payloads that fill a request by bytes.
    let small = events("small", 1201);
    let big: Vec<_> = (0..3)
        .map(|i| {
            let id = format!("big-{i}");
            let payload = format!(
                r#"{{"event":{{"id":"{id}"}},"pad":"{}"}}"#,
                "x".repeat(3_500_000)
            );
            event_with_payload(&id, payload.into_bytes())
        })
        .collect();
    assert_eq!(
        sink.publish(&small).await,
        vec![PublishOutcome::Delivered; small.len()]
    );
    assert_eq!(
        sink.publish(&big).await,
        vec![PublishOutcome::Delivered; big.len()]
    );

    let counts = emulator
        .query(
            PROJECT,
            "SELECT COUNT(*) AS n, COUNT(DISTINCT event_id) AS ids, \
             SUM(LENGTH(JSON_VALUE(payload, '$.pad'))) AS pad \
             FROM `test-project.telemetry.events`",
        )
        .await;
    assert_eq!(counts[0]["n"], "1204", "{counts:?}");
    assert_eq!(counts[0]["ids"], "1204", "one row per event: {counts:?}");
    assert_eq!(
        counts[0]["pad"], "10500000",
        "big payloads intact: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_and_bytes_batches_land_once_each_with_the_storage_write_api() {
    rows_and_bytes_batches_land_once_each(WriteApi::Storage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_and_bytes_batches_land_once_each_with_insert_all() {
    rows_and_bytes_batches_land_once_each(WriteApi::InsertAll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_retryable_and_unhealthy_in_both_modes() {
    let emulator = BigQueryEmulator::start().await;
    emulator
        .create_events_table(PROJECT, "telemetry", "events")
        .await;
    for write_api in [WriteApi::Storage, WriteApi::InsertAll] {
        let sink = BigQuerySink::connect(config(&emulator, write_api, "missing"))
            .await
            .expect("the sink connects");

        let outcomes = sink.publish(&events("a", 3)).await;

        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, PublishOutcome::Retryable(_))),
            "{write_api:?}: {outcomes:?}"
        );
        assert!(sink.health().await.is_err(), "{write_api:?}");
    }
}
