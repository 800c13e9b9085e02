//! `cargo xtask compare --peer DIR`: our gateway and the Go reference-equivalent peer side by side,
//! driven by the same (the peer's) load generator, in one command (docs/performance.md).
//!
//! For each sink pair (our fsynced file sink against the peer's file sink, our discard sink
//! against the peer's null sink) the two servers run alternately, `--rounds` times each, each run
//! a fresh process pinned to core 0 with the load generator on core 1. Both log at `info` (the
//! peer writes one line per payload, as ours does). The load generator reads the server's CPU
//! time and peak RSS from /proc over its measured window. The summary gives the medians and the
//! ratios, and the disk's own fsync latency (the floor under the file sink's acknowledgements).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench::{Gateway, build, pinned};

/// What to compare.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// The peer's binaries: a directory holding `go-gateway` and `loadgen`
    /// (`/tmp/telemetry-gateway-peers/bin` after the peer's `build.sh`).
    #[arg(long)]
    peer: PathBuf,
    /// Runs per server and sink, alternating ours and the peer's.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Sinks to compare: `file` (ours fsynced, the peer's buffered) and/or `discard` (the peer's
    /// `null`).
    #[arg(long, value_delimiter = ',', default_value = "file,discard")]
    sinks: Vec<String>,
    /// Concurrent streams.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Events per payload.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Encoded size of each event in bytes.
    #[arg(long, default_value_t = 700)]
    event_bytes: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Warm-up seconds per run.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Extra flags for the load generator (for example `--inflight=2`), repeatable.
    #[arg(long = "loadgen-arg", allow_hyphen_values = true)]
    loadgen_args: Vec<String>,
}

/// The peer's sink for each of ours.
fn peer_sink(ours: &str) -> Result<&'static str> {
    match ours {
        "file" => Ok("file"),
        "discard" => Ok("null"),
        other => bail!("compare knows the sinks file and discard, not {other:?}"),
    }
}

pub fn compare(root: &Path, args: CompareArgs) -> Result<()> {
    let peer_gateway = args.peer.join("go-gateway");
    let loadgen = args.peer.join("loadgen");
    for binary in [&peer_gateway, &loadgen] {
        if !binary.is_file() {
            bail!(
                "{} is missing: build the peer first (its build.sh installs Go from Debian and \
                 writes go-gateway and loadgen to /tmp/telemetry-gateway-peers/bin)",
                binary.display()
            );
        }
    }
    let ours = build(root)?.gateway;
    let mut runs = Vec::new();
    for sink in &args.sinks {
        let peer_sink = peer_sink(sink)?;
        for round in 1..=args.rounds {
            for server in ["ours", "peer"] {
                let gateway = if server == "ours" {
                    Gateway::start_ours(&ours, sink, "info", &[], None)?
                } else {
                    Gateway::spawn(|port, dir| {
                        let mut command = pinned(&peer_gateway, 0);
                        command.args([
                            "--port".to_string(),
                            port.to_string(),
                            "--sink".into(),
                            peer_sink.into(),
                            "--file".into(),
                            dir.join("events.ndjson").display().to_string(),
                            "--log-level".into(),
                            "info".into(),
                        ]);
                        Ok(command)
                    })?
                };
                let mut row = drive(&loadgen, &gateway, &args)?;
                row["server"] = json!(server);
                row["sink"] = json!(if server == "ours" { sink } else { peer_sink });
                row["round"] = json!(round);
                print_row(&row);
                runs.push(row);
            }
        }
    }
    let fsync = fsync_latency(&std::env::temp_dir(), 512 * 1024, 200)?;
    let summary = summarize(&args, &runs, &fsync);
    println!();
    print_summary(&summary);
    println!("{}", json!({ "runs": runs, "summary": summary }));
    Ok(())
}

/// One measured run of the peer's load generator against `gateway`.
fn drive(loadgen: &Path, gateway: &Gateway, args: &CompareArgs) -> Result<Value> {
    let mut command = pinned(loadgen, 1);
    command
        .arg(format!("--addr=127.0.0.1:{}", gateway.port()))
        .arg(format!("--server-pid={}", gateway.pid()))
        .arg(format!("--streams={}", args.streams))
        .arg(format!("--batch={}", args.batch))
        .arg(format!("--event-bytes={}", args.event_bytes))
        .arg(format!("--duration={}s", args.duration))
        .arg(format!("--warmup={}s", args.warmup))
        .arg("--identifier=unlicensed")
        .args(&args.loadgen_args);
    let output = command
        .output()
        .context("running the peer's load generator")?;
    let line = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(line.trim()).with_context(|| {
        format!(
            "the load generator printed no report: {}\nserver output: {}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(gateway.dir().join("server.log")).unwrap_or_default()
        )
    })?;
    if !output.status.success() {
        bail!("the load generator reported lost events or failed RPCs: {report}");
    }
    Ok(report)
}

/// The disk's own latency for what the file sink does per group: append `bytes` and fsync,
/// `count` times, in a fresh file under `dir`. Milliseconds: p50, p99, max.
pub(crate) fn fsync_latency(dir: &Path, bytes: usize, count: usize) -> Result<Value> {
    let dir = tempfile::tempdir_in(dir)?;
    let mut file = std::fs::File::create(dir.path().join("probe"))?;
    let block = vec![b'x'; bytes];
    let mut millis = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        millis.push(start.elapsed().as_secs_f64() * 1e3);
    }
    millis.sort_by(f64::total_cmp);
    let at = |q: f64| millis[((millis.len() - 1) as f64 * q).round() as usize];
    Ok(json!({
        "bytes_per_sync": bytes,
        "syncs": count,
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "max_ms": at(1.0),
    }))
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn summarize(args: &CompareArgs, runs: &[Value], fsync: &Value) -> Value {
    let medians = |server: &str, sink: &str| {
        let of = |key: &str| {
            median(
                runs.iter()
                    .filter(|run| run["server"] == server && run["sink"] == sink)
                    .filter_map(|run| run[key].as_f64())
                    .collect(),
            )
        };
        json!({
            "events_per_sec": of("events_per_sec"),
            "cpu_s_per_million_events": of("server_cpu_s_per_million_events"),
            "p99_ms": of("p99_ms"),
            "peak_rss_mb": of("server_peak_rss_mb"),
        })
    };
    let mut pairs = Vec::new();
    for sink in &args.sinks {
        let Ok(peer) = peer_sink(sink) else { continue };
        let ours = medians("ours", sink);
        let theirs = medians("peer", peer);
        let cpu = |row: &Value| row["cpu_s_per_million_events"].as_f64().unwrap_or(0.0);
        pairs.push(json!({
            "sink": sink,
            "peer_sink": peer,
            "ours": ours,
            "peer": theirs,
            "cpu_ratio": if cpu(&ours) > 0.0 { cpu(&theirs) / cpu(&ours) } else { 0.0 },
        }));
    }
    let cpu_of = |sink: &str| {
        pairs
            .iter()
            .find(|pair| pair["sink"] == sink)
            .and_then(|pair| pair["ours"]["cpu_s_per_million_events"].as_f64())
    };
    let file_over_discard = match (cpu_of("file"), cpu_of("discard")) {
        (Some(file), Some(discard)) if discard > 0.0 => json!(file / discard),
        _ => Value::Null,
    };
    json!({
        "load": {
            "streams": args.streams, "batch": args.batch, "event_bytes": args.event_bytes,
            "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
        },
        "pairs": pairs,
        "ours_file_cpu_over_discard": file_over_discard,
        "disk_fsync": fsync,
    })
}

fn print_row(row: &Value) {
    let f = |key: &str| row[key].as_f64().unwrap_or(0.0);
    println!(
        "{:<5} {:<8} round {} {:>10.0} events/s {:>8.1} CPU s/M events {:>8.1} p99 ms {:>7.1} peak RSS MB",
        row["server"].as_str().unwrap_or(""),
        row["sink"].as_str().unwrap_or(""),
        row["round"],
        f("events_per_sec"),
        f("server_cpu_s_per_million_events"),
        f("p99_ms"),
        f("server_peak_rss_mb"),
    );
}

fn print_summary(summary: &Value) {
    println!(
        "{:<8} {:>14} {:>14} {:>14} {:>14} {:>10}",
        "sink", "ours events/s", "peer events/s", "ours CPU s/M", "peer CPU s/M", "CPU ratio"
    );
    for pair in summary["pairs"].as_array().into_iter().flatten() {
        let f = |side: &str, key: &str| pair[side][key].as_f64().unwrap_or(0.0);
        println!(
            "{:<8} {:>14.0} {:>14.0} {:>14.2} {:>14.2} {:>9.1}x",
            pair["sink"].as_str().unwrap_or(""),
            f("ours", "events_per_sec"),
            f("peer", "events_per_sec"),
            f("ours", "cpu_s_per_million_events"),
            f("peer", "cpu_s_per_million_events"),
            pair["cpu_ratio"].as_f64().unwrap_or(0.0),
        );
    }
    if let Some(ratio) = summary["ours_file_cpu_over_discard"].as_f64() {
        println!("ours: file sink CPU per event / discard CPU per event = {ratio:.2}");
    }
    let fsync = &summary["disk_fsync"];
    println!(
        "disk: append {} KiB + fsync, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        fsync["bytes_per_sync"].as_u64().unwrap_or(0) / 1024,
        fsync["p50_ms"].as_f64().unwrap_or(0.0),
        fsync["p99_ms"].as_f64().unwrap_or(0.0),
        fsync["max_ms"].as_f64().unwrap_or(0.0),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn summary_pairs_medians_and_ratios() {
        let args = CompareArgs {
            peer: PathBuf::from("/peer"),
            rounds: 3,
            sinks: vec!["file".into(), "discard".into()],
            streams: 8,
            batch: 500,
            event_bytes: 700,
            duration: 10,
            warmup: 2,
            loadgen_args: Vec::new(),
        };
        let run = |server: &str, sink: &str, cpu: f64| {
            json!({ "server": server, "sink": sink, "server_cpu_s_per_million_events": cpu,
                    "events_per_sec": 1000.0 })
        };
        let runs = vec![
            run("ours", "file", 5.0),
            run("peer", "file", 60.0),
            run("ours", "file", 4.0),
            run("peer", "file", 61.0),
            run("ours", "file", 6.0),
            run("peer", "file", 62.0),
            run("ours", "discard", 4.0),
            run("peer", "null", 60.0),
        ];
        let summary = summarize(&args, &runs, &json!({}));
        let pairs = summary["pairs"].as_array().expect("pairs");
        assert_eq!(pairs[0]["ours"]["cpu_s_per_million_events"], 5.0);
        assert_eq!(pairs[0]["peer"]["cpu_s_per_million_events"], 61.0);
        assert_eq!(pairs[0]["cpu_ratio"], 12.2);
        assert_eq!(pairs[1]["cpu_ratio"], 15.0);
        assert_eq!(summary["ours_file_cpu_over_discard"], 1.25);
    }

    #[test]
    fn only_file_and_discard_have_peers() {
        assert_eq!(peer_sink("discard").expect("discard"), "null");
        assert!(peer_sink("pubsub").is_err());
    }
}
