//! Dead letters through the real binary: every refusal reason writes exactly one dead letter
//! (to a directory, and to a topic of Google's Pub/Sub emulator), none when they are off, the
//! acknowledgements are the same either way, and a missing dead-letter topic changes nothing for
//! senders.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use prost_types::value::Kind;
use prost_types::{Struct, Value as ProtoValue};
use serde_json::Value;
use telemetry_gateway_proto::v1::{Event, RecordEventsRequestMetadata};
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{licensed_metadata, simple_event, unlicensed_metadata};
use telemetry_gateway_testkit::fake_bigquery::{FakeBigQuery, InsertReply};
use telemetry_gateway_testkit::license::{LicenseKeyPair, LicenseSpec, SignatureFormat};
use telemetry_gateway_testkit::pubsub_emulator::{PROJECT, PubSubEmulator};
use telemetry_gateway_testkit::wait::eventually;

use support::{GatewayProcess, ndjson_lines};

/// The refused events sent by [`send_every_refusal`], by ID, with their reason.
const REFUSED: [(&str, &str); 5] = [
    ("dl-invalid", "invalid"),
    ("dl-unrenderable", "unrenderable"),
    ("dl-oversized", "oversized"),
    ("dl-policy", "policy"),
    ("dl-rejected", "rejected"),
];

/// A license key tagged `disable-telemetry-events-export`, and the public key verifying it.
fn restricted_license() -> (String, String) {
    let keys = LicenseKeyPair::shared();
    let spec = LicenseSpec {
        tags: vec!["disable-telemetry-events-export".into()],
        ..LicenseSpec::default()
    };
    (
        keys.mint(&spec, SignatureFormat::RsaSha256),
        keys.public_key_openssh(),
    )
}

/// The settings of a gateway that delivers to the fake BigQuery `fake` and enforces export tags
/// with `public_key`, followed by `extra`.
fn settings<'a>(
    fake_url: &'a str,
    public_key: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("TELEMETRY_GATEWAY_EVENTS_SINKS", "bigquery"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID", "p"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID", "d"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID", "t"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_ENDPOINT", fake_url),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_WRITE_API", "insert_all"),
        ("TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY", public_key),
        ("TELEMETRY_GATEWAY_LICENSE_ENFORCE_EXPORT_TAGS", "true"),
    ];
    env.extend_from_slice(extra);
    env
}

async fn send(
    addr: SocketAddr,
    metadata: RecordEventsRequestMetadata,
    events: Vec<Event>,
) -> Vec<String> {
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    telemetry_gateway_testkit::record_events(
        &mut client,
        vec![metadata_message(metadata), events_message(events)],
    )
    .await
    .expect("the stream succeeds")
    .into_iter()
    .flat_map(|response| response.succeeded_events)
    .collect()
}

/// Sends one event of each refusal reason (and valid ones around them) and returns the
/// acknowledged IDs of each payload.
async fn send_every_refusal(
    addr: SocketAddr,
    fake: &FakeBigQuery,
    license_key: &str,
) -> Vec<Vec<String>> {
    let mut invalid = simple_event("dl-invalid");
    invalid.feature = String::new();
    let mut unrenderable = simple_event("dl-unrenderable");
    unrenderable
        .parameters
        .as_mut()
        .expect("parameters")
        .private_metadata = Some(Struct {
        fields: BTreeMap::from([(
            "x".into(),
            ProtoValue {
                kind: Some(Kind::NumberValue(f64::NAN)),
            },
        )]),
    });
    let mut oversized = simple_event("dl-oversized");
    oversized
        .source
        .as_mut()
        .expect("source")
        .server
        .as_mut()
        .expect("server")
        .version = "x".repeat(10_000_000);
    let mut policy = simple_event("dl-policy");
    policy.feature = "search".into();

    let mut acknowledged = Vec::new();
    acknowledged.push(
        send(
            addr,
            unlicensed_metadata("instance-dl"),
            vec![
                simple_event("ok-1"),
                invalid,
                unrenderable,
                oversized,
                simple_event("ok-2"),
            ],
        )
        .await,
    );
    acknowledged.push(
        send(
            addr,
            licensed_metadata(license_key),
            vec![simple_event("ok-cody"), policy],
        )
        .await,
    );
    // BigQuery refuses the next row as invalid: a permanent rejection.
    fake.push_replies([InsertReply::row_errors(&[0], "invalid")]);
    acknowledged.push(
        send(
            addr,
            unlicensed_metadata("instance-dl"),
            vec![simple_event("dl-rejected")],
        )
        .await,
    );
    acknowledged
}

fn expected_acknowledgements() -> Vec<Vec<String>> {
    let ids = |ids: &[&str]| ids.iter().map(ToString::to_string).collect::<Vec<_>>();
    vec![
        ids(&[
            "ok-1",
            "dl-invalid",
            "dl-unrenderable",
            "dl-oversized",
            "ok-2",
        ]),
        ids(&["ok-cody", "dl-policy"]),
        ids(&["dl-rejected"]),
    ]
}

/// Waits (up to 20 s) until the directory holds `n` dead letters, then a little longer (anything
/// extra would have arrived by then), and returns them all.
async fn wait_for_ndjson_lines(dir: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while ndjson_lines(dir).len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    ndjson_lines(dir)
}

/// Exactly one dead letter per refused event, with the right fields.
fn check_records(records: &[Value], license_key: &str) {
    let by_id: BTreeMap<&str, &Value> = records
        .iter()
        .map(|r| (r["event_id"].as_str().expect("an event ID"), r))
        .collect();
    assert_eq!(
        by_id.len(),
        records.len(),
        "one dead letter per event: {records:#?}"
    );
    let expected: BTreeSet<&str> = REFUSED.iter().map(|(id, _)| *id).collect();
    assert_eq!(by_id.keys().copied().collect::<BTreeSet<_>>(), expected);
    let fingerprint = telemetry_gateway_auth::license_key_fingerprint(license_key);
    for (id, reason) in REFUSED {
        let record = by_id[id];
        assert_eq!(record["reason"], reason, "{record}");
        assert!(
            !record["message"].as_str().expect("a message").is_empty(),
            "{record}"
        );
        assert_eq!(record["request_id"], "test-request");
        assert_eq!(record["gateway_version"], env!("CARGO_PKG_VERSION"));
        assert!(
            chrono::DateTime::parse_from_rfc3339(record["time"].as_str().expect("a time")).is_ok()
        );
        let protobuf = base64::engine::general_purpose::STANDARD
            .decode(record["event_protobuf"].as_str().expect("base64"))
            .expect("valid base64");
        if id == "dl-oversized" {
            // 10 MB do not fit in a 1 MiB dead letter.
            assert_eq!(record["truncated"], true);
            assert_eq!(record["event_json"], Value::Null);
            assert!(record["event_protobuf_bytes"].as_u64().expect("a size") > 10_000_000);
            assert!(record.to_string().len() <= 1024 * 1024);
        } else {
            assert_eq!(record["truncated"], false, "{record}");
            let event: Event = prost::Message::decode(protobuf.as_slice()).expect("an event");
            assert_eq!(event.id, id);
        }
        match id {
            "dl-unrenderable" => assert_eq!(record["event_json"], Value::Null),
            "dl-invalid" | "dl-policy" | "dl-rejected" => {
                assert_eq!(record["event_json"]["id"], id, "{record}");
            }
            _ => {}
        }
        if id == "dl-policy" {
            assert_eq!(record["source"], "licensed_instance");
            assert_eq!(record["license_fingerprint"], fingerprint.as_str());
            assert_eq!(
                record["metadata"]["identifier"]["licensedInstance"]["licenseKey"],
                fingerprint.as_str()
            );
            assert!(
                !record.to_string().contains(license_key),
                "never the raw license key"
            );
        } else {
            assert_eq!(record["source"], "unlicensed_instance");
            assert_eq!(record["license_fingerprint"], Value::Null);
            assert_eq!(
                record["metadata"]["identifier"]["unlicensedInstance"]["instanceId"],
                "instance-dl"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_writes_one_dead_letter_to_the_directory_and_acknowledgements_do_not_change() {
    let fake = FakeBigQuery::start().await;
    let url = fake.v2_base_url();
    let (license_key, public_key) = restricted_license();
    let dead_letter_dir = tempfile::tempdir().expect("temp dir");
    let dir = dead_letter_dir.path().to_str().expect("UTF-8").to_string();

    // Off (the default): nothing is written anywhere.
    let mut off = GatewayProcess::start(&settings(&url, &public_key, &[]));
    let addr = off.address();
    let acknowledged_off = send_every_refusal(addr, &fake, &license_key).await;
    assert_eq!(acknowledged_off, expected_acknowledgements());
    drop(off);

    let mut on = GatewayProcess::start(&settings(
        &url,
        &public_key,
        &[("TELEMETRY_GATEWAY_EVENTS_DEADLETTER_DIR", &dir)],
    ));
    let addr = on.address();
    on.wait_for(&format!(
        "dead letters (events refused for good) go to NDJSON files under {dir} (rotated at 128 MiB)"
    ));
    let acknowledged_on = send_every_refusal(addr, &fake, &license_key).await;
    assert_eq!(
        acknowledged_on, acknowledged_off,
        "dead letters change no acknowledgement"
    );
    let records = wait_for_ndjson_lines(dead_letter_dir.path(), REFUSED.len()).await;
    check_records(&records, &license_key);

    // A dead letter is counted once synced, which may be after its line can be read: wait.
    eventually(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            let metrics = telemetry_gateway_testkit::http::get(addr, "/metrics", None)
                .await
                .expect("served");
            let uncounted: Vec<&str> = REFUSED
                .iter()
                .map(|(_, reason)| *reason)
                .filter(|reason| {
                    !metrics.body.lines().any(|line| {
                        line.starts_with("telemetry_gateway_dead_letters_written_total{")
                            && line.contains(&format!("reason=\"{reason}\""))
                            && line.ends_with(" 1")
                    })
                })
                .collect();
            if uncounted.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "no written dead letter counted for {uncounted:?}:\n{}",
                    metrics.body
                ))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_publishes_one_dead_letter_to_the_emulator_topic() {
    let emulator = PubSubEmulator::shared();
    let topic = emulator.create_test_topic("deadletters").await;
    let fake = FakeBigQuery::start().await;
    let url = fake.v2_base_url();
    let (license_key, public_key) = restricted_license();
    let host = emulator.host();
    let mut gateway = GatewayProcess::start(&settings(
        &url,
        &public_key,
        &[
            ("PUBSUB_EMULATOR_HOST", host.as_str()),
            (
                "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_PROJECT_ID",
                PROJECT,
            ),
            (
                "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_TOPIC_ID",
                topic.topic_id.as_str(),
            ),
        ],
    ));
    let addr = gateway.address();
    let acknowledged = send_every_refusal(addr, &fake, &license_key).await;
    assert_eq!(acknowledged, expected_acknowledgements());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pulled = Vec::new();
    while pulled.len() < REFUSED.len() && Instant::now() < deadline {
        pulled.extend(emulator.pull_all(&topic).await);
    }
    // Anything extra would have arrived by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    pulled.extend(emulator.pull_all(&topic).await);
    let records: Vec<Value> = pulled
        .iter()
        .map(|m| serde_json::from_slice(&m.data).expect("a JSON dead letter"))
        .collect();
    check_records(&records, &license_key);
    for message in &pulled {
        let record: Value = serde_json::from_slice(&message.data).expect("JSON");
        assert_eq!(
            message
                .attributes
                .get("deadletter.reason")
                .map(String::as_str),
            record["reason"].as_str()
        );
        assert_eq!(
            message
                .attributes
                .get("publisher.source")
                .map(String::as_str),
            record["source"].as_str()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dead_letter_topic_leaves_acknowledgements_as_they_are_and_is_counted() {
    let emulator = PubSubEmulator::shared();
    let host = emulator.host();
    let mut gateway = GatewayProcess::start(&[
        ("PUBSUB_EMULATOR_HOST", host.as_str()),
        (
            "TELEMETRY_GATEWAY_EVENTS_PUBSUB_PUBLISH_TIMEOUT_SECONDS",
            "2",
        ),
        (
            "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_PROJECT_ID",
            PROJECT,
        ),
        (
            "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_TOPIC_ID",
            "no-such-topic",
        ),
    ]);
    let addr = gateway.address();
    let mut invalid = simple_event("bad");
    invalid.feature = String::new();
    let acknowledged = send(
        addr,
        unlicensed_metadata("instance-missing-topic"),
        vec![simple_event("good"), invalid, simple_event("good-2")],
    )
    .await;
    assert_eq!(acknowledged, ["good", "bad", "good-2"]);
    let lines = gateway.file_sink_lines();
    assert_eq!(lines.len(), 2, "the valid events are delivered");

    let health = telemetry_gateway_testkit::http::get(addr, "/-/healthz", None)
        .await
        .expect("served");
    assert_eq!(health.status, 200, "dead letters are not part of health");

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = telemetry_gateway_testkit::http::get(addr, "/metrics", None)
            .await
            .expect("served");
        if metrics.body.lines().any(|line| {
            line.starts_with("telemetry_gateway_dead_letters_failed_total{")
                && line.contains("cause=\"destination\"")
                && line.contains("reason=\"invalid\"")
                && line.ends_with(" 1")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lost dead letter is never counted:\n{}",
            metrics.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gateway.wait_for(
        "dead letters could not be written (logged at most every 10s; see telemetry-gateway.dead_letters.failed)",
    );
}

#[test]
fn a_dead_letter_directory_and_topic_together_are_refused_at_start() {
    let output = support::run_to_completion(
        &[
            ("TELEMETRY_GATEWAY_EVENTS_DEADLETTER_DIR", "dead"),
            ("TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_TOPIC_ID", "t"),
            ("TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID", "p"),
            ("TELEMETRY_GATEWAY_EVENTS_SINKS", "file"),
        ],
        &[],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_DIR and TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_TOPIC_ID are both set"
        ),
        "{stderr}"
    );
}
