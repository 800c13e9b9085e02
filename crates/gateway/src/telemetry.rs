//! Where the gateway's metrics, traces and error reports go: the OpenTelemetry providers, the
//! Prometheus registry behind `/metrics`, and the log subscriber they feed from.

use anyhow::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use telemetry_gateway_server::Secret;

use crate::config::Config;
use crate::error_reporting::{self, ErrorReporting};
use crate::logging;
use crate::otlp::{self, OtlpTraces};

/// The service name reported with metrics and traces.
pub const SERVICE_NAME: &str = "telemetry-gateway";

/// The installed telemetry; call [`Telemetry::shutdown`] before exiting to flush exporters.
pub struct Telemetry {
    meter_provider: Option<SdkMeterProvider>,
    /// The registry served at `/metrics` (only when `MSP` is not true).
    pub prometheus: Option<prometheus::Registry>,
    /// The Sentry client, when `SENTRY_DSN` is set.
    sentry: Option<ErrorReporting>,
    /// The OTLP span exporter, when an OTLP endpoint for traces is set.
    traces: Option<OtlpTraces>,
}

impl Telemetry {
    /// Installs logging and, unless `OTEL_SDK_DISABLED=true`, the OpenTelemetry meter provider
    /// (and, with an OTLP endpoint for traces, the tracer provider) as the global ones. Must run
    /// inside the Tokio runtime (exporters spawn tasks).
    pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
        let log_settings = logging::LogSettings::from_config(&config.logging, config.server.msp)?;
        // Sentry starts before the first log line, so the runtime's threads inherit its client.
        let sentry = ErrorReporting::init(
            config.telemetry.sentry_dsn.as_ref().map(Secret::expose),
            &config.server.environment_id,
        )?;
        let sentry_layer = sentry.as_ref().map(|_| error_reporting::layer());
        // The span exporter exists before the subscriber, which feeds it through a layer.
        let traces = if config.telemetry.otel_sdk_disabled {
            None
        } else {
            OtlpTraces::start(&config.telemetry, resource())?
        };
        let mut extra: Vec<logging::BoxedLayer> = sentry_layer.into_iter().collect();
        extra.extend(traces.as_ref().map(OtlpTraces::layer));
        logging::init(&log_settings, extra)?;
        match &sentry {
            Some(sentry) => sentry.log_started(),
            None => tracing::info!("SENTRY_DSN is not set: errors are not reported to Sentry"),
        }
        if config.telemetry.otel_sdk_disabled {
            tracing::info!("OTEL_SDK_DISABLED=true: no metrics or traces are recorded");
            return Ok(Telemetry {
                meter_provider: None,
                prometheus: None,
                sentry,
                traces: None,
            });
        }
        match &traces {
            Some(traces) => tracing::info!(
                endpoint = traces.endpoint(),
                "traces go to OTLP at {}",
                traces.endpoint()
            ),
            None => {
                tracing::info!("OTEL_EXPORTER_OTLP_ENDPOINT is not set: traces are not exported")
            }
        }
        let mut meters = SdkMeterProvider::builder().with_resource(resource());
        let otlp_reader = otlp::metric_reader(&config.telemetry)?;
        let has_otlp = otlp_reader.is_some();
        if let Some(reader) = otlp_reader {
            meters = meters.with_reader(reader);
            let endpoint = otlp::metrics_endpoint(&config.telemetry).unwrap_or_default();
            tracing::info!(endpoint, "metrics go to OTLP at {endpoint}");
        }
        let prometheus = if config.server.msp && config.server.metrics_port.is_none() {
            if !has_otlp {
                // A meter provider without a reader makes every observable gauge log an error:
                // with nowhere to send metrics, keep the global no-op meter instead.
                tracing::info!(
                    "MSP=true and OTEL_EXPORTER_OTLP_ENDPOINT is not set: metrics are not exported"
                );
                return Ok(Telemetry {
                    meter_provider: None,
                    prometheus: None,
                    sentry,
                    traces,
                });
            }
            None
        } else {
            let registry = prometheus::Registry::new();
            // The process metrics as Prometheus client libraries name them
            // (`process_resident_memory_bytes`, `process_cpu_seconds_total`, ...).
            #[cfg(target_os = "linux")]
            registry
                .register(Box::new(
                    prometheus::process_collector::ProcessCollector::for_self(),
                ))
                .context("registering the process metrics")?;
            let exporter = opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .build()
                .context("building the Prometheus exporter")?;
            meters = meters.with_reader(exporter);
            Some(registry)
        };
        let meter_provider = meters.build();
        opentelemetry::global::set_meter_provider(meter_provider.clone());
        Ok(Telemetry {
            meter_provider: Some(meter_provider),
            prometheus,
            sentry,
            traces,
        })
    }

    /// Flushes and stops the exporters, then sends the queued Sentry reports.
    pub fn shutdown(self) {
        if let Some(traces) = self.traces {
            traces.shutdown();
        }
        if let Some(provider) = self.meter_provider
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "shutting down the meter provider");
        }
        // Last, so reports of the shutdown itself are sent too.
        if let Some(sentry) = self.sentry {
            sentry.close();
        }
    }
}

/// Who reports the metrics and traces: `service.name` and `service.version`.
fn resource() -> Resource {
    Resource::builder()
        .with_service_name(SERVICE_NAME)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            crate::version::version(),
        ))
        .build()
}
