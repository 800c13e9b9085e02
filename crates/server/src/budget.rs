//! The memory budget: a bound on the bytes of event payloads the gateway holds at once.
//!
//! Admission happens on the wire, before a message is read: the request body of an events RPC
//! is wrapped in [`BudgetedBody`], which parses gRPC's message framing (a 5-byte header carrying
//! the message length) and, at the start of each message, reserves `length × WEIGHT` bytes of
//! the budget before passing anything of the message on, its header included (tonic sizes its
//! buffer from the header). While the budget is exhausted the body stops reading, so HTTP/2
//! flow control holds the rest of the message at the sender; a message not admitted within the
//! wait gets `ResourceExhausted` with a retry hint. A reservation lives until the handler has
//! answered its payload (or the stream ends).
//!
//! Admission is by whole messages, so the body never holds part of a message while waiting for
//! room for it. The semaphore behind the budget is fair, so a large payload is not starved by
//! small ones, and a single message larger than the whole budget is admitted alone. Because a
//! reservation is made for a length the sender only declared, an admitted message that stops
//! arriving for [`STALL_TIMEOUT`] ends its stream, and a stream's first message (the metadata,
//! for `RecordEvents`) may not declare more than [`FIRST_MESSAGE_MAX_BYTES`].

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::body::Body;

use crate::error::ServerError;
use crate::metrics::Metrics;

/// How many bytes of memory one byte of a received message costs while it is processed: the
/// received bytes, the decoded events, their rendered JSON and the sink's copy. Measured with
/// the memory test (crates/gateway/tests/memory.rs); see docs/operations.md.
pub const WEIGHT: usize = 4;

/// An admitted message whose bytes stop arriving for this long ends its stream.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The most a stream's first message may declare: it carries only the sender's identity
/// (`RecordEvents`) or one event (`RecordEvent`, whose events are dropped from 10 MB anyway).
pub const FIRST_MESSAGE_MAX_BYTES: usize = 16 * 1024 * 1024;

/// After a refusal, `/-/ready` stays not-ready for this long at least (while room is in use),
/// so that probes see the pressure and readiness does not flap.
const PRESSURE_WINDOW: Duration = Duration::from_secs(5);

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
    /// How long an admitted message's bytes may stop arriving.
    stall_timeout: Duration,
    permits: Arc<Semaphore>,
    /// Messages waiting for room right now.
    waiting: AtomicUsize,
    /// When a message was last refused, in ms since `created` (0: never).
    last_refusal_ms: AtomicU64,
    created: Instant,
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
                stall_timeout: STALL_TIMEOUT,
                permits: Arc::new(Semaphore::new(limit)),
                waiting: AtomicUsize::new(0),
                last_refusal_ms: AtomicU64::new(0),
                created: Instant::now(),
                metrics: OnceLock::new(),
            }),
        }
    }

    /// Ends streams whose admitted message stops arriving for `timeout` instead of
    /// [`STALL_TIMEOUT`] (tests use a short one).
    pub fn with_stall_timeout(mut self, timeout: Duration) -> InflightBudget {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.stall_timeout = timeout;
        }
        self
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

    /// Whether the gateway is over its budget: the budget is used up, messages are waiting for
    /// room, or one was refused within the last [`PRESSURE_WINDOW`] (or wait, if longer) and
    /// room is still in use.
    pub fn is_exhausted(&self) -> bool {
        let inner = &self.inner;
        if inner.limit == 0 {
            return false;
        }
        if inner.permits.available_permits() == 0 || inner.waiting.load(Ordering::Relaxed) > 0 {
            return true;
        }
        let last = inner.last_refusal_ms.load(Ordering::Relaxed);
        let window = PRESSURE_WINDOW.max(inner.wait).as_millis() as u64;
        last > 0 && self.now_ms().saturating_sub(last) < window && self.used() > 0
    }

    /// Milliseconds since the budget was made, at least 1 (0 means "never").
    fn now_ms(&self) -> u64 {
        (self.inner.created.elapsed().as_millis() as u64).max(1)
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
    fn refusal(&self) -> ServerError {
        ServerError::OverBudget {
            retry_after: self.retry_after(),
        }
    }

    /// Refuses a message: counts and logs it, and returns the error for the sender.
    fn refuse(&self) -> ServerError {
        self.inner
            .last_refusal_ms
            .store(self.now_ms(), Ordering::Relaxed);
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

    /// Takes room for a message of `len` bytes if there is some now.
    fn try_reserve(&self, len: usize) -> Option<Reservation> {
        if self.inner.limit == 0 || len == 0 {
            return Some(Reservation::none());
        }
        let permit = self
            .inner
            .permits
            .clone()
            .try_acquire_many_owned(self.cost(len))
            .ok()?;
        Some(Reservation {
            permit: Some(permit),
        })
    }

    /// Reserves room for a message of `len` bytes, waiting as a new message would.
    pub async fn reserve(&self, len: usize) -> Result<Reservation, ServerError> {
        if let Some(reservation) = self.try_reserve(len) {
            return Ok(reservation);
        }
        let _waiting = Waiting::start(self);
        let acquire = self
            .inner
            .permits
            .clone()
            .acquire_many_owned(self.cost(len));
        match tokio::time::timeout(self.inner.wait, acquire).await {
            Ok(Ok(permit)) => Ok(Reservation {
                permit: Some(permit),
            }),
            _ => Err(self.refuse()),
        }
    }

    /// Grows `reservation` to cover a message of `len` bytes (a compressed message's decoded
    /// size). Never waits while holding room: if the difference is not free now, the held room
    /// is given back and the whole amount waited for as a new message.
    pub async fn grow(
        &self,
        reservation: Reservation,
        len: usize,
    ) -> Result<Reservation, ServerError> {
        let needed = self.cost(len) as usize;
        let held = reservation.bytes();
        if self.inner.limit == 0 || needed <= held {
            return Ok(reservation);
        }
        let mut reservation = reservation;
        if let Ok(extra) = self
            .inner
            .permits
            .clone()
            .try_acquire_many_owned(u32::try_from(needed - held).unwrap_or(u32::MAX))
        {
            reservation.merge(Reservation {
                permit: Some(extra),
            });
            return Ok(reservation);
        }
        drop(reservation);
        self.reserve(len).await
    }

    /// Wraps the request body of an events RPC and returns the stream's ledger of admitted
    /// messages, for the handler. A `unary` call's body may carry one message only.
    pub fn wrap(&self, body: Body, unary: bool) -> (Body, Arc<StreamLedger>) {
        let ledger = Arc::new(StreamLedger::default());
        if self.inner.limit == 0 {
            return (body, ledger);
        }
        let wrapped = BudgetedBody {
            inner: body,
            budget: self.clone(),
            ledger: ledger.clone(),
            framing: Framing::default(),
            messages: 0,
            max_messages: if unary { 1 } else { usize::MAX },
            blocked: None,
            held: None,
            stall: None,
        };
        (Body::new(wrapped), ledger)
    }
}

/// Counts a message as waiting for room until dropped.
struct Waiting {
    budget: InflightBudget,
}

impl Waiting {
    fn start(budget: &InflightBudget) -> Waiting {
        budget.inner.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting {
            budget: budget.clone(),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.budget.inner.waiting.fetch_sub(1, Ordering::Relaxed);
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

    /// Keeps room for the receive buffer a stream retains after a message: one unweighted copy
    /// of it (tonic keeps its buffer at the largest message's size while the stream is open).
    /// Returns the room to keep if it is more than `held` keeps already; the rest of this
    /// reservation is returned when it is dropped.
    pub fn keep_receive_buffer(&mut self, held: &Reservation) -> Option<Reservation> {
        let buffer = self.bytes() / WEIGHT;
        if buffer <= held.bytes() {
            return None;
        }
        let kept = self.permit.as_mut()?.split(buffer)?;
        Some(Reservation { permit: Some(kept) })
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

    fn push(&self, reservation: Reservation) {
        if let Ok(mut admitted) = self.admitted.lock() {
            admitted.push_back(reservation);
        }
    }
}

/// Where a request body is in gRPC's length-prefixed framing: a pure parser over bytes that
/// arrive in chunks of any size (public so that the fuzz targets can drive it, see docs/fuzzing.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
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
    /// Advances over `data` up to the end of the first message header that completes in it.
    /// Returns how many bytes were consumed and, if a header completed, the message's length and
    /// where in `data` the header's bytes begin (0 when it began in an earlier chunk).
    pub fn advance(&mut self, data: &[u8]) -> (usize, Option<(usize, usize)>) {
        let mut at = 0;
        while at < data.len() {
            match self {
                Framing::Header { bytes, have } => {
                    let take = (HEADER_LEN - *have).min(data.len() - at);
                    bytes[*have..*have + take].copy_from_slice(&data[at..at + take]);
                    *have += take;
                    let header_start = at;
                    at += take;
                    if *have == HEADER_LEN {
                        let len =
                            u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
                        *self = Framing::Message { remaining: len };
                        return (at, Some((len, header_start)));
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

    /// Whether the body is inside a message (its header or its bytes), as opposed to between
    /// messages.
    pub fn mid_message(&self) -> bool {
        match self {
            Framing::Header { have, .. } => *have > 0,
            Framing::Message { .. } => true,
        }
    }
}

type Acquire = Pin<
    Box<
        dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>>
            + Send
            + 'static,
    >,
>;

/// A message whose header has arrived but which has no room yet.
struct Blocked {
    cost: u32,
    /// The header bytes of this chunk, passed on once the message is admitted.
    header: Bytes,
    /// Started on the first poll after the header arrived, so the wait is measured from when
    /// the stream actually asks for the message.
    waiting: Option<WaitingFor>,
}

struct WaitingFor {
    acquire: Acquire,
    deadline: Pin<Box<Sleep>>,
    _counted: Waiting,
}

/// A request body that admits each gRPC message against the budget before passing it on.
struct BudgetedBody {
    inner: Body,
    budget: InflightBudget,
    ledger: Arc<StreamLedger>,
    framing: Framing,
    /// Message headers seen so far.
    messages: usize,
    /// How many the call may carry.
    max_messages: usize,
    /// The message waiting for room, if any.
    blocked: Option<Blocked>,
    /// Bytes received after a blocked message's header, not yet scanned.
    held: Option<Bytes>,
    /// Armed while the sender owes bytes of an admitted message.
    stall: Option<Pin<Box<Sleep>>>,
}

impl BudgetedBody {
    /// Scans `data`, admitting messages whose headers are in it. Returns what may be passed on
    /// now; at a message without room, keeps its header in `blocked` and the rest in `held`.
    fn scan(&mut self, mut data: Bytes) -> Result<Bytes, Status> {
        let mut scanned = 0;
        loop {
            let (consumed, header) = self.framing.advance(&data[scanned..]);
            let Some((len, header_start)) = header else {
                return Ok(data);
            };
            let header_start = scanned + header_start;
            scanned += consumed;
            self.messages += 1;
            if self.messages > self.max_messages {
                return Err(Status::invalid_argument(
                    "a unary call carries exactly one message",
                ));
            }
            if self.messages == 1 && len > FIRST_MESSAGE_MAX_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "the first message of a stream may not exceed {FIRST_MESSAGE_MAX_BYTES} bytes \
                     (got a header for {len})"
                )));
            }
            match self.budget.try_reserve(len) {
                Some(reservation) => self.ledger.push(reservation),
                None => {
                    let rest = data.split_off(scanned);
                    let header = data.split_off(header_start);
                    self.held = (!rest.is_empty()).then_some(rest);
                    self.blocked = Some(Blocked {
                        cost: self.budget.cost(len),
                        header,
                        waiting: None,
                    });
                    return Ok(data);
                }
            }
            if scanned == data.len() {
                return Ok(data);
            }
        }
    }

    /// Polls the blocked message's admission: `Ready(Ok(header))` once admitted.
    fn poll_admission(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, Status>> {
        let Some(blocked) = &mut self.blocked else {
            return Poll::Ready(Ok(Bytes::new()));
        };
        let budget = &self.budget;
        let waiting = blocked.waiting.get_or_insert_with(|| WaitingFor {
            acquire: Box::pin(
                budget
                    .inner
                    .permits
                    .clone()
                    .acquire_many_owned(blocked.cost),
            ),
            deadline: Box::pin(tokio::time::sleep(budget.inner.wait)),
            _counted: Waiting::start(budget),
        });
        let permit = match waiting.acquire.as_mut().poll(cx) {
            Poll::Ready(Ok(permit)) => permit,
            Poll::Ready(Err(_)) => {
                self.blocked = None;
                return Poll::Ready(Err(Status::internal("the memory budget is closed")));
            }
            Poll::Pending => {
                ready!(waiting.deadline.as_mut().poll(cx));
                self.blocked = None;
                return Poll::Ready(Err(Status::from(self.budget.refuse())));
            }
        };
        self.ledger.push(Reservation {
            permit: Some(permit),
        });
        let header = self.blocked.take().map(|b| b.header).unwrap_or_default();
        Poll::Ready(Ok(header))
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
            if this.blocked.is_some() {
                match ready!(this.poll_admission(cx)) {
                    Ok(header) if header.is_empty() => {}
                    Ok(header) => return Poll::Ready(Some(Ok(Frame::data(header)))),
                    Err(status) => return Poll::Ready(Some(Err(status))),
                }
            }
            let data = match this.held.take() {
                Some(held) => held,
                None => match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        this.stall = None;
                        match frame.into_data() {
                            Ok(mut data) => data.copy_to_bytes(data.remaining()),
                            Err(frame) => return Poll::Ready(Some(Ok(frame))),
                        }
                    }
                    Poll::Ready(other) => return Poll::Ready(other),
                    Poll::Pending => {
                        // Waiting for the sender: only a stall inside a message is its fault.
                        if this.framing.mid_message() {
                            let timeout = this.budget.inner.stall_timeout;
                            let stall = this
                                .stall
                                .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                            ready!(stall.as_mut().poll(cx));
                            this.stall = None;
                            return Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                                "no bytes of the current message arrived for {:?}",
                                timeout
                            )))));
                        }
                        return Poll::Pending;
                    }
                },
            };
            match this.scan(data) {
                Ok(pass) if pass.is_empty() => continue,
                Ok(pass) => return Poll::Ready(Some(Ok(Frame::data(pass)))),
                Err(status) => return Poll::Ready(Some(Err(status))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.blocked.is_none() && self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The path of the unary `RecordEvent`, whose body carries one message.
const UNARY_PATH: &str = "/telemetrygateway.v1.TelemeteryGatewayService/RecordEvent";

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
        let unary = request.uri().path() == UNARY_PATH;
        let (mut parts, body) = request.into_parts();
        let (body, ledger) = self.budget.wrap(body, unary);
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
                    found.extend(header.map(|(len, _)| len));
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
    async fn a_stream_keeps_room_for_its_largest_receive_buffer() {
        let budget = InflightBudget::new(1000, Duration::from_millis(10));
        let mut first = budget.reserve(100).await.expect("room");
        let kept = first
            .keep_receive_buffer(&Reservation::none())
            .expect("a buffer to keep");
        assert_eq!((kept.bytes(), first.bytes()), (100, 300));
        drop(first);
        assert_eq!(
            budget.used(),
            100,
            "only the buffer is held after the payload"
        );
        let mut smaller = budget.reserve(50).await.expect("room");
        assert!(
            smaller.keep_receive_buffer(&kept).is_none(),
            "the larger buffer stays"
        );
        drop(smaller);
        assert_eq!(budget.used(), 100);
        drop(kept);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn an_unlimited_budget_reserves_nothing() {
        let budget = InflightBudget::unlimited();
        assert_eq!(budget.reserve(1 << 30).await.expect("always").bytes(), 0);
        assert!(!budget.is_exhausted());
    }
}
