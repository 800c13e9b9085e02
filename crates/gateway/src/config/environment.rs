//! How the settings are read from the command line and the environment, beyond what clap does
//! by itself (docs/configuration.md):
//! - an empty environment value means "unset" (templated deployments set empty strings);
//! - the settings are accepted before or after `serve` and `check-config`;
//! - `TELEMETRY_GATEWAY_*` variables that name no setting are reported (a typo is not silent);
//! - the effective settings can be listed with their origin, secrets redacted.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, CommandFactory, FromArgMatches};

use super::Cli;

/// The subcommands that take the gateway's settings after their name (`serve --port 0`).
const SETTINGS_SUBCOMMANDS: [&str; 2] = ["serve", "check-config"];

/// The prefix of the gateway's own environment variables.
const OWN_PREFIX: &str = "TELEMETRY_GATEWAY_";

/// A parsed command line, with what is needed to say where each setting came from.
#[derive(Debug)]
pub struct ParsedCli {
    /// The settings and the subcommand.
    pub cli: Cli,
    matches: ArgMatches,
}

/// The command line parser. clap reads the environment itself; `lookup` tells which variables
/// are set but empty, which are treated as unset.
pub fn command(lookup: &dyn Fn(&OsStr) -> Option<OsString>) -> clap::Command {
    let settings: Vec<Arg> = Cli::command()
        .get_arguments()
        .filter(|arg| arg.get_env().is_some())
        .map(|arg| {
            // Only what is written after the subcommand: the environment and the defaults are
            // read once, by the top-level arguments.
            arg.clone().env(None).default_value(None).required(false)
        })
        .collect();
    let mut command = forget_empty_env(Cli::command(), lookup);
    for name in SETTINGS_SUBCOMMANDS {
        command = command.mut_subcommand(name, |sub| sub.args(settings.clone()));
    }
    command
}

/// Drops the `env` of every argument (recursively) whose variable is set but empty.
fn forget_empty_env(
    command: clap::Command,
    lookup: &dyn Fn(&OsStr) -> Option<OsString>,
) -> clap::Command {
    command
        .mut_args(|arg| {
            let empty = arg
                .get_env()
                .and_then(lookup)
                .is_some_and(|value| value.is_empty());
            if empty { arg.env(None) } else { arg }
        })
        .mut_subcommands(|sub| forget_empty_env(sub, lookup))
}

impl ParsedCli {
    /// Parses the process's arguments and environment.
    pub fn from_env() -> Result<ParsedCli, clap::Error> {
        ParsedCli::parse_from(std::env::args_os(), &|name| std::env::var_os(name))
    }

    /// Parses `args`; `lookup` reads environment variables (to find the empty ones).
    pub fn parse_from<I, T>(
        args: I,
        lookup: &dyn Fn(&OsStr) -> Option<OsString>,
    ) -> Result<ParsedCli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut parser = command(lookup);
        let matches = parser.try_get_matches_from_mut(args)?;
        let mut cli = Cli::from_arg_matches(&matches).map_err(|err| err.format(&mut parser))?;
        if let Some((name, sub)) = matches.subcommand()
            && SETTINGS_SUBCOMMANDS.contains(&name)
        {
            cli.config
                .update_from_arg_matches(sub)
                .map_err(|err| err.format(&mut parser))?;
        }
        Ok(ParsedCli { cli, matches })
    }

    /// Every setting with its effective value and where it came from, in `--help` order.
    pub fn effective_settings(&self) -> Vec<EffectiveSetting> {
        let after = self
            .matches
            .subcommand()
            .filter(|(name, _)| SETTINGS_SUBCOMMANDS.contains(name))
            .map(|(_, sub)| sub);
        Cli::command()
            .get_arguments()
            .filter_map(|arg| {
                let variable = arg.get_env()?.to_string_lossy().into_owned();
                let id = arg.get_id().as_str();
                let matches = match after {
                    Some(sub) if sub.value_source(id) == Some(ValueSource::CommandLine) => sub,
                    _ => &self.matches,
                };
                let value = matches.get_raw(id).map(|values| {
                    values
                        .map(|value| value.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join(",")
                });
                let origin = match matches.value_source(id) {
                    Some(ValueSource::CommandLine) => Origin::Flag,
                    Some(ValueSource::EnvVariable) => Origin::Environment,
                    Some(ValueSource::DefaultValue) => Origin::Default,
                    _ => Origin::Unset,
                };
                Some(EffectiveSetting {
                    variable,
                    value,
                    origin,
                    secret: arg.is_hide_env_values_set(),
                })
            })
            .collect()
    }
}

/// One setting's effective value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveSetting {
    /// The environment variable.
    pub variable: String,
    /// The value, `None` when unset; several values are joined with commas.
    pub value: Option<String>,
    /// Where the value came from.
    pub origin: Origin,
    /// A secret: never printed.
    pub secret: bool,
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag,
    /// The environment variable.
    Environment,
    /// The built-in default.
    Default,
    /// Nowhere: the setting is unset.
    Unset,
}

impl std::fmt::Display for EffectiveSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let origin = match self.origin {
            Origin::Flag => "flag",
            Origin::Environment => "environment",
            Origin::Default => "default",
            Origin::Unset => "unset",
        };
        match &self.value {
            None => write!(f, "{}= ({origin})", self.variable),
            Some(_) if self.secret => write!(f, "{}=<redacted> ({origin})", self.variable),
            Some(value) => write!(f, "{}={value} ({origin})", self.variable),
        }
    }
}

/// The `TELEMETRY_GATEWAY_*` variables among `variables` that name no setting, sorted.
pub fn unknown_variables(variables: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<String> {
    let mut known = BTreeSet::new();
    collect_env_names(&Cli::command(), &mut known);
    let mut unknown: Vec<String> = variables
        .into_iter()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with(OWN_PREFIX) && !known.contains(name))
        .collect();
    unknown.sort();
    unknown.dedup();
    unknown
}

fn collect_env_names(command: &clap::Command, known: &mut BTreeSet<String>) {
    for arg in command.get_arguments() {
        if let Some(env) = arg.get_env() {
            known.insert(env.to_string_lossy().into_owned());
        }
    }
    for sub in command.get_subcommands() {
        collect_env_names(sub, known);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Command;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<ParsedCli, clap::Error> {
        let env: Vec<(OsString, OsString)> = env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
        let lookup = move |name: &OsStr| {
            env.iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        let args = std::iter::once("telemetry-gateway").chain(args.iter().copied());
        ParsedCli::parse_from(args, &lookup)
    }

    #[test]
    fn an_empty_environment_value_means_unset() {
        let parsed = parse(
            &[],
            &[
                ("PORT", ""),
                ("DIAGNOSTICS_SECRET", ""),
                ("TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID", ""),
                ("MSP", ""),
                ("TELEMETRY_GATEWAY_SHUTDOWN_TIMEOUT", ""),
            ],
        )
        .expect("empty values parse");
        let config = parsed.cli.config;
        assert_eq!(config.server.port, 10085);
        assert_eq!(config.server.diagnostics_secret, None);
        assert_eq!(config.events.settings.pubsub.pubsub_project_id, None);
        assert!(!config.server.msp);
        assert_eq!(
            config.server.shutdown_timeout,
            std::time::Duration::from_secs(10)
        );
    }

    #[test]
    fn settings_are_accepted_before_or_after_serve() {
        for args in [
            &["serve", "--port", "0"][..],
            &["--port", "0", "serve"][..],
            &["--port", "0"][..],
        ] {
            let parsed = parse(args, &[("PORT", "7")]).expect("parses");
            assert_eq!(parsed.cli.config.server.port, 0, "{args:?}");
        }
        let parsed = parse(&["--port", "7", "serve", "--msp", "true"], &[]).expect("parses");
        assert!(matches!(parsed.cli.command, Some(Command::Serve)));
        assert!(parsed.cli.config.server.msp);
        assert_eq!(
            parsed.cli.config.server.port, 7,
            "a setting not given after serve keeps its earlier value"
        );
    }

    #[test]
    fn a_flag_after_serve_wins_over_one_before() {
        let parsed = parse(&["--port", "1", "serve", "--port", "2"], &[]).expect("parses");
        assert_eq!(parsed.cli.config.server.port, 2);
    }

    #[test]
    fn effective_settings_say_where_each_value_came_from_and_hide_secrets() {
        let parsed = parse(
            &[
                "--sentry-dsn",
                "https://key@sentry.invalid/1",
                "check-config",
                "--port",
                "0",
            ],
            &[],
        )
        .expect("parses");
        let settings = parsed.effective_settings();
        let find = |variable: &str| {
            settings
                .iter()
                .find(|setting| setting.variable == variable)
                .unwrap_or_else(|| panic!("{variable} is listed"))
                .to_string()
        };
        assert_eq!(find("PORT"), "PORT=0 (flag)");
        assert_eq!(find("SENTRY_DSN"), "SENTRY_DSN=<redacted> (flag)");
        assert_eq!(find("MSP"), "MSP=false (default)");
        assert_eq!(
            find("TELEMETRY_GATEWAY_SAMS_CLIENT_ID"),
            "TELEMETRY_GATEWAY_SAMS_CLIENT_ID= (unset)"
        );
    }

    #[test]
    fn unknown_own_variables_are_reported_and_others_ignored() {
        let vars = [
            ("TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC", "typo"),
            ("TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC_ID", "events"),
            ("TELEMETRY_GATEWAY_SEND_ENDPOINT", "https://x"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        assert_eq!(
            unknown_variables(vars),
            vec!["TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC".to_string()]
        );
    }
}
