//! The memory budget holds in the real binary: 64 senders push 5 MB payloads at a sink that
//! never answers; the few payloads that fit are held, every other sender gets
//! `ResourceExhausted`, and the process's peak RSS stays under the budget plus a stated
//! overhead.

mod support;

use std::time::{Duration, Instant};

use telemetry_gateway_proto::client::EventBuilder;
use telemetry_gateway_proto::v1::Event;
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::unlicensed_metadata;
use telemetry_gateway_testkit::fake_bigquery::FakeBigQuery;
use telemetry_gateway_testkit::http::get;
use tonic::Code;

use support::GatewayProcess;

const SENDERS: usize = 64;
const EVENTS_PER_PAYLOAD: usize = 500;
/// 500 events of ~10 KB: a payload of about 5 MB.
const EVENT_PADDING: usize = 10_000;
/// Room for three payloads and a half in the held part of the budget (three quarters of it):
/// three are admitted, the rest refused.
const PAYLOADS_IN_BUDGET: f64 = 3.5;
/// What the process may use beyond the budget: the runtime, TLS and HTTP/2 state, and at most
/// one HTTP/2 flow-control window (1 MiB) of not-yet-admitted bytes per connection.
const OVERHEAD_BYTES: usize = 48 * 1024 * 1024 + SENDERS * 1024 * 1024;

fn padded_event(sender: usize, i: usize) -> Event {
    // Varied bytes, so nothing in the path can shrink them much.
    let padding: String = (0..EVENT_PADDING)
        .map(|j| char::from(b'a' + ((sender * 31 + i * 7 + j * 13) % 26) as u8))
        .collect();
    EventBuilder::new("cody.completion", "suggested")
        .id(format!("s{sender}-e{i}"))
        .server_version("5.9.1")
        .private_metadata("context", padding)
        .build()
        .expect("a valid event")
}

fn payload(sender: usize) -> Vec<Event> {
    (0..EVENTS_PER_PAYLOAD)
        .map(|i| padded_event(sender, i))
        .collect()
}

/// The peak resident set size of `pid`, from /proc.
fn peak_rss_bytes(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("a VmHWM line");
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in kB");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_senders_of_five_mb_at_a_stalled_sink_stay_within_the_budget() {
    let wire = prost::Message::encoded_len(&events_message(payload(0)));
    let mut metadata_json = Vec::new();
    telemetry_gateway_proto::render_metadata(&unlicensed_metadata("sender-10"), &mut metadata_json);
    let cost = telemetry_gateway_server::budget::request_cost(
        &events_message(payload(0)),
        metadata_json.len(),
    )
    .expect("a valid payload");
    let budget = (cost as f64 * PAYLOADS_IN_BUDGET * 4.0 / 3.0) as usize;
    let admitted = (budget * 3 / 4 / cost) as u64;

    let fake = FakeBigQuery::start().await;
    fake.set_delay(Duration::from_secs(600));
    let budget_text = budget.to_string();
    let endpoint = fake.v2_base_url();
    let mut gateway = GatewayProcess::start(&[
        ("TELEMETRY_GATEWAY_EVENTS_SINKS", "bigquery"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID", "proj"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID", "telemetry"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID", "events"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_ENDPOINT", &endpoint),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_WRITE_API", "insert_all"),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_REQUEST_TIMEOUT_SECONDS",
            "600",
        ),
        ("TELEMETRY_GATEWAY_MAX_INFLIGHT_BYTES", &budget_text),
        ("TELEMETRY_GATEWAY_INFLIGHT_WAIT", "1s"),
        ("TELEMETRY_GATEWAY_SHUTDOWN_TIMEOUT", "1s"),
    ]);
    let addr = gateway.address();
    let baseline = peak_rss_bytes(gateway.pid());

    // Every sender on its own connection, as installations are.
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let mut client = telemetry_gateway_testkit::connect(addr)
            .await
            .expect("connect");
        senders.push(tokio::spawn(async move {
            telemetry_gateway_testkit::record_events(
                &mut client,
                vec![
                    metadata_message(unlicensed_metadata(&format!("sender-{sender}"))),
                    events_message(payload(sender)),
                ],
            )
            .await
        }));
    }

    // Everything but the admitted payloads is refused; the admitted ones are held for ever.
    let expected_refusals = SENDERS - admitted as usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut refused = 0;
    let mut pending = senders;
    while refused < expected_refusals {
        assert!(
            Instant::now() < deadline,
            "{refused} of {expected_refusals} expected refusals after 120 s"
        );
        let mut still = Vec::new();
        for sender in pending {
            if sender.is_finished() {
                match sender.await.expect("sender task") {
                    Err(status) => {
                        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                        assert!(status.metadata().get("grpc-retry-pushback-ms").is_some());
                        refused += 1;
                    }
                    Ok(_) => panic!("a payload was acknowledged by a sink that never answers"),
                }
            } else {
                still.push(sender);
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        pending.len() as u64,
        admitted,
        "the admitted payloads are held"
    );
    assert!(
        fake.max_in_flight() > 0,
        "the held payloads reached the sink"
    );
    let ready = get(addr, "/-/ready", None).await.expect("served");
    assert_eq!(ready.status, 503, "over budget: {}", ready.body);

    let peak = peak_rss_bytes(gateway.pid());
    let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "memory: payload {:.1} MiB on the wire, budget {:.1} MiB ({admitted} payloads), \
         baseline RSS {:.1} MiB, peak RSS {:.1} MiB, limit {:.1} MiB",
        mib(wire),
        mib(budget),
        mib(baseline),
        mib(peak),
        mib(budget + OVERHEAD_BYTES)
    );
    assert!(
        peak < budget + OVERHEAD_BYTES,
        "peak RSS {:.1} MiB exceeds the budget {:.1} MiB plus {:.1} MiB overhead",
        mib(peak),
        mib(budget),
        mib(OVERHEAD_BYTES)
    );
    for sender in pending {
        sender.abort();
    }
    gateway.terminate();
}
