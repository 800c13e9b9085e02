//! Reading JSON values the way Go's `encoding/json` decodes them into the original's structs.
//!
//! Documents are parsed into [`serde_json::Value`] first and then inspected by hand, so that
//! error messages name the field and the expected shape but never repeat the content (serde's
//! own type errors quote offending strings, which may be key material).

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// Go's `base64.StdEncoding` as `encoding/json` uses it for `[]byte`: padding required, non-zero
/// trailing bits tolerated.
const GO_STD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

/// A problem with one field, phrased for the operator reading the rejection.
pub(crate) type FieldResult<T> = Result<T, String>;

/// Parses a document, reporting only the position of a syntax error.
pub(crate) fn parse_document(bytes: &[u8]) -> Result<Value, String> {
    // Parsing into `Value` can only fail on syntax, and serde_json's syntax messages name a
    // position, never the text found there.
    serde_json::from_slice(bytes).map_err(|err| err.to_string())
}

/// Finds a struct field as Go does: keys match case-insensitively, and `null` leaves the field at
/// its zero value, so it is reported as absent.
///
/// Go applies keys in document order; `serde_json::Map` does not keep that order, so when one
/// document spells a key in several ways the exact spelling wins here.
pub(crate) fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = object.get(name).filter(|value| !value.is_null()) {
        return Some(value);
    }
    object
        .iter()
        .rev()
        .find(|(key, value)| !value.is_null() && equal_fold(key, name))
        .map(|(_, value)| value)
}

/// Go's case folding for JSON keys: simple lower-case mapping, then upper-case, per character.
fn equal_fold(a: &str, b: &str) -> bool {
    a.chars().map(fold).eq(b.chars().map(fold))
}

fn fold(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_uppercase();
    }
    let lower = single(c.to_lowercase()).unwrap_or(c);
    single(lower.to_uppercase()).unwrap_or(lower)
}

/// The only character of a case mapping; Go's simple mappings never expand to several.
fn single(mut chars: impl Iterator<Item = char>) -> Option<char> {
    let first = chars.next()?;
    chars.next().is_none().then_some(first)
}

/// Decodes a Go `[]byte`: a standard base64 string, or (rarely, but Go accepts it) an array of
/// byte values.
pub(crate) fn bytes(value: &Value, name: &str) -> FieldResult<Vec<u8>> {
    match value {
        Value::String(text) => {
            // Go's base64 decoder skips line breaks inside the text.
            let text: String = text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
            GO_STD
                .decode(text.as_bytes())
                .map_err(|_| format!("`{name}` is not valid standard base64"))
        }
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Null => Ok(0),
                other => other
                    .as_u64()
                    .and_then(|n| u8::try_from(n).ok())
                    .ok_or_else(|| format!("`{name}` holds a value that is not a byte")),
            })
            .collect(),
        _ => Err(format!("`{name}` must be a base64 string")),
    }
}

/// Decodes a Go `string`.
pub(crate) fn string(value: &Value, name: &str) -> FieldResult<String> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("`{name}` must be a string"))
}

/// Decodes a Go `[]string`; `null` elements become empty strings as in Go.
pub(crate) fn strings(value: &Value, name: &str) -> FieldResult<Vec<String>> {
    let items = value
        .as_array()
        .ok_or_else(|| format!("`{name}` must be an array of strings"))?;
    items
        .iter()
        .map(|item| match item {
            Value::Null => Ok(String::new()),
            Value::String(text) => Ok(text.clone()),
            _ => Err(format!("`{name}` must be an array of strings")),
        })
        .collect()
}

/// Decodes a Go `uint` (64 bits on the platforms the original runs on).
pub(crate) fn unsigned(value: &Value, name: &str) -> FieldResult<u64> {
    value
        .as_u64()
        .ok_or_else(|| format!("`{name}` must be a non-negative integer"))
}

/// Decodes a Go `time.Time`, which is written as an RFC 3339 string.
pub(crate) fn time(value: &Value, name: &str) -> FieldResult<DateTime<Utc>> {
    let text = value
        .as_str()
        .ok_or_else(|| format!("`{name}` must be an RFC 3339 time string"))?;
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|_| format!("`{name}` is not an RFC 3339 time"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn field_matches_exact_spelling() {
        let map = object(json!({"Format": "ssh-rsa"}));
        assert_eq!(field(&map, "Format"), Some(&json!("ssh-rsa")));
    }

    #[test]
    fn field_matches_other_cases_like_go() {
        let map = object(json!({"format": "a", "BLOB": "b", "InFo": "c"}));
        assert_eq!(field(&map, "Format"), Some(&json!("a")));
        assert_eq!(field(&map, "Blob"), Some(&json!("b")));
        assert_eq!(field(&map, "info"), Some(&json!("c")));
    }

    #[test]
    fn field_folds_the_kelvin_sign_like_go() {
        // Go folds U+212A KELVIN SIGN to 'K'.
        let map = object(json!({"\u{212a}ey": 1}));
        assert_eq!(field(&map, "key"), Some(&json!(1)));
    }

    #[test]
    fn null_field_counts_as_absent() {
        let map = object(json!({"sig": null}));
        assert_eq!(field(&map, "sig"), None);
    }

    #[test]
    fn exact_spelling_wins_over_other_cases() {
        let map = object(json!({"Sig": 1, "sig": 2}));
        assert_eq!(field(&map, "sig"), Some(&json!(2)));
    }

    #[test]
    fn bytes_decode_padded_standard_base64() {
        assert_eq!(bytes(&json!("aGk+Pz8="), "x"), Ok(b"hi>??".to_vec()));
    }

    #[test]
    fn bytes_ignore_line_breaks_like_go() {
        assert_eq!(bytes(&json!("aGk+\r\nPz8="), "x"), Ok(b"hi>??".to_vec()));
    }

    #[test]
    fn bytes_require_padding() {
        assert!(bytes(&json!("aGk+Pz8"), "x").is_err());
    }

    #[test]
    fn bytes_accept_an_array_of_byte_values() {
        assert_eq!(bytes(&json!([104, 105]), "x"), Ok(b"hi".to_vec()));
        assert!(bytes(&json!([256]), "x").is_err());
    }

    #[test]
    fn bytes_reject_other_types() {
        assert!(bytes(&json!({"a": 1}), "x").is_err());
        assert!(bytes(&json!(12), "x").is_err());
    }

    #[test]
    fn strings_turn_null_elements_into_empty_strings() {
        assert_eq!(
            strings(&json!(["a", null]), "t"),
            Ok(vec!["a".to_owned(), String::new()])
        );
    }

    #[test]
    fn unsigned_rejects_negative_and_fractional_numbers() {
        assert_eq!(unsigned(&json!(u64::MAX), "u"), Ok(u64::MAX));
        assert!(unsigned(&json!(-1), "u").is_err());
        assert!(unsigned(&json!(1.5), "u").is_err());
        assert!(unsigned(&json!("1"), "u").is_err());
    }

    #[test]
    fn time_converts_offsets_to_utc() {
        let parsed = time(&json!("2018-09-22T23:33:44+02:00"), "e");
        assert_eq!(
            parsed.map(|t| t.to_rfc3339()),
            Ok("2018-09-22T21:33:44+00:00".to_owned())
        );
    }

    #[test]
    fn type_errors_do_not_quote_content() {
        let err = time(&json!("secret-value"), "e").expect_err("must be rejected");
        assert!(!err.contains("secret"), "{err}");
    }
}
