//! The license check itself: from key text to a verified license, or the reason it is refused.

use std::fmt;
use std::sync::Arc;

use super::envelope::SignedEnvelope;
use super::info::LicenseInfo;
use super::key_text::decode_key_text;
use super::signature::{RsaSignatureChecker, SignatureFormat};
use super::{KeyConfigError, LicenseError, verification_key};

/// The public key that signs real Sourcegraph licenses (the original's `publicKeyData`).
pub const PRODUCTION_PUBLIC_KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDUUd9r83fGmYVLzcqQp5InyAoJB5lLxlM7s41SUUtxfnG6JpmvjNd+WuEptJGk0C/Zpyp/cCjCV4DljDs8Z7xjRbvJYW+vklFFxXrMTBs/+HjpIBKlYTmG8SqTyXyu1s4485Kh1fEC5SK6z2IbFaHuSHUXgDi/IepSOg1QudW4n8J91gPtT2E30/bPCBRq8oz/RVwJSDMvYYjYVb//LhV0Mx3O6hg4xzUNuwiCtNjCJ9t4YU2sV87+eJwWtQNbSQ8TelQa8WjG++XSnXUHw12bPDe7wGL/7/EJb7knggKSAMnpYpCyV35dyi4DsVc46c+b6P0gbVSosh3Uc3BJHSWF";

/// A license whose signature checked out, with what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedLicense {
    /// The signed license info.
    pub info: LicenseInfo,
    /// The algorithm the key was signed with.
    pub signature_format: SignatureFormat,
}

/// Verifies license keys against one RSA public key; cheap to clone and shareable across tasks.
#[derive(Clone)]
pub struct LicenseVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    checker: RsaSignatureChecker,
    fingerprint: String,
}

impl LicenseVerifier {
    /// Verifies against the production key that signs real Sourcegraph licenses.
    pub fn production() -> Self {
        // The key is a compile-time constant, covered by a test; this cannot fail at run time.
        #[allow(clippy::expect_used)]
        Self::from_openssh_public_key(PRODUCTION_PUBLIC_KEY)
            .expect("the built-in production license key is a valid ssh-rsa key")
    }

    /// Verifies against the `ssh-rsa` key in an OpenSSH public key line (`ssh-rsa AAAA... comment`).
    pub fn from_openssh_public_key(line: &str) -> Result<Self, KeyConfigError> {
        Self::from_rsa_key(verification_key::from_openssh_public_key(line)?)
    }

    /// Verifies against the public half of a PEM private key (PKCS#1, PKCS#8 or OpenSSH), as the
    /// original does with `SOURCEGRAPH_LICENSE_GENERATION_KEY`.
    pub fn from_pem_private_key(pem: &str) -> Result<Self, KeyConfigError> {
        Self::from_rsa_key(verification_key::from_pem_private_key(pem)?)
    }

    fn from_rsa_key(key: rsa::RsaPublicKey) -> Result<Self, KeyConfigError> {
        let fingerprint = verification_key::openssh_fingerprint(&key)?;
        Ok(Self {
            inner: Arc::new(Inner {
                checker: RsaSignatureChecker::new(key),
                fingerprint,
            }),
        })
    }

    /// The OpenSSH SHA-256 fingerprint (`SHA256:...`) of the verification key, for start-up logs.
    pub fn key_fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// Checks a license key as sent by an instance and returns what it says.
    ///
    /// Expiry and tags are not judged here: the original gateway accepts any correctly signed
    /// license, and stricter policies belong to the caller.
    pub fn verify(&self, key: &str) -> Result<VerifiedLicense, LicenseError> {
        let envelope = SignedEnvelope::parse(&decode_key_text(key)?)?;
        let format = RsaSignatureChecker::format(&envelope.signature.format)?;
        // Checking the signature before reading the info means unauthenticated content is never
        // interpreted; the original reads the info first, but accepts and rejects the same keys.
        self.inner
            .checker
            .check(format, &envelope.info, &envelope.signature.blob)?;
        Ok(VerifiedLicense {
            info: LicenseInfo::parse(&envelope.info)?,
            signature_format: format,
        })
    }
}

impl fmt::Debug for LicenseVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LicenseVerifier")
            .field("key", &self.inner.fingerprint)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_key_parses() {
        let verifier = LicenseVerifier::production();
        assert!(verifier.key_fingerprint().starts_with("SHA256:"));
    }

    #[test]
    fn production_key_is_the_original_rsa_2048_key() {
        let key = verification_key::from_openssh_public_key(PRODUCTION_PUBLIC_KEY);
        let bits = key.map(|key| rsa::traits::PublicKeyParts::n(&key).bits());
        assert_eq!(bits, Ok(2048));
    }

    #[test]
    fn verifier_is_send_sync_and_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<LicenseVerifier>();
    }

    #[test]
    fn debug_output_shows_only_the_fingerprint() {
        let verifier = LicenseVerifier::production();
        let debug = format!("{verifier:?}");
        assert!(
            debug.contains("SHA256:") && !debug.contains("AAAA"),
            "{debug}"
        );
    }

    #[test]
    fn empty_key_is_reported_as_empty() {
        let verifier = LicenseVerifier::production();
        assert_eq!(verifier.verify(""), Err(LicenseError::Empty));
    }
}
