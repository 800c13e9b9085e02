//! The Telemetry Gateway binary's library half: configuration, logging, and the composition of
//! auth, sinks and server into a running gateway. It holds no protocol or delivery logic.

pub mod config;
pub mod config_docs;
pub mod error_reporting;
pub mod logging;
pub mod manual;
pub mod otlp;
pub mod replay;
pub mod send;
pub mod sinks;
pub mod telemetry;
pub mod version;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use telemetry_gateway_auth::LicenseVerifier;
use telemetry_gateway_auth::sams::SamsClientConfig;
use telemetry_gateway_server::{
    ConnectionLimits, EventGateway, EventPolicy, InflightBudget, ManagedServiceAuthorizer,
    NotConfigured, RateLimiter, SamsAuthorizer, ServerOptions,
};
use tokio::net::TcpListener;

use crate::config::{Config, ConfigError, ConfigErrors, LicenseConfig, SamsConfig};

/// However late the drain ends, the sink gets this long to flush what it buffered.
const MIN_FLUSH_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Builds the license verifier the configuration asks for.
pub fn license_verifier(config: &LicenseConfig) -> Result<LicenseVerifier, ConfigError> {
    config.validate()?;
    let invalid = |setting: &'static str| {
        move |err: telemetry_gateway_auth::KeyConfigError| ConfigError::Invalid {
            setting,
            message: err.to_string(),
        }
    };
    if let Some(line) = &config.license_public_key {
        return LicenseVerifier::from_openssh_public_key(line)
            .map_err(invalid(config::LICENSE_PUBLIC_KEY));
    }
    if let Some(pem) = &config.license_generation_key {
        return LicenseVerifier::from_pem_private_key(pem.expose())
            .map_err(invalid(config::LICENSE_GENERATION_KEY));
    }
    Ok(LicenseVerifier::production())
}

/// Builds the managed-service check: SAMS introspection with client credentials, or
/// [`NotConfigured`] without them.
pub fn managed_authorizer(
    config: &SamsConfig,
) -> Result<Arc<dyn ManagedServiceAuthorizer>, ConfigError> {
    let Some(credentials) = config.credentials()? else {
        return Ok(Arc::new(NotConfigured));
    };
    let setting = if config.sams_server_url.is_some() {
        config::SAMS_SERVER_URL
    } else {
        config::SAMS_URL
    };
    let mut client = SamsClientConfig::new(
        credentials.api_url,
        credentials.client_id,
        credentials.client_secret,
    );
    client.max_concurrent_introspections =
        usize::try_from(config.sams_max_concurrent_introspections).unwrap_or(usize::MAX);
    let authorizer = SamsAuthorizer::new(client).map_err(|err| ConfigError::Invalid {
        setting,
        message: format!("{:#}", anyhow::Error::new(err)),
    })?;
    Ok(Arc::new(authorizer))
}

/// What the configuration builds before anything listens: the credential checks and the sinks
/// to open.
pub struct Prepared {
    licenses: LicenseVerifier,
    managed: Arc<dyn ManagedServiceAuthorizer>,
}

/// Checks the whole configuration and builds what needs no network; every problem is reported
/// at once (`telemetry-gateway check-config` and the start of `serve`).
pub fn prepare(config: &Config) -> Result<Prepared, ConfigErrors> {
    let mut problems = ConfigErrors::default();
    let licenses = license_verifier(&config.license).map_err(|err| problems.push(err));
    let managed = managed_authorizer(&config.sams).map_err(|err| problems.push(err));
    if let Err(errors) = config.events.selected_sinks() {
        problems.extend(errors);
    }
    if let Err(errors) = config.dead_letters.destination(&config.events) {
        problems.extend(errors);
    }
    if let Err(errors) = logging::LogSettings::from_config(&config.logging, config.server.msp) {
        problems.extend(errors);
    }
    match (licenses, managed) {
        (Ok(licenses), Ok(managed)) if problems.problems().is_empty() => {
            Ok(Prepared { licenses, managed })
        }
        _ => Err(problems),
    }
}

/// Runs the gateway until `shutdown` completes, then drains and closes the sink. `prometheus` is
/// the registry to serve at `/metrics`, if any.
pub async fn run(
    config: Config,
    prometheus: Option<prometheus::Registry>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let Prepared { licenses, managed } = prepare(&config)?;
    match config.sams.credentials().ok().flatten() {
        Some(credentials) => {
            tracing::info!(sams = %credentials.api_url, clientID = %credentials.client_id, "managed services authenticate with SAMS")
        }
        None => tracing::info!(
            "SAMS client credentials are not set: managed-service calls will be refused"
        ),
    }
    let sink = sinks::build(&config.events).await?;
    let dead_letters = sinks::dead_letters(&config.dead_letters, &config.events).await?;
    let policy = EventPolicy {
        fingerprint_license_keys: config.events.fingerprint_license_keys,
        reject_expired_licenses: config.license.reject_expired_licenses,
        enforce_export_tags: config.license.enforce_export_tags,
    };
    let budget = InflightBudget::new(
        config.server.max_inflight_bytes,
        config.server.inflight_wait,
    )
    .with_limits(
        config
            .limits
            .limits(config.server.max_receive_message_bytes),
    );
    let mut gateway =
        EventGateway::new(sink.clone(), licenses, managed, policy).with_budget(budget);
    if let Some(limit) = config.rate_limit.limit() {
        tracing::info!(
            eventsPerSecond = limit.events_per_second(),
            burst = limit.burst(),
            "per-sender rate limit on"
        );
        gateway = gateway.with_rate_limiter(RateLimiter::new(limit));
    }
    if let Some(dead_letters) = &dead_letters {
        tracing::info!(destination = %dead_letters.describe(), "dead letters (events refused for good) go to {}", dead_letters.describe());
        gateway = gateway.with_dead_letters(Arc::clone(dead_letters));
    }
    let gateway = Arc::new(gateway);
    if config.server.diagnostics_secret.is_none() {
        tracing::warn!("DIAGNOSTICS_SECRET is not set: /-/healthz is not authenticated");
    }
    let connections = config.connection_limits();
    let stream_lifetime: std::time::Duration = config.limits.stream_lifetime.into();
    if !connections.max_age.is_zero() && connections.max_age_grace < stream_lifetime {
        tracing::warn!(
            grace = ?connections.max_age_grace,
            stream_lifetime = ?stream_lifetime,
            "TELEMETRY_GATEWAY_MAX_CONNECTION_AGE_GRACE is shorter than the stream lifetime: \
             streams in progress at a connection's maximum age may be cut before they end, \
             their last payload unanswered (senders retry it)"
        );
    }
    open_file_limit(connections.max_connections);
    log_memory_bound(
        config.server.max_inflight_bytes,
        config.limits.max_streams_per_connection,
        &connections,
    );
    let listener = TcpListener::bind(config.server.listen_addr())
        .await
        .with_context(|| format!("listening on {} (PORT)", config.server.listen_addr()))?;
    let address = listener.local_addr()?;
    tracing::info!(
        %address,
        version = version::version(),
        environment = %config.server.environment_id,
        "telemetry gateway listening"
    );
    tracing::info!(sink = sink.name(), destination = %sink.describe(), "events go to {}", sink.describe());

    let prometheus = match (config.server.metrics_port, prometheus) {
        (Some(port), Some(registry)) => {
            serve_metrics(
                SocketAddr::new(config.server.listen_address, port),
                registry,
            )
            .await?;
            None
        }
        (_, prometheus) => prometheus,
    };
    let options = ServerOptions {
        max_receive_message_bytes: config.server.max_receive_message_bytes,
        version: version::version().to_string(),
        diagnostics_secret: config.server.diagnostics_secret.clone(),
        prometheus,
        connections,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = telemetry_gateway_server::serve(listener, gateway, options, async {
        let _ = stopped.await;
    });
    tokio::pin!(server);
    tokio::pin!(shutdown);
    // One deadline for the whole drain: finishing in-flight payloads and flushing the sink.
    let timeout = config.server.shutdown_timeout;
    let mut deadline = None;
    let served = tokio::select! {
        served = &mut server => served,
        () = &mut shutdown => {
            let at = tokio::time::Instant::now() + timeout;
            deadline = Some(at);
            let _ = stop.send(());
            match tokio::time::timeout_at(at, &mut server).await {
                Ok(served) => served,
                Err(_) => {
                    tracing::error!(
                        timeout_seconds = timeout.as_secs_f64(),
                        "shutdown deadline passed: in-flight payloads abandoned (not acknowledged)"
                    );
                    Ok(())
                }
            }
        }
    };
    tracing::info!("server stopped; flushing the sink");
    // What is left of the deadline, but at least a moment for buffered events to go out.
    let flush_by = deadline
        .unwrap_or_else(|| tokio::time::Instant::now() + timeout)
        .max(tokio::time::Instant::now() + MIN_FLUSH_TIME);
    let flushed = match tokio::time::timeout_at(flush_by, sink.shutdown()).await {
        Ok(flushed) => flushed.map_err(anyhow::Error::from),
        Err(_) => Err(anyhow::anyhow!(
            "the sink did not flush within the shutdown timeout ({timeout:?})"
        )),
    };
    if let Some(dead_letters) = &dead_letters
        && let Err(err) = dead_letters.close(flush_by).await
    {
        tracing::warn!(error = %err, "closing the dead-letter destination");
    }
    served?;
    flushed?;
    tracing::info!("telemetry gateway stopped");
    Ok(())
}

/// File descriptors kept for everything but the connections: files, sinks, the metrics port.
const FILE_HEADROOM: u64 = 256;

/// Raises the soft open-file limit to the hard one (Rust, unlike Go, leaves it where it was
/// inherited: often 1,024), and warns when `max_connections` would not leave room for the rest,
/// since the connection limit only protects the other file descriptors if it binds first.
fn open_file_limit(max_connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    // The soft limit is at most the hard one, so they differ when it is lower (`None` is
    // unlimited, which some systems refuse for open files: then it stays as it is).
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = raised,
            Err(error) => tracing::debug!(%error, "cannot raise the open-file limit"),
        }
    }
    let Some(files) = limit.current else {
        return;
    };
    let connections = max_connections as u64;
    if connections == 0 || connections + FILE_HEADROOM > files {
        tracing::warn!(
            max_connections,
            open_file_limit = files,
            "TELEMETRY_GATEWAY_MAX_CONNECTIONS does not leave {FILE_HEADROOM} file descriptors \
             below the open-file limit: a flood of connections could use up the ones the sinks \
             need; lower it, or raise the limit (ulimit -n)"
        );
    }
}

/// Says at start what senders can make the gateway hold at most, so that an operator can size
/// the container (or `TELEMETRY_GATEWAY_MAX_CONNECTIONS`) to it.
fn log_memory_bound(budget_bytes: usize, max_streams: u32, connections: &ConnectionLimits) {
    use telemetry_gateway_server::{connection_bound, memory_bound};
    let mib = |bytes: u64| bytes.div_ceil(1024 * 1024);
    match memory_bound(budget_bytes, max_streams, connections) {
        Some(bound) => tracing::info!(
            bound_mib = mib(bound),
            budget_mib = mib(budget_bytes as u64),
            max_connections = connections.max_connections,
            connection_kib = connection_bound(max_streams, connections).div_ceil(1024),
            window_bytes = connections.window_bytes,
            "senders can make the gateway hold at most {} MiB: the memory budget, what each \
             connection may leave unread and the health and reflection calls \
             (docs/security.md); the container needs this and about 64 MiB more",
            mib(bound)
        ),
        None => tracing::warn!(
            "the memory senders can make the gateway hold is not bounded: \
             TELEMETRY_GATEWAY_MAX_INFLIGHT_BYTES or TELEMETRY_GATEWAY_MAX_CONNECTIONS is 0"
        ),
    }
}

/// Serves `GET /metrics` on a port of its own (`TELEMETRY_GATEWAY_METRICS_PORT`) until the
/// process exits: scrapes keep working while the gateway drains.
async fn serve_metrics(address: SocketAddr, registry: prometheus::Registry) -> anyhow::Result<()> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("listening on {address} (TELEMETRY_GATEWAY_METRICS_PORT)"))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "metrics served at /metrics on their own port");
    let router = telemetry_gateway_server::diagnostics::metrics_router(registry);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(error = %err, "the metrics server stopped");
        }
    });
    Ok(())
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: a signal that arrives while the gateway is still starting is then
/// handled as a shutdown instead of killing the process with the default action. Call it inside
/// the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let handlers = signal(SignalKind::terminate())
            .and_then(|terminate| Ok((terminate, signal(SignalKind::interrupt())?)));
        async move {
            match handlers {
                Ok((mut terminate, mut interrupt)) => tokio::select! {
                    _ = interrupt.recv() => tracing::info!("received SIGINT, shutting down"),
                    _ = terminate.recv() => tracing::info!("received SIGTERM, shutting down"),
                },
                Err(err) => {
                    tracing::error!(error = %err, "cannot listen for SIGTERM or SIGINT");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("received SIGINT, shutting down");
        }
    }
}
