//! A fake Sentry over real HTTP on 127.0.0.1: accepts envelopes (`POST /api/{project}/envelope/`)
//! and legacy events (`POST /api/{project}/store/`) for the DSN it hands out, decompresses them
//! as `Content-Encoding` says, parses the envelope format, and keeps what it received in order.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The public key in the fake's DSN; requests authenticated with another key get 401.
pub const PUBLIC_KEY: &str = "public";
/// The project ID in the fake's DSN.
pub const PROJECT_ID: &str = "42";

/// One item of an envelope: its header and its payload bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvelopeItem {
    /// The item header (`type`, `length`, ...).
    pub header: Value,
    /// The payload, without the trailing newline.
    pub payload: Vec<u8>,
}

impl EnvelopeItem {
    /// The item's `type` (`event`, `client_report`, `session`, ...).
    pub fn item_type(&self) -> &str {
        self.header["type"].as_str().unwrap_or_default()
    }

    /// The payload parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.payload).ok()
    }
}

/// One request the fake accepted.
#[derive(Debug, Clone)]
pub struct ReceivedEnvelope {
    /// The project ID from the URL.
    pub project: String,
    /// The `X-Sentry-Auth` header, if any.
    pub auth: Option<String>,
    /// The `Content-Encoding` header, if any.
    pub content_encoding: Option<String>,
    /// The decompressed request body, exactly as sent.
    pub body: Vec<u8>,
    /// The envelope header (`event_id`, `sent_at`, `dsn`, ...); `{}` for a `store` request.
    pub header: Value,
    /// The items, in order.
    pub items: Vec<EnvelopeItem>,
}

/// Parses an envelope: a header line of JSON, then items, each an item header line of JSON and
/// a payload of the header's `length` bytes or, without a length, up to the next newline.
pub fn parse_envelope(body: &[u8]) -> Result<(Value, Vec<EnvelopeItem>), String> {
    let (header_line, mut rest) = split_line(body);
    let header: Value = serde_json::from_slice(header_line)
        .map_err(|err| format!("envelope header is not JSON: {err}"))?;
    let mut items = Vec::new();
    loop {
        // Item headers are never empty, so blank lines between items are separators.
        while let Some(after) = rest.strip_prefix(b"\n") {
            rest = after;
        }
        if rest.is_empty() {
            break;
        }
        let (item_header_line, after_header) = split_line(rest);
        let item_header: Value = serde_json::from_slice(item_header_line)
            .map_err(|err| format!("item header {} is not JSON: {err}", items.len()))?;
        let (payload, after_payload) = match item_header["length"].as_u64() {
            Some(length) => {
                let length = usize::try_from(length).map_err(|err| err.to_string())?;
                if after_header.len() < length {
                    return Err(format!(
                        "item {} declares {length} bytes but {} remain",
                        items.len(),
                        after_header.len()
                    ));
                }
                let (payload, after) = after_header.split_at(length);
                (payload, after.strip_prefix(b"\n").unwrap_or(after))
            }
            None => split_line(after_header),
        };
        items.push(EnvelopeItem {
            header: item_header,
            payload: payload.to_vec(),
        });
        rest = after_payload;
    }
    Ok((header, items))
}

/// The bytes before the first newline, and those after it.
fn split_line(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (bytes, &[]),
    }
}

#[derive(Debug, Default)]
struct FakeState {
    envelopes: Vec<ReceivedEnvelope>,
    rejected: Vec<String>,
}

struct Inner {
    state: Mutex<FakeState>,
    /// The number of event items received so far.
    events: watch::Sender<usize>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake Sentry; stops when dropped.
pub struct FakeSentry {
    addr: SocketAddr,
    inner: Arc<Inner>,
    server: JoinHandle<()>,
}

impl FakeSentry {
    /// Starts the fake on 127.0.0.1 and a free port.
    pub async fn start() -> FakeSentry {
        let inner = Arc::new(Inner {
            state: Mutex::new(FakeState::default()),
            events: watch::Sender::new(0),
        });
        let app = Router::new()
            .route("/api/{project}/envelope/", post(envelope))
            .route("/api/{project}/envelope", post(envelope))
            .route("/api/{project}/store/", post(store))
            .route("/api/{project}/store", post(store))
            .with_state(inner.clone());
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the fake Sentry");
        let addr = listener.local_addr().expect("local address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeSentry {
            addr,
            inner,
            server,
        }
    }

    /// The DSN to configure (`http://public@127.0.0.1:<port>/42`).
    pub fn dsn(&self) -> String {
        format!("http://{PUBLIC_KEY}@{}/{PROJECT_ID}", self.addr)
    }

    /// The fake's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every accepted request, in arrival order.
    pub fn envelopes(&self) -> Vec<ReceivedEnvelope> {
        self.inner.lock().envelopes.clone()
    }

    /// The payloads of every `event` item received, parsed, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        events_of(&self.inner.lock())
    }

    /// Why requests were refused (bad auth, an unknown encoding, a malformed envelope).
    pub fn rejected(&self) -> Vec<String> {
        self.inner.lock().rejected.clone()
    }

    /// Waits until at least `n` events have arrived and returns every event received; panics
    /// with what did arrive if that takes longer than `timeout`.
    pub async fn wait_for_events(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let mut count = self.inner.events.subscribe();
        let arrived = tokio::time::timeout(timeout, count.wait_for(|count| *count >= n)).await;
        if !matches!(arrived, Ok(Ok(_))) {
            let state = self.inner.lock();
            panic!(
                "the fake Sentry received {} of {n} events within {timeout:?}: {:#?}\nrejected: {:#?}",
                events_of(&state).len(),
                events_of(&state),
                state.rejected
            );
        }
        self.events()
    }
}

impl Drop for FakeSentry {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn events_of(state: &FakeState) -> Vec<Value> {
    state
        .envelopes
        .iter()
        .flat_map(|envelope| &envelope.items)
        .filter(|item| item.item_type() == "event")
        .filter_map(EnvelopeItem::json)
        .collect()
}

type Shared = Arc<Inner>;

/// What a request carried, before its body is parsed.
struct Request {
    project: String,
    auth: Option<String>,
    content_encoding: Option<String>,
    body: Vec<u8>,
}

/// Checks the key and decompresses the body.
fn accept(
    project: String,
    query: &[(String, String)],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Request, (StatusCode, String)> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    let auth = text("x-sentry-auth");
    let key_in_header = auth
        .as_deref()
        .is_some_and(|auth| auth.contains(&format!("sentry_key={PUBLIC_KEY}")));
    let key_in_query = query
        .iter()
        .any(|(name, value)| name == "sentry_key" && value == PUBLIC_KEY);
    if !key_in_header && !key_in_query {
        return Err((
            StatusCode::UNAUTHORIZED,
            format!("no sentry_key={PUBLIC_KEY} in X-Sentry-Auth ({auth:?}) or the query"),
        ));
    }
    if project != PROJECT_ID {
        return Err((
            StatusCode::NOT_FOUND,
            format!("unknown project {project:?}"),
        ));
    }
    let content_encoding = text(header::CONTENT_ENCODING.as_str());
    let body = decompress(content_encoding.as_deref(), body)?;
    Ok(Request {
        project,
        auth,
        content_encoding,
        body,
    })
}

fn decompress(encoding: Option<&str>, body: &[u8]) -> Result<Vec<u8>, (StatusCode, String)> {
    let mut out = Vec::new();
    let read = match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "identity") => return Ok(body.to_vec()),
        Some("gzip" | "x-gzip") => flate2::read::GzDecoder::new(body).read_to_end(&mut out),
        // HTTP's "deflate" is the zlib format.
        Some("deflate") => flate2::read::ZlibDecoder::new(body).read_to_end(&mut out),
        Some(other) => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported Content-Encoding {other:?}"),
            ));
        }
    };
    read.map(|_| out).map_err(|err| {
        (
            StatusCode::BAD_REQUEST,
            format!("cannot decompress the body: {err}"),
        )
    })
}

/// Records an accepted request and wakes the waiters.
fn record(inner: &Inner, request: Request, header: Value, items: Vec<EnvelopeItem>) -> Response {
    let id = header["event_id"].clone();
    let events = items.iter().filter(|i| i.item_type() == "event").count();
    inner.lock().envelopes.push(ReceivedEnvelope {
        project: request.project,
        auth: request.auth,
        content_encoding: request.content_encoding,
        body: request.body,
        header,
        items,
    });
    inner.events.send_modify(|count| *count += events);
    axum::Json(json!({ "id": id })).into_response()
}

fn refuse(inner: &Inner, status: StatusCode, reason: String) -> Response {
    inner.lock().rejected.push(reason.clone());
    (status, axum::Json(json!({ "detail": reason }))).into_response()
}

async fn envelope(
    State(inner): State<Shared>,
    Path(project): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match accept(project, &query, &headers, &body) {
        Ok(request) => request,
        Err((status, reason)) => return refuse(&inner, status, reason),
    };
    match parse_envelope(&request.body) {
        Ok((header, items)) => record(&inner, request, header, items),
        Err(reason) => refuse(&inner, StatusCode::BAD_REQUEST, reason),
    }
}

/// The legacy endpoint: the body is one event.
async fn store(
    State(inner): State<Shared>,
    Path(project): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match accept(project, &query, &headers, &body) {
        Ok(request) => request,
        Err((status, reason)) => return refuse(&inner, status, reason),
    };
    let event: Value = match serde_json::from_slice(&request.body) {
        Ok(event) => event,
        Err(err) => {
            return refuse(
                &inner,
                StatusCode::BAD_REQUEST,
                format!("store body is not JSON: {err}"),
            );
        }
    };
    let item = EnvelopeItem {
        header: json!({ "type": "event" }),
        payload: request.body.clone(),
    };
    let header = json!({ "event_id": event["event_id"] });
    record(&inner, request, header, vec![item])
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn items_with_and_without_a_length_are_parsed() {
        let payload = "{\"message\":\"with\\nnewline\"}";
        let body = format!(
            "{{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\"}}\n\
             {{\"type\":\"event\",\"length\":{}}}\n{payload}\n\
             {{\"type\":\"attachment\"}}\nraw bytes\n",
            payload.len()
        );
        let (header, items) = parse_envelope(body.as_bytes()).expect("parses");
        assert_eq!(header["event_id"], "9ec79c33ec9942ab8353589fcb2e04dc");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].item_type(), "event");
        assert_eq!(items[0].json(), Some(json!({"message": "with\nnewline"})));
        assert_eq!(items[1].item_type(), "attachment");
        assert_eq!(items[1].payload, b"raw bytes");
    }

    #[test]
    fn a_length_beyond_the_body_is_an_error() {
        let body = "{}\n{\"type\":\"event\",\"length\":100}\n{}\n";
        assert!(parse_envelope(body.as_bytes()).is_err());
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).expect("compress");
        encoder.finish().expect("compress")
    }

    #[tokio::test]
    async fn a_gzip_envelope_over_http_is_kept_and_wakes_the_waiter() {
        let fake = FakeSentry::start().await;
        let url = format!("http://{}/api/{PROJECT_ID}/envelope/", fake.addr());
        let body = "{\"event_id\":\"abc\"}\n{\"type\":\"client_report\"}\n{}\n\
                    {\"type\":\"event\"}\n{\"event_id\":\"abc\",\"level\":\"error\"}\n";
        let client = reqwest::Client::new();
        let response = client
            .post(&url)
            .header(
                "X-Sentry-Auth",
                "Sentry sentry_key=public, sentry_version=7",
            )
            .header("Content-Encoding", "gzip")
            .body(gzip(body.as_bytes()))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200);
        let events = fake.wait_for_events(1, Duration::from_secs(5)).await;
        assert_eq!(events, [json!({"event_id": "abc", "level": "error"})]);
        let envelopes = fake.envelopes();
        assert_eq!(envelopes[0].body, body.as_bytes());
        assert_eq!(envelopes[0].content_encoding.as_deref(), Some("gzip"));
    }

    #[tokio::test]
    async fn a_request_with_another_key_is_refused() {
        let fake = FakeSentry::start().await;
        let url = format!("http://{}/api/{PROJECT_ID}/store/", fake.addr());
        let response = reqwest::Client::new()
            .post(&url)
            .header("X-Sentry-Auth", "Sentry sentry_key=other")
            .body("{}")
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 401);
        assert!(fake.events().is_empty());
        assert_eq!(fake.rejected().len(), 1);
    }
}
