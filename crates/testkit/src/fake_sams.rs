//! A fake SAMS over real HTTP on 127.0.0.1: the client-credentials token endpoint and Connect
//! token introspection, with tokens, failures and delays a test programs at run time, and
//! counters of the calls it received.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The client ID the fake accepts by default.
pub const CLIENT_ID: &str = "sams_cid_telemetry_gateway";
/// The client secret the fake accepts by default.
pub const CLIENT_SECRET: &str = "sams_cs_telemetry_gateway_secret";
/// The introspection path (Connect protocol).
pub const INTROSPECT_PATH: &str = "/api/grpc/clients.v1.TokensService/IntrospectToken";
/// The token path.
pub const TOKEN_PATH: &str = "/oauth/token";

/// What the fake says about one managed-service token.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    /// Whether introspection reports it active.
    pub active: bool,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// The client it belongs to.
    pub client_id: String,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

impl TokenGrant {
    /// An active token with `scopes`, expiring in an hour.
    pub fn active(scopes: &[&str]) -> TokenGrant {
        TokenGrant {
            active: true,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            client_id: "sams_cid_managed_service".into(),
            expires_at: Utc::now() + chrono::Duration::hours(1),
        }
    }

    /// An active token allowed to write events (`telemetry_gateway::events::write`).
    pub fn events_writer() -> TokenGrant {
        TokenGrant::active(&["telemetry_gateway::events::write"])
    }

    /// An inactive token.
    pub fn inactive() -> TokenGrant {
        TokenGrant {
            active: false,
            ..TokenGrant::active(&[])
        }
    }

    /// The same grant expiring at `expires_at`.
    pub fn expiring_at(mut self, expires_at: DateTime<Utc>) -> TokenGrant {
        self.expires_at = expires_at;
        self
    }
}

/// A failure the fake injects instead of answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Answer with this HTTP status and a Connect error body.
    Status(u16),
    /// Never answer.
    Hang,
    /// Answer 200 with a body that is not JSON.
    Garbage,
}

/// How introspection responses name their fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldNames {
    /// proto3 JSON names (`clientId`, `expiresAt`), as Connect sends them.
    CamelCase,
    /// The proto field names (`client_id`, `expires_at`).
    SnakeCase,
}

#[derive(Default)]
struct Programmed {
    tokens: HashMap<String, TokenGrant>,
    issued: HashSet<String>,
    introspection_failure: Option<Failure>,
    token_failure: Option<Failure>,
    introspection_delay: Duration,
    client_token_lifetime: Option<u64>,
    snake_case: bool,
    seen_tokens: Vec<String>,
}

struct Inner {
    client_id: String,
    client_secret: String,
    programmed: Mutex<Programmed>,
    token_calls: AtomicUsize,
    introspection_calls: AtomicUsize,
    issued_count: AtomicUsize,
    introspections_in_flight: AtomicUsize,
    most_introspections_in_flight: AtomicUsize,
}

/// Counts an introspection call as in flight until dropped.
struct InFlight<'a>(&'a Inner);

impl<'a> InFlight<'a> {
    fn enter(inner: &'a Inner) -> InFlight<'a> {
        let now = inner
            .introspections_in_flight
            .fetch_add(1, Ordering::SeqCst)
            + 1;
        inner
            .most_introspections_in_flight
            .fetch_max(now, Ordering::SeqCst);
        InFlight(inner)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .introspections_in_flight
            .fetch_sub(1, Ordering::SeqCst);
    }
}

impl Inner {
    fn programmed(&self) -> MutexGuard<'_, Programmed> {
        self.programmed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running fake SAMS; stopped when dropped.
pub struct FakeSams {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl FakeSams {
    /// Starts a fake accepting [`CLIENT_ID`] and [`CLIENT_SECRET`].
    pub async fn start() -> FakeSams {
        FakeSams::start_with_credentials(CLIENT_ID, CLIENT_SECRET).await
    }

    /// Starts a fake accepting the given client credentials.
    pub async fn start_with_credentials(client_id: &str, client_secret: &str) -> FakeSams {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("local address");
        let inner = Arc::new(Inner {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            programmed: Mutex::new(Programmed {
                client_token_lifetime: Some(3600),
                ..Programmed::default()
            }),
            token_calls: AtomicUsize::new(0),
            introspection_calls: AtomicUsize::new(0),
            issued_count: AtomicUsize::new(0),
            introspections_in_flight: AtomicUsize::new(0),
            most_introspections_in_flight: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route(TOKEN_PATH, post(issue_client_token))
            .route(INTROSPECT_PATH, post(introspect))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FakeSams { addr, inner, task }
    }

    /// The base URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes introspection of `token` answer as `grant` says (replacing any earlier grant).
    pub fn grant(&self, token: &str, grant: TokenGrant) {
        self.inner.programmed().tokens.insert(token.into(), grant);
    }

    /// Revokes `token`: introspection reports it inactive from now on.
    pub fn revoke(&self, token: &str) {
        if let Some(grant) = self.inner.programmed().tokens.get_mut(token) {
            grant.active = false;
        }
    }

    /// Makes introspection fail as `failure` says, or answer again with `None`.
    pub fn fail_introspection(&self, failure: Option<Failure>) {
        self.inner.programmed().introspection_failure = failure;
    }

    /// Makes the token endpoint fail as `failure` says, or answer again with `None`.
    pub fn fail_token_endpoint(&self, failure: Option<Failure>) {
        self.inner.programmed().token_failure = failure;
    }

    /// Delays every introspection answer by `delay`.
    pub fn delay_introspection(&self, delay: Duration) {
        self.inner.programmed().introspection_delay = delay;
    }

    /// The `expires_in` of client tokens issued from now on (`None`: omitted).
    pub fn client_token_lifetime(&self, seconds: Option<u64>) {
        self.inner.programmed().client_token_lifetime = seconds;
    }

    /// Forgets every client token issued so far, as if SAMS had rotated them.
    pub fn revoke_client_tokens(&self) {
        self.inner.programmed().issued.clear();
    }

    /// Names introspection response fields as `names` says.
    pub fn field_names(&self, names: FieldNames) {
        self.inner.programmed().snake_case = names == FieldNames::SnakeCase;
    }

    /// Calls received at the token endpoint, including refused ones.
    pub fn token_calls(&self) -> usize {
        self.inner.token_calls.load(Ordering::SeqCst)
    }

    /// Calls received at the introspection endpoint, including refused ones.
    pub fn introspection_calls(&self) -> usize {
        self.inner.introspection_calls.load(Ordering::SeqCst)
    }

    /// The most introspection calls that were in progress at once.
    pub fn most_concurrent_introspections(&self) -> usize {
        self.inner
            .most_introspections_in_flight
            .load(Ordering::SeqCst)
    }

    /// Every token presented for introspection, in order.
    pub fn introspected_tokens(&self) -> Vec<String> {
        self.inner.programmed().seen_tokens.clone()
    }
}

impl Drop for FakeSams {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Connect-protocol error response.
fn connect_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "code": code, "message": message });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Applies an injected failure; `None` means answer normally.
async fn injected(failure: Option<Failure>) -> Option<Response> {
    match failure? {
        Failure::Hang => std::future::pending().await,
        Failure::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some(connect_error(status, "internal", "injected failure"))
        }
        Failure::Garbage => Some((StatusCode::OK, "<html>not json</html>").into_response()),
    }
}

async fn issue_client_token(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    inner.token_calls.fetch_add(1, Ordering::SeqCst);
    let failure = inner.programmed().token_failure;
    if let Some(response) = injected(failure).await {
        return response;
    }
    let form = parse_form(&body);
    let (id, secret) = basic_credentials(&headers).unwrap_or_else(|| {
        (
            form.get("client_id").cloned().unwrap_or_default(),
            form.get("client_secret").cloned().unwrap_or_default(),
        )
    });
    if id != inner.client_id || secret != inner.client_secret {
        let body = serde_json::json!({"error": "invalid_client"});
        return (StatusCode::UNAUTHORIZED, body.to_string()).into_response();
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        let body = serde_json::json!({"error": "unsupported_grant_type"});
        return (StatusCode::BAD_REQUEST, body.to_string()).into_response();
    }
    let n = inner.issued_count.fetch_add(1, Ordering::SeqCst);
    let token = format!("sams_at_gateway_{n}");
    let mut programmed = inner.programmed();
    programmed.issued.insert(token.clone());
    let mut body = serde_json::json!({
        "access_token": token,
        "token_type": "bearer",
        "scope": form.get("scope").cloned().unwrap_or_default(),
    });
    if let Some(lifetime) = programmed.client_token_lifetime {
        body["expires_in"] = lifetime.into();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn introspect(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    inner.introspection_calls.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::enter(&inner);
    let (failure, delay) = {
        let programmed = inner.programmed();
        (
            programmed.introspection_failure,
            programmed.introspection_delay,
        )
    };
    if let Some(response) = injected(failure).await {
        return response;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let authorized = bearer.is_some_and(|b| inner.programmed().issued.contains(&b));
    if !authorized {
        return connect_error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "invalid client token",
        );
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let token = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("token").and_then(|t| t.as_str()).map(str::to_string));
    let (Some(token), true) = (token, is_json) else {
        return connect_error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "expected a JSON body with a token",
        );
    };
    let mut programmed = inner.programmed();
    programmed.seen_tokens.push(token.clone());
    let names = if programmed.snake_case {
        ("client_id", "expires_at")
    } else {
        ("clientId", "expiresAt")
    };
    // proto3 JSON: fields at their default value are omitted.
    let mut answer = serde_json::Map::new();
    if let Some(grant) = programmed.tokens.get(&token) {
        if grant.active {
            answer.insert("active".into(), true.into());
        }
        if !grant.scopes.is_empty() {
            answer.insert("scopes".into(), grant.scopes.clone().into());
        }
        answer.insert(names.0.into(), grant.client_id.clone().into());
        answer.insert(
            names.1.into(),
            grant
                .expires_at
                .to_rfc3339_opts(SecondsFormat::AutoSi, true)
                .into(),
        );
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::Value::Object(answer).to_string(),
    )
        .into_response()
}

/// Client credentials from an `Authorization: Basic` header (form-decoded, as OAuth2 says).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

fn parse_form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (form_decode(k), form_decode(v)))
        .collect()
}

fn form_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
