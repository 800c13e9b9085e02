//! Limits on the connections themselves, before any HTTP: how many may be open at once, in all
//! and from one address, and how soon a new one must start talking (and [`ConnectionLimits`]
//! carries how long one may live, which `crate::serve` hands to tonic). Without them a
//! connection that never sends a byte is kept for ever (HTTP/1's header timeout and HTTP/2's
//! keepalive start only once it has spoken), and enough of them use up the process's file
//! descriptors, so that no one else can connect (docs/security.md). A connection is also closed,
//! streams and all, [`ConnectionLimits::max_age_grace`] after its maximum age: the `GOAWAY` at
//! the age ends only clients that go, and a stream without a lifetime (a health `Watch`, a
//! reflection stream never half-closed) would otherwise keep its connection for ever.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::{ClosedConnection, Metrics, OpenCount};

/// What a new connection must send within the opening timeout: as many bytes as the HTTP/2
/// client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`), or a whole HTTP/1 request head (which
/// may be shorter: `GET / HTTP/1.0\r\n\r\n`).
pub const OPENING_BYTES: usize = 24;

/// The end of an HTTP/1 request head.
const HEAD_END: &[u8] = b"\r\n\r\n";

/// The end of an HTTP/1 request head whose lines end in a bare line feed, which HTTP/1 parsers
/// accept too.
const BARE_HEAD_END: &[u8] = b"\n\n";

/// How long the listener pauses after a failed `accept` (out of file descriptors, say) before it
/// tries again, rather than spinning on the same error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The limits on connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// The most connections open at once (0: no limit). At the limit the listener stops
    /// accepting, so new connections wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// The most connections open at once from one IP address (0: no limit); one more is closed
    /// as soon as it is accepted, so that one sender cannot take every slot.
    pub max_connections_per_address: usize,
    /// How long a new connection may take to send its first [`OPENING_BYTES`] bytes, or a whole
    /// HTTP/1 request head, before it is closed (zero: no limit).
    pub opening_timeout: Duration,
    /// How long a connection may live before the gateway asks its client to go elsewhere
    /// (HTTP/2 `GOAWAY`; its streams may finish, within their lifetime) (zero: no limit). An
    /// HTTP/2 connection that opens no stream and answers the keepalive pings is otherwise
    /// kept for ever; and a client's long-lived connection would otherwise stay on one instance
    /// as the service scales.
    pub max_age: Duration,
    /// How long after `max_age` the connection is closed whatever it is doing (with no
    /// `max_age`, never): long enough for the streams in progress at the `GOAWAY` to end within
    /// their lifetime and answer their last payload, so that only streams that never end (a
    /// health `Watch`, a reflection stream never half-closed) are cut.
    pub max_age_grace: Duration,
    /// How many bytes a sender may send on an HTTP/2 connection, and on each of its streams,
    /// before the gateway has read them (the flow-control windows). What waits unread is
    /// outside the memory budget, so this bounds what each connection may hold there
    /// ([`crate::memory_bound`]); a larger window lets a distant sender send faster.
    pub window_bytes: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            max_connections_per_address: 64,
            opening_timeout: Duration::from_secs(10),
            max_age: Duration::from_secs(10 * 60),
            max_age_grace: ConnectionLimits::grace_for(crate::Limits::default().stream_lifetime),
            window_bytes: 1024 * 1024,
        }
    }
}

impl ConnectionLimits {
    /// The grace after the maximum age for streams that live at most `stream_lifetime`: their
    /// lifetime, and a minute to answer the payload in progress when it ends (a sink may take
    /// 30 s to give up on a publish).
    pub fn grace_for(stream_lifetime: Duration) -> Duration {
        stream_lifetime + Duration::from_secs(60)
    }
}

/// The connections `incoming` accepts, within `limits`; what happens to them is counted in
/// `metrics`.
pub fn limited(
    incoming: impl Stream<Item = io::Result<TcpStream>> + Send + Unpin + 'static,
    limits: ConnectionLimits,
    metrics: Metrics,
) -> impl Stream<Item = io::Result<Connection>> + Send + 'static {
    let slots =
        (limits.max_connections > 0).then(|| Arc::new(Semaphore::new(limits.max_connections)));
    let addresses = Arc::new(Addresses::new(limits.max_connections_per_address));
    futures::stream::unfold(incoming, move |mut incoming| {
        let (slots, addresses, metrics) = (slots.clone(), addresses.clone(), metrics.clone());
        async move {
            let slot = match slots {
                Some(slots) => Some(take_slot(slots, limits.max_connections).await?),
                None => None,
            };
            loop {
                let stream = match incoming.next().await? {
                    Ok(stream) => stream,
                    Err(error) => {
                        // A fixed message, so the log's sampling bounds a burst of these.
                        tracing::warn!(%error, "cannot accept a connection; pausing before the next");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        return Some((Err(error), incoming));
                    }
                };
                let peer = stream.peer_addr().ok().map(|peer| peer.ip());
                let Some(address) = addresses.admit(peer) else {
                    // Closed here and counted, not logged: a flood of them would flood the log.
                    metrics.connection_closed(ClosedConnection::AddressLimit);
                    continue;
                };
                let connection = Connection::new(stream, slot, address, &limits, metrics);
                return Some((Ok(connection), incoming));
            }
        }
    })
}

/// Connections open per IP address.
#[derive(Debug)]
struct Addresses {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl Addresses {
    fn new(max: usize) -> Addresses {
        Addresses {
            max,
            open: Mutex::default(),
        }
    }

    /// Counts a connection from `peer` against its address, unless the address is at its limit.
    /// A peer whose address could not be read (already gone: HTTP will notice) is not counted.
    fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Option<AddressSlot> {
        let Some(peer) = peer.filter(|_| self.max > 0) else {
            return Some(AddressSlot(None));
        };
        let ip = sender(peer);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot(Some((self.clone(), ip))))
    }

    fn release(&self, ip: IpAddr) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }
}

/// The address a connection is counted against: its IPv4 address (an IPv4-mapped IPv6 address
/// counts as the IPv4 one), or the /64 network of its IPv6 address, since one IPv6 host usually
/// has a whole /64 to choose its addresses from.
fn sender(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// A connection's place in its address's count, given back when the connection closes.
#[derive(Debug)]
struct AddressSlot(Option<(Arc<Addresses>, IpAddr)>);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some((addresses, ip)) = self.0.take() {
            addresses.release(ip);
        }
    }
}

/// A free connection slot, waiting for one (and saying so) when all are taken.
async fn take_slot(slots: Arc<Semaphore>, max: usize) -> Option<OwnedSemaphorePermit> {
    if let Ok(slot) = slots.clone().try_acquire_owned() {
        return Some(slot);
    }
    tracing::warn!(
        max_connections = max,
        "connection limit reached: new connections wait until one closes \
         (TELEMETRY_GATEWAY_MAX_CONNECTIONS)"
    );
    // The semaphore is never closed; `None` would end the accept loop, which tonic takes as
    // the listener's end.
    slots.acquire_owned().await.ok()
}

/// An accepted connection: the TCP stream, its slot, the opening deadline until the connection
/// has sent its first bytes, and the end of its life.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    opening: Option<Opening>,
    /// When the connection is closed whatever it is doing: its maximum age and the grace after.
    end_of_life: Option<Pin<Box<Sleep>>>,
    /// The end of life has come: every read and write fails from then on.
    ended: bool,
    metrics: Metrics,
    _slot: Option<OwnedSemaphorePermit>,
    _address: AddressSlot,
    _open: OpenCount,
}

#[derive(Debug)]
struct Opening {
    deadline: Pin<Box<Sleep>>,
    /// The first bytes received, up to [`OPENING_BYTES`].
    first: [u8; OPENING_BYTES],
    received: usize,
}

impl Opening {
    /// Notes `bytes` received; whether the connection has now opened.
    fn received(&mut self, bytes: &[u8]) -> bool {
        let take = bytes.len().min(OPENING_BYTES - self.received);
        self.first[self.received..self.received + take].copy_from_slice(&bytes[..take]);
        self.received += take;
        let first = &self.first[..self.received];
        self.received == OPENING_BYTES
            || [HEAD_END, BARE_HEAD_END]
                .iter()
                .any(|end| first.windows(end.len()).any(|window| window == *end))
    }
}

impl Connection {
    fn new(
        stream: TcpStream,
        slot: Option<OwnedSemaphorePermit>,
        address: AddressSlot,
        limits: &ConnectionLimits,
        metrics: Metrics,
    ) -> Connection {
        Connection {
            stream,
            opening: (!limits.opening_timeout.is_zero()).then(|| Opening {
                deadline: Box::pin(tokio::time::sleep(limits.opening_timeout)),
                first: [0; OPENING_BYTES],
                received: 0,
            }),
            // No end when there is no maximum age, nor when the sum overflows (never, then).
            end_of_life: (!limits.max_age.is_zero())
                .then(|| limits.max_age.checked_add(limits.max_age_grace))
                .flatten()
                .map(|life| Box::pin(tokio::time::sleep(life))),
            ended: false,
            _open: metrics.connection_opened(),
            metrics,
            _slot: slot,
            _address: address,
        }
    }

    /// The error every read and write returns once the connection's life has ended.
    fn end_of_life_error() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "the connection outlived its maximum age and the grace after it \
             (TELEMETRY_GATEWAY_MAX_CONNECTION_AGE, TELEMETRY_GATEWAY_MAX_CONNECTION_AGE_GRACE)",
        )
    }

    /// Whether the connection's life has ended (counted once, when it ends). Every read and
    /// write asks, so that the end also wakes a connection whose client is silent.
    fn poll_end_of_life(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(end_of_life) = &mut self.end_of_life else {
            return self.ended;
        };
        if end_of_life.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.end_of_life = None;
        self.ended = true;
        // Not logged: every connection that outlives its age would log; the metric counts them.
        self.metrics.connection_closed(ClosedConnection::MaxAge);
        true
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.poll_end_of_life(cx) {
            return Poll::Ready(Err(Connection::end_of_life_error()));
        }
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        let Some(opening) = &mut this.opening else {
            return polled;
        };
        match &polled {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                // Opened, or the end of the stream (which HTTP then handles).
                if (read.is_empty() && room) || opening.received(read) {
                    this.opening = None;
                }
                polled
            }
            Poll::Ready(Err(_)) => polled,
            Poll::Pending => {
                ready!(opening.deadline.as_mut().poll(cx));
                this.opening = None;
                this.metrics
                    .connection_closed(ClosedConnection::OpeningTimeout);
                // Not logged: a flood of silent connections would flood the log; the metric
                // counts them.
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection sent fewer than 24 bytes and no whole request within the \
                     opening timeout (TELEMETRY_GATEWAY_CONNECTION_OPENING_TIMEOUT)",
                )))
            }
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.poll_end_of_life(cx) {
            return Poll::Ready(Err(Connection::end_of_life_error()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.poll_end_of_life(cx) {
            return Poll::Ready(Err(Connection::end_of_life_error()));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;

    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(&opentelemetry::global::meter("test"))
    }

    /// No limit at all; each test sets the ones it is about.
    const NO_LIMITS: ConnectionLimits = ConnectionLimits {
        max_connections: 0,
        max_connections_per_address: 0,
        opening_timeout: Duration::ZERO,
        max_age: Duration::ZERO,
        max_age_grace: Duration::ZERO,
        window_bytes: 0,
    };

    /// A listener on a free port, its connections accepted within `limits`.
    async fn accepting(
        limits: ConnectionLimits,
    ) -> (
        Pin<Box<impl Stream<Item = io::Result<Connection>>>>,
        std::net::SocketAddr,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let incoming = TcpListenerStream::new(listener);
        (Box::pin(limited(incoming, limits, metrics())), addr)
    }

    #[tokio::test]
    async fn a_connection_that_sends_too_little_is_closed_after_the_opening_timeout() {
        let (mut accepted, addr) = accepting(ConnectionLimits {
            opening_timeout: Duration::from_millis(200),
            ..NO_LIMITS
        })
        .await;

        // Silent, and then a few bytes short of the preface: both are cut.
        for sent in [&b""[..], b"PRI * HTTP/2.0"] {
            let mut client = TcpStream::connect(addr).await.expect("connect");
            client.write_all(sent).await.expect("send");
            // Before the accept, where the deadline starts.
            let started = tokio::time::Instant::now();
            let mut connection = accepted
                .next()
                .await
                .expect("a connection")
                .expect("accepted");
            let mut received = [0; 64];
            let mut total = 0;
            let error = loop {
                let read = tokio::time::timeout(
                    Duration::from_secs(5),
                    connection.read(&mut received[total..]),
                );
                match read.await.expect("cut within 5 s") {
                    Ok(n) => total += n,
                    Err(error) => break error,
                }
            };
            assert_eq!(error.kind(), io::ErrorKind::TimedOut);
            assert_eq!(&received[..total], sent);
            assert!(
                started.elapsed() >= Duration::from_millis(150),
                "{:?}",
                started.elapsed()
            );
        }

        // One that sends its opening bytes in time is read on without a deadline.
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(&[b'x'; OPENING_BYTES])
            .await
            .expect("send");
        let mut connection = accepted
            .next()
            .await
            .expect("a connection")
            .expect("accepted");
        let mut opening = [0; OPENING_BYTES];
        connection.read_exact(&mut opening).await.expect("read");
        // The read waits past the deadline before the bytes come.
        let mut later = [0; 5];
        let (read, _) = tokio::join!(connection.read_exact(&mut later), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            client.write_all(b"later").await.expect("send");
        });
        read.expect("no timeout any more");
        assert_eq!(&later, b"later");
    }

    #[tokio::test]
    async fn a_connection_is_closed_at_its_maximum_age_and_grace_whether_silent_or_busy() {
        let (mut accepted, addr) = accepting(ConnectionLimits {
            max_age: Duration::from_millis(200),
            max_age_grace: Duration::from_millis(200),
            ..NO_LIMITS
        })
        .await;

        // A silent client: the read waiting on it ends in an error, and so does every write.
        let _silent = TcpStream::connect(addr).await.expect("connect");
        let started = tokio::time::Instant::now();
        let mut connection = accepted.next().await.expect("one").expect("accepted");
        let mut buf = [0u8; 64];
        let error = tokio::time::timeout(Duration::from_secs(5), connection.read(&mut buf))
            .await
            .expect("ended within 5 s")
            .expect_err("the end of life is an error");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(
            started.elapsed() >= Duration::from_millis(350),
            "{:?}",
            started.elapsed()
        );
        assert!(connection.write_all(b"late").await.is_err());

        // A client that never stops sending, so that a read never waits: cut all the same.
        let mut busy = TcpStream::connect(addr).await.expect("connect");
        let started = tokio::time::Instant::now();
        let mut connection = accepted.next().await.expect("two").expect("accepted");
        let sending =
            tokio::spawn(async move { while busy.write_all(&[b'x'; 4096]).await.is_ok() {} });
        let mut read = 0;
        let error = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match connection.read(&mut buf).await {
                    Ok(0) => panic!("the client closed"),
                    Ok(n) => read += n,
                    Err(error) => break error,
                }
            }
        })
        .await
        .expect("ended within 5 s");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(read > 0, "it read until the end");
        assert!(started.elapsed() >= Duration::from_millis(350));
        drop(connection);
        sending
            .await
            .expect("the sender stops once the connection is gone");
    }

    #[tokio::test]
    async fn at_the_limit_a_new_connection_waits_until_one_closes() {
        let (mut accepted, addr) = accepting(ConnectionLimits {
            max_connections: 2,
            opening_timeout: Duration::from_secs(60),
            ..NO_LIMITS
        })
        .await;
        let _clients: Vec<TcpStream> =
            futures::future::join_all((0..3).map(|_| TcpStream::connect(addr)))
                .await
                .into_iter()
                .map(|client| client.expect("connect (the kernel's backlog takes the third)"))
                .collect();
        let first = accepted.next().await.expect("first").expect("accepted");
        let _second = accepted.next().await.expect("second").expect("accepted");
        let third = tokio::time::timeout(Duration::from_millis(200), accepted.next()).await;
        assert!(third.is_err(), "the third waits while two are open");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), accepted.next())
            .await
            .expect("accepted once the first closed");
        assert!(third.expect("third").is_ok());
    }

    #[tokio::test]
    async fn one_address_may_hold_only_its_share_and_gets_it_back_when_one_closes() {
        let (mut accepted, addr) = accepting(ConnectionLimits {
            max_connections_per_address: 2,
            opening_timeout: Duration::from_secs(60),
            ..NO_LIMITS
        })
        .await;
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let first = accepted.next().await.expect("first").expect("accepted");
        let _second = accepted.next().await.expect("second").expect("accepted");
        // The third is closed as soon as it is accepted, while the stream waits for the next.
        let waiting = tokio::time::timeout(Duration::from_millis(300), accepted.next()).await;
        assert!(waiting.is_err(), "nothing more to accept");
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), clients[2].read(&mut byte))
            .await
            .expect("closed by the listener");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

        drop(first);
        let _fourth_client = TcpStream::connect(addr).await.expect("connect");
        let fourth = tokio::time::timeout(Duration::from_secs(5), accepted.next())
            .await
            .expect("the address has room again");
        assert!(fourth.expect("fourth").is_ok());
    }

    #[test]
    fn ipv4_mapped_addresses_share_the_ipv4_count_and_ipv6_counts_by_network() {
        let addresses = Arc::new(Addresses::new(1));
        let v4: IpAddr = "192.0.2.7".parse().expect("ip");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        let held = addresses.admit(Some(v4)).expect("room");
        assert!(addresses.admit(Some(mapped)).is_none(), "the same address");
        drop(held);
        let _held = addresses.admit(Some(mapped)).expect("room again");

        let one: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let same_network: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other_network: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        let _one = addresses.admit(Some(one)).expect("room");
        assert!(
            addresses.admit(Some(same_network)).is_none(),
            "the same /64"
        );
        assert!(addresses.admit(Some(other_network)).is_some());
        assert!(
            addresses.admit(None).is_some(),
            "an unknown peer is not counted"
        );
    }

    #[tokio::test]
    async fn the_opening_bytes_add_up_across_reads_and_a_short_http1_request_is_enough() {
        let (mut accepted, addr) = accepting(ConnectionLimits {
            opening_timeout: Duration::from_millis(500),
            ..NO_LIMITS
        })
        .await;
        for pieces in [
            vec![&b"PRI * HTTP/2"[..], b".0\r\n\r\nSM\r\n\r\n"],
            vec![&b"GET / HTTP/1.0\r\n\r\n"[..]],
            vec![&b"GET / HTTP/1.0\n\n"[..]],
        ] {
            let mut client = TcpStream::connect(addr).await.expect("connect");
            let mut connection = accepted
                .next()
                .await
                .expect("a connection")
                .expect("accepted");
            let mut received = Vec::new();
            for piece in &pieces {
                client.write_all(piece).await.expect("send");
                let mut chunk = [0u8; 64];
                let n = connection.read(&mut chunk).await.expect("read");
                received.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(received, pieces.concat());
            // The read waits past the deadline before the bytes come.
            let mut more = [0u8; 4];
            let (read, _) = tokio::join!(
                tokio::time::timeout(Duration::from_secs(5), connection.read_exact(&mut more)),
                async {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    client.write_all(b"more").await.expect("send");
                }
            );
            read.expect("in time")
                .expect("opened: no deadline any more");
            assert_eq!(&more, b"more");
        }
    }
}
