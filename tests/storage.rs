//! What a key costs Redis (issue: storage that costs what a key uses): the bytes a key holds
//! (`MEMORY USAGE`, key name included) and the Redis work of one check, whatever its cost
//! or limit. Figures are printed; the assertions are on bytes and on Redis commands, which
//! do not depend on how busy the machine is (the time per check is printed from SLOWLOG).

mod common;

use std::time::Duration;

use common::Backend;
use ratelimitd::domain::{Limits, Mode, Window};
use ratelimitd::store::redis::script::{CallOptions, Check, invocation, replies_of};
use ratelimitd_bench::command_calls;

const MINUTE: u64 = 60_000;
const MONTH: u64 = 31 * 24 * 3600 * 1000;

fn policy(windows: &[(u32, u64)]) -> Limits {
    let windows: Vec<Window> =
        windows.iter().map(|&(l, w)| Window::new(l, Duration::from_millis(w)).unwrap()).collect();
    Limits::new(&windows).unwrap()
}

/// A key named as the store names it: a 32-hex-digit fingerprint in braces, then `:2`.
fn key_name(i: usize) -> String {
    format!("ratelimitd:{{{i:032x}}}:2")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

struct Redis {
    conn: redis::aio::MultiplexedConnection,
    script: redis::Script,
    url: String,
}

impl Redis {
    /// Decides `checks` at `at` (caller's clock); returns whether each was allowed.
    async fn call(&mut self, checks: &[Check<'_>], at: u64) -> Vec<bool> {
        let values = invocation(&self.script, checks, CallOptions::at(at)).invoke_async(&mut self.conn).await.unwrap();
        let replies = replies_of(checks, values).unwrap();
        replies.into_iter().map(|r| r.expect("a decision").allowed()).collect()
    }

    async fn one(&mut self, key: &str, limits: &Limits, cost: u32, mode: Mode, at: u64) -> bool {
        self.call(&[Check { key: key.as_bytes(), limits, cost, mode }], at).await[0]
    }

    async fn bytes(&mut self, key: &str) -> u64 {
        redis::cmd("MEMORY").arg("USAGE").arg(key).query_async(&mut self.conn).await.unwrap()
    }

    /// The Redis commands the script ran, and the longest script call's time (µs, SLOWLOG),
    /// while `work` runs.
    async fn work<F: AsyncFnOnce(&mut Self)>(&mut self, work: F) -> (u64, u64) {
        let commands = ["getrange", "setrange", "set", "pexpire"];
        let () = redis::cmd("SLOWLOG").arg("RESET").query_async(&mut self.conn).await.unwrap();
        let before = command_calls(&self.url, &commands).await.unwrap();
        work(self).await;
        let after = command_calls(&self.url, &commands).await.unwrap();
        let log: Vec<Vec<redis::Value>> =
            redis::cmd("SLOWLOG").arg("GET").arg(1000).query_async(&mut self.conn).await.unwrap();
        // Only the script's calls (SLOWLOG also holds the INFO of `command_calls`).
        let micros = |entry: &Vec<redis::Value>| match (entry.get(2), entry.get(3)) {
            (Some(redis::Value::Int(us)), Some(redis::Value::Array(args))) => match args.first() {
                Some(redis::Value::BulkString(name)) if name.eq_ignore_ascii_case(b"evalsha") => *us as u64,
                _ => 0,
            },
            _ => 0,
        };
        (after - before, log.iter().map(micros).max().unwrap_or(0))
    }
}

async fn redis(backend: &Backend) -> Redis {
    let server = backend.redis.as_ref().unwrap();
    let mut conn = server.conn().await;
    let () =
        redis::cmd("CONFIG").arg("SET").arg("slowlog-log-slower-than").arg(0).query_async(&mut conn).await.unwrap();
    let script = redis::Script::new(include_str!("../lua/sliding_window.lua"));
    let _: String = script.prepare_invoke().load_async(&mut conn).await.unwrap();
    Redis { conn, script, url: server.url() }
}

/// Bytes follow use, not the limit or the cost: a key id seen once costs the same under any
/// policy and any cost; a busy key costs per request inside its window.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_costs_what_it_uses_not_its_limit() {
    let backend = Backend::redis().await;
    let mut redis = redis(&backend).await;
    let start = now_ms();
    let once = [
        ("300 per minute", policy(&[(300, MINUTE)]), 1),
        ("1,000,000 per 31 days", policy(&[(1_000_000, MONTH)]), 1),
        ("1,000,000 per 31 days, cost 1,000,000", policy(&[(1_000_000, MONTH)]), 1_000_000),
        (
            "1,000,000 per minute and 20,000 per second, cost 20,000",
            policy(&[(1_000_000, MINUTE), (20_000, 1_000)]),
            20_000,
        ),
    ];
    for (i, (what, limits, cost)) in once.iter().enumerate() {
        assert!(redis.one(&key_name(i), limits, *cost, Mode::Consume, start).await);
        let bytes = redis.bytes(&key_name(i)).await;
        println!("a key id seen once, {what}: {bytes} B");
        assert!(bytes <= 192, "{what}: {bytes} B");
    }

    let saturated = policy(&[(300, MINUTE)]);
    for at in 0..300 {
        assert!(redis.one(&key_name(10), &saturated, 1, Mode::Consume, start + at).await);
    }
    assert!(!redis.one(&key_name(10), &saturated, 1, Mode::Consume, start + 300).await);
    let bytes = redis.bytes(&key_name(10)).await;
    println!("a key saturated at 300 per minute by 300 requests of cost 1, one per ms: {bytes} B");
    assert!(bytes <= 1300, "{bytes} B");

    let tokens = policy(&[(1_000_000, MINUTE)]);
    for i in 0..100 {
        assert!(redis.one(&key_name(11), &tokens, 10_000, Mode::Consume, start + i * 10).await);
    }
    assert!(!redis.one(&key_name(11), &tokens, 1, Mode::Consume, start + 1_000).await, "1,000,000 used");
    let bytes = redis.bytes(&key_name(11)).await;
    println!("a key under 1,000,000 per minute used by 100 requests of cost 10,000: {bytes} B");
    assert!(bytes <= 2_000, "{bytes} B");
}

/// The Redis work of a check does not grow with its cost or its key's limit: a check of cost
/// 1,000,000, its denial, 32 new keys of that cost in one call, and a peek under a policy far
/// larger than the key's history each run a handful of commands (no copy of the history).
#[tokio::test(flavor = "multi_thread")]
async fn one_check_costs_redis_the_same_at_any_cost_or_limit() {
    let backend = Backend::redis().await;
    let mut redis = redis(&backend).await;
    let start = now_ms();
    let big = policy(&[(1_000_000, MONTH)]);
    let key = key_name(1);
    let (commands, us) = redis.work(async |r| assert!(r.one(&key, &big, 1_000_000, Mode::Consume, start).await)).await;
    println!("one check of cost 1,000,000 under 1,000,000 per 31 days: {commands} commands, {us} us");
    assert!(commands <= 3, "{commands} commands: the header, the previous release's ring, one SET");
    let (commands, us) =
        redis.work(async |r| assert!(!r.one(&key, &big, 1_000_000, Mode::Consume, start + 1).await)).await;
    println!("its denial: {commands} commands, {us} us");
    assert!(commands <= 2, "{commands} commands");

    let names: Vec<String> = (100..132).map(key_name).collect();
    let batch: Vec<Check> =
        names.iter().map(|k| Check { key: k.as_bytes(), limits: &big, cost: 1_000_000, mode: Mode::Consume }).collect();
    let (commands, us) = redis.work(async |r| assert!(r.call(&batch, start).await.iter().all(|&a| a))).await;
    println!("32 new keys, each a check of cost 1,000,000, in one call: {commands} commands, {us} us");
    assert!(commands <= 32 * 3, "{commands} commands");

    // A key with 100 requests under 300 per minute, peeked under 1,000,000 per minute.
    let small = policy(&[(300, MINUTE)]);
    for at in 0..100 {
        redis.one(&key_name(2), &small, 1, Mode::Consume, start + at).await;
    }
    let wide = policy(&[(1_000_000, MINUTE)]);
    let before = redis.bytes(&key_name(2)).await;
    let (commands, us) =
        redis.work(async |r| assert!(r.one(&key_name(2), &wide, 500, Mode::Peek, start + 200).await)).await;
    println!("a peek under a limit 3,333 times the key's: {commands} commands, {us} us");
    assert!(commands <= 3, "{commands} commands: a peek reads a few entries, it never copies the history");
    assert_eq!(redis.bytes(&key_name(2)).await, before, "a peek writes nothing");
}

/// The exception, printed: a call that rewrites a history grows it to twice its size (once
/// per doubling in a key's life) or widens its entries (once), and takes time in proportion
/// to it. Measured on histories laid out as the script's header describes.
#[tokio::test(flavor = "multi_thread")]
async fn growing_or_widening_a_history_rewrites_it_once() {
    let backend = Backend::redis().await;
    let mut redis = redis(&backend).await;
    let start = now_ms();
    for (what, entries, count_bytes, cost) in [
        ("growing 256 unit entries (768 B, rewritten) to 512", 256u32, 0u8, 1),
        ("growing 256 counted entries (2 KB, rewritten) to 512", 256, 3, 1),
        ("growing 65,536 counted entries (512 KB, in place) to 131,072", 65_536, 3, 1),
        ("growing 524,288 counted entries (4 MB, in place) to 1,000,000", 524_288, 3, 1),
        ("widening 512 unit entries to counted ones", 512, 0, 2),
    ] {
        let key = format!("ratelimitd:{{{:032x}}}:2", entries);
        let value = history(start, entries, count_bytes);
        let () =
            redis::cmd("SET").arg(&key).arg(value).arg("PX").arg(600_000).query_async(&mut redis.conn).await.unwrap();
        let limit = if count_bytes == 0 && cost == 1 { 512 } else { 1_000_000 };
        let limits = policy(&[(limit, 4_000_000)]);
        let at = start + u64::from(entries) + 1;
        let (commands, us) = redis
            .work(async |r| {
                let key = key.as_str();
                assert!(r.one(key, &limits, cost, Mode::Consume, at).await, "{what}");
            })
            .await;
        let bytes = redis.bytes(&key).await;
        println!("{what}: {commands} commands, {us} us, {bytes} B after");
    }
}

/// A history of `entries` requests of cost 1, one per ms from `start`, in the script's layout
/// (units: 3-byte times; counted: 5-byte times and 3-byte counts), its ring full.
fn history(start: u64, entries: u32, count_bytes: u8) -> Vec<u8> {
    let time_bytes = if count_bytes == 0 { 3 } else { 5 };
    let mut value = vec![2u8, time_bytes as u8, count_bytes];
    for field in [entries, 0, entries] {
        value.extend_from_slice(&field.to_le_bytes());
    }
    let newest = start + u64::from(entries) - 1;
    for time in [newest, start, start + 10_000_000] {
        value.extend_from_slice(&time.to_le_bytes()[..6]);
    }
    value.extend_from_slice(&[0, 0, 0]);
    value.extend_from_slice(&entries.to_le_bytes());
    for i in 0..entries {
        value.extend_from_slice(&(start + u64::from(i)).to_le_bytes()[..time_bytes]);
        if count_bytes == 3 {
            value.extend_from_slice(&(i + 1).to_le_bytes()[..3]);
        }
    }
    value
}
