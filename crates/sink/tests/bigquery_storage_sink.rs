//! The BigQuery sink in Storage Write API mode against a fake BigQueryWrite gRPC server: only
//! rows BigQuery committed are delivered; refused rows are permanent and their neighbours sent
//! again; request and connection failures, timeouts and shutdown are retryable; a schema
//! mismatch also makes the sink unhealthy. (Against the emulator: `bigquery_emulator.rs`.)

mod common;

use std::time::{Duration, Instant};

use gcp_bigquery_client::google::cloud::bigquery::storage::v1::TableFieldSchema;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::table_field_schema::{Mode, Type};
use telemetry_gateway_sink::bigquery::{
    APPEND_REQUEST_HEADROOM, MAX_APPEND_REQUEST_BYTES, WriteApi,
};
use telemetry_gateway_sink::{
    BigQuerySink, BigQuerySinkConfig, EventSink, PreparedEvent, PublishOutcome, SinkError,
};
use telemetry_gateway_testkit::fake_bigquery_write::{
    AppendReply, FakeBigQueryWrite, shipped_table_schema,
};
use tonic::Code;

use common::{event_with_payload, events};

fn config(fake: &FakeBigQueryWrite) -> BigQuerySinkConfig {
    BigQuerySinkConfig {
        write_api: WriteApi::Storage,
        storage_endpoint: Some(fake.url()),
        request_timeout: Duration::from_secs(5),
        ..BigQuerySinkConfig::new("proj", "telemetry", "events")
    }
}

async fn sink(fake: &FakeBigQueryWrite) -> BigQuerySink {
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

const STREAM: &str = "projects/proj/datasets/telemetry/tables/events/streams/_default";

#[tokio::test]
async fn committed_rows_are_delivered_one_row_per_event_with_every_column() {
    let fake = FakeBigQueryWrite::start().await;
    let sink = sink(&fake).await;
    let batch = events("a", 3);

    assert_eq!(
        sink.publish(&batch).await,
        vec![PublishOutcome::Delivered; 3]
    );

    let appends = fake.appends();
    assert_eq!(appends.len(), 1);
    let append = &appends[0];
    assert_eq!(append.write_stream, STREAM);
    assert!(
        append.has_writer_schema,
        "a connection's first request carries the schema"
    );
    assert_eq!(
        append.authorization.as_deref(),
        Some("Bearer emulator-access-token")
    );
    assert_eq!(
        append.routing.as_deref(),
        Some(
            "write_stream=projects%2Fproj%2Fdatasets%2Ftelemetry%2Ftables%2Fevents%2Fstreams%2F_default"
        )
    );
    assert_eq!(append.event_ids(), ids(&batch));
    for (row, event) in append.rows.iter().zip(&batch) {
        assert_eq!(row["event_id"], event.id.as_str());
        assert_eq!(row["event_timestamp"], 1_700_000_000_000_000_i64);
        assert_eq!(row["feature"], "cody");
        assert_eq!(row["action"], "submit");
        assert_eq!(row["source"], "test");
        assert_eq!(
            row["payload"].as_str().map(str::as_bytes),
            Some(&event.payload[..]),
            "the payload is sent as its exact JSON text"
        );
        assert!(
            row["ingested_at"]
                .as_i64()
                .is_some_and(|t| t > 1_700_000_000_000_000)
        );
    }
    assert_eq!(fake.stored_rows().len(), 3);
}

#[tokio::test]
async fn connections_are_reused_and_only_the_first_request_carries_the_schema() {
    let fake = FakeBigQueryWrite::start().await;
    let sink = sink(&fake).await;

    for round in 0..3 {
        let outcomes = sink.publish(&events(&format!("r{round}"), 2)).await;
        assert!(
            outcomes.iter().all(PublishOutcome::is_delivered),
            "{outcomes:?}"
        );
    }

    assert_eq!(fake.connections(), 1);
    let schemas: Vec<bool> = fake.appends().iter().map(|a| a.has_writer_schema).collect();
    assert_eq!(schemas, [true, false, false]);
}

#[tokio::test]
async fn refused_rows_are_permanent_and_the_rest_of_their_request_is_sent_again() {
    let fake = FakeBigQueryWrite::start().await;
    fake.push_replies([AppendReply::row_errors(&[1, 3])]);
    let sink = sink(&fake).await;
    let batch = events("a", 5);

    let outcomes = sink.publish(&batch).await;

    assert!(
        matches!(&outcomes[1], PublishOutcome::Permanent(reason) if reason.message.contains("FIELDS_ERROR")),
        "{outcomes:?}"
    );
    assert!(matches!(&outcomes[3], PublishOutcome::Permanent(_)));
    for index in [0, 2, 4] {
        assert_eq!(outcomes[index], PublishOutcome::Delivered, "{outcomes:?}");
    }
    let appends = fake.appends();
    assert_eq!(appends.len(), 2);
    assert_eq!(appends[1].event_ids(), ["a-0", "a-2", "a-4"]);
    let stored: Vec<String> = fake
        .stored_rows()
        .iter()
        .filter_map(|row| row["event_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        stored,
        ["a-0", "a-2", "a-4"],
        "nothing of the refused request was committed"
    );
}

#[tokio::test]
async fn rows_not_committed_after_a_second_refusal_are_retryable() {
    let fake = FakeBigQueryWrite::start().await;
    fake.push_replies([AppendReply::row_errors(&[0]), AppendReply::row_errors(&[0])]);
    let sink = sink(&fake).await;

    let outcomes = sink.publish(&events("a", 3)).await;

    assert!(
        matches!(&outcomes[0], PublishOutcome::Permanent(_)),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[1], PublishOutcome::Permanent(_)),
        "{outcomes:?}"
    );
    assert!(is_retryable(&outcomes[2]), "{outcomes:?}");
    assert!(fake.stored_rows().is_empty());
}

#[tokio::test]
async fn request_errors_make_every_event_of_the_request_retryable() {
    let fake = FakeBigQueryWrite::start().await;
    fake.push_replies([
        AppendReply::error(Code::Unavailable, "backend unavailable"),
        AppendReply::error(Code::ResourceExhausted, "quota exceeded"),
        AppendReply::error(Code::NotFound, "table not found"),
        AppendReply::error(Code::PermissionDenied, "no permission"),
    ]);
    let sink = sink(&fake).await;

    for expected in [
        "backend unavailable",
        "quota exceeded",
        "table not found",
        "no permission",
    ] {
        let outcomes = sink.publish(&events("a", 2)).await;
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, PublishOutcome::Retryable(r) if r.message.contains(expected))),
            "{outcomes:?}"
        );
    }
    assert!(
        sink.health().await.is_ok(),
        "none of these is a schema problem"
    );
    assert_eq!(
        sink.publish(&events("b", 2)).await,
        vec![PublishOutcome::Delivered; 2]
    );
    assert_eq!(fake.connections(), 5, "a failed connection is replaced");
}

#[tokio::test]
async fn a_connection_ending_mid_stream_makes_its_rows_retryable_and_the_next_publish_reconnects() {
    let fake = FakeBigQueryWrite::start().await;
    fake.push_replies([AppendReply::EndStream(
        Code::Unavailable,
        "connection reset".into(),
    )]);
    let sink = sink(&fake).await;

    let outcomes = sink.publish(&events("a", 3)).await;
    assert!(
        outcomes.iter().all(
            |o| matches!(o, PublishOutcome::Retryable(r) if r.message.contains("connection reset"))
        ),
        "{outcomes:?}"
    );

    assert_eq!(
        sink.publish(&events("a", 3)).await,
        vec![PublishOutcome::Delivered; 3]
    );
    assert_eq!(fake.connections(), 2);
    assert!(
        fake.appends()[1].has_writer_schema,
        "a new connection sends the schema again"
    );
}

#[tokio::test]
async fn a_schema_mismatch_is_retryable_and_unhealthy_until_an_append_succeeds() {
    let fake = FakeBigQueryWrite::start().await;
    fake.push_replies([AppendReply::schema_mismatch()]);
    let sink = sink(&fake).await;

    let outcomes = sink.publish(&events("a", 2)).await;

    assert!(outcomes.iter().all(is_retryable), "{outcomes:?}");
    let err = sink
        .health()
        .await
        .expect_err("unhealthy after a schema mismatch");
    assert!(
        err.to_string().contains("SCHEMA_MISMATCH_EXTRA_FIELDS")
            && err.to_string().contains("proj.telemetry.events"),
        "{err}"
    );

    assert_eq!(
        sink.publish(&events("a", 2)).await,
        vec![PublishOutcome::Delivered; 2]
    );
    assert!(sink.health().await.is_ok());
}

#[tokio::test]
async fn health_reports_a_table_whose_schema_does_not_fit() {
    let fake = FakeBigQueryWrite::start().await;
    let mut fields: Vec<TableFieldSchema> = shipped_table_schema()
        .into_iter()
        .filter(|f| f.name != "ingested_at")
        .collect();
    fields.push(TableFieldSchema {
        name: "tenant".into(),
        r#type: Type::String as i32,
        mode: Mode::Required as i32,
        ..TableFieldSchema::default()
    });
    fake.set_table_schema(fields);
    let sink = sink(&fake).await;

    let err = sink.health().await.expect_err("the schema does not fit");
    let message = err.to_string();
    assert!(
        message.contains("no column ingested_at") && message.contains("REQUIRED column tenant"),
        "{message}"
    );
}

#[tokio::test]
async fn health_is_whether_the_default_stream_of_the_table_answers() {
    let fake = FakeBigQueryWrite::start().await;
    let sink = sink(&fake).await;
    assert_eq!(sink.name(), "bigquery");
    assert_eq!(
        sink.describe(),
        "BigQuery table proj.telemetry.events (Storage Write API)"
    );

    assert!(sink.health().await.is_ok());

    fake.set_table_missing(true);
    let err = sink.health().await.expect_err("the table is gone");
    assert!(
        err.to_string().contains("proj.telemetry.events") && err.to_string().contains("NotFound"),
        "{err}"
    );
}

#[tokio::test]
async fn a_hanging_append_times_out_as_retryable() {
    let fake = FakeBigQueryWrite::start().await;
    fake.push_replies([AppendReply::Hang]);
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
        outcomes
            .iter()
            .all(|o| matches!(o, PublishOutcome::Retryable(r) if r.message.contains("timed out"))),
        "{outcomes:?}"
    );
    // The timed-out connection is not reused: its late answer would belong to another request.
    assert_eq!(
        sink.publish(&events("b", 2)).await,
        vec![PublishOutcome::Delivered; 2]
    );
    assert_eq!(fake.connections(), 2);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retryable_and_unhealthy() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let sink = BigQuerySink::connect(BigQuerySinkConfig {
        write_api: WriteApi::Storage,
        storage_endpoint: Some(format!("http://127.0.0.1:{port}")),
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
async fn batches_are_split_into_requests_of_at_most_the_row_limit_in_order() {
    let fake = FakeBigQueryWrite::start().await;
    let sink = BigQuerySink::connect(BigQuerySinkConfig {
        max_concurrent_requests: 1,
        ..config(&fake)
    })
    .await
    .expect("the sink connects");
    let batch = events("big", 1201);

    let outcomes = sink.publish(&batch).await;

    assert_eq!(outcomes, vec![PublishOutcome::Delivered; 1201]);
    let appends = fake.appends();
    let sizes: Vec<usize> = appends.iter().map(|a| a.rows.len()).collect();
    assert_eq!(sizes, [500, 500, 201]);
    let sent: Vec<String> = appends.iter().flat_map(|a| a.event_ids()).collect();
    assert_eq!(sent, ids(&batch), "every event once, in order");
}

#[tokio::test]
async fn large_payloads_are_split_by_bytes_and_an_oversized_row_is_permanent() {
    let fake = FakeBigQueryWrite::start().await;
    let sink = sink(&fake).await;
    let big = |id: &str, size: usize| {
        let payload = format!(
            r#"{{"event":{{"id":"{id}"}},"pad":"{}"}}"#,
            "x".repeat(size)
        );
        event_with_payload(id, payload.into_bytes())
    };
    let batch = vec![
        big("a", 4_000_000),
        big("b", 4_000_000),
        big("c", 4_000_000),
        // Fine for the gateway (< 10,000,000 bytes), too large for an AppendRows request once
        // the request's headroom is kept.
        big("huge", MAX_APPEND_REQUEST_BYTES - APPEND_REQUEST_HEADROOM),
    ];

    let outcomes = sink.publish(&batch).await;

    assert_eq!(outcomes[..3], vec![PublishOutcome::Delivered; 3]);
    assert!(
        matches!(&outcomes[3], PublishOutcome::Permanent(reason) if reason.message.contains("exceeds")),
        "{outcomes:?}"
    );
    let appends = fake.appends();
    assert_eq!(appends.len(), 2);
    assert!(
        appends
            .iter()
            .all(|a| a.encoded_len <= MAX_APPEND_REQUEST_BYTES),
        "{:?}",
        appends.iter().map(|a| a.encoded_len).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn requests_in_flight_are_bounded_across_concurrent_publishes() {
    let fake = FakeBigQueryWrite::start().await;
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
    assert_eq!(fake.appends().len(), 6);
    assert_eq!(fake.max_in_flight(), 3);
    assert!(
        fake.connections() <= 3,
        "{} connections",
        fake.connections()
    );
}

#[tokio::test]
async fn each_request_of_a_batch_has_its_own_outcome() {
    let fake = FakeBigQueryWrite::start().await;
    let sink = BigQuerySink::connect(BigQuerySinkConfig {
        max_concurrent_requests: 1,
        ..config(&fake)
    })
    .await
    .expect("the sink connects");
    fake.push_replies([
        AppendReply::Committed,
        AppendReply::error(Code::Internal, "backend error"),
    ]);

    let outcomes = sink.publish(&events("a", 1000)).await;

    assert!(outcomes[..500].iter().all(PublishOutcome::is_delivered));
    assert!(outcomes[500..].iter().all(is_retryable));
}

#[tokio::test]
async fn after_shutdown_publishes_are_retryable() {
    let fake = FakeBigQueryWrite::start().await;
    let sink = sink(&fake).await;
    sink.shutdown().await.expect("shuts down");

    let outcomes = sink.publish(&events("a", 2)).await;

    assert!(outcomes.iter().all(is_retryable), "{outcomes:?}");
    assert!(fake.appends().is_empty());
}

#[tokio::test]
async fn an_empty_batch_sends_nothing() {
    let fake = FakeBigQueryWrite::start().await;
    let sink = sink(&fake).await;
    assert!(sink.publish(&[]).await.is_empty());
    assert_eq!(fake.connections(), 0);
}

#[tokio::test]
async fn an_insert_all_endpoint_without_a_storage_endpoint_is_a_configuration_error() {
    let err = BigQuerySink::connect(BigQuerySinkConfig {
        write_api: WriteApi::Storage,
        endpoint: Some("http://127.0.0.1:9/bigquery/v2".into()),
        ..BigQuerySinkConfig::new("proj", "telemetry", "events")
    })
    .await
    .err()
    .expect("refused: rows would go to Google's real endpoint");
    assert!(matches!(err, SinkError::Config { .. }), "{err}");
}
