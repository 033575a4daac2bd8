//! Floor 0: the helpers every floor shares: a poison-tolerant lock, and the pacing of
//! log lines for events that can happen on every call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Locks a std mutex. A poisoned one still holds consistent data (nothing here
/// panics while changing guarded state), so it is used rather than failing every
/// later call.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// At most one log line per [`LogEvery::INTERVAL`] for one kind of event, with how many
/// events there were since the last line: a flood of them writes no line per event.
#[derive(Debug, Default)]
pub(crate) struct LogEvery {
    last_ms: AtomicU64,
    since: AtomicU64,
}

impl LogEvery {
    pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

    pub(crate) const fn new() -> Self {
        Self { last_ms: AtomicU64::new(0), since: AtomicU64::new(0) }
    }

    /// Counts one event; `Some(events since the last line)` when a line is due.
    pub(crate) fn due(&self) -> Option<u64> {
        let since = self.since.fetch_add(1, Ordering::Relaxed) + 1;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= Self::INTERVAL.as_millis() as u64;
        if due && self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.since.fetch_sub(since, Ordering::Relaxed);
            return Some(since);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::LogEvery;

    #[test]
    fn one_line_per_interval_with_the_count_since() {
        let pace = LogEvery::new();
        assert_eq!(pace.due(), Some(1), "the first event is logged");
        assert_eq!((pace.due(), pace.due()), (None, None), "the next ones within the interval are not");
    }
}
