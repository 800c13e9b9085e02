//! One sender's bad input does not flood the operator's tools: the real binary, a fake Sentry,
//! and payloads of 100,000 invalid events and of 20,000 oversized events. The log and Sentry stay
//! bounded, and the operator still learns what happened; nothing private reaches either.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prost_types::value::Kind;
use prost_types::{Struct, Value as ProtoValue};
use serde_json::Value;
use telemetry_gateway_proto::v1::identifier::{
    Identifier as IdentifierKind, LicensedInstanceIdentifier,
};
use telemetry_gateway_proto::v1::{Event, EventParameters, RecordEventsRequestMetadata};
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{metadata, simple_event, unlicensed_metadata};
use telemetry_gateway_testkit::fake_sentry::FakeSentry;
use telemetry_gateway_testkit::license::{LicenseKeyPair, LicenseSpec, SignatureFormat};
use tokio_stream::wrappers::ReceiverStream;

use support::GatewayProcess;

/// More log lines than this for one payload would be a flood.
const LINES_PER_PAYLOAD: usize = 10;

/// A value only the private metadata holds.
const PRIVATE_MARKER: &str = "private-marker-7f3a";

async fn send(
    addr: SocketAddr,
    metadata: RecordEventsRequestMetadata,
    events: Vec<Event>,
) -> usize {
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    let responses = telemetry_gateway_testkit::record_events(
        &mut client,
        vec![metadata_message(metadata), events_message(events)],
    )
    .await
    .expect("the stream succeeds");
    assert_eq!(responses.len(), 1);
    responses[0].succeeded_events.len()
}

/// The log lines written after the first `before`, once one of them matches `wanted`.
fn lines_until(
    gateway: &mut GatewayProcess,
    before: usize,
    wanted: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = gateway.lines();
        if lines[before..].iter().any(&wanted) {
            // Lines of the same payload written just after it.
            std::thread::sleep(Duration::from_millis(200));
            return gateway.lines()[before..].to_vec();
        }
        assert!(
            Instant::now() < deadline,
            "no such line in {:#?}",
            &lines[before..]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn message(text: &'static str) -> impl Fn(&Value) -> bool {
    move |line| line["message"] == text
}

fn find<'a>(lines: &'a [Value], message: &str) -> &'a Value {
    lines
        .iter()
        .find(|line| line["message"] == message)
        .unwrap_or_else(|| panic!("no {message:?} line in {lines:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_bad_events_cost_a_few_log_lines_and_sentry_events() {
    let sentry = FakeSentry::start().await;
    let keys = LicenseKeyPair::shared();
    let license_key = keys.mint(&LicenseSpec::default(), SignatureFormat::SshRsa);
    let public_key = keys.public_key_openssh();
    let dsn = sentry.dsn();
    // The default sender limits (docs/security.md) refuse these payloads outright: 100,000
    // events, 10 MB of metadata, a stream idle for 31 s. They are lifted here to show that the
    // logs and Sentry stay bounded even where an operator lifts them.
    let mut gateway = GatewayProcess::start(&[
        ("SENTRY_DSN", dsn.as_str()),
        ("TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY", public_key.as_str()),
        ("TELEMETRY_GATEWAY_MAX_EVENTS_PER_PAYLOAD", "100000"),
        ("TELEMETRY_GATEWAY_MAX_METADATA_BYTES", "16777216"),
        ("TELEMETRY_GATEWAY_MAX_INFLIGHT_BYTES", "0"),
        ("TELEMETRY_GATEWAY_STREAM_IDLE_TIMEOUT", "2m"),
    ]);
    let addr = gateway.address();
    let started = Instant::now();

    // A stream held open for more than 30 s: slow, which is a warning, not an error.
    let (slow_sender, slow_messages) = tokio::sync::mpsc::channel(4);
    slow_sender
        .send(metadata_message(unlicensed_metadata("slow")))
        .await
        .expect("queued");
    let mut slow_client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    let slow = tokio::spawn(async move {
        let mut inbound = slow_client
            .record_events(ReceiverStream::new(slow_messages))
            .await?
            .into_inner();
        while inbound.message().await?.is_some() {}
        Ok::<(), tonic::Status>(())
    });

    // 100,000 invalid events (an ID and nothing else) in one payload of about 830 KB.
    let before = gateway.lines().len();
    let invalid: Vec<Event> = (0..100_000)
        .map(|i| Event {
            id: format!("inv-{i}"),
            ..Event::default()
        })
        .collect();
    let acknowledged = send(addr, unlicensed_metadata("flooder"), invalid).await;
    assert_eq!(
        acknowledged, 100_000,
        "an instance is told invalid events succeeded"
    );
    let lines = lines_until(
        &mut gateway,
        before,
        message("all events in batch submitted successfully"),
    );
    assert!(
        lines.len() <= LINES_PER_PAYLOAD,
        "{} lines: {lines:#?}",
        lines.len()
    );
    let dropped = find(&lines, "dropped events");
    assert_eq!(dropped["dropped"], 100_000);
    assert_eq!(dropped["invalid"], 100_000);
    let sample = dropped["sampleIDs"].as_str().expect("a sample of IDs");
    assert!(sample.starts_with(r#""inv-0", "inv-1""#), "{sample}");
    assert!(sample.ends_with("and 99990 more"), "{sample}");
    assert!(
        dropped["examples"]
            .as_str()
            .is_some_and(|e| e.starts_with("invalid: ") && e.contains("must both be provided")),
        "{dropped}"
    );

    // 20,000 small events made oversized by 10 MB of request metadata, from a licensed instance
    // whose events carry private metadata.
    let before = gateway.lines().len();
    let big_metadata = metadata(IdentifierKind::LicensedInstance(
        LicensedInstanceIdentifier {
            license_key: license_key.clone(),
            instance_id: "instance-licensed".into(),
            external_url: format!("https://{}.example.com", "x".repeat(10_000_000)),
        },
    ));
    let private = Struct {
        fields: BTreeMap::from([(
            "secret".to_string(),
            ProtoValue {
                kind: Some(Kind::StringValue(PRIVATE_MARKER.into())),
            },
        )]),
    };
    let oversized: Vec<Event> = (0..20_000)
        .map(|i| {
            let mut event = simple_event(format!("big-{i}"));
            event.parameters = Some(EventParameters {
                private_metadata: Some(private.clone()),
                ..EventParameters::default()
            });
            event
        })
        .collect();
    let acknowledged = send(addr, big_metadata, oversized).await;
    assert_eq!(
        acknowledged, 20_000,
        "oversized events are dropped as succeeded"
    );
    let lines = lines_until(
        &mut gateway,
        before,
        message("all events in batch submitted successfully"),
    );
    assert!(
        lines.len() <= LINES_PER_PAYLOAD,
        "{} lines: {lines:#?}",
        lines.len()
    );
    let discarded = find(&lines, "discarding oversized events");
    assert_eq!(discarded["level"], "ERROR");
    assert_eq!(discarded["events"], 20_000);
    assert_eq!(discarded["eventID"], "big-0");
    assert!(
        discarded["size"]
            .as_u64()
            .is_some_and(|size| size >= 10_000_000)
    );
    let snippet = discarded["eventSnippet"].as_str().expect("a snippet");
    assert!(snippet.contains(r#""id":"big-0""#), "{snippet}");
    assert_eq!(find(&lines, "dropped events")["oversized"], 20_000);
    let handling = find(
        &lines,
        "handling events submission stream for licensed instance",
    );
    assert!(
        handling.to_string().len() < 4096,
        "the sender's 10 MB URL is logged whole"
    );

    // The slow stream ends after 30 s.
    let open_for = Duration::from_secs(31).saturating_sub(started.elapsed());
    tokio::time::sleep(open_for).await;
    let before = gateway.lines().len();
    drop(slow_sender);
    slow.await
        .expect("joined")
        .expect("the slow stream ends OK");
    let lines = lines_until(&mut gateway, before, |line| {
        line["message"] == "request done"
    });
    let done = find(&lines, "request done");
    assert_eq!(done["reason"], "slow request", "{done}");
    assert_eq!(done["level"], "WARN", "{done}");
    assert!(done.get("error").is_none(), "{done}");

    // Everything queued for Sentry is sent at exit: the oversized payload's one event.
    assert!(gateway.terminate().success());
    let events = sentry.events();
    let messages: Vec<&str> = events
        .iter()
        .map(|event| {
            event["message"]
                .as_str()
                .or_else(|| event["logentry"]["message"].as_str())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(messages, ["discarding oversized events"], "{events:#?}");
    for envelope in sentry.envelopes() {
        let body = String::from_utf8_lossy(&envelope.body);
        assert!(
            !body.contains(&license_key),
            "a report holds the license key"
        );
        assert!(
            !body.contains(PRIVATE_MARKER),
            "a report holds private metadata"
        );
        assert!(
            !body.contains("slow request"),
            "a slow stream reached Sentry"
        );
    }
    for line in gateway.lines() {
        let text = line.to_string();
        assert!(
            !text.contains(&license_key),
            "a log line holds the license key"
        );
        assert!(
            !text.contains(PRIVATE_MARKER),
            "a log line holds private metadata: {text}"
        );
    }
}
