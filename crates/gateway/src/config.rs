//! The gateway's settings: every one an environment variable and a flag, documented here once
//! (the doc comments are the `--help` text and `docs/configuration.md`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use telemetry_gateway_server::dead_letter::{
    DEFAULT_MAX_RECORD_BYTES, DEFAULT_QUEUE_BYTES, MIN_RECORD_BYTES,
};
use telemetry_gateway_server::{ConnectionLimits, Limits, RateLimit, Secret};
use telemetry_gateway_sink::{FileSinkConfig, PubSubSinkConfig};

use crate::sinks::pubsub;
pub use crate::sinks::{SinkKind, SinkSettingsAll};

mod environment;

pub use environment::{EffectiveSetting, Origin, ParsedCli, unknown_variables};

/// Telemetry Gateway: receives telemetry events from Sourcegraph instances and managed services
/// and forwards them to the configured sinks, acknowledging exactly the events handed off.
#[derive(Debug, Parser)]
#[command(name = "telemetry-gateway", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub config: Config,
}

/// What to do; without a subcommand the gateway serves.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default); settings may also follow the subcommand.
    Serve,
    /// Check the configuration without starting: print the effective settings (secrets
    /// redacted) and every problem found; exit 0 when the gateway would start, 2 when not.
    CheckConfig,
    /// Send events read as proto3 JSON lines to a gateway and report which were recorded.
    Send(Box<crate::send::SendArgs>),
    /// Deliver file-sink NDJSON (and dead letters valid under the current rules) to the
    /// configured Pub/Sub topic and/or BigQuery table, resumably.
    Replay(Box<crate::replay::ReplayArgs>),
    /// Print the configuration reference (docs/configuration.md) and exit.
    #[command(hide = true)]
    ConfigDocs,
    /// Print a shell completion script (`bash`, `zsh`, `fish`, `elvish`, `powershell`), e.g.
    /// `telemetry-gateway completions bash > /etc/bash_completion.d/telemetry-gateway`.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `telemetry-gateway man | man -l -`.
    Man,
}

/// Every setting of the gateway.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,
    #[command(flatten)]
    pub logging: LoggingConfig,
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
    #[command(flatten)]
    pub events: EventsConfig,
    #[command(flatten)]
    pub license: LicenseConfig,
    #[command(flatten)]
    pub sams: SamsConfig,
    #[command(flatten)]
    pub rate_limit: RateLimitConfig,
    #[command(flatten)]
    pub limits: LimitsConfig,
    #[command(flatten)]
    pub dead_letters: DeadLetterConfig,

    /// Print "Sanity check passed, exiting without error" and exit 0 (a container smoke test).
    #[arg(long, env = "SANITY_CHECK", value_parser = BoolishValueParser::new(), default_value = "false", action = clap::ArgAction::Set, help_heading = "Server")]
    pub sanity_check: bool,
}

impl Config {
    /// The limits on connections, from the server's settings and the stream lifetime.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.server.max_connections,
            max_connections_per_address: self.server.max_connections_per_address,
            opening_timeout: self.server.connection_opening_timeout,
            max_age: self.server.max_connection_age,
            max_age_grace: self
                .server
                .max_connection_age_grace
                .unwrap_or_else(|| ConnectionLimits::grace_for(self.limits.stream_lifetime.into())),
            window_bytes: self.server.connection_window_bytes,
        }
    }
}

/// Where and how the gateway listens.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Server")]
pub struct ServerConfig {
    /// Port for gRPC and the HTTP diagnostics (`/-/version`, `/-/healthz`); 0 picks a free port.
    #[arg(long, env = "PORT", default_value_t = 10085)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, env = "TELEMETRY_GATEWAY_LISTEN_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub listen_address: IpAddr,

    /// Port of its own for `GET /metrics` (Prometheus), so the public port need not expose it;
    /// then `/metrics` is served only there, even when `MSP` is true. Unset: `/metrics` is on
    /// `PORT` unless `MSP` is true.
    #[arg(long, env = "TELEMETRY_GATEWAY_METRICS_PORT")]
    pub metrics_port: Option<u16>,

    /// Bearer secret required by `/-/healthz`; unset means no authentication (logged as a warning).
    #[arg(long, env = "DIAGNOSTICS_SECRET", hide_env_values = true)]
    pub diagnostics_secret: Option<Secret>,

    /// Largest gRPC message accepted, in bytes; larger messages get `ResourceExhausted`.
    #[arg(long, env = "TELEMETRY_GATEWAY_GRPC_MAX_RECEIVE_MESSAGE_BYTES", default_value_t = telemetry_gateway_server::DEFAULT_MAX_RECEIVE_MESSAGE_BYTES)]
    pub max_receive_message_bytes: usize,

    /// Running on the Managed Services Platform: `json_gcp` logs by default.
    #[arg(long, env = "MSP", value_parser = BoolishValueParser::new(), default_value = "false", action = clap::ArgAction::Set)]
    pub msp: bool,

    /// How long in-flight payloads and the sink flush may take together after SIGTERM or SIGINT
    /// before the gateway exits anyway (unfinished payloads are not acknowledged; senders retry
    /// them); sending queued traces, metrics and Sentry reports takes up to a few seconds more:
    /// `10s`, `1500ms`, `1m30s`, or plain seconds.
    #[arg(long, env = "TELEMETRY_GATEWAY_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: std::time::Duration,

    /// Name of the deployment environment, for logs and Sentry.
    #[arg(long, env = "ENVIRONMENT_ID", default_value = "unknown")]
    pub environment_id: String,

    /// Memory budget: the most bytes event payloads may take across all streams at once, each
    /// charged what it costs once decoded and rendered (docs/security.md); a quarter of it is for
    /// messages being received, the rest for payloads until they are answered. Above it, new
    /// payloads wait up to `TELEMETRY_GATEWAY_INFLIGHT_WAIT`, then get `ResourceExhausted`. The
    /// default suits a 512 MiB container; `0` turns the budget off (the sender limits still apply).
    #[arg(long, env = "TELEMETRY_GATEWAY_MAX_INFLIGHT_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_inflight_bytes: usize,

    /// Most connections open at once on the gRPC port (`0`: no limit). At the limit the gateway
    /// stops accepting, and new connections wait in the kernel's backlog until one closes. It
    /// must stay below the open-file limit, so that a flood of connections cannot use up the
    /// file descriptors the sinks need: the gateway raises its soft limit to the hard one at
    /// start, and warns when this leaves fewer than 256 for the rest (`ulimit -n`). Each
    /// connection may also hold about 6.5 MiB outside the memory budget (unread bytes, its
    /// streams' headers and state): where senders connect directly, size this to the container
    /// (the bound is logged at start; docs/security.md).
    #[arg(long, env = "TELEMETRY_GATEWAY_MAX_CONNECTIONS", default_value_t = ConnectionLimits::default().max_connections)]
    pub max_connections: usize,

    /// Most connections open at once from one IP address, or one IPv6 /64 (`0`: no limit); one
    /// more is closed as soon as it is accepted, so that one sender cannot take every connection
    /// nor hold more than this many connections' unread bytes (docs/security.md). Behind a
    /// proxy or load balancer every connection comes from its addresses: keep the limit well
    /// above the connections it may open (on Cloud Run an instance serves at most `concurrency`
    /// requests at once; `deploy/` sets 1024).
    #[arg(long, env = "TELEMETRY_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = ConnectionLimits::default().max_connections_per_address)]
    pub max_connections_per_address: usize,

    /// How long a new connection may take to send its first 24 bytes (the HTTP/2 preface) or a
    /// whole HTTP/1 request head before it is closed (`0`: no limit): a connection that sends
    /// nothing is otherwise kept for ever.
    #[arg(long, env = "TELEMETRY_GATEWAY_CONNECTION_OPENING_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub connection_opening_timeout: std::time::Duration,

    /// How long a connection may live before the gateway asks its client to reconnect (HTTP/2
    /// `GOAWAY`: streams in progress finish, within their lifetime; `0`: no limit). Without it an
    /// HTTP/2 connection that opens no stream but answers pings is kept for ever, and a client's
    /// connection stays on one instance however the service scales.
    #[arg(long, env = "TELEMETRY_GATEWAY_MAX_CONNECTION_AGE", default_value = "10m", value_parser = parse_duration)]
    pub max_connection_age: std::time::Duration,

    /// How long after its maximum age a connection is closed whatever it is doing. Unset: the
    /// stream lifetime and a minute, so that the streams in progress at the `GOAWAY` end within
    /// their lifetime and only streams that never end (a gRPC health `Watch`, a reflection stream
    /// never half-closed) are cut.
    #[arg(long, env = "TELEMETRY_GATEWAY_MAX_CONNECTION_AGE_GRACE", value_parser = parse_duration)]
    pub max_connection_age_grace: Option<std::time::Duration>,

    /// How many bytes a sender may send on an HTTP/2 connection, and on each of its streams,
    /// before the gateway has read them (the flow-control windows; 65535 to 2147483647). What
    /// waits unread is outside the memory budget, so this bounds what each connection may hold
    /// there (the bound is logged at start; docs/security.md); a larger window lets a distant
    /// sender send faster.
    #[arg(long, env = "TELEMETRY_GATEWAY_CONNECTION_WINDOW_BYTES", default_value_t = ConnectionLimits::default().window_bytes, value_parser = clap::value_parser!(u32).range(65_535..=2_147_483_647))]
    pub connection_window_bytes: u32,

    /// How long a payload may wait for room in the memory budget before it is refused.
    #[arg(long, env = "TELEMETRY_GATEWAY_INFLIGHT_WAIT", default_value = "2s", value_parser = parse_duration)]
    pub inflight_wait: std::time::Duration,
}

/// Parses the durations operators write (`10s`, `1m30s`, `250ms`, `1h`; humantime's syntax)
/// or plain seconds (`10`, `0.5`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return std::time::Duration::try_from_secs_f64(seconds)
            .map_err(|err| format!("{text:?}: {err}"));
    }
    humantime::parse_duration(text)
        .map_err(|err| format!("{text:?} is not a duration like 10s, 1m30s or 250ms: {err}"))
}

/// [`parse_duration`] for settings whose default is a library's `Duration`, shown as
/// humantime writes it (`2m`, `30s`).
pub fn parse_human_duration(text: &str) -> Result<humantime::Duration, String> {
    parse_duration(text).map(humantime::Duration::from)
}

impl ServerConfig {
    /// The socket address to bind.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen_address, self.port)
    }
}

/// `SRC_LOG_LEVEL`.
pub const LOG_LEVEL: &str = "SRC_LOG_LEVEL";
/// `SRC_LOG_SCOPE_LEVEL`.
pub const LOG_SCOPE_LEVEL: &str = "SRC_LOG_SCOPE_LEVEL";

/// Log output, with the settings of Sourcegraph's log library (docs/operations.md#logs).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging")]
pub struct LoggingConfig {
    /// Minimum log level: `debug`, `info`, `warn`, `error` (also the older `dbug`, `eror`,
    /// `crit`, and `warning`, `trace`); anything else stops the gateway at start-up.
    #[arg(long, env = LOG_LEVEL, default_value = "info")]
    pub log_level: String,

    /// Log format: `json_gcp` (Cloud Logging's fields and trace links; the default when `MSP`
    /// is true), `json` (Sourcegraph's log fields), or `console` (alias `text`; for people,
    /// coloured only when stdout is a terminal and `NO_COLOR` is unset; the default otherwise).
    #[arg(long, env = "SRC_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Levels per scope, `scope=level,...`: a scope is an `InstrumentationScope` of the logs
    /// (or its prefix, such as `telemetry_gateway_sink`), or a library (`h2`, `hyper`, `tower`,
    /// `tonic`), whose debug lines are otherwise left out.
    #[arg(long, env = LOG_SCOPE_LEVEL)]
    pub log_scope_level: Option<String>,

    /// Identical messages (same level and text) logged in full each second before sampling;
    /// `0` turns sampling off.
    #[arg(long, env = "SRC_LOG_SAMPLING_INITIAL", default_value_t = 100)]
    pub log_sampling_initial: u64,

    /// After `SRC_LOG_SAMPLING_INITIAL` in one second, one identical message in this many is
    /// logged.
    #[arg(long, env = "SRC_LOG_SAMPLING_THEREAFTER", default_value_t = 100)]
    pub log_sampling_thereafter: u64,

    /// Google Cloud project, for `json_gcp` lines' trace links
    /// (`projects/<project>/traces/<trace ID>`); unset: the bare trace ID.
    #[arg(long, env = "GOOGLE_CLOUD_PROJECT")]
    pub google_cloud_project: Option<String>,
}

/// Metrics, traces and error reports. The OpenTelemetry exporters also read the standard
/// `OTEL_*` variables (endpoint, headers, protocol, timeouts, resource attributes).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Telemetry")]
pub struct TelemetryConfig {
    /// Turn OpenTelemetry off: no metrics (`/metrics` is not served) and no traces.
    #[arg(long, env = "OTEL_SDK_DISABLED", value_parser = BoolishValueParser::new(), default_value = "false", action = clap::ArgAction::Set)]
    pub otel_sdk_disabled: bool,

    /// OTLP/gRPC endpoint (`http://collector:4317`, or `https://` with the public roots) to export
    /// traces and metrics to; unset: no traces, and metrics only at `/metrics` (when `MSP` is not
    /// true). Metrics are sent every `OTEL_METRIC_EXPORT_INTERVAL` milliseconds (default 60000);
    /// spans in batches every `OTEL_BSP_SCHEDULE_DELAY` milliseconds (default 5000).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,

    /// OTLP/gRPC endpoint for traces only, instead of `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otel_exporter_otlp_traces_endpoint: Option<String>,

    /// OTLP/gRPC endpoint for metrics only, instead of `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")]
    pub otel_exporter_otlp_metrics_endpoint: Option<String>,

    /// Sentry DSN: when set, error-level logs that carry an error (failed publishes with their
    /// event's feature, action and ID; cancellations excluded) and panics are reported to Sentry,
    /// with `ENVIRONMENT_ID` as the environment.
    #[arg(long, env = "SENTRY_DSN", hide_env_values = true)]
    pub sentry_dsn: Option<Secret>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Sourcegraph's JSON with Cloud Logging's `severity`, `message` and trace fields.
    #[value(name = "json_gcp", alias = "json-gcp")]
    JsonGcp,
    /// Sourcegraph's JSON: `Timestamp`, `InstrumentationScope`, `SeverityText`, `Body`,
    /// `Attributes`, `Resource`, `TraceId`, `SpanId`, `Caller`.
    Json,
    /// Human-readable lines.
    #[value(alias = "text", alias = "condensed")]
    Console,
}

/// Where events go.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Events")]
pub struct EventsConfig {
    /// Sinks to deliver events to, comma-separated (`file`, `log`, `discard`, `pubsub`,
    /// `bigquery`); with several, an event is acknowledged only when every sink accepted it.
    /// Default: `pubsub` when
    /// `TELEMETRY_GATEWAY_EVENTS_PUBSUB_ENABLED=true` (or unset with a Pub/Sub project or topic
    /// set), `log` when it is `false` (the original's logging mode), else `file`.
    #[arg(long = "events-sinks", env = SINKS, value_enum, value_delimiter = ',')]
    pub sinks: Vec<SinkKind>,

    /// Each sink's settings (`crate::sinks`).
    #[command(flatten)]
    pub settings: SinkSettingsAll,

    /// Replace the raw license key in published metadata by `sha256:<hex>` of it (opt-in; changes
    /// what downstream consumers receive).
    #[arg(long = "events-fingerprint-license-keys", env = "TELEMETRY_GATEWAY_EVENTS_FINGERPRINT_LICENSE_KEYS", value_parser = BoolishValueParser::new(), default_value = "false", action = clap::ArgAction::Set)]
    pub fingerprint_license_keys: bool,
}

/// Dead letters: every event refused for good (invalid, unrenderable, oversized, refused by a
/// policy, rejected by a sink) also written, with why, to a directory or a Pub/Sub topic. Off by
/// default; best effort (never delays or fails an acknowledgement).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Dead letters")]
pub struct DeadLetterConfig {
    /// Directory to write dead letters to, as NDJSON files (created if missing). Conflicts with
    /// `TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_TOPIC_ID`.
    #[arg(
        long = "events-deadletter-dir",
        env = DEADLETTER_DIR
    )]
    pub deadletter_dir: Option<PathBuf>,

    /// Pub/Sub topic ID to publish dead letters to, one message each (through
    /// `PUBSUB_EMULATOR_HOST` when set).
    #[arg(
        long = "events-deadletter-pubsub-topic-id",
        env = DEADLETTER_PUBSUB_TOPIC_ID
    )]
    pub deadletter_pubsub_topic_id: Option<String>,

    /// Google Cloud project of the dead-letter topic; default:
    /// `TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID`.
    #[arg(
        long = "events-deadletter-pubsub-project-id",
        env = DEADLETTER_PUBSUB_PROJECT_ID
    )]
    pub deadletter_pubsub_project_id: Option<String>,

    /// Largest dead letter, in bytes (at least 65536); a larger one loses its event JSON, then
    /// its metadata, then the tail of its protobuf bytes, and is marked `"truncated":true`.
    #[arg(
        long = "events-deadletter-max-bytes",
        env = DEADLETTER_MAX_BYTES,
        default_value_t = DEFAULT_MAX_RECORD_BYTES
    )]
    pub deadletter_max_bytes: usize,

    /// Most bytes of dead letters waiting to be written; beyond it they are dropped and counted
    /// in `telemetry-gateway.dead_letters.failed`.
    #[arg(
        long = "events-deadletter-queue-bytes",
        env = DEADLETTER_QUEUE_BYTES,
        default_value_t = DEFAULT_QUEUE_BYTES
    )]
    pub deadletter_queue_bytes: usize,
}

/// `TELEMETRY_GATEWAY_EVENTS_SINKS`.
pub const SINKS: &str = "TELEMETRY_GATEWAY_EVENTS_SINKS";
/// `TELEMETRY_GATEWAY_EVENTS_DEADLETTER_DIR`.
pub const DEADLETTER_DIR: &str = "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_DIR";
/// `TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_TOPIC_ID`.
pub const DEADLETTER_PUBSUB_TOPIC_ID: &str = "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_TOPIC_ID";
/// `TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_PROJECT_ID`.
pub const DEADLETTER_PUBSUB_PROJECT_ID: &str =
    "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_PROJECT_ID";
/// `TELEMETRY_GATEWAY_EVENTS_DEADLETTER_MAX_BYTES`.
pub const DEADLETTER_MAX_BYTES: &str = "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_MAX_BYTES";
/// `TELEMETRY_GATEWAY_EVENTS_DEADLETTER_QUEUE_BYTES`.
pub const DEADLETTER_QUEUE_BYTES: &str = "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_QUEUE_BYTES";

/// Where dead letters go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterDestination {
    /// NDJSON files in a directory, rotated as the file sink's.
    Dir(FileSinkConfig),
    /// Messages on this Pub/Sub topic.
    PubSub(PubSubSinkConfig),
}

impl DeadLetterConfig {
    /// The destination, `None` when dead letters are off; `events` supplies the file rotation and
    /// the Pub/Sub defaults (project, emulator, timeout).
    pub fn destination(
        &self,
        events: &EventsConfig,
    ) -> Result<Option<DeadLetterDestination>, ConfigErrors> {
        let dir = self
            .deadletter_dir
            .clone()
            .filter(|dir| !dir.as_os_str().is_empty());
        let topic = non_blank(&self.deadletter_pubsub_topic_id);
        if self.deadletter_max_bytes < MIN_RECORD_BYTES {
            return Err(ConfigError::Invalid {
                setting: DEADLETTER_MAX_BYTES,
                message: format!("must be at least {MIN_RECORD_BYTES}"),
            }
            .into());
        }
        if self.deadletter_queue_bytes < self.deadletter_max_bytes {
            return Err(ConfigError::Invalid {
                setting: DEADLETTER_QUEUE_BYTES,
                message: format!("must be at least {DEADLETTER_MAX_BYTES}"),
            }
            .into());
        }
        let pubsub = &events.settings.pubsub;
        match (dir, topic) {
            (Some(_), Some(_)) => {
                Err(ConfigError::Conflict(DEADLETTER_DIR, DEADLETTER_PUBSUB_TOPIC_ID).into())
            }
            (Some(dir), None) => Ok(Some(DeadLetterDestination::Dir(
                events.settings.file.config(dir)?,
            ))),
            (None, Some(topic)) => {
                let project = non_blank(&self.deadletter_pubsub_project_id)
                    .or_else(|| non_blank(&pubsub.pubsub_project_id))
                    .ok_or(ConfigError::Invalid {
                        setting: DEADLETTER_PUBSUB_PROJECT_ID,
                        message: format!(
                            "required by the dead-letter topic (or set {})",
                            pubsub::PROJECT_ID
                        ),
                    })?;
                Ok(Some(DeadLetterDestination::PubSub(
                    pubsub.for_topic(project, topic),
                )))
            }
            (None, None) => {
                if non_blank(&self.deadletter_pubsub_project_id).is_some() {
                    return Err(ConfigError::Invalid {
                        setting: DEADLETTER_PUBSUB_TOPIC_ID,
                        message: format!("required when {DEADLETTER_PUBSUB_PROJECT_ID} is set"),
                    }
                    .into());
                }
                Ok(None)
            }
        }
    }
}

/// `TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY`.
pub const LICENSE_PUBLIC_KEY: &str = "TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY";
/// `SOURCEGRAPH_LICENSE_GENERATION_KEY`.
pub const LICENSE_GENERATION_KEY: &str = "SOURCEGRAPH_LICENSE_GENERATION_KEY";

/// How license keys are checked.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Licenses")]
pub struct LicenseConfig {
    /// OpenSSH public key (`ssh-rsa AAAA...`) that verifies license keys, replacing the built-in
    /// production key.
    #[arg(long, env = LICENSE_PUBLIC_KEY)]
    pub license_public_key: Option<String>,

    /// PEM private key whose public half verifies license keys (compatibility with the original;
    /// the private half is not used). Conflicts with `TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY`.
    #[arg(
        long,
        env = LICENSE_GENERATION_KEY,
        hide_env_values = true
    )]
    pub license_generation_key: Option<Secret>,

    /// Refuse streams whose license has expired (the original accepts them).
    #[arg(long, env = "TELEMETRY_GATEWAY_LICENSE_REJECT_EXPIRED", value_parser = BoolishValueParser::new(), default_value = "false", action = clap::ArgAction::Set)]
    pub reject_expired_licenses: bool,

    /// For licenses tagged `disable-telemetry-events-export`, forward only `cody` and `cody.*`
    /// events and acknowledge the rest without forwarding them.
    #[arg(long, env = "TELEMETRY_GATEWAY_LICENSE_ENFORCE_EXPORT_TAGS", value_parser = BoolishValueParser::new(), default_value = "false", action = clap::ArgAction::Set)]
    pub enforce_export_tags: bool,
}

/// What one sender may send or hold; the defaults fit every real sender (docs/security.md says
/// why each is what it is). A violation ends the stream with a status naming the setting.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Sender limits")]
pub struct LimitsConfig {
    /// Most events in one payload (`ResourceExhausted` beyond; the instance exporter sends at
    /// most 10,000 per export).
    #[arg(
        long,
        env = "TELEMETRY_GATEWAY_MAX_EVENTS_PER_PAYLOAD",
        default_value_t = Limits::default().max_events_per_payload
    )]
    pub max_events_per_payload: usize,

    /// Most bytes of a stream's first message, the metadata, as sent and, when compressed, once
    /// decompressed (`ResourceExhausted` beyond; real metadata is a few KB, and every event's
    /// published payload repeats it).
    #[arg(long, env = "TELEMETRY_GATEWAY_MAX_METADATA_BYTES", default_value_t = Limits::default().max_metadata_bytes)]
    pub max_metadata_bytes: usize,

    /// Most bytes of a license key, checked before it is parsed (`InvalidArgument` beyond).
    #[arg(long, env = "TELEMETRY_GATEWAY_MAX_LICENSE_KEY_BYTES", default_value_t = Limits::default().max_license_key_bytes)]
    pub max_license_key_bytes: usize,

    /// How long a `RecordEvents` stream may stay open (`DeadlineExceeded` after it, once the
    /// payload in progress is answered), the original's 2 minutes (`docs/compatibility.md` §2).
    #[arg(long, env = "TELEMETRY_GATEWAY_STREAM_LIFETIME", default_value_t = Limits::default().stream_lifetime.into(), value_parser = parse_human_duration)]
    pub stream_lifetime: humantime::Duration,

    /// How long a stream may wait before sending its next message (`DeadlineExceeded`).
    #[arg(long, env = "TELEMETRY_GATEWAY_STREAM_IDLE_TIMEOUT", default_value_t = Limits::default().idle_timeout.into(), value_parser = parse_human_duration)]
    pub stream_idle_timeout: humantime::Duration,

    /// Slowest average rate, in bytes per second, at which an admitted message may arrive once
    /// `TELEMETRY_GATEWAY_RECEIVE_GRACE` has passed (`DeadlineExceeded`, and its room is freed).
    #[arg(long, env = "TELEMETRY_GATEWAY_MIN_RECEIVE_BYTES_PER_SECOND", default_value_t = Limits::default().min_receive_bytes_per_second)]
    pub min_receive_bytes_per_second: usize,

    /// How long an admitted message may take to arrive before the minimum rate applies.
    #[arg(long, env = "TELEMETRY_GATEWAY_RECEIVE_GRACE", default_value_t = Limits::default().receive_grace.into(), value_parser = parse_human_duration)]
    pub receive_grace: humantime::Duration,

    /// Most concurrent streams on one HTTP/2 connection (the HTTP/2 setting sent to clients).
    #[arg(
        long,
        env = "TELEMETRY_GATEWAY_MAX_STREAMS_PER_CONNECTION",
        default_value_t = Limits::default().max_streams_per_connection
    )]
    pub max_streams_per_connection: u32,

    /// Percentage (1–100) of each part of the memory budget that the streams of one connection
    /// may hold together; a message costing more is refused, one that does not fit beside the
    /// connection's others is refused with a retry hint.
    #[arg(long, env = "TELEMETRY_GATEWAY_CONNECTION_SHARE_PERCENT", default_value_t = Limits::default().connection_share_percent, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub connection_share_percent: u8,
}

impl LimitsConfig {
    /// The server's limits; compressed messages may decompress to `max_message_bytes`.
    pub fn limits(&self, max_message_bytes: usize) -> telemetry_gateway_server::Limits {
        telemetry_gateway_server::Limits {
            max_events_per_payload: self.max_events_per_payload,
            max_metadata_bytes: self.max_metadata_bytes,
            max_license_key_bytes: self.max_license_key_bytes,
            stream_lifetime: self.stream_lifetime.into(),
            idle_timeout: self.stream_idle_timeout.into(),
            min_receive_bytes_per_second: self.min_receive_bytes_per_second,
            receive_grace: self.receive_grace.into(),
            max_streams_per_connection: self.max_streams_per_connection,
            connection_share_percent: self.connection_share_percent,
            max_decoded_message_bytes: max_message_bytes,
        }
    }
}

/// Optional per-sender rate limits, off by default.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Rate limits")]
pub struct RateLimitConfig {
    /// Most events per second accepted from one sender (an instance ID, or a managed service's
    /// ID), on average. A payload over the limit ends its stream with `ResourceExhausted` and a
    /// retry hint; it is not acknowledged, so the sender retries it. `0` turns the limit off.
    #[arg(
        long = "rate-limit-events-per-second",
        env = "TELEMETRY_GATEWAY_RATE_LIMIT_EVENTS_PER_SECOND",
        default_value_t = 0
    )]
    pub events_per_second: u32,

    /// Most events one sender may send at once after a quiet spell; `0` means ten times the
    /// rate. A larger payload passes once the sender has been quiet long enough to fill its
    /// allowance, and is paid for by waiting before the next one.
    #[arg(
        long = "rate-limit-burst",
        env = "TELEMETRY_GATEWAY_RATE_LIMIT_BURST",
        default_value_t = 0
    )]
    pub burst: u32,
}

impl RateLimitConfig {
    /// The limit for each sender, or `None` when rate limiting is off.
    pub fn limit(&self) -> Option<RateLimit> {
        let rate = NonZeroU32::new(self.events_per_second)?;
        let burst = NonZeroU32::new(self.burst)
            .or_else(|| NonZeroU32::new(rate.get().saturating_mul(10)))
            .unwrap_or(rate);
        Some(RateLimit::new(rate, burst))
    }
}

/// `SAMS_URL`.
pub const SAMS_URL: &str = "SAMS_URL";
/// `TELEMETRY_GATEWAY_SAMS_SERVER_URL`.
pub const SAMS_SERVER_URL: &str = "TELEMETRY_GATEWAY_SAMS_SERVER_URL";
/// `TELEMETRY_GATEWAY_SAMS_CLIENT_ID`.
pub const SAMS_CLIENT_ID: &str = "TELEMETRY_GATEWAY_SAMS_CLIENT_ID";
/// `TELEMETRY_GATEWAY_SAMS_CLIENT_SECRET`.
pub const SAMS_CLIENT_SECRET: &str = "TELEMETRY_GATEWAY_SAMS_CLIENT_SECRET";

/// How managed services' SAMS tokens are checked.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Managed services")]
pub struct SamsConfig {
    /// External URL of SAMS (Sourcegraph Accounts), where managed services' tokens are checked.
    #[arg(
        long,
        env = SAMS_URL,
        default_value = telemetry_gateway_auth::sams::DEFAULT_SAMS_URL
    )]
    pub sams_url: String,

    /// SAMS API URL replacing `SAMS_URL` for the gateway's calls (`/oauth/token`, `/api/grpc`).
    #[arg(long, env = SAMS_SERVER_URL)]
    pub sams_server_url: Option<String>,

    /// The gateway's own SAMS client ID; set with the secret to accept managed services. With
    /// neither set, managed-service calls are refused with `Unauthenticated`.
    #[arg(long, env = SAMS_CLIENT_ID)]
    pub sams_client_id: Option<String>,

    /// The gateway's own SAMS client secret; required when the client ID is set.
    #[arg(
        long,
        env = SAMS_CLIENT_SECRET,
        hide_env_values = true
    )]
    pub sams_client_secret: Option<Secret>,

    /// Most SAMS token checks (introspections of distinct tokens) in progress at once; a check
    /// that finds none free within 5 s is refused with `Unavailable`, so a flood of made-up
    /// tokens never becomes a flood against SAMS.
    #[arg(long, env = "TELEMETRY_GATEWAY_SAMS_MAX_CONCURRENT_INTROSPECTIONS", default_value_t = telemetry_gateway_auth::sams::DEFAULT_MAX_CONCURRENT_INTROSPECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub sams_max_concurrent_introspections: u64,
}

/// The SAMS client credentials, when managed services are enabled.
#[derive(Clone)]
pub struct SamsCredentials {
    /// The API URL the gateway calls.
    pub api_url: String,
    /// The gateway's client ID.
    pub client_id: String,
    /// The gateway's client secret.
    pub client_secret: String,
}

impl SamsConfig {
    /// The credentials, `None` when neither is set; only one of them set is an error naming
    /// the missing one.
    pub fn credentials(&self) -> Result<Option<SamsCredentials>, ConfigError> {
        let set = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        let api_url = set(&self.sams_server_url).unwrap_or_else(|| self.sams_url.clone());
        let secret = self
            .sams_client_secret
            .as_ref()
            .map(|secret| secret.expose().to_string());
        match (set(&self.sams_client_id), set(&secret)) {
            (None, None) => Ok(None),
            (Some(client_id), Some(client_secret)) => Ok(Some(SamsCredentials {
                api_url,
                client_id,
                client_secret,
            })),
            (Some(_), None) => Err(ConfigError::Invalid {
                setting: SAMS_CLIENT_SECRET,
                message: format!("required when {SAMS_CLIENT_ID} is set"),
            }),
            (None, Some(_)) => Err(ConfigError::Invalid {
                setting: SAMS_CLIENT_ID,
                message: format!("required when {SAMS_CLIENT_SECRET} is set"),
            }),
        }
    }
}

/// A configuration that cannot work, naming the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Two settings that exclude each other are both set.
    #[error("{0} and {1} are both set: set only one")]
    Conflict(&'static str, &'static str),
    /// A setting has an unusable value.
    #[error("{setting}: {message}")]
    Invalid {
        /// The environment variable.
        setting: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Every problem found in a configuration, reported together (one per line), so an operator
/// fixes them in one round.
#[derive(Debug, Default)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    /// Records a problem.
    pub fn push(&mut self, problem: ConfigError) {
        self.0.push(problem);
    }

    /// Records every problem of `other`.
    pub fn extend(&mut self, other: ConfigErrors) {
        self.0.extend(other.0);
    }

    /// The problems found so far.
    pub fn problems(&self) -> &[ConfigError] {
        &self.0
    }

    /// `Ok` when nothing was found.
    pub fn into_result(self) -> Result<(), ConfigErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(problem: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![problem])
    }
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (index, problem) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// For a value rejected by clap, names the environment variable it came from (operators mostly
/// configure by environment, and clap's message names only the flag).
pub fn env_hint(err: &clap::Error) -> Option<String> {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(flag)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = flag.strip_prefix("--")?.split([' ', '=']).next()?;
    let command = Cli::command();
    let arg = command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))?;
    let env = arg.get_env()?.to_string_lossy().into_owned();
    std::env::var_os(&env)
        .is_some()
        .then(|| format!("note: the value comes from the environment variable {env}"))
}

/// The value of `value` unless it is unset or blank (templated deployments set blanks).
pub(crate) fn non_blank(value: &Option<String>) -> Option<String> {
    value.clone().filter(|value| !value.trim().is_empty())
}

/// The value of a setting a sink requires; a missing one is recorded in `problems`.
pub(crate) fn required(
    problems: &mut ConfigErrors,
    value: &Option<String>,
    setting: &'static str,
    sink: &str,
) -> String {
    non_blank(value).unwrap_or_else(|| {
        problems.push(ConfigError::Invalid {
            setting,
            message: format!("required by the {sink} sink"),
        });
        String::new()
    })
}

impl LicenseConfig {
    /// Checks that at most one verification key source is set.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.license_public_key.is_some() && self.license_generation_key.is_some() {
            return Err(ConfigError::Conflict(
                LICENSE_PUBLIC_KEY,
                LICENSE_GENERATION_KEY,
            ));
        }
        Ok(())
    }
}

impl LoggingConfig {
    /// The effective format: explicit, else `json_gcp` in MSP and `console` elsewhere.
    pub fn format(&self, msp: bool) -> LogFormat {
        self.log_format.unwrap_or(if msp {
            LogFormat::JsonGcp
        } else {
            LogFormat::Console
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate_limit(events_per_second: u32, burst: u32) -> Option<(u32, u32)> {
        RateLimitConfig {
            events_per_second,
            burst,
        }
        .limit()
        .map(|limit| (limit.events_per_second(), limit.burst()))
    }

    #[test]
    fn rate_limits_are_off_by_default() {
        let cli = Cli::try_parse_from(["telemetry-gateway"]).expect("no arguments parse");
        assert_eq!(cli.config.rate_limit.limit(), None);
        assert_eq!(rate_limit(0, 500), None, "a burst alone changes nothing");
    }

    #[test]
    fn the_burst_defaults_to_ten_times_the_rate() {
        assert_eq!(rate_limit(50, 0), Some((50, 500)));
        assert_eq!(rate_limit(50, 20), Some((50, 20)));
        assert_eq!(rate_limit(u32::MAX, 0), Some((u32::MAX, u32::MAX)));
    }

    #[test]
    fn debug_output_redacts_every_credential() {
        let secrets = [
            ("--diagnostics-secret", "diag-secret-value"),
            ("--sentry-dsn", "https://sentrykey@sentry.example/1"),
            (
                "--license-generation-key",
                "-----BEGIN RSA PRIVATE KEY-----pem",
            ),
            ("--sams-client-id", "client-id"),
            ("--sams-client-secret", "sams-secret-value"),
        ];
        let mut args = vec!["telemetry-gateway".to_string()];
        args.extend(
            secrets
                .iter()
                .map(|(flag, value)| format!("{flag}={value}")),
        );
        let cli = Cli::try_parse_from(args).expect("the flags parse");
        let debug = format!("{cli:?}");
        for (flag, value) in secrets
            .iter()
            .filter(|(flag, _)| *flag != "--sams-client-id")
        {
            assert!(!debug.contains(value), "{flag} is shown: {debug}");
        }
        assert!(debug.contains("<redacted>"), "{debug}");
        let options = telemetry_gateway_server::ServerOptions {
            diagnostics_secret: cli.config.server.diagnostics_secret.clone(),
            ..Default::default()
        };
        assert!(!format!("{options:?}").contains("diag-secret-value"));
        assert_eq!(
            cli.config
                .server
                .diagnostics_secret
                .as_ref()
                .map(Secret::expose),
            Some("diag-secret-value"),
            "the value itself is kept"
        );
    }
}
