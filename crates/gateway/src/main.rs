use std::process::ExitCode;

use telemetry_gateway::config::{self, Command, ParsedCli};
use telemetry_gateway::telemetry::Telemetry;
use telemetry_gateway::{config_docs, manual, run, shutdown_signal};

fn main() -> ExitCode {
    let parsed = match ParsedCli::from_env() {
        Ok(parsed) => parsed,
        Err(err) => {
            let hint = config::env_hint(&err);
            let _ = err.print();
            if let Some(hint) = hint {
                eprintln!("{hint}");
            }
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
        }
    };
    match parsed.cli.command {
        Some(Command::ConfigDocs) => {
            print!("{}", config_docs::render());
            return ExitCode::SUCCESS;
        }
        Some(Command::Completions { shell }) => {
            return print_or_fail(manual::completions(shell, &mut std::io::stdout()));
        }
        Some(Command::Man) => return print_or_fail(manual::man_page(&mut std::io::stdout())),
        Some(Command::CheckConfig) => return check_config(&parsed),
        Some(Command::Send(args)) => return telemetry_gateway::send::run(*args),
        Some(Command::Replay(args)) => {
            return telemetry_gateway::replay::run(*args, parsed.cli.config);
        }
        Some(Command::Serve) | None => {}
    }
    let config = parsed.cli.config;
    if config.sanity_check {
        println!("Sanity check passed, exiting without error");
        return ExitCode::SUCCESS;
    }
    if let Err(problems) = telemetry_gateway::prepare(&config) {
        eprintln!("telemetry-gateway: invalid configuration:\n{problems}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("telemetry-gateway: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let telemetry = match Telemetry::init(&config) {
            Ok(telemetry) => telemetry,
            Err(err) => {
                eprintln!("telemetry-gateway: {err:#}");
                return ExitCode::FAILURE;
            }
        };
        for variable in config::unknown_variables(std::env::vars_os()) {
            tracing::warn!(
                variable,
                "{variable} is not a setting of the gateway: ignored (a typo?)"
            );
        }
        let ran = run(config, telemetry.prometheus.clone(), shutdown_signal()).await;
        if let Err(err) = &ran {
            // Before the shutdown, which closes Sentry.
            tracing::error!(error = %format!("{err:#}"), "telemetry gateway failed");
        }
        telemetry.shutdown();
        match ran {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("telemetry-gateway: {err:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Success, or the error of writing to stdout.
fn print_or_fail(written: std::io::Result<()>) -> ExitCode {
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("telemetry-gateway: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `telemetry-gateway check-config`: the effective settings, then every problem; exit 0 when the
/// gateway would start with them, 2 when not.
fn check_config(parsed: &ParsedCli) -> ExitCode {
    for setting in parsed.effective_settings() {
        println!("{setting}");
    }
    let mut ok = true;
    for variable in config::unknown_variables(std::env::vars_os()) {
        println!("warning: {variable} is not a setting of the gateway: ignored (a typo?)");
    }
    if let Err(problems) = telemetry_gateway::prepare(&parsed.cli.config) {
        ok = false;
        println!("invalid configuration:");
        for problem in problems.problems() {
            println!("  {problem}");
        }
    }
    if ok {
        println!("configuration OK");
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
