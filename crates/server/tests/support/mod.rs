//! An in-process gateway on 127.0.0.1 and a free port, for tests that speak real gRPC.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use telemetry_gateway_auth::LicenseVerifier;
use telemetry_gateway_proto::v1::telemetery_gateway_service_client::TelemeteryGatewayServiceClient;
use telemetry_gateway_server::{
    ConnectionLimits, EventGateway, EventPolicy, InflightBudget, ManagedAuthError,
    ManagedServiceAuthorizer, NotConfigured, RateLimiter, ServerOptions,
};
use telemetry_gateway_sink::EventSink;
use telemetry_gateway_testkit::RecordingSink;
use telemetry_gateway_testkit::license::LicenseKeyPair;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

/// Lets every managed-service caller through (the SAMS check is tested on its own).
pub struct AllowAll;

#[async_trait]
impl ManagedServiceAuthorizer for AllowAll {
    async fn authorize(&self, _metadata: &MetadataMap) -> Result<(), ManagedAuthError> {
        Ok(())
    }
}

/// How to build a test gateway; `Default` is a recording sink, the shared test license key,
/// SAMS not configured, no opt-in policies.
pub struct Setup {
    pub sink: Arc<dyn EventSink>,
    pub licenses: LicenseVerifier,
    pub managed: Arc<dyn ManagedServiceAuthorizer>,
    pub policy: EventPolicy,
    pub options: ServerOptions,
    pub budget: InflightBudget,
    /// Per-sender rate limits; none by default.
    pub rate_limiter: Option<RateLimiter>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            sink: Arc::new(RecordingSink::new()),
            licenses: test_verifier(),
            managed: Arc::new(NotConfigured),
            policy: EventPolicy::default(),
            // Every test sender connects from 127.0.0.1, standing for many senders: no
            // per-address limit (the connection tests set their own).
            options: ServerOptions {
                connections: ConnectionLimits {
                    max_connections_per_address: 0,
                    ..ConnectionLimits::default()
                },
                ..ServerOptions::default()
            },
            budget: InflightBudget::unlimited(),
            rate_limiter: None,
        }
    }
}

/// A verifier for keys minted with the shared test key pair.
pub fn test_verifier() -> LicenseVerifier {
    LicenseVerifier::from_openssh_public_key(&LicenseKeyPair::shared().public_key_openssh())
        .expect("the test key pair's public key parses")
}

/// A running gateway; stopped when dropped.
pub struct TestGateway {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestGateway {
    /// Starts a gateway with a recording sink and default settings.
    pub async fn start(sink: Arc<RecordingSink>) -> TestGateway {
        TestGateway::start_with(Setup {
            sink,
            ..Setup::default()
        })
        .await
    }

    /// Starts a gateway as `setup` says.
    pub async fn start_with(setup: Setup) -> TestGateway {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("local address");
        let gateway = EventGateway::new(setup.sink, setup.licenses, setup.managed, setup.policy)
            .with_budget(setup.budget);
        let gateway = Arc::new(match setup.rate_limiter {
            Some(limiter) => gateway.with_rate_limiter(limiter),
            None => gateway,
        });
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stop = async {
                let _ = stopped.await;
            };
            telemetry_gateway_server::serve(listener, gateway, setup.options, stop)
                .await
                .expect("the server runs");
        });
        TestGateway {
            addr,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// A connected gRPC client.
    pub async fn client(&self) -> TelemeteryGatewayServiceClient<Channel> {
        telemetry_gateway_testkit::connect(self.addr)
            .await
            .expect("connect to the gateway")
    }

    /// A plain channel to the gateway, for the other gRPC services on its port.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("a socket address is a valid URI")
            .connect()
            .await
            .expect("connect to the gateway")
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// The published payload of an event, parsed.
pub fn payload_json(event: &telemetry_gateway_sink::PreparedEvent) -> serde_json::Value {
    serde_json::from_slice(&event.payload).expect("published payloads are JSON")
}

/// Sends a raw gRPC request whose body is `first` and then nothing, leaving the request open;
/// returns the response's `grpc-status` and `grpc-message` once the server ends it.
pub async fn raw_call_stalling_after(
    addr: std::net::SocketAddr,
    path: &str,
    first: Vec<u8>,
) -> (String, String) {
    use http_body_util::{BodyExt, StreamBody};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let (frames, receiver) = tokio::sync::mpsc::channel::<
        Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >(1);
    frames
        .send(Ok(http_body::Frame::data(bytes::Bytes::from(first))))
        .await
        .expect("the body is open");
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .expect("a valid request");
    let response = client.request(request).await.expect("the server answers");
    let (parts, body) = response.into_parts();
    // A refusal before any message is a trailers-only response; otherwise it is in the trailers.
    let header = |map: &http::HeaderMap, name: &str| {
        map.get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let (status, message) = match header(&parts.headers, "grpc-status") {
        Some(status) => (
            status,
            header(&parts.headers, "grpc-message").unwrap_or_default(),
        ),
        None => {
            let collected = body.collect().await.expect("the response body ends");
            let trailers = collected.trailers().cloned().unwrap_or_default();
            (
                header(&trailers, "grpc-status").unwrap_or_default(),
                header(&trailers, "grpc-message").unwrap_or_default(),
            )
        }
    };
    drop(frames);
    (status, message)
}

/// A gRPC message header: uncompressed, `len` bytes follow.
pub fn message_header(len: u32) -> Vec<u8> {
    let mut header = vec![0u8];
    header.extend_from_slice(&len.to_be_bytes());
    header
}

/// A framed gRPC message: uncompressed.
pub fn framed(message: &impl prost::Message) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    let mut framed = message_header(u32::try_from(bytes.len()).expect("a small message"));
    framed.extend(bytes);
    framed
}
