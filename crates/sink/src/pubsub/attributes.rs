//! Fitting message attributes into Pub/Sub's limits before publishing.
//!
//! Pub/Sub refuses a message with more than 100 attributes, a key over 256 bytes, a value over
//! 1,024 bytes, or a key starting with `goog`, and the client sends the messages of many streams
//! in one request: one such message fails the whole request, other senders' events included. The
//! `event.recordsPrivateMetadata*` attributes come from keys the sender chooses, so every message
//! is fitted first (the rule, documented in docs/sinks.md):
//! - a key that is empty, over 256 bytes or starts with `goog` is dropped (a shortened key would
//!   be a different, possibly colliding, attribute);
//! - a value over 1,024 bytes is trimmed to its longest UTF-8 prefix within the limit;
//! - beyond 100 attributes, the base attributes (`publisher.source`, `event.feature`,
//!   `event.action`, `event.hasPrivateMetadata`) are kept, then the others in key order, and the
//!   rest are dropped.
//!
//! The payload itself is never changed: the private-metadata flags are hints for routing, and the
//! event's JSON still carries every metadata key.

use crate::Attributes;

/// Pub/Sub's limit on the number of attributes of one message.
pub const MAX_ATTRIBUTES: usize = 100;

/// Pub/Sub's limit on the size of an attribute key, in bytes.
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 256;

/// Pub/Sub's limit on the size of an attribute value, in bytes.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1_024;

/// The attributes every message carries, kept first when there are too many.
const BASE_ATTRIBUTES: [&str; 4] = [
    "publisher.source",
    "event.feature",
    "event.action",
    "event.hasPrivateMetadata",
];

/// What [`fit_attributes`] changed in one message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttributeFit {
    /// Attributes removed: a bad key, or beyond [`MAX_ATTRIBUTES`].
    pub dropped: usize,
    /// Values shortened to [`MAX_ATTRIBUTE_VALUE_BYTES`].
    pub trimmed: usize,
}

impl AttributeFit {
    /// Whether the attributes were left as they were.
    pub fn is_unchanged(&self) -> bool {
        self.dropped == 0 && self.trimmed == 0
    }
}

/// Whether Pub/Sub accepts `key` as an attribute key.
pub fn is_valid_attribute_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_ATTRIBUTE_KEY_BYTES && !key.starts_with("goog")
}

/// Whether Pub/Sub accepts `attributes` as they are.
pub fn attributes_fit(attributes: &Attributes) -> bool {
    attributes.len() <= MAX_ATTRIBUTES
        && attributes.iter().all(|(key, value)| {
            is_valid_attribute_key(key) && value.len() <= MAX_ATTRIBUTE_VALUE_BYTES
        })
}

/// Makes `attributes` acceptable to Pub/Sub by the rule in the module documentation, and says
/// what it changed.
pub fn fit_attributes(attributes: &mut Attributes) -> AttributeFit {
    let mut fit = AttributeFit::default();
    let before = attributes.len();
    attributes.retain(|key, _| is_valid_attribute_key(key));
    fit.dropped += before - attributes.len();

    if attributes.len() > MAX_ATTRIBUTES {
        let base = BASE_ATTRIBUTES
            .iter()
            .filter(|key| attributes.contains_key(**key))
            .count();
        let mut others_kept = 0;
        let others_allowed = MAX_ATTRIBUTES - base;
        let before = attributes.len();
        // Key order, so the same event always keeps the same attributes.
        attributes.retain(|key, _| {
            if BASE_ATTRIBUTES.contains(&key.as_str()) {
                return true;
            }
            others_kept += 1;
            others_kept <= others_allowed
        });
        fit.dropped += before - attributes.len();
    }

    for value in attributes.values_mut() {
        if value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
            value.truncate(value.floor_char_boundary(MAX_ATTRIBUTE_VALUE_BYTES));
            fit.trimmed += 1;
        }
    }
    fit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Attributes {
        BASE_ATTRIBUTES
            .iter()
            .map(|key| (key.to_string(), "v".to_string()))
            .collect()
    }

    fn flags(n: usize) -> impl Iterator<Item = (String, String)> {
        (0..n).map(|i| (format!("event.recordsPrivateMetadata{i:04}"), "true".into()))
    }

    #[test]
    fn attributes_within_the_limits_are_untouched() {
        let mut attributes = base();
        attributes.extend(flags(MAX_ATTRIBUTES - 4));
        attributes.insert("k".repeat(MAX_ATTRIBUTE_KEY_BYTES), "true".into());
        attributes.remove("event.recordsPrivateMetadata0000");
        attributes.insert("v".into(), "x".repeat(MAX_ATTRIBUTE_VALUE_BYTES));
        attributes.remove("event.recordsPrivateMetadata0001");
        let expected = attributes.clone();
        assert!(attributes_fit(&attributes));
        assert_eq!(fit_attributes(&mut attributes), AttributeFit::default());
        assert_eq!(attributes, expected);
    }

    #[test]
    fn beyond_100_the_base_attributes_and_the_first_keys_are_kept() {
        let mut attributes = base();
        attributes.extend(flags(200));
        assert!(!attributes_fit(&attributes));
        let fit = fit_attributes(&mut attributes);
        assert!(attributes_fit(&attributes));
        assert_eq!(fit.dropped, 104);
        assert_eq!(attributes.len(), MAX_ATTRIBUTES);
        for key in BASE_ATTRIBUTES {
            assert!(attributes.contains_key(key), "{key} kept");
        }
        assert!(attributes.contains_key("event.recordsPrivateMetadata0095"));
        assert!(!attributes.contains_key("event.recordsPrivateMetadata0096"));
    }

    #[test]
    fn over_long_and_reserved_keys_are_dropped() {
        let mut attributes = base();
        let long = format!("event.{}", "k".repeat(MAX_ATTRIBUTE_KEY_BYTES));
        attributes.insert(long.clone(), "true".into());
        attributes.insert("googclient_x".into(), "true".into());
        attributes.insert(String::new(), "true".into());
        let fit = fit_attributes(&mut attributes);
        assert_eq!(
            fit,
            AttributeFit {
                dropped: 3,
                trimmed: 0
            }
        );
        assert_eq!(attributes, base());
    }

    #[test]
    fn over_long_values_are_trimmed_on_a_character_boundary() {
        let mut attributes = base();
        // 'é' is two bytes: 1,025 bytes with a character straddling the limit.
        attributes.insert("publisher.source".into(), format!("a{}", "é".repeat(512)));
        let fit = fit_attributes(&mut attributes);
        assert_eq!(
            fit,
            AttributeFit {
                dropped: 0,
                trimmed: 1
            }
        );
        let value = &attributes["publisher.source"];
        assert_eq!(value.len(), 1_023);
        assert!(value.starts_with("aé"));
    }
}
