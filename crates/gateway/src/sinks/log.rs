//! The `log` and `discard` sinks, which have no settings.

use std::sync::Arc;

use clap::Args;
use telemetry_gateway_sink::{DiscardSink, EventSink, LogSink};

use super::SinkSettings;
use crate::config::ConfigErrors;

/// The log sink: payloads logged at debug level (`docs/compatibility.md` §6).
#[derive(Debug, Clone, Args)]
pub struct LogSettings {}

impl SinkSettings for LogSettings {
    const CLOUD: bool = false;

    fn validate(&self) -> Result<(), ConfigErrors> {
        Ok(())
    }

    async fn build(&self) -> anyhow::Result<Arc<dyn EventSink>> {
        Ok(Arc::new(LogSink::new()))
    }
}

/// The discard sink: a benchmarking aid.
#[derive(Debug, Clone, Args)]
pub struct DiscardSettings {}

impl SinkSettings for DiscardSettings {
    const CLOUD: bool = false;

    fn validate(&self) -> Result<(), ConfigErrors> {
        Ok(())
    }

    async fn build(&self) -> anyhow::Result<Arc<dyn EventSink>> {
        tracing::warn!(
            "the discard sink acknowledges events and drops them: use it only for benchmarks"
        );
        Ok(Arc::new(DiscardSink::new()))
    }
}
