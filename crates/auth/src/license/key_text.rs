//! The outer layer of a license key: whitespace-tolerant, unpadded base64url text.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::{DecodeError, Engine as _, alphabet};
use sha2::{Digest as _, Sha256};

use super::LicenseError;

/// Go's `base64.RawURLEncoding`: no padding allowed, and (being non-strict) non-zero trailing
/// bits in the last character are tolerated, so keys Go accepts are accepted here too.
const GO_RAW_URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// Removes all Unicode whitespace, so keys wrapped in e-mails or config files still parse.
///
/// Rust's `char::is_whitespace` and Go's `unicode.IsSpace` both follow the Unicode `White_Space`
/// property, so the same characters are dropped as by the original (`docs/compatibility.md` §5).
pub(crate) fn strip_whitespace(key: &str) -> String {
    key.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Decodes the key text into the envelope bytes.
pub(crate) fn decode_key_text(key: &str) -> Result<Vec<u8>, LicenseError> {
    let text = strip_whitespace(key);
    if text.is_empty() {
        return Err(LicenseError::Empty);
    }
    GO_RAW_URL
        .decode(text.as_bytes())
        .map_err(|err| LicenseError::NotBase64Url {
            detail: describe_base64_error(&err),
        })
}

/// Describes a decoding failure by position only: the base64 crate's own message quotes the
/// offending character, and the reason must not echo key material.
fn describe_base64_error(err: &DecodeError) -> String {
    match *err {
        DecodeError::InvalidByte(offset, b'=') => {
            format!("padding '=' is not allowed (at byte {offset})")
        }
        DecodeError::InvalidByte(offset, _) => format!("illegal character at byte {offset}"),
        DecodeError::InvalidLength(length) => {
            format!("{length} characters cannot encode a whole number of bytes")
        }
        DecodeError::InvalidLastSymbol(offset, _) => {
            format!("illegal final character at byte {offset}")
        }
        DecodeError::InvalidPadding => "padding '=' is not allowed".to_owned(),
    }
}

/// A stable, non-reversible stand-in for a license key: `sha256:` and the lowercase hex SHA-256
/// of the key text without whitespace, so re-wrapped copies of one key share a fingerprint.
pub fn license_key_fingerprint(key: &str) -> String {
    let digest = Sha256::digest(strip_whitespace(key).as_bytes());
    format!("sha256:{}", hex::encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_every_kind_of_unicode_whitespace() {
        assert_eq!(
            strip_whitespace(" a\tb\nc\rd\u{0b}e\u{0c}f\u{85}g\u{a0}h\u{2028}i\u{3000}j "),
            "abcdefghij"
        );
    }

    #[test]
    fn decodes_unpadded_base64url() {
        assert_eq!(
            decode_key_text("eyJ9-_8"),
            Ok(vec![0x7b, 0x22, 0x7d, 0xfb, 0xff])
        );
    }

    #[test]
    fn whitespace_only_key_is_empty() {
        assert_eq!(decode_key_text(" \n\t "), Err(LicenseError::Empty));
    }

    #[test]
    fn padding_is_rejected() {
        let err = decode_key_text("eyJ9-_8=").expect_err("must be rejected");
        assert!(err.to_string().contains("padding"), "{err}");
    }

    #[test]
    fn standard_alphabet_characters_are_rejected() {
        assert!(decode_key_text("ab+/").is_err());
    }

    #[test]
    fn non_zero_trailing_bits_are_tolerated_like_go() {
        // "QR" has low bits set after the single encoded byte; Go's non-strict decoder keeps 'A'.
        assert_eq!(decode_key_text("QR"), Ok(vec![b'A']));
    }

    #[test]
    fn impossible_length_is_rejected() {
        assert!(matches!(
            decode_key_text("abcde"),
            Err(LicenseError::NotBase64Url { .. })
        ));
    }

    #[test]
    fn decoding_error_does_not_quote_the_key() {
        let err = decode_key_text("secret!secret")
            .expect_err("must be rejected")
            .to_string();
        assert!(!err.contains("secret") && !err.contains('!'), "{err}");
    }

    #[test]
    fn fingerprint_is_sha256_hex_of_key_without_whitespace() {
        let expected = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(license_key_fingerprint("abc"), expected);
        assert_eq!(license_key_fingerprint(" a\nb\tc "), expected);
    }
}
