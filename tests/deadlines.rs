//! Rule 4 and callers' deadlines (issue: exact through faults), against a real Redis frozen
//! with `docker pause`: a slow call is waited for as long as its caller waits, and a check
//! answered by a failure mode is never counted, not even when Redis runs its call later.

mod common;

use std::time::Duration;

use common::{Backend, Client, TestServer};
use ratelimitd::grpc::pb::{CheckAndConsumeRequest, CheckAndConsumeResponse, Fallback, PeekRequest};

/// A check with the caller's deadline (`grpc-timeout`), if any.
async fn check_within(
    client: &mut Client,
    key: &str,
    cost: u32,
    deadline: Option<Duration>,
) -> CheckAndConsumeResponse {
    let mut request = tonic::Request::new(CheckAndConsumeRequest { key_id: key.into(), cost });
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    client.check_and_consume(request).await.expect("a decision").into_inner()
}

/// The units a key has left: a peek of cost 1 answers what would remain after it.
async fn units_left(client: &mut Client, key: &str) -> u32 {
    let request = PeekRequest { key_id: key.into(), cost: 1 };
    client.peek(request).await.expect("a decision").into_inner().remaining + 1
}

/// Redis frozen for 150 ms while a key sits at its limit, with `--redis-timeout 10ms` and
/// the `local` failure mode: a caller that waits 2 s gets Redis's own answer (denied), not
/// one of the local mode's from an empty history (which allowed 10 of 5 before).
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_call_is_waited_for_while_its_caller_waits() {
    let backend = Backend::redis().await;
    let extra = ["--redis-timeout", "10ms", "--failure-mode", "local"];
    let server = TestServer::start(backend.config_with(5, "60s", &extra)).await;
    let mut client = server.client().await;
    for _ in 0..5 {
        assert!(check_within(&mut client, "full", 1, Some(Duration::from_secs(2))).await.allowed);
    }
    let redis = backend.redis.as_ref().unwrap();
    redis.pause().await;
    let mut waiting = client.clone();
    let call = tokio::spawn(async move { check_within(&mut waiting, "full", 1, Some(Duration::from_secs(2))).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    redis.unpause().await;
    let answer = call.await.unwrap();
    assert_eq!((answer.allowed, answer.fallback), (false, Fallback::None as i32), "{answer:?}");
    assert!(answer.retry_after_ms > 50_000, "Redis's own retry_after: {answer:?}");
}

/// `--failure-mode closed`, a cost-4 check whose Redis call misses its deadline (the
/// caller's 100 ms, or `--redis-timeout` for a caller that sends none): answered denied by
/// the failure mode, and Redis, running the call once it is unfrozen, counts nothing
/// (before, it counted it: remaining 4 -> 0).
#[tokio::test(flavor = "multi_thread")]
async fn a_check_answered_by_a_failure_mode_is_never_counted_by_a_late_call() {
    let backend = Backend::redis().await;
    let extra = ["--redis-timeout", "100ms", "--failure-mode", "closed"];
    let server = TestServer::start(backend.config_with(5, "60s", &extra)).await;
    let mut client = server.client().await;
    let redis = backend.redis.as_ref().unwrap();
    for (key, deadline) in [("by-caller", Some(Duration::from_millis(100))), ("by-flag", None)] {
        assert!(check_within(&mut client, key, 1, deadline).await.allowed);
        redis.pause().await;
        let answer = check_within(&mut client, key, 4, deadline).await;
        assert_eq!((answer.allowed, answer.fallback), (false, Fallback::Closed as i32), "{key}: {answer:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.unpause().await;
        assert_eq!(units_left(&mut client, key).await, 4, "{key}: the denied check was not counted");
    }
}

/// Checks of cost 1,000,000 on new keys (what an LLM-token policy sees) while other keys
/// are checked, with the default `--redis-timeout` and no caller deadline: each big check
/// costs Redis a few commands, so no other key's check misses its deadline (when a check
/// wrote one slot per unit, each held Redis ~105 ms and other keys fell back).
#[tokio::test(flavor = "multi_thread")]
async fn a_costly_check_delays_no_other_key() {
    let backend = Backend::redis().await;
    let extra = ["--redis-timeout", "50ms", "--failure-mode", "closed"];
    let server = TestServer::start(backend.config_with(1_000_000, "60s", &extra)).await;
    let mut big = server.client().await;
    let heavy = tokio::spawn(async move {
        for i in 0..40 {
            let answer = check_within(&mut big, &format!("tokens-{i}"), 1_000_000, None).await;
            assert_eq!((answer.allowed, answer.fallback), (true, Fallback::None as i32), "{answer:?}");
        }
    });
    let mut small = Vec::new();
    for caller in 0..8 {
        let mut client = server.client().await;
        small.push(tokio::spawn(async move {
            let mut fell_back = 0;
            for i in 0..50 {
                let answer = check_within(&mut client, &format!("small-{caller}-{i}"), 1, None).await;
                fell_back += usize::from(answer.fallback != Fallback::None as i32);
            }
            fell_back
        }));
    }
    heavy.await.unwrap();
    let mut fell_back = 0;
    for caller in small {
        fell_back += caller.await.unwrap();
    }
    assert_eq!(fell_back, 0, "checks of other keys answered by the failure mode");
}
