//! HTTP diagnostics on the gRPC port: `/-/version`, `/-/live`, `/-/healthz`, `/-/ready` and,
//! when a Prometheus registry is given, `/metrics` (docs/operations.md says which probe is for
//! what).

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

/// How long the sink's health check may take while starting.
const STARTUP_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `/-/ready` waits for that check before answering "starting": probes time out at
/// 1 s (Cloud Run's and Kubernetes' default), and an unreachable sink must not turn a probe
/// answer into a probe timeout.
const READY_ANSWER_WITHIN: Duration = Duration::from_millis(700);

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
        .route("/-/live", get(live))
        .route("/-/healthz", get(healthz))
        .route("/-/ready", get(ready));
    if diagnostics.prometheus.is_some() {
        router = router.route("/metrics", get(metrics));
    }
    router.with_state(Arc::new(diagnostics))
}

/// `/metrics` alone, for a port of its own.
pub fn metrics_router(registry: prometheus::Registry) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(registry): State<prometheus::Registry>| async move {
                exposition(Some(&registry))
            }),
        )
        .with_state(registry)
}

/// The Prometheus text exposition of every registered metric.
async fn metrics(
    State(diagnostics): State<Arc<Diagnostics>>,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    exposition(diagnostics.prometheus.as_ref())
}

fn exposition(
    registry: Option<&prometheus::Registry>,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    let families = registry
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

/// Liveness: the process serves HTTP. It checks nothing else (not the sink, not draining), so
/// a sink outage or a drain never gets the container restarted. No authentication.
async fn live() -> &'static str {
    "live"
}

/// Ready once started (the sink passed a health check), unless draining or over the memory
/// budget. No authentication: load balancers probe it.
async fn ready(State(diagnostics): State<Arc<Diagnostics>>) -> (StatusCode, String) {
    let unavailable = |why: String| (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}"));
    if diagnostics.lifecycle.is_draining() {
        return unavailable("draining".into());
    }
    if !diagnostics.started.load(Ordering::Relaxed)
        && let Err(why) = startup_check(&diagnostics).await
    {
        return unavailable(why);
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

/// While starting, checks the sink's health (one check at a time; probes arriving meanwhile are
/// told it is under way). The check runs in its own task, so a probe answers within
/// [`READY_ANSWER_WITHIN`] even when the sink does not, and a slow check still completes for the
/// next probe.
async fn startup_check(diagnostics: &Arc<Diagnostics>) -> Result<(), String> {
    let Ok(checking) = diagnostics.startup_check.clone().try_lock_owned() else {
        return Err("starting: checking the sink".into());
    };
    let task = {
        let diagnostics = diagnostics.clone();
        tokio::spawn(async move {
            let _checking = checking;
            let checked = tokio::time::timeout(STARTUP_HEALTH_TIMEOUT, diagnostics.sink.health())
                .await
                .map_err(|_| "the sink health check timed out".to_string())
                .and_then(|health| health.map_err(|err| err.to_string()));
            if checked.is_ok() {
                diagnostics.started.store(true, Ordering::Relaxed);
            }
            checked
        })
    };
    match tokio::time::timeout(READY_ANSWER_WITHIN, task).await {
        Ok(Ok(checked)) => checked.map_err(|why| format!("starting: {why}")),
        Ok(Err(err)) => Err(format!("starting: the sink health check failed: {err}")),
        Err(_) => Err("starting: checking the sink".into()),
    }
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
