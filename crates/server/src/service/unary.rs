//! The unary `RecordEvent`: one event from a managed service, answered once it is handed off.

use telemetry_gateway_proto::v1::identifier::Identifier;
use telemetry_gateway_proto::v1::{Event, RecordEventRequest};
use telemetry_gateway_sink::PublishOutcome;
use tonic::metadata::MetadataMap;

use super::EventGateway;
use crate::error::ServerError;
use crate::payload_log::log_oversized;
use crate::pipeline::{DropReason, Refusal, RefusalReason, RefusedEvent, prepare_single};
use crate::source::Source;

impl EventGateway {
    /// Handles a unary `RecordEvent`.
    pub async fn record_event(
        &self,
        request: RecordEventRequest,
        headers: &MetadataMap,
    ) -> Result<(), ServerError> {
        let result = self.record_event_inner(request, headers).await;
        if let Err(err) = &result {
            err.report(&self.metrics);
        }
        result
    }

    async fn record_event_inner(
        &self,
        request: RecordEventRequest,
        headers: &MetadataMap,
    ) -> Result<(), ServerError> {
        let event = request.event.ok_or(ServerError::EventRequired)?;
        let metadata = request.metadata.unwrap_or_default();
        let is_managed = matches!(
            metadata
                .identifier
                .as_ref()
                .and_then(|i| i.identifier.as_ref()),
            Some(Identifier::ManagedService(_))
        );
        if !is_managed {
            return Err(ServerError::UnsupportedIdentifier);
        }
        let source = self.identify(&metadata, headers).await?;
        tracing::Span::current().record("source", source.publisher_source());
        self.check_rate_limit(&source, 1)?;
        self.publish_single(event, &source).await
    }

    /// Prepares and publishes the call's one event; an invalid event fails the call, an
    /// oversized one is dropped and reported as success, and a refused one is written as a dead
    /// letter (when configured).
    async fn publish_single(&self, event: Event, source: &Source) -> Result<(), ServerError> {
        let (id, feature, action) = (
            event.id.clone(),
            event.feature.clone(),
            event.action.clone(),
        );
        let mut sizes = Vec::with_capacity(1);
        // Kept only to be written as a dead letter if it is refused.
        let kept = self.dead_letters.as_ref().map(|_| Box::new(event.clone()));
        let dead_letter = |reason: RefusalReason, message: String, event: RefusedEvent| {
            if let Some(dead_letters) = &self.dead_letters {
                let refusal = Refusal {
                    reason,
                    message,
                    event,
                };
                dead_letters.offer(source, vec![refusal]);
            }
        };
        let prepared = prepare_single(event, source, &mut sizes);
        for &size in &sizes {
            self.metrics.message_rendered(size);
        }
        let prepared = prepared.map_err(|reason| {
            if let Some(event) = kept.clone() {
                let refused = RefusalReason::of_single(&reason);
                dead_letter(refused, reason.clone(), RefusedEvent::Decoded(event));
            }
            // Past identification an invalid event is a failed call (docs/compatibility.md §3).
            self.metrics
                .record_event_processed(true, source.publisher_source());
            ServerError::InvalidEvent(reason)
        })?;
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(oversized) => {
                if let Some(event) = kept {
                    let message = format!("event is oversized ({} bytes)", oversized.size);
                    dead_letter(
                        RefusalReason::Oversized,
                        message,
                        RefusedEvent::Decoded(event),
                    );
                }
                // Deliberately dropped: reported as success (docs/compatibility.md §3).
                log_oversized(&oversized, 1, source.publisher_source());
                self.metrics
                    .event_dropped(DropReason::Oversized, source.publisher_source());
                self.metrics
                    .record_event_processed(false, source.publisher_source());
                return Ok(());
            }
        };
        let outcome = self.sink.publish(std::slice::from_ref(&prepared)).await;
        if let Some(PublishOutcome::Permanent(error)) = outcome.first() {
            dead_letter(
                RefusalReason::Rejected,
                error.message.clone(),
                RefusedEvent::Published(prepared),
            );
        }
        let failed = !matches!(outcome.first(), Some(PublishOutcome::Delivered));
        self.metrics
            .record_event_processed(failed, source.publisher_source());
        match outcome.into_iter().next() {
            Some(PublishOutcome::Delivered) => Ok(()),
            Some(PublishOutcome::Retryable(err) | PublishOutcome::Permanent(err)) => {
                tracing::error!(
                    source = source.publisher_source(),
                    eventID = %id,
                    eventFeature = %feature,
                    eventAction = %action,
                    error = %err,
                    "failed to publish event"
                );
                Err(ServerError::PublishFailed(err.message))
            }
            None => Err(ServerError::PublishFailed(
                "unexpected publishing issue".into(),
            )),
        }
    }
}
