//! Events encoded by older protocol shapes still decode (`docs/compatibility.md` §1), checked
//! against an independent oracle: Python protobuf's JSON rendering of the same bytes
//! (`expected.json`).

use std::path::PathBuf;

use prost::Message;
use telemetry_gateway_proto::json::{render_event, to_canonical_json};
use telemetry_gateway_proto::v1::{Event, RecordEventsRequest};
use telemetry_gateway_testkit::json::normalized_numbers as normalized;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/backcompat")
}

fn expected() -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json is JSON")
}

fn parse(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("valid JSON")
}

#[test]
fn every_fixture_decodes_and_renders_like_the_oracle() {
    let mut checked = 0;
    for (name, entry) in expected() {
        if name.starts_with('_') {
            continue;
        }
        let bytes = std::fs::read(fixtures().join(&name)).expect("fixture file");
        let oracle = normalized(entry["json"].clone());
        let rendered = match entry["decodeAs"].as_str() {
            Some("telemetrygateway.v1.Event") => {
                let event = Event::decode(bytes.as_slice()).expect("decodes as Event");
                let mut fast = Vec::new();
                render_event(&event, &mut fast).expect("renders");
                let fast = parse(std::str::from_utf8(&fast).expect("UTF-8"));
                let reflected = parse(&to_canonical_json(&event).expect("renders"));
                assert_eq!(
                    normalized(fast),
                    normalized(reflected.clone()),
                    "{name}: fast vs reflect"
                );
                reflected
            }
            Some("telemetrygateway.v1.RecordEventsRequest") => {
                let request =
                    RecordEventsRequest::decode(bytes.as_slice()).expect("decodes as request");
                parse(&to_canonical_json(&request).expect("renders"))
            }
            other => panic!("{name}: unexpected decodeAs {other:?}"),
        };
        assert_eq!(normalized(rendered), oracle, "{name}");
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} fixtures checked");
}

#[test]
fn old_integer_metadata_lands_in_legacy_metadata() {
    let bytes = std::fs::read(fixtures().join("2023-10-24-event.pb")).expect("fixture");
    let event = Event::decode(bytes.as_slice()).expect("decodes");
    let parameters = event.parameters.expect("parameters");
    assert_eq!(parameters.legacy_metadata.get("latency"), Some(&123));
    assert_eq!(parameters.legacy_metadata.get("count"), Some(&4));
    assert!(parameters.metadata.is_empty());
    assert!(event.interaction.is_none());
    assert_eq!(event.user.and_then(|u| u.user_id), Some(42));
}

#[test]
fn interaction_from_the_2023_11_shape_decodes() {
    let bytes = std::fs::read(fixtures().join("2023-11-16-event.pb")).expect("fixture");
    let event = Event::decode(bytes.as_slice()).expect("decodes");
    let interaction = event.interaction.expect("interaction");
    assert_eq!(
        interaction.geolocation.map(|g| g.country_code).as_deref(),
        Some("NL")
    );
}
