//! The gateway's own SAMS access token (OAuth2 client credentials), fetched once and reused
//! until shortly before it expires.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use super::error::{SamsError, read_json};

/// The token endpoint, relative to the SAMS API URL.
pub(crate) const TOKEN_PATH: &str = "/oauth/token";

/// The scopes the original gateway requests for its own token.
const TOKEN_SCOPES: &str = "openid profile email";

/// Refresh this long before expiry at the latest (less for very short-lived tokens).
const REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// Lifetime assumed when SAMS does not say (`expires_in` absent).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// A token and the moment it should be replaced.
#[derive(Clone)]
struct CachedToken {
    access_token: String,
    refresh_at: Instant,
}

/// Fetches and caches the gateway's client-credentials token. The lock is held across a fetch,
/// so concurrent callers needing a fresh token share one request.
pub(crate) struct TokenSource {
    http: reqwest::Client,
    url: String,
    client_id: String,
    client_secret: String,
    current: Mutex<Option<CachedToken>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenSource {
    pub(crate) fn new(
        http: reqwest::Client,
        api_url: &str,
        client_id: String,
        client_secret: String,
    ) -> TokenSource {
        TokenSource {
            http,
            url: format!("{api_url}{TOKEN_PATH}"),
            client_id,
            client_secret,
            current: Mutex::new(None),
        }
    }

    /// A valid access token, fetched if there is none or it is about to expire.
    pub(crate) async fn token(&self) -> Result<String, SamsError> {
        let mut current = self.current.lock().await;
        if let Some(cached) = current.as_ref()
            && Instant::now() < cached.refresh_at
        {
            return Ok(cached.access_token.clone());
        }
        let fetched = self.fetch().await?;
        let token = fetched.access_token.clone();
        *current = Some(fetched);
        Ok(token)
    }

    /// Forgets `token` (SAMS refused it), so the next call fetches a new one.
    pub(crate) async fn invalidate(&self, token: &str) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| c.access_token == token) {
            *current = None;
        }
    }

    async fn fetch(&self) -> Result<CachedToken, SamsError> {
        let requested = Instant::now();
        let transport = |err: reqwest::Error| SamsError::Transport {
            endpoint: TOKEN_PATH,
            message: err.to_string(),
        };
        // Client authentication in the header (RFC 6749 §2.3.1), credentials form-encoded
        // first as that section requires and Go's oauth2 package does.
        let response = self
            .http
            .post(&self.url)
            .basic_auth(
                form_encode(&self.client_id),
                Some(form_encode(&self.client_secret)),
            )
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", TOKEN_SCOPES),
            ])
            .send()
            .await
            .map_err(transport)?;
        let parsed: TokenResponse = read_json(response, TOKEN_PATH).await?;
        if parsed.access_token.is_empty() {
            return Err(SamsError::InvalidResponse {
                endpoint: TOKEN_PATH,
                message: "empty access_token".into(),
            });
        }
        let lifetime = parsed
            .expires_in
            .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        Ok(CachedToken {
            access_token: parsed.access_token,
            refresh_at: requested + lifetime - margin,
        })
    }
}

/// `application/x-www-form-urlencoded` encoding of one value (Go's `url.QueryEscape`).
fn form_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                encoded.push(char::from(byte));
            }
            b' ' => encoded.push('+'),
            other => encoded.push_str(&format!("%{other:02X}")),
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::form_encode;

    #[test]
    fn credentials_are_form_encoded_like_go() {
        assert_eq!(form_encode("sams_cid_abc-1.2~"), "sams_cid_abc-1.2~");
        assert_eq!(form_encode("a b+c/d:é"), "a+b%2Bc%2Fd%3A%C3%A9");
    }
}
