//! An outage of a few seconds under three replicas in the `local` failure mode: what the
//! replicas admit while Redis cannot answer stays within the bound stated in
//! docs/design.md ("A failure mode answers"), and once Redis answers again its history holds
//! every request they admitted, at the time each was admitted (rule 4), so the window that
//! follows is exact.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Client, TestServer, check, peek};
use ratelimitd::grpc::pb::Fallback;

const LIMIT: u32 = 30;
const REPLICAS: usize = 3;
/// Requests each replica gets for each key during the outage: more than it may admit.
const TRIES: usize = 20;

/// Waits until every replica's store answers again (a peek not answered by a failure mode),
/// then a few housekeeping ticks, in which each writes back what it admitted.
async fn until_redis_answers(clients: &mut [Client]) {
    let started = Instant::now();
    for client in clients.iter_mut() {
        while peek(client, "probe", 1).await.fallback != Fallback::None as i32 {
            assert!(started.elapsed() < Duration::from_secs(20), "Redis never answered again");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_under_three_replicas_stays_in_its_bound_and_redis_counts_it_after() {
    let backend = Backend::redis().await;
    let redis = backend.redis.as_ref().unwrap();
    let flags = ["--failure-mode", "local", "--expected-replicas", "3", "--redis-timeout", "50ms"];
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..REPLICAS {
        let server = TestServer::start(backend.config_with(LIMIT, "60s", &flags)).await;
        clients.push(server.client().await);
        servers.push(server);
    }
    // Before: "seen" counts 12 units, in turn through the replicas (each last saw 20, 19 and
    // 18 units left); "fresh" none.
    const BEFORE: u32 = 12;
    for i in 0..BEFORE as usize {
        let d = check(&mut clients[i % REPLICAS], "seen", 1).await;
        assert!(d.allowed && d.fallback == Fallback::None as i32, "{d:?}");
    }

    redis.pause().await;
    let outage = Instant::now();
    let (mut seen, mut fresh) = (0, 0);
    let mut first_fresh: Option<Instant> = None;
    for _ in 0..TRIES {
        for client in clients.iter_mut() {
            let d = check(client, "seen", 1).await;
            assert_eq!(d.fallback, Fallback::Local as i32, "{d:?}");
            seen += u32::from(d.allowed);
            let at = Instant::now();
            let d = check(client, "fresh", 1).await;
            assert_eq!(d.fallback, Fallback::Local as i32, "{d:?}");
            if d.allowed {
                first_fresh.get_or_insert(at);
                fresh += 1;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(2_500).saturating_sub(outage.elapsed())).await;
    redis.unpause().await;
    let lasted = outage.elapsed();
    until_redis_answers(&mut clients).await;

    // The bound: over the limit by at most the average, over the replicas, of the units
    // counted after each last saw the key: (2 + 1 + 0) / 3 = 1 for "seen", 0 for "fresh"
    // (no replica had seen it, and nothing was counted).
    let bound_seen = LIMIT + (2 + 1) / REPLICAS as u32;
    println!(
        "outage of {lasted:?}, {REPLICAS} replicas, limit {LIMIT} per 60 s: \"seen\" {BEFORE} before + {seen} during \
         = {} (bound {bound_seen}); \"fresh\" {fresh} during (bound {LIMIT})",
        BEFORE + seen
    );
    assert!(BEFORE + seen <= bound_seen, "{} admitted, bound {bound_seen}", BEFORE + seen);
    assert!(fresh <= LIMIT, "{fresh} admitted, bound {LIMIT}");
    assert!(seen > 0 && fresh > 0, "the local mode admitted nothing: the test tests nothing");

    // After: Redis counts what the replicas admitted, so both keys are at their limit on
    // every replica (without the write-back Redis would still hold 12 and 0).
    for client in clients.iter_mut() {
        for key in ["seen", "fresh"] {
            let d = check(client, key, 1).await;
            assert_eq!(d.fallback, Fallback::None as i32, "{key}: {d:?}");
            assert!(!d.allowed, "{key}: Redis lost the outage's admissions: {d:?}");
        }
    }
    // Each at the time it was admitted: "fresh"'s oldest unit (its first admission) leaves the
    // window 60 s after it was admitted, not 60 s after Redis came back.
    let d = check(&mut clients[0], "fresh", 1).await;
    let since = first_fresh.map_or(Duration::ZERO, |at| at.elapsed());
    let expected = Duration::from_secs(60).saturating_sub(since);
    let retry = Duration::from_millis(d.retry_after_ms);
    println!("\"fresh\" after the outage: retry after {retry:?}, its first unit admitted {since:?} ago");
    assert!(
        retry.abs_diff(expected) < Duration::from_millis(500),
        "retry after {retry:?}: the first unit, admitted {since:?} ago, leaves in {expected:?}"
    );
}
