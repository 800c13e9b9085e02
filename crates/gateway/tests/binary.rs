//! The real `telemetry-gateway` binary, started with no configuration, as a user would.

mod support;

use std::path::Path;

use telemetry_gateway_proto::json::to_canonical_json;
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{simple_events, unlicensed_metadata};

use support::{GatewayProcess, run_to_completion as run, with_sams};

// Multi-threaded: `terminate` blocks this thread while the client connection must stay
// responsive to the server's graceful GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_configuration_events_land_in_the_file_sink() {
    // Only PORT=0 (the harness's default), so that tests never collide with a gateway already
    // on 10085.
    let mut gateway = GatewayProcess::start(&[]);
    let addr = gateway.address();
    let destination =
        gateway.wait_for("events go to NDJSON files under ./data/events (rotated at 128 MiB)");
    assert_eq!(destination["sink"], "file");

    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    let metadata = unlicensed_metadata("instance-e2e");
    let payloads: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|p| simple_events(p, 100))
        .collect();
    let mut messages = vec![metadata_message(metadata.clone())];
    messages.extend(payloads.iter().cloned().map(events_message));
    let responses = telemetry_gateway_testkit::record_events(&mut client, messages)
        .await
        .expect("the stream succeeds");
    assert_eq!(responses.len(), 3);
    for (response, payload) in responses.iter().zip(&payloads) {
        let sent: Vec<&str> = payload.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(response.succeeded_events, sent);
    }

    // Every acknowledged event is on disk, once, as the exact expected JSON.
    let lines = gateway.file_sink_lines();
    assert_eq!(lines.len(), 300);
    let metadata_json: serde_json::Value =
        serde_json::from_str(&to_canonical_json(&metadata).expect("renders")).expect("JSON");
    for (line, event) in lines.iter().zip(payloads.iter().flatten()) {
        let expected = serde_json::json!({
            "event": serde_json::from_str::<serde_json::Value>(&to_canonical_json(event).expect("renders")).expect("JSON"),
            "metadata": metadata_json,
        });
        assert_eq!(line["event"]["id"], event.id);
        assert_eq!(line["metadata"], expected["metadata"]);
        assert_eq!(line["event"]["parameters"]["metadata"]["latency"], 12);
        assert_eq!(line["event"]["timestamp"], expected["event"]["timestamp"]);
        assert_eq!(line["event"]["source"], expected["event"]["source"]);
    }

    let status = gateway.terminate();
    assert!(
        status.success(),
        "SIGTERM stops the gateway cleanly: {status:?}"
    );
    gateway.wait_for("telemetry gateway stopped");
}

#[tokio::test]
async fn diagnostics_are_served_on_the_grpc_port() {
    let mut gateway = GatewayProcess::start(&[("DIAGNOSTICS_SECRET", "hush")]);
    let addr = gateway.address();
    let version = telemetry_gateway_testkit::http::get(addr, "/-/version", None)
        .await
        .expect("served");
    assert_eq!(
        (version.status, version.body.as_str()),
        (200, telemetry_gateway::version::version())
    );
    let health = telemetry_gateway_testkit::http::get(addr, "/-/healthz", Some("Bearer hush"))
        .await
        .expect("served");
    assert_eq!((health.status, health.body.as_str()), (200, "healthz: ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_services_are_checked_at_the_configured_sams() {
    use telemetry_gateway_testkit::client::managed_event_request;
    use telemetry_gateway_testkit::events::simple_event;
    use telemetry_gateway_testkit::fake_sams::{FakeSams, TokenGrant};

    let sams = FakeSams::start().await;
    sams.grant("svc-token", TokenGrant::events_writer());
    let url = sams.url();
    // The server URL overrides SAMS_URL, which points nowhere.
    let mut gateway =
        GatewayProcess::start(&with_sams(&url, &[("SAMS_URL", "http://127.0.0.1:1")]));
    let addr = gateway.address();
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    let call = |token: &str, id: &str| managed_event_request("my-service", simple_event(id), token);
    client
        .record_event(call("svc-token", "managed-1"))
        .await
        .expect("a valid token is accepted");
    let refused = client
        .record_event(call("unknown-token", "managed-2"))
        .await
        .expect_err("an unknown token is refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert_eq!(refused.message(), "permission denied");
    assert_eq!((sams.token_calls(), sams.introspection_calls()), (1, 2));
}

#[test]
fn help_lists_every_setting() {
    let output = run(&[], &["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for variable in [
        "PORT",
        "TELEMETRY_GATEWAY_LISTEN_ADDRESS",
        "DIAGNOSTICS_SECRET",
        "TELEMETRY_GATEWAY_GRPC_MAX_RECEIVE_MESSAGE_BYTES",
        "MSP",
        "ENVIRONMENT_ID",
        "SRC_LOG_LEVEL",
        "SRC_LOG_FORMAT",
        "TELEMETRY_GATEWAY_EVENTS_SINKS",
        "TELEMETRY_GATEWAY_EVENTS_PUBSUB_ENABLED",
        "TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID",
        "TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC_ID",
        "TELEMETRY_GATEWAY_EVENTS_STREAM_PUBLISH_CONCURRENCY",
        "TELEMETRY_GATEWAY_EVENTS_PUBSUB_PUBLISH_TIMEOUT_SECONDS",
        "PUBSUB_EMULATOR_HOST",
        "TELEMETRY_GATEWAY_EVENTS_FILE_DIR",
        "TELEMETRY_GATEWAY_EVENTS_FILE_MAX_BYTES",
        "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID",
        "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID",
        "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID",
        "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_ENDPOINT",
        "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_REQUEST_TIMEOUT_SECONDS",
        "TELEMETRY_GATEWAY_EVENTS_FINGERPRINT_LICENSE_KEYS",
        "TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY",
        "SOURCEGRAPH_LICENSE_GENERATION_KEY",
        "TELEMETRY_GATEWAY_LICENSE_REJECT_EXPIRED",
        "TELEMETRY_GATEWAY_LICENSE_ENFORCE_EXPORT_TAGS",
        "SAMS_URL",
        "TELEMETRY_GATEWAY_SAMS_SERVER_URL",
        "TELEMETRY_GATEWAY_SAMS_CLIENT_ID",
        "TELEMETRY_GATEWAY_SAMS_CLIENT_SECRET",
        "SANITY_CHECK",
        "TELEMETRY_GATEWAY_SHUTDOWN_TIMEOUT",
        "TELEMETRY_GATEWAY_MAX_INFLIGHT_BYTES",
        "TELEMETRY_GATEWAY_INFLIGHT_WAIT",
        "TELEMETRY_GATEWAY_MAX_EVENTS_PER_PAYLOAD",
        "TELEMETRY_GATEWAY_MAX_METADATA_BYTES",
        "TELEMETRY_GATEWAY_MAX_LICENSE_KEY_BYTES",
        "TELEMETRY_GATEWAY_STREAM_LIFETIME",
        "TELEMETRY_GATEWAY_STREAM_IDLE_TIMEOUT",
        "TELEMETRY_GATEWAY_MIN_RECEIVE_BYTES_PER_SECOND",
        "TELEMETRY_GATEWAY_RECEIVE_GRACE",
        "TELEMETRY_GATEWAY_MAX_STREAMS_PER_CONNECTION",
        "TELEMETRY_GATEWAY_CONNECTION_SHARE_PERCENT",
        "TELEMETRY_GATEWAY_RATE_LIMIT_EVENTS_PER_SECOND",
        "TELEMETRY_GATEWAY_RATE_LIMIT_BURST",
        "OTEL_SDK_DISABLED",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "SENTRY_DSN",
    ] {
        assert!(
            help.contains(&format!("[env: {variable}")),
            "--help misses {variable}:\n{help}"
        );
    }
    assert!(help.contains("[default: 10085]"));
}

#[test]
fn sanity_check_prints_the_original_line_and_exits() {
    let output = run(&[("SANITY_CHECK", "true")], &[]);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "Sanity check passed, exiting without error"
    );
}

#[test]
fn inconsistent_configuration_fails_at_start_naming_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("TELEMETRY_GATEWAY_EVENTS_PUBSUB_ENABLED", "true")],
            "TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID: required by the pubsub sink",
        ),
        (
            &[("TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID", "project")],
            "TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC_ID: required by the pubsub sink",
        ),
        (
            &[
                ("TELEMETRY_GATEWAY_EVENTS_SINKS", "file,pubsub"),
                ("TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC_ID", "events"),
            ],
            "TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID: required by the pubsub sink",
        ),
        (
            &[
                ("TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY", "ssh-rsa AAAA"),
                ("SOURCEGRAPH_LICENSE_GENERATION_KEY", "pem"),
            ],
            "TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY and SOURCEGRAPH_LICENSE_GENERATION_KEY are both set",
        ),
        (
            &[("TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY", "not a key")],
            "TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY",
        ),
        (
            &[(
                "SOURCEGRAPH_LICENSE_GENERATION_KEY",
                "-----BEGIN NOTHING-----",
            )],
            "SOURCEGRAPH_LICENSE_GENERATION_KEY",
        ),
        (&[("PORT", "not-a-port")], "PORT"),
        (
            &[("TELEMETRY_GATEWAY_EVENTS_SINKS", "file,kafka")],
            "TELEMETRY_GATEWAY_EVENTS_SINKS",
        ),
        (
            &[("TELEMETRY_GATEWAY_EVENTS_FILE_MAX_BYTES", "0")],
            "TELEMETRY_GATEWAY_EVENTS_FILE_MAX_BYTES",
        ),
        (
            &[("TELEMETRY_GATEWAY_SAMS_CLIENT_ID", "sams_cid_x")],
            "TELEMETRY_GATEWAY_SAMS_CLIENT_SECRET: required when TELEMETRY_GATEWAY_SAMS_CLIENT_ID is set",
        ),
        (
            &[("TELEMETRY_GATEWAY_SAMS_CLIENT_SECRET", "secret")],
            "TELEMETRY_GATEWAY_SAMS_CLIENT_ID: required when TELEMETRY_GATEWAY_SAMS_CLIENT_SECRET is set",
        ),
        (
            &[
                ("TELEMETRY_GATEWAY_SAMS_CLIENT_ID", "sams_cid_x"),
                ("TELEMETRY_GATEWAY_SAMS_CLIENT_SECRET", "secret"),
                ("TELEMETRY_GATEWAY_SAMS_SERVER_URL", "not a url"),
            ],
            "TELEMETRY_GATEWAY_SAMS_SERVER_URL",
        ),
    ];
    for (env, expected) in cases {
        let mut env = env.to_vec();
        env.push((
            "PORT",
            env.iter()
                .find(|(k, _)| *k == "PORT")
                .map_or("0", |(_, v)| v),
        ));
        let output = run(&env, &[]);
        assert!(!output.status.success(), "{env:?} must not start");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expected),
            "{env:?}: stderr lacks {expected:?}:\n{stderr}"
        );
    }
}

#[test]
fn the_configuration_reference_is_current() {
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .expect("docs/configuration.md exists");
    assert_eq!(
        committed,
        telemetry_gateway::config_docs::render(),
        "docs/configuration.md is stale: run `cargo xtask docs`"
    );
}
