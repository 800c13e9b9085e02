//! Old senders keep working: a request encoded by the 2023-10 protocol shape, sent as raw bytes
//! over the stream, is decoded, migrated and published.

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use prost::Message;
use telemetry_gateway_proto::v1::RecordEventsRequest;
use telemetry_gateway_proto::v1::record_events_request::Payload;
use telemetry_gateway_testkit::client::metadata_message;
use telemetry_gateway_testkit::events::unlicensed_metadata;
use telemetry_gateway_testkit::{RecordingSink, record_events};

use support::{TestGateway, payload_json};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/backcompat")
        .join(name);
    std::fs::read(path).expect("fixture file")
}

#[tokio::test]
async fn an_old_shape_events_request_is_migrated_and_published() {
    let old = RecordEventsRequest::decode(fixture("2023-10-24-events-request.pb").as_slice())
        .expect("the old shape decodes");
    let Some(Payload::Events(payload)) = &old.payload else {
        panic!("the fixture is an events payload");
    };
    let ids: Vec<String> = payload.events.iter().map(|e| e.id.clone()).collect();

    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start(sink.clone()).await;
    let responses = record_events(
        &mut gateway.client().await,
        vec![metadata_message(unlicensed_metadata("old-instance")), old],
    )
    .await
    .expect("accepted");
    assert_eq!(responses[0].succeeded_events, ids);

    let published: Vec<serde_json::Value> = sink.delivered().iter().map(payload_json).collect();
    assert_eq!(published.len(), 3);
    let first = &published[0]["event"]["parameters"];
    assert_eq!(
        first["metadata"],
        serde_json::json!({"count": 4, "latency": 123})
    );
    assert!(
        first.get("legacyMetadata").is_none(),
        "legacy metadata is cleared"
    );
    let third = &published[2]["event"]["parameters"];
    assert_eq!(
        third["metadata"]["big"],
        serde_json::json!(9007199254740992_u64)
    );
    assert_eq!(third["metadata"]["delta"], -5);
    assert_eq!(
        sink.delivered()[2].attributes["event.recordsPrivateMetadataTranscript"],
        "true"
    );
    assert_eq!(
        sink.delivered()[2].attributes["event.hasPrivateMetadata"],
        "true"
    );
}

#[tokio::test]
async fn old_shape_metadata_identifies_the_sender() {
    let old = RecordEventsRequest::decode(fixture("2023-10-24-metadata-unlicensed.pb").as_slice())
        .expect("the old shape decodes");
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start(sink.clone()).await;
    let events = telemetry_gateway_testkit::client::events_message(
        telemetry_gateway_testkit::events::simple_events("o", 1),
    );
    let responses = record_events(&mut gateway.client().await, vec![old, events])
        .await
        .expect("accepted");
    assert_eq!(responses[0].succeeded_events, vec!["o-0"]);
    let published = payload_json(&sink.delivered()[0]);
    assert_eq!(
        published["metadata"]["identifier"]["unlicensedInstance"]["instanceId"],
        "instance-2"
    );
}
