//! `ratelimitd`: parse the command line, validate it, set up logging, and run.

use std::process::ExitCode;

use clap::Parser;
use ratelimitd::cli::Cli;
use ratelimitd::config::Config;
use ratelimitd::{app, shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let listen = cli.listen;
    let config = match Config::from_cli(cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ratelimitd: error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("ratelimitd: error: --listen {listen}: {e}");
            return ExitCode::from(2);
        }
    };
    match app::run(listener, config, shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "ratelimitd stopped");
            ExitCode::FAILURE
        }
    }
}
