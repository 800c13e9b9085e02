//! Minting Sourcegraph license keys for tests, in exactly the original's wire format.
//!
//! Deliberately independent of `telemetry-gateway-auth` (which dev-depends on this crate): the
//! format is rebuilt here from the reference, so the verifier is tested against a second,
//! independent reading of it rather than against itself.

use std::fmt;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, SubsecRound as _, Utc};
use rand::RngCore as _;
use rand::rngs::OsRng;
use rsa::RsaPrivateKey;
use rsa::pkcs1::{DecodeRsaPrivateKey as _, EncodeRsaPrivateKey as _};
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{EncodePrivateKey as _, LineEnding};
use rsa::signature::{SignatureEncoding as _, Signer as _};
use serde::Serialize;
use serde_json::Value;
use sha1::Sha1;
use sha2::{Sha256, Sha512};

/// Comment written after test public keys and into test OpenSSH private keys.
const KEY_COMMENT: &str = "license-test@telemetry-gateway-testkit";

/// The SSH signature algorithm a minted key is signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureFormat {
    /// `ssh-rsa` (SHA-1), what the original's license generator produces.
    SshRsa,
    /// `rsa-sha2-256` (SHA-256).
    RsaSha256,
    /// `rsa-sha2-512` (SHA-512).
    RsaSha512,
}

impl SignatureFormat {
    /// Every format, for tests that cover them all.
    pub const ALL: [Self; 3] = [Self::SshRsa, Self::RsaSha256, Self::RsaSha512];

    /// The name written into the envelope's `sig.Format`.
    pub const fn ssh_name(self) -> &'static str {
        match self {
            Self::SshRsa => "ssh-rsa",
            Self::RsaSha256 => "rsa-sha2-256",
            Self::RsaSha512 => "rsa-sha2-512",
        }
    }
}

/// What a minted license says; every field maps to one key of the signed info JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseSpec {
    /// `v`: the format version (the original writes 1, 2 or 3).
    pub version: i64,
    /// `t`: license tags.
    pub tags: Vec<String>,
    /// `u`: licensed user count.
    pub user_count: u64,
    /// `c`: creation time; [`go_zero_time`] for pre-version-3 keys.
    pub created_at: DateTime<Utc>,
    /// `e`: expiry time.
    pub expires_at: DateTime<Utc>,
    /// `sf_sub_id`: omitted from the JSON when `None`.
    pub salesforce_subscription_id: Option<String>,
    /// `sf_opp_id`: omitted from the JSON when `None`.
    pub salesforce_opportunity_id: Option<String>,
}

impl Default for LicenseSpec {
    /// A current version-3 dev license for 10 users, valid for a year.
    fn default() -> Self {
        let now = Utc::now().trunc_subsecs(0);
        Self {
            version: 3,
            tags: vec!["dev".to_owned()],
            user_count: 10,
            created_at: now,
            expires_at: now + Duration::days(365),
            salesforce_subscription_id: Some("a1b2c3d4-sub".to_owned()),
            salesforce_opportunity_id: Some("006ABCDEF-opp".to_owned()),
        }
    }
}

impl LicenseSpec {
    /// The version-1 fixture of the original's `license_test.go`: tags `["a"]`, 123 users,
    /// expiring 2018-09-22T21:33:44Z, no Salesforce IDs and a zero creation time.
    pub fn original_v1_fixture() -> Self {
        Self {
            version: 1,
            tags: vec!["a".to_owned()],
            user_count: 123,
            created_at: go_zero_time(),
            expires_at: DateTime::from_timestamp(1_537_652_024, 0).unwrap_or_else(go_zero_time),
            salesforce_subscription_id: None,
            salesforce_opportunity_id: None,
        }
    }

    /// The signed info bytes, encoded as Go's `encoding/json` encodes the original's
    /// `encodedInfo`: fields in declaration order, a random 8-byte nonce as an array of numbers,
    /// RFC 3339 times, absent Salesforce IDs omitted.
    pub fn info_json(&self) -> Vec<u8> {
        let mut nonce = [0u8; 8];
        OsRng.fill_bytes(&mut nonce);
        let info = WireInfo {
            v: self.version,
            n: nonce,
            t: &self.tags,
            u: self.user_count,
            c: go_time(self.created_at),
            e: go_time(self.expires_at),
            sf_sub_id: self.salesforce_subscription_id.as_deref(),
            sf_opp_id: self.salesforce_opportunity_id.as_deref(),
        };
        serde_json::to_vec(&info).unwrap_or_default()
    }
}

/// An RSA-2048 license signing key pair, standing in for Sourcegraph's license generation key.
pub struct LicenseKeyPair {
    private: RsaPrivateKey,
}

impl fmt::Debug for LicenseKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LicenseKeyPair").finish_non_exhaustive()
    }
}

impl LicenseKeyPair {
    /// Generates a fresh key pair (slow: prefer [`LicenseKeyPair::shared`]).
    #[allow(clippy::expect_used)]
    pub fn generate() -> Self {
        let private =
            RsaPrivateKey::new(&mut OsRng, 2048).expect("RSA-2048 key generation succeeds");
        Self { private }
    }

    /// A fixed key pair from a PKCS#1 PEM (as [`LicenseKeyPair::private_key_pem_pkcs1`] writes),
    /// for inputs that must verify the same way in every run (fuzz seeds, say).
    pub fn from_private_key_pem_pkcs1(pem: &str) -> Result<Self, rsa::pkcs1::Error> {
        Ok(Self {
            private: RsaPrivateKey::from_pkcs1_pem(pem)?,
        })
    }

    /// One key pair per process, generated on first use, because key generation is slow.
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<LicenseKeyPair> = OnceLock::new();
        SHARED.get_or_init(Self::generate)
    }

    /// The public key as an OpenSSH line: `ssh-rsa AAAA... comment`.
    #[allow(clippy::expect_used)]
    pub fn public_key_openssh(&self) -> String {
        let public = ssh_key::public::RsaPublicKey::try_from(self.private.to_public_key())
            .expect("a generated RSA-2048 key converts to SSH form");
        ssh_key::PublicKey::new(ssh_key::public::KeyData::Rsa(public), KEY_COMMENT)
            .to_openssh()
            .expect("an RSA public key encodes as OpenSSH")
    }

    /// The private key as PKCS#1 PEM (`-----BEGIN RSA PRIVATE KEY-----`).
    #[allow(clippy::expect_used)]
    pub fn private_key_pem_pkcs1(&self) -> String {
        self.private
            .to_pkcs1_pem(LineEnding::LF)
            .expect("an RSA key encodes as PKCS#1")
            .to_string()
    }

    /// The private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    #[allow(clippy::expect_used)]
    pub fn private_key_pem_pkcs8(&self) -> String {
        self.private
            .to_pkcs8_pem(LineEnding::LF)
            .expect("an RSA key encodes as PKCS#8")
            .to_string()
    }

    /// The private key in OpenSSH format (`-----BEGIN OPENSSH PRIVATE KEY-----`), unencrypted.
    #[allow(clippy::expect_used)]
    pub fn private_key_openssh(&self) -> String {
        let keypair = ssh_key::private::RsaKeypair::try_from(&self.private)
            .expect("a generated RSA-2048 key converts to SSH form");
        ssh_key::PrivateKey::new(ssh_key::private::KeypairData::Rsa(keypair), KEY_COMMENT)
            .and_then(|key| key.to_openssh(ssh_key::LineEnding::LF))
            .expect("an RSA private key encodes as OpenSSH")
            .to_string()
    }

    /// The raw RSA PKCS#1 v1.5 signature (`sig.Blob`) over `message`.
    pub fn sign(&self, message: &[u8], format: SignatureFormat) -> Vec<u8> {
        let key = self.private.clone();
        match format {
            SignatureFormat::SshRsa => SigningKey::<Sha1>::new(key).sign(message).to_vec(),
            SignatureFormat::RsaSha256 => SigningKey::<Sha256>::new(key).sign(message).to_vec(),
            SignatureFormat::RsaSha512 => SigningKey::<Sha512>::new(key).sign(message).to_vec(),
        }
    }

    /// A license key for `spec`, as the original's generator would write it.
    pub fn mint(&self, spec: &LicenseSpec, format: SignatureFormat) -> String {
        self.mint_with(spec, format, |_| {})
    }

    /// Like [`LicenseKeyPair::mint`], but `tamper` may change the envelope JSON
    /// (`{"sig": {"Format", "Blob", "Rest"}, "info"}`) after signing and before encoding.
    pub fn mint_with(
        &self,
        spec: &LicenseSpec,
        format: SignatureFormat,
        tamper: impl FnOnce(&mut Value),
    ) -> String {
        self.mint_info_with(&spec.info_json(), format, tamper)
    }

    /// A license key whose signed info is exactly `info`, which need not be valid info JSON.
    pub fn mint_info(&self, info: &[u8], format: SignatureFormat) -> String {
        self.mint_info_with(info, format, |_| {})
    }

    /// Like [`LicenseKeyPair::mint_info`], with a hook to tamper with the envelope JSON.
    pub fn mint_info_with(
        &self,
        info: &[u8],
        format: SignatureFormat,
        tamper: impl FnOnce(&mut Value),
    ) -> String {
        let envelope = WireEnvelope {
            sig: WireSignature {
                format: format.ssh_name(),
                blob: STANDARD.encode(self.sign(info, format)),
                rest: None,
            },
            info: STANDARD.encode(info),
        };
        let mut envelope = serde_json::to_value(&envelope).unwrap_or_default();
        tamper(&mut envelope);
        encode_key_text(&serde_json::to_vec(&envelope).unwrap_or_default())
    }
}

/// Encodes envelope bytes as license key text: base64url without padding.
pub fn encode_key_text(envelope_json: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(envelope_json)
}

/// Decodes license key text back into the envelope JSON, for tests that inspect minted keys.
pub fn decode_key_text(key: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(key.trim()).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Go's zero `time.Time`, `0001-01-01T00:00:00Z`.
pub fn go_zero_time() -> DateTime<Utc> {
    // -62135596800 is 0001-01-01T00:00:00Z in Unix seconds.
    DateTime::from_timestamp(-62_135_596_800, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Formats a time as Go's `time.Time` JSON encoding does (RFC 3339 with nanoseconds, trailing
/// zeros of the fraction dropped), for UTC times.
pub fn go_time(time: DateTime<Utc>) -> String {
    let mut text = time.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = time.timestamp_subsec_nanos();
    if nanos > 0 {
        let fraction = format!("{nanos:09}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text.push('Z');
    text
}

/// The original's `encodedInfo`, field for field and in its order.
#[derive(Serialize)]
struct WireInfo<'a> {
    v: i64,
    n: [u8; 8],
    t: &'a [String],
    u: u64,
    c: String,
    e: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sf_sub_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sf_opp_id: Option<&'a str>,
}

/// The original's `signedKey`.
#[derive(Serialize)]
struct WireEnvelope {
    sig: WireSignature,
    info: String,
}

/// Go's `ssh.Signature`, whose JSON keys are the capitalised Go field names.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WireSignature {
    format: &'static str,
    blob: String,
    rest: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_time_matches_go_formatting() {
        assert_eq!(go_time(go_zero_time()), "0001-01-01T00:00:00Z");
        let spec = LicenseSpec::original_v1_fixture();
        assert_eq!(go_time(spec.expires_at), "2018-09-22T21:33:44Z");
        let fractional = spec.expires_at + Duration::milliseconds(500);
        assert_eq!(go_time(fractional), "2018-09-22T21:33:44.5Z");
    }

    #[test]
    fn info_json_has_go_field_order_and_shapes() {
        let json =
            String::from_utf8(LicenseSpec::original_v1_fixture().info_json()).unwrap_or_default();
        assert!(json.starts_with(r#"{"v":1,"n":["#), "{json}");
        assert!(
            json.ends_with(
                r#"],"t":["a"],"u":123,"c":"0001-01-01T00:00:00Z","e":"2018-09-22T21:33:44Z"}"#
            ),
            "{json}"
        );
    }

    #[test]
    fn envelope_has_go_field_names() {
        // Hand-assembled so the test needs no RSA key.
        let envelope = WireEnvelope {
            sig: WireSignature {
                format: "ssh-rsa",
                blob: "AQ==".to_owned(),
                rest: None,
            },
            info: "e30=".to_owned(),
        };
        assert_eq!(
            serde_json::to_string(&envelope).unwrap_or_default(),
            r#"{"sig":{"Format":"ssh-rsa","Blob":"AQ==","Rest":null},"info":"e30="}"#
        );
    }
}
