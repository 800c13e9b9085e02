//! What a message costs once decoded: the cost model of docs/security.md.

use telemetry_gateway_proto::v1::RecordEventsRequest;

use crate::skim::{Root, Shape, Skim, SkimError};

/// How many bytes of memory one decoded byte of a message costs while it is processed: tonic's
/// receive buffer, the decoded events, their rendered JSON and the sink's copy. Measured with the
/// memory tests (crates/gateway/tests/memory.rs, hostile.rs); see docs/security.md.
pub const WEIGHT: usize = 4;

/// What one event costs beyond its bytes: the decoded `Event`, its rendered envelope, its
/// attributes and its slot in the summary.
pub const EVENT_COST: usize = 1024;

/// What one nested message (a `Struct`, a `Value`, a map entry, …) costs beyond its bytes once
/// decoded and rendered.
pub const MESSAGE_COST: usize = 256;

/// When a payload arrives before the handler has rendered the stream's metadata, the rendered
/// metadata is priced at this many times the metadata message's wire length (JSON escapes).
pub(crate) const UNKNOWN_METADATA_FACTOR: usize = 6;

/// The memory a message costs once decoded: see the module documentation.
pub fn message_cost(decoded_len: usize, shape: Shape, metadata_json_len: usize) -> usize {
    decoded_len
        .saturating_mul(WEIGHT)
        .saturating_add(
            shape
                .events
                .saturating_mul(EVENT_COST.saturating_add(metadata_json_len)),
        )
        .saturating_add(shape.messages.saturating_mul(MESSAGE_COST))
}

/// What a `RecordEventsRequest` costs once decoded, by the same skim and model the body applies,
/// on a stream whose rendered metadata is `metadata_json_len` bytes long.
pub fn request_cost(
    message: &RecordEventsRequest,
    metadata_json_len: usize,
) -> Result<usize, SkimError> {
    let bytes = prost::Message::encode_to_vec(message);
    let mut skim = Skim::new(Root::RecordEventsRequest, Some(bytes.len()), usize::MAX);
    skim.feed(&bytes)?;
    let shape = skim.finish(bytes.len())?;
    Ok(message_cost(bytes.len(), shape, metadata_json_len))
}

#[cfg(test)]
mod tests {
    use telemetry_gateway_proto::v1::Event;
    use telemetry_gateway_proto::v1::record_events_request::{EventsPayload, Payload};

    use super::*;

    #[test]
    fn the_cost_counts_events_metadata_and_nested_messages() {
        let shape = Shape {
            events: 10,
            messages: 30,
        };
        assert_eq!(
            message_cost(1000, shape, 500),
            1000 * WEIGHT + 10 * (EVENT_COST + 500) + 30 * MESSAGE_COST
        );
    }

    #[test]
    fn a_request_costs_at_least_its_events_and_their_metadata() {
        let request = RecordEventsRequest {
            payload: Some(Payload::Events(EventsPayload {
                events: vec![Event::default(), Event::default()],
            })),
        };
        let cost = request_cost(&request, 100).expect("a valid request");
        assert!(cost >= 2 * (EVENT_COST + 100), "{cost}");
        assert!(request_cost(&request, 200).expect("valid") > cost);
    }
}
