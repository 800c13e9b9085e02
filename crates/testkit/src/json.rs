//! Comparing JSON by value.

use serde_json::Value;

/// `value` with every number as f64, so `123` and `123.0` (one renderer writes each) compare
/// equal.
pub fn normalized_numbers(value: Value) -> Value {
    match value {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        Value::Array(items) => Value::Array(items.into_iter().map(normalized_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| (key, normalized_numbers(value)))
                .collect(),
        ),
        other => other,
    }
}
