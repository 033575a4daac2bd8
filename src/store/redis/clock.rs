//! What this replica knows of Redis's clock, so that a script call can carry its callers'
//! deadline on Redis's clock and count nothing once they have stopped waiting (rule 4: a
//! check answered by a failure mode is never counted by a late call).
//!
//! Every decision carries the Redis time it was made at (`decided_at_ms`); it was made
//! before its reply arrived here, so (Redis's clock - this host's) is at least
//! `decided_at_ms` - the arrival time. The largest such bound seen in the last interval is
//! used; a deadline `t` on this host is then at most `t` + bound on Redis's clock when the
//! call runs, less the margin its reply needs to come back.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The time kept for a reply to travel back before its callers stop waiting.
const REPLY_MARGIN: Duration = Duration::from_millis(2);
/// How long a bound is kept before the newest samples replace it (clocks drift).
const INTERVAL_MS: i64 = 10_000;

/// A lower bound of (Redis's clock - this host's clock), in ms.
#[derive(Debug)]
pub(super) struct RedisClock {
    /// The bound in use (`i64::MIN`: none yet, so calls carry no deadline).
    bound: AtomicI64,
    /// The largest sample of the current interval, and when that interval began.
    sampled: AtomicI64,
    interval_start: AtomicI64,
}

impl Default for RedisClock {
    fn default() -> Self {
        Self { bound: AtomicI64::new(i64::MIN), sampled: AtomicI64::new(i64::MIN), interval_start: AtomicI64::new(0) }
    }
}

impl RedisClock {
    /// Learns from a reply received now whose earliest decision was made at `decided_at_ms`.
    pub(super) fn observe(&self, decided_at_ms: u64) {
        let now = unix_ms();
        let sample = decided_at_ms as i64 - now;
        self.sampled.fetch_max(sample, Ordering::Relaxed);
        self.bound.fetch_max(sample, Ordering::Relaxed);
        let start = self.interval_start.load(Ordering::Relaxed);
        if now - start >= INTERVAL_MS
            && self.interval_start.compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            // The last interval's largest sample becomes the bound: an old one does not
            // outlive a drift.
            let latest = self.sampled.swap(sample, Ordering::Relaxed);
            self.bound.store(latest.max(sample), Ordering::Relaxed);
        }
    }

    /// `until` (a deadline on this host) on Redis's clock, less the reply's margin: a call
    /// that Redis runs after it would be answered after its callers stopped waiting.
    /// `None` before any reply has been seen.
    pub(super) fn deadline_ms(&self, until: Instant) -> Option<u64> {
        let bound = self.bound.load(Ordering::Relaxed);
        if bound == i64::MIN {
            return None;
        }
        let left = until.saturating_duration_since(Instant::now()).saturating_sub(REPLY_MARGIN);
        u64::try_from(unix_ms() + left.as_millis() as i64 + bound).ok()
    }
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
