//! The budgeted request body: it parses the gRPC framing of an events RPC's request body and
//! admits each message against the budget (receive room at its header, held room by its decoded
//! cost before its last byte) and the sender limits, as the `budget` module describes. A refusal
//! ends the body with the refusal's status, which tonic hands the handler as the stream's error.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::body::Body;

use super::accounting::{ConnectionShare, InflightBudget, Part, Reservation, WaitingFor};
use super::cost::{UNKNOWN_METADATA_FACTOR, message_cost};
use super::framing::{
    Encoding, HEADER_LEN, MessageHeader, decompress_to_frame, malformed, no_encoding,
    skim_compressed, skim_error,
};
use super::ledger::StreamLedger;
use crate::error::ServerError;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::skim::{Root, Shape, Skim};

/// The most a unary call's single message may declare (its event is dropped from 10 MB anyway).
pub const UNARY_MESSAGE_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Wraps the request body of an events RPC: returns the budgeted body and the stream's ledger of
/// admitted messages, for the handler. A `unary` call's body carries one `RecordEventRequest`;
/// refusals are reported to `metrics`.
pub fn budgeted(
    budget: &InflightBudget,
    metrics: &Metrics,
    body: Body,
    unary: bool,
    encoding: Option<&str>,
    peer: Option<SocketAddr>,
) -> (Body, Arc<StreamLedger>) {
    let ledger = Arc::new(StreamLedger::default());
    let wrapped = BudgetedBody {
        inner: body,
        budget: budget.clone(),
        metrics: metrics.clone(),
        ledger: ledger.clone(),
        connection: budget.connection(peer),
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

/// The bytes one poll passes on to tonic. Usually a single piece of a received frame, passed on
/// as it is; pieces are copied into one buffer only when a poll passes on more than one (a
/// message's header and the start of its body, say).
#[derive(Default)]
struct Out {
    first: Bytes,
    joined: Option<BytesMut>,
}

impl Out {
    fn push(&mut self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        match &mut self.joined {
            Some(joined) => joined.extend_from_slice(&piece),
            None if self.first.is_empty() => self.first = piece,
            None => {
                let mut joined = BytesMut::with_capacity(self.first.len() + piece.len());
                joined.extend_from_slice(&self.first);
                joined.extend_from_slice(&piece);
                self.joined = Some(joined);
            }
        }
    }

    fn finish(self) -> Bytes {
        match self.joined {
            Some(joined) => joined.freeze(),
            None => self.first,
        }
    }
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
        task: JoinHandle<Result<(usize, Shape), ServerError>>,
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
        task: JoinHandle<Result<Bytes, ServerError>>,
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

/// A request body that admits each gRPC message against the budget before passing it on.
struct BudgetedBody {
    inner: Body,
    budget: InflightBudget,
    /// Where refusals are counted.
    metrics: Metrics,
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
        self.budget.limits()
    }

    fn root(&self) -> Root {
        if self.unary {
            Root::RecordEventRequest
        } else {
            Root::RecordEventsRequest
        }
    }

    /// Ends the stream with `refusal`: reported once, here, and sent as its status.
    fn stop(&self, refusal: ServerError) -> Status {
        refusal.report(&self.metrics);
        refusal.into()
    }

    /// A header of a message of `len` bytes arrived: checks the limits and takes receive room.
    /// Returns the bytes to pass on now.
    fn start_message(&mut self, header: [u8; HEADER_LEN]) -> Result<Bytes, ServerError> {
        let MessageHeader { compressed, len } = MessageHeader::parse(header);
        self.messages += 1;
        if self.unary && self.messages > 1 {
            return Err(ServerError::UnaryExtraMessage);
        }
        if self.messages == 1 {
            self.first_message_len = len;
            let limits = self.limits();
            if self.unary && len > UNARY_MESSAGE_MAX_BYTES {
                return Err(ServerError::UnaryTooLarge {
                    len,
                    max: UNARY_MESSAGE_MAX_BYTES,
                });
            }
            if !self.unary && len > limits.max_metadata_bytes {
                return Err(ServerError::MetadataTooLarge {
                    len,
                    max: limits.max_metadata_bytes,
                });
            }
        }
        if compressed && !self.encoding.decompresses() {
            return Err(no_encoding());
        }
        let need = if compressed {
            len + self.encoding.state_bytes()
        } else {
            len
        };
        let budget = self.budget.clone();
        if budget.is_on() {
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
        let MessageHeader { compressed, len } = MessageHeader::parse(header);
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
    fn consume(&mut self, mut data: Bytes) -> Result<Bytes, ServerError> {
        let mut out = Out::default();
        while !data.is_empty() {
            match &mut self.phase {
                Phase::Header { bytes, have } => {
                    let take = (HEADER_LEN - *have).min(data.len());
                    bytes[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data.advance(take);
                    if *have == HEADER_LEN {
                        let header = *bytes;
                        out.push(self.start_message(header)?);
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
                        skim.feed(&chunk).map_err(skim_error)?;
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
                        out.push(chunk);
                        self.complete(&mut out, last)?;
                        break;
                    } else {
                        out.push(chunk);
                    }
                }
                _ => break,
            }
        }
        if !data.is_empty() {
            self.pending = Some(data);
        }
        Ok(out.finish())
    }

    /// The message in `Body` is complete; `last` holds its withheld last bytes (uncompressed).
    fn complete(&mut self, out: &mut Out, last: Bytes) -> Result<(), ServerError> {
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
            let limits = self.limits();
            // A stream's metadata is held to its own limit once decompressed as well: every
            // event of the stream repeats it downstream.
            // (Unless the decoded-message limit is the smaller one: then it is the one to name.)
            let metadata = !self.unary
                && self.messages == 1
                && limits.max_metadata_bytes <= limits.max_decoded_message_bytes;
            let max = if metadata {
                limits.max_metadata_bytes
            } else {
                limits.max_decoded_message_bytes
            };
            let (encoding, root, max_events) =
                (self.encoding, self.root(), limits.max_events_per_payload);
            let task_input = input.clone();
            let task = tokio::task::spawn_blocking(move || {
                skim_compressed(encoding, &task_input, max, root, max_events).map_err(|err| {
                    match err {
                        ServerError::DecompressedTooLarge { max } if metadata => {
                            ServerError::MetadataDecompressedTooLarge { max }
                        }
                        err => err,
                    }
                })
            });
            self.phase = Phase::Skimming {
                task,
                input,
                reservation,
            };
            return Ok(());
        }
        let shape = match skim {
            Some(skim) => skim.finish(len).map_err(skim_error)?,
            None => Shape::default(),
        };
        let cost = message_cost(len, shape, self.metadata_json_len());
        self.admit_held(reservation, cost, len, Release::Bytes(last), out)
    }

    /// What the stream's rendered metadata costs per event.
    fn metadata_json_len(&self) -> usize {
        match self.ledger.metadata_json_len() {
            Some(len) => len,
            None if self.unary => 0,
            None => self
                .first_message_len
                .saturating_mul(UNKNOWN_METADATA_FACTOR),
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
        out: &mut Out,
    ) -> Result<(), ServerError> {
        // The buffer tonic kept from earlier messages is reused for this one.
        let kept = self.ledger.take_kept();
        reservation.buffer = buffer.max(kept.buffer);
        let need = cost.saturating_sub(kept.part_bytes(Part::Held));
        reservation.merge(kept);
        let budget = self.budget.clone();
        if budget.is_on() {
            let max = budget
                .connection_max(Part::Held)
                .min(budget.part_limit(Part::Held));
            if cost > max {
                return Err(ServerError::MessageTooCostly { cost, max });
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
    fn held(&mut self, mut reservation: Reservation, release: Release, out: &mut Out) {
        reservation.release(Part::Receive);
        match release {
            Release::Bytes(last) => {
                out.push(last);
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

    /// Drives the current phase's wait or task; `Ready(Ok(bytes))` once it is over.
    fn poll_phase(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, ServerError>> {
        let budget = self.budget.clone();
        match &mut self.phase {
            Phase::AwaitReceive {
                header,
                need,
                waiting,
            } => {
                let header = *header;
                let reservation = ready!(budget.poll_wait(
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
                let room = ready!(budget.poll_wait(
                    self.connection.as_ref(),
                    waiting,
                    Part::Held,
                    *need,
                    cx
                ))?;
                let mut reservation = std::mem::take(reservation);
                let release = release.take();
                reservation.merge(room);
                let mut out = Out::default();
                if let Some(release) = release {
                    self.held(reservation, release, &mut out);
                }
                Poll::Ready(Ok(out.finish()))
            }
            Phase::Skimming {
                task,
                input,
                reservation,
            } => {
                let skimmed = ready!(Pin::new(task).poll(cx));
                let (len, shape) = skimmed.map_err(malformed)??;
                let input = input.clone();
                let reservation = std::mem::take(reservation);
                // The decompressed copy handed to tonic is held too, until tonic has copied it.
                let cost = message_cost(len, shape, self.metadata_json_len()).saturating_add(len);
                let mut out = Out::default();
                self.admit_held(
                    reservation,
                    cost,
                    len,
                    Release::Decompress { input, len },
                    &mut out,
                )?;
                Poll::Ready(Ok(out.finish()))
            }
            Phase::Decompressing { task } => {
                let frame = ready!(Pin::new(task).poll(cx)).map_err(malformed)??;
                self.phase = Phase::header();
                Poll::Ready(Ok(frame))
            }
            Phase::Header { .. } | Phase::Body { .. } => Poll::Ready(Ok(Bytes::new())),
        }
    }

    /// When waiting for the sender ends the stream, and with which violation.
    fn sender_deadline(&mut self) -> (Instant, ServerError) {
        let limits = self.budget.limits();
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
                    ServerError::TooSlow {
                        rate,
                        grace: limits.receive_grace,
                    },
                )
            }
            Phase::Header { have, .. } if *have > 0 => {
                let since = *self.quiet_since.get_or_insert_with(Instant::now);
                (
                    since + limits.receive_grace,
                    ServerError::TooSlow {
                        rate: limits.min_receive_bytes_per_second,
                        grace: limits.receive_grace,
                    },
                )
            }
            _ => {
                let since = *self.quiet_since.get_or_insert_with(Instant::now);
                (
                    since + limits.idle_timeout,
                    ServerError::Idle(limits.idle_timeout),
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
                Err(refusal) => return Poll::Ready(Some(Err(this.stop(refusal)))),
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
                        return Poll::Ready(Some(Err(this.stop(violation))));
                    }
                },
            };
            match this.consume(data) {
                Ok(out) if out.is_empty() => {}
                Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                Err(refusal) => return Poll::Ready(Some(Err(this.stop(refusal)))),
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, StreamBody};
    use prost::Message;
    use telemetry_gateway_proto::v1::record_events_request::{EventsPayload, Payload};
    use telemetry_gateway_proto::v1::{Event, RecordEventsRequest};
    use tonic::Code;

    use super::*;
    use crate::budget::cost::request_cost;

    #[test]
    fn a_single_piece_is_passed_on_without_a_copy_and_several_are_joined_in_order() {
        let frame = Bytes::from(vec![7u8; 16 * 1024]);
        let mut out = Out::default();
        out.push(Bytes::new());
        out.push(frame.slice(10..));
        out.push(Bytes::new());
        let single = out.finish();
        assert_eq!(
            single.as_ptr(),
            frame[10..].as_ptr(),
            "the frame's own bytes"
        );

        let mut out = Out::default();
        for piece in [&b"head"[..], b"", b"er", b"body"] {
            out.push(Bytes::copy_from_slice(piece));
        }
        assert_eq!(out.finish(), Bytes::from_static(b"headerbody"));
        assert!(Out::default().finish().is_empty());
    }

    fn frame(message: &[u8], compressed: bool) -> Vec<u8> {
        let mut framed = vec![u8::from(compressed)];
        framed.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
        framed.extend_from_slice(message);
        framed
    }

    fn events(count: usize) -> Vec<u8> {
        RecordEventsRequest {
            payload: Some(Payload::Events(EventsPayload {
                events: vec![Event::default(); count],
            })),
        }
        .encode_to_vec()
    }

    fn gzip(message: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(message).expect("in memory");
        encoder.finish().expect("in memory")
    }

    /// A request body of `chunks`, then its end.
    fn body(chunks: Vec<Vec<u8>>) -> Body {
        let frames = chunks
            .into_iter()
            .map(|chunk| Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))));
        Body::new(StreamBody::new(futures::stream::iter(frames)))
    }

    fn metrics() -> Metrics {
        Metrics::new(&opentelemetry::global::meter("test"))
    }

    /// Reads a budgeted body to its end: the bytes passed on, or the status it ended with.
    async fn read(body: Body) -> Result<Vec<u8>, Status> {
        let collected = body.collect().await?;
        Ok(collected.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn messages_pass_on_unchanged_split_anywhere_and_their_room_is_held() {
        let budget = InflightBudget::new(1 << 20, Duration::from_millis(100));
        let (first, second) = (frame(&events(3), false), frame(&events(1), false));
        let wire = [first.clone(), second].concat();
        // Split mid-header and mid-message.
        let chunks = vec![
            wire[..3].to_vec(),
            wire[3..20].to_vec(),
            wire[20..].to_vec(),
        ];
        let (body, ledger) = budgeted(&budget, &metrics(), body(chunks), false, None, None);
        assert_eq!(read(body).await.expect("admitted"), wire);
        // The first message is priced as a stream's metadata of unknown rendering would be.
        let expected = request_cost(
            &RecordEventsRequest::decode(&first[HEADER_LEN..]).expect("valid"),
            (first.len() - HEADER_LEN) * UNKNOWN_METADATA_FACTOR,
        )
        .expect("valid");
        let held = ledger.take();
        assert_eq!(held.part_bytes(Part::Held), expected);
        assert_eq!(held.part_bytes(Part::Receive), 0, "receive room is back");
        assert!(
            ledger.take().bytes() > 0,
            "the second message holds room too"
        );
        drop((held, ledger));
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_compressed_message_is_passed_on_decompressed() {
        let budget = InflightBudget::new(1 << 24, Duration::from_millis(100));
        let message = events(5);
        let compressed = gzip(&message);
        let input = body(vec![frame(&compressed, true)]);
        let (body, _ledger) = budgeted(&budget, &metrics(), input, false, Some("gzip"), None);
        assert_eq!(read(body).await.expect("admitted"), frame(&message, false));
    }

    #[tokio::test]
    async fn a_unary_call_carries_one_message() {
        let budget = InflightBudget::unlimited();
        let input = body(vec![frame(b"", false), frame(b"", false)]);
        let (body, _ledger) = budgeted(&budget, &metrics(), input, true, None, None);
        let status = read(body).await.expect_err("refused");
        assert_eq!(
            (status.code(), status.message()),
            (
                Code::InvalidArgument,
                "a unary call carries exactly one message"
            )
        );
    }

    #[tokio::test]
    async fn limits_are_checked_at_the_header() {
        let limits = Limits {
            max_metadata_bytes: 10,
            ..Limits::default()
        };
        let budget = InflightBudget::unlimited().with_limits(limits);
        // Only the header arrives: the refusal does not wait for the message.
        let input = body(vec![frame(&[0; 11], false)[..HEADER_LEN].to_vec()]);
        let (body, _ledger) = budgeted(&budget, &metrics(), input, false, None, None);
        let status = read(body).await.expect_err("refused");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status
                .message()
                .contains("TELEMETRY_GATEWAY_MAX_METADATA_BYTES"),
            "{status:?}"
        );
        let compressed = body_without_encoding().await;
        assert_eq!(compressed.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn a_compressed_metadata_message_is_held_to_the_metadata_limit_once_decompressed() {
        let limits = Limits {
            max_metadata_bytes: 1024,
            ..Limits::default()
        };
        let budget = InflightBudget::unlimited().with_limits(limits);
        // 64 KiB of zeros, a valid message (field 15, bytes) of far more than the limit, in a
        // few hundred bytes on the wire.
        let mut bomb = vec![0x7a, 0x80, 0x80, 0x04];
        bomb.resize(4 + 64 * 1024, 0);
        let small = gzip(&bomb);
        assert!(small.len() < 1024, "the wire bytes pass the header's check");
        let input = body(vec![frame(&small, true)]);
        let (refused, _ledger) = budgeted(&budget, &metrics(), input, false, Some("gzip"), None);
        let status = read(refused).await.expect_err("refused");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status
                .message()
                .contains("decompresses to more than 1024 bytes")
                && status
                    .message()
                    .contains("TELEMETRY_GATEWAY_MAX_METADATA_BYTES"),
            "{status:?}"
        );

        // Later messages (events payloads) are held to the decoded-message limit only.
        let metadata = gzip(&events(0));
        let payload = gzip(&bomb);
        let input = body(vec![frame(&metadata, true), frame(&payload, true)]);
        let (admitted, _ledger) = budgeted(&budget, &metrics(), input, false, Some("gzip"), None);
        let passed = read(admitted).await.expect("admitted");
        assert_eq!(
            passed,
            [frame(&events(0), false), frame(&bomb, false)].concat()
        );
    }

    async fn body_without_encoding() -> Status {
        let input = body(vec![frame(b"x", true)]);
        let (body, _ledger) = budgeted(
            &InflightBudget::unlimited(),
            &metrics(),
            input,
            false,
            None,
            None,
        );
        read(body).await.expect_err("refused")
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_sends_nothing_ends_after_the_idle_timeout() {
        let limits = Limits {
            idle_timeout: Duration::from_secs(7),
            ..Limits::default()
        };
        let budget = InflightBudget::unlimited().with_limits(limits);
        let silent = Body::new(StreamBody::new(futures::stream::pending::<
            Result<Frame<Bytes>, Infallible>,
        >()));
        let (body, _ledger) = budgeted(&budget, &metrics(), silent, false, None, None);
        let started = Instant::now();
        let status = read(body).await.expect_err("ended");
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(started.elapsed(), Duration::from_secs(7));
    }
}
