//! The Pub/Sub sink: one message per event, as the original gateway publishes them
//! (`docs/compatibility.md` §4 and §6).
//!
//! Each event becomes one message whose data is the payload bytes and whose attributes are the
//! event's attributes, both unchanged. The official client (`google-cloud-pubsub`) groups the
//! messages of concurrent publishes into requests within Pub/Sub's limits (at most 1,000
//! messages and 10 MB each, sent after at most 10 ms). An event is [`PublishOutcome::Delivered`]
//! only once the server has acknowledged its request and returned its message ID; every other
//! ending (an RPC error, the client shutting down, the deadline passing) is
//! [`PublishOutcome::Retryable`] for that event alone.
//!
//! Attributes are first fitted into Pub/Sub's limits ([`attributes`]), so that no sender can
//! make a request fail for the events of others.
//!
//! A publish never takes longer than the configured timeout: events still unacknowledged at the
//! deadline are reported retryable, so an unreachable Pub/Sub slows senders down instead of
//! hanging their streams. A message the client sends after the deadline may still be
//! published; the sender retries it, and downstream de-duplicates by event ID (at least once).

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_pubsub::client::{BasePublisher, Publisher, TopicAdmin};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::retry_policy::RetryableErrors;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use tokio::time::Instant;

use crate::{Attributes, EventSink, PreparedEvent, PublishOutcome, SinkError};

pub mod attributes;

pub use attributes::{
    AttributeFit, MAX_ATTRIBUTE_KEY_BYTES, MAX_ATTRIBUTE_VALUE_BYTES, MAX_ATTRIBUTES,
    attributes_fit, fit_attributes,
};

const NAME: &str = "pubsub";

/// The original's publish concurrency per batch, also used for settings of 0 or less.
pub const DEFAULT_PUBLISH_CONCURRENCY: usize = 250;

/// How long a publish may wait for Pub/Sub's acknowledgement by default.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Pub/Sub's limit on messages per publish request.
pub const MAX_MESSAGES_PER_REQUEST: u32 = 1_000;

/// Pub/Sub's limit on the size of a publish request, as the client counts it (data, attributes
/// and ordering keys; the encoding overhead stays well below the service's 10 MiB).
pub const MAX_BYTES_PER_REQUEST: u32 = 10_000_000;

/// How long the client waits for more messages before sending a request that is not full.
const BATCH_DELAY: Duration = Duration::from_millis(10);

/// Where and how the Pub/Sub sink publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubSubSinkConfig {
    /// Google Cloud project of the topic.
    pub project_id: String,
    /// ID of the topic within the project.
    pub topic_id: String,
    /// `host:port` of a Pub/Sub emulator (`PUBSUB_EMULATOR_HOST`): plaintext and anonymous
    /// credentials. Without it the sink uses Google's endpoint and application default
    /// credentials.
    pub emulator_host: Option<String>,
    /// How many events of one batch may await acknowledgement at once.
    pub publish_concurrency: usize,
    /// The longest a publish (or health check) may take before its events are retryable.
    pub publish_timeout: Duration,
}

impl PubSubSinkConfig {
    /// The settings for `projects/<project_id>/topics/<topic_id>`, with the default concurrency
    /// and timeout and no emulator.
    pub fn new(project_id: impl Into<String>, topic_id: impl Into<String>) -> PubSubSinkConfig {
        PubSubSinkConfig {
            project_id: project_id.into(),
            topic_id: topic_id.into(),
            emulator_host: None,
            publish_concurrency: DEFAULT_PUBLISH_CONCURRENCY,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
        }
    }

    /// The topic's full resource name.
    pub fn topic_name(&self) -> String {
        format!("projects/{}/topics/{}", self.project_id, self.topic_id)
    }

    /// The endpoint of the emulator, if one is configured (`http://` unless a scheme is given).
    fn emulator_endpoint(&self) -> Option<String> {
        let host = self.emulator_host.as_deref()?.trim();
        if host.is_empty() {
            return None;
        }
        Some(if host.contains("://") {
            host.to_string()
        } else {
            format!("http://{host}")
        })
    }
}

/// The publish concurrency for a configured value: the original treats 0 or less as 250.
pub fn publish_concurrency(setting: i64) -> usize {
    if setting <= 0 {
        DEFAULT_PUBLISH_CONCURRENCY
    } else {
        usize::try_from(setting).unwrap_or(usize::MAX)
    }
}

/// Publishes each event as one Pub/Sub message and reports it delivered once acknowledged.
#[derive(Debug)]
pub struct PubSubSink {
    config: PubSubSinkConfig,
    topic: String,
    publisher: Publisher,
    admin: TopicAdmin,
    shut_down: AtomicBool,
    /// `telemetry-gateway.pubsub.attributes_adjusted`, by `change` (`dropped`, `trimmed`).
    adjusted: Counter<u64>,
}

impl PubSubSink {
    /// Creates the clients without waiting for Pub/Sub: the topic is checked in the background
    /// (a warning when it cannot be used) and by [`EventSink::health`].
    ///
    /// Must run inside a Tokio runtime, which carries the client's batching task.
    pub async fn connect(config: PubSubSinkConfig) -> Result<PubSubSink, SinkError> {
        if config.project_id.is_empty() || config.topic_id.is_empty() {
            return Err(SinkError::config(
                NAME,
                "both a project ID and a topic ID are required",
            ));
        }
        let topic = config.topic_name();
        let endpoint = config.emulator_endpoint();
        // The client retries transient errors on its own, but never past our deadline.
        let retry = || RetryableErrors.with_time_limit(config.publish_timeout);

        let mut publisher = BasePublisher::builder().with_retry_policy(retry());
        let mut admin = TopicAdmin::builder().with_retry_policy(retry());
        if let Some(endpoint) = &endpoint {
            tracing::info!(%endpoint, "PUBSUB_EMULATOR_HOST is set: publishing to the emulator without credentials");
            let anonymous = google_cloud_auth::credentials::anonymous::Builder::new().build();
            publisher = publisher
                .with_endpoint(endpoint.clone())
                .with_credentials(anonymous.clone());
            admin = admin
                .with_endpoint(endpoint.clone())
                .with_credentials(anonymous);
        }
        let credentials_hint = if endpoint.is_some() {
            String::new()
        } else {
            " (application default credentials)".to_string()
        };
        let publisher = publisher
            .build()
            .await
            .map_err(|err| {
                SinkError::config(
                    NAME,
                    format!("cannot create the publisher{credentials_hint}: {err}"),
                )
            })?
            .publisher(topic.clone())
            .set_message_count_threshold(MAX_MESSAGES_PER_REQUEST)
            .set_byte_threshold(MAX_BYTES_PER_REQUEST)
            .set_delay_threshold(BATCH_DELAY)
            .build();
        let admin = admin.build().await.map_err(|err| {
            SinkError::config(
                NAME,
                format!("cannot create the topic admin client{credentials_hint}: {err}"),
            )
        })?;
        // Start-up is not held up by Pub/Sub (it may be briefly unreachable), but a missing topic
        // or missing credentials are worth a warning before the first event fails.
        let (check_admin, check_topic_name) = (admin.clone(), topic.clone());
        let timeout = config.publish_timeout;
        tokio::spawn(async move {
            match check_topic(&check_admin, &check_topic_name, timeout).await {
                Ok(()) => tracing::info!(topic = %check_topic_name, "the Pub/Sub topic exists"),
                Err(err) => tracing::warn!(
                    topic = %check_topic_name,
                    error = %err,
                    "the Pub/Sub topic cannot be used yet: nothing published to it is acknowledged until it can"
                ),
            }
        });
        Ok(PubSubSink {
            config: PubSubSinkConfig {
                publish_concurrency: config.publish_concurrency.max(1),
                ..config
            },
            topic,
            publisher,
            admin,
            shut_down: AtomicBool::new(false),
            adjusted: opentelemetry::global::meter(crate::measured::METER_NAME)
                .u64_counter("telemetry-gateway.pubsub.attributes_adjusted")
                .with_description(
                    "Message attributes dropped or trimmed to fit Pub/Sub's limits, by change",
                )
                .build(),
        })
    }

    /// The settings this sink runs with.
    pub fn config(&self) -> &PubSubSinkConfig {
        &self.config
    }

    /// The event's attributes within Pub/Sub's limits, counting and logging what had to change.
    fn fitted_attributes<'a>(&self, event: &'a PreparedEvent) -> Cow<'a, Attributes> {
        if attributes_fit(&event.attributes) {
            return Cow::Borrowed(&event.attributes);
        }
        let mut attributes = event.attributes.clone();
        let fit = fit_attributes(&mut attributes);
        for (change, count) in [("dropped", fit.dropped), ("trimmed", fit.trimmed)] {
            if count > 0 {
                self.adjusted
                    .add(count as u64, &[KeyValue::new("change", change)]);
            }
        }
        tracing::debug!(
            eventID = %event.id,
            dropped = fit.dropped,
            trimmed = fit.trimmed,
            "fitted the message attributes into Pub/Sub's limits"
        );
        Cow::Owned(attributes)
    }

    /// Publishes one event and waits for its acknowledgement until `deadline`.
    async fn publish_one(&self, event: &PreparedEvent, deadline: Instant) -> PublishOutcome {
        let message = Message::new()
            .set_data(event.payload.clone())
            .set_attributes(self.fitted_attributes(event).iter());
        match tokio::time::timeout_at(deadline, self.publisher.publish(message)).await {
            Ok(Ok(_message_id)) => PublishOutcome::Delivered,
            Ok(Err(err)) => PublishOutcome::Retryable(format!("publishing event: {err}")),
            Err(_elapsed) => PublishOutcome::Retryable(format!(
                "publishing event: no acknowledgement from Pub/Sub within {:?}",
                self.config.publish_timeout
            )),
        }
    }
}

#[async_trait]
impl EventSink for PubSubSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn describe(&self) -> String {
        format!("Pub/Sub topic {}", self.topic)
    }

    async fn publish(&self, events: &[PreparedEvent]) -> Vec<PublishOutcome> {
        if self.shut_down.load(Ordering::Acquire) {
            return PublishOutcome::all_retryable(events.len(), "pubsub sink is shut down");
        }
        // One deadline for the whole batch: however many events wait their turn behind the
        // concurrency limit, the batch is answered within the timeout.
        let deadline = Instant::now() + self.config.publish_timeout;
        // `publish_one` is lazy: a message is handed to the client only when `buffered` starts it.
        let publishes: Vec<_> = events
            .iter()
            .map(|event| self.publish_one(event, deadline))
            .collect();
        futures::stream::iter(publishes)
            .buffered(self.config.publish_concurrency)
            .collect()
            .await
    }

    async fn health(&self) -> Result<(), SinkError> {
        check_topic(&self.admin, &self.topic, self.config.publish_timeout).await
    }

    async fn shutdown(&self) -> Result<(), SinkError> {
        self.shut_down.store(true, Ordering::Release);
        // Publishes wait for their own acknowledgements, so only messages whose publish already
        // timed out can still be queued; give them one more timeout to go out.
        if tokio::time::timeout(self.config.publish_timeout, self.publisher.flush())
            .await
            .is_err()
        {
            return Err(SinkError::unhealthy(
                NAME,
                format!(
                    "messages still unsent after {:?} at shutdown",
                    self.config.publish_timeout
                ),
            ));
        }
        Ok(())
    }
}

/// Whether the topic exists (the original's health check), within `timeout`.
async fn check_topic(admin: &TopicAdmin, topic: &str, timeout: Duration) -> Result<(), SinkError> {
    let request = admin.get_topic().set_topic(topic).send();
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(_topic)) => Ok(()),
        Ok(Err(err)) if is_not_found(&err) => {
            Err(SinkError::unhealthy(NAME, "topic does not exist"))
        }
        Ok(Err(err)) => Err(SinkError::unhealthy(
            NAME,
            format!("checking the topic: {err}"),
        )),
        Err(_elapsed) => Err(SinkError::unhealthy(
            NAME,
            format!("checking the topic: no answer from Pub/Sub within {timeout:?}"),
        )),
    }
}

fn is_not_found(err: &google_cloud_pubsub::Error) -> bool {
    use google_cloud_gax::error::rpc::Code;
    err.status()
        .is_some_and(|status| status.code == Code::NotFound)
        || err.http_status_code() == Some(404)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_concurrency_of_zero_or_less_means_the_originals_250() {
        assert_eq!(publish_concurrency(0), 250);
        assert_eq!(publish_concurrency(-5), 250);
        assert_eq!(publish_concurrency(1), 1);
        assert_eq!(publish_concurrency(1_000), 1_000);
    }

    #[test]
    fn the_emulator_host_becomes_a_plaintext_endpoint() {
        let mut config = PubSubSinkConfig::new("p", "t");
        assert_eq!(config.emulator_endpoint(), None);
        config.emulator_host = Some("localhost:8085".into());
        assert_eq!(
            config.emulator_endpoint().as_deref(),
            Some("http://localhost:8085")
        );
        config.emulator_host = Some("http://10.0.0.1:8085".into());
        assert_eq!(
            config.emulator_endpoint().as_deref(),
            Some("http://10.0.0.1:8085")
        );
        config.emulator_host = Some(String::new());
        assert_eq!(config.emulator_endpoint(), None);
    }

    #[tokio::test]
    async fn it_describes_its_topic() {
        let mut config = PubSubSinkConfig::new("my-project", "events");
        config.emulator_host = Some("127.0.0.1:1".into());
        let sink = PubSubSink::connect(config).await.expect("clients build");
        assert_eq!(sink.name(), "pubsub");
        assert_eq!(
            sink.describe(),
            "Pub/Sub topic projects/my-project/topics/events"
        );
    }

    #[tokio::test]
    async fn a_project_and_a_topic_are_required() {
        let err = PubSubSink::connect(PubSubSinkConfig::new("", "t"))
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("project ID"), "{err}");
    }
}
