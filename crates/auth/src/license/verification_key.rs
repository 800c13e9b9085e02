//! Turning operator-supplied key material into the RSA public key that verifies licenses.
//!
//! Mirrors the original's inputs: an OpenSSH `authorized_keys` line, or a PEM private key in any
//! encoding Go's `ssh.ParsePrivateKey` reads (PKCS#1, PKCS#8, OpenSSH), of which only the public
//! half is kept.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::{DecodePrivateKey as _, PrivateKeyInfo};
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, RsaPublicKey};
use ssh_key::HashAlg;
use ssh_key::public::KeyData;

use super::KeyConfigError;

/// Smallest modulus accepted; Go's `crypto/rsa` refuses to verify with anything shorter.
const MIN_MODULUS_BITS: usize = 1024;

/// Largest modulus accepted, to bound the cost of a verification.
const MAX_MODULUS_BITS: usize = 8192;

/// The `rsaEncryption` algorithm identifier that PKCS#8 uses for RSA keys.
const RSA_ENCRYPTION_OID: &str = "1.2.840.113549.1.1.1";

/// Parses an OpenSSH public key line, which must hold an `ssh-rsa` key.
pub(crate) fn from_openssh_public_key(line: &str) -> Result<RsaPublicKey, KeyConfigError> {
    let key = ssh_key::PublicKey::from_openssh(line.trim()).map_err(|err| {
        KeyConfigError::NotOpenSshPublicKey {
            detail: err.to_string(),
        }
    })?;
    let rsa = key.key_data().rsa().ok_or_else(|| KeyConfigError::NotRsa {
        algorithm: key.algorithm().to_string(),
    })?;
    rsa_public_key(rsa)
}

/// Derives the public key of a PEM-encoded RSA private key.
pub(crate) fn from_pem_private_key(pem: &str) -> Result<RsaPublicKey, KeyConfigError> {
    let block = PemBlock::find(pem)?;
    match block.label {
        "RSA PRIVATE KEY" => {
            block.refuse_encrypted()?;
            let key = rsa::RsaPrivateKey::from_pkcs1_der(&block.der).map_err(|err| {
                KeyConfigError::InvalidPrivateKey {
                    encoding: "PKCS#1",
                    detail: err.to_string(),
                }
            })?;
            checked(key.to_public_key())
        }
        "PRIVATE KEY" => from_pkcs8(&block.der),
        "OPENSSH PRIVATE KEY" => from_openssh_private_key(&block.der),
        "ENCRYPTED PRIVATE KEY" => Err(KeyConfigError::EncryptedPrivateKey),
        "EC PRIVATE KEY" => Err(not_rsa("an EC key")),
        "DSA PRIVATE KEY" => Err(not_rsa("a DSA key")),
        other => Err(KeyConfigError::UnsupportedPemType {
            label: other.to_owned(),
        }),
    }
}

/// The OpenSSH-style SHA-256 fingerprint (`SHA256:...`) of `key`, for start-up logs.
pub(crate) fn openssh_fingerprint(key: &RsaPublicKey) -> Result<String, KeyConfigError> {
    let ssh = ssh_key::public::RsaPublicKey::try_from(key).map_err(|err| {
        KeyConfigError::UnusableRsaKey {
            detail: err.to_string(),
        }
    })?;
    Ok(KeyData::Rsa(ssh).fingerprint(HashAlg::Sha256).to_string())
}

fn from_pkcs8(der: &[u8]) -> Result<RsaPublicKey, KeyConfigError> {
    let invalid = |detail: String| KeyConfigError::InvalidPrivateKey {
        encoding: "PKCS#8",
        detail,
    };
    // Look at the algorithm first so that an EC or Ed25519 key gets a clear "not RSA" message.
    let info = PrivateKeyInfo::try_from(der).map_err(|err| invalid(err.to_string()))?;
    let oid = info.algorithm.oid.to_string();
    if oid != RSA_ENCRYPTION_OID {
        return Err(not_rsa(match oid.as_str() {
            "1.2.840.10045.2.1" => "an EC key",
            "1.3.101.112" => "an Ed25519 key",
            "1.2.840.10040.4.1" => "a DSA key",
            _ => "a key of another type",
        }));
    }
    let key = rsa::RsaPrivateKey::from_pkcs8_der(der).map_err(|err| invalid(err.to_string()))?;
    checked(key.to_public_key())
}

fn from_openssh_private_key(binary: &[u8]) -> Result<RsaPublicKey, KeyConfigError> {
    let key = ssh_key::PrivateKey::from_bytes(binary).map_err(|err| {
        KeyConfigError::InvalidPrivateKey {
            encoding: "OpenSSH",
            detail: err.to_string(),
        }
    })?;
    // The public half is readable without the passphrase, but the original refuses encrypted
    // keys, and accepting them here would make a configuration work that fails there.
    if key.is_encrypted() {
        return Err(KeyConfigError::EncryptedPrivateKey);
    }
    let public = key.public_key();
    let rsa = public
        .key_data()
        .rsa()
        .ok_or_else(|| KeyConfigError::NotRsa {
            algorithm: public.algorithm().to_string(),
        })?;
    rsa_public_key(rsa)
}

/// Converts an SSH RSA public key without ssh-key's own conversion, which insists on 2048 bits.
fn rsa_public_key(key: &ssh_key::public::RsaPublicKey) -> Result<RsaPublicKey, KeyConfigError> {
    let unusable = |detail: &str| KeyConfigError::UnusableRsaKey {
        detail: detail.to_owned(),
    };
    let n = key
        .n
        .as_positive_bytes()
        .ok_or_else(|| unusable("the modulus is not positive"))?;
    let e = key
        .e
        .as_positive_bytes()
        .ok_or_else(|| unusable("the exponent is not positive"))?;
    let key = RsaPublicKey::new_with_max_size(
        BigUint::from_bytes_be(n),
        BigUint::from_bytes_be(e),
        MAX_MODULUS_BITS,
    )
    .map_err(|err| KeyConfigError::UnusableRsaKey {
        detail: err.to_string(),
    })?;
    checked(key)
}

fn checked(key: RsaPublicKey) -> Result<RsaPublicKey, KeyConfigError> {
    let bits = key.n().bits();
    if bits < MIN_MODULUS_BITS {
        return Err(KeyConfigError::UnusableRsaKey {
            detail: format!("the modulus has {bits} bits, fewer than {MIN_MODULUS_BITS}"),
        });
    }
    Ok(key)
}

fn not_rsa(algorithm: &str) -> KeyConfigError {
    KeyConfigError::NotRsa {
        algorithm: algorithm.to_owned(),
    }
}

/// The first PEM block of a text, decoded as Go's `encoding/pem` would.
#[derive(Debug)]
struct PemBlock<'a> {
    label: &'a str,
    encrypted: bool,
    der: Vec<u8>,
}

impl<'a> PemBlock<'a> {
    /// Finds the first block; text around it (comments, blank lines) is ignored like in Go.
    fn find(text: &'a str) -> Result<Self, KeyConfigError> {
        const BEGIN: &str = "-----BEGIN ";
        const DASHES: &str = "-----";
        let malformed = |detail: &str| KeyConfigError::MalformedPem {
            detail: detail.to_owned(),
        };

        let start = text.find(BEGIN).ok_or(KeyConfigError::NotPem)?;
        let after_begin = &text[start + BEGIN.len()..];
        let label_end = after_begin
            .find(DASHES)
            .ok_or_else(|| malformed("the BEGIN line does not end with -----"))?;
        let label = &after_begin[..label_end];
        if label.contains('\n') {
            return Err(malformed("the BEGIN line does not end with -----"));
        }
        let body_and_rest = &after_begin[label_end + DASHES.len()..];
        let end_line = format!("-----END {label}-----");
        let body_end = body_and_rest
            .find(&end_line)
            .ok_or_else(|| malformed(&format!("no matching \"{end_line}\" line")))?;
        let body = &body_and_rest[..body_end];

        // RFC 1421 headers ("Proc-Type: 4,ENCRYPTED", "DEK-Info: ...") precede the base64 data.
        let mut encrypted = false;
        let mut data = String::with_capacity(body.len());
        for line in body.lines() {
            if let Some((name, value)) = line.split_once(':') {
                encrypted |= name.trim() == "Proc-Type" && value.contains("ENCRYPTED");
            } else {
                data.extend(line.chars().filter(|c| !c.is_whitespace()));
            }
        }
        let der = STANDARD
            .decode(data.as_bytes())
            .map_err(|_| malformed("the block's contents are not valid base64"))?;
        Ok(Self {
            label,
            encrypted,
            der,
        })
    }

    fn refuse_encrypted(&self) -> Result<(), KeyConfigError> {
        if self.encrypted {
            Err(KeyConfigError::EncryptedPrivateKey)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519_PUBLIC: &str = include_str!("../../tests/testdata/ed25519.pub");
    const ED25519_OPENSSH_PRIVATE: &str =
        include_str!("../../tests/testdata/ed25519_openssh_private.pem");
    const EC_PKCS8: &str = include_str!("../../tests/testdata/ec_p256_pkcs8.pem");

    #[test]
    fn non_rsa_public_key_is_refused_with_its_algorithm() {
        let err = from_openssh_public_key(ED25519_PUBLIC).expect_err("must be rejected");
        assert_eq!(
            err,
            KeyConfigError::NotRsa {
                algorithm: "ssh-ed25519".to_owned()
            }
        );
    }

    #[test]
    fn non_rsa_openssh_private_key_is_refused_with_its_algorithm() {
        assert_eq!(
            from_pem_private_key(ED25519_OPENSSH_PRIVATE),
            Err(KeyConfigError::NotRsa {
                algorithm: "ssh-ed25519".to_owned()
            })
        );
    }

    #[test]
    fn non_rsa_pkcs8_key_is_refused_with_its_algorithm() {
        assert_eq!(
            from_pem_private_key(EC_PKCS8),
            Err(KeyConfigError::NotRsa {
                algorithm: "an EC key".to_owned()
            })
        );
    }

    #[test]
    fn sec1_ec_key_is_refused_as_not_rsa() {
        let pem = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(matches!(
            from_pem_private_key(pem),
            Err(KeyConfigError::NotRsa { .. })
        ));
    }

    #[test]
    fn garbage_public_key_is_not_openssh() {
        for line in ["", "ssh-rsa", "ssh-rsa !!!", "hello world"] {
            assert!(
                matches!(
                    from_openssh_public_key(line),
                    Err(KeyConfigError::NotOpenSshPublicKey { .. })
                ),
                "{line:?}"
            );
        }
    }

    #[test]
    fn text_without_pem_block_is_not_pem() {
        assert_eq!(
            from_pem_private_key("just some text"),
            Err(KeyConfigError::NotPem)
        );
    }

    #[test]
    fn unterminated_pem_block_is_malformed() {
        let err = from_pem_private_key("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n")
            .expect_err("must be rejected");
        assert!(matches!(err, KeyConfigError::MalformedPem { .. }), "{err}");
    }

    #[test]
    fn pem_block_with_bad_base64_is_malformed() {
        let pem = "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            from_pem_private_key(pem),
            Err(KeyConfigError::MalformedPem { .. })
        ));
    }

    #[test]
    fn certificate_pem_is_an_unsupported_type() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(
            from_pem_private_key(pem),
            Err(KeyConfigError::UnsupportedPemType {
                label: "CERTIFICATE".to_owned()
            })
        );
    }

    #[test]
    fn legacy_encrypted_pkcs1_is_refused() {
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                   DEK-Info: AES-128-CBC,00000000000000000000000000000000\n\nAAAA\n\
                   -----END RSA PRIVATE KEY-----\n";
        assert_eq!(
            from_pem_private_key(pem),
            Err(KeyConfigError::EncryptedPrivateKey)
        );
    }

    #[test]
    fn encrypted_pkcs8_is_refused() {
        let pem =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----";
        assert_eq!(
            from_pem_private_key(pem),
            Err(KeyConfigError::EncryptedPrivateKey)
        );
    }

    #[test]
    fn truncated_pkcs1_is_an_invalid_private_key() {
        let pem =
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----";
        let err = from_pem_private_key(pem).expect_err("must be rejected");
        assert!(
            matches!(
                err,
                KeyConfigError::InvalidPrivateKey {
                    encoding: "PKCS#1",
                    ..
                }
            ),
            "{err}"
        );
    }
}
