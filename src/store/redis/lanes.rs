//! The store's connections to Redis, one per lane: each lane keeps one multiplexed
//! connection checked out of its deadpool-redis pool and shares it among concurrent
//! calls, since a multiplexed connection pipelines them (going back to the pool per
//! call would add a PING round trip, deadpool's recycle check). Calls are bounded by
//! the timeout; a connection given up on is replaced.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::{ErrorKind, RedisError, Script, ScriptInvocation, ServerErrorKind, Value};
use tokio::sync::RwLock;

use super::clock::RedisClock;
use super::connect::{Conn, Pooled, Pools};
use super::script::{
    CallOptions, Check, Owed, Reply, group_invocation, invocation, owed_invocation, owed_replies, replies_of,
};
use crate::store::StoreError;
use crate::sync::CallerDeadline;

/// Time kept, before the caller's deadline, to answer it (at least this, or a tenth of the
/// caller's wait): a check still undecided then is answered by its failure mode.
const ANSWER_MARGIN: Duration = Duration::from_millis(2);

thread_local! {
    /// The lane of this thread's checks (see [`Lanes::bind_thread`]); `None` spreads
    /// them over the lanes in turn. A thread-local because the lane belongs to the
    /// thread, not to the call: a connection's driver runs on the event loop that opened
    /// it, and a gRPC call reaches the store through tonic with no way to carry it.
    static THREAD_LANE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// A lane's connection: held out of the pool, and the handle its calls clone.
struct Lane {
    pooled: Pooled,
    conn: Conn,
}

/// The lanes: the first `checks` carry checks, the last one PING and SCRIPT LOAD, so
/// that its connection is not driven by another thread than the checks'.
pub(super) struct Lanes {
    pools: Pools,
    lanes: Box<[RwLock<Option<Lane>>]>,
    next_lane: AtomicUsize,
    pub(super) script: Script,
    /// The script flagged allow-oom, for calls while Redis is full.
    full_script: Script,
    pub(super) timeout: Duration,
    /// The server's bound on a whole call (`--request-timeout`): no caller waits longer.
    longest_wait: Duration,
    /// Count the previous release's rings too (see [`super::RedisOptions`]).
    previous_layout: bool,
    /// What is known of Redis's clock, to send callers' deadlines on it.
    clock: RedisClock,
    /// A cluster connection follows the topology by itself and is never reset.
    cluster: bool,
}

impl Lanes {
    pub(super) fn new(
        pools: Pools,
        checks: usize,
        script: Script,
        options: &super::RedisOptions,
        cluster: bool,
    ) -> Self {
        let lanes = (0..=checks).map(|_| RwLock::new(None)).collect();
        let (timeout, longest_wait, previous_layout) = (options.timeout, options.longest_wait, options.previous_layout);
        let (next_lane, clock) = (AtomicUsize::new(0), RedisClock::default());
        let full_script = super::script::full_script();
        Self { pools, lanes, next_lane, script, full_script, timeout, longest_wait, previous_layout, clock, cluster }
    }

    /// Makes this thread's checks use lane `worker` mod the check lanes: a worker thread
    /// bound to its own connection sends and receives its calls batched, without
    /// handing them to another thread. Unbound threads use the lanes in turn.
    pub(super) fn bind_thread(worker: usize) {
        THREAD_LANE.set(Some(worker));
    }

    /// The lane for PING and SCRIPT LOAD.
    pub(super) fn control_lane(&self) -> usize {
        self.lanes.len() - 1
    }

    /// The lane for a check made on this thread.
    pub(super) fn check_lane(&self) -> usize {
        let checks = self.lanes.len() - 1;
        match THREAD_LANE.get() {
            Some(worker) => worker % checks,
            None => self.next_lane.fetch_add(1, Ordering::Relaxed) % checks,
        }
    }

    /// How long a check made at `now` waits for Redis: as long as its caller waits (at
    /// most the server's own bound on a call), less the margin to answer it;
    /// `--redis-timeout` when the caller sent no deadline.
    pub(super) fn wait_until(&self, now: Instant) -> Instant {
        match CallerDeadline::current() {
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(now).min(self.longest_wait);
                now + wait.saturating_sub(ANSWER_MARGIN.max(wait / 10))
            }
            None => now + self.timeout,
        }
    }

    /// Learns from a reply received now that Redis's clock read `redis_ms` before sending it.
    pub(super) fn observe_clock(&self, redis_ms: u64) {
        self.clock.observe(redis_ms);
    }

    /// One script call deciding `checks` in order (with `group`, as one all-or-nothing
    /// request): one reply per check, or the call's failure. The call counts nothing if
    /// Redis runs it after `until`, when its callers have stopped waiting (see `clock`).
    pub(super) async fn eval(
        &self,
        lane: usize,
        checks: &[Check<'_>],
        group: bool,
        until: Instant,
    ) -> Result<Vec<Result<Reply, StoreError>>, StoreError> {
        let call = |full, options| {
            let script = self.script_for(full);
            let invocation =
                if group { group_invocation(script, checks, options) } else { invocation(script, checks, options) };
            self.send(lane, invocation)
        };
        let replies = replies_of(checks, self.call(until, call).await?)?;
        let earliest = replies.iter().filter_map(|r| r.as_ref().ok()?.values().get(1).copied()).min();
        if let Some(decided_at) = earliest {
            self.clock.observe(decided_at);
        }
        Ok(replies)
    }

    /// One script call counting `owed` requests (see [`Owed`]): for each, counted or why not.
    pub(super) async fn owe(
        &self,
        lane: usize,
        owed: &[Owed<'_>],
        until: Instant,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let call = |full, options| {
            let script = self.script_for(full);
            let invocation = owed_invocation(script, owed, options);
            self.send(lane, invocation)
        };
        owed_replies(owed.len(), self.call(until, call).await?)
    }

    async fn send(&self, lane: usize, invocation: ScriptInvocation<'_>) -> Result<Vec<Value>, Failure> {
        Ok(invocation.invoke_async::<Vec<Value>>(&mut self.connection(lane).await?).await?)
    }

    /// The script, or (`full`) its allow-oom copy.
    fn script_for(&self, full: bool) -> &Script {
        if full { &self.full_script } else { &self.script }
    }

    /// Makes one script call by `call(full, options)` (`full`: with the allow-oom script), by
    /// `until` on Redis's clock; again with the allow-oom script if Redis is full.
    async fn call<F, C>(&self, until: Instant, call: C) -> Result<Vec<Value>, StoreError>
    where
        C: Fn(bool, CallOptions) -> F,
        F: Future<Output = Result<Vec<Value>, Failure>>,
    {
        let started = Instant::now();
        let deadline = self.clock.deadline_ms(until);
        let options =
            CallOptions { clock: None, previous_layout: self.previous_layout, deadline, existing_only: false };
        let mut result = call(false, options).await;
        if matches!(&result, Err(Failure::Redis(e)) if e.code() == Some("OOM")) {
            // Redis is full and refused the call's first write (so nothing was written):
            // again, counting only where keys have room. Existing keys stay exact; a
            // request that needs room fails alone, answered by its failure mode.
            let options = CallOptions { existing_only: true, ..options };
            result = call(true, options).await;
        }
        match result {
            Ok(values) => Ok(values),
            // Run after its callers' deadline: nothing was counted, and they have been answered.
            Err(Failure::Redis(e)) if e.code() == Some("LATE") => {
                Err(StoreError::Timeout(until.saturating_duration_since(started)))
            }
            Err(Failure::Redis(e)) => Err(self.failed(e)),
            Err(Failure::Store(e)) => Err(e),
        }
    }

    /// Bounds a call by `until`. A call that hangs may be on a dead connection (a hung or
    /// unplugged Redis sends no reset), so its lane reconnects.
    pub(super) async fn bounded<T>(
        &self,
        lane: usize,
        until: Instant,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let waited = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout_at(until.into(), call).await {
            Ok(result) => result,
            Err(_) => {
                self.reset(lane);
                Err(StoreError::Timeout(waited))
            }
        }
    }

    /// Classifies a failed call, and replaces connections that cannot serve again:
    /// broken, or to a Redis that is no longer a writable master.
    pub(super) fn failed(&self, e: RedisError) -> StoreError {
        let demoted = matches!(e.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown));
        if e.is_unrecoverable_error() || e.is_io_error() || demoted {
            tracing::debug!(error = %e, "reconnecting every Redis lane");
            self.reset_all();
        }
        classify(e)
    }

    pub(super) async fn connection(&self, lane: usize) -> Result<Conn, StoreError> {
        if let Some(held) = self.lanes[lane].read().await.as_ref() {
            return Ok(held.conn.clone());
        }
        // One caller per lane connects (holding the write lock); the others wait for
        // it rather than taking more connections from the pool than there are lanes.
        let mut slot = self.lanes[lane].write().await;
        if let Some(held) = slot.as_ref() {
            return Ok(held.conn.clone());
        }
        // In a task of its own: a caller whose deadline passes leaves it running, and the
        // connection it makes waits in the pool for the next caller.
        let pools = self.pools.clone();
        let connecting = tokio::spawn(async move { pools.get().await });
        let got = connecting.await.unwrap_or_else(|e| Err(StoreError::Unavailable(format!("connecting failed: {e}"))));
        match got {
            Ok((pooled, conn)) => {
                *slot = Some(Lane { pooled, conn: conn.clone() });
                Ok(conn)
            }
            Err(e) => {
                // Redis cannot be reached: the other lanes' connections are as dead.
                drop(slot);
                self.reset_all();
                Err(e)
            }
        }
    }

    /// Drops a lane's connection (out of the pool for good: see [`Pooled::detach`]);
    /// the lane's next call gets a new one. A lane that is busy connecting is left alone.
    fn reset(&self, lane: usize) {
        // A cluster connection reconnects the node that failed and follows topology
        // changes by itself; dropping it would cut off every healthy master too.
        if self.cluster {
            return;
        }
        if let Ok(mut slot) = self.lanes[lane].try_write()
            && let Some(held) = slot.take()
        {
            held.pooled.detach();
        }
    }

    /// A broken or demoted connection means the Redis behind every lane went away or
    /// changed role (a restart, a failover): all lanes reconnect, so the calls that
    /// follow do not each find another dead lane.
    fn reset_all(&self) {
        for lane in 0..self.lanes.len() {
            self.reset(lane);
        }
    }
}

/// Transient failures (connection, loading, failover) may succeed on retry; the
/// rest (a script error, a key of another type under our prefix) need an operator.
fn classify(e: RedisError) -> StoreError {
    let transient = e.is_io_error()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            )
        );
    if transient { StoreError::Unavailable(e.to_string()) } else { StoreError::Rejected(e.to_string()) }
}

/// Why a script call failed: Redis said so, or no connection could be had.
enum Failure {
    Redis(RedisError),
    Store(StoreError),
}

impl From<RedisError> for Failure {
    fn from(e: RedisError) -> Self {
        Self::Redis(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}
