//! `telemetry-gateway-loadgen`: drives a gateway and prints one JSON report line.

use std::io::Write;
use std::time::Duration;

use clap::{Parser, Subcommand};
use telemetry_gateway_loadgen::{LoadConfig, hold_idle_streams, run};

#[derive(Parser)]
#[command(
    name = "telemetry-gateway-loadgen",
    about = "Load generator for the Telemetry Gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Send events and report throughput and latency as one JSON line.
    Run {
        /// The gateway, e.g. http://127.0.0.1:10085.
        #[arg(long)]
        target: String,
        /// Concurrent streams.
        #[arg(long, default_value_t = 8)]
        streams: usize,
        /// HTTP/2 connections shared by the streams (default: one per stream, at most 16).
        #[arg(long)]
        connections: Option<usize>,
        /// Events per payload.
        #[arg(long, default_value_t = 500)]
        events_per_payload: usize,
        /// Approximate encoded size of an event, in bytes.
        #[arg(long, default_value_t = 700)]
        event_bytes: usize,
        /// Payloads in flight per stream.
        #[arg(long, default_value_t = 2)]
        inflight: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Warm-up seconds.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Send as a licensed instance with this key.
        #[arg(long)]
        license_key: Option<String>,
        /// Target total events per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Open idle streams, print {"opened": N} when all are open, hold them, then exit.
    Idle {
        /// The gateway.
        #[arg(long)]
        target: String,
        /// Streams to open.
        #[arg(long, default_value_t = 1000)]
        streams: usize,
        /// HTTP/2 connections shared by the streams.
        #[arg(long, default_value_t = 10)]
        connections: usize,
        /// Seconds to hold them.
        #[arg(long, default_value_t = 5.0)]
        hold: f64,
    },
    /// Mint a license key pair for licensed benchmarks: prints {"public_key", "license_key"}.
    MintLicense,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Mode::Run {
            target,
            streams,
            connections,
            events_per_payload,
            event_bytes,
            inflight,
            duration,
            warmup,
            license_key,
            rate,
        } => {
            let report = run(LoadConfig {
                target,
                streams,
                connections: connections.unwrap_or(streams.min(16)),
                events_per_payload,
                event_bytes,
                inflight_per_stream: inflight,
                duration: Duration::from_secs_f64(duration),
                warmup: Duration::from_secs_f64(warmup),
                license_key,
                rate,
            })
            .await?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Mode::Idle {
            target,
            streams,
            connections,
            hold,
        } => {
            hold_idle_streams(
                &target,
                streams,
                connections,
                Duration::from_secs_f64(hold),
                || {
                    println!("{}", serde_json::json!({ "opened": streams }));
                    let _ = std::io::stdout().flush();
                },
            )
            .await?;
        }
        Mode::MintLicense => {
            let pair = telemetry_gateway_testkit::license::LicenseKeyPair::generate();
            let key = pair.mint(
                &telemetry_gateway_testkit::license::LicenseSpec::default(),
                telemetry_gateway_testkit::license::SignatureFormat::SshRsa,
            );
            println!(
                "{}",
                serde_json::json!({ "public_key": pair.public_key_openssh(), "license_key": key })
            );
        }
    }
    Ok(())
}
