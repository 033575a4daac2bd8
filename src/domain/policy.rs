//! Policies: how many units a key may use per window (one or several windows), and
//! which policy a key gets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::Fingerprint;

/// The largest limit a window may have. A key holds at most one entry per unit counted
/// inside its window, so this bounds one key's storage (the script takes limits below 2^22).
pub const MAX_LIMIT: u32 = 1_000_000;
/// The longest window a policy may have (31 days).
pub const MAX_WINDOW: Duration = Duration::from_secs(31 * 24 * 3600);
/// The most windows one policy may combine (e.g. per second, minute, hour and day).
pub const MAX_WINDOWS: usize = 4;
/// The name of the policy every key without an override gets.
pub const DEFAULT_POLICY: &str = "default";

/// `limit` units per sliding window of `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
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
    #[error("a policy needs between 1 and {MAX_WINDOWS} windows, got {0}")]
    WindowCount(usize),
    #[error("two windows have the same length, {0:?}; merge them into one (the lower limit wins)")]
    DuplicateWindow(Duration),
}

impl Window {
    pub fn new(limit: u32, window: Duration) -> Result<Self, PolicyError> {
        if limit == 0 || limit > MAX_LIMIT {
            return Err(PolicyError::Limit(limit));
        }
        let whole_ms = window.subsec_nanos().is_multiple_of(1_000_000);
        if window < Duration::from_millis(1) || window > MAX_WINDOW || !whole_ms {
            return Err(PolicyError::Window(window));
        }
        Ok(Self { limit, window_ms: window.as_millis() as u64 })
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }
}

/// One to [`MAX_WINDOWS`] windows, longest first. A request is allowed only if it
/// fits every window, and then it counts in all of them. Plain data (`Copy`), so a
/// store call or a cached denial can carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    windows: [Window; MAX_WINDOWS],
    len: u8,
}

impl Limits {
    pub fn new(windows: &[Window]) -> Result<Self, PolicyError> {
        if windows.is_empty() || windows.len() > MAX_WINDOWS {
            return Err(PolicyError::WindowCount(windows.len()));
        }
        let mut sorted = [windows[0]; MAX_WINDOWS];
        sorted[..windows.len()].copy_from_slice(windows);
        sorted[..windows.len()].sort_by_key(|w| std::cmp::Reverse(w.window_ms));
        if let Some(pair) = sorted[..windows.len()].windows(2).find(|pair| pair[0].window_ms == pair[1].window_ms) {
            return Err(PolicyError::DuplicateWindow(Duration::from_millis(pair[0].window_ms)));
        }
        Ok(Self { windows: sorted, len: windows.len() as u8 })
    }

    /// One window of `limit` per `window`.
    pub fn single(limit: u32, window: Duration) -> Result<Self, PolicyError> {
        Self::new(&[Window::new(limit, window)?])
    }

    /// The windows, longest first.
    pub fn windows(&self) -> &[Window] {
        &self.windows[..usize::from(self.len)]
    }

    /// The largest cost that can ever be allowed: the lowest limit.
    pub fn max_cost(&self) -> u32 {
        self.windows().iter().map(Window::limit).min().unwrap_or(0)
    }

    /// The history a key needs: the highest limit.
    pub fn capacity(&self) -> u32 {
        self.windows().iter().map(Window::limit).max().unwrap_or(0)
    }

    /// The longest window: how long a key's history matters.
    pub fn longest_ms(&self) -> u64 {
        self.windows[0].window_ms
    }

    /// Each window's limit divided among `replicas`, rounded down: what one replica
    /// may admit on its own so that `replicas` of them stay within the limit. `None`
    /// when a window's limit is below the replica count: no share fits.
    pub fn divided(&self, replicas: u32) -> Option<Self> {
        let mut divided = *self;
        for window in &mut divided.windows[..usize::from(self.len)] {
            window.limit /= replicas.max(1);
            if window.limit == 0 {
                return None;
            }
        }
        Some(divided)
    }
}

/// What a check answers when the store fails or misses its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Allow: the API stays up, unprotected, while the store is down.
    Open,
    /// Deny: the API is protected, and down for the keys it protects.
    Closed,
    /// Each replica enforces limit / expected replicas on its own exact in-process
    /// store: protected and up; over only if more replicas run than expected.
    #[default]
    Local,
}

impl FailureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Local => "local",
        }
    }
}

/// A named policy: its windows, whether it only reports (shadow mode: decisions
/// are computed and counted but every request is allowed), and what to do when the
/// store fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: Arc<str>,
    pub limits: Limits,
    pub shadow: bool,
    pub failure: FailureMode,
}

impl Policy {
    pub fn new(name: &str, limits: Limits) -> Self {
        Self { name: name.into(), limits, shadow: false, failure: FailureMode::default() }
    }

    /// The default policy with one window: what `--limit` and `--window` give.
    pub fn default_with(limit: u32, window: Duration) -> Result<Self, PolicyError> {
        Ok(Self::new(DEFAULT_POLICY, Limits::single(limit, window)?))
    }
}

/// A key's override: its policy, and a readable name (a partner's) for logs and metrics;
/// optionally in force only until a time, after which the key has the `then` policy (or,
/// without one, the default), with no reload needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub policy: Arc<Policy>,
    pub alias: Option<Arc<str>>,
    /// Unix ms from which `policy` no longer applies.
    pub until_ms: Option<u64>,
    /// The policy from `until_ms` on; `None`: the default.
    pub then: Option<Arc<Policy>>,
}

impl Override {
    pub fn new(policy: Arc<Policy>, alias: Option<Arc<str>>) -> Self {
        Self { policy, alias, until_ms: None, then: None }
    }

    /// Whether `policy` has stopped applying at `now_ms`.
    pub fn has_ended(&self, now_ms: u64) -> bool {
        self.until_ms.is_some_and(|until| now_ms >= until)
    }
}

/// The policy a key gets, as looked up for one request.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub policy: Arc<Policy>,
    pub alias: Option<Arc<str>>,
    /// Whether an override applies (rather than the default).
    pub overridden: bool,
}

/// The default policy and the per-key overrides, selected by key fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policies {
    pub default: Arc<Policy>,
    pub overrides: HashMap<Fingerprint, Override>,
}

impl Policies {
    pub fn uniform(default: Policy) -> Self {
        Self { default: Arc::new(default), overrides: HashMap::new() }
    }

    /// The key's policy now (the clock is read only for an override that ends).
    pub fn lookup(&self, key: &Fingerprint) -> Resolved {
        match self.overrides.get(key) {
            Some(o) if o.until_ms.is_some() => self.resolve(Some(o), unix_ms()),
            o => self.resolve(o, 0),
        }
    }

    /// The key's policy at `now_ms`.
    pub fn lookup_at(&self, key: &Fingerprint, now_ms: u64) -> Resolved {
        self.resolve(self.overrides.get(key), now_ms)
    }

    fn resolve(&self, o: Option<&Override>, now_ms: u64) -> Resolved {
        match o {
            Some(o) if !o.has_ended(now_ms) => {
                Resolved { policy: o.policy.clone(), alias: o.alias.clone(), overridden: true }
            }
            Some(o) => match &o.then {
                Some(then) => Resolved { policy: then.clone(), alias: o.alias.clone(), overridden: true },
                None => Resolved { policy: self.default.clone(), alias: o.alias.clone(), overridden: false },
            },
            None => Resolved { policy: self.default.clone(), alias: None, overridden: false },
        }
    }
}

/// The wall clock in Unix ms (an override's end is a date).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The live policy set, shared by every request and replaceable at run time
/// (a changed limit applies from each key's next call). Reads are lock-free.
#[derive(Debug, Clone)]
pub struct SharedPolicies(Arc<ArcSwap<Policies>>);

impl SharedPolicies {
    pub fn new(policies: Policies) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(policies)))
    }

    pub fn lookup(&self, key: &Fingerprint) -> Resolved {
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

    fn window(limit: u32, secs: u64) -> Window {
        Window::new(limit, Duration::from_secs(secs)).unwrap()
    }

    #[test]
    fn rejects_limits_and_windows_it_cannot_enforce() {
        assert_eq!(Window::new(0, Duration::from_secs(1)), Err(PolicyError::Limit(0)));
        let too_big = MAX_LIMIT + 1;
        assert_eq!(Window::new(too_big, Duration::from_secs(1)), Err(PolicyError::Limit(too_big)));
        let zero = Duration::ZERO;
        assert_eq!(Window::new(1, zero), Err(PolicyError::Window(zero)));
        let fractional = Duration::from_micros(1500);
        assert_eq!(Window::new(1, fractional), Err(PolicyError::Window(fractional)));
        let long = MAX_WINDOW + Duration::from_secs(1);
        assert_eq!(Window::new(1, long), Err(PolicyError::Window(long)));
    }

    #[test]
    fn several_windows_are_kept_longest_first_and_must_differ() {
        let limits = Limits::new(&[window(20, 1), window(300, 60)]).unwrap();
        assert_eq!(limits.windows(), &[window(300, 60), window(20, 1)]);
        assert_eq!((limits.max_cost(), limits.capacity(), limits.longest_ms()), (20, 300, 60_000));
        let duplicate = Limits::new(&[window(20, 60), window(300, 60)]);
        assert_eq!(duplicate, Err(PolicyError::DuplicateWindow(Duration::from_secs(60))));
        assert_eq!(Limits::new(&[]), Err(PolicyError::WindowCount(0)));
        assert_eq!(Limits::new(&[window(1, 1); 5]), Err(PolicyError::WindowCount(5)));
    }

    #[test]
    fn overrides_win_over_the_default() {
        let default = Policy::default_with(300, Duration::from_secs(60)).unwrap();
        let partner = Arc::new(Policy::new("partner", Limits::single(1000, Duration::from_secs(60)).unwrap()));
        let fp = Fingerprint::from_bytes([7; 16]);
        let mut policies = Policies::uniform(default.clone());
        policies.overrides.insert(fp, Override::new(partner.clone(), Some("acme".into())));
        let shared = SharedPolicies::new(policies);
        let resolved = shared.lookup(&fp);
        assert_eq!((resolved.policy, resolved.alias.as_deref(), resolved.overridden), (partner, Some("acme"), true));
        let other = shared.lookup(&Fingerprint::from_bytes([8; 16]));
        assert_eq!((*other.policy == default, other.overridden), (true, false));
    }
}
