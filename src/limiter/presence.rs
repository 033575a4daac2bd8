//! How many replicas share the store, for the `local` failure mode: each replica admits its
//! share (limit / replicas) while the store cannot answer. Replicas sharing a Redis count
//! themselves there (a sorted set, every [`INTERVAL`]: `Store::presence`); the count in use is the larger of
//! the last one seen and `--expected-replicas`, a floor, so that during an outage the local
//! mode divides by how many replicas there were when Redis last answered.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::Limiter;
use crate::metrics;
use crate::store::Store;

/// How often a replica tells the store it is there.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// How long a replica counts after it last said so: a few intervals, so that one slow call
/// does not drop it, and one that stopped leaves the count within seconds.
pub const TTL: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(super) struct Presence {
    /// This replica's id among those sharing the store: random, chosen at start-up.
    id: String,
    /// `--expected-replicas`: the least count the local mode divides by.
    floor: AtomicU32,
    /// The last count the store gave (0 before the first).
    live: AtomicU32,
}

impl Default for Presence {
    fn default() -> Self {
        Self { id: format!("{:032x}", rand::random::<u128>()), floor: AtomicU32::new(1), live: AtomicU32::new(0) }
    }
}

impl Presence {
    /// The number the local mode divides by.
    pub(super) fn replicas(&self) -> u32 {
        self.floor.load(Ordering::Relaxed).max(self.live.load(Ordering::Relaxed)).max(1)
    }

    pub(super) fn set_floor(&self, floor: u32) {
        self.floor.store(floor.max(1), Ordering::Relaxed);
        metrics::replicas(self.replicas());
    }
}

impl<S: Store> Limiter<S> {
    /// The replicas the local failure mode divides each limit among.
    pub fn replicas(&self) -> u32 {
        self.presence.replicas()
    }

    /// Tells the store this replica is there, and learns how many are (the housekeeping
    /// task, every [`INTERVAL`]). A store that cannot answer leaves the last count in use.
    pub(super) async fn count_replicas(&self) {
        match self.store.presence(&self.presence.id, TTL).await {
            Ok(Some(live)) => {
                let before = self.presence.live.swap(live, Ordering::Relaxed);
                if before != live {
                    tracing::info!(
                        replicas = live,
                        floor = self.presence.floor.load(Ordering::Relaxed),
                        "replicas sharing the store"
                    );
                }
                metrics::replicas(self.replicas());
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "replica count not refreshed"),
        }
    }
}
