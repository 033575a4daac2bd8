//! The exactness rule across replicas: three ratelimitd instances share one Redis
//! and 64 concurrent callers; every decision is recorded and checked.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Backend, TestServer};
use ratelimitd::domain::oracle::{Record, audit};
use ratelimitd::grpc::pb::{CheckAndConsumeRequest, Fallback};

const LIMIT: u32 = 50;
const WINDOW_MS: u64 = 2_000;
const KEYS: usize = 4;
const CALLERS: usize = 64;
const RUN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_enforce_one_exact_limit_per_key() {
    let fell_back = saturate(&[], None).await;
    assert_eq!(fell_back, 0, "Redis answered every check within the tests' 2 s");
}

/// The same with the default `--redis-timeout` (50 ms) and callers that send their
/// deadline, as Envoy does: a check waits for Redis while its caller waits, so under
/// saturating load no failure mode answers (with a 10 ms bound and no deadline, 2 of
/// ~48,000 checks did, and the local mode over-admitted).
#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_under_load_with_the_default_timeout_never_fall_back() {
    let fell_back = saturate(&["--redis-timeout", "50ms"], Some(Duration::from_secs(1))).await;
    assert_eq!(fell_back, 0, "checks answered by a failure mode");
}

/// 64 callers over three replicas for RUN, every decision checked against the rule;
/// returns how many a failure mode answered.
async fn saturate(flags: &[&str], deadline: Option<Duration>) -> usize {
    let backend = Backend::redis().await;
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(TestServer::start(backend.config_with(LIMIT, "2s", flags)).await);
    }
    let mut callers = Vec::new();
    for caller in 0..CALLERS {
        let mut client = servers[caller % servers.len()].client().await;
        callers.push(tokio::spawn(async move {
            let (mut records, mut fell_back) = (Vec::new(), 0);
            let started = Instant::now();
            let mut i = caller;
            while started.elapsed() < RUN {
                let key = i % KEYS;
                let cost = 1 + (i / KEYS % 3) as u32;
                i += 1;
                let mut request = tonic::Request::new(CheckAndConsumeRequest { key_id: format!("key-{key}"), cost });
                if let Some(deadline) = deadline {
                    request.set_timeout(deadline);
                }
                let d = client.check_and_consume(request).await?.into_inner();
                if d.fallback == Fallback::None as i32 {
                    records.push((key, Record { allowed: d.allowed, cost, at_ms: d.decided_at_ms }));
                } else {
                    fell_back += 1;
                }
            }
            Ok::<_, tonic::Status>((records, fell_back))
        }));
    }
    let (mut by_key, mut fell_back): (HashMap<usize, Vec<Record>>, usize) = (HashMap::new(), 0);
    for caller in callers {
        let (records, fallbacks) = caller.await.expect("caller panicked").expect("no call may fail");
        fell_back += fallbacks;
        for (key, record) in records {
            by_key.entry(key).or_default().push(record);
        }
    }
    assert_eq!(by_key.len(), KEYS);
    common::assert_exact("3 replicas", &by_key, LIMIT, WINDOW_MS, true);
    fell_back
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
