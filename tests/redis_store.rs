//! What only the Redis store has: key names, memory per key, and recovery when
//! Redis loses its scripts or restarts empty.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, check, try_check};

/// Every key in Redis, sorted.
async fn keys(backend: &Backend) -> Vec<String> {
    let redis = backend.redis.as_ref().expect("a Redis backend");
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut redis.conn().await).await.expect("KEYS");
    keys.sort();
    keys
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
    let expected = format!("ratelimitd:{{{}}}:2", server.fingerprint(api_key));
    // Besides the key's history, only the set of replicas sharing the Redis (`Store::presence`).
    assert_eq!(keys(&backend).await, vec!["ratelimitd:replicas".to_owned(), expected]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saturated_key_at_300_takes_at_most_1300_bytes() {
    let backend = Backend::redis().await;
    let server = backend.server(300, "60s").await;
    let mut client = server.client().await;
    for _ in 0..300 {
        assert!(check(&mut client, "busy", 1).await.allowed);
    }
    assert!(!check(&mut client, "busy", 1).await.allowed);
    let key = keys(&backend).await.into_iter().find(|k| k.contains('{')).expect("the key's history");
    let mut conn = backend.redis.as_ref().unwrap().conn().await;
    let bytes: u64 = redis::cmd("MEMORY").arg("USAGE").arg(&key).query_async(&mut conn).await.unwrap();
    let ttl_ms: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.unwrap();
    println!("MEMORY USAGE of a saturated key at L = 300: {bytes} bytes");
    assert!(bytes <= 1300, "{bytes} bytes per saturated key");
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
    // history gone: only under-counting, bounded by what Redis lost. A lane whose
    // connection broke fails its next call and reconnects; until then (and while the
    // circuit breaker those failures may open is open) the failure mode answers, which
    // counts nothing in Redis.
    assert!(!check(&mut client, "k", 1).await.allowed);
    for remaining in [8, 6, 4, 2] {
        let d = loop {
            let d = check(&mut client, "k", 2).await;
            if d.fallback == 0 {
                break d;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "a lane never reconnected: {d:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(d.remaining, remaining, "decided by Redis: {d:?}");
    }
}

/// Checks that arrive while a connection's calls are out share the next script call,
/// and are decided exactly as one by one. Redis is frozen while 20 checks of one key
/// arrive: two calls are out (one check each), the other 18 wait and leave together.
#[tokio::test(flavor = "multi_thread")]
async fn checks_waiting_for_a_busy_connection_share_one_script_call() {
    use ratelimitd::domain::{Fingerprint, Limits, Mode, Window};
    use ratelimitd::store::Store;

    let backend = Backend::redis().await;
    let redis = backend.redis.as_ref().unwrap();
    let store = std::sync::Arc::new(one_connection_store(redis, "shared:"));
    let limits = Limits::new(&[Window::new(5, Duration::from_secs(60)).unwrap()]).unwrap();
    let key = Fingerprint::from_bytes([3; 16]);
    // The script loaded and the connection open, so that nothing but the checks is timed.
    store.prepare().await.unwrap();
    store.check(&Fingerprint::from_bytes([4; 16]), &limits, 1, Mode::Consume).await.unwrap();
    let before = ratelimitd_bench::script_calls(&redis.url()).await.unwrap();

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
    let calls = ratelimitd_bench::script_calls(&redis.url()).await.unwrap() - before;
    println!("20 checks in {calls} script calls");
    assert_eq!(calls, 3, "20 checks: one each for the two calls out, then one for the 18 that waited");
}

/// A Redis demoted to a replica (a failover that keeps client connections) answers the
/// script's first write with READONLY: the call fails as transient (the failure mode
/// answers) and the store reconnects, so that it follows the master once there is one.
#[tokio::test(flavor = "multi_thread")]
async fn a_demoted_redis_fails_the_call_as_transient_and_the_store_reconnects() {
    use ratelimitd::domain::{Fingerprint, Limits, Mode, Window};
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
        previous_layout: true,
        timeout: Duration::from_secs(2),
        longest_wait: Duration::from_secs(2),
        connections: 1,
        batch: 32,
        tls: None,
        password: None,
    })
    .expect("a valid Redis URL")
}

/// A batch sender whose event loop stops mid-call (a worker thread's runtime shutting
/// down) gives its place back: the connection's next checks are sent, not left waiting.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_cut_off_by_its_event_loop_stopping_does_not_block_the_connection() {
    use ratelimitd::domain::{Fingerprint, Limits, Mode, Window};
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
