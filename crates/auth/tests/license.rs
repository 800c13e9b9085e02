//! License key verification against keys minted in the original's wire format.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use telemetry_gateway_auth::license::{GO_ZERO_TIME, TAG_DISABLE_TELEMETRY_EVENTS_EXPORT};
use telemetry_gateway_auth::{
    KeyConfigError, LicenseError, LicenseVerifier, SignatureFormat, license_key_fingerprint,
};
use telemetry_gateway_testkit::license::{
    self as mint, LicenseKeyPair, LicenseSpec, SignatureFormat as MintFormat,
};

fn pair() -> &'static LicenseKeyPair {
    LicenseKeyPair::shared()
}

fn verifier() -> LicenseVerifier {
    LicenseVerifier::from_openssh_public_key(&pair().public_key_openssh())
        .expect("the test public key is a valid ssh-rsa line")
}

fn default_key() -> String {
    pair().mint(&LicenseSpec::default(), MintFormat::SshRsa)
}

fn reject(key: &str) -> LicenseError {
    verifier()
        .verify(key)
        .expect_err("the key must be rejected")
}

/// Replaces the envelope's signed info, keeping the original signature.
fn replace_info(envelope: &mut Value, info: &[u8]) {
    envelope["info"] = Value::String(STANDARD.encode(info));
}

fn decoded_info(envelope: &Value) -> Value {
    let info = envelope["info"].as_str().unwrap_or_default();
    let bytes = STANDARD.decode(info).unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// A small deterministic generator, so fuzz failures can be replayed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next() % bound.max(1) as u64).unwrap_or(0)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next().to_le_bytes()[0]).collect()
    }
}

// --- valid keys -------------------------------------------------------------------------------

#[test]
fn ssh_rsa_sha1_key_verifies() {
    let key = pair().mint(&LicenseSpec::default(), MintFormat::SshRsa);
    let license = verifier().verify(&key).expect("valid key");
    assert_eq!(license.signature_format, SignatureFormat::SshRsa);
}

#[test]
fn rsa_sha2_256_key_verifies() {
    let key = pair().mint(&LicenseSpec::default(), MintFormat::RsaSha256);
    let license = verifier().verify(&key).expect("valid key");
    assert_eq!(license.signature_format, SignatureFormat::RsaSha256);
}

#[test]
fn rsa_sha2_512_key_verifies() {
    let key = pair().mint(&LicenseSpec::default(), MintFormat::RsaSha512);
    let license = verifier().verify(&key).expect("valid key");
    assert_eq!(license.signature_format, SignatureFormat::RsaSha512);
}

#[test]
fn verified_license_reports_every_field_of_the_info() {
    let spec = LicenseSpec {
        version: 3,
        tags: vec!["plan:enterprise-1".to_owned(), "dev".to_owned()],
        user_count: 250,
        created_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or(GO_ZERO_TIME),
        expires_at: DateTime::from_timestamp(1_800_000_000, 123_000_000).unwrap_or(GO_ZERO_TIME),
        salesforce_subscription_id: Some("sub-1".to_owned()),
        salesforce_opportunity_id: Some("opp-1".to_owned()),
    };
    let info = verifier()
        .verify(&pair().mint(&spec, MintFormat::SshRsa))
        .expect("valid key")
        .info;
    assert_eq!(info.version, 3);
    assert_eq!(info.tags, spec.tags);
    assert_eq!(info.user_count, 250);
    assert_eq!(info.created_at, spec.created_at);
    assert_eq!(info.expires_at, spec.expires_at);
    assert_eq!(info.salesforce_subscription_id.as_deref(), Some("sub-1"));
    assert_eq!(info.salesforce_opportunity_id.as_deref(), Some("opp-1"));
}

#[test]
fn original_v1_license_round_trips() {
    // Mirrors the original's license_test.go v1 fixture.
    let key = pair().mint(&LicenseSpec::original_v1_fixture(), MintFormat::SshRsa);
    let info = verifier().verify(&key).expect("valid key").info;
    assert_eq!(info.version, 1);
    assert_eq!(info.tags, vec!["a".to_owned()]);
    assert_eq!(info.user_count, 123);
    assert_eq!(info.expires_at.to_rfc3339(), "2018-09-22T21:33:44+00:00");
    assert_eq!(info.created_at, GO_ZERO_TIME);
    assert!(info.has_unknown_creation_time());
    assert_eq!(info.salesforce_subscription_id, None);
    assert_eq!(info.salesforce_opportunity_id, None);
}

#[test]
fn original_v2_license_round_trips_with_salesforce_ids() {
    let spec = LicenseSpec {
        version: 2,
        salesforce_subscription_id: Some("AAA".to_owned()),
        salesforce_opportunity_id: Some("BBB".to_owned()),
        ..LicenseSpec::original_v1_fixture()
    };
    let info = verifier()
        .verify(&pair().mint(&spec, MintFormat::SshRsa))
        .expect("valid key")
        .info;
    assert_eq!(info.version, 2);
    assert_eq!(info.salesforce_subscription_id.as_deref(), Some("AAA"));
    assert_eq!(info.salesforce_opportunity_id.as_deref(), Some("BBB"));
}

#[test]
fn info_with_only_some_fields_takes_go_zero_values() {
    let key = pair().mint_info(
        br#"{"t":["x"],"e":"2030-01-01T00:00:00Z"}"#,
        MintFormat::SshRsa,
    );
    let info = verifier().verify(&key).expect("valid key").info;
    assert_eq!(info.version, 0);
    assert_eq!(info.user_count, 0);
    assert_eq!(info.created_at, GO_ZERO_TIME);
    assert_eq!(info.tags, vec!["x".to_owned()]);
}

#[test]
fn expired_license_still_verifies() {
    let spec = LicenseSpec {
        expires_at: Utc::now() - Duration::days(1),
        ..LicenseSpec::default()
    };
    let info = verifier()
        .verify(&pair().mint(&spec, MintFormat::SshRsa))
        .expect("expiry is not judged by verification")
        .info;
    assert!(info.is_expired_at(Utc::now()));
}

#[test]
fn tags_are_readable_from_a_verified_license() {
    let spec = LicenseSpec {
        tags: vec![format!(" {TAG_DISABLE_TELEMETRY_EVENTS_EXPORT} ")],
        ..LicenseSpec::default()
    };
    let info = verifier()
        .verify(&pair().mint(&spec, MintFormat::SshRsa))
        .expect("valid key")
        .info;
    assert!(info.has_tag(TAG_DISABLE_TELEMETRY_EVENTS_EXPORT));
    assert!(!info.has_tag("dev"));
}

#[test]
fn whitespace_inside_a_key_is_ignored() {
    let key = default_key();
    let mut wrapped = String::from(" \t");
    for (i, c) in key.chars().enumerate() {
        wrapped.push(c);
        match i % 7 {
            0 => wrapped.push(' '),
            3 => wrapped.push('\n'),
            5 => wrapped.push_str("\t\r\n"),
            _ => {}
        }
    }
    wrapped.push('\n');
    assert!(verifier().verify(&wrapped).is_ok());
}

#[test]
fn lower_case_envelope_field_names_are_accepted() {
    let key = pair().mint_with(&LicenseSpec::default(), MintFormat::SshRsa, |envelope| {
        let sig = &envelope["sig"];
        *envelope = json!({
            "SIG": {"format": sig["Format"], "blob": sig["Blob"], "rest": null},
            "Info": envelope["info"],
        });
    });
    assert!(verifier().verify(&key).is_ok());
}

#[test]
fn signature_rest_bytes_are_ignored() {
    let key = pair().mint_with(&LicenseSpec::default(), MintFormat::SshRsa, |envelope| {
        envelope["sig"]["Rest"] = json!("AAEC");
    });
    assert!(verifier().verify(&key).is_ok());
}

#[test]
fn signature_without_leading_zero_bytes_verifies_like_go() {
    // SSH signers may drop the signature's leading zero bytes; find a signature that has one.
    let stripped = (0u32..4096).find_map(|attempt| {
        let info = format!(r#"{{"v":3,"u":{attempt}}}"#).into_bytes();
        let blob = pair().sign(&info, MintFormat::RsaSha256);
        (blob.first() == Some(&0)).then_some((info, blob))
    });
    let Some((info, blob)) = stripped else {
        panic!("no signature with a leading zero byte in 4096 attempts");
    };
    let key = pair().mint_info_with(&info, MintFormat::RsaSha256, |envelope| {
        envelope["sig"]["Blob"] = json!(STANDARD.encode(&blob[1..]));
    });
    assert!(verifier().verify(&key).is_ok());
}

// --- rejected keys ----------------------------------------------------------------------------

#[test]
fn empty_key_fails() {
    assert_eq!(reject(""), LicenseError::Empty);
    assert_eq!(reject(" \n\t"), LicenseError::Empty);
}

#[test]
fn garbage_key_fails() {
    // The original's `ParseSignedKey("invalid")` test.
    assert!(verifier().verify("invalid").is_err());
}

#[test]
fn base64_padding_fails() {
    // Pad a key whose length needs it, so the padded text is canonical standard-style base64.
    let key = (0..8)
        .map(|i| {
            let info = format!(r#"{{"t":["{}"]}}"#, "x".repeat(i));
            pair().mint_info(info.as_bytes(), MintFormat::SshRsa)
        })
        .find(|key| key.len() % 4 != 0)
        .unwrap_or_default();
    assert!(verifier().verify(&key).is_ok(), "the unpadded key is valid");
    let padded = format!("{key}{}", "=".repeat(4 - key.len() % 4));
    assert!(matches!(reject(&padded), LicenseError::NotBase64Url { .. }));
}

#[test]
fn standard_base64_alphabet_fails() {
    let key = mint::encode_key_text(b"{\"sig\":null}~~~?>>?")
        .replace('_', "/")
        .replace('-', "+");
    assert!(matches!(reject(&key), LicenseError::NotBase64Url { .. }));
}

#[test]
fn envelope_that_is_not_json_fails() {
    let key = mint::encode_key_text(b"not json");
    assert!(matches!(reject(&key), LicenseError::EnvelopeNotJson { .. }));
}

#[test]
fn missing_signature_fails() {
    let key = pair().mint_with(&LicenseSpec::default(), MintFormat::SshRsa, |envelope| {
        if let Some(object) = envelope.as_object_mut() {
            object.remove("sig");
        }
    });
    assert_eq!(reject(&key), LicenseError::MissingSignature);
}

#[test]
fn null_signature_fails() {
    let key = pair().mint_with(&LicenseSpec::default(), MintFormat::SshRsa, |envelope| {
        envelope["sig"] = Value::Null;
    });
    assert_eq!(reject(&key), LicenseError::MissingSignature);
}

#[test]
fn missing_info_fails() {
    let key = pair().mint_with(&LicenseSpec::default(), MintFormat::SshRsa, |envelope| {
        if let Some(object) = envelope.as_object_mut() {
            object.remove("info");
        }
    });
    assert_eq!(reject(&key), LicenseError::MissingInfo);
}

#[test]
fn unsupported_signature_format_fails_and_is_named() {
    let key = pair().mint_with(&LicenseSpec::default(), MintFormat::SshRsa, |envelope| {
        envelope["sig"]["Format"] = json!("ssh-ed25519");
    });
    let err = reject(&key);
    assert_eq!(
        err,
        LicenseError::UnsupportedSignatureFormat {
            format: "ssh-ed25519".to_owned()
        }
    );
    assert_eq!(
        err.to_string(),
        "unsupported signature format \"ssh-ed25519\""
    );
}

#[test]
fn signature_format_swapped_for_another_hash_fails() {
    let key = pair().mint_with(&LicenseSpec::default(), MintFormat::SshRsa, |envelope| {
        envelope["sig"]["Format"] = json!("rsa-sha2-256");
    });
    assert_eq!(reject(&key), LicenseError::SignatureMismatch);
}

#[test]
fn tampered_info_fails() {
    let key = pair().mint_with(&LicenseSpec::default(), MintFormat::SshRsa, |envelope| {
        let mut info = decoded_info(envelope);
        info["u"] = json!(100_000);
        replace_info(envelope, &serde_json::to_vec(&info).unwrap_or_default());
    });
    assert_eq!(reject(&key), LicenseError::SignatureMismatch);
}

#[test]
fn tampered_signature_fails() {
    let key = pair().mint_with(&LicenseSpec::default(), MintFormat::RsaSha512, |envelope| {
        let mut blob = STANDARD
            .decode(envelope["sig"]["Blob"].as_str().unwrap_or_default())
            .unwrap_or_default();
        if let Some(last) = blob.last_mut() {
            *last ^= 1;
        }
        envelope["sig"]["Blob"] = json!(STANDARD.encode(blob));
    });
    assert_eq!(reject(&key), LicenseError::SignatureMismatch);
}

#[test]
fn oversized_signature_fails() {
    let key = pair().mint_with(&LicenseSpec::default(), MintFormat::SshRsa, |envelope| {
        envelope["sig"]["Blob"] = json!(STANDARD.encode([1u8; 1000]));
    });
    assert_eq!(reject(&key), LicenseError::SignatureMismatch);
}

#[test]
fn key_signed_by_another_key_pair_fails() {
    let other = LicenseKeyPair::generate();
    let key = other.mint(&LicenseSpec::default(), MintFormat::SshRsa);
    assert_eq!(reject(&key), LicenseError::SignatureMismatch);
}

#[test]
fn production_key_rejects_a_test_minted_key() {
    let err = LicenseVerifier::production()
        .verify(&default_key())
        .expect_err("a test key is not a production license");
    assert_eq!(err, LicenseError::SignatureMismatch);
}

#[test]
fn signed_info_that_is_not_json_fails() {
    let key = pair().mint_info(b"not json", MintFormat::SshRsa);
    assert!(matches!(reject(&key), LicenseError::InfoNotJson { .. }));
}

#[test]
fn signed_info_with_wrong_field_types_fails() {
    let key = pair().mint_info(br#"{"u":"many"}"#, MintFormat::SshRsa);
    assert!(matches!(reject(&key), LicenseError::MalformedInfo { .. }));
}

#[test]
fn rejection_reasons_never_quote_the_key() {
    let key = default_key();
    let keys = [
        format!("{key}="),
        format!("{key}!"),
        key[..key.len() / 2].to_owned(),
        key.replace('e', "*"),
    ];
    for bad in keys {
        let reason = reject(&bad).to_string();
        assert!(reason.len() < 200, "{reason}");
        assert!(!reason.contains(&key[..16]), "{reason}");
    }
}

#[test]
fn deeply_nested_envelope_fails_without_overflowing_the_stack() {
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let key = mint::encode_key_text(nested.as_bytes());
    assert!(matches!(reject(&key), LicenseError::EnvelopeNotJson { .. }));
}

#[test]
fn huge_key_fails_cleanly() {
    let mut rng = SplitMix64(7);
    let huge = mint::encode_key_text(&rng.bytes(4 << 20));
    assert!(verifier().verify(&huge).is_err());
    assert!(verifier().verify(&"A".repeat(4 << 20)).is_err());
}

#[test]
fn random_inputs_and_mutations_never_panic_or_forge() {
    let verifier = verifier();
    let key = default_key();
    let genuine = verifier.verify(&key).expect("valid key").info;
    let alphabet: Vec<char> =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/ \n{}\""
            .chars()
            .collect();
    let mut rng = SplitMix64(0x5eed);

    for round in 0..3000 {
        let candidate = match round % 4 {
            // Arbitrary bytes, as text.
            0 => {
                let len = rng.below(300);
                String::from_utf8_lossy(&rng.bytes(len)).into_owned()
            }
            // Well-formed base64url of arbitrary bytes: exercises the JSON layer.
            1 => {
                let len = rng.below(300);
                mint::encode_key_text(&rng.bytes(len))
            }
            // Arbitrary JSON-ish text, encoded.
            2 => {
                let text: String = (0..rng.below(200))
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect();
                mint::encode_key_text(text.as_bytes())
            }
            // A genuine key with a few characters changed, removed, inserted or cut off.
            _ => {
                let mut chars: Vec<char> = key.chars().collect();
                for _ in 0..=rng.below(3) {
                    let at = rng.below(chars.len());
                    match rng.below(4) {
                        0 => chars[at] = alphabet[rng.below(alphabet.len())],
                        1 => {
                            chars.remove(at);
                        }
                        2 => chars.insert(at, alphabet[rng.below(alphabet.len())]),
                        _ => chars.truncate(at),
                    }
                    if chars.is_empty() {
                        break;
                    }
                }
                chars.into_iter().collect()
            }
        };
        if let Ok(license) = verifier.verify(&candidate) {
            // Harmless mutations exist (whitespace, trailing bits); none may change the license.
            assert_eq!(license.info, genuine, "round {round} forged a license");
        }
    }
}

// --- verification keys ------------------------------------------------------------------------

#[test]
fn verifier_from_pkcs1_pem_accepts_the_pairs_keys() {
    let verifier = LicenseVerifier::from_pem_private_key(&pair().private_key_pem_pkcs1())
        .expect("valid PKCS#1 key");
    assert!(verifier.verify(&default_key()).is_ok());
}

#[test]
fn verifier_from_pkcs8_pem_accepts_the_pairs_keys() {
    let verifier = LicenseVerifier::from_pem_private_key(&pair().private_key_pem_pkcs8())
        .expect("valid PKCS#8 key");
    assert!(verifier.verify(&default_key()).is_ok());
}

#[test]
fn verifier_from_openssh_private_key_accepts_the_pairs_keys() {
    let verifier = LicenseVerifier::from_pem_private_key(&pair().private_key_openssh())
        .expect("valid OpenSSH private key");
    assert!(verifier.verify(&default_key()).is_ok());
}

#[test]
fn verifier_from_openssh_public_line_accepts_the_pairs_keys() {
    assert!(verifier().verify(&default_key()).is_ok());
}

#[test]
fn all_key_encodings_give_the_same_fingerprint() {
    let expected = verifier().key_fingerprint().to_owned();
    for pem in [
        pair().private_key_pem_pkcs1(),
        pair().private_key_pem_pkcs8(),
        pair().private_key_openssh(),
    ] {
        let verifier = LicenseVerifier::from_pem_private_key(&pem).expect("valid key");
        assert_eq!(verifier.key_fingerprint(), expected);
    }
}

#[test]
fn pem_key_surrounded_by_text_and_crlf_line_endings_is_accepted() {
    let pem = format!(
        "# license generation key\r\n{}\r\n",
        pair().private_key_pem_pkcs1().replace('\n', "\r\n")
    );
    assert!(LicenseVerifier::from_pem_private_key(&pem).is_ok());
}

#[test]
fn public_line_with_surrounding_whitespace_is_accepted() {
    let line = format!("  {}\n", pair().public_key_openssh());
    assert!(LicenseVerifier::from_openssh_public_key(&line).is_ok());
}

#[test]
fn non_rsa_public_key_is_a_key_config_error() {
    let err = LicenseVerifier::from_openssh_public_key(include_str!("testdata/ed25519.pub"))
        .expect_err("not RSA");
    assert!(matches!(err, KeyConfigError::NotRsa { .. }), "{err}");
    assert!(err.to_string().contains("ssh-ed25519"), "{err}");
}

#[test]
fn non_rsa_private_keys_are_key_config_errors() {
    for pem in [
        include_str!("testdata/ed25519_openssh_private.pem"),
        include_str!("testdata/ec_p256_pkcs8.pem"),
    ] {
        let err = LicenseVerifier::from_pem_private_key(pem).expect_err("not RSA");
        assert!(matches!(err, KeyConfigError::NotRsa { .. }), "{err}");
    }
}

#[test]
fn bad_pem_is_a_key_config_error() {
    for pem in [
        "",
        "not a key",
        "-----BEGIN RSA PRIVATE KEY-----\nnot base64!\n-----END RSA PRIVATE KEY-----\n",
        "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
    ] {
        assert!(
            LicenseVerifier::from_pem_private_key(pem).is_err(),
            "{pem:?}"
        );
    }
}

#[test]
fn public_key_line_passed_as_pem_is_a_key_config_error() {
    let err = LicenseVerifier::from_pem_private_key(&pair().public_key_openssh())
        .expect_err("a public key is not a PEM private key");
    assert_eq!(err, KeyConfigError::NotPem);
}

#[test]
fn key_config_errors_never_quote_private_key_material() {
    let pem = pair().private_key_pem_pkcs1();
    let damaged = pem.replacen("MII", "MIJ", 1);
    let err = LicenseVerifier::from_pem_private_key(&damaged).expect_err("damaged key");
    let body_line = pem.lines().nth(1).unwrap_or_default();
    assert!(!err.to_string().contains(body_line), "{err}");
}

// --- fingerprints -----------------------------------------------------------------------------

#[test]
fn fingerprint_ignores_whitespace_in_the_key() {
    let key = default_key();
    let wrapped: String = key
        .as_bytes()
        .chunks(60)
        .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        license_key_fingerprint(&key),
        license_key_fingerprint(&wrapped)
    );
    assert!(license_key_fingerprint(&key).starts_with("sha256:"));
    assert_eq!(license_key_fingerprint(&key).len(), "sha256:".len() + 64);
}
