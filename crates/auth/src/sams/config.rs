//! How to reach SAMS and how long to trust its answers.

use std::fmt;
use std::time::Duration;

/// The longest an introspection result is trusted in production: a revoked token stops working
/// at most this long after revocation.
pub const MAX_POSITIVE_TTL: Duration = Duration::from_secs(60);

/// Settings of a [`SamsClient`](super::SamsClient).
#[derive(Clone)]
pub struct SamsClientConfig {
    /// Base URL of the SAMS API (`/oauth/token` and `/api/grpc/...` are resolved against it).
    pub api_url: String,
    /// The gateway's own SAMS client ID.
    pub client_id: String,
    /// The gateway's own SAMS client secret.
    pub client_secret: String,
    /// Limit on establishing a connection to SAMS.
    pub connect_timeout: Duration,
    /// Limit on one whole HTTP exchange with SAMS (connect, send, receive).
    pub request_timeout: Duration,
    /// The introspection cache.
    pub cache: IntrospectionCacheConfig,
    /// Most introspection calls in progress at once (distinct tokens; checks of one token share
    /// a call). A check that finds no free slot within `request_timeout` fails with
    /// [`SamsError::Overloaded`](super::SamsError::Overloaded), so a flood of random tokens
    /// never becomes a flood against SAMS.
    pub max_concurrent_introspections: usize,
}

/// SAMS (Sourcegraph Accounts) in production, the original's default `SAMS_URL`.
pub const DEFAULT_SAMS_URL: &str = "https://accounts.sourcegraph.com";

/// The default bound on introspection calls in progress at once.
pub const DEFAULT_MAX_CONCURRENT_INTROSPECTIONS: usize = 16;

impl SamsClientConfig {
    /// A configuration with the default timeouts and cache.
    pub fn new(
        api_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> SamsClientConfig {
        SamsClientConfig {
            api_url: api_url.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            cache: IntrospectionCacheConfig::default(),
            max_concurrent_introspections: DEFAULT_MAX_CONCURRENT_INTROSPECTIONS,
        }
    }
}

// The secret never reaches a log through `{:?}`.
impl fmt::Debug for SamsClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SamsClientConfig")
            .field("api_url", &self.api_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("cache", &self.cache)
            .field(
                "max_concurrent_introspections",
                &self.max_concurrent_introspections,
            )
            .finish()
    }
}

/// Bounds of the introspection cache.
#[derive(Debug, Clone)]
pub struct IntrospectionCacheConfig {
    /// Most tokens remembered at once.
    pub max_entries: u64,
    /// Longest an active token's result is trusted (also bounded by the token's own expiry);
    /// clamped to [`MAX_POSITIVE_TTL`].
    pub positive_ttl: Duration,
    /// How long an inactive token's result is remembered.
    pub negative_ttl: Duration,
}

impl Default for IntrospectionCacheConfig {
    fn default() -> Self {
        IntrospectionCacheConfig {
            max_entries: 10_000,
            positive_ttl: MAX_POSITIVE_TTL,
            negative_ttl: Duration::from_secs(5),
        }
    }
}
