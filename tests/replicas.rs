//! The exactness rule across replicas: three ratelimitd instances share one Redis
//! and 64 concurrent callers; every decision is recorded and checked.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Backend, TestServer, try_check};
use ratelimitd::domain::oracle::{Record, audit};

const LIMIT: u32 = 50;
const WINDOW_MS: u64 = 2_000;
const KEYS: usize = 4;
const CALLERS: usize = 64;
const RUN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_enforce_one_exact_limit_per_key() {
    let backend = Backend::redis().await;
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(TestServer::start(backend.config(LIMIT, "2s")).await);
    }
    let mut callers = Vec::new();
    for caller in 0..CALLERS {
        let mut client = servers[caller % servers.len()].client().await;
        callers.push(tokio::spawn(async move {
            let mut records = Vec::new();
            let started = Instant::now();
            let mut i = caller;
            while started.elapsed() < RUN {
                let key = i % KEYS;
                let cost = 1 + (i / KEYS % 3) as u32;
                i += 1;
                let d = try_check(&mut client, &format!("key-{key}"), cost).await?;
                records.push((key, Record { allowed: d.allowed, cost, at_ms: d.decided_at_ms }));
            }
            Ok::<_, tonic::Status>(records)
        }));
    }
    let mut by_key: HashMap<usize, Vec<Record>> = HashMap::new();
    for caller in callers {
        for (key, record) in caller.await.expect("caller panicked").expect("no call may fail") {
            by_key.entry(key).or_default().push(record);
        }
    }
    assert_eq!(by_key.len(), KEYS);
    common::assert_exact("3 replicas", &by_key, LIMIT, WINDOW_MS, true);
}

#[test]
fn the_checker_finds_over_admission_and_wrong_denials() {
    let rec = |allowed, at_ms| Record { allowed, cost: 1, at_ms };
    // limit 2 per 100 ms: three allowed within 100 ms is one too many.
    assert_eq!(audit(&[rec(true, 0), rec(true, 50), rec(true, 99)], 2, 100).max_in_window, 3);
    assert_eq!(audit(&[rec(true, 0), rec(true, 50), rec(true, 100)], 2, 100).max_in_window, 2);
    // A denial at 100 with only the unit at 50 in (0, 100] was wrong; at 99 it was right.
    assert_eq!(audit(&[rec(true, 0), rec(true, 50), rec(false, 100)], 2, 100).wrongly_denied, 1);
    assert_eq!(audit(&[rec(true, 0), rec(true, 50), rec(false, 99)], 2, 100).wrongly_denied, 0);
}
