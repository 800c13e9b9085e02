//! The `RecordEvents` protocol, and nothing else: the metadata message first and once, then
//! events payloads, each answered with the IDs of the events handed off. Draining, lifetimes,
//! the memory budget, metrics, spans and logs are the caller's (`crate::rpc`).

use telemetry_gateway_proto::v1::RecordEventsResponse;
use telemetry_gateway_proto::wire::RawPayload as Payload;
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::EventGateway;
use crate::error::ServerError;
use crate::rpc::{Ended, Inbound, Outbound};
use crate::source::Source;

/// What a stream has established so far.
#[derive(Default)]
pub(crate) struct StreamState {
    /// Who is sending, once the metadata message is checked.
    pub source: Option<Source>,
    /// Events received across the stream's payloads.
    pub events: usize,
}

impl StreamState {
    /// The `source` of the stream's log lines and metrics (`invalid` until identified).
    pub fn publisher(&self) -> &str {
        self.source
            .as_ref()
            .map_or("invalid", Source::publisher_source)
    }
}

impl EventGateway {
    /// Converses with one stream until the sender half-closes (or goes away), or the stream must
    /// end.
    pub(crate) async fn record_events(
        &self,
        headers: &MetadataMap,
        inbound: &mut Inbound,
        responses: &Outbound,
        state: &mut StreamState,
    ) -> Result<(), Ended> {
        while let Some((message, reservation)) = inbound.next().await? {
            match message.payload {
                None => {}
                Some(Payload::Metadata(metadata)) => {
                    if state.source.is_some() {
                        return Err(ServerError::MetadataTwice.into());
                    }
                    // A SAMS check may take a while; a caller that leaves meanwhile is
                    // reported as canceled (docs/compatibility.md §2).
                    let source = tokio::select! {
                        identified = self.identify(&metadata, headers) => identified?,
                        () = responses.closed() => return Err(ServerError::Canceled.into()),
                    };
                    tracing::Span::current().record("source", source.publisher_source());
                    inbound.metadata_rendered(source.metadata_json().len());
                    state.source = Some(source);
                }
                Some(Payload::Events(payload)) => {
                    let source = state
                        .source
                        .as_ref()
                        .ok_or(ServerError::EventsBeforeMetadata)?;
                    self.check_rate_limit(source, payload.len())?;
                    state.events += payload.len();
                    let summary = self
                        .process_payload_until(source, payload, responses.closed())
                        .await
                        // An event that does not decode fails the request, as it always has.
                        .map_err(|err| Ended::Receive(Status::internal(err.to_string())))?;
                    inbound.answered(reservation);
                    let response = RecordEventsResponse {
                        succeeded_events: summary.succeeded,
                    };
                    if !responses.send(response).await {
                        // The sender went away; unacknowledged events will be retried.
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}
