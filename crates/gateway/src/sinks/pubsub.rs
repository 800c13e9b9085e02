//! The `pubsub` sink's settings: one message per event on a Pub/Sub topic.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use clap::builder::BoolishValueParser;
use telemetry_gateway_sink::pubsub::{
    DEFAULT_PUBLISH_CONCURRENCY, DEFAULT_PUBLISH_TIMEOUT, PubSubSinkConfig, publish_concurrency,
};
use telemetry_gateway_sink::{EventSink, PubSubSink};

use super::SinkSettings;
use crate::config::{ConfigError, ConfigErrors, non_blank, required};

/// `TELEMETRY_GATEWAY_EVENTS_PUBSUB_ENABLED`.
pub const ENABLED: &str = "TELEMETRY_GATEWAY_EVENTS_PUBSUB_ENABLED";
/// `TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID`.
pub const PROJECT_ID: &str = "TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID";
/// `TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC_ID`.
pub const TOPIC_ID: &str = "TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC_ID";
/// `TELEMETRY_GATEWAY_EVENTS_STREAM_PUBLISH_CONCURRENCY`.
pub const PUBLISH_CONCURRENCY: &str = "TELEMETRY_GATEWAY_EVENTS_STREAM_PUBLISH_CONCURRENCY";
/// `TELEMETRY_GATEWAY_EVENTS_PUBSUB_PUBLISH_TIMEOUT_SECONDS`.
pub const PUBLISH_TIMEOUT_SECONDS: &str = "TELEMETRY_GATEWAY_EVENTS_PUBSUB_PUBLISH_TIMEOUT_SECONDS";
/// `PUBSUB_EMULATOR_HOST`.
pub const EMULATOR_HOST: &str = "PUBSUB_EMULATOR_HOST";

/// The Pub/Sub sink's settings (also the defaults of the dead-letter topic).
#[derive(Debug, Clone, Args)]
pub struct PubSubSettings {
    /// Publish events to Pub/Sub (`TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID` and `_TOPIC_ID` are
    /// then required); `false` selects the log sink (`docs/compatibility.md` §6).
    #[arg(long = "events-pubsub-enabled", env = ENABLED, value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub pubsub_enabled: Option<bool>,

    /// Google Cloud project of the Pub/Sub topic.
    #[arg(long = "events-pubsub-project-id", env = PROJECT_ID)]
    pub pubsub_project_id: Option<String>,

    /// Pub/Sub topic ID events are published to.
    #[arg(long = "events-pubsub-topic-id", env = TOPIC_ID)]
    pub pubsub_topic_id: Option<String>,

    /// How many events of one payload may await Pub/Sub's acknowledgement at once; 0 or less
    /// means 250 (`docs/compatibility.md` §4).
    #[arg(long = "events-stream-publish-concurrency",
        env = PUBLISH_CONCURRENCY,
        default_value_t = DEFAULT_PUBLISH_CONCURRENCY as i64,
        allow_negative_numbers = true
    )]
    pub publish_concurrency: i64,

    /// Longest wait, in seconds, for Pub/Sub to acknowledge a payload's events; events still
    /// unacknowledged are left out of the response, and the sender retries them.
    #[arg(long = "events-pubsub-publish-timeout-seconds",
        env = PUBLISH_TIMEOUT_SECONDS,
        default_value_t = DEFAULT_PUBLISH_TIMEOUT.as_secs()
    )]
    pub pubsub_publish_timeout_seconds: u64,

    /// `host:port` of a Pub/Sub emulator: publish there in plaintext without credentials.
    /// Unset: Google's endpoint with application default credentials.
    #[arg(long = "pubsub-emulator-host", env = EMULATOR_HOST)]
    pub pubsub_emulator_host: Option<String>,
}

impl PubSubSettings {
    /// Whether the settings ask for Pub/Sub when no sink list is given: enabled, or not
    /// disabled with a project or topic set (`docs/compatibility.md` §6).
    pub fn requested(&self) -> bool {
        self.pubsub_enabled == Some(true)
            || (self.pubsub_enabled.is_none()
                && (self.pubsub_project_id.is_some() || self.pubsub_topic_id.is_some()))
    }

    /// Whether Pub/Sub is explicitly turned off (which selects the log sink).
    pub fn disabled(&self) -> bool {
        self.pubsub_enabled == Some(false)
    }

    /// The sink's configuration for `topic` in `project`, with the emulator and timeout of these
    /// settings (shared with the dead-letter topic).
    pub fn for_topic(&self, project: String, topic: String) -> PubSubSinkConfig {
        let mut config = PubSubSinkConfig::new(project, topic);
        config.emulator_host = non_blank(&self.pubsub_emulator_host);
        config.publish_timeout =
            std::time::Duration::from_secs(self.pubsub_publish_timeout_seconds.max(1));
        config
    }

    /// The sink's configuration; project and topic must both be set.
    pub fn config(&self) -> Result<PubSubSinkConfig, ConfigErrors> {
        let mut problems = ConfigErrors::default();
        let project = required(&mut problems, &self.pubsub_project_id, PROJECT_ID, "pubsub");
        let topic = required(&mut problems, &self.pubsub_topic_id, TOPIC_ID, "pubsub");
        if self.pubsub_publish_timeout_seconds == 0 {
            problems.push(ConfigError::Invalid {
                setting: PUBLISH_TIMEOUT_SECONDS,
                message: "must be greater than 0".into(),
            });
        }
        problems.into_result()?;
        let mut config = self.for_topic(project, topic);
        config.publish_concurrency = publish_concurrency(self.publish_concurrency);
        Ok(config)
    }
}

impl SinkSettings for PubSubSettings {
    const CLOUD: bool = true;

    fn validate(&self) -> Result<(), ConfigErrors> {
        self.config().map(drop)
    }

    async fn build(&self) -> anyhow::Result<Arc<dyn EventSink>> {
        let sink = PubSubSink::connect(self.config()?)
            .await
            .context("TELEMETRY_GATEWAY_EVENTS_PUBSUB_*")?;
        Ok(Arc::new(sink))
    }
}
