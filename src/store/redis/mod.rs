//! The Redis store: every decision is made by `lua/sliding_window.lua`, atomic inside
//! Redis and on Redis's clock, so any number of replicas sharing the Redis enforce one
//! exact limit per key (the algorithm: `docs/design.md#the-algorithm`).
//!
//! - [`options`]: where Redis is and how long to wait for it;
//! - `connect`: the deadpool-redis pools, one multiplexed connection type;
//! - `lanes`: the connections the store's calls share, bounded by the callers' deadlines;
//! - `clock`: what is known of Redis's clock, so a call counts nothing after its deadline;
//! - `batch`: checks that meet on a lane leave together in one script call;
//! - [`script`]: the Rust half of the script's contract (arguments and reply).

mod batch;
mod clock;
mod connect;
mod lanes;
mod layout;
pub mod options;
pub mod script;

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_redis::{PoolConfig, Timeouts};

use self::batch::Batches;
use self::connect::Pools;
use self::lanes::Lanes;
pub use self::options::{RedisEndpoint, RedisOptions, RedisTls};
use self::script::{Check, Owed, Reply, decode};
use super::{Admitted, DENIALS_KEPT, DENIED_KEYS_KEPT, Held, KeyCheck, Store, StoreError, peek_then_count};
use crate::domain::{Decision, Fingerprint, Limits, Mode};
use crate::metrics;

/// The least time connecting to Redis may take (TCP, TLS handshake, AUTH).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a reset stays in `<prefix>resets` for the replicas to read (they do every second).
const RESETS_KEPT_MS: u64 = 60_000;
/// Owed requests counted per script call ([`Store::record_admitted`]).
const OWED_PER_CALL: usize = 64;

pub struct RedisStore {
    batches: Arc<Batches>,
    key_prefix: String,
    /// Redis Cluster: keys of one request may live on different nodes.
    cluster: bool,
    /// `host:port`s, for log lines.
    addresses: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("key_prefix", &self.key_prefix).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Builds the store without connecting: Redis may come up later, and calls
    /// fail with [`StoreError::Unavailable`] until it does.
    pub fn new(options: RedisOptions) -> Result<Self, StoreError> {
        // Connecting (TCP, TLS, AUTH) gets longer than a call: it runs in the background
        // (see `Lanes::connection`), so a short call deadline does not keep cutting it off.
        let connect = options.timeout.max(CONNECT_TIMEOUT);
        let timeouts = Timeouts { wait: Some(connect), create: Some(connect), recycle: Some(connect) };
        let connections = options.connections.max(1);
        let mut pool_config = PoolConfig::new(connections + 1);
        pool_config.timeouts = timeouts;
        let cluster = matches!(options.endpoint, RedisEndpoint::Cluster(_));
        let pools = Pools::new(&options, pool_config)?;
        let lanes = Lanes::new(pools, connections, script::script(), &options, cluster);
        // Redis Cluster gets one check per call: a batch's keys would have to share a slot.
        let batch = if cluster { 1 } else { options.batch };
        let batches = Arc::new(Batches::new(lanes, connections, batch));
        let addresses = options.endpoint.addresses();
        Ok(Self { batches, key_prefix: options.key_prefix, cluster, addresses })
    }

    /// Makes this thread's checks use one connection, `worker` mod `connections`. A
    /// connection's driver runs on the event loop that opened it, so a worker thread
    /// bound to its own connection sends and receives its calls batched, without
    /// handing them to another thread. Unbound threads use the connections in turn.
    pub fn bind_thread(worker: usize) {
        Lanes::bind_thread(worker);
    }

    /// Loads the script, so that the first checks do not meet NOSCRIPT (they would
    /// load it and retry, as after a Redis restart or SCRIPT FLUSH), and reads Redis's
    /// clock, so that the first checks already carry their deadline on it.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        let lanes = &self.batches.lanes;
        let call = async {
            let mut conn = lanes.connection(lanes.control_lane()).await?;
            if let Err(e) = lanes.script.load_async(&mut conn).await {
                return Err(lanes.failed(e));
            }
            lanes.observe_clock(redis_time(lanes, &mut conn).await?);
            Ok(())
        };
        // At start-up the first connection is made here: it gets the connect timeout.
        let timeout = lanes.timeout.max(CONNECT_TIMEOUT);
        tokio::time::timeout(timeout, call).await.unwrap_or(Err(StoreError::Timeout(timeout)))
    }

    /// Checks that Redis answers (TIME on its own lane, which also tells what its clock
    /// reads), within the timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let lanes = &self.batches.lanes;
        let lane = lanes.control_lane();
        let call = async {
            let mut conn = lanes.connection(lane).await?;
            lanes.observe_clock(redis_time(lanes, &mut conn).await?);
            Ok(())
        };
        lanes.bounded(lane, Instant::now() + lanes.timeout, call).await
    }

    /// The Redis key holding `key`'s history: the braces make Redis Cluster hash
    /// only the fingerprint, so the key lives in one slot; `:2` names the layout (the
    /// previous release's ring, without it, is read during a rolling deploy).
    pub fn key_name(&self, key: &Fingerprint) -> Vec<u8> {
        let prefix = &self.key_prefix;
        let mut name = Vec::with_capacity(prefix.len() + 36);
        name.extend_from_slice(prefix.as_bytes());
        name.push(b'{');
        name.extend_from_slice(&key.hex());
        name.extend_from_slice(b"}:2");
        name
    }

    /// One check in a script call of its own.
    async fn alone(&self, lane: usize, check: Check<'_>) -> Result<Reply, StoreError> {
        metrics::redis_batch(1);
        let lanes = &self.batches.lanes;
        let until = lanes.wait_until(Instant::now());
        let mut replies = lanes.bounded(lane, until, lanes.eval(lane, &[check], false, until)).await?;
        replies.pop().unwrap_or_else(|| Err(StoreError::Failed("no reply".into())))
    }

    /// One request's keys decided in one script call, all or nothing (see the script's
    /// header): its own call, not batched with other checks.
    async fn group(&self, checks: &[KeyCheck<'_>]) -> Result<Vec<Decision>, StoreError> {
        let lanes = &self.batches.lanes;
        let lane = lanes.check_lane();
        let names: Vec<Vec<u8>> = checks.iter().map(|c| self.key_name(c.key)).collect();
        let calls: Vec<Check<'_>> = checks
            .iter()
            .zip(&names)
            .map(|(c, name)| Check { key: name, limits: c.limits, cost: c.cost, mode: c.mode })
            .collect();
        metrics::redis_batch(calls.len());
        let started = Instant::now();
        let until = lanes.wait_until(started);
        let replies = lanes.bounded(lane, until, lanes.eval(lane, &calls, true, until)).await;
        metrics::redis_call(started.elapsed(), replies.as_ref().err().map(StoreError::kind));
        let replies = replies?;
        checks.iter().zip(replies).map(|(c, reply)| decode(c.limits, c.cost, &reply?)).collect()
    }
}

impl Store for RedisStore {
    async fn check(&self, key: &Fingerprint, limits: &Limits, cost: u32, mode: Mode) -> Result<Decision, StoreError> {
        let lane = self.batches.lanes.check_lane();
        let key = self.key_name(key);
        let started = Instant::now();
        let reply = if self.batches.max == 1 {
            self.alone(lane, Check { key: &key, limits, cost, mode }).await
        } else {
            self.batches.decide(lane, key, *limits, cost, mode).await
        };
        metrics::redis_call(started.elapsed(), reply.as_ref().err().map(StoreError::kind));
        decode(limits, cost, &reply?)
    }

    /// Atomic where the keys share one Redis (one server, Sentinel): one script call.
    /// On Redis Cluster the keys may live on different nodes, so each is peeked, then
    /// counted (the trait's default): a concurrent request can come between the two.
    async fn check_all(&self, checks: &[KeyCheck<'_>]) -> Result<Vec<Decision>, StoreError> {
        if self.cluster { peek_then_count(self, checks).await } else { self.group(checks).await }
    }

    /// In calls of up to [`OWED_PER_CALL`] requests (one on Redis Cluster: a call's keys
    /// would have to share a slot), each by the callers' deadline.
    async fn record_admitted(&self, admitted: &[Admitted]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let lanes = &self.batches.lanes;
        let per_call = if self.cluster { 1 } else { OWED_PER_CALL };
        let mut counted = Vec::with_capacity(admitted.len());
        for part in admitted.chunks(per_call) {
            let names: Vec<Vec<u8>> = part.iter().map(|a| self.key_name(&a.key)).collect();
            let owed: Vec<Owed<'_>> = part
                .iter()
                .zip(&names)
                .map(|(a, name)| Owed { key: name, limits: &a.limits, cost: a.cost, age_ms: a.age.as_millis() as u64 })
                .collect();
            let lane = lanes.check_lane();
            let until = lanes.wait_until(Instant::now());
            counted.extend(lanes.bounded(lane, until, lanes.owe(lane, &owed, until)).await?);
        }
        Ok(counted)
    }

    /// On the control lane, by `--redis-timeout`: the replicas are the members of the sorted
    /// set `<prefix>replicas`, each scored by the Redis time of its last call. Plain commands,
    /// not a script, so that script call counts stay those of the checks.
    async fn presence(&self, replica: &str, ttl: Duration) -> Result<Option<u32>, StoreError> {
        let lanes = &self.batches.lanes;
        let lane = lanes.control_lane();
        let name = format!("{}replicas", self.key_prefix);
        let ttl = ttl.as_millis() as u64;
        let call = async {
            let mut conn = lanes.connection(lane).await?;
            let now = redis_time(lanes, &mut conn).await?;
            let mut pipe = redis::pipe();
            pipe.cmd("ZADD").arg(&name).arg(now).arg(replica).ignore();
            pipe.cmd("ZREMRANGEBYSCORE").arg(&name).arg("-inf").arg(now.saturating_sub(ttl)).ignore();
            pipe.cmd("PEXPIRE").arg(&name).arg(ttl).ignore();
            pipe.cmd("ZCARD").arg(&name);
            let (count,): (u32,) = pipe.query_async(&mut conn).await.map_err(|e| lanes.failed(e))?;
            Ok(Some(count))
        };
        lanes.bounded(lane, Instant::now() + lanes.timeout, call).await
    }

    /// The key's value and Redis's time, read in one pipeline (nothing written), decoded by
    /// `layout`.
    async fn requests(&self, key: &Fingerprint) -> Result<Held, StoreError> {
        let lanes = &self.batches.lanes;
        let lane = lanes.control_lane();
        let name = self.key_name(key);
        let call = async {
            let mut conn = lanes.connection(lane).await?;
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(&name).cmd("TIME");
            let (value, time): (Option<Vec<u8>>, (u64, u64)) =
                pipe.query_async(&mut conn).await.map_err(|e| lanes.failed(e))?;
            let at_ms = unix_ms(time);
            let requests = layout::requests(&value.unwrap_or_default(), at_ms)
                .map_err(|why| StoreError::Failed(format!("key {}: {why}", String::from_utf8_lossy(&name))))?;
            Ok(Held { at_ms, requests })
        };
        lanes.bounded(lane, Instant::now() + lanes.timeout, call).await
    }

    /// Deletes the key's history (both layouts) and adds the fingerprint, scored by Redis's
    /// time, to the set `<prefix>resets` (a minute of them), which the replicas read.
    async fn forget(&self, key: &Fingerprint) -> Result<bool, StoreError> {
        let lanes = &self.batches.lanes;
        let lane = lanes.control_lane();
        let (name, resets) = (self.key_name(key), format!("{}resets", self.key_prefix));
        let previous = &name[..name.len() - 2];
        let call = async {
            let mut conn = lanes.connection(lane).await?;
            let now = redis_time(lanes, &mut conn).await?;
            let mut pipe = redis::pipe();
            pipe.cmd("DEL").arg(&name).arg(previous);
            pipe.cmd("ZADD").arg(&resets).arg(now).arg(key.to_string()).ignore();
            pipe.cmd("ZREMRANGEBYSCORE").arg(&resets).arg("-inf").arg(now.saturating_sub(RESETS_KEPT_MS)).ignore();
            pipe.cmd("PEXPIRE").arg(&resets).arg(RESETS_KEPT_MS).ignore();
            let (deleted,): (u32,) = pipe.query_async(&mut conn).await.map_err(|e| lanes.failed(e))?;
            Ok(deleted > 0)
        };
        lanes.bounded(lane, Instant::now() + lanes.timeout, call).await
    }

    async fn resets_since(&self, since_ms: u64) -> Result<(Vec<Fingerprint>, u64), StoreError> {
        let lanes = &self.batches.lanes;
        let lane = lanes.control_lane();
        let resets = format!("{}resets", self.key_prefix);
        let call = async {
            let mut conn = lanes.connection(lane).await?;
            let mut pipe = redis::pipe();
            pipe.cmd("TIME").cmd("ZRANGEBYSCORE").arg(&resets).arg(format!("({since_ms}")).arg("+inf");
            let (time, keys): ((u64, u64), Vec<String>) =
                pipe.query_async(&mut conn).await.map_err(|e| lanes.failed(e))?;
            Ok((keys.iter().filter_map(|hex| Fingerprint::from_hex(hex)).collect(), unix_ms(time)))
        };
        lanes.bounded(lane, Instant::now() + lanes.timeout, call).await
    }

    /// On the control lane, by `--redis-timeout`: the sorted set `<prefix>denials`, each key's
    /// fingerprint scored by its last denial (`ZADD GT`), trimmed to [`DENIALS_KEPT`] and the
    /// [`DENIED_KEYS_KEPT`] latest. Plain commands, not a script.
    async fn note_denials(&self, denials: &[(Fingerprint, u64)]) -> Result<(), StoreError> {
        let lanes = &self.batches.lanes;
        let lane = lanes.control_lane();
        let name = format!("{}denials", self.key_prefix);
        let kept = DENIALS_KEPT.as_millis() as u64;
        let newest = denials.iter().map(|(_, at_ms)| *at_ms).max().unwrap_or(0);
        let call = async {
            let mut conn = lanes.connection(lane).await?;
            let mut pipe = redis::pipe();
            for part in denials.chunks(1_000) {
                let add = pipe.cmd("ZADD").arg(&name).arg("GT");
                for (key, at_ms) in part {
                    add.arg(*at_ms).arg(key.to_string());
                }
                add.ignore();
            }
            pipe.cmd("ZREMRANGEBYSCORE").arg(&name).arg("-inf").arg(newest.saturating_sub(kept)).ignore();
            pipe.cmd("ZREMRANGEBYRANK").arg(&name).arg(0).arg(-(DENIED_KEYS_KEPT as i64) - 1).ignore();
            pipe.cmd("PEXPIRE").arg(&name).arg(kept).ignore();
            pipe.query_async::<()>(&mut conn).await.map_err(|e| lanes.failed(e))
        };
        lanes.bounded(lane, Instant::now() + lanes.timeout, call).await
    }

    async fn last_denial(&self, key: &Fingerprint) -> Result<Option<u64>, StoreError> {
        let lanes = &self.batches.lanes;
        let lane = lanes.control_lane();
        let name = format!("{}denials", self.key_prefix);
        let call = async {
            let mut conn = lanes.connection(lane).await?;
            let score: Option<f64> = redis::cmd("ZSCORE")
                .arg(&name)
                .arg(key.to_string())
                .query_async(&mut conn)
                .await
                .map_err(|e| lanes.failed(e))?;
            Ok(score.map(|ms| ms as u64))
        };
        lanes.bounded(lane, Instant::now() + lanes.timeout, call).await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.ping().await
    }

    fn endpoint(&self) -> String {
        self.addresses.clone()
    }
}

/// Redis's clock (TIME) in Unix ms.
async fn redis_time(lanes: &Lanes, conn: &mut connect::Conn) -> Result<u64, StoreError> {
    redis::cmd("TIME").query_async(conn).await.map(unix_ms).map_err(|e| lanes.failed(e))
}

/// A TIME reply (seconds, microseconds) in Unix ms.
fn unix_ms((seconds, micros): (u64, u64)) -> u64 {
    seconds * 1000 + micros / 1000
}
