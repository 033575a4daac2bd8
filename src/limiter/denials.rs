//! When each key was last denied, for the support desk's Inspect: this replica notes its
//! denials and, every second, tells the store ([`Store::note_denials`]), which keeps the
//! last one of each key for [`crate::store::DENIALS_KEPT`]; Inspect reads the store's and
//! adds what this replica has not told it yet.

use std::collections::HashMap;
use std::sync::Mutex;

use super::Limiter;
use crate::domain::Fingerprint;
use crate::store::Store;
use crate::sync::lock;

/// The most keys noted between two tellings: past it, the keys already noted keep their
/// latest denial and others wait for the next second (a flood of denied keys cannot grow
/// this replica's memory).
const MAX_PENDING: usize = 10_000;

/// This replica's denials the store has not been told yet: key to its last denial (the
/// store's clock, Unix ms).
#[derive(Debug, Default)]
pub(super) struct Denials(Mutex<HashMap<Fingerprint, u64>>);

impl Denials {
    pub(super) fn note(&self, key: &Fingerprint, at_ms: u64) {
        let mut pending = lock(&self.0);
        if let Some(last) = pending.get_mut(key) {
            *last = (*last).max(at_ms);
        } else if pending.len() < MAX_PENDING {
            pending.insert(*key, at_ms);
        }
    }

    fn get(&self, key: &Fingerprint) -> Option<u64> {
        lock(&self.0).get(key).copied()
    }

    fn take(&self) -> Vec<(Fingerprint, u64)> {
        lock(&self.0).drain().collect()
    }

    /// Puts back what the store could not be told, keeping the later time of a key.
    fn restore(&self, denials: Vec<(Fingerprint, u64)>) {
        denials.into_iter().for_each(|(key, at_ms)| self.note(&key, at_ms));
    }
}

impl<S: Store> Limiter<S> {
    /// Tells the store this replica's denials since it last did (the housekeeping task,
    /// every second); kept for the next time if the store cannot answer.
    pub(super) async fn tell_denials(&self) {
        let denials = self.denials.take();
        if denials.is_empty() {
            return;
        }
        if let Err(e) = self.store.note_denials(&denials).await {
            tracing::debug!(error = %e, keys = denials.len(), "denials not recorded yet");
            self.denials.restore(denials);
        }
    }

    /// When `key` was last denied by any replica (the store's clock, Unix ms), if within
    /// [`crate::store::DENIALS_KEPT`]: what the store holds, or this replica's later one.
    pub(super) async fn last_denial(&self, key: &Fingerprint) -> Result<Option<u64>, super::CheckError> {
        let stored = self.call_store(self.store.last_denial(key)).await?;
        Ok(stored.max(self.denials.get(key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Fingerprint {
        Fingerprint::from_hex(&format!("{n:032x}")).unwrap()
    }

    #[test]
    fn a_key_keeps_its_latest_denial_and_the_pending_set_is_bounded() {
        let denials = Denials::default();
        denials.note(&key(1), 2_000);
        denials.note(&key(1), 1_000);
        assert_eq!(denials.get(&key(1)), Some(2_000), "an older time does not replace a later one");
        for n in 0..=255u8 {
            denials.note(&key(n), 5);
        }
        let taken = denials.take();
        assert_eq!(taken.len(), 256);
        assert_eq!(denials.get(&key(1)), None, "taken");
        denials.restore(taken);
        assert_eq!(denials.get(&key(1)), Some(2_000));

        let many = Denials::default();
        for n in 0..MAX_PENDING as u128 + 5 {
            many.note(&Fingerprint::from_hex(&format!("{n:032x}")).unwrap(), 1);
        }
        assert_eq!(many.take().len(), MAX_PENDING);
    }
}
