//! End to end through a real gateway: gRPC `RecordEvents` → Pub/Sub sink → Google's Pub/Sub
//! emulator (started by the tests) → pulled back.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use telemetry_gateway_proto::v1::RecordEventsRequest;
use telemetry_gateway_sink::pubsub::{PubSubSink, PubSubSinkConfig};
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{rich_event, simple_events, unlicensed_metadata};
use telemetry_gateway_testkit::pubsub_emulator::{
    PROJECT, PubSubEmulator, PulledMessage, TestTopic,
};
use telemetry_gateway_testkit::record_events;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use support::{Setup, TestGateway};

async fn gateway_publishing_to(emulator: &PubSubEmulator, topic: &TestTopic) -> TestGateway {
    let sink = PubSubSink::connect(PubSubSinkConfig {
        emulator_host: Some(emulator.host()),
        publish_timeout: Duration::from_secs(10),
        ..PubSubSinkConfig::new(PROJECT, topic.topic_id.clone())
    })
    .await
    .expect("connect");
    TestGateway::start_with(Setup {
        sink: Arc::new(sink),
        ..Setup::default()
    })
    .await
}

/// The content of an insta snapshot of the payload tests (everything after its header).
fn snapshot(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("payload__{name}.snap"));
    let text = std::fs::read_to_string(&path).expect("the snapshot exists");
    let body = text
        .splitn(3, "---\n")
        .nth(2)
        .expect("an insta snapshot: header between --- lines");
    body.trim_end_matches('\n').to_string()
}

/// Pulled messages by event ID; fails if an event was published more than once.
fn by_event_id(pulled: Vec<PulledMessage>) -> BTreeMap<String, PulledMessage> {
    let mut messages = BTreeMap::new();
    for message in pulled {
        let json: serde_json::Value =
            serde_json::from_slice(&message.data).expect("the data is the JSON payload");
        let id = json["event"]["id"]
            .as_str()
            .expect("an event ID")
            .to_string();
        assert!(
            messages.insert(id.clone(), message).is_none(),
            "{id} was published more than once"
        );
    }
    messages
}

#[tokio::test]
async fn acknowledged_events_are_published_once_with_the_exact_payload_and_attributes() {
    let emulator = PubSubEmulator::shared();
    let topic = emulator.create_test_topic("e2e").await;
    let gateway = gateway_publishing_to(emulator, &topic).await;

    let batch = simple_events("e2e", 300);
    let responses = record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(unlicensed_metadata("instance-rich")),
            events_message(vec![rich_event()]),
            events_message(batch.clone()),
        ],
    )
    .await
    .expect("the stream succeeds");
    assert_eq!(responses[0].succeeded_events, vec![rich_event().id]);
    let batch_ids: Vec<String> = batch.iter().map(|event| event.id.clone()).collect();
    assert_eq!(responses[1].succeeded_events, batch_ids);

    let messages = by_event_id(emulator.pull_all(&topic).await);
    let acknowledged: BTreeSet<&String> = responses
        .iter()
        .flat_map(|response| &response.succeeded_events)
        .collect();
    assert_eq!(
        messages.keys().collect::<BTreeSet<_>>(),
        acknowledged,
        "exactly the acknowledged events are published"
    );

    let rich = &messages[&rich_event().id];
    assert_eq!(
        String::from_utf8(rich.data.clone()).expect("UTF-8"),
        snapshot("rich_event_payload"),
        "the data is byte for byte the payload snapshot"
    );
    let expected_attributes: BTreeMap<String, String> =
        serde_json::from_str(&snapshot("rich_event_attributes")).expect("JSON attributes");
    assert_eq!(rich.attributes, expected_attributes);

    let simple = &messages["e2e-7"];
    assert_eq!(
        simple.attributes,
        BTreeMap::from(
            [
                ("event.action", "submitted"),
                ("event.feature", "cody.chat"),
                ("event.hasPrivateMetadata", "false"),
                ("publisher.source", "unlicensed_instance"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        )
    );
}

#[tokio::test]
async fn a_payload_pubsub_refuses_is_not_acknowledged_the_stream_survives_and_a_resend_is() {
    let emulator = PubSubEmulator::shared();
    let topic = emulator.create_test_topic("fault").await;
    let gateway = gateway_publishing_to(emulator, &topic).await;

    let (send, requests) = mpsc::channel::<RecordEventsRequest>(4);
    let mut responses = gateway
        .client()
        .await
        .record_events(ReceiverStream::new(requests))
        .await
        .expect("the stream opens")
        .into_inner();
    let mut exchange = async |message: RecordEventsRequest| {
        send.send(message).await.expect("the stream is open");
        tokio::time::timeout(Duration::from_secs(30), responses.message())
            .await
            .expect("a response in time")
            .expect("no error status")
            .expect("a response, not the end of the stream")
            .succeeded_events
    };
    send.send(metadata_message(unlicensed_metadata("instance-fault")))
        .await
        .expect("the stream is open");

    let first = simple_events("first", 20);
    assert_eq!(
        exchange(events_message(first.clone())).await.len(),
        first.len()
    );
    let first_ids: Vec<String> = first.iter().map(|event| event.id.clone()).collect();
    assert_eq!(
        by_event_id(emulator.pull_all(&topic).await)
            .into_keys()
            .collect::<Vec<_>>(),
        sorted(first_ids)
    );

    // Pub/Sub loses the topic mid-stream: nothing of this payload is acknowledged.
    emulator.delete_topic(&topic).await;
    let second = simple_events("second", 20);
    assert_eq!(
        exchange(events_message(second.clone())).await,
        Vec::<String>::new()
    );

    // After recovery, the sender's resend on the same stream is acknowledged.
    emulator.create_topic(&topic).await;
    emulator.create_subscription(&topic).await;
    let second_ids: Vec<String> = second.iter().map(|event| event.id.clone()).collect();
    assert_eq!(exchange(events_message(second)).await, second_ids);

    drop(send);
    assert!(
        responses.message().await.expect("EOF is OK").is_none(),
        "the stream ends cleanly"
    );

    assert_eq!(
        by_event_id(emulator.pull_all(&topic).await)
            .into_keys()
            .collect::<Vec<_>>(),
        sorted(second_ids),
        "the resent payload is published once"
    );
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}
