//! `telemetry-gateway send`: sends events read as proto3 JSON lines to a gateway with the
//! protocol crate's exporter, and reports exactly which were recorded. An operator's tool for
//! "missing events": it shows whether a gateway takes these events from this sender.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use prost_reflect::{DynamicMessage, ReflectMessage};
use telemetry_gateway_proto::client::{
    ClientError, ExportProgress, ExportReport, Exporter, Sender,
};
use telemetry_gateway_proto::v1::Event;
use telemetry_gateway_proto::{new_event_id, validate_event};

/// Send events (one proto3 JSON `telemetrygateway.v1.Event` per line) to a gateway and report
/// which were recorded; exits 1 if any was not, 2 if the command line or input is wrong.
#[derive(Clone, Args)]
pub struct SendArgs {
    /// NDJSON file of events, or `-` for stdin. Events without an `id` get a UUID v7, without a
    /// `timestamp` the current time.
    #[arg(value_name = "FILE")]
    pub input: PathBuf,

    /// The gateway, `https://host[:port]` (`http://` needs `--plaintext`).
    #[arg(long, env = "TELEMETRY_GATEWAY_SEND_ENDPOINT")]
    pub endpoint: String,

    /// Allow a plaintext `http://` endpoint (local gateways only).
    #[arg(long)]
    pub plaintext: bool,

    /// Send as a licensed instance with this license key.
    #[arg(
        long,
        env = "TELEMETRY_GATEWAY_SEND_LICENSE_KEY",
        hide_env_values = true
    )]
    pub license_key: Option<String>,

    /// The instance's ID (site ID); alone, it sends as an unlicensed instance.
    #[arg(long)]
    pub instance_id: Option<String>,

    /// The instance's external URL.
    #[arg(long)]
    pub external_url: Option<String>,

    /// Send as this managed service (needs `--token`).
    #[arg(long)]
    pub service_id: Option<String>,

    /// The managed service's environment, for example `prod`.
    #[arg(long)]
    pub service_environment: Option<String>,

    /// The managed service's SAMS access token.
    #[arg(long, env = "TELEMETRY_GATEWAY_SEND_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Managed services: one unary `RecordEvent` call per event instead of one stream.
    #[arg(long)]
    pub unary: bool,

    /// Request ID for the gateway's logs (default: a random UUID).
    #[arg(long)]
    pub request_id: Option<String>,

    /// Seconds allowed for the whole send.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
}

impl std::fmt::Debug for SendArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |secret: &Option<String>| secret.as_ref().map(|_| "<redacted>");
        f.debug_struct("SendArgs")
            .field("input", &self.input)
            .field("endpoint", &self.endpoint)
            .field("plaintext", &self.plaintext)
            .field("license_key", &redacted(&self.license_key))
            .field("instance_id", &self.instance_id)
            .field("external_url", &self.external_url)
            .field("service_id", &self.service_id)
            .field("service_environment", &self.service_environment)
            .field("token", &redacted(&self.token))
            .field("unary", &self.unary)
            .field("request_id", &self.request_id)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why nothing was sent: the command line or the input is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The input could not be read.
    #[error("reading {input}: {source}")]
    Read {
        /// The input, as given.
        input: String,
        /// The I/O error.
        source: io::Error,
    },
    /// A line is not a valid event.
    #[error("{input}, line {line}: {message}")]
    Parse {
        /// The input, as given.
        input: String,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The input holds no events.
    #[error("{0}: no events to send")]
    Empty(String),
    /// The sender flags do not name exactly one kind of sender.
    #[error("{0}")]
    Sender(&'static str),
    /// An `http://` endpoint without `--plaintext`.
    #[error("{0}: add --plaintext to send to a plaintext http:// gateway (local gateways only)")]
    InsecureTarget(ClientError),
    /// The exporter refused the settings.
    #[error(transparent)]
    Client(ClientError),
}

/// One event read from the input, with its line number and what was filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct InputEvent {
    /// The 1-based line number.
    pub line: usize,
    /// The event, with ID and timestamp filled in when missing.
    pub event: Event,
}

/// What happened to every event read.
#[derive(Debug, Default)]
pub struct SendSummary {
    /// Events read from the input.
    pub read: usize,
    /// Payloads sent (stream) or calls made (unary).
    pub calls: usize,
    /// Responses received from the gateway (stream) or calls answered (unary).
    pub responses: usize,
    /// The stream ended because the gateway could not be reached.
    pub connection_failed: bool,
    /// The request ID of the stream, if one was opened.
    pub request_id: Option<String>,
    /// IDs the gateway acknowledged.
    pub recorded: Vec<String>,
    /// IDs the gateway did not acknowledge, each with the error that came with it, if any.
    pub not_recorded: Vec<(String, Option<String>)>,
    /// The error that ended the stream early, if any.
    pub error: Option<String>,
}

/// Runs the command and maps the outcome to the exit code (0 all recorded, 1 some not, 2 usage).
pub fn run(args: SendArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("telemetry-gateway send: starting the runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(send(&args)) {
        Ok(summary) => {
            print!("{}", render_summary(&args.endpoint, &summary));
            if let Some(error) = &summary.error {
                eprintln!("telemetry-gateway send: {error}");
            }
            if summary.not_recorded.is_empty() && summary.error.is_none() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("telemetry-gateway send: {err}");
            ExitCode::from(2)
        }
    }
}

/// Reads the input, sends it, and summarises what the gateway acknowledged.
pub async fn send(args: &SendArgs) -> Result<SendSummary, SendError> {
    let sender = sender(args)?;
    let events = read_input(&args.input)?;
    if events.is_empty() {
        return Err(SendError::Empty(input_name(&args.input)));
    }
    for input in &events {
        if let Err(reason) = validate_event(&input.event) {
            eprintln!(
                "warning: line {}: the gateway will refuse or drop event {:?}: {reason}",
                input.line, input.event.id
            );
        }
    }
    let timeout = Duration::from_secs(args.timeout);
    let mut builder = Exporter::builder(&args.endpoint)
        .sender(sender)
        .allow_plaintext(args.plaintext)
        .request_timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)));
    if let Some(request_id) = &args.request_id {
        builder = builder.request_id(request_id);
    }
    let exporter = builder.build().map_err(|err| match err {
        ClientError::InsecureTarget(_) => SendError::InsecureTarget(err),
        err => SendError::Client(err),
    })?;
    let events: Vec<Event> = events.into_iter().map(|input| input.event).collect();
    let read = events.len();
    if args.unary {
        return Ok(send_unary(&exporter, events).await);
    }
    let report = if io::stderr().is_terminal() {
        let display = ProgressDisplay::default();
        let report = exporter
            .export_with_progress(events, &|progress| display.show(progress))
            .await;
        display.finish();
        report
    } else {
        exporter.export(events).await
    };
    Ok(summary_of(read, report))
}

/// The sender the flags describe: a service ID makes a managed service, a license key a licensed
/// instance, an instance ID alone an unlicensed instance.
fn sender(args: &SendArgs) -> Result<Sender, SendError> {
    let instance_flags =
        args.license_key.is_some() || args.instance_id.is_some() || args.external_url.is_some();
    if let Some(service_id) = &args.service_id {
        if instance_flags {
            return Err(SendError::Sender(
                "--service-id cannot be combined with --license-key, --instance-id or --external-url",
            ));
        }
        let Some(token) = &args.token else {
            return Err(SendError::Sender(
                "--service-id needs --token (or TELEMETRY_GATEWAY_SEND_TOKEN)",
            ));
        };
        return Ok(Sender::ManagedService {
            service_id: service_id.clone(),
            environment: args.service_environment.clone(),
            token: token.clone(),
        });
    }
    if args.token.is_some() || args.service_environment.is_some() || args.unary {
        return Err(SendError::Sender(
            "--token, --service-environment and --unary are for managed services (--service-id)",
        ));
    }
    let instance_id = args.instance_id.clone().unwrap_or_default();
    let external_url = args.external_url.clone().unwrap_or_default();
    match &args.license_key {
        Some(license_key) => Ok(Sender::LicensedInstance {
            license_key: license_key.clone(),
            instance_id,
            external_url,
        }),
        None if args.instance_id.is_some() => Ok(Sender::UnlicensedInstance {
            instance_id,
            external_url,
        }),
        None => Err(SendError::Sender(
            "say who is sending: --license-key, --instance-id, or --service-id with --token",
        )),
    }
}

fn input_name(input: &Path) -> String {
    if input == Path::new("-") {
        "stdin".to_string()
    } else {
        input.display().to_string()
    }
}

/// Reads events from the file, or stdin for `-`.
fn read_input(input: &Path) -> Result<Vec<InputEvent>, SendError> {
    let name = input_name(input);
    let read_error = |source| SendError::Read {
        input: name.clone(),
        source,
    };
    let reader: Box<dyn Read> = if input == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(input).map_err(read_error)?)
    };
    parse_events(BufReader::new(reader), SystemTime::now()).map_err(|err| match err {
        ParseError::Io(source) => read_error(source),
        ParseError::Line { line, message } => SendError::Parse {
            input: name.clone(),
            line,
            message,
        },
    })
}

/// Why [`parse_events`] stopped.
#[derive(Debug)]
pub enum ParseError {
    /// Reading failed.
    Io(io::Error),
    /// A line is not an event.
    Line {
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

/// Parses one proto3 JSON event per non-blank line; missing IDs become UUID v7s and missing
/// timestamps `now`.
pub fn parse_events(reader: impl BufRead, now: SystemTime) -> Result<Vec<InputEvent>, ParseError> {
    let descriptor = Event::default().descriptor();
    let mut events = Vec::new();
    for (index, line) in reader.split(b'\n').enumerate() {
        let line_number = index + 1;
        let bytes = line.map_err(ParseError::Io)?;
        let at_line = |message: String| ParseError::Line {
            line: line_number,
            message,
        };
        let text =
            std::str::from_utf8(&bytes).map_err(|err| at_line(format!("not UTF-8: {err}")))?;
        if text.trim().is_empty() {
            continue;
        }
        let mut json = serde_json::Deserializer::from_str(text);
        let message = DynamicMessage::deserialize(descriptor.clone(), &mut json)
            .and_then(|message| json.end().map(|()| message))
            .map_err(|err| at_line(json_error(&err)))?;
        let mut event: Event = message
            .transcode_to()
            .map_err(|err| at_line(format!("not an event: {err}")))?;
        if event.id.is_empty() {
            event.id = new_event_id();
        }
        if event.timestamp.is_none() {
            event.timestamp = Some(now.into());
        }
        events.push(InputEvent {
            line: line_number,
            event,
        });
    }
    Ok(events)
}

/// serde_json's message with its position made relative to the line ("column 12").
fn json_error(err: &serde_json::Error) -> String {
    let message = err.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(message, _)| message);
    format!("invalid event JSON at column {}: {message}", err.column())
}

async fn send_unary(exporter: &Exporter, events: Vec<Event>) -> SendSummary {
    let mut summary = SendSummary {
        read: events.len(),
        ..SendSummary::default()
    };
    for event in events {
        let id = event.id.clone();
        summary.calls += 1;
        match exporter.record_event(event).await {
            Ok(()) => {
                summary.responses += 1;
                summary.recorded.push(id);
            }
            Err(err) => summary.not_recorded.push((id, Some(err.to_string()))),
        }
    }
    summary
}

/// A one-line progress display on stderr (only when stderr is a terminal), redrawn at most every
/// 100 ms.
#[derive(Default)]
struct ProgressDisplay {
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl ProgressDisplay {
    fn show(&self, progress: ExportProgress) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        let now = std::time::Instant::now();
        let done = progress.acknowledged >= progress.total;
        if last.is_some_and(|at| now.duration_since(at) < Duration::from_millis(100)) && !done {
            return;
        }
        *last = Some(now);
        let mut stderr = io::stderr().lock();
        let _ = write!(stderr, "\r\x1b[2K{}", progress_line(progress));
        let _ = stderr.flush();
    }

    fn finish(&self) {
        if self.last.lock().is_ok_and(|last| last.is_some()) {
            eprintln!();
        }
    }
}

/// The progress display's text.
pub fn progress_line(progress: ExportProgress) -> String {
    let percent = (progress.acknowledged * 100)
        .checked_div(progress.total)
        .unwrap_or(100);
    format!(
        "{}/{} event(s) acknowledged ({percent}%), {} payload(s) sent, {} answered",
        progress.acknowledged, progress.total, progress.payloads, progress.responses
    )
}

/// Whether `err` says the gateway could not be reached (rather than that it refused the call).
fn is_connection_failure(err: &ClientError) -> bool {
    match err {
        ClientError::Connect(_) => true,
        // tonic reports a failed connection as `Unavailable` with the transport error as source.
        ClientError::Status(status) => {
            status.code() == tonic::Code::Unavailable && std::error::Error::source(status).is_some()
        }
        _ => false,
    }
}

fn summary_of(read: usize, report: ExportReport) -> SendSummary {
    let connection_failed = report.error.as_ref().is_some_and(is_connection_failure);
    let error = report
        .error
        .map(|err| format!("request {:?}: {err}", report.request_id));
    SendSummary {
        read,
        calls: report.payloads,
        responses: report.responses,
        connection_failed,
        request_id: Some(report.request_id),
        recorded: report.recorded,
        not_recorded: report
            .not_recorded
            .into_iter()
            .map(|id| (id, None))
            .collect(),
        error,
    }
}

/// The report printed to stdout.
pub fn render_summary(endpoint: &str, summary: &SendSummary) -> String {
    let mut out = String::new();
    if let (Some(request_id), Some(error)) = (&summary.request_id, &summary.error)
        && summary.connection_failed
        && summary.responses == 0
        && summary.recorded.is_empty()
    {
        // Nothing reached the gateway: not "sent N event(s) in 0 payload(s)".
        let _ = writeln!(
            out,
            "could not send {} event(s) to {endpoint}: the connection failed (request ID {request_id})",
            summary.read
        );
        let _ = writeln!(out, "recorded: 0");
        let _ = writeln!(out, "not recorded: {}", summary.not_recorded.len());
        let _ = writeln!(out, "error: {error}");
        return out;
    }
    let calls = match &summary.request_id {
        Some(request_id) => format!("{} payload(s), request ID {request_id}", summary.calls),
        None => format!("{} RecordEvent call(s)", summary.calls),
    };
    let _ = writeln!(
        out,
        "sent {} event(s) to {endpoint} in {calls}",
        summary.read
    );
    let _ = writeln!(out, "recorded: {}", summary.recorded.len());
    let _ = writeln!(out, "not recorded: {}", summary.not_recorded.len());
    for (id, error) in &summary.not_recorded {
        match error {
            Some(error) => {
                let _ = writeln!(out, "  {id}: {error}");
            }
            None => {
                let _ = writeln!(out, "  {id}");
            }
        }
    }
    if let Some(error) = &summary.error {
        let _ = writeln!(out, "error: {error}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<InputEvent>, ParseError> {
        parse_events(text.as_bytes(), SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn each_line_is_one_event_and_blank_lines_are_skipped() {
        let events = parse(concat!(
            r#"{"id":"a","timestamp":"2024-01-02T03:04:05Z","feature":"cody.chat","action":"submitted","parameters":{"metadata":{"latency":12},"privateMetadata":{"model":"x"}}}"#,
            "\n\n",
            r#"{"id":"b","feature":"search","action":"executed","featureFlags":{"flags":{"f":"true"}}}"#,
            "\n",
        ))
        .expect("parses");
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].line, events[1].line), (1, 3));
        assert_eq!(events[0].event.feature, "cody.chat");
        assert_eq!(
            events[0].event.timestamp.map(|t| t.seconds),
            Some(1_704_164_645)
        );
        let parameters = events[0].event.parameters.as_ref().expect("parameters");
        assert_eq!(parameters.metadata.get("latency"), Some(&12.0));
        assert!(parameters.private_metadata.is_some());
        // Missing timestamps are filled in.
        assert_eq!(events[1].event.timestamp.map(|t| t.seconds), Some(0));
    }

    #[test]
    fn events_without_an_id_get_a_uuid_v7() {
        let events = parse(r#"{"feature":"cody","action":"chat"}"#).expect("parses");
        let id = uuid::Uuid::parse_str(&events[0].event.id).expect("a UUID");
        assert_eq!(id.get_version_num(), 7);
    }

    #[test]
    fn a_bad_line_is_named_by_its_number() {
        let err = parse(
            "{\"id\":\"a\",\"feature\":\"x\",\"action\":\"y\"}\n{\"id\": \"b\", \"feture\": 1}\n",
        )
        .expect_err("an unknown field");
        match err {
            ParseError::Line { line, message } => {
                assert_eq!(line, 2);
                assert!(message.contains("feture"), "{message}");
            }
            ParseError::Io(err) => panic!("unexpected {err}"),
        }
        let err = parse("{\"id\":\"a\"} trailing").expect_err("trailing characters");
        assert!(matches!(err, ParseError::Line { line: 1, .. }), "{err:?}");
        let err = parse("not json").expect_err("not JSON");
        assert!(matches!(err, ParseError::Line { line: 1, .. }), "{err:?}");
    }

    fn args(extra: &[&str]) -> SendArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: SendArgs,
        }
        let mut argv = vec!["send", "--endpoint", "https://gateway.example.com", "-"];
        argv.extend_from_slice(extra);
        Wrapper::parse_from(argv).args
    }

    #[test]
    fn the_flags_pick_exactly_one_sender() {
        assert!(matches!(
            sender(&args(&["--license-key", "k", "--instance-id", "i"])),
            Ok(Sender::LicensedInstance { .. })
        ));
        assert!(matches!(
            sender(&args(&["--instance-id", "i"])),
            Ok(Sender::UnlicensedInstance { .. })
        ));
        assert!(matches!(
            sender(&args(&["--service-id", "s", "--token", "t"])),
            Ok(Sender::ManagedService { .. })
        ));
        for refused in [
            &[][..],
            &["--service-id", "s"][..],
            &["--service-id", "s", "--token", "t", "--instance-id", "i"][..],
            &["--instance-id", "i", "--token", "t"][..],
        ] {
            assert!(sender(&args(refused)).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn the_summary_lists_every_event_not_recorded() {
        let summary = SendSummary {
            read: 3,
            calls: 1,
            responses: 1,
            connection_failed: false,
            request_id: Some("req".into()),
            recorded: vec!["a".into()],
            not_recorded: vec![("b".into(), None), ("c".into(), None)],
            error: Some("request \"req\": Unavailable: gone".into()),
        };
        assert_eq!(
            render_summary("http://127.0.0.1:1", &summary),
            "sent 3 event(s) to http://127.0.0.1:1 in 1 payload(s), request ID req\n\
             recorded: 1\n\
             not recorded: 2\n  b\n  c\n\
             error: request \"req\": Unavailable: gone\n"
        );
    }

    #[test]
    fn when_nothing_reached_the_gateway_the_summary_says_the_connection_failed() {
        let summary = SendSummary {
            read: 2,
            calls: 1,
            responses: 0,
            connection_failed: true,
            request_id: Some("req".into()),
            recorded: vec![],
            not_recorded: vec![("a".into(), None), ("b".into(), None)],
            error: Some("request \"req\": Unavailable: connection refused".into()),
        };
        assert_eq!(
            render_summary("http://127.0.0.1:1", &summary),
            "could not send 2 event(s) to http://127.0.0.1:1: the connection failed (request ID req)\n\
             recorded: 0\n\
             not recorded: 2\n\
             error: request \"req\": Unavailable: connection refused\n"
        );
    }

    #[test]
    fn the_progress_line_counts_acknowledged_events() {
        let progress = ExportProgress {
            total: 2000,
            acknowledged: 500,
            payloads: 3,
            responses: 1,
        };
        assert_eq!(
            progress_line(progress),
            "500/2000 event(s) acknowledged (25%), 3 payload(s) sent, 1 answered"
        );
    }
}
