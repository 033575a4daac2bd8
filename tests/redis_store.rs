//! What only the Redis store has: key names, memory per key, and recovery when
//! Redis loses its scripts or restarts empty.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, check, try_check};

async fn keys(backend: &Backend) -> Vec<String> {
    let redis = backend.redis.as_ref().expect("a Redis backend");
    redis::cmd("KEYS").arg("*").query_async(&mut redis.conn().await).await.expect("KEYS")
}

#[tokio::test(flavor = "multi_thread")]
async fn one_key_per_api_key_named_by_fingerprint_in_one_cluster_slot() {
    let backend = Backend::redis().await;
    let server = backend.server(300, "60s").await;
    let mut client = server.client().await;
    let api_key = "sk_live_do_not_leak_4242";
    for _ in 0..5 {
        check(&mut client, api_key, 1).await;
    }
    let expected = format!("ratelimitd:{{{}}}", server.fingerprint(api_key));
    assert_eq!(keys(&backend).await, vec![expected]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saturated_key_at_300_takes_under_3_kb() {
    let backend = Backend::redis().await;
    let server = backend.server(300, "60s").await;
    let mut client = server.client().await;
    for _ in 0..300 {
        assert!(check(&mut client, "busy", 1).await.allowed);
    }
    assert!(!check(&mut client, "busy", 1).await.allowed);
    let key = keys(&backend).await.pop().expect("one key");
    let mut conn = backend.redis.as_ref().unwrap().conn().await;
    let bytes: u64 = redis::cmd("MEMORY").arg("USAGE").arg(&key).query_async(&mut conn).await.unwrap();
    let ttl_ms: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.unwrap();
    println!("MEMORY USAGE of a saturated key at L = 300: {bytes} bytes");
    assert!(bytes <= 3 * 1024, "{bytes} bytes per saturated key");
    // The TTL moves in steps of W/8: the key lives at most W + W/8 past its newest unit.
    assert!(ttl_ms > 0 && ttl_ms <= 67_500, "idle keys must expire: PTTL {ttl_ms}");
}

#[tokio::test(flavor = "multi_thread")]
async fn recovers_when_redis_forgets_the_script() {
    let backend = Backend::redis().await;
    let server = backend.server(10, "60s").await;
    let mut client = server.client().await;
    assert_eq!(check(&mut client, "k", 1).await.remaining, 9);
    let mut conn = backend.redis.as_ref().unwrap().conn().await;
    let () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
    // NOSCRIPT is answered by loading the script again, within the same call.
    assert_eq!(check(&mut client, "k", 1).await.remaining, 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn recovers_when_redis_restarts_empty() {
    let backend = Backend::redis().await;
    let server = backend.server(10, "60s").await;
    let mut client = server.client().await;
    assert!(check(&mut client, "k", 10).await.allowed);
    assert!(!check(&mut client, "k", 1).await.allowed);

    backend.redis.as_ref().unwrap().restart().await;

    // The broken connections may fail a call (UNAVAILABLE); then calls succeed
    // without restarting ratelimitd, on a Redis that lost the keys' history.
    let started = Instant::now();
    let mut failed = 0;
    let recovered = loop {
        match try_check(&mut client, "other", 1).await {
            Ok(decision) => break decision,
            Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        }
        failed += 1;
        assert!(started.elapsed() < Duration::from_secs(10), "no recovery within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("recovered {:?} after the restart, {failed} calls failed", started.elapsed());
    assert!(recovered.allowed);
    assert_eq!(recovered.remaining, 9);
    // "k" was denied before the restart: the deny cache still answers that denial (it
    // was true of the history Redis lost), while a request Redis must decide finds the
    // history gone: only under-counting, bounded by what Redis lost. No lane is left
    // holding a dead connection.
    assert!(!check(&mut client, "k", 1).await.allowed);
    for remaining in [8, 6, 4, 2] {
        assert_eq!(check(&mut client, "k", 2).await.remaining, remaining);
    }
}

/// A batch decides each check on its own: a key of another type, or a check with bad
/// arguments, fails that check alone and changes nothing, and the checks around it
/// are decided. A call whose arguments are malformed fails whole, before any check.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_check_fails_alone_and_a_malformed_call_changes_nothing() {
    use ratelimitd::limiter::{Limits, Mode, Window};
    use ratelimitd::store::StoreError;
    use ratelimitd::store::redis::{invocation, replies_of};

    let backend = Backend::redis().await;
    let mut conn = backend.redis.as_ref().unwrap().conn().await;
    let script = redis::Script::new(include_str!("../lua/sliding_window.lua"));
    let () = redis::cmd("HSET").arg("not-a-ring").arg("field").arg("kept").query_async(&mut conn).await.unwrap();
    let limits = Limits::new(&[Window::new(5, Duration::from_secs(60)).unwrap()]).unwrap();
    let checks = [
        (b"ring-a".as_slice(), &limits, 2, Mode::Consume),
        (b"not-a-ring".as_slice(), &limits, 1, Mode::Consume),
        (b"bad-cost".as_slice(), &limits, 0, Mode::Consume),
        (b"ring-a".as_slice(), &limits, 3, Mode::Consume),
        (b"ring-a".as_slice(), &limits, 1, Mode::Consume),
    ];
    let replies: Vec<redis::Value> = invocation(&script, &checks, None).invoke_async(&mut conn).await.unwrap();
    let replies = replies_of(&checks, replies).unwrap();
    let allowed: Vec<Option<bool>> = replies.iter().map(|r| r.as_ref().ok().map(|values| values[0] == 1)).collect();
    assert_eq!(allowed, [Some(true), None, None, Some(true), Some(false)], "{replies:?}");
    let words = |i: usize| match &replies[i] {
        Err(StoreError::Failed(words)) => words.clone(),
        other => panic!("check {i}: {other:?}"),
    };
    assert!(words(1).contains("WRONGTYPE"), "{}", words(1));
    assert!(words(2).contains("invalid arguments"), "{}", words(2));
    let field: String = redis::cmd("HGET").arg("not-a-ring").arg("field").query_async(&mut conn).await.unwrap();
    assert_eq!(field, "kept");
    let exists: u32 = redis::cmd("EXISTS").arg("bad-cost").query_async(&mut conn).await.unwrap();
    assert_eq!(exists, 0);

    // A key without its argument: nothing is decided, not even the first.
    let mut malformed = script.prepare_invoke();
    malformed.arg("").key("ring-b").arg("1 consume 5 60000").key("ring-c");
    let error = malformed.invoke_async::<redis::Value>(&mut conn).await.expect_err("a malformed call fails");
    assert!(error.to_string().contains("invalid arguments"), "{error}");
    let exists: u32 = redis::cmd("EXISTS").arg("ring-b").arg("ring-c").query_async(&mut conn).await.unwrap();
    assert_eq!(exists, 0);

    // Each distinct argument is parsed once per call: a bad one fails every check that
    // repeats it, the next is parsed afresh, and anything but the exact grammar fails its
    // check alone (a window too many, a trailing word, a lone limit, windows not longest
    // first, a cost over a limit, another mode, a window of 2^52 ms).
    let args = [
        ("ring-d", "1 consume 5 0"),
        ("ring-e", "1 consume 5 0"),
        ("ring-f", "1 consume 5 60000"),
        ("ring-g", "6 consume 5 60000"),
        ("ring-h", "1 consume 5 5000 5 4000 5 3000 5 2000 5 1000"),
        ("ring-i", "1 consume 5 60000 extra"),
        ("ring-j", "1 consume 5 60000 5"),
        ("ring-k", "1 consume 5 1000 5 60000"),
        ("ring-l", "1 Consume 5 60000"),
        ("ring-m", "1 consume 5 4503599627370496"),
        ("ring-n", "1  consume 5 60000"),
        ("ring-o", "2 consume 5 60000 3 1000"),
        ("ring-p", "1 consume 5 60000"),
    ];
    let mut repeated = script.prepare_invoke();
    repeated.arg("");
    for (key, arg) in args {
        repeated.key(key).arg(arg);
    }
    let values: Vec<redis::Value> = repeated.invoke_async(&mut conn).await.unwrap();
    let windows = |arg: &str| if arg.ends_with("3 1000") { 2 } else { 1 };
    let shapes: Vec<Limits> = args
        .iter()
        .map(|(_, arg)| {
            let w = Window::new(5, Duration::from_secs(60)).unwrap();
            let short = Window::new(3, Duration::from_secs(1)).unwrap();
            if windows(arg) == 2 { Limits::new(&[w, short]).unwrap() } else { Limits::new(&[w]).unwrap() }
        })
        .collect();
    let calls: Vec<_> = args.iter().zip(&shapes).map(|((key, _), l)| (key.as_bytes(), l, 1, Mode::Consume)).collect();
    let replies = replies_of(&calls, values).unwrap();
    let decided: Vec<bool> = replies.iter().map(Result::is_ok).collect();
    let expected = [false, false, true, false, false, false, false, false, false, false, false, true, true];
    assert_eq!(decided, expected, "{replies:?}");
    let mut exists = Vec::new();
    for (key, _) in args {
        exists.push(redis::cmd("EXISTS").arg(key).query_async::<u32>(&mut conn).await.unwrap() == 1);
    }
    assert_eq!(exists, expected);
    assert_eq!(replies[11].as_ref().unwrap()[3..], [5, 0, 3, 0], "two windows, each with its limit spare");
}

/// Checks that arrive while a connection's calls are out share the next script call,
/// and are decided exactly as one by one. Redis is frozen while 20 checks of one key
/// arrive: two calls are out (one check each), the other 18 wait and leave together.
#[tokio::test(flavor = "multi_thread")]
async fn checks_waiting_for_a_busy_connection_share_one_script_call() {
    use ratelimitd::limiter::{Fingerprint, Limits, Mode, Window};
    use ratelimitd::store::Store;

    let backend = Backend::redis().await;
    let redis = backend.redis.as_ref().unwrap();
    let store = std::sync::Arc::new(one_connection_store(redis, "shared:"));
    let limits = Limits::new(&[Window::new(5, Duration::from_secs(60)).unwrap()]).unwrap();
    let key = Fingerprint::from_bytes([3; 16]);
    // The script loaded and the connection open, so that nothing but the checks is timed.
    store.prepare().await.unwrap();
    store.check(&Fingerprint::from_bytes([4; 16]), &limits, 1, Mode::Consume).await.unwrap();
    let before = ratelimitd::bench::script_calls(&redis.url()).await.unwrap();

    redis.pause().await;
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let checks: Vec<_> = (0..20)
        .map(|_| {
            let (store, started) = (std::sync::Arc::clone(&store), std::sync::Arc::clone(&started));
            tokio::spawn(async move {
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                store.check(&key, &limits, 1, Mode::Consume).await
            })
        })
        .collect();
    // Every check queued (a check joins its queue before it first waits), however slow
    // the machine: then a moment more for the last one to get there.
    let waiting = Instant::now();
    while started.load(std::sync::atomic::Ordering::SeqCst) < 20 {
        assert!(waiting.elapsed() < Duration::from_secs(10), "the checks did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.unpause().await;
    let mut remaining = Vec::new();
    for check in checks {
        let decision = check.await.unwrap().expect("decided");
        if decision.allowed {
            remaining.push(decision.remaining);
        }
    }
    remaining.sort_unstable();
    assert_eq!(remaining, [0, 1, 2, 3, 4], "exactly the limit, each allowed check seeing its own remaining");
    let calls = ratelimitd::bench::script_calls(&redis.url()).await.unwrap() - before;
    println!("20 checks in {calls} script calls");
    assert_eq!(calls, 3, "20 checks: one each for the two calls out, then one for the 18 that waited");
}

/// A Redis demoted to a replica (a failover that keeps client connections) answers the
/// script's first write with READONLY: the call fails as transient (the failure mode
/// answers) and the store reconnects, so that it follows the master once there is one.
#[tokio::test(flavor = "multi_thread")]
async fn a_demoted_redis_fails_the_call_as_transient_and_the_store_reconnects() {
    use ratelimitd::limiter::{Fingerprint, Limits, Mode, Window};
    use ratelimitd::store::Store;

    let backend = Backend::redis().await;
    let redis = backend.redis.as_ref().unwrap();
    let store = one_connection_store(redis, "demoted:");
    let limits = Limits::new(&[Window::new(5, Duration::from_secs(60)).unwrap()]).unwrap();
    let key = Fingerprint::from_bytes([5; 16]);
    assert!(store.check(&key, &limits, 1, Mode::Consume).await.unwrap().allowed);

    let mut admin = redis.conn().await;
    // A replica of a master that is not there: it keeps serving reads, refuses writes.
    let () = redis::cmd("REPLICAOF").arg("127.0.0.1").arg(1).query_async(&mut admin).await.unwrap();
    let error = store.check(&key, &limits, 1, Mode::Consume).await.expect_err("a replica refuses the write");
    assert!(error.is_transient(), "{error:?}");
    assert!(error.to_string().contains("read only replica"), "{error}");

    let () = redis::cmd("REPLICAOF").arg("NO").arg("ONE").query_async(&mut admin).await.unwrap();
    let decision = store.check(&key, &limits, 1, Mode::Consume).await.expect("the master again");
    assert_eq!(decision.remaining, 3, "the refused check counted nothing");
}

/// A store on one Redis connection, batching up to 32 checks per call, 2 s deadline.
fn one_connection_store(redis: &common::Redis, prefix: &str) -> ratelimitd::store::RedisStore {
    use ratelimitd::store::redis::{RedisEndpoint, RedisOptions, RedisStore};
    RedisStore::new(RedisOptions {
        endpoint: RedisEndpoint::Url(redis.url()),
        key_prefix: prefix.into(),
        timeout: Duration::from_secs(2),
        connections: 1,
        batch: 32,
        tls: None,
        password: None,
    })
    .expect("a valid Redis URL")
}

/// The Lua script and the Rust ring (the in-process store) must decide alike. This
/// replays random timelines (limits up and down, one to three windows at once, window
/// lengths changing, costs, peeks, both the whole-ring and the slot-by-slot path of the
/// script) on both and compares every field. Checks go to the script in batches of one
/// to six, as the store sends them, a key sometimes twice in one batch: each check of a
/// batch must be decided as if called alone, in order.
#[tokio::test(flavor = "multi_thread")]
async fn the_script_and_the_rust_ring_decide_alike() {
    let script = redis::Script::new(include_str!("../lua/sliding_window.lua"));
    let (compared, batches) = replay(&[Release::Current(&script)]).await;
    println!("{compared} decisions in {batches} batches identical in Lua and Rust");
}

/// A rolling deploy: replicas running the previous release's script (the one before a
/// full ring remembered its oldest time in the header's mark) and the current one share
/// every key. Batches go to either at random; every decision must still be the Rust
/// ring's, so each reads the other's header rightly.
#[tokio::test(flavor = "multi_thread")]
async fn the_script_and_its_previous_release_share_keys_exactly() {
    let current = redis::Script::new(include_str!("../lua/sliding_window.lua"));
    let previous = redis::Script::new(include_str!("fixtures/sliding_window_2fc91eb.lua"));
    let (compared, batches) = replay(&[Release::Current(&current), Release::Previous(&previous)]).await;
    println!("{compared} decisions in {batches} batches, by either script, identical to the Rust ring");
}

/// A script, and the call format it takes.
#[derive(Clone, Copy)]
enum Release<'a> {
    /// `lua/sliding_window.lua`, called as the store calls it.
    Current(&'a redis::Script),
    /// The previous release's script (`tests/fixtures`), in the format of its time: per
    /// check its window count, cost, mode and (limit, window) pairs as separate arguments,
    /// and one reply (a table, or a string) per check.
    Previous(&'a redis::Script),
}

impl Release<'_> {
    /// Decides `checks` in one call at `now`: a reply per check, as `replies_of` gives them.
    async fn call(
        self,
        conn: &mut redis::aio::MultiplexedConnection,
        checks: &[ratelimitd::store::redis::Check<'_>],
        now: u64,
    ) -> Vec<Result<ratelimitd::store::redis::Reply, ratelimitd::store::StoreError>> {
        use ratelimitd::store::StoreError;
        use ratelimitd::store::redis::{invocation, mode_arg, replies_of};
        match self {
            Release::Current(script) => {
                let values = invocation(script, checks, Some(now)).invoke_async(conn).await.expect("the script runs");
                replies_of(checks, values).expect("one reply per check")
            }
            Release::Previous(script) => {
                let mut call = script.prepare_invoke();
                call.arg(now);
                for &(key, limits, cost, mode) in checks {
                    call.key(key).arg(limits.windows().len()).arg(cost).arg(mode_arg(mode));
                    for window in limits.windows() {
                        call.arg(window.limit()).arg(window.window_ms());
                    }
                }
                let values: Vec<redis::Value> = call.invoke_async(conn).await.expect("the script runs");
                assert_eq!(values.len(), checks.len(), "one reply per check");
                let reply = |value| match value {
                    redis::Value::BulkString(words) => Err(StoreError::Failed(String::from_utf8_lossy(&words).into())),
                    value => Ok(redis::from_redis_value(value).expect("a decision's values")),
                };
                values.into_iter().map(reply).collect()
            }
        }
    }
}

/// Replays the random timelines of the parity tests, each batch by one of `scripts` at
/// random, against the Rust ring; the decisions and batches compared.
async fn replay(scripts: &[Release<'_>]) -> (usize, usize) {
    use rand::{Rng, SeedableRng};
    use ratelimitd::limiter::{Limits, Mode, Ring, Window};
    use ratelimitd::store::redis::decode;

    let backend = Backend::redis().await;
    let mut conn = backend.redis.as_ref().unwrap().conn().await;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    // Far enough ahead of the real clock that no key's TTL runs out during the test.
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
        + 10 * 24 * 3600 * 1000;
    let (mut compared, mut batches) = (0, 0);
    for (round, limits) in [[3u32, 5, 8], [4094, 4097, 4100]].into_iter().enumerate() {
        let names: Vec<String> = (0..4).map(|key| format!("parity-{round}-{key}")).collect();
        let mut rings: Vec<Ring> = (0..4).map(|_| Ring::new(limits[0])).collect();
        let mut now = start;
        for _ in 0..700 {
            now += rng.random_range(0..if round == 0 { 30 } else { 200 });
            if rng.random_range(0..20) == 0 {
                now += rng.random_range(0..3_000); // an idle spell: the frontier jumps
            }
            let mut checks = Vec::new();
            for _ in 0..rng.random_range(1..=6) {
                let key = rng.random_range(0..names.len());
                // One to three windows, each with its own limit from the round's set.
                let mut windows = Vec::new();
                for window in [1000u64, 300, 100] {
                    if windows.is_empty() && window == 100 || rng.random_range(0..3) == 0 {
                        let limit = limits[rng.random_range(0..limits.len())];
                        windows.push(Window::new(limit, Duration::from_millis(window)).unwrap());
                    }
                }
                let policy = Limits::new(&windows).unwrap();
                let max = policy.max_cost();
                let cost = if round == 0 { rng.random_range(1..=max) } else { rng.random_range(1..=max / 4) };
                let mode = if rng.random_range(0..8) == 0 { Mode::Peek } else { Mode::Consume };
                let expected = rings[key].check(now, &policy, cost, mode);
                checks.push((key, policy, cost, mode, expected));
            }
            let call: Vec<_> = checks
                .iter()
                .map(|(key, policy, cost, mode, _)| (names[*key].as_bytes(), policy, *cost, *mode))
                .collect();
            let release = scripts[rng.random_range(0..scripts.len())];
            let replies = release.call(&mut conn, &call, now).await;
            for ((key, policy, cost, mode, expected), reply) in checks.iter().zip(replies) {
                let got = decode(policy, *cost, &reply.expect("a decision")).expect("a well-formed reply");
                let name = &names[*key];
                assert_eq!(&got, expected, "{name} at +{} ms, {policy:?}, cost {cost}, {mode:?}", now - start);
                compared += 1;
            }
            batches += 1;
        }
    }
    (compared, batches)
}

/// A key at its limit is denied from its header alone: one read, no write, however
/// many denials, with the retry_after of its oldest counted unit.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_at_its_limit_is_denied_from_its_header_alone() {
    use ratelimitd::bench::command_calls;
    use ratelimitd::limiter::{Limits, Mode, Window};
    use ratelimitd::store::redis::{decode, invocation, replies_of};

    let backend = Backend::redis().await;
    let redis = backend.redis.as_ref().unwrap();
    let mut conn = redis.conn().await;
    let script = redis::Script::new(include_str!("../lua/sliding_window.lua"));
    let limits = Limits::new(&[Window::new(300, Duration::from_secs(60)).unwrap()]).unwrap();
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut decide = async |at: u64| {
        let call = [(b"full".as_slice(), &limits, 1, Mode::Consume)];
        let replies: Vec<redis::Value> = invocation(&script, &call, Some(at)).invoke_async(&mut conn).await.unwrap();
        let reply = replies_of(&call, replies).unwrap().pop().unwrap().expect("a decision");
        decode(&limits, 1, &reply).unwrap()
    };
    // 300 units, one per ms from start; then the first denial.
    for at in start..start + 300 {
        assert!(decide(at).await.allowed);
    }
    assert!(!decide(start + 300).await.allowed);

    let reads_before = command_calls(&redis.url(), &["getrange"]).await.unwrap();
    let writes_before = command_calls(&redis.url(), &["setrange", "set", "pexpireat"]).await.unwrap();
    for at in start + 301..start + 351 {
        let denied = decide(at).await;
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after_ms, start + 60_000 - at, "the oldest unit leaves the window then");
    }
    let reads = command_calls(&redis.url(), &["getrange"]).await.unwrap() - reads_before;
    let writes = command_calls(&redis.url(), &["setrange", "set", "pexpireat"]).await.unwrap() - writes_before;
    println!("50 denials of a full key: {reads} reads, {writes} writes");
    assert_eq!((reads, writes), (50, 0), "one header read per denial, nothing written");

    // Once the oldest unit has left the window, the key allows again, exactly one unit.
    assert!(decide(start + 60_000).await.allowed);
    assert!(!decide(start + 60_000).await.allowed);
}

/// A batch sender whose event loop stops mid-call (a worker thread's runtime shutting
/// down) gives its place back: the connection's next checks are sent, not left waiting.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_cut_off_by_its_event_loop_stopping_does_not_block_the_connection() {
    use ratelimitd::limiter::{Fingerprint, Limits, Mode, Window};
    use ratelimitd::store::Store;
    use std::sync::Arc;

    let backend = Backend::redis().await;
    let redis = backend.redis.as_ref().unwrap();
    let store = Arc::new(one_connection_store(redis, "cut:"));
    let limits = Limits::new(&[Window::new(10, Duration::from_secs(60)).unwrap()]).unwrap();
    let key = Fingerprint::from_bytes([7; 16]);
    assert!(store.check(&key, &limits, 1, Mode::Consume).await.unwrap().allowed);

    // Redis frozen: two batches (as many as a connection may have out) start on an event
    // loop of their own, which then stops while they wait for Redis.
    redis.pause().await;
    let other = Arc::clone(&store);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            for _ in 0..2 {
                let store = Arc::clone(&other);
                tokio::spawn(async move { store.check(&key, &limits, 1, Mode::Consume).await });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
    })
    .join()
    .unwrap();
    redis.unpause().await;

    // The frozen calls reach Redis after all (they were sent): 1 + 2 units counted at most.
    let decision = store.check(&key, &limits, 1, Mode::Consume).await.expect("the connection sends again");
    assert!(decision.allowed);
    assert!(decision.remaining >= 6, "{decision:?}");
}
