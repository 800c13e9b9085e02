//! Dead letters: every event refused for good, written (best effort, off the acknowledgement
//! path) to a destination sink with why, from whom and when (`docs/operations.md#dead-letters`).
//!
//! A dead letter is one JSON object (one NDJSON line, or one Pub/Sub message):
//!
//! ```text
//! {"reason":"invalid","message":"event ID is required","event_id":"","feature":"…","action":"…",
//!  "event_protobuf":"<base64>","event_protobuf_bytes":123,"event_json":{…}|null,
//!  "truncated":false,"source":"licensed_instance","license_fingerprint":"sha256:…"|null,
//!  "metadata":{…}|null,"request_id":"…","gateway_version":"0.1.0","time":"2026-…Z"}
//! ```
//!
//! `metadata` is the stream's `RecordEventsRequestMetadata` as proto3 JSON with the license key
//! replaced by its fingerprint: a dead letter never holds a raw license key. A record larger than
//! the cap loses `event_json` first, then the tail of `event_protobuf` (and `metadata` when that
//! alone takes more than half the cap), and says so with `"truncated":true`.
//!
//! [`DeadLetters::offer`] never waits: records go to a queue bounded in bytes, and a background
//! task hands them to the destination in batches. A full queue or a failing destination costs
//! dead letters (counted in `telemetry-gateway.dead_letters.failed`), never an acknowledgement.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use telemetry_gateway_proto::v1::identifier::Identifier;
use telemetry_gateway_proto::v1::{Event, RecordEventsRequestMetadata};
use telemetry_gateway_proto::{render_event, render_metadata};
use telemetry_gateway_sink::{Attributes, EventSink, PreparedEvent, PublishOutcome, SinkError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::pipeline::{Refusal, RefusalReason, RefusedEvent};
use crate::source::Source;

/// The default cap on one dead letter: 1 MiB.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;

/// The default room for dead letters waiting to be written: 16 MiB.
pub const DEFAULT_QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// The smallest record cap accepted: room for every other field, each at its longest.
pub const MIN_RECORD_BYTES: usize = 64 * 1024;

/// Sender-controlled strings (IDs, feature, action, request ID, messages) longer than this are cut
/// (with `…` appended) in dead letters.
const MAX_FIELD_BYTES: usize = 1024;

/// Pub/Sub attribute values are limited to 1024 bytes.
const MAX_ATTRIBUTE_BYTES: usize = 256;

/// Records handed to the destination in one publish, at most.
const BATCH: usize = 256;

/// A failing destination is logged at most this often.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How dead letters are bounded.
#[derive(Debug, Clone)]
pub struct DeadLetterOptions {
    /// The most bytes one record may take; larger ones are truncated.
    pub max_record_bytes: usize,
    /// The most bytes of records waiting for the destination; beyond, records are dropped.
    pub queue_bytes: usize,
    /// The gateway version written in each record.
    pub gateway_version: String,
}

impl Default for DeadLetterOptions {
    fn default() -> Self {
        DeadLetterOptions {
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            gateway_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

struct Queued {
    record: PreparedEvent,
    reason: RefusalReason,
    _room: OwnedSemaphorePermit,
}

/// The dead-letter writer: a bounded queue in front of a destination sink.
pub struct DeadLetters {
    destination: Arc<dyn EventSink>,
    options: DeadLetterOptions,
    metrics: Metrics,
    room: Arc<Semaphore>,
    queue: Mutex<Option<mpsc::UnboundedSender<Queued>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("destination", &self.destination.describe())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// Starts the writer task for `destination` (must run inside a Tokio runtime).
    pub fn start(
        destination: Arc<dyn EventSink>,
        options: DeadLetterOptions,
        metrics: Metrics,
    ) -> DeadLetters {
        let options = DeadLetterOptions {
            max_record_bytes: options.max_record_bytes.max(MIN_RECORD_BYTES),
            queue_bytes: options
                .queue_bytes
                .clamp(options.max_record_bytes, u32::MAX as usize),
            ..options
        };
        let (queue, records) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_all(
            Arc::clone(&destination),
            records,
            metrics.clone(),
        ));
        DeadLetters {
            room: Arc::new(Semaphore::new(options.queue_bytes)),
            destination,
            options,
            metrics,
            queue: Mutex::new(Some(queue)),
            writer: Mutex::new(Some(writer)),
        }
    }

    /// Where dead letters go, for the start-up log.
    pub fn describe(&self) -> String {
        self.destination.describe()
    }

    /// The destination's health (not part of the gateway's: dead letters are best effort).
    pub async fn health(&self) -> Result<(), SinkError> {
        self.destination.health().await
    }

    /// Queues a dead letter for each refusal of a payload from `source`; never waits.
    pub fn offer(&self, source: &Source, refusals: Vec<Refusal>) {
        if refusals.is_empty() {
            return;
        }
        let Some(queue) = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        else {
            for refusal in &refusals {
                self.metrics.dead_letter_failed(refusal.reason, "shut_down");
            }
            return;
        };
        let time = chrono::Utc::now();
        for refusal in refusals {
            let reason = refusal.reason;
            let record = build(source, refusal, &self.options, time);
            let cost = u32::try_from(record.payload.len()).unwrap_or(u32::MAX);
            let Ok(room) = Arc::clone(&self.room).try_acquire_many_owned(cost) else {
                self.metrics.dead_letter_failed(reason, "queue_full");
                continue;
            };
            let queued = Queued {
                record,
                reason,
                _room: room,
            };
            if queue.send(queued).is_err() {
                self.metrics.dead_letter_failed(reason, "shut_down");
            }
        }
    }

    /// Stops taking dead letters, writes what is queued (until `deadline`) and shuts the
    /// destination down.
    pub async fn close(&self, deadline: tokio::time::Instant) -> Result<(), SinkError> {
        drop(
            self.queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer
            && tokio::time::timeout_at(deadline, writer).await.is_err()
        {
            tracing::warn!("dead letters still queued at shutdown were not written");
        }
        self.destination.shutdown().await
    }
}

/// The writer task: hands queued records to `destination` in batches until the queue closes.
async fn write_all(
    destination: Arc<dyn EventSink>,
    mut records: mpsc::UnboundedReceiver<Queued>,
    metrics: Metrics,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut last_logged: Option<Instant> = None;
    while records.recv_many(&mut batch, BATCH).await > 0 {
        let events: Vec<PreparedEvent> = batch.iter().map(|q| q.record.clone()).collect();
        let outcomes = destination.publish(&events).await;
        let mut first_error = None;
        let mut failed = 0usize;
        for (index, queued) in batch.iter().enumerate() {
            match outcomes.get(index) {
                Some(PublishOutcome::Delivered) => metrics.dead_letter_written(queued.reason),
                other => {
                    failed += 1;
                    if first_error.is_none() {
                        first_error = Some(match other {
                            Some(PublishOutcome::Retryable(e) | PublishOutcome::Permanent(e)) => {
                                e.message.clone()
                            }
                            _ => "no outcome reported".to_string(),
                        });
                    }
                    metrics.dead_letter_failed(queued.reason, "destination");
                }
            }
        }
        if let Some(error) = first_error
            && last_logged.is_none_or(|at| at.elapsed() >= FAILURE_LOG_INTERVAL)
        {
            last_logged = Some(Instant::now());
            tracing::warn!(
                destination = %destination.describe(),
                failed,
                error = %error,
                "dead letters could not be written (logged at most every 10s; see telemetry-gateway.dead_letters.failed)"
            );
        }
        batch.clear();
    }
}

/// The dead letter of `refusal`, at most `options.max_record_bytes` long.
fn build(
    source: &Source,
    refusal: Refusal,
    options: &DeadLetterOptions,
    time: chrono::DateTime<chrono::Utc>,
) -> PreparedEvent {
    let (event, event_json) = match refusal.event {
        RefusedEvent::Decoded(event) => {
            let mut json = Vec::new();
            let rendered = render_event(&event, &mut json).is_ok().then_some(json);
            (*event, rendered)
        }
        RefusedEvent::Published(prepared) => {
            let json = event_json_of(&prepared.payload);
            let event = json
                .as_deref()
                .and_then(|json| std::str::from_utf8(json).ok())
                .and_then(|json| telemetry_gateway_proto::from_json::<Event>(json).ok())
                .unwrap_or_else(|| Event {
                    id: prepared.id.clone(),
                    feature: prepared.feature.clone(),
                    action: prepared.action.clone(),
                    timestamp: Some(prepared.timestamp),
                    ..Event::default()
                });
            (event, json)
        }
    };
    let protobuf = prost::Message::encode_to_vec(&event);
    let (metadata, fingerprint) = metadata_json(source);
    let fields = Fields {
        reason: refusal.reason.code(),
        message: &refusal.message,
        event: &event,
        fingerprint: fingerprint.as_deref(),
        publisher: source.publisher_source(),
        request_id: &source.request_id,
        version: &options.gateway_version,
        time: time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    };
    let payload = fields.render(
        &protobuf,
        event_json.as_deref(),
        Some(&metadata),
        options.max_record_bytes,
    );
    let mut attributes = Attributes::new();
    attributes.insert("deadletter.reason".into(), refusal.reason.code().into());
    attributes.insert(
        "publisher.source".into(),
        cut(source.publisher_source(), MAX_ATTRIBUTE_BYTES),
    );
    attributes.insert(
        "event.feature".into(),
        cut(&event.feature, MAX_ATTRIBUTE_BYTES),
    );
    attributes.insert(
        "event.action".into(),
        cut(&event.action, MAX_ATTRIBUTE_BYTES),
    );
    PreparedEvent {
        id: cut(&event.id, MAX_FIELD_BYTES),
        feature: cut(&event.feature, MAX_FIELD_BYTES),
        action: cut(&event.action, MAX_FIELD_BYTES),
        timestamp: event.timestamp.unwrap_or_default(),
        payload: Bytes::from(payload),
        attributes,
    }
}

/// The `event` and `metadata` members of a published payload `{"event":…,"metadata":…}` (as
/// the pipeline writes it), as their JSON texts.
pub fn payload_parts(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    const METADATA: &[u8] = br#","metadata":"#;
    let rest = payload.strip_prefix(br#"{"event":"#)?.strip_suffix(b"}")?;
    // The metadata object holds no such key, so the last occurrence separates the two.
    let at = rest
        .windows(METADATA.len())
        .rposition(|window| window == METADATA)?;
    Some((&rest[..at], &rest[at + METADATA.len()..]))
}

fn event_json_of(payload: &[u8]) -> Option<Vec<u8>> {
    payload_parts(payload).map(|(event, _)| event.to_vec())
}

/// The stream's metadata as proto3 JSON with the license key fingerprinted, and the fingerprint.
fn metadata_json(source: &Source) -> (Vec<u8>, Option<String>) {
    let Ok(mut metadata) = telemetry_gateway_proto::from_json::<RecordEventsRequestMetadata>(
        &String::from_utf8_lossy(source.metadata_json()),
    ) else {
        return (b"null".to_vec(), None);
    };
    let mut fingerprint = None;
    if let Some(Identifier::LicensedInstance(licensed)) = metadata
        .identifier
        .as_mut()
        .and_then(|identifier| identifier.identifier.as_mut())
    {
        // With `TELEMETRY_GATEWAY_EVENTS_FINGERPRINT_LICENSE_KEYS` it already is one.
        if !licensed.license_key.starts_with("sha256:") {
            licensed.license_key =
                telemetry_gateway_auth::license_key_fingerprint(&licensed.license_key);
        }
        fingerprint = Some(licensed.license_key.clone());
    }
    let mut json = Vec::new();
    render_metadata(&metadata, &mut json);
    (json, fingerprint)
}

/// The small fields of a record.
struct Fields<'a> {
    reason: &'a str,
    message: &'a str,
    event: &'a Event,
    fingerprint: Option<&'a str>,
    publisher: &'a str,
    request_id: &'a str,
    version: &'a str,
    time: String,
}

impl Fields<'_> {
    /// Renders the record within `max` bytes: without `event_json`, then with the protobuf cut,
    /// as far as needed; metadata taking more than half of `max` is left out.
    fn render(
        &self,
        protobuf: &[u8],
        event_json: Option<&[u8]>,
        metadata: Option<&[u8]>,
        max: usize,
    ) -> Vec<u8> {
        let base64 = base64::engine::general_purpose::STANDARD;
        let mut head = br#"{"reason":"#.to_vec();
        push_str(&mut head, self.reason);
        for (key, value) in [
            (&br#","message":"#[..], self.message),
            (br#","event_id":"#, &self.event.id),
            (br#","feature":"#, &self.event.feature),
            (br#","action":"#, &self.event.action),
        ] {
            head.extend_from_slice(key);
            push_str(&mut head, &cut(value, MAX_FIELD_BYTES));
        }
        head.extend_from_slice(br#","event_protobuf":""#);
        let mut source = br#","source":"#.to_vec();
        push_str(&mut source, &cut(self.publisher, MAX_FIELD_BYTES));
        source.extend_from_slice(br#","license_fingerprint":"#);
        match self.fingerprint {
            Some(fingerprint) => push_str(&mut source, &cut(fingerprint, MAX_FIELD_BYTES)),
            None => source.extend_from_slice(b"null"),
        }
        let mut tail = br#","request_id":"#.to_vec();
        push_str(&mut tail, &cut(self.request_id, MAX_FIELD_BYTES));
        tail.extend_from_slice(br#","gateway_version":"#);
        push_str(&mut tail, &cut(self.version, MAX_FIELD_BYTES));
        tail.extend_from_slice(br#","time":"#);
        push_str(&mut tail, &self.time);
        tail.push(b'}');
        let full_len = protobuf.len();
        // The keys and values around the three variable parts: `","event_protobuf_bytes":N,
        // "event_json":…,"truncated":false,"metadata":…` with `null`s.
        let fixed = head.len() + source.len() + tail.len() + 96;

        let encoded_len = base64::encoded_len(protobuf.len(), true).unwrap_or(usize::MAX);
        let json_len = event_json.map_or(0, <[u8]>::len);
        let metadata_len = metadata.map_or(0, <[u8]>::len);
        let (mut event_json, mut metadata) = (event_json, metadata);
        if fixed + encoded_len + json_len + metadata_len > max {
            event_json = None;
        }
        // Metadata is small unless a sender made it huge: then it goes before the event does.
        if fixed + metadata_len > max / 2 {
            metadata = None;
        }
        let room = max.saturating_sub(fixed + metadata.map_or(0, <[u8]>::len));
        let protobuf = if encoded_len > room {
            // Whole base64 quanta: 3 bytes become 4 characters.
            &protobuf[..(room / 4 * 3).min(protobuf.len())]
        } else {
            protobuf
        };
        let truncated = protobuf.len() < full_len
            || (event_json.is_none() && json_len > 0)
            || (metadata.is_none() && metadata_len > 0);

        let mut out = head;
        out.extend_from_slice(base64.encode(protobuf).as_bytes());
        out.extend_from_slice(br#"","event_protobuf_bytes":"#);
        out.extend_from_slice(full_len.to_string().as_bytes());
        out.extend_from_slice(br#","event_json":"#);
        out.extend_from_slice(event_json.unwrap_or(b"null"));
        out.extend_from_slice(br#","truncated":"#);
        out.extend_from_slice(if truncated { b"true" } else { b"false" });
        out.extend_from_slice(&source);
        out.extend_from_slice(br#","metadata":"#);
        out.extend_from_slice(metadata.unwrap_or(b"null"));
        out.extend_from_slice(&tail);
        out
    }
}

fn push_str(out: &mut Vec<u8>, value: &str) {
    // Serializing a string cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// `value` cut to at most `max` bytes at a character boundary, with `…` appended when cut.
fn cut(value: &str, max: usize) -> String {
    if value.len() <= max {
        return value.to_string();
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}

#[cfg(test)]
mod tests {
    use telemetry_gateway_proto::v1::Identifier as IdentifierMessage;
    use telemetry_gateway_proto::v1::identifier::LicensedInstanceIdentifier;

    use super::*;
    use crate::source::SourceKind;

    fn licensed_source() -> Source {
        let metadata = RecordEventsRequestMetadata {
            request_id: "req-1".into(),
            identifier: Some(IdentifierMessage {
                identifier: Some(Identifier::LicensedInstance(LicensedInstanceIdentifier {
                    license_key: "raw-license-key".into(),
                    instance_id: "site-1".into(),
                    external_url: "https://sg.example.com".into(),
                })),
            }),
        };
        let kind = SourceKind::LicensedInstance {
            instance_id: "site-1".into(),
            external_url: "https://sg.example.com".into(),
            license: Box::default(),
        };
        Source::new(kind, &metadata)
    }

    fn event(id: &str, padding: usize) -> Event {
        Event {
            id: id.into(),
            feature: "cody.completion".into(),
            action: "accepted".into(),
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            source: Some(telemetry_gateway_proto::v1::EventSource {
                server: Some(telemetry_gateway_proto::v1::event_source::Server {
                    version: "x".repeat(padding),
                }),
                client: None,
            }),
            ..Event::default()
        }
    }

    fn record(refusal: Refusal, max: usize) -> (serde_json::Value, usize) {
        let options = DeadLetterOptions {
            max_record_bytes: max,
            ..DeadLetterOptions::default()
        };
        let time = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("valid");
        let built = build(&licensed_source(), refusal, &options, time);
        let len = built.payload.len();
        (
            serde_json::from_slice(&built.payload).expect("a record is JSON"),
            len,
        )
    }

    #[test]
    fn a_record_carries_the_event_reason_source_and_never_the_raw_license_key() {
        let original = event("e1", 10);
        let (json, _) = record(
            Refusal {
                reason: RefusalReason::Policy,
                message: "license disables export".into(),
                event: RefusedEvent::Decoded(Box::new(original.clone())),
            },
            DEFAULT_MAX_RECORD_BYTES,
        );
        let fingerprint = telemetry_gateway_auth::license_key_fingerprint("raw-license-key");
        assert_eq!(json["reason"], "policy");
        assert_eq!(json["message"], "license disables export");
        assert_eq!(json["event_id"], "e1");
        assert_eq!(json["truncated"], false);
        assert_eq!(json["source"], "licensed_instance");
        assert_eq!(json["license_fingerprint"], fingerprint.as_str());
        assert_eq!(
            json["metadata"]["identifier"]["licensedInstance"]["licenseKey"],
            fingerprint.as_str()
        );
        assert_eq!(json["request_id"], "req-1");
        assert_eq!(json["time"], "2027-01-15T08:00:00.000000Z");
        assert_eq!(json["event_json"]["feature"], "cody.completion");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(json["event_protobuf"].as_str().expect("a string"))
            .expect("base64");
        let decoded: Event = prost::Message::decode(bytes.as_slice()).expect("protobuf");
        assert_eq!(decoded, original);
        assert!(!json.to_string().contains("raw-license-key"));
    }

    #[test]
    fn a_rejected_event_is_recovered_from_its_published_payload() {
        let original = event("e2", 10);
        let mut json = Vec::new();
        render_event(&original, &mut json).expect("renders");
        let mut payload = br#"{"event":"#.to_vec();
        payload.extend_from_slice(&json);
        payload.extend_from_slice(br#","metadata":{"requestId":"r"}}"#);
        let prepared = PreparedEvent {
            id: "e2".into(),
            feature: original.feature.clone(),
            action: original.action.clone(),
            timestamp: original.timestamp.unwrap_or_default(),
            payload: Bytes::from(payload),
            attributes: Attributes::new(),
        };
        let (record, _) = record(
            Refusal {
                reason: RefusalReason::Rejected,
                message: "bigquery: invalid row".into(),
                event: RefusedEvent::Published(prepared),
            },
            DEFAULT_MAX_RECORD_BYTES,
        );
        assert_eq!(record["reason"], "rejected");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(record["event_protobuf"].as_str().expect("a string"))
            .expect("base64");
        let decoded: Event = prost::Message::decode(bytes.as_slice()).expect("protobuf");
        assert_eq!(decoded, original);
    }

    #[test]
    fn records_over_the_cap_are_truncated_with_a_marker() {
        let (json, len) = record(
            Refusal {
                reason: RefusalReason::Oversized,
                message: "event is oversized".into(),
                event: RefusedEvent::Decoded(Box::new(event("big", 200_000))),
            },
            MIN_RECORD_BYTES * 2,
        );
        assert!(len <= MIN_RECORD_BYTES * 2, "{len} bytes");
        assert_eq!(json["truncated"], true);
        assert_eq!(json["event_json"], serde_json::Value::Null);
        assert!(json["event_protobuf_bytes"].as_u64().expect("a number") > 200_000);
        assert_eq!(json["event_id"], "big");
    }

    #[test]
    fn hostile_strings_are_cut() {
        let mut hostile = event(&"i".repeat(100_000), 0);
        hostile.feature = "f".repeat(100_000);
        let (json, len) = record(
            Refusal {
                reason: RefusalReason::Invalid,
                message: "m".repeat(100_000),
                event: RefusedEvent::Decoded(Box::new(hostile)),
            },
            MIN_RECORD_BYTES,
        );
        assert!(len <= MIN_RECORD_BYTES, "{len} bytes");
        assert!(json["event_id"].as_str().expect("a string").len() <= MAX_FIELD_BYTES + 3);
        assert!(json["message"].as_str().expect("a string").ends_with('…'));
        assert_eq!(json["truncated"], true);
    }
}
