//! Verifies the credentials that senders present to the Telemetry Gateway.
//!
//! Sourcegraph instances identify themselves with a signed license key ([`license`]); managed
//! services will present SAMS tokens (a `sams` module, added separately). This crate decides
//! whether a credential is genuine and what it says. It knows nothing of gRPC, streams or sinks:
//! the server maps its errors to wire statuses.

pub mod license;

pub use license::{
    KeyConfigError, LicenseError, LicenseInfo, LicenseVerifier, PRODUCTION_PUBLIC_KEY,
    SignatureFormat, VerifiedLicense, license_key_fingerprint,
};
