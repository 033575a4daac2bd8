//! Floor 3, where decisions are made and history is kept: one narrow trait, one
//! module per backend. Both backends run the same algorithm (`docs/design.md#the-algorithm`:
//! `lua/sliding_window.lua` in Redis, [`crate::domain::Ring`] in process) and are held
//! to the same behaviour suite.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::time::Duration;

use crate::domain::{Decision, Fingerprint, Limits, Mode};

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

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

/// A store failure. Transient ones (the store is unreachable or slow) may succeed
/// if retried; the others need an operator.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("the store failed: {0}")]
    Failed(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Unavailable(_))
    }

    /// The `kind` label of the error metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Unavailable(_) => "unavailable",
            Self::Failed(_) => "failed",
        }
    }
}
