//! Where the gateway's metrics, traces and error reports go: the OpenTelemetry providers, the
//! Prometheus registry behind `/metrics`, and the log subscriber they feed from.

use anyhow::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;

use crate::config::Config;
use crate::logging;

/// The service name reported with metrics and traces.
pub const SERVICE_NAME: &str = "telemetry-gateway";

/// The installed telemetry; call [`Telemetry::shutdown`] before exiting to flush exporters.
pub struct Telemetry {
    meter_provider: Option<SdkMeterProvider>,
    /// The registry served at `/metrics` (only when `MSP` is not true).
    pub prometheus: Option<prometheus::Registry>,
}

impl Telemetry {
    /// Installs logging and, unless `OTEL_SDK_DISABLED=true`, the OpenTelemetry meter provider
    /// as the global one. Must run inside the Tokio runtime (exporters spawn tasks).
    pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
        let format = config.logging.format(config.server.msp);
        logging::init(&config.logging.log_level, format, Vec::new())?;
        if config.telemetry.otel_sdk_disabled {
            tracing::info!("OTEL_SDK_DISABLED=true: no metrics or traces are recorded");
            return Ok(Telemetry {
                meter_provider: None,
                prometheus: None,
            });
        }
        let resource = Resource::builder()
            .with_service_name(SERVICE_NAME)
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let mut meters = SdkMeterProvider::builder().with_resource(resource);
        let prometheus = if config.server.msp {
            None
        } else {
            let registry = prometheus::Registry::new();
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
        })
    }

    /// Flushes and stops the exporters.
    pub fn shutdown(self) {
        if let Some(provider) = self.meter_provider
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "shutting down the meter provider");
        }
    }
}
