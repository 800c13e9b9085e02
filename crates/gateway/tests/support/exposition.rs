//! A Prometheus text exposition, parsed for the tests' assertions.

use std::collections::BTreeMap;

/// One sample of the text exposition.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed Prometheus text exposition.
#[derive(Debug)]
pub struct Exposition {
    pub samples: Vec<Sample>,
}

impl Exposition {
    pub fn parse(text: &str) -> Exposition {
        let samples = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("name and value");
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                    None => (series, BTreeMap::new()),
                };
                Sample {
                    name: name.to_string(),
                    labels,
                    value: value.parse().expect("a number"),
                }
            })
            .collect();
        Exposition { samples }
    }

    /// The samples named `name`, keyed by their labels (sorted, without `otel_scope_*`).
    pub fn family(&self, name: &str) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| (key_labels(&s.labels), s.value))
            .collect()
    }

    pub fn only(&self, name: &str) -> &Sample {
        let found: Vec<_> = self.samples.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} sample");
        found[0]
    }

    /// Exactly these samples of `name`, no others.
    pub fn assert_family(&self, name: &str, expected: &[(&str, f64)]) {
        let expected: BTreeMap<String, f64> = expected
            .iter()
            .map(|(labels, value)| (labels.to_string(), *value))
            .collect();
        assert_eq!(self.family(name), expected, "{name}");
    }

    /// Exactly these `_bucket`, `_sum` and `_count` samples of histogram `name`.
    pub fn assert_histogram(&self, name: &str, expected: &[(String, f64)]) {
        let mut actual = BTreeMap::new();
        for suffix in ["_bucket", "_sum", "_count"] {
            let series = format!("{name}{suffix}");
            for (labels, value) in self.family(&series) {
                actual.insert(format!("{series}{{{labels}}}"), value);
            }
        }
        let expected: BTreeMap<String, f64> = expected.iter().cloned().collect();
        assert_eq!(actual, expected, "{name}");
    }

    pub fn assert_absent(&self, name: &str) {
        assert!(
            self.samples.iter().all(|s| !s.name.starts_with(name)),
            "no {name} samples expected"
        );
    }
}

/// `k="v",…` sorted by key, the exporter's `otel_scope_*` labels left out.
pub fn key_labels(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .filter(|(k, _)| !k.starts_with("otel_scope_"))
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `k="v",k2="v2"` (values with `\"`, `\\` and `\n` escapes).
pub fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                other => value.push(other),
            }
        }
        labels.insert(key.trim_start_matches(',').to_string(), value);
        rest = &after[end..];
    }
    labels
}
