//! HTTP diagnostics on the gRPC port: `/-/version`, `/-/healthz`, `/-/ready` and, when a
//! Prometheus registry is given, `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use subtle::ConstantTimeEq;
use telemetry_gateway_sink::EventSink;

use crate::budget::InflightBudget;
use crate::lifecycle::Lifecycle;

/// How long `/-/ready` waits for the sink's health while starting.
const STARTUP_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a `/-/healthz` answer is reused: requests arriving meanwhile do not probe the sink.
pub const HEALTH_ANSWER_REUSE: Duration = Duration::from_secs(1);

/// The longest `/-/healthz` waits for the sink's own check.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// The sink health check behind `/-/healthz`, single-flight and reused for
/// [`HEALTH_ANSWER_REUSE`]: however many requests arrive (it needs no secret by default), at
/// most one check runs at a time and at most one starts per interval.
#[derive(Debug, Default)]
pub struct HealthProbe {
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl HealthProbe {
    /// The sink's health: a recent answer, or a new check once the last is too old.
    async fn check(&self, sink: &dyn EventSink) -> Result<(), String> {
        // Requests arriving during a check wait here, then reuse its answer.
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = last.as_ref()
            && at.elapsed() < HEALTH_ANSWER_REUSE
        {
            return answer.clone();
        }
        let answer = match tokio::time::timeout(HEALTH_TIMEOUT, sink.health()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!(
                "the sink health check timed out after {HEALTH_TIMEOUT:?}"
            )),
        };
        if let Err(err) = &answer {
            tracing::warn!(error = %err, "service reported not healthy");
        }
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

/// What the diagnostics endpoints need.
#[derive(Clone)]
pub struct Diagnostics {
    /// The version string served at `/-/version`.
    pub version: String,
    /// The bearer secret required by `/-/healthz`, if any.
    pub secret: Option<crate::Secret>,
    /// The sink whose health `/-/healthz` reports.
    pub sink: Arc<dyn EventSink>,
    /// Whether the gateway is draining, for `/-/ready`.
    pub lifecycle: Lifecycle,
    /// The registry served at `/metrics`; no route without it.
    pub prometheus: Option<prometheus::Registry>,
    /// The memory budget, for `/-/ready`.
    pub budget: InflightBudget,
    /// Set once the sink has passed a health check: until then the gateway is starting.
    pub started: Arc<AtomicBool>,
    /// Held by the one probe checking the sink while starting.
    pub startup_check: Arc<tokio::sync::Mutex<()>>,
    /// The sink check behind `/-/healthz`.
    pub health: Arc<HealthProbe>,
}

/// The diagnostics routes.
pub fn router(diagnostics: Diagnostics) -> Router {
    let mut router = Router::new()
        .route("/-/version", get(version))
        .route("/-/healthz", get(healthz))
        .route("/-/ready", get(ready));
    if diagnostics.prometheus.is_some() {
        router = router.route("/metrics", get(metrics));
    }
    router.with_state(Arc::new(diagnostics))
}

/// The Prometheus text exposition of every registered metric.
async fn metrics(
    State(diagnostics): State<Arc<Diagnostics>>,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    let families = diagnostics
        .prometheus
        .as_ref()
        .map(prometheus::Registry::gather)
        .unwrap_or_default();
    let mut body = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&families, &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            body,
        ),
        Err(err) => {
            tracing::error!(error = %err, "encoding metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain")],
                format!("encoding metrics: {err}"),
            )
        }
    }
}

async fn version(State(diagnostics): State<Arc<Diagnostics>>) -> String {
    diagnostics.version.clone()
}

/// Ready once started (the sink passed a health check), unless draining or over the memory
/// budget. No authentication: load balancers probe it.
async fn ready(State(diagnostics): State<Arc<Diagnostics>>) -> (StatusCode, String) {
    let unavailable = |why: String| (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}"));
    if diagnostics.lifecycle.is_draining() {
        return unavailable("draining".into());
    }
    if !diagnostics.started.load(Ordering::Relaxed) {
        // One check at a time: probes arriving meanwhile are told it is under way.
        let Ok(_checking) = diagnostics.startup_check.try_lock() else {
            return unavailable("starting: checking the sink".into());
        };
        match tokio::time::timeout(STARTUP_HEALTH_TIMEOUT, diagnostics.sink.health()).await {
            Ok(Ok(())) => diagnostics.started.store(true, Ordering::Relaxed),
            Ok(Err(err)) => return unavailable(format!("starting: {err}")),
            Err(_) => return unavailable("starting: the sink health check timed out".into()),
        }
    }
    if diagnostics.budget.is_exhausted() {
        return unavailable(format!(
            "over the memory budget ({} of {} bytes in flight)",
            diagnostics.budget.used(),
            diagnostics.budget.limit()
        ));
    }
    (StatusCode::OK, "ready".into())
}

async fn healthz(
    State(diagnostics): State<Arc<Diagnostics>>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    if let Some(secret) = &diagnostics.secret
        && let Err(refusal) = check_bearer(&headers, secret.expose())
    {
        return refusal;
    }
    match diagnostics.health.check(diagnostics.sink.as_ref()).await {
        Ok(()) => (StatusCode::OK, "healthz: ok".into()),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("healthz: {err}")),
    }
}

/// The original's rules: 400 for a malformed header, 401 for a missing or wrong secret.
fn check_bearer(headers: &HeaderMap, secret: &str) -> Result<(), (StatusCode, String)> {
    let unauthorized = || (StatusCode::UNAUTHORIZED, "unauthorized".to_string());
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized());
    };
    let value = String::from_utf8_lossy(value.as_bytes());
    let Some((scheme, token)) = value.split_once(' ') else {
        return Err((
            StatusCode::BAD_REQUEST,
            "token type missing in Authorization header".into(),
        ));
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "invalid token scheme {}",
                crate::managed::displayable_scheme(scheme)
            ),
        ));
    }
    if bool::from(token.as_bytes().ct_eq(secret.as_bytes())) {
        Ok(())
    } else {
        Err(unauthorized())
    }
}
