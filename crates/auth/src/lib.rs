//! Verifies the credentials that senders present to the Telemetry Gateway.
//!
//! Sourcegraph instances identify themselves with a signed license key ([`license`]); managed
//! services present SAMS tokens, which [`sams`] checks with SAMS itself. This crate decides
//! whether a credential is genuine and what it says. It knows nothing of gRPC, streams or sinks:
//! the server maps its errors to wire statuses.

pub mod license;
pub mod sams;

pub use license::{
    KeyConfigError, LicenseError, LicenseInfo, LicenseVerifier, PRODUCTION_PUBLIC_KEY,
    SignatureFormat, VerifiedLicense, license_key_fingerprint,
};
