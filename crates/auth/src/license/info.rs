//! What a license says: the signed info JSON and its meaning.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

use super::LicenseError;
use super::go_json::{self, field};

/// Go's zero `time.Time` (`0001-01-01T00:00:00Z`), which absent times decode to and which keys
/// older than version 3 carry as their creation time.
pub const GO_ZERO_TIME: DateTime<Utc> = match NaiveDate::from_ymd_opt(1, 1, 1) {
    Some(date) => match date.and_hms_opt(0, 0, 0) {
        Some(midnight) => midnight.and_utc(),
        None => DateTime::<Utc>::MIN_UTC,
    },
    None => DateTime::<Utc>::MIN_UTC,
};

/// The decoded license info, with Go's zero values for anything the key leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseInfo {
    /// The format version the key claims (`v`: 1, 2 or 3); 0 if absent. Never checked.
    pub version: i64,
    /// Tags naming features and restrictions (`t`), as written in the key.
    pub tags: Vec<String>,
    /// The licensed number of users (`u`).
    pub user_count: u64,
    /// When the license was created (`c`); [`GO_ZERO_TIME`] for keys before version 3.
    pub created_at: DateTime<Utc>,
    /// When the license expires (`e`).
    pub expires_at: DateTime<Utc>,
    /// The Salesforce subscription this license belongs to (`sf_sub_id`), if any.
    pub salesforce_subscription_id: Option<String>,
    /// The Salesforce opportunity this license belongs to (`sf_opp_id`), if any.
    pub salesforce_opportunity_id: Option<String>,
}

impl Default for LicenseInfo {
    fn default() -> Self {
        Self {
            version: 0,
            tags: Vec::new(),
            user_count: 0,
            created_at: GO_ZERO_TIME,
            expires_at: GO_ZERO_TIME,
            salesforce_subscription_id: None,
            salesforce_opportunity_id: None,
        }
    }
}

impl LicenseInfo {
    /// Reads the signed info bytes; unknown keys (including the nonce `n`) are ignored like Go.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, LicenseError> {
        let document = go_json::parse_document(bytes)
            .map_err(|detail| LicenseError::InfoNotJson { detail })?;
        let object = document
            .as_object()
            .ok_or_else(|| malformed("expected a JSON object".to_owned()))?;

        let mut info = Self {
            // The original never reads the version, so one of an unexpected type is ignored too.
            version: field(object, "v").and_then(Value::as_i64).unwrap_or(0),
            ..Self::default()
        };
        if let Some(tags) = field(object, "t") {
            info.tags = go_json::strings(tags, "t").map_err(malformed)?;
        }
        if let Some(count) = field(object, "u") {
            info.user_count = go_json::unsigned(count, "u").map_err(malformed)?;
        }
        if let Some(created) = field(object, "c") {
            info.created_at = go_json::time(created, "c").map_err(malformed)?;
        }
        if let Some(expires) = field(object, "e") {
            info.expires_at = go_json::time(expires, "e").map_err(malformed)?;
        }
        if let Some(id) = field(object, "sf_sub_id") {
            info.salesforce_subscription_id =
                Some(go_json::string(id, "sf_sub_id").map_err(malformed)?);
        }
        if let Some(id) = field(object, "sf_opp_id") {
            info.salesforce_opportunity_id =
                Some(go_json::string(id, "sf_opp_id").map_err(malformed)?);
        }
        Ok(info)
    }

    /// Whether the license carries `tag`; stored tags are compared with surrounding whitespace
    /// trimmed (`docs/compatibility.md` §5).
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|stored| stored.trim() == tag)
    }

    /// Whether the license had expired at `now` (expiry strictly before `now`, as in Go).
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at < now
    }

    /// Whether the key predates creation timestamps (version < 3) and so has a zero `c`.
    pub fn has_unknown_creation_time(&self) -> bool {
        self.created_at == GO_ZERO_TIME
    }
}

fn malformed(detail: String) -> LicenseError {
    LicenseError::MalformedInfo { detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<LicenseInfo, LicenseError> {
        LicenseInfo::parse(json.as_bytes())
    }

    fn time(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    #[test]
    fn go_zero_time_is_year_one() {
        assert_eq!(GO_ZERO_TIME.to_rfc3339(), "0001-01-01T00:00:00+00:00");
    }

    #[test]
    fn reads_every_field() {
        let info = parse(
            r#"{"v":3,"n":[1,2,3,4,5,6,7,8],"t":["dev","plan:enterprise-1"],"u":10,
                "c":"2024-01-02T03:04:05Z","e":"2025-01-02T03:04:05.5Z",
                "sf_sub_id":"sub","sf_opp_id":"opp"}"#,
        )
        .expect("valid info");
        assert_eq!(
            info,
            LicenseInfo {
                version: 3,
                tags: vec!["dev".to_owned(), "plan:enterprise-1".to_owned()],
                user_count: 10,
                created_at: time("2024-01-02T03:04:05Z"),
                expires_at: time("2025-01-02T03:04:05.5Z"),
                salesforce_subscription_id: Some("sub".to_owned()),
                salesforce_opportunity_id: Some("opp".to_owned()),
            }
        );
    }

    #[test]
    fn missing_fields_take_go_zero_values() {
        assert_eq!(parse("{}"), Ok(LicenseInfo::default()));
    }

    #[test]
    fn null_fields_take_go_zero_values() {
        let info = parse(r#"{"v":null,"t":null,"u":null,"c":null,"e":null,"sf_sub_id":null}"#);
        assert_eq!(info, Ok(LicenseInfo::default()));
    }

    #[test]
    fn unknown_keys_and_odd_versions_are_ignored() {
        let info = parse(r#"{"v":"three","x":{"y":[1]},"u":5}"#).expect("valid info");
        assert_eq!(info.version, 0);
        assert_eq!(info.user_count, 5);
    }

    #[test]
    fn wrong_field_types_are_malformed() {
        for json in [
            r#"{"t":"dev"}"#,
            r#"{"t":[1]}"#,
            r#"{"u":-1}"#,
            r#"{"u":"10"}"#,
            r#"{"c":"yesterday"}"#,
            r#"{"e":12}"#,
            r#"{"sf_sub_id":1}"#,
        ] {
            assert!(
                matches!(parse(json), Err(LicenseError::MalformedInfo { .. })),
                "{json}"
            );
        }
    }

    #[test]
    fn non_object_info_is_malformed() {
        for json in ["null", "[]", "\"info\"", "3"] {
            assert!(
                matches!(parse(json), Err(LicenseError::MalformedInfo { .. })),
                "{json}"
            );
        }
    }

    #[test]
    fn invalid_json_is_reported_as_such() {
        assert!(matches!(
            parse("{\"t\":"),
            Err(LicenseError::InfoNotJson { .. })
        ));
        assert!(matches!(parse(""), Err(LicenseError::InfoNotJson { .. })));
    }

    #[test]
    fn has_tag_trims_stored_tags() {
        let info = LicenseInfo {
            tags: vec!["  trial ".to_owned(), "dev".to_owned()],
            ..LicenseInfo::default()
        };
        assert!(info.has_tag("trial"));
        assert!(info.has_tag("dev"));
        assert!(!info.has_tag("internal"));
        assert!(!info.has_tag(" trial"));
    }

    #[test]
    fn is_expired_only_strictly_after_expiry() {
        let expires_at = time("2018-09-22T21:33:44Z");
        let info = LicenseInfo {
            expires_at,
            ..LicenseInfo::default()
        };
        assert!(!info.is_expired_at(expires_at));
        assert!(info.is_expired_at(expires_at + chrono::Duration::seconds(1)));
        assert!(!info.is_expired_at(expires_at - chrono::Duration::seconds(1)));
    }

    #[test]
    fn zero_creation_time_is_unknown() {
        assert!(LicenseInfo::default().has_unknown_creation_time());
    }
}
