//! What this replica last learnt from the store about each key, for the `local` failure
//! mode: during an outage a key continues from that state, not from an empty history. A
//! key last denied stays denied until the time the store gave; a key last seen with r
//! units left may be admitted at most this replica's share of r (r / expected replicas)
//! until its longest window has passed since, when nothing the store said can still hold.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::domain::{Decision, Fingerprint, Limits};
use crate::sync::lock;

const SHARDS: usize = 64;
/// Keys remembered per shard (262,144 in all); a key met when its shard is full is not.
const PER_SHARD: usize = 4096;

/// One key's last state from the store, on this replica's clock (Unix ms).
#[derive(Debug, Clone, Copy)]
struct Last {
    /// Until when the state bounds the local mode: the store's decision plus the longest window.
    until_ms: u64,
    /// Until when the key is denied (the store's denial and its retry_after).
    denied_until_ms: u64,
    /// Units this replica may still admit locally before `until_ms`.
    share: u64,
}

#[derive(Debug)]
pub(super) struct Known {
    shards: Box<[Mutex<HashMap<Fingerprint, Last>>]>,
}

impl Default for Known {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| Mutex::default()).collect() }
    }
}

impl Known {
    fn shard(&self, key: &Fingerprint) -> &Mutex<HashMap<Fingerprint, Last>> {
        &self.shards[key.as_bytes()[0] as usize % SHARDS]
    }

    /// Learns the store's counted decision on `key` at `now_ms`, shared by `replicas`.
    pub(super) fn learn(&self, key: &Fingerprint, limits: &Limits, decision: &Decision, replicas: u32, now_ms: u64) {
        let denied_until_ms = if decision.allowed { 0 } else { now_ms + decision.retry_after_ms };
        let share = u64::from(decision.remaining / replicas.max(1));
        let last = Last { until_ms: now_ms + limits.longest_ms(), denied_until_ms, share };
        let mut shard = lock(self.shard(key));
        if shard.len() < PER_SHARD || shard.contains_key(key) {
            shard.insert(*key, last);
        }
    }

    /// `Some(retry_after_ms)` if what the store last said forbids admitting `cost` at `now_ms`.
    pub(super) fn forbids(&self, key: &Fingerprint, cost: u32, now_ms: u64) -> Option<u64> {
        let shard = lock(self.shard(key));
        let last = shard.get(key).filter(|last| now_ms < last.until_ms)?;
        if now_ms < last.denied_until_ms {
            return Some(last.denied_until_ms - now_ms);
        }
        (u64::from(cost) > last.share).then(|| last.until_ms - now_ms)
    }

    /// Spends `cost` of the key's share: the local mode admitted it.
    pub(super) fn spend(&self, key: &Fingerprint, cost: u32) {
        if let Some(last) = lock(self.shard(key)).get_mut(key) {
            last.share = last.share.saturating_sub(u64::from(cost));
        }
    }

    /// Forgets what the store said of `key` (its history was reset).
    pub(super) fn forget(&self, key: &Fingerprint) {
        lock(self.shard(key)).remove(key);
    }

    /// Forgets what no longer bounds anything.
    pub(super) fn evict_expired(&self, now_ms: u64) {
        for shard in self.shards.iter() {
            lock(shard).retain(|_, last| now_ms < last.until_ms);
        }
    }
}
