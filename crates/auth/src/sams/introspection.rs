//! What SAMS says about a token: the `IntrospectTokenResponse` of `clients.v1.TokensService`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::config::{IntrospectionCacheConfig, MAX_POSITIVE_TTL};
use super::scopes::scopes_allow;

/// SAMS's answer for one token. Field names follow the proto3 JSON mapping (camelCase), and the
/// original proto names (snake_case) are accepted too; absent fields take proto3 defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Introspection {
    /// Whether the token is valid now (issued, not expired, not revoked).
    pub active: bool,
    /// The scopes granted to the token.
    pub scopes: Vec<String>,
    /// The SAMS client the token was issued to.
    #[serde(alias = "client_id")]
    pub client_id: String,
    /// When the token expires.
    #[serde(alias = "expires_at")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl Introspection {
    /// Whether the token carries a scope covering `required` (SAMS prefix rules).
    pub fn allows(&self, required: &str) -> bool {
        scopes_allow(&self.scopes, required)
    }

    /// How long this answer may be reused at `now`: an active token's answer until the token
    /// expires but no longer than the configured (and at most 60 s) bound; an inactive token's
    /// answer briefly.
    pub fn cache_ttl(&self, now: DateTime<Utc>, cache: &IntrospectionCacheConfig) -> Duration {
        if !self.active {
            return cache.negative_ttl;
        }
        let bound = cache.positive_ttl.min(MAX_POSITIVE_TTL);
        match self.expires_at {
            Some(expires_at) => (expires_at - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(bound),
            None => bound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_case_and_snake_case_both_decode() {
        let camel: Introspection = serde_json::from_str(
            r#"{"active":true,"scopes":["a::b::c"],"clientId":"sams_cid_1","expiresAt":"2030-01-02T03:04:05.123Z"}"#,
        )
        .expect("camelCase decodes");
        let snake: Introspection = serde_json::from_str(
            r#"{"active":true,"scopes":["a::b::c"],"client_id":"sams_cid_1","expires_at":"2030-01-02T03:04:05.123Z","unknown":1}"#,
        )
        .expect("snake_case decodes");
        assert_eq!(camel, snake);
        assert_eq!(camel.client_id, "sams_cid_1");
        assert!(camel.expires_at.is_some());
    }

    #[test]
    fn absent_fields_are_proto3_defaults() {
        let empty: Introspection = serde_json::from_str("{}").expect("decodes");
        assert_eq!(empty, Introspection::default());
        assert!(!empty.active);
    }

    #[test]
    fn cache_ttl_is_bounded_by_expiry_and_sixty_seconds() {
        let now = Utc::now();
        let cache = IntrospectionCacheConfig {
            positive_ttl: Duration::from_secs(3600),
            ..IntrospectionCacheConfig::default()
        };
        let active = |expires_in: Option<i64>| Introspection {
            active: true,
            expires_at: expires_in.map(|s| now + chrono::Duration::seconds(s)),
            ..Introspection::default()
        };
        assert_eq!(active(Some(3600)).cache_ttl(now, &cache), MAX_POSITIVE_TTL);
        assert_eq!(active(None).cache_ttl(now, &cache), MAX_POSITIVE_TTL);
        assert_eq!(
            active(Some(10)).cache_ttl(now, &cache),
            Duration::from_secs(10)
        );
        assert_eq!(active(Some(-10)).cache_ttl(now, &cache), Duration::ZERO);
        let inactive = Introspection::default();
        assert_eq!(inactive.cache_ttl(now, &cache), cache.negative_ttl);
    }
}
