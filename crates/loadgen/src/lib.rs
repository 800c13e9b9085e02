//! A load generator for the Telemetry Gateway, used by `cargo xtask bench`.
//!
//! It opens N `RecordEvents` streams over a few HTTP/2 connections, sends realistic events
//! (pre-encoded before the run, so generating them costs nothing during it) with a bounded number
//! of payloads in flight per stream, optionally at a target rate, and measures acknowledged
//! events and per-payload acknowledgement latency after a warm-up. It is a benchmarking tool: no
//! runtime crate depends on it.

pub mod codec;
pub mod events;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;
use telemetry_gateway_testkit::events::{licensed_metadata, unlicensed_metadata};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::codec::PreEncodedCodec;

const RECORD_EVENTS_PATH: &str = "/telemetrygateway.v1.TelemeteryGatewayService/RecordEvents";

/// Distinct pre-encoded payloads, shared by all streams and sent in rotation (each stream starts
/// at its own offset). Bounded so that 512 streams of 10 KB events fit in the generator's memory.
const PAYLOAD_POOL: usize = 16;

/// What load to apply.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The gateway, e.g. `http://127.0.0.1:10085`.
    pub target: String,
    /// Concurrent RecordEvents streams.
    pub streams: usize,
    /// HTTP/2 connections the streams share.
    pub connections: usize,
    /// Events per payload.
    pub events_per_payload: usize,
    /// Approximate encoded size of one event, in bytes.
    pub event_bytes: usize,
    /// Payloads sent but not yet acknowledged, per stream.
    pub inflight_per_stream: usize,
    /// Measured duration, after the warm-up.
    pub duration: Duration,
    /// Unmeasured warm-up.
    pub warmup: Duration,
    /// Send as a licensed instance with this key; unlicensed otherwise.
    pub license_key: Option<String>,
    /// Total events per second to aim for; as fast as possible when unset.
    pub rate: Option<f64>,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Events acknowledged during the measured window.
    pub events: u64,
    /// Events acknowledged in the whole run, warm-up included.
    pub events_total: u64,
    /// Events sent but not acknowledged, whole run.
    pub events_not_acknowledged: u64,
    /// Payloads acknowledged during the window.
    pub payloads: u64,
    /// Encoded bytes of the acknowledged payloads during the window.
    pub bytes: u64,
    /// The window's length in seconds.
    pub seconds: f64,
    /// Acknowledged events per second.
    pub events_per_second: f64,
    /// Acknowledged payload megabytes (10^6) per second.
    pub megabytes_per_second: f64,
    /// Median acknowledgement latency of a payload, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile acknowledgement latency, in milliseconds.
    pub p99_ms: f64,
    /// Worst acknowledgement latency, in milliseconds.
    pub max_ms: f64,
    /// Streams that ended with an error.
    pub stream_errors: u64,
    /// The first stream error, if any.
    pub first_error: Option<String>,
}

#[derive(Default)]
struct StreamTally {
    events: u64,
    events_total: u64,
    sent_events: u64,
    payloads: u64,
    bytes: u64,
    error: Option<String>,
}

/// Opens `connections` HTTP/2 connections to `target`.
pub async fn connect(target: &str, connections: usize) -> anyhow::Result<Vec<Channel>> {
    let endpoint = Endpoint::from_shared(target.to_string())?
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .http2_adaptive_window(false);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        channels.push(endpoint.connect().await?);
    }
    Ok(channels)
}

fn metadata(config_key: Option<&str>, stream: usize) -> Bytes {
    let metadata = match config_key {
        Some(key) => licensed_metadata(key),
        None => unlicensed_metadata(&format!("loadgen-{stream}")),
    };
    events::encoded_metadata(metadata)
}

/// Applies the load and reports what was acknowledged, and how fast.
pub async fn run(config: LoadConfig) -> anyhow::Result<LoadReport> {
    let channels = connect(&config.target, config.connections).await?;
    let pool: Vec<Bytes> = (0..PAYLOAD_POOL)
        .map(|k| {
            let first = (k * config.events_per_payload) as u64;
            events::encoded_payload(first, config.events_per_payload, config.event_bytes)
        })
        .collect();
    let payloads: Vec<Vec<Bytes>> = (0..config.streams)
        .map(|stream| {
            let offset = stream % PAYLOAD_POOL;
            pool[offset..]
                .iter()
                .chain(&pool[..offset])
                .cloned()
                .collect()
        })
        .collect();

    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        120_000_000,
        3,
    )?));
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let stop_at = measure_from + config.duration;
    let per_stream_interval = config.rate.map(|rate| {
        Duration::from_secs_f64(config.events_per_payload as f64 * config.streams as f64 / rate)
    });

    let mut tasks = Vec::with_capacity(config.streams);
    let streams = config.streams.max(1) as u32;
    for (stream, payloads) in payloads.into_iter().enumerate() {
        // Spread the streams' send times over the interval: open-loop senders in phase would
        // arrive as one burst, which no real fleet of instances does.
        let phase = per_stream_interval.map(|every| every * stream as u32 / streams);
        let channel = channels[stream % channels.len()].clone();
        let metadata = metadata(config.license_key.as_deref(), stream);
        let histogram = histogram.clone();
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = StreamTally::default();
            if let Err(err) = drive_stream(
                channel,
                metadata,
                payloads,
                &config,
                per_stream_interval.zip(phase),
                (measure_from, stop_at),
                &histogram,
                &mut tally,
            )
            .await
            {
                tally.error = Some(err.to_string());
            }
            tally
        }));
    }

    let mut report = LoadReport {
        events: 0,
        events_total: 0,
        events_not_acknowledged: 0,
        payloads: 0,
        bytes: 0,
        seconds: config.duration.as_secs_f64(),
        events_per_second: 0.0,
        megabytes_per_second: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        max_ms: 0.0,
        stream_errors: 0,
        first_error: None,
    };
    for task in tasks {
        let tally = task.await?;
        report.events += tally.events;
        report.events_total += tally.events_total;
        report.events_not_acknowledged += tally.sent_events.saturating_sub(tally.events_total);
        report.payloads += tally.payloads;
        report.bytes += tally.bytes;
        if let Some(error) = tally.error {
            report.stream_errors += 1;
            report.first_error.get_or_insert(error);
        }
    }
    let histogram = histogram
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
    report.events_per_second = report.events as f64 / report.seconds;
    report.megabytes_per_second = report.bytes as f64 / report.seconds / 1e6;
    report.p50_ms = histogram.value_at_quantile(0.50) as f64 / 1000.0;
    report.p99_ms = histogram.value_at_quantile(0.99) as f64 / 1000.0;
    report.max_ms = histogram.max() as f64 / 1000.0;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn drive_stream(
    channel: Channel,
    metadata: Bytes,
    payloads: Vec<Bytes>,
    config: &LoadConfig,
    pacing: Option<(Duration, Duration)>,
    (measure_from, stop_at): (Instant, Instant),
    histogram: &Mutex<Histogram<u64>>,
    tally: &mut StreamTally,
) -> anyhow::Result<()> {
    let (requests, receiver) = mpsc::channel::<Bytes>(config.inflight_per_stream + 1);
    requests.send(metadata).await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let path = http::uri::PathAndQuery::from_static(RECORD_EVENTS_PATH);
    let mut inbound = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(receiver)),
            path,
            PreEncodedCodec,
        )
        .await?
        .into_inner();

    let in_flight = Arc::new(Semaphore::new(config.inflight_per_stream.max(1)));
    let sent_at: Arc<Mutex<VecDeque<(Instant, usize)>>> = Arc::default();
    let sender = {
        let in_flight = in_flight.clone();
        let sent_at = sent_at.clone();
        let events_per_payload = config.events_per_payload;
        tokio::spawn(async move {
            let mut ticker = pacing.map(|(every, phase)| {
                let mut ticker =
                    tokio::time::interval_at(tokio::time::Instant::now() + phase, every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker
            });
            let mut sent_events = 0u64;
            for payload in payloads.iter().cycle() {
                if Instant::now() >= stop_at {
                    break;
                }
                let Ok(permit) = in_flight.acquire().await else {
                    break;
                };
                permit.forget();
                if let Some(ticker) = ticker.as_mut() {
                    ticker.tick().await;
                }
                if let Ok(mut queue) = sent_at.lock() {
                    queue.push_back((Instant::now(), payload.len()));
                }
                if requests.send(payload.clone()).await.is_err() {
                    break;
                }
                sent_events += events_per_payload as u64;
            }
            sent_events
        })
    };

    while let Some(response) = inbound.message().await? {
        let now = Instant::now();
        in_flight.add_permits(1);
        let Some((sent, size)) = sent_at.lock().ok().and_then(|mut queue| queue.pop_front()) else {
            continue;
        };
        let acknowledged = response.succeeded_events.len() as u64;
        tally.events_total += acknowledged;
        if sent >= measure_from && now <= stop_at {
            tally.events += acknowledged;
            tally.payloads += 1;
            tally.bytes += size as u64;
            if let Ok(mut histogram) = histogram.lock() {
                let micros = now.duration_since(sent).as_micros().max(1) as u64;
                let _ = histogram.record(micros);
            }
        }
    }
    tally.sent_events = sender.await?;
    Ok(())
}

/// Opens `streams` streams that send their metadata and then stay idle for `hold`; calls
/// `opened` once all are open.
pub async fn hold_idle_streams(
    target: &str,
    streams: usize,
    connections: usize,
    hold: Duration,
    opened: impl FnOnce(),
) -> anyhow::Result<()> {
    let channels = connect(target, connections).await?;
    let mut held = Vec::with_capacity(streams);
    for stream in 0..streams {
        let (requests, receiver) = mpsc::channel::<Bytes>(1);
        requests.send(metadata(None, stream)).await?;
        let mut grpc = tonic::client::Grpc::new(channels[stream % channels.len()].clone());
        grpc.ready().await?;
        let path = http::uri::PathAndQuery::from_static(RECORD_EVENTS_PATH);
        let inbound = grpc
            .streaming(
                tonic::Request::new(ReceiverStream::new(receiver)),
                path,
                PreEncodedCodec,
            )
            .await?;
        held.push((requests, inbound));
    }
    opened();
    tokio::time::sleep(hold).await;
    drop(held);
    Ok(())
}
