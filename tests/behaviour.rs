//! The behaviour suite: every scenario runs against both stores, black-box through
//! the generated gRPC client.

mod common;

use std::time::Duration;

use common::{Backend, check, peek, try_check};
use ratelimitd::domain::{Limits, Policy, Window};
use ratelimitd::grpc::pb::CheckAndConsumeResponse;
use tonic::Code;

/// Runs each scenario once on the in-process store and once on a Redis of its own.
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod in_process {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $scenario() {
                super::$scenario(super::Backend::memory()).await
            })*
        }
        mod on_redis {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $scenario() {
                super::$scenario(super::Backend::redis().await).await
            })*
        }
    };
}

on_both_stores!(
    allows_exactly_the_limit_then_denies,
    retry_after_is_honest,
    costs_above_one_use_that_many_units,
    bad_input_is_rejected_and_writes_nothing,
    a_lowered_or_raised_limit_keeps_the_history,
    a_changed_window_applies_to_the_same_history,
    a_longer_window_keeps_the_history_alive,
    keys_are_isolated,
    idle_keys_expire,
    a_request_must_fit_every_window,
    peek_answers_without_counting,
    a_shadow_policy_reports_but_never_denies,
);

async fn allows_exactly_the_limit_then_denies(backend: Backend) {
    let server = backend.server(300, "60s").await;
    let mut client = server.client().await;
    for expected_remaining in (0..300).rev() {
        let d = check(&mut client, "partner-a", 1).await;
        assert!(d.allowed, "request {} of 300 was denied", 300 - expected_remaining);
        assert_eq!((d.limit, d.remaining, d.retry_after_ms), (300, expected_remaining, 0));
        assert_eq!(d.reset_after_ms, 60_000);
    }
    let denied = check(&mut client, "partner-a", 1).await;
    assert!(!denied.allowed, "request 301 was allowed");
    assert_eq!((denied.limit, denied.remaining), (300, 0));
    assert!(denied.retry_after_ms > 0 && denied.retry_after_ms <= 60_000, "{denied:?}");
    assert!(denied.reset_after_ms >= denied.retry_after_ms && denied.reset_after_ms <= 60_000, "{denied:?}");
    assert!(denied.decided_at_ms > 1_600_000_000_000, "decided_at_ms is Unix ms: {denied:?}");
}

async fn retry_after_is_honest(backend: Backend) {
    let server = backend.server(3, "1s").await;
    let mut client = server.client().await;
    for _ in 0..3 {
        assert!(check(&mut client, "k", 1).await.allowed);
    }
    let denied = check(&mut client, "k", 1).await;
    assert!(!denied.allowed);
    let free_at = denied.decided_at_ms + denied.retry_after_ms;
    // Every later denial points at the same moment: only time frees capacity.
    let again = check(&mut client, "k", 1).await;
    assert!(!again.allowed);
    assert_eq!(again.decided_at_ms + again.retry_after_ms, free_at);
    // Sent once retry_after has passed (the response arrived after decided_at), it fits.
    tokio::time::sleep(Duration::from_millis(denied.retry_after_ms)).await;
    let retried = check(&mut client, "k", 1).await;
    assert!(retried.allowed, "retried at {} for free_at {free_at}: {retried:?}", retried.decided_at_ms);
    assert!(retried.decided_at_ms >= free_at);
}

async fn costs_above_one_use_that_many_units(backend: Backend) {
    let server = backend.server(10, "60s").await;
    let mut client = server.client().await;
    assert_eq!(check(&mut client, "k", 4).await.remaining, 6);
    let zero_means_one = check(&mut client, "k", 0).await;
    assert!(zero_means_one.allowed);
    assert_eq!(zero_means_one.remaining, 5);
    let too_much = check(&mut client, "k", 6).await;
    assert!(!too_much.allowed, "6 units with 5 left");
    assert_eq!(too_much.remaining, 5, "a denial consumes nothing");
    let exact_fit = check(&mut client, "k", 5).await;
    assert!(exact_fit.allowed);
    assert_eq!(exact_fit.remaining, 0);
    assert!(!check(&mut client, "k", 1).await.allowed);
}

async fn bad_input_is_rejected_and_writes_nothing(backend: Backend) {
    let server = backend.server(300, "60s").await;
    let mut client = server.client().await;
    let long_key = "s".repeat(257);
    let cases = [("", 1, "key_id"), (long_key.as_str(), 1, "key_id"), ("fresh-key", 301, "cost")];
    for (key_id, cost, field) in cases {
        let status = try_check(&mut client, key_id, cost).await.expect_err("bad input must be rejected");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "message must name {field}: {status:?}");
        assert!(key_id.is_empty() || !status.message().contains(key_id), "the key leaked: {status:?}");
    }
    if let Some(redis) = &backend.redis {
        let keys = history_keys(redis).await;
        assert!(keys.is_empty(), "a rejected request wrote to Redis: {keys:?}");
    }
    // The longest key allowed works, and the rejected cost consumed nothing.
    assert_eq!(check(&mut client, &"s".repeat(256), 1).await.remaining, 299);
    assert_eq!(check(&mut client, "fresh-key", 300).await.remaining, 0);
}

async fn a_lowered_or_raised_limit_keeps_the_history(backend: Backend) {
    let server = backend.server(5, "60s").await;
    let mut client = server.client().await;
    for _ in 0..4 {
        assert!(check(&mut client, "partner", 1).await.allowed);
    }
    server.set_override("partner", 3, Duration::from_secs(60));
    let lowered = check(&mut client, "partner", 1).await;
    assert!(!lowered.allowed, "4 used of a lowered limit of 3: {lowered:?}");
    assert_eq!((lowered.limit, lowered.remaining), (3, 0));
    // Back to 5: all 4 units still count (lowering forgot none), so exactly 1 fits.
    server.set_override("partner", 5, Duration::from_secs(60));
    assert_eq!(check(&mut client, "partner", 1).await.remaining, 0);
    assert!(!check(&mut client, "partner", 1).await.allowed);
    // Raised to 10: the 5 counted units leave exactly 5.
    server.set_override("partner", 10, Duration::from_secs(60));
    let mut allowed = 0;
    while check(&mut client, "partner", 1).await.allowed {
        allowed += 1;
        assert!(allowed <= 10, "the raised limit is not enforced");
    }
    assert_eq!(allowed, 5, "10 minus the 5 units counted");
    // Other keys keep the default.
    assert_eq!(check(&mut client, "other", 1).await.limit, 5);
}

async fn a_changed_window_applies_to_the_same_history(backend: Backend) {
    let server = backend.server(2, "60s").await;
    let mut client = server.client().await;
    assert!(check(&mut client, "k", 1).await.allowed);
    assert!(check(&mut client, "k", 1).await.allowed);
    assert!(!check(&mut client, "k", 1).await.allowed);
    server.set_override("k", 2, Duration::from_millis(300));
    let denied = check(&mut client, "k", 1).await;
    assert!(denied.retry_after_ms <= 300, "the new, shorter window applies: {denied:?}");
    tokio::time::sleep(Duration::from_millis(denied.retry_after_ms.max(1))).await;
    assert!(check(&mut client, "k", 1).await.allowed);
}

async fn a_longer_window_keeps_the_history_alive(backend: Backend) {
    let server = backend.server(2, "300ms").await;
    let mut client = server.client().await;
    assert!(check(&mut client, "k", 2).await.allowed);
    server.set_override("k", 2, Duration::from_secs(60));
    // The first call under the longer window extends the key's life to match it...
    assert!(!check(&mut client, "k", 1).await.allowed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ...so the units, outside the old window but inside the new one, still count.
    let later = check(&mut client, "k", 1).await;
    assert!(!later.allowed, "history expired under the old, shorter window: {later:?}");
    assert!(later.retry_after_ms > 59_000);
}

/// The keys' histories in Redis (named `<prefix>{<fingerprint>}...`; the replicas' presence
/// set is not one). KEYS skips keys past their TTL, which DBSIZE may still count.
async fn history_keys(redis: &common::Redis) -> Vec<String> {
    redis::cmd("KEYS").arg("*{*").query_async(&mut redis.conn().await).await.unwrap()
}

async fn keys_are_isolated(backend: Backend) {
    let server = backend.server(2, "60s").await;
    let mut client = server.client().await;
    assert!(check(&mut client, "a", 2).await.allowed);
    assert!(!check(&mut client, "a", 1).await.allowed);
    let b = check(&mut client, "b", 1).await;
    assert!(b.allowed);
    assert_eq!(b.remaining, 1);
}

async fn idle_keys_expire(backend: Backend) {
    let server = backend.server(2, "300ms").await;
    let mut client = server.client().await;
    assert!(check(&mut client, "k", 2).await.allowed);
    let denied = check(&mut client, "k", 1).await;
    assert!(!denied.allowed);
    tokio::time::sleep(Duration::from_millis(denied.reset_after_ms + 50)).await;
    if let Some(redis) = &backend.redis {
        let keys = history_keys(redis).await;
        assert!(keys.is_empty(), "the idle key outlived its window: {keys:?}");
    }
    let fresh = check(&mut client, "k", 1).await;
    assert!(fresh.allowed);
    assert_eq!(fresh.remaining, 1, "the whole limit is free after an idle window");
}

fn header<'a>(response: &'a CheckAndConsumeResponse, name: &str) -> Option<&'a str> {
    response.headers.iter().find(|h| h.name == name).map(|h| h.value.as_str())
}

/// 5 per minute and 2 per second, in one atomic check: a request is allowed only if it
/// fits both, and one that fits only one of them consumes from neither.
async fn a_request_must_fit_every_window(backend: Backend) {
    let server = backend.server(300, "60s").await;
    let minute = Window::new(5, Duration::from_secs(60)).unwrap();
    let second = Window::new(2, Duration::from_secs(1)).unwrap();
    server.set_policy("k", Policy::new("burst", Limits::new(&[minute, second]).unwrap()));
    let mut client = server.client().await;
    let first = check(&mut client, "k", 2).await;
    assert!(first.allowed);
    assert_eq!((first.limit, first.remaining, first.policy.as_str()), (2, 0, "burst"), "the second binds");
    assert_eq!(header(&first, "RateLimit-Policy"), Some("\"burst-1m\";q=5;w=60, \"burst-1s\";q=2;w=1"));
    assert_eq!(header(&first, "RateLimit"), Some("\"burst-1s\";r=0;t=1"));
    let burst = check(&mut client, "k", 1).await;
    assert!(!burst.allowed && burst.retry_after_ms <= 1_000, "{burst:?}");
    assert_eq!(header(&burst, "Retry-After"), Some("1"));
    tokio::time::sleep(Duration::from_millis(burst.retry_after_ms)).await;
    assert!(check(&mut client, "k", 2).await.allowed, "a new second: 4 of 5 per minute used");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // Fits the second (2 free) but not the minute (1 free): denied, and counted nowhere.
    let over_minute = check(&mut client, "k", 2).await;
    assert!(!over_minute.allowed);
    assert_eq!((over_minute.limit, over_minute.remaining), (5, 1), "the minute binds");
    assert!(over_minute.retry_after_ms > 55_000, "{over_minute:?}");
    assert!(check(&mut client, "k", 1).await.allowed, "the denied request consumed from neither window");
    assert!(!check(&mut client, "k", 1).await.allowed, "5 of 5 per minute");
}

async fn peek_answers_without_counting(backend: Backend) {
    let server = backend.server(3, "60s").await;
    let mut client = server.client().await;
    for _ in 0..5 {
        let peeked = peek(&mut client, "k", 1).await;
        assert!(peeked.allowed);
        assert_eq!((peeked.limit, peeked.remaining), (3, 2), "what CheckAndConsume would leave");
    }
    if let Some(redis) = &backend.redis {
        let keys = history_keys(redis).await;
        assert!(keys.is_empty(), "a peek wrote to Redis: {keys:?}");
    }
    assert!(check(&mut client, "k", 3).await.allowed, "peeks counted nothing");
    let peeked = peek(&mut client, "k", 1).await;
    let denied = check(&mut client, "k", 1).await;
    assert!(!peeked.allowed && !denied.allowed);
    assert_eq!((peeked.remaining, peeked.limit), (denied.remaining, denied.limit));
    assert_eq!(peeked.decided_at_ms + peeked.retry_after_ms, denied.decided_at_ms + denied.retry_after_ms);
    assert_eq!(header(&peeked, "Retry-After"), header(&denied, "Retry-After"));
    let bad = try_peek_status(&mut client, "k", 4).await;
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("cost:"), "{}", bad.message());
}

async fn try_peek_status(client: &mut common::Client, key_id: &str, cost: u32) -> tonic::Status {
    let request = ratelimitd::grpc::pb::PeekRequest { key_id: key_id.to_owned(), cost };
    client.peek(request).await.expect_err("must be rejected")
}

/// A shadow policy computes, counts and reports its decisions but allows every
/// request; switched to enforcing, it starts from the history it counted.
async fn a_shadow_policy_reports_but_never_denies(backend: Backend) {
    let server = backend.server(300, "60s").await;
    let trial = Policy { shadow: true, ..Policy::new("trial", Limits::single(2, Duration::from_secs(60)).unwrap()) };
    server.set_policy("k", trial.clone());
    let mut client = server.client().await;
    let mut shadow_denied = 0;
    for _ in 0..5 {
        let d = check(&mut client, "k", 1).await;
        assert!(d.allowed, "a shadow policy never denies: {d:?}");
        assert_eq!(d.retry_after_ms, 0);
        assert!(d.headers.is_empty(), "clients are not told about a policy on trial: {:?}", d.headers);
        shadow_denied += usize::from(d.shadow_denied);
    }
    assert_eq!(shadow_denied, 3, "the 3rd to 5th would have been denied");
    // Enforced at 3: 2 units were counted (not 5), so exactly one more fits.
    let limits = Limits::single(3, Duration::from_secs(60)).unwrap();
    server.set_policy("k", Policy { shadow: false, limits, ..trial });
    let enforced = check(&mut client, "k", 1).await;
    assert!(enforced.allowed && enforced.remaining == 0, "{enforced:?}");
    let over = check(&mut client, "k", 1).await;
    assert!(!over.allowed && !over.shadow_denied, "{over:?}");
}
