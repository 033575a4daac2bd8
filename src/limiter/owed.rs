//! Requests a failure mode admitted while the store could not answer (rule 4: no answer
//! contradicts the store). Each is held until the store answers again, then written into its
//! key's history ([`Store::record_admitted`]): a key's owed requests before the store decides
//! that key again, the rest by the housekeeping task within a tick. After an outage the
//! store's history is whole, and the window that follows is exact.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Limiter;
use crate::domain::{Fingerprint, Limits};
use crate::metrics;
use crate::store::{Admitted, Store};
use crate::sync::lock;

const SHARDS: usize = 64;
/// Owed requests held in all (about 100 bytes each); one admitted beyond is lost, and counted.
const MOST: usize = 1 << 20;
/// Owed requests written per housekeeping pass.
pub(super) const PER_PASS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Entry {
    limits: Limits,
    cost: u32,
    at: Instant,
}

impl Entry {
    /// The request to write now, or `None` if it has left its longest window: nothing to count.
    fn admitted(&self, key: Fingerprint, now: Instant) -> Option<Admitted> {
        let age = now.saturating_duration_since(self.at);
        (age < Duration::from_millis(self.limits.longest_ms())).then_some(Admitted {
            key,
            limits: self.limits,
            cost: self.cost,
            age,
        })
    }
}

/// The owed requests of the keys whose fingerprint's first byte falls in one shard.
type Shard = Mutex<HashMap<Fingerprint, Vec<Entry>>>;

/// Owed requests taken out to be written, by key.
type Taken = Vec<(Fingerprint, Entry)>;

#[derive(Debug)]
pub(super) struct Owed {
    shards: Box<[Shard]>,
    held: AtomicUsize,
}

impl Default for Owed {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| Mutex::default()).collect(), held: AtomicUsize::new(0) }
    }
}

impl Owed {
    fn shard(&self, key: &Fingerprint) -> &Shard {
        &self.shards[key.as_bytes()[0] as usize % SHARDS]
    }

    /// Whether any request is owed: one atomic load, so checks pay nothing otherwise.
    pub(super) fn any(&self) -> bool {
        self.held.load(Ordering::Relaxed) > 0
    }

    /// Holds a request admitted now.
    pub(super) fn owe(&self, key: &Fingerprint, limits: &Limits, cost: u32) {
        if self.held.fetch_add(1, Ordering::Relaxed) >= MOST {
            self.held.fetch_sub(1, Ordering::Relaxed);
            metrics::owed_done(false, 1);
            return;
        }
        lock(self.shard(key)).entry(*key).or_default().push(Entry { limits: *limits, cost, at: Instant::now() });
        metrics::owed(self.held.load(Ordering::Relaxed));
    }

    /// Takes the requests owed to `key`.
    fn take(&self, key: &Fingerprint) -> Taken {
        let entries = lock(self.shard(key)).remove(key).unwrap_or_default();
        self.taken(entries.len());
        entries.into_iter().map(|e| (*key, e)).collect()
    }

    /// Drops what is owed to `key`: its history was reset.
    pub(super) fn forget(&self, key: &Fingerprint) {
        drop(self.take(key));
    }

    /// Takes up to about `most` owed requests, of whole keys.
    fn take_some(&self, most: usize) -> Taken {
        let mut taken = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let keys: Vec<Fingerprint> = shard.keys().copied().take(most.saturating_sub(taken.len())).collect();
            for key in keys {
                taken.extend(shard.remove(&key).unwrap_or_default().into_iter().map(|e| (key, e)));
            }
        }
        self.taken(taken.len());
        taken
    }

    fn taken(&self, count: usize) {
        if count > 0 {
            metrics::owed(self.held.fetch_sub(count, Ordering::Relaxed) - count);
        }
    }

    /// Holds again requests the store could not count yet.
    fn put_back(&self, requests: Taken) {
        if requests.is_empty() {
            return;
        }
        self.held.fetch_add(requests.len(), Ordering::Relaxed);
        for (key, entry) in requests {
            lock(self.shard(&key)).entry(key).or_default().push(entry);
        }
        metrics::owed(self.held.load(Ordering::Relaxed));
    }
}

impl<S: Store> Limiter<S> {
    /// Writes what is owed to `keys` into the store, before the store decides them: their
    /// decisions then count every request admitted while it could not answer.
    pub(super) async fn settle<'k>(&self, keys: impl IntoIterator<Item = &'k Fingerprint>) {
        if self.owed.any() {
            let owed: Taken = keys.into_iter().flat_map(|key| self.owed.take(key)).collect();
            self.record_owed(owed).await;
        }
    }

    /// Writes up to [`PER_PASS`] owed requests into the store (the housekeeping task).
    pub(super) async fn settle_some(&self) {
        if self.owed.any() {
            self.record_owed(self.owed.take_some(PER_PASS)).await;
        }
    }

    /// Writes `owed` into the store; holds again what it could not count for now (it
    /// failed, or had no room), and gives up on what it refused for another reason.
    async fn record_owed(&self, owed: Taken) {
        let now = Instant::now();
        // Those that have left their window need no write.
        let (owed, admitted): (Taken, Vec<Admitted>) =
            owed.into_iter().filter_map(|(key, e)| Some(((key, e), e.admitted(key, now)?))).unzip();
        if owed.is_empty() {
            return;
        }
        match self.call_store(self.store.record_admitted(&admitted)).await {
            Ok(outcomes) => {
                let total = owed.len();
                let mut again = Vec::new();
                let mut lost = 0;
                for (request, outcome) in owed.into_iter().zip(outcomes) {
                    match outcome {
                        Ok(()) => {}
                        Err(e) if e.kind() == "oom" => again.push(request),
                        Err(e) => {
                            lost += 1;
                            tracing::debug!(key = %request.0, error = %e, "an owed request could not be recorded");
                        }
                    }
                }
                metrics::owed_done(true, total - lost - again.len());
                metrics::owed_done(false, lost);
                self.owed.put_back(again);
            }
            Err(e) => {
                tracing::debug!(error = %e, requests = owed.len(), "owed requests not recorded yet");
                self.owed.put_back(owed);
            }
        }
    }
}
