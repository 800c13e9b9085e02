//! The send side of a `RecordEvents` stream: responses, the final error, and whether the sender
//! is still there.

use std::pin::Pin;

use futures::Stream;
use telemetry_gateway_proto::v1::RecordEventsResponse;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::rpc::metrics::{RpcMethod, RpcMetrics};

/// The response stream tonic sends.
pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<RecordEventsResponse, Status>> + Send>>;

/// A stream's outgoing responses.
pub struct Outbound {
    sender: mpsc::Sender<Result<RecordEventsResponse, Status>>,
    rpc: RpcMetrics,
}

impl Outbound {
    /// A stream's responses and the stream tonic sends them from. There is room for one response
    /// while the next payload is processed.
    pub fn channel(rpc: RpcMetrics) -> (Outbound, ResponseStream) {
        let (sender, receiver) = mpsc::channel(2);
        (
            Outbound { sender, rpc },
            Box::pin(ReceiverStream::new(receiver)),
        )
    }

    /// Sends `response`; `false` if the sender went away (its unacknowledged events will be
    /// retried).
    pub async fn send(&self, response: RecordEventsResponse) -> bool {
        if self.sender.send(Ok(response)).await.is_err() {
            return false;
        }
        self.rpc.sent(RpcMethod::RecordEvents);
        true
    }

    /// Ends the stream with `status`.
    pub async fn fail(&self, status: Status) {
        let _ = self.sender.send(Err(status)).await;
    }

    /// Completes once the sender has gone away.
    pub async fn closed(&self) {
        self.sender.closed().await;
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn responses_reach_the_stream_until_the_sender_leaves() {
        let rpc = RpcMetrics::new(&opentelemetry::global::meter("test"));
        let (outbound, mut stream) = Outbound::channel(rpc);
        assert!(outbound.send(RecordEventsResponse::default()).await);
        assert!(matches!(stream.next().await, Some(Ok(_))));
        outbound.fail(Status::cancelled("bye")).await;
        let failed = stream.next().await.and_then(Result::err);
        assert_eq!(
            failed.map(|status| status.message().to_string()),
            Some("bye".into())
        );
        drop(stream);
        outbound.closed().await;
        assert!(!outbound.send(RecordEventsResponse::default()).await);
    }
}
