//! The support desk (the admin service): a key's policy and its history as the store holds
//! it, read without counting or writing anything (Inspect, Explain), and Reset, which forgets
//! a key's history on every replica: the store's, and what each replica cached of it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{CheckError, Limiter};
use crate::domain::inspect::{self, WindowState};
use crate::domain::{Fingerprint, Resolved, unix_ms};
use crate::store::{Held, Store};

/// How long after a reset every replica that reaches the store has dropped what it cached
/// of the key: two of its readings of the store's resets, which come every second.
pub const RESET_SEEN: Duration = Duration::from_millis(2_200);

/// A key as the support desk sees it.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub key: Fingerprint,
    /// The policy in force now, and whether an override chose it.
    pub resolved: Resolved,
    /// When the key's override ends, if it does (Unix ms).
    pub until_ms: Option<u64>,
    /// Whether the limits file has an override for the key (ended or not).
    pub listed: bool,
    /// What the store holds, and its time of the reading.
    pub held: Held,
    /// When any replica last denied the key (the store's clock, Unix ms), if within
    /// [`crate::store::DENIALS_KEPT`]; another replica's denials count a second late.
    pub last_denied_ms: Option<u64>,
    /// Each window of the policy at the store's time.
    pub windows: Vec<WindowState>,
}

impl Inspection {
    /// The requests inside the policy's longest window, oldest first.
    pub fn inside_longest(&self) -> Vec<(u64, u64)> {
        inspect::inside_longest(&self.held.requests, &self.resolved.policy.limits, self.held.at_ms)
    }
}

impl<S: Store> Limiter<S> {
    /// The fingerprint of a raw key, validated as a check would validate it.
    pub fn fingerprint_of(&self, key_id: &str) -> Result<Fingerprint, CheckError> {
        Ok(self.key(key_id)?)
    }

    /// Forgets `key`'s history in the store and what this replica cached of it; the other
    /// replicas drop theirs within [`RESET_SEEN`] ([`Limiter::apply_resets`]). Whether the
    /// store held any history.
    pub async fn reset(&self, key: Fingerprint) -> Result<bool, CheckError> {
        let had = self.call_store(self.store.forget(&key)).await?;
        self.drop_cached(&key);
        Ok(had)
    }

    /// Drops what this replica cached of the keys other replicas reset (the housekeeping
    /// task, every second).
    pub(super) async fn apply_resets(&self) {
        let since = self.resets_seen.load(Ordering::Relaxed);
        match self.store.resets_since(since).await {
            // The first reading only sets the time: older resets were made before this replica.
            Ok((_, now)) if since == 0 => self.resets_seen.store(now, Ordering::Relaxed),
            Ok((keys, now)) => {
                keys.iter().for_each(|key| self.drop_cached(key));
                self.resets_seen.store(now, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(error = %e, "resets not read"),
        }
    }

    fn drop_cached(&self, key: &Fingerprint) {
        if let Some(cache) = &self.deny_cache {
            cache.forget(key);
        }
        self.known.forget(key);
        self.owed.forget(key);
    }

    /// Reads `key`'s history (one store read, through the circuit breaker) and its policy.
    pub async fn inspect(&self, key: Fingerprint) -> Result<Inspection, CheckError> {
        let held = self.call_store(self.store.requests(&key)).await?;
        let policies = self.policies.current();
        let resolved = policies.lookup_at(&key, unix_ms());
        let listed = policies.overrides.get(&key);
        let until_ms = listed.and_then(|o| o.until_ms);
        let windows = inspect::windows(&held.requests, &resolved.policy.limits, held.at_ms);
        let last_denied_ms = self.last_denial(&key).await?;
        Ok(Inspection { key, resolved, until_ms, listed: listed.is_some(), held, windows, last_denied_ms })
    }
}
