//! Policies: how many units a key may use per window, and which policy a key gets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::Fingerprint;

/// The largest limit a policy may have. A ring holds one 8-byte slot per unit,
/// so this bounds one key's storage to 8 MB.
pub const MAX_LIMIT: u32 = 1_000_000;
/// The longest window a policy may have (31 days).
pub const MAX_WINDOW: Duration = Duration::from_secs(31 * 24 * 3600);

/// `limit` units per sliding `window`, validated on construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    limit: u32,
    window_ms: u64,
}

/// A policy that cannot be enforced, with the value that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("limit must be between 1 and {MAX_LIMIT}, got {0}")]
    Limit(u32),
    #[error("window must be a whole number of milliseconds between 1ms and 31 days, got {0:?}")]
    Window(Duration),
}

impl Policy {
    pub fn new(limit: u32, window: Duration) -> Result<Self, PolicyError> {
        if limit == 0 || limit > MAX_LIMIT {
            return Err(PolicyError::Limit(limit));
        }
        let whole_ms = window.subsec_nanos().is_multiple_of(1_000_000);
        if window < Duration::from_millis(1) || window > MAX_WINDOW || !whole_ms {
            return Err(PolicyError::Window(window));
        }
        let window_ms = window.as_millis() as u64;
        Ok(Self { limit, window_ms })
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }
}

/// The default policy and the per-key overrides, selected by key fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policies {
    pub default: Policy,
    pub overrides: HashMap<Fingerprint, Policy>,
}

impl Policies {
    pub fn uniform(default: Policy) -> Self {
        Self { default, overrides: HashMap::new() }
    }

    /// The key's policy, and whether it is an override (rather than the default).
    pub fn lookup(&self, key: &Fingerprint) -> (Policy, bool) {
        match self.overrides.get(key) {
            Some(policy) => (*policy, true),
            None => (self.default, false),
        }
    }
}

/// The live policy set, shared by every request and replaceable at run time
/// (a changed limit applies from each key's next call). Reads are lock-free.
#[derive(Debug, Clone)]
pub struct SharedPolicies(Arc<ArcSwap<Policies>>);

impl SharedPolicies {
    pub fn new(policies: Policies) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(policies)))
    }

    /// The key's policy, and whether it is an override.
    pub fn lookup(&self, key: &Fingerprint) -> (Policy, bool) {
        self.0.load().lookup(key)
    }

    pub fn current(&self) -> Arc<Policies> {
        self.0.load_full()
    }

    pub fn replace(&self, policies: Policies) {
        self.0.store(Arc::new(policies));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_limits_and_windows_it_cannot_enforce() {
        assert_eq!(Policy::new(0, Duration::from_secs(1)), Err(PolicyError::Limit(0)));
        let too_big = MAX_LIMIT + 1;
        assert_eq!(Policy::new(too_big, Duration::from_secs(1)), Err(PolicyError::Limit(too_big)));
        let zero = Duration::ZERO;
        assert_eq!(Policy::new(1, zero), Err(PolicyError::Window(zero)));
        let fractional = Duration::from_micros(1500);
        assert_eq!(Policy::new(1, fractional), Err(PolicyError::Window(fractional)));
        let long = MAX_WINDOW + Duration::from_secs(1);
        assert_eq!(Policy::new(1, long), Err(PolicyError::Window(long)));
    }

    #[test]
    fn overrides_win_over_the_default() {
        let default = Policy::new(300, Duration::from_secs(60)).unwrap();
        let partner = Policy::new(1000, Duration::from_secs(60)).unwrap();
        let fp = Fingerprint::from_bytes([7; 16]);
        let mut policies = Policies::uniform(default);
        policies.overrides.insert(fp, partner);
        let shared = SharedPolicies::new(policies);
        assert_eq!(shared.lookup(&fp), (partner, true));
        assert_eq!(shared.lookup(&Fingerprint::from_bytes([8; 16])), (default, false));
    }
}
