//! [`SamsClient`]: token introspection at SAMS over the Connect protocol (JSON), with a bounded
//! cache in front.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use sha2::{Digest, Sha256};

use super::config::{IntrospectionCacheConfig, SamsClientConfig};
use super::error::{SamsError, read_json};
use super::introspection::Introspection;
use super::token_source::TokenSource;

/// The Connect endpoint of `clients.v1.TokensService/IntrospectToken`.
const INTROSPECT_PATH: &str = "/api/grpc/clients.v1.TokensService/IntrospectToken";

/// Checks SAMS tokens. Cheap to share behind an `Arc`; one instance per gateway.
pub struct SamsClient {
    http: reqwest::Client,
    introspect_url: String,
    tokens: TokenSource,
    cache: Cache<TokenDigest, CachedAnswer>,
    cache_config: IntrospectionCacheConfig,
    /// One permit per introspection call in progress.
    introspections: tokio::sync::Semaphore,
    max_introspections: usize,
    /// How long a check waits for a permit.
    permit_wait: Duration,
}

impl std::fmt::Debug for SamsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SamsClient")
            .field("introspect_url", &self.introspect_url)
            .field("cached", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

/// The cache key: a SHA-256 of the token, so raw tokens are never kept.
type TokenDigest = [u8; 32];

/// A cached answer and how long it may be reused (decided when it was fetched).
#[derive(Clone)]
struct CachedAnswer {
    introspection: Arc<Introspection>,
    ttl: Duration,
}

/// Each entry lives as long as its own answer allows.
struct AnswerExpiry;

impl Expiry<TokenDigest, CachedAnswer> for AnswerExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenDigest,
        value: &CachedAnswer,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

impl SamsClient {
    /// A client for the SAMS at `config.api_url`; no request is made until the first check.
    pub fn new(config: SamsClientConfig) -> Result<SamsClient, SamsError> {
        let api_url = normalize_url(&config.api_url)?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("telemetry-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| SamsError::InvalidUrl {
                url: config.api_url.clone(),
                message: format!("building the HTTP client: {err}"),
            })?;
        let cache = Cache::builder()
            .max_capacity(config.cache.max_entries)
            .expire_after(AnswerExpiry)
            .build();
        Ok(SamsClient {
            tokens: TokenSource::new(
                http.clone(),
                &api_url,
                config.client_id,
                config.client_secret,
            ),
            introspect_url: format!("{api_url}{INTROSPECT_PATH}"),
            http,
            cache,
            cache_config: config.cache,
            introspections: tokio::sync::Semaphore::new(
                config.max_concurrent_introspections.max(1),
            ),
            max_introspections: config.max_concurrent_introspections.max(1),
            permit_wait: config.request_timeout,
        })
    }

    /// What SAMS says about `token`: from the cache when a recent answer is there, otherwise
    /// from one introspection call shared by every concurrent check of the same token. Errors
    /// are not cached.
    pub async fn introspect(&self, token: &str) -> Result<Arc<Introspection>, SamsError> {
        let answer = self
            .cache
            .try_get_with(digest(token), self.fetch_answer(token))
            .await
            .map_err(|err| SamsError::clone(&err))?;
        Ok(answer.introspection)
    }

    /// Like [`introspect`](Self::introspect), giving up with [`SamsError::Canceled`] as soon
    /// as `canceled` completes (the caller went away).
    pub async fn introspect_until(
        &self,
        token: &str,
        canceled: impl Future<Output = ()>,
    ) -> Result<Arc<Introspection>, SamsError> {
        tokio::select! {
            answer = self.introspect(token) => answer,
            () = canceled => Err(SamsError::Canceled),
        }
    }

    async fn fetch_answer(&self, token: &str) -> Result<CachedAnswer, SamsError> {
        let overloaded = || SamsError::Overloaded {
            limit: self.max_introspections,
            waited: self.permit_wait,
        };
        let _permit = tokio::time::timeout(self.permit_wait, self.introspections.acquire())
            .await
            .map_err(|_| overloaded())?
            .map_err(|_| overloaded())?;
        let introspection = self.call_introspect(token).await?;
        let ttl = introspection.cache_ttl(chrono::Utc::now(), &self.cache_config);
        Ok(CachedAnswer {
            introspection: Arc::new(introspection),
            ttl,
        })
    }

    /// One introspection, retried once with a fresh client token if SAMS refused ours (it may
    /// have been revoked or rotated before its stated expiry).
    async fn call_introspect(&self, token: &str) -> Result<Introspection, SamsError> {
        let own_token = self.tokens.token().await?;
        match self.post_introspect(token, &own_token).await {
            Err(SamsError::Status { status: 401, .. }) => {
                self.tokens.invalidate(&own_token).await;
                let fresh = self.tokens.token().await?;
                self.post_introspect(token, &fresh).await
            }
            other => other,
        }
    }

    async fn post_introspect(
        &self,
        token: &str,
        own_token: &str,
    ) -> Result<Introspection, SamsError> {
        let transport = |err: reqwest::Error| SamsError::Transport {
            endpoint: INTROSPECT_PATH,
            message: err.to_string(),
        };
        let response = self
            .http
            .post(&self.introspect_url)
            .bearer_auth(own_token)
            .header("Connect-Protocol-Version", "1")
            .json(&serde_json::json!({ "token": token }))
            .send()
            .await
            .map_err(transport)?;
        read_json(response, INTROSPECT_PATH).await
    }
}

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Checks that `url` is an absolute http(s) URL and drops any trailing slash, so paths can be
/// appended.
fn normalize_url(url: &str) -> Result<String, SamsError> {
    let invalid = |message: &str| SamsError::InvalidUrl {
        url: url.to_string(),
        message: message.to_string(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|err| invalid(&err.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("a query or fragment is not allowed"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_trimmed() {
        assert_eq!(
            normalize_url("https://accounts.sourcegraph.com/")
                .ok()
                .as_deref(),
            Some("https://accounts.sourcegraph.com")
        );
        assert_eq!(
            normalize_url("http://127.0.0.1:8080/sams").ok().as_deref(),
            Some("http://127.0.0.1:8080/sams")
        );
        assert!(normalize_url("accounts.sourcegraph.com").is_err());
        assert!(normalize_url("ftp://accounts.sourcegraph.com").is_err());
    }

    #[test]
    fn the_cache_key_is_a_digest_not_the_token() {
        let key = digest("secret-token");
        assert_ne!(&key[..], b"secret-token".as_slice());
        assert_eq!(key, digest("secret-token"));
        assert_ne!(key, digest("secret-token2"));
    }
}
