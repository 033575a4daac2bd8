//! The local deny cache on the Redis store: a key hammered far past its limit costs
//! Redis nothing once denied, with the same answers Redis would give.

mod common;

use std::time::Duration;

use common::{Backend, check};

async fn evalsha_calls(backend: &Backend) -> u64 {
    let mut conn = backend.redis.as_ref().unwrap().conn().await;
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
    let line = info.lines().find(|l| l.starts_with("cmdstat_evalsha:")).unwrap_or("calls=0,");
    line.split(['=', ',']).nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_at_ten_times_its_limit_stops_reaching_redis_with_exact_answers() {
    let backend = Backend::redis().await;
    let server = backend.server(10, "60s").await;
    let mut client = server.client().await;
    let before = evalsha_calls(&backend).await;
    for _ in 0..10 {
        assert!(check(&mut client, "hot", 1).await.allowed);
    }
    let first_denial = check(&mut client, "hot", 1).await;
    assert!(!first_denial.allowed);
    let free_at = first_denial.decided_at_ms + first_denial.retry_after_ms;
    let empty_at = first_denial.decided_at_ms + first_denial.reset_after_ms;
    for _ in 0..89 {
        let d = check(&mut client, "hot", 1).await;
        assert!(!d.allowed && d.remaining == 0 && d.limit == 10, "{d:?}");
        assert_eq!(d.decided_at_ms + d.retry_after_ms, free_at, "the same moment Redis named");
        assert_eq!(d.decided_at_ms + d.reset_after_ms, empty_at);
        assert!(d.decided_at_ms >= first_denial.decided_at_ms);
    }
    let calls = evalsha_calls(&backend).await - before;
    println!(
        "100 checks at 10x the limit: {calls} Redis calls ({:.2} per check once denied)",
        (calls - 10) as f64 / 90.0
    );
    assert_eq!(calls, 11, "10 allowed + 1 denied reach Redis; the other 89 denials do not");
    // A cost above 1 is not proven by a cost-1 denial: it goes to Redis (and is denied).
    assert!(!check(&mut client, "hot", 2).await.allowed);
    assert_eq!(evalsha_calls(&backend).await - before, 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_limit_drops_the_cached_denial() {
    let backend = Backend::redis().await;
    let server = backend.server(2, "60s").await;
    let mut client = server.client().await;
    assert!(check(&mut client, "partner", 2).await.allowed);
    assert!(!check(&mut client, "partner", 1).await.allowed);
    assert!(!check(&mut client, "partner", 1).await.allowed);
    server.set_override("partner", 5, Duration::from_secs(60));
    let raised = check(&mut client, "partner", 1).await;
    assert!(raised.allowed, "the raised limit applies at once: {raised:?}");
    assert_eq!((raised.limit, raised.remaining), (5, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn it_can_be_turned_off() {
    let backend = Backend::redis().await;
    let mut config = backend.config(1, "60s");
    config.deny_cache = false;
    let server = common::TestServer::start(config).await;
    let mut client = server.client().await;
    let before = evalsha_calls(&backend).await;
    for _ in 0..5 {
        check(&mut client, "k", 1).await;
    }
    assert_eq!(evalsha_calls(&backend).await - before, 5);
}
