//! The managed-service check: who may send events as a managed service.
//!
//! The gateway asks a [`ManagedServiceAuthorizer`] whether the caller's gRPC metadata carries a
//! token allowed to write events. SAMS token introspection plugs in here; without SAMS client
//! credentials the gateway uses [`NotConfigured`], which refuses every managed-service call with
//! a message saying what is missing.

use async_trait::async_trait;
use tonic::Code;
use tonic::metadata::MetadataMap;

/// Why a managed-service caller was refused; `Display` is the message the caller sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManagedAuthError {
    /// The request carries no metadata at all.
    #[error("no token header")]
    NoTokenHeader,
    /// There is no single non-empty `authorization` value.
    #[error("no token header value")]
    NoTokenHeaderValue,
    /// The `authorization` value is not `Bearer <token>`.
    #[error("invalid token header: {0}")]
    InvalidTokenHeader(String),
    /// Token introspection failed (SAMS unreachable, say).
    #[error("unable to validate token")]
    IntrospectionFailed,
    /// The caller went away during introspection.
    #[error("request canceled")]
    Canceled,
    /// The token is inactive or lacks the required scope.
    #[error("permission denied")]
    PermissionDenied,
    /// The gateway has no way to check tokens.
    #[error("{0}")]
    NotConfigured(String),
}

impl ManagedAuthError {
    /// The gRPC status code for this refusal.
    pub fn code(&self) -> Code {
        match self {
            ManagedAuthError::NoTokenHeader
            | ManagedAuthError::NoTokenHeaderValue
            | ManagedAuthError::InvalidTokenHeader(_)
            | ManagedAuthError::NotConfigured(_) => Code::Unauthenticated,
            ManagedAuthError::IntrospectionFailed => Code::Internal,
            ManagedAuthError::Canceled => Code::Cancelled,
            ManagedAuthError::PermissionDenied => Code::PermissionDenied,
        }
    }
}

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
