//! The wire reader (`wire::EventView::parse`) against prost: whatever it reads, prost decodes to
//! the same event; what protobuf encoders write (fields in any order, map entries unsorted and
//! repeated), it reads rather than leaving to prost.

use std::collections::BTreeMap;

use proptest::prelude::*;
use prost::Message;
use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};
use telemetry_gateway_proto::v1::event_source::{Client, Server};
use telemetry_gateway_proto::v1::{
    Event, EventBillingMetadata, EventFeatureFlags, EventInteraction, EventMarketingTracking,
    EventParameters, EventSource, EventUser, event_interaction::Geolocation,
};
use telemetry_gateway_proto::wire::{EventView, RawEvents, RawPayload, RawRecordEventsRequest};
use telemetry_gateway_proto::{render_event, render_view};

/// What prost decodes `bytes` to, viewed, and the fast path's reading, compared through `Debug`
/// (NaN equals itself there).
fn assert_reads_as_prost(bytes: &[u8]) -> bool {
    let Some(view) = EventView::parse(bytes) else {
        return false;
    };
    let decoded = Event::decode(bytes).expect("the fast path read bytes prost refuses");
    assert_eq!(
        format!("{view:?}"),
        format!("{:?}", EventView::from_event(&decoded))
    );
    let mut migrated = decoded.clone();
    telemetry_gateway_proto::migrate_legacy_metadata(&mut migrated);
    let mut view = view;
    view.migrate_legacy_metadata();
    assert_eq!(
        format!("{view:?}"),
        format!("{:?}", EventView::from_event(&migrated))
    );
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let ours = render_view(&view, &mut ours).map(|()| ours);
    let theirs = render_event(&migrated, &mut theirs).map(|()| theirs);
    assert_eq!(ours, theirs);
    true
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-c]{1,3}",
        "[a-zA-Z0-9.\\-]{0,12}",
        ".{0,6}",
    ]
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        (-1000i64..1000).prop_map(|n| n as f64),
        Just(f64::NAN),
        Just(-0.0),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(None),
        any::<i32>().prop_map(|n| Some(Kind::NullValue(n))),
        number().prop_map(|n| Some(Kind::NumberValue(n))),
        text().prop_map(|s| Some(Kind::StringValue(s))),
        any::<bool>().prop_map(|b| Some(Kind::BoolValue(b))),
    ];
    leaf.prop_map(|kind| Value { kind })
        .prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::btree_map(text(), inner.clone(), 0..4).prop_map(|fields| Value {
                    kind: Some(Kind::StructValue(Struct { fields }))
                }),
                prop::collection::vec(inner, 0..4).prop_map(|values| Value {
                    kind: Some(Kind::ListValue(ListValue { values }))
                }),
            ]
        })
}

prop_compose! {
    fn parameters()(
        version in any::<i32>(),
        legacy_metadata in prop::collection::btree_map(text(), any::<i64>(), 0..4),
        metadata in prop::collection::btree_map(text(), number(), 0..6),
        private_metadata in prop::option::of(
            prop::collection::btree_map(text(), value(), 0..4).prop_map(|fields| Struct { fields })
        ),
        billing_metadata in prop::option::of((text(), text()).prop_map(|(product, category)| {
            EventBillingMetadata { product, category }
        })),
    ) -> EventParameters {
        EventParameters { version, legacy_metadata, metadata, private_metadata, billing_metadata }
    }
}

prop_compose! {
    fn event()(
        id in text(),
        timestamp in prop::option::of((any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| Timestamp { seconds, nanos })),
        feature in text(),
        action in text(),
        source in prop::option::of((
            prop::option::of(text().prop_map(|version| Server { version })),
            prop::option::of((text(), prop::option::of(text()))
                .prop_map(|(name, version)| Client { name, version })),
        ).prop_map(|(server, client)| EventSource { server, client })),
        parameters in prop::option::of(parameters()),
        user in prop::option::of((
            prop::option::of(any::<i64>()), prop::option::of(text()), prop::option::of(text())
        ).prop_map(|(user_id, anonymous_user_id, sams_external_id)| EventUser {
            user_id, anonymous_user_id, sams_external_id,
        })),
        feature_flags in prop::option::of(prop::collection::btree_map(text(), text(), 0..4)
            .prop_map(|flags| EventFeatureFlags { flags })),
        tracking in prop::option::of(prop::collection::vec(prop::option::of(text()), 8)),
        interaction in prop::option::of((
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(text().prop_map(|country_code| Geolocation { country_code })),
        ).prop_map(|(trace_id, interaction_id, geolocation)| EventInteraction {
            trace_id, interaction_id, geolocation,
        })),
    ) -> Event {
        let marketing_tracking = tracking.map(|t| EventMarketingTracking {
            url: t[0].clone(),
            first_source_url: t[1].clone(),
            cohort_id: t[2].clone(),
            referrer: t[3].clone(),
            last_source_url: t[4].clone(),
            device_session_id: t[5].clone(),
            session_referrer: t[6].clone(),
            session_first_url: t[7].clone(),
        });
        Event {
            id, timestamp, feature, action, source, parameters, user, feature_flags,
            marketing_tracking, interaction,
        }
    }
}

/// A length-delimited field.
fn field(tag: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// The top-level fields of an encoding, each whole.
fn split_fields(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let before = bytes;
        let (tag, wire_type) = prost::encoding::decode_key(&mut bytes).expect("key");
        prost::encoding::skip_field(wire_type, tag, &mut bytes, Default::default()).expect("field");
        fields.push(before[..before.len() - bytes.len()].to_vec());
    }
    fields
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn canonical_encodings_are_read_as_prost_decodes_them(event in event()) {
        prop_assert!(assert_reads_as_prost(&event.encode_to_vec()), "left to prost: {event:?}");
    }

    /// Fields in any order, map entries unsorted with repeated keys (the last wins), unknown
    /// fields anywhere.
    #[test]
    fn any_field_order_is_read_as_prost_decodes_it(
        event in event(),
        extra_metadata in prop::collection::vec((text(), number()), 0..6),
        seed in any::<u64>(),
    ) {
        let mut rng = seed;
        let mut next = move |n: usize| {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (rng >> 33) as usize % n.max(1)
        };
        let mut without_parameters = event.clone();
        let parameters = without_parameters.parameters.take();
        let mut fields = split_fields(&without_parameters.encode_to_vec());
        if let Some(parameters) = parameters {
            let mut inner = split_fields(&parameters.encode_to_vec());
            for (key, value) in extra_metadata {
                let one = EventParameters {
                    metadata: BTreeMap::from([(key, value)]),
                    ..Default::default()
                };
                inner.push(one.encode_to_vec());
            }
            // An unknown field, skipped by both.
            inner.push(field(99, b"unknown"));
            for i in (1..inner.len()).rev() {
                inner.swap(i, next(i + 1));
            }
            fields.push(field(6, &inner.concat()));
        }
        fields.push(field(77, b"also unknown"));
        for i in (1..fields.len()).rev() {
            fields.swap(i, next(i + 1));
        }
        prop_assert!(assert_reads_as_prost(&fields.concat()));
    }

    /// Arbitrary bytes: whatever the fast path reads, prost decodes the same way.
    #[test]
    fn arbitrary_bytes_are_never_read_differently(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        assert_reads_as_prost(&bytes);
    }

    /// A canonical event with one byte changed.
    #[test]
    fn mutated_events_are_never_read_differently(event in event(), at in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = event.encode_to_vec();
        if !bytes.is_empty() {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        assert_reads_as_prost(&bytes);
    }
}

#[test]
fn a_repeated_message_field_is_left_to_prost() {
    let event = Event {
        id: "a".into(),
        source: Some(EventSource {
            server: Some(Server {
                version: "1".into(),
            }),
            client: None,
        }),
        ..Default::default()
    };
    let mut bytes = event.encode_to_vec();
    // The same field again: protobuf merges the two.
    bytes.extend(field(5, &EventSource::default().encode_to_vec()));
    assert!(EventView::parse(&bytes).is_none());
    assert!(Event::decode(bytes.as_slice()).is_ok());
}

#[test]
fn requests_keep_their_events_as_wire_bytes() {
    let events: Vec<Event> = (0..3)
        .map(|i| Event {
            id: format!("e{i}"),
            ..Default::default()
        })
        .collect();
    let raw = RawEvents::from_events(&events);
    assert_eq!(raw.len(), 3);
    for (raw, event) in raw.iter().zip(&events) {
        assert_eq!(raw.decode().expect("decodes"), *event);
        assert_eq!(raw.view().expect("plain").id, event.id);
    }
    assert!(raw.decode_error().is_none());
}

#[test]
fn a_request_with_its_payload_twice_is_decoded_by_prost() {
    use telemetry_gateway_proto::v1::RecordEventsRequest;
    use telemetry_gateway_proto::v1::record_events_request::{EventsPayload, Payload};
    let one = |id: &str| {
        RecordEventsRequest {
            payload: Some(Payload::Events(EventsPayload {
                events: vec![Event {
                    id: id.into(),
                    ..Default::default()
                }],
            })),
        }
        .encode_to_vec()
    };
    // Two events payloads in one message merge: both events.
    let bytes = [one("a"), one("b")].concat();
    let Ok(RawRecordEventsRequest {
        payload: Some(RawPayload::Events(events)),
    }) = RawRecordEventsRequest::decode(bytes.into())
    else {
        panic!("events expected");
    };
    let ids: Vec<String> = events
        .iter()
        .map(|e| e.decode().expect("event").id)
        .collect();
    assert_eq!(ids, ["a", "b"]);
}

#[test]
fn an_undecodable_event_is_found_late_with_prosts_error() {
    use telemetry_gateway_proto::v1::RecordEventsRequest;
    // Event.id (field 1) holding invalid UTF-8.
    let event = field(1, &[0xff, 0xfe]);
    let payload = field(1, &event);
    let request = field(2, &payload);
    let raw =
        RawRecordEventsRequest::decode(request.clone().into()).expect("events are kept encoded");
    let Some(RawPayload::Events(events)) = raw.payload else {
        panic!("events expected");
    };
    assert!(events.iter().next().expect("one").view().is_none());
    let expected = RecordEventsRequest::decode(request.as_slice()).expect_err("invalid");
    assert_eq!(
        events.decode_error().map(|e| e.to_string()),
        Some(expected.to_string())
    );
}
