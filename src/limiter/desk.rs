//! The support desk's reads (the admin service's Inspect and Explain): a key's policy and
//! its history as the store holds it, read without counting or writing anything.

use super::{CheckError, Limiter};
use crate::domain::inspect::{self, WindowState};
use crate::domain::{Fingerprint, Resolved, unix_ms};
use crate::store::{Held, Store};

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

    /// Reads `key`'s history (one store read, through the circuit breaker) and its policy.
    pub async fn inspect(&self, key: Fingerprint) -> Result<Inspection, CheckError> {
        let held = self.call_store(self.store.requests(&key)).await?;
        let policies = self.policies.current();
        let resolved = policies.lookup_at(&key, unix_ms());
        let listed = policies.overrides.get(&key);
        let until_ms = listed.and_then(|o| o.until_ms);
        let windows = inspect::windows(&held.requests, &resolved.policy.limits, held.at_ms);
        Ok(Inspection { key, resolved, until_ms, listed: listed.is_some(), held, windows })
    }
}
