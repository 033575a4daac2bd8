//! The limiter's own upkeep, in one task per limiter: drops history and cached
//! denials that time has undone, writes the failure modes' admissions into the store
//! once it answers, counts the replicas sharing the store, applies other replicas' resets,
//! tells the store this replica's denials, and probes the store so that its health stays
//! true while no checks arrive.

use std::sync::Weak;
use std::time::Duration;

use super::Limiter;
use crate::store::Store;

/// How often idle history (the in-process stores) and undone denials are dropped.
const EVICTION_INTERVAL: Duration = Duration::from_secs(1);
/// How often requests the failure modes admitted are written into the store, once it answers.
const SETTLE_INTERVAL: Duration = Duration::from_millis(100);
/// How often an idle replica checks that the store still answers.
const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Runs until the limiter is dropped.
pub async fn run<S: Store>(limiter: Weak<Limiter<S>>) {
    let mut probe = tokio::time::interval(STORE_PROBE_INTERVAL);
    let mut sweep = tokio::time::interval(EVICTION_INTERVAL);
    let mut settle = tokio::time::interval(SETTLE_INTERVAL);
    let mut presence = tokio::time::interval(super::presence::INTERVAL);
    loop {
        tokio::select! {
            _ = probe.tick() => {
                let Some(limiter) = limiter.upgrade() else { return };
                let answer = limiter.store.probe().await;
                limiter.note_store_health(answer.is_ok());
                limiter.note_refusal(&answer);
            }
            _ = sweep.tick() => {
                let Some(limiter) = limiter.upgrade() else { return };
                let evicted = limiter.store.evict_idle();
                if let Some(cache) = &limiter.deny_cache {
                    cache.evict_expired();
                }
                limiter.local.evict_idle();
                limiter.known.evict_expired(super::failure::local_now_ms());
                tracing::trace!(evicted, "evicted idle keys");
            }
            _ = presence.tick() => {
                let Some(limiter) = limiter.upgrade() else { return };
                limiter.count_replicas().await;
                limiter.apply_resets().await;
                limiter.tell_denials().await;
            }
            _ = settle.tick() => {
                let Some(limiter) = limiter.upgrade() else { return };
                limiter.settle_some().await;
            }
        }
    }
}
