//! The receive side of a `RecordEvents` stream: the next message with its share of the memory
//! budget, unless the stream must end first (the gateway drains, or the stream outlived its
//! lifetime).

use std::sync::Arc;
use std::time::{Duration, Instant};

use telemetry_gateway_proto::wire::RawRecordEventsRequest;
use tonic::Streaming;

use super::{Ended, gate};
use crate::budget::{Reservation, StreamLedger};
use crate::error::{ServerError, receive_error};
use crate::lifecycle::Lifecycle;
use crate::rpc::metrics::{RpcMethod, RpcMetrics};

/// A stream's incoming messages.
pub struct Inbound {
    messages: Streaming<RawRecordEventsRequest>,
    ledger: Arc<StreamLedger>,
    lifecycle: Lifecycle,
    lifetime: Duration,
    end_of_life: tokio::time::Instant,
    rpc: RpcMetrics,
}

impl Inbound {
    /// The messages of a stream admitted at `started`, whose body's admissions are in `ledger`.
    pub fn new(
        messages: Streaming<RawRecordEventsRequest>,
        ledger: Arc<StreamLedger>,
        lifecycle: Lifecycle,
        lifetime: Duration,
        started: Instant,
        rpc: RpcMetrics,
    ) -> Inbound {
        Inbound {
            messages,
            ledger,
            lifecycle,
            lifetime,
            end_of_life: tokio::time::Instant::from_std(started) + lifetime,
            rpc,
        }
    }

    /// The next message and its reservation (held until the message is answered), `None` once
    /// the sender half-closes.
    ///
    /// While draining, a stream waiting for its next message is ended: nothing of it is
    /// unacknowledged-but-kept. A stream is cut at its lifetime, as the original's HTTP server
    /// did. Either way a payload being processed is finished and answered first, since this is
    /// only awaited between payloads; a message already received is taken before either.
    pub async fn next(&mut self) -> Result<Option<(RawRecordEventsRequest, Reservation)>, Ended> {
        let received = tokio::select! {
            biased;
            received = self.messages.message() => received,
            refused = gate::drained(&self.lifecycle) => return Err(refused.into()),
            () = tokio::time::sleep_until(self.end_of_life) => {
                return Err(ServerError::StreamLifetime(self.lifetime).into());
            }
        };
        match received {
            Ok(Some(message)) => {
                self.rpc.received(RpcMethod::RecordEvents);
                Ok(Some((message, self.ledger.take())))
            }
            Ok(None) => Ok(None),
            Err(status) => Err(Ended::Receive(receive_error(status))),
        }
    }

    /// The stream's metadata is rendered: every event's payload repeats its `len` bytes, part of
    /// what the stream's later messages cost.
    pub fn metadata_rendered(&self, len: usize) {
        self.ledger.set_metadata_json_len(len);
    }

    /// A payload is answered: its events are handed off or failed, so its room is free (even if
    /// the sender is slow to read the response), but for the receive buffer the stream keeps
    /// while it is open.
    pub fn answered(&self, mut reservation: Reservation) {
        self.ledger.keep_receive_buffer(&mut reservation);
    }
}
