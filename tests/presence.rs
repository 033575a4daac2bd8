//! The replicas sharing a Redis count themselves there (the set `<prefix>replicas`), and the `local`
//! failure mode divides by that count (at least `--expected-replicas`): replicas joining and
//! leaving, with the real binary, each replica's `ratelimitd_replicas` scraped.

mod common;

use std::time::{Duration, Instant};

use common::process::Process;
use common::{Backend, check};
use ratelimitd::grpc::pb::Fallback;

/// A replica, once it serves.
async fn start(url: &str, extra: &[&str]) -> Process {
    let mut args = vec!["--redis-url", url, "--fingerprint-secret", "presence", "--limit", "30", "--window", "60s"];
    args.extend(["--redis-timeout", "50ms"]);
    args.extend(extra);
    let replica = Process::start_logging(&args, "info");
    replica.client().await;
    replica
}

/// The replica count `replica` exports.
fn replicas(replica: &Process) -> Option<u32> {
    let text = replica.scrape();
    let line = text.lines().find(|l| l.starts_with("ratelimitd_replicas "))?;
    line.split_whitespace().nth(1)?.parse::<f64>().ok().map(|v| v as u32)
}

/// Waits until each replica exports its expected count.
async fn until(expected: &[(&Process, u32)], what: &str) {
    let started = Instant::now();
    loop {
        let got: Vec<Option<u32>> = expected.iter().map(|(p, _)| replicas(p)).collect();
        if expected.iter().zip(&got).all(|((_, want), got)| *got == Some(*want)) {
            println!("{what}: {got:?} after {:?}", started.elapsed());
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{what}: replicas export {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_count_themselves_as_they_join_and_leave() {
    let backend = Backend::redis().await;
    let redis = backend.redis.as_ref().unwrap();
    let url = redis.url();
    let a = start(&url, &[]).await;
    let b = start(&url, &[]).await;
    until(&[(&a, 2), (&b, 2)], "two replicas").await;
    // A replica with a floor above the count uses its floor.
    let mut c = start(&url, &["--expected-replicas", "5"]).await;
    until(&[(&a, 3), (&b, 3), (&c, 5)], "a third joins (its floor is 5)").await;
    c.kill();
    until(&[(&a, 2), (&b, 2)], "the third left").await;

    // During an outage the local mode divides by the last count: 30 / 2.
    redis.pause().await;
    let mut client = a.client().await;
    let d = check(&mut client, "k", 1).await;
    assert_eq!((d.fallback, d.limit), (Fallback::Local as i32, 15), "{d:?}");
    redis.unpause().await;
}
