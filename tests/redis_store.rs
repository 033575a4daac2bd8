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

/// The Lua script and the Rust ring (the in-process store) must decide alike. This
/// replays random timelines (limits up and down, one to three windows at once, window
/// lengths changing, costs, peeks, both the whole-ring and the slot-by-slot path of the
/// script) on both and compares every field.
#[tokio::test(flavor = "multi_thread")]
async fn the_script_and_the_rust_ring_decide_alike() {
    use rand::{Rng, SeedableRng};
    use ratelimitd::limiter::{Limits, Mode, Ring, Window};
    use ratelimitd::store::redis::{decode, mode_arg};

    let backend = Backend::redis().await;
    let mut conn = backend.redis.as_ref().unwrap().conn().await;
    let script = redis::Script::new(include_str!("../lua/sliding_window.lua"));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    // Far enough ahead of the real clock that no key's TTL runs out during the test.
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
        + 10 * 24 * 3600 * 1000;
    let mut compared = 0;
    for (round, limits) in [[3u32, 5, 8], [4094, 4097, 4100]].into_iter().enumerate() {
        for key in 0..4 {
            let name = format!("parity-{round}-{key}");
            let mut ring = Ring::new(limits[0]);
            let mut now = start;
            for _ in 0..600 {
                now += rng.random_range(0..if round == 0 { 60 } else { 400 });
                if rng.random_range(0..20) == 0 {
                    now += rng.random_range(0..3_000); // an idle spell: the frontier jumps
                }
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
                let expected = ring.check(now, &policy, cost, mode);
                let mut invocation = script.key(&name);
                invocation.arg(cost).arg(mode_arg(mode)).arg(now);
                for w in policy.windows() {
                    invocation.arg(w.limit()).arg(w.window_ms());
                }
                let reply: Vec<u64> = invocation.invoke_async(&mut conn).await.expect("the script runs");
                let got = decode(&policy, cost, &reply).expect("a well-formed reply");
                assert_eq!(got, expected, "{name} at +{} ms, {policy:?}, cost {cost}, {mode:?}", now - start);
                compared += 1;
            }
        }
    }
    println!("{compared} decisions identical in Lua and Rust");
}
