//! Who sent a stream's events: the identity established from its metadata message.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use telemetry_gateway_auth::LicenseInfo;
use telemetry_gateway_proto::render_metadata;
use telemetry_gateway_proto::v1::RecordEventsRequestMetadata;
use telemetry_gateway_proto::v1::identifier::Identifier;

/// The identity of a sender and the metadata JSON published with each of its events.
#[derive(Debug, Clone)]
pub struct Source {
    /// What kind of sender this is, with its identifiers.
    pub kind: SourceKind,
    /// The sender's diagnostic request ID.
    pub request_id: String,
    /// `RecordEventsRequestMetadata` as canonical JSON, rendered once per stream.
    metadata_json: Bytes,
    /// Who per-sender rate limits count against; see [`Source::rate_limit_key`].
    rate_limit_key: String,
}

/// Identifiers longer than this are hashed in the rate-limit key, so a sender cannot make the
/// limiter hold (or echo back) arbitrarily long strings.
const MAX_KEY_ID_BYTES: usize = 128;

/// The three kinds of sender, with what is known about each.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// A Sourcegraph instance with a verified license key.
    LicensedInstance {
        /// The instance's site ID.
        instance_id: String,
        /// The instance's external URL.
        external_url: String,
        /// The decoded, verified license.
        license: Box<LicenseInfo>,
    },
    /// A Sourcegraph instance without a license.
    UnlicensedInstance {
        /// The instance's site ID.
        instance_id: String,
        /// The instance's external URL.
        external_url: String,
    },
    /// An internal managed service, authenticated by token.
    ManagedService {
        /// The service's self-declared ID.
        service_id: String,
        /// The service's environment, if given.
        environment: Option<String>,
    },
}

impl Source {
    /// Builds a source, rendering its metadata JSON once.
    pub fn new(kind: SourceKind, metadata: &RecordEventsRequestMetadata) -> Source {
        let mut json = Vec::with_capacity(128);
        render_metadata(metadata, &mut json);
        Source {
            rate_limit_key: rate_limit_key(&kind, metadata),
            kind,
            request_id: metadata.request_id.clone(),
            metadata_json: Bytes::from(json),
        }
    }

    /// Who per-sender rate limits count against, also the sender's name in a refusal:
    /// `instance <instance ID>` for licensed instances, `unlicensed instance <instance ID>` for
    /// unlicensed ones (kept apart, so that an unauthenticated sender claiming a licensed
    /// customer's instance ID cannot use up that customer's limit), `license <fingerprint>` for a
    /// licensed instance without an instance ID, and `service <service ID>` for managed services.
    /// Over-long IDs appear as `sha256:<hex>`.
    pub fn rate_limit_key(&self) -> &str {
        &self.rate_limit_key
    }

    /// The `publisher.source` attribute and metrics label: `licensed_instance`,
    /// `unlicensed_instance`, or the managed service's ID.
    pub fn publisher_source(&self) -> &str {
        match &self.kind {
            SourceKind::LicensedInstance { .. } => "licensed_instance",
            SourceKind::UnlicensedInstance { .. } => "unlicensed_instance",
            SourceKind::ManagedService { service_id, .. } => service_id,
        }
    }

    /// Whether events that can never succeed are acknowledged anyway. Instances retry
    /// unacknowledged events for ever, so they are told such events succeeded; managed services
    /// are told the truth.
    pub fn acknowledges_permanent_failures(&self) -> bool {
        !matches!(self.kind, SourceKind::ManagedService { .. })
    }

    /// The rendered request metadata.
    pub fn metadata_json(&self) -> &[u8] {
        &self.metadata_json
    }

    /// The license, for licensed instances.
    pub fn license(&self) -> Option<&LicenseInfo> {
        match &self.kind {
            SourceKind::LicensedInstance { license, .. } => Some(license),
            _ => None,
        }
    }
}

fn rate_limit_key(kind: &SourceKind, metadata: &RecordEventsRequestMetadata) -> String {
    match kind {
        SourceKind::LicensedInstance { instance_id, .. } if instance_id.is_empty() => {
            format!("license {}", license_identity(metadata))
        }
        SourceKind::LicensedInstance { instance_id, .. } => {
            format!("instance {}", bounded_id(instance_id))
        }
        SourceKind::UnlicensedInstance { instance_id, .. } => {
            format!("unlicensed instance {}", bounded_id(instance_id))
        }
        SourceKind::ManagedService { service_id, .. } => {
            format!("service {}", bounded_id(service_id))
        }
    }
}

/// The fingerprint of the stream's license key. With fingerprinting on, `metadata` already
/// carries it (a real key is base64url and never contains `:`), so it is used as it is.
fn license_identity(metadata: &RecordEventsRequestMetadata) -> String {
    match metadata
        .identifier
        .as_ref()
        .and_then(|identifier| identifier.identifier.as_ref())
    {
        Some(Identifier::LicensedInstance(licensed))
            if licensed.license_key.starts_with("sha256:") =>
        {
            licensed.license_key.clone()
        }
        Some(Identifier::LicensedInstance(licensed)) => {
            telemetry_gateway_auth::license_key_fingerprint(&licensed.license_key)
        }
        _ => String::new(),
    }
}

fn bounded_id(id: &str) -> String {
    if id.len() <= MAX_KEY_ID_BYTES {
        id.to_string()
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(id.as_bytes())))
    }
}

/// Returns a copy of `metadata` whose license key is replaced by its fingerprint, for operators
/// who keep secrets out of their analytics pipeline.
pub fn with_fingerprinted_license_key(
    metadata: &RecordEventsRequestMetadata,
) -> RecordEventsRequestMetadata {
    let mut metadata = metadata.clone();
    if let Some(Identifier::LicensedInstance(licensed)) = metadata
        .identifier
        .as_mut()
        .and_then(|identifier| identifier.identifier.as_mut())
    {
        licensed.license_key =
            telemetry_gateway_auth::license_key_fingerprint(&licensed.license_key);
    }
    metadata
}

#[cfg(test)]
mod tests {
    use telemetry_gateway_proto::v1::Identifier as IdentifierMessage;
    use telemetry_gateway_proto::v1::identifier::LicensedInstanceIdentifier;

    use super::*;

    fn licensed(instance_id: &str, license_key: &str) -> Source {
        let metadata = RecordEventsRequestMetadata {
            request_id: "r".into(),
            identifier: Some(IdentifierMessage {
                identifier: Some(Identifier::LicensedInstance(LicensedInstanceIdentifier {
                    license_key: license_key.into(),
                    instance_id: instance_id.into(),
                    external_url: String::new(),
                })),
            }),
        };
        let kind = SourceKind::LicensedInstance {
            instance_id: instance_id.into(),
            external_url: String::new(),
            license: Box::default(),
        };
        Source::new(kind, &metadata)
    }

    fn unlicensed(instance_id: &str) -> Source {
        let kind = SourceKind::UnlicensedInstance {
            instance_id: instance_id.into(),
            external_url: String::new(),
        };
        Source::new(kind, &RecordEventsRequestMetadata::default())
    }

    #[test]
    fn instances_are_limited_by_instance_id_with_unlicensed_ones_apart() {
        assert_eq!(
            licensed("site-1", "key").rate_limit_key(),
            "instance site-1"
        );
        assert_eq!(
            unlicensed("site-1").rate_limit_key(),
            "unlicensed instance site-1",
            "an unauthenticated sender cannot use up a licensed instance's limit"
        );
    }

    #[test]
    fn a_licensed_instance_without_an_instance_id_is_limited_by_its_license() {
        let fingerprint = telemetry_gateway_auth::license_key_fingerprint("key");
        assert_eq!(
            licensed("", "key").rate_limit_key(),
            format!("license {fingerprint}")
        );
        assert_eq!(
            licensed("", &fingerprint).rate_limit_key(),
            format!("license {fingerprint}"),
            "an already fingerprinted key is the same license"
        );
    }

    #[test]
    fn managed_services_are_limited_by_service_id() {
        let kind = SourceKind::ManagedService {
            service_id: "svc".into(),
            environment: None,
        };
        let source = Source::new(kind, &RecordEventsRequestMetadata::default());
        assert_eq!(source.rate_limit_key(), "service svc");
    }

    #[test]
    fn over_long_ids_are_hashed() {
        let key = unlicensed(&"x".repeat(10_000)).rate_limit_key().to_string();
        assert!(key.starts_with("unlicensed instance sha256:"), "{key}");
        assert_eq!(key.len(), "unlicensed instance sha256:".len() + 64);
    }
}
