//! The in-process store: the same exact algorithm as the Redis script, kept in
//! this process's memory. Limits are then per process, so it suits development
//! and single-replica deployments.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Admitted, DENIALS_KEPT, DENIED_KEYS_KEPT, Held, KeyCheck, Store, StoreError};
use crate::domain::{Decision, Fingerprint, History, Limits, Mode};
use crate::sync::lock;

/// Shards keep one hot key from serialising every other key behind its lock.
const SHARDS: usize = 64;

/// Histories by key fingerprint. Locks are std mutexes held for a few hundred
/// nanoseconds and never across an await, which tokio recommends over its own.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Mutex<HashMap<Fingerprint, History>>]>,
    /// Each key's last denial ([`Store::note_denials`]).
    denials: Mutex<HashMap<Fingerprint, u64>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self { shards: (0..SHARDS).map(|_| Mutex::default()).collect(), denials: Mutex::default() }
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &Fingerprint) -> &Mutex<HashMap<Fingerprint, History>> {
        &self.shards[shard_of(key)]
    }
}

impl Store for MemoryStore {
    async fn check(&self, key: &Fingerprint, limits: &Limits, cost: u32, mode: Mode) -> Result<Decision, StoreError> {
        Ok(decide_in(&mut lock(self.shard(key)), key, limits, cost, mode, now_ms()))
    }

    /// Atomic: every key's shard is locked (in shard order, so two requests cannot wait
    /// on each other) while all are peeked and, if every one fits, counted.
    async fn check_all(&self, checks: &[KeyCheck<'_>]) -> Result<Vec<Decision>, StoreError> {
        let now = now_ms();
        let mut shards: Vec<usize> = checks.iter().map(|c| shard_of(c.key)).collect();
        shards.sort_unstable();
        shards.dedup();
        let mut maps: Vec<_> = shards.iter().map(|&i| lock(&self.shards[i])).collect();
        let map_of = |key: &Fingerprint| shards.binary_search(&shard_of(key)).unwrap_or(0);
        let mut decisions = Vec::with_capacity(checks.len());
        for c in checks {
            let map = &mut maps[map_of(c.key)];
            decisions.push(decide_in(map, c.key, c.limits, c.cost, Mode::Peek, now));
        }
        if decisions.iter().all(|d| d.allowed) {
            for (c, decision) in checks.iter().zip(&mut decisions) {
                if c.mode == Mode::Consume {
                    let map = &mut maps[map_of(c.key)];
                    *decision = decide_in(map, c.key, c.limits, c.cost, Mode::Consume, now);
                }
            }
        }
        Ok(decisions)
    }

    async fn record_admitted(&self, admitted: &[Admitted]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let now = now_ms();
        for a in admitted {
            let at = now.saturating_sub(a.age.as_millis() as u64);
            lock(self.shard(&a.key)).entry(a.key).or_default().record_admitted(now, at, &a.limits, a.cost);
        }
        Ok(vec![Ok(()); admitted.len()])
    }

    async fn requests(&self, key: &Fingerprint) -> Result<Held, StoreError> {
        let at_ms = now_ms();
        let requests = lock(self.shard(key)).get(key).map(|h| h.requests(at_ms)).unwrap_or_default();
        Ok(Held { at_ms, requests })
    }

    async fn forget(&self, key: &Fingerprint) -> Result<bool, StoreError> {
        let now = now_ms();
        Ok(lock(self.shard(key)).remove(key).is_some_and(|h| !h.requests(now).is_empty()))
    }

    /// A later time replaces an earlier one; past [`DENIED_KEYS_KEPT`] keys, those denied
    /// longest ago are dropped, as are denials older than [`DENIALS_KEPT`].
    async fn note_denials(&self, denials: &[(Fingerprint, u64)]) -> Result<(), StoreError> {
        let mut kept = lock(&self.denials);
        for (key, at_ms) in denials {
            let last = kept.entry(*key).or_insert(*at_ms);
            *last = (*last).max(*at_ms);
        }
        let oldest = now_ms().saturating_sub(DENIALS_KEPT.as_millis() as u64);
        kept.retain(|_, at_ms| *at_ms > oldest);
        if kept.len() > DENIED_KEYS_KEPT {
            let mut times: Vec<u64> = kept.values().copied().collect();
            let cut = times.len() - DENIED_KEYS_KEPT;
            let (_, &mut newest_dropped, _) = times.select_nth_unstable(cut - 1);
            kept.retain(|_, at_ms| *at_ms > newest_dropped);
        }
        Ok(())
    }

    async fn last_denial(&self, key: &Fingerprint) -> Result<Option<u64>, StoreError> {
        Ok(lock(&self.denials).get(key).copied())
    }

    /// Drops every key whose history has left its window, so memory stays bounded
    /// by the keys active within one window. Returns how many were dropped.
    fn evict_idle(&self) -> usize {
        let now = now_ms();
        let mut evicted = 0;
        for shard in self.shards.iter() {
            let mut map = lock(shard);
            let before = map.len();
            map.retain(|_, history| !history.is_expired(now));
            evicted += before - map.len();
        }
        evicted
    }
}

/// Fingerprints are uniformly distributed, so any byte picks a shard fairly.
fn shard_of(key: &Fingerprint) -> usize {
    key.as_bytes()[0] as usize % SHARDS
}

/// Decides one check at `now` in its shard's map. A peek reads the history in place (or
/// an empty one, which allocates nothing) and writes nothing.
fn decide_in(
    map: &mut HashMap<Fingerprint, History>,
    key: &Fingerprint,
    limits: &Limits,
    cost: u32,
    mode: Mode,
    now: u64,
) -> Decision {
    match (map.get_mut(key), mode) {
        (Some(history), _) => history.check(now, limits, cost, mode),
        (None, Mode::Peek) => History::default().check(now, limits, cost, mode),
        (None, Mode::Consume) => map.entry(*key).or_default().check(now, limits, cost, mode),
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn idle_keys_are_evicted_and_live_ones_kept() {
        let store = MemoryStore::new();
        let short = Limits::single(5, Duration::from_millis(50)).unwrap();
        let long = Limits::single(5, Duration::from_secs(60)).unwrap();
        for i in 0..100u8 {
            store.check(&Fingerprint::from_bytes([i; 16]), &short, 1, Mode::Consume).await.unwrap();
        }
        store.check(&Fingerprint::from_bytes([200; 16]), &long, 1, Mode::Consume).await.unwrap();
        store.check(&Fingerprint::from_bytes([201; 16]), &long, 1, Mode::Peek).await.unwrap();
        assert_eq!(store.len(), 101);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(store.evict_idle(), 100);
        assert_eq!(store.len(), 1, "the key still inside its window stays");
    }
}
