//! The memory budget: a bound on the bytes of event payloads the gateway holds at once.
//!
//! Admission happens on the wire, before a message is read: the request body of an events RPC
//! is wrapped in [`BudgetedBody`], which parses gRPC's message framing (a 5-byte header carrying
//! the message length) and, at the start of each message, reserves `length × WEIGHT` bytes of
//! the budget before passing anything of the message on. While the budget is exhausted the body
//! stops reading, so HTTP/2 flow control holds the rest of the message at the sender; a message
//! not admitted within the wait gets `ResourceExhausted` with a retry hint. A reservation lives
//! until the handler has answered its payload (or the stream ends).
//!
//! Admitting whole messages (never parts) means streams cannot deadlock holding halves of
//! messages, and the semaphore behind the budget is fair, so a large payload is not starved by
//! small ones. A single message larger than the whole budget is admitted alone.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::Status;
use tonic::body::Body;

use crate::error::ServerError;
use crate::metrics::Metrics;

/// How many bytes of memory one byte of a received message costs while it is processed: the
/// received bytes, the decoded events, their rendered JSON and the sink's copy. Measured with
/// the memory test (crates/gateway/tests/memory.rs); see docs/operations.md.
pub const WEIGHT: usize = 4;

/// The gRPC message header: a compression flag and a big-endian u32 length.
const HEADER_LEN: usize = 5;

/// The largest reservation a semaphore grants at once.
const MAX_PERMITS: usize = u32::MAX as usize;

/// The gateway-wide budget; cheap to clone.
#[derive(Clone, Debug)]
pub struct InflightBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Bytes that may be reserved; 0 turns the budget off.
    limit: usize,
    /// How long a message may wait for room.
    wait: Duration,
    permits: Arc<Semaphore>,
    /// Messages waiting for room right now.
    waiting: AtomicUsize,
    /// The cost of the last message that had to wait for room (0: none yet).
    last_waited_cost: AtomicUsize,
    /// Where refusals are counted, once the gateway's metrics are known.
    metrics: OnceLock<Metrics>,
}

impl InflightBudget {
    /// A budget of `limit` bytes (0: unlimited); messages wait up to `wait` for room.
    pub fn new(limit: usize, wait: Duration) -> InflightBudget {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        InflightBudget {
            inner: Arc::new(Inner {
                limit,
                wait,
                permits: Arc::new(Semaphore::new(limit)),
                waiting: AtomicUsize::new(0),
                last_waited_cost: AtomicUsize::new(0),
                metrics: OnceLock::new(),
            }),
        }
    }

    /// No budget: everything is admitted at once.
    pub fn unlimited() -> InflightBudget {
        InflightBudget::new(0, Duration::ZERO)
    }

    /// The configured limit in bytes (0: unlimited).
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Bytes currently reserved.
    pub fn used(&self) -> usize {
        self.inner.limit - self.inner.permits.available_permits()
    }

    /// Whether the gateway is over its budget: messages are waiting for room, or the room left
    /// would not fit the last message that had to wait (a sender refused now would be refused
    /// again). Clears as soon as that much room is free.
    pub fn is_exhausted(&self) -> bool {
        let inner = &self.inner;
        if inner.limit == 0 {
            return false;
        }
        let available = inner.permits.available_permits();
        available == 0
            || inner.waiting.load(Ordering::Relaxed) > 0
            || available < inner.last_waited_cost.load(Ordering::Relaxed)
    }

    /// Notes that a message costing `cost` has to wait for room.
    fn start_waiting(&self, cost: u32) {
        self.inner.waiting.fetch_add(1, Ordering::Relaxed);
        self.inner
            .last_waited_cost
            .store(cost as usize, Ordering::Relaxed);
    }

    /// The retry hint given to refused senders.
    pub fn retry_after(&self) -> Duration {
        self.inner.wait.max(Duration::from_secs(1))
    }

    /// Counts refusals in `metrics` (`payloads.refused` with reason `memory_budget`); the first
    /// call wins.
    pub fn count_refusals_in(&self, metrics: Metrics) {
        let _ = self.inner.metrics.set(metrics);
    }

    /// The error a refused sender gets.
    pub fn refusal(&self) -> ServerError {
        ServerError::OverBudget {
            retry_after: self.retry_after(),
        }
    }

    /// Refuses a message: counts and logs it, and returns the error for the sender.
    fn refuse(&self) -> ServerError {
        if let Some(metrics) = self.inner.metrics.get() {
            metrics.payload_refused("memory_budget");
        }
        tracing::warn!(
            limit = self.limit(),
            used = self.used(),
            "payload refused: the memory budget is used up"
        );
        self.refusal()
    }

    /// How much of the budget a message of `len` bytes needs: weighted, and capped so that a
    /// message larger than the whole budget can still be admitted alone.
    fn cost(&self, len: usize) -> u32 {
        let cost = len
            .saturating_mul(WEIGHT)
            .min(self.inner.limit)
            .min(MAX_PERMITS);
        u32::try_from(cost).unwrap_or(u32::MAX)
    }

    /// Reserves room for `len` more bytes (a decompressed payload outgrowing what its wire
    /// size reserved), waiting as for a new message.
    pub async fn reserve(&self, len: usize) -> Result<Reservation, ServerError> {
        if self.inner.limit == 0 || len == 0 {
            return Ok(Reservation::none());
        }
        let cost = self.cost(len);
        if let Ok(permit) = self.inner.permits.clone().try_acquire_many_owned(cost) {
            return Ok(Reservation {
                permit: Some(permit),
            });
        }
        self.start_waiting(cost);
        let acquired = tokio::time::timeout(
            self.inner.wait,
            self.inner.permits.clone().acquire_many_owned(cost),
        )
        .await;
        self.inner.waiting.fetch_sub(1, Ordering::Relaxed);
        match acquired {
            Ok(Ok(permit)) => Ok(Reservation {
                permit: Some(permit),
            }),
            _ => Err(self.refuse()),
        }
    }

    /// Wraps the request body of an events RPC and returns the stream's ledger of admitted
    /// messages, for the handler.
    pub fn wrap(&self, body: Body) -> (Body, Arc<StreamLedger>) {
        let ledger = Arc::new(StreamLedger::default());
        if self.inner.limit == 0 {
            return (body, ledger);
        }
        let wrapped = BudgetedBody {
            inner: body,
            budget: self.clone(),
            ledger: ledger.clone(),
            framing: Framing::default(),
            pending: None,
            held: None,
        };
        (Body::new(wrapped), ledger)
    }
}

/// Room reserved in the budget; returned when dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// A reservation of nothing.
    pub fn none() -> Reservation {
        Reservation { permit: None }
    }

    /// Bytes reserved.
    pub fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Adds `other` to this reservation.
    pub fn merge(&mut self, other: Reservation) {
        match (&mut self.permit, other.permit) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }
}

/// The reservations of one stream's admitted messages, oldest first; shared between the body
/// (which adds one per message as it starts arriving) and the handler (which takes one per
/// message it receives and holds it until the payload is answered).
#[derive(Debug, Default)]
pub struct StreamLedger {
    admitted: Mutex<VecDeque<Reservation>>,
    refused: AtomicBool,
}

impl StreamLedger {
    /// The reservation of the next received message (nothing when the budget is off).
    pub fn take(&self) -> Reservation {
        self.admitted
            .lock()
            .map(|mut admitted| admitted.pop_front())
            .ok()
            .flatten()
            .unwrap_or_else(Reservation::none)
    }

    /// Whether a message of this stream was refused for want of room.
    pub fn was_refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    fn push(&self, reservation: Reservation) {
        if let Ok(mut admitted) = self.admitted.lock() {
            admitted.push_back(reservation);
        }
    }
}

/// Where the body is in gRPC's length-prefixed framing.
#[derive(Debug)]
enum Framing {
    /// Reading a message header; `have` of its 5 bytes seen so far.
    Header {
        bytes: [u8; HEADER_LEN],
        have: usize,
    },
    /// Inside a message body; `remaining` bytes of it still to come.
    Message { remaining: usize },
}

impl Default for Framing {
    fn default() -> Self {
        Framing::Header {
            bytes: [0; HEADER_LEN],
            have: 0,
        }
    }
}

impl Framing {
    /// Advances over `data`; returns the length of the first message whose header completes
    /// in it, and how many bytes of `data` precede the end of that header. Stops there, so each
    /// admission happens before the message's bytes are passed on.
    fn advance(&mut self, data: &[u8]) -> (usize, Option<usize>) {
        let mut at = 0;
        while at < data.len() {
            match self {
                Framing::Header { bytes, have } => {
                    let take = (HEADER_LEN - *have).min(data.len() - at);
                    bytes[*have..*have + take].copy_from_slice(&data[at..at + take]);
                    *have += take;
                    at += take;
                    if *have == HEADER_LEN {
                        let len =
                            u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
                        *self = Framing::Message { remaining: len };
                        return (at, Some(len));
                    }
                }
                Framing::Message { remaining } => {
                    let take = (*remaining).min(data.len() - at);
                    *remaining -= take;
                    at += take;
                    if *remaining == 0 {
                        *self = Framing::default();
                    }
                }
            }
        }
        (at, None)
    }
}

type Acquire = Pin<
    Box<
        dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>>
            + Send
            + 'static,
    >,
>;

/// A message waiting for room: the rest of the frame it started in, its acquisition, and the
/// deadline.
struct Pending {
    acquire: Acquire,
    deadline: Pin<Box<Sleep>>,
}

/// A request body that admits each gRPC message against the budget before passing it on.
struct BudgetedBody {
    inner: Body,
    budget: InflightBudget,
    ledger: Arc<StreamLedger>,
    framing: Framing,
    /// The admission being waited for.
    pending: Option<Pending>,
    /// Bytes of the current frame not yet passed on (they follow a header awaiting admission).
    held: Option<Bytes>,
}

impl BudgetedBody {
    /// Scans `data` from the start: admits messages whose headers are in it, returning the
    /// prefix that may be passed on now and keeping the rest in `held`.
    fn scan(&mut self, mut data: Bytes) -> Poll<Option<Bytes>> {
        let mut passable = 0;
        loop {
            let (consumed, header) = self.framing.advance(&data[passable..]);
            passable += consumed;
            let Some(len) = header else {
                return Poll::Ready(Some(data));
            };
            let cost = self.budget.cost(len);
            match self
                .budget
                .inner
                .permits
                .clone()
                .try_acquire_many_owned(cost)
            {
                Ok(permit) => {
                    self.ledger.push(Reservation {
                        permit: Some(permit),
                    });
                }
                Err(_) => {
                    // Wait for room; pass on what precedes this message's end of header
                    // (earlier messages' bytes and the header itself are harmless).
                    self.budget.start_waiting(cost);
                    self.pending = Some(Pending {
                        acquire: Box::pin(
                            self.budget.inner.permits.clone().acquire_many_owned(cost),
                        ),
                        deadline: Box::pin(tokio::time::sleep(self.budget.inner.wait)),
                    });
                    let rest = data.split_off(passable);
                    if !rest.is_empty() {
                        self.held = Some(rest);
                    }
                    return if data.is_empty() {
                        Poll::Pending
                    } else {
                        Poll::Ready(Some(data))
                    };
                }
            }
            if passable == data.len() {
                return Poll::Ready(Some(data));
            }
        }
    }

    fn finish_waiting(&mut self) {
        if self.pending.take().is_some() {
            self.budget.inner.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for BudgetedBody {
    fn drop(&mut self) {
        self.finish_waiting();
    }
}

impl HttpBody for BudgetedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if let Some(pending) = &mut this.pending {
                match pending.acquire.as_mut().poll(cx) {
                    Poll::Ready(Ok(permit)) => {
                        this.ledger.push(Reservation {
                            permit: Some(permit),
                        });
                        this.finish_waiting();
                    }
                    Poll::Ready(Err(_)) => {
                        this.finish_waiting();
                        return Poll::Ready(Some(Err(Status::internal("memory budget closed"))));
                    }
                    Poll::Pending => {
                        ready!(pending.deadline.as_mut().poll(cx));
                        this.finish_waiting();
                        this.ledger.refused.store(true, Ordering::Relaxed);
                        let refusal = this.budget.refuse();
                        return Poll::Ready(Some(Err(Status::from(refusal))));
                    }
                }
            }
            if let Some(held) = this.held.take() {
                match this.scan(held) {
                    Poll::Ready(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => continue,
                }
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(status)) => return Poll::Ready(Some(Err(status))),
                None => return Poll::Ready(None),
            };
            let data = match frame.into_data() {
                Ok(mut data) => data.copy_to_bytes(data.remaining()),
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            match this.scan(data) {
                Poll::Ready(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => continue,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The gRPC path prefix of the events service, whose request bodies are budgeted.
const EVENTS_SERVICE_PATH: &str = "/telemetrygateway.v1.TelemeteryGatewayService/";

/// A tower layer that puts the request bodies of the events service under the budget and hands
/// each call its [`StreamLedger`] in the request extensions.
#[derive(Clone, Debug)]
pub struct BudgetLayer {
    budget: InflightBudget,
}

impl BudgetLayer {
    /// Budgets request bodies against `budget`.
    pub fn new(budget: InflightBudget) -> BudgetLayer {
        BudgetLayer { budget }
    }
}

impl<S> tower::Layer<S> for BudgetLayer {
    type Service = BudgetService<S>;

    fn layer(&self, inner: S) -> BudgetService<S> {
        BudgetService {
            inner,
            budget: self.budget.clone(),
        }
    }
}

/// See [`BudgetLayer`].
#[derive(Clone, Debug)]
pub struct BudgetService<S> {
    inner: S,
    budget: InflightBudget,
}

impl<S> tower::Service<http::Request<Body>> for BudgetService<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> S::Future {
        if !request.uri().path().starts_with(EVENTS_SERVICE_PATH) {
            return self.inner.call(request);
        }
        let (mut parts, body) = request.into_parts();
        let (body, ledger) = self.budget.wrap(body);
        parts.extensions.insert(ledger);
        self.inner.call(http::Request::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&(len as u32).to_be_bytes());
        bytes.extend(std::iter::repeat_n(7u8, len));
        bytes
    }

    #[test]
    fn framing_finds_every_header_across_frame_boundaries() {
        let mut wire = message(10);
        wire.extend(message(0));
        wire.extend(message(300));
        for chunk in [1, 2, 3, 5, 7, 64, 1000] {
            let mut framing = Framing::default();
            let mut found = Vec::new();
            for piece in wire.chunks(chunk) {
                let mut at = 0;
                while at < piece.len() {
                    let (consumed, header) = framing.advance(&piece[at..]);
                    at += consumed;
                    found.extend(header);
                }
            }
            assert_eq!(found, vec![10, 0, 300], "chunks of {chunk}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_wait_for_room_then_time_out() {
        let budget = InflightBudget::new(100, Duration::from_secs(2));
        let first = budget.reserve(20).await.expect("80 of 100 bytes");
        assert_eq!(first.bytes(), 80);
        assert_eq!(budget.used(), 80);
        assert!(!budget.is_exhausted());
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(10).await.map(|r| r.bytes()).ok() }
        });
        tokio::task::yield_now().await;
        assert!(budget.is_exhausted(), "a message is waiting");
        drop(first);
        assert_eq!(waiting.await.expect("task"), Some(40));
        let held = budget.reserve(25).await.expect("the whole budget");
        let refused = budget
            .reserve(1)
            .await
            .expect_err("no room within the wait");
        assert!(matches!(refused, ServerError::OverBudget { .. }));
        drop(held);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_message_larger_than_the_budget_is_admitted_alone() {
        let budget = InflightBudget::new(100, Duration::from_millis(10));
        let big = budget.reserve(1000).await.expect("capped at the budget");
        assert_eq!(big.bytes(), 100);
        assert!(budget.reserve(1).await.is_err());
    }

    #[tokio::test]
    async fn an_unlimited_budget_reserves_nothing() {
        let budget = InflightBudget::unlimited();
        assert_eq!(budget.reserve(1 << 30).await.expect("always").bytes(), 0);
        assert!(!budget.is_exhausted());
    }
}
