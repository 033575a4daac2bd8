//! Wires a store, the limiter and the gRPC server, and runs them until shutdown.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::config::{Config, StoreConfig};
use crate::grpc::RateLimiterService;
use crate::grpc::pb::rate_limiter_server::RateLimiterServer;
use crate::limiter::Limiter;
use crate::store::{MemoryStore, RedisStore, Store, StoreError};

/// Requests are a key of at most 256 bytes and a cost: anything near this is abuse.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Concurrent calls one HTTP/2 connection may have open.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// How often the in-process store drops keys whose window has passed.
const EVICTION_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot set up the store: {0}")]
    Store(#[from] StoreError),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight calls finish within the configured grace period, and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    match &config.store {
        StoreConfig::Memory => {
            tracing::warn!("no --redis-url: using the in-process store, so limits are per process, not shared");
            let limiter =
                Arc::new(Limiter::new(MemoryStore::new(), config.policies.clone(), config.fingerprinter.clone()));
            let janitor = tokio::spawn(evict_idle(Arc::downgrade(&limiter)));
            let served = serve(listener, limiter, &config, shutdown).await;
            janitor.abort();
            served
        }
        StoreConfig::Redis(options) => {
            let store = RedisStore::new(options.clone())?;
            match store.ping().await {
                Ok(()) => tracing::info!(key_prefix = %options.key_prefix, "Redis store ready; limits are shared"),
                Err(e) => tracing::error!(error = %e, "Redis not reachable yet; calls get UNAVAILABLE until it is"),
            }
            let limiter = Arc::new(Limiter::new(store, config.policies.clone(), config.fingerprinter.clone()));
            serve(listener, limiter, &config, shutdown).await
        }
    }
}

async fn serve<S: Store>(
    listener: TcpListener,
    limiter: Arc<Limiter<S>>,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let addr = listener.local_addr().map(|addr| addr.to_string()).unwrap_or_default();
    let service = RateLimiterServer::new(RateLimiterService::new(limiter)).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let draining = Arc::new(Notify::new());
    let signal = {
        let draining = draining.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; finishing in-flight calls");
            draining.notify_one();
        }
    };
    let server = Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal);
    tracing::info!(%addr, "serving ratelimit.v1.RateLimiter");
    let grace = config.shutdown_grace;
    tokio::select! {
        served = server => served?,
        () = async { draining.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "grace period over; exiting with calls still in flight");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Runs until the limiter is dropped.
async fn evict_idle(limiter: Weak<Limiter<MemoryStore>>) {
    let mut tick = tokio::time::interval(EVICTION_INTERVAL);
    loop {
        tick.tick().await;
        let Some(limiter) = limiter.upgrade() else { return };
        let evicted = limiter.store().evict_idle();
        tracing::trace!(evicted, "evicted idle keys");
    }
}
