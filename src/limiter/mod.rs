//! Floor 4, the service: validates requests, picks each key's policy, and asks the
//! store to decide, with the deny cache in front of the store, the circuit breaker
//! around it, the failure modes behind it, all-or-nothing decisions over several keys
//! ([`multi`]), and its own housekeeping ([`housekeeping`]).

mod breaker;
mod denials;
mod deny_cache;
pub mod desk;
mod failure;
pub mod headers;
pub mod housekeeping;
mod known;
pub mod multi;
mod owed;
mod presence;

use breaker::{Breaker, BreakerState};
pub use deny_cache::DenyCache;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::domain::{
    Decision, FailureMode, Fingerprint, Fingerprinter, InvalidRequest, Limits, Mode, Policies, Policy, Resolved,
    SharedPolicies, validate_cost, validate_key,
};
use crate::metrics::{self, CheckResult, InFlight, Throttled};
use crate::store::{MemoryStore, Store, StoreError};
use crate::sync::LogEvery;

/// A decision with what it was made under.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// What the caller should do. Under a shadow policy it is always allowed (and
    /// `retry_after_ms` 0); `shadow_denied` says whether enforcing would have denied.
    pub decision: Decision,
    pub policy: Arc<Policy>,
    /// The key's readable name from the limits file, if it has one.
    pub alias: Option<Arc<str>>,
    pub shadow_denied: bool,
    /// `Some` when the store failed and the policy's failure mode answered instead.
    pub fallback: Option<FailureMode>,
}

/// Why a check produced no decision. Messages name the field and value, never the key.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A request that passed validation (the only meaning of "checked" here): its key's
/// fingerprint, policy and cost.
#[derive(Debug, Clone)]
pub struct Checked {
    key: Fingerprint,
    resolved: Resolved,
    cost: u32,
}

impl Checked {
    pub fn key(&self) -> &Fingerprint {
        &self.key
    }

    pub fn cost(&self) -> u32 {
        self.cost
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.resolved.policy
    }

    /// Takes the larger cost of two checks of one key (one request counts once per key).
    pub fn merge(&mut self, other: &Checked) {
        self.cost = self.cost.max(other.cost);
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
    /// Whether the store's last answer was a refusal that needs an operator (a wrong
    /// password, a script error): readiness fails while it lasts.
    store_refuses: AtomicBool,
    breaker: Breaker,
    /// The exact in-process store of the `local` failure mode.
    local: MemoryStore,
    /// How many replicas share the limits: `local` admits limit / this.
    presence: presence::Presence,
    /// Paces the log lines of store failures that are not transient.
    failures_logged: LogEvery,
    /// What the store last said of each key, where the `local` failure mode applies.
    known: known::Known,
    /// Requests the failure modes admitted, until the store has counted them.
    owed: owed::Owed,
    /// The store's time up to which resets by any replica have been applied here.
    resets_seen: std::sync::atomic::AtomicU64,
    /// This replica's denials the store has not been told yet.
    denials: denials::Denials,
}

impl<S: Store> Limiter<S> {
    pub fn new(store: S, policies: SharedPolicies, fingerprinter: Fingerprinter, throttled: Arc<Throttled>) -> Self {
        metrics::store_up(true);
        metrics::owed(0);
        metrics::owed_done(true, 0);
        metrics::owed_done(false, 0);
        Self {
            store,
            policies,
            fingerprinter,
            throttled,
            deny_cache: None,
            store_up: AtomicBool::new(true),
            store_refuses: AtomicBool::new(false),
            breaker: Breaker::default(),
            local: MemoryStore::new(),
            presence: presence::Presence::default(),
            failures_logged: LogEvery::default(),
            known: known::Known::default(),
            owed: owed::Owed::default(),
            resets_seen: std::sync::atomic::AtomicU64::new(0),
            denials: denials::Denials::default(),
        }
    }

    /// The least number of replicas the `local` failure mode divides each window's limit
    /// among (`--expected-replicas`); the replicas sharing a Redis also count themselves
    /// there, and the larger number is used ([`Limiter::replicas`]).
    pub fn with_expected_replicas(self, replicas: u32) -> Self {
        self.presence.set_floor(replicas);
        self
    }

    /// Answers a key's cost-1 requests locally while a denial from the store proves
    /// them denied (see [`DenyCache`]): worth it when the store is remote.
    pub fn with_deny_cache(mut self) -> Self {
        self.deny_cache = Some(DenyCache::default());
        self
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn policies(&self) -> &SharedPolicies {
        &self.policies
    }

    /// Counts `cost` units (0 means 1) against `key_id` if they fit. A rejected
    /// request writes nothing. Records the key's fingerprint in the current span.
    pub async fn check_and_consume(&self, key_id: &str, cost: u32) -> Result<Verdict, CheckError> {
        let checked = self.validate(key_id, cost)?;
        self.decide(checked, Mode::Consume).await
    }

    /// The answer `check_and_consume` would give now, without counting anything.
    pub async fn peek(&self, key_id: &str, cost: u32) -> Result<Verdict, CheckError> {
        let checked = self.validate(key_id, cost)?;
        self.decide(checked, Mode::Peek).await
    }

    /// Checks a request without deciding it, so that a batch (several Envoy
    /// descriptors) is rejected whole before any part of it is counted.
    pub fn validate(&self, key_id: &str, cost: u32) -> Result<Checked, CheckError> {
        let key = self.key(key_id).inspect_err(count_invalid)?;
        let resolved = self.policies.lookup(&key);
        checked(key, resolved, cost)
    }

    /// The same against a given policy set, so that every part of one request (several
    /// Envoy descriptors) sees the same one, even if a reload lands meanwhile.
    pub fn validate_in(&self, policies: &Policies, key_id: &str, cost: u32) -> Result<Checked, CheckError> {
        let key = self.key(key_id).inspect_err(count_invalid)?;
        checked(key, policies.lookup(&key), cost)
    }

    /// Decides a validated request.
    pub async fn decide(&self, checked: Checked, mode: Mode) -> Result<Verdict, CheckError> {
        let started = Instant::now();
        let (key, limits, cost) = (checked.key, checked.resolved.policy.limits, checked.cost);
        let result = match self.deny_cache.as_ref().and_then(|cache| cache.lookup(&key, &limits, cost)) {
            Some(cached) => {
                metrics::deny_cache_hit();
                Ok(cached)
            }
            None => {
                self.settle([&key]).await;
                self.ask_store(&key, &limits, cost, mode).await
            }
        };
        let failure = checked.resolved.policy.failure;
        if let (Ok(decision), Mode::Consume, FailureMode::Local) = (&result, mode, failure) {
            self.known.learn(&key, &limits, decision, self.replicas(), failure::local_now_ms());
        }
        let answer = match result {
            Err(CheckError::Store(error)) => {
                Answer::FellBack(self.fall_back(&key, &limits, cost, mode, failure).await, failure, error)
            }
            Err(e) => return Err(e),
            Ok(decision) => Answer::Store(decision),
        };
        Ok(self.verdict(checked, mode, answer, started))
    }

    /// The verdict on `checked` from its answer, with the metrics, the throttled-keys
    /// report and shadow mode applied.
    fn verdict(&self, checked: Checked, mode: Mode, answer: Answer, started: Instant) -> Verdict {
        let Checked { key, resolved, cost } = checked;
        let (mut decision, fallback) = match answer {
            Answer::Store(decision) => (decision, None),
            Answer::FellBack(decision, failure, error) => (decision, Some((failure, error))),
        };
        let shadow = resolved.policy.shadow;
        let outcome = match &decision {
            d if d.allowed => CheckResult::Allowed,
            // A failure mode's denial is not the policy's: shadow mode does not lift it.
            _ if shadow && fallback.is_none() => CheckResult::ShadowDenied,
            _ => CheckResult::Denied,
        };
        if mode == Mode::Consume {
            metrics::check_done(resolved.overridden, cost, outcome, started.elapsed());
            // Only the store's denials say a key is throttled; a failure mode's say Redis is down.
            if !shadow && fallback.is_none() {
                self.throttled.record(&key, resolved.alias.as_deref(), &decision);
                if !decision.allowed {
                    self.denials.note(&key, decision.decided_at_ms);
                }
            }
        }
        let shadow_denied = outcome == CheckResult::ShadowDenied;
        // A shadow policy never denies, not even by its failure mode while the store is down.
        if shadow && !decision.allowed {
            decision.allowed = true;
            decision.retry_after_ms = 0;
        }
        let fallback = fallback.map(|(failure, error)| {
            metrics::fallback(failure, mode == Mode::Consume);
            tracing::debug!(key = %key, %error, failure = failure.as_str(), "answered by the failure mode");
            failure
        });
        Verdict { decision, policy: resolved.policy, alias: resolved.alias, shadow_denied, fallback }
    }

    /// Whether the store answered last time (a call or a health probe).
    pub fn store_is_up(&self) -> bool {
        self.store_up.load(Ordering::Relaxed)
    }

    /// Whether the store refuses every call until an operator acts (its last answer was a
    /// refusal: a wrong password, a missing permission, a script error). A store merely down
    /// or slow does not count: the failure modes answer for it.
    pub fn store_refuses(&self) -> bool {
        self.store_refuses.load(Ordering::Relaxed)
    }

    /// Notes whether an answer of the store (a call's or a probe's) was such a refusal; a
    /// transient failure changes nothing.
    pub fn note_refusal<T>(&self, answer: &Result<T, StoreError>) {
        match answer {
            Ok(_) => self.store_refuses.store(false, Ordering::Relaxed),
            Err(e @ StoreError::Rejected(_)) if e.opens_breaker() => self.store_refuses.store(true, Ordering::Relaxed),
            Err(_) => {}
        }
    }

    /// Records whether the store answers (a call's outcome, or a health probe's).
    pub fn note_store_health(&self, up: bool) {
        if self.store_up.swap(up, Ordering::Relaxed) != up {
            metrics::store_up(up);
        }
    }

    /// Asks the store, notes whether it answered (only a real store call says so, not
    /// a cached denial), and remembers a denial that proves later ones.
    async fn ask_store(
        &self,
        key: &Fingerprint,
        limits: &Limits,
        cost: u32,
        mode: Mode,
    ) -> Result<Decision, CheckError> {
        let sent = Instant::now();
        let decision = self.call_store(self.store.check(key, limits, cost, mode)).await?;
        if let Some(cache) = &self.deny_cache {
            cache.remember(key, limits, cost, sent, &decision);
        }
        Ok(decision)
    }

    /// Makes one store call under the circuit breaker, and notes whether the store answered.
    async fn call_store<T>(&self, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, CheckError> {
        let Some(attempt) = self.breaker.attempt() else {
            return Err(
                StoreError::Unavailable("the circuit breaker is open: the store failed repeatedly".into()).into()
            );
        };
        let _in_flight = InFlight::start();
        let result = call.await;
        let down = matches!(&result, Err(e) if e.opens_breaker());
        if let Some(state) = attempt.finish(down) {
            metrics::breaker_open(state == BreakerState::Open);
            let error = result.as_ref().err().map(ToString::to_string).unwrap_or_default();
            match state {
                BreakerState::Open => tracing::warn!(
                    endpoint = %self.store.endpoint(),
                    %error,
                    failures = breaker::FAILURES_TO_OPEN,
                    cool_down = ?breaker::COOL_DOWN,
                    "circuit breaker open: the store is not called and failure modes answer; one trial call per cool-down"
                ),
                BreakerState::Closed => tracing::info!("circuit breaker closed: the store answers again"),
            }
        }
        self.note_refusal(&result);
        match &result {
            Ok(_) => self.note_store_health(true),
            Err(e) if e.is_transient() => {
                // Counted in the metrics; the breaker logs when it opens, so an outage
                // under load does not write a line per call.
                tracing::debug!(error = %e, "store call failed");
                self.note_store_health(false);
            }
            Err(e) => {
                // A failure that needs an operator (a refused call, a key of another type,
                // a full Redis): logged at most once per interval, with how many calls it
                // failed since. A refused call means the store cannot serve at all.
                if let Some(calls) = self.failures_logged.due() {
                    tracing::warn!(endpoint = %self.store.endpoint(), error = %e, calls, "store calls failed");
                }
                self.note_store_health(!e.opens_breaker());
            }
        }
        Ok(result?)
    }

    fn key(&self, key_id: &str) -> Result<Fingerprint, InvalidRequest> {
        validate_key(key_id)?;
        Ok(self.fingerprinter.fingerprint(key_id))
    }
}

/// Where a decision came from: the store (or a denial it proved), or the policy's
/// failure mode because the store failed with this error.
enum Answer {
    Store(Decision),
    FellBack(Decision, FailureMode, StoreError),
}

impl Answer {
    fn decision(&self) -> &Decision {
        match self {
            Self::Store(decision) | Self::FellBack(decision, ..) => decision,
        }
    }
}

/// Records the key's fingerprint in the current span and checks the cost against its policy.
fn checked(key: Fingerprint, resolved: Resolved, cost: u32) -> Result<Checked, CheckError> {
    tracing::Span::current().record("key", tracing::field::display(&key));
    let cost = validate_cost(cost, &resolved.policy.limits).inspect_err(count_invalid)?;
    Ok(Checked { key, resolved, cost })
}

fn count_invalid(error: &InvalidRequest) {
    metrics::invalid_request(error.field());
}

#[cfg(test)]
mod tests;
