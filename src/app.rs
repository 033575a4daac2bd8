//! Wires a store, the limiter, the gRPC server and the metrics endpoint, and runs
//! them until shutdown.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::config::{Config, StoreConfig};
use crate::grpc::envoy::RateLimitServiceServer;
use crate::grpc::pb::rate_limiter_server::RateLimiterServer;
use crate::grpc::{EnvoyRateLimitService, Health, RateLimiterService};
use crate::limiter::{FailureMode, Limiter};
use crate::metrics::{self, Exposition, MetricsError, Throttled};
use crate::reload;
use crate::store::{MemoryStore, RedisStore, Store, StoreError};
use crate::workers;

/// Requests are a key of at most 256 bytes and a cost: anything near this is abuse.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Concurrent calls one HTTP/2 connection may have open.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// How often the in-process store drops keys whose window has passed, and the
/// deny cache the denials that time has undone.
const EVICTION_INTERVAL: Duration = Duration::from_secs(1);
/// HTTP/2 pings find connections whose client vanished (their streams are then freed).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often gRPC health catches up with the store's health.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How often an idle replica checks that Redis still answers.
const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot set up the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the metrics endpoint failed: {0}")]
    MetricsEndpoint(std::io::Error),
    #[error("cannot start a gRPC worker thread: {0}")]
    Worker(std::io::Error),
    #[error("a gRPC worker thread stopped unexpectedly")]
    WorkerStopped,
    #[error(transparent)]
    NoWorkers(#[from] workers::NoWorkers),
    #[error("the gRPC acceptor stopped unexpectedly")]
    AcceptorStopped,
    #[error("cannot set up server reflection: {0}")]
    Reflection(String),
    #[error("--tls-cert, --tls-key or --tls-client-ca do not make a usable TLS configuration: {0}")]
    Tls(tonic::transport::Error),
}

/// The already-bound sockets to serve on (tests bind port 0).
pub struct Listeners {
    pub grpc: TcpListener,
    /// `None` serves no `/metrics` (metrics are still recorded).
    pub metrics: Option<TcpListener>,
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
    let throttled = Arc::new(Throttled::new(config.throttle));
    let (stop, stopping) = watch::channel(false);
    let forward = tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let endpoint = listeners.metrics.map(|listener| {
        let exposition =
            Exposition { handle: handle.clone(), throttled: throttled.clone(), policies: config.policies.clone() };
        tokio::spawn(metrics::serve(listener, exposition, stopped(stopping.clone())))
    });
    let reporter = tokio::spawn(report(throttled.clone(), handle));
    let reloader = config.limits_file.clone().map(|file| {
        let (hangup, hangups) = tokio::sync::mpsc::channel(1);
        let forward = tokio::spawn(reload::forward_hangups(hangup));
        let watch = tokio::spawn(reload::watch(file, config.policies.clone(), hangups, stopped(stopping.clone())));
        (forward, watch)
    });
    let served = serve_on_store(listeners.grpc, &config, throttled, stopped(stopping)).await;
    reporter.abort();
    forward.abort();
    if let Some((hangups, watch)) = reloader {
        hangups.abort();
        watch.abort();
    }
    if let Some(endpoint) = endpoint {
        endpoint.abort();
        if let Ok(Err(e)) = endpoint.await {
            return Err(AppError::MetricsEndpoint(e));
        }
    }
    served
}

async fn serve_on_store(
    listener: TcpListener,
    config: &Config,
    throttled: Arc<Throttled>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let (policies, fingerprinter) = (config.policies.clone(), config.fingerprinter.clone());
    match &config.store {
        StoreConfig::Memory => {
            tracing::warn!("no --redis-url: using the in-process store, so limits are per process, not shared");
            let limiter = Arc::new(Limiter::new(MemoryStore::new(), policies, fingerprinter, throttled));
            let janitor = tokio::spawn(evict_idle(Arc::downgrade(&limiter)));
            let served = serve(listener, limiter, config, shutdown).await;
            janitor.abort();
            served
        }
        StoreConfig::Redis(options) => {
            let store = RedisStore::new(options.clone())?;
            let mode = options.endpoint.mode();
            match store.prepare().await {
                Ok(()) => {
                    tracing::info!(key_prefix = %options.key_prefix, mode, "Redis store ready; limits are shared")
                }
                Err(e) => tracing::error!(error = %e, "Redis not reachable yet; failure modes answer until it is"),
            }
            if config.expected_replicas == 1 && config.policies.current().default.failure == FailureMode::Local {
                tracing::warn!(
                    "failure mode local with --expected-replicas 1: while Redis is down each replica admits a whole \
                     limit; set it to the number of replicas sharing this Redis"
                );
            }
            let mut limiter = Limiter::new(store, policies, fingerprinter, throttled)
                .with_expected_replicas(config.expected_replicas);
            if config.deny_cache {
                limiter = limiter.with_deny_cache();
            }
            let limiter = Arc::new(limiter);
            let probe = tokio::spawn(probe_redis(Arc::downgrade(&limiter)));
            let served = serve(listener, limiter, config, shutdown).await;
            probe.abort();
            served
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
    let (health, health_service) = Health::new();
    let reflection = crate::grpc::reflection().map_err(AppError::Reflection)?;
    // Registered before serving: a check that arrives first must not find the service unknown.
    let up = limiter.store_is_up();
    health.set(up).await;
    let follower = tokio::spawn(follow_store(Arc::downgrade(&limiter), health.clone(), up));
    let envoy = RateLimitServiceServer::new(EnvoyRateLimitService::new(limiter.clone(), &config.envoy_api_key_entry))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let service = RateLimiterServer::new(RateLimiterService::new(limiter)).max_decoding_message_size(MAX_MESSAGE_BYTES);
    // `draining` starts the grace period; `stop` ends the workers' accepting and lets
    // their calls finish; dropping `abandon` (when this returns) ends them for good.
    let (stop, stopping) = watch::channel(false);
    let (abandon, abandoned) = watch::channel(false);
    let draining = Arc::new(Notify::new());
    let signal = {
        let draining = draining.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; finishing in-flight calls");
            follower.abort();
            health.set(false).await;
            draining.notify_one();
            let _ = stop.send(true);
        }
    };
    let mut builder = Server::builder()
        .timeout(config.request_timeout)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION));
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls_config(tls)).map_err(AppError::Tls)?;
    }
    // Each worker thread is an event loop serving the connections the acceptor (on this
    // thread) gives it, from start to end: see `workers`.
    let mut inboxes = Vec::with_capacity(config.worker_threads);
    let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
    for worker in 0..config.worker_threads {
        let (handle, inbox) = workers::worker();
        let router = builder
            .clone()
            .add_service(service.clone())
            .add_service(envoy.clone())
            .add_service(health_service.clone())
            .add_service(reflection.clone());
        let (stopping, abandoned) = (stopping.clone(), abandoned.clone());
        let report = Report(Some(report.clone()));
        std::thread::Builder::new()
            .name(format!("ratelimitd-worker-{worker}"))
            .spawn(move || {
                // Calls made on this thread use the Redis connection of the same number.
                RedisStore::bind_thread(worker);
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => return report.send(Err(AppError::Worker(e))),
                };
                runtime.block_on(async move {
                    let incoming = inbox.into_stream();
                    let served = tokio::select! {
                        served = router.serve_with_incoming_shutdown(incoming, stopped(stopping)) => {
                            served.map_err(AppError::from)
                        }
                        () = stopped(abandoned.clone()) => Ok(()),
                    };
                    report.send(served);
                    // The Redis connections this event loop drives may serve other workers'
                    // calls (fewer connections than workers, or one a worker left in the
                    // pool): the loop runs until every worker is done.
                    stopped(abandoned).await;
                });
            })
            .map_err(AppError::Worker)?;
        inboxes.push(handle);
    }
    drop(report);
    let mut acceptor = tokio::spawn(workers::accept(listener, inboxes, stopped(stopping)));
    tracing::info!(
        %addr,
        workers = config.worker_threads,
        "serving ratelimit.v1.RateLimiter, envoy.service.ratelimit.v3.RateLimitService, grpc.health.v1.Health and reflection"
    );
    // Done when every worker is; the first failure (a worker's, or the acceptor's once
    // no worker is left) ends serving.
    let served = async {
        for _ in 0..config.worker_threads {
            match reports.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(e),
                None => return Err(AppError::WorkerStopped),
            }
        }
        Ok(())
    };
    let accepting = async {
        match (&mut acceptor).await {
            // Stopped accepting at shutdown: serving ends when the workers are done.
            Ok(Ok(())) => std::future::pending().await,
            Ok(Err(e)) => Err(AppError::from(e)),
            Err(_) => Err(AppError::AcceptorStopped),
        }
    };
    let grace = config.shutdown_grace;
    let signal = tokio::spawn(signal);
    let outcome = tokio::select! {
        served = served => served,
        failed = accepting => failed,
        () = async { draining.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "grace period over; exiting with calls still in flight");
            Ok(())
        }
    };
    signal.abort();
    acceptor.abort();
    drop(abandon);
    outcome?;
    tracing::info!("stopped");
    Ok(())
}

/// A worker thread's outcome, sent once: by the thread, or by this guard if the thread
/// ends (panics) without sending.
struct Report(Option<tokio::sync::mpsc::UnboundedSender<Result<(), AppError>>>);

impl Report {
    fn send(mut self, outcome: Result<(), AppError>) {
        if let Some(report) = self.0.take() {
            let _ = report.send(outcome);
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if let Some(report) = self.0.take() {
            let _ = report.send(Err(AppError::WorkerStopped));
        }
    }
}

fn tls_config(tls: &crate::config::TlsFiles) -> ServerTlsConfig {
    let config = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key));
    match &tls.client_ca {
        Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
        None => config,
    }
}

/// Resolves once shutdown is signalled (or its sender is gone).
async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// Rotates the throttled-keys report each interval and drains histogram buffers.
async fn report(throttled: Arc<Throttled>, handle: metrics_exporter_prometheus::PrometheusHandle) {
    let period = throttled.interval();
    let mut rotate = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut upkeep = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = rotate.tick() => throttled.rotate(),
            _ = upkeep.tick() => handle.run_upkeep(),
        }
    }
}

/// Keeps gRPC health SERVING while the store answers and NOT_SERVING while it does
/// not (as the limiter last saw it: a call's outcome or a probe's). Runs until the
/// limiter is dropped, or shutdown takes health over.
async fn follow_store<S: Store>(limiter: Weak<Limiter<S>>, health: Health, mut serving: bool) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        tick.tick().await;
        let Some(up) = limiter.upgrade().map(|limiter| limiter.store_is_up()) else { return };
        if serving != up {
            tracing::info!(serving = up, "gRPC health follows the store");
            health.set(up).await;
            serving = up;
        }
    }
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

/// Keeps `ratelimitd_store_up` true to Redis even when no checks arrive, and drops
/// the deny cache's expired entries. Runs until the limiter is dropped.
async fn probe_redis(limiter: Weak<Limiter<RedisStore>>) {
    let mut probe = tokio::time::interval(STORE_PROBE_INTERVAL);
    let mut sweep = tokio::time::interval(EVICTION_INTERVAL);
    loop {
        tokio::select! {
            _ = probe.tick() => {
                let Some(limiter) = limiter.upgrade() else { return };
                let answer = limiter.store().ping().await;
                limiter.note_store_health(answer.is_ok());
            }
            _ = sweep.tick() => {
                let Some(limiter) = limiter.upgrade() else { return };
                if let Some(cache) = limiter.deny_cache() {
                    cache.evict_expired();
                }
                limiter.local_store().evict_idle();
            }
        }
    }
}
