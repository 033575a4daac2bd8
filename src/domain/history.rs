//! A key's history for the in-process store: one entry per counted request inside the
//! longest window, the layout of `docs/design.md#the-algorithm` in Rust. It makes the same
//! decisions as `lua/sliding_window.lua`: both are held to the independent oracle
//! (`oracle::Replay`) by the script's replay test and the behaviour suite.

use std::collections::VecDeque;

use super::{Decision, Limits, MAX_WINDOWS, Mode, WindowCheck};

/// The requests a key counted, oldest first, as (time in Unix ms, units counted up to and
/// including it since the key began); requests in one millisecond share an entry. Bytes
/// follow use: 16 per request still inside the longest window, none per unit of limit.
#[derive(Debug, Clone, Default)]
pub struct History {
    entries: VecDeque<(u64, u64)>,
    /// Units counted before the oldest entry.
    base: u64,
    /// On the key's clock, the history is forgotten from then on (as the Redis key's expiry).
    expires: u64,
}

impl History {
    /// Whether nothing counts any more at `now_ms`: the history may be dropped.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires
    }

    /// Decides one request of `cost` (1..=limits.max_cost()) at `now_ms` and, in
    /// [`Mode::Consume`], counts it if it fits every window. The caller's clock may run
    /// backwards; the key's time never does. A peek reads in place: nothing is copied.
    pub fn check(&mut self, now_ms: u64, limits: &Limits, cost: u32, mode: Mode) -> Decision {
        debug_assert!(cost >= 1 && cost <= limits.max_cost());
        if self.is_expired(now_ms) && mode == Mode::Consume {
            *self = Self::default();
        }
        let live = !self.is_expired(now_ms);
        let newest = if live { self.entries.back().map_or(0, |e| e.0) } else { 0 };
        let now = now_ms.max(newest);
        let mut checks = [WindowCheck::default(); MAX_WINDOWS];
        for (check, window) in checks.iter_mut().zip(limits.windows()) {
            if live {
                *check = self.check_window(now, window.limit(), window.window_ms(), cost);
            } else {
                *check = WindowCheck { spare: window.limit(), retry_after_ms: 0 };
            }
        }
        let checks = &checks[..limits.windows().len()];
        let decision = Decision::assemble(limits, cost, now, newest, checks);
        let longest = limits.longest_ms();
        match (mode, decision.allowed) {
            (Mode::Peek, _) => {}
            (Mode::Consume, true) => self.record(now, longest, cost),
            // Denied under a longer window than the key was kept for: kept that long.
            (Mode::Consume, false) if live && newest + longest > self.expires => {
                self.expires = newest + longest + longest / 8;
            }
            (Mode::Consume, false) => {}
        }
        decision
    }

    /// Counts `cost` units a failure mode admitted at `at_ms` (or at the newest entry, if
    /// later) whether they fit or not, up to the largest limit in the longest window: as the
    /// script's owed requests. One already outside the longest window at `now_ms` is not.
    pub fn record_admitted(&mut self, now_ms: u64, at_ms: u64, limits: &Limits, cost: u32) {
        if self.is_expired(now_ms) {
            *self = Self::default();
        }
        let at = at_ms.max(self.entries.back().map_or(0, |e| e.0));
        let longest = limits.longest_ms();
        if at + longest <= now_ms {
            return;
        }
        let held = self.total() - self.through(self.first_after(at.saturating_sub(longest)));
        let counted = u64::from(cost).min(u64::from(limits.capacity()).saturating_sub(held));
        if counted > 0 {
            self.record(at, longest, counted as u32);
        }
    }

    /// The first entry newer than `cutoff`.
    fn first_after(&self, cutoff: u64) -> usize {
        self.entries.partition_point(|&(t, _)| t <= cutoff)
    }

    /// Units counted up to and including entry `j - 1` (`base` for j = 0).
    fn through(&self, j: usize) -> u64 {
        if j == 0 { self.base } else { self.entries[j - 1].1 }
    }

    fn total(&self) -> u64 {
        self.entries.back().map_or(self.base, |e| e.1)
    }

    /// One window's room and, if the request does not fit, the wait until it would: when
    /// the entry holding the (units + cost - limit)-th oldest unit in the window leaves it.
    fn check_window(&self, now: u64, limit: u32, window_ms: u64, cost: u32) -> WindowCheck {
        let first = self.first_after(now.saturating_sub(window_ms));
        let before = self.through(first);
        let units = self.total() - before;
        let spare = u64::from(limit).saturating_sub(units) as u32;
        let need = (units + u64::from(cost)).saturating_sub(u64::from(limit));
        if need == 0 {
            return WindowCheck { spare, retry_after_ms: 0 };
        }
        let holder = self.entries.partition_point(|&(_, through)| through < before + need);
        WindowCheck { spare, retry_after_ms: self.entries[holder].0 + window_ms - now }
    }

    /// Drops what the longest window no longer holds, then counts `cost` at `now`.
    fn record(&mut self, now: u64, longest_ms: u64, cost: u32) {
        let first = self.first_after(now.saturating_sub(longest_ms));
        self.base = self.through(first);
        self.entries.drain(..first);
        let total = self.total() + u64::from(cost);
        match self.entries.back_mut() {
            Some(newest) if newest.0 == now => newest.1 = total,
            _ => self.entries.push_back((now, total)),
        }
        // As the script: the expiry moves in steps of an eighth of the window.
        if self.expires < now + longest_ms {
            self.expires = now + longest_ms + longest_ms / 8;
        }
    }

    /// The requests held at `now_ms`, oldest first, as (Unix ms, units): nothing once the
    /// history has expired.
    pub fn requests(&self, now_ms: u64) -> Vec<(u64, u64)> {
        if self.is_expired(now_ms) {
            return Vec::new();
        }
        let mut before = self.base;
        self.entries
            .iter()
            .map(|&(t, through)| {
                let units = through - before;
                before = through;
                (t, units)
            })
            .collect()
    }

    /// How many entries are held (one per counted millisecond inside the window).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::Window;

    const T0: u64 = 1_700_000_000_000;

    fn policy(limit: u32, window_ms: u64) -> Limits {
        Limits::single(limit, Duration::from_millis(window_ms)).unwrap()
    }

    fn consume(history: &mut History, at: u64, limits: Limits, cost: u32) -> Decision {
        history.check(at, &limits, cost, Mode::Consume)
    }

    #[test]
    fn allows_exactly_the_limit_then_denies_with_an_honest_retry() {
        let p = policy(3, 1000);
        let mut history = History::default();
        for (i, remaining) in [2, 1, 0].into_iter().enumerate() {
            let d = consume(&mut history, T0 + i as u64 * 10, p, 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, remaining);
        }
        let denied = consume(&mut history, T0 + 100, p, 1);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after_ms, 900, "the oldest unit leaves the window at T0 + 1000");
        assert_eq!(denied.reset_after_ms, 1000 - 100 + 20);
        assert!(!consume(&mut history, T0 + 999, p, 1).allowed);
        assert!(consume(&mut history, T0 + 1000, p, 1).allowed);
    }

    #[test]
    fn a_cost_waits_for_enough_units_to_leave_and_is_one_entry() {
        let p = policy(5, 1000);
        let mut history = History::default();
        assert!(consume(&mut history, T0, p, 3).allowed);
        assert!(consume(&mut history, T0 + 500, p, 2).allowed);
        let denied = consume(&mut history, T0 + 600, p, 4);
        // Four units free up only when the two at T0 + 500 leave too.
        assert_eq!((denied.allowed, denied.retry_after_ms), (false, 900));
        assert_eq!(history.len(), 2, "one entry per request, not per unit");
        let big = policy(1_000_000, 60_000);
        let mut tokens = History::default();
        assert!(consume(&mut tokens, T0, big, 1_000_000).allowed);
        assert_eq!(tokens.len(), 1);
        assert_eq!(consume(&mut tokens, T0 + 1, big, 1).retry_after_ms, 59_999);
    }

    #[test]
    fn time_never_runs_backwards_for_a_key() {
        let p = policy(2, 1000);
        let mut history = History::default();
        consume(&mut history, T0 + 500, p, 1);
        assert_eq!(consume(&mut history, T0, p, 1).decided_at_ms, T0 + 500);
    }

    #[test]
    fn a_lowered_then_raised_limit_forgets_no_counted_unit() {
        let mut history = History::default();
        assert!(consume(&mut history, T0, policy(10, 60_000), 10).allowed);
        let lowered = consume(&mut history, T0 + 1, policy(5, 60_000), 1);
        assert_eq!((lowered.allowed, lowered.remaining, lowered.retry_after_ms), (false, 0, 59_999));
        assert!(!consume(&mut history, T0 + 2, policy(10, 60_000), 1).allowed);
    }

    /// A policy applies to the history the last counted request kept: a lengthened window
    /// sees the shorter window's requests, not those it had already dropped (the key has
    /// not expired yet: it would by T0 + 3127).
    #[test]
    fn a_lengthened_window_sees_what_the_shorter_one_kept() {
        let mut history = History::default();
        for second in 0..3 {
            for i in 0..3 {
                assert!(consume(&mut history, T0 + second * 1000 + i, policy(3, 1000), 1).allowed);
            }
        }
        let minute = policy(10, 60_000);
        let allowed = (0..10).take_while(|i| consume(&mut history, T0 + 3050 + i, minute, 1).allowed).count();
        assert_eq!(allowed, 7, "the last second's 3 requests still count; the 6 before were dropped");
    }

    #[test]
    fn a_request_must_fit_every_window_and_counts_in_all() {
        let minute = Window::new(5, Duration::from_secs(60)).unwrap();
        let second = Window::new(2, Duration::from_secs(1)).unwrap();
        let limits = Limits::new(&[minute, second]).unwrap();
        let mut history = History::default();
        assert!(history.check(T0, &limits, 2, Mode::Consume).allowed);
        let burst = history.check(T0 + 10, &limits, 1, Mode::Consume);
        assert_eq!((burst.allowed, burst.limit, burst.retry_after_ms), (false, 2, 990));
        assert!(history.check(T0 + 1000, &limits, 2, Mode::Consume).allowed);
        let d = history.check(T0 + 2000, &limits, 2, Mode::Consume);
        assert_eq!((d.allowed, d.limit, d.remaining, d.retry_after_ms), (false, 5, 1, 58_000));
    }

    #[test]
    fn a_peek_answers_as_consume_would_and_changes_nothing() {
        let p = policy(2, 1000);
        let mut history = History::default();
        let peeked = history.check(T0, &p, 2, Mode::Peek);
        assert!(history.is_empty());
        assert_eq!(peeked, history.check(T0, &p, 2, Mode::Consume));
        let wide = policy(1_000_000, 60_000);
        let before = history.len();
        assert!(history.check(T0 + 1, &wide, 500_000, Mode::Peek).allowed);
        assert_eq!(history.len(), before);
    }

    #[test]
    fn an_idle_key_expires_after_its_window_and_an_eighth() {
        let p = policy(1, 8000);
        let mut history = History::default();
        assert!(consume(&mut history, T0, p, 1).allowed);
        assert!(!history.is_expired(T0 + 8999));
        assert!(history.is_expired(T0 + 9000));
        let fresh = consume(&mut history, T0 + 9000, p, 1);
        assert_eq!((fresh.allowed, history.len()), (true, 1));
    }
}
