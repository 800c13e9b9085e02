//! A streaming skim of a protobuf message's structure, to price a message before it is decoded.
//!
//! The skimmer walks the wire format byte by byte as chunks arrive, without allocating per field:
//! it follows the fields that are messages (from the protocol's descriptors) and skips the
//! others. It counts the events (`telemetrygateway.v1.Event`) and every nested message (a
//! `Struct`, a `Value`, a map entry, …), which is what decoding and rendering cost beyond the
//! wire bytes themselves; see the cost model in docs/security.md.

use std::collections::HashMap;
use std::sync::LazyLock;

use prost_reflect::Kind;
use telemetry_gateway_proto::DESCRIPTOR_POOL;

/// The deepest nesting accepted: prost's own recursion limit, so nothing the skim accepts is
/// refused by the decoder for depth.
pub const MAX_DEPTH: usize = 100;

/// The message types the skim knows, by index, with the fields that are messages.
#[derive(Debug)]
struct Table {
    kinds: Vec<KindInfo>,
    by_name: HashMap<String, usize>,
}

#[derive(Debug, Default)]
struct KindInfo {
    /// Indexed by field number: the index of the field's message type, for fields that are
    /// messages (a dense table: the protocol's field numbers are small, and this lookup runs for
    /// every length-delimited field of every message).
    message_fields: Vec<Option<usize>>,
    /// Whether this is `telemetrygateway.v1.Event`.
    is_event: bool,
    /// Whether none of its fields is a message (a map entry of scalars, a Timestamp, ...): such
    /// a message is counted but not read, since it holds nothing more to count; its contents
    /// are the decoder's to check.
    leaf: bool,
}

impl KindInfo {
    /// The message type of field `number`, if it is a message field.
    fn message_field(&self, number: u32) -> Option<usize> {
        self.message_fields
            .get(usize::try_from(number).ok()?)
            .copied()
            .flatten()
    }
}

/// The event message's full name.
const EVENT: &str = "telemetrygateway.v1.Event";

static TABLE: LazyLock<Table> = LazyLock::new(|| {
    let mut table = Table {
        kinds: Vec::new(),
        by_name: HashMap::new(),
    };
    for message in DESCRIPTOR_POOL.all_messages() {
        let index = table.kinds.len();
        table.by_name.insert(message.full_name().to_string(), index);
        table.kinds.push(KindInfo {
            message_fields: Vec::new(),
            is_event: message.full_name() == EVENT,
            leaf: false,
        });
    }
    for message in DESCRIPTOR_POOL.all_messages() {
        let index = table.by_name[message.full_name()];
        for field in message.fields() {
            if let Kind::Message(child) = field.kind()
                && let Some(&child) = table.by_name.get(child.full_name())
            {
                let fields = &mut table.kinds[index].message_fields;
                let number = field.number() as usize;
                if fields.len() <= number {
                    fields.resize(number + 1, None);
                }
                fields[number] = Some(child);
            }
        }
    }
    for kind in &mut table.kinds {
        kind.leaf = kind.message_fields.iter().all(Option::is_none);
    }
    table
});

/// Which message a skim starts at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// `RecordEventsRequest` (the stream's messages).
    RecordEventsRequest,
    /// `RecordEventRequest` (the unary call).
    RecordEventRequest,
}

impl Root {
    fn index(self) -> usize {
        let name = match self {
            Root::RecordEventsRequest => "telemetrygateway.v1.RecordEventsRequest",
            Root::RecordEventRequest => "telemetrygateway.v1.RecordEventRequest",
        };
        TABLE.by_name.get(name).copied().unwrap_or(usize::MAX)
    }
}

/// Why a message cannot be skimmed (and so would not decode either: the skim checks the
/// structure it follows, not strings, scalars or the inside of messages that hold no messages,
/// which decoding checks), or is refused for its shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkimError {
    /// Not valid protobuf for the expected message.
    #[error("{0}")]
    Malformed(&'static str),
    /// More events than allowed.
    #[error("more than {0} events")]
    TooManyEvents(usize),
}

/// What a skimmed message holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Events in it.
    pub events: usize,
    /// Nested messages in it, events included.
    pub messages: usize,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    kind: usize,
    end: u64,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading a field's tag.
    Tag { value: u64, shift: u32 },
    /// Skipping a varint value, this many bytes of it read so far.
    Varint(usize),
    /// Reading a length-delimited field's length.
    Length { field: u32, value: u64, shift: u32 },
    /// Skipping this many bytes.
    Skip(u64),
}

const TAG: State = State::Tag { value: 0, shift: 0 };

/// A streaming skim of one message of `len` bytes.
#[derive(Debug)]
pub struct Skim {
    /// The message types (resolved once per skim rather than once per field).
    table: &'static Table,
    stack: Vec<Frame>,
    pos: u64,
    len: u64,
    state: State,
    shape: Shape,
    max_events: usize,
}

impl Skim {
    /// Skims a message of type `root` of `len` bytes (unknown while a compressed message is
    /// decompressed), refusing it past `max_events` events.
    pub fn new(root: Root, len: Option<usize>, max_events: usize) -> Skim {
        let len = len.map_or(u64::MAX, |len| len as u64);
        Skim {
            table: &TABLE,
            stack: vec![Frame {
                kind: root.index(),
                end: len,
            }],
            pos: 0,
            len,
            state: TAG,
            shape: Shape::default(),
            max_events,
        }
    }

    /// What has been seen so far.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Feeds the next bytes of the message.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), SkimError> {
        if self.pos + data.len() as u64 > self.len {
            return Err(SkimError::Malformed("more bytes than the message length"));
        }
        while !data.is_empty() {
            // The fast path: a whole tag and its length or value are in `data`, so they are read
            // straight from the slice rather than byte by byte through the state machine.
            if matches!(self.state, State::Tag { shift: 0, .. })
                && data.len() >= 2 * MAX_VARINT_BYTES
            {
                data = self.field_at(data)?;
                continue;
            }
            match &mut self.state {
                State::Skip(remaining) => {
                    let take = (*remaining).min(data.len() as u64);
                    *remaining -= take;
                    self.pos += take;
                    data = &data[take as usize..];
                    if *remaining == 0 {
                        self.state = TAG;
                        self.pop_finished()?;
                    }
                }
                State::Varint(read) => {
                    let byte = data[0];
                    data = &data[1..];
                    self.pos += 1;
                    *read += 1;
                    if byte & 0x80 != 0 && *read == MAX_VARINT_BYTES {
                        return Err(SkimError::Malformed("varint too long"));
                    }
                    if byte & 0x80 == 0 {
                        self.state = TAG;
                        self.pop_finished()?;
                    }
                }
                State::Tag { value, shift } => {
                    let byte = data[0];
                    data = &data[1..];
                    self.pos += 1;
                    let Some(tag) = varint_step(value, shift, byte)? else {
                        continue;
                    };
                    let field = field_number(tag)?;
                    self.state = match tag & 7 {
                        0 => State::Varint(0),
                        1 => State::Skip(8),
                        5 => State::Skip(4),
                        2 => State::Length {
                            field,
                            value: 0,
                            shift: 0,
                        },
                        _ => return Err(SkimError::Malformed("unsupported wire type")),
                    };
                }
                State::Length {
                    field,
                    value,
                    shift,
                } => {
                    let field = *field;
                    let byte = data[0];
                    data = &data[1..];
                    self.pos += 1;
                    let Some(len) = varint_step(value, shift, byte)? else {
                        continue;
                    };
                    self.start_field(field, len)?;
                }
            }
        }
        Ok(())
    }

    /// Reads one field's tag and its varint value or length from the start of `data`, which
    /// holds at least two varints' worth of bytes, and returns the rest. What it does is what
    /// the byte-by-byte states do for the same bytes.
    fn field_at<'a>(&mut self, data: &'a [u8]) -> Result<&'a [u8], SkimError> {
        let (tag, tag_bytes) = read_varint(data)?;
        let field = field_number(tag)?;
        let rest = &data[tag_bytes..];
        let (taken, rest) = match tag & 7 {
            0 => {
                let (_, value_bytes) = read_varint(rest)?;
                self.pos += (tag_bytes + value_bytes) as u64;
                self.pop_finished()?;
                return Ok(&rest[value_bytes..]);
            }
            1 => (8, rest),
            5 => (4, rest),
            2 => {
                let (len, len_bytes) = read_varint(rest)?;
                self.pos += (tag_bytes + len_bytes) as u64;
                let body = &rest[len_bytes..];
                if let Ok(len) = usize::try_from(len)
                    && let Some(field_bytes) = body.get(..len)
                    && self.whole_field(field, field_bytes)?
                {
                    return Ok(&body[len..]);
                }
                self.start_field(field, len)?;
                return Ok(body);
            }
            _ => return Err(SkimError::Malformed("unsupported wire type")),
        };
        self.pos += tag_bytes as u64;
        self.state = State::Skip(taken);
        Ok(rest)
    }

    /// A length-delimited field whose bytes are all in `bytes`, taken at once: skipped, or (a
    /// message) walked recursively without the state machine, which is most of the skim's work
    /// for events that arrive within one chunk. `false`, having changed nothing, when the walk
    /// meets anything but a well-formed message within the limits: the state machine then reads
    /// the same bytes and reports exactly what it always reports.
    fn whole_field(&mut self, field: u32, bytes: &[u8]) -> Result<bool, SkimError> {
        let Some(parent) = self.stack.last() else {
            return Ok(false);
        };
        let len = bytes.len() as u64;
        if self.pos + len > parent.end {
            return Ok(false);
        }
        let child = self.child_kind(parent.kind, field);
        if let Some(child) = child {
            let Some(inner) = self.walk(child, bytes, self.stack.len()) else {
                return Ok(false);
            };
            let events = self.shape.events + inner.events;
            if events > self.max_events {
                return Ok(false);
            }
            self.shape.events = events;
            self.shape.messages += inner.messages;
        }
        self.pos += len;
        self.pop_finished()?;
        Ok(true)
    }

    /// The shape of a whole message of type `kind` (itself included) that would sit at `depth`
    /// in the stack; `None` if it is malformed or too deep (left to the state machine).
    fn walk(&self, kind: usize, mut bytes: &[u8], depth: usize) -> Option<Shape> {
        if depth >= MAX_DEPTH {
            return None;
        }
        let info = self.table.kinds.get(kind)?;
        let mut shape = Shape {
            events: usize::from(info.is_event),
            messages: 1,
        };
        if info.leaf {
            return Some(shape);
        }
        while !bytes.is_empty() {
            let (tag, read) = read_varint_within(bytes)?;
            bytes = &bytes[read..];
            let field = field_number(tag).ok()?;
            let skip = match tag & 7 {
                0 => read_varint_within(bytes)?.1,
                1 => 8,
                5 => 4,
                2 => {
                    let (len, read) = read_varint_within(bytes)?;
                    bytes = &bytes[read..];
                    let len = usize::try_from(len).ok()?;
                    let body = bytes.get(..len)?;
                    if let Some(child) = info.message_field(field) {
                        let inner = self.walk(child, body, depth + 1)?;
                        shape.events += inner.events;
                        shape.messages += inner.messages;
                    }
                    len
                }
                _ => return None,
            };
            bytes = bytes.get(skip..)?;
        }
        Some(shape)
    }

    /// Checks that the message ended after `len` bytes, at a field boundary, and returns its
    /// shape.
    pub fn finish(&self, len: usize) -> Result<Shape, SkimError> {
        if self.pos != len as u64 || !matches!(self.state, State::Tag { shift: 0, .. }) {
            return Err(SkimError::Malformed("truncated field"));
        }
        if self.stack.len() > 1 && self.stack.iter().skip(1).any(|frame| frame.end != self.pos) {
            return Err(SkimError::Malformed("truncated nested message"));
        }
        Ok(self.shape)
    }

    /// A length-delimited field of `len` bytes starts here.
    fn start_field(&mut self, field: u32, len: u64) -> Result<(), SkimError> {
        let parent = *self
            .stack
            .last()
            .ok_or(SkimError::Malformed("no message"))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= parent.end)
            .ok_or(SkimError::Malformed("a field runs past its message"))?;
        let Some(child) = self.child_kind(parent.kind, field) else {
            return self.skip_body(len);
        };
        self.shape.messages += 1;
        if self.table.kinds[child].is_event {
            self.shape.events += 1;
            if self.shape.events > self.max_events {
                return Err(SkimError::TooManyEvents(self.max_events));
            }
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(SkimError::Malformed("messages nested too deeply"));
        }
        if self.table.kinds[child].leaf {
            return self.skip_body(len);
        }
        self.stack.push(Frame { kind: child, end });
        self.state = TAG;
        self.pop_finished()
    }

    /// Passes over a field's `len` bytes without reading them (a scalar field's bytes, or a
    /// message that holds no messages).
    fn skip_body(&mut self, len: u64) -> Result<(), SkimError> {
        if len == 0 {
            self.state = TAG;
            self.pop_finished()
        } else {
            self.state = State::Skip(len);
            Ok(())
        }
    }

    /// The message type of field `field` of a message of type `kind`, if it is a message field.
    fn child_kind(&self, kind: usize, field: u32) -> Option<usize> {
        self.table
            .kinds
            .get(kind)
            .and_then(|kind| kind.message_field(field))
    }

    /// Leaves every nested message that ends here.
    fn pop_finished(&mut self) -> Result<(), SkimError> {
        while self.stack.len() > 1 {
            let top = self.stack[self.stack.len() - 1];
            if self.pos < top.end {
                break;
            }
            if self.pos > top.end {
                return Err(SkimError::Malformed("a field runs past its message"));
            }
            self.stack.pop();
        }
        Ok(())
    }
}

/// The field number of a tag (whatever path read it), refusing 0 and numbers past `u32`.
fn field_number(tag: u64) -> Result<u32, SkimError> {
    match u32::try_from(tag >> 3) {
        Ok(0) => Err(SkimError::Malformed("field number 0")),
        Ok(field) => Ok(field),
        Err(_) => Err(SkimError::Malformed("field number out of range")),
    }
}

/// The most bytes a varint takes.
const MAX_VARINT_BYTES: usize = 10;

/// Reads a whole varint from the start of `data`, which holds at least [`MAX_VARINT_BYTES`]:
/// its value and its length (as [`varint_step`] would, byte by byte).
fn read_varint(data: &[u8]) -> Result<(u64, usize), SkimError> {
    read_varint_within(data).ok_or(SkimError::Malformed("varint too long"))
}

/// Reads a whole varint from the start of `data`: its value and its length; `None` if `data`
/// ends first or it is too long.
fn read_varint_within(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0;
    for (i, &byte) in data.iter().take(MAX_VARINT_BYTES).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Adds `byte` to a varint being read; `Some(value)` once it is complete.
fn varint_step(value: &mut u64, shift: &mut u32, byte: u8) -> Result<Option<u64>, SkimError> {
    if *shift >= 64 {
        return Err(SkimError::Malformed("varint too long"));
    }
    *value |= u64::from(byte & 0x7f) << *shift;
    *shift += 7;
    Ok((byte & 0x80 == 0).then_some(*value))
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use telemetry_gateway_proto::v1::record_events_request::Payload;
    use telemetry_gateway_proto::v1::{
        Event, EventParameters, RecordEventsRequest, RecordEventsRequestMetadata,
        record_events_request::EventsPayload,
    };

    use super::*;

    fn events_request(events: Vec<Event>) -> Vec<u8> {
        RecordEventsRequest {
            payload: Some(Payload::Events(EventsPayload { events })),
        }
        .encode_to_vec()
    }

    fn skim_in_chunks(bytes: &[u8], chunk: usize, max: usize) -> Result<Shape, SkimError> {
        let mut skim = Skim::new(Root::RecordEventsRequest, Some(bytes.len()), max);
        for piece in bytes.chunks(chunk.max(1)) {
            skim.feed(piece)?;
        }
        skim.finish(bytes.len())
    }

    fn struct_with(fields: usize, depth: usize) -> prost_types::Struct {
        let mut inner = prost_types::Struct {
            fields: (0..fields)
                .map(|i| {
                    (
                        format!("k{i}"),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::StringValue("v".into())),
                        },
                    )
                })
                .collect(),
        };
        for _ in 0..depth {
            inner = prost_types::Struct {
                fields: [(
                    "n".to_string(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StructValue(inner)),
                    },
                )]
                .into(),
            };
        }
        inner
    }

    #[test]
    fn counts_events_and_nested_messages_across_any_chunking() {
        let mut events = vec![Event::default(); 3];
        events[1].id = "x".repeat(300);
        events[2].parameters = Some(EventParameters {
            private_metadata: Some(struct_with(4, 2)),
            ..Default::default()
        });
        let bytes = events_request(events);
        // payload + 3 events + parameters + (2 levels × (struct, entry, value)) + inner struct
        // + 4 × (entry, value)
        let expected = Shape {
            events: 3,
            messages: 1 + 3 + 1 + 1 + 2 * 3 + 4 * 2,
        };
        for chunk in [1, 2, 3, 7, 64, bytes.len()] {
            assert_eq!(
                skim_in_chunks(&bytes, chunk, 10),
                Ok(expected),
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn empty_events_are_counted_and_refused_past_the_limit() {
        let bytes = events_request(vec![Event::default(); 1000]);
        assert_eq!(
            skim_in_chunks(&bytes, 100, 1000).map(|s| s.events),
            Ok(1000)
        );
        assert_eq!(
            skim_in_chunks(&bytes, 100, 999),
            Err(SkimError::TooManyEvents(999))
        );
    }

    #[test]
    fn metadata_and_unknown_fields_are_skipped() {
        let mut bytes = RecordEventsRequest {
            payload: Some(Payload::Metadata(RecordEventsRequestMetadata {
                request_id: "r".repeat(1000),
                ..Default::default()
            })),
        }
        .encode_to_vec();
        // An unknown varint field and an unknown fixed64 field.
        bytes.extend([0x78, 0x96, 0x01, 0x81, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            skim_in_chunks(&bytes, 5, 10),
            Ok(Shape {
                events: 0,
                messages: 1
            })
        );
    }

    #[test]
    fn truncated_and_overrunning_messages_are_malformed() {
        let bytes = events_request(vec![Event {
            id: "abc".into(),
            ..Default::default()
        }]);
        let mut skim = Skim::new(Root::RecordEventsRequest, Some(bytes.len() + 1), 10);
        skim.feed(&bytes).expect("a prefix is fine");
        assert!(matches!(
            skim.finish(bytes.len() + 1),
            Err(SkimError::Malformed(_))
        ));
        let mut short = Skim::new(Root::RecordEventsRequest, Some(bytes.len() - 1), 10);
        assert!(short.feed(&bytes).is_err());
        // A nested length that runs past its parent.
        let mut lying = bytes.clone();
        lying[3] = 100;
        assert!(skim_in_chunks(&lying, 4, 10).is_err());
    }

    #[test]
    fn the_inside_of_a_message_without_message_fields_is_left_to_the_decoder() {
        // An event whose Timestamp (field 2) holds a field of wire type 7: the skim counts the
        // Timestamp without reading it; decoding refuses the request.
        let event = [0x12, 0x01, 0x0f];
        let mut payload = vec![0x0a, event.len() as u8];
        payload.extend(event);
        let mut request = vec![0x12, payload.len() as u8];
        request.extend(&payload);
        let shape = Shape {
            events: 1,
            messages: 3,
        };
        for chunk in [1, 2, request.len()] {
            assert_eq!(
                skim_in_chunks(&request, chunk, 100),
                Ok(shape),
                "chunks of {chunk}"
            );
        }
        assert!(RecordEventsRequest::decode(request.as_slice()).is_err());
    }

    proptest::proptest! {
        /// Whole slices (the fast path) and single bytes (only the state machine) agree on any
        /// input, valid or not.
        #[test]
        fn the_fast_path_agrees_with_the_state_machine(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            ids in proptest::collection::vec("[a-z]{0,40}", 0..5),
            cut in 0usize..400,
        ) {
            let events = ids
                .into_iter()
                .map(|id| Event {
                    id,
                    parameters: Some(EventParameters {
                        private_metadata: Some(struct_with(2, 1)),
                        metadata: [("k".to_string(), 1.5)].into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect();
            let mut valid = events_request(events);
            let cut = cut.min(valid.len());
            let mut corrupted = valid[..cut].to_vec();
            corrupted.extend(&noise);
            valid.extend(&noise[..noise.len().min(3)]);
            for bytes in [valid, corrupted, noise] {
                let whole = skim_in_chunks(&bytes, bytes.len(), 100);
                let bytewise = skim_in_chunks(&bytes, 1, 100);
                let chunked = skim_in_chunks(&bytes, 37, 100);
                proptest::prop_assert_eq!(&whole, &bytewise);
                proptest::prop_assert_eq!(whole, chunked);
            }
        }
    }

    #[test]
    fn an_overlong_varint_value_is_refused_whatever_the_chunking() {
        // Field 15, varint, then eleven bytes with the continuation bit: prost refuses it too.
        let mut bytes = vec![0x78];
        bytes.extend([0x80; 10]);
        bytes.push(0x01);
        bytes.extend([0u8; 20]);
        for chunk in [1, 3, bytes.len()] {
            assert_eq!(
                skim_in_chunks(&bytes, chunk, 10),
                Err(SkimError::Malformed("varint too long")),
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn nesting_deeper_than_prost_accepts_is_refused() {
        let deep = events_request(vec![Event {
            parameters: Some(EventParameters {
                private_metadata: Some(struct_with(0, 60)),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        assert!(matches!(
            skim_in_chunks(&deep, 1000, 10),
            Err(SkimError::Malformed(_))
        ));
    }
}
