//! Floor 3, where decisions are made and history is kept: one narrow trait, one
//! module per backend. Both backends run the same algorithm (`docs/design.md#the-algorithm`:
//! `lua/sliding_window.lua` in Redis, [`crate::domain::History`] in process) and are held
//! to the same behaviour suite and the same oracle.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::time::Duration;

use crate::domain::{Decision, Fingerprint, Limits, Mode};

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

/// How long a store keeps the time of a key's last denial ([`Store::note_denials`]).
pub const DENIALS_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most keys whose last denial a store keeps: the latest denied ones.
pub const DENIED_KEYS_KEPT: usize = 100_000;

/// Decides and records one request atomically: concurrent calls for one key, from
/// any number of replicas sharing the store, behave as if made one at a time.
pub trait Store: Send + Sync + 'static {
    /// Decides a request of `cost` against every window of `limits` and, in
    /// [`Mode::Consume`], counts it if it fits them all. `cost` is already validated:
    /// 1 <= cost <= limits.max_cost().
    fn check(
        &self,
        key: &Fingerprint,
        limits: &Limits,
        cost: u32,
        mode: Mode,
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send;

    /// Decides one request that names several keys (each of another key) as one: its
    /// [`Mode::Consume`] checks are counted only if every check fits, and then all of
    /// them are. Returns a decision per check: the counted ones if every check fit, else
    /// what each would answer, with nothing counted. This default asks each key twice
    /// (peek, then count), so a concurrent request can come between the two; a store
    /// that can decide them atomically overrides it.
    fn check_all(&self, checks: &[KeyCheck<'_>]) -> impl Future<Output = Result<Vec<Decision>, StoreError>> + Send {
        peek_then_count(self, checks)
    }

    /// Counts requests a failure mode admitted while the store could not answer, so that its
    /// history is whole again (rule 4): each at the time it was admitted, or its key's newest
    /// entry if that is later, whether it fits or not, up to the largest limit (more would
    /// deny no longer). One already outside its longest window is not counted. Returns, for
    /// each, whether it was counted or why not.
    fn record_admitted(
        &self,
        admitted: &[Admitted],
    ) -> impl Future<Output = Result<Vec<Result<(), StoreError>>, StoreError>> + Send;

    /// Tells the store that the replica `replica` (its id) is there, and returns how many
    /// replicas share it, each counted until `ttl` after it last said so; `None` for a store
    /// no other process shares (in process).
    fn presence(&self, replica: &str, ttl: Duration) -> impl Future<Output = Result<Option<u32>, StoreError>> + Send {
        let _ = (replica, ttl);
        async { Ok(None) }
    }

    /// The requests `key` holds, oldest first, as (Unix ms, units), and the store's time of
    /// the reading: one read, no write (the support desk's Inspect and Explain).
    fn requests(&self, key: &Fingerprint) -> impl Future<Output = Result<Held, StoreError>> + Send;

    /// Forgets `key`'s history (the support desk's Reset), and records the reset for the
    /// other replicas ([`Store::resets_since`]). Returns whether it held any history.
    fn forget(&self, key: &Fingerprint) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The keys reset since `since_ms` (the store's clock), by any replica, and the store's
    /// time now; a replica drops what it cached of them. The in-process store has no other
    /// replica: none.
    fn resets_since(&self, since_ms: u64) -> impl Future<Output = Result<(Vec<Fingerprint>, u64), StoreError>> + Send {
        async move { Ok((Vec::new(), since_ms)) }
    }

    /// Records each key's last denial (the store's clock, Unix ms), from one replica's
    /// denials since it last said: a later time replaces an earlier one, and the store keeps
    /// them for [`DENIALS_KEPT`], of the [`DENIED_KEYS_KEPT`] latest keys (the support desk's
    /// Inspect). A store that keeps no record ignores them.
    fn note_denials(&self, denials: &[(Fingerprint, u64)]) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = denials;
        async { Ok(()) }
    }

    /// When `key` was last denied, as [`Store::note_denials`] recorded it.
    fn last_denial(&self, key: &Fingerprint) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        let _ = key;
        async { Ok(None) }
    }

    /// Where the store is, for log lines: `host:port`s, never a secret.
    fn endpoint(&self) -> String {
        "in-process".into()
    }

    /// Checks that the store answers, for its health while no checks arrive.
    fn probe(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }

    /// Drops the history that no window counts any more, where the store does not do
    /// it by itself (Redis keys expire). Returns how many keys were dropped.
    fn evict_idle(&self) -> usize {
        0
    }
}

/// [`Store::check_all`] in two steps: every check peeked, then, if all fit, the
/// consume checks counted. Not atomic: a concurrent request can come between the two.
pub async fn peek_then_count<S: Store + ?Sized>(
    store: &S,
    checks: &[KeyCheck<'_>],
) -> Result<Vec<Decision>, StoreError> {
    let mut decisions = Vec::with_capacity(checks.len());
    for c in checks {
        decisions.push(store.check(c.key, c.limits, c.cost, Mode::Peek).await?);
    }
    if decisions.iter().all(|d| d.allowed) {
        for (c, decision) in checks.iter().zip(&mut decisions) {
            if c.mode == Mode::Consume {
                *decision = store.check(c.key, c.limits, c.cost, c.mode).await?;
            }
        }
    }
    Ok(decisions)
}

/// One check of a request that names several keys ([`Store::check_all`]).
#[derive(Debug, Clone, Copy)]
pub struct KeyCheck<'a> {
    pub key: &'a Fingerprint,
    pub limits: &'a Limits,
    pub cost: u32,
    pub mode: Mode,
}

/// What a key's history holds ([`Store::requests`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    /// The store's time of the reading (Unix ms).
    pub at_ms: u64,
    /// (Unix ms, units), oldest first.
    pub requests: Vec<(u64, u64)>,
}

/// A request a failure mode admitted `age` ago ([`Store::record_admitted`]).
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    pub key: Fingerprint,
    pub limits: Limits,
    pub cost: u32,
    pub age: Duration,
}

/// A store failure. Transient ones (the store is unreachable or slow) may succeed
/// if retried; the others need an operator.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The store refused the whole call (a wrong password or permission, a script error,
    /// ...): every call will fail alike until an operator acts.
    #[error("the store refused the call: {0}")]
    Rejected(String),
    /// One check failed (a key of another type, no room for it in a full Redis); the
    /// store answers the others.
    #[error("the store failed: {0}")]
    Failed(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Unavailable(_))
    }

    /// Whether the store as a whole cannot answer: counted by the circuit breaker.
    pub fn opens_breaker(&self) -> bool {
        !matches!(self, Self::Failed(_))
    }

    /// The `kind` label of the error metrics.
    pub fn kind(&self) -> &'static str {
        let code = |words: &str| words.split_whitespace().next().unwrap_or_default().to_owned();
        match self {
            Self::Timeout(_) => "timeout",
            Self::Unavailable(_) => "unavailable",
            Self::Rejected(words) | Self::Failed(words) if code(words) == "OOM" => "oom",
            Self::Rejected(words)
                if ["NOAUTH", "WRONGPASS", "NOPERM"].contains(&code(words).as_str())
                    || words.ends_with("AuthenticationFailed") =>
            {
                "auth"
            }
            Self::Rejected(_) => "rejected",
            Self::Failed(_) => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::StoreError;

    /// A refused call (the store cannot serve) opens the breaker and says why; one check's
    /// failure (a key of another type, no room in a full Redis) does not.
    #[test]
    fn errors_say_whether_the_store_can_serve_and_why() {
        let cases = [
            (StoreError::Timeout(Duration::from_millis(50)), true, "timeout"),
            (StoreError::Unavailable("connection refused".into()), true, "unavailable"),
            (StoreError::Rejected("NOAUTH Authentication required.".into()), true, "auth"),
            (
                StoreError::Rejected("NOPERM this user has no permissions to run the 'evalsha' command".into()),
                true,
                "auth",
            ),
            (StoreError::Rejected("Password authentication failed - AuthenticationFailed".into()), true, "auth"),
            (StoreError::Rejected("OOM command not allowed when used memory > 'maxmemory'.".into()), true, "oom"),
            (
                StoreError::Rejected("ERR user_script:1: Script attempted to access nonexistent global".into()),
                true,
                "rejected",
            ),
            (
                StoreError::Failed("OOM ratelimitd: Redis is full (maxmemory) and key k has no room".into()),
                false,
                "oom",
            ),
            (
                StoreError::Failed("WRONGTYPE Operation against a key holding the wrong kind of value".into()),
                false,
                "failed",
            ),
        ];
        for (error, opens, kind) in cases {
            assert_eq!((error.opens_breaker(), error.kind()), (opens, kind), "{error}");
        }
    }
}
