//! The real `telemetry-gateway` binary configured for Pub/Sub by environment, as an operator
//! would, publishing to Google's Pub/Sub emulator (started by the tests).

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use telemetry_gateway_proto::v1::RecordEventsRequest;
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{simple_events, unlicensed_metadata};
use telemetry_gateway_testkit::pubsub_emulator::{
    PROJECT, PubSubEmulator, PulledMessage, TestTopic,
};
use tokio::sync::mpsc as async_mpsc;
use tokio_stream::wrappers::ReceiverStream;

use support::GatewayProcess;

/// The gateway configured for `topic` on `emulator`, plus `env`.
fn start_gateway(
    emulator: &PubSubEmulator,
    topic: &TestTopic,
    env: &[(&str, &str)],
) -> GatewayProcess {
    let host = emulator.host();
    let mut all = vec![
        ("PUBSUB_EMULATOR_HOST", host.as_str()),
        ("TELEMETRY_GATEWAY_EVENTS_PUBSUB_ENABLED", "true"),
        ("TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID", PROJECT),
        (
            "TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC_ID",
            topic.topic_id.as_str(),
        ),
    ];
    all.extend_from_slice(env);
    GatewayProcess::start(&all)
}

fn event_ids(pulled: Vec<PulledMessage>) -> Vec<String> {
    let mut ids: Vec<String> = pulled
        .iter()
        .map(|message| {
            let json: serde_json::Value =
                serde_json::from_slice(&message.data).expect("JSON payload");
            json["event"]["id"].as_str().expect("an ID").to_string()
        })
        .collect();
    ids.sort();
    ids
}

fn sorted_ids(events: &[telemetry_gateway_proto::v1::Event]) -> Vec<String> {
    let mut ids: Vec<String> = events.iter().map(|event| event.id.clone()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn configured_by_environment_the_gateway_publishes_to_the_topic_and_reports_its_health() {
    let emulator = PubSubEmulator::shared();
    let topic = emulator.create_test_topic("binary").await;
    let mut gateway = start_gateway(emulator, &topic, &[]);
    let addr = gateway.address();
    let destination = gateway.wait_for(&format!(
        "events go to Pub/Sub topic {}",
        topic.topic_name()
    ));
    assert_eq!(destination["sink"], "pubsub");

    let payloads: Vec<_> = ["a", "b"].iter().map(|p| simple_events(p, 150)).collect();
    let mut messages = vec![metadata_message(unlicensed_metadata("instance-binary"))];
    messages.extend(payloads.iter().cloned().map(events_message));
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    let responses = telemetry_gateway_testkit::record_events(&mut client, messages)
        .await
        .expect("the stream succeeds");
    let acknowledged: BTreeSet<String> = responses
        .iter()
        .flat_map(|response| response.succeeded_events.clone())
        .collect();
    assert_eq!(acknowledged.len(), 300);
    let published = event_ids(emulator.pull_all(&topic).await);
    assert_eq!(
        published,
        acknowledged.into_iter().collect::<Vec<_>>(),
        "every acknowledged event is published, once"
    );

    let health = telemetry_gateway_testkit::http::get(addr, "/-/healthz", None)
        .await
        .expect("served");
    assert_eq!((health.status, health.body.as_str()), (200, "healthz: ok"));

    emulator.delete_topic(&topic).await;
    // /-/healthz reuses a check's answer for 1 s (docs/operations.md): ask after that.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let health = telemetry_gateway_testkit::http::get(addr, "/-/healthz", None)
        .await
        .expect("served");
    assert_eq!(
        (health.status, health.body.as_str()),
        (500, "healthz: pubsub: topic does not exist")
    );
}

#[tokio::test]
async fn while_pubsub_is_down_nothing_is_acknowledged_the_stream_survives_and_a_resend_after_recovery_is()
 {
    let mut emulator = PubSubEmulator::start();
    let topic = emulator.create_test_topic("outage").await;
    let mut gateway = start_gateway(
        &emulator,
        &topic,
        &[(
            "TELEMETRY_GATEWAY_EVENTS_PUBSUB_PUBLISH_TIMEOUT_SECONDS",
            "2",
        )],
    );
    let addr = gateway.address();
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");

    let (send, requests) = async_mpsc::channel::<RecordEventsRequest>(4);
    let mut responses = client
        .record_events(ReceiverStream::new(requests))
        .await
        .expect("the stream opens")
        .into_inner();
    send.send(metadata_message(unlicensed_metadata("instance-outage")))
        .await
        .expect("open");
    let mut exchange = async |message: RecordEventsRequest| {
        send.send(message).await.expect("the stream is open");
        let mut ids = tokio::time::timeout(Duration::from_secs(30), responses.message())
            .await
            .expect("a response in time")
            .expect("no error status")
            .expect("a response, not the end of the stream")
            .succeeded_events;
        ids.sort();
        ids
    };

    let before = simple_events("before", 10);
    assert_eq!(
        exchange(events_message(before.clone())).await,
        sorted_ids(&before)
    );
    assert_eq!(
        event_ids(emulator.pull_all(&topic).await),
        sorted_ids(&before)
    );

    emulator.stop();
    let during = simple_events("during", 10);
    assert_eq!(
        exchange(events_message(during.clone())).await,
        Vec::<String>::new(),
        "nothing is acknowledged while Pub/Sub is down"
    );

    emulator.restart();
    emulator.create_topic(&topic).await;
    emulator.create_subscription(&topic).await;
    assert_eq!(
        exchange(events_message(during.clone())).await,
        sorted_ids(&during)
    );
    drop(send);
    assert!(
        responses.message().await.expect("EOF is OK").is_none(),
        "the stream ends cleanly"
    );
    // Each resent event is published; one whose failed publish still reached Pub/Sub from the
    // client's retry queue after the restart appears twice (at-least-once; consumers de-duplicate
    // by event ID). Nothing else is published.
    let mut published = event_ids(emulator.pull_all(&topic).await);
    published.dedup();
    assert_eq!(published, sorted_ids(&during));
}
