//! The budget's accounting: two parts (receive and held), each a semaphore of bytes; the share of
//! each part one connection holds; reservations that give their room back when dropped; and the
//! bounded wait for room. Model-based tests below check that the bytes in use are always the sum
//! of the live reservations.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::error::ServerError;
use crate::limits::Limits;

/// The part of the budget that receives messages is `1 / RECEIVE_PART` of it.
const RECEIVE_PART: usize = 4;

/// After a refusal, `/-/ready` stays not-ready for this long at least (while room is in use),
/// so that probes see the pressure and readiness does not flap.
const PRESSURE_WINDOW: Duration = Duration::from_secs(5);

/// The largest reservation a semaphore grants at once.
const MAX_PERMITS: usize = u32::MAX as usize;

/// The two parts of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
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

    /// Whether there is a budget at all.
    pub(crate) fn is_on(&self) -> bool {
        self.inner.limit > 0
    }

    /// Bytes currently reserved.
    pub fn used(&self) -> usize {
        let inner = &self.inner;
        (inner.receive_limit - inner.receive.available_permits())
            + (inner.held_limit - inner.held.available_permits())
    }

    /// Whether the gateway is over its budget: a part of it is used up, messages are waiting
    /// for room, or one was refused within the last `PRESSURE_WINDOW` (or wait, if longer) and
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

    /// Refuses a message for want of room: remembers when (for readiness) and returns the
    /// refusal, which its caller reports.
    fn refuse(&self) -> ServerError {
        self.inner
            .last_refusal_ms
            .store(self.now_ms(), Ordering::Relaxed);
        ServerError::OverBudget {
            retry_after: self.retry_after(),
            limit: self.limit(),
            used: self.used(),
        }
    }

    fn semaphore(&self, part: Part) -> &Arc<Semaphore> {
        match part {
            Part::Receive => &self.inner.receive,
            Part::Held => &self.inner.held,
        }
    }

    pub(crate) fn part_limit(&self, part: Part) -> usize {
        match part {
            Part::Receive => self.inner.receive_limit,
            Part::Held => self.inner.held_limit,
        }
    }

    /// The share of `part` one connection may hold.
    pub(crate) fn connection_max(&self, part: Part) -> usize {
        let percent = u128::from(self.inner.limits.connection_share_percent.clamp(1, 100));
        usize::try_from(self.part_limit(part) as u128 * percent / 100).unwrap_or(usize::MAX)
    }

    /// Checks that `connection` may take `bytes` more of `part`: a message that can never fit
    /// is refused for good, one that does not fit now for a while.
    pub(crate) fn check_share(
        &self,
        connection: Option<&Arc<ConnectionShare>>,
        part: Part,
        bytes: usize,
        cost: usize,
    ) -> Result<(), ServerError> {
        let max = self.connection_max(part);
        if bytes > max {
            return Err(ServerError::MessageTooCostly { cost, max });
        }
        if let Some(connection) = connection
            && connection.used(part) + bytes > max
        {
            return Err(ServerError::ConnectionShare {
                retry_after: self.retry_after(),
            });
        }
        Ok(())
    }

    /// Takes `bytes` of `part` now if there is room.
    pub(crate) fn try_take(
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

    /// Polls a wait for `need` bytes of `part`, started on its first poll (so that it is
    /// measured from when the stream asks) and refused once the budget's wait has passed.
    pub(crate) fn poll_wait(
        &self,
        connection: Option<&Arc<ConnectionShare>>,
        waiting: &mut Option<WaitingFor>,
        part: Part,
        need: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Reservation, ServerError>> {
        let waiting = waiting.get_or_insert_with(|| WaitingFor {
            acquire: Box::pin(
                self.semaphore(part)
                    .clone()
                    .acquire_many_owned(u32::try_from(need.min(MAX_PERMITS)).unwrap_or(u32::MAX)),
            ),
            deadline: Box::pin(tokio::time::sleep(self.inner.wait)),
            _counted: Waiting::start(self),
        });
        match waiting.acquire.as_mut().poll(cx) {
            Poll::Ready(Ok(permit)) => {
                Poll::Ready(Ok(Reservation::from_permit(part, permit, connection)))
            }
            Poll::Ready(Err(_)) => Poll::Ready(Err(self.refuse())),
            Poll::Pending => {
                ready!(waiting.deadline.as_mut().poll(cx));
                Poll::Ready(Err(self.refuse()))
            }
        }
    }

    /// The share of the connection a request came on (none when its address is unknown).
    pub(crate) fn connection(&self, peer: Option<SocketAddr>) -> Option<Arc<ConnectionShare>> {
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
}

/// What one connection holds of each part of the budget.
#[derive(Debug, Default)]
pub(crate) struct ConnectionShare {
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

    pub(crate) fn used(&self, part: Part) -> usize {
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

type Acquire = Pin<
    Box<
        dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>>
            + Send
            + 'static,
    >,
>;

/// A wait for room in progress (see [`InflightBudget::poll_wait`]).
pub(crate) struct WaitingFor {
    acquire: Acquire,
    deadline: Pin<Box<Sleep>>,
    _counted: Waiting,
}

/// Room reserved in the budget; returned when dropped.
#[derive(Debug, Default)]
pub struct Reservation {
    receive: Option<OwnedSemaphorePermit>,
    held: Option<OwnedSemaphorePermit>,
    connection: Option<Arc<ConnectionShare>>,
    /// The receive buffer tonic keeps for the stream after this message.
    pub(crate) buffer: usize,
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

    pub(crate) fn part_bytes(&self, part: Part) -> usize {
        let permit = match part {
            Part::Receive => &self.receive,
            Part::Held => &self.held,
        };
        permit.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Gives back the room of `part`.
    pub(crate) fn release(&mut self, part: Part) {
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
            Err(ServerError::MessageTooCostly { max: 375, .. })
        ));
        let held = budget.try_take(Part::Held, 300, connection).expect("room");
        assert!(matches!(
            budget.check_share(connection, Part::Held, 100, 100),
            Err(ServerError::ConnectionShare { .. })
        ));
        assert!(budget.check_share(None, Part::Held, 100, 100).is_ok());
        drop(held);
        assert!(budget.check_share(connection, Part::Held, 100, 100).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_for_room_is_refused_after_the_wait_and_marks_the_pressure() {
        let budget = InflightBudget::new(1000, Duration::from_millis(100));
        let all = budget.try_take(Part::Held, 750, None).expect("room");
        let mut waiting = None;
        let refused =
            std::future::poll_fn(|cx| budget.poll_wait(None, &mut waiting, Part::Held, 10, cx))
                .await;
        assert!(
            matches!(
                refused,
                Err(ServerError::OverBudget {
                    limit: 1000,
                    used: 750,
                    ..
                })
            ),
            "{refused:?}"
        );
        drop(waiting);
        drop(all);
        let _receive = budget.try_take(Part::Receive, 1, None).expect("room");
        assert!(
            budget.is_exhausted(),
            "not ready for a while after a refusal"
        );
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
                                budget.poll_wait(share.as_ref(), &mut waiting, part, bytes, cx)
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
