//! The per-payload pipeline, as plain functions over plain types:
//! events → [`prepare_payload`] (migrate, validate, render, attributes) → sink →
//! [`summarize`] (outcomes + source policy → acknowledged IDs, failures, drops).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use prost::DecodeError;
use telemetry_gateway_proto::v1::Event;
use telemetry_gateway_proto::wire::{EventView, RawEvent, RawEvents};
use telemetry_gateway_proto::{migrate_legacy_metadata, render_event, render_view, validate_view};
use telemetry_gateway_sink::{Attributes, PreparedEvent, PublishOutcome};

use crate::source::Source;

/// Payloads of this size or more are never published: Pub/Sub's request limit (1e7 bytes).
pub const MAX_EVENT_PAYLOAD_BYTES: usize = 10_000_000;

/// The most a payload's render buffer is sized for before its events are rendered.
const MAX_RENDER_BUFFER_PRESIZE: usize = 16 * 1024 * 1024;

/// How much of an oversized event's JSON is logged.
const OVERSIZED_SNIPPET_BYTES: usize = 512;

/// How the message of an event that cannot be rendered starts (the original's wording).
pub const RENDER_ERROR_PREFIX: &str = "marshalling event: ";

/// Prefix of numeric metadata keys that announce which private metadata an event carries.
const RECORDS_PRIVATE_METADATA_PREFIX: &str = "recordsPrivateMetadata";

/// Opt-in rules applied to events on top of the protocol's.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventPolicy {
    /// Replace the raw license key in published metadata by its fingerprint.
    pub fingerprint_license_keys: bool,
    /// Refuse streams whose license has expired.
    pub reject_expired_licenses: bool,
    /// For licenses tagged `disable-telemetry-events-export`, forward only `cody`/`cody.*` events.
    pub enforce_export_tags: bool,
}

/// Whether prepared events carry their Pub/Sub attributes: only when a sink reads them
/// ([`EventSink::reads_attributes`](telemetry_gateway_sink::EventSink::reads_attributes)), since
/// building them costs about nine allocations per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeNeed {
    /// Every prepared event gets its attributes.
    Build,
    /// Prepared events' attributes are left empty: no sink reads them.
    Skip,
}

impl AttributeNeed {
    /// What `sink` needs.
    pub fn of(sink: &dyn telemetry_gateway_sink::EventSink) -> AttributeNeed {
        if sink.reads_attributes() {
            AttributeNeed::Build
        } else {
            AttributeNeed::Skip
        }
    }
}

/// Why an event was acknowledged without being published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// It failed validation or could not be rendered (instances only; managed services are told).
    Invalid = 0,
    /// Its payload reached [`MAX_EVENT_PAYLOAD_BYTES`].
    Oversized = 1,
    /// The sender's license does not allow exporting it.
    Policy = 2,
    /// A sink rejected it permanently (instances only).
    Rejected = 3,
}

impl DropReason {
    /// Every reason, in the order of their discriminants.
    pub const ALL: [DropReason; 4] = [
        DropReason::Invalid,
        DropReason::Oversized,
        DropReason::Policy,
        DropReason::Rejected,
    ];

    /// The metrics and log label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Invalid => "invalid",
            DropReason::Oversized => "oversized",
            DropReason::Policy => "policy",
            DropReason::Rejected => "rejected",
        }
    }
}

/// What becomes of one input event.
#[derive(Debug, Clone, PartialEq)]
enum Disposition {
    /// Handed to the sinks as `events[index]`.
    Publish(usize),
    /// Can never succeed: validation failed.
    Invalid(String),
    /// Can never succeed: it could not be rendered as JSON.
    Unrenderable(String),
    /// Acknowledged without publishing.
    Drop(DropReason, String),
    /// Repeats an earlier ID of the same payload: published and acknowledged once.
    Duplicate,
    /// Not published (invalid or dropped, for the reason given), but a later event with the same
    /// ID was: counted as dropped, and the ID is acknowledged only through that later event.
    Superseded(DropReason, String),
}

impl Disposition {
    fn is_publish(&self) -> bool {
        matches!(self, Disposition::Publish(_))
    }

    /// What an earlier event becomes once a later event with its ID is published.
    fn superseded(self) -> Disposition {
        match self {
            Disposition::Invalid(error) | Disposition::Unrenderable(error) => {
                Disposition::Superseded(DropReason::Invalid, error)
            }
            Disposition::Drop(reason, detail) => Disposition::Superseded(reason, detail),
            other => other,
        }
    }
}

/// One input event's identity, kept for summaries and logs. A published event's (and a
/// duplicate's) is left empty here: its prepared event holds it, and [`summarize`] takes it from
/// there (three fewer allocations per event).
#[derive(Debug, Clone, PartialEq)]
struct Slot {
    id: String,
    feature: String,
    action: String,
    disposition: Disposition,
    /// The event itself when the pipeline refused it (invalid, unrenderable, dropped), for
    /// [`take_refusals`]; it would be freed here otherwise.
    refused: Option<Box<Event>>,
}

/// A payload made ready for the sinks.
#[derive(Debug, Default)]
pub struct PreparedPayload {
    /// The events to publish, each rendered once.
    pub events: Vec<PreparedEvent>,
    /// The events' payloads as NDJSON: each followed by a line break, in order. The payloads
    /// are slices of it, so it costs one byte per event more ([`EventSink::publish_ndjson`]).
    ///
    /// [`EventSink::publish_ndjson`]: telemetry_gateway_sink::EventSink::publish_ndjson
    pub ndjson: Bytes,
    /// The size of every rendered message, oversized ones included (for metrics).
    pub message_sizes: Vec<usize>,
    /// The first oversized event, for the log.
    pub oversized: Option<OversizedSample>,
    slots: Vec<Slot>,
}

impl PreparedPayload {
    /// How many events the sender submitted.
    pub fn submitted(&self) -> usize {
        self.slots.len()
    }
}

/// Migrates, validates and renders every event of a payload, in order, reading each from its
/// wire bytes (`wire::EventView`; prost decodes what that does not read). Each prepared event
/// gets its Pub/Sub attributes when `attributes` says a sink reads them.
///
/// An event that does not decode at all fails the whole payload with prost's error for the
/// request, before anything is published: what the sender was told when requests were decoded
/// as they arrived.
pub fn prepare_payload(
    events: &RawEvents,
    source: &Source,
    policy: &EventPolicy,
    attributes: AttributeNeed,
) -> Result<PreparedPayload, DecodeError> {
    let cody_only = policy.enforce_export_tags
        && source.license().is_some_and(|license| {
            license.has_tag(telemetry_gateway_auth::license::TAG_DISABLE_TELEMETRY_EVENTS_EXPORT)
        });
    let mut prepared = PreparedPayload {
        events: Vec::with_capacity(events.len()),
        ndjson: Bytes::new(),
        message_sizes: Vec::with_capacity(events.len()),
        oversized: None,
        slots: Vec::with_capacity(events.len()),
    };
    // The slot that speaks for each ID: its published event if there is one, else its first.
    // foldhash, randomly seeded per process: SipHash cost more than the rest of this loop, and
    // the seed keeps a sender from choosing colliding IDs.
    // Keys borrow the IDs from the message buffer; only an event prost decoded owns its key.
    let mut by_id: HashMap<Cow<'_, str>, usize, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(events.len(), foldhash::fast::RandomState::default());
    // Every published event's payload, one after another and each followed by a line break (the
    // NDJSON the file sink writes as it is): one buffer for the payload's events rather than one
    // per event; each event's `Bytes` is a slice of it. Sized for what the events usually need,
    // but never up front beyond a bound: with large stream metadata most events may turn out
    // oversized (and are not kept), so past it the buffer grows as it fills.
    let mut rendered = Vec::with_capacity(
        (events.encoded_len() + events.len() * (source.metadata_json().len() + 32))
            .min(MAX_RENDER_BUFFER_PRESIZE),
    );
    let mut ranges = Vec::with_capacity(events.len());
    for raw in events {
        let decoded: Event;
        let (mut event, key) = match raw.view() {
            Some(view) => {
                let key = Cow::Borrowed(view.id);
                (view, key)
            }
            None => {
                decoded = raw
                    .decode()
                    .map_err(|err| events.decode_error().unwrap_or(err))?;
                let key = Cow::Owned(decoded.id.clone());
                (EventView::from_event(&decoded), key)
            }
        };
        let index = prepared.slots.len();
        let earlier = by_id.get(&key).copied();
        let mut migrated = false;
        let mut disposition = match earlier {
            Some(earlier) if prepared.slots[earlier].disposition.is_publish() => {
                Disposition::Duplicate
            }
            _ if cody_only && !is_cody_feature(event.feature) => Disposition::Drop(
                DropReason::Policy,
                "license disables export of events other than cody".into(),
            ),
            _ => {
                event.migrate_legacy_metadata();
                migrated = true;
                match prepare_event(
                    &event,
                    source,
                    attributes,
                    &mut rendered,
                    &mut prepared.message_sizes,
                ) {
                    Ok((ready, range)) => {
                        rendered.push(b'\n');
                        prepared.events.push(ready);
                        ranges.push(range);
                        Disposition::Publish(prepared.events.len() - 1)
                    }
                    Err(disposition) => {
                        if let Disposition::Drop(DropReason::Oversized, _) = disposition
                            && prepared.oversized.is_none()
                        {
                            let size = prepared.message_sizes.last().copied().unwrap_or_default();
                            prepared.oversized =
                                Some(oversized_sample(&mut owned(raw, true), size));
                        }
                        disposition
                    }
                }
            }
        };
        match earlier {
            None => {
                by_id.insert(key, index);
            }
            Some(_) if disposition == Disposition::Duplicate => {}
            // The earlier events of this ID were not published: a published one takes over
            // (so the ID is acknowledged only if it is handed off), another refusal is a repeat.
            Some(earlier) if disposition.is_publish() => {
                let slot = &mut prepared.slots[earlier];
                slot.disposition =
                    std::mem::replace(&mut slot.disposition, Disposition::Duplicate).superseded();
                by_id.insert(key, index);
            }
            Some(_) => disposition = Disposition::Duplicate,
        }
        let refused = match disposition {
            Disposition::Publish(_) | Disposition::Duplicate => None,
            _ => Some(Box::new(owned(raw, migrated))),
        };
        let (id, feature, action) = match disposition {
            Disposition::Publish(_) | Disposition::Duplicate => Default::default(),
            _ => (
                event.id.to_owned(),
                event.feature.to_owned(),
                event.action.to_owned(),
            ),
        };
        prepared.slots.push(Slot {
            id,
            feature,
            action,
            disposition,
            refused,
        });
    }
    let rendered = Bytes::from(rendered);
    for (event, range) in prepared.events.iter_mut().zip(ranges) {
        event.payload = rendered.slice(range);
    }
    prepared.ndjson = rendered;
    Ok(prepared)
}

/// A refused event, decoded for the dead letters and logs (only the refused are, and they
/// decode: the payload's events were all read). Migrated if the pipeline got that far.
fn owned(raw: &RawEvent, migrated: bool) -> Event {
    let mut event = raw.decode().unwrap_or_else(|err| {
        // Unreachable: the event was read (in place or by prost) to get this far.
        debug_assert!(false, "a read event does not decode: {err}");
        tracing::error!(error = %err, "a refused event does not decode; its dead letter is empty");
        Event::default()
    });
    if migrated {
        migrate_legacy_metadata(&mut event);
    }
    event
}

/// Prepares a single event (the unary path): `Err` carries why it will not be published, and
/// `Ok(None)` an oversized event (dropped, with what the log shows of it). The rendered
/// message's size, oversized or not, is appended to `sizes` (for metrics).
pub fn prepare_single(
    mut event: Event,
    source: &Source,
    sizes: &mut Vec<usize>,
) -> Result<Result<PreparedEvent, OversizedSample>, String> {
    migrate_legacy_metadata(&mut event);
    let mut rendered = Vec::new();
    let view = EventView::from_event(&event);
    match prepare_event(&view, source, AttributeNeed::Build, &mut rendered, sizes) {
        Ok((mut ready, _)) => {
            ready.payload = Bytes::from(rendered);
            Ok(Ok(ready))
        }
        Err(Disposition::Drop(..)) => {
            let size = sizes.last().copied().unwrap_or_default();
            Ok(Err(oversized_sample(&mut event, size)))
        }
        Err(Disposition::Invalid(reason) | Disposition::Unrenderable(reason)) => Err(reason),
        Err(other) => Err(format!("unexpected disposition {other:?}")),
    }
}

fn is_cody_feature(feature: &str) -> bool {
    feature == "cody" || feature.starts_with("cody.")
}

/// Validates and renders one (already migrated) event: its payload is appended to `out` (which
/// holds the payload's earlier events), and its size to `sizes` (for metrics). The returned
/// event's `payload` is left empty: it is the returned range of `out`, which the caller makes
/// the event's `Bytes` once every event is rendered.
fn prepare_event(
    event: &EventView<'_>,
    source: &Source,
    attributes: AttributeNeed,
    out: &mut Vec<u8>,
    sizes: &mut Vec<usize>,
) -> Result<(PreparedEvent, Range<usize>), Disposition> {
    validate_view(event).map_err(|err| Disposition::Invalid(err.to_string()))?;
    let start = out.len();
    out.extend_from_slice(br#"{"event":"#);
    if let Err(err) = render_view(event, out) {
        out.truncate(start);
        return Err(Disposition::Unrenderable(format!(
            "{RENDER_ERROR_PREFIX}{err}"
        )));
    }
    // Sized before the stream's metadata is copied in: an oversized event costs no copy of it.
    let metadata = source.metadata_json();
    let size = out.len() - start + metadata.len() + r#","metadata":}"#.len();
    sizes.push(size);
    if size >= MAX_EVENT_PAYLOAD_BYTES {
        out.truncate(start);
        return Err(Disposition::Drop(
            DropReason::Oversized,
            format!("event is oversized ({size} bytes)"),
        ));
    }
    out.extend_from_slice(br#","metadata":"#);
    out.extend_from_slice(metadata);
    out.push(b'}');
    let prepared = PreparedEvent {
        id: event.id.to_owned(),
        feature: event.feature.to_owned(),
        action: event.action.to_owned(),
        timestamp: event.timestamp.unwrap_or_default(),
        payload: Bytes::new(),
        attributes: match attributes {
            AttributeNeed::Build => view_attributes(event, source),
            AttributeNeed::Skip => Attributes::new(),
        },
    };
    Ok((prepared, start..out.len()))
}

/// What the log shows of an oversized event: its identity, its size, and the start of its JSON
/// rendered without its private metadata. The request metadata (which holds a licensed
/// instance's license key) is never part of it. `event` is left as it was (its private metadata
/// is taken out only while it is rendered).
fn oversized_sample(event: &mut Event, size: usize) -> OversizedSample {
    let private = event
        .parameters
        .as_mut()
        .and_then(|parameters| parameters.private_metadata.take());
    let mut json = Vec::new();
    let rendered = render_event(event, &mut json);
    if let Some(parameters) = event.parameters.as_mut() {
        parameters.private_metadata = private;
    }
    let snippet = match rendered {
        Ok(()) => {
            let mut end = json.len().min(OVERSIZED_SNIPPET_BYTES);
            // Cut on a character boundary (UTF-8 continuation bytes are 0b10xx_xxxx).
            while end < json.len() && end > 0 && (json[end] & 0xC0) == 0x80 {
                end -= 1;
            }
            String::from_utf8_lossy(&json[..end]).into_owned()
        }
        Err(err) => format!("<not renderable: {err}>"),
    };
    OversizedSample {
        id: event.id.clone(),
        feature: event.feature.clone(),
        action: event.action.clone(),
        size,
        snippet,
    }
}

/// The first oversized event of a payload (or the unary call's), as the log shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct OversizedSample {
    /// The event's ID.
    pub id: String,
    /// The event's feature.
    pub feature: String,
    /// The event's action.
    pub action: String,
    /// The size of its message in bytes.
    pub size: usize,
    /// The start of its JSON, without private metadata.
    pub snippet: String,
}

/// The Pub/Sub message attributes of an event (after legacy migration).
pub fn attributes(event: &Event, source: &Source) -> Attributes {
    view_attributes(&EventView::from_event(event), source)
}

/// [`attributes`] of a viewed event.
fn view_attributes(event: &EventView<'_>, source: &Source) -> Attributes {
    let mut attributes = Attributes::new();
    attributes.insert(
        "publisher.source".into(),
        source.publisher_source().to_string(),
    );
    attributes.insert("event.feature".into(), event.feature.to_owned());
    attributes.insert("event.action".into(), event.action.to_owned());
    attributes.insert(
        "event.hasPrivateMetadata".into(),
        event.has_private_metadata().to_string(),
    );
    for (key, value) in event.parameters.iter().flat_map(|p| &p.metadata) {
        // Ours: any non-empty suffix counts (the original skipped one-character suffixes).
        if key.len() > RECORDS_PRIVATE_METADATA_PREFIX.len()
            && key.starts_with(RECORDS_PRIVATE_METADATA_PREFIX)
            && *value > 0.0
        {
            attributes.insert(format!("event.{key}"), "true".into());
        }
    }
    attributes
}

/// Why an event was refused for good: the stable code of its dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// It failed validation.
    Invalid,
    /// It could not be rendered as JSON.
    Unrenderable,
    /// Its payload reached [`MAX_EVENT_PAYLOAD_BYTES`].
    Oversized,
    /// An opt-in policy refused it (the sender's license does not allow exporting it).
    Policy,
    /// A sink rejected it permanently.
    Rejected,
}

impl RefusalReason {
    /// The stable code written in dead letters and metrics.
    pub fn code(self) -> &'static str {
        match self {
            RefusalReason::Invalid => "invalid",
            RefusalReason::Unrenderable => "unrenderable",
            RefusalReason::Oversized => "oversized",
            RefusalReason::Policy => "policy",
            RefusalReason::Rejected => "rejected",
        }
    }

    /// The reason of a unary event's refusal by [`prepare_single`] (its message).
    pub fn of_single(message: &str) -> RefusalReason {
        if message.starts_with(RENDER_ERROR_PREFIX) {
            RefusalReason::Unrenderable
        } else {
            RefusalReason::Invalid
        }
    }
}

/// The refused event: decoded, or (rejected by a sink) as rendered for publishing.
#[derive(Debug, Clone, PartialEq)]
pub enum RefusedEvent {
    /// Refused by the pipeline: the decoded event (after legacy migration when it got that far).
    Decoded(Box<Event>),
    /// Rejected by a sink: the prepared event, whose payload holds the event's JSON.
    Published(PreparedEvent),
}

/// An event refused for good, whatever the sender is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The stable reason.
    pub reason: RefusalReason,
    /// What went wrong.
    pub message: String,
    /// The event.
    pub event: RefusedEvent,
}

/// Takes the events of `payload` refused for good, given the sinks' `outcomes` (as for
/// [`summarize`]), in input order. Duplicates and retryable failures are not refusals.
pub fn take_refusals(payload: &mut PreparedPayload, outcomes: &[PublishOutcome]) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    for slot in &mut payload.slots {
        let (reason, message) = match &slot.disposition {
            Disposition::Publish(index) => {
                if let (Some(PublishOutcome::Permanent(error)), Some(event)) =
                    (outcomes.get(*index), payload.events.get(*index))
                {
                    // Its own copy of the payload: a slice would keep the whole payload's
                    // buffer alive while the dead letter waits in its queue.
                    let mut event = event.clone();
                    event.payload = Bytes::copy_from_slice(&event.payload);
                    refusals.push(Refusal {
                        reason: RefusalReason::Rejected,
                        message: error.message.clone(),
                        event: RefusedEvent::Published(event),
                    });
                }
                continue;
            }
            Disposition::Duplicate => continue,
            Disposition::Invalid(error) => (RefusalReason::Invalid, error),
            Disposition::Unrenderable(error) => (RefusalReason::Unrenderable, error),
            Disposition::Drop(DropReason::Oversized, detail) => (RefusalReason::Oversized, detail),
            Disposition::Drop(DropReason::Policy, detail) => (RefusalReason::Policy, detail),
            Disposition::Drop(DropReason::Invalid, detail) => (RefusalReason::Invalid, detail),
            Disposition::Drop(DropReason::Rejected, detail) => (RefusalReason::Rejected, detail),
            // Refused, though a later event with its ID was published.
            Disposition::Superseded(reason, detail) => (
                match reason {
                    DropReason::Invalid => RefusalReason::Invalid,
                    DropReason::Oversized => RefusalReason::Oversized,
                    DropReason::Policy => RefusalReason::Policy,
                    DropReason::Rejected => RefusalReason::Rejected,
                },
                detail,
            ),
        };
        if let Some(event) = slot.refused.take() {
            refusals.push(Refusal {
                reason,
                message: message.clone(),
                event: RefusedEvent::Decoded(event),
            });
        }
    }
    refusals
}

/// The overall result of a payload, labelled as the original does (`docs/compatibility.md` §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchResult {
    /// No event failed.
    Success,
    /// Some events failed.
    PartialFailure,
    /// Every event failed.
    CompleteFailure,
}

impl BatchResult {
    /// The metrics and log label.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchResult::Success => "success",
            BatchResult::PartialFailure => "partial_failure",
            BatchResult::CompleteFailure => "complete_failure",
        }
    }

    /// The original's summary message.
    pub fn message(self) -> &'static str {
        match self {
            BatchResult::Success => "all events in batch submitted successfully",
            BatchResult::PartialFailure => "some events in batch failed to submit",
            BatchResult::CompleteFailure => "all events in batch failed to submit",
        }
    }
}

/// An event that errored, whether or not it was acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFailure {
    /// The event's ID.
    pub id: String,
    /// The event's feature.
    pub feature: String,
    /// The event's action.
    pub action: String,
    /// What went wrong.
    pub error: String,
    /// Whether a retry may succeed.
    pub retryable: bool,
}

impl fmt::Display for EventFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "feature:{:?} action:{:?} id:{:?}: {}",
            self.feature, self.action, self.id, self.error
        )
    }
}

/// An event that will not be published: acknowledged without being published, or (when a later
/// event with the same ID was published instead) acknowledged only through that event.
#[derive(Debug, Clone, PartialEq)]
pub struct DroppedEvent {
    /// The event's ID.
    pub id: String,
    /// Why.
    pub reason: DropReason,
    /// Details for the log.
    pub detail: String,
}

/// What happened to a payload: the response, and what logs and metrics need.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// IDs to acknowledge, in input order, each once.
    pub succeeded: Vec<String>,
    /// Events not acknowledged: the sender should retry them.
    pub failed: Vec<EventFailure>,
    /// Events not published for good (acknowledged, unless superseded by a published event
    /// with the same ID).
    pub dropped: Vec<DroppedEvent>,
    /// Events repeating an earlier ID of the payload.
    pub duplicates: usize,
    /// How many events the sender submitted.
    pub submitted: usize,
    /// The first oversized event, for the log.
    pub oversized: Option<OversizedSample>,
    /// The overall result.
    pub result: BatchResult,
}

/// Combines the pipeline's decisions and the sinks' outcomes into the payload's summary.
///
/// `outcomes[i]` is the outcome of `payload.events[i]`.
pub fn summarize(
    payload: PreparedPayload,
    outcomes: &[PublishOutcome],
    source: &Source,
) -> Summary {
    let acknowledge_permanent = source.acknowledges_permanent_failures();
    let mut summary = Summary {
        succeeded: Vec::with_capacity(payload.slots.len()),
        failed: Vec::new(),
        dropped: Vec::new(),
        duplicates: 0,
        submitted: payload.slots.len(),
        oversized: payload.oversized,
        result: BatchResult::Success,
    };
    let mut events = payload.events;
    for mut slot in payload.slots {
        if let Disposition::Publish(index) = slot.disposition
            && let Some(event) = events.get_mut(index)
        {
            slot.id = std::mem::take(&mut event.id);
            slot.feature = std::mem::take(&mut event.feature);
            slot.action = std::mem::take(&mut event.action);
        }
        let (error, retryable, reason) = match slot.disposition {
            Disposition::Duplicate => {
                summary.duplicates += 1;
                continue;
            }
            Disposition::Drop(reason, detail) => {
                summary.dropped.push(DroppedEvent {
                    id: slot.id.clone(),
                    reason,
                    detail,
                });
                summary.succeeded.push(slot.id);
                continue;
            }
            Disposition::Superseded(reason, detail) => {
                // Acknowledged, if at all, through the later event with its ID.
                summary.dropped.push(DroppedEvent {
                    id: slot.id,
                    reason,
                    detail,
                });
                continue;
            }
            Disposition::Invalid(error) | Disposition::Unrenderable(error) => {
                (error, false, DropReason::Invalid)
            }
            Disposition::Publish(index) => match outcomes.get(index) {
                Some(PublishOutcome::Delivered) => {
                    summary.succeeded.push(slot.id);
                    continue;
                }
                Some(PublishOutcome::Retryable(error)) => {
                    (error.message.clone(), true, DropReason::Rejected)
                }
                Some(PublishOutcome::Permanent(error)) => {
                    (error.message.clone(), false, DropReason::Rejected)
                }
                None => (
                    "no outcome reported by the sink".into(),
                    true,
                    DropReason::Rejected,
                ),
            },
        };
        if !retryable && acknowledge_permanent {
            summary.dropped.push(DroppedEvent {
                id: slot.id.clone(),
                reason,
                detail: error,
            });
            summary.succeeded.push(slot.id);
        } else {
            summary.failed.push(EventFailure {
                id: slot.id,
                feature: slot.feature,
                action: slot.action,
                error,
                retryable,
            });
        }
    }
    let considered = summary.succeeded.len() + summary.failed.len();
    summary.result = if summary.failed.is_empty() {
        BatchResult::Success
    } else if summary.failed.len() == considered {
        BatchResult::CompleteFailure
    } else {
        BatchResult::PartialFailure
    };
    summary
}
