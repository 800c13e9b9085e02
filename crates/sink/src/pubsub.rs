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
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use tokio::time::Instant;

use crate::{Attributes, EventSink, FailureCause, PreparedEvent, PublishOutcome, SinkError};

pub mod attributes;
#[cfg(feature = "pubsub")]
mod google;
pub mod mock;

pub use attributes::{
    AttributeFit, MAX_ATTRIBUTE_KEY_BYTES, MAX_ATTRIBUTE_VALUE_BYTES, MAX_ATTRIBUTES,
    attributes_fit, fit_attributes,
};
#[cfg(feature = "pubsub")]
pub use google::GooglePublisher;

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
#[cfg(feature = "pubsub")]
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
    #[cfg(feature = "pubsub")]
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

/// What the sink needs of a Pub/Sub client: publish one message and learn whether the server
/// acknowledged it, flush at shutdown, check the topic. [`GooglePublisher`] is the real one
/// (feature `pubsub`); [`mock::MockPublisher`] a double for tests of timeouts, partial
/// acknowledgements and shutdown.
pub trait Publisher: Send + Sync + 'static {
    /// Publishes one message (batching it with others as the client likes); resolves once the
    /// server acknowledged it, or with why not. Nothing is sent before the future is polled.
    fn publish(
        &self,
        data: Bytes,
        attributes: &Attributes,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Sends whatever the client still holds.
    fn flush(&self) -> impl Future<Output = ()> + Send;

    /// Whether the topic exists and can be used.
    fn check_topic(&self) -> impl Future<Output = Result<(), TopicProblem>> + Send;
}

/// Why the topic cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicProblem {
    /// Pub/Sub says it does not exist.
    Missing,
    /// The check failed (credentials, network, ...).
    Failed(String),
}

/// Publishes each event as one Pub/Sub message and reports it delivered once acknowledged.
#[derive(Debug)]
pub struct PubSubSink<P = DefaultPublisher> {
    config: PubSubSinkConfig,
    topic: String,
    publisher: P,
    shut_down: AtomicBool,
    /// `telemetry-gateway.pubsub.attributes_adjusted`, by `change` (`dropped`, `trimmed`).
    adjusted: Counter<u64>,
}

/// The publisher of [`PubSubSink`] by default: Google's client with the `pubsub` feature.
#[cfg(feature = "pubsub")]
pub type DefaultPublisher = GooglePublisher;
/// The publisher of [`PubSubSink`] by default: Google's client with the `pubsub` feature.
#[cfg(not(feature = "pubsub"))]
pub type DefaultPublisher = mock::MockPublisher;

impl<P: Publisher> PubSubSink<P> {
    /// A sink publishing through `publisher` to the topic of `config`.
    pub fn with_publisher(config: PubSubSinkConfig, publisher: P) -> PubSubSink<P> {
        PubSubSink {
            topic: config.topic_name(),
            config: PubSubSinkConfig {
                publish_concurrency: config.publish_concurrency.max(1),
                ..config
            },
            publisher,
            shut_down: AtomicBool::new(false),
            adjusted: opentelemetry::global::meter(crate::measured::METER_NAME)
                .u64_counter("telemetry-gateway.pubsub.attributes_adjusted")
                .with_description(
                    "Message attributes dropped or trimmed to fit Pub/Sub's limits, by change",
                )
                .build(),
        }
    }

    /// The settings this sink runs with.
    pub fn config(&self) -> &PubSubSinkConfig {
        &self.config
    }

    /// The client this sink publishes with.
    pub fn publisher(&self) -> &P {
        &self.publisher
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
        let attributes = self.fitted_attributes(event);
        // The client keeps a message until it is sent, even past our deadline; a copy of the
        // payload, not a slice, so that it never keeps the rest of its payload's buffer alive.
        let data = Bytes::copy_from_slice(&event.payload);
        let publish = self.publisher.publish(data, &attributes);
        match tokio::time::timeout_at(deadline, publish).await {
            Ok(Ok(())) => PublishOutcome::Delivered,
            Ok(Err(err)) => PublishOutcome::retryable(
                FailureCause::Unavailable,
                format!("publishing event: {err}"),
            ),
            Err(_elapsed) => PublishOutcome::retryable(
                FailureCause::Timeout,
                format!(
                    "publishing event: no acknowledgement from Pub/Sub within {:?}",
                    self.config.publish_timeout
                ),
            ),
        }
    }
}

#[async_trait]
impl<P: Publisher> EventSink for PubSubSink<P> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn describe(&self) -> String {
        format!("Pub/Sub topic {}", self.topic)
    }

    async fn publish(&self, events: &[PreparedEvent]) -> Vec<PublishOutcome> {
        if self.shut_down.load(Ordering::Acquire) {
            return PublishOutcome::all_retryable(
                events.len(),
                FailureCause::ShutDown,
                "pubsub sink is shut down",
            );
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
        check_topic(self.publisher.check_topic(), self.config.publish_timeout).await
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
async fn check_topic(
    check: impl Future<Output = Result<(), TopicProblem>>,
    timeout: Duration,
) -> Result<(), SinkError> {
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(TopicProblem::Missing)) => Err(SinkError::unhealthy(NAME, "topic does not exist")),
        Ok(Err(TopicProblem::Failed(err))) => Err(SinkError::unhealthy(
            NAME,
            format!("checking the topic: {err}"),
        )),
        Err(_elapsed) => Err(SinkError::unhealthy(
            NAME,
            format!("checking the topic: no answer from Pub/Sub within {timeout:?}"),
        )),
    }
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

    #[cfg(feature = "pubsub")]
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

    #[cfg(feature = "pubsub")]
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

    #[cfg(feature = "pubsub")]
    #[tokio::test]
    async fn a_project_and_a_topic_are_required() {
        let err = PubSubSink::connect(PubSubSinkConfig::new("", "t"))
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("project ID"), "{err}");
    }

    /// A sink over the double, with `timeout` and a concurrency of `concurrency`.
    fn sink_over_double(timeout: Duration, concurrency: usize) -> PubSubSink<mock::MockPublisher> {
        let mut config = PubSubSinkConfig::new("project", "events");
        config.publish_timeout = timeout;
        config.publish_concurrency = concurrency;
        PubSubSink::with_publisher(config, mock::MockPublisher::new())
    }

    fn events(ids: &[&str]) -> Vec<PreparedEvent> {
        ids.iter()
            .map(|id| {
                PreparedEvent::builder(*id)
                    .payload(id.to_string())
                    .attribute("publisher.source", "test")
                    .build()
            })
            .collect()
    }

    #[tokio::test]
    async fn each_event_is_one_message_with_its_payload_and_attributes() {
        let sink = sink_over_double(Duration::from_secs(5), 250);
        let outcomes = sink.publish(&events(&["a", "b"])).await;
        assert_eq!(
            outcomes,
            [PublishOutcome::Delivered, PublishOutcome::Delivered]
        );
        let published = sink.publisher().published();
        assert_eq!(published.len(), 2);
        assert_eq!(published[0].0, Bytes::from("a"));
        assert_eq!(published[1].1["publisher.source"], "test");
        assert_eq!(
            sink.describe(),
            "Pub/Sub topic projects/project/topics/events"
        );
    }

    #[tokio::test]
    async fn a_partial_acknowledgement_fails_only_the_unacknowledged_events() {
        let sink = sink_over_double(Duration::from_secs(5), 250);
        sink.publisher()
            .answer("b", mock::Answer::Fail("quota exceeded".into()));
        let outcomes = sink.publish(&events(&["a", "b", "c"])).await;
        assert_eq!(
            outcomes,
            [
                PublishOutcome::Delivered,
                PublishOutcome::retryable(
                    FailureCause::Unavailable,
                    "publishing event: quota exceeded"
                ),
                PublishOutcome::Delivered,
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn events_unacknowledged_at_the_deadline_are_retryable_and_the_rest_delivered() {
        let sink = sink_over_double(Duration::from_secs(30), 250);
        sink.publisher().answer("slow", mock::Answer::Hang);
        let started = Instant::now();
        let outcomes = sink.publish(&events(&["fast", "slow", "also-fast"])).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(30),
            "answered at the deadline"
        );
        assert_eq!(
            outcomes,
            [
                PublishOutcome::Delivered,
                PublishOutcome::retryable(
                    FailureCause::Timeout,
                    "publishing event: no acknowledgement from Pub/Sub within 30s"
                ),
                PublishOutcome::Delivered,
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_deadline_covers_a_batch_queued_behind_the_concurrency_limit() {
        let sink = sink_over_double(Duration::from_secs(10), 1);
        sink.publisher().answer("stuck", mock::Answer::Hang);
        let started = Instant::now();
        let outcomes = sink
            .publish(&events(&["stuck", "queued-1", "queued-2"]))
            .await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(10),
            "not 10 s per event"
        );
        assert!(
            outcomes
                .iter()
                .all(|outcome| matches!(outcome, PublishOutcome::Retryable(_))),
            "{outcomes:?}"
        );
    }

    #[tokio::test]
    async fn at_most_the_configured_number_of_publishes_await_an_answer_at_once() {
        let sink = sink_over_double(Duration::from_secs(5), 3);
        let ids: Vec<String> = (0..20).map(|i| format!("e{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let outcomes = sink.publish(&events(&ids)).await;
        assert!(outcomes.iter().all(PublishOutcome::is_delivered));
        assert_eq!(sink.publisher().most_in_flight(), 3);
    }

    #[tokio::test]
    async fn after_shutdown_nothing_is_published_and_the_client_was_flushed() {
        let sink = sink_over_double(Duration::from_secs(5), 250);
        sink.shutdown().await.expect("flushed");
        assert_eq!(sink.publisher().flushes(), 1);
        let outcomes = sink.publish(&events(&["late"])).await;
        assert_eq!(
            outcomes,
            [PublishOutcome::retryable(
                FailureCause::ShutDown,
                "pubsub sink is shut down"
            )]
        );
        assert!(sink.publisher().published().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn health_reports_a_missing_topic_a_failed_check_and_no_answer() {
        let sink = sink_over_double(Duration::from_secs(2), 250);
        sink.health().await.expect("the topic exists");
        sink.publisher()
            .set_topic_problem(Some(TopicProblem::Missing));
        let err = sink.health().await.expect_err("missing");
        assert_eq!(err.to_string(), "pubsub: topic does not exist");
        sink.publisher()
            .set_topic_problem(Some(TopicProblem::Failed("permission denied".into())));
        let err = sink.health().await.expect_err("failed");
        assert_eq!(
            err.to_string(),
            "pubsub: checking the topic: permission denied"
        );
        let err = check_topic(std::future::pending(), Duration::from_secs(2))
            .await
            .expect_err("no answer");
        assert_eq!(
            err.to_string(),
            "pubsub: checking the topic: no answer from Pub/Sub within 2s"
        );
    }
}
