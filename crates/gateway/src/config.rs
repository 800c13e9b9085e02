//! The gateway's settings: every one an environment variable and a flag, documented here once
//! (the doc comments are the `--help` text and `docs/configuration.md`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// Run the gateway (the default).
    Serve,
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
    pub events: EventsConfig,
    #[command(flatten)]
    pub license: LicenseConfig,

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

    /// Bearer secret required by `/-/healthz`; unset means no authentication (logged as a warning).
    #[arg(long, env = "DIAGNOSTICS_SECRET", hide_env_values = true)]
    pub diagnostics_secret: Option<String>,

    /// Largest gRPC message accepted, in bytes; larger messages get `ResourceExhausted`.
    #[arg(long, env = "TELEMETRY_GATEWAY_GRPC_MAX_RECEIVE_MESSAGE_BYTES", default_value_t = 90 * 1024 * 1024)]
    pub max_receive_message_bytes: usize,

    /// Running on the Managed Services Platform: JSON logs by default.
    #[arg(long, env = "MSP", value_parser = BoolishValueParser::new(), default_value = "false", action = clap::ArgAction::Set)]
    pub msp: bool,

    /// Name of the deployment environment, for logs.
    #[arg(long, env = "ENVIRONMENT_ID", default_value = "unknown")]
    pub environment_id: String,
}

impl ServerConfig {
    /// The socket address to bind.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen_address, self.port)
    }
}

/// Log output.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging")]
pub struct LoggingConfig {
    /// Minimum log level (`error`, `warn`, `info`, `debug`, `trace`) or a tracing filter directive.
    #[arg(long, env = "SRC_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log format: `json`, or `text` for people; defaults to `json` when `MSP` is true.
    #[arg(long, env = "SRC_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
    /// Same as `text` (the original's name for it).
    Condensed,
}

/// Where events go.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Events")]
pub struct EventsConfig {
    /// Sinks to deliver events to, comma-separated (`file`, `log`, `discard`); with several, an
    /// event is acknowledged only when every sink accepted it. Default: `file`, or `log` when
    /// `TELEMETRY_GATEWAY_EVENTS_PUBSUB_ENABLED=false` (the original's logging mode).
    #[arg(
        long = "events-sinks",
        env = "TELEMETRY_GATEWAY_EVENTS_SINKS",
        value_enum,
        value_delimiter = ','
    )]
    pub sinks: Vec<SinkKind>,

    /// Publish events to Pub/Sub (not available in this version: setting it true is refused at
    /// start-up); `false` selects the log sink, as in the original.
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
    pub license_generation_key: Option<String>,

    /// Refuse streams whose license has expired (the original accepts them).
    #[arg(long, env = "TELEMETRY_GATEWAY_LICENSE_REJECT_EXPIRED", value_parser = BoolishValueParser::new(), default_value = "false", action = clap::ArgAction::Set)]
    pub reject_expired_licenses: bool,

    /// For licenses tagged `disable-telemetry-events-export`, forward only `cody` and `cody.*`
    /// events and acknowledge the rest without forwarding them.
    #[arg(long, env = "TELEMETRY_GATEWAY_LICENSE_ENFORCE_EXPORT_TAGS", value_parser = BoolishValueParser::new(), default_value = "false", action = clap::ArgAction::Set)]
    pub enforce_export_tags: bool,
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
    /// The sinks to build, after defaults and consistency checks.
    pub fn selected_sinks(&self) -> Result<Vec<SinkKind>, ConfigError> {
        let pubsub_requested = self.pubsub_enabled == Some(true)
            || (self.pubsub_enabled.is_none()
                && (self.pubsub_project_id.is_some() || self.pubsub_topic_id.is_some()));
        if pubsub_requested {
            return Err(ConfigError::Invalid {
                setting: "TELEMETRY_GATEWAY_EVENTS_PUBSUB_ENABLED",
                message: "the Pub/Sub sink is not available in this version of the gateway; \
                          unset the TELEMETRY_GATEWAY_EVENTS_PUBSUB_* settings to use the file sink"
                    .into(),
            });
        }
        let mut sinks = if !self.sinks.is_empty() {
            self.sinks.clone()
        } else if self.pubsub_enabled == Some(false) {
            vec![SinkKind::Log]
        } else {
            vec![SinkKind::File]
        };
        let mut seen = Vec::new();
        sinks.retain(|kind| {
            let first = !seen.contains(kind);
            seen.push(*kind);
            first
        });
        if self.file_max_bytes == 0 {
            return Err(ConfigError::Invalid {
                setting: "TELEMETRY_GATEWAY_EVENTS_FILE_MAX_BYTES",
                message: "must be greater than 0".into(),
            });
        }
        Ok(sinks)
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
    /// The effective format: explicit, else JSON in MSP and text elsewhere.
    pub fn format(&self, msp: bool) -> LogFormat {
        self.log_format.unwrap_or(if msp {
            LogFormat::Json
        } else {
            LogFormat::Text
        })
    }
}
