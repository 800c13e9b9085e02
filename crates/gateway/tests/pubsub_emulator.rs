//! The real `telemetry-gateway` binary configured for Pub/Sub by environment, as an operator
//! would, publishing to Google's Pub/Sub emulator (started by the tests).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use telemetry_gateway_proto::v1::RecordEventsRequest;
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{simple_events, unlicensed_metadata};
use telemetry_gateway_testkit::pubsub_emulator::{
    PROJECT, PubSubEmulator, PulledMessage, TestTopic,
};
use tokio::sync::mpsc as async_mpsc;
use tokio_stream::wrappers::ReceiverStream;

const BIN: &str = env!("CARGO_BIN_EXE_telemetry-gateway");

/// A gateway process whose JSON log lines are collected; killed when dropped.
struct Gateway {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
    seen: Vec<serde_json::Value>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the binary with an empty environment plus the Pub/Sub settings for `topic` and `env`.
    fn start(emulator: &PubSubEmulator, topic: &TestTopic, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(BIN);
        command
            .current_dir(dir.path())
            .env_clear()
            .env("PORT", "0")
            .env("SRC_LOG_FORMAT", "json")
            .env("PUBSUB_EMULATOR_HOST", emulator.host())
            .env("TELEMETRY_GATEWAY_EVENTS_PUBSUB_ENABLED", "true")
            .env("TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID", PROJECT)
            .env("TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC_ID", &topic.topic_id)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(json) = serde_json::from_str(&line)
                    && sender.send(json).is_err()
                {
                    break;
                }
            }
        });
        Gateway {
            child,
            lines,
            seen: Vec::new(),
            _dir: dir,
        }
    }

    /// Waits for the log line with `message` and returns it.
    fn wait_for(&mut self, message: &str) -> serde_json::Value {
        if let Some(line) = self.seen.iter().find(|l| l["message"] == message) {
            return line.clone();
        }
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no {message:?} log line; saw {:#?}", self.seen));
            self.seen.push(line.clone());
            if line["message"] == message {
                return line;
            }
        }
    }

    /// The address the gateway listens on, from its start-up log line.
    fn address(&mut self) -> SocketAddr {
        let line = self.wait_for("telemetry gateway listening");
        let listening: SocketAddr = line["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("an address field");
        SocketAddr::from(([127, 0, 0, 1], listening.port()))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let mut gateway = Gateway::start(emulator, &topic, &[]);
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
    let mut gateway = Gateway::start(
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
    assert_eq!(
        event_ids(emulator.pull_all(&topic).await),
        sorted_ids(&during)
    );
}
