//! The exporter: a channel set up as the original's `Dial` (https only unless allowed, keepalive,
//! gzip), `RecordEvents` streams in payloads below 1 MiB, and a report of exactly which events
//! the gateway acknowledged.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::{Instant, timeout, timeout_at};
use tonic::Request;
use tonic::codec::CompressionEncoding;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::chunk::{MAX_PAYLOAD_BYTES, chunk_events};
use super::{ClientError, Sender};
use crate::v1::record_events_request::{EventsPayload, Payload};
use crate::v1::telemetery_gateway_service_client::TelemeteryGatewayServiceClient;
use crate::v1::{Event, RecordEventRequest, RecordEventsRequest, RecordEventsRequestMetadata};

/// Ping interval of the original's client (`dial.go`).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole export (or one unary call) must finish within this by default.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Responses list the IDs of one payload; this leaves room for payloads of tiny events.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Configures an [`Exporter`]; start with [`Exporter::builder`].
#[derive(Debug, Clone)]
pub struct ExporterBuilder {
    url: String,
    sender: Option<Sender>,
    request_id: Option<String>,
    allow_plaintext: bool,
    connect_timeout: Duration,
    request_timeout: Duration,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
    gzip: bool,
    max_payload_bytes: usize,
    ca_certificate: Option<Vec<u8>>,
}

impl ExporterBuilder {
    /// Sends as a licensed instance.
    pub fn licensed_instance(
        self,
        license_key: impl Into<String>,
        instance_id: impl Into<String>,
        external_url: impl Into<String>,
    ) -> ExporterBuilder {
        self.sender(Sender::LicensedInstance {
            license_key: license_key.into(),
            instance_id: instance_id.into(),
            external_url: external_url.into(),
        })
    }

    /// Sends as an unlicensed instance.
    pub fn unlicensed_instance(
        self,
        instance_id: impl Into<String>,
        external_url: impl Into<String>,
    ) -> ExporterBuilder {
        self.sender(Sender::UnlicensedInstance {
            instance_id: instance_id.into(),
            external_url: external_url.into(),
        })
    }

    /// Sends as a managed service with a SAMS access token.
    pub fn managed_service(
        self,
        service_id: impl Into<String>,
        environment: Option<String>,
        token: impl Into<String>,
    ) -> ExporterBuilder {
        self.sender(Sender::ManagedService {
            service_id: service_id.into(),
            environment,
            token: token.into(),
        })
    }

    /// Sets the sender.
    pub fn sender(mut self, sender: Sender) -> ExporterBuilder {
        self.sender = Some(sender);
        self
    }

    /// Uses this request ID for every call (default: a random UUID per call), for diagnostics.
    pub fn request_id(mut self, request_id: impl Into<String>) -> ExporterBuilder {
        self.request_id = Some(request_id.into());
        self
    }

    /// Allows an `http://` endpoint (no TLS); for local development and tests only.
    pub fn allow_plaintext(mut self, allow: bool) -> ExporterBuilder {
        self.allow_plaintext = allow;
        self
    }

    /// Time allowed to establish the connection (default 10 s).
    pub fn connect_timeout(mut self, limit: Duration) -> ExporterBuilder {
        self.connect_timeout = limit;
        self
    }

    /// Time allowed for one export or unary call, sent to the gateway as the gRPC deadline
    /// (default 60 s).
    pub fn request_timeout(mut self, limit: Duration) -> ExporterBuilder {
        self.request_timeout = limit;
        self
    }

    /// HTTP/2 keepalive: ping every `interval`, drop the connection after `timeout` without an
    /// answer (default 20 s and 10 s, the original client's: `docs/client.md`).
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> ExporterBuilder {
        self.keepalive_interval = interval;
        self.keepalive_timeout = timeout;
        self
    }

    /// Compresses requests and accepts compressed responses with gzip (default on).
    pub fn gzip(mut self, enabled: bool) -> ExporterBuilder {
        self.gzip = enabled;
        self
    }

    /// The encoded size payloads of several events stay below (default 1 MiB).
    pub fn max_payload_bytes(mut self, limit: usize) -> ExporterBuilder {
        self.max_payload_bytes = limit;
        self
    }

    /// Also trusts this PEM CA certificate, besides the webpki roots (a private gateway).
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> ExporterBuilder {
        self.ca_certificate = Some(pem.into());
        self
    }

    /// The exporter; it connects on first use, and reconnects as needed. Call it inside a Tokio
    /// runtime (the connection is driven by a background task).
    pub fn build(self) -> Result<Exporter, ClientError> {
        let (endpoint, exporter) = self.prepare()?;
        Ok(exporter(endpoint.connect_lazy()))
    }

    /// The exporter, connected now (so an unreachable gateway shows at once).
    pub async fn connect(self) -> Result<Exporter, ClientError> {
        let (endpoint, exporter) = self.prepare()?;
        let channel = endpoint.connect().await.map_err(ClientError::Connect)?;
        Ok(exporter(channel))
    }

    /// Checks the settings; returns the endpoint to connect and how to make the exporter.
    fn prepare(self) -> Result<(Endpoint, impl FnOnce(Channel) -> Exporter), ClientError> {
        let sender = self.sender.clone().ok_or(ClientError::MissingSender)?;
        sender.check()?;
        let authorization = sender.token().map(bearer).transpose()?;
        let endpoint = self.endpoint()?;
        let exporter = move |channel: Channel| {
            let mut client = TelemeteryGatewayServiceClient::new(channel)
                .max_decoding_message_size(MAX_RESPONSE_BYTES);
            if self.gzip {
                client = client
                    .send_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Gzip);
            }
            Exporter {
                client,
                url: self.url,
                sender,
                authorization,
                request_id: self.request_id,
                request_timeout: self.request_timeout,
                max_payload_bytes: self.max_payload_bytes,
            }
        };
        Ok((endpoint, exporter))
    }

    /// The endpoint with TLS (or plaintext, if allowed), keepalive and timeouts.
    fn endpoint(&self) -> Result<Endpoint, ClientError> {
        let invalid = |reason: String| ClientError::InvalidEndpoint {
            url: self.url.clone(),
            reason,
        };
        let endpoint =
            Endpoint::from_shared(self.url.clone()).map_err(|err| invalid(err.to_string()))?;
        let tls = match endpoint.uri().scheme_str() {
            Some("https") => true,
            Some("http") if self.allow_plaintext => false,
            Some("http") => return Err(ClientError::InsecureTarget(self.url.clone())),
            Some(other) => return Err(invalid(format!("unsupported scheme {other:?}"))),
            None => return Err(invalid("no scheme: use https://<host>[:<port>]".into())),
        };
        if endpoint.uri().host().is_none_or(str::is_empty) {
            return Err(invalid("no host".into()));
        }
        let endpoint = endpoint
            .user_agent(concat!(
                "telemetry-gateway-client/",
                env!("CARGO_PKG_VERSION")
            ))
            .map_err(|err| invalid(err.to_string()))?
            .connect_timeout(self.connect_timeout)
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if !tls {
            if self.ca_certificate.is_some() {
                return Err(invalid(
                    "a CA certificate needs an https:// endpoint".into(),
                ));
            }
            return Ok(endpoint);
        }
        let mut config = ClientTlsConfig::new()
            .with_webpki_roots()
            .timeout(self.connect_timeout);
        if let Some(pem) = &self.ca_certificate {
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint.tls_config(config).map_err(ClientError::Tls)
    }
}

/// The `authorization` value for a token, marked sensitive (never logged, never indexed).
fn bearer(token: &str) -> Result<AsciiMetadataValue, ClientError> {
    let mut value: AsciiMetadataValue = format!("Bearer {token}")
        .parse()
        .map_err(|_| ClientError::InvalidSender("the token is not a valid header value"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Sends events to a Telemetry Gateway. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct Exporter {
    client: TelemeteryGatewayServiceClient<Channel>,
    url: String,
    sender: Sender,
    authorization: Option<AsciiMetadataValue>,
    request_id: Option<String>,
    request_timeout: Duration,
    max_payload_bytes: usize,
}

/// What happened to the events of one [`Exporter::export`]: every distinct event ID is in
/// exactly one of `recorded` and `not_recorded`, in the order given.
#[derive(Debug)]
pub struct ExportReport {
    /// The request ID sent in the metadata (the gateway logs it).
    pub request_id: String,
    /// IDs the gateway acknowledged: do not send these again.
    pub recorded: Vec<String>,
    /// IDs the gateway did not acknowledge: send these again later.
    pub not_recorded: Vec<String>,
    /// Events payloads handed to the connection.
    pub payloads: usize,
    /// Responses received (one per payload the gateway processed).
    pub responses: usize,
    /// Why the stream ended early, if it did; acknowledgements received before it still count.
    pub error: Option<ClientError>,
}

/// How far an export has got, after each response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportProgress {
    /// Distinct events to send.
    pub total: usize,
    /// Distinct events acknowledged so far.
    pub acknowledged: usize,
    /// Payloads handed to the connection so far.
    pub payloads: usize,
    /// Responses received so far.
    pub responses: usize,
}

impl ExportReport {
    /// Whether every event was recorded and the stream ended cleanly.
    pub fn is_complete(&self) -> bool {
        self.not_recorded.is_empty() && self.error.is_none()
    }
}

impl Exporter {
    /// A builder for an exporter to the gateway at `url` (`https://host[:port]`).
    pub fn builder(url: impl Into<String>) -> ExporterBuilder {
        ExporterBuilder {
            url: url.into(),
            sender: None,
            request_id: None,
            allow_plaintext: false,
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            keepalive_interval: KEEPALIVE_INTERVAL,
            keepalive_timeout: KEEPALIVE_TIMEOUT,
            gzip: true,
            max_payload_bytes: MAX_PAYLOAD_BYTES,
            ca_certificate: None,
        }
    }

    /// The gateway's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Who the exporter sends as.
    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// Streams `events` on one `RecordEvents` call (metadata first, then payloads below 1 MiB,
    /// then half-close) and reports which were acknowledged. Never fails as a whole: a failed
    /// call reports every unacknowledged event as not recorded, with the error.
    pub async fn export(&self, events: Vec<Event>) -> ExportReport {
        self.export_with_progress(events, &|_| {}).await
    }

    /// [`Exporter::export`], calling `progress` after each response (for a progress display).
    pub async fn export_with_progress(
        &self,
        events: Vec<Event>,
        progress: &(dyn Fn(ExportProgress) + Sync),
    ) -> ExportReport {
        let request_id = self.new_request_id();
        let ids = distinct_ids(&events);
        let mut report = ExportReport {
            request_id,
            recorded: Vec::new(),
            not_recorded: Vec::new(),
            payloads: 0,
            responses: 0,
            error: None,
        };
        if events.is_empty() {
            return report;
        }
        let payloads = Arc::new(AtomicUsize::new(0));
        let counted = payloads.clone();
        let metadata = RecordEventsRequest {
            payload: Some(Payload::Metadata(self.metadata(&report.request_id))),
        };
        let messages = std::iter::once(metadata).chain(
            chunk_events(events, self.max_payload_bytes).map(move |events| {
                counted.fetch_add(1, Ordering::Relaxed);
                RecordEventsRequest {
                    payload: Some(Payload::Events(EventsPayload { events })),
                }
            }),
        );
        let request = self.request(tokio_stream::iter(messages));
        let mut acknowledged = HashSet::new();
        let total = ids.len();
        let on_response = |acknowledged: usize, responses: usize| {
            progress(ExportProgress {
                total,
                acknowledged,
                payloads: payloads.load(Ordering::Relaxed),
                responses,
            });
        };
        report.error = self
            .stream(
                request,
                &mut acknowledged,
                &mut report.responses,
                &on_response,
            )
            .await
            .err();
        report.payloads = payloads.load(Ordering::Relaxed);
        (report.recorded, report.not_recorded) =
            ids.into_iter().partition(|id| acknowledged.contains(id));
        report
    }

    /// Records one event with the unary `RecordEvent`; the gateway accepts it only from managed
    /// services. `Ok` means the event was handed off.
    pub async fn record_event(&self, event: Event) -> Result<(), ClientError> {
        let request_id = self.new_request_id();
        let request = self.request(RecordEventRequest {
            metadata: Some(self.metadata(&request_id)),
            event: Some(event),
        });
        let mut client = self.client.clone();
        timeout(self.request_timeout, client.record_event(request))
            .await
            .map_err(|_| ClientError::Timeout(self.request_timeout))??;
        Ok(())
    }

    /// Runs one `RecordEvents` call, adding every acknowledged ID to `acknowledged` as responses
    /// arrive, so that an error later in the stream keeps what came before it.
    async fn stream<S>(
        &self,
        request: Request<S>,
        acknowledged: &mut HashSet<String>,
        responses: &mut usize,
        on_response: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<(), ClientError>
    where
        S: tokio_stream::Stream<Item = RecordEventsRequest> + Send + 'static,
    {
        let deadline = Instant::now() + self.request_timeout;
        let timed_out = |_| ClientError::Timeout(self.request_timeout);
        let mut client = self.client.clone();
        let mut inbound = timeout_at(deadline, client.record_events(request))
            .await
            .map_err(timed_out)??
            .into_inner();
        while let Some(response) = timeout_at(deadline, inbound.message())
            .await
            .map_err(timed_out)??
        {
            *responses += 1;
            acknowledged.extend(response.succeeded_events);
            on_response(acknowledged.len(), *responses);
        }
        Ok(())
    }

    fn metadata(&self, request_id: &str) -> RecordEventsRequestMetadata {
        RecordEventsRequestMetadata {
            request_id: request_id.to_string(),
            identifier: Some(self.sender.identifier()),
        }
    }

    /// A request with the deadline and, for managed services, the bearer token.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.request_timeout);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }

    fn new_request_id(&self) -> String {
        self.request_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    }
}

/// The events' IDs in order, each once.
fn distinct_ids(events: &[Event]) -> Vec<String> {
    let mut seen = HashSet::with_capacity(events.len());
    events
        .iter()
        .filter(|event| seen.insert(event.id.as_str()))
        .map(|event| event.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unlicensed(url: &str) -> ExporterBuilder {
        Exporter::builder(url).unlicensed_instance("instance", "https://sg.example.com")
    }

    fn build_error(builder: ExporterBuilder) -> String {
        match builder.build() {
            Ok(_) => panic!("the builder should refuse"),
            Err(err) => err.to_string(),
        }
    }

    #[tokio::test]
    async fn a_plaintext_endpoint_is_refused_unless_allowed() {
        assert_eq!(
            build_error(unlicensed("http://127.0.0.1:10085")),
            r#"insecure target Telemetry Gateway "http://127.0.0.1:10085""#
        );
        assert!(
            unlicensed("http://127.0.0.1:10085")
                .allow_plaintext(true)
                .build()
                .is_ok()
        );
    }

    #[tokio::test]
    async fn an_https_endpoint_builds_with_tls() {
        let exporter = unlicensed("https://telemetry-gateway.example.com:443")
            .build()
            .expect("https is accepted");
        assert_eq!(exporter.url(), "https://telemetry-gateway.example.com:443");
    }

    #[tokio::test]
    async fn endpoints_without_a_usable_scheme_or_host_are_refused() {
        for url in [
            "telemetry-gateway.example.com:443",
            "ftp://example.com",
            "",
            "https://",
        ] {
            let err = build_error(unlicensed(url).allow_plaintext(true));
            assert!(
                err.starts_with("invalid Telemetry Gateway URL"),
                "{url}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn a_sender_is_required() {
        assert_eq!(
            build_error(Exporter::builder("https://example.com")),
            "no sender: set a licensed instance, an unlicensed instance or a managed service"
        );
        assert_eq!(
            build_error(Exporter::builder("https://example.com").managed_service("svc", None, "")),
            "invalid sender: a token is required for managed services"
        );
    }

    #[tokio::test]
    async fn the_token_is_sent_as_a_sensitive_bearer_header() {
        let exporter = Exporter::builder("https://example.com")
            .managed_service("svc", Some("prod".into()), "sams_at_abc")
            .build()
            .expect("builds");
        let request = exporter.request(());
        let value = request
            .metadata()
            .get("authorization")
            .expect("authorization metadata");
        assert_eq!(value.to_str().ok(), Some("Bearer sams_at_abc"));
        assert!(value.is_sensitive());
        assert!(!format!("{exporter:?}").contains("sams_at_abc"));
    }

    #[test]
    fn distinct_ids_keep_the_first_occurrence_in_order() {
        let events: Vec<Event> = ["b", "a", "b", "c", "a"]
            .iter()
            .map(|id| Event {
                id: (*id).into(),
                ..Default::default()
            })
            .collect();
        assert_eq!(distinct_ids(&events), ["b", "a", "c"]);
    }
}
