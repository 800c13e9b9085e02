//! The managed-service check: who may send events as a managed service.
//!
//! The gateway asks a [`ManagedServiceAuthorizer`] whether the caller's gRPC metadata carries a
//! token allowed to write events. [`SamsAuthorizer`] reads the bearer token and asks SAMS, with
//! the original's status codes and messages (`docs/compatibility.md` §5); without SAMS
//! client credentials the gateway uses [`NotConfigured`], which refuses every managed-service
//! call with a message saying what is missing.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use telemetry_gateway_auth::sams::{SamsClient, SamsClientConfig, SamsError, WRITE_EVENTS_SCOPE};
use tonic::metadata::MetadataMap;

use crate::error::ServerError;

/// Why a managed-service caller was refused: the authorizer's answer. Each maps to one
/// [`ServerError`] variant, which decides its message, code and metric label
/// (`crate::error`); `Display` is the message the caller sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagedAuthError {
    /// The request carries no metadata at all (never over HTTP/2).
    NoTokenHeader,
    /// There is no single non-empty `authorization` value.
    NoTokenHeaderValue,
    /// The `authorization` value is not `Bearer <token>`.
    InvalidTokenHeader(String),
    /// Token introspection failed (SAMS unreachable, say).
    IntrospectionFailed,
    /// The caller went away during introspection.
    Canceled,
    /// Too many token checks were in progress for this one to start in time.
    Overloaded,
    /// The token is inactive or lacks the required scope.
    PermissionDenied,
    /// The gateway has no way to check tokens.
    NotConfigured(String),
}

impl From<ManagedAuthError> for ServerError {
    fn from(err: ManagedAuthError) -> ServerError {
        match err {
            ManagedAuthError::NoTokenHeader => ServerError::NoTokenHeader,
            ManagedAuthError::NoTokenHeaderValue => ServerError::NoTokenHeaderValue,
            ManagedAuthError::InvalidTokenHeader(why) => ServerError::InvalidTokenHeader(why),
            ManagedAuthError::IntrospectionFailed => ServerError::TokenCheckFailed,
            ManagedAuthError::Canceled => ServerError::Canceled,
            ManagedAuthError::Overloaded => ServerError::TokenCheckOverloaded,
            ManagedAuthError::PermissionDenied => ServerError::PermissionDenied,
            ManagedAuthError::NotConfigured(what) => ServerError::ManagedAuthNotConfigured(what),
        }
    }
}

impl fmt::Display for ManagedAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&ServerError::from(self.clone()), f)
    }
}

impl std::error::Error for ManagedAuthError {}

/// Decides whether a managed-service caller may write events.
#[async_trait]
pub trait ManagedServiceAuthorizer: Send + Sync + 'static {
    /// Checks the caller's credentials in the request metadata.
    async fn authorize(&self, metadata: &MetadataMap) -> Result<(), ManagedAuthError>;
}

/// The authorizer of a gateway without SAMS client credentials: it refuses every call.
#[derive(Debug, Default, Clone, Copy)]
pub struct NotConfigured;

/// What a refused managed-service caller is told when SAMS is not configured.
pub const NOT_CONFIGURED_MESSAGE: &str = "managed service authentication is not configured on this gateway \
     (TELEMETRY_GATEWAY_SAMS_CLIENT_ID and TELEMETRY_GATEWAY_SAMS_CLIENT_SECRET are unset)";

#[async_trait]
impl ManagedServiceAuthorizer for NotConfigured {
    async fn authorize(&self, _metadata: &MetadataMap) -> Result<(), ManagedAuthError> {
        Err(ManagedAuthError::NotConfigured(
            NOT_CONFIGURED_MESSAGE.to_string(),
        ))
    }
}

/// Checks managed-service callers' SAMS tokens: present as `authorization: Bearer <token>`,
/// active, and carrying `telemetry_gateway::events::write`.
#[derive(Debug, Clone)]
pub struct SamsAuthorizer {
    client: Arc<SamsClient>,
}

impl SamsAuthorizer {
    /// An authorizer asking the SAMS that `config` describes.
    pub fn new(config: SamsClientConfig) -> Result<SamsAuthorizer, SamsError> {
        Ok(SamsAuthorizer::with_client(Arc::new(SamsClient::new(
            config,
        )?)))
    }

    /// An authorizer sharing an existing client (and its cache).
    pub fn with_client(client: Arc<SamsClient>) -> SamsAuthorizer {
        SamsAuthorizer { client }
    }
}

#[async_trait]
impl ManagedServiceAuthorizer for SamsAuthorizer {
    #[tracing::instrument(name = "CheckWriteEventsScope", skip_all, fields(client_id = tracing::field::Empty))]
    async fn authorize(&self, metadata: &MetadataMap) -> Result<(), ManagedAuthError> {
        let token = bearer_token(metadata)?;
        let introspection = match self.client.introspect(&token).await {
            Ok(introspection) => {
                tracing::Span::current().record("client_id", introspection.client_id.as_str());
                introspection
            }
            Err(err) if err.is_canceled() => return Err(ManagedAuthError::Canceled),
            Err(err) if err.is_overloaded() => {
                // Load, not a fault: a warning, kept out of Sentry.
                tracing::warn!(reason = %err, "SAMS token check not attempted");
                return Err(ManagedAuthError::Overloaded);
            }
            Err(err) => {
                tracing::error!(error = %err, "samsClient.IntrospectToken failed");
                return Err(ManagedAuthError::IntrospectionFailed);
            }
        };
        if !introspection.active {
            tracing::warn!(clientID = %introspection.client_id, "inactive token");
            return Err(ManagedAuthError::PermissionDenied);
        }
        if !introspection.allows(WRITE_EVENTS_SCOPE) {
            tracing::error!(
                clientID = %introspection.client_id,
                error = format!(
                    "got scopes [{}], required: {WRITE_EVENTS_SCOPE}",
                    introspection.scopes.join(" ")
                ),
                "attempt to authenticate using SAMS token without required scope"
            );
            return Err(ManagedAuthError::PermissionDenied);
        }
        tracing::debug!(clientID = %introspection.client_id, "SAMS token accepted");
        Ok(())
    }
}

/// The bearer token of the `authorization` metadata, by the original's rules and messages.
///
/// The original answers `no token header` only when Go finds no incoming metadata at all, which
/// a call over HTTP/2 never produces (it always carries `content-type`, `te`, `user-agent`): a
/// sender without an `authorization` key gets `no token header value` there, so it does here
/// (docs/managed-services.md). An empty map (an in-process call) keeps `no token header`.
pub fn bearer_token(metadata: &MetadataMap) -> Result<String, ManagedAuthError> {
    if metadata.is_empty() {
        return Err(ManagedAuthError::NoTokenHeader);
    }
    let mut values = metadata.get_all("authorization").iter();
    let value = match (values.next(), values.next()) {
        (Some(value), None) if !value.as_bytes().is_empty() => value,
        _ => return Err(ManagedAuthError::NoTokenHeaderValue),
    };
    let header = String::from_utf8_lossy(value.as_bytes());
    let Some((kind, token)) = header.split_once(' ') else {
        return Err(ManagedAuthError::InvalidTokenHeader(
            "token type missing in Authorization header".into(),
        ));
    };
    if !kind.eq_ignore_ascii_case("bearer") {
        return Err(ManagedAuthError::InvalidTokenHeader(format!(
            "invalid token type {} in Authorization header",
            displayable_scheme(kind)
        )));
    }
    Ok(token.to_string())
}

/// At most this many characters of a sender's authorization scheme are repeated back.
const MAX_SCHEME_CHARS: usize = 32;

/// A sender's authorization scheme as it may appear in a status, a log line or a span: at most
/// [`MAX_SCHEME_CHARS`] characters (then `...`), each a visible ASCII character other than quotes
/// and backslashes, anything else shown as `?`. Real schemes (`Basic`, `Token`) are unchanged.
pub fn displayable_scheme(scheme: &str) -> String {
    let mut shown: String = scheme
        .chars()
        .take(MAX_SCHEME_CHARS)
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '\'') {
                c
            } else {
                '?'
            }
        })
        .collect();
    if scheme.chars().nth(MAX_SCHEME_CHARS).is_some() {
        shown.push_str("...");
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;
    use tonic::{Code, Status};

    fn metadata(entries: &[(&'static str, &'static str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (key, value) in entries {
            map.append(*key, MetadataValue::from_static(value));
        }
        map
    }

    #[test]
    fn bearer_token_follows_the_original_rules() {
        let header = |m: &str| Err(ManagedAuthError::InvalidTokenHeader(m.into()));
        let cases: Vec<(MetadataMap, Result<String, ManagedAuthError>)> = vec![
            (MetadataMap::new(), Err(ManagedAuthError::NoTokenHeader)),
            (
                metadata(&[("content-type", "application/grpc"), ("te", "trailers")]),
                Err(ManagedAuthError::NoTokenHeaderValue),
            ),
            (
                metadata(&[("somethingelse", "foobar")]),
                Err(ManagedAuthError::NoTokenHeaderValue),
            ),
            (
                metadata(&[("authorization", "")]),
                Err(ManagedAuthError::NoTokenHeaderValue),
            ),
            (
                metadata(&[("authorization", "bearer a"), ("authorization", "bearer b")]),
                Err(ManagedAuthError::NoTokenHeaderValue),
            ),
            (
                metadata(&[("authorization", "bearer")]),
                header("token type missing in Authorization header"),
            ),
            (
                metadata(&[("authorization", "Basic Zm9vOmJhcg==")]),
                header("invalid token type Basic in Authorization header"),
            ),
            (
                metadata(&[("authorization", "bearer foobar")]),
                Ok("foobar".into()),
            ),
            (
                metadata(&[("authorization", "Bearer foobar")]),
                Ok("foobar".into()),
            ),
            (
                metadata(&[("authorization", "BEARER foo bar")]),
                Ok("foo bar".into()),
            ),
        ];
        for (map, expected) in cases {
            assert_eq!(bearer_token(&map), expected, "{map:?}");
        }
    }

    #[test]
    fn a_hostile_token_type_is_bounded_and_sanitised() {
        let long = format!("X{}", "a".repeat(10_000));
        let mut map = MetadataMap::new();
        map.append(
            "authorization",
            format!("{long} token")
                .parse()
                .expect("a valid header value"),
        );
        let Err(ManagedAuthError::InvalidTokenHeader(message)) = bearer_token(&map) else {
            panic!("refused as an invalid token header");
        };
        assert_eq!(
            message,
            format!(
                "invalid token type X{}... in Authorization header",
                "a".repeat(31)
            )
        );
        assert_eq!(displayable_scheme("Basic"), "Basic");
        assert_eq!(displayable_scheme("a\"b\\c\u{7f}\u{e9}\n"), "a?b?c???");
    }

    #[test]
    fn refusals_have_the_original_codes_and_messages() {
        let cases = [
            (
                ManagedAuthError::NoTokenHeader,
                Code::Unauthenticated,
                "no token header",
            ),
            (
                ManagedAuthError::NoTokenHeaderValue,
                Code::Unauthenticated,
                "no token header value",
            ),
            (
                ManagedAuthError::InvalidTokenHeader(
                    "token type missing in Authorization header".into(),
                ),
                Code::Unauthenticated,
                "invalid token header: token type missing in Authorization header",
            ),
            (
                ManagedAuthError::IntrospectionFailed,
                Code::Internal,
                "unable to validate token",
            ),
            (
                ManagedAuthError::Canceled,
                Code::Cancelled,
                "request canceled",
            ),
            (
                ManagedAuthError::PermissionDenied,
                Code::PermissionDenied,
                "permission denied",
            ),
            (
                ManagedAuthError::Overloaded,
                Code::Unavailable,
                "too many token checks in progress; retry later",
            ),
        ];
        for (err, code, message) in cases {
            assert_eq!(err.to_string(), message);
            let status = Status::from(ServerError::from(err));
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }
}
