//! Log set-up with Sourcegraph's log settings (`SRC_LOG_*`): Sourcegraph's JSON, the same for
//! Cloud Logging (`json_gcp`), or readable console lines; plus whatever layers the telemetry
//! set-up adds (OpenTelemetry spans, Sentry). docs/operations.md#logs describes the output.

pub mod json;
pub mod sampling;

use std::io::IsTerminal;

use tracing_subscriber::filter::{FilterExt, LevelFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{ConfigError, ConfigErrors, LogFormat, LoggingConfig};
use json::{LogResource, SourcegraphJson};
use sampling::Sampler;

/// A layer added next to the log output.
pub type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Libraries whose debug lines (HTTP/2 frames, connection pools) are left out unless a scope
/// level asks for them.
const NOISY_LIBRARIES: [&str; 6] = ["h2", "hyper", "hyper_util", "tower", "tonic", "rustls"];

/// The log settings, checked.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// The output format.
    pub format: LogFormat,
    /// The minimum level.
    pub level: LevelFilter,
    /// Levels per scope (target prefix), from `SRC_LOG_SCOPE_LEVEL`.
    pub scopes: Vec<(String, LevelFilter)>,
    /// `(initial, thereafter)` sampling of identical messages; `None`: off.
    pub sampling: Option<(u64, u64)>,
    /// The Google Cloud project for `json_gcp` trace links.
    pub project: Option<String>,
    /// Colours in console output.
    pub ansi: bool,
}

/// Parses a level name of Sourcegraph's log library (and the older spellings).
pub fn parse_level(text: &str) -> Option<LevelFilter> {
    Some(match text.trim().to_ascii_lowercase().as_str() {
        "trace" => LevelFilter::TRACE,
        "debug" | "dbug" => LevelFilter::DEBUG,
        "info" => LevelFilter::INFO,
        "warn" | "warning" => LevelFilter::WARN,
        "error" | "eror" | "crit" => LevelFilter::ERROR,
        _ => return None,
    })
}

const LEVEL_NAMES: &str = "debug, info, warn, error (or dbug, eror, crit, warning, trace)";

impl LogSettings {
    /// Checks the logging settings; every problem is reported.
    pub fn from_config(config: &LoggingConfig, msp: bool) -> Result<LogSettings, ConfigErrors> {
        let mut problems = ConfigErrors::default();
        let level = parse_level(&config.log_level).unwrap_or_else(|| {
            problems.push(ConfigError::Invalid {
                setting: crate::config::LOG_LEVEL,
                message: format!("{:?} is not a level: use {LEVEL_NAMES}", config.log_level),
            });
            LevelFilter::INFO
        });
        let mut scopes = Vec::new();
        for entry in config
            .log_scope_level
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
        {
            let parsed = entry.split_once('=').and_then(|(scope, level)| {
                let scope = scope.trim();
                let valid = !scope.is_empty()
                    && scope
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'));
                valid
                    .then_some(scope)
                    .zip(parse_level(level))
                    .map(|(scope, level)| (scope.replace(['-', '.'], "_"), level))
            });
            match parsed {
                Some(scope) => scopes.push(scope),
                None => problems.push(ConfigError::Invalid {
                    setting: crate::config::LOG_SCOPE_LEVEL,
                    message: format!("{entry:?} is not scope=level (levels: {LEVEL_NAMES})"),
                }),
            }
        }
        problems.into_result()?;
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
        Ok(LogSettings {
            format: config.format(msp),
            level,
            scopes,
            sampling: (config.log_sampling_initial > 0)
                .then_some((config.log_sampling_initial, config.log_sampling_thereafter)),
            project: config
                .google_cloud_project
                .clone()
                .filter(|project| !project.trim().is_empty()),
            ansi: std::io::stdout().is_terminal() && !no_color,
        })
    }

    /// The filter of the log output: the level, library noise capped at info, scope levels.
    pub fn filter(&self) -> EnvFilter {
        let mut filter = EnvFilter::default().add_directive(self.level.into());
        let directive = |target: &str, level: LevelFilter| {
            format!("{target}={level}")
                .parse::<tracing_subscriber::filter::Directive>()
                .ok()
        };
        // The OpenTelemetry SDK's own chatter ("Global meter provider is set") is noise at info.
        let mut quiet: Vec<(&str, LevelFilter)> = vec![
            ("opentelemetry", LevelFilter::WARN),
            ("opentelemetry_sdk", LevelFilter::WARN),
        ];
        for library in NOISY_LIBRARIES {
            quiet.push((library, LevelFilter::INFO));
        }
        for (target, cap) in quiet {
            // Only ever quieter than the level, never louder.
            if self.level > cap
                && let Some(directive) = directive(target, cap)
            {
                filter = filter.add_directive(directive);
            }
        }
        for (scope, level) in &self.scopes {
            if let Some(directive) = directive(scope, *level) {
                filter = filter.add_directive(directive);
            }
        }
        filter
    }

    /// The log output layer, writing to `writer`.
    pub fn output<S, W>(
        &self,
        writer: W,
        json: Option<SourcegraphJson>,
    ) -> Box<dyn Layer<S> + Send + Sync>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        let sampler = self
            .sampling
            .map(|(initial, thereafter)| Sampler::new(initial, thereafter));
        let filter = self.filter().and(sampler.map_or_else(
            || {
                Box::new(tracing_subscriber::filter::filter_fn(|_| true))
                    as Box<dyn tracing_subscriber::layer::Filter<S> + Send + Sync>
            },
            |sampler| {
                Box::new(sampler) as Box<dyn tracing_subscriber::layer::Filter<S> + Send + Sync>
            },
        ));
        let output = tracing_subscriber::fmt::layer().with_writer(writer);
        match (self.format, json) {
            (LogFormat::Console, _) => output
                .with_target(false)
                .with_ansi(self.ansi)
                .with_filter(filter)
                .boxed(),
            (format, json) => {
                let json = json.unwrap_or_else(|| self.json_format(format));
                output
                    .fmt_fields(JsonFields::new())
                    .event_format(json)
                    .with_filter(filter)
                    .boxed()
            }
        }
    }

    /// The JSON formatter for `format` with the live clock and this process's resource.
    pub fn json_format(&self, format: LogFormat) -> SourcegraphJson {
        let instance_id = std::env::var("HOSTNAME")
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        SourcegraphJson {
            gcp: format == LogFormat::JsonGcp,
            project: self.project.clone(),
            resource: LogResource {
                name: crate::telemetry::SERVICE_NAME.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                instance_id,
            },
            now: chrono::Utc::now,
        }
    }
}

/// Installs the global subscriber: the log output on stdout with its filter; `extra` layers
/// filter for themselves (so `SRC_LOG_LEVEL=error` still records spans and Sentry
/// breadcrumbs).
pub fn init(settings: &LogSettings, extra: Vec<BoxedLayer>) -> anyhow::Result<()> {
    // An empty `Vec` layer would declare no interest in anything, silencing every layer.
    let extra = (!extra.is_empty()).then_some(extra);
    tracing_subscriber::registry()
        .with(extra)
        .with(settings.output(std::io::stdout, None))
        .try_init()
        .map_err(|err| anyhow::anyhow!("installing the logger: {err}"))
}
