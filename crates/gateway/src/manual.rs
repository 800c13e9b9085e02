//! Shell completions (clap_complete) and the manual page (clap_mangen), generated from the same
//! definitions as `--help` and docs/configuration.md.

use std::io::Write;

use clap::CommandFactory;

use crate::config::Cli;

/// The name the binary is installed as.
const BIN: &str = "telemetry-gateway";

/// Writes the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> std::io::Result<()> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, BIN, &mut script);
    out.write_all(&script)
}

/// Writes the manual page, in roff: every setting with its variable and default, and the
/// subcommands.
pub fn man_page(out: &mut dyn Write) -> std::io::Result<()> {
    let command = Cli::command();
    clap_mangen::Man::new(command.clone()).render(out)?;
    // clap_mangen leaves out the environment variables, which is how the gateway is mostly
    // configured: a section of their own, variable to flag.
    writeln!(out, ".SH ENVIRONMENT")?;
    writeln!(
        out,
        "Every option above is also read from an environment variable (the flag wins); an empty \
         value counts as unset. The full reference is docs/configuration.md."
    )?;
    for arg in command.get_arguments() {
        let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        writeln!(out, ".TP")?;
        writeln!(out, "\\fB{}\\fR", roff_escape(&env.to_string_lossy()))?;
        writeln!(out, "\\-\\-{}", roff_escape(long))?;
    }
    Ok(())
}

/// Text as roff shows it literally: hyphens and backslashes escaped.
fn roff_escape(text: &str) -> String {
    text.replace('\\', "\\e").replace('-', "\\-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manual_page_lists_the_settings_with_their_variables() {
        let mut page = Vec::new();
        man_page(&mut page).expect("renders");
        let page = String::from_utf8(page).expect("roff is text");
        assert!(page.starts_with(".ie"), "{page:.200}");
        for text in [
            "telemetry\\-gateway",
            "\\-\\-events\\-sinks",
            "TELEMETRY_GATEWAY_EVENTS_SINKS",
            "TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC_ID",
            "\\-\\-events\\-pubsub\\-topic\\-id",
            "check\\-config",
        ] {
            assert!(
                page.contains(text),
                "{text} is missing from the manual page"
            );
        }
    }

    #[test]
    fn completions_know_the_subcommands_and_flags_in_every_shell() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut script = Vec::new();
            completions(shell, &mut script).expect("generates");
            let script = String::from_utf8(script).expect("scripts are text");
            for word in ["check-config", "replay", "events-sinks", "port"] {
                assert!(script.contains(word), "{shell}: {word} is missing");
            }
        }
    }
}
