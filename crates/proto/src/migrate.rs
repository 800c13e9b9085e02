//! Moving integer metadata sent by older exporters into the current `metadata` field.

use crate::v1::Event;

/// Copies every `legacy_metadata` entry into `metadata` as a double and clears
/// `legacy_metadata`. A legacy value wins over a `metadata` value with the same key, as in the
/// original service.
pub fn migrate_legacy_metadata(event: &mut Event) {
    let Some(parameters) = event.parameters.as_mut() else {
        return;
    };
    if parameters.legacy_metadata.is_empty() {
        return;
    }
    for (key, value) in std::mem::take(&mut parameters.legacy_metadata) {
        parameters.metadata.insert(key, value as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::EventParameters;

    fn event_with(legacy: &[(&str, i64)], metadata: &[(&str, f64)]) -> Event {
        Event {
            parameters: Some(EventParameters {
                legacy_metadata: legacy.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                metadata: metadata.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn legacy_metadata_becomes_double_metadata() {
        let mut event = event_with(&[("foo", 123)], &[]);
        migrate_legacy_metadata(&mut event);
        let parameters = event.parameters.expect("parameters kept");
        assert!(parameters.legacy_metadata.is_empty());
        assert_eq!(parameters.metadata.get("foo"), Some(&123.0));
    }

    #[test]
    fn legacy_metadata_merges_with_existing_metadata() {
        let mut event = event_with(&[("foo", 123)], &[("bar", 456.0)]);
        migrate_legacy_metadata(&mut event);
        let parameters = event.parameters.expect("parameters kept");
        assert!(parameters.legacy_metadata.is_empty());
        assert_eq!(parameters.metadata.len(), 2);
        assert_eq!(parameters.metadata.get("foo"), Some(&123.0));
        assert_eq!(parameters.metadata.get("bar"), Some(&456.0));
    }

    #[test]
    fn legacy_value_wins_on_a_clash() {
        let mut event = event_with(&[("foo", 1)], &[("foo", 2.5)]);
        migrate_legacy_metadata(&mut event);
        assert_eq!(
            event
                .parameters
                .expect("parameters kept")
                .metadata
                .get("foo"),
            Some(&1.0)
        );
    }

    #[test]
    fn events_without_parameters_are_untouched() {
        let mut event = Event::default();
        migrate_legacy_metadata(&mut event);
        assert_eq!(event, Event::default());
    }
}
