//! Builds the configured sinks; several are combined into a fan-out.

use std::sync::Arc;

use anyhow::Context;
use telemetry_gateway_sink::{
    BigQuerySink, DiscardSink, EventSink, FanoutSink, FileSink, FileSinkConfig, LogSink, Measured,
    PubSubSink, SinkMetrics,
};

use telemetry_gateway_server::{DeadLetterOptions, DeadLetters, Metrics};

use crate::config::{DeadLetterConfig, DeadLetterDestination, EventsConfig, SinkKind};

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

/// The dead-letter writer the configuration asks for, `None` when dead letters are off. Its
/// destination is a file sink or a Pub/Sub sink of its own, not measured as an events sink.
pub async fn dead_letters(
    config: &DeadLetterConfig,
    events: &EventsConfig,
) -> anyhow::Result<Option<Arc<DeadLetters>>> {
    let destination: Arc<dyn EventSink> = match config.destination(events)? {
        None => return Ok(None),
        Some(DeadLetterDestination::Dir(dir)) => Arc::new(
            FileSink::open(FileSinkConfig {
                dir,
                max_file_bytes: events.file_max_bytes,
            })
            .context("TELEMETRY_GATEWAY_EVENTS_DEADLETTER_DIR")?,
        ),
        Some(DeadLetterDestination::PubSub(pubsub)) => Arc::new(
            PubSubSink::connect(pubsub)
                .await
                .context("TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_*")?,
        ),
    };
    let options = DeadLetterOptions {
        max_record_bytes: config.deadletter_max_bytes,
        queue_bytes: config.deadletter_queue_bytes,
        gateway_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    Ok(Some(Arc::new(DeadLetters::start(
        destination,
        options,
        Metrics::global(),
    ))))
}
