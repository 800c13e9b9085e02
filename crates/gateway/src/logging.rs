//! Log set-up: JSON lines for machines, readable text for people.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `level` is a level or a tracing filter directive.
pub fn init(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(level)
        .map_err(|err| anyhow::anyhow!("SRC_LOG_LEVEL: invalid level {level:?}: {err}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text | LogFormat::Condensed => builder.try_init(),
    };
    installed.map_err(|err| anyhow::anyhow!("installing the logger: {err}"))
}
