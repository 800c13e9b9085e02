//! Event IDs: UUID v7, as the newest original client library generates.

/// A new, time-ordered event ID (UUID v7, hyphenated lower-case).
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_uuid_v7_and_time_ordered() {
        let first = new_event_id();
        let second = new_event_id();
        let parsed = uuid::Uuid::parse_str(&first).expect("a valid UUID");
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(first.len(), 36);
        assert!(first < second, "v7 IDs sort by creation time");
    }
}
