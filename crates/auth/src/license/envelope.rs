//! The decoded key: a JSON envelope holding an SSH signature and the signed info bytes.

use serde_json::{Map, Value};

use super::LicenseError;
use super::go_json::{self, field};

/// The envelope in the original's format (`{"sig": ..., "info": ...}`, `docs/compatibility.md`
/// §5), before any checks.
#[derive(Debug)]
pub(crate) struct SignedEnvelope {
    /// The signature over `info`.
    pub(crate) signature: SshSignature,
    /// The exact signed bytes, which are themselves the license info JSON.
    pub(crate) info: Vec<u8>,
}

/// Go's `ssh.Signature` as JSON: `{"Format": ..., "Blob": ..., "Rest": ...}`.
#[derive(Debug)]
pub(crate) struct SshSignature {
    /// The algorithm name, e.g. `ssh-rsa`.
    pub(crate) format: String,
    /// The raw signature bytes.
    pub(crate) blob: Vec<u8>,
}

impl SignedEnvelope {
    /// Reads the envelope from the decoded key bytes.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, LicenseError> {
        let document = go_json::parse_document(bytes)
            .map_err(|detail| LicenseError::EnvelopeNotJson { detail })?;
        let object = match document {
            Value::Object(object) => object,
            // Go decodes `null` into the struct as a no-op, leaving every field empty.
            Value::Null => Map::new(),
            _ => return Err(malformed("expected a JSON object".to_owned())),
        };

        let signature = field(&object, "sig").ok_or(LicenseError::MissingSignature)?;
        let signature = SshSignature::from_json(signature)?;
        let info = field(&object, "info").ok_or(LicenseError::MissingInfo)?;
        let info = go_json::bytes(info, "info").map_err(malformed)?;
        Ok(Self { signature, info })
    }
}

impl SshSignature {
    fn from_json(value: &Value) -> Result<Self, LicenseError> {
        let object = value
            .as_object()
            .ok_or_else(|| malformed("`sig` must be an object".to_owned()))?;
        let format = field(object, "Format")
            .map(|value| go_json::string(value, "sig.Format"))
            .transpose()
            .map_err(malformed)?
            .unwrap_or_default();
        let blob = field(object, "Blob")
            .map(|value| go_json::bytes(value, "sig.Blob"))
            .transpose()
            .map_err(malformed)?
            .unwrap_or_default();
        // RSA verification ignores `Rest`, but Go still rejects the envelope if it is not bytes.
        if let Some(rest) = field(object, "Rest") {
            go_json::bytes(rest, "sig.Rest").map_err(malformed)?;
        }
        Ok(Self { format, blob })
    }
}

fn malformed(detail: String) -> LicenseError {
    LicenseError::MalformedEnvelope { detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<SignedEnvelope, LicenseError> {
        SignedEnvelope::parse(json.as_bytes())
    }

    #[test]
    fn reads_the_go_wire_format() {
        let envelope =
            parse(r#"{"sig":{"Format":"ssh-rsa","Blob":"AQI=","Rest":null},"info":"e30="}"#)
                .expect("valid envelope");
        assert_eq!(envelope.signature.format, "ssh-rsa");
        assert_eq!(envelope.signature.blob, vec![1, 2]);
        assert_eq!(envelope.info, b"{}".to_vec());
    }

    #[test]
    fn reads_lower_case_field_names() {
        let envelope =
            parse(r#"{"SIG":{"format":"rsa-sha2-256","blob":"AQI=","rest":"AA=="},"Info":"e30="}"#)
                .expect("valid envelope");
        assert_eq!(envelope.signature.format, "rsa-sha2-256");
        assert_eq!(envelope.signature.blob, vec![1, 2]);
    }

    #[test]
    fn missing_signature_is_reported() {
        assert_eq!(
            parse(r#"{"info":"e30="}"#).err(),
            Some(LicenseError::MissingSignature)
        );
    }

    #[test]
    fn null_signature_is_reported_as_missing() {
        assert_eq!(
            parse(r#"{"sig":null,"info":"e30="}"#).err(),
            Some(LicenseError::MissingSignature)
        );
    }

    #[test]
    fn missing_info_is_reported() {
        assert_eq!(
            parse(r#"{"sig":{"Format":"ssh-rsa","Blob":"AQI="}}"#).err(),
            Some(LicenseError::MissingInfo)
        );
    }

    #[test]
    fn null_envelope_has_no_signature() {
        assert_eq!(parse("null").err(), Some(LicenseError::MissingSignature));
    }

    #[test]
    fn non_object_envelope_is_malformed() {
        assert!(matches!(
            parse(r#"["sig"]"#),
            Err(LicenseError::MalformedEnvelope { .. })
        ));
    }

    #[test]
    fn signature_of_wrong_type_is_malformed_without_quoting_it() {
        let err = parse(r#"{"sig":"secret","info":"e30="}"#).expect_err("must be rejected");
        assert!(matches!(err, LicenseError::MalformedEnvelope { .. }));
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn invalid_rest_is_malformed() {
        assert!(matches!(
            parse(r#"{"sig":{"Format":"ssh-rsa","Blob":"AQI=","Rest":"!"},"info":"e30="}"#),
            Err(LicenseError::MalformedEnvelope { .. })
        ));
    }

    #[test]
    fn syntax_errors_are_not_json() {
        assert!(matches!(
            parse(r#"{"sig":"#),
            Err(LicenseError::EnvelopeNotJson { .. })
        ));
        assert!(matches!(
            parse(""),
            Err(LicenseError::EnvelopeNotJson { .. })
        ));
    }
}
