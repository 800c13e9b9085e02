//! `cargo xtask bench`: the gateway under load from our load generator, on this machine.
//!
//! Builds both in release mode, starts the gateway on 127.0.0.1 with the chosen sink (pinned to
//! core 0 when there are two), drives it with `telemetry-gateway-loadgen` (pinned to core 1), and
//! reads the server's CPU time from /proc/<pid>/stat and its peak RSS from /proc/<pid>/status.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Sink behind the gateway: discard, file, log (or bigquery/pubsub with `--gateway-env`).
    #[arg(long, default_value = "discard")]
    sink: String,
    /// Extra environment for the gateway, `KEY=VALUE`, repeatable: for example the BigQuery
    /// table and emulator endpoints of `--sink bigquery` (docs/performance.md).
    #[arg(long = "gateway-env", value_name = "KEY=VALUE")]
    gateway_env: Vec<String>,
    /// Concurrent streams.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Events per payload.
    #[arg(long, default_value_t = 500)]
    events_per_payload: usize,
    /// Approximate encoded event size in bytes.
    #[arg(long, default_value_t = 700)]
    event_bytes: usize,
    /// Payloads in flight per stream.
    #[arg(long, default_value_t = 2)]
    inflight: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds per run.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Send as licensed instances (a license is minted for the run).
    #[arg(long)]
    licensed: bool,
    /// Target events per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// After the run, run again at half the measured throughput and report that latency too.
    #[arg(long)]
    half_rate: bool,
    /// Run the scaling matrix: streams 1/8/64/512, batch 1/100/1000, event size 200/1000/10000.
    #[arg(long)]
    matrix: bool,
    /// Instead of load, open this many idle streams and report memory per stream.
    #[arg(long)]
    idle_streams: Option<usize>,
}

#[derive(Debug, Clone)]
struct Scenario {
    label: String,
    streams: usize,
    events_per_payload: usize,
    event_bytes: usize,
    rate: Option<f64>,
}

pub fn bench(root: &Path, args: BenchArgs) -> Result<()> {
    let bins = build(root)?;
    let license = if args.licensed {
        Some(mint_license(&bins)?)
    } else {
        None
    };
    if let Some(streams) = args.idle_streams {
        return idle(&bins, &args, streams);
    }
    let base = Scenario {
        label: "base".into(),
        streams: args.streams,
        events_per_payload: args.events_per_payload,
        event_bytes: args.event_bytes,
        rate: args.rate,
    };
    let mut scenarios = vec![base.clone()];
    if args.matrix {
        for streams in [1, 8, 64, 512] {
            scenarios.push(Scenario {
                label: format!("streams={streams}"),
                streams,
                ..base.clone()
            });
        }
        for batch in [1, 100, 1000] {
            scenarios.push(Scenario {
                label: format!("batch={batch}"),
                events_per_payload: batch,
                ..base.clone()
            });
        }
        for size in [200, 1000, 10_000] {
            scenarios.push(Scenario {
                label: format!("event={size}B"),
                event_bytes: size,
                ..base.clone()
            });
        }
    }
    let mut rows = Vec::new();
    for scenario in &scenarios {
        let row = measure(&bins, &args, scenario, license.as_ref())?;
        if args.half_rate && scenario.label == "base" {
            let half = row["events_per_second"].as_f64().unwrap_or(0.0) / 2.0;
            let at_half = Scenario {
                label: "base@half-rate".into(),
                rate: Some(half),
                ..scenario.clone()
            };
            rows.push(row);
            rows.push(measure(&bins, &args, &at_half, license.as_ref())?);
        } else {
            rows.push(row);
        }
    }
    print_table(&rows);
    println!(
        "{}",
        json!({ "sink": args.sink, "licensed": args.licensed, "runs": rows })
    );
    Ok(())
}

pub(crate) struct Binaries {
    pub(crate) gateway: PathBuf,
    pub(crate) loadgen: PathBuf,
}

pub(crate) fn build(root: &Path) -> Result<Binaries> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    // `cargo xtask` runs this through `cargo run`, which sets the package's CARGO_PKG_* and
    // CARGO_MANIFEST_* for it. Build scripts (ring's, for one) rerun when those change, so
    // passing them on would rebuild half the dependency tree on every run, and again on the next
    // plain `cargo build`.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&&*key)
        {
            command.env_remove(&*key);
        }
    }
    let status = command
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "telemetry-gateway",
            "-p",
            "telemetry-gateway-loadgen",
        ])
        .status()
        .context("cargo build --release")?;
    if !status.success() {
        bail!("the release build failed");
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    Ok(Binaries {
        gateway: target.join("release/telemetry-gateway"),
        loadgen: target.join("release/telemetry-gateway-loadgen"),
    })
}

struct License {
    public_key: String,
    license_key: String,
}

fn mint_license(bins: &Binaries) -> Result<License> {
    let output = Command::new(&bins.loadgen).arg("mint-license").output()?;
    let minted: Value = serde_json::from_slice(&output.stdout).context("mint-license output")?;
    Ok(License {
        public_key: minted["public_key"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        license_key: minted["license_key"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    })
}

/// Runs `command` pinned to `core` when the machine has two cores or more.
pub(crate) fn pinned(program: &Path, core: usize) -> Command {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores >= 2 && Path::new("/usr/bin/taskset").exists() {
        let mut command = Command::new("taskset");
        command.arg("-c").arg(core.to_string()).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// A server process for one run, pinned to core 0; stopped (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct Gateway {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Gateway {
    fn start(bins: &Binaries, args: &BenchArgs, license: Option<&License>) -> Result<Gateway> {
        Gateway::start_ours(
            &bins.gateway,
            &args.sink,
            "warn",
            &args.gateway_env,
            license.map(|license| license.public_key.as_str()),
        )
    }

    /// Starts our gateway with `sink` (its file sink writing under the run's directory).
    pub(crate) fn start_ours(
        binary: &Path,
        sink: &str,
        log_level: &str,
        env: &[String],
        license_public_key: Option<&str>,
    ) -> Result<Gateway> {
        Gateway::spawn(|port, dir| {
            let mut command = pinned(binary, 0);
            command
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("PORT", port.to_string())
                .env("TELEMETRY_GATEWAY_LISTEN_ADDRESS", "127.0.0.1")
                .env("TELEMETRY_GATEWAY_EVENTS_SINKS", sink)
                .env("TELEMETRY_GATEWAY_EVENTS_FILE_DIR", dir.join("events"))
                .env("SRC_LOG_LEVEL", log_level);
            if let Some(key) = license_public_key {
                command.env("TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY", key);
            }
            for pair in env {
                let (key, value) = pair
                    .split_once('=')
                    .with_context(|| format!("--gateway-env {pair:?} is not KEY=VALUE"))?;
                command.env(key, value);
            }
            Ok(command)
        })
    }

    /// Starts the server `command(port, run directory)` builds, its output in the run's
    /// directory, and waits until it listens.
    pub(crate) fn spawn(command: impl FnOnce(u16, &Path) -> Result<Command>) -> Result<Gateway> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let child = command(port, dir.path())?
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the server")?;
        let mut gateway = Gateway { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || !matches!(gateway.child.try_wait(), Ok(None)) {
                bail!(
                    "the server did not start listening on {port}; its output: {}",
                    std::fs::read_to_string(gateway.dir.path().join("server.log"))
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(gateway)
    }

    fn target(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Its process id (taskset execs it, so the pid is the server's own).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The run's directory (the server's output, the file sink's files).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The gateway's own pid (taskset execs it, so the pid is the same).
    fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields
            .get(11)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            + fields
                .get(12)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
        Ok(ticks / clock_ticks())
    }

    fn memory_kib(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .with_context(|| format!("{field} in /proc/pid/status"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn measure(
    bins: &Binaries,
    args: &BenchArgs,
    scenario: &Scenario,
    license: Option<&License>,
) -> Result<Value> {
    let gateway = Gateway::start(bins, args, license)?;
    let cpu_before = gateway.cpu_seconds()?;
    let mut command = pinned(&bins.loadgen, 1);
    command.args([
        "run".to_string(),
        format!("--target={}", gateway.target()),
        format!("--streams={}", scenario.streams),
        format!("--events-per-payload={}", scenario.events_per_payload),
        format!("--event-bytes={}", scenario.event_bytes),
        format!("--inflight={}", args.inflight),
        format!("--duration={}", args.duration),
        format!("--warmup={}", args.warmup),
    ]);
    if let Some(rate) = scenario.rate {
        command.arg(format!("--rate={rate}"));
    }
    if let Some(license) = license {
        command.arg(format!("--license-key={}", license.license_key));
    }
    let output = command.output().context("running the load generator")?;
    if !output.status.success() {
        bail!(
            "the load generator failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let cpu = gateway.cpu_seconds()? - cpu_before;
    let peak_rss_kib = gateway.memory_kib("VmHWM:")?;
    let mut report: Value =
        serde_json::from_slice(&output.stdout).context("load generator report")?;
    let total = report["events_total"].as_f64().unwrap_or(0.0);
    report["scenario"] = json!(scenario.label);
    report["streams"] = json!(scenario.streams);
    report["events_per_payload"] = json!(scenario.events_per_payload);
    report["event_bytes"] = json!(scenario.event_bytes);
    report["server_cpu_seconds"] = json!(cpu);
    report["server_cpu_seconds_per_million_events"] =
        json!(if total > 0.0 { cpu / total * 1e6 } else { 0.0 });
    report["server_peak_rss_mib"] = json!(peak_rss_kib as f64 / 1024.0);
    Ok(report)
}

fn idle(bins: &Binaries, args: &BenchArgs, streams: usize) -> Result<()> {
    let gateway = Gateway::start(bins, args, None)?;
    std::thread::sleep(Duration::from_millis(300));
    let before = gateway.memory_kib("VmRSS:")?;
    let mut child = pinned(&bins.loadgen, 1)
        .args([
            "idle".to_string(),
            format!("--target={}", gateway.target()),
            format!("--streams={streams}"),
            "--hold=3".into(),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("loadgen stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if !line.contains("opened") {
        bail!("idle streams did not open: {line:?}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = gateway.memory_kib("VmRSS:")?;
    let _ = child.wait();
    let per_stream_kib = after.saturating_sub(before) as f64 / streams as f64;
    println!(
        "idle streams: {streams}, RSS before {} KiB, with streams {} KiB, {:.1} KiB per idle stream",
        before, after, per_stream_kib
    );
    println!(
        "{}",
        json!({ "idle_streams": streams, "rss_before_kib": before, "rss_with_streams_kib": after, "kib_per_idle_stream": per_stream_kib })
    );
    Ok(())
}

fn print_table(rows: &[Value]) {
    println!(
        "{:<16} {:>7} {:>6} {:>7} {:>12} {:>8} {:>9} {:>9} {:>12} {:>9}",
        "scenario",
        "streams",
        "batch",
        "event B",
        "events/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "CPU s/Mev",
        "RSS MiB"
    );
    for row in rows {
        let f = |key: &str| row[key].as_f64().unwrap_or(0.0);
        println!(
            "{:<16} {:>7} {:>6} {:>7} {:>12.0} {:>8.1} {:>9.2} {:>9.2} {:>12.2} {:>9.1}",
            row["scenario"].as_str().unwrap_or(""),
            f("streams"),
            f("events_per_payload"),
            f("event_bytes"),
            f("events_per_second"),
            f("megabytes_per_second"),
            f("p50_ms"),
            f("p99_ms"),
            f("server_cpu_seconds_per_million_events"),
            f("server_peak_rss_mib"),
        );
        if let Some(error) = row["first_error"].as_str() {
            println!("  stream errors: {} (first: {error})", row["stream_errors"]);
        }
    }
}
