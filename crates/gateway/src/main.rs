use std::process::ExitCode;

use clap::Parser;
use telemetry_gateway::config::{Cli, Command};
use telemetry_gateway::{config_docs, logging, run, shutdown_signal};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::ConfigDocs) => {
            print!("{}", config_docs::render());
            return ExitCode::SUCCESS;
        }
        Some(Command::Serve) | None => {}
    }
    let config = cli.config;
    if config.sanity_check {
        println!("Sanity check passed, exiting without error");
        return ExitCode::SUCCESS;
    }
    let format = config.logging.format(config.server.msp);
    if let Err(err) = logging::init(&config.logging.log_level, format) {
        eprintln!("telemetry-gateway: {err:#}");
        return ExitCode::FAILURE;
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
    match runtime.block_on(run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "telemetry gateway failed");
            eprintln!("telemetry-gateway: {err:#}");
            ExitCode::FAILURE
        }
    }
}
