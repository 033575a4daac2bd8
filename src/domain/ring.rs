//! The ring-buffer log of `docs/design.md#the-algorithm` in Rust, for the in-process
//! store: the same decisions as `lua/sliding_window.lua` (the behaviour suite and the
//! script's replay test hold the two to it).

use super::{Decision, Limits, MAX_WINDOWS, Mode, WindowCheck};

/// Timestamps (Unix ms) of the last `capacity` allowed units, oldest at `head`;
/// 0 marks a slot never used, older than any window. The capacity is the largest
/// limit the key has had: a lowered limit never drops history, so no sequence of
/// limit changes can forget a unit that still counts. Every window of a policy is
/// checked against the same history (an allowed unit counts in all of them).
#[derive(Debug, Clone)]
pub struct Ring {
    slots: Box<[u64]>,
    head: usize,
}

impl Ring {
    pub fn new(capacity: u32) -> Self {
        Self { slots: vec![0; capacity as usize].into_boxed_slice(), head: 0 }
    }

    /// The timestamp of the newest allowed unit, 0 if none.
    pub fn newest(&self) -> u64 {
        self.at(self.slots.len() - 1)
    }

    /// Decides one request of `cost` (1..=limits.max_cost()) at `now_ms` and, in
    /// [`Mode::Consume`], records it if it fits every window. The caller's clock may
    /// run backwards; the key's time never does.
    pub fn check(&mut self, now_ms: u64, limits: &Limits, cost: u32, mode: Mode) -> Decision {
        debug_assert!(cost >= 1 && cost <= limits.max_cost());
        let capacity = limits.capacity() as usize;
        if self.slots.len() < capacity {
            self.grow(capacity);
        }
        let newest = self.newest();
        let now = now_ms.max(newest);
        let mut checks = [WindowCheck::default(); MAX_WINDOWS];
        for (check, window) in checks.iter_mut().zip(limits.windows()) {
            *check = self.check_window(now, window.limit() as usize, window.window_ms(), cost as usize);
        }
        let checks = &checks[..limits.windows().len()];
        let decision = Decision::assemble(limits, cost, now, newest, checks);
        if decision.allowed && mode == Mode::Consume {
            self.push(now, cost as usize);
        }
        decision
    }

    /// One window's room and, if the request does not fit, the wait until it would.
    fn check_window(&self, now: u64, limit: usize, window_ms: u64, cost: usize) -> WindowCheck {
        let capacity = self.slots.len();
        let cutoff = now.saturating_sub(window_ms);
        // The request fits iff this slot (and so every older one) is outside the window.
        let decisive = capacity - limit + cost - 1;
        let needed = self.at(decisive);
        let fits = needed <= cutoff;
        let range = if fits { (decisive + 1, capacity) } else { (0, decisive) };
        let outside = self.first_in_window(range, cutoff);
        let spare = outside.saturating_sub(capacity - limit) as u32;
        WindowCheck { spare, retry_after_ms: if fits { 0 } else { needed + window_ms - now } }
    }

    fn at(&self, logical: usize) -> u64 {
        self.slots[(self.head + logical) % self.slots.len()]
    }

    /// Binary search in logical `lo..hi` for the first slot newer than `cutoff`:
    /// the ring is ordered, so the slots outside the window are a prefix.
    fn first_in_window(&self, (mut lo, mut hi): (usize, usize), cutoff: u64) -> usize {
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.at(mid) <= cutoff {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Overwrites the `cost` oldest slots, all outside the window, with `now`.
    fn push(&mut self, now: u64, cost: usize) {
        let len = self.slots.len();
        for j in 0..cost {
            self.slots[(self.head + j) % len] = now;
        }
        self.head = (self.head + cost) % len;
    }

    /// Grows to `capacity` slots, oldest first, the new empty ones in front.
    fn grow(&mut self, capacity: usize) {
        let old = self.slots.len();
        let ordered = (0..old).map(|j| self.at(j));
        let grown: Vec<u64> = std::iter::repeat_n(0, capacity - old).chain(ordered).collect();
        self.slots = grown.into_boxed_slice();
        self.head = 0;
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

    impl Ring {
        fn check_and_consume(&mut self, now_ms: u64, limits: Limits, cost: u32) -> Decision {
            self.check(now_ms, &limits, cost, Mode::Consume)
        }
    }

    #[test]
    fn allows_exactly_the_limit_then_denies_with_an_honest_retry() {
        let p = policy(3, 1000);
        let mut ring = Ring::new(3);
        for (i, remaining) in [2, 1, 0].into_iter().enumerate() {
            let d = ring.check_and_consume(T0 + i as u64 * 10, p, 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, remaining);
        }
        let denied = ring.check_and_consume(T0 + 100, p, 1);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after_ms, 900, "the oldest unit leaves the window at T0 + 1000");
        assert_eq!(denied.reset_after_ms, 1000 - 100 + 20);
        assert!(!ring.check_and_consume(T0 + 999, p, 1).allowed);
        let retried = ring.check_and_consume(T0 + 1000, p, 1);
        assert!(retried.allowed);
        assert_eq!(retried.remaining, 0);
    }

    #[test]
    fn a_cost_needs_that_many_expired_units() {
        let p = policy(5, 1000);
        let mut ring = Ring::new(5);
        assert!(ring.check_and_consume(T0, p, 3).allowed);
        assert!(ring.check_and_consume(T0 + 500, p, 2).allowed);
        let denied = ring.check_and_consume(T0 + 600, p, 4);
        assert!(!denied.allowed);
        // Four units free up only when the two at T0 + 500 leave too.
        assert_eq!(denied.retry_after_ms, 900);
        let denied = ring.check_and_consume(T0 + 1000, p, 4);
        assert!(!denied.allowed);
        assert_eq!(denied.remaining, 3);
        assert!(ring.check_and_consume(T0 + 1000, p, 3).allowed);
    }

    #[test]
    fn time_never_runs_backwards_for_a_key() {
        let p = policy(2, 1000);
        let mut ring = Ring::new(2);
        ring.check_and_consume(T0 + 500, p, 1);
        let d = ring.check_and_consume(T0, p, 1);
        assert_eq!(d.decided_at_ms, T0 + 500);
    }

    #[test]
    fn a_lowered_then_raised_limit_never_forgets_a_counted_unit() {
        let p10 = policy(10, 60_000);
        let mut ring = Ring::new(10);
        assert!(ring.check_and_consume(T0, p10, 10).allowed);
        // Lowered to 5: the 10 units still count, nothing fits, remaining is 0.
        let lowered = ring.check_and_consume(T0 + 1, policy(5, 60_000), 1);
        assert!(!lowered.allowed);
        assert_eq!((lowered.remaining, lowered.retry_after_ms), (0, 59_999));
        // Back to 10: still full. (A ring that dropped history would allow 5 more.)
        assert!(!ring.check_and_consume(T0 + 2, p10, 1).allowed);
    }

    #[test]
    fn a_raised_limit_keeps_the_history() {
        let p3 = policy(3, 1000);
        let mut ring = Ring::new(3);
        for i in 0..3 {
            ring.check_and_consume(T0 + i * 100, p3, 1);
        }
        let p5 = policy(5, 1000);
        let d = ring.check_and_consume(T0 + 300, p5, 2);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        let denied = ring.check_and_consume(T0 + 300, p5, 1);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after_ms, 700, "the unit at T0 leaves first");
    }

    #[test]
    fn a_request_must_fit_every_window_and_counts_in_all() {
        let minute = Window::new(5, Duration::from_secs(60)).unwrap();
        let second = Window::new(2, Duration::from_secs(1)).unwrap();
        let limits = Limits::new(&[minute, second]).unwrap();
        let mut ring = Ring::new(5);
        assert!(ring.check(T0, &limits, 2, Mode::Consume).allowed);
        let burst = ring.check(T0 + 10, &limits, 1, Mode::Consume);
        assert!(!burst.allowed, "the per-second window is full");
        assert_eq!((burst.limit, burst.retry_after_ms), (2, 990));
        assert!(ring.check(T0 + 1000, &limits, 2, Mode::Consume).allowed);
        // 4 of 5 per minute used: a cost of 2 fits the second but not the minute.
        let d = ring.check(T0 + 2000, &limits, 2, Mode::Consume);
        assert!(!d.allowed);
        assert_eq!((d.limit, d.remaining, d.retry_after_ms), (5, 1, 58_000));
        assert!(ring.check(T0 + 2000, &limits, 1, Mode::Consume).allowed, "the denial consumed from neither");
    }

    #[test]
    fn peek_answers_as_consume_would_and_writes_nothing() {
        let p = policy(2, 1000);
        let mut ring = Ring::new(2);
        let peeked = ring.check(T0, &p, 2, Mode::Peek);
        assert_eq!(peeked, ring.check(T0, &p, 2, Mode::Consume));
        let denied = ring.check(T0 + 1, &p, 1, Mode::Peek);
        assert_eq!(denied, ring.check(T0 + 1, &p, 1, Mode::Consume));
        assert!(!denied.allowed);
    }
}
