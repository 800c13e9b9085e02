//! Events read straight from their wire bytes, without decoding them into owned messages.
//!
//! A `RecordEvents` payload arrives as one buffer. [`RawRecordEventsRequest::decode`] keeps it
//! as it is and notes where each event's bytes are ([`RawEvent`], a cheap slice of the same
//! buffer). [`EventView::parse`] then reads one event into borrowed fields (strings point into
//! the buffer; maps are short vectors sorted as the decoded maps would be), which the JSON
//! renderer and the validator read exactly as they read a decoded [`Event`]. No string is
//! copied and no map node allocated: decoding events into owned messages, and freeing them,
//! was half of the gateway's CPU per event (docs/performance.md).
//!
//! The fast path only takes the encodings every protobuf library writes: each singular message
//! field at most once, each oneof set once, no groups, nesting within
//! [`MAX_VIEW_DEPTH`]. Anything else (repeated message fields, which protobuf merges; malformed
//! bytes) is handed to prost: [`EventView::parse`] returns `None` and the caller decodes the
//! event with prost and views the result ([`EventView::from_event`]), so whatever the encoding,
//! the outcome is prost's. Only valid encodings are ever read by the fast path: every value it
//! accepts, prost accepts and decodes to the same event (the `wire` property tests and the
//! `json_differential` fuzz target check this).

use std::ops::Range;

use bytes::Bytes;
use prost::DecodeError;
use prost::Message;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
use prost_types::Timestamp;

use crate::v1::record_events_request::Payload;
use crate::v1::{
    Event, EventInteraction, EventMarketingTracking, EventParameters, EventSource, EventUser,
    RecordEventsRequest, RecordEventsRequestMetadata,
};

/// How deeply nested (in messages below the event) the fast path reads; deeper events go to
/// prost, whose own limit is 100 from the request.
pub const MAX_VIEW_DEPTH: usize = 48;

/// A `RecordEventsRequest` whose events are kept as wire bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawRecordEventsRequest {
    /// The request's payload, as prost would decode it, events left encoded.
    pub payload: Option<RawPayload>,
}

/// The payload of a [`RawRecordEventsRequest`].
#[derive(Debug, Clone, PartialEq)]
pub enum RawPayload {
    /// The first message of a stream.
    Metadata(RecordEventsRequestMetadata),
    /// A batch of events.
    Events(RawEvents),
}

/// The events of one payload, each as its wire bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawEvents {
    /// The whole request message they came in (for [`RawEvents::decode_error`]).
    message: Bytes,
    events: Vec<RawEvent>,
}

/// One event's wire bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawEvent(Bytes);

impl RawRecordEventsRequest {
    /// Reads a request message, leaving its events encoded. Errors are prost's for the same
    /// bytes, since anything out of the ordinary is decoded by prost.
    pub fn decode(message: Bytes) -> Result<RawRecordEventsRequest, DecodeError> {
        match Self::decode_plain(&message) {
            Some(Plain::Empty) => Ok(RawRecordEventsRequest { payload: None }),
            Some(Plain::Metadata(range)) => {
                let Ok(metadata) = RecordEventsRequestMetadata::decode(message.slice(range)) else {
                    // prost's error for the whole request, with its path.
                    return RecordEventsRequest::decode(message).map(RawRecordEventsRequest::from);
                };
                Ok(RawRecordEventsRequest {
                    payload: Some(RawPayload::Metadata(metadata)),
                })
            }
            Some(Plain::Events(ranges)) => {
                let events = ranges
                    .into_iter()
                    .map(|range| RawEvent(message.slice(range)))
                    .collect();
                Ok(RawRecordEventsRequest {
                    payload: Some(RawPayload::Events(RawEvents { message, events })),
                })
            }
            None => RecordEventsRequest::decode(message).map(RawRecordEventsRequest::from),
        }
    }

    /// Where the payload of a plainly encoded request is: `None` when prost must decode it
    /// (malformed, or a payload field repeated, which protobuf merges).
    fn decode_plain(message: &[u8]) -> Option<Plain> {
        let mut reader = Reader::new(message);
        let mut plain = Plain::Empty;
        let mut seen = false;
        while let Some((tag, wire_type)) = reader.key()? {
            match tag {
                1 | 2 => {
                    if seen || wire_type != WireType::LengthDelimited {
                        return None;
                    }
                    seen = true;
                    let range = reader.range()?;
                    plain = if tag == 1 {
                        Plain::Metadata(range)
                    } else {
                        Plain::Events(events_ranges(message, range)?)
                    };
                }
                _ => reader.skip(tag, wire_type)?,
            }
        }
        Some(plain)
    }
}

/// Where the events of an `EventsPayload` (at `range` of `message`) are.
fn events_ranges(message: &[u8], range: Range<usize>) -> Option<Vec<Range<usize>>> {
    let offset = range.start;
    let mut reader = Reader::new(&message[range]);
    let mut events = Vec::new();
    while let Some((tag, wire_type)) = reader.key()? {
        match (tag, wire_type) {
            (1, WireType::LengthDelimited) => {
                let event = reader.range()?;
                events.push(event.start + offset..event.end + offset);
            }
            (1, _) => return None,
            _ => reader.skip(tag, wire_type)?,
        }
    }
    Some(events)
}

enum Plain {
    Empty,
    Metadata(Range<usize>),
    Events(Vec<Range<usize>>),
}

impl From<RecordEventsRequest> for RawRecordEventsRequest {
    fn from(request: RecordEventsRequest) -> RawRecordEventsRequest {
        let payload = request.payload.map(|payload| match payload {
            Payload::Metadata(metadata) => RawPayload::Metadata(metadata),
            Payload::Events(payload) => RawPayload::Events(RawEvents::from_events(&payload.events)),
        });
        RawRecordEventsRequest { payload }
    }
}

impl RawEvents {
    /// Encodes decoded events (tests, the unary call, a request prost had to decode).
    pub fn from_events(events: &[Event]) -> RawEvents {
        let message = RecordEventsRequest {
            payload: Some(Payload::Events(
                crate::v1::record_events_request::EventsPayload {
                    events: events.to_vec(),
                },
            )),
        }
        .encode_to_vec();
        match RawRecordEventsRequest::decode(message.into()) {
            Ok(RawRecordEventsRequest {
                payload: Some(RawPayload::Events(events)),
            }) => events,
            // What prost encodes, it reads back as the same events.
            _ => RawEvents::default(),
        }
    }

    /// How many events there are.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// The size of the request message they came in, in bytes.
    pub fn encoded_len(&self) -> usize {
        self.message.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The events, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, RawEvent> {
        self.events.iter()
    }

    /// The error prost gives for the whole request, once one of its events turned out not to
    /// decode: what the sender would have been told had the request been decoded at once.
    pub fn decode_error(&self) -> Option<DecodeError> {
        RecordEventsRequest::decode(self.message.clone()).err()
    }
}

impl<'a> IntoIterator for &'a RawEvents {
    type Item = &'a RawEvent;
    type IntoIter = std::slice::Iter<'a, RawEvent>;

    fn into_iter(self) -> Self::IntoIter {
        self.events.iter()
    }
}

impl RawEvent {
    /// The event's wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Decodes the event with prost.
    pub fn decode(&self) -> Result<Event, DecodeError> {
        Event::decode(self.0.clone())
    }

    /// Reads the event in place, if it is plainly encoded (`None`: [`decode`](Self::decode) it).
    pub fn view(&self) -> Option<EventView<'_>> {
        EventView::parse(&self.0)
    }
}

impl From<&Event> for RawEvent {
    fn from(event: &Event) -> RawEvent {
        RawEvent(event.encode_to_vec().into())
    }
}

/// An event's fields, borrowed from its wire bytes or from a decoded [`Event`]; maps are sorted
/// by key with one entry per key, as in the decoded event's `BTreeMap`s.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventView<'a> {
    pub id: &'a str,
    pub timestamp: Option<Timestamp>,
    pub feature: &'a str,
    pub action: &'a str,
    pub source: Option<SourceView<'a>>,
    pub parameters: Option<ParametersView<'a>>,
    pub user: Option<UserView<'a>>,
    /// `feature_flags.flags`, when `feature_flags` is set.
    pub feature_flags: Option<Vec<(&'a str, &'a str)>>,
    pub marketing_tracking: Option<MarketingTrackingView<'a>>,
    pub interaction: Option<InteractionView<'a>>,
}

/// `EventSource`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceView<'a> {
    /// `server.version`, when `server` is set.
    pub server: Option<&'a str>,
    pub client: Option<ClientView<'a>>,
}

/// `EventSource.Client`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientView<'a> {
    pub name: &'a str,
    pub version: Option<&'a str>,
}

/// `EventParameters`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParametersView<'a> {
    pub version: i32,
    pub legacy_metadata: Vec<(&'a str, i64)>,
    pub metadata: Vec<(&'a str, f64)>,
    pub private_metadata: Option<StructView<'a>>,
    /// `(product, category)`, when `billing_metadata` is set.
    pub billing_metadata: Option<(&'a str, &'a str)>,
}

/// `EventUser`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserView<'a> {
    pub user_id: Option<i64>,
    pub anonymous_user_id: Option<&'a str>,
    pub sams_external_id: Option<&'a str>,
}

/// `EventMarketingTracking`: its eight optional strings, in field order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MarketingTrackingView<'a> {
    pub fields: [Option<&'a str>; 8],
}

/// `EventInteraction`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InteractionView<'a> {
    pub trace_id: Option<&'a str>,
    pub interaction_id: Option<&'a str>,
    /// `geolocation.country_code`, when `geolocation` is set.
    pub geolocation: Option<&'a str>,
}

/// `google.protobuf.Struct`: its fields sorted by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StructView<'a> {
    pub fields: Vec<(&'a str, ValueView<'a>)>,
}

/// `google.protobuf.Value`.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueView<'a> {
    /// No kind set.
    Empty,
    Null,
    Number(f64),
    String(&'a str),
    Bool(bool),
    Struct(StructView<'a>),
    List(Vec<ValueView<'a>>),
}

impl<'a> EventView<'a> {
    /// Reads a plainly encoded event (see the module's documentation); `None` otherwise.
    pub fn parse(bytes: &'a [u8]) -> Option<EventView<'a>> {
        let mut reader = Reader::new(bytes);
        let mut event = EventView::default();
        while let Some((tag, wire_type)) = reader.key()? {
            match tag {
                1 => event.id = reader.string(wire_type)?,
                2 => once(&mut event.timestamp, reader.message(wire_type)?, timestamp)?,
                3 => event.feature = reader.string(wire_type)?,
                4 => event.action = reader.string(wire_type)?,
                5 => once(&mut event.source, reader.message(wire_type)?, source)?,
                6 => once(
                    &mut event.parameters,
                    reader.message(wire_type)?,
                    parameters,
                )?,
                7 => once(&mut event.user, reader.message(wire_type)?, user)?,
                8 => once(
                    &mut event.feature_flags,
                    reader.message(wire_type)?,
                    feature_flags,
                )?,
                9 => once(
                    &mut event.marketing_tracking,
                    reader.message(wire_type)?,
                    marketing_tracking,
                )?,
                10 => once(
                    &mut event.interaction,
                    reader.message(wire_type)?,
                    interaction,
                )?,
                _ => reader.skip(tag, wire_type)?,
            }
        }
        Some(event)
    }

    /// Views a decoded event.
    pub fn from_event(event: &'a Event) -> EventView<'a> {
        EventView {
            id: &event.id,
            timestamp: event.timestamp,
            feature: &event.feature,
            action: &event.action,
            source: event.source.as_ref().map(SourceView::from_source),
            parameters: event
                .parameters
                .as_ref()
                .map(ParametersView::from_parameters),
            user: event.user.as_ref().map(UserView::from_user),
            feature_flags: event.feature_flags.as_ref().map(|flags| {
                flags
                    .flags
                    .iter()
                    .map(|(key, value)| (key.as_str(), value.as_str()))
                    .collect()
            }),
            marketing_tracking: event
                .marketing_tracking
                .as_ref()
                .map(MarketingTrackingView::from_tracking),
            interaction: event
                .interaction
                .as_ref()
                .map(InteractionView::from_interaction),
        }
    }

    /// Moves integer metadata sent by older exporters into `metadata`, as
    /// [`migrate_legacy_metadata`](crate::migrate_legacy_metadata) does (the legacy value wins
    /// on a clash).
    pub fn migrate_legacy_metadata(&mut self) {
        let Some(parameters) = self.parameters.as_mut() else {
            return;
        };
        if parameters.legacy_metadata.is_empty() {
            return;
        }
        let legacy = std::mem::take(&mut parameters.legacy_metadata);
        parameters
            .metadata
            .extend(legacy.into_iter().map(|(key, value)| (key, value as f64)));
        normalize(&mut parameters.metadata);
    }

    /// Whether the event carries private metadata.
    pub fn has_private_metadata(&self) -> bool {
        self.parameters
            .as_ref()
            .is_some_and(|parameters| parameters.private_metadata.is_some())
    }
}

impl<'a> SourceView<'a> {
    fn from_source(source: &'a EventSource) -> SourceView<'a> {
        SourceView {
            server: source.server.as_ref().map(|server| server.version.as_str()),
            client: source.client.as_ref().map(|client| ClientView {
                name: &client.name,
                version: client.version.as_deref(),
            }),
        }
    }
}

impl<'a> ParametersView<'a> {
    fn from_parameters(parameters: &'a EventParameters) -> ParametersView<'a> {
        ParametersView {
            version: parameters.version,
            legacy_metadata: parameters
                .legacy_metadata
                .iter()
                .map(|(key, value)| (key.as_str(), *value))
                .collect(),
            metadata: parameters
                .metadata
                .iter()
                .map(|(key, value)| (key.as_str(), *value))
                .collect(),
            private_metadata: parameters
                .private_metadata
                .as_ref()
                .map(StructView::from_struct),
            billing_metadata: parameters
                .billing_metadata
                .as_ref()
                .map(|billing| (billing.product.as_str(), billing.category.as_str())),
        }
    }
}

impl<'a> UserView<'a> {
    fn from_user(user: &'a EventUser) -> UserView<'a> {
        UserView {
            user_id: user.user_id,
            anonymous_user_id: user.anonymous_user_id.as_deref(),
            sams_external_id: user.sams_external_id.as_deref(),
        }
    }
}

impl<'a> MarketingTrackingView<'a> {
    fn from_tracking(tracking: &'a EventMarketingTracking) -> MarketingTrackingView<'a> {
        MarketingTrackingView {
            fields: [
                tracking.url.as_deref(),
                tracking.first_source_url.as_deref(),
                tracking.cohort_id.as_deref(),
                tracking.referrer.as_deref(),
                tracking.last_source_url.as_deref(),
                tracking.device_session_id.as_deref(),
                tracking.session_referrer.as_deref(),
                tracking.session_first_url.as_deref(),
            ],
        }
    }
}

impl<'a> InteractionView<'a> {
    fn from_interaction(interaction: &'a EventInteraction) -> InteractionView<'a> {
        InteractionView {
            trace_id: interaction.trace_id.as_deref(),
            interaction_id: interaction.interaction_id.as_deref(),
            geolocation: interaction
                .geolocation
                .as_ref()
                .map(|geolocation| geolocation.country_code.as_str()),
        }
    }
}

impl<'a> StructView<'a> {
    /// Views a decoded Struct.
    pub fn from_struct(value: &'a prost_types::Struct) -> StructView<'a> {
        StructView {
            fields: value
                .fields
                .iter()
                .map(|(key, value)| (key.as_str(), ValueView::from_value(value)))
                .collect(),
        }
    }
}

impl<'a> ValueView<'a> {
    fn from_value(value: &'a prost_types::Value) -> ValueView<'a> {
        use prost_types::value::Kind;
        match &value.kind {
            None => ValueView::Empty,
            Some(Kind::NullValue(_)) => ValueView::Null,
            Some(Kind::NumberValue(number)) => ValueView::Number(*number),
            Some(Kind::StringValue(string)) => ValueView::String(string),
            Some(Kind::BoolValue(flag)) => ValueView::Bool(*flag),
            Some(Kind::StructValue(value)) => ValueView::Struct(StructView::from_struct(value)),
            Some(Kind::ListValue(list)) => {
                ValueView::List(list.values.iter().map(ValueView::from_value).collect())
            }
        }
    }
}

/// Sets a singular message field read from the wire; `None` if it was already set (protobuf
/// merges repeated message fields: prost's business).
fn once<'a, T>(
    field: &mut Option<T>,
    bytes: &'a [u8],
    read: impl FnOnce(Reader<'a>) -> Option<T>,
) -> Option<()> {
    if field.is_some() {
        return None;
    }
    *field = Some(read(Reader::new(bytes))?);
    Some(())
}

fn timestamp(mut reader: Reader<'_>) -> Option<Timestamp> {
    let mut timestamp = Timestamp::default();
    while let Some((tag, wire_type)) = reader.key()? {
        match tag {
            1 => timestamp.seconds = reader.varint(wire_type)? as i64,
            2 => timestamp.nanos = reader.varint(wire_type)? as i32,
            _ => reader.skip(tag, wire_type)?,
        }
    }
    Some(timestamp)
}

/// A message whose one field is the string 1 (`EventSource.Server.version`,
/// `EventInteraction.Geolocation.country_code`): that string (default `""`).
fn first_string(mut reader: Reader<'_>) -> Option<&str> {
    let mut value = "";
    while let Some((tag, wire_type)) = reader.key()? {
        match tag {
            1 => value = reader.string(wire_type)?,
            _ => reader.skip(tag, wire_type)?,
        }
    }
    Some(value)
}

fn source(mut reader: Reader<'_>) -> Option<SourceView<'_>> {
    let mut source = SourceView::default();
    while let Some((tag, wire_type)) = reader.key()? {
        match tag {
            1 => once(&mut source.server, reader.message(wire_type)?, first_string)?,
            2 => once(
                &mut source.client,
                reader.message(wire_type)?,
                |mut reader| {
                    let mut client = ClientView::default();
                    while let Some((tag, wire_type)) = reader.key()? {
                        match tag {
                            1 => client.name = reader.string(wire_type)?,
                            2 => client.version = Some(reader.string(wire_type)?),
                            _ => reader.skip(tag, wire_type)?,
                        }
                    }
                    Some(client)
                },
            )?,
            _ => reader.skip(tag, wire_type)?,
        }
    }
    Some(source)
}

fn parameters(mut reader: Reader<'_>) -> Option<ParametersView<'_>> {
    let mut parameters = ParametersView::default();
    while let Some((tag, wire_type)) = reader.key()? {
        match tag {
            1 => parameters.version = reader.varint(wire_type)? as i32,
            2 => {
                let entry = map_entry(reader.message(wire_type)?, 0, |reader, wire_type| {
                    reader.varint(wire_type).map(|value| value as i64)
                })?;
                parameters.legacy_metadata.push(entry);
            }
            5 => {
                let entry = map_entry(reader.message(wire_type)?, 0.0, Reader::double)?;
                parameters.metadata.push(entry);
            }
            3 => once(
                &mut parameters.private_metadata,
                reader.message(wire_type)?,
                |reader| struct_view(reader, 0),
            )?,
            4 => once(
                &mut parameters.billing_metadata,
                reader.message(wire_type)?,
                |mut reader| {
                    let (mut product, mut category) = ("", "");
                    while let Some((tag, wire_type)) = reader.key()? {
                        match tag {
                            1 => product = reader.string(wire_type)?,
                            2 => category = reader.string(wire_type)?,
                            _ => reader.skip(tag, wire_type)?,
                        }
                    }
                    Some((product, category))
                },
            )?,
            _ => reader.skip(tag, wire_type)?,
        }
    }
    normalize(&mut parameters.legacy_metadata);
    normalize(&mut parameters.metadata);
    Some(parameters)
}

fn user(mut reader: Reader<'_>) -> Option<UserView<'_>> {
    let mut user = UserView::default();
    while let Some((tag, wire_type)) = reader.key()? {
        match tag {
            1 => user.user_id = Some(reader.varint(wire_type)? as i64),
            2 => user.anonymous_user_id = Some(reader.string(wire_type)?),
            3 => user.sams_external_id = Some(reader.string(wire_type)?),
            _ => reader.skip(tag, wire_type)?,
        }
    }
    Some(user)
}

fn feature_flags(mut reader: Reader<'_>) -> Option<Vec<(&str, &str)>> {
    let mut flags = Vec::new();
    while let Some((tag, wire_type)) = reader.key()? {
        match tag {
            1 => flags.push(map_entry(reader.message(wire_type)?, "", Reader::string)?),
            _ => reader.skip(tag, wire_type)?,
        }
    }
    normalize(&mut flags);
    Some(flags)
}

fn marketing_tracking(mut reader: Reader<'_>) -> Option<MarketingTrackingView<'_>> {
    let mut tracking = MarketingTrackingView::default();
    while let Some((tag, wire_type)) = reader.key()? {
        match tag {
            1..=8 => tracking.fields[tag as usize - 1] = Some(reader.string(wire_type)?),
            _ => reader.skip(tag, wire_type)?,
        }
    }
    Some(tracking)
}

fn interaction(mut reader: Reader<'_>) -> Option<InteractionView<'_>> {
    let mut interaction = InteractionView::default();
    while let Some((tag, wire_type)) = reader.key()? {
        match tag {
            1 => interaction.trace_id = Some(reader.string(wire_type)?),
            2 => interaction.interaction_id = Some(reader.string(wire_type)?),
            3 => once(
                &mut interaction.geolocation,
                reader.message(wire_type)?,
                first_string,
            )?,
            _ => reader.skip(tag, wire_type)?,
        }
    }
    Some(interaction)
}

/// A `Struct` at `depth` (messages below its event's parameters).
fn struct_view(mut reader: Reader<'_>, depth: usize) -> Option<StructView<'_>> {
    if depth > MAX_VIEW_DEPTH {
        return None;
    }
    let mut fields = Vec::new();
    while let Some((tag, wire_type)) = reader.key()? {
        match tag {
            1 => {
                let mut entry = Reader::new(reader.message(wire_type)?);
                let (mut key, mut value) = ("", None);
                while let Some((tag, wire_type)) = entry.key()? {
                    match tag {
                        1 => key = entry.string(wire_type)?,
                        2 => once(&mut value, entry.message(wire_type)?, |reader| {
                            value_view(reader, depth + 2)
                        })?,
                        _ => entry.skip(tag, wire_type)?,
                    }
                }
                // A missing value is the message's default: a Value with no kind.
                fields.push((key, value.unwrap_or(ValueView::Empty)));
            }
            _ => reader.skip(tag, wire_type)?,
        }
    }
    normalize(&mut fields);
    Some(StructView { fields })
}

/// A `Value` at `depth`.
fn value_view(mut reader: Reader<'_>, depth: usize) -> Option<ValueView<'_>> {
    if depth > MAX_VIEW_DEPTH {
        return None;
    }
    let mut value = None;
    while let Some((tag, wire_type)) = reader.key()? {
        let kind = match tag {
            1 => {
                reader.varint(wire_type)?;
                ValueView::Null
            }
            2 => ValueView::Number(reader.double(wire_type)?),
            3 => ValueView::String(reader.string(wire_type)?),
            4 => ValueView::Bool(reader.varint(wire_type)? != 0),
            5 => ValueView::Struct(struct_view(
                Reader::new(reader.message(wire_type)?),
                depth + 1,
            )?),
            6 => {
                let mut list = Reader::new(reader.message(wire_type)?);
                let mut values = Vec::new();
                while let Some((tag, wire_type)) = list.key()? {
                    match tag {
                        1 => values.push(value_view(
                            Reader::new(list.message(wire_type)?),
                            depth + 2,
                        )?),
                        _ => list.skip(tag, wire_type)?,
                    }
                }
                ValueView::List(values)
            }
            _ => {
                reader.skip(tag, wire_type)?;
                continue;
            }
        };
        // A oneof set twice: merged or replaced by protobuf's rules; prost's business.
        if value.replace(kind).is_some() {
            return None;
        }
    }
    Some(value.unwrap_or(ValueView::Empty))
}

/// A map entry: its key (default `""`) and value (default `default`), each last-wins.
fn map_entry<'a, V: Copy>(
    bytes: &'a [u8],
    default: V,
    mut read_value: impl FnMut(&mut Reader<'a>, WireType) -> Option<V>,
) -> Option<(&'a str, V)> {
    let mut reader = Reader::new(bytes);
    let (mut key, mut value) = ("", default);
    while let Some((tag, wire_type)) = reader.key()? {
        match tag {
            1 => key = reader.string(wire_type)?,
            2 => value = read_value(&mut reader, wire_type)?,
            _ => reader.skip(tag, wire_type)?,
        }
    }
    Some((key, value))
}

/// Sorts map entries by key, keeping the last of each key (as a map decoded from them would).
fn normalize<V>(entries: &mut Vec<(&str, V)>) {
    if entries.windows(2).all(|pair| pair[0].0 < pair[1].0) {
        return;
    }
    // Stable: entries of one key stay in wire order, so the last of each run is kept.
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut kept = 0;
    for index in 0..entries.len() {
        if index + 1 < entries.len() && entries[index + 1].0 == entries[index].0 {
            continue;
        }
        entries.swap(kept, index);
        kept += 1;
    }
    entries.truncate(kept);
}

/// Reads protobuf fields from a byte slice, with prost's own primitives (so a value is valid
/// here exactly when it is valid to prost). `None` means "not for the fast path".
struct Reader<'a> {
    buf: &'a [u8],
    /// The length of the slice it started with.
    len: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader {
            buf,
            len: buf.len(),
        }
    }

    /// The next field's key: `Some(None)` at the end, `None` where prost's `decode_key` fails.
    /// Inlined, with a fast path for the one-byte keys of field numbers 1 to 15 (nearly every
    /// key), and prost's own `decode_key` for the rest, so the verdict is always prost's.
    #[inline(always)]
    fn key(&mut self) -> Option<Option<(u32, WireType)>> {
        let Some((&first, rest)) = self.buf.split_first() else {
            return Some(None);
        };
        if (8..0x80).contains(&first)
            && let Ok(wire_type) = WireType::try_from(u64::from(first & 7))
        {
            self.buf = rest;
            return Some(Some((u32::from(first >> 3), wire_type)));
        }
        decode_key(&mut self.buf).ok().map(Some)
    }

    fn varint(&mut self, wire_type: WireType) -> Option<u64> {
        if wire_type != WireType::Varint {
            return None;
        }
        decode_varint(&mut self.buf).ok()
    }

    fn double(&mut self, wire_type: WireType) -> Option<f64> {
        if wire_type != WireType::SixtyFourBit || self.buf.len() < 8 {
            return None;
        }
        let (bytes, rest) = self.buf.split_at(8);
        self.buf = rest;
        Some(f64::from_le_bytes(bytes.try_into().ok()?))
    }

    /// A length-delimited field's bytes.
    fn message(&mut self, wire_type: WireType) -> Option<&'a [u8]> {
        if wire_type != WireType::LengthDelimited {
            return None;
        }
        let len = usize::try_from(decode_varint(&mut self.buf).ok()?).ok()?;
        if len > self.buf.len() {
            return None;
        }
        let (bytes, rest) = self.buf.split_at(len);
        self.buf = rest;
        Some(bytes)
    }

    fn string(&mut self, wire_type: WireType) -> Option<&'a str> {
        // The same verdict as `std::str::from_utf8` (which prost uses), faster on long strings.
        simdutf8::basic::from_utf8(self.message(wire_type)?).ok()
    }

    /// A length-delimited field's position in the slice the reader started with.
    fn range(&mut self) -> Option<Range<usize>> {
        let bytes = self.message(WireType::LengthDelimited)?;
        // The field's bytes end where the rest of the slice starts.
        let end = self.len - self.buf.len();
        Some(end - bytes.len()..end)
    }

    /// Skips an unknown field; groups (deprecated, and recursive) go to prost.
    fn skip(&mut self, tag: u32, wire_type: WireType) -> Option<()> {
        if matches!(wire_type, WireType::StartGroup | WireType::EndGroup) {
            return None;
        }
        skip_field(wire_type, tag, &mut self.buf, DecodeContext::default()).ok()
    }
}
