//! One way to make a [`PreparedEvent`] by hand (tests, tools, benchmarks), so that callers do not
//! spell out its fields and keep working when they change.

use bytes::Bytes;

use crate::{Attributes, PreparedEvent};

/// Builds a [`PreparedEvent`]; start with [`PreparedEvent::builder`].
#[derive(Clone, Debug)]
pub struct PreparedEventBuilder {
    event: PreparedEvent,
}

impl PreparedEvent {
    /// An event `id` with feature `test.feature`, action `tested`, timestamp
    /// 2023-11-14T22:13:20Z, payload `{"event":{"id":"<id>"}}` and no attributes, each
    /// replaceable by the builder.
    pub fn builder(id: impl Into<String>) -> PreparedEventBuilder {
        let id = id.into();
        let payload = Bytes::from(format!(r#"{{"event":{{"id":"{id}"}}}}"#));
        PreparedEventBuilder {
            event: PreparedEvent {
                id,
                feature: "test.feature".into(),
                action: "tested".into(),
                timestamp: prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                },
                payload,
                attributes: Attributes::new(),
            },
        }
    }
}

impl PreparedEventBuilder {
    /// The event's feature.
    pub fn feature(mut self, feature: impl Into<String>) -> Self {
        self.event.feature = feature.into();
        self
    }

    /// The event's action.
    pub fn action(mut self, action: impl Into<String>) -> Self {
        self.event.action = action.into();
        self
    }

    /// The event's timestamp.
    pub fn timestamp(mut self, seconds: i64, nanos: i32) -> Self {
        self.event.timestamp = prost_types::Timestamp { seconds, nanos };
        self
    }

    /// The exact payload bytes.
    pub fn payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.event.payload = payload.into();
        self
    }

    /// One more attribute (replacing one of the same key).
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.event.attributes.insert(key.into(), value.into());
        self
    }

    /// More attributes (replacing those of the same keys).
    pub fn attributes<K: Into<String>, V: Into<String>>(
        mut self,
        attributes: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.event.attributes.extend(
            attributes
                .into_iter()
                .map(|(key, value)| (key.into(), value.into())),
        );
        self
    }

    /// The event.
    pub fn build(self) -> PreparedEvent {
        self.event
    }
}
