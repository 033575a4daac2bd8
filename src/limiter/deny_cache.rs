//! The exact local deny cache. A denial of a cost-1 request means the key's oldest
//! counted unit is still inside the window, and only time can change that: other
//! replicas can add units but never remove them. So until `decided_at + retry_after`
//! every request for the key is denied, whatever any replica does, and this replica
//! can say so without asking the store, with exact response fields.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::domain::{Decision, Fingerprint, Limits};
use crate::sync::lock;

const SHARDS: usize = 64;
/// Bounds the cache's memory (about 100 bytes an entry); past it, denials are not cached.
const MAX_ENTRIES_PER_SHARD: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The limits the denial was made under: a changed limit or window drops it.
    limits: Limits,
    /// When the store call that returned the denial was sent. The store decided at
    /// or after this instant, so `decided_at + elapsed since sent` is never earlier
    /// than the store's clock now: the cache can only stop answering too soon.
    sent: Instant,
    decision: Decision,
    free_at_ms: u64,
}

impl Entry {
    /// The store's clock now, rounded up.
    fn now_ms(&self) -> u64 {
        let elapsed = self.sent.elapsed();
        let ms = elapsed.as_millis() as u64 + u64::from(!elapsed.subsec_nanos().is_multiple_of(1_000_000));
        self.decision.decided_at_ms + ms
    }
}

#[derive(Debug)]
pub struct DenyCache {
    shards: Box<[Mutex<HashMap<Fingerprint, Entry>>]>,
}

impl Default for DenyCache {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| Mutex::default()).collect() }
    }
}

impl DenyCache {
    /// The store's answer to a cost-1 request for `key`, if a cached denial proves it.
    /// Every field is exact: until `free_at` no replica can count a unit for the key,
    /// so its history, and with it every wait, only moves with the clock.
    pub fn lookup(&self, key: &Fingerprint, limits: &Limits, cost: u32) -> Option<Decision> {
        let mut shard = lock(self.shard(key));
        let entry = *shard.get(key)?;
        let now = entry.now_ms();
        if entry.limits != *limits || now >= entry.free_at_ms {
            shard.remove(key);
            return None;
        }
        if cost != 1 {
            return None;
        }
        let d = entry.decision;
        let elapsed = now - d.decided_at_ms;
        Some(Decision {
            retry_after_ms: entry.free_at_ms - now,
            reset_after_ms: d.reset_after_ms.saturating_sub(elapsed),
            window_reset_ms: d.window_reset_ms.saturating_sub(elapsed),
            decided_at_ms: now,
            ..d
        })
    }

    /// Remembers the store's denial of a cost-1 request sent at `sent`.
    /// Any other answer from the store drops the key's entry: it may have counted
    /// units (under other limits) that the cached waits do not know about.
    pub fn remember(&self, key: &Fingerprint, limits: &Limits, cost: u32, sent: Instant, decision: &Decision) {
        if cost != 1 || decision.allowed || decision.retry_after_ms == 0 {
            if lock(self.shard(key)).remove(key).is_some() {
                tracing::trace!(key = %key, "deny cache entry dropped by a newer store answer");
            }
            return;
        }
        let free_at_ms = decision.decided_at_ms + decision.retry_after_ms;
        let entry = Entry { limits: *limits, sent, decision: *decision, free_at_ms };
        let mut shard = lock(self.shard(key));
        if shard.len() < MAX_ENTRIES_PER_SHARD || shard.contains_key(key) {
            shard.insert(*key, entry);
        }
    }

    /// Drops the denials that time has undone. Returns how many.
    /// Drops what is cached of `key` (its history was reset).
    pub fn forget(&self, key: &Fingerprint) {
        lock(self.shard(key)).remove(key);
    }

    pub fn evict_expired(&self) -> usize {
        let mut evicted = 0;
        for shard in self.shards.iter() {
            let mut map = lock(shard);
            let before = map.len();
            map.retain(|_, entry| entry.now_ms() < entry.free_at_ms);
            evicted += before - map.len();
        }
        evicted
    }

    fn shard(&self, key: &Fingerprint) -> &Mutex<HashMap<Fingerprint, Entry>> {
        &self.shards[key.as_bytes()[1] as usize % SHARDS]
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    use crate::domain::WindowCheck;

    fn denial(decided_at_ms: u64, retry_after_ms: u64) -> Decision {
        let limits = Limits::single(2, Duration::from_secs(1)).unwrap();
        let full = [WindowCheck { spare: 0, retry_after_ms }];
        Decision::assemble(&limits, 1, decided_at_ms, decided_at_ms - 100, &full)
    }

    #[test]
    fn answers_cost_1_denials_until_time_frees_capacity() {
        let cache = DenyCache::default();
        let key = Fingerprint::from_bytes([1; 16]);
        let policy = Limits::single(2, Duration::from_secs(1)).unwrap();
        cache.remember(&key, &policy, 1, Instant::now(), &denial(1_000, 60));
        let cached = cache.lookup(&key, &policy, 1).expect("a cached denial");
        assert!(!cached.allowed);
        assert_eq!(cached.decided_at_ms + cached.retry_after_ms, 1_060, "the same moment as the store's answer");
        assert_eq!(cached.decided_at_ms + cached.reset_after_ms, 1_900);
        assert!(cache.lookup(&key, &policy, 2).is_none(), "only cost-1 answers are proven");
        std::thread::sleep(Duration::from_millis(61));
        assert!(cache.lookup(&key, &policy, 1).is_none(), "time has freed a unit");
        assert_eq!(cache.evict_expired(), 0, "the lookup already dropped it");
    }

    #[test]
    fn a_changed_policy_drops_the_denial() {
        let cache = DenyCache::default();
        let key = Fingerprint::from_bytes([2; 16]);
        let old = Limits::single(2, Duration::from_secs(60)).unwrap();
        let raised = Limits::single(5, Duration::from_secs(60)).unwrap();
        cache.remember(&key, &old, 1, Instant::now(), &denial(1_000, 50_000));
        assert!(cache.lookup(&key, &raised, 3).is_none());
        assert!(cache.lookup(&key, &old, 1).is_none(), "dropped (whatever the cost), not kept for later");
        cache.remember(&key, &old, 1, Instant::now(), &denial(1_000, 50_000));
        let allowed = Decision { allowed: true, retry_after_ms: 0, ..denial(1_000, 0) };
        cache.remember(&key, &raised, 3, Instant::now(), &allowed);
        assert!(cache.lookup(&key, &old, 1).is_none(), "a later store answer drops the entry");
    }
}
