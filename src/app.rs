//! Floor 7, wiring: a store, the limiter and its housekeeping, the gRPC server, the
//! metrics endpoint and the limits file's reload, run until shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::commands::summary;
use crate::config::{Config, StoreConfig, reload};
use crate::limiter::{Limiter, housekeeping};
use crate::metrics::{self, MetricsError, Throttled};
use crate::server::drain::{Drain, FinishOnDrop, Task};
use crate::server::metrics_endpoint::{self, Exposition};
use crate::server::{self, ServeError};
use crate::store::{MemoryStore, RedisStore, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot set up the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("the metrics endpoint failed: {0}")]
    MetricsEndpoint(std::io::Error),
    #[error("the HTTP API failed: {0}")]
    Http(std::io::Error),
}

/// The already-bound sockets to serve on (tests bind port 0).
pub struct Listeners {
    pub grpc: TcpListener,
    /// `None` serves no `/metrics` (metrics are still recorded).
    pub metrics: Option<TcpListener>,
    /// The HTTP API's; `None` serves none.
    pub http: Option<TcpListener>,
    /// The admin service's (`--admin-listen`); `None` serves none.
    pub admin: Option<TcpListener>,
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight calls
/// finish within the configured grace period, and returns.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let handle = metrics::recorder()?;
    metrics::config_loaded(true);
    announce(&config, &listeners);
    let throttled = Arc::new(Throttled::new(config.throttle));
    let drain = Drain::default();
    let _signal = drain.start_on(shutdown);
    let endpoint = listeners.metrics.map(|listener| {
        let exposition =
            Exposition { handle: handle.clone(), throttled: throttled.clone(), policies: config.policies.clone() };
        tokio::spawn(metrics_endpoint::serve(listener, exposition, drain.started()))
    });
    let _reporter = Task::spawn(metrics_endpoint::report(throttled.clone(), handle));
    let _reload = reload_tasks(&config, &drain);
    let served = match &config.store {
        StoreConfig::Memory => {
            tracing::warn!("no --redis-url: using the in-process store, so limits are per process, not shared");
            let limiter = limiter(MemoryStore::new(), &config, throttled);
            serve(limiter, listeners.grpc, listeners.http, listeners.admin, &config, &drain).await
        }
        StoreConfig::Redis(options) => {
            let mut limiter = limiter(redis_store(options.clone()).await?, &config, throttled);
            if config.deny_cache {
                limiter = limiter.with_deny_cache();
            }
            serve(limiter, listeners.grpc, listeners.http, listeners.admin, &config, &drain).await
        }
    };
    if let Some(endpoint) = endpoint {
        endpoint.abort();
        if let Ok(Err(e)) = endpoint.await {
            return Err(AppError::MetricsEndpoint(e));
        }
    }
    served
}

/// One line with what is in force, secrets left out.
fn announce(config: &Config, listeners: &Listeners) {
    let addr = |listener: &TcpListener| listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let (store, endpoint) = match &config.store {
        StoreConfig::Memory => ("in-process", String::new()),
        StoreConfig::Redis(options) => (options.endpoint.mode(), options.endpoint.addresses()),
    };
    let policies = config.policies.current();
    let limits_file = config.limits_file.as_ref().map(|f| f.path.display().to_string()).unwrap_or_default();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        store,
        endpoint,
        policies = %summary(&policies),
        failure_mode = policies.default.failure.as_str(),
        expected_replicas = config.expected_replicas,
        limits_file,
        listen = addr(&listeners.grpc),
        metrics_listen = listeners.metrics.as_ref().map(addr).unwrap_or_default(),
        http_listen = listeners.http.as_ref().map(addr).unwrap_or_default(),
        "ratelimitd starting"
    );
}

/// The limits file's reload on change and on SIGHUP; without a file, SIGHUP (whose
/// default action would end the process) is logged and ignored.
fn reload_tasks(config: &Config, drain: &Drain) -> Vec<Task> {
    let Some(file) = config.limits_file.clone() else { return vec![Task::spawn(reload::ignore_hangups())] };
    let (hangup, hangups) = tokio::sync::mpsc::channel(1);
    let watch = reload::watch(file, config.policies.clone(), hangups, drain.started());
    let ends = crate::config::overrides::watch_ends(config.policies.clone(), drain.started());
    vec![Task::spawn(reload::forward_hangups(hangup)), Task::spawn(watch), Task::spawn(ends)]
}

fn limiter<S: Store>(store: S, config: &Config, throttled: Arc<Throttled>) -> Limiter<S> {
    let (policies, fingerprinter) = (config.policies.clone(), config.fingerprinter.clone());
    Limiter::new(store, policies, fingerprinter, throttled).with_expected_replicas(config.expected_replicas)
}

/// The Redis store, with its script loaded if Redis answers already.
async fn redis_store(options: crate::store::redis::RedisOptions) -> Result<RedisStore, AppError> {
    let (key_prefix, mode, endpoint) =
        (options.key_prefix.clone(), options.endpoint.mode(), options.endpoint.addresses());
    let store = RedisStore::new(options)?;
    match store.prepare().await {
        Ok(()) => tracing::info!(%key_prefix, mode, "Redis store ready; limits are shared"),
        Err(e) => tracing::error!(%endpoint, error = %e, "Redis not reachable yet; failure modes answer until it is"),
    }
    Ok(store)
}

/// Serves the limiter over gRPC (and HTTP if it has a listener), with its
/// housekeeping, until the drain is done.
async fn serve<S: Store>(
    limiter: Limiter<S>,
    grpc: TcpListener,
    http: Option<TcpListener>,
    admin: Option<TcpListener>,
    config: &Config,
    drain: &Drain,
) -> Result<(), AppError> {
    // The worker threads' event loops (which drive the Redis connections) end only when
    // both APIs are done: an HTTP request still in flight keeps its store.
    let _finish = FinishOnDrop(drain.clone());
    let limiter = Arc::new(limiter);
    let _housekeeping = Task::spawn(housekeeping::run(Arc::downgrade(&limiter)));
    let http = http.map(|listener| {
        let router = crate::http::router(limiter.clone(), config.http_key_header.clone());
        tokio::spawn(server::http::serve(listener, router, drain.clone()))
    });
    let _admin = admin.zip(config.admin.clone()).map(|(listener, admin)| {
        let (limiter, closing, tls) = (limiter.clone(), drain.closing(), config.tls.clone());
        Task::spawn(async move {
            if let Err(e) = server::admin::serve(listener, limiter, &admin, tls.as_ref(), closing).await {
                tracing::error!(error = %e, "the admin service stopped");
            }
        })
    });
    let grpc = async {
        let served = server::serve(grpc, limiter, config, drain).await;
        drain.close(); // if serving failed, the HTTP API stops too
        served
    };
    let http = async {
        let Some(mut http) = http else { return Ok(()) };
        drain.closing().await;
        // In-flight HTTP requests have the same grace period as gRPC calls, from the same moment.
        match tokio::time::timeout(config.shutdown_grace, &mut http).await {
            Ok(Ok(Err(e))) => Err(AppError::Http(e)),
            Ok(_) => Ok(()),
            Err(_) => {
                http.abort();
                Ok(())
            }
        }
    };
    let (served, http) = tokio::join!(grpc, http);
    served?;
    http
}
