//! Floor 6, the server: worker threads each serving the connections the acceptor
//! gives them ([`workers`]), the gRPC router ([`router`]), gRPC health following the
//! store, the `/metrics` endpoint ([`metrics_endpoint`]), and the one shutdown type
//! ([`drain`]).

pub mod admin;
pub mod calls;
pub mod drain;
pub mod http;
pub mod metrics_endpoint;
pub mod router;
pub mod signal;
pub mod telemetry;
pub mod workers;

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use self::drain::{Drain, Task};
use self::router::Router;
use crate::config::Config;
use crate::grpc::Health;
use crate::limiter::Limiter;
use crate::store::Store;
use crate::store::redis::RedisStore;

/// How often gRPC health catches up with the store's health.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
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

/// Serves gRPC on `listener` until `drain` starts, then drains: health turns
/// NOT_SERVING, no new connections are taken, and in-flight calls may finish within
/// the configured grace period. The worker threads' event loops run until the caller
/// finishes the drain (`FinishOnDrop`), since other users of the store may need them.
pub async fn serve<S: Store>(
    listener: TcpListener,
    limiter: Arc<Limiter<S>>,
    config: &Config,
    drain: &Drain,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map(|addr| addr.to_string()).unwrap_or_default();
    let (health, health_service) = Health::new();
    // Set before serving: a check that arrives first must not find the service unknown.
    let state = (limiter.store_is_up(), !limiter.store_refuses());
    health.set(state.0, state.1).await;
    let follower = Task::spawn(follow_store(Arc::downgrade(&limiter), health.clone(), state));
    let router = Router::new(limiter, config, health_service)?;
    let _closer = Task::spawn(close_when_drained(drain.clone(), follower, health, config.shutdown_delay));
    let (report, mut reports) = mpsc::unbounded_channel();
    let mut inboxes = Vec::with_capacity(config.worker_threads);
    for worker in 0..config.worker_threads {
        inboxes.push(start_worker(worker, &router, drain, Outcome(Some(report.clone())))?);
    }
    drop(report);
    let mut acceptor = tokio::spawn(workers::accept(listener, inboxes, drain.closing()));
    tracing::info!(
        %addr,
        workers = config.worker_threads,
        "serving ratelimit.v1.RateLimiter, envoy.service.ratelimit.v3.RateLimitService, grpc.health.v1.Health and reflection"
    );
    // Done when every worker is; the first failure (a worker's, or the acceptor's once
    // no worker is left) ends serving.
    let served = async {
        for _ in 0..config.worker_threads {
            reports.recv().await.unwrap_or(Err(ServeError::WorkerStopped))?;
        }
        Ok(())
    };
    let accepting = async {
        match (&mut acceptor).await {
            // Stopped accepting at shutdown: serving ends when the workers are done.
            Ok(Ok(())) => std::future::pending().await,
            Ok(Err(e)) => Err(ServeError::from(e)),
            Err(_) => Err(ServeError::AcceptorStopped),
        }
    };
    let grace = config.shutdown_grace;
    let outcome = tokio::select! {
        served = served => served,
        failed = accepting => failed,
        () = async { drain.closing().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "grace period over; exiting with calls still in flight");
            Ok(())
        }
    };
    acceptor.abort();
    outcome?;
    tracing::info!("stopped");
    Ok(())
}

/// Once draining starts: health stops following the store and says NOT_SERVING; after
/// `delay` (calls are still served meanwhile) the workers stop taking connections and
/// calls, and in-flight ones have the grace period to finish.
async fn close_when_drained(drain: Drain, follower: Task, health: Health, delay: Duration) {
    drain.started().await;
    drop(follower);
    health.set(false, false).await;
    if !delay.is_zero() {
        tracing::info!(?delay, "shutting down: NOT_SERVING, still serving until the delay is over");
        tokio::time::sleep(delay).await;
    }
    tracing::info!("shutting down: no new connections; finishing in-flight calls");
    drain.close();
}

/// Starts worker thread `worker`: an event loop serving the connections the acceptor
/// sends to the returned inbox, until the drain closes them (and finishes it).
fn start_worker(
    worker: usize,
    router: &Router,
    drain: &Drain,
    outcome: Outcome,
) -> Result<workers::Worker, ServeError> {
    let (handle, inbox) = workers::worker();
    let served = router.builder.clone().add_routes(router.routes.clone());
    let (closing, finished) = (drain.closing(), drain.finished());
    let also_finished = drain.finished();
    std::thread::Builder::new()
        .name(format!("ratelimitd-worker-{worker}"))
        .spawn(move || {
            // Calls made on this thread use the Redis connection of the same number.
            RedisStore::bind_thread(worker);
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => return outcome.send(Err(ServeError::Worker(e))),
            };
            runtime.block_on(async move {
                let incoming = inbox.into_stream();
                let result = tokio::select! {
                    served = served.serve_with_incoming_shutdown(incoming, closing) => served.map_err(ServeError::from),
                    () = finished => Ok(()),
                };
                outcome.send(result);
                // The Redis connections this event loop drives may serve other workers'
                // calls (fewer connections than workers, or one a worker left in the
                // pool): the loop runs until every worker is done.
                also_finished.await;
            });
        })
        .map_err(ServeError::Worker)?;
    Ok(handle)
}

/// A worker thread's outcome, sent once: by the thread, or by this guard if the thread
/// ends (panics) without sending.
struct Outcome(Option<mpsc::UnboundedSender<Result<(), ServeError>>>);

impl Outcome {
    fn send(mut self, outcome: Result<(), ServeError>) {
        if let Some(report) = self.0.take() {
            let _ = report.send(outcome);
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if let Some(report) = self.0.take() {
            let _ = report.send(Err(ServeError::WorkerStopped));
        }
    }
}

/// Keeps gRPC health SERVING while the store answers and NOT_SERVING while it does not,
/// and readiness NOT_SERVING while the store refuses calls for good (as the limiter last
/// saw it: a call's outcome or a probe's). Runs until the limiter is dropped, or shutdown
/// takes health over.
async fn follow_store<S: Store>(limiter: Weak<Limiter<S>>, health: Health, mut state: (bool, bool)) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        tick.tick().await;
        let Some(now) = limiter.upgrade().map(|l| (l.store_is_up(), !l.store_refuses())) else { return };
        if state != now {
            tracing::info!(serving = now.0, ready = now.1, "gRPC health follows the store");
            health.set(now.0, now.1).await;
            state = now;
        }
    }
}
