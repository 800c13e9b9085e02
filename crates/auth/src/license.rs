//! Sourcegraph license keys, verified offline exactly as the original gateway does them
//! (`docs/compatibility.md` §5).
//!
//! A key is base64url (no padding) of a JSON envelope `{"sig": <SSH signature>, "info": <bytes>}`;
//! the signature is SSH-style RSA PKCS#1 v1.5 over the raw `info` bytes, which are themselves JSON
//! describing the license. `docs/compatibility.md` §5 has the wire details mirrored here.

mod envelope;
mod error;
mod go_json;
mod info;
mod key_text;
mod signature;
mod tags;
mod verification_key;
mod verifier;

pub use error::{KeyConfigError, LicenseError};
pub use info::{GO_ZERO_TIME, LicenseInfo};
pub use key_text::license_key_fingerprint;
pub use signature::SignatureFormat;
pub use tags::{
    PLAN_TAG_PREFIX, TAG_ALLOW_AIR_GAPPED, TAG_DEV, TAG_DISABLE_TELEMETRY_EVENTS_EXPORT,
    TAG_INTERNAL, TAG_TRIAL, TAG_TRUE_UP,
};
pub use verifier::{LicenseVerifier, PRODUCTION_PUBLIC_KEY, VerifiedLicense};
