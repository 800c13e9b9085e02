//! Realistic events of a chosen approximate encoded size, encoded once before a run.

use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message;
use prost_types::value::Kind;
use prost_types::{Struct, Timestamp, Value};
use telemetry_gateway_proto::v1::event_source::{Client, Server};
use telemetry_gateway_proto::v1::record_events_request::{EventsPayload, Payload};
use telemetry_gateway_proto::v1::{
    Event, EventFeatureFlags, EventParameters, EventSource, EventUser, RecordEventsRequest,
    RecordEventsRequestMetadata,
};

const FEATURES: &[&str] = &[
    "cody.chat",
    "cody.completion",
    "search.results",
    "blob.view",
    "codeintel.hover",
];
const ACTIONS: &[&str] = &["submitted", "suggested", "accepted", "viewed", "clicked"];

fn string(value: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(value.to_string())),
    }
}

/// An event like those real instances send: source, numeric metadata, private metadata, flags,
/// user; padded through a private-metadata string towards `target_bytes` encoded.
pub fn realistic_event(seq: u64, target_bytes: usize) -> Event {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let pick = |list: &[&'static str]| list[(seq as usize) % list.len()];
    let mut event = Event {
        id: telemetry_gateway_proto::new_event_id(),
        timestamp: Some(Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
        }),
        feature: pick(FEATURES).to_string(),
        action: pick(ACTIONS).to_string(),
        source: Some(EventSource {
            server: Some(Server {
                version: "5.9.1234".into(),
            }),
            client: Some(Client {
                name: "VSCODE_CODY_EXTENSION".into(),
                version: Some("1.40.2".into()),
            }),
        }),
        parameters: Some(EventParameters {
            version: 1,
            metadata: BTreeMap::from([
                ("latencyMs".into(), (seq % 900) as f64 + 0.5),
                ("tokens".into(), (seq % 4096) as f64),
                ("contextFiles".into(), (seq % 12) as f64),
                ("recordsPrivateMetadataTranscript".into(), 1.0),
            ]),
            private_metadata: Some(Struct {
                fields: BTreeMap::from([
                    ("model".into(), string("anthropic/claude-sonnet")),
                    ("languageId".into(), string("rust")),
                    ("text".into(), string("")),
                ]),
            }),
            ..Default::default()
        }),
        user: Some(EventUser {
            user_id: Some((seq % 10_000) as i64 + 1),
            anonymous_user_id: Some("c0ffee00-0000-4000-8000-000000000001".into()),
            sams_external_id: None,
        }),
        feature_flags: Some(EventFeatureFlags {
            flags: BTreeMap::from([
                ("cody-autocomplete-tracing".into(), "true".into()),
                ("search-new-ranking".into(), "false".into()),
            ]),
        }),
        ..Default::default()
    };
    let padding = target_bytes.saturating_sub(event.encoded_len());
    if let Some(private) = event
        .parameters
        .as_mut()
        .and_then(|p| p.private_metadata.as_mut())
    {
        private
            .fields
            .insert("text".into(), string(&"x".repeat(padding)));
    }
    event
}

/// An encoded events payload of `count` events starting at sequence number `first`.
pub fn encoded_payload(first: u64, count: usize, event_bytes: usize) -> Bytes {
    let events = (0..count as u64)
        .map(|i| realistic_event(first + i, event_bytes))
        .collect();
    let request = RecordEventsRequest {
        payload: Some(Payload::Events(EventsPayload { events })),
    };
    Bytes::from(request.encode_to_vec())
}

/// An encoded metadata message.
pub fn encoded_metadata(metadata: RecordEventsRequestMetadata) -> Bytes {
    let request = RecordEventsRequest {
        payload: Some(Payload::Metadata(metadata)),
    };
    Bytes::from(request.encode_to_vec())
}
