//! `ratelimitd`: parse the command line, validate it, set up logging, and run.

use std::process::ExitCode;

use clap::Parser;
use ratelimitd::app::{self, Listeners};
use ratelimitd::config::cli::{Cli, Command};
use ratelimitd::config::{self, Config};
use ratelimitd::server::{signal, telemetry};

/// mimalloc: the service allocates per request (HTTP/2 frames, protobuf messages), and
/// glibc's allocator showed up at about 10 % of its CPU in a profile under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The main thread runs the metrics endpoint, probes and reloads; gRPC is served by
/// worker threads of their own (see `server::serve`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command == Some(Command::Fingerprint) {
        return print_fingerprint(&cli);
    }
    let config = match Config::from_cli(cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ratelimitd: error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    let listeners = match bind(&config).await {
        Ok(listeners) => listeners,
        Err(e) => {
            eprintln!("ratelimitd: error: {e}");
            return ExitCode::from(2);
        }
    };
    match app::run(listeners, config, signal::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "ratelimitd stopped");
            ExitCode::FAILURE
        }
    }
}

async fn bind(config: &Config) -> Result<Listeners, String> {
    let bind = |flag: &'static str, addr| async move {
        tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("{flag} {addr}: {e}"))
    };
    let grpc = bind("--listen", config.listen).await?;
    let metrics = bind("--metrics-listen", config.metrics_listen).await?;
    let http = match config.http_listen {
        Some(addr) => Some(bind("--http-listen", addr).await?),
        None => None,
    };
    Ok(Listeners { grpc, metrics: Some(metrics), http })
}

/// `ratelimitd fingerprint`: reads a key on stdin, prints its fingerprint.
fn print_fingerprint(cli: &Cli) -> ExitCode {
    let mut input = String::new();
    let printed = std::io::stdin()
        .read_line(&mut input)
        .map_err(|e| config::ConfigError::FingerprintInput(e.to_string()))
        .and_then(|_| config::fingerprint(cli, &input));
    match printed {
        Ok(fingerprint) => {
            println!("{fingerprint}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ratelimitd: error: {e}");
            ExitCode::from(2)
        }
    }
}
