//! `telemetry-gateway send` end to end: the real binary sends the sample file to the real binary
//! serving with the file sink.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::{BIN, GatewayProcess};

fn sample_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/send/sample-events.ndjson")
}

/// The IDs the sample file sets (one of its twelve events has none).
fn sample_ids() -> Vec<String> {
    std::fs::read_to_string(sample_file())
        .expect("the sample file")
        .lines()
        .filter_map(|line| {
            let json: serde_json::Value = serde_json::from_str(line).expect("JSON");
            json["id"].as_str().map(str::to_string)
        })
        .collect()
}

/// A serving gateway (file sink in its temp dir) and its loopback endpoint.
fn serving_gateway() -> (GatewayProcess, String) {
    let mut gateway = GatewayProcess::start(&[]);
    let endpoint = format!("http://{}", gateway.address());
    (gateway, endpoint)
}

/// Runs `telemetry-gateway send` with `args`, an empty environment, and `stdin` piped in.
fn send(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("send")
        .args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("send starts");
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("send exits")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_sample_file_is_sent_recorded_and_stored() {
    let (gateway, endpoint) = serving_gateway();
    let sample = sample_file();
    let output = send(
        &[
            "--endpoint",
            &endpoint,
            "--plaintext",
            "--instance-id",
            "instance-send-e2e",
            "--external-url",
            "https://sourcegraph.example.com",
            "--request-id",
            "send-e2e",
            sample.to_str().expect("UTF-8 path"),
        ],
        "",
    );
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert!(
        stdout.starts_with(&format!(
            "sent 12 event(s) to {} in 1 payload(s), request ID send-e2e\n",
            endpoint
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("recorded: 12\nnot recorded: 0\n"),
        "{stdout}"
    );

    let stored = gateway.file_sink_lines();
    assert_eq!(stored.len(), 12);
    let stored_ids: Vec<&str> = stored
        .iter()
        .map(|line| line["event"]["id"].as_str().expect("an ID"))
        .collect();
    for id in sample_ids() {
        assert!(stored_ids.contains(&id.as_str()), "{id} is stored");
    }
    // The event without an ID got a UUID v7.
    let generated = stored_ids
        .iter()
        .find(|id| !sample_ids().contains(&id.to_string()))
        .expect("one generated ID");
    let uuid = uuid::Uuid::parse_str(generated).expect("a UUID");
    assert_eq!(uuid.get_version_num(), 7);
    for line in &stored {
        assert_eq!(line["metadata"]["requestId"], "send-e2e");
        assert_eq!(
            line["metadata"]["identifier"]["unlicensedInstance"]["instanceId"],
            "instance-send-e2e"
        );
    }
    // Legacy integer metadata arrives migrated, as from any old exporter.
    let notebooks = stored
        .iter()
        .find(|line| line["event"]["feature"] == "notebooks")
        .expect("the notebooks event");
    assert_eq!(
        notebooks["event"]["parameters"]["metadata"]["blockCount"],
        4.0
    );
}

#[test]
fn events_from_stdin_are_sent() {
    let (gateway, endpoint) = serving_gateway();
    let input = concat!(
        r#"{"id":"stdin-1","feature":"cody.chat","action":"submitted"}"#,
        "\n",
        r#"{"id":"stdin-2","feature":"search","action":"executed"}"#,
        "\n"
    );
    let output = send(
        &[
            "--endpoint",
            &endpoint,
            "--plaintext",
            "--instance-id",
            "i",
            "-",
        ],
        input,
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("recorded: 2\n"));
    assert_eq!(gateway.file_sink_lines().len(), 2);
}

#[test]
fn a_managed_service_without_sams_gets_nothing_recorded_and_exit_1() {
    let (gateway, endpoint) = serving_gateway();
    let sample = sample_file();
    let output = send(
        &[
            "--endpoint",
            &endpoint,
            "--plaintext",
            "--service-id",
            "my-service",
            "--token",
            "sams_at_test",
            sample.to_str().expect("UTF-8 path"),
        ],
        "",
    );
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("recorded: 0\nnot recorded: 12\n"),
        "{stdout}"
    );
    for id in sample_ids() {
        assert!(
            stdout.contains(&format!("  {id}\n")),
            "{id} is listed: {stdout}"
        );
    }
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    assert!(gateway.file_sink_lines().is_empty());
}

#[test]
fn the_unary_mode_lists_each_refused_event_with_its_error() {
    let (_gateway, endpoint) = serving_gateway(); // kept alive until the end
    let output = send(
        &[
            "--endpoint",
            &endpoint,
            "--plaintext",
            "--service-id",
            "my-service",
            "--token",
            "sams_at_test",
            "--unary",
            "-",
        ],
        "{\"id\":\"unary-1\",\"feature\":\"my-service.job\",\"action\":\"finished\"}\n",
    );
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("in 1 RecordEvent call(s)"), "{stdout}");
    assert!(stdout.contains("  unary-1: Unauthenticated: "), "{stdout}");
}

#[test]
fn a_bad_line_stops_the_command_before_sending() {
    let input = "{\"id\":\"ok\",\"feature\":\"cody\",\"action\":\"chat\"}\n{\"id\": \"bad\", \"feture\": \"x\"}\n";
    // Nothing listens at the endpoint: the command must fail on the input first.
    let output = send(
        &[
            "--endpoint",
            "http://127.0.0.1:9",
            "--plaintext",
            "--instance-id",
            "i",
            "-",
        ],
        input,
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("stdin, line 2: invalid event JSON"),
        "{stderr}"
    );
    assert!(stderr.contains("feture"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn a_plaintext_endpoint_needs_the_plaintext_flag() {
    let output = send(
        &[
            "--endpoint",
            "http://127.0.0.1:10085",
            "--instance-id",
            "i",
            "-",
        ],
        "{\"feature\":\"cody\",\"action\":\"chat\"}\n",
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            r#"insecure target Telemetry Gateway "http://127.0.0.1:10085": add --plaintext"#
        ),
        "{stderr}"
    );
}

#[test]
fn a_sender_is_required() {
    let output = send(
        &["--endpoint", "https://gateway.example.com", "-"],
        "{\"feature\":\"cody\",\"action\":\"chat\"}\n",
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("say who is sending"), "{stderr}");
}

#[test]
fn when_no_gateway_answers_the_report_says_the_connection_failed() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let output = send(
        &[
            "--endpoint",
            &endpoint,
            "--plaintext",
            "--instance-id",
            "i",
            "--timeout",
            "5",
            "-",
        ],
        "{\"feature\":\"cody\",\"action\":\"chat\"}\n",
    );
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "could not send 1 event(s) to {endpoint}: the connection failed"
        )),
        "{stdout}"
    );
    // stderr is not a terminal here: no progress display.
    assert!(!text(&output.stderr).contains('\r'));
}
