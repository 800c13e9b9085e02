//! Who sent a stream's events: the identity established from its metadata message.

use bytes::Bytes;
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
}

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
            kind,
            request_id: metadata.request_id.clone(),
            metadata_json: Bytes::from(json),
        }
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
