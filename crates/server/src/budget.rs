//! The memory budget: a bound on the bytes the gateway holds for event payloads at once, charged
//! by what a message costs once decoded, not by its wire size.
//!
//! The request body of an events RPC is wrapped in a [`BudgetedBody`], which parses gRPC's
//! message framing and admits each message in two steps (the cost model and the reasons are in
//! docs/security.md):
//!
//! 1. **Receive.** At a message's 5-byte header, room for its wire bytes is taken from the
//!    *receive* part of the budget (a quarter of it). While there is none, the body stops reading,
//!    so HTTP/2 flow control holds the message at the sender. The bytes then pass on to tonic as
//!    they arrive (a compressed message is kept here instead), while a streaming skim of the
//!    protobuf structure counts its events and nested messages. An admitted message must keep
//!    arriving at a minimum rate, or its stream ends and its room is freed.
//! 2. **Hold.** When the message is complete, its decoded cost is known: `WEIGHT` × its decoded
//!    length, plus [`EVENT_COST`] and the rendered request metadata per event, plus
//!    [`MESSAGE_COST`] per nested message. That room is taken from the *held* part (the other
//!    three quarters) before tonic gets the message's last byte (a compressed message is
//!    decompressed only now, off the async workers, never past its known size), and the
//!    receive room is returned. The handler keeps the held room until it has answered the payload.
//!
//! A stream waits for held room while holding only receive room, and nothing that holds held room
//! waits for receive room, so waits cannot form a cycle; every wait ends by admission or, after
//! `wait`, by a refusal with a retry hint. One connection may hold only a share of each part, and
//! a message that costs more than that share is refused naming the limit.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;

use crate::error::ServerError;
use crate::limits::{LimitViolation, Limits};
use crate::metrics::Metrics;
use crate::skim::{Root, Shape, Skim, SkimError};

/// How many bytes of memory one decoded byte of a message costs while it is processed: tonic's
/// receive buffer, the decoded events, their rendered JSON and the sink's copy. Measured with the
/// memory tests (crates/gateway/tests/memory.rs, hostile.rs); see docs/security.md.
pub const WEIGHT: usize = 4;

/// What one event costs beyond its bytes: the decoded `Event`, its rendered envelope, its
/// attributes and its slot in the summary.
pub const EVENT_COST: usize = 1024;

/// What one nested message (a `Struct`, a `Value`, a map entry, …) costs beyond its bytes once
/// decoded and rendered.
pub const MESSAGE_COST: usize = 256;

/// The most a unary call's single message may declare (its event is dropped from 10 MB anyway).
pub const UNARY_MESSAGE_MAX_BYTES: usize = 16 * 1024 * 1024;

/// The part of the budget that receives messages is `1 / RECEIVE_PART` of it.
const RECEIVE_PART: usize = 4;

/// The memory of a gzip decoder, charged with the compressed bytes.
const GZIP_STATE_BYTES: usize = 64 * 1024;

/// The largest zstd window accepted (8 MiB), and the decoder memory charged for it.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;
const ZSTD_STATE_BYTES: usize = (1 << ZSTD_WINDOW_LOG_MAX) + 256 * 1024;

/// Decompression works in chunks of this size.
const DECODE_CHUNK: usize = 64 * 1024;

/// When a payload arrives before the handler has rendered the stream's metadata, the rendered
/// metadata is priced at this many times the metadata message's wire length (JSON escapes).
const UNKNOWN_METADATA_FACTOR: usize = 6;

/// After a refusal, `/-/ready` stays not-ready for this long at least (while room is in use),
/// so that probes see the pressure and readiness does not flap.
const PRESSURE_WINDOW: Duration = Duration::from_secs(5);

/// The gRPC message header: a compression flag and a big-endian u32 length.
const HEADER_LEN: usize = 5;

/// The largest reservation a semaphore grants at once.
const MAX_PERMITS: usize = u32::MAX as usize;

/// The two parts of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Messages being received.
    Receive,
    /// Messages received, until answered.
    Held,
}

/// The gateway-wide budget; cheap to clone.
#[derive(Clone, Debug)]
pub struct InflightBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Bytes that may be reserved; 0 turns the budget off.
    limit: usize,
    receive_limit: usize,
    held_limit: usize,
    /// How long a message may wait for room.
    wait: Duration,
    limits: Limits,
    receive: Arc<Semaphore>,
    held: Arc<Semaphore>,
    /// Messages waiting for room right now.
    waiting: AtomicUsize,
    /// When a message was last refused, in ms since `created` (0: never).
    last_refusal_ms: AtomicU64,
    created: Instant,
    /// Where refusals are counted, once the gateway's metrics are known.
    metrics: OnceLock<Metrics>,
    /// The share of each open connection, by peer address.
    connections: Mutex<HashMap<SocketAddr, Weak<ConnectionShare>>>,
}

impl InflightBudget {
    /// A budget of `limit` bytes (0: unlimited); messages wait up to `wait` for room.
    pub fn new(limit: usize, wait: Duration) -> InflightBudget {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        let receive_limit = if limit == 0 {
            0
        } else {
            (limit / RECEIVE_PART).max(1)
        };
        let held_limit = limit.saturating_sub(receive_limit);
        InflightBudget {
            inner: Arc::new(Inner {
                limit,
                receive_limit,
                held_limit,
                wait,
                limits: Limits::default(),
                receive: Arc::new(Semaphore::new(receive_limit)),
                held: Arc::new(Semaphore::new(held_limit)),
                waiting: AtomicUsize::new(0),
                last_refusal_ms: AtomicU64::new(0),
                created: Instant::now(),
                metrics: OnceLock::new(),
                connections: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Applies `limits` (before the budget is shared).
    pub fn with_limits(mut self, limits: Limits) -> InflightBudget {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.limits = limits;
        }
        self
    }

    /// Ends streams whose admitted message stops arriving for `timeout` (tests use a short one):
    /// the grace before the minimum receive rate applies.
    pub fn with_stall_timeout(mut self, timeout: Duration) -> InflightBudget {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.limits.receive_grace = timeout;
        }
        self
    }

    /// No budget: everything is admitted at once (the limits still apply).
    pub fn unlimited() -> InflightBudget {
        InflightBudget::new(0, Duration::ZERO)
    }

    /// The limits on senders this budget enforces.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The configured limit in bytes (0: unlimited).
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Bytes currently reserved.
    pub fn used(&self) -> usize {
        let inner = &self.inner;
        (inner.receive_limit - inner.receive.available_permits())
            + (inner.held_limit - inner.held.available_permits())
    }

    /// Whether the gateway is over its budget: a part of it is used up, messages are waiting
    /// for room, or one was refused within the last [`PRESSURE_WINDOW`] (or wait, if longer) and
    /// room is still in use. A connection cannot cause this on its own: it may hold only a share
    /// of each part, and is refused (not made to wait) beyond it.
    pub fn is_exhausted(&self) -> bool {
        let inner = &self.inner;
        if inner.limit == 0 {
            return false;
        }
        if inner.receive.available_permits() == 0
            || inner.held.available_permits() == 0
            || inner.waiting.load(Ordering::Relaxed) > 0
        {
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

    /// Counts refusals in `metrics` (`payloads.refused` by reason); the first call wins.
    pub fn count_refusals_in(&self, metrics: Metrics) {
        let _ = self.inner.metrics.set(metrics);
    }

    /// Refuses a message for want of room: counts and logs it, and returns the error.
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
        ServerError::OverBudget {
            retry_after: self.retry_after(),
        }
    }

    /// Counts and logs a limit violation, and returns the error for the sender.
    pub fn violation(&self, violation: LimitViolation) -> ServerError {
        if let Some(metrics) = self.inner.metrics.get() {
            metrics.payload_refused(violation.reason());
        }
        tracing::warn!(reason = violation.reason(), error = %violation, "sender limit reached");
        ServerError::Limit(violation)
    }

    fn semaphore(&self, part: Part) -> &Arc<Semaphore> {
        match part {
            Part::Receive => &self.inner.receive,
            Part::Held => &self.inner.held,
        }
    }

    fn part_limit(&self, part: Part) -> usize {
        match part {
            Part::Receive => self.inner.receive_limit,
            Part::Held => self.inner.held_limit,
        }
    }

    /// The share of `part` one connection may hold.
    fn connection_max(&self, part: Part) -> usize {
        let percent = u128::from(self.inner.limits.connection_share_percent.clamp(1, 100));
        usize::try_from(self.part_limit(part) as u128 * percent / 100).unwrap_or(usize::MAX)
    }

    /// Checks that `connection` may take `bytes` more of `part`: a message that can never fit
    /// is refused for good, one that does not fit now for a while.
    fn check_share(
        &self,
        connection: Option<&Arc<ConnectionShare>>,
        part: Part,
        bytes: usize,
        cost: usize,
    ) -> Result<(), LimitViolation> {
        let max = self.connection_max(part);
        if bytes > max {
            return Err(LimitViolation::MessageTooCostly { cost, max });
        }
        if let Some(connection) = connection
            && connection.used(part) + bytes > max
        {
            return Err(LimitViolation::ConnectionShare {
                retry_after: self.retry_after(),
            });
        }
        Ok(())
    }

    /// Takes `bytes` of `part` now if there is room.
    fn try_take(
        &self,
        part: Part,
        bytes: usize,
        connection: Option<&Arc<ConnectionShare>>,
    ) -> Option<Reservation> {
        if self.inner.limit == 0 || bytes == 0 {
            return Some(Reservation::none());
        }
        let permits = u32::try_from(bytes.min(MAX_PERMITS)).unwrap_or(u32::MAX);
        let permit = self
            .semaphore(part)
            .clone()
            .try_acquire_many_owned(permits)
            .ok()?;
        Some(Reservation::from_permit(part, permit, connection))
    }

    /// The share of the connection a request came on (none when its address is unknown).
    fn connection(&self, peer: Option<SocketAddr>) -> Option<Arc<ConnectionShare>> {
        let peer = peer?;
        let mut connections = self.inner.connections.lock().ok()?;
        if let Some(share) = connections.get(&peer).and_then(Weak::upgrade) {
            return Some(share);
        }
        connections.retain(|_, share| share.strong_count() > 0);
        let share = Arc::new(ConnectionShare::default());
        connections.insert(peer, Arc::downgrade(&share));
        Some(share)
    }

    /// Wraps the request body of an events RPC and returns the stream's ledger of admitted
    /// messages, for the handler. A `unary` call's body carries one `RecordEventRequest`.
    pub fn wrap(
        &self,
        body: Body,
        unary: bool,
        encoding: Option<&str>,
        peer: Option<SocketAddr>,
    ) -> (Body, Arc<StreamLedger>) {
        let ledger = Arc::new(StreamLedger::default());
        let wrapped = BudgetedBody {
            inner: body,
            budget: self.clone(),
            ledger: ledger.clone(),
            connection: self.connection(peer),
            unary,
            encoding: Encoding::from_header(encoding),
            messages: 0,
            first_message_len: 0,
            phase: Phase::header(),
            pending: None,
            timer: None,
            quiet_since: None,
        };
        (Body::new(wrapped), ledger)
    }
}

/// What one connection holds of each part of the budget.
#[derive(Debug, Default)]
struct ConnectionShare {
    receive: AtomicUsize,
    held: AtomicUsize,
}

impl ConnectionShare {
    fn counter(&self, part: Part) -> &AtomicUsize {
        match part {
            Part::Receive => &self.receive,
            Part::Held => &self.held,
        }
    }

    fn used(&self, part: Part) -> usize {
        self.counter(part).load(Ordering::Relaxed)
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
#[derive(Debug, Default)]
pub struct Reservation {
    receive: Option<OwnedSemaphorePermit>,
    held: Option<OwnedSemaphorePermit>,
    connection: Option<Arc<ConnectionShare>>,
    /// The receive buffer tonic keeps for the stream after this message.
    buffer: usize,
}

impl Reservation {
    /// A reservation of nothing.
    pub fn none() -> Reservation {
        Reservation::default()
    }

    fn from_permit(
        part: Part,
        permit: OwnedSemaphorePermit,
        connection: Option<&Arc<ConnectionShare>>,
    ) -> Reservation {
        if let Some(connection) = connection {
            connection
                .counter(part)
                .fetch_add(permit.num_permits(), Ordering::Relaxed);
        }
        let mut reservation = Reservation::none();
        reservation.connection = connection.cloned();
        match part {
            Part::Receive => reservation.receive = Some(permit),
            Part::Held => reservation.held = Some(permit),
        }
        reservation
    }

    /// Bytes reserved.
    pub fn bytes(&self) -> usize {
        self.part_bytes(Part::Receive) + self.part_bytes(Part::Held)
    }

    fn part_bytes(&self, part: Part) -> usize {
        let permit = match part {
            Part::Receive => &self.receive,
            Part::Held => &self.held,
        };
        permit.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Gives back the room of `part`.
    fn release(&mut self, part: Part) {
        let permit = match part {
            Part::Receive => self.receive.take(),
            Part::Held => self.held.take(),
        };
        if let (Some(permit), Some(connection)) = (&permit, &self.connection) {
            connection
                .counter(part)
                .fetch_sub(permit.num_permits(), Ordering::Relaxed);
        }
    }

    /// Adds `other` to this reservation (both of one stream).
    pub fn merge(&mut self, mut other: Reservation) {
        for part in [Part::Receive, Part::Held] {
            let theirs = match part {
                Part::Receive => other.receive.take(),
                Part::Held => other.held.take(),
            };
            let Some(theirs) = theirs else { continue };
            let mine = match part {
                Part::Receive => &mut self.receive,
                Part::Held => &mut self.held,
            };
            match mine {
                Some(mine) => mine.merge(theirs),
                None => *mine = Some(theirs),
            }
        }
        if self.connection.is_none() {
            self.connection = other.connection.take();
        }
        self.buffer = self.buffer.max(other.buffer);
    }

    /// Splits off the room for the receive buffer the stream keeps after this message (tonic
    /// keeps its buffer at its largest message's size until the stream ends); the rest of this
    /// reservation is returned when it is dropped.
    pub fn keep_receive_buffer(&mut self) -> Reservation {
        let buffer = self.buffer.min(self.part_bytes(Part::Held));
        let kept = self.held.as_mut().and_then(|held| held.split(buffer));
        Reservation {
            receive: None,
            held: kept,
            connection: self.connection.clone(),
            buffer: self.buffer,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release(Part::Receive);
        self.release(Part::Held);
    }
}

/// What one stream's body and handler share: the reservations of admitted messages, oldest
/// first (the body adds one per message, the handler takes one per message it receives and holds
/// it until the payload is answered), the room kept for tonic's receive buffer, and the length of
/// the stream's rendered metadata (repeated in every event's payload).
#[derive(Debug)]
pub struct StreamLedger {
    admitted: Mutex<VecDeque<Reservation>>,
    kept: Mutex<Reservation>,
    metadata_json_len: AtomicUsize,
}

impl Default for StreamLedger {
    fn default() -> Self {
        StreamLedger {
            admitted: Mutex::default(),
            kept: Mutex::default(),
            metadata_json_len: AtomicUsize::new(usize::MAX),
        }
    }
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

    /// Keeps room for tonic's receive buffer out of `reservation`, once its payload is answered.
    pub fn keep_receive_buffer(&self, reservation: &mut Reservation) {
        let kept = reservation.keep_receive_buffer();
        if let Ok(mut slot) = self.kept.lock() {
            slot.merge(kept);
        }
    }

    /// Records the length of the stream's rendered metadata, which every event's payload repeats.
    pub fn set_metadata_json_len(&self, len: usize) {
        self.metadata_json_len.store(len, Ordering::Relaxed);
    }

    fn push(&self, reservation: Reservation) {
        if let Ok(mut admitted) = self.admitted.lock() {
            admitted.push_back(reservation);
        }
    }

    fn take_kept(&self) -> Reservation {
        self.kept
            .lock()
            .map(|mut kept| std::mem::take(&mut *kept))
            .unwrap_or_default()
    }
}

/// A request's `grpc-encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Zstd,
    Unsupported,
}

impl Encoding {
    fn from_header(value: Option<&str>) -> Encoding {
        match value {
            None | Some("identity") => Encoding::Identity,
            Some("gzip") => Encoding::Gzip,
            Some("zstd") => Encoding::Zstd,
            Some(_) => Encoding::Unsupported,
        }
    }

    /// The decoder memory charged with a compressed message.
    fn state_bytes(self) -> usize {
        match self {
            Encoding::Zstd => ZSTD_STATE_BYTES,
            _ => GZIP_STATE_BYTES,
        }
    }
}

/// The memory a message costs once decoded: see the module documentation.
pub fn message_cost(decoded_len: usize, shape: Shape, metadata_json_len: usize) -> usize {
    decoded_len
        .saturating_mul(WEIGHT)
        .saturating_add(
            shape
                .events
                .saturating_mul(EVENT_COST.saturating_add(metadata_json_len)),
        )
        .saturating_add(shape.messages.saturating_mul(MESSAGE_COST))
}

/// What a `RecordEventsRequest` costs once decoded, by the same skim and model the body applies,
/// on a stream whose rendered metadata is `metadata_json_len` bytes long.
pub fn request_cost(
    message: &telemetry_gateway_proto::v1::RecordEventsRequest,
    metadata_json_len: usize,
) -> Result<usize, SkimError> {
    let bytes = prost::Message::encode_to_vec(message);
    let mut skim = Skim::new(Root::RecordEventsRequest, Some(bytes.len()), usize::MAX);
    skim.feed(&bytes)?;
    let shape = skim.finish(bytes.len())?;
    Ok(message_cost(bytes.len(), shape, metadata_json_len))
}

/// Decompresses `input`, handing the output to `out` in chunks, and refuses it past `max` bytes.
/// Returns the decoded length.
fn decompress(
    encoding: Encoding,
    input: &[u8],
    max: usize,
    mut out: impl FnMut(&[u8]) -> Result<(), LimitViolation>,
) -> Result<usize, LimitViolation> {
    let malformed =
        |err: std::io::Error| LimitViolation::Malformed(format!("decompressing: {err}"));
    let mut reader: Box<dyn Read> = match encoding {
        Encoding::Gzip => Box::new(flate2::read::GzDecoder::new(input)),
        Encoding::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(input).map_err(malformed)?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(malformed)?;
            Box::new(decoder)
        }
        Encoding::Identity | Encoding::Unsupported => {
            return Err(LimitViolation::Malformed(
                "a compressed message without a supported grpc-encoding".into(),
            ));
        }
    };
    let mut chunk = vec![0u8; DECODE_CHUNK];
    let mut total = 0usize;
    loop {
        let n = reader.read(&mut chunk).map_err(malformed)?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
        if total > max {
            return Err(LimitViolation::DecompressedTooLarge { max });
        }
        out(&chunk[..n])?;
    }
}

fn skim_violation(err: SkimError) -> LimitViolation {
    match err {
        SkimError::TooManyEvents(max) => LimitViolation::TooManyEvents { max },
        SkimError::Malformed(what) => LimitViolation::Malformed(what.into()),
    }
}

/// Skims a compressed message by decompressing it without keeping the output.
fn skim_compressed(
    encoding: Encoding,
    input: &[u8],
    max: usize,
    root: Root,
    max_events: usize,
) -> Result<(usize, Shape), LimitViolation> {
    let mut skim = Skim::new(root, None, max_events);
    let len = decompress(encoding, input, max, |chunk| {
        skim.feed(chunk).map_err(skim_violation)
    })?;
    let shape = skim.finish(len).map_err(skim_violation)?;
    Ok((len, shape))
}

/// Decompresses a message whose length is known into a gRPC frame marked uncompressed.
fn decompress_to_frame(
    encoding: Encoding,
    input: &[u8],
    len: usize,
) -> Result<Bytes, LimitViolation> {
    let mut frame = BytesMut::with_capacity(HEADER_LEN + len);
    frame.extend_from_slice(&[0]);
    frame.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    decompress(encoding, input, len, |chunk| {
        frame.extend_from_slice(chunk);
        Ok(())
    })?;
    Ok(frame.freeze())
}

type Acquire = Pin<
    Box<
        dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>>
            + Send
            + 'static,
    >,
>;

/// A wait for room, started on the first poll so that it is measured from when the stream asks.
struct WaitingFor {
    acquire: Acquire,
    deadline: Pin<Box<Sleep>>,
    _counted: Waiting,
}

/// What is passed on once a complete message has its held room.
enum Release {
    /// The withheld last bytes of an uncompressed message.
    Bytes(Bytes),
    /// A compressed message, decompressed to `len` bytes once admitted.
    Decompress { input: Bytes, len: usize },
}

/// Where the body is in the current message.
enum Phase {
    /// Reading a message header; `have` of its 5 bytes seen so far.
    Header {
        bytes: [u8; HEADER_LEN],
        have: usize,
    },
    /// A header arrived; waiting for receive room.
    AwaitReceive {
        header: [u8; HEADER_LEN],
        need: usize,
        waiting: Option<WaitingFor>,
    },
    /// Receiving an admitted message.
    Body {
        len: usize,
        received: usize,
        admitted_at: Instant,
        reservation: Reservation,
        /// Uncompressed: the skim of the bytes passed on so far.
        skim: Option<Skim>,
        /// Compressed: the bytes so far.
        compressed: Option<BytesMut>,
    },
    /// A compressed message is being skimmed off the async workers.
    Skimming {
        task: JoinHandle<Result<(usize, Shape), LimitViolation>>,
        input: Bytes,
        reservation: Reservation,
    },
    /// A complete message waits for held room.
    AwaitHeld {
        need: usize,
        reservation: Reservation,
        release: Option<Release>,
        waiting: Option<WaitingFor>,
    },
    /// An admitted compressed message is being decompressed off the async workers.
    Decompressing {
        task: JoinHandle<Result<Bytes, LimitViolation>>,
    },
}

impl Phase {
    fn header() -> Phase {
        Phase::Header {
            bytes: [0; HEADER_LEN],
            have: 0,
        }
    }
}

/// Why the body ends the stream.
enum Stop {
    Violation(LimitViolation),
    Refused(ServerError),
}

impl From<LimitViolation> for Stop {
    fn from(violation: LimitViolation) -> Stop {
        Stop::Violation(violation)
    }
}

/// A request body that admits each gRPC message against the budget before passing it on.
struct BudgetedBody {
    inner: Body,
    budget: InflightBudget,
    ledger: Arc<StreamLedger>,
    connection: Option<Arc<ConnectionShare>>,
    unary: bool,
    encoding: Encoding,
    /// Message headers seen so far.
    messages: usize,
    /// The declared length of the stream's first (metadata) message.
    first_message_len: usize,
    phase: Phase,
    /// Bytes received but not yet looked at (after a message's end, or while waiting).
    pending: Option<Bytes>,
    /// Armed while the body waits for the sender: the idle or minimum-rate deadline.
    timer: Option<(Instant, Pin<Box<Sleep>>)>,
    /// Since when the body has waited for the next message (set on its first wait).
    quiet_since: Option<Instant>,
}

impl BudgetedBody {
    fn limits(&self) -> &Limits {
        &self.budget.inner.limits
    }

    fn root(&self) -> Root {
        if self.unary {
            Root::RecordEventRequest
        } else {
            Root::RecordEventsRequest
        }
    }

    fn stop(&self, stop: Stop) -> Status {
        match stop {
            Stop::Violation(violation) => self.budget.violation(violation).into(),
            Stop::Refused(err) => err.into(),
        }
    }

    /// A header of a message of `len` bytes arrived: checks the limits and takes receive room.
    /// Returns the bytes to pass on now.
    fn start_message(&mut self, header: [u8; HEADER_LEN]) -> Result<Bytes, Stop> {
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let compressed = header[0] & 1 == 1;
        self.messages += 1;
        if self.unary && self.messages > 1 {
            return Err(LimitViolation::UnaryExtraMessage.into());
        }
        if self.messages == 1 {
            self.first_message_len = len;
            let limits = self.limits();
            if self.unary && len > UNARY_MESSAGE_MAX_BYTES {
                return Err(LimitViolation::UnaryTooLarge {
                    len,
                    max: UNARY_MESSAGE_MAX_BYTES,
                }
                .into());
            }
            if !self.unary && len > limits.max_metadata_bytes {
                return Err(LimitViolation::MetadataTooLarge {
                    len,
                    max: limits.max_metadata_bytes,
                }
                .into());
            }
        }
        if compressed && matches!(self.encoding, Encoding::Identity | Encoding::Unsupported) {
            return Err(LimitViolation::Malformed(
                "a compressed message without a supported grpc-encoding".into(),
            )
            .into());
        }
        let need = if compressed {
            len + self.encoding.state_bytes()
        } else {
            len
        };
        let budget = self.budget.clone();
        if budget.inner.limit > 0 {
            budget.check_share(self.connection.as_ref(), Part::Receive, need, need)?;
        }
        match budget.try_take(Part::Receive, need, self.connection.as_ref()) {
            Some(reservation) => Ok(self.admitted(header, reservation)),
            None => {
                self.phase = Phase::AwaitReceive {
                    header,
                    need,
                    waiting: None,
                };
                Ok(Bytes::new())
            }
        }
    }

    /// A message has receive room: starts receiving it. Returns the bytes to pass on now.
    fn admitted(&mut self, header: [u8; HEADER_LEN], reservation: Reservation) -> Bytes {
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let compressed = header[0] & 1 == 1;
        let max_events = self.limits().max_events_per_payload;
        self.phase = Phase::Body {
            len,
            received: 0,
            admitted_at: Instant::now(),
            reservation,
            skim: (!compressed).then(|| Skim::new(self.root(), Some(len), max_events)),
            compressed: compressed.then(|| BytesMut::with_capacity(len)),
        };
        if compressed {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&header)
        }
    }

    /// Looks at received bytes: returns what may be passed on now, keeping the rest pending.
    fn consume(&mut self, mut data: Bytes) -> Result<Bytes, Stop> {
        let mut out = BytesMut::new();
        while !data.is_empty() {
            match &mut self.phase {
                Phase::Header { bytes, have } => {
                    let take = (HEADER_LEN - *have).min(data.len());
                    bytes[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data.advance(take);
                    if *have == HEADER_LEN {
                        let header = *bytes;
                        out.extend_from_slice(&self.start_message(header)?);
                        if !matches!(self.phase, Phase::Body { .. }) {
                            break;
                        }
                    }
                    if let Phase::Body { len: 0, .. } = self.phase {
                        self.complete(&mut out, Bytes::new())?;
                        break;
                    }
                }
                Phase::Body {
                    len,
                    received,
                    skim,
                    compressed,
                    ..
                } => {
                    let take = (*len - *received).min(data.len());
                    let chunk = data.split_to(take);
                    *received += take;
                    let done = *received == *len;
                    if let Some(skim) = skim {
                        skim.feed(&chunk).map_err(skim_violation)?;
                    }
                    if let Some(buffer) = compressed {
                        buffer.extend_from_slice(&chunk);
                        if done {
                            self.complete(&mut out, Bytes::new())?;
                            break;
                        }
                    } else if done {
                        // The last byte waits for the message's held room.
                        let mut chunk = chunk;
                        let last = chunk.split_off(chunk.len() - 1);
                        out.extend_from_slice(&chunk);
                        self.complete(&mut out, last)?;
                        break;
                    } else {
                        out.extend_from_slice(&chunk);
                    }
                }
                _ => break,
            }
        }
        if !data.is_empty() {
            self.pending = Some(data);
        }
        Ok(out.freeze())
    }

    /// The message in `Body` is complete; `last` holds its withheld last bytes (uncompressed).
    fn complete(&mut self, out: &mut BytesMut, last: Bytes) -> Result<(), Stop> {
        let Phase::Body {
            len,
            reservation,
            skim,
            compressed,
            ..
        } = std::mem::replace(&mut self.phase, Phase::header())
        else {
            return Ok(());
        };
        if let Some(buffer) = compressed {
            let input = buffer.freeze();
            let (encoding, max, root) = (
                self.encoding,
                self.limits().max_decoded_message_bytes,
                self.root(),
            );
            let max_events = self.limits().max_events_per_payload;
            let task_input = input.clone();
            let task = tokio::task::spawn_blocking(move || {
                skim_compressed(encoding, &task_input, max, root, max_events)
            });
            self.phase = Phase::Skimming {
                task,
                input,
                reservation,
            };
            return Ok(());
        }
        let shape = match skim {
            Some(skim) => skim.finish(len).map_err(skim_violation)?,
            None => Shape::default(),
        };
        let cost = message_cost(len, shape, self.metadata_json_len());
        self.admit_held(reservation, cost, len, Release::Bytes(last), out)
    }

    /// What the stream's rendered metadata costs per event.
    fn metadata_json_len(&self) -> usize {
        match self.ledger.metadata_json_len.load(Ordering::Relaxed) {
            usize::MAX if self.unary => 0,
            usize::MAX => self
                .first_message_len
                .saturating_mul(UNKNOWN_METADATA_FACTOR),
            len => len,
        }
    }

    /// Takes held room for a complete message costing `cost`, whose decoded `buffer` bytes sit
    /// in tonic's receive buffer; passes `release` on once admitted.
    fn admit_held(
        &mut self,
        mut reservation: Reservation,
        cost: usize,
        buffer: usize,
        release: Release,
        out: &mut BytesMut,
    ) -> Result<(), Stop> {
        // The buffer tonic kept from earlier messages is reused for this one.
        let kept = self.ledger.take_kept();
        reservation.buffer = buffer.max(kept.buffer);
        let need = cost.saturating_sub(kept.part_bytes(Part::Held));
        reservation.merge(kept);
        let budget = self.budget.clone();
        if budget.inner.limit > 0 {
            let max = budget
                .connection_max(Part::Held)
                .min(budget.inner.held_limit);
            if cost > max {
                return Err(LimitViolation::MessageTooCostly { cost, max }.into());
            }
            budget.check_share(self.connection.as_ref(), Part::Held, need, cost)?;
        }
        match budget.try_take(Part::Held, need, self.connection.as_ref()) {
            Some(room) => {
                reservation.merge(room);
                self.held(reservation, release, out);
            }
            None => {
                self.phase = Phase::AwaitHeld {
                    need,
                    reservation,
                    release: Some(release),
                    waiting: None,
                };
            }
        }
        Ok(())
    }

    /// A complete message has its held room: its receive room goes back, and it is passed on.
    fn held(&mut self, mut reservation: Reservation, release: Release, out: &mut BytesMut) {
        reservation.release(Part::Receive);
        match release {
            Release::Bytes(last) => {
                out.extend_from_slice(&last);
                self.ledger.push(reservation);
                self.phase = Phase::header();
            }
            Release::Decompress { input, len } => {
                let encoding = self.encoding;
                self.ledger.push(reservation);
                self.phase = Phase::Decompressing {
                    task: tokio::task::spawn_blocking(move || {
                        decompress_to_frame(encoding, &input, len)
                    }),
                };
            }
        }
    }

    /// Polls a wait for `need` bytes of `part`.
    fn poll_wait(
        budget: &InflightBudget,
        connection: Option<&Arc<ConnectionShare>>,
        waiting: &mut Option<WaitingFor>,
        part: Part,
        need: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Reservation, Stop>> {
        let waiting = waiting.get_or_insert_with(|| WaitingFor {
            acquire: Box::pin(
                budget
                    .semaphore(part)
                    .clone()
                    .acquire_many_owned(u32::try_from(need.min(MAX_PERMITS)).unwrap_or(u32::MAX)),
            ),
            deadline: Box::pin(tokio::time::sleep(budget.inner.wait)),
            _counted: Waiting::start(budget),
        });
        match waiting.acquire.as_mut().poll(cx) {
            Poll::Ready(Ok(permit)) => {
                Poll::Ready(Ok(Reservation::from_permit(part, permit, connection)))
            }
            Poll::Ready(Err(_)) => Poll::Ready(Err(Stop::Refused(budget.refuse()))),
            Poll::Pending => {
                ready!(waiting.deadline.as_mut().poll(cx));
                Poll::Ready(Err(Stop::Refused(budget.refuse())))
            }
        }
    }

    /// Drives the current phase's wait or task; `Ready(Ok(bytes))` once it is over.
    fn poll_phase(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, Stop>> {
        let budget = self.budget.clone();
        match &mut self.phase {
            Phase::AwaitReceive {
                header,
                need,
                waiting,
            } => {
                let header = *header;
                let reservation = ready!(Self::poll_wait(
                    &budget,
                    self.connection.as_ref(),
                    waiting,
                    Part::Receive,
                    *need,
                    cx
                ))?;
                Poll::Ready(Ok(self.admitted(header, reservation)))
            }
            Phase::AwaitHeld {
                need,
                reservation,
                release,
                waiting,
                ..
            } => {
                let room = ready!(Self::poll_wait(
                    &budget,
                    self.connection.as_ref(),
                    waiting,
                    Part::Held,
                    *need,
                    cx
                ))?;
                let mut reservation = std::mem::take(reservation);
                let release = release.take();
                reservation.merge(room);
                let mut out = BytesMut::new();
                if let Some(release) = release {
                    self.held(reservation, release, &mut out);
                }
                Poll::Ready(Ok(out.freeze()))
            }
            Phase::Skimming {
                task,
                input,
                reservation,
            } => {
                let skimmed = ready!(Pin::new(task).poll(cx));
                let (len, shape) = skimmed
                    .map_err(|err| LimitViolation::Malformed(format!("decompressing: {err}")))??;
                let input = input.clone();
                let reservation = std::mem::take(reservation);
                // The decompressed copy handed to tonic is held too, until tonic has copied it.
                let cost = message_cost(len, shape, self.metadata_json_len()).saturating_add(len);
                let mut out = BytesMut::new();
                self.admit_held(
                    reservation,
                    cost,
                    len,
                    Release::Decompress { input, len },
                    &mut out,
                )?;
                Poll::Ready(Ok(out.freeze()))
            }
            Phase::Decompressing { task } => {
                let frame = ready!(Pin::new(task).poll(cx))
                    .map_err(|err| LimitViolation::Malformed(format!("decompressing: {err}")))??;
                self.phase = Phase::header();
                Poll::Ready(Ok(frame))
            }
            Phase::Header { .. } | Phase::Body { .. } => Poll::Ready(Ok(Bytes::new())),
        }
    }

    /// When waiting for the sender ends the stream, and with which violation.
    fn sender_deadline(&mut self) -> (Instant, LimitViolation) {
        let limits = &self.budget.inner.limits;
        match &self.phase {
            Phase::Body {
                received,
                admitted_at,
                ..
            } => {
                let rate = limits.min_receive_bytes_per_second.max(1);
                let earned = Duration::from_secs_f64(*received as f64 / rate as f64);
                (
                    *admitted_at + limits.receive_grace + earned,
                    LimitViolation::TooSlow {
                        rate,
                        grace: limits.receive_grace,
                    },
                )
            }
            Phase::Header { have, .. } if *have > 0 => {
                let since = *self.quiet_since.get_or_insert_with(Instant::now);
                (
                    since + limits.receive_grace,
                    LimitViolation::TooSlow {
                        rate: limits.min_receive_bytes_per_second,
                        grace: limits.receive_grace,
                    },
                )
            }
            _ => {
                let since = *self.quiet_since.get_or_insert_with(Instant::now);
                (
                    since + limits.idle_timeout,
                    LimitViolation::Idle(limits.idle_timeout),
                )
            }
        }
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
            match ready!(this.poll_phase(cx)) {
                Ok(out) if !out.is_empty() => return Poll::Ready(Some(Ok(Frame::data(out)))),
                Ok(_) => {}
                Err(stop) => return Poll::Ready(Some(Err(this.stop(stop)))),
            }
            if !matches!(this.phase, Phase::Header { .. } | Phase::Body { .. }) {
                continue;
            }
            let data = match this.pending.take() {
                Some(pending) => pending,
                None => match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        this.timer = None;
                        this.quiet_since = None;
                        match frame.into_data() {
                            Ok(mut data) => data.copy_to_bytes(data.remaining()),
                            Err(frame) => return Poll::Ready(Some(Ok(frame))),
                        }
                    }
                    Poll::Ready(other) => return Poll::Ready(other),
                    Poll::Pending => {
                        let (deadline, violation) = this.sender_deadline();
                        let timer = this.timer.get_or_insert_with(|| {
                            (deadline, Box::pin(tokio::time::sleep_until(deadline)))
                        });
                        if timer.0 != deadline {
                            timer.0 = deadline;
                            timer.1.as_mut().reset(deadline);
                        }
                        ready!(timer.1.as_mut().poll(cx));
                        this.timer = None;
                        return Poll::Ready(Some(Err(this.stop(Stop::Violation(violation)))));
                    }
                },
            };
            match this.consume(data) {
                Ok(out) if out.is_empty() => {}
                Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                Err(stop) => return Poll::Ready(Some(Err(this.stop(stop)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.phase, Phase::Header { have: 0, .. })
            && self.pending.is_none()
            && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::default()
    }
}

/// The path of the unary `RecordEvent`, whose body carries one message.
const UNARY_PATH: &str = "/telemetrygateway.v1.TelemeteryGatewayService/RecordEvent";

/// The gRPC path prefix of the events service, whose request bodies are budgeted.
const EVENTS_SERVICE_PATH: &str = "/telemetrygateway.v1.TelemeteryGatewayService/";

/// A tower layer that puts the request bodies of the events service under the budget and the
/// sender limits, and hands each call its [`StreamLedger`] in the request extensions.
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
        let encoding = parts
            .headers
            .get("grpc-encoding")
            .and_then(|value| value.to_str().ok());
        let peer = parts
            .extensions
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        let (body, ledger) = self.budget.wrap(body, unary, encoding, peer);
        parts.extensions.insert(ledger);
        self.inner.call(http::Request::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_budget_is_split_into_receive_and_held_parts() {
        let budget = InflightBudget::new(1000, Duration::from_millis(10));
        assert_eq!(
            (budget.inner.receive_limit, budget.inner.held_limit),
            (250, 750)
        );
        let receive = budget.try_take(Part::Receive, 250, None).expect("room");
        assert!(budget.try_take(Part::Receive, 1, None).is_none());
        assert!(budget.is_exhausted(), "the receive part is used up");
        let held = budget.try_take(Part::Held, 700, None).expect("room");
        assert_eq!(budget.used(), 950);
        drop((receive, held));
        assert_eq!(budget.used(), 0);
        assert!(!budget.is_exhausted());
    }

    #[tokio::test]
    async fn a_connection_holds_at_most_its_share_of_each_part() {
        let budget = InflightBudget::new(1000, Duration::from_millis(10));
        let connection = budget.connection(Some(SocketAddr::from(([127, 0, 0, 1], 9))));
        let connection = connection.as_ref();
        assert_eq!(budget.connection_max(Part::Held), 375);
        assert!(matches!(
            budget.check_share(connection, Part::Held, 400, 400),
            Err(LimitViolation::MessageTooCostly { max: 375, .. })
        ));
        let held = budget.try_take(Part::Held, 300, connection).expect("room");
        assert!(matches!(
            budget.check_share(connection, Part::Held, 100, 100),
            Err(LimitViolation::ConnectionShare { .. })
        ));
        assert!(budget.check_share(None, Part::Held, 100, 100).is_ok());
        drop(held);
        assert!(budget.check_share(connection, Part::Held, 100, 100).is_ok());
    }

    #[tokio::test]
    async fn a_stream_keeps_room_for_its_largest_receive_buffer() {
        let budget = InflightBudget::new(1000, Duration::from_millis(10));
        let ledger = StreamLedger::default();
        let mut first = budget.try_take(Part::Held, 300, None).expect("room");
        first.buffer = 100;
        ledger.keep_receive_buffer(&mut first);
        drop(first);
        assert_eq!(
            budget.used(),
            100,
            "only the buffer is held after the payload"
        );
        let kept = ledger.take_kept();
        assert_eq!((kept.bytes(), kept.buffer), (100, 100));
        drop(kept);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_cost_counts_events_metadata_and_nested_messages() {
        let shape = Shape {
            events: 10,
            messages: 30,
        };
        assert_eq!(
            message_cost(1000, shape, 500),
            1000 * WEIGHT + 10 * (EVENT_COST + 500) + 30 * MESSAGE_COST
        );
    }

    #[test]
    fn decompression_stops_at_the_limit() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; 1 << 20]).expect("in memory");
        let bomb = encoder.finish().expect("in memory");
        let mut seen = 0;
        let result = decompress(Encoding::Gzip, &bomb, 100_000, |chunk| {
            seen += chunk.len();
            Ok(())
        });
        assert_eq!(
            result,
            Err(LimitViolation::DecompressedTooLarge { max: 100_000 })
        );
        assert!(seen <= 100_000, "nothing past the limit is handed on");
        let zstd = zstd::encode_all(&vec![7u8; 1000][..], 3).expect("in memory");
        let frame = decompress_to_frame(Encoding::Zstd, &zstd, 1000).expect("decodes");
        assert_eq!(frame.len(), HEADER_LEN + 1000);
        assert_eq!(&frame[..HEADER_LEN], &[0, 0, 0, 0x03, 0xe8]);
    }

    mod model {
        //! Model-based tests of the budget's accounting: random sequences of reserve (now or
        //! waiting), merge, keep, partial and full release, and stream end, checked after every
        //! step against the sum of the live reservations.

        use proptest::prelude::*;

        use super::*;

        const LIMIT: usize = 1000;
        const WAIT: Duration = Duration::from_millis(100);

        #[derive(Debug, Clone)]
        enum Op {
            /// Take room now (as at a header or a complete message).
            Take {
                held: bool,
                conn: usize,
                bytes: usize,
            },
            /// Wait for room (as a blocked message does).
            Wait {
                held: bool,
                conn: usize,
                bytes: usize,
            },
            /// A payload is answered: its room goes back.
            Release(usize),
            /// A message has its held room: its receive room goes back.
            ReleaseReceive(usize),
            /// A stream's kept buffer joins its next message.
            Merge(usize, usize),
            /// A payload is answered and the stream keeps its receive buffer.
            Keep(usize, usize),
            /// Time passes.
            Advance(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (any::<bool>(), 0..3usize, 0..400usize).prop_map(|(held, conn, bytes)| Op::Take {
                    held,
                    conn,
                    bytes
                }),
                (any::<bool>(), 0..3usize, 1..400usize).prop_map(|(held, conn, bytes)| Op::Wait {
                    held,
                    conn,
                    bytes
                }),
                any::<usize>().prop_map(Op::Release),
                any::<usize>().prop_map(Op::ReleaseReceive),
                (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Op::Merge(a, b)),
                (any::<usize>(), 0..300usize).prop_map(|(a, b)| Op::Keep(a, b)),
                (0..150u64).prop_map(Op::Advance),
            ]
        }

        type Waiter = tokio::task::JoinHandle<Result<Reservation, ()>>;

        struct Model {
            budget: InflightBudget,
            /// Connection 2 stands for requests whose peer is unknown.
            conns: Vec<Option<Arc<ConnectionShare>>>,
            live: Vec<(usize, Reservation)>,
            /// Waiting: the connection, since when, how many bytes, and the task.
            waiters: Vec<(usize, Instant, usize, Waiter)>,
        }

        impl Model {
            fn part(held: bool) -> Part {
                if held { Part::Held } else { Part::Receive }
            }

            async fn collect(&mut self) {
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
                let mut still = Vec::new();
                for (conn, started, bytes, waiter) in std::mem::take(&mut self.waiters) {
                    if waiter.is_finished() {
                        match waiter.await.expect("waiter task") {
                            Ok(reservation) => self.live.push((conn, reservation)),
                            Err(()) => assert!(
                                started.elapsed() >= WAIT,
                                "a waiter is refused only after the wait"
                            ),
                        }
                    } else {
                        assert!(
                            started.elapsed() <= WAIT,
                            "every waiter is admitted or refused within the wait"
                        );
                        still.push((conn, started, bytes, waiter));
                    }
                }
                self.waiters = still;
            }

            fn check(&self) {
                // The semaphore hands a waiter the permits that free up, before it has all it
                // asked for: those are in use, though no reservation holds them yet.
                let live: usize = self.live.iter().map(|(_, r)| r.bytes()).sum();
                let waiting: usize = self.waiters.iter().map(|(_, _, bytes, _)| bytes).sum();
                let used = self.budget.used();
                assert!(
                    used >= live && used - live <= waiting,
                    "used = sum of live reservations (+ part of what waiters asked for): \
                     {used} vs {live} live, {waiting} waiting"
                );
                for part in [Part::Receive, Part::Held] {
                    let in_part: usize = self.live.iter().map(|(_, r)| r.part_bytes(part)).sum();
                    assert!(
                        in_part <= self.budget.part_limit(part),
                        "never above a part's limit"
                    );
                    for (index, conn) in self.conns.iter().enumerate() {
                        let Some(conn) = conn else { continue };
                        let held: usize = self
                            .live
                            .iter()
                            .filter(|(c, _)| *c == index)
                            .map(|(_, r)| r.part_bytes(part))
                            .sum();
                        assert_eq!(
                            conn.used(part),
                            held,
                            "a connection's share is its reservations"
                        );
                    }
                }
            }

            async fn apply(&mut self, op: Op) {
                let pick = |len: usize, i: usize| (len > 0).then(|| i % len);
                match op {
                    Op::Take { held, conn, bytes } => {
                        let part = Self::part(held);
                        let share = self.conns[conn].clone();
                        if self
                            .budget
                            .check_share(share.as_ref(), part, bytes, bytes)
                            .is_ok()
                            && let Some(reservation) =
                                self.budget.try_take(part, bytes, share.as_ref())
                        {
                            self.live.push((conn, reservation));
                        }
                    }
                    Op::Wait { held, conn, bytes } => {
                        let part = Self::part(held);
                        let share = self.conns[conn].clone();
                        if self
                            .budget
                            .check_share(share.as_ref(), part, bytes, bytes)
                            .is_err()
                        {
                            return;
                        }
                        let budget = self.budget.clone();
                        let waiter = tokio::spawn(async move {
                            let mut waiting = None;
                            std::future::poll_fn(|cx| {
                                BudgetedBody::poll_wait(
                                    &budget,
                                    share.as_ref(),
                                    &mut waiting,
                                    part,
                                    bytes,
                                    cx,
                                )
                            })
                            .await
                            .map_err(|_| ())
                        });
                        self.waiters.push((conn, Instant::now(), bytes, waiter));
                    }
                    Op::Release(i) => {
                        if let Some(i) = pick(self.live.len(), i) {
                            self.live.swap_remove(i);
                        }
                    }
                    Op::ReleaseReceive(i) => {
                        if let Some(i) = pick(self.live.len(), i) {
                            self.live[i].1.release(Part::Receive);
                        }
                    }
                    Op::Merge(a, b) => {
                        if let (Some(a), Some(b)) =
                            (pick(self.live.len(), a), pick(self.live.len(), b))
                            && a != b
                            && self.live[a].0 == self.live[b].0
                        {
                            let (_, other) = self.live.swap_remove(a.max(b));
                            self.live[a.min(b)].1.merge(other);
                        }
                    }
                    Op::Keep(i, buffer) => {
                        if let Some(i) = pick(self.live.len(), i) {
                            let (conn, mut reservation) = self.live.swap_remove(i);
                            reservation.buffer = buffer;
                            let kept = reservation.keep_receive_buffer();
                            drop(reservation);
                            self.live.push((conn, kept));
                        }
                    }
                    Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                }
                self.collect().await;
                self.check();
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            #[test]
            fn the_budget_accounts_for_every_reservation(ops in prop::collection::vec(op(), 1..60)) {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .start_paused(true)
                    .build()
                    .expect("a runtime");
                runtime.block_on(async {
                    let budget = InflightBudget::new(LIMIT, WAIT);
                    let conns = vec![
                        budget.connection(Some(SocketAddr::from(([127, 0, 0, 1], 1)))),
                        budget.connection(Some(SocketAddr::from(([127, 0, 0, 1], 2)))),
                        None,
                    ];
                    let mut model = Model { budget, conns, live: Vec::new(), waiters: Vec::new() };
                    for op in ops {
                        model.apply(op).await;
                    }
                    // Every stream ends: whatever waits is admitted or refused, and then all
                    // room is back.
                    model.live.clear();
                    tokio::time::advance(WAIT * 2).await;
                    model.collect().await;
                    assert!(model.waiters.is_empty(), "every waiter was admitted or refused");
                    model.check();
                    model.live.clear();
                    assert_eq!(model.budget.used(), 0, "nothing is left after every stream ended");
                    for conn in model.conns.iter().flatten() {
                        assert_eq!((conn.used(Part::Receive), conn.used(Part::Held)), (0, 0));
                    }
                });
            }
        }
    }
}
