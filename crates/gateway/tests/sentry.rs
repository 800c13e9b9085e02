//! Sentry reports from the real binary to a fake Sentry over real HTTP: a failed publish arrives
//! as an error event carrying the event's feature, action and ID; a cancelled publish does not
//! arrive at all.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use telemetry_gateway_proto::v1::{Event, RecordEventsRequestMetadata, RecordEventsResponse};
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{licensed_metadata, simple_event, unlicensed_metadata};
use telemetry_gateway_testkit::fake_bigquery::{FakeBigQuery, InsertReply};
use telemetry_gateway_testkit::fake_sentry::FakeSentry;
use telemetry_gateway_testkit::license::{LicenseKeyPair, LicenseSpec, SignatureFormat};

use support::{GatewayProcess, run_to_completion, send_held_payload};

/// The `ENVIRONMENT_ID` the gateways under test run with.
const ENVIRONMENT: &str = "sentry-test-environment";

/// How long a report may take to arrive.
const ARRIVAL: Duration = Duration::from_secs(30);

/// A gateway reporting to `sentry` whose only sink is `bigquery`.
fn start_gateway(
    bigquery: &FakeBigQuery,
    sentry: &FakeSentry,
    extra: &[(&str, &str)],
) -> GatewayProcess {
    let endpoint = bigquery.v2_base_url();
    let dsn = sentry.dsn();
    let mut env = vec![
        ("SENTRY_DSN", dsn.as_str()),
        ("ENVIRONMENT_ID", ENVIRONMENT),
        ("TELEMETRY_GATEWAY_EVENTS_SINKS", "bigquery"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID", "proj"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID", "telemetry"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID", "events"),
        (
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_ENDPOINT",
            endpoint.as_str(),
        ),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_WRITE_API", "insert_all"),
    ];
    env.extend_from_slice(extra);
    GatewayProcess::start(&env)
}

/// An event with its own feature and action, so the report can only have taken them from it.
fn event(id: &str, feature: &str, action: &str) -> Event {
    Event {
        feature: feature.into(),
        action: action.into(),
        ..simple_event(id)
    }
}

/// Sends `events` as one payload on a new stream and returns the responses.
async fn send(
    addr: SocketAddr,
    metadata: RecordEventsRequestMetadata,
    events: Vec<Event>,
) -> Vec<RecordEventsResponse> {
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    telemetry_gateway_testkit::record_events(
        &mut client,
        vec![metadata_message(metadata), events_message(events)],
    )
    .await
    .expect("the stream succeeds")
}

/// A received event payload, read as the Sentry protocol reads it (an absent level is `error`).
fn protocol_event(json: &Value) -> sentry::protocol::Event<'static> {
    serde_json::from_value(json.clone()).expect("a Sentry event")
}

fn tag<'a>(event: &'a sentry::protocol::Event<'static>, name: &str) -> Option<&'a str> {
    event.tags.get(name).map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_is_reported_with_its_feature_action_and_id() {
    let sentry = FakeSentry::start().await;
    let bigquery = FakeBigQuery::start().await;
    // A retryable row error: the event is not acknowledged, whoever sent it.
    bigquery.set_default_reply(InsertReply::row_errors(&[0], "backendError"));
    let keys = LicenseKeyPair::shared();
    let license_key = keys.mint(&LicenseSpec::default(), SignatureFormat::SshRsa);
    let public_key = keys.public_key_openssh();
    let mut gateway = start_gateway(
        &bigquery,
        &sentry,
        &[("TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY", &public_key)],
    );
    let started = gateway.wait_for("errors are reported to Sentry");
    assert_eq!(started["environment"], ENVIRONMENT);
    assert!(
        !started.to_string().contains("public@"),
        "the start-up line shows the DSN's key: {started}"
    );
    let addr = gateway.address();

    let responses = send(
        addr,
        licensed_metadata(&license_key),
        vec![event("evt-failed-1", "sentry.feature", "sentry.action")],
    )
    .await;
    assert_eq!(responses.len(), 1);
    assert!(responses[0].succeeded_events.is_empty(), "{responses:?}");
    let logged = gateway.wait_for(
        r#"failed to publish event: feature:"sentry.feature" action:"sentry.action" id:"evt-failed-1""#,
    );

    let received = sentry.wait_for_events(1, ARRIVAL).await;
    let event = protocol_event(&received[0]);
    assert_eq!(event.level, sentry::Level::Error);
    assert_eq!(event.environment.as_deref(), Some(ENVIRONMENT));
    assert_eq!(
        event.release.as_deref(),
        Some(telemetry_gateway::error_reporting::release().as_str())
    );
    assert_eq!(tag(&event, "event.feature"), Some("sentry.feature"));
    assert_eq!(tag(&event, "event.action"), Some("sentry.action"));
    assert_eq!(tag(&event, "event.id"), Some("evt-failed-1"));
    assert_eq!(tag(&event, "source"), Some("licensed_instance"));
    assert_eq!(logged["source"], "licensed_instance");
    let message = event.message.as_deref().unwrap_or_default();
    for part in [
        r#"feature:"sentry.feature""#,
        r#"action:"sentry.action""#,
        r#"id:"evt-failed-1""#,
    ] {
        assert!(message.contains(part), "{part} is not in {message:?}");
    }

    // Everything queued is sent before the process exits; none of it holds the license key.
    assert!(gateway.terminate().success());
    let envelopes = sentry.envelopes();
    assert!(!envelopes.is_empty());
    for envelope in envelopes {
        let body = String::from_utf8_lossy(&envelope.body);
        assert!(
            !body.contains(&license_key),
            "a report holds the license key: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_publish_is_not_reported() {
    let sentry = FakeSentry::start().await;
    let bigquery = FakeBigQuery::start().await;
    // The first insert never answers; every later one fails.
    bigquery.push_replies([InsertReply::Hang]);
    bigquery.set_default_reply(InsertReply::row_errors(&[0], "backendError"));
    let mut gateway = start_gateway(&bigquery, &sentry, &[]);
    let addr = gateway.address();

    let held = send_held_payload(
        addr,
        &bigquery,
        vec![event("evt-cancelled", "cancel.feature", "cancel.action")],
    )
    .await;
    // The sender goes away: its stream and connection are dropped.
    held.abort();
    assert!(held.await.is_err_and(|err| err.is_cancelled()));
    let cancelled = gateway.wait_for("all events in batch failed to submit");
    assert_eq!(cancelled["level"], "WARN");
    assert_eq!(
        cancelled["reason"],
        "context canceled: the sender went away"
    );
    gateway.wait_for("request done");

    // A failure after the cancellation: the transport sends in order, so once its report is in,
    // a report of the cancellation would be too.
    let responses = send(
        addr,
        unlicensed_metadata("failing"),
        vec![event("evt-failed-2", "later.feature", "later.action")],
    )
    .await;
    assert!(responses[0].succeeded_events.is_empty(), "{responses:?}");
    sentry.wait_for_events(1, ARRIVAL).await;
    // And everything still queued is sent before the process exits.
    assert!(gateway.terminate().success());

    let ids: Vec<Option<String>> = sentry
        .events()
        .iter()
        .map(|json| tag(&protocol_event(json), "event.id").map(str::to_string))
        .collect();
    assert_eq!(ids, [Some("evt-failed-2".to_string())]);
    for envelope in sentry.envelopes() {
        let body = String::from_utf8_lossy(&envelope.body);
        assert!(
            !body.contains("evt-cancelled") && !body.contains("cancel.feature"),
            "a report mentions the cancelled event: {body}"
        );
    }
}

#[test]
fn an_invalid_dsn_stops_the_gateway_naming_sentry_dsn_without_echoing_it() {
    let dsn = "not-a-dsn-secretkey";
    let output = run_to_completion(&[("SENTRY_DSN", dsn)], &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SENTRY_DSN"), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stderr.contains(dsn) && !stdout.contains(dsn),
        "the DSN is echoed:\n{stderr}\n{stdout}"
    );
}
