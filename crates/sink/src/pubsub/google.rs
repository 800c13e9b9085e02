//! The real [`Publisher`]: Google's Pub/Sub client (`google-cloud-pubsub`), which groups the
//! messages of concurrent publishes into requests within Pub/Sub's limits.

use std::future::Future;

use bytes::Bytes;
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_pubsub::client::{BasePublisher, Publisher as ClientPublisher, TopicAdmin};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::retry_policy::RetryableErrors;

use super::{
    BATCH_DELAY, MAX_BYTES_PER_REQUEST, MAX_MESSAGES_PER_REQUEST, NAME, PubSubSink,
    PubSubSinkConfig, Publisher, TopicProblem, check_topic,
};
use crate::{Attributes, SinkError};

/// Google's publisher and topic admin clients for one topic.
#[derive(Debug)]
pub struct GooglePublisher {
    topic: String,
    publisher: ClientPublisher,
    admin: TopicAdmin,
}

impl GooglePublisher {
    /// Creates the clients for the topic of `config` without waiting for Pub/Sub: through the
    /// emulator when one is configured, else Google's endpoint with application default
    /// credentials. Must run inside a Tokio runtime, which carries the client's batching task.
    pub async fn connect(config: &PubSubSinkConfig) -> Result<GooglePublisher, SinkError> {
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
        Ok(GooglePublisher {
            topic,
            publisher,
            admin,
        })
    }
}

impl Publisher for GooglePublisher {
    fn publish(
        &self,
        data: Bytes,
        attributes: &Attributes,
    ) -> impl Future<Output = Result<(), String>> + Send {
        let message = Message::new()
            .set_data(data)
            .set_attributes(attributes.iter());
        async move {
            self.publisher
                .publish(message)
                .await
                .map(drop)
                .map_err(|err| err.to_string())
        }
    }

    fn flush(&self) -> impl Future<Output = ()> + Send {
        self.publisher.flush()
    }

    async fn check_topic(&self) -> Result<(), TopicProblem> {
        topic_state(&self.admin, &self.topic).await
    }
}

impl PubSubSink<GooglePublisher> {
    /// Creates the clients without waiting for Pub/Sub: the topic is checked in the background
    /// (a warning when it cannot be used) and by [`crate::EventSink::health`].
    ///
    /// Must run inside a Tokio runtime, which carries the client's batching task.
    pub async fn connect(config: PubSubSinkConfig) -> Result<Self, SinkError> {
        if config.project_id.is_empty() || config.topic_id.is_empty() {
            return Err(SinkError::config(
                NAME,
                "both a project ID and a topic ID are required",
            ));
        }
        let publisher = GooglePublisher::connect(&config).await?;
        // Start-up is not held up by Pub/Sub (it may be briefly unreachable), but a missing topic
        // or missing credentials are worth a warning before the first event fails.
        let (admin, topic) = (publisher.admin.clone(), publisher.topic.clone());
        let timeout = config.publish_timeout;
        tokio::spawn(async move {
            match check_topic(topic_state(&admin, &topic), timeout).await {
                Ok(()) => tracing::info!(topic = %topic, "the Pub/Sub topic exists"),
                Err(err) => tracing::warn!(
                    topic = %topic,
                    error = %err,
                    "the Pub/Sub topic cannot be used yet: nothing published to it is acknowledged until it can"
                ),
            }
        });
        Ok(PubSubSink::with_publisher(config, publisher))
    }
}

/// Whether `topic` exists, by asking the admin API.
async fn topic_state(admin: &TopicAdmin, topic: &str) -> Result<(), TopicProblem> {
    match admin.get_topic().set_topic(topic).send().await {
        Ok(_topic) => Ok(()),
        Err(err) if is_not_found(&err) => Err(TopicProblem::Missing),
        Err(err) => Err(TopicProblem::Failed(err.to_string())),
    }
}

fn is_not_found(err: &google_cloud_pubsub::Error) -> bool {
    use google_cloud_gax::error::rpc::Code;
    err.status()
        .is_some_and(|status| status.code == Code::NotFound)
        || err.http_status_code() == Some(404)
}
