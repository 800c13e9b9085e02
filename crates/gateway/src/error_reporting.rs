//! Error reports to Sentry when `SENTRY_DSN` is set, reported as the original does
//! (`docs/compatibility.md` §8): error-level log lines that carry an `error` field become Sentry
//! events (a failed publish tagged with its event's feature, action and ID), other errors and
//! warnings become breadcrumbs, and panics are captured. Cancellations are logged as warnings
//! without an error, so they never become events.
//!
//! Nothing here reads requests: a report holds only what the log line holds, and the server logs
//! neither license keys nor bearer tokens.
//!
//! Reports are limited per interval ([`ReportLimiter`]), so that no sender can turn its bad input
//! into a flood of Sentry events: the server already logs at most one error line per payload and
//! kind of failure, and the limiter bounds how many of those become events.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sentry::integrations::tracing::{BreadcrumbLayer, ErrorLayer};
use sentry::protocol::{Context, Event, Value};
use sentry::types::Dsn;
use tracing::{Level, Metadata};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;

use crate::logging::BoxedLayer;

/// The release reported with every event: `telemetry-gateway@<version>`.
pub fn release() -> String {
    format!("telemetry-gateway@{}", crate::version::version())
}

/// How long shutdown waits for queued reports to be sent.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The log field whose presence on an error-level line makes it a Sentry event.
const ERROR_FIELD: &str = "error";

/// The Sentry tracing integration's context holding a log line's fields.
const FIELDS_CONTEXT: &str = "Rust Tracing Fields";

/// Log fields copied to Sentry tags (searchable in Sentry), with the tag's name.
const TAGGED_FIELDS: [(&str, &str); 4] = [
    ("source", "source"),
    ("eventFeature", "event.feature"),
    ("eventAction", "event.action"),
    ("eventID", "event.id"),
];

/// What a log line becomes in Sentry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// A Sentry event of its own.
    Event,
    /// A breadcrumb, sent with the next event.
    Breadcrumb,
    /// Nothing.
    Ignored,
}

/// The rule: ERROR lines with an `error` field are events, other ERROR and WARN lines are
/// breadcrumbs, everything else (spans included) is ignored.
pub fn report_for(metadata: &Metadata<'_>) -> Report {
    // The OpenTelemetry SDK's own errors (an unreachable collector, say) are logged, but would
    // become one Sentry event per export interval.
    if !metadata.is_event() || metadata.target().starts_with("opentelemetry") {
        return Report::Ignored;
    }
    match *metadata.level() {
        Level::ERROR if metadata.fields().field(ERROR_FIELD).is_some() => Report::Event,
        Level::ERROR | Level::WARN => Report::Breadcrumb,
        _ => Report::Ignored,
    }
}

/// The log layer feeding Sentry by [`report_for`]. Harmless without a Sentry client: captures
/// then go nowhere.
pub fn layer() -> BoxedLayer {
    let breadcrumbs = BreadcrumbLayer::new().with_filter(filter_fn(|metadata| {
        report_for(metadata) == Report::Breadcrumb
    }));
    let events =
        ErrorLayer::new().with_filter(filter_fn(|metadata| report_for(metadata) == Report::Event));
    // Breadcrumbs first, so an event carries the lines logged before it.
    Box::new(breadcrumbs.and_then(events))
}

/// The client options: `environment` is `ENVIRONMENT_ID`; events get their tags and fingerprint
/// from [`tag_event`] and are limited by a [`ReportLimiter`]; no personal data (no request
/// details, no user IP).
pub fn client_options(dsn: Dsn, environment: &str) -> sentry::ClientOptions {
    let limiter = Arc::new(ReportLimiter::default());
    let mut options = sentry::ClientOptions::new()
        .environment(environment.to_string())
        .release(release())
        .send_default_pii(false)
        .shutdown_timeout(CLOSE_TIMEOUT)
        .before_send(move |event| limiter.admit(tag_event(event), Instant::now()));
    options.dsn = Some(dsn);
    options
}

/// Copies the [`TAGGED_FIELDS`] of an event's log line to tags. A failed publish is grouped by
/// its error, not by its message (which names the event, so would make an issue per event).
pub fn tag_event(mut event: Event<'static>) -> Event<'static> {
    let Some(Context::Other(fields)) = event.contexts.get(FIELDS_CONTEXT) else {
        return event;
    };
    let text = |name: &str| match fields.get(name) {
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    let tags: Vec<(&str, String)> = TAGGED_FIELDS
        .iter()
        .filter_map(|(field, tag)| text(field).map(|value| (*tag, value)))
        .collect();
    let error = text(ERROR_FIELD);
    let is_failed_publish = ["eventID", "eventFeature", "eventAction"]
        .iter()
        .all(|field| fields.contains_key(*field));
    for (tag, value) in tags {
        event.tags.insert(tag.to_string(), value);
    }
    if is_failed_publish && let Some(error) = error {
        event.fingerprint = Cow::Owned(vec![
            Cow::Borrowed("failed to publish event"),
            Cow::Owned(error),
        ]);
    }
    event
}

/// The length of a reporting interval.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// At most this many events of one kind (fingerprint, else message) are sent per interval.
pub const REPORTS_PER_KIND: u32 = 5;

/// At most this many events are sent per interval in all.
pub const REPORTS_PER_INTERVAL: u32 = 50;

/// At most this many kinds are remembered (with their counts of suppressed events).
const REMEMBERED_KINDS: usize = 4 * REPORTS_PER_INTERVAL as usize;

/// The extra field of a sent event counting the events of its kind suppressed before it.
pub const SUPPRESSED_FIELD: &str = "reports_suppressed";

/// Limits Sentry events per [`REPORT_INTERVAL`]: [`REPORTS_PER_KIND`] of one kind,
/// [`REPORTS_PER_INTERVAL`] in all; panics always pass. A suppressed event is counted, and the
/// next event of its kind that is sent says how many were suppressed ([`SUPPRESSED_FIELD`]).
#[derive(Debug, Default)]
pub struct ReportLimiter {
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    started: Option<Instant>,
    sent: u32,
    kinds: HashMap<String, KindCount>,
    /// Events suppressed whose kind is not remembered.
    suppressed_unknown: u64,
}

#[derive(Debug, Default)]
struct KindCount {
    sent: u32,
    suppressed: u64,
}

impl ReportLimiter {
    /// `Some(event)` if it may be sent at `now`, carrying the count of its kind's suppressed
    /// predecessors; `None` if it is suppressed.
    pub fn admit(&self, mut event: Event<'static>, now: Instant) -> Option<Event<'static>> {
        if event.level == sentry::Level::Fatal {
            return Some(event);
        }
        let kind = report_kind(&event);
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if window
            .started
            .is_none_or(|started| now.duration_since(started) >= REPORT_INTERVAL)
        {
            window.start(now);
        }
        let has_room = window.sent < REPORTS_PER_INTERVAL;
        let remembered = window.kinds.len() < REMEMBERED_KINDS;
        let Window {
            sent,
            kinds,
            suppressed_unknown,
            ..
        } = &mut *window;
        match kinds.get_mut(&kind) {
            Some(count) if has_room && count.sent < REPORTS_PER_KIND => {
                count.sent += 1;
                *sent += 1;
                if count.suppressed > 0 {
                    event.extra.insert(
                        SUPPRESSED_FIELD.into(),
                        Value::from(std::mem::take(&mut count.suppressed)),
                    );
                }
                Some(event)
            }
            Some(count) => {
                count.suppressed += 1;
                None
            }
            None if remembered => {
                kinds.insert(
                    kind,
                    KindCount {
                        sent: u32::from(has_room),
                        suppressed: u64::from(!has_room),
                    },
                );
                if !has_room {
                    return None;
                }
                *sent += 1;
                if *suppressed_unknown > 0 {
                    event.extra.insert(
                        format!("{SUPPRESSED_FIELD}_of_other_kinds"),
                        Value::from(std::mem::take(suppressed_unknown)),
                    );
                }
                Some(event)
            }
            None => {
                *suppressed_unknown += 1;
                None
            }
        }
    }
}

impl Window {
    /// Starts a new interval, remembering only the kinds with suppressed events to report.
    fn start(&mut self, now: Instant) {
        self.started = Some(now);
        self.sent = 0;
        self.kinds.retain(|_, count| count.suppressed > 0);
        for count in self.kinds.values_mut() {
            count.sent = 0;
        }
    }
}

/// What makes two events the same kind: their fingerprint when one is set, else their message.
fn report_kind(event: &Event<'_>) -> String {
    let fingerprint: Vec<&str> = event.fingerprint.iter().map(AsRef::as_ref).collect();
    if fingerprint != ["{{ default }}"] {
        return fingerprint.join("\u{1f}");
    }
    event
        .message
        .clone()
        .or_else(|| event.exception.first().and_then(|e| e.value.clone()))
        .unwrap_or_default()
}

/// A started Sentry client; [`ErrorReporting::close`] sends what is queued.
pub struct ErrorReporting {
    guard: sentry::ClientInitGuard,
    environment: String,
    host: String,
    project: String,
}

impl ErrorReporting {
    /// Starts the Sentry client (with its panic handler) when `dsn` is set and not empty. Call
    /// before the runtime's worker threads report anything, so they inherit the client.
    pub fn init(dsn: Option<&str>, environment: &str) -> anyhow::Result<Option<ErrorReporting>> {
        let Some(dsn) = dsn.map(str::trim).filter(|dsn| !dsn.is_empty()) else {
            return Ok(None);
        };
        // The parse error does not repeat the DSN, whose key is a credential.
        let dsn: Dsn = dsn.parse().context("SENTRY_DSN: not a valid Sentry DSN")?;
        let host = dsn.host().to_string();
        let project = dsn.project_id().to_string();
        let guard = sentry::init(client_options(dsn, environment));
        Ok(Some(ErrorReporting {
            guard,
            environment: environment.to_string(),
            host,
            project,
        }))
    }

    /// Logs that reports go to Sentry, naming the host and project but not the key.
    pub fn log_started(&self) {
        tracing::info!(
            sentryHost = %self.host,
            sentryProject = %self.project,
            environment = %self.environment,
            release = %release(),
            "errors are reported to Sentry"
        );
    }

    /// Sends the queued reports (waiting up to [`CLOSE_TIMEOUT`]) and stops the client.
    pub fn close(self) {
        if !self.guard.close(Some(CLOSE_TIMEOUT)) {
            tracing::warn!(timeout = ?CLOSE_TIMEOUT, "some Sentry reports were not sent before exit");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sentry::test::{TestTransport, with_captured_events_options};
    use sentry::{Hub, Level as SentryLevel};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    fn test_options() -> sentry::ClientOptions {
        let dsn = "http://public@sentry.invalid/42".parse().expect("a DSN");
        client_options(dsn, "test-env")
    }

    /// Runs `log` with [`layer`] as the subscriber and a test Sentry client; the captured events.
    fn captured(log: impl FnOnce()) -> Vec<Event<'static>> {
        let subscriber = tracing_subscriber::registry().with(layer());
        with_captured_events_options(
            || tracing::subscriber::with_default(subscriber, log),
            test_options(),
        )
    }

    #[test]
    fn error_lines_with_an_error_field_are_events_and_the_rest_breadcrumbs() {
        let events = captured(|| {
            tracing::info!(error = "ignored", "an info line");
            tracing::warn!(reason = "context canceled", "a warning");
            tracing::error!(failures = 1, "an error without an error field");
            tracing::error!(error = "boom", "an error with one");
        });
        assert_eq!(events.len(), 1, "{events:#?}");
        let event = &events[0];
        assert_eq!(event.level, SentryLevel::Error);
        assert_eq!(event.message.as_deref(), Some("an error with one"));
        assert_eq!(event.environment.as_deref(), Some("test-env"));
        assert_eq!(event.release.as_deref(), Some(release().as_str()));
        let breadcrumbs: Vec<_> = event
            .breadcrumbs
            .iter()
            .map(|b| b.message.as_deref().unwrap_or_default())
            .collect();
        assert_eq!(
            breadcrumbs,
            ["a warning", "an error without an error field"]
        );
    }

    #[test]
    fn a_failed_publish_is_tagged_with_the_event_and_grouped_by_its_error() {
        let events = captured(|| {
            tracing::error!(
                source = "licensed_instance",
                eventID = "id-1",
                eventFeature = "cody.chat",
                eventAction = "submitted",
                retryable = true,
                error = "backendError",
                "failed to publish event: feature:\"cody.chat\" action:\"submitted\" id:\"id-1\""
            );
        });
        assert_eq!(events.len(), 1);
        let event = &events[0];
        let tag = |name: &str| event.tags.get(name).map(String::as_str);
        assert_eq!(tag("source"), Some("licensed_instance"));
        assert_eq!(tag("event.feature"), Some("cody.chat"));
        assert_eq!(tag("event.action"), Some("submitted"));
        assert_eq!(tag("event.id"), Some("id-1"));
        assert_eq!(
            event.message.as_deref(),
            Some("failed to publish event: feature:\"cody.chat\" action:\"submitted\" id:\"id-1\"")
        );
        let fingerprint: Vec<&str> = event.fingerprint.iter().map(AsRef::as_ref).collect();
        assert_eq!(fingerprint, ["failed to publish event", "backendError"]);
    }

    #[test]
    fn reports_are_limited_per_kind_and_per_interval() {
        let events = captured(|| {
            for i in 0..1000 {
                tracing::error!(
                    error = "backendError",
                    eventID = i,
                    eventFeature = "f",
                    eventAction = "a",
                    "failed to publish event: {i}"
                );
            }
            for i in 0..1000 {
                tracing::error!(error = "sink down", "kind {i}");
            }
        });
        let publish_failures = events
            .iter()
            .filter(|e| {
                e.message
                    .as_deref()
                    .is_some_and(|m| m.starts_with("failed to publish"))
            })
            .count();
        assert_eq!(publish_failures, REPORTS_PER_KIND as usize);
        assert_eq!(events.len(), REPORTS_PER_INTERVAL as usize);
    }

    #[test]
    fn the_next_interval_reports_how_many_were_suppressed() {
        let limiter = ReportLimiter::default();
        let event = || Event {
            message: Some("sink down".into()),
            ..Event::default()
        };
        let start = Instant::now();
        let sent = (0..100)
            .filter(|_| limiter.admit(event(), start).is_some())
            .count();
        assert_eq!(sent, REPORTS_PER_KIND as usize);
        let next = limiter
            .admit(event(), start + REPORT_INTERVAL)
            .expect("a new interval has room");
        assert_eq!(
            next.extra.get(SUPPRESSED_FIELD),
            Some(&Value::from(100 - u64::from(REPORTS_PER_KIND)))
        );
        let panic = Event {
            level: SentryLevel::Fatal,
            ..event()
        };
        assert!((0..100).all(|_| limiter.admit(panic.clone(), start).is_some()));
    }

    #[test]
    fn a_cancelled_publish_is_not_an_event() {
        let events = captured(|| {
            tracing::warn!(
                source = "licensed_instance",
                result = "complete_failure",
                failed = 1,
                reason = "context canceled: the sender went away",
                "all events in batch failed to submit"
            );
        });
        assert!(events.is_empty(), "{events:#?}");
    }

    #[test]
    fn a_panic_in_a_tokio_worker_task_is_reported() {
        // Worker threads take the client from the main hub when they start, as in the binary.
        let transport = TestTransport::new();
        let mut options = test_options();
        options.transport = Some(Arc::new(transport.clone()));
        let client = Arc::new(sentry::Client::from(sentry::apply_defaults(options)));
        Hub::main().bind_client(Some(client));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("a runtime");
        let task = runtime.spawn(async {
            panic!("a task panicked");
        });
        let joined = runtime.block_on(task);
        Hub::main().bind_client(None);
        assert!(joined.is_err_and(|err| err.is_panic()));
        // Only this test's panic: a panicking test elsewhere in this binary may report too.
        let events: Vec<_> = transport
            .fetch_and_clear_events()
            .into_iter()
            .filter(|event| {
                event
                    .exception
                    .iter()
                    .any(|e| e.value.as_deref() == Some("a task panicked"))
            })
            .collect();
        assert_eq!(events.len(), 1, "{events:#?}");
        let exception = &events[0].exception[0];
        assert_eq!(exception.ty, "panic");
        assert_eq!(events[0].level, SentryLevel::Fatal);
        assert_eq!(events[0].environment.as_deref(), Some("test-env"));
    }
}
