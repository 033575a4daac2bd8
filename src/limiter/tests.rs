//! Unit tests of the limiter module.

use std::time::Duration;

use super::*;
use crate::domain::{MAX_KEY_ID_BYTES, WindowCheck};
use crate::store::MemoryStore;

fn limiter(limit: u32) -> Limiter<MemoryStore> {
    let policy = Policy::default_with(limit, Duration::from_secs(60)).unwrap();
    let throttled = Arc::new(Throttled::new(metrics::ThrottleOptions {
        top_k: 20,
        interval: Duration::from_secs(60),
        near_limit_fraction: 0.8,
    }));
    Limiter::new(
        MemoryStore::new(),
        SharedPolicies::new(Policies::uniform(policy)),
        Fingerprinter::new(b"s"),
        throttled,
    )
}

fn field_of(result: Result<Verdict, CheckError>) -> &'static str {
    match result {
        Err(CheckError::Invalid(invalid)) => invalid.field(),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_input_names_its_field_and_writes_nothing() {
    let limiter = limiter(300);
    assert_eq!(field_of(limiter.check_and_consume("", 1).await), "key_id");
    let long = "k".repeat(MAX_KEY_ID_BYTES + 1);
    assert_eq!(field_of(limiter.check_and_consume(&long, 1).await), "key_id");
    assert_eq!(field_of(limiter.check_and_consume("k", 301).await), "cost");
    assert!(limiter.store().is_empty(), "a rejected request wrote to the store");
}

#[tokio::test]
async fn messages_never_carry_the_key() {
    let long = format!("sk_live_{}", "7".repeat(MAX_KEY_ID_BYTES));
    let error = limiter(3).check_and_consume(&long, 1).await.unwrap_err().to_string();
    assert!(!error.contains("sk_live_"), "{error}");
}

/// A store that denies every request for a minute, or fails while `down`.
struct Flaky {
    down: AtomicBool,
}

impl Store for Flaky {
    async fn check(&self, _: &Fingerprint, limits: &Limits, c: u32, _: Mode) -> Result<Decision, StoreError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable("down for the test".into()));
        }
        let full = [WindowCheck { spare: 0, retry_after_ms: 60_000 }];
        Ok(Decision::assemble(limits, c, 1_000, 1_000, &full))
    }
}

#[tokio::test]
async fn a_cached_denial_says_nothing_about_store_health() {
    let base = limiter(3);
    let store = Flaky { down: AtomicBool::new(false) };
    let limiter = Limiter::new(store, base.policies.clone(), base.fingerprinter.clone(), base.throttled.clone())
        .with_deny_cache();
    assert!(!limiter.check_and_consume("k", 1).await.unwrap().decision.allowed, "denied, and cached");
    limiter.store().down.store(true, Ordering::Relaxed);
    let fell_back = limiter.check_and_consume("k", 2).await.unwrap();
    assert_eq!(fell_back.fallback, Some(FailureMode::Local), "cost 2 goes to the store, which is down");
    assert!(!limiter.store_is_up());
    assert!(!limiter.check_and_consume("k", 1).await.unwrap().decision.allowed, "answered from the cache");
    assert!(!limiter.store_is_up(), "a cache hit must not mark a down store as up");
}

#[tokio::test]
async fn zero_cost_means_one_and_the_whole_limit_fits() {
    let limiter = limiter(3);
    assert_eq!(limiter.check_and_consume("k", 0).await.unwrap().decision.remaining, 2);
    assert!(limiter.check_and_consume("j", 3).await.unwrap().decision.allowed);
}

#[tokio::test]
async fn a_shadow_policy_allows_and_says_it_would_have_denied() {
    let mut policy = Policy::default_with(1, Duration::from_secs(60)).unwrap();
    policy.shadow = true;
    let base = limiter(1);
    base.policies.replace(Policies::uniform(policy));
    assert!(!base.check_and_consume("k", 1).await.unwrap().shadow_denied);
    let verdict = base.check_and_consume("k", 1).await.unwrap();
    assert!(verdict.decision.allowed && verdict.shadow_denied);
    assert_eq!((verdict.decision.remaining, verdict.decision.retry_after_ms), (0, 0));
}

#[tokio::test]
async fn peek_counts_nothing() {
    let limiter = limiter(1);
    for _ in 0..3 {
        assert!(limiter.peek("k", 1).await.unwrap().decision.allowed);
    }
    assert!(limiter.store().is_empty(), "a peek wrote to the store");
    assert!(limiter.check_and_consume("k", 1).await.unwrap().decision.allowed);
    assert!(!limiter.peek("k", 1).await.unwrap().decision.allowed);
}

/// A store that answers with `remaining` units left (or denies for a minute at 0), or
/// fails while `down`.
struct Leaves {
    down: AtomicBool,
    remaining: u32,
}

impl Store for Leaves {
    async fn check(&self, _: &Fingerprint, limits: &Limits, c: u32, _: Mode) -> Result<Decision, StoreError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable("down for the test".into()));
        }
        let window = if self.remaining == 0 {
            WindowCheck { spare: 0, retry_after_ms: 60_000 }
        } else {
            WindowCheck { spare: self.remaining + c, retry_after_ms: 0 }
        };
        Ok(Decision::assemble(limits, c, 1_000, 1_000, &[window]))
    }
}

/// The local failure mode continues from what the store last said, not from an empty
/// history: with 4 units left and 2 replicas, this one admits 2 (a fresh share of 10 / 2
/// would be 5); a key last denied stays denied until the store's retry time.
async fn local_mode_after(remaining: u32) -> Vec<bool> {
    let base = limiter(10);
    let store = Leaves { down: AtomicBool::new(false), remaining };
    let limiter = Limiter::new(store, base.policies.clone(), base.fingerprinter.clone(), base.throttled.clone())
        .with_expected_replicas(2);
    limiter.check_and_consume("k", 1).await.unwrap();
    limiter.store().down.store(true, Ordering::Relaxed);
    let mut allowed = Vec::new();
    for _ in 0..6 {
        let verdict = limiter.check_and_consume("k", 1).await.unwrap();
        assert_eq!(verdict.fallback, Some(FailureMode::Local));
        if !verdict.decision.allowed {
            assert!(verdict.decision.retry_after_ms > 50_000, "{verdict:?}");
        }
        allowed.push(verdict.decision.allowed);
    }
    allowed
}

#[tokio::test]
async fn the_local_mode_continues_from_what_the_store_last_said() {
    assert_eq!(local_mode_after(4).await, [true, true, false, false, false, false], "a share of 4 / 2");
    assert_eq!(local_mode_after(0).await, [false; 6], "denied until the store's time");
}
