//! Event validation with the original service's messages (they reach senders and logs).

use crate::v1::Event;
use crate::wire::EventView;

/// The longest feature or action accepted, in bytes.
pub const MAX_FEATURE_ACTION_LEN: usize = 64;

/// Why a feature/action pair was rejected; `Display` is the original's exact message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeatureActionError {
    /// Either value is empty.
    #[error("'feature', 'action' must both be provided")]
    Missing,
    /// The feature is longer than 64 bytes.
    #[error("'feature' must be less than 64 characters")]
    FeatureTooLong,
    /// The action is longer than 64 bytes.
    #[error("'action' must be less than 64 characters")]
    ActionTooLong,
    /// The feature does not match `^[a-z][a-zA-Z-\.]+$`.
    #[error(
        "'feature' must start with a lowercase letter and contain only letters, dashes, and dots"
    )]
    FeatureMalformed,
    /// The action does not match `^[a-z][a-zA-Z-\.]+$`.
    #[error(
        "'action' must start with a lowercase letter and contain only letters, dashes, and dots"
    )]
    ActionMalformed,
}

/// Why an event was rejected; `Display` is the original's exact message. Not retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The event has no ID.
    #[error("event ID is required")]
    MissingId,
    /// The feature or action is invalid.
    #[error("invalid event 'feature' or 'action': {0}")]
    FeatureAction(#[from] FeatureActionError),
    /// The event has no timestamp.
    #[error("event timestamp is required")]
    MissingTimestamp,
}

/// Checks a feature/action pair, in the original's order: presence, lengths, then shape.
pub fn validate_feature_action(feature: &str, action: &str) -> Result<(), FeatureActionError> {
    if feature.is_empty() || action.is_empty() {
        return Err(FeatureActionError::Missing);
    }
    if feature.len() > MAX_FEATURE_ACTION_LEN {
        return Err(FeatureActionError::FeatureTooLong);
    }
    if action.len() > MAX_FEATURE_ACTION_LEN {
        return Err(FeatureActionError::ActionTooLong);
    }
    if !is_well_formed_name(feature) {
        return Err(FeatureActionError::FeatureMalformed);
    }
    if !is_well_formed_name(action) {
        return Err(FeatureActionError::ActionMalformed);
    }
    Ok(())
}

/// `^[a-z][a-zA-Z-\.]+$`: a lowercase letter, then at least one letter, dash or dot.
fn is_well_formed_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() >= 2
        && bytes[0].is_ascii_lowercase()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphabetic() || *b == b'-' || *b == b'.')
}

/// Checks what the gateway requires of every event, in the original's order: ID,
/// feature/action, timestamp.
pub fn validate_event(event: &Event) -> Result<(), EventError> {
    validate_parts(
        &event.id,
        &event.feature,
        &event.action,
        event.timestamp.is_some(),
    )
}

/// [`validate_event`] for a viewed event (read from its wire bytes).
pub fn validate_view(event: &EventView<'_>) -> Result<(), EventError> {
    validate_parts(
        event.id,
        event.feature,
        event.action,
        event.timestamp.is_some(),
    )
}

fn validate_parts(
    id: &str,
    feature: &str,
    action: &str,
    has_timestamp: bool,
) -> Result<(), EventError> {
    if id.is_empty() {
        return Err(EventError::MissingId);
    }
    validate_feature_action(feature, action)?;
    if !has_timestamp {
        return Err(EventError::MissingTimestamp);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FEATURE_MALFORMED: &str =
        "'feature' must start with a lowercase letter and contain only letters, dashes, and dots";
    const ACTION_MALFORMED: &str =
        "'action' must start with a lowercase letter and contain only letters, dashes, and dots";

    #[test]
    fn feature_action_table_matches_the_original() {
        let long = "a".repeat(67);
        let cases: &[(&str, &str, Option<&str>)] = &[
            (
                "",
                "valid",
                Some("'feature', 'action' must both be provided"),
            ),
            (
                "valid",
                "",
                Some("'feature', 'action' must both be provided"),
            ),
            (
                &long,
                "valid",
                Some("'feature' must be less than 64 characters"),
            ),
            (
                "valid",
                &long,
                Some("'action' must be less than 64 characters"),
            ),
            ("Invalid", "valid", Some(FEATURE_MALFORMED)),
            ("valid", "Invalid", Some(ACTION_MALFORMED)),
            ("invalid_feature!", "valid", Some(FEATURE_MALFORMED)),
            ("valid", "invalid_action!", Some(ACTION_MALFORMED)),
            ("valid.feature", "valid-action", None),
            ("validFeature.foobar", "valid.action", None),
        ];
        for (feature, action, expected) in cases {
            let got = validate_feature_action(feature, action)
                .err()
                .map(|e| e.to_string());
            assert_eq!(
                got.as_deref(),
                *expected,
                "feature={feature:?} action={action:?}"
            );
        }
    }

    #[test]
    fn sixty_four_bytes_pass_and_sixty_five_fail() {
        assert!(validate_feature_action(&"a".repeat(64), "ok").is_ok());
        assert_eq!(
            validate_feature_action(&"a".repeat(65), "ok"),
            Err(FeatureActionError::FeatureTooLong)
        );
    }

    #[test]
    fn one_character_names_digits_and_non_ascii_are_malformed() {
        for bad in ["a", "a1", "a_b", "aé", "a b", "-a", ".a"] {
            assert_eq!(
                validate_feature_action(bad, "ok"),
                Err(FeatureActionError::FeatureMalformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn event_checks_run_in_the_original_order() {
        let mut event = Event::default();
        assert_eq!(validate_event(&event), Err(EventError::MissingId));
        event.id = "x".into();
        assert_eq!(
            validate_event(&event).map_err(|e| e.to_string()),
            Err(
                "invalid event 'feature' or 'action': 'feature', 'action' must both be provided"
                    .into()
            )
        );
        event.feature = "cody".into();
        event.action = "chat".into();
        assert_eq!(validate_event(&event), Err(EventError::MissingTimestamp));
        event.timestamp = Some(prost_types::Timestamp::default());
        assert_eq!(validate_event(&event), Ok(()));
    }
}
