//! `ratelimitd`: parse the command line, validate it, set up logging, and run.

use std::process::ExitCode;

use ratelimitd::app::{self, Listeners};
use ratelimitd::config::Config;
use ratelimitd::config::commands::{self, Next, fail};
use ratelimitd::server::{signal, telemetry};

/// mimalloc: the service allocates per request (HTTP/2 frames, protobuf messages), and
/// glibc's allocator showed up at about 10 % of its CPU in a profile under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The main thread runs the metrics endpoint, probes and reloads; gRPC is served by
/// worker threads of their own (see `server::serve`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match commands::parse() {
        Next::Serve(cli) => cli,
        Next::Probe(target, service) => return ratelimitd::grpc::probe(&target, &service).await,
        Next::Admin(ask) => {
            let key = match (ask.key_id, ask.fingerprint) {
                (Some(key_id), _) => ratelimitd::grpc::admin::pb::key_request::Key::KeyId(key_id),
                (None, fingerprint) => {
                    ratelimitd::grpc::admin::pb::key_request::Key::Fingerprint(fingerprint.unwrap_or_default())
                }
            };
            let tls = ask.ca.map(|ca| (ca, ask.identity));
            return ratelimitd::grpc::admin::ask(ask.what, &ask.reason, &ask.target, ask.token.as_deref(), key, tls)
                .await;
        }
        Next::Exit(code) => return code,
    };
    let config = match Config::from_cli(*cli) {
        Ok(config) => config,
        Err(e) => return fail(&e.to_string()),
    };
    telemetry::init(config.log_format);
    let listeners = match bind(&config).await {
        Ok(listeners) => listeners,
        Err(e) => return fail(&e),
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
    let admin = match &config.admin {
        Some(admin) => Some(bind("--admin-listen", admin.listen).await?),
        None => None,
    };
    Ok(Listeners { grpc, metrics: Some(metrics), http, admin })
}
