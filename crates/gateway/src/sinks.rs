//! The sinks the gateway can deliver to: each has a module of its own with its settings (a clap
//! `Args` struct whose variables are named once, as constants that its `validate` errors reuse)
//! and how it is built; this file composes them. Adding a sink is a module implementing
//! [`SinkSettings`] and one line in the [`sinks!`] list below.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use telemetry_gateway_sink::{EventSink, FanoutSink, FileSink, Measured, PubSubSink, SinkMetrics};

use telemetry_gateway_server::{DeadLetterOptions, DeadLetters, Metrics};

use crate::config::{ConfigErrors, DeadLetterConfig, DeadLetterDestination, EventsConfig};

pub mod bigquery;
pub mod file;
pub mod log;
pub mod pubsub;

/// What a sink's module provides: its settings are checked without side effects, and built into
/// the (unmeasured) sink.
pub trait SinkSettings {
    /// Whether the sink delivers to a cloud service (the only destinations `replay` accepts).
    const CLOUD: bool;

    /// Checks the settings; each problem names the variable to fix.
    fn validate(&self) -> Result<(), ConfigErrors>;

    /// Opens or connects the sink.
    fn build(&self) -> impl Future<Output = anyhow::Result<Arc<dyn EventSink>>> + Send;
}

/// Declares the sinks: the [`SinkKind`] a sink list names, the settings of each (flattened into
/// the command line in this order), and the dispatch from one to the other.
macro_rules! sinks {
    ($($(#[$doc:meta])* $kind:ident => $field:ident: $settings:ty,)+) => {
        /// The sinks the gateway can deliver to.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
        pub enum SinkKind {
            $($(#[$doc])* $kind,)+
        }

        /// Every sink's settings.
        #[derive(Debug, Clone, Args)]
        pub struct SinkSettingsAll {
            $(
                #[allow(missing_docs)]
                #[command(flatten)]
                pub $field: $settings,
            )+
        }

        impl SinkKind {
            /// Whether this sink delivers to a cloud service.
            pub fn is_cloud(self) -> bool {
                match self {
                    $(SinkKind::$kind => <$settings as SinkSettings>::CLOUD,)+
                }
            }
        }

        impl SinkSettingsAll {
            /// Checks the settings of the sink `kind`.
            pub fn validate(&self, kind: SinkKind) -> Result<(), ConfigErrors> {
                match kind {
                    $(SinkKind::$kind => self.$field.validate(),)+
                }
            }

            /// Builds the sink `kind`, unmeasured.
            pub async fn build(&self, kind: SinkKind) -> anyhow::Result<Arc<dyn EventSink>> {
                match kind {
                    $(SinkKind::$kind => self.$field.build().await,)+
                }
            }
        }
    };
}

sinks! {
    /// Newline-delimited JSON files, fsynced before acknowledging (the default).
    File => file: file::FileSettings,
    /// Payloads written to the log at debug level (nothing is stored).
    Log => log: log::LogSettings,
    /// Drops every event but acknowledges it: a benchmarking aid, never for production.
    Discard => discard: log::DiscardSettings,
    /// One message per event on a Pub/Sub topic (`TELEMETRY_GATEWAY_EVENTS_PUBSUB_*`).
    Pubsub => pubsub: pubsub::PubSubSettings,
    /// One row per event in a BigQuery table (`TELEMETRY_GATEWAY_EVENTS_BIGQUERY_*`).
    Bigquery => bigquery: bigquery::BigQuerySettings,
}

impl EventsConfig {
    /// The sinks to build, after defaults; only the selected sinks' settings are checked, and
    /// every problem is reported. Without a sink list: Pub/Sub when its settings ask for it, else
    /// the log sink when Pub/Sub is turned off; BigQuery besides when a table is set; the file
    /// sink when none of these.
    pub fn selected_sinks(&self) -> Result<Vec<SinkKind>, ConfigErrors> {
        let settings = &self.settings;
        let mut sinks = self.sinks.clone();
        if sinks.is_empty() {
            if settings.pubsub.requested() {
                sinks.push(SinkKind::Pubsub);
            } else if settings.pubsub.disabled() {
                sinks.push(SinkKind::Log);
            }
            if settings.bigquery.requested() {
                sinks.push(SinkKind::Bigquery);
            }
            if sinks.is_empty() {
                sinks.push(SinkKind::File);
            }
        }
        let mut seen = Vec::new();
        sinks.retain(|kind| {
            let first = !seen.contains(kind);
            seen.push(*kind);
            first
        });
        let mut problems = ConfigErrors::default();
        for kind in &sinks {
            if let Err(errors) = settings.validate(*kind) {
                problems.extend(errors);
            }
        }
        problems.into_result()?;
        Ok(sinks)
    }
}

/// The sink (or fan-out of sinks) the configuration asks for, each backend measured.
pub async fn build(config: &EventsConfig) -> anyhow::Result<Arc<dyn EventSink>> {
    let metrics = SinkMetrics::global();
    let mut sinks: Vec<Arc<dyn EventSink>> = Vec::new();
    for kind in config.selected_sinks()? {
        let sink = config.settings.build(kind).await?;
        sinks.push(Arc::new(Measured::new(sink, metrics.clone())));
    }
    Ok(if sinks.len() == 1 {
        sinks.remove(0)
    } else {
        Arc::new(FanoutSink::new(sinks))
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
        Some(DeadLetterDestination::Dir(file)) => {
            Arc::new(FileSink::open(file).context(crate::config::DEADLETTER_DIR)?)
        }
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
