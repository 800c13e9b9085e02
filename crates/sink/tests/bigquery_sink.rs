//! The BigQuery sink in insertAll mode against a fake insertAll endpoint: only rows BigQuery
//! confirms are delivered; invalid rows are permanent; everything else is retryable. (The Storage
//! Write API mode: `bigquery_storage_sink.rs`; both against the emulator: `bigquery_emulator.rs`.)

mod common;

use std::time::{Duration, Instant};

use telemetry_gateway_sink::bigquery::{MAX_REQUEST_BYTES, MAX_ROWS_PER_REQUEST, WriteApi};
use telemetry_gateway_sink::{
    BigQuerySink, BigQuerySinkConfig, EventSink, PreparedEvent, PublishOutcome, SinkError,
};
use telemetry_gateway_testkit::fake_bigquery::{FakeBigQuery, InsertReply};

use common::{event, events};

fn config(fake: &FakeBigQuery) -> BigQuerySinkConfig {
    BigQuerySinkConfig {
        write_api: WriteApi::InsertAll,
        endpoint: Some(fake.v2_base_url()),
        request_timeout: Duration::from_secs(5),
        ..BigQuerySinkConfig::new("proj", "telemetry", "events")
    }
}

async fn sink(fake: &FakeBigQuery) -> BigQuerySink {
    BigQuerySink::connect(config(fake))
        .await
        .expect("the sink connects")
}

fn ids(events: &[PreparedEvent]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

fn is_retryable(outcome: &PublishOutcome) -> bool {
    matches!(outcome, PublishOutcome::Retryable(_))
}

#[tokio::test]
async fn inserted_rows_are_delivered_one_row_per_event_with_the_event_id_as_insert_id() {
    let fake = FakeBigQuery::start().await;
    let sink = sink(&fake).await;
    let batch = events("a", 3);

    assert_eq!(
        sink.publish(&batch).await,
        vec![PublishOutcome::Delivered; 3]
    );

    let inserts = fake.inserts();
    assert_eq!(inserts.len(), 1);
    let insert = &inserts[0];
    assert_eq!(insert.table, "proj.telemetry.events");
    assert_eq!(insert.insert_ids(), ids(&batch));
    assert_eq!(
        insert.authorization.as_deref(),
        Some("Bearer emulator-access-token")
    );
    assert_eq!(insert.content_encoding, None, "plain JSON bodies, no gzip");
    assert_eq!(insert.body["skipInvalidRows"], true);
    assert_eq!(insert.body["ignoreUnknownValues"], false);
    for (row, event) in insert.rows().iter().zip(&batch) {
        let json = &row["json"];
        assert_eq!(json["event_id"], event.id.as_str());
        assert_eq!(json["event_timestamp"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(json["feature"], "cody");
        assert_eq!(json["action"], "submit");
        assert_eq!(json["source"], "test");
        assert_eq!(
            json["payload"].as_str().map(str::as_bytes),
            Some(&event.payload[..]),
            "the payload is sent as its exact JSON text"
        );
        assert!(
            json["ingested_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
    }
    assert_eq!(fake.stored_rows().len(), 3);
}

#[tokio::test]
async fn rows_bigquery_rejects_as_invalid_are_permanent_and_the_others_delivered() {
    let fake = FakeBigQuery::start().await;
    fake.push_replies([InsertReply::row_errors(&[1, 3], "invalid")]);
    let sink = sink(&fake).await;

    let outcomes = sink.publish(&events("a", 4)).await;

    assert_eq!(outcomes[0], PublishOutcome::Delivered);
    assert!(
        matches!(&outcomes[1], PublishOutcome::Permanent(reason) if reason.message.contains("invalid")),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2], PublishOutcome::Delivered);
    assert!(matches!(&outcomes[3], PublishOutcome::Permanent(_)));
}

#[tokio::test]
async fn rows_stopped_because_of_another_rows_error_are_retryable() {
    let fake = FakeBigQuery::start().await;
    fake.push_replies([InsertReply::invalid_and_stopped(&[1], 3)]);
    let sink = sink(&fake).await;

    let outcomes = sink.publish(&events("a", 3)).await;

    assert!(is_retryable(&outcomes[0]), "{outcomes:?}");
    assert!(matches!(&outcomes[1], PublishOutcome::Permanent(_)));
    assert!(is_retryable(&outcomes[2]));
    assert!(fake.stored_rows().is_empty());

    // The retry of the stopped rows goes through.
    let retry = [event("a-0"), event("a-2")];
    assert_eq!(
        sink.publish(&retry).await,
        vec![PublishOutcome::Delivered; 2]
    );
}

#[tokio::test]
async fn a_server_error_makes_every_event_of_the_request_retryable() {
    let fake = FakeBigQuery::start().await;
    fake.push_replies([InsertReply::status(500, "backendError")]);
    let sink = sink(&fake).await;

    let outcomes = sink.publish(&events("a", 3)).await;

    assert!(outcomes.iter().all(is_retryable), "{outcomes:?}");
    assert!(
        matches!(&outcomes[0], PublishOutcome::Retryable(reason) if reason.message.contains("500") && reason.message.contains("backendError")),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn quota_errors_are_retryable() {
    let fake = FakeBigQuery::start().await;
    fake.push_replies([
        InsertReply::status(429, "rateLimitExceeded"),
        InsertReply::status(403, "quotaExceeded"),
    ]);
    let sink = sink(&fake).await;

    for _ in 0..2 {
        let outcomes = sink.publish(&events("a", 2)).await;
        assert!(outcomes.iter().all(is_retryable), "{outcomes:?}");
    }
    assert_eq!(
        sink.publish(&events("a", 2)).await,
        vec![PublishOutcome::Delivered; 2]
    );
}

#[tokio::test]
async fn a_missing_table_is_retryable_not_permanent() {
    let fake = FakeBigQuery::start().await;
    fake.push_replies([InsertReply::status(404, "notFound")]);
    let sink = sink(&fake).await;

    let outcomes = sink.publish(&events("a", 2)).await;

    assert!(outcomes.iter().all(is_retryable), "{outcomes:?}");
}

#[tokio::test]
async fn a_hanging_insert_times_out_as_retryable() {
    let fake = FakeBigQuery::start().await;
    fake.push_replies([InsertReply::Hang]);
    let sink = BigQuerySink::connect(BigQuerySinkConfig {
        request_timeout: Duration::from_millis(300),
        ..config(&fake)
    })
    .await
    .expect("the sink connects");

    let started = Instant::now();
    let outcomes = sink.publish(&events("a", 2)).await;

    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(&outcomes[0], PublishOutcome::Retryable(reason) if reason.message.contains("timed out")),
        "{outcomes:?}"
    );
    assert!(is_retryable(&outcomes[1]));
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retryable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let sink = BigQuerySink::connect(BigQuerySinkConfig {
        write_api: WriteApi::InsertAll,
        endpoint: Some(format!("http://127.0.0.1:{port}/bigquery/v2")),
        request_timeout: Duration::from_secs(5),
        ..BigQuerySinkConfig::new("proj", "telemetry", "events")
    })
    .await
    .expect("the sink connects lazily");

    let outcomes = sink.publish(&events("a", 2)).await;

    assert!(outcomes.iter().all(is_retryable), "{outcomes:?}");
    assert!(matches!(
        sink.health().await,
        Err(SinkError::Unhealthy { .. })
    ));
}

#[tokio::test]
async fn batches_are_split_into_requests_of_at_most_500_rows_in_order() {
    let fake = FakeBigQuery::start().await;
    let sink = sink(&fake).await;
    let batch = events("big", 1201);

    let outcomes = sink.publish(&batch).await;

    assert_eq!(outcomes, vec![PublishOutcome::Delivered; 1201]);
    let inserts = fake.inserts();
    let mut sizes: Vec<usize> = inserts.iter().map(|i| i.rows().len()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [201, MAX_ROWS_PER_REQUEST, MAX_ROWS_PER_REQUEST]);
    assert!(inserts.iter().all(|i| i.body_bytes <= MAX_REQUEST_BYTES));
    let mut sent: Vec<String> = inserts.iter().flat_map(|i| i.insert_ids()).collect();
    sent.sort();
    let mut expected = ids(&batch);
    expected.sort();
    assert_eq!(sent, expected, "every event once, keyed by its ID");
}

#[tokio::test]
async fn requests_in_flight_are_bounded_across_concurrent_publishes() {
    let fake = FakeBigQuery::start().await;
    fake.set_delay(Duration::from_millis(100));
    let sink = BigQuerySink::connect(BigQuerySinkConfig {
        max_concurrent_requests: 3,
        ..config(&fake)
    })
    .await
    .expect("the sink connects");
    let first = events("x", 1500);
    let second = events("y", 1500);

    let (a, b) = tokio::join!(sink.publish(&first), sink.publish(&second));

    assert!(a.iter().chain(&b).all(PublishOutcome::is_delivered));
    assert_eq!(fake.inserts().len(), 6);
    assert_eq!(fake.max_in_flight(), 3);
}

#[tokio::test]
async fn each_request_of_a_batch_has_its_own_outcome() {
    let fake = FakeBigQuery::start().await;
    let sink = BigQuerySink::connect(BigQuerySinkConfig {
        max_concurrent_requests: 1,
        ..config(&fake)
    })
    .await
    .expect("the sink connects");
    // One request at a time, so replies are taken in request order.
    fake.push_replies([InsertReply::ok(), InsertReply::status(503, "backendError")]);

    let outcomes = sink.publish(&events("a", 1000)).await;

    assert!(outcomes[..500].iter().all(PublishOutcome::is_delivered));
    assert!(outcomes[500..].iter().all(is_retryable));
}

#[tokio::test]
async fn large_payloads_are_split_by_bytes_and_an_oversized_row_is_permanent() {
    let fake = FakeBigQuery::start().await;
    let sink = sink(&fake).await;
    let big = |id: &str, size: usize| {
        let payload = format!(
            r#"{{"event":{{"id":"{id}"}},"pad":"{}"}}"#,
            "x".repeat(size)
        );
        common::event_with_payload(id, payload.into_bytes())
    };
    let batch = vec![
        big("a", 4_000_000),
        big("b", 4_000_000),
        big("c", 4_000_000),
        // Fine for the gateway (< 10,000,000 bytes), too large for one insertAll request once
        // its quotes are escaped inside the row.
        common::event_with_payload(
            "huge",
            format!(r#"{{"q":"{}"}}"#, "\\\"".repeat(2_600_000)).into_bytes(),
        ),
    ];

    let outcomes = sink.publish(&batch).await;

    assert_eq!(outcomes[..3], vec![PublishOutcome::Delivered; 3]);
    assert!(
        matches!(&outcomes[3], PublishOutcome::Permanent(reason) if reason.message.contains("exceeds")),
        "{outcomes:?}"
    );
    let inserts = fake.inserts();
    assert_eq!(inserts.len(), 2);
    assert!(inserts.iter().all(|i| i.body_bytes <= MAX_REQUEST_BYTES));
}

#[tokio::test]
async fn health_is_whether_the_table_exists() {
    let fake = FakeBigQuery::start().await;
    let sink = sink(&fake).await;
    assert_eq!(sink.name(), "bigquery");
    assert_eq!(
        sink.describe(),
        "BigQuery table proj.telemetry.events (insertAll)"
    );

    assert!(sink.health().await.is_ok());

    fake.set_table_missing(true);
    let err = sink.health().await.expect_err("the table is gone");
    assert!(
        err.to_string().contains("proj.telemetry.events") && err.to_string().contains("404"),
        "{err}"
    );
}

#[tokio::test]
async fn after_shutdown_publishes_are_retryable() {
    let fake = FakeBigQuery::start().await;
    let sink = sink(&fake).await;
    sink.shutdown().await.expect("shuts down");

    let outcomes = sink.publish(&events("a", 2)).await;

    assert!(outcomes.iter().all(is_retryable), "{outcomes:?}");
    assert!(fake.inserts().is_empty());
}

#[tokio::test]
async fn an_empty_batch_sends_nothing() {
    let fake = FakeBigQuery::start().await;
    let sink = sink(&fake).await;
    assert!(sink.publish(&[]).await.is_empty());
    assert!(fake.inserts().is_empty());
}

#[tokio::test]
async fn missing_table_settings_are_a_configuration_error() {
    let err = BigQuerySink::connect(BigQuerySinkConfig::new("proj", "", "events"))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, SinkError::Config { .. }), "{err}");
}

/// What BigQuery answers for every row once a column the gateway writes has been dropped from the
/// table: `invalid`, located at that column.
fn no_such_field(column: &str, rows: usize) -> InsertReply {
    InsertReply::RawInsertErrors(serde_json::Value::Array(
        (0..rows)
            .map(|index| {
                serde_json::json!({"index": index, "errors": [{"reason": "invalid",
                    "location": column, "debugInfo": "", "message": format!("no such field: {column}.")}]})
            })
            .collect(),
    ))
}

#[tokio::test]
async fn rows_refused_because_the_table_lacks_a_column_are_retryable_and_the_sink_unhealthy() {
    let fake = FakeBigQuery::start().await;
    fake.push_replies([no_such_field("source", 3)]);
    let sink = sink(&fake).await;

    let outcomes = sink.publish(&events("drift", 3)).await;

    assert!(
        outcomes.iter().all(|outcome| matches!(outcome,
            PublishOutcome::Retryable(reason) if reason.message.contains("does not match the gateway's schema"))),
        "{outcomes:?}"
    );
    let err = sink
        .health()
        .await
        .expect_err("a table without the schema is unhealthy");
    assert!(err.to_string().contains("no such field: source."), "{err}");

    // Once the table is repaired, the retried events go in and the sink is healthy again.
    let outcomes = sink.publish(&events("drift", 3)).await;
    assert_eq!(outcomes, vec![PublishOutcome::Delivered; 3]);
    assert!(sink.health().await.is_ok());
}

#[tokio::test]
async fn rows_refused_for_their_own_payload_are_permanent_and_the_sink_stays_healthy() {
    let fake = FakeBigQuery::start().await;
    fake.push_replies([InsertReply::row_errors(&[1], "invalid")]);
    let sink = sink(&fake).await;

    let outcomes = sink.publish(&events("own", 2)).await;

    assert_eq!(outcomes[0], PublishOutcome::Delivered);
    assert!(
        matches!(&outcomes[1], PublishOutcome::Permanent(_)),
        "{outcomes:?}"
    );
    assert!(sink.health().await.is_ok());
}
