//! Unit tests of the limiter module.

use std::time::Duration;

use super::*;
use crate::domain::{MAX_KEY_ID_BYTES, WindowCheck};
use crate::store::{Admitted, Held, MemoryStore};

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

    async fn record_admitted(&self, admitted: &[Admitted]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        Ok(vec![Ok(()); admitted.len()])
    }

    async fn requests(&self, _: &Fingerprint) -> Result<Held, StoreError> {
        Ok(Held::default())
    }

    async fn forget(&self, _: &Fingerprint) -> Result<bool, StoreError> {
        Ok(false)
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

    async fn record_admitted(&self, admitted: &[Admitted]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        Ok(vec![Ok(()); admitted.len()])
    }

    async fn requests(&self, _: &Fingerprint) -> Result<Held, StoreError> {
        Ok(Held::default())
    }

    async fn forget(&self, _: &Fingerprint) -> Result<bool, StoreError> {
        Ok(false)
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

/// The in-process store, failing every call while `down`.
#[derive(Default)]
struct Switched {
    store: MemoryStore,
    down: AtomicBool,
}

impl Switched {
    fn up(&self) -> Result<(), StoreError> {
        match self.down.load(Ordering::Relaxed) {
            true => Err(StoreError::Unavailable("down for the test".into())),
            false => Ok(()),
        }
    }
}

impl Store for Switched {
    async fn check(&self, key: &Fingerprint, limits: &Limits, c: u32, mode: Mode) -> Result<Decision, StoreError> {
        self.up()?;
        self.store.check(key, limits, c, mode).await
    }

    async fn record_admitted(&self, admitted: &[Admitted]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.up()?;
        self.store.record_admitted(admitted).await
    }

    async fn requests(&self, key: &Fingerprint) -> Result<Held, StoreError> {
        self.up()?;
        self.store.requests(key).await
    }

    async fn forget(&self, key: &Fingerprint) -> Result<bool, StoreError> {
        self.up()?;
        self.store.forget(key).await
    }
}

/// Rule 4: what the failure modes admitted while the store was down is counted by the store
/// once it answers, before it decides the key again; denials are never counted.
#[tokio::test]
async fn the_failure_modes_admissions_are_counted_once_the_store_answers() {
    for (failure, admitted) in [(FailureMode::Local, 6), (FailureMode::Open, 9), (FailureMode::Closed, 0)] {
        let mut policy = Policy::default_with(10, Duration::from_secs(60)).unwrap();
        policy.failure = failure;
        let base = limiter(10);
        base.policies.replace(Policies::uniform(policy));
        let limiter =
            Limiter::new(Switched::default(), base.policies.clone(), base.fingerprinter.clone(), base.throttled);
        for _ in 0..4 {
            assert!(limiter.check_and_consume("k", 1).await.unwrap().decision.allowed);
        }
        limiter.store().down.store(true, Ordering::Relaxed);
        let mut allowed = 0;
        for _ in 0..9 {
            let verdict = limiter.check_and_consume("k", 1).await.unwrap();
            assert_eq!(verdict.fallback, Some(failure));
            allowed += usize::from(verdict.decision.allowed);
        }
        assert_eq!(allowed, admitted, "{failure:?} while the store is down");
        limiter.store().down.store(false, Ordering::Relaxed);
        // The circuit breaker opened: its trial call comes after the cool-down.
        tokio::time::sleep(breaker::COOL_DOWN + Duration::from_millis(50)).await;
        let mut after = 0;
        loop {
            let verdict = limiter.check_and_consume("k", 1).await.unwrap();
            assert_eq!(verdict.fallback, None, "{failure:?}: the store answers again");
            if !verdict.decision.allowed {
                break;
            }
            after += 1;
        }
        assert_eq!(after, 6usize.saturating_sub(admitted), "{failure:?}: the store counts what was admitted");
        assert!(!limiter.owed.any(), "nothing left owed");
    }
}
