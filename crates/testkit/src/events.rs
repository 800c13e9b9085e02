//! Builders for events and request metadata.

use std::collections::BTreeMap;

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Timestamp, Value};
use telemetry_gateway_proto::v1::event_interaction::Geolocation;
use telemetry_gateway_proto::v1::event_source::{Client, Server};
use telemetry_gateway_proto::v1::identifier::{
    Identifier as IdentifierKind, LicensedInstanceIdentifier, ManagedServiceIdentifier,
    UnlicensedInstanceIdentifier,
};
use telemetry_gateway_proto::v1::{
    Event, EventBillingMetadata, EventFeatureFlags, EventInteraction, EventMarketingTracking,
    EventParameters, EventSource, EventUser, Identifier, RecordEventsRequestMetadata,
};

/// 2023-10-24T12:34:56.789Z, a fixed time for deterministic snapshots.
pub const FIXED_TIME: Timestamp = Timestamp {
    seconds: 1_698_150_896,
    nanos: 789_000_000,
};

/// A small valid event with the given ID.
pub fn simple_event(id: impl Into<String>) -> Event {
    Event {
        id: id.into(),
        timestamp: Some(FIXED_TIME),
        feature: "cody.chat".into(),
        action: "submitted".into(),
        source: Some(EventSource {
            server: Some(Server {
                version: "5.3.0".into(),
            }),
            client: Some(Client {
                name: "VSCODE_CODY_EXTENSION".into(),
                version: Some("1.2.3".into()),
            }),
        }),
        parameters: Some(EventParameters {
            version: 1,
            metadata: BTreeMap::from([("latency".into(), 12.0)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `n` valid events with IDs `<prefix>-0` .. `<prefix>-<n-1>`.
pub fn simple_events(prefix: &str, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| simple_event(format!("{prefix}-{i}")))
        .collect()
}

/// A valid event whose rendered JSON passes the 10 MB limit on a published payload (its private
/// metadata holds a 10 MB string): rendered, then dropped as oversized.
pub fn oversized_event(id: impl Into<String>) -> Event {
    let mut event = simple_event(id);
    if let Some(parameters) = event.parameters.as_mut() {
        parameters.private_metadata = Some(Struct {
            fields: BTreeMap::from([(
                "blob".into(),
                value(Kind::StringValue("x".repeat(10_000_000))),
            )]),
        });
    }
    event
}

fn value(kind: Kind) -> Value {
    Value { kind: Some(kind) }
}

/// An event that sets every field, including `optional` fields set to zero values, an int64 user
/// ID beyond 2^53, NaN and infinite metadata, legacy metadata, and a nested Struct with every kind
/// of value and characters that need escaping.
pub fn rich_event() -> Event {
    let nested = Struct {
        fields: BTreeMap::from([
            (
                "list".into(),
                value(Kind::ListValue(ListValue {
                    values: vec![
                        value(Kind::NumberValue(1.0)),
                        value(Kind::NumberValue(-2.5e-9)),
                        value(Kind::StringValue("two".into())),
                        value(Kind::BoolValue(false)),
                        value(Kind::NullValue(0)),
                        value(Kind::StructValue(Struct::default())),
                    ],
                })),
            ),
            (
                "deep".into(),
                value(Kind::StructValue(Struct {
                    fields: BTreeMap::from([("k".into(), value(Kind::NumberValue(1e21)))]),
                })),
            ),
        ]),
    };
    Event {
        id: "0192e4c5-5c1e-7a3b-9f00-rich000000001".into(),
        timestamp: Some(Timestamp {
            seconds: 1_698_150_896,
            nanos: 123_456_000,
        }),
        feature: "cody.chat-panel".into(),
        action: "submitted".into(),
        source: Some(EventSource {
            server: Some(Server {
                version: "5.3.0+build.7".into(),
            }),
            client: Some(Client {
                name: "VSCODE_CODY_EXTENSION".into(),
                version: Some(String::new()),
            }),
        }),
        parameters: Some(EventParameters {
            version: 3,
            legacy_metadata: BTreeMap::from([("legacyCount".into(), 9_007_199_254_740_993)]),
            metadata: BTreeMap::from([
                ("latency".into(), 12.5),
                ("zero".into(), 0.0),
                ("notANumber".into(), f64::NAN),
                ("infinite".into(), f64::INFINITY),
                ("recordsPrivateMetadataTranscript".into(), 1.0),
                ("recordsPrivateMetadataX".into(), 1.0),
                ("recordsPrivateMetadataOff".into(), 0.0),
            ]),
            private_metadata: Some(Struct {
                fields: BTreeMap::from([
                    (
                        "model".into(),
                        value(Kind::StringValue(
                            "claude <3> & \"friends\"\n\u{2028}".into(),
                        )),
                    ),
                    ("nested".into(), value(Kind::StructValue(nested))),
                    ("count".into(), value(Kind::NumberValue(42.0))),
                ]),
            }),
            billing_metadata: Some(EventBillingMetadata {
                product: "cody".into(),
                category: "core".into(),
            }),
        }),
        user: Some(EventUser {
            user_id: Some(9_007_199_254_740_993),
            anonymous_user_id: Some(String::new()),
            sams_external_id: Some("018b6f3a-0000-7000-8000-00000000abcd".into()),
        }),
        feature_flags: Some(EventFeatureFlags {
            flags: BTreeMap::from([
                ("b-flag".into(), "false".into()),
                ("a-flag".into(), "true".into()),
            ]),
        }),
        marketing_tracking: Some(EventMarketingTracking {
            url: Some("https://sourcegraph.com/search?q=a&b=<c>".into()),
            first_source_url: Some(String::new()),
            cohort_id: Some("cohort".into()),
            referrer: Some("https://example.com".into()),
            last_source_url: Some("https://example.com/last".into()),
            device_session_id: Some("session-1".into()),
            session_referrer: Some(String::new()),
            session_first_url: Some("https://example.com/first".into()),
        }),
        interaction: Some(EventInteraction {
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            interaction_id: Some(String::new()),
            geolocation: Some(Geolocation {
                country_code: "NL".into(),
            }),
        }),
    }
}

/// Metadata for an unlicensed instance.
pub fn unlicensed_metadata(instance_id: &str) -> RecordEventsRequestMetadata {
    metadata(IdentifierKind::UnlicensedInstance(
        UnlicensedInstanceIdentifier {
            instance_id: instance_id.into(),
            external_url: "https://sourcegraph.example.com".into(),
        },
    ))
}

/// Metadata for a licensed instance presenting `license_key`.
pub fn licensed_metadata(license_key: &str) -> RecordEventsRequestMetadata {
    metadata(IdentifierKind::LicensedInstance(
        LicensedInstanceIdentifier {
            license_key: license_key.into(),
            instance_id: "instance-licensed".into(),
            external_url: "https://licensed.example.com".into(),
        },
    ))
}

/// Metadata for a managed service.
pub fn managed_metadata(service_id: &str) -> RecordEventsRequestMetadata {
    metadata(IdentifierKind::ManagedService(ManagedServiceIdentifier {
        service_id: service_id.into(),
        service_environment: Some("dev".into()),
    }))
}

/// Metadata with the given identifier and request ID `test-request`.
pub fn metadata(identifier: IdentifierKind) -> RecordEventsRequestMetadata {
    RecordEventsRequestMetadata {
        request_id: "test-request".into(),
        identifier: Some(Identifier {
            identifier: Some(identifier),
        }),
    }
}
