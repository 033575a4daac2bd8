//! Floor 0: the helpers every floor shares: a poison-tolerant lock, the pacing of log
//! lines for events that can happen on every call, and the deadline of the call served.

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

tokio::task_local! {
    static CALLER_DEADLINE: std::time::Instant;
}

/// The deadline of the call being served (its caller's `grpc-timeout`), set by the gRPC
/// layer around a call and read by the store calls it makes, so that a slow store is
/// waited for as long as the caller waits, and no longer.
pub(crate) struct CallerDeadline;

impl CallerDeadline {
    /// Runs `call` with `deadline` as its caller's (none: the store's own bound applies).
    pub async fn scope<F: std::future::Future>(deadline: Option<std::time::Instant>, call: F) -> F::Output {
        match deadline {
            Some(deadline) => CALLER_DEADLINE.scope(deadline, call).await,
            None => call.await,
        }
    }

    /// The deadline of the call being served, if its caller sent one.
    pub fn current() -> Option<std::time::Instant> {
        CALLER_DEADLINE.try_with(|deadline| *deadline).ok()
    }

    /// A `grpc-timeout` header's value as a deadline from `now`: digits, then a unit
    /// (H, M, S, m, u, n); `None` if it is not one.
    pub fn from_grpc_timeout(value: &[u8], now: std::time::Instant) -> Option<std::time::Instant> {
        let (&unit, digits) = value.split_last()?;
        if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
        let timeout = match unit {
            b'H' => Duration::from_secs(amount.checked_mul(3600)?),
            b'M' => Duration::from_secs(amount.checked_mul(60)?),
            b'S' => Duration::from_secs(amount),
            b'm' => Duration::from_millis(amount),
            b'u' => Duration::from_micros(amount),
            b'n' => Duration::from_nanos(amount),
            _ => return None,
        };
        now.checked_add(timeout)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{CallerDeadline, LogEvery};

    #[test]
    fn one_line_per_interval_with_the_count_since() {
        let pace = LogEvery::new();
        assert_eq!(pace.due(), Some(1), "the first event is logged");
        assert_eq!((pace.due(), pace.due()), (None, None), "the next ones within the interval are not");
    }

    #[test]
    fn a_grpc_timeout_is_digits_then_a_unit() {
        let now = Instant::now();
        let after = |value: &str| CallerDeadline::from_grpc_timeout(value.as_bytes(), now).map(|d| d - now);
        assert_eq!(after("20m"), Some(Duration::from_millis(20)));
        assert_eq!(after("1S"), Some(Duration::from_secs(1)));
        assert_eq!(after("2M"), Some(Duration::from_secs(120)));
        assert_eq!(after("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(after("500u"), Some(Duration::from_micros(500)));
        assert_eq!(after("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "m", "20", "20x", "-1m", "123456789m", "2 m"] {
            assert_eq!(after(bad), None, "{bad:?}");
        }
    }
}
