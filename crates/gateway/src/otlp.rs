//! OTLP/gRPC export of traces and metrics, switched on by the standard
//! `OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT` settings. The SDK reads the other standard
//! variables itself: headers, timeouts, compression, `OTEL_BSP_*`, `OTEL_METRIC_EXPORT_INTERVAL`,
//! `OTEL_TRACES_SAMPLER`.

use std::time::Duration;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::tonic_types::transport::ClientTlsConfig;
use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::PeriodicReader;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};

use crate::config::TelemetryConfig;
use crate::logging::BoxedLayer;

/// How long shutdown waits for the queued spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Crates that carry the export itself: their spans would feed back into the export.
const EXPORT_TRANSPORT: [&str; 5] = ["h2", "hyper", "tonic", "tower", "opentelemetry"];

/// The protocol settings the SDK would otherwise honour; only gRPC is built in.
const PROTOCOL_SETTINGS: [&str; 3] = [
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
];

/// The OTLP endpoint for traces, if any: the traces endpoint, else the common one.
pub fn traces_endpoint(config: &TelemetryConfig) -> Option<&str> {
    first_set(&[
        &config.otel_exporter_otlp_traces_endpoint,
        &config.otel_exporter_otlp_endpoint,
    ])
}

/// The OTLP endpoint for metrics, if any: the metrics endpoint, else the common one.
pub fn metrics_endpoint(config: &TelemetryConfig) -> Option<&str> {
    first_set(&[
        &config.otel_exporter_otlp_metrics_endpoint,
        &config.otel_exporter_otlp_endpoint,
    ])
}

fn first_set<'a>(settings: &[&'a Option<String>]) -> Option<&'a str> {
    settings
        .iter()
        .filter_map(|setting| setting.as_deref())
        .map(str::trim)
        .find(|value| !value.is_empty())
}

/// Refuses a protocol other than gRPC rather than sending gRPC to an HTTP receiver.
fn check_protocol() -> anyhow::Result<()> {
    for setting in PROTOCOL_SETTINGS {
        if let Ok(protocol) = std::env::var(setting)
            && !protocol.is_empty()
            && protocol != "grpc"
        {
            anyhow::bail!("{setting}={protocol}: only `grpc` is supported");
        }
    }
    Ok(())
}

/// Refuses an endpoint without a scheme (`collector:4317`), which would only fail at export.
fn check_endpoint(endpoint: &str) -> anyhow::Result<()> {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        return Ok(());
    }
    anyhow::bail!(
        "OTLP endpoint {endpoint:?} (OTEL_EXPORTER_OTLP_*ENDPOINT): an `http://` or `https://` URL is required"
    )
}

/// Adds TLS with the webpki roots when the endpoint is `https://`; the SDK's default TLS
/// configuration trusts no root at all.
fn with_tls_for<B: WithTonicConfig>(builder: B, endpoint: &str) -> B {
    if endpoint.starts_with("https://") {
        builder.with_tls_config(ClientTlsConfig::new().with_webpki_roots())
    } else {
        builder
    }
}

/// Spans exported over OTLP: the tracer provider behind the `tracing` layer.
pub struct OtlpTraces {
    provider: SdkTracerProvider,
    endpoint: String,
}

impl OtlpTraces {
    /// Starts the span exporter when an endpoint for traces is configured (`None` otherwise), and
    /// installs its provider and the W3C TraceContext propagator as the global ones. Must run
    /// inside the Tokio runtime.
    pub fn start(config: &TelemetryConfig, resource: Resource) -> anyhow::Result<Option<Self>> {
        let Some(endpoint) = traces_endpoint(config) else {
            return Ok(None);
        };
        check_protocol()?;
        check_endpoint(endpoint)?;
        let builder = SpanExporter::builder().with_tonic().with_endpoint(endpoint);
        let exporter = with_tls_for(builder, endpoint)
            .build()
            .with_context(|| format!("OTLP span exporter for {endpoint}"))?;
        let mut provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(exporter);
        // The original traces every request; the SDK reads OTEL_TRACES_SAMPLER when it is set.
        if std::env::var_os("OTEL_TRACES_SAMPLER").is_none() {
            provider = provider.with_sampler(Sampler::AlwaysOn);
        }
        let provider = provider.build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        Ok(Some(OtlpTraces {
            provider,
            endpoint: endpoint.to_string(),
        }))
    }

    /// Where the spans go.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The layer that turns `tracing` spans into OpenTelemetry spans. A span's status comes
    /// only from its `otel.status_code` field, not from error logs inside it.
    pub fn layer(&self) -> BoxedLayer {
        let tracer = self.provider.tracer(crate::telemetry::SERVICE_NAME);
        let not_the_transport = EXPORT_TRANSPORT.iter().fold(
            // Spans at info and above: the gateway's own (RPCs, batches, SAMS checks) and those
            // of the libraries it calls, not their debug internals.
            Targets::new().with_default(LevelFilter::INFO),
            |targets, target| targets.with_target(*target, LevelFilter::OFF),
        );
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_threads(false)
            .with_error_events_to_status(false)
            .with_filter(not_the_transport)
            .boxed()
    }

    /// Exports the queued spans (for at most 5 s) and stops the exporter.
    pub fn shutdown(self) {
        if let Err(err) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %err, "shutting down the tracer provider");
        }
    }
}

/// A reader that exports metrics over OTLP every `OTEL_METRIC_EXPORT_INTERVAL` (default 60 s),
/// when an endpoint for metrics is configured; `None` otherwise. Must run inside the Tokio
/// runtime.
pub fn metric_reader(
    config: &TelemetryConfig,
) -> anyhow::Result<Option<PeriodicReader<MetricExporter>>> {
    let Some(endpoint) = metrics_endpoint(config) else {
        return Ok(None);
    };
    check_protocol()?;
    check_endpoint(endpoint)?;
    let builder = MetricExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint);
    let exporter = with_tls_for(builder, endpoint)
        .build()
        .with_context(|| format!("OTLP metric exporter for {endpoint}"))?;
    Ok(Some(PeriodicReader::builder(exporter).build()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings from these flags (an empty value is the same as unset).
    fn config(common: &str, traces: &str, metrics: &str) -> TelemetryConfig {
        #[derive(clap::Parser)]
        struct Settings {
            #[command(flatten)]
            telemetry: TelemetryConfig,
        }
        let args = [
            "test",
            "--otel-exporter-otlp-endpoint",
            common,
            "--otel-exporter-otlp-traces-endpoint",
            traces,
            "--otel-exporter-otlp-metrics-endpoint",
            metrics,
        ];
        <Settings as clap::Parser>::try_parse_from(args)
            .expect("valid flags")
            .telemetry
    }

    #[test]
    fn the_signal_endpoint_wins_over_the_common_one() {
        let both = config("http://common:4317", "http://traces:4317", "");
        assert_eq!(traces_endpoint(&both), Some("http://traces:4317"));
        assert_eq!(metrics_endpoint(&both), Some("http://common:4317"));
    }

    #[test]
    fn without_endpoints_nothing_is_exported() {
        let none = config("", " ", "");
        assert_eq!(traces_endpoint(&none), None);
        assert_eq!(metrics_endpoint(&none), None);
    }

    #[test]
    fn a_signal_endpoint_alone_enables_only_that_signal() {
        let metrics_only = config("", "", "http://metrics:4317");
        assert_eq!(traces_endpoint(&metrics_only), None);
        assert_eq!(metrics_endpoint(&metrics_only), Some("http://metrics:4317"));
    }

    #[test]
    fn an_endpoint_must_be_an_http_or_https_url() {
        assert!(check_endpoint("http://collector:4317").is_ok());
        assert!(check_endpoint("https://collector.example.com").is_ok());
        let err = check_endpoint("collector:4317").expect_err("no scheme");
        assert!(err.to_string().contains("\"collector:4317\""), "{err}");
    }
}
