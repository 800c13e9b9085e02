//! Why a license key was rejected, and why a verification key could not be configured.

/// Why a license key was rejected.
///
/// The messages become the `<reason>` in the gateway's `invalid license_key: <reason>` status, so
/// they describe the problem without ever quoting the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenseError {
    /// Nothing but whitespace was sent.
    #[error("license key is empty")]
    Empty,

    /// The key text is not unpadded base64url.
    #[error("license key is not valid base64url: {detail}")]
    NotBase64Url {
        /// What is wrong, with a byte offset into the key without whitespace.
        detail: String,
    },

    /// The decoded key is not JSON at all.
    #[error("license key envelope is not valid JSON: {detail}")]
    EnvelopeNotJson {
        /// The parser's complaint, which names positions but never content.
        detail: String,
    },

    /// The envelope is JSON but its fields have the wrong shape.
    #[error("license key envelope is malformed: {detail}")]
    MalformedEnvelope {
        /// Which field is wrong and how.
        detail: String,
    },

    /// The envelope carries no `sig`, or `sig` is null.
    #[error("license key has no signature")]
    MissingSignature,

    /// The envelope carries no `info`, or `info` is null.
    #[error("license key has no license info")]
    MissingInfo,

    /// The signature uses an algorithm that is not accepted for RSA keys.
    #[error("unsupported signature format {format:?}")]
    UnsupportedSignatureFormat {
        /// The format named by the key, shortened if it is unreasonably long.
        format: String,
    },

    /// The signature was not made by the configured key over this info.
    #[error("signature does not verify")]
    SignatureMismatch,

    /// The signed info is not JSON.
    #[error("license info is not valid JSON: {detail}")]
    InfoNotJson {
        /// The parser's complaint, which names positions but never content.
        detail: String,
    },

    /// The signed info is JSON but its fields have the wrong shape.
    #[error("license info is malformed: {detail}")]
    MalformedInfo {
        /// Which field is wrong and how.
        detail: String,
    },
}

/// Why the license verification key could not be set up; reported once at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyConfigError {
    /// The text is not an OpenSSH public key line (`ssh-rsa AAAA... comment`).
    #[error("license public key is not an OpenSSH public key line: {detail}")]
    NotOpenSshPublicKey {
        /// The parser's complaint.
        detail: String,
    },

    /// The key is valid but not RSA; license keys are only ever signed with RSA.
    #[error("license verification key must be an RSA key, but it is {algorithm}")]
    NotRsa {
        /// The key's algorithm as OpenSSH or PEM names it.
        algorithm: String,
    },

    /// The RSA key itself is unusable (too small, bad exponent, ...).
    #[error("license verification key is not a usable RSA key: {detail}")]
    UnusableRsaKey {
        /// What is wrong with it.
        detail: String,
    },

    /// No `-----BEGIN ...-----` block was found.
    #[error(
        "license generation key is not PEM: expected a block starting with \
         \"-----BEGIN RSA PRIVATE KEY-----\", \"-----BEGIN PRIVATE KEY-----\" or \
         \"-----BEGIN OPENSSH PRIVATE KEY-----\""
    )]
    NotPem,

    /// A PEM block was found but is damaged.
    #[error("license generation key is malformed PEM: {detail}")]
    MalformedPem {
        /// What is wrong with it.
        detail: String,
    },

    /// The PEM block is of a kind that cannot hold an RSA private key.
    #[error(
        "license generation key has unsupported PEM type {label:?}: expected \"RSA PRIVATE KEY\", \
         \"PRIVATE KEY\" or \"OPENSSH PRIVATE KEY\""
    )]
    UnsupportedPemType {
        /// The label after `-----BEGIN`.
        label: String,
    },

    /// The private key is protected by a passphrase, which the original does not support either.
    #[error("license generation key is encrypted; provide it without a passphrase")]
    EncryptedPrivateKey,

    /// The PEM block's contents do not parse as the encoding its label promises.
    #[error("license generation key is not a valid {encoding} private key: {detail}")]
    InvalidPrivateKey {
        /// `PKCS#1`, `PKCS#8` or `OpenSSH`.
        encoding: &'static str,
        /// The parser's complaint, which never quotes key material.
        detail: String,
    },
}
