//! The domain: policies, decisions, input validation and the exactness rule.
//! Nothing here knows about gRPC or Redis; stores implement [`crate::store::Store`].

mod deny_cache;
mod fingerprint;
mod policy;
mod ring;

pub use deny_cache::DenyCache;
pub use fingerprint::{Fingerprint, Fingerprinter};
pub use policy::{MAX_LIMIT, MAX_WINDOW, Policies, Policy, PolicyError, SharedPolicies};
pub use ring::Ring;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::metrics::{self, InFlight, Throttled};
use crate::store::{Store, StoreError};

/// The longest `key_id` accepted, in bytes.
pub const MAX_KEY_ID_BYTES: usize = 256;

/// One decision, on the store's clock (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    /// Units still available in the window after this decision.
    pub remaining: u32,
    /// 0 when allowed; when denied, the wait until the same request fits if nothing else is allowed.
    pub retry_after_ms: u64,
    /// The wait until the window holds no counted unit.
    pub reset_after_ms: u64,
    pub decided_at_ms: u64,
}

/// Why a check produced no decision. Messages name the field and value, never the key.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CheckError {
    fn invalid(field: &'static str, reason: String) -> Self {
        Self::InvalidArgument { field, reason }
    }
}

/// Validates requests, picks each key's policy and asks the store to decide.
#[derive(Debug)]
pub struct Limiter<S> {
    store: S,
    policies: SharedPolicies,
    fingerprinter: Fingerprinter,
    throttled: Arc<Throttled>,
    deny_cache: Option<DenyCache>,
    /// Whether the store answered last time; the health metric changes only on a flip.
    store_up: AtomicBool,
}

impl<S: Store> Limiter<S> {
    pub fn new(store: S, policies: SharedPolicies, fingerprinter: Fingerprinter, throttled: Arc<Throttled>) -> Self {
        metrics::store_up(true);
        Self { store, policies, fingerprinter, throttled, deny_cache: None, store_up: AtomicBool::new(true) }
    }

    /// Answers a key's cost-1 requests locally while a denial from the store proves
    /// them denied (see [`DenyCache`]): worth it when the store is remote.
    pub fn with_deny_cache(mut self) -> Self {
        self.deny_cache = Some(DenyCache::default());
        self
    }

    pub fn deny_cache(&self) -> Option<&DenyCache> {
        self.deny_cache.as_ref()
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Counts `cost` units (0 means 1) against `key_id` if they fit. A rejected
    /// request writes nothing. Records the key's fingerprint in the current span.
    pub async fn check_and_consume(&self, key_id: &str, cost: u32) -> Result<Decision, CheckError> {
        let started = Instant::now();
        let key = self.key(key_id).inspect_err(count_invalid)?;
        tracing::Span::current().record("key", tracing::field::display(&key));
        let (policy, overridden) = self.policies.lookup(&key);
        let cost = validate_cost(cost, policy).inspect_err(count_invalid)?;
        let result = match self.deny_cache.as_ref().and_then(|cache| cache.lookup(&key, policy, cost)) {
            Some(cached) => {
                metrics::deny_cache_hit();
                Ok(cached)
            }
            None => self.decide(&key, policy, cost).await,
        };
        metrics::check_done(overridden, cost, result.as_ref().map(|d| d.allowed).map_err(|_| ()), started.elapsed());
        if let Ok(decision) = &result {
            self.throttled.record(&key, decision);
        }
        Ok(result?)
    }

    /// Whether the store answered last time (a call or a health probe).
    pub fn store_is_up(&self) -> bool {
        self.store_up.load(Ordering::Relaxed)
    }

    /// Records whether the store answers (a call's outcome, or a health probe's).
    pub fn note_store_health(&self, up: bool) {
        if self.store_up.swap(up, Ordering::Relaxed) != up {
            metrics::store_up(up);
        }
    }

    /// Asks the store, notes whether it answered (only a real store call says so, not
    /// a cached denial), and remembers a denial that proves later ones.
    async fn decide(&self, key: &Fingerprint, policy: Policy, cost: u32) -> Result<Decision, StoreError> {
        let _in_flight = InFlight::start();
        let sent = Instant::now();
        let result = self.store.check_and_consume(key, policy, cost).await;
        match &result {
            Ok(decision) => {
                self.note_store_health(true);
                if let Some(cache) = &self.deny_cache {
                    cache.remember(key, policy, cost, sent, decision);
                }
            }
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "store call failed");
                self.note_store_health(!e.is_transient());
            }
        }
        result
    }

    fn key(&self, key_id: &str) -> Result<Fingerprint, CheckError> {
        if key_id.is_empty() {
            return Err(CheckError::invalid("key_id", "must not be empty".into()));
        }
        if key_id.len() > MAX_KEY_ID_BYTES {
            let reason = format!("is {} bytes long; at most {MAX_KEY_ID_BYTES} are allowed", key_id.len());
            return Err(CheckError::invalid("key_id", reason));
        }
        Ok(self.fingerprinter.fingerprint(key_id))
    }
}

fn count_invalid(error: &CheckError) {
    if let CheckError::InvalidArgument { field, .. } = error {
        metrics::invalid_request(field);
    }
}

fn validate_cost(cost: u32, policy: Policy) -> Result<u32, CheckError> {
    let cost = cost.max(1);
    if cost > policy.limit() {
        let reason =
            format!("{cost} is greater than the key's limit of {}, so it can never be allowed", policy.limit());
        return Err(CheckError::invalid("cost", reason));
    }
    Ok(cost)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::MemoryStore;

    fn limiter(limit: u32) -> Limiter<MemoryStore> {
        let policy = Policy::new(limit, Duration::from_secs(60)).unwrap();
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

    fn field_of(result: Result<Decision, CheckError>) -> &'static str {
        match result {
            Err(CheckError::InvalidArgument { field, .. }) => field,
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
        async fn check_and_consume(&self, _: &Fingerprint, policy: Policy, _: u32) -> Result<Decision, StoreError> {
            if self.down.load(Ordering::Relaxed) {
                return Err(StoreError::Unavailable("down for the test".into()));
            }
            let (retry_after_ms, decided_at_ms) = (60_000, 1_000);
            let limit = policy.limit();
            Ok(Decision { allowed: false, limit, remaining: 0, retry_after_ms, reset_after_ms: 60_000, decided_at_ms })
        }
    }

    #[tokio::test]
    async fn a_cached_denial_says_nothing_about_store_health() {
        let base = limiter(3);
        let store = Flaky { down: AtomicBool::new(false) };
        let limiter = Limiter::new(store, base.policies.clone(), base.fingerprinter.clone(), base.throttled.clone())
            .with_deny_cache();
        assert!(!limiter.check_and_consume("k", 1).await.unwrap().allowed, "denied, and cached");
        limiter.store().down.store(true, Ordering::Relaxed);
        assert!(limiter.check_and_consume("k", 2).await.is_err(), "cost 2 goes to the store, which is down");
        assert!(!limiter.store_is_up());
        assert!(!limiter.check_and_consume("k", 1).await.unwrap().allowed, "answered from the cache");
        assert!(!limiter.store_is_up(), "a cache hit must not mark a down store as up");
    }

    #[tokio::test]
    async fn zero_cost_means_one_and_the_whole_limit_fits() {
        let limiter = limiter(3);
        assert_eq!(limiter.check_and_consume("k", 0).await.unwrap().remaining, 2);
        assert!(limiter.check_and_consume("j", 3).await.unwrap().allowed);
    }
}
