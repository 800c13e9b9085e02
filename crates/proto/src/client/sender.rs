//! Who is sending events: the identifier put in the request metadata, and for managed services
//! the bearer token sent alongside it.

use std::fmt;

use crate::v1::Identifier;
use crate::v1::identifier::{
    Identifier as IdentifierKind, LicensedInstanceIdentifier, ManagedServiceIdentifier,
    UnlicensedInstanceIdentifier,
};

use super::ClientError;

/// The sender of events, as the gateway identifies it. `Debug` hides license keys and tokens.
#[derive(Clone, PartialEq, Eq)]
pub enum Sender {
    /// A licensed Sourcegraph instance; the gateway verifies the license key's signature.
    LicensedInstance {
        /// The instance's license key.
        license_key: String,
        /// The instance (site) ID.
        instance_id: String,
        /// The instance's external URL.
        external_url: String,
    },
    /// An unlicensed Sourcegraph instance.
    UnlicensedInstance {
        /// The instance (site) ID; required.
        instance_id: String,
        /// The instance's external URL.
        external_url: String,
    },
    /// A managed service, authenticated by a SAMS token with `telemetry_gateway::events::write`.
    ManagedService {
        /// The service ID, for example `my-service`; required.
        service_id: String,
        /// The service's environment, for example `prod`.
        environment: Option<String>,
        /// The SAMS access token, sent as `authorization: Bearer <token>`.
        token: String,
    },
}

impl Sender {
    /// The identifier sent in the request metadata.
    pub fn identifier(&self) -> Identifier {
        let kind = match self.clone() {
            Sender::LicensedInstance {
                license_key,
                instance_id,
                external_url,
            } => IdentifierKind::LicensedInstance(LicensedInstanceIdentifier {
                license_key,
                instance_id,
                external_url,
            }),
            Sender::UnlicensedInstance {
                instance_id,
                external_url,
            } => IdentifierKind::UnlicensedInstance(UnlicensedInstanceIdentifier {
                instance_id,
                external_url,
            }),
            Sender::ManagedService {
                service_id,
                environment,
                ..
            } => IdentifierKind::ManagedService(ManagedServiceIdentifier {
                service_id,
                service_environment: environment,
            }),
        };
        Identifier {
            identifier: Some(kind),
        }
    }

    /// The bearer token, for managed services.
    pub fn token(&self) -> Option<&str> {
        match self {
            Sender::ManagedService { token, .. } => Some(token),
            _ => None,
        }
    }

    /// Checks what the gateway would refuse anyway, so the mistake shows before connecting.
    pub(crate) fn check(&self) -> Result<(), ClientError> {
        let missing = match self {
            Sender::LicensedInstance { license_key, .. } if license_key.is_empty() => {
                "license_key is required for a licensed instance"
            }
            Sender::UnlicensedInstance { instance_id, .. } if instance_id.is_empty() => {
                "instance_id is required for unlicensed instance"
            }
            Sender::ManagedService { service_id, .. } if service_id.is_empty() => {
                "service_id is required for managed services"
            }
            Sender::ManagedService { token, .. } if token.is_empty() => {
                "a token is required for managed services"
            }
            _ => return Ok(()),
        };
        Err(ClientError::InvalidSender(missing))
    }
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sender::LicensedInstance {
                instance_id,
                external_url,
                ..
            } => f
                .debug_struct("LicensedInstance")
                .field("license_key", &"<redacted>")
                .field("instance_id", instance_id)
                .field("external_url", external_url)
                .finish(),
            Sender::UnlicensedInstance {
                instance_id,
                external_url,
            } => f
                .debug_struct("UnlicensedInstance")
                .field("instance_id", instance_id)
                .field("external_url", external_url)
                .finish(),
            Sender::ManagedService {
                service_id,
                environment,
                ..
            } => f
                .debug_struct("ManagedService")
                .field("service_id", service_id)
                .field("environment", environment)
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_secrets() {
        let licensed = Sender::LicensedInstance {
            license_key: "secret-key".into(),
            instance_id: "site".into(),
            external_url: "https://sg.example.com".into(),
        };
        let managed = Sender::ManagedService {
            service_id: "svc".into(),
            environment: Some("prod".into()),
            token: "secret-token".into(),
        };
        for sender in [licensed, managed] {
            let debug = format!("{sender:?}");
            assert!(!debug.contains("secret"), "{debug}");
        }
    }

    #[test]
    fn a_managed_service_identifier_carries_no_token() {
        let managed = Sender::ManagedService {
            service_id: "svc".into(),
            environment: None,
            token: "tok".into(),
        };
        assert_eq!(
            managed.identifier().identifier,
            Some(IdentifierKind::ManagedService(ManagedServiceIdentifier {
                service_id: "svc".into(),
                service_environment: None,
            }))
        );
        assert_eq!(managed.token(), Some("tok"));
    }

    #[test]
    fn required_fields_are_checked() {
        let unlicensed = Sender::UnlicensedInstance {
            instance_id: String::new(),
            external_url: String::new(),
        };
        assert_eq!(
            unlicensed.check().map_err(|e| e.to_string()),
            Err("invalid sender: instance_id is required for unlicensed instance".to_string())
        );
    }
}
