//! The tonic service: a thin adapter from gRPC to [`EventGateway`], composing each call's
//! shared concerns (`crate::rpc`, in the order documented there) around the protocol.

use std::sync::Arc;

use telemetry_gateway_proto::v1::telemetery_gateway_service_server::TelemeteryGatewayService;
use telemetry_gateway_proto::v1::{RecordEventRequest, RecordEventResponse, RecordEventsRequest};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::EventGateway;
use super::stream::StreamState;
use crate::budget::StreamLedger;
use crate::rpc::closing::stream_closed;
use crate::rpc::metrics::RpcMethod;
use crate::rpc::{Call, Inbound, Outbound, ResponseStream};

/// Serves an [`EventGateway`] over gRPC.
#[derive(Clone)]
pub struct GrpcService {
    gateway: Arc<EventGateway>,
}

impl GrpcService {
    /// Serves `gateway` over gRPC.
    pub fn new(gateway: Arc<EventGateway>) -> GrpcService {
        GrpcService { gateway }
    }

    fn admit(&self, method: RpcMethod, headers: &MetadataMap) -> Result<Call, Status> {
        let gateway = &self.gateway;
        Call::admit(method, gateway.metrics.rpc(), &gateway.lifecycle, headers)
    }
}

/// The ledger the budget layer gave the call (none when served without it).
fn ledger(extensions: &tonic::Extensions) -> Arc<StreamLedger> {
    extensions
        .get::<Arc<StreamLedger>>()
        .cloned()
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TelemeteryGatewayService for GrpcService {
    type RecordEventsStream = ResponseStream;

    async fn record_events(
        &self,
        request: Request<Streaming<RecordEventsRequest>>,
    ) -> Result<Response<Self::RecordEventsStream>, Status> {
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
