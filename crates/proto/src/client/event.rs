//! Building events the gateway will accept: a UUID v7 ID, the current time, and the checks the
//! gateway applies (feature/action shape, renderable private metadata) run before sending.

use std::time::SystemTime;

use prost_types::{Struct, Timestamp, Value};

use crate::v1::event_interaction::Geolocation;
use crate::v1::event_source::{Client, Server};
use crate::v1::{
    Event, EventBillingMetadata, EventFeatureFlags, EventInteraction, EventParameters, EventSource,
    EventUser,
};
use crate::{EventError, RenderError, new_event_id, render_event, validate_event};

/// Why [`EventBuilder::build`] refused an event; the gateway would have dropped it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildError {
    /// The event fails the gateway's validation (the original's message).
    #[error(transparent)]
    Invalid(#[from] EventError),
    /// The event cannot be rendered as JSON (a NaN or infinity in private metadata, say).
    #[error("event cannot be rendered as JSON: {0}")]
    Unrenderable(#[from] RenderError),
}

/// Builds one [`Event`]: `EventBuilder::new("cody.chat", "submitted").metadata("latency", 12.0)
/// .build()?`. The ID is a fresh UUID v7 and the timestamp the time of `build`, unless set.
#[derive(Debug, Clone)]
pub struct EventBuilder {
    event: Event,
}

impl EventBuilder {
    /// An event of `feature` and `action` (checked by [`EventBuilder::build`]).
    pub fn new(feature: impl Into<String>, action: impl Into<String>) -> EventBuilder {
        EventBuilder {
            event: Event {
                id: new_event_id(),
                feature: feature.into(),
                action: action.into(),
                ..Event::default()
            },
        }
    }

    /// Replaces the generated ID (to re-send an event under its original ID, say).
    pub fn id(mut self, id: impl Into<String>) -> EventBuilder {
        self.event.id = id.into();
        self
    }

    /// Sets when the event happened (default: when `build` runs).
    pub fn timestamp(mut self, at: SystemTime) -> EventBuilder {
        self.event.timestamp = Some(Timestamp::from(at));
        self
    }

    /// Replaces the whole source.
    pub fn source(mut self, source: EventSource) -> EventBuilder {
        self.event.source = Some(source);
        self
    }

    /// Sets the version of the server that recorded the event.
    pub fn server_version(mut self, version: impl Into<String>) -> EventBuilder {
        self.source_mut().server = Some(Server {
            version: version.into(),
        });
        self
    }

    /// Sets the client that generated the event.
    pub fn client(mut self, name: impl Into<String>, version: Option<String>) -> EventBuilder {
        self.source_mut().client = Some(Client {
            name: name.into(),
            version,
        });
        self
    }

    /// Sets the version of the event's parameters.
    pub fn parameters_version(mut self, version: i32) -> EventBuilder {
        self.parameters_mut().version = version;
        self
    }

    /// Adds a numeric metadata entry (exported to analytics as-is).
    pub fn metadata(mut self, key: impl Into<String>, value: f64) -> EventBuilder {
        self.parameters_mut().metadata.insert(key.into(), value);
        self
    }

    /// Adds a private metadata entry (instances export it only for allowlisted events).
    pub fn private_metadata(
        mut self,
        key: impl Into<String>,
        value: impl Into<Value>,
    ) -> EventBuilder {
        self.parameters_mut()
            .private_metadata
            .get_or_insert_with(Struct::default)
            .fields
            .insert(key.into(), value.into());
        self
    }

    /// Sets the billing product and category.
    pub fn billing(
        mut self,
        product: impl Into<String>,
        category: impl Into<String>,
    ) -> EventBuilder {
        self.parameters_mut().billing_metadata = Some(EventBillingMetadata {
            product: product.into(),
            category: category.into(),
        });
        self
    }

    /// Sets the instance's user ID.
    pub fn user_id(mut self, user_id: i64) -> EventBuilder {
        self.user_mut().user_id = Some(user_id);
        self
    }

    /// Sets the anonymous user ID.
    pub fn anonymous_user_id(mut self, id: impl Into<String>) -> EventBuilder {
        self.user_mut().anonymous_user_id = Some(id.into());
        self
    }

    /// Sets the SAMS external user ID.
    pub fn sams_external_id(mut self, id: impl Into<String>) -> EventBuilder {
        self.user_mut().sams_external_id = Some(id.into());
        self
    }

    /// Records a feature flag's value at the time of the event.
    pub fn feature_flag(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> EventBuilder {
        self.event
            .feature_flags
            .get_or_insert_with(EventFeatureFlags::default)
            .flags
            .insert(name.into(), value.into());
        self
    }

    /// Sets the trace the event was recorded in.
    pub fn trace_id(mut self, trace_id: impl Into<String>) -> EventBuilder {
        self.interaction_mut().trace_id = Some(trace_id.into());
        self
    }

    /// Sets the interaction the event was recorded in.
    pub fn interaction_id(mut self, interaction_id: impl Into<String>) -> EventBuilder {
        self.interaction_mut().interaction_id = Some(interaction_id.into());
        self
    }

    /// Sets the country of the interaction (ISO 3166-1 alpha-2 or alpha-3).
    pub fn country_code(mut self, country_code: impl Into<String>) -> EventBuilder {
        self.interaction_mut().geolocation = Some(Geolocation {
            country_code: country_code.into(),
        });
        self
    }

    /// The event, if the gateway would accept it; the timestamp defaults to now.
    pub fn build(mut self) -> Result<Event, BuildError> {
        if self.event.timestamp.is_none() {
            self.event.timestamp = Some(Timestamp::from(SystemTime::now()));
        }
        validate_event(&self.event)?;
        render_event(&self.event, &mut Vec::new())?;
        Ok(self.event)
    }

    fn source_mut(&mut self) -> &mut EventSource {
        self.event.source.get_or_insert_with(EventSource::default)
    }

    fn parameters_mut(&mut self) -> &mut EventParameters {
        self.event
            .parameters
            .get_or_insert_with(EventParameters::default)
    }

    fn user_mut(&mut self) -> &mut EventUser {
        self.event.user.get_or_insert_with(EventUser::default)
    }

    fn interaction_mut(&mut self) -> &mut EventInteraction {
        self.event
            .interaction
            .get_or_insert_with(EventInteraction::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FeatureActionError;

    #[test]
    fn a_built_event_has_a_uuid_v7_and_a_timestamp() {
        let event = EventBuilder::new("cody.chat", "submitted")
            .build()
            .expect("valid");
        let id = uuid::Uuid::parse_str(&event.id).expect("a UUID");
        assert_eq!(id.get_version_num(), 7);
        let now = Timestamp::from(SystemTime::now());
        let timestamp = event.timestamp.expect("a timestamp");
        assert!((now.seconds - timestamp.seconds).abs() <= 5);
    }

    #[test]
    fn every_setter_lands_in_its_field() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let event = EventBuilder::new("search", "executed")
            .id("fixed-id")
            .timestamp(at)
            .server_version("5.3.0")
            .client("VSCODE_CODY_EXTENSION", Some("1.2.3".into()))
            .parameters_version(2)
            .metadata("resultCount", 42.0)
            .private_metadata("query", "repo:foo bar")
            .private_metadata("exact", true)
            .billing("cody", "core")
            .user_id(7)
            .anonymous_user_id("anon")
            .sams_external_id("018d21f2-04a6-7aaf-9f6f-6fc58c4187b9")
            .feature_flag("new-search", "true")
            .trace_id("trace")
            .interaction_id("interaction")
            .country_code("NL")
            .build()
            .expect("valid");
        assert_eq!(event.id, "fixed-id");
        assert_eq!(event.timestamp.map(|t| t.seconds), Some(1_700_000_000));
        let source = event.source.expect("source");
        assert_eq!(source.server.map(|s| s.version).as_deref(), Some("5.3.0"));
        assert_eq!(
            source.client.and_then(|c| c.version).as_deref(),
            Some("1.2.3")
        );
        let parameters = event.parameters.expect("parameters");
        assert_eq!(parameters.version, 2);
        assert_eq!(parameters.metadata.get("resultCount"), Some(&42.0));
        let private = parameters.private_metadata.expect("private metadata");
        assert_eq!(
            private.fields.get("query"),
            Some(&Value::from("repo:foo bar"))
        );
        assert_eq!(private.fields.get("exact"), Some(&Value::from(true)));
        assert_eq!(
            parameters.billing_metadata.map(|b| b.product).as_deref(),
            Some("cody")
        );
        let user = event.user.expect("user");
        assert_eq!(user.user_id, Some(7));
        assert_eq!(user.anonymous_user_id.as_deref(), Some("anon"));
        assert_eq!(
            event
                .feature_flags
                .expect("flags")
                .flags
                .get("new-search")
                .map(String::as_str),
            Some("true")
        );
        let interaction = event.interaction.expect("interaction");
        assert_eq!(interaction.trace_id.as_deref(), Some("trace"));
        assert_eq!(
            interaction.geolocation.map(|g| g.country_code).as_deref(),
            Some("NL")
        );
    }

    #[test]
    fn a_malformed_feature_is_refused_with_the_original_message() {
        let err = EventBuilder::new("Cody", "submitted")
            .build()
            .expect_err("uppercase first letter");
        assert_eq!(
            err,
            BuildError::Invalid(EventError::FeatureAction(
                FeatureActionError::FeatureMalformed
            ))
        );
        assert_eq!(
            err.to_string(),
            "invalid event 'feature' or 'action': 'feature' must start with a lowercase letter \
             and contain only letters, dashes, and dots"
        );
    }

    #[test]
    fn an_empty_id_is_refused() {
        let err = EventBuilder::new("cody", "chat")
            .id("")
            .build()
            .expect_err("no ID");
        assert_eq!(err, BuildError::Invalid(EventError::MissingId));
    }

    #[test]
    fn non_finite_private_metadata_is_refused() {
        let err = EventBuilder::new("cody", "chat")
            .private_metadata("ratio", f64::NAN)
            .build()
            .expect_err("NaN cannot be rendered");
        assert!(matches!(err, BuildError::Unrenderable(_)), "{err:?}");
    }
}
