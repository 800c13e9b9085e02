//! `telemetry-gateway send` end to end: the real binary sends the sample file to the real binary
//! serving with the file sink.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_telemetry-gateway");

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

/// A serving gateway process with the file sink in a temp dir; killed when dropped.
struct ServingGateway {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl ServingGateway {
    fn start() -> ServingGateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(BIN)
            .current_dir(dir.path())
            .env_clear()
            .env("PORT", "0")
            .env("SRC_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the gateway starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel::<serde_json::Value>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(json) = serde_json::from_str(&line)
                    && sender.send(json).is_err()
                {
                    break;
                }
            }
        });
        let port = loop {
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .expect("the gateway logs that it listens");
            if line["message"] == "telemetry gateway listening" {
                let listening: SocketAddr = line["address"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .expect("an address field");
                break listening.port();
            }
        };
        // Keep draining the log so the gateway never blocks on a full pipe.
        std::thread::spawn(move || while lines.recv().is_ok() {});
        ServingGateway {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The events in the file sink's NDJSON files.
    fn stored_events(&self) -> Vec<serde_json::Value> {
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("data/events")) else {
            return Vec::new();
        };
        entries
            .map(|entry| entry.expect("entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson"))
            .flat_map(|path| {
                std::fs::read_to_string(path)
                    .expect("readable")
                    .lines()
                    .map(|line| serde_json::from_str(line).expect("JSON line"))
                    .collect::<Vec<serde_json::Value>>()
            })
            .collect()
    }
}

impl Drop for ServingGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let gateway = ServingGateway::start();
    let sample = sample_file();
    let output = send(
        &[
            "--endpoint",
            &gateway.endpoint(),
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
            gateway.endpoint()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("recorded: 12\nnot recorded: 0\n"),
        "{stdout}"
    );

    let stored = gateway.stored_events();
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
    let gateway = ServingGateway::start();
    let input = concat!(
        r#"{"id":"stdin-1","feature":"cody.chat","action":"submitted"}"#,
        "\n",
        r#"{"id":"stdin-2","feature":"search","action":"executed"}"#,
        "\n"
    );
    let output = send(
        &[
            "--endpoint",
            &gateway.endpoint(),
            "--plaintext",
            "--instance-id",
            "i",
            "-",
        ],
        input,
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("recorded: 2\n"));
    assert_eq!(gateway.stored_events().len(), 2);
}

#[test]
fn a_managed_service_without_sams_gets_nothing_recorded_and_exit_1() {
    let gateway = ServingGateway::start();
    let sample = sample_file();
    let output = send(
        &[
            "--endpoint",
            &gateway.endpoint(),
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
    assert!(gateway.stored_events().is_empty());
}

#[test]
fn the_unary_mode_lists_each_refused_event_with_its_error() {
    let gateway = ServingGateway::start();
    let output = send(
        &[
            "--endpoint",
            &gateway.endpoint(),
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
        stderr.contains(r#"insecure target Telemetry Gateway "http://127.0.0.1:10085""#),
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
