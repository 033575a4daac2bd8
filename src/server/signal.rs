//! The shutdown signal: resolves on the first SIGTERM (what Kubernetes sends) or SIGINT.

pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
                return;
            }
            Err(e) => tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT will stop the server"),
        }
    }
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::error!(error = %e, "cannot listen for SIGINT; the server will run until killed");
        std::future::pending::<()>().await;
    }
    tracing::info!("SIGINT received");
}
