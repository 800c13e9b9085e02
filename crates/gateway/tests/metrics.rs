//! The metrics, end to end: the real binary gets known traffic, and `GET /metrics` must show
//! exactly the counts, sums, buckets and labels that traffic implies (`docs/metrics.md`).
//!
//! Latencies are never asserted, only how many were observed.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use telemetry_gateway_proto::v1::{Event, EventFeatureFlags, RecordEventRequest};
use telemetry_gateway_proto::v1::{RecordEventsRequest, RecordEventsRequestMetadata};
use telemetry_gateway_proto::{render_event, render_metadata};
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{
    licensed_metadata, managed_metadata, simple_event, simple_events, unlicensed_metadata,
};
use telemetry_gateway_testkit::fake_sams::{FakeSams, TokenGrant};
use telemetry_gateway_testkit::license::{LicenseKeyPair, LicenseSpec, SignatureFormat};

use support::exposition::Exposition;
use support::{GatewayProcess, with_sams};

/// The meter of the server's instruments: the original's.
const SERVER_SCOPE: &str = "cmd/telemetry-gateway/internal/server";
/// The meter of the sink instruments.
const SINK_SCOPE: &str = "telemetry-gateway/sink";

/// `telemetry-gateway.pubsub.published_message_size` bucket bounds (bytes).
const SIZE_BUCKETS: &[f64] = &[
    256.0,
    1024.0,
    4096.0,
    16_384.0,
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    10_000_000.0,
];
/// Bucket bounds of the event-count histograms (`total_length`, `payload_length`).
const COUNT_BUCKETS: &[f64] = &[
    0.0, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10_000.0,
];

// Multi-threaded: the test thread blocks on the gateway's log while the client must stay live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_traffic_is_counted_exactly() {
    let keys = LicenseKeyPair::shared();
    let public_key = keys.public_key_openssh();
    let mut gateway = GatewayProcess::start(&[
        ("TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY", public_key.as_str()),
        ("TELEMETRY_GATEWAY_MAX_INFLIGHT_BYTES", "100000000"),
        // The 10 MB event costs more than half of the budget's held part.
        ("TELEMETRY_GATEWAY_CONNECTION_SHARE_PERCENT", "100"),
    ]);
    let addr = gateway.address();
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");

    // Unlicensed: 3 valid events, then a valid one, an invalid one (acknowledged, dropped) and a
    // repeat of the valid one's ID (published and acknowledged once).
    let unlicensed = unlicensed_metadata("instance-metrics");
    let first = simple_events("u", 3);
    let mut invalid = simple_event("u-invalid");
    invalid.feature = "Not-A-Feature".into();
    let second = vec![simple_event("u-3"), invalid, simple_event("u-3")];
    let responses = send(
        &mut client,
        &unlicensed,
        vec![first.clone(), second.clone()],
    )
    .await
    .expect("the unlicensed stream succeeds");
    assert_eq!(
        acknowledged(&responses),
        [vec!["u-0", "u-1", "u-2"], vec!["u-3", "u-invalid"]]
    );

    // Licensed: an event of over 10 MB (acknowledged, dropped as oversized) and a valid one.
    let license = keys.mint(&LicenseSpec::default(), SignatureFormat::SshRsa);
    let licensed = licensed_metadata(&license);
    let huge = oversized_event("l-huge");
    let third = vec![huge, simple_event("l-0")];
    let responses = send(&mut client, &licensed, vec![third.clone()])
        .await
        .expect("the licensed stream succeeds");
    assert_eq!(acknowledged(&responses), [vec!["l-huge", "l-0"]]);

    // Refused: an unlicensed instance without an instance ID.
    let refused = send(
        &mut client,
        &unlicensed_metadata(""),
        vec![simple_events("x", 2)],
    )
    .await
    .expect_err("no instance ID");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // Refused: a managed service calling RecordEvent on a gateway without SAMS.
    let refused = client
        .record_event(RecordEventRequest {
            metadata: Some(managed_metadata("some-service")),
            event: Some(simple_event("m-0")),
        })
        .await
        .expect_err("SAMS is not configured");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let metrics = scrape_when_idle(addr).await;

    // Every server sample carries the original's meter name, every sink sample the sink's.
    for sample in &metrics.samples {
        let scope = sample.labels.get("otel_scope_name").map(String::as_str);
        if sample.name.starts_with("telemetry_gateway_sink_") {
            assert_eq!(scope, Some(SINK_SCOPE), "{sample:?}");
        } else if sample.name.starts_with("telemetry_gateway_") {
            assert_eq!(scope, Some(SERVER_SCOPE), "{sample:?}");
        }
    }

    let mut total_length = histogram(
        "telemetry_gateway_record_events_total_length",
        &[("error", "false"), ("source", "unlicensed_instance")],
        COUNT_BUCKETS,
        &[6],
    );
    total_length.extend(histogram(
        "telemetry_gateway_record_events_total_length",
        &[("error", "false"), ("source", "licensed_instance")],
        COUNT_BUCKETS,
        &[2],
    ));
    // A refused stream has no source yet: it is counted as "invalid", with no events.
    total_length.extend(histogram(
        "telemetry_gateway_record_events_total_length",
        &[("error", "true"), ("source", "invalid")],
        COUNT_BUCKETS,
        &[0],
    ));
    metrics.assert_histogram(
        "telemetry_gateway_record_events_total_length",
        &total_length,
    );

    let mut payload_length = histogram(
        "telemetry_gateway_record_events_payload_length",
        &[("result", "success"), ("source", "unlicensed_instance")],
        COUNT_BUCKETS,
        &[3, 3],
    );
    payload_length.extend(histogram(
        "telemetry_gateway_record_events_payload_length",
        &[("result", "success"), ("source", "licensed_instance")],
        COUNT_BUCKETS,
        &[2],
    ));
    metrics.assert_histogram(
        "telemetry_gateway_record_events_payload_length",
        &payload_length,
    );

    // Twice per payload (`docs/compatibility.md` §8): the acknowledged count (dropped events
    // included) and the failed count, zero here.
    metrics.assert_family(
        "telemetry_gateway_record_events_processed_events_total",
        &[
            (
                r#"result="success",source="licensed_instance",succeeded="false""#,
                0.0,
            ),
            (
                r#"result="success",source="licensed_instance",succeeded="true""#,
                2.0,
            ),
            (
                r#"result="success",source="unlicensed_instance",succeeded="false""#,
                0.0,
            ),
            (
                r#"result="success",source="unlicensed_instance",succeeded="true""#,
                5.0,
            ),
        ],
    );
    metrics.assert_family(
        "telemetry_gateway_events_dropped_total",
        &[
            (r#"reason="invalid",source="unlicensed_instance""#, 1.0),
            (r#"reason="oversized",source="licensed_instance""#, 1.0),
        ],
    );
    metrics.assert_family(
        "telemetry_gateway_auth_failures_total",
        &[
            (r#"reason="managed_auth_not_configured""#, 1.0),
            (r#"reason="missing_instance_id""#, 1.0),
        ],
    );
    metrics.assert_family("telemetry_gateway_record_events_open_streams", &[("", 0.0)]);
    metrics.assert_family("telemetry_gateway_inflight_used_bytes", &[("", 0.0)]);
    metrics.assert_family("telemetry_gateway_inflight_limit_bytes", &[("", 1e8)]);
    // The unary call was refused before it counted as processed.
    metrics.assert_absent("telemetry_gateway_record_event_processed_events_total");
    metrics.assert_absent("telemetry_gateway_payloads_refused_total");

    // One size per rendered event: the duplicate and the invalid event are never rendered, the
    // oversized one is measured before it is dropped.
    let sizes: Vec<u64> = [&first[..], &second[..1]]
        .concat()
        .iter()
        .map(|event| message_size(event, &unlicensed))
        .chain(third.iter().map(|event| message_size(event, &licensed)))
        .collect();
    assert!(sizes[3] < 1024 && sizes[4] >= 10_000_000, "{sizes:?}");
    metrics.assert_histogram(
        "telemetry_gateway_pubsub_published_message_size_bytes",
        &histogram(
            "telemetry_gateway_pubsub_published_message_size_bytes",
            &[],
            SIZE_BUCKETS,
            &sizes,
        ),
    );
    // Cross-check of the expected sizes: each file line is one delivered message, byte for byte.
    let mut delivered = delivered_message_sizes(&gateway);
    delivered.sort_unstable();
    let mut expected: Vec<u64> = sizes.iter().copied().filter(|&s| s < 10_000_000).collect();
    expected.sort_unstable();
    assert_eq!(delivered, expected);

    metrics.assert_family(
        "telemetry_gateway_sink_events_total",
        &[(r#"outcome="delivered",sink="file""#, 5.0)],
    );
    // Three publishes: one per payload with something to publish.
    metrics.assert_family(
        "telemetry_gateway_sink_publish_duration_seconds_count",
        &[(r#"sink="file""#, 3.0)],
    );

    let target = metrics.only("target_info");
    assert_eq!(target.labels["service_name"], "telemetry-gateway");
    assert_eq!(
        target.labels["service_version"],
        telemetry_gateway::version::version()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_service_failures_are_counted_as_failed() {
    let sams = FakeSams::start().await;
    sams.grant("svc-token", TokenGrant::events_writer());
    let url = sams.url();
    let mut gateway = GatewayProcess::start(&with_sams(&url, &[]));
    let addr = gateway.address();
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    let managed = managed_metadata("svc-a");

    // A valid and an invalid event (failed: managed services are told the truth), then only an
    // invalid one, then nothing.
    let mut invalid = simple_event("m-1");
    invalid.action = String::new();
    let mut invalid_again = simple_event("m-2");
    invalid_again.timestamp = None;
    let payloads = vec![
        vec![simple_event("m-0"), invalid],
        vec![invalid_again],
        vec![],
    ];
    let mut request = tonic::Request::new(tokio_stream::iter(messages(&managed, payloads)));
    authorize(request.metadata_mut(), "svc-token");
    let responses = telemetry_gateway_testkit::client::record_events_with(&mut client, request)
        .await
        .expect("the managed stream succeeds");
    assert_eq!(
        acknowledged(&responses),
        [vec!["m-0"], Vec::<&str>::new(), vec![]]
    );

    // Unary: one delivered, one oversized (dropped, reported as success: `docs/compatibility.md`
    // §3), one invalid (refused, and counted nowhere), one with a bad token.
    let unary = |event: Event, token: &str| {
        let mut request = tonic::Request::new(RecordEventRequest {
            metadata: Some(managed.clone()),
            event: Some(event),
        });
        authorize(request.metadata_mut(), token);
        request
    };
    client
        .record_event(unary(simple_event("m-3"), "svc-token"))
        .await
        .expect("delivered");
    client
        .record_event(unary(oversized_event("m-huge"), "svc-token"))
        .await
        .expect("dropped, reported as success");
    let mut invalid = simple_event("m-4");
    invalid.feature = "UPPER".into();
    let refused = client
        .record_event(unary(invalid, "svc-token"))
        .await
        .expect_err("invalid");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let refused = client
        .record_event(unary(simple_event("m-5"), "unknown-token"))
        .await
        .expect_err("unknown token");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    let metrics = scrape_when_idle(addr).await;

    metrics.assert_histogram(
        "telemetry_gateway_record_events_total_length",
        &histogram(
            "telemetry_gateway_record_events_total_length",
            &[("error", "false"), ("source", "svc-a")],
            COUNT_BUCKETS,
            &[3],
        ),
    );
    let name = "telemetry_gateway_record_events_payload_length";
    let mut payload_length = histogram(
        name,
        &[("result", "partial_failure"), ("source", "svc-a")],
        COUNT_BUCKETS,
        &[2],
    );
    payload_length.extend(histogram(
        name,
        &[("result", "complete_failure"), ("source", "svc-a")],
        COUNT_BUCKETS,
        &[1],
    ));
    // Ours: an empty payload is a success (the original calls it a complete failure).
    payload_length.extend(histogram(
        name,
        &[("result", "success"), ("source", "svc-a")],
        COUNT_BUCKETS,
        &[0],
    ));
    metrics.assert_histogram(name, &payload_length);
    metrics.assert_family(
        "telemetry_gateway_record_events_processed_events_total",
        &[
            (
                r#"result="complete_failure",source="svc-a",succeeded="false""#,
                1.0,
            ),
            (
                r#"result="complete_failure",source="svc-a",succeeded="true""#,
                0.0,
            ),
            (
                r#"result="partial_failure",source="svc-a",succeeded="false""#,
                1.0,
            ),
            (
                r#"result="partial_failure",source="svc-a",succeeded="true""#,
                1.0,
            ),
            (r#"result="success",source="svc-a",succeeded="false""#, 0.0),
            (r#"result="success",source="svc-a",succeeded="true""#, 0.0),
        ],
    );
    // Invalid events of managed services are failures, not drops.
    metrics.assert_family(
        "telemetry_gateway_events_dropped_total",
        &[(r#"reason="oversized",source="svc-a""#, 1.0)],
    );
    metrics.assert_family(
        "telemetry_gateway_record_event_processed_events_total",
        &[
            (r#"error="false",source="svc-a""#, 2.0),
            (r#"error="true",source="svc-a""#, 1.0),
        ],
    );
    metrics.assert_family(
        "telemetry_gateway_auth_failures_total",
        &[(r#"reason="permission_denied""#, 1.0)],
    );
    // m-0, m-3 and the oversized m-huge, measured before it was dropped.
    metrics.assert_family(
        "telemetry_gateway_pubsub_published_message_size_bytes_count",
        &[("", 3.0)],
    );
    metrics.assert_family(
        "telemetry_gateway_sink_events_total",
        &[(r#"outcome="delivered",sink="file""#, 2.0)],
    );
    metrics.assert_family(
        "telemetry_gateway_sink_publish_duration_seconds_count",
        &[(r#"sink="file""#, 2.0)],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_over_the_rate_limit_are_counted_as_refused() {
    let mut gateway = GatewayProcess::start(&[
        ("TELEMETRY_GATEWAY_RATE_LIMIT_EVENTS_PER_SECOND", "1"),
        ("TELEMETRY_GATEWAY_RATE_LIMIT_BURST", "10"),
    ]);
    let addr = gateway.address();
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");

    // The burst allows the first payload; the second would need ten more seconds.
    let refused = send(
        &mut client,
        &unlicensed_metadata("instance-limited"),
        vec![simple_events("r", 10), simple_events("s", 10)],
    )
    .await
    .expect_err("over the rate limit");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);

    let metrics = scrape_when_idle(addr).await;
    metrics.assert_family(
        "telemetry_gateway_payloads_refused_total",
        &[(r#"reason="rate_limit""#, 1.0)],
    );
    // The refused payload is in neither the stream's total nor a payload's length.
    metrics.assert_histogram(
        "telemetry_gateway_record_events_total_length",
        &histogram(
            "telemetry_gateway_record_events_total_length",
            &[("error", "true"), ("source", "unlicensed_instance")],
            COUNT_BUCKETS,
            &[10],
        ),
    );
    metrics.assert_histogram(
        "telemetry_gateway_record_events_payload_length",
        &histogram(
            "telemetry_gateway_record_events_payload_length",
            &[("result", "success"), ("source", "unlicensed_instance")],
            COUNT_BUCKETS,
            &[10],
        ),
    );
    metrics.assert_family(
        "telemetry_gateway_record_events_processed_events_total",
        &[
            (
                r#"result="success",source="unlicensed_instance",succeeded="false""#,
                0.0,
            ),
            (
                r#"result="success",source="unlicensed_instance",succeeded="true""#,
                10.0,
            ),
        ],
    );
    metrics.assert_family(
        "telemetry_gateway_sink_events_total",
        &[(r#"outcome="delivered",sink="file""#, 10.0)],
    );
    metrics.assert_absent("telemetry_gateway_auth_failures_total");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_over_the_memory_budget_are_counted_as_refused() {
    // A managed service's stream holds its metadata's cost while SAMS is slow to answer; the
    // budget's held part (three quarters of it) cannot fit another sender's metadata beside it.
    let cost = telemetry_gateway_server::budget::request_cost(
        &telemetry_gateway_testkit::client::metadata_message(managed_metadata("svc-slow")),
        0,
    )
    .expect("a valid message");
    // Room for the other sender's metadata only while the holder holds nothing.
    let other = telemetry_gateway_server::budget::request_cost(
        &telemetry_gateway_testkit::client::metadata_message(unlicensed_metadata(
            "instance-waiting",
        )),
        0,
    )
    .expect("a valid message");
    let held_part = cost.max(other);
    let budget = 4 * ((held_part - held_part % 3) / 3) + held_part % 3;
    let budget_text = budget.to_string();
    let sams = FakeSams::start().await;
    sams.grant("svc-token", TokenGrant::events_writer());
    sams.delay_introspection(Duration::from_secs(60));
    let url = sams.url();
    let mut gateway = GatewayProcess::start(&with_sams(
        &url,
        &[
            ("TELEMETRY_GATEWAY_MAX_INFLIGHT_BYTES", &budget_text),
            ("TELEMETRY_GATEWAY_INFLIGHT_WAIT", "100ms"),
            ("TELEMETRY_GATEWAY_CONNECTION_SHARE_PERCENT", "100"),
        ],
    ));
    let addr = gateway.address();
    let client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");

    let mut holder = client.clone();
    let mut request = tonic::Request::new(tokio_stream::iter(messages(
        &managed_metadata("svc-slow"),
        Vec::new(),
    )));
    authorize(request.metadata_mut(), "svc-token");
    let holding = tokio::spawn(async move {
        telemetry_gateway_testkit::client::record_events_with(&mut holder, request).await
    });
    let held = scrape_until(addr, |metrics| {
        metrics.family("telemetry_gateway_inflight_used_bytes")
            == BTreeMap::from([(String::new(), cost as f64)])
    })
    .await;
    held.assert_family(
        "telemetry_gateway_inflight_used_bytes",
        &[("", cost as f64)],
    );
    held.assert_family(
        "telemetry_gateway_inflight_limit_bytes",
        &[("", budget as f64)],
    );

    // Another connection: the holder's may not take more than it holds.
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    let refused = send(
        &mut client,
        &unlicensed_metadata("instance-waiting"),
        vec![simple_events("w", 1)],
    )
    .await
    .expect_err("no room in the budget");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    // The slow stream's sender gives up: canceled, which is not an authentication failure.
    holding.abort();

    let metrics = scrape_when_idle(addr).await;
    metrics.assert_family(
        "telemetry_gateway_payloads_refused_total",
        &[(r#"reason="memory_budget""#, 1.0)],
    );
    metrics.assert_family("telemetry_gateway_inflight_used_bytes", &[("", 0.0)]);
    // Neither stream got as far as a source.
    metrics.assert_histogram(
        "telemetry_gateway_record_events_total_length",
        &histogram(
            "telemetry_gateway_record_events_total_length",
            &[("error", "true"), ("source", "invalid")],
            COUNT_BUCKETS,
            &[0, 0],
        ),
    );
    metrics.assert_absent("telemetry_gateway_auth_failures_total");
    metrics.assert_absent("telemetry_gateway_record_events_payload_length");
}

#[tokio::test]
async fn no_metrics_endpoint_on_msp() {
    let mut gateway = GatewayProcess::start(&[("MSP", "true")]);
    let addr = gateway.address();
    let metrics = telemetry_gateway_testkit::http::get(addr, "/metrics", None)
        .await
        .expect("served");
    assert_eq!(metrics.status, 404);
    gateway
        .wait_for("MSP=true and OTEL_EXPORTER_OTLP_ENDPOINT is not set: metrics are not exported");
    assert!(gateway.terminate().success());
    // The container image's start: MSP without an OTLP endpoint logs no error.
    let errors: Vec<_> = gateway
        .lines()
        .into_iter()
        .filter(|line| line["level"] == "ERROR")
        .collect();
    assert!(errors.is_empty(), "errors at an MSP start: {errors:?}");
}

#[tokio::test]
async fn no_metrics_endpoint_with_the_sdk_disabled() {
    let mut gateway = GatewayProcess::start(&[("OTEL_SDK_DISABLED", "true")]);
    let addr = gateway.address();
    let metrics = telemetry_gateway_testkit::http::get(addr, "/metrics", None)
        .await
        .expect("served");
    assert_eq!(metrics.status, 404);
}

/// `docs/metrics.md` lists exactly the instruments the code builds (the tests above check each
/// Prometheus name it gives against a real exposition).
#[test]
fn the_documentation_lists_every_instrument() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let read = |path: &str| std::fs::read_to_string(root.join(path)).expect(path);
    let mut built: Vec<String> = [
        "crates/server/src/metrics.rs",
        "crates/sink/src/measured.rs",
        "crates/sink/src/pubsub.rs",
    ]
    .iter()
    .flat_map(|path| {
        read(path)
            .split("(\"telemetry-gateway.")
            .skip(1)
            .map(|rest| {
                format!(
                    "telemetry-gateway.{}",
                    &rest[..rest.find('"').expect("quoted")]
                )
            })
            .collect::<Vec<_>>()
    })
    .collect();
    built.sort();
    let mut documented: Vec<String> = read("docs/metrics.md")
        .lines()
        .filter_map(|line| line.strip_prefix("| `telemetry-gateway."))
        .map(|rest| {
            format!(
                "telemetry-gateway.{}",
                &rest[..rest.find('`').expect("quoted")]
            )
        })
        .collect();
    documented.sort();
    assert!(!built.is_empty(), "no instruments found in the sources");
    assert_eq!(documented, built);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_authenticated_service_ids_become_labels_and_only_a_hundred_of_them() {
    let sams = FakeSams::start().await;
    sams.grant("svc-token", TokenGrant::events_writer());
    let url = sams.url();
    let mut gateway = GatewayProcess::start(&with_sams(&url, &[]));
    let addr = gateway.address();
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    let stream = |service: &str, token: &str| {
        let metadata = managed_metadata(service);
        let mut request = tonic::Request::new(tokio_stream::iter(messages(
            &metadata,
            vec![vec![simple_event("e")]],
        )));
        authorize(request.metadata_mut(), token);
        request
    };

    // A refused token: its self-declared service ID is nowhere.
    let refused = telemetry_gateway_testkit::client::record_events_with(
        &mut client,
        stream("unauthenticated-svc", "made-up-token"),
    )
    .await
    .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // 101 authenticated services: the last is counted as `other`.
    for i in 0..=100 {
        telemetry_gateway_testkit::client::record_events_with(
            &mut client,
            stream(&format!("svc-{i}"), "svc-token"),
        )
        .await
        .expect("accepted");
    }
    let metrics = scrape_when_idle(addr).await;
    let sources: std::collections::BTreeSet<String> = metrics
        .samples
        .iter()
        .filter_map(|sample| sample.labels.get("source").cloned())
        .collect();
    assert!(!sources.contains("unauthenticated-svc"), "{sources:?}");
    assert!(
        sources.contains("svc-0") && sources.contains("svc-99"),
        "{sources:?}"
    );
    assert!(!sources.contains("svc-100"), "{sources:?}");
    assert!(sources.contains("other"), "{sources:?}");
}

/// Sends `payloads` on one stream opened with `metadata`.
async fn send(
    client: &mut telemetry_gateway_proto::v1::telemetery_gateway_service_client::TelemeteryGatewayServiceClient<
        tonic::transport::Channel,
    >,
    metadata: &RecordEventsRequestMetadata,
    payloads: Vec<Vec<Event>>,
) -> Result<Vec<telemetry_gateway_proto::v1::RecordEventsResponse>, tonic::Status> {
    telemetry_gateway_testkit::record_events(client, messages(metadata, payloads)).await
}

fn messages(
    metadata: &RecordEventsRequestMetadata,
    payloads: Vec<Vec<Event>>,
) -> Vec<RecordEventsRequest> {
    std::iter::once(metadata_message(metadata.clone()))
        .chain(payloads.into_iter().map(events_message))
        .collect()
}

fn acknowledged(responses: &[telemetry_gateway_proto::v1::RecordEventsResponse]) -> Vec<Vec<&str>> {
    responses
        .iter()
        .map(|r| r.succeeded_events.iter().map(String::as_str).collect())
        .collect()
}

fn authorize(metadata: &mut tonic::metadata::MetadataMap, token: &str) {
    let value = format!("Bearer {token}").parse().expect("ASCII");
    metadata.insert("authorization", value);
}

/// A valid event whose published message is over 10 MB.
fn oversized_event(id: &str) -> Event {
    let mut event = simple_event(id);
    event.feature_flags = Some(EventFeatureFlags {
        flags: BTreeMap::from([("padding".to_string(), "x".repeat(10_000_000))]),
    });
    event
}

/// The size of `event`'s published message: `{"event":…,"metadata":…}`.
fn message_size(event: &Event, metadata: &RecordEventsRequestMetadata) -> u64 {
    let mut event_json = Vec::new();
    render_event(event, &mut event_json).expect("renders");
    let mut metadata_json = Vec::new();
    render_metadata(metadata, &mut metadata_json);
    (event_json.len() + metadata_json.len() + r#"{"event":,"metadata":}"#.len()) as u64
}

/// The length of every line the file sink wrote (without the newline).
fn delivered_message_sizes(gateway: &GatewayProcess) -> Vec<u64> {
    let dir = gateway.dir().join("data/events");
    std::fs::read_dir(dir)
        .expect("the file sink wrote")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson"))
        .map(|path| std::fs::read(path).expect("readable"))
        .flat_map(|bytes| {
            bytes
                .split(|&b| b == b'\n')
                .filter(|line| !line.is_empty())
                .map(|line| line.len() as u64)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `/metrics` once every stream has ended and its payloads are released: a refused stream's
/// task may still be winding down when its error reaches the client.
async fn scrape_when_idle(addr: SocketAddr) -> Exposition {
    scrape_until(addr, |metrics| {
        [
            "telemetry_gateway_record_events_open_streams",
            "telemetry_gateway_inflight_used_bytes",
        ]
        .iter()
        .all(|name| metrics.family(name).values().all(|v| *v == 0.0))
    })
    .await
}

/// `/metrics` once `ready` holds of it, or after 10 s (the caller's assertions then fail).
async fn scrape_until(addr: SocketAddr, ready: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = telemetry_gateway_testkit::http::get(addr, "/metrics", None)
            .await
            .expect("served");
        assert_eq!(response.status, 200, "{}", response.body);
        let metrics = Exposition::parse(&response.body);
        if ready(&metrics) || Instant::now() > deadline {
            return metrics;
        }
        // A polling interval, not an assertion: the loop ends on the condition above.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The expected samples of a histogram family with `labels` after `observations`: cumulative
/// buckets, `_sum` and `_count`.
fn histogram(
    name: &str,
    labels: &[(&str, &str)],
    bounds: &[f64],
    observations: &[u64],
) -> Vec<(String, f64)> {
    let base: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    let with = |extra: Option<String>| {
        let mut all = base.clone();
        all.extend(extra);
        all.sort();
        all.join(",")
    };
    let mut samples = Vec::new();
    for bound in bounds {
        let count = observations.iter().filter(|&&o| o as f64 <= *bound).count();
        samples.push((
            format!("{name}_bucket{{{}}}", with(Some(format!("le=\"{bound}\"")))),
            count as f64,
        ));
    }
    samples.push((
        format!("{name}_bucket{{{}}}", with(Some("le=\"+Inf\"".into()))),
        observations.len() as f64,
    ));
    samples.push((
        format!("{name}_sum{{{}}}", with(None)),
        observations.iter().sum::<u64>() as f64,
    ));
    samples.push((
        format!("{name}_count{{{}}}", with(None)),
        observations.len() as f64,
    ));
    samples
}
