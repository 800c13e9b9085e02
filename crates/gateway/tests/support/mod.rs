//! The real `telemetry-gateway` binary as a child process, for end-to-end tests.
#![allow(dead_code)]

pub mod exposition;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_telemetry-gateway");

/// A gateway process in its own temporary working directory, started with an empty environment
/// plus `PORT=0`, JSON logs and the given variables; its log lines are collected. Killed when
/// dropped.
pub struct GatewayProcess {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
    dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts the binary; later entries of `env` win over the defaults.
    pub fn start(env: &[(&str, &str)]) -> GatewayProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(BIN);
        command
            .current_dir(dir.path())
            .env_clear()
            .env("PORT", "0")
            .env("SRC_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        // Reads the log for ever, so the gateway never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(json) = serde_json::from_str(&line)
                    && sender.send(flatten_log_line(json)).is_err()
                {
                    break;
                }
            }
        });
        GatewayProcess {
            child,
            lines,
            seen: Vec::new(),
            dir,
        }
    }

    /// Every log line so far; after the process has exited, every line it wrote.
    pub fn lines(&mut self) -> Vec<Value> {
        let exited = matches!(self.child.try_wait(), Ok(Some(_)));
        loop {
            let next = if exited {
                // The reader thread ends with the pipe: wait for the rest.
                self.lines.recv_timeout(Duration::from_secs(10)).ok()
            } else {
                self.lines.try_recv().ok()
            };
            match next {
                Some(line) => self.seen.push(line),
                None => return self.seen.clone(),
            }
        }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's working directory (the file sink writes under `data/events` there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits (up to 30 s) for the log line with `message` and returns it.
    pub fn wait_for(&mut self, message: &str) -> Value {
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

    /// The loopback address the gateway listens on, from its start-up log line.
    pub fn address(&mut self) -> SocketAddr {
        let line = self.wait_for("telemetry gateway listening");
        let listening: SocketAddr = line["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("an address field");
        SocketAddr::from(([127, 0, 0, 1], listening.port()))
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.send_sigterm();
        self.child.wait().expect("the gateway exits")
    }

    /// Sends SIGTERM without waiting.
    pub fn send_sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits up to `limit` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every line of the file sink's NDJSON files, parsed, files in name order.
    pub fn file_sink_lines(&self) -> Vec<Value> {
        ndjson_lines(&self.dir().join("data/events"))
    }
}

/// Every complete line of the `*.ndjson` files in `dir`, parsed, files in name order (none if
/// `dir` does not exist).
pub fn ndjson_lines(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|path| {
            std::fs::read(path)
                .expect("readable")
                .split_inclusive(|&byte| byte == b'\n')
                // A last line without its line break may still be being written: not yet a line.
                .filter(|line| line.ends_with(b"\n"))
                .map(|line| serde_json::from_slice(line).expect("each line is JSON"))
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// A log line in Sourcegraph's JSON (`SRC_LOG_FORMAT=json` or `json_gcp`) with, added for the
/// tests' convenience, `message` (the `Body`), `level` (the `SeverityText`), `target` (the
/// `InstrumentationScope`) and every `Attributes` field at the top level.
pub fn flatten_log_line(line: Value) -> Value {
    let Value::Object(mut object) = line else {
        return line;
    };
    if let Some(Value::Object(attributes)) = object.get("Attributes").cloned() {
        for (key, value) in attributes {
            object.entry(key).or_insert(value);
        }
    }
    for (flat, field) in [
        ("message", "Body"),
        ("level", "SeverityText"),
        ("target", "InstrumentationScope"),
    ] {
        if let Some(value) = object.get(field).cloned() {
            object.insert(flat.to_string(), value);
        }
    }
    Value::Object(object)
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion in a temporary directory with an empty environment plus `env`;
/// a process still running after 20 s (a gateway that started when it should have refused to) is
/// killed and fails the test.
pub fn run_to_completion(env: &[(&str, &str)], args: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(BIN);
    command
        .current_dir(dir.path())
        .env_clear()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("the binary runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("telemetry-gateway {args:?} with {env:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Waits (up to 10 s) until `fake` holds an insert: a payload is held by the slow sink.
pub async fn wait_until_held(fake: &telemetry_gateway_testkit::fake_bigquery::FakeBigQuery) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.max_in_flight() == 0 {
        assert!(
            Instant::now() < deadline,
            "the payload never reached the sink"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The settings that point the gateway at the fake SAMS at `url` with the fake's client
/// credentials, followed by `extra`.
pub fn with_sams<'a>(url: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    use telemetry_gateway_testkit::fake_sams::{CLIENT_ID, CLIENT_SECRET};
    let mut env = vec![
        ("TELEMETRY_GATEWAY_SAMS_SERVER_URL", url),
        ("TELEMETRY_GATEWAY_SAMS_CLIENT_ID", CLIENT_ID),
        ("TELEMETRY_GATEWAY_SAMS_CLIENT_SECRET", CLIENT_SECRET),
    ];
    env.extend_from_slice(extra);
    env
}

/// A stream sending in the background, for tests that hold its payload in a slow sink.
pub type HeldStream = tokio::task::JoinHandle<
    Result<Vec<telemetry_gateway_proto::v1::RecordEventsResponse>, tonic::Status>,
>;

/// Sends `events` on a new stream in the background and returns once the slow sink holds them.
pub async fn send_held_payload(
    addr: std::net::SocketAddr,
    fake: &telemetry_gateway_testkit::fake_bigquery::FakeBigQuery,
    events: Vec<telemetry_gateway_proto::v1::Event>,
) -> HeldStream {
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    let held = tokio::spawn(async move {
        telemetry_gateway_testkit::record_events(
            &mut client,
            vec![
                telemetry_gateway_testkit::client::metadata_message(
                    telemetry_gateway_testkit::events::unlicensed_metadata("held"),
                ),
                telemetry_gateway_testkit::client::events_message(events),
            ],
        )
        .await
    });
    wait_until_held(fake).await;
    held
}
