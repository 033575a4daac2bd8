//! The Redis store: every decision is made by `lua/sliding_window.lua`, atomic
//! inside Redis and on Redis's clock, so any number of replicas sharing the Redis
//! enforce one exact limit per key. Checks that meet on a connection while its
//! earlier calls are out go together in one EVALSHA (a batch): the script decides
//! them one after another, each as if called alone, so batching changes what a
//! check costs Redis, never what it decides.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool_redis::{PoolConfig, Timeouts};
use redis::{ErrorKind, RedisError, Script, ScriptInvocation, ServerErrorKind, Value};
use tokio::sync::{RwLock, oneshot};

use super::redis_connect::{Conn, Pooled, Pools};
use super::{Store, StoreError};

pub use super::redis_connect::RedisEndpoint;
use crate::limiter::{Decision, Fingerprint, Limits, MAX_WINDOWS, Mode, WindowCheck};
use crate::metrics;

const SCRIPT: &str = include_str!("../../lua/sliding_window.lua");
/// The least time connecting to Redis may take (TCP, TLS handshake, AUTH).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Batches a connection may have out at once. While they are, new checks wait and
/// leave together in the next batch; two keep Redis busy while one answer travels.
const BATCHES_IN_FLIGHT: usize = 2;

/// How to reach Redis and how long to wait for it.
#[derive(Clone)]
pub struct RedisOptions {
    /// Where Redis is; URLs may hold credentials and are never logged.
    pub endpoint: RedisEndpoint,
    /// Put before `{fingerprint}` in every key name.
    pub key_prefix: String,
    /// The bound on each call, connecting included.
    pub timeout: Duration,
    /// Multiplexed connections for checks (one more is opened for PING and SCRIPT LOAD);
    /// each pipelines any number of concurrent calls.
    pub connections: usize,
    /// The most checks one script call decides (1: each check is its own call). Redis
    /// Cluster always gets one per call: a batch's keys would have to share a slot.
    pub batch: usize,
    /// For rediss:// URLs: how to verify the server, and a client certificate.
    pub tls: Option<RedisTls>,
    /// The ACL password, when it does not come in the URL.
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisOptions {
    /// The password is never shown; the endpoint shows only its shape.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("endpoint", &self.endpoint)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("connections", &self.connections)
            .field("batch", &self.batch)
            .field("tls", &self.tls)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// PEM material for TLS to Redis.
#[derive(Clone)]
pub struct RedisTls {
    /// CA certificates to verify the server with; `None` uses the system's.
    pub ca: Option<Vec<u8>>,
    /// Client certificate and key, for servers that require one.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

thread_local! {
    /// The lane this thread's calls use (see [`RedisStore::bind_thread`]); `None`
    /// spreads them over the lanes in turn.
    static THREAD_LANE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Connections come from a deadpool-redis pool (which creates them within the
/// timeout and discards broken ones); each lane keeps one checked out and shares
/// it among concurrent calls, since a multiplexed connection pipelines them. Going
/// back to the pool per call would add a PING round trip (deadpool's recycle check).
/// A lane's connection: held out of the pool, and the handle its calls clone.
type Lane = (Pooled, Conn);

pub struct RedisStore {
    shared: Arc<Shared>,
}

/// What the store's calls share, and the batches they leave in (which may outlive
/// the call that started them).
struct Shared {
    pools: Pools,
    /// Each lane keeps one connection checked out of the pool, and hands out clones.
    /// Checks use the first `connections`; the last one is for PING and SCRIPT LOAD,
    /// so that their connection is not driven by another thread than the checks'.
    lanes: Box<[RwLock<Option<Lane>>]>,
    /// The checks waiting for each check lane's next batch.
    queues: Box<[Mutex<Queue>]>,
    next_lane: AtomicUsize,
    script: Script,
    key_prefix: String,
    timeout: Duration,
    cluster: bool,
    /// The most checks per script call; 1 sends each check on its own.
    batch: usize,
}

/// One check waiting for its batch.
struct Pending {
    key: Vec<u8>,
    limits: Limits,
    cost: u32,
    mode: Mode,
    answer: oneshot::Sender<Result<Reply, StoreError>>,
}

/// A lane's waiting checks, and how many of its batches are out.
#[derive(Default)]
struct Queue {
    waiting: Vec<Pending>,
    in_flight: usize,
}

impl Queue {
    /// The next batch (at most `max` checks), or `None` when nothing waits, which ends
    /// the sender that asked.
    fn next(&mut self, max: usize) -> Option<Vec<Pending>> {
        if self.waiting.is_empty() {
            self.in_flight -= 1;
            return None;
        }
        let rest = self.waiting.split_off(self.waiting.len().min(max));
        Some(std::mem::replace(&mut self.waiting, rest))
    }
}

/// A lane's batch sender. It holds one of the lane's `in_flight` places, and gives it back
/// when it finds nothing waiting, or when it is dropped unfinished (its event loop stopped,
/// even before it first ran); then, if no sender is left, the checks still waiting are
/// answered at once rather than at their deadline.
struct Sender {
    shared: Arc<Shared>,
    lane: usize,
    done: bool,
}

impl Sender {
    /// Sends `batch`, then each batch that queued on the lane meanwhile, until none has.
    async fn run(mut self, mut batch: Vec<Pending>) {
        let (shared, lane) = (&self.shared, self.lane);
        loop {
            // A check whose caller stopped waiting is not counted.
            batch.retain(|check| !check.answer.is_closed());
            if !batch.is_empty() {
                shared.send(lane, batch).await;
            }
            match shared.queues[lane].lock().unwrap_or_else(PoisonError::into_inner).next(shared.batch) {
                Some(next) => batch = next,
                None => break,
            }
        }
        self.done = true;
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let orphans = {
            let mut queue = self.shared.queues[self.lane].lock().unwrap_or_else(PoisonError::into_inner);
            queue.in_flight -= 1;
            if queue.in_flight == 0 { std::mem::take(&mut queue.waiting) } else { Vec::new() }
        };
        for check in orphans {
            let _ = check.answer.send(Err(dropped()));
        }
    }
}

/// The error of a check whose batch was dropped with the event loop running it.
fn dropped() -> StoreError {
    StoreError::Unavailable("the Redis call was dropped: its event loop stopped".into())
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("key_prefix", &self.shared.key_prefix).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Builds the store without connecting: Redis may come up later, and calls
    /// fail with [`StoreError::Unavailable`] until it does.
    pub fn new(options: RedisOptions) -> Result<Self, StoreError> {
        // Connecting (TCP, TLS, AUTH) gets longer than a call: it runs in the background
        // (see `connection`), so a short call deadline does not keep cutting it off.
        let connect = options.timeout.max(CONNECT_TIMEOUT);
        let timeouts = Timeouts { wait: Some(connect), create: Some(connect), recycle: Some(connect) };
        let connections = options.connections.max(1);
        let mut pool_config = PoolConfig::new(connections + 1);
        pool_config.timeouts = timeouts;
        let cluster = matches!(options.endpoint, RedisEndpoint::Cluster(_));
        let shared = Shared {
            cluster,
            pools: Pools::new(&options, pool_config)?,
            lanes: (0..=connections).map(|_| RwLock::new(None)).collect(),
            queues: (0..connections).map(|_| Mutex::default()).collect(),
            next_lane: AtomicUsize::new(0),
            script: Script::new(SCRIPT),
            key_prefix: options.key_prefix,
            timeout: options.timeout,
            batch: if cluster { 1 } else { options.batch.max(1) },
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// Makes this thread's checks use one connection, `worker` mod `connections`. A
    /// connection's driver runs on the event loop that opened it, so a worker thread
    /// bound to its own connection sends and receives its calls batched, without
    /// handing them to another thread. Unbound threads use the connections in turn.
    pub fn bind_thread(worker: usize) {
        THREAD_LANE.set(Some(worker));
    }

    /// Loads the script, so that the first checks do not meet NOSCRIPT (they would
    /// load it and retry, as after a Redis restart or SCRIPT FLUSH).
    pub async fn prepare(&self) -> Result<(), StoreError> {
        let shared = &self.shared;
        let call = async {
            let mut conn = shared.connection(shared.control_lane()).await?;
            match shared.script.load_async(&mut conn).await {
                Ok(_) => Ok(()),
                Err(e) => Err(shared.failed(e)),
            }
        };
        // At start-up the first connection is made here: it gets the connect timeout.
        let timeout = shared.timeout.max(CONNECT_TIMEOUT);
        tokio::time::timeout(timeout, call).await.unwrap_or(Err(StoreError::Timeout(timeout)))
    }

    /// Checks that Redis answers (PING on its own lane), within the timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let shared = &self.shared;
        let lane = shared.control_lane();
        let call = async {
            let mut conn = shared.connection(lane).await?;
            match redis::cmd("PING").query_async::<()>(&mut conn).await {
                Ok(()) => Ok(()),
                Err(e) => Err(shared.failed(e)),
            }
        };
        shared.bounded(lane, call).await
    }

    /// The Redis key holding `key`'s history: the braces make Redis Cluster hash
    /// only the fingerprint, so the key lives in one slot.
    pub fn key_name(&self, key: &Fingerprint) -> Vec<u8> {
        let prefix = &self.shared.key_prefix;
        let mut name = Vec::with_capacity(prefix.len() + 34);
        name.extend_from_slice(prefix.as_bytes());
        name.push(b'{');
        name.extend_from_slice(&key.hex());
        name.push(b'}');
        name
    }

    /// Waits for a check to be decided in a batch. The check joins its lane's queue;
    /// if fewer than [`BATCHES_IN_FLIGHT`] batches are out, a sender task takes the
    /// queue to Redis, and goes on with what queued meanwhile until nothing waits.
    /// The batch belongs to that task: a caller who stops waiting (its deadline, or a
    /// cancelled request) cancels no one else's check.
    async fn batched(
        &self,
        lane: usize,
        key: Vec<u8>,
        limits: Limits,
        cost: u32,
        mode: Mode,
    ) -> Result<Reply, StoreError> {
        let shared = &self.shared;
        let (answer, decided) = oneshot::channel();
        let start = {
            let mut queue = shared.queues[lane].lock().unwrap_or_else(PoisonError::into_inner);
            queue.waiting.push(Pending { key, limits, cost, mode, answer });
            if queue.in_flight < BATCHES_IN_FLIGHT {
                queue.in_flight += 1;
                queue.next(shared.batch)
            } else {
                None
            }
        };
        if let Some(batch) = start {
            // The sender is made before it is spawned: dropped unrun, it still gives its place back.
            let sender = Sender { shared: Arc::clone(shared), lane, done: false };
            tokio::spawn(sender.run(batch));
        }
        match tokio::time::timeout(shared.timeout, decided).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(dropped()),
            Err(_) => Err(StoreError::Timeout(shared.timeout)),
        }
    }
}

impl Shared {
    /// The lane for PING and SCRIPT LOAD.
    fn control_lane(&self) -> usize {
        self.lanes.len() - 1
    }

    /// The lane for a check made on this thread.
    fn check_lane(&self) -> usize {
        let checks = self.lanes.len() - 1;
        match THREAD_LANE.get() {
            Some(worker) => worker % checks,
            None => self.next_lane.fetch_add(1, Ordering::Relaxed) % checks,
        }
    }

    /// One script call deciding `batch`; each check gets its own answer.
    async fn send(&self, lane: usize, batch: Vec<Pending>) {
        metrics::redis_batch(batch.len());
        let checks: Vec<_> = batch.iter().map(|p| (p.key.as_slice(), &p.limits, p.cost, p.mode)).collect();
        let replies = self.bounded(lane, self.eval(lane, &checks)).await;
        match replies {
            Ok(replies) => {
                for (check, reply) in batch.into_iter().zip(replies) {
                    let _ = check.answer.send(reply);
                }
            }
            Err(e) => {
                for check in batch {
                    let _ = check.answer.send(Err(e.clone()));
                }
            }
        }
    }

    async fn connection(&self, lane: usize) -> Result<Conn, StoreError> {
        if let Some((_, conn)) = self.lanes[lane].read().await.as_ref() {
            return Ok(conn.clone());
        }
        // One caller per lane connects (holding the write lock); the others wait for
        // it rather than taking more connections from the pool than there are lanes.
        let mut slot = self.lanes[lane].write().await;
        if let Some((_, conn)) = slot.as_ref() {
            return Ok(conn.clone());
        }
        // In a task of its own: a caller whose deadline passes leaves it running, and the
        // connection it makes waits in the pool for the next caller.
        let pools = self.pools.clone();
        let connecting = tokio::spawn(async move { pools.get().await });
        let got = connecting.await.unwrap_or_else(|e| Err(format!("connecting failed: {e}")));
        match got {
            Ok((pooled, conn)) => {
                *slot = Some((pooled, conn.clone()));
                Ok(conn)
            }
            Err(e) => {
                // Redis cannot be reached: the other lanes' connections are as dead.
                drop(slot);
                self.reset_all();
                Err(StoreError::Unavailable(e))
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
            && let Some((pooled, _)) = slot.take()
        {
            pooled.detach();
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

    /// One script call deciding `checks` in order: one reply per check, or the
    /// call's failure.
    async fn eval(&self, lane: usize, checks: &[Check<'_>]) -> Result<Vec<Result<Reply, StoreError>>, StoreError> {
        let mut conn = self.connection(lane).await?;
        let invocation = invocation(&self.script, checks, None);
        match invocation.invoke_async::<Vec<Value>>(&mut conn).await {
            Ok(replies) => replies_of(checks, replies),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Classifies a failed call, and replaces connections that cannot serve again:
    /// broken, or to a Redis that is no longer a writable master.
    fn failed(&self, e: RedisError) -> StoreError {
        let demoted = matches!(e.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown));
        if e.is_unrecoverable_error() || e.is_io_error() || demoted {
            tracing::debug!(error = %e, "reconnecting every Redis lane");
            self.reset_all();
        }
        classify(e)
    }

    /// Bounds a call by the timeout. A call that hangs may be on a dead connection
    /// (a hung or unplugged Redis sends no reset), so its lane reconnects.
    async fn bounded<T>(
        &self,
        lane: usize,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => {
                self.reset(lane);
                Err(StoreError::Timeout(self.timeout))
            }
        }
    }
}

/// One check of a script call: its Redis key, limits, cost and mode.
pub type Check<'a> = (&'a [u8], &'a Limits, u32, Mode);

/// The script call deciding `checks` in order (arguments as the header of
/// `lua/sliding_window.lua` lays out); `clock` is Unix ms, or `None` for Redis's clock.
pub fn invocation<'s>(script: &'s Script, checks: &[Check<'_>], clock: Option<u64>) -> ScriptInvocation<'s> {
    let mut invocation = script.prepare_invoke();
    match clock {
        Some(ms) => invocation.arg(ms),
        None => invocation.arg(""),
    };
    // A batch's checks mostly repeat one argument (one policy, cost 1): it is written once
    // for each run of them (the invocation copies it).
    let mut arg = Vec::with_capacity(64);
    let mut written = None;
    for &(key, limits, cost, mode) in checks {
        if written != Some((limits, cost, mode)) {
            write_check_arg(&mut arg, limits, cost, mode);
            written = Some((limits, cost, mode));
        }
        invocation.key(key).arg(arg.as_slice());
    }
    invocation
}

/// Makes `arg` a check's one script argument: `<cost> <mode> <L1> <W1> ...`, longest
/// window first.
pub fn write_check_arg(arg: &mut Vec<u8>, limits: &Limits, cost: u32, mode: Mode) {
    use std::io::Write as _;
    arg.clear();
    // Writing to a Vec cannot fail.
    let _ = write!(arg, "{cost} {}", mode_arg(mode));
    for window in limits.windows() {
        let _ = write!(arg, " {} {}", window.limit(), window.window_ms());
    }
}

/// Splits a script call's flat reply into one per check: a decision's 3 + 2n values (n: the
/// check's windows), or the script's words for a check it could not decide.
pub fn replies_of(checks: &[Check<'_>], values: Vec<Value>) -> Result<Vec<Result<Reply, StoreError>>, StoreError> {
    let malformed = |what: String| StoreError::Failed(format!("the script's reply is malformed: {what}"));
    let mut values = values.into_iter();
    let mut replies = Vec::with_capacity(checks.len());
    for (k, &(_, limits, _, _)) in checks.iter().enumerate() {
        let reply = match values.next() {
            Some(Value::BulkString(words)) => Err(StoreError::Failed(String::from_utf8_lossy(&words).into_owned())),
            Some(Value::SimpleString(words)) => Err(StoreError::Failed(words)),
            Some(first @ Value::Int(_)) => {
                let len = 3 + 2 * limits.windows().len();
                let mut reply = Vec::with_capacity(len);
                for value in std::iter::once(first).chain(values.by_ref().take(len - 1)) {
                    match value {
                        Value::Int(v) => {
                            reply.push(u64::try_from(v).map_err(|_| malformed(format!("{v} in check {k}")))?)
                        }
                        other => return Err(malformed(format!("{other:?} in check {k}"))),
                    }
                }
                if reply.len() != len {
                    return Err(malformed(format!("it ends in check {k} of {}", checks.len())));
                }
                Ok(reply)
            }
            Some(other) => return Err(malformed(format!("{other:?} starts check {k}"))),
            None => return Err(malformed(format!("it ends before check {k} of {}", checks.len()))),
        };
        replies.push(reply);
    }
    if values.next().is_some() {
        return Err(malformed(format!("values follow the last of {} checks", checks.len())));
    }
    Ok(replies)
}

/// The script's reply: allowed, decided_at_ms, newest_ms, then spare and retry_after_ms
/// for each window (see the header of `lua/sliding_window.lua`).
pub type Reply = Vec<u64>;

/// The script's `mode` argument.
pub fn mode_arg(mode: Mode) -> &'static str {
    match mode {
        Mode::Consume => "consume",
        Mode::Peek => "peek",
    }
}

/// Turns the script's reply into a decision, as the in-process store does.
pub fn decode(limits: &Limits, cost: u32, reply: &[u64]) -> Result<Decision, StoreError> {
    let windows = limits.windows().len();
    if reply.len() != 3 + 2 * windows {
        return Err(StoreError::Failed(format!(
            "the script replied {} values, expected {}",
            reply.len(),
            3 + 2 * windows
        )));
    }
    let mut checks = [WindowCheck::default(); MAX_WINDOWS];
    for (check, pair) in checks.iter_mut().zip(reply[3..].chunks_exact(2)) {
        let spare =
            u32::try_from(pair[0]).map_err(|_| StoreError::Failed(format!("spare {} out of range", pair[0])))?;
        *check = WindowCheck { spare, retry_after_ms: pair[1] };
    }
    let decision = Decision::assemble(limits, cost, reply[1], reply[2], &checks[..windows]);
    if decision.allowed != (reply[0] == 1) {
        return Err(StoreError::Failed("the script's verdict disagrees with its windows".into()));
    }
    Ok(decision)
}

impl Store for RedisStore {
    async fn check(&self, key: &Fingerprint, limits: &Limits, cost: u32, mode: Mode) -> Result<Decision, StoreError> {
        let shared = &self.shared;
        let lane = shared.check_lane();
        let key = self.key_name(key);
        let started = Instant::now();
        let reply = if shared.batch == 1 {
            metrics::redis_batch(1);
            let one = shared.bounded(lane, shared.eval(lane, &[(&key, limits, cost, mode)])).await;
            one.and_then(|mut replies| replies.pop().unwrap_or_else(|| Err(StoreError::Failed("no reply".into()))))
        } else {
            self.batched(lane, key, *limits, cost, mode).await
        };
        metrics::redis_call(started.elapsed(), reply.as_ref().err().map(StoreError::kind));
        decode(limits, cost, &reply?)
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
    if transient { StoreError::Unavailable(e.to_string()) } else { StoreError::Failed(e.to_string()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use redis::Value;

    use super::{Check, replies_of, write_check_arg};
    use crate::limiter::{Limits, Mode, Window};

    fn two_windows() -> Limits {
        let windows =
            [Window::new(300, Duration::from_secs(60)).unwrap(), Window::new(20, Duration::from_secs(1)).unwrap()];
        Limits::new(&windows).unwrap()
    }

    #[test]
    fn a_check_is_one_argument_longest_window_first() {
        let mut arg = b"left over".to_vec();
        write_check_arg(&mut arg, &two_windows(), 3, Mode::Peek);
        assert_eq!(arg, b"3 peek 300 60000 20 1000");
        let one = Limits::single(5, Duration::from_millis(1500)).unwrap();
        write_check_arg(&mut arg, &one, 1, Mode::Consume);
        assert_eq!(arg, b"1 consume 5 1500");
    }

    /// The flat reply splits by each check's window count; a string stands for a whole
    /// check; anything else is the call's error, not a wrong decision.
    #[test]
    fn a_flat_reply_splits_into_one_per_check() {
        let (one, two) = (Limits::single(5, Duration::from_secs(60)).unwrap(), two_windows());
        let checks: [Check<'_>; 3] =
            [(b"a", &two, 1, Mode::Consume), (b"b", &one, 1, Mode::Consume), (b"c", &one, 1, Mode::Peek)];
        let int = Value::Int;
        let words = Value::BulkString(b"WRONGTYPE".to_vec());
        let values = vec![
            int(1),
            int(100),
            int(90),
            int(7),
            int(0),
            int(2),
            int(0),
            words.clone(),
            int(0),
            int(100),
            int(90),
            int(0),
            int(40),
        ];
        let replies = replies_of(&checks, values.clone()).unwrap();
        assert_eq!(replies[0].as_ref().unwrap(), &[1, 100, 90, 7, 0, 2, 0]);
        assert!(matches!(&replies[1], Err(super::StoreError::Failed(w)) if w == "WRONGTYPE"));
        assert_eq!(replies[2].as_ref().unwrap(), &[0, 100, 90, 0, 40]);

        let short = values[..values.len() - 1].to_vec();
        let mut long = values.clone();
        long.push(int(1));
        let mut negative = values.clone();
        negative[4] = int(-1);
        let mut nested = values.clone();
        nested[2] = Value::Array(vec![int(90)]);
        for bad in [short, long, negative, nested, Vec::new()] {
            assert!(matches!(replies_of(&checks, bad), Err(super::StoreError::Failed(_))));
        }
    }
}
