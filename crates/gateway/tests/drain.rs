//! SIGTERM drains the real binary: in-flight payloads are answered, new work is refused, and the
//! process exits within TELEMETRY_GATEWAY_SHUTDOWN_TIMEOUT.

mod support;

use std::time::{Duration, Instant};

use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{simple_events, unlicensed_metadata};
use telemetry_gateway_testkit::fake_bigquery::FakeBigQuery;
use telemetry_gateway_testkit::http::get;

use support::{GatewayProcess, send_held_payload};

/// A gateway whose only sink is a BigQuery endpoint answering after `delay`.
async fn gateway_with_slow_sink(
    delay: Duration,
    shutdown_timeout: &str,
) -> (GatewayProcess, FakeBigQuery) {
    let fake = FakeBigQuery::start().await;
    fake.set_delay(delay);
    let endpoint = fake.v2_base_url();
    let gateway = GatewayProcess::start(&[
        ("TELEMETRY_GATEWAY_EVENTS_SINKS", "bigquery"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID", "proj"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID", "telemetry"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID", "events"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_ENDPOINT", &endpoint),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_WRITE_API", "insert_all"),
        ("TELEMETRY_GATEWAY_SHUTDOWN_TIMEOUT", shutdown_timeout),
    ]);
    (gateway, fake)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_the_held_payload_refuses_new_streams_and_exits_cleanly() {
    let (mut gateway, fake) = gateway_with_slow_sink(Duration::from_secs(2), "10s").await;
    let addr = gateway.address();
    assert_eq!(
        get(addr, "/-/ready", None).await.expect("served").status,
        200
    );

    let events = simple_events("held", 10);
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let held = send_held_payload(addr, &fake, events).await;

    let signalled = Instant::now();
    gateway.send_sigterm();
    let mut ready = get(addr, "/-/ready", None)
        .await
        .expect("served while draining");
    while ready.status == 200 && signalled.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        ready = get(addr, "/-/ready", None)
            .await
            .expect("served while draining");
    }
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, "not ready: draining")
    );

    let mut late = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect while draining");
    let refused = telemetry_gateway_testkit::record_events(
        &mut late,
        vec![
            metadata_message(unlicensed_metadata("late")),
            events_message(simple_events("late", 1)),
        ],
    )
    .await
    .expect_err("a new stream is refused while draining");
    assert_eq!(refused.code(), tonic::Code::Unavailable);

    let responses = held
        .await
        .expect("task")
        .expect("the held stream ends cleanly");
    assert_eq!(responses.len(), 1);
    assert_eq!(
        responses[0].succeeded_events, ids,
        "the held payload is answered and acknowledged"
    );

    let status = gateway
        .wait_exit(Duration::from_secs(10))
        .expect("exits within the timeout");
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(10));
    assert_eq!(fake.stored_rows().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_cannot_finish_in_time_is_not_acknowledged() {
    let (mut gateway, fake) = gateway_with_slow_sink(Duration::from_secs(30), "1s").await;
    let addr = gateway.address();
    let held = send_held_payload(addr, &fake, simple_events("slow", 5)).await;

    let signalled = Instant::now();
    gateway.send_sigterm();
    let status = gateway
        .wait_exit(Duration::from_secs(10))
        .expect("exits at the deadline");
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );
    let acknowledged: Vec<String> = match held.await.expect("task") {
        Ok(responses) => responses
            .into_iter()
            .flat_map(|r| r.succeeded_events)
            .collect(),
        Err(_) => Vec::new(),
    };
    assert!(
        acknowledged.is_empty(),
        "nothing was acknowledged: {acknowledged:?}"
    );
}
