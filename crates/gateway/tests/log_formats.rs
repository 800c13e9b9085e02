//! Each log format pinned by a snapshot: the field names operators' saved queries and Cloud
//! Logging rely on, numbers as numbers, one flat `Attributes` object instead of a span stack.

use std::io::Write;
use std::sync::{Arc, Mutex};

use telemetry_gateway::config::LogFormat;
use telemetry_gateway::logging::LogSettings;
use telemetry_gateway::logging::json::{LogResource, SourcegraphJson};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("not poisoned")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("not poisoned").clone()).expect("UTF-8")
    }
}

fn settings(format: LogFormat, level: LevelFilter) -> LogSettings {
    LogSettings {
        format,
        level,
        scopes: Vec::new(),
        sampling: None,
        project: Some("telemetry-prod".into()),
        ansi: false,
    }
}

fn fixed_clock() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339("2026-11-30T10:00:00.123456789Z")
        .expect("a timestamp")
        .with_timezone(&chrono::Utc)
}

fn json_format(format: LogFormat) -> SourcegraphJson {
    SourcegraphJson {
        gcp: format == LogFormat::JsonGcp,
        project: Some("telemetry-prod".into()),
        resource: LogResource {
            name: "telemetry-gateway".into(),
            version: "0.0.0-test".into(),
            instance_id: "instance-1".into(),
        },
        now: fixed_clock,
    }
}

/// Logs the sample lines through `settings` and returns what was written.
fn render(settings: &LogSettings, json: Option<SourcegraphJson>) -> String {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber =
        tracing_subscriber::registry().with(settings.output(move || writer.clone(), json));
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("stream", requestID = "req-1", source = "licensed");
        let _entered = span.enter();
        tracing::info!(
            events = 3_u64,
            sizeBytes = 2048_i64,
            "events payload received"
        );
        let err = std::io::Error::other("topic does not exist");
        tracing::warn!(
            error = &err as &dyn std::error::Error,
            retryable = true,
            latency_seconds = 0.0073,
            "publish failed"
        );
        tracing::debug!("left out at info");
        tracing::error!(feature = "cody", "rendering failed");
    });
    captured.text()
}

/// Lines as JSON with the caller (a line number in this file) replaced.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| {
            let mut json: serde_json::Value = serde_json::from_str(line).expect("JSON");
            json["Caller"] = "<caller>".into();
            json
        })
        .collect()
}

#[test]
fn json_has_sourcegraphs_fields() {
    let format = LogFormat::Json;
    let text = render(
        &settings(format, LevelFilter::INFO),
        Some(json_format(format)),
    );
    insta::assert_json_snapshot!(json_lines(&text));
}

#[test]
fn json_gcp_adds_cloud_loggings_severity_and_message() {
    let format = LogFormat::JsonGcp;
    let text = render(
        &settings(format, LevelFilter::INFO),
        Some(json_format(format)),
    );
    insta::assert_json_snapshot!(json_lines(&text));
}

#[test]
fn console_is_plain_text_without_colours() {
    let text = render(&settings(LogFormat::Console, LevelFilter::INFO), None);
    // Each line starts with the time: drop it.
    let lines: Vec<&str> = text
        .lines()
        .map(|line| {
            line.split_once(' ')
                .map_or(line, |(_, rest)| rest.trim_start())
        })
        .collect();
    assert!(!text.contains('\x1b'), "no ANSI escapes: {text:?}");
    insta::assert_snapshot!(lines.join("\n"));
}

#[test]
fn debug_lines_appear_at_debug_and_library_noise_only_by_scope() {
    let debug = settings(LogFormat::Json, LevelFilter::DEBUG);
    let text = render(&debug, Some(json_format(LogFormat::Json)));
    assert!(text.contains("left out at info"));
    let filter = debug.filter().to_string();
    assert!(
        filter.contains("h2=info") && filter.contains("hyper=info"),
        "{filter}"
    );
    let mut scoped = debug.clone();
    scoped.scopes = vec![("h2".into(), LevelFilter::DEBUG)];
    assert!(scoped.filter().to_string().contains("h2=debug"));
    let quiet = settings(LogFormat::Json, LevelFilter::WARN)
        .filter()
        .to_string();
    assert!(
        !quiet.contains("h2=info"),
        "never louder than the level: {quiet}"
    );
}

#[test]
fn identical_messages_are_sampled() {
    let mut sampled = settings(LogFormat::Json, LevelFilter::INFO);
    sampled.sampling = Some((2, 3));
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::registry()
        .with(sampled.output(move || writer.clone(), Some(json_format(LogFormat::Json))));
    tracing::subscriber::with_default(subscriber, || {
        for _ in 0..8 {
            tracing::info!("same message");
        }
        tracing::info!("another message");
    });
    let lines = json_lines(&captured.text());
    let same = lines.iter().filter(|l| l["Body"] == "same message").count();
    // 2 in full, then the 5th and 8th (unless the second turned in between: then more).
    assert!((4..=8).contains(&same), "{same}");
    assert!(lines.iter().any(|l| l["Body"] == "another message"));
}
