//! Splitting events into `RecordEvents` payloads that stay below 1 MiB on the wire, as the
//! original instance exporter does; an event too large for that goes alone.

use prost::Message;

use crate::v1::Event;

/// The original exporter's payload bound: every request carrying several events encodes to
/// fewer bytes than this.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// The encoded size of a `RecordEventsRequest` whose events payload holds `events_len` bytes of
/// encoded `events` fields: the `events` oneof key, its length prefix, and the body.
pub fn request_len(events_len: usize) -> usize {
    1 + prost::length_delimiter_len(events_len) + events_len
}

/// The bytes one event adds to an events payload: its field key, length prefix and body.
pub fn event_field_len(event: &Event) -> usize {
    let body = event.encoded_len();
    1 + prost::length_delimiter_len(body) + body
}

/// Splits `events` lazily, in order, into chunks whose request encodes to fewer than `limit`
/// bytes; an event that alone reaches `limit` is a chunk of its own.
pub fn chunk_events<I>(events: I, limit: usize) -> Chunks<I::IntoIter>
where
    I: IntoIterator<Item = Event>,
{
    Chunks {
        events: events.into_iter(),
        pending: None,
        limit,
    }
}

/// The iterator returned by [`chunk_events`].
#[derive(Debug)]
pub struct Chunks<I> {
    events: I,
    /// An event measured but left for the next chunk, with its field length.
    pending: Option<(Event, usize)>,
    limit: usize,
}

impl<I: Iterator<Item = Event>> Iterator for Chunks<I> {
    type Item = Vec<Event>;

    fn next(&mut self) -> Option<Vec<Event>> {
        let mut chunk = Vec::new();
        let mut events_len = 0;
        loop {
            let (event, len) = match self.pending.take() {
                Some(pending) => pending,
                None => match self.events.next() {
                    Some(event) => {
                        let len = event_field_len(&event);
                        (event, len)
                    }
                    None => break,
                },
            };
            if !chunk.is_empty() && request_len(events_len + len) >= self.limit {
                self.pending = Some((event, len));
                break;
            }
            events_len += len;
            chunk.push(event);
        }
        (!chunk.is_empty()).then_some(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::RecordEventsRequest;
    use crate::v1::record_events_request::{EventsPayload, Payload};

    fn event(id: usize, padding: usize) -> Event {
        Event {
            id: format!("event-{id}"),
            feature: "x".repeat(padding),
            ..Default::default()
        }
    }

    fn encoded_request_len(events: &[Event]) -> usize {
        RecordEventsRequest {
            payload: Some(Payload::Events(EventsPayload {
                events: events.to_vec(),
            })),
        }
        .encoded_len()
    }

    #[test]
    fn request_len_is_the_exact_encoded_length() {
        for sizes in [vec![], vec![0], vec![10, 200, 3000], vec![100_000; 20]] {
            let events: Vec<Event> = sizes
                .iter()
                .enumerate()
                .map(|(i, &p)| event(i, p))
                .collect();
            let events_len: usize = events.iter().map(event_field_len).sum();
            assert_eq!(request_len(events_len), encoded_request_len(&events));
        }
    }

    #[test]
    fn every_chunk_of_several_events_encodes_below_the_limit() {
        // Sizes around the limit's divisors, so chunks end close to it.
        let events: Vec<Event> = (0..3_000).map(|i| event(i, (i * 7919) % 5_000)).collect();
        let chunks: Vec<Vec<Event>> = chunk_events(events.clone(), MAX_PAYLOAD_BYTES).collect();
        assert!(chunks.len() > 5, "the events span several chunks");
        for chunk in &chunks {
            assert!(encoded_request_len(chunk) < MAX_PAYLOAD_BYTES);
        }
        // Each chunk is full: the next event would not have fitted.
        for pair in chunks.windows(2) {
            let mut grown = pair[0].clone();
            grown.push(pair[1][0].clone());
            assert!(encoded_request_len(&grown) >= MAX_PAYLOAD_BYTES);
        }
        let rejoined: Vec<Event> = chunks.into_iter().flatten().collect();
        assert_eq!(rejoined, events, "order and content are kept");
    }

    #[test]
    fn an_event_larger_than_the_limit_goes_alone() {
        let events = vec![
            event(0, 10),
            event(1, 20),
            event(2, 3 * MAX_PAYLOAD_BYTES),
            event(3, 30),
        ];
        let ids: Vec<Vec<String>> = chunk_events(events, MAX_PAYLOAD_BYTES)
            .map(|chunk| chunk.into_iter().map(|e| e.id).collect())
            .collect();
        assert_eq!(
            ids,
            vec![
                vec!["event-0".to_string(), "event-1".into()],
                vec!["event-2".into()],
                vec!["event-3".into()],
            ]
        );
    }

    #[test]
    fn an_event_that_fills_the_limit_exactly_goes_alone() {
        let probe = event(1, 0);
        // Find a padding whose request is exactly the limit: it may not share a chunk.
        let padding = (MAX_PAYLOAD_BYTES - 64..MAX_PAYLOAD_BYTES)
            .find(|&p| encoded_request_len(&[event(1, p)]) == MAX_PAYLOAD_BYTES)
            .expect("some padding hits the limit exactly");
        let events = vec![event(0, 0), event(1, padding), probe];
        let sizes: Vec<usize> = chunk_events(events, MAX_PAYLOAD_BYTES)
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, vec![1, 1, 1]);
    }

    #[test]
    fn no_events_make_no_chunks() {
        assert_eq!(chunk_events(Vec::new(), MAX_PAYLOAD_BYTES).count(), 0);
    }
}
