//! SSH-style RSA PKCS#1 v1.5 signatures, checked the way Go's `x/crypto/ssh` checks them.

use std::fmt;

use rsa::RsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier as _;
use rsa::traits::PublicKeyParts as _;
use sha1::Sha1;
use sha2::{Sha256, Sha512};

use super::LicenseError;

/// Longest format name echoed back in an error, so a hostile key cannot bloat logs.
const MAX_ECHOED_FORMAT_CHARS: usize = 64;

/// An SSH signature algorithm accepted for an RSA key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureFormat {
    /// `ssh-rsa`: SHA-1, what Go's SSH signer produces for RSA keys and so what real keys use.
    SshRsa,
    /// `rsa-sha2-256`: SHA-256.
    RsaSha256,
    /// `rsa-sha2-512`: SHA-512.
    RsaSha512,
}

impl SignatureFormat {
    /// Every accepted format.
    pub const ALL: [Self; 3] = [Self::SshRsa, Self::RsaSha256, Self::RsaSha512];

    /// The SSH algorithm name, as found in the envelope's `Format`.
    pub const fn ssh_name(self) -> &'static str {
        match self {
            Self::SshRsa => "ssh-rsa",
            Self::RsaSha256 => "rsa-sha2-256",
            Self::RsaSha512 => "rsa-sha2-512",
        }
    }

    /// The format with this exact SSH algorithm name, if it is accepted.
    pub fn from_ssh_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|format| format.ssh_name() == name)
    }
}

impl fmt::Display for SignatureFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ssh_name())
    }
}

/// Checks signatures against one RSA public key in any accepted format.
#[derive(Debug)]
pub(crate) struct RsaSignatureChecker {
    sha1: VerifyingKey<Sha1>,
    sha256: VerifyingKey<Sha256>,
    sha512: VerifyingKey<Sha512>,
    modulus_len: usize,
}

impl RsaSignatureChecker {
    /// Prepares verifiers for `key`.
    pub(crate) fn new(key: RsaPublicKey) -> Self {
        Self {
            modulus_len: key.size(),
            sha1: VerifyingKey::new(key.clone()),
            sha256: VerifyingKey::new(key.clone()),
            sha512: VerifyingKey::new(key),
        }
    }

    /// Resolves the envelope's format name to an accepted format.
    pub(crate) fn format(name: &str) -> Result<SignatureFormat, LicenseError> {
        SignatureFormat::from_ssh_name(name).ok_or_else(|| {
            LicenseError::UnsupportedSignatureFormat {
                format: name.chars().take(MAX_ECHOED_FORMAT_CHARS).collect(),
            }
        })
    }

    /// Checks that `blob` signs `message` in `format`.
    pub(crate) fn check(
        &self,
        format: SignatureFormat,
        message: &[u8],
        blob: &[u8],
    ) -> Result<(), LicenseError> {
        // SSH signers may drop the leading zero bytes of the signature integer; Go pads them
        // back to the modulus length before verifying, and so must we.
        let padding = self
            .modulus_len
            .checked_sub(blob.len())
            .ok_or(LicenseError::SignatureMismatch)?;
        let mut padded = vec![0; padding];
        padded.extend_from_slice(blob);
        let signature =
            Signature::try_from(padded.as_slice()).map_err(|_| LicenseError::SignatureMismatch)?;
        let verified = match format {
            SignatureFormat::SshRsa => self.sha1.verify(message, &signature),
            SignatureFormat::RsaSha256 => self.sha256.verify(message, &signature),
            SignatureFormat::RsaSha512 => self.sha512.verify(message, &signature),
        };
        verified.map_err(|_| LicenseError::SignatureMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for format in SignatureFormat::ALL {
            assert_eq!(
                SignatureFormat::from_ssh_name(format.ssh_name()),
                Some(format)
            );
            assert_eq!(format.to_string(), format.ssh_name());
        }
    }

    #[test]
    fn names_are_case_sensitive_and_exact() {
        assert_eq!(SignatureFormat::from_ssh_name("SSH-RSA"), None);
        assert_eq!(SignatureFormat::from_ssh_name("ssh-ed25519"), None);
        assert_eq!(SignatureFormat::from_ssh_name(""), None);
    }

    #[test]
    fn unsupported_format_error_names_it() {
        let err = RsaSignatureChecker::format("ssh-dss").expect_err("must be rejected");
        assert_eq!(err.to_string(), "unsupported signature format \"ssh-dss\"");
    }

    #[test]
    fn unsupported_format_error_is_bounded() {
        let err = RsaSignatureChecker::format(&"x".repeat(10_000)).expect_err("must be rejected");
        assert!(err.to_string().len() < 200);
    }
}
