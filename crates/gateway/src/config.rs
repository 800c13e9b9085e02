//! The gateway's settings: every one an environment variable and a flag, documented here once
//! (the doc comments are the `--help` text and `docs/configuration.md`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use telemetry_gateway_server::{RateLimit, Secret};
use telemetry_gateway_sink::BigQuerySinkConfig;
use telemetry_gateway_sink::bigquery::WriteApi;
use telemetry_gateway_sink::pubsub::{PubSubSinkConfig, publish_concurrency};

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
    #[arg(long, env = "TELEMETRY_GATEWAY_GRPC_MAX_RECEIVE_MESSAGE_BYTES", default_value_t = 90 * 1024 * 1024)]
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

impl ServerConfig {
    /// The socket address to bind.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen_address, self.port)
    }
}

/// Log output, with the settings of Sourcegraph's log library (docs/operations.md#logs).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging")]
pub struct LoggingConfig {
    /// Minimum log level: `debug`, `info`, `warn`, `error` (also the older `dbug`, `eror`,
    /// `crit`, and `warning`, `trace`); anything else stops the gateway at start-up.
    #[arg(long, env = "SRC_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log format: `json_gcp` (Cloud Logging's fields and trace links; the default when `MSP`
    /// is true), `json` (Sourcegraph's log fields), or `console` (alias `text`; for people,
    /// coloured only when stdout is a terminal and `NO_COLOR` is unset; the default otherwise).
    #[arg(long, env = "SRC_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Levels per scope, `scope=level,...`: a scope is an `InstrumentationScope` of the logs
    /// (or its prefix, such as `telemetry_gateway_sink`), or a library (`h2`, `hyper`, `tower`,
    /// `tonic`), whose debug lines are otherwise left out.
    #[arg(long, env = "SRC_LOG_SCOPE_LEVEL")]
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
    #[arg(
        long = "events-sinks",
        env = "TELEMETRY_GATEWAY_EVENTS_SINKS",
        value_enum,
        value_delimiter = ','
    )]
    pub sinks: Vec<SinkKind>,

    /// Publish events to Pub/Sub (`TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID` and `_TOPIC_ID` are
    /// then required); `false` selects the log sink (`docs/compatibility.md` §6).
    #[arg(long = "events-pubsub-enabled", env = "TELEMETRY_GATEWAY_EVENTS_PUBSUB_ENABLED", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub pubsub_enabled: Option<bool>,

    /// Google Cloud project of the Pub/Sub topic.
    #[arg(
        long = "events-pubsub-project-id",
        env = "TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID"
    )]
    pub pubsub_project_id: Option<String>,

    /// Pub/Sub topic ID events are published to.
    #[arg(
        long = "events-pubsub-topic-id",
        env = "TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC_ID"
    )]
    pub pubsub_topic_id: Option<String>,

    /// How many events of one payload may await Pub/Sub's acknowledgement at once; 0 or less
    /// means 250 (`docs/compatibility.md` §4).
    #[arg(
        long = "events-stream-publish-concurrency",
        env = "TELEMETRY_GATEWAY_EVENTS_STREAM_PUBLISH_CONCURRENCY",
        default_value_t = 250,
        allow_negative_numbers = true
    )]
    pub publish_concurrency: i64,

    /// Longest wait, in seconds, for Pub/Sub to acknowledge a payload's events; events still
    /// unacknowledged are left out of the response, and the sender retries them.
    #[arg(
        long = "events-pubsub-publish-timeout-seconds",
        env = "TELEMETRY_GATEWAY_EVENTS_PUBSUB_PUBLISH_TIMEOUT_SECONDS",
        default_value_t = 30
    )]
    pub pubsub_publish_timeout_seconds: u64,

    /// `host:port` of a Pub/Sub emulator: publish there in plaintext without credentials.
    /// Unset: Google's endpoint with application default credentials.
    #[arg(long = "pubsub-emulator-host", env = "PUBSUB_EMULATOR_HOST")]
    pub pubsub_emulator_host: Option<String>,

    /// Directory of the file sink's NDJSON files (created if missing).
    #[arg(
        long = "events-file-dir",
        env = "TELEMETRY_GATEWAY_EVENTS_FILE_DIR",
        default_value = "./data/events"
    )]
    pub file_dir: PathBuf,

    /// Size at which the file sink starts a new file, in bytes.
    #[arg(long = "events-file-max-bytes", env = "TELEMETRY_GATEWAY_EVENTS_FILE_MAX_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub file_max_bytes: u64,

    /// Google Cloud project of the BigQuery table events are inserted into.
    #[arg(
        long = "events-bigquery-project-id",
        env = "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID"
    )]
    pub bigquery_project_id: Option<String>,

    /// BigQuery dataset of the events table.
    #[arg(
        long = "events-bigquery-dataset-id",
        env = "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID"
    )]
    pub bigquery_dataset_id: Option<String>,

    /// BigQuery table events are inserted into, one row per event (schema:
    /// `deploy/bigquery/events.schema.json`). Setting it selects the `bigquery` sink when
    /// `TELEMETRY_GATEWAY_EVENTS_SINKS` is not set.
    #[arg(
        long = "events-bigquery-table-id",
        env = "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID"
    )]
    pub bigquery_table_id: Option<String>,

    /// The BigQuery API rows are written with: `storage` (the Storage Write API, table's default
    /// stream; billed by actual bytes) or `insert_all` (the legacy streaming API; billed per row
    /// with a 1 KB minimum). See docs/sinks.md for the costs of each.
    #[arg(
        long = "events-bigquery-write-api",
        env = "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_WRITE_API",
        value_enum,
        default_value_t = BigQueryWriteApi::Storage
    )]
    pub bigquery_write_api: BigQueryWriteApi,

    /// BigQuery v2 base URL replacing Google's (for emulators and tests, e.g.
    /// `http://127.0.0.1:9050/bigquery/v2`); a fake access token is sent to it. Unset: Google's
    /// endpoint with application default credentials. Used by `insert_all`.
    #[arg(
        long = "events-bigquery-endpoint",
        env = "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_ENDPOINT"
    )]
    pub bigquery_endpoint: Option<String>,

    /// BigQuery Storage Write API gRPC URL replacing Google's (for emulators and tests, e.g.
    /// `http://127.0.0.1:9060`); a fake access token is sent to it. Unset: Google's endpoint
    /// with application default credentials. Used by `storage`.
    #[arg(
        long = "events-bigquery-storage-endpoint",
        env = "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_STORAGE_ENDPOINT"
    )]
    pub bigquery_storage_endpoint: Option<String>,

    /// How long one BigQuery request (insertAll or AppendRows, or a health check) may take
    /// before its events count as not delivered (retryable), in seconds.
    #[arg(
        long = "events-bigquery-request-timeout-seconds",
        env = "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_REQUEST_TIMEOUT_SECONDS",
        default_value_t = 30
    )]
    pub bigquery_request_timeout_seconds: u64,

    /// Replace the raw license key in published metadata by `sha256:<hex>` of it (opt-in; changes
    /// what downstream consumers receive).
    #[arg(long = "events-fingerprint-license-keys", env = "TELEMETRY_GATEWAY_EVENTS_FINGERPRINT_LICENSE_KEYS", value_parser = BoolishValueParser::new(), default_value = "false", action = clap::ArgAction::Set)]
    pub fingerprint_license_keys: bool,
}

/// The sinks the gateway can deliver to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    /// Newline-delimited JSON files, fsynced before acknowledging (the default).
    File,
    /// Payloads written to the log at debug level (nothing is stored).
    Log,
    /// Drops every event but acknowledges it: a benchmarking aid, never for production.
    Discard,
    /// One message per event on a Pub/Sub topic (`TELEMETRY_GATEWAY_EVENTS_PUBSUB_*`).
    Pubsub,
    /// One row per event in a BigQuery table (`TELEMETRY_GATEWAY_EVENTS_BIGQUERY_*`).
    Bigquery,
}

/// The BigQuery API the `bigquery` sink writes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BigQueryWriteApi {
    /// The Storage Write API (default stream).
    Storage,
    /// The legacy streaming API, `tabledata.insertAll`.
    #[value(name = "insert_all")]
    InsertAll,
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
        env = "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_DIR"
    )]
    pub deadletter_dir: Option<PathBuf>,

    /// Pub/Sub topic ID to publish dead letters to, one message each (through
    /// `PUBSUB_EMULATOR_HOST` when set).
    #[arg(
        long = "events-deadletter-pubsub-topic-id",
        env = "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_TOPIC_ID"
    )]
    pub deadletter_pubsub_topic_id: Option<String>,

    /// Google Cloud project of the dead-letter topic; default:
    /// `TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID`.
    #[arg(
        long = "events-deadletter-pubsub-project-id",
        env = "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_PROJECT_ID"
    )]
    pub deadletter_pubsub_project_id: Option<String>,

    /// Largest dead letter, in bytes (at least 65536); a larger one loses its event JSON, then
    /// its metadata, then the tail of its protobuf bytes, and is marked `"truncated":true`.
    #[arg(
        long = "events-deadletter-max-bytes",
        env = "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_MAX_BYTES",
        default_value_t = 1024 * 1024
    )]
    pub deadletter_max_bytes: usize,

    /// Most bytes of dead letters waiting to be written; beyond it they are dropped and counted
    /// in `telemetry-gateway.dead_letters.failed`.
    #[arg(
        long = "events-deadletter-queue-bytes",
        env = "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_QUEUE_BYTES",
        default_value_t = 16 * 1024 * 1024
    )]
    pub deadletter_queue_bytes: usize,
}

/// Where dead letters go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterDestination {
    /// NDJSON files in this directory.
    Dir(PathBuf),
    /// Messages on this Pub/Sub topic.
    PubSub(PubSubSinkConfig),
}

impl DeadLetterConfig {
    /// The destination, `None` when dead letters are off; `events` supplies the Pub/Sub
    /// defaults (project, emulator, timeout).
    pub fn destination(
        &self,
        events: &EventsConfig,
    ) -> Result<Option<DeadLetterDestination>, ConfigError> {
        let set = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        let dir = self
            .deadletter_dir
            .clone()
            .filter(|dir| !dir.as_os_str().is_empty());
        let topic = set(&self.deadletter_pubsub_topic_id);
        if self.deadletter_max_bytes < telemetry_gateway_server::dead_letter::MIN_RECORD_BYTES {
            return Err(ConfigError::Invalid {
                setting: "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_MAX_BYTES",
                message: format!(
                    "must be at least {}",
                    telemetry_gateway_server::dead_letter::MIN_RECORD_BYTES
                ),
            });
        }
        if self.deadletter_queue_bytes < self.deadletter_max_bytes {
            return Err(ConfigError::Invalid {
                setting: "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_QUEUE_BYTES",
                message: "must be at least TELEMETRY_GATEWAY_EVENTS_DEADLETTER_MAX_BYTES".into(),
            });
        }
        match (dir, topic) {
            (Some(_), Some(_)) => Err(ConfigError::Conflict(
                "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_DIR",
                "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_TOPIC_ID",
            )),
            (Some(dir), None) => Ok(Some(DeadLetterDestination::Dir(dir))),
            (None, Some(topic)) => {
                let project = set(&self.deadletter_pubsub_project_id)
                    .or_else(|| set(&events.pubsub_project_id))
                    .ok_or(ConfigError::Invalid {
                        setting: "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_PROJECT_ID",
                        message: "required by the dead-letter topic (or set TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID)".into(),
                    })?;
                let mut config = PubSubSinkConfig::new(project, topic);
                config.emulator_host = set(&events.pubsub_emulator_host);
                config.publish_timeout =
                    std::time::Duration::from_secs(events.pubsub_publish_timeout_seconds.max(1));
                Ok(Some(DeadLetterDestination::PubSub(config)))
            }
            (None, None) => {
                if set(&self.deadletter_pubsub_project_id).is_some() {
                    return Err(ConfigError::Invalid {
                        setting: "TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_TOPIC_ID",
                        message: "required when TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_PROJECT_ID is set".into(),
                    });
                }
                Ok(None)
            }
        }
    }
}

/// How license keys are checked.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Licenses")]
pub struct LicenseConfig {
    /// OpenSSH public key (`ssh-rsa AAAA...`) that verifies license keys, replacing the built-in
    /// production key.
    #[arg(long, env = "TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY")]
    pub license_public_key: Option<String>,

    /// PEM private key whose public half verifies license keys (compatibility with the original;
    /// the private half is not used). Conflicts with `TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY`.
    #[arg(
        long,
        env = "SOURCEGRAPH_LICENSE_GENERATION_KEY",
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
        default_value_t = 20_000
    )]
    pub max_events_per_payload: usize,

    /// Most bytes of a stream's first message, the metadata (`ResourceExhausted` beyond; real
    /// metadata is a few KB, and every event's published payload repeats it).
    #[arg(long, env = "TELEMETRY_GATEWAY_MAX_METADATA_BYTES", default_value_t = 64 * 1024)]
    pub max_metadata_bytes: usize,

    /// Most bytes of a license key, checked before it is parsed (`InvalidArgument` beyond).
    #[arg(long, env = "TELEMETRY_GATEWAY_MAX_LICENSE_KEY_BYTES", default_value_t = 16 * 1024)]
    pub max_license_key_bytes: usize,

    /// How long a `RecordEvents` stream may stay open (`DeadlineExceeded` after it, once the
    /// payload in progress is answered), the original's 2 minutes (`docs/compatibility.md` §2).
    #[arg(long, env = "TELEMETRY_GATEWAY_STREAM_LIFETIME", default_value = "2m", value_parser = parse_duration)]
    pub stream_lifetime: std::time::Duration,

    /// How long a stream may wait before sending its next message (`DeadlineExceeded`).
    #[arg(long, env = "TELEMETRY_GATEWAY_STREAM_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub stream_idle_timeout: std::time::Duration,

    /// Slowest average rate, in bytes per second, at which an admitted message may arrive once
    /// `TELEMETRY_GATEWAY_RECEIVE_GRACE` has passed (`DeadlineExceeded`, and its room is freed).
    #[arg(long, env = "TELEMETRY_GATEWAY_MIN_RECEIVE_BYTES_PER_SECOND", default_value_t = 16 * 1024)]
    pub min_receive_bytes_per_second: usize,

    /// How long an admitted message may take to arrive before the minimum rate applies.
    #[arg(long, env = "TELEMETRY_GATEWAY_RECEIVE_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub receive_grace: std::time::Duration,

    /// Most concurrent streams on one HTTP/2 connection (the HTTP/2 setting sent to clients).
    #[arg(
        long,
        env = "TELEMETRY_GATEWAY_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 100
    )]
    pub max_streams_per_connection: u32,

    /// Percentage (1–100) of each part of the memory budget that the streams of one connection
    /// may hold together; a message costing more is refused, one that does not fit beside the
    /// connection's others is refused with a retry hint.
    #[arg(long, env = "TELEMETRY_GATEWAY_CONNECTION_SHARE_PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub connection_share_percent: u8,
}

impl LimitsConfig {
    /// The server's limits; compressed messages may decompress to `max_message_bytes`.
    pub fn limits(&self, max_message_bytes: usize) -> telemetry_gateway_server::Limits {
        telemetry_gateway_server::Limits {
            max_events_per_payload: self.max_events_per_payload,
            max_metadata_bytes: self.max_metadata_bytes,
            max_license_key_bytes: self.max_license_key_bytes,
            stream_lifetime: self.stream_lifetime,
            idle_timeout: self.stream_idle_timeout,
            min_receive_bytes_per_second: self.min_receive_bytes_per_second,
            receive_grace: self.receive_grace,
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

/// How managed services' SAMS tokens are checked.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Managed services")]
pub struct SamsConfig {
    /// External URL of SAMS (Sourcegraph Accounts), where managed services' tokens are checked.
    #[arg(
        long,
        env = "SAMS_URL",
        default_value = "https://accounts.sourcegraph.com"
    )]
    pub sams_url: String,

    /// SAMS API URL replacing `SAMS_URL` for the gateway's calls (`/oauth/token`, `/api/grpc`).
    #[arg(long, env = "TELEMETRY_GATEWAY_SAMS_SERVER_URL")]
    pub sams_server_url: Option<String>,

    /// The gateway's own SAMS client ID; set with the secret to accept managed services. With
    /// neither set, managed-service calls are refused with `Unauthenticated`.
    #[arg(long, env = "TELEMETRY_GATEWAY_SAMS_CLIENT_ID")]
    pub sams_client_id: Option<String>,

    /// The gateway's own SAMS client secret; required when the client ID is set.
    #[arg(
        long,
        env = "TELEMETRY_GATEWAY_SAMS_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub sams_client_secret: Option<Secret>,

    /// Most SAMS token checks (introspections of distinct tokens) in progress at once; a check
    /// that finds none free within 5 s is refused with `Unavailable`, so a flood of made-up
    /// tokens never becomes a flood against SAMS.
    #[arg(long, env = "TELEMETRY_GATEWAY_SAMS_MAX_CONCURRENT_INTROSPECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
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
                setting: "TELEMETRY_GATEWAY_SAMS_CLIENT_SECRET",
                message: "required when TELEMETRY_GATEWAY_SAMS_CLIENT_ID is set".into(),
            }),
            (None, Some(_)) => Err(ConfigError::Invalid {
                setting: "TELEMETRY_GATEWAY_SAMS_CLIENT_ID",
                message: "required when TELEMETRY_GATEWAY_SAMS_CLIENT_SECRET is set".into(),
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

impl EventsConfig {
    /// The sinks to build, after defaults and consistency checks; every problem is reported.
    pub fn selected_sinks(&self) -> Result<Vec<SinkKind>, ConfigErrors> {
        let pubsub_requested = self.pubsub_enabled == Some(true)
            || (self.pubsub_enabled.is_none()
                && (self.pubsub_project_id.is_some() || self.pubsub_topic_id.is_some()));
        let mut sinks = if !self.sinks.is_empty() {
            self.sinks.clone()
        } else if pubsub_requested {
            vec![SinkKind::Pubsub]
        } else if self.pubsub_enabled == Some(false) {
            vec![SinkKind::Log]
        } else {
            vec![SinkKind::File]
        };
        if self.sinks.is_empty() && self.bigquery_table_id.is_some() {
            // A configured table is a cloud sink: it replaces the embedded file default.
            sinks.retain(|kind| *kind != SinkKind::File);
            sinks.push(SinkKind::Bigquery);
        }
        let mut problems = ConfigErrors::default();
        if sinks.contains(&SinkKind::Pubsub)
            && let Err(errors) = self.pubsub_sink()
        {
            problems.extend(errors);
        }
        if sinks.contains(&SinkKind::Bigquery)
            && let Err(errors) = self.bigquery_sink()
        {
            problems.extend(errors);
        }
        let mut seen = Vec::new();
        sinks.retain(|kind| {
            let first = !seen.contains(kind);
            seen.push(*kind);
            first
        });
        if self.file_max_bytes == 0 {
            problems.push(ConfigError::Invalid {
                setting: "TELEMETRY_GATEWAY_EVENTS_FILE_MAX_BYTES",
                message: "must be greater than 0".into(),
            });
        }
        problems.into_result()?;
        Ok(sinks)
    }
}

/// The value of a setting a sink requires; a missing one is recorded in `problems`.
fn required(
    problems: &mut ConfigErrors,
    value: &Option<String>,
    setting: &'static str,
    sink: &str,
) -> String {
    match value {
        Some(value) if !value.trim().is_empty() => value.clone(),
        _ => {
            problems.push(ConfigError::Invalid {
                setting,
                message: format!("required by the {sink} sink"),
            });
            String::new()
        }
    }
}

impl EventsConfig {
    /// The Pub/Sub sink's settings; project and topic must both be set.
    pub fn pubsub_sink(&self) -> Result<PubSubSinkConfig, ConfigErrors> {
        let mut problems = ConfigErrors::default();
        let project = required(
            &mut problems,
            &self.pubsub_project_id,
            "TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID",
            "pubsub",
        );
        let topic = required(
            &mut problems,
            &self.pubsub_topic_id,
            "TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC_ID",
            "pubsub",
        );
        if self.pubsub_publish_timeout_seconds == 0 {
            problems.push(ConfigError::Invalid {
                setting: "TELEMETRY_GATEWAY_EVENTS_PUBSUB_PUBLISH_TIMEOUT_SECONDS",
                message: "must be greater than 0".into(),
            });
        }
        problems.into_result()?;
        let mut config = PubSubSinkConfig::new(project, topic);
        config.emulator_host = self
            .pubsub_emulator_host
            .clone()
            .filter(|host| !host.trim().is_empty());
        config.publish_concurrency = publish_concurrency(self.publish_concurrency);
        config.publish_timeout =
            std::time::Duration::from_secs(self.pubsub_publish_timeout_seconds);
        Ok(config)
    }

    /// The BigQuery sink's settings; project, dataset and table must all be set.
    pub fn bigquery_sink(&self) -> Result<BigQuerySinkConfig, ConfigErrors> {
        let mut problems = ConfigErrors::default();
        let project = required(
            &mut problems,
            &self.bigquery_project_id,
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID",
            "bigquery",
        );
        let dataset = required(
            &mut problems,
            &self.bigquery_dataset_id,
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID",
            "bigquery",
        );
        let table = required(
            &mut problems,
            &self.bigquery_table_id,
            "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID",
            "bigquery",
        );
        if self.bigquery_request_timeout_seconds == 0 {
            problems.push(ConfigError::Invalid {
                setting: "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_REQUEST_TIMEOUT_SECONDS",
                message: "must be greater than 0".into(),
            });
        }
        let set = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        let endpoint = set(&self.bigquery_endpoint);
        let storage_endpoint = set(&self.bigquery_storage_endpoint);
        let write_api = match self.bigquery_write_api {
            BigQueryWriteApi::Storage => WriteApi::Storage,
            BigQueryWriteApi::InsertAll => WriteApi::InsertAll,
        };
        if write_api == WriteApi::Storage && endpoint.is_some() && storage_endpoint.is_none() {
            // An emulator for one API and Google's real endpoint for the other would send test
            // rows to production.
            problems.push(ConfigError::Invalid {
                setting: "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_STORAGE_ENDPOINT",
                message: "required with TELEMETRY_GATEWAY_EVENTS_BIGQUERY_ENDPOINT when \
                          TELEMETRY_GATEWAY_EVENTS_BIGQUERY_WRITE_API=storage (the default); \
                          or set TELEMETRY_GATEWAY_EVENTS_BIGQUERY_WRITE_API=insert_all"
                    .into(),
            });
        }
        problems.into_result()?;
        let mut config = BigQuerySinkConfig::new(project, dataset, table);
        config.request_timeout =
            std::time::Duration::from_secs(self.bigquery_request_timeout_seconds);
        config.endpoint = endpoint;
        config.storage_endpoint = storage_endpoint;
        config.write_api = write_api;
        Ok(config)
    }
}

impl LicenseConfig {
    /// Checks that at most one verification key source is set.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.license_public_key.is_some() && self.license_generation_key.is_some() {
            return Err(ConfigError::Conflict(
                "TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY",
                "SOURCEGRAPH_LICENSE_GENERATION_KEY",
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
