//! Serves the HTTP API's router until the drain closes: in-flight requests finish, new
//! connections are refused.

use tokio::net::TcpListener;

use super::drain::Drain;

pub async fn serve(listener: TcpListener, router: axum::Router, drain: Drain) -> std::io::Result<()> {
    let addr = listener.local_addr().map(|addr| addr.to_string()).unwrap_or_default();
    tracing::info!(%addr, "serving the HTTP API: POST /v1/check, POST /v1/peek, /v1/auth");
    axum::serve(listener, router).with_graceful_shutdown(drain.closing()).await
}
