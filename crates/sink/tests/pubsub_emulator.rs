//! The Pub/Sub sink against Google's real Pub/Sub emulator (started by the tests).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use telemetry_gateway_sink::pubsub::{PubSubSink, PubSubSinkConfig};
use telemetry_gateway_sink::{EventSink, PreparedEvent, PublishOutcome};
use telemetry_gateway_testkit::pubsub_emulator::{PROJECT, PubSubEmulator, TestTopic};

fn config(emulator: &PubSubEmulator, topic: &TestTopic) -> PubSubSinkConfig {
    PubSubSinkConfig {
        emulator_host: Some(emulator.host()),
        publish_timeout: Duration::from_secs(10),
        ..PubSubSinkConfig::new(PROJECT, topic.topic_id.clone())
    }
}

fn event(id: String, payload: Vec<u8>) -> PreparedEvent {
    PreparedEvent::builder(id.clone())
        .feature("test.feature")
        .action("tested")
        .payload(payload)
        .attributes([
            ("publisher.source", "unlicensed_instance"),
            ("event.feature", "test.feature"),
            ("event.action", "tested"),
            ("event.hasPrivateMetadata", "false"),
        ])
        .attribute("event.id", id)
        .build()
}

fn events(prefix: &str, n: usize) -> Vec<PreparedEvent> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            let payload = format!(r#"{{"event":{{"id":"{id}"}},"metadata":{{}}}}"#);
            event(id, payload.into_bytes())
        })
        .collect()
}

/// Every pulled message, keyed by its data; fails on a duplicate.
fn by_data(
    pulled: Vec<telemetry_gateway_testkit::pubsub_emulator::PulledMessage>,
) -> BTreeMap<Vec<u8>, BTreeMap<String, String>> {
    let mut messages = BTreeMap::new();
    for message in pulled {
        let data = message.data.clone();
        assert!(
            messages.insert(message.data, message.attributes).is_none(),
            "published twice: {}",
            String::from_utf8_lossy(&data)
        );
    }
    messages
}

/// Every sent event was published, with its attributes, and nothing else was; duplicates are
/// allowed. After an outage, a publish reported as failed (so never acknowledged) may still
/// reach Pub/Sub from the client's retry queue, and the sender's resend then publishes it again:
/// at-least-once delivery, de-duplicated downstream by event ID.
fn assert_published_at_least_once(
    pulled: Vec<telemetry_gateway_testkit::pubsub_emulator::PulledMessage>,
    sent: &[PreparedEvent],
) {
    let messages: BTreeMap<Vec<u8>, BTreeMap<String, String>> = pulled
        .into_iter()
        .map(|message| (message.data, message.attributes))
        .collect();
    assert_eq!(
        messages.len(),
        sent.len(),
        "only the sent events were published"
    );
    for event in sent {
        let attributes = messages
            .get(event.payload.as_ref())
            .unwrap_or_else(|| panic!("event {} was not published", event.id));
        assert_eq!(attributes, &event.attributes, "attributes of {}", event.id);
    }
}

fn assert_published_exactly(
    pulled: Vec<telemetry_gateway_testkit::pubsub_emulator::PulledMessage>,
    sent: &[PreparedEvent],
) {
    let messages = by_data(pulled);
    assert_eq!(messages.len(), sent.len(), "one message per event");
    for event in sent {
        let attributes = messages
            .get(event.payload.as_ref())
            .unwrap_or_else(|| panic!("event {} was not published", event.id));
        assert_eq!(attributes, &event.attributes, "attributes of {}", event.id);
    }
}

#[tokio::test]
async fn each_event_is_one_message_with_the_exact_payload_and_attributes() {
    let emulator = PubSubEmulator::shared();
    let topic = emulator.create_test_topic("exact").await;
    let sink = PubSubSink::connect(config(emulator, &topic))
        .await
        .expect("connect");

    let mut sent = events("exact", 50);
    // Bytes that are not JSON or UTF-8 go through untouched as well.
    sent.push(event("binary".into(), vec![0, 159, 146, 150, 255, b'\n']));
    let outcomes = sink.publish(&sent).await;
    assert_eq!(outcomes, vec![PublishOutcome::Delivered; sent.len()]);

    assert_published_exactly(emulator.pull_all(&topic).await, &sent);
}

#[tokio::test]
async fn batches_beyond_pubsub_request_limits_are_split_and_all_delivered() {
    // The emulator refuses requests of more than 1,000 messages ("Too many messages to publish")
    // or 11 MB, so delivering these proves the requests were split.
    let emulator = PubSubEmulator::shared();
    let topic = emulator.create_test_topic("split").await;
    let sink = PubSubSink::connect(PubSubSinkConfig {
        // Everything in flight at once, so the client sees more than a request can carry.
        publish_concurrency: 10_000,
        publish_timeout: Duration::from_secs(60),
        ..config(emulator, &topic)
    })
    .await
    .expect("connect");

    let mut sent = events("many", 2_500);
    sent.extend((0..14).map(|i| {
        let id = format!("large-{i}");
        let mut payload = format!(r#"{{"event":{{"id":"{id}"}},"padding":""#).into_bytes();
        payload.resize(payload.len() + 900_000, b'x');
        payload.extend_from_slice(b"\"}");
        event(id, payload)
    }));
    let total: usize = sent.iter().map(|e| e.payload.len()).sum();
    assert!(total > 12_000_000, "more than 10 MB in one batch: {total}");

    let outcomes = sink.publish(&sent).await;
    let failed: Vec<_> = outcomes
        .iter()
        .zip(&sent)
        .filter(|(outcome, _)| !outcome.is_delivered())
        .map(|(outcome, event)| format!("{}: {outcome:?}", event.id))
        .take(5)
        .collect();
    assert!(failed.is_empty(), "not delivered: {failed:#?}");

    assert_published_exactly(emulator.pull_all(&topic).await, &sent);
}

#[tokio::test]
async fn health_is_whether_the_topic_exists() {
    let emulator = PubSubEmulator::shared();
    let topic = emulator.create_test_topic("health").await;
    let sink = PubSubSink::connect(config(emulator, &topic))
        .await
        .expect("connect");
    sink.health().await.expect("the topic exists");

    emulator.delete_topic(&topic).await;
    let err = sink.health().await.expect_err("the topic is gone");
    assert_eq!(err.to_string(), "pubsub: topic does not exist");

    emulator.create_topic(&topic).await;
    sink.health().await.expect("the topic exists again");
}

#[tokio::test]
async fn publishing_to_a_missing_topic_is_retryable_and_a_retry_after_recovery_is_delivered() {
    let emulator = PubSubEmulator::shared();
    let topic = emulator.create_test_topic("missing").await;
    let sink = PubSubSink::connect(config(emulator, &topic))
        .await
        .expect("connect");
    emulator.delete_topic(&topic).await;

    let sent = events("missing", 20);
    for outcome in sink.publish(&sent).await {
        match outcome {
            PublishOutcome::Retryable(reason) => {
                assert!(reason.message.starts_with("publishing event: "), "{reason}")
            }
            other => panic!("expected a retryable failure, got {other:?}"),
        }
    }

    emulator.create_topic(&topic).await;
    emulator.create_subscription(&topic).await;
    assert_eq!(
        sink.publish(&sent).await,
        vec![PublishOutcome::Delivered; sent.len()]
    );
    assert_published_exactly(emulator.pull_all(&topic).await, &sent);
}

#[tokio::test]
async fn a_dead_pubsub_makes_events_retryable_within_the_timeout_and_recovery_delivers() {
    let mut emulator = PubSubEmulator::start();
    let topic = emulator.create_test_topic("dead").await;
    let timeout = Duration::from_secs(3);
    let sink = PubSubSink::connect(PubSubSinkConfig {
        publish_timeout: timeout,
        publish_concurrency: 4,
        ..config(&emulator, &topic)
    })
    .await
    .expect("connect");
    let before = events("before", 5);
    assert_eq!(
        sink.publish(&before).await,
        vec![PublishOutcome::Delivered; before.len()]
    );
    assert_published_exactly(emulator.pull_all(&topic).await, &before);

    emulator.stop();
    let during = events("during", 10);
    let started = Instant::now();
    let outcomes = sink.publish(&during).await;
    let took = started.elapsed();
    assert!(
        took < timeout + Duration::from_secs(2),
        "the whole batch is answered within the timeout, took {took:?}"
    );
    assert!(
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, PublishOutcome::Retryable(_))),
        "{outcomes:?}"
    );
    assert!(
        sink.health().await.is_err(),
        "unhealthy while Pub/Sub is down"
    );

    emulator.restart();
    emulator.create_topic(&topic).await;
    emulator.create_subscription(&topic).await;
    let outcomes = sink.publish(&during).await;
    assert_eq!(outcomes, vec![PublishOutcome::Delivered; during.len()]);
    assert_published_at_least_once(emulator.pull_all(&topic).await, &during);
    sink.shutdown().await.expect("flushed");
}

#[tokio::test]
async fn after_shutdown_events_are_retryable() {
    let emulator = PubSubEmulator::shared();
    let topic = emulator.create_test_topic("shutdown").await;
    let sink = PubSubSink::connect(config(emulator, &topic))
        .await
        .expect("connect");
    sink.shutdown().await.expect("flushed");
    let outcomes = sink.publish(&events("late", 2)).await;
    assert!(
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, PublishOutcome::Retryable(_))),
        "{outcomes:?}"
    );
    assert!(emulator.pull_all(&topic).await.is_empty());
}

/// An event whose attributes are the base ones plus `extra`.
fn event_with_attributes(
    id: &str,
    extra: impl IntoIterator<Item = (String, String)>,
) -> PreparedEvent {
    let payload = format!(r#"{{"event":{{"id":"{id}"}},"metadata":{{}}}}"#);
    let mut event = event(id.to_string(), payload.into_bytes());
    event.attributes.remove("event.id");
    event.attributes.extend(extra);
    event
}

fn flags(prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                format!("event.recordsPrivateMetadata{prefix}{i:03}"),
                "true".to_string(),
            )
        })
        .collect()
}

/// Pub/Sub itself refuses such messages, failing every message of their request; the emulator
/// does not (it accepts 150 attributes, a 300-byte key, a 2,000-byte value), so this asserts on
/// what is published: every event delivered, and each message within the limits.
#[tokio::test]
async fn attributes_beyond_pubsub_limits_are_fitted_and_fail_no_other_event() {
    use telemetry_gateway_sink::pubsub::{
        MAX_ATTRIBUTE_KEY_BYTES, MAX_ATTRIBUTE_VALUE_BYTES, MAX_ATTRIBUTES,
    };
    let emulator = PubSubEmulator::shared();
    let topic = emulator.create_test_topic("attributes").await;
    let sink = PubSubSink::connect(config(emulator, &topic))
        .await
        .expect("connect");

    // At each limit: published exactly as prepared.
    let at_limits = vec![
        event_with_attributes("at-count", flags("", MAX_ATTRIBUTES - 4)),
        event_with_attributes(
            "at-key",
            [("k".repeat(MAX_ATTRIBUTE_KEY_BYTES), "true".to_string())],
        ),
        event_with_attributes(
            "at-value",
            [(
                "event.long".to_string(),
                "v".repeat(MAX_ATTRIBUTE_VALUE_BYTES),
            )],
        ),
    ];
    // Over each limit: fitted by the documented rule.
    let long_key = format!(
        "event.recordsPrivateMetadata{}",
        "k".repeat(MAX_ATTRIBUTE_KEY_BYTES)
    );
    let over_limits = vec![
        event_with_attributes("over-count", flags("", 150)),
        event_with_attributes("over-key", [(long_key.clone(), "true".to_string())]),
        event_with_attributes(
            "over-value",
            [(
                "event.long".to_string(),
                "v".repeat(MAX_ATTRIBUTE_VALUE_BYTES + 1),
            )],
        ),
    ];
    // Another stream's ordinary events, published at the same time so that the client batches
    // them into the same requests as the oversized ones.
    let good = events("good", 40);
    let bad: Vec<PreparedEvent> = at_limits.iter().chain(&over_limits).cloned().collect();
    let (good_outcomes, bad_outcomes) = tokio::join!(sink.publish(&good), sink.publish(&bad));
    assert_eq!(good_outcomes, vec![PublishOutcome::Delivered; good.len()]);
    assert_eq!(bad_outcomes, vec![PublishOutcome::Delivered; bad.len()]);

    let published = by_data(emulator.pull_all(&topic).await);
    assert_eq!(published.len(), good.len() + bad.len());
    for event in good.iter().chain(&at_limits) {
        assert_eq!(
            published.get(event.payload.as_ref()),
            Some(&event.attributes),
            "{} is published unchanged",
            event.id
        );
    }
    let attributes_of = |id: &str| {
        let event = over_limits.iter().find(|e| e.id == id).expect("sent");
        published
            .get(event.payload.as_ref())
            .expect("published")
            .clone()
    };

    let over_count = attributes_of("over-count");
    assert_eq!(over_count.len(), MAX_ATTRIBUTES);
    for key in [
        "publisher.source",
        "event.feature",
        "event.action",
        "event.hasPrivateMetadata",
    ] {
        assert!(over_count.contains_key(key), "{key} is kept");
    }
    assert!(over_count.contains_key("event.recordsPrivateMetadata095"));
    assert!(!over_count.contains_key("event.recordsPrivateMetadata096"));

    let over_key = attributes_of("over-key");
    assert!(!over_key.contains_key(&long_key));
    assert_eq!(over_key.len(), 4, "{over_key:?}");

    let over_value = attributes_of("over-value");
    assert_eq!(
        over_value["event.long"],
        "v".repeat(MAX_ATTRIBUTE_VALUE_BYTES)
    );
}
