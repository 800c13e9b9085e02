//! What is published (`docs/compatibility.md` §4): the exact payload bytes and attributes of a rich
//! event.

mod support;

use std::sync::Arc;

use telemetry_gateway_proto::json::to_canonical_json;
use telemetry_gateway_proto::migrate_legacy_metadata;
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{rich_event, unlicensed_metadata};
use telemetry_gateway_testkit::json::normalized_numbers as normalized;
use telemetry_gateway_testkit::{RecordingSink, record_events};

use support::TestGateway;

#[tokio::test]
async fn a_rich_event_is_published_byte_for_byte() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start(sink.clone()).await;
    let responses = record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(unlicensed_metadata("instance-rich")),
            events_message(vec![rich_event()]),
        ],
    )
    .await
    .expect("accepted");
    assert_eq!(responses[0].succeeded_events, vec![rich_event().id]);

    let published = sink.delivered().pop().expect("one event published");
    let payload = String::from_utf8(published.payload.to_vec()).expect("UTF-8 JSON");
    insta::assert_snapshot!("rich_event_payload", payload);
    insta::assert_json_snapshot!("rich_event_attributes", published.attributes);

    // The fast renderer agrees with prost-reflect's independent proto3 JSON mapping.
    let mut migrated = rich_event();
    migrate_legacy_metadata(&mut migrated);
    let expected = serde_json::json!({
        "event": serde_json::from_str::<serde_json::Value>(&to_canonical_json(&migrated).expect("renders"))
            .expect("JSON"),
        "metadata": serde_json::from_str::<serde_json::Value>(
            &to_canonical_json(&unlicensed_metadata("instance-rich")).expect("renders"),
        )
        .expect("JSON"),
    });
    let actual: serde_json::Value = serde_json::from_str(&payload).expect("JSON");
    assert_eq!(normalized(actual), normalized(expected));
}

#[tokio::test]
async fn payload_keys_come_in_declaration_order_and_compact() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start(sink.clone()).await;
    record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(unlicensed_metadata("i")),
            events_message(vec![rich_event()]),
        ],
    )
    .await
    .expect("accepted");
    let payload = String::from_utf8(sink.delivered()[0].payload.to_vec()).expect("UTF-8");
    assert!(payload.starts_with(r#"{"event":{"id":"#), "{payload}");
    assert!(
        !payload.contains(": ") && !payload.contains('\n'),
        "compact: {payload}"
    );
    let order = [
        r#""id":"#,
        r#""timestamp":"#,
        r#""feature":"#,
        r#""action":"#,
        r#""source":"#,
        r#""parameters":"#,
        r#""user":"#,
        r#""featureFlags":"#,
        r#""marketingTracking":"#,
        r#""interaction":"#,
        r#""metadata":{"requestId""#,
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|key| {
            payload
                .find(key)
                .unwrap_or_else(|| panic!("{key} missing in {payload}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    // EventParameters declares metadata (5) before private_metadata (3): Go's protojson
    // follows declaration order, not field numbers.
    let metadata_at = payload
        .find(r#""metadata":{"infinite""#)
        .expect("metadata map");
    let private_at = payload
        .find(r#""privateMetadata""#)
        .expect("private metadata");
    assert!(metadata_at < private_at);
}
