//! The support desk's admin service on its own listener (`--admin-listen`), served by the
//! main thread's event loop until the drain closes it; with the gRPC listener's TLS
//! (`--tls-cert`, and `--tls-client-ca` for mutual TLS) when it has one; `--admin-client-ca`
//! replaces the client CA for this listener.

use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use super::ServeError;
use crate::config::TlsFiles;
use crate::config::admin::AdminConfig;
use crate::grpc::admin::{self, Callers};
use crate::limiter::Limiter;
use crate::store::Store;

pub async fn serve<S: Store>(
    listener: TcpListener,
    limiter: Arc<Limiter<S>>,
    config: &AdminConfig,
    tls: Option<&TlsFiles>,
    closing: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let names: Vec<&str> = config.tokens.iter().map(|(name, _)| name.as_str()).collect();
    let certificates = config.client_ca.is_some();
    tracing::info!(listen = %addr, callers = ?names, tls = tls.is_some(), client_certificates = certificates, "admin service (Inspect, Explain, Reset) listening");
    let service = admin::server(limiter, Callers::new(&config.tokens, certificates));
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        // The desk's own client CA, if it has one, in place of the gRPC listener's.
        let own = TlsFiles { client_ca: config.client_ca.clone().or_else(|| tls.client_ca.clone()), ..tls.clone() };
        builder = builder.tls_config(super::router::tls_config(&own)).map_err(ServeError::Tls)?;
    }
    builder
        .add_service(service)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), closing)
        .await
        .map_err(ServeError::from)
}
