//! The gRPC service: a thin adapter from gRPC to [`EventGateway`], composing each call's
//! shared concerns (`crate::rpc`, in the order documented there) around the protocol.
//!
//! It routes the two methods itself rather than through the generated server, for one reason:
//! `RecordEvents` messages are read by [`RecordEventsCodec`], which keeps each event as its wire
//! bytes (`wire::RawRecordEventsRequest`) so that the pipeline reads events in place instead of
//! decoding them into owned messages (docs/architecture.md, "Events stay encoded").

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use http_body::Body;
use telemetry_gateway_proto::SERVICE_NAME;
use telemetry_gateway_proto::v1::{RecordEventRequest, RecordEventResponse, RecordEventsResponse};
use telemetry_gateway_proto::wire::RawRecordEventsRequest;
use tonic::body::Body as TonicBody;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder};
use tonic::codegen::{BoxFuture, StdError};
use tonic::metadata::MetadataMap;
use tonic::server::{Grpc, NamedService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::{ProstCodec, ProstEncoder};
use tracing::Instrument;

use super::EventGateway;
use super::stream::StreamState;
use crate::budget::StreamLedger;
use crate::rpc::closing::stream_closed;
use crate::rpc::metrics::RpcMethod;
use crate::rpc::{Call, Inbound, Outbound, ResponseStream};

const RECORD_EVENTS_PATH: &str = "/telemetrygateway.v1.TelemeteryGatewayService/RecordEvents";
const RECORD_EVENT_PATH: &str = "/telemetrygateway.v1.TelemeteryGatewayService/RecordEvent";

/// Serves an [`EventGateway`] over gRPC: `RecordEvents` and `RecordEvent`, gzip and zstd.
#[derive(Clone)]
pub struct GrpcService {
    gateway: Arc<EventGateway>,
    max_decoding_message_size: Option<usize>,
}

impl NamedService for GrpcService {
    const NAME: &'static str = SERVICE_NAME;
}

impl GrpcService {
    /// Serves `gateway` over gRPC.
    pub fn new(gateway: Arc<EventGateway>) -> GrpcService {
        GrpcService {
            gateway,
            max_decoding_message_size: None,
        }
    }

    /// Refuses messages larger than `limit` bytes (tonic's default: 4 MiB).
    pub fn max_decoding_message_size(mut self, limit: usize) -> GrpcService {
        self.max_decoding_message_size = Some(limit);
        self
    }

    /// tonic's request and response handling with `codec`: compression both ways, the size
    /// limit.
    fn grpc<C: Codec>(&self, codec: C) -> Grpc<C> {
        let grpc = Grpc::new(codec)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Zstd);
        match self.max_decoding_message_size {
            Some(limit) => grpc.max_decoding_message_size(limit),
            None => grpc,
        }
    }

    fn admit(&self, method: RpcMethod, headers: &MetadataMap) -> Result<Call, Status> {
        let gateway = &self.gateway;
        Call::admit(method, gateway.metrics.rpc(), &gateway.lifecycle, headers)
    }
}

impl<B> tower::Service<http::Request<B>> for GrpcService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<TonicBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let service = self.clone();
        match request.uri().path() {
            RECORD_EVENTS_PATH => Box::pin(async move {
                let mut grpc = service.grpc(RecordEventsCodec);
                let method = tower::service_fn(move |request| {
                    let service = service.clone();
                    async move { service.record_events(request).await }
                });
                Ok(grpc.streaming(method, request).await)
            }),
            RECORD_EVENT_PATH => Box::pin(async move {
                let mut grpc =
                    service.grpc(ProstCodec::<RecordEventResponse, RecordEventRequest>::default());
                let method = tower::service_fn(move |request| {
                    let service = service.clone();
                    async move { service.record_event(request).await }
                });
                Ok(grpc.unary(method, request).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}

/// The ledger the budget layer gave the call (none when served without it).
fn ledger(extensions: &tonic::Extensions) -> Arc<StreamLedger> {
    extensions
        .get::<Arc<StreamLedger>>()
        .cloned()
        .unwrap_or_default()
}

impl GrpcService {
    async fn record_events(
        &self,
        request: Request<Streaming<RawRecordEventsRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let call = self.admit(RpcMethod::RecordEvents, request.metadata())?;
        let (headers, extensions, messages) = request.into_parts();
        let gateway = self.gateway.clone();
        let rpc = gateway.metrics.rpc().clone();
        let lifetime = gateway.budget.limits().stream_lifetime;
        let lifecycle = gateway.lifecycle.clone();
        let inbound = Inbound::new(
            messages,
            ledger(&extensions),
            lifecycle,
            lifetime,
            call.started(),
            rpc.clone(),
        );
        let (responses, stream) = Outbound::channel(rpc);
        let span = call.span().clone();
        tokio::spawn(run_stream(gateway, call, headers, inbound, responses).instrument(span));
        Ok(Response::new(stream))
    }

    async fn record_event(
        &self,
        request: Request<RecordEventRequest>,
    ) -> Result<Response<RecordEventResponse>, Status> {
        let call = self.admit(RpcMethod::RecordEvent, request.metadata())?;
        call.received();
        let (headers, extensions, request) = request.into_parts();
        // Held until the call is answered: the event's share of the memory budget.
        let _reservation = ledger(&extensions).take();
        let result = self
            .gateway
            .record_event(request, &headers)
            .instrument(call.span().clone())
            .await
            .map_err(Status::from);
        if result.is_ok() {
            call.sent();
        }
        call.finish(result.as_ref().err());
        result?;
        Ok(Response::new(RecordEventResponse {}))
    }
}

/// `RecordEvents`' codec: responses encoded by prost, requests read with their events left as
/// wire bytes (one shared buffer per message, no copy).
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordEventsCodec;

impl Codec for RecordEventsCodec {
    type Encode = RecordEventsResponse;
    type Decode = RawRecordEventsRequest;
    type Encoder = ProstEncoder<RecordEventsResponse>;
    type Decoder = RawRequestDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawRequestDecoder
    }
}

/// Reads a `RecordEventsRequest`, its events kept as wire bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawRequestDecoder;

impl Decoder for RawRequestDecoder {
    type Item = RawRecordEventsRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let message = buf.copy_to_bytes(buf.remaining());
        RawRecordEventsRequest::decode(message)
            .map(Some)
            // As tonic's prost codec reports a message that does not decode.
            .map_err(|err| Status::internal(err.to_string()))
    }
}

/// Runs one admitted stream to its end, in its own task and span: the open-streams gauge for its
/// life, the protocol, then (once its outcome is known) its refusal reported, its closing line
/// and stream metrics, its span status and `handled` count, and only then its last status sent,
/// so that whatever the sender reads next already shows in logs and metrics. The call stays in
/// progress for a drain until that status is queued.
async fn run_stream(
    gateway: Arc<EventGateway>,
    call: Call,
    headers: MetadataMap,
    mut inbound: Inbound,
    responses: Outbound,
) {
    let _open = gateway.metrics.stream_opened();
    let mut state = StreamState::default();
    let outcome = gateway
        .record_events(&headers, &mut inbound, &responses, &mut state)
        .await
        .map_err(|ended| ended.into_status(&gateway.metrics));
    let error = outcome.err();
    stream_closed(
        &gateway.metrics,
        state.publisher(),
        state.events,
        call.started().elapsed(),
        error.as_ref(),
    );
    call.finish(error.as_ref());
    if let Some(status) = error {
        responses.fail(status).await;
    }
}
