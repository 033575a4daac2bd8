//! The failure modes: what a check answers when the store failed or missed its
//! deadline (`open`, `closed`, or `local`: an exact in-process share of the limit).

use super::Limiter;
use crate::domain::{Decision, FailureMode, Fingerprint, Limits, Mode};
use crate::store::Store;

/// The smallest `retry_after_ms` a failure mode's denial gives: the store may be
/// back by then, and clients should back off rather than spin.
const FALLBACK_RETRY_MS: u64 = 1_000;

impl<S: Store> Limiter<S> {
    /// The answer of the policy's failure mode when the store failed. Not remembered
    /// by the deny cache: only the store's answers prove anything for other replicas. A
    /// request it admits is owed to the store, which counts it once it answers (`owed`).
    pub(super) async fn fall_back(
        &self,
        key: &Fingerprint,
        limits: &Limits,
        cost: u32,
        mode: Mode,
        failure: FailureMode,
    ) -> Decision {
        let now = local_now_ms();
        let window = limits.windows()[0];
        let mut refusal = Decision {
            allowed: false,
            limit: window.limit(),
            remaining: 0,
            // The breaker's next trial is the earliest the store may answer again.
            retry_after_ms: (self.breaker.next_trial_in().as_millis() as u64).max(FALLBACK_RETRY_MS),
            reset_after_ms: 0,
            decided_at_ms: now,
            window: 0,
            window_reset_ms: 0,
        };
        match failure {
            FailureMode::Open => {
                if mode == Mode::Consume {
                    self.owed.owe(key, limits, cost);
                }
                refusal.allowed = true;
                refusal.remaining = window.limit();
                refusal.retry_after_ms = 0;
                refusal
            }
            FailureMode::Closed => refusal,
            FailureMode::Local => {
                // A limit below the replica count leaves no share: nothing can be admitted.
                let Some(divided) = limits.divided(self.replicas()) else { return refusal };
                if cost > divided.max_cost() {
                    refusal.limit = divided.max_cost();
                    return refusal;
                }
                // What the store last said of the key still holds: denied until its time, or
                // at most this replica's share of the units it had left.
                if let Some(retry_after_ms) = self.known.forbids(key, cost, now) {
                    refusal.retry_after_ms = retry_after_ms.max(1);
                    return refusal;
                }
                // The in-process store cannot fail.
                let decision = self.local.check(key, &divided, cost, mode).await.unwrap_or(refusal);
                if decision.allowed && mode == Mode::Consume {
                    self.known.spend(key, cost);
                    self.owed.owe(key, limits, cost);
                }
                decision
            }
        }
    }
}

pub(super) fn local_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
