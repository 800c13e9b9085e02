//! `telemetry-gateway replay` end to end: file-sink output (and dead letters) written by the real
//! gateway, replayed by the real binary into bqemulator's table and the Pub/Sub emulator, stopped
//! part way and resumed, run again harmlessly, and failing (exit 1) while the topic is missing.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use telemetry_gateway_testkit::bigquery_emulator::BigQueryEmulator;
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{simple_event, simple_events, unlicensed_metadata};
use telemetry_gateway_testkit::fake_bigquery::{FakeBigQuery, InsertReply};
use telemetry_gateway_testkit::pubsub_emulator::{PROJECT, PubSubEmulator, TestTopic};

use support::{BIN, GatewayProcess};

/// Runs `telemetry-gateway replay` with an empty environment plus `env`.
fn replay(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .arg("replay")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("replay runs")
}

fn summary(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Replays with `--max-lines` `first.0` (expecting the totals `first.1` and a stop), then again
/// without a limit (expecting the totals `second`); returns the second run.
fn replay_in_two_runs(
    env: &[(&str, &str)],
    args: &[&str],
    first: (&str, &str),
    second: &str,
) -> Output {
    let mut limited = args.to_vec();
    limited.extend(["--max-lines", first.0]);
    let stopped = replay(env, &limited);
    assert!(stopped.status.success(), "{stopped:?}");
    assert_eq!(
        summary(&stopped),
        format!(
            "{}\nstopped after --max-lines {}: run again to resume",
            first.1, first.0
        )
    );
    let resumed = replay(env, args);
    assert!(resumed.status.success(), "{resumed:?}");
    assert_eq!(summary(&resumed), second);
    resumed
}

/// Every file of `dir` with its contents, to show that replay leaves input alone.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("readable")
        .map(|entry| {
            let path = entry.expect("entry").path();
            (
                path.to_string_lossy().into_owned(),
                std::fs::read(&path).expect("readable"),
            )
        })
        .collect()
}

/// Runs a gateway with the file sink, sends `n` events in payloads of 10, stops it and returns it
/// (its working directory holds `data/events`).
async fn file_sink_output(n: usize) -> GatewayProcess {
    let mut gateway = GatewayProcess::start(&[]);
    let addr = gateway.address();
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    let events = simple_events("replayed", n);
    let mut messages = vec![metadata_message(unlicensed_metadata("instance-replay"))];
    messages.extend(
        events
            .chunks(10)
            .map(|chunk| events_message(chunk.to_vec())),
    );
    telemetry_gateway_testkit::record_events(&mut client, messages)
        .await
        .expect("the stream succeeds");
    assert!(gateway.terminate().success());
    assert_eq!(gateway.file_sink_lines().len(), n);
    gateway
}

/// Dead letters of one event BigQuery rejected (valid: replayed) and one invalid event (still
/// refused: skipped), written by a gateway into `dir`.
async fn dead_letters(dir: &Path) {
    let fake = FakeBigQuery::start().await;
    let url = fake.v2_base_url();
    let dir_text = dir.to_str().expect("UTF-8");
    let mut gateway = GatewayProcess::start(&[
        ("TELEMETRY_GATEWAY_EVENTS_SINKS", "bigquery"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID", "p"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID", "d"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID", "t"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_ENDPOINT", &url),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_WRITE_API", "insert_all"),
        ("TELEMETRY_GATEWAY_EVENTS_DEADLETTER_DIR", dir_text),
    ]);
    let addr = gateway.address();
    fake.push_replies([InsertReply::row_errors(&[0], "invalid")]);
    let mut invalid = simple_event("dead-invalid");
    invalid.feature = String::new();
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    telemetry_gateway_testkit::record_events(
        &mut client,
        vec![
            metadata_message(unlicensed_metadata("instance-replay")),
            events_message(vec![simple_event("dead-rejected"), invalid]),
        ],
    )
    .await
    .expect("the stream succeeds");
    // A clean stop writes every queued dead letter.
    assert!(gateway.terminate().success());
    let lines: usize = std::fs::read_dir(dir)
        .expect("the dead-letter directory")
        .map(|entry| {
            std::fs::read_to_string(entry.expect("entry").path())
                .expect("readable")
                .lines()
                .count()
        })
        .sum();
    assert_eq!(lines, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_output_and_valid_dead_letters_replay_into_the_bigquery_table_once_and_resume() {
    let emulator = BigQueryEmulator::start().await;
    emulator
        .create_events_table("test-project", "telemetry", "events")
        .await;
    let source = file_sink_output(60).await;
    let events_dir = source.dir().join("data/events");
    let dead_dir = tempfile::tempdir().expect("temp dir");
    dead_letters(dead_dir.path()).await;
    let checkpoints = tempfile::tempdir().expect("temp dir");
    let before = (snapshot(&events_dir), snapshot(dead_dir.path()));

    let endpoint = emulator.v2_base_url();
    let env = [
        ("TELEMETRY_GATEWAY_EVENTS_SINKS", "bigquery"),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID",
            "test-project",
        ),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID", "telemetry"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID", "events"),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_ENDPOINT",
            endpoint.as_str(),
        ),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_WRITE_API", "insert_all"),
    ];
    let events_arg = events_dir.to_str().expect("UTF-8");
    let dead_arg = dead_dir.path().to_str().expect("UTF-8");
    let checkpoint_arg = checkpoints.path().to_str().expect("UTF-8");
    let args = [
        "--checkpoint-dir",
        checkpoint_arg,
        "--batch-lines",
        "10",
        events_arg,
        dead_arg,
    ];

    // Stopped after 25 lines (whole batches: 30), then resumed: the rest, and the dead letters
    // (one valid again, one still invalid).
    let second = replay_in_two_runs(
        &env,
        &args,
        ("25", "delivered 30, failed 0, skipped 0"),
        "delivered 31, failed 0, skipped 1",
    );
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("resuming at byte"), "{stderr}");
    assert!(stderr.contains("still refused"), "{stderr}");

    // Again: nothing left to do.
    let third = replay(&env, &args);
    assert!(third.status.success(), "{third:?}");
    assert_eq!(summary(&third), "delivered 0, failed 0, skipped 0");

    let rows = emulator
        .query(
            "test-project",
            "SELECT event_id, source, payload FROM `test-project.telemetry.events`",
        )
        .await;
    let ids: Vec<&str> = rows
        .iter()
        .map(|row| row["event_id"].as_str().expect("an ID"))
        .collect();
    let distinct: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), 61, "each event once: {ids:?}");
    assert_eq!(distinct.len(), 61);
    assert!(distinct.contains("dead-rejected"));
    assert!(!distinct.contains("dead-invalid"));
    let lines: BTreeMap<String, Value> = source
        .file_sink_lines()
        .into_iter()
        .map(|line| (line["event"]["id"].as_str().expect("id").to_string(), line))
        .collect();
    for row in &rows {
        assert_eq!(row["source"], "unlicensed_instance");
        let id = row["event_id"].as_str().expect("an ID");
        if let Some(line) = lines.get(id) {
            let payload: Value =
                serde_json::from_str(row["payload"].as_str().expect("JSON text")).expect("JSON");
            assert_eq!(
                telemetry_gateway_testkit::json::normalized_numbers(payload),
                telemetry_gateway_testkit::json::normalized_numbers(line.clone()),
                "the row's payload is the file's line"
            );
        }
    }
    assert_eq!(
        (snapshot(&events_dir), snapshot(dead_dir.path())),
        before,
        "input is never changed"
    );
}

fn pubsub_env<'a>(host: &'a str, topic: &'a TestTopic) -> Vec<(&'a str, &'a str)> {
    vec![
        ("PUBSUB_EMULATOR_HOST", host),
        ("TELEMETRY_GATEWAY_EVENTS_SINKS", "pubsub"),
        ("TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID", PROJECT),
        (
            "TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC_ID",
            topic.topic_id.as_str(),
        ),
        (
            "TELEMETRY_GATEWAY_EVENTS_PUBSUB_PUBLISH_TIMEOUT_SECONDS",
            "2",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_output_replays_to_pubsub_byte_for_byte_fails_while_the_topic_is_missing_and_resumes()
 {
    let emulator = PubSubEmulator::shared();
    let topic = TestTopic {
        topic_id: format!("replay-{}", std::process::id()),
        subscription_id: format!("replay-{}-sub", std::process::id()),
    };
    let source = file_sink_output(30).await;
    let events_dir = source.dir().join("data/events");
    let checkpoints = tempfile::tempdir().expect("temp dir");
    let host = emulator.host();
    let env = pubsub_env(&host, &topic);
    let args = [
        "--checkpoint-dir",
        checkpoints.path().to_str().expect("UTF-8"),
        "--batch-lines",
        "10",
        events_dir.to_str().expect("UTF-8"),
    ];

    // The topic does not exist yet: everything fails, exit 1, nothing is checkpointed.
    let missing = replay(&env, &args);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert_eq!(summary(&missing), "delivered 0, failed 30, skipped 0");

    emulator.create_topic(&topic).await;
    emulator.create_subscription(&topic).await;
    replay_in_two_runs(
        &env,
        &args,
        ("10", "delivered 10, failed 0, skipped 0"),
        "delivered 20, failed 0, skipped 0",
    );

    let pulled = emulator.pull_all(&topic).await;
    let lines: BTreeSet<Vec<u8>> = std::fs::read_dir(&events_dir)
        .expect("readable")
        .flat_map(|entry| {
            std::fs::read(entry.expect("entry").path())
                .expect("readable")
                .split(|b| *b == b'\n')
                .filter(|line| !line.is_empty())
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    let data: BTreeSet<Vec<u8>> = pulled.iter().map(|m| m.data.clone()).collect();
    assert_eq!(pulled.len(), 30, "each event once");
    assert_eq!(data, lines, "messages are the file's lines, byte for byte");
    for message in &pulled {
        assert_eq!(
            message.attributes["publisher.source"],
            "unlicensed_instance"
        );
        assert_eq!(message.attributes["event.feature"], "cody.chat");
        assert_eq!(message.attributes["event.action"], "submitted");
        assert_eq!(message.attributes["event.hasPrivateMetadata"], "false");
    }
}

#[test]
fn replay_refuses_to_run_without_a_cloud_sink() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = replay(&[], &[dir.path().to_str().expect("UTF-8")]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("replay delivers to Pub/Sub and/or BigQuery"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_mid_file_resumes_from_its_checkpoint_and_loses_nothing() {
    use std::io::{BufRead, BufReader};

    let emulator = PubSubEmulator::shared();
    let topic = emulator.create_test_topic("replay-kill").await;
    let source = file_sink_output(200).await;
    let events_dir = source.dir().join("data/events");
    let checkpoints = tempfile::tempdir().expect("temp dir");
    let host = emulator.host();
    let env = pubsub_env(&host, &topic);
    let args = [
        "--checkpoint-dir",
        checkpoints.path().to_str().expect("UTF-8"),
        "--batch-lines",
        "1",
        events_dir.to_str().expect("UTF-8"),
    ];

    let mut command = Command::new(BIN);
    command
        .env_clear()
        .arg("replay")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in &env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("replay starts");
    let stderr = BufReader::new(child.stderr.take().expect("piped"));
    for line in stderr.lines() {
        let line = line.expect("stderr");
        if line.contains("delivered 5,") {
            break;
        }
    }
    // SIGKILL: no chance to finish the batch in hand or write anything more.
    child.kill().expect("killed");
    child.wait().expect("exited");

    let resumed = replay(&env, &args);
    assert!(resumed.status.success(), "{resumed:?}");
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(stderr.contains("resuming at byte"), "{stderr}");
    let delivered: u64 = summary(&resumed)
        .strip_prefix("delivered ")
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("a summary");
    // Each one-line batch waits at least the Pub/Sub client's 10 ms batching delay, so the kill
    // lands well before the 200th.
    assert!(
        (1..=195).contains(&delivered),
        "the rerun resumed what the killed run left: {delivered}"
    );

    let pulled = emulator.pull_all(&topic).await;
    let ids: BTreeSet<String> = pulled
        .iter()
        .map(|m| {
            let json: Value = serde_json::from_slice(&m.data).expect("JSON");
            json["event"]["id"].as_str().expect("an ID").to_string()
        })
        .collect();
    assert_eq!(ids.len(), 200, "nothing is lost");
    assert!(
        pulled.len() <= 201,
        "at most the batch in hand at the kill is delivered twice: {}",
        pulled.len()
    );
}
