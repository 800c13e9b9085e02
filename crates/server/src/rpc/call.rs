//! One RPC from admission to its last status: the concerns every call shares, composed in one
//! place, for the stream and the unary call alike.

use std::time::Instant;

use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::{gate, span};
use crate::lifecycle::{ActiveWork, Lifecycle};
use crate::rpc::metrics::{RpcMethod, RpcMetrics};

/// A call admitted past the drain gate, with its span; [`Call::finish`] records how it ended.
pub struct Call {
    method: RpcMethod,
    started: Instant,
    rpc: RpcMetrics,
    span: tracing::Span,
    /// Counted as in progress until the call is finished (a drain waits for it).
    _work: ActiveWork,
}

impl Call {
    /// Admits a call of `method`. The order is deliberate:
    ///
    /// 1. **RPC metrics first**: every call is counted as started, the refused ones too (as
    ///    go-grpc-prometheus counts them), so `started − handled` is the calls in progress.
    /// 2. **The drain gate next**: a call refused for shutdown holds nothing, opens no span and
    ///    is answered at once with `Unavailable` (counted as handled).
    /// 3. **The span last**: only admitted calls are traced, and the span lives as long as the
    ///    call (the stream's task runs inside it, so its log lines carry the trace).
    pub fn admit(
        method: RpcMethod,
        rpc: &RpcMetrics,
        lifecycle: &Lifecycle,
        headers: &MetadataMap,
    ) -> Result<Call, Status> {
        let started = Instant::now();
        rpc.started(method);
        let work = gate::admit(lifecycle).map_err(|refused| {
            let status = Status::from(refused);
            rpc.handled(method, status.code(), started.elapsed());
            status
        })?;
        Ok(Call {
            method,
            started,
            rpc: rpc.clone(),
            span: span::rpc_span(method.name(), headers),
            _work: work,
        })
    }

    /// The call's span.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// When the call was admitted.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// A message arrived on the call.
    pub fn received(&self) {
        self.rpc.received(self.method);
    }

    /// A message was sent on the call.
    pub fn sent(&self) {
        self.rpc.sent(self.method);
    }

    /// The call ended, with `error` if it failed: written on its span, then counted as handled. It still
    /// counts as in progress until dropped (a stream's last status may still be on its way).
    pub fn finish(&self, error: Option<&Status>) {
        let code = error.map_or(Code::Ok, Status::code);
        span::record_outcome(&self.span, code, error.map(Status::message));
        self.rpc.handled(self.method, code, self.started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_refused_while_draining_is_unavailable() {
        let lifecycle = Lifecycle::default();
        let rpc = RpcMetrics::new(&opentelemetry::global::meter("test"));
        let call = Call::admit(
            RpcMethod::RecordEvent,
            &rpc,
            &lifecycle,
            &MetadataMap::new(),
        )
        .expect("admitted");
        assert_eq!(lifecycle.active(), 1);
        lifecycle.start_draining();
        let refused = Call::admit(
            RpcMethod::RecordEvent,
            &rpc,
            &lifecycle,
            &MetadataMap::new(),
        )
        .err()
        .expect("refused while draining");
        assert_eq!(
            (refused.code(), refused.message()),
            (Code::Unavailable, "server is shutting down")
        );
        call.finish(None);
        drop(call);
        assert_eq!(lifecycle.active(), 0, "dropped: no longer in progress");
    }
}
