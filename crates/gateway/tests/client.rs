//! The protocol crate's exporter against a real gateway on a real socket: chunking, exactly
//! which events were recorded, senders, and the https-only rule.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use telemetry_gateway_auth::LicenseVerifier;
use telemetry_gateway_proto::client::{
    ClientError, EventBuilder, Exporter, ExporterBuilder, MAX_PAYLOAD_BYTES, event_field_len,
    request_len,
};
use telemetry_gateway_proto::v1::Event;
use telemetry_gateway_server::{
    EventGateway, EventPolicy, ManagedAuthError, ManagedServiceAuthorizer, NotConfigured,
    ServerOptions,
};
use telemetry_gateway_sink::{EventSink, FailureCause, PreparedEvent, PublishOutcome, SinkError};
use telemetry_gateway_testkit::RecordingSink;
use telemetry_gateway_testkit::license::{LicenseKeyPair, LicenseSpec, SignatureFormat};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::metadata::MetadataMap;

const TOKEN: &str = "sams_at_client_test";

/// Accepts managed-service calls carrying `Bearer <TOKEN>`, refuses others.
struct ExpectToken;

#[async_trait]
impl ManagedServiceAuthorizer for ExpectToken {
    async fn authorize(&self, metadata: &MetadataMap) -> Result<(), ManagedAuthError> {
        let expected = format!("Bearer {TOKEN}");
        match metadata.get("authorization").map(|v| v.to_str()) {
            Some(Ok(value)) if value == expected => Ok(()),
            Some(_) => Err(ManagedAuthError::PermissionDenied),
            None => Err(ManagedAuthError::NoTokenHeader),
        }
    }
}

/// Delivers everything and remembers the IDs of each `publish` call: one call per payload, so
/// these are the payloads as the gateway received them.
#[derive(Default)]
struct PayloadSink {
    payloads: Mutex<Vec<Vec<String>>>,
}

impl PayloadSink {
    fn payloads(&self) -> Vec<Vec<String>> {
        self.payloads.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl EventSink for PayloadSink {
    fn name(&self) -> &'static str {
        "payloads"
    }

    async fn publish(&self, events: &[PreparedEvent]) -> Vec<PublishOutcome> {
        if let Ok(mut payloads) = self.payloads.lock() {
            payloads.push(events.iter().map(|e| e.id.clone()).collect());
        }
        vec![PublishOutcome::Delivered; events.len()]
    }

    async fn health(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A gateway serving on 127.0.0.1 and a free port; stopped when dropped.
struct Gateway {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Gateway {
    async fn start(sink: Arc<dyn EventSink>) -> Gateway {
        Gateway::start_with(sink, Arc::new(NotConfigured), ServerOptions::default()).await
    }

    async fn start_with(
        sink: Arc<dyn EventSink>,
        managed: Arc<dyn ManagedServiceAuthorizer>,
        options: ServerOptions,
    ) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let licenses = LicenseVerifier::from_openssh_public_key(
            &LicenseKeyPair::shared().public_key_openssh(),
        )
        .expect("the test public key parses");
        let gateway = Arc::new(EventGateway::new(
            sink,
            licenses,
            managed,
            EventPolicy::default(),
        ));
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let stop = async {
                let _ = stopped.await;
            };
            telemetry_gateway_server::serve(listener, gateway, options, stop)
                .await
                .expect("the server runs");
        });
        Gateway {
            addr,
            shutdown: Some(shutdown),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn exporter(&self) -> ExporterBuilder {
        Exporter::builder(self.url())
            .allow_plaintext(true)
            .unlicensed_instance("instance-client-test", "https://sourcegraph.example.com")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Deterministic, poorly compressible text of `len` bytes.
fn noise(seed: u64, len: usize) -> String {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect()
}

/// A valid event carrying `padding` bytes of private metadata.
fn event_of_size(i: usize, padding: usize) -> Event {
    EventBuilder::new("cody.completion", "suggested")
        .server_version("5.9.1")
        .client("VSCODE_CODY_EXTENSION", Some("1.40.2".into()))
        .metadata("index", i as f64)
        .private_metadata("context", noise(i as u64, padding))
        .build()
        .expect("a valid event")
}

fn ids(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

const THREE_MIB: usize = 3 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_of_mixed_sizes_are_all_recorded_in_payloads_below_one_mib() {
    let sink = Arc::new(PayloadSink::default());
    let gateway = Gateway::start(sink.clone()).await;
    let big_index = 4_321;
    let events: Vec<Event> = (0..10_000)
        .map(|i| {
            let padding = match i {
                _ if i == big_index => THREE_MIB,
                _ if i % 997 == 0 => 200_000 + i * 20,
                _ => (i * 7_919) % 2_500,
            };
            event_of_size(i, padding)
        })
        .collect();
    let big_id = events[big_index].id.clone();
    let sizes: HashMap<String, usize> = events
        .iter()
        .map(|e| (e.id.clone(), event_field_len(e)))
        .collect();
    let total_bytes: usize = sizes.values().sum();

    let started = Instant::now();
    let report = gateway
        .exporter()
        .build()
        .expect("builds")
        .export(events.clone())
        .await;
    let elapsed = started.elapsed();

    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(report.recorded, ids(&events));
    assert!(report.not_recorded.is_empty());
    assert!(report.is_complete());

    // The payloads as the gateway received them: in order, every one of several events
    // encoding to under 1 MiB, and the 3 MiB event alone.
    let payloads = sink.payloads();
    assert_eq!(payloads.len(), report.payloads);
    assert_eq!(report.responses, report.payloads);
    assert_eq!(payloads.concat(), ids(&events));
    let mut largest_shared = 0;
    for payload in &payloads {
        let encoded = request_len(payload.iter().map(|id| sizes[id]).sum());
        if payload.contains(&big_id) {
            assert_eq!(payload, &vec![big_id.clone()], "the 3 MiB event goes alone");
            assert!(encoded > THREE_MIB);
        } else {
            assert!(encoded < MAX_PAYLOAD_BYTES, "a payload of {encoded} bytes");
            largest_shared = largest_shared.max(encoded);
        }
    }
    eprintln!(
        "10,000 events, {:.1} MiB encoded: {} payloads (largest shared payload {} bytes), \
         recorded in {elapsed:?}",
        total_bytes as f64 / (1024.0 * 1024.0),
        report.payloads,
        largest_shared,
    );
}

#[tokio::test]
async fn events_the_sink_fails_are_reported_as_not_recorded_exactly() {
    let events: Vec<Event> = (0..1_500).map(|i| event_of_size(i, 1_000)).collect();
    let failing: Vec<String> = events.iter().step_by(3).map(|e| e.id.clone()).collect();
    let failing_set: std::collections::HashSet<String> = failing.iter().cloned().collect();
    let sink = Arc::new(RecordingSink::with_outcome(move |event| {
        if failing_set.contains(&event.id) {
            PublishOutcome::retryable(FailureCause::Unavailable, "downstream unavailable")
        } else {
            PublishOutcome::Delivered
        }
    }));
    let gateway = Gateway::start(sink.clone()).await;

    let report = gateway
        .exporter()
        .build()
        .expect("builds")
        .export(events.clone())
        .await;

    assert!(report.payloads > 1, "the events span several payloads");
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(report.not_recorded, failing);
    let expected_recorded: Vec<String> = events
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, e)| e.id.clone())
        .collect();
    assert_eq!(report.recorded, expected_recorded);
    assert!(!report.is_complete());

    // Retrying exactly those, once the sink recovers, records them.
    let retry: Vec<Event> = events
        .iter()
        .filter(|e| report.not_recorded.contains(&e.id))
        .cloned()
        .collect();
    let healthy = Gateway::start(Arc::new(RecordingSink::new())).await;
    let retried = healthy
        .exporter()
        .build()
        .expect("builds")
        .export(retry)
        .await;
    assert_eq!(retried.recorded, failing);
    assert!(retried.is_complete());
}

#[tokio::test]
async fn a_stream_error_keeps_what_was_acknowledged_before_it() {
    // The gateway refuses messages over 2 MiB: the payload of the 3 MiB event ends the stream.
    let sink = Arc::new(RecordingSink::new());
    let options = ServerOptions {
        max_receive_message_bytes: 2 * 1024 * 1024,
        ..ServerOptions::default()
    };
    let gateway = Gateway::start_with(sink.clone(), Arc::new(NotConfigured), options).await;
    let mut events: Vec<Event> = (0..100).map(|i| event_of_size(i, 100)).collect();
    events.push(event_of_size(100, THREE_MIB));
    events.extend((101..200).map(|i| event_of_size(i, 100)));

    let report = gateway
        .exporter()
        .build()
        .expect("builds")
        .export(events.clone())
        .await;

    assert_eq!(report.recorded, ids(&events[..100]));
    assert_eq!(report.not_recorded, ids(&events[100..]));
    match &report.error {
        Some(ClientError::Status(status)) => {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        }
        other => panic!("expected a ResourceExhausted status, got {other:?}"),
    }
    assert_eq!(sink.published().len(), 100);
}

#[tokio::test]
async fn a_plaintext_endpoint_is_refused_without_allow_plaintext() {
    let gateway = Gateway::start(Arc::new(RecordingSink::new())).await;
    let err = Exporter::builder(gateway.url())
        .unlicensed_instance("instance", "")
        .build()
        .expect_err("http:// needs allow_plaintext");
    assert_eq!(
        err.to_string(),
        format!("insecure target Telemetry Gateway \"{}\"", gateway.url())
    );
    assert!(matches!(err, ClientError::InsecureTarget(_)));
}

#[tokio::test]
async fn an_https_endpoint_really_speaks_tls() {
    // The test gateway speaks plaintext HTTP/2 only, so a TLS handshake with it fails.
    let sink = Arc::new(RecordingSink::new());
    let gateway = Gateway::start(sink.clone()).await;
    let events = vec![event_of_size(0, 10)];
    let report = Exporter::builder(format!("https://{}", gateway.addr))
        .unlicensed_instance("instance", "")
        .build()
        .expect("https builds")
        .export(events.clone())
        .await;
    assert_eq!(report.not_recorded, ids(&events));
    assert!(report.error.is_some());
    assert!(sink.published().is_empty());
}

#[tokio::test]
async fn a_licensed_instance_is_identified_by_its_license_key() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = Gateway::start(sink.clone()).await;
    let key = LicenseKeyPair::shared().mint(&LicenseSpec::default(), SignatureFormat::RsaSha256);
    let events: Vec<Event> = (0..3).map(|i| event_of_size(i, 10)).collect();
    let report = Exporter::builder(gateway.url())
        .allow_plaintext(true)
        .licensed_instance(key.clone(), "site-1", "https://sg.example.com")
        .request_id("request-licensed")
        .connect()
        .await
        .expect("connects")
        .export(events.clone())
        .await;
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.request_id, "request-licensed");
    let published = sink.published();
    assert_eq!(published.len(), 3);
    assert_eq!(
        published[0]
            .attributes
            .get("publisher.source")
            .map(String::as_str),
        Some("licensed_instance")
    );
    let payload: serde_json::Value =
        serde_json::from_slice(&published[0].payload).expect("JSON payload");
    assert_eq!(payload["metadata"]["requestId"], "request-licensed");
    assert_eq!(
        payload["metadata"]["identifier"]["licensedInstance"]["licenseKey"],
        key.as_str()
    );
}

#[tokio::test]
async fn a_managed_service_sends_its_token_on_streams_and_unary_calls() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = Gateway::start_with(
        sink.clone(),
        Arc::new(ExpectToken),
        ServerOptions::default(),
    )
    .await;
    let exporter = Exporter::builder(gateway.url())
        .allow_plaintext(true)
        .managed_service("my-service", Some("dev".into()), TOKEN)
        .build()
        .expect("builds");

    let events: Vec<Event> = (0..5).map(|i| event_of_size(i, 10)).collect();
    let report = exporter.export(events.clone()).await;
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.recorded, ids(&events));

    let single = event_of_size(99, 10);
    exporter
        .record_event(single.clone())
        .await
        .expect("the unary call succeeds");
    let published = sink.published();
    assert_eq!(published.len(), 6);
    assert_eq!(published[5].id, single.id);
    assert_eq!(
        published[5]
            .attributes
            .get("publisher.source")
            .map(String::as_str),
        Some("my-service")
    );
}

#[tokio::test]
async fn a_refused_managed_service_gets_nothing_recorded_and_the_status() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = Gateway::start_with(
        sink.clone(),
        Arc::new(ExpectToken),
        ServerOptions::default(),
    )
    .await;
    let exporter = Exporter::builder(gateway.url())
        .allow_plaintext(true)
        .managed_service("my-service", None, "sams_at_wrong")
        .build()
        .expect("builds");
    let events: Vec<Event> = (0..5).map(|i| event_of_size(i, 10)).collect();
    let report = exporter.export(events.clone()).await;
    assert!(report.recorded.is_empty());
    assert_eq!(report.not_recorded, ids(&events));
    let Some(ClientError::Status(status)) = &report.error else {
        panic!("expected a status, got {:?}", report.error);
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    let err = exporter
        .record_event(events[0].clone())
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, ClientError::Status(s) if s.code() == tonic::Code::PermissionDenied),
        "{err:?}"
    );
    assert!(sink.published().is_empty());
}

#[tokio::test]
async fn the_unary_call_is_refused_for_instances() {
    let gateway = Gateway::start(Arc::new(RecordingSink::new())).await;
    let err = gateway
        .exporter()
        .build()
        .expect("builds")
        .record_event(event_of_size(0, 10))
        .await
        .expect_err("instances must stream");
    assert!(
        matches!(&err, ClientError::Status(s) if s.code() == tonic::Code::Unimplemented),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unreachable_gateway_reports_every_event_as_not_recorded() {
    // Bind then drop, so nothing listens on the port.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("address");
    let events: Vec<Event> = (0..3).map(|i| event_of_size(i, 10)).collect();
    let report = Exporter::builder(format!("http://{addr}"))
        .allow_plaintext(true)
        .unlicensed_instance("instance", "")
        .build()
        .expect("builds lazily")
        .export(events.clone())
        .await;
    assert_eq!(report.not_recorded, ids(&events));
    assert!(report.error.is_some());
}
