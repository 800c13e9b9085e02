//! Log set-up: JSON lines for machines, readable text for people, plus whatever layers the
//! telemetry set-up adds (OpenTelemetry spans, Sentry).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::LogFormat;

/// A layer added next to the log output.
pub type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the global subscriber. `level` is a level or a tracing filter directive for the log
/// output; `extra` layers filter for themselves (so `SRC_LOG_LEVEL=error` still records spans and
/// Sentry breadcrumbs).
pub fn init(level: &str, format: LogFormat, extra: Vec<BoxedLayer>) -> anyhow::Result<()> {
    let mut filter = EnvFilter::try_new(level)
        .map_err(|err| anyhow::anyhow!("SRC_LOG_LEVEL: invalid level {level:?}: {err}"))?;
    // The OpenTelemetry SDK's own chatter ("Global meter provider is set") is noise at info.
    if !level.contains("opentelemetry") {
        for directive in ["opentelemetry=warn", "opentelemetry_sdk=warn"] {
            filter = filter.add_directive(directive.parse()?);
        }
    }
    let output = tracing_subscriber::fmt::layer().with_target(false);
    let output = match format {
        LogFormat::Json => output
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
        LogFormat::Text | LogFormat::Condensed => output.boxed(),
    };
    // An empty `Vec` layer would declare no interest in anything, silencing every layer.
    let extra = (!extra.is_empty()).then_some(extra);
    tracing_subscriber::registry()
        .with(extra)
        .with(output.with_filter(filter))
        .try_init()
        .map_err(|err| anyhow::anyhow!("installing the logger: {err}"))
}
