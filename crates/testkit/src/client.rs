//! A gRPC client for tests, speaking to a gateway over a real socket.

use std::net::SocketAddr;

use telemetry_gateway_proto::v1::record_events_request::{EventsPayload, Payload};
use telemetry_gateway_proto::v1::telemetery_gateway_service_client::TelemeteryGatewayServiceClient;
use telemetry_gateway_proto::v1::{
    Event, RecordEventRequest, RecordEventsRequest, RecordEventsRequestMetadata,
    RecordEventsResponse,
};
use tonic::transport::Channel;
use tonic::{Request, Status};

/// A client connected (plaintext HTTP/2) to the gateway at `addr`, with a 256 MiB receive
/// and send limit so tests can exceed the server's limits.
pub async fn connect(
    addr: SocketAddr,
) -> Result<TelemeteryGatewayServiceClient<Channel>, tonic::transport::Error> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a socket address is a valid URI")
        .connect()
        .await?;
    Ok(TelemeteryGatewayServiceClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20))
}

/// A unary `RecordEvent` request from managed service `service_id`, carrying
/// `authorization: Bearer <token>`.
pub fn managed_event_request(
    service_id: &str,
    event: Event,
    token: &str,
) -> Request<RecordEventRequest> {
    let mut request = Request::new(RecordEventRequest {
        metadata: Some(crate::events::managed_metadata(service_id)),
        event: Some(event),
    });
    let value = format!("Bearer {token}")
        .parse()
        .expect("a token in a header value is ASCII");
    request.metadata_mut().insert("authorization", value);
    request
}

/// A metadata message.
pub fn metadata_message(metadata: RecordEventsRequestMetadata) -> RecordEventsRequest {
    RecordEventsRequest {
        payload: Some(Payload::Metadata(metadata)),
    }
}

/// An events payload message.
pub fn events_message(events: Vec<Event>) -> RecordEventsRequest {
    RecordEventsRequest {
        payload: Some(Payload::Events(EventsPayload { events })),
    }
}

/// Sends `messages` on one `RecordEvents` stream, half-closes, and collects every response until
/// the server ends the stream. An error status ends the collection.
pub async fn record_events(
    client: &mut TelemeteryGatewayServiceClient<Channel>,
    messages: Vec<RecordEventsRequest>,
) -> Result<Vec<RecordEventsResponse>, Status> {
    record_events_with(client, Request::new(tokio_stream::iter(messages))).await
}

/// Like [`record_events`], with a prepared request (to add gRPC metadata, say).
pub async fn record_events_with(
    client: &mut TelemeteryGatewayServiceClient<Channel>,
    request: Request<tokio_stream::Iter<std::vec::IntoIter<RecordEventsRequest>>>,
) -> Result<Vec<RecordEventsResponse>, Status> {
    let mut inbound = client.record_events(request).await?.into_inner();
    let mut responses = Vec::new();
    while let Some(response) = inbound.message().await? {
        responses.push(response);
    }
    Ok(responses)
}
