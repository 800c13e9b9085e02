//! The real `telemetry-gateway` binary with the BigQuery sink: against bqemulator (rows queried
//! back), and against a fake insertAll endpoint together with the file sink (acknowledged only
//! when both accepted).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use telemetry_gateway_proto::v1::{Event, RecordEventsRequestMetadata};
use telemetry_gateway_testkit::bigquery_emulator::BigQueryEmulator;
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{rich_event, simple_events, unlicensed_metadata};
use telemetry_gateway_testkit::fake_bigquery::{FakeBigQuery, InsertReply};

const BIN: &str = env!("CARGO_BIN_EXE_telemetry-gateway");

/// A gateway process whose JSON log lines are collected; killed when dropped.
struct Gateway {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Gateway {
    /// Starts the binary in `dir` with an empty environment plus `env`, on a free port.
    fn start(dir: &Path, env: &[(&str, &str)]) -> Gateway {
        let mut command = Command::new(BIN);
        command
            .current_dir(dir)
            .env_clear()
            .env("SRC_LOG_FORMAT", "json")
            .env("PORT", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
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
        }
    }

    /// Waits for the log line with `message` and returns it.
    fn wait_for(&mut self, message: &str) -> Value {
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

/// Every NDJSON line the file sink wrote under `dir`, by event ID.
fn file_sink_payloads(dir: &Path) -> BTreeMap<String, Value> {
    let mut payloads = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("the file sink's directory") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|ext| ext != "ndjson") {
            continue;
        }
        for line in std::fs::read_to_string(&path).expect("readable").lines() {
            let json: Value = serde_json::from_str(line).expect("each line is JSON");
            let id = json["event"]["id"]
                .as_str()
                .expect("an event ID")
                .to_string();
            payloads.insert(id, json);
        }
    }
    payloads
}

/// JSON with every number as a float: BigQuery's JSON type keeps values, not their spelling.
fn normalized(value: &Value) -> Value {
    match value {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        Value::Array(items) => Value::Array(items.iter().map(normalized).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), normalized(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_are_rows_of_the_bigquery_emulator_table_once_each() {
    let emulator = BigQueryEmulator::start().await;
    emulator
        .create_events_table("test-project", "telemetry", "events")
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let before = chrono::Utc::now();
    // File and BigQuery together: the file sink's lines are exactly what was published.
    let mut gateway = Gateway::start(
        dir.path(),
        &[
            ("TELEMETRY_GATEWAY_EVENTS_SINKS", "file,bigquery"),
            (
                "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID",
                "test-project",
            ),
            ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID", "telemetry"),
            ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID", "events"),
            (
                "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_ENDPOINT",
                &emulator.v2_base_url(),
            ),
        ],
    );
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
    let published = file_sink_payloads(&dir.path().join("data/events"));
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
            normalized(&payload),
            normalized(&published[&event.id]),
            "the payload of {} is what was published",
            event.id
        );
    }
}

fn fake_env(fake: &FakeBigQuery) -> Vec<(&'static str, String)> {
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
    let dir = tempfile::tempdir().expect("temp dir");
    let env = fake_env(&fake);
    let mut gateway = Gateway::start(dir.path(), &as_refs(&env));
    let addr = gateway.address();
    let destination = gateway.wait_for(
        "events go to all of: NDJSON files under ./data/events (rotated at 128 MiB); BigQuery table proj.telemetry.events",
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

    let on_disk = file_sink_payloads(&dir.path().join("data/events"));
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

#[tokio::test]
async fn healthz_reports_a_missing_bigquery_table() {
    let fake = FakeBigQuery::start().await;
    fake.set_table_missing(true);
    let dir = tempfile::tempdir().expect("temp dir");
    let env = fake_env(&fake);
    let mut gateway = Gateway::start(dir.path(), &as_refs(&env));
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
    let fake = FakeBigQuery::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let endpoint = fake.v2_base_url();
    let mut gateway = Gateway::start(
        dir.path(),
        &[
            ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID", "proj"),
            ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID", "telemetry"),
            ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID", "events"),
            ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_ENDPOINT", &endpoint),
        ],
    );
    let line = gateway.wait_for("events go to BigQuery table proj.telemetry.events");
    assert_eq!(line["sink"], "bigquery");
    assert!(!dir.path().join("data").exists(), "no file sink");
}

/// Runs the binary to completion; one still running after 20 s is killed and fails the test.
fn run(env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(BIN);
    command
        .current_dir(dir.path())
        .env_clear()
        .env("PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("the binary runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("telemetry-gateway with {env:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
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
    ];
    for (env, expected) in cases {
        let output = run(env);
        assert!(!output.status.success(), "{env:?} must not start");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expected),
            "{env:?}: stderr lacks {expected:?}:\n{stderr}"
        );
    }
}
