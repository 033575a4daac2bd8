//! The circuit breaker in front of the store: after a few transient failures in a
//! row it stops calling the store, so a dead or hung Redis adds no latency to each
//! check (the failure policy answers at once), and lets one trial call through
//! every cool-down to find out whether the store is back.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// Transient failures in a row that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 3;
/// How long the breaker stays open before it lets one trial call through.
pub const COOL_DOWN: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Calls skip the store until `until`; then one trial goes through.
    Open,
}

#[derive(Debug)]
struct Inner {
    failures: u32,
    /// `Some` while open: when the next trial call may go.
    open_until: Option<Instant>,
    /// A trial call is in flight; others keep skipping the store until it returns.
    trial: bool,
}

#[derive(Debug)]
pub struct Breaker {
    inner: Mutex<Inner>,
    /// Closed with no failure counted: the state of nearly every call, read and kept
    /// without the lock, so a healthy store's checks do not all meet on one mutex.
    healthy: AtomicBool,
    cool_down: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new(COOL_DOWN)
    }
}

/// Whether a call may go to the store, and whether it is the trial of an open breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Call,
    Trial,
    Skip,
}

impl Breaker {
    pub fn new(cool_down: Duration) -> Self {
        let inner = Mutex::new(Inner { failures: 0, open_until: None, trial: false });
        Self { inner, healthy: AtomicBool::new(true), cool_down }
    }

    pub fn permit(&self) -> Permit {
        if self.healthy.load(Ordering::Acquire) {
            return Permit::Call;
        }
        let mut inner = lock(&self.inner);
        match inner.open_until {
            None => Permit::Call,
            Some(until) if !inner.trial && Instant::now() >= until => {
                inner.trial = true;
                Permit::Trial
            }
            Some(_) => Permit::Skip,
        }
    }

    /// Records a call's outcome: `store_down` for a store that did not answer, or refused the call.
    /// Returns the new state when it changed.
    pub fn record(&self, permit: Permit, store_down: bool) -> Option<BreakerState> {
        if !store_down && permit == Permit::Call && self.healthy.load(Ordering::Acquire) {
            return None;
        }
        let mut inner = lock(&self.inner);
        if permit == Permit::Trial {
            inner.trial = false;
        }
        let was_open = inner.open_until.is_some();
        let change = if !store_down {
            inner.failures = 0;
            inner.open_until = None;
            was_open.then_some(BreakerState::Closed)
        } else {
            inner.failures = inner.failures.saturating_add(1);
            if was_open || inner.failures >= FAILURES_TO_OPEN {
                inner.open_until = Some(Instant::now() + self.cool_down);
            }
            (!was_open && inner.open_until.is_some()).then_some(BreakerState::Open)
        };
        self.healthy.store(inner.failures == 0 && inner.open_until.is_none(), Ordering::Release);
        change
    }

    /// A permit to call the store, or `None` while the breaker is open. The attempt
    /// must be finished with its outcome; one dropped unfinished (the caller went away)
    /// releases its trial, so the breaker is never left waiting for it.
    pub fn attempt(&self) -> Option<Attempt<'_>> {
        match self.permit() {
            Permit::Skip => None,
            permit => Some(Attempt { breaker: self, permit, finished: false }),
        }
    }

    fn abandon(&self, permit: Permit) {
        if permit == Permit::Trial {
            lock(&self.inner).trial = false;
        }
    }

    /// How long until the next trial call (0 when closed).
    pub fn next_trial_in(&self) -> Duration {
        lock(&self.inner).open_until.map_or(Duration::ZERO, |until| until.saturating_duration_since(Instant::now()))
    }
}

/// One call to the store under the breaker.
#[derive(Debug)]
pub struct Attempt<'a> {
    breaker: &'a Breaker,
    permit: Permit,
    finished: bool,
}

impl Attempt<'_> {
    /// Records the outcome; returns the breaker's new state when it changed.
    pub fn finish(mut self, store_down: bool) -> Option<BreakerState> {
        self.finished = true;
        self.breaker.record(self.permit, store_down)
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.breaker.abandon(self.permit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_and_closes_after_a_good_trial() {
        let breaker = Breaker::new(Duration::from_millis(20));
        for _ in 0..FAILURES_TO_OPEN - 1 {
            assert_eq!(breaker.record(breaker.permit(), true), None);
        }
        assert_eq!(breaker.record(Permit::Call, false), None, "a success resets the count");
        for _ in 0..FAILURES_TO_OPEN - 1 {
            breaker.record(breaker.permit(), true);
        }
        assert_eq!(breaker.record(breaker.permit(), true), Some(BreakerState::Open));
        assert_eq!(breaker.permit(), Permit::Skip, "open: the store is not called");
        std::thread::sleep(Duration::from_millis(25));
        let trial = breaker.permit();
        assert_eq!(trial, Permit::Trial);
        assert_eq!(breaker.permit(), Permit::Skip, "one trial at a time");
        assert_eq!(breaker.record(trial, true), None, "a failed trial keeps it open");
        assert_eq!(breaker.permit(), Permit::Skip, "for another cool-down");
        std::thread::sleep(Duration::from_millis(25));
        let trial = breaker.permit();
        assert_eq!(breaker.record(trial, false), Some(BreakerState::Closed));
        assert_eq!(breaker.permit(), Permit::Call);
    }

    #[test]
    fn an_abandoned_trial_lets_the_next_one_through() {
        let breaker = Breaker::new(Duration::from_millis(1));
        for _ in 0..FAILURES_TO_OPEN {
            breaker.attempt().expect("closed").finish(true);
        }
        std::thread::sleep(Duration::from_millis(2));
        let trial = breaker.attempt().expect("the trial");
        assert!(breaker.attempt().is_none(), "one trial at a time");
        drop(trial); // the caller went away mid-call
        assert!(breaker.attempt().is_some(), "the breaker does not wait for an abandoned trial");
    }
}
