use std::process::ExitCode;

use clap::Parser;
use telemetry_gateway::config::{self, Cli, Command};
use telemetry_gateway::telemetry::Telemetry;
use telemetry_gateway::{config_docs, run, shutdown_signal};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let hint = config::env_hint(&err);
            let _ = err.print();
            if let Some(hint) = hint {
                eprintln!("{hint}");
            }
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
        }
    };
    match cli.command {
        Some(Command::ConfigDocs) => {
            print!("{}", config_docs::render());
            return ExitCode::SUCCESS;
        }
        Some(Command::Send(args)) => return telemetry_gateway::send::run(*args),
        Some(Command::Serve) | None => {}
    }
    let config = cli.config;
    if config.sanity_check {
        println!("Sanity check passed, exiting without error");
        return ExitCode::SUCCESS;
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
