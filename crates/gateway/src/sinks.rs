//! Builds the configured sinks; several are combined into a fan-out.

use std::sync::Arc;

use anyhow::Context;
use telemetry_gateway_sink::{
    BigQuerySink, DiscardSink, EventSink, FanoutSink, FileSink, FileSinkConfig, LogSink, Measured,
    PubSubSink, SinkMetrics,
};

use crate::config::{EventsConfig, SinkKind};

/// The sink (or fan-out of sinks) the configuration asks for, each backend measured.
pub async fn build(config: &EventsConfig) -> anyhow::Result<Arc<dyn EventSink>> {
    let metrics = SinkMetrics::global();
    let mut sinks = Vec::new();
    for kind in config.selected_sinks()? {
        sinks.push(build_one(kind, config, &metrics).await?);
    }
    Ok(if sinks.len() == 1 {
        sinks.remove(0)
    } else {
        Arc::new(FanoutSink::new(sinks))
    })
}

async fn build_one(
    kind: SinkKind,
    config: &EventsConfig,
    metrics: &SinkMetrics,
) -> anyhow::Result<Arc<dyn EventSink>> {
    let m = metrics.clone();
    Ok(match kind {
        SinkKind::File => Arc::new(Measured::new(
            FileSink::open(FileSinkConfig {
                dir: config.file_dir.clone(),
                max_file_bytes: config.file_max_bytes,
            })
            .context("TELEMETRY_GATEWAY_EVENTS_FILE_DIR")?,
            m,
        )),
        SinkKind::Log => Arc::new(Measured::new(LogSink::new(), m)),
        SinkKind::Discard => {
            tracing::warn!(
                "the discard sink acknowledges events and drops them: use it only for benchmarks"
            );
            Arc::new(Measured::new(DiscardSink::new(), m))
        }
        SinkKind::Pubsub => Arc::new(Measured::new(
            PubSubSink::connect(config.pubsub_sink()?)
                .await
                .context("TELEMETRY_GATEWAY_EVENTS_PUBSUB_*")?,
            m,
        )),
        SinkKind::Bigquery => Arc::new(Measured::new(
            BigQuerySink::connect(config.bigquery_sink()?)
                .await
                .context("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_*")?,
            m,
        )),
    })
}
