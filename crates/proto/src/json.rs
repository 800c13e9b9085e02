//! The canonical proto3 JSON rendering of events and request metadata.
//!
//! Downstream pipelines receive exactly what the original Go service published: Go's
//! `protojson.Marshal` with default options, embedded by `encoding/json`, which compacts it and
//! escapes `<`, `>`, `&`, U+2028 and U+2029. So:
//! - lowerCamelCase names, fields in declaration order, unset and zero implicit-presence fields
//!   omitted, `optional` fields present whenever set, map keys sorted;
//! - int64 as strings, doubles in Go's shortest form (`123`, `1e+21`, `"NaN"`), Timestamps as
//!   RFC 3339 UTC with 0, 3, 6 or 9 fractional digits and `Z`, Struct as a plain object.
//!
//! [`render_event`] and [`render_metadata`] write these bytes directly from the generated types
//! (the hot path). [`to_canonical_json`] renders any protocol message through prost-reflect over
//! the checked-in descriptor; tests use it as the reference the fast path must agree with.

use std::io::Write as _;

use prost_reflect::ReflectMessage;

use crate::v1::identifier::Identifier as IdentifierKind;
use crate::v1::{Event, RecordEventsRequestMetadata};
use crate::wire::{
    EventView, InteractionView, MarketingTrackingView, ParametersView, SourceView, StructView,
    UserView, ValueView,
};

/// Why a message cannot be rendered as canonical JSON (as Go's protojson would refuse it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A Timestamp outside 0001-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z.
    #[error("google.protobuf.Timestamp: seconds out of range {0}")]
    TimestampSecondsOutOfRange(i64),
    /// A Timestamp whose nanos are negative or exceed 999,999,999.
    #[error("google.protobuf.Timestamp: nanos out of range {0}")]
    TimestampNanosOutOfRange(i32),
    /// A NaN or infinite number inside a Struct, which JSON cannot carry.
    #[error("google.protobuf.Value: invalid number {0}")]
    NonFiniteNumber(String),
    /// A Struct value with no kind set.
    #[error("google.protobuf.Value: none of the oneof fields is set")]
    EmptyValue,
}

/// Appends the canonical JSON of `event` to `out`. On error `out` may hold a partial rendering.
pub fn render_event(event: &Event, out: &mut Vec<u8>) -> Result<(), RenderError> {
    render_view(&EventView::from_event(event), out)
}

/// Appends the canonical JSON of a viewed event (read from its wire bytes or from a decoded
/// [`Event`]) to `out`. On error `out` may hold a partial rendering.
pub fn render_view(event: &EventView<'_>, out: &mut Vec<u8>) -> Result<(), RenderError> {
    let mut obj = Object::open(out);
    obj.str_field("id", event.id);
    if let Some(timestamp) = &event.timestamp {
        write_timestamp(obj.key("timestamp"), timestamp)?;
    }
    obj.str_field("feature", event.feature);
    obj.str_field("action", event.action);
    if let Some(source) = &event.source {
        write_source(obj.key("source"), source);
    }
    if let Some(parameters) = &event.parameters {
        write_parameters(obj.key("parameters"), parameters)?;
    }
    if let Some(user) = &event.user {
        write_user(obj.key("user"), user);
    }
    if let Some(flags) = &event.feature_flags {
        let mut inner = Object::open(obj.key("featureFlags"));
        if !flags.is_empty() {
            write_string_map(inner.key("flags"), flags);
        }
        inner.close();
    }
    if let Some(tracking) = &event.marketing_tracking {
        write_marketing_tracking(obj.key("marketingTracking"), tracking);
    }
    if let Some(interaction) = &event.interaction {
        write_interaction(obj.key("interaction"), interaction);
    }
    obj.close();
    Ok(())
}

/// Appends the canonical JSON of request metadata to `out`.
pub fn render_metadata(metadata: &RecordEventsRequestMetadata, out: &mut Vec<u8>) {
    let mut obj = Object::open(out);
    if !metadata.request_id.is_empty() {
        write_str(obj.key("requestId"), &metadata.request_id);
    }
    if let Some(identifier) = &metadata.identifier {
        let mut ident = Object::open(obj.key("identifier"));
        match &identifier.identifier {
            Some(IdentifierKind::LicensedInstance(licensed)) => {
                let mut inner = Object::open(ident.key("licensedInstance"));
                inner.str_field("licenseKey", &licensed.license_key);
                inner.str_field("instanceId", &licensed.instance_id);
                inner.str_field("externalUrl", &licensed.external_url);
                inner.close();
            }
            Some(IdentifierKind::UnlicensedInstance(unlicensed)) => {
                let mut inner = Object::open(ident.key("unlicensedInstance"));
                inner.str_field("instanceId", &unlicensed.instance_id);
                inner.str_field("externalUrl", &unlicensed.external_url);
                inner.close();
            }
            Some(IdentifierKind::ManagedService(service)) => {
                let mut inner = Object::open(ident.key("managedService"));
                inner.str_field("serviceId", &service.service_id);
                inner.opt_str_field("serviceEnvironment", service.service_environment.as_deref());
                inner.close();
            }
            None => {}
        }
        ident.close();
    }
    obj.close();
}

/// Renders any protocol message through prost-reflect with the default proto3 JSON options.
///
/// Slower than [`render_event`] and not byte-identical to Go for doubles (it writes `123.0`), but
/// an independent implementation of the mapping: the two must always parse to the same value.
pub fn to_canonical_json<M: ReflectMessage>(message: &M) -> Result<String, serde_json::Error> {
    serde_json::to_string(&message.transcode_to_dynamic())
}

/// Parses proto3 JSON (as [`render_event`], [`render_metadata`] or any conforming encoder
/// writes it) into a protocol message; unknown fields are an error. The inverse of the
/// renderers, used to read back files the gateway wrote (`telemetry-gateway replay`).
pub fn from_json<M: ReflectMessage + Default>(json: &str) -> Result<M, String> {
    let descriptor = M::default().descriptor();
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let message = prost_reflect::DynamicMessage::deserialize(descriptor, &mut deserializer)
        .and_then(|message| deserializer.end().map(|()| message))
        .map_err(|err| err.to_string())?;
    message.transcode_to().map_err(|err| err.to_string())
}

fn write_source(out: &mut Vec<u8>, source: &SourceView<'_>) {
    let mut obj = Object::open(out);
    if let Some(version) = source.server {
        let mut inner = Object::open(obj.key("server"));
        inner.str_field("version", version);
        inner.close();
    }
    if let Some(client) = &source.client {
        let mut inner = Object::open(obj.key("client"));
        inner.str_field("name", client.name);
        inner.opt_str_field("version", client.version);
        inner.close();
    }
    obj.close();
}

fn write_parameters(out: &mut Vec<u8>, parameters: &ParametersView<'_>) -> Result<(), RenderError> {
    let mut obj = Object::open(out);
    if parameters.version != 0 {
        write_int(obj.key("version"), parameters.version);
    }
    if !parameters.legacy_metadata.is_empty() {
        let mut map = Object::open(obj.key("legacyMetadata"));
        for (key, value) in &parameters.legacy_metadata {
            let out = map.dynamic_key(key);
            out.push(b'"');
            write_int(out, *value);
            out.push(b'"');
        }
        map.close();
    }
    if !parameters.metadata.is_empty() {
        let mut map = Object::open(obj.key("metadata"));
        for (key, value) in &parameters.metadata {
            write_double(map.dynamic_key(key), *value);
        }
        map.close();
    }
    if let Some(private) = &parameters.private_metadata {
        write_struct(obj.key("privateMetadata"), private)?;
    }
    if let Some((product, category)) = parameters.billing_metadata {
        let mut inner = Object::open(obj.key("billingMetadata"));
        inner.str_field("product", product);
        inner.str_field("category", category);
        inner.close();
    }
    obj.close();
    Ok(())
}

fn write_user(out: &mut Vec<u8>, user: &UserView<'_>) {
    let mut obj = Object::open(out);
    if let Some(user_id) = user.user_id {
        let out = obj.key("userId");
        out.push(b'"');
        write_int(out, user_id);
        out.push(b'"');
    }
    obj.opt_str_field("anonymousUserId", user.anonymous_user_id);
    obj.opt_str_field("samsExternalId", user.sams_external_id);
    obj.close();
}

/// `EventMarketingTracking`'s JSON names, in field order.
const MARKETING_TRACKING_NAMES: [&str; 8] = [
    "url",
    "firstSourceUrl",
    "cohortId",
    "referrer",
    "lastSourceUrl",
    "deviceSessionId",
    "sessionReferrer",
    "sessionFirstUrl",
];

fn write_marketing_tracking(out: &mut Vec<u8>, tracking: &MarketingTrackingView<'_>) {
    let mut obj = Object::open(out);
    for (name, value) in MARKETING_TRACKING_NAMES.iter().zip(tracking.fields) {
        obj.opt_str_field(name, value);
    }
    obj.close();
}

fn write_interaction(out: &mut Vec<u8>, interaction: &InteractionView<'_>) {
    let mut obj = Object::open(out);
    obj.opt_str_field("traceId", interaction.trace_id);
    obj.opt_str_field("interactionId", interaction.interaction_id);
    if let Some(country_code) = interaction.geolocation {
        let mut inner = Object::open(obj.key("geolocation"));
        inner.str_field("countryCode", country_code);
        inner.close();
    }
    obj.close();
}

fn write_string_map(out: &mut Vec<u8>, map: &[(&str, &str)]) {
    let mut obj = Object::open(out);
    for (key, value) in map {
        write_str(obj.dynamic_key(key), value);
    }
    obj.close();
}

fn write_struct(out: &mut Vec<u8>, value: &StructView<'_>) -> Result<(), RenderError> {
    let mut obj = Object::open(out);
    for (key, value) in &value.fields {
        write_value(obj.dynamic_key(key), value)?;
    }
    obj.close();
    Ok(())
}

fn write_value(out: &mut Vec<u8>, value: &ValueView<'_>) -> Result<(), RenderError> {
    match value {
        ValueView::Empty => return Err(RenderError::EmptyValue),
        ValueView::Null => out.extend_from_slice(b"null"),
        ValueView::Number(n) => {
            if !n.is_finite() {
                return Err(RenderError::NonFiniteNumber(n.to_string()));
            }
            write_double(out, *n);
        }
        ValueView::String(s) => write_str(out, s),
        ValueView::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        ValueView::Struct(s) => write_struct(out, s)?,
        ValueView::List(list) => {
            out.push(b'[');
            for (i, item) in list.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item)?;
            }
            out.push(b']');
        }
    }
    Ok(())
}

/// A JSON object being written: tracks whether a comma is due before the next key.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> Object<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Object { out, empty: true }
    }

    fn separator(&mut self) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
    }

    /// Writes a constant field name (known to need no escaping) and returns the buffer for the
    /// value.
    fn key(&mut self, name: &str) -> &mut Vec<u8> {
        self.separator();
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    /// Writes a sender-supplied key (a map key), escaped.
    fn dynamic_key(&mut self, name: &str) -> &mut Vec<u8> {
        self.separator();
        write_str(self.out, name);
        self.out.push(b':');
        self.out
    }

    /// An implicit-presence string field: omitted when empty.
    fn str_field(&mut self, name: &str, value: &str) {
        if !value.is_empty() {
            write_str(self.key(name), value);
        }
    }

    /// An `optional` string field: present whenever set, even when empty.
    fn opt_str_field(&mut self, name: &str, value: Option<&str>) {
        if let Some(value) = value {
            write_str(self.key(name), value);
        }
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

fn write_int(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn write_display(out: &mut Vec<u8>, value: impl std::fmt::Display) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{value}");
}

/// 2^53: every integer below it is exactly representable as a double.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// Go's protojson double formatting: shortest round-trip digits, plain notation unless the
/// magnitude is below 1e-6 or at least 1e21, exponents as `e+21` / `e-7`, and NaN/Infinity as
/// strings.
fn write_double(out: &mut Vec<u8>, value: f64) {
    if value.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if value == f64::INFINITY {
        out.extend_from_slice(b"\"Infinity\"");
    } else if value == f64::NEG_INFINITY {
        out.extend_from_slice(b"\"-Infinity\"");
    } else {
        let magnitude = value.abs();
        // Whole numbers below 2^53 (counts, sizes, flags: nearly every metadata value) print as
        // their integer digits in both Go's shortest form and Rust's; -0 keeps its sign below.
        if value.fract() == 0.0
            && magnitude < MAX_EXACT_INTEGER
            && !(value == 0.0 && value.is_sign_negative())
        {
            write_int(out, value as i64);
        } else if magnitude != 0.0 && !(1e-6..1e21).contains(&magnitude) {
            let start = out.len();
            write_display(out, format_args!("{value:e}"));
            if let Some(e) = out[start..].iter().position(|b| *b == b'e') {
                let exponent_at = start + e + 1;
                if out.get(exponent_at) != Some(&b'-') {
                    out.insert(exponent_at, b'+');
                }
            }
        } else {
            write_display(out, value);
        }
    }
}

/// Which bytes need attention inside a JSON string: 1 = escape, 2 = possible U+2028/U+2029.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = 1;
        b += 1;
    }
    table[b'"' as usize] = 1;
    table[b'\\' as usize] = 1;
    table[b'<' as usize] = 1;
    table[b'>' as usize] = 1;
    table[b'&' as usize] = 1;
    table[0xE2] = 2;
    table
};

/// Which of the eight bytes of `word` (little-endian) have a non-zero [`ESCAPE`] entry (a
/// control character, `"`, `\`, `<`, `>`, `&` or `0xE2`), tested on the whole word at once: the
/// mask's lowest set bit is the high bit of the first such byte (exact: a borrow only starts at
/// a matching byte and only moves up), and the mask is zero when there is none.
fn attention_mask(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Some byte is zero (exact as a yes/no answer: a borrow only starts at a zero byte).
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    // Some byte is below 0x20 (bytes of 0x80 and above are excluded by `!word`).
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let equal = |byte: u8| has_zero(word ^ (ONES * u64::from(byte)));
    control | equal(b'"') | equal(b'\\') | equal(b'<') | equal(b'>') | equal(b'&') | equal(0xE2)
}

/// Writes a JSON string as Go's protojson + `encoding/json` compaction would.
fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Eight bytes at a time while none of them needs attention (most text), then straight
        // to the first one that does.
        while let Some(word) = bytes.get(i..).and_then(<[u8]>::first_chunk::<8>) {
            let mask = attention_mask(u64::from_le_bytes(*word));
            if mask != 0 {
                i += (mask.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        let Some(&b) = bytes.get(i) else {
            break;
        };
        match ESCAPE[b as usize] {
            0 => {
                i += 1;
                continue;
            }
            2 => {
                // U+2028 and U+2029 are E2 80 A8 / E2 80 A9.
                let separator = bytes.get(i + 1) == Some(&0x80)
                    && matches!(bytes.get(i + 2), Some(0xA8) | Some(0xA9));
                if !separator {
                    i += 1;
                    continue;
                }
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(if bytes[i + 2] == 0xA8 {
                    b"\\u2028"
                } else {
                    b"\\u2029"
                });
                i += 3;
                start = i;
                continue;
            }
            _ => {}
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0C => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xF) as usize]);
            }
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the range protojson accepts.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// Writes an RFC 3339 UTC timestamp with 0, 3, 6 or 9 fractional digits, as protojson does.
fn write_timestamp(out: &mut Vec<u8>, ts: &prost_types::Timestamp) -> Result<(), RenderError> {
    if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&ts.seconds) {
        return Err(RenderError::TimestampSecondsOutOfRange(ts.seconds));
    }
    if !(0..=999_999_999).contains(&ts.nanos) {
        return Err(RenderError::TimestampNanosOutOfRange(ts.nanos));
    }
    let days = ts.seconds.div_euclid(86_400);
    let second_of_day = ts.seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let second_of_day = second_of_day as u32;
    // The range check above keeps the year within 1..=9999.
    out.push(b'"');
    push_digits(out, year as u32, 4);
    out.push(b'-');
    push_digits(out, month, 2);
    out.push(b'-');
    push_digits(out, day, 2);
    out.push(b'T');
    push_digits(out, second_of_day / 3600, 2);
    out.push(b':');
    push_digits(out, second_of_day / 60 % 60, 2);
    out.push(b':');
    push_digits(out, second_of_day % 60, 2);
    let nanos = ts.nanos as u32;
    if nanos != 0 {
        out.push(b'.');
        if nanos.is_multiple_of(1_000_000) {
            push_digits(out, nanos / 1_000_000, 3);
        } else if nanos.is_multiple_of(1_000) {
            push_digits(out, nanos / 1_000, 6);
        } else {
            push_digits(out, nanos, 9);
        }
    }
    out.extend_from_slice(b"Z\"");
    Ok(())
}

/// Appends the last `width` decimal digits of `value`, zero-padded (`format!("{value:0width$}")`
/// for values below `10^width`, without the formatting machinery).
fn push_digits(out: &mut Vec<u8>, mut value: u32, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for digit in out[start..].iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy as _;

    use super::*;

    fn double(value: f64) -> String {
        let mut out = Vec::new();
        write_double(&mut out, value);
        String::from_utf8(out).expect("ascii")
    }

    fn string(value: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, value);
        String::from_utf8(out).expect("utf-8")
    }

    fn timestamp(seconds: i64, nanos: i32) -> Result<String, RenderError> {
        let mut out = Vec::new();
        write_timestamp(&mut out, &prost_types::Timestamp { seconds, nanos })?;
        Ok(String::from_utf8(out).expect("ascii"))
    }

    #[test]
    fn doubles_are_formatted_like_go_protojson() {
        let cases = [
            (123.0, "123"),
            (0.5, "0.5"),
            (-0.0, "-0"),
            (0.0, "0"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.5e300, "1.5e+300"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (-2.5e-10, "-2.5e-10"),
            (0.1 + 0.2, "0.30000000000000004"),
            (9007199254740993.0, "9007199254740992"),
            (9007199254740991.0, "9007199254740991"),
            (-9007199254740991.0, "-9007199254740991"),
            (-5.0, "-5"),
            (1e15, "1000000000000000"),
            (f64::NAN, "\"NaN\""),
            (f64::INFINITY, "\"Infinity\""),
            (f64::NEG_INFINITY, "\"-Infinity\""),
        ];
        for (value, expected) in cases {
            assert_eq!(double(value), expected, "{value:?}");
        }
        // The whole-number fast path agrees with the general one.
        for value in [1.0, 7.0, 42.0, 1e3, 123_456_789.0, 4_503_599_627_370_496.0] {
            for value in [value, -value] {
                assert_eq!(double(value), format!("{value}"), "{value:?}");
            }
        }
    }

    #[test]
    fn strings_are_escaped_like_go_encoding_json() {
        assert_eq!(string("plain"), r#""plain""#);
        assert_eq!(string("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(string("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(string("\u{0}\u{1f}"), r#""\u0000\u001f""#);
        assert_eq!(string("<a href=x&y>"), r#""\u003ca href=x\u0026y\u003e""#);
        assert_eq!(
            string("\u{2028}\u{2029}\u{2027}"),
            "\"\\u2028\\u2029\u{2027}\""
        );
        assert_eq!(string("héllo ✓ \u{7f}"), "\"héllo ✓ \u{7f}\"");
    }

    /// Go's `encoding/json` string escaping, one character at a time: the reference for the
    /// word-at-a-time scan.
    fn reference_string(value: &str) -> String {
        let mut out = String::from("\"");
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '<' | '>' | '&' | '\u{0}'..='\u{1f}' | '\u{2028}' | '\u{2029}' => {
                    out.push_str(&format!("\\u{:04x}", u32::from(c)));
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    proptest::proptest! {
        /// The word test finds exactly the first byte the table flags, or none.
        #[test]
        fn the_word_test_finds_the_first_flagged_byte(
            bytes in proptest::array::uniform8(proptest::prop_oneof![
                3 => 0x20u8..0x7F,
                1 => proptest::sample::select(vec![0u8, 0x1F, b'"', b'\\', b'<', b'>', b'&', 0xE2, 0xE1, 0xE3, 0x80, 0xFF]),
                1 => proptest::num::u8::ANY,
            ])
        ) {
            let mask = attention_mask(u64::from_le_bytes(bytes));
            let first = bytes.iter().position(|&b| ESCAPE[b as usize] != 0);
            let found = (mask != 0).then(|| (mask.trailing_zeros() / 8) as usize);
            proptest::prop_assert_eq!(found, first, "{:?}", bytes);
        }

        #[test]
        fn strings_are_escaped_like_the_reference(
            value in proptest::collection::vec(
                proptest::prop_oneof![
                    4 => proptest::char::range('a', 'z'),
                    1 => proptest::sample::select(vec![
                        '"', '\\', '<', '>', '&', '\n', '\u{0}', '\u{1f}', '\u{7f}', ' ',
                        '\u{2028}', '\u{2029}', '\u{2027}', '\u{202a}', '\u{20ac}', 'é',
                        '\u{10348}', '\u{e2}',
                    ]),
                    1 => proptest::char::any(),
                ],
                0..40,
            ).prop_map(|chars| chars.into_iter().collect::<String>())
        ) {
            proptest::prop_assert_eq!(string(&value), reference_string(&value));
        }
    }

    #[test]
    fn escapes_are_found_in_every_position() {
        for at in 0..20 {
            let mut text = "x".repeat(20);
            text.replace_range(at..=at, "<");
            assert_eq!(string(&text).matches("\\u003c").count(), 1, "{text}");
        }
    }

    #[test]
    fn timestamps_use_0_3_6_or_9_fraction_digits() {
        assert_eq!(
            timestamp(1_677_250_110, 0).as_deref(),
            Ok("\"2023-02-24T14:48:30Z\"")
        );
        assert_eq!(
            timestamp(1_677_250_110, 5_000_000).as_deref(),
            Ok("\"2023-02-24T14:48:30.005Z\"")
        );
        assert_eq!(
            timestamp(1_677_250_110, 5_000).as_deref(),
            Ok("\"2023-02-24T14:48:30.000005Z\"")
        );
        assert_eq!(
            timestamp(1_677_250_110, 5).as_deref(),
            Ok("\"2023-02-24T14:48:30.000000005Z\"")
        );
        assert_eq!(timestamp(0, 0).as_deref(), Ok("\"1970-01-01T00:00:00Z\""));
        assert_eq!(timestamp(-1, 0).as_deref(), Ok("\"1969-12-31T23:59:59Z\""));
        assert_eq!(
            timestamp(MIN_TIMESTAMP_SECONDS, 0).as_deref(),
            Ok("\"0001-01-01T00:00:00Z\"")
        );
        assert_eq!(
            timestamp(MAX_TIMESTAMP_SECONDS, 999_999_999).as_deref(),
            Ok("\"9999-12-31T23:59:59.999999999Z\"")
        );
        assert_eq!(
            timestamp(951_782_400, 0).as_deref(),
            Ok("\"2000-02-29T00:00:00Z\"")
        );
    }

    proptest::proptest! {
        /// The digits are written by hand; `format!` is the reference.
        #[test]
        fn timestamps_match_the_formatting_machinery(
            seconds in MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS,
            nanos in proptest::prop_oneof![
                proptest::strategy::Just(0),
                (0..1_000).prop_map(|ms| ms * 1_000_000),
                (0..1_000_000).prop_map(|us| us * 1_000),
                0..1_000_000_000,
            ],
        ) {
            let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
            let second_of_day = seconds.rem_euclid(86_400);
            let fraction = match nanos {
                0 => String::new(),
                n if n % 1_000_000 == 0 => format!(".{:03}", n / 1_000_000),
                n if n % 1_000 == 0 => format!(".{:06}", n / 1_000),
                n => format!(".{n:09}"),
            };
            let expected = format!(
                "\"{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z\"",
                second_of_day / 3600,
                second_of_day / 60 % 60,
                second_of_day % 60
            );
            proptest::prop_assert_eq!(timestamp(seconds, nanos), Ok(expected));
        }
    }

    #[test]
    fn out_of_range_timestamps_are_errors() {
        assert_eq!(
            timestamp(MIN_TIMESTAMP_SECONDS - 1, 0),
            Err(RenderError::TimestampSecondsOutOfRange(
                MIN_TIMESTAMP_SECONDS - 1
            ))
        );
        assert_eq!(
            timestamp(MAX_TIMESTAMP_SECONDS + 1, 0),
            Err(RenderError::TimestampSecondsOutOfRange(
                MAX_TIMESTAMP_SECONDS + 1
            ))
        );
        assert_eq!(
            timestamp(0, -1),
            Err(RenderError::TimestampNanosOutOfRange(-1))
        );
        assert_eq!(
            timestamp(0, 1_000_000_000),
            Err(RenderError::TimestampNanosOutOfRange(1_000_000_000))
        );
    }

    #[test]
    fn civil_dates_match_a_day_by_day_walk() {
        // Walk day by day across several leap rules (1900..2105) and compare with a naive count.
        let mut expected = (1900i64, 1u32, 1u32);
        let days_in = |y: i64, m: u32| -> u32 {
            match m {
                1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
                4 | 6 | 9 | 11 => 30,
                _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
                _ => 28,
            }
        };
        let start = -25_567; // 1900-01-01
        for day in start..start + 75_000 {
            assert_eq!(civil_from_days(day), expected, "day {day}");
            let (y, m, d) = expected;
            expected = if d < days_in(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
    }
}
