//! A decision, assembled the same way for every store from what the store found in
//! each of the policy's windows.

use super::policy::{Limits, MAX_WINDOWS};

/// Whether a check records the request when it fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Count the request if it fits (CheckAndConsume, ShouldRateLimit).
    Consume,
    /// Answer as Consume would, without writing anything (Peek).
    Peek,
}

/// What a store found in one window, before this request was counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCheck {
    /// Units free in the window (0 while a lowered limit still counts older units).
    pub spare: u32,
    /// 0 if the request fits this window; else the wait until it would.
    pub retry_after_ms: u64,
}

/// One decision, on the store's clock (Unix ms). `limit` and `remaining` are those
/// of the binding window: the one that denied (with the longest wait), or, when
/// allowed, the one with the fewest units left (the longer one on a tie).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    /// Units still available in the binding window after this decision.
    pub remaining: u32,
    /// 0 when allowed; when denied, the wait until the same request fits if nothing else is allowed.
    pub retry_after_ms: u64,
    /// The wait until no window holds a counted unit.
    pub reset_after_ms: u64,
    pub decided_at_ms: u64,
    /// The binding window's position in [`Limits::windows`].
    pub window: u8,
    /// The wait until the binding window holds no counted unit.
    pub window_reset_ms: u64,
}

impl Decision {
    /// Assembles the decision on a request of `cost` at `now_ms`, given the key's newest
    /// counted unit before it (`newest_ms`, 0 if none) and each window's check.
    pub fn assemble(limits: &Limits, cost: u32, now_ms: u64, newest_ms: u64, checks: &[WindowCheck]) -> Self {
        let allowed = checks.iter().all(|check| check.retry_after_ms == 0);
        let newest = if allowed { now_ms } else { newest_ms };
        let reset = |window_ms: u64| if newest == 0 { 0 } else { (newest + window_ms).saturating_sub(now_ms) };
        let remaining = |check: &WindowCheck| if allowed { check.spare.saturating_sub(cost) } else { check.spare };
        let binding = binding_window(allowed, checks, remaining);
        let window = limits.windows()[binding];
        Self {
            allowed,
            limit: window.limit(),
            remaining: remaining(&checks[binding]),
            retry_after_ms: checks.iter().map(|check| check.retry_after_ms).max().unwrap_or(0),
            reset_after_ms: reset(limits.longest_ms()),
            decided_at_ms: now_ms,
            window: binding as u8,
            window_reset_ms: reset(window.window_ms()),
        }
    }
}

fn binding_window(allowed: bool, checks: &[WindowCheck], remaining: impl Fn(&WindowCheck) -> u32) -> usize {
    debug_assert!(!checks.is_empty() && checks.len() <= MAX_WINDOWS);
    let mut best = 0;
    for (i, check) in checks.iter().enumerate().skip(1) {
        let better = if allowed {
            remaining(check) < remaining(&checks[best])
        } else {
            check.retry_after_ms > checks[best].retry_after_ms
        };
        if better {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::Window;

    fn limits() -> Limits {
        let minute = Window::new(300, Duration::from_secs(60)).unwrap();
        let second = Window::new(20, Duration::from_secs(1)).unwrap();
        Limits::new(&[minute, second]).unwrap()
    }

    #[test]
    fn the_window_with_least_room_binds_an_allowed_request() {
        let checks = [WindowCheck { spare: 250, retry_after_ms: 0 }, WindowCheck { spare: 5, retry_after_ms: 0 }];
        let d = Decision::assemble(&limits(), 2, 10_000, 9_000, &checks);
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining, d.window), (20, 3, 1));
        assert_eq!((d.reset_after_ms, d.window_reset_ms, d.retry_after_ms), (60_000, 1_000, 0));
    }

    #[test]
    fn the_longest_wait_binds_a_denial() {
        let checks = [WindowCheck { spare: 0, retry_after_ms: 4_000 }, WindowCheck { spare: 0, retry_after_ms: 300 }];
        let d = Decision::assemble(&limits(), 1, 10_000, 9_900, &checks);
        assert!(!d.allowed);
        assert_eq!((d.limit, d.remaining, d.window, d.retry_after_ms), (300, 0, 0, 4_000));
        assert_eq!((d.reset_after_ms, d.window_reset_ms), (59_900, 59_900));
        let short = [WindowCheck { spare: 120, retry_after_ms: 0 }, WindowCheck { spare: 0, retry_after_ms: 300 }];
        let d = Decision::assemble(&limits(), 1, 10_000, 9_900, &short);
        assert_eq!((d.limit, d.remaining, d.window, d.retry_after_ms, d.window_reset_ms), (20, 0, 1, 300, 900));
    }
}
