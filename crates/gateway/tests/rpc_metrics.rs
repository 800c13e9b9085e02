//! The standard gRPC server metrics and the process metrics at `GET /metrics` of the real
//! binary, under the names Prometheus users know (go-grpc-prometheus, Prometheus client
//! libraries), and `docs/metrics.md` listing exactly the gRPC instruments the code builds.

mod support;

use telemetry_gateway_proto::v1::RecordEventRequest;
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{simple_event, simple_events, unlicensed_metadata};
use telemetry_gateway_testkit::http::get;

use support::GatewayProcess;

const SERVICE: &str = "telemetrygateway.v1.TelemeteryGatewayService";

/// The value of the sample of `name` whose labels include `labels`.
fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(key, value)| label_text.contains(&format!("{key}=\"{value}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_are_counted_per_method_and_code_and_process_metrics_are_served() {
    let mut gateway = GatewayProcess::start(&[]);
    let addr = gateway.address();
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    // One stream: metadata and two payloads in, two responses out, OK.
    telemetry_gateway_testkit::record_events(
        &mut client,
        vec![
            metadata_message(unlicensed_metadata("metered")),
            events_message(simple_events("a", 2)),
            events_message(simple_events("b", 1)),
        ],
    )
    .await
    .expect("the stream succeeds");
    // One unary call from an instance: Unimplemented, nothing sent back.
    let refused = client
        .record_event(RecordEventRequest {
            metadata: Some(unlicensed_metadata("metered")),
            event: Some(simple_event("u")),
        })
        .await
        .expect_err("instances may not use RecordEvent");
    assert_eq!(refused.code(), tonic::Code::Unimplemented);

    let metrics = get(addr, "/metrics", None).await.expect("served");
    assert_eq!(metrics.status, 200);
    let text = metrics.body;
    let stream = [
        ("grpc_type", "bidi_stream"),
        ("grpc_service", SERVICE),
        ("grpc_method", "RecordEvents"),
    ];
    let unary = [
        ("grpc_type", "unary"),
        ("grpc_service", SERVICE),
        ("grpc_method", "RecordEvent"),
    ];
    let with = |labels: &[(&'static str, &'static str)], more: (&'static str, &'static str)| {
        let mut labels = labels.to_vec();
        labels.push(more);
        labels
    };
    for (name, labels, expected) in [
        ("grpc_server_started_total", stream.to_vec(), 1.0),
        ("grpc_server_msg_received_total", stream.to_vec(), 3.0),
        ("grpc_server_msg_sent_total", stream.to_vec(), 2.0),
        (
            "grpc_server_handled_total",
            with(&stream, ("grpc_code", "OK")),
            1.0,
        ),
        ("grpc_server_handling_seconds_count", stream.to_vec(), 1.0),
        ("grpc_server_started_total", unary.to_vec(), 1.0),
        ("grpc_server_msg_received_total", unary.to_vec(), 1.0),
        (
            "grpc_server_handled_total",
            with(&unary, ("grpc_code", "Unimplemented")),
            1.0,
        ),
        ("grpc_server_handling_seconds_count", unary.to_vec(), 1.0),
    ] {
        assert_eq!(
            sample(&text, name, &labels),
            Some(expected),
            "{name} {labels:?} in:\n{text}"
        );
    }
    assert_eq!(
        sample(&text, "grpc_server_msg_sent_total", &unary),
        None,
        "nothing was sent on the refused call"
    );
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        let value = sample(&text, name, &[]).unwrap_or_else(|| panic!("no {name} in:\n{text}"));
        // A young process may not have used a whole CPU tick yet.
        let at_least = if name == "process_cpu_seconds_total" {
            0.0
        } else {
            1.0
        };
        assert!(value >= at_least, "{name} = {value}");
    }
    assert!(gateway.terminate().success());
}

/// `docs/metrics.md` lists exactly the gRPC server instruments `rpc/metrics.rs` builds.
#[test]
fn the_documentation_lists_every_grpc_instrument() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let read = |path: &str| std::fs::read_to_string(root.join(path)).expect(path);
    let mut built: Vec<String> = read("crates/server/src/rpc/metrics.rs")
        .split("(\"grpc_server_")
        .skip(1)
        .map(|rest| format!("grpc_server_{}", &rest[..rest.find('"').expect("quoted")]))
        .collect();
    built.sort();
    let mut documented: Vec<String> = read("docs/metrics.md")
        .lines()
        .filter_map(|line| line.strip_prefix("| `grpc_server_"))
        .map(|rest| format!("grpc_server_{}", &rest[..rest.find('`').expect("quoted")]))
        .collect();
    documented.sort();
    assert_eq!(built.len(), 5, "{built:?}");
    assert_eq!(documented, built);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_have_a_port_of_their_own_even_on_msp() {
    let mut gateway =
        GatewayProcess::start(&[("MSP", "true"), ("TELEMETRY_GATEWAY_METRICS_PORT", "0")]);
    let addr = gateway.address();
    let line = gateway.wait_for("metrics served at /metrics on their own port");
    let port: std::net::SocketAddr = line["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("an address field");
    let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port.port()));
    let metrics = get(metrics_addr, "/metrics", None).await.expect("served");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("process_resident_memory_bytes"),
        "{}",
        metrics.body
    );
    let public = get(addr, "/metrics", None).await.expect("served");
    assert_eq!(public.status, 404, "not on the public port");
    assert!(gateway.terminate().success());
}
