//! The JSON log lines of Sourcegraph's log library (`json`), and the same with Cloud Logging's
//! special fields (`json_gcp`): docs/operations.md#logs lists the fields.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use serde::Serialize;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Who writes the logs: the `Resource` of every line.
#[derive(Debug, Clone, Serialize)]
pub struct LogResource {
    /// `service.name`.
    #[serde(rename = "service.name")]
    pub name: String,
    /// `service.version`.
    #[serde(rename = "service.version")]
    pub version: String,
    /// `service.instance.id`: the host name, or a random ID per process.
    #[serde(rename = "service.instance.id")]
    pub instance_id: String,
}

/// Formats events as one JSON object per line.
#[derive(Debug, Clone)]
pub struct SourcegraphJson {
    /// Add Cloud Logging's `severity`, `message` and trace fields (`json_gcp`).
    pub gcp: bool,
    /// The Google Cloud project for trace links (`projects/<project>/traces/<id>`).
    pub project: Option<String>,
    /// The `Resource` field.
    pub resource: LogResource,
    /// The clock (fixed in snapshot tests).
    pub now: fn() -> chrono::DateTime<chrono::Utc>,
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    severity: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(rename = "Timestamp")]
    timestamp: String,
    #[serde(rename = "InstrumentationScope")]
    scope: &'a str,
    #[serde(rename = "SeverityText")]
    severity_text: &'static str,
    #[serde(rename = "Body")]
    body: &'a str,
    #[serde(rename = "Attributes", skip_serializing_if = "Map::is_empty")]
    attributes: Map<String, Value>,
    #[serde(rename = "Resource")]
    resource: &'a LogResource,
    #[serde(rename = "TraceId", skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    #[serde(rename = "SpanId", skip_serializing_if = "Option::is_none")]
    span_id: Option<String>,
    #[serde(rename = "Caller", skip_serializing_if = "Option::is_none")]
    caller: Option<String>,
    #[serde(
        rename = "logging.googleapis.com/trace",
        skip_serializing_if = "Option::is_none"
    )]
    gcp_trace: Option<String>,
    #[serde(
        rename = "logging.googleapis.com/spanId",
        skip_serializing_if = "Option::is_none"
    )]
    gcp_span_id: Option<String>,
    #[serde(
        rename = "logging.googleapis.com/trace_sampled",
        skip_serializing_if = "Option::is_none"
    )]
    gcp_trace_sampled: Option<bool>,
}

/// Sourcegraph's level names.
fn severity_text(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// Cloud Logging's `LogSeverity` names.
fn gcp_severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

impl<S, N> FormatEvent<S, N> for SourcegraphJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        // The fields of the spans around the event (outermost first), then the event's own:
        // one flat `Attributes` object instead of a stack of spans on every line.
        let mut attributes = Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(fields)) = serde_json::from_str(fields.as_str())
                {
                    attributes.extend(fields);
                }
            }
        }
        let mut visitor = FieldVisitor {
            message: String::new(),
            attributes: &mut attributes,
        };
        event.record(&mut visitor);
        let body = std::mem::take(&mut visitor.message);

        let context = tracing::Span::current().context();
        let span = context.span();
        let span_context = span.span_context().clone();
        let (trace_id, span_id) = if span_context.is_valid() {
            (
                Some(span_context.trace_id().to_string()),
                Some(span_context.span_id().to_string()),
            )
        } else {
            (None, None)
        };
        let gcp_trace = trace_id
            .as_ref()
            .filter(|_| self.gcp)
            .map(|id| match &self.project {
                Some(project) => format!("projects/{project}/traces/{id}"),
                None => id.clone(),
            });
        let line = Line {
            severity: self.gcp.then(|| gcp_severity(metadata.level())),
            message: self.gcp.then_some(body.as_str()),
            timestamp: (self.now)().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            scope: metadata.target(),
            severity_text: severity_text(metadata.level()),
            body: &body,
            attributes,
            resource: &self.resource,
            gcp_span_id: span_id.clone().filter(|_| self.gcp),
            gcp_trace_sampled: gcp_trace.as_ref().map(|_| span_context.is_sampled()),
            gcp_trace,
            trace_id,
            span_id,
            caller: metadata
                .file()
                .zip(metadata.line())
                .map(|(file, line)| format!("{file}:{line}")),
        };
        let json = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{json}")
    }
}

/// Collects an event's message and fields, keeping numbers and booleans as JSON numbers and
/// booleans (durations are logged as `_seconds` numbers by the code that logs them).
struct FieldVisitor<'a> {
    message: String,
    attributes: &'a mut Map<String, Value>,
}

impl FieldVisitor<'_> {
    fn insert(&mut self, field: &Field, value: Value) {
        let name = field.name();
        // tracing-log's bookkeeping fields repeat what the line already says.
        if name.starts_with("log.") {
            return;
        }
        self.attributes.insert(name.to_string(), value);
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.insert(field, Value::from(value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.insert(field, Value::from(format!("{value:?}")));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.insert(field, Value::from(value.to_string()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: those become strings.
        let value = serde_json::Number::from_f64(value)
            .map_or_else(|| Value::from(value.to_string()), Value::Number);
        self.insert(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, Value::from(value));
    }
}
