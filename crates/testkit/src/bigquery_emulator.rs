//! `bqemulator` (PyPI; DuckDB behind BigQuery's REST API) as a child process of a test.
//!
//! The first use installs it into a virtualenv under `<target>/test-tools/bqemulator/`, guarded
//! by a lock file against concurrent installs, with a private `HOME` there holding the DuckDB
//! `spatial` extension it refuses to start without; later runs reuse the cache. Each
//! [`BigQueryEmulator`] runs on 127.0.0.1 with ports the emulator picks (REST, and gRPC for the
//! Storage Write API), logs to a file in the
//! cache (never to the test's output), and is stopped when dropped; a small `sh` watchdog also
//! stops it when the test process dies without dropping it.
//!
//! When Python ≥ 3.11, `venv`/`pip` or PyPI is not available, starting fails with a message
//! saying what to install: the tests never skip silently.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gcp_bigquery_client::Client;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::client_builder::ClientBuilder;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::dataset::Dataset;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::table::Table;
use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use gcp_bigquery_client::model::table_schema::TableSchema;
use serde_json::Value;

use crate::pypi::{self, PypiTool};

/// What gets installed, exactly (the cache is rebuilt when this changes).
pub const REQUIREMENTS: &[&str] = &[
    "bqemulator==1.4.0",
    "duckdb==1.5.2",
    "duckdb-extension-spatial==1.5.2",
    "numpy==2.4.6",
];

/// The DuckDB version whose extension directory the spatial extension goes into.
const DUCKDB_EXTENSION_VERSION: &str = "v1.5.2";

/// How long the emulator may take to listen once started.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The table schema the gateway ships, relative to the workspace.
const SCHEMA_PATH: &str = "deploy/bigquery/events.schema.json";

const HOW_TO_FIX: &str = "The BigQuery emulator tests install bqemulator 1.4.0 from PyPI into \
    target/test-tools/bqemulator and need: Python >= 3.11 as `python3` (or the interpreter named \
    by TELEMETRY_GATEWAY_TEST_PYTHON) with the venv and pip modules (Debian/Ubuntu: `apt-get \
    install python3 python3-venv python3-pip`), and access to PyPI (or a mirror set with \
    PIP_INDEX_URL).";

/// A running bqemulator; stopped when dropped.
pub struct BigQueryEmulator {
    child: Child,
    watchdog: Option<Child>,
    rest: SocketAddr,
    grpc: SocketAddr,
    log_path: PathBuf,
}

impl BigQueryEmulator {
    /// Installs bqemulator if the cache does not hold it yet, starts it and waits until it
    /// listens.
    ///
    /// # Panics
    /// When it cannot be installed or started, with a message saying what to install or where
    /// the log is.
    pub async fn start() -> BigQueryEmulator {
        match tokio::task::spawn_blocking(start_blocking).await {
            Ok(emulator) => emulator,
            Err(err) => std::panic::resume_unwind(err.into_panic()),
        }
    }

    /// The REST v2 base URL, for the sink's endpoint setting.
    pub fn v2_base_url(&self) -> String {
        format!("http://{}/bigquery/v2", self.rest)
    }

    /// The Storage Write API (gRPC, plaintext) URL, for the sink's storage endpoint setting.
    pub fn storage_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The emulator's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A BigQuery client for this emulator (fake access token).
    pub async fn client(&self) -> Client {
        ClientBuilder::new()
            .with_v2_base_url(self.v2_base_url())
            .build_from_authenticator(Arc::new(FakeToken))
            .await
            .expect("a BigQuery client for the emulator")
    }

    /// Creates `dataset` and in it `table` with the schema of `deploy/bigquery/events.schema.json`.
    pub async fn create_events_table(&self, project: &str, dataset: &str, table: &str) {
        self.create_table_with(project, dataset, table, events_schema())
            .await;
    }

    /// Like [`BigQueryEmulator::create_events_table`], but with `column` as an INTEGER: a table
    /// that drifted from the gateway's schema. (bqemulator ignores unknown and missing columns,
    /// which BigQuery refuses as `no such field`, but refuses values of the wrong type.)
    pub async fn create_events_table_with_integer_column(
        &self,
        project: &str,
        dataset: &str,
        table: &str,
        column: &str,
    ) {
        let fields = events_schema()
            .into_iter()
            .map(|field| {
                if field.name == column {
                    TableFieldSchema::integer(column)
                } else {
                    field
                }
            })
            .collect();
        self.create_table_with(project, dataset, table, fields)
            .await;
    }

    async fn create_table_with(
        &self,
        project: &str,
        dataset: &str,
        table: &str,
        fields: Vec<TableFieldSchema>,
    ) {
        let client = self.client().await;
        client
            .dataset()
            .create(Dataset::new(project, dataset))
            .await
            .unwrap_or_else(|err| panic!("create dataset {project}.{dataset}: {err}"));
        client
            .table()
            .create(Table::new(
                project,
                dataset,
                table,
                TableSchema::new(fields),
            ))
            .await
            .unwrap_or_else(|err| panic!("create table {project}.{dataset}.{table}: {err}"));
    }

    /// Runs a standard-SQL query and returns its rows as JSON objects keyed by column name (cell
    /// values as the REST API gives them: strings, or `null`).
    pub async fn query(&self, project: &str, sql: &str) -> Vec<serde_json::Map<String, Value>> {
        let response = self
            .client()
            .await
            .job()
            .query(project, QueryRequest::new(sql))
            .await
            .unwrap_or_else(|err| panic!("query {sql:?}: {err}\nemulator log:\n{}", self.log()));
        let names: Vec<String> = response
            .schema
            .and_then(|schema| schema.fields().clone())
            .unwrap_or_default()
            .into_iter()
            .map(|field| field.name)
            .collect();
        response
            .rows
            .unwrap_or_default()
            .into_iter()
            .map(|row| {
                names
                    .iter()
                    .cloned()
                    .zip(
                        row.columns
                            .unwrap_or_default()
                            .into_iter()
                            .map(|cell| cell.value.unwrap_or(Value::Null)),
                    )
                    .collect()
            })
            .collect()
    }
}

impl Drop for BigQueryEmulator {
    fn drop(&mut self) {
        // The watchdog first, so that it can never signal a reused PID later.
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = fs::remove_file(&self.log_path);
        }
    }
}

/// The fields of `deploy/bigquery/events.schema.json`.
pub fn events_schema() -> Vec<TableFieldSchema> {
    let path = pypi::workspace_dir().join(SCHEMA_PATH);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("parse {}: {err}", path.display()))
}

#[derive(Clone)]
struct FakeToken;

#[async_trait]
impl Authenticator for FakeToken {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok("test-access-token".to_string())
    }
}

/// `<target>/test-tools/bqemulator`, honouring `CARGO_TARGET_DIR`.
fn cache_dir() -> PathBuf {
    crate::pypi::test_tools_dir().join(TOOL.name)
}

/// Stops the emulator (`$2`) once the test process (`$1`) is gone; a zombie counts as gone.
const WATCHDOG_SCRIPT: &str = r#"
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [ -r "/proc/$1/stat" ] || return 0
  state=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  case "${state##*) }" in Z*|X*) return 1 ;; esac
}
while alive "$1"; do sleep 1; done
kill "$2" 2>/dev/null
sleep 5
kill -9 "$2" 2>/dev/null
"#;

fn start_blocking() -> BigQueryEmulator {
    let cache = cache_dir();
    let install = ensure_installed(&cache);
    let logs = cache.join("logs");
    fs::create_dir_all(&logs).unwrap_or_else(|err| panic!("create {}: {err}", logs.display()));
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let log_path = logs.join(format!("emulator-{}-{stamp}.log", std::process::id()));
    let log = File::create(&log_path)
        .unwrap_or_else(|err| panic!("create {}: {err}", log_path.display()));
    let log_err = log.try_clone().expect("clone the log file handle");
    let child = Command::new(install.venv.join("bin").join("bqemulator"))
        .args([
            "start",
            "--rest-host",
            "127.0.0.1",
            "--rest-port",
            "0",
            "--grpc-host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--ephemeral",
            "--log-format",
            "json",
            "--log-level",
            "info",
        ])
        .env("HOME", &install.home)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|err| panic!("start bqemulator from {}: {err}", install.venv.display()));
    let watchdog = Command::new("sh")
        .args([
            "-c",
            WATCHDOG_SCRIPT,
            "bqemulator-watchdog",
            &std::process::id().to_string(),
            &child.id().to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok();
    let mut emulator = BigQueryEmulator {
        rest: SocketAddr::from(([127, 0, 0, 1], 0)),
        grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
        child,
        watchdog,
        log_path,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = emulator.child.try_wait() {
            panic!(
                "bqemulator exited with {status} before listening; log {}:\n{}",
                emulator.log_path.display(),
                emulator.log()
            );
        }
        let log = emulator.log();
        if let (Some(rest), Some(grpc)) = (
            listen_port(&log, "rest.listen"),
            listen_port(&log, "grpc.listen"),
        ) {
            let rest = SocketAddr::from(([127, 0, 0, 1], rest));
            let grpc = SocketAddr::from(([127, 0, 0, 1], grpc));
            let listening = |addr: &SocketAddr| {
                TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok()
            };
            if listening(&rest) && listening(&grpc) {
                emulator.rest = rest;
                emulator.grpc = grpc;
                return emulator;
            }
        }
        if Instant::now() > deadline {
            panic!(
                "bqemulator did not listen within {START_TIMEOUT:?}; log {}:\n{}",
                emulator.log_path.display(),
                emulator.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The port from the emulator's `rest.listen` or `grpc.listen` JSON log line.
fn listen_port(log: &str, event: &str) -> Option<u16> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["event"] == event)
        .and_then(|line| line["port"].as_u64())
        .and_then(|port| u16::try_from(port).ok())
}

struct Installation {
    venv: PathBuf,
    home: PathBuf,
}

/// bqemulator from PyPI.
const TOOL: PypiTool = PypiTool {
    name: "bqemulator",
    requirements: REQUIREMENTS,
    executable: "bqemulator",
    min_python_minor: 11,
    how_to_fix: HOW_TO_FIX,
};

/// Installs bqemulator unless a complete installation of [`REQUIREMENTS`] is there, with a
/// private `HOME` holding the DuckDB `spatial` extension.
fn ensure_installed(cache: &Path) -> Installation {
    let home = cache.join("home");
    let installed = pypi::install(&TOOL, |installed| {
        let _ = fs::remove_dir_all(&home);
        let extension =
            find_file(&installed.venv, "spatial.duckdb_extension").unwrap_or_else(|| {
                panic!(
                    "duckdb-extension-spatial installed no spatial.duckdb_extension under {}",
                    installed.venv.display()
                )
            });
        let platform = match std::env::consts::ARCH {
            "aarch64" => "linux_arm64",
            _ => "linux_amd64",
        };
        let extension_dir = home
            .join(".duckdb")
            .join("extensions")
            .join(DUCKDB_EXTENSION_VERSION)
            .join(platform);
        fs::create_dir_all(&extension_dir)
            .unwrap_or_else(|err| panic!("create {}: {err}", extension_dir.display()));
        fs::copy(&extension, extension_dir.join("spatial.duckdb_extension"))
            .unwrap_or_else(|err| panic!("copy {}: {err}", extension.display()));
    });
    Installation {
        venv: installed.venv,
        home,
    }
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.map_while(Result::ok) {
        let path = entry.path();
        let file_type = entry.file_type().ok()?;
        if file_type.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if file_type.is_file() && entry.file_name() == name {
            return Some(path);
        }
    }
    None
}
