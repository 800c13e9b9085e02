//! Google's Pub/Sub emulator, started by the tests themselves on 127.0.0.1 and a free port.
//!
//! The emulator (a JVM) runs in its own session under a small `sh` watchdog that polls the test
//! process and kills the emulator's whole process group once the test process is gone, so an
//! aborted or panicking test run leaves nothing behind; [`PubSubEmulator`] also kills it when
//! dropped. Its output goes to a log file (never to the test's stdout, which CI waits on).
//!
//! Topics and subscriptions are managed through the emulator's REST API (it serves REST and
//! gRPC on one port). Missing prerequisites fail the test with what to install.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

/// Where the Debian package `google-cloud-cli-pubsub-emulator` installs the emulator.
pub const DEFAULT_EMULATOR_BIN: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";

/// The project every test topic lives in (the emulator accepts any).
pub const PROJECT: &str = "telemetry-gateway-test";

const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Watches the test process (`$4`) and the emulator; when either is gone, kills the whole
/// process group (the emulator, its JVM, and this shell).
const WATCHDOG: &str = r#"
"$1" --host=127.0.0.1 --port="$2" >>"$3" 2>&1 </dev/null &
emulator=$!
while kill -0 "$4" 2>/dev/null && kill -0 "$emulator" 2>/dev/null; do sleep 1; done
kill -KILL 0
"#;

/// A running emulator; killed when dropped.
#[derive(Debug)]
pub struct PubSubEmulator {
    port: u16,
    log: PathBuf,
    watchdog: Option<Child>,
}

/// One message pulled back from a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledMessage {
    /// The message data, decoded.
    pub data: Vec<u8>,
    /// The message attributes.
    pub attributes: BTreeMap<String, String>,
    /// The ID the emulator assigned.
    pub message_id: String,
}

/// A topic with one subscription attached, created for one test.
#[derive(Clone, Debug)]
pub struct TestTopic {
    /// The topic ID (without `projects/...`).
    pub topic_id: String,
    /// The subscription ID (without `projects/...`).
    pub subscription_id: String,
}

impl TestTopic {
    /// `projects/<p>/topics/<t>`.
    pub fn topic_name(&self) -> String {
        format!("projects/{PROJECT}/topics/{}", self.topic_id)
    }

    /// `projects/<p>/subscriptions/<s>`.
    pub fn subscription_name(&self) -> String {
        format!("projects/{PROJECT}/subscriptions/{}", self.subscription_id)
    }
}

impl PubSubEmulator {
    /// One emulator shared by every test of this test binary (a JVM start takes seconds).
    /// It stops when the test process exits.
    pub fn shared() -> &'static PubSubEmulator {
        static SHARED: OnceLock<PubSubEmulator> = OnceLock::new();
        SHARED.get_or_init(PubSubEmulator::start)
    }

    /// Starts an emulator of its own on a free port and waits until it answers.
    ///
    /// Panics, saying what to install, if the emulator or Java is missing.
    pub fn start() -> PubSubEmulator {
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("pubsub-emulator-{}-{port}.log", std::process::id()));
        let mut emulator = PubSubEmulator {
            port,
            log,
            watchdog: None,
        };
        emulator.launch();
        emulator
    }

    /// `host:port`, the value for `PUBSUB_EMULATOR_HOST`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// The emulator's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Kills the emulator (all its state is lost) and waits until its port is closed.
    pub fn stop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            kill_group(&watchdog);
            let _ = watchdog.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.answers() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a fresh emulator on the same port (after [`PubSubEmulator::stop`]); topics and
    /// subscriptions must be created again.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    fn launch(&mut self) {
        let bin = std::env::var_os("PUBSUB_EMULATOR_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_EMULATOR_BIN));
        check_prerequisites(&bin);
        let watchdog = Command::new("setsid")
            .arg("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("pubsub-emulator-watchdog")
            .arg(&bin)
            .arg(self.port.to_string())
            .arg(&self.log)
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start the Pub/Sub emulator via setsid sh: {err}"));
        self.watchdog = Some(watchdog);
        self.wait_until_ready();
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.answers() {
                return;
            }
            let exited = self
                .watchdog
                .as_mut()
                .and_then(|watchdog| watchdog.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "the Pub/Sub emulator exited ({status}) before answering; its log ({}):\n{}",
                    self.log.display(),
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "the Pub/Sub emulator did not answer on port {} within {START_TIMEOUT:?}; \
                     its log ({}):\n{}",
                    self.port,
                    self.log.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the emulator answers `GET /` with 200.
    fn answers(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
    }

    /// The last lines of the emulator's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Creates a topic with a unique ID (starting with `prefix`) and a subscription to it.
    pub async fn create_test_topic(&self, prefix: &str) -> TestTopic {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let topic = TestTopic {
            topic_id: format!("{prefix}-{}-{n}", std::process::id()),
            subscription_id: format!("{prefix}-{}-{n}-sub", std::process::id()),
        };
        self.create_topic(&topic).await;
        self.create_subscription(&topic).await;
        topic
    }

    /// Creates `topic`'s topic.
    pub async fn create_topic(&self, topic: &TestTopic) {
        self.call(reqwest::Method::PUT, &topic.topic_name(), None)
            .await;
    }

    /// Deletes `topic`'s topic (its subscription stays, detached from it).
    pub async fn delete_topic(&self, topic: &TestTopic) {
        self.call(reqwest::Method::DELETE, &topic.topic_name(), None)
            .await;
    }

    /// Creates `topic`'s subscription, replacing one of the same name.
    pub async fn create_subscription(&self, topic: &TestTopic) {
        let name = topic.subscription_name();
        let _ = self.try_call(reqwest::Method::DELETE, &name, None).await;
        self.call(
            reqwest::Method::PUT,
            &name,
            Some(json!({ "topic": topic.topic_name(), "ackDeadlineSeconds": 60 })),
        )
        .await;
    }

    /// Pulls and acknowledges everything `topic`'s subscription holds, until it stays empty.
    pub async fn pull_all(&self, topic: &TestTopic) -> Vec<PulledMessage> {
        let name = topic.subscription_name();
        let mut messages = Vec::new();
        let mut empty_pulls = 0;
        while empty_pulls < 3 {
            let response = self
                .call(
                    reqwest::Method::POST,
                    &format!("{name}:pull"),
                    Some(json!({ "maxMessages": 1000, "returnImmediately": true })),
                )
                .await;
            let received = response["receivedMessages"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if received.is_empty() {
                empty_pulls += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            empty_pulls = 0;
            let mut ack_ids = Vec::new();
            for item in received {
                ack_ids.push(item["ackId"].clone());
                messages.push(pulled_message(&item["message"]));
            }
            self.call(
                reqwest::Method::POST,
                &format!("{name}:acknowledge"),
                Some(json!({ "ackIds": ack_ids })),
            )
            .await;
        }
        messages
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        match self.try_call(method.clone(), path, body).await {
            Ok(value) => value,
            Err(err) => panic!("emulator REST {method} /v1/{path}: {err}"),
        }
    }

    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        // A client per call: tests sharing the emulator run on different Tokio runtimes.
        let client = reqwest::Client::new();
        let mut request = client
            .request(method, format!("{}/v1/{path}", self.url()))
            .timeout(Duration::from_secs(30));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|err| err.to_string())?;
        let status = response.status();
        let text = response.text().await.map_err(|err| err.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

impl Drop for PubSubEmulator {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            kill_group(&watchdog);
            let _ = watchdog.wait();
        }
    }
}

fn pulled_message(message: &Value) -> PulledMessage {
    let data = message["data"]
        .as_str()
        .map(|data| BASE64.decode(data).expect("the emulator sends base64 data"))
        .unwrap_or_default();
    let attributes = message["attributes"]
        .as_object()
        .map(|attributes| {
            attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    PulledMessage {
        data,
        attributes,
        message_id: message["messageId"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }
}

/// Kills the watchdog's process group (`setsid` made the watchdog its leader).
fn kill_group(watchdog: &Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", watchdog.id())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port on 127.0.0.1")
}

fn check_prerequisites(bin: &Path) {
    const INSTALL: &str = "install the Debian package `google-cloud-cli-pubsub-emulator` (from \
        Google's Cloud SDK apt repository, https://packages.cloud.google.com/apt) and a Java \
        runtime (`openjdk-17-jre-headless`), or point PUBSUB_EMULATOR_BIN at the emulator's \
        `bin/cloud-pubsub-emulator` script";
    if !bin.is_file() {
        panic!(
            "the Pub/Sub emulator is not installed ({} is missing): {INSTALL}",
            bin.display()
        );
    }
    let java = Command::new("java")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !java.is_ok_and(|status| status.success()) {
        panic!("the Pub/Sub emulator needs Java, and `java -version` fails: {INSTALL}");
    }
    for tool in ["setsid", "sh", "kill"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !found {
            panic!("starting the Pub/Sub emulator needs `{tool}` (util-linux / procps)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "install the Debian package `google-cloud-cli-pubsub-emulator`")]
    fn a_missing_emulator_fails_with_what_to_install() {
        check_prerequisites(Path::new("/nonexistent/cloud-pubsub-emulator"));
    }
}
