//! The exactness oracle: checks rules 1 (never over) and 2 (never under) of
//! `docs/design.md#what-it-guarantees` over the recorded decisions of one key, on the
//! decisions' own clock (`decided_at_ms`). It shares no code with the history or the
//! script: it counts the allowed units of each window directly from the list.

/// One recorded decision.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    pub allowed: bool,
    pub cost: u32,
    pub at_ms: u64,
}

/// What the oracle found in one key's decisions.
#[derive(Debug, Default, Clone)]
pub struct Audit {
    pub calls: usize,
    pub allowed: usize,
    /// The most units allowed in any interval [t, t + W).
    pub max_in_window: u64,
    /// Denials for which the allowed units in (T - W, T] plus the cost fitted the limit.
    pub wrongly_denied: usize,
}

pub fn audit(records: &[Record], limit: u32, window_ms: u64) -> Audit {
    let mut allowed: Vec<(u64, u64)> =
        records.iter().filter(|r| r.allowed).map(|r| (r.at_ms, u64::from(r.cost))).collect();
    allowed.sort_unstable();
    // prefix[i] = units allowed in allowed[..i]
    let mut prefix = vec![0u64];
    for (_, cost) in &allowed {
        prefix.push(prefix.last().copied().unwrap_or(0) + cost);
    }
    let units_in = |from_exclusive: Option<u64>, to_inclusive: u64| {
        let hi = allowed.partition_point(|&(t, _)| t <= to_inclusive);
        let lo = from_exclusive.map_or(0, |from| allowed.partition_point(|&(t, _)| t <= from));
        prefix[hi] - prefix[lo.min(hi)]
    };
    // Rule 1: every [t, t + W) starting at an allowed unit; the maximum starts at one.
    let max_in_window = allowed.iter().map(|&(t, _)| units_in(t.checked_sub(1), t + window_ms - 1)).max().unwrap_or(0);
    // Rule 2: a denial at T is wrong if (T - W, T] held room for its cost. Units allowed
    // later in the same millisecond are counted too, so this never flags a right denial.
    let wrongly_denied = records
        .iter()
        .filter(|r| !r.allowed)
        .filter(|r| units_in(r.at_ms.checked_sub(window_ms), r.at_ms) + u64::from(r.cost) <= u64::from(limit))
        .count();
    Audit { calls: records.len(), allowed: allowed.len(), max_in_window, wrongly_denied }
}

/// An independent model of one key for property tests: the list of every counted request
/// with its time and cost, each window's units counted from the list directly. It shares
/// nothing with [`super::History`] or the script but the contract they implement
/// (`docs/design.md#policy-changes`): an allowed request first forgets the requests outside
/// its policy's longest window, and a key forgets everything once its expiry (its newest
/// request plus the longest window of every request checked since, moved in steps of an
/// eighth of it) has passed.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    counted: Vec<(u64, u32)>,
    expires: u64,
}

impl Replay {
    /// The decision on a request of `cost` at `now_ms`, counted if allowed in `Consume`.
    pub fn decide(&mut self, now_ms: u64, limits: &super::Limits, cost: u32, mode: super::Mode) -> super::Decision {
        let live: &[(u64, u32)] = if now_ms >= self.expires { &[] } else { &self.counted };
        let newest = live.last().map_or(0, |&(t, _)| t);
        let now = now_ms.max(newest);
        let checks: Vec<super::WindowCheck> = limits
            .windows()
            .iter()
            .map(|window| {
                let (limit, w) = (u64::from(window.limit()), window.window_ms());
                let inside: Vec<(u64, u32)> = live.iter().copied().filter(|&(t, _)| t + w > now).collect();
                let units: u64 = inside.iter().map(|&(_, c)| u64::from(c)).sum();
                let spare = limit.saturating_sub(units) as u32;
                if units + u64::from(cost) <= limit {
                    return super::WindowCheck { spare, retry_after_ms: 0 };
                }
                // Walk the window oldest first until enough units would have left it.
                let need = units + u64::from(cost) - limit;
                let mut freed = 0;
                let leaving = inside.iter().find(|&&(_, c)| {
                    freed += u64::from(c);
                    freed >= need
                });
                super::WindowCheck { spare, retry_after_ms: leaving.map_or(0, |&(t, _)| t + w - now) }
            })
            .collect();
        let decision = super::Decision::assemble(limits, cost, now, newest, &checks);
        let longest = limits.longest_ms();
        if mode == super::Mode::Consume && decision.allowed {
            self.count(now, limits, cost);
        } else if mode == super::Mode::Consume && !live.is_empty() && newest + longest > self.expires {
            self.expires = newest + longest + longest / 8;
        }
        decision
    }

    /// Counts, at `now_ms`, a request a failure mode admitted at `at_ms` (rule 4's write-back):
    /// at that time or the newest request's, if later; not at all if it has left the longest
    /// window; and only up to the highest limit in that window.
    pub fn owe(&mut self, now_ms: u64, at_ms: u64, limits: &super::Limits, cost: u32) {
        if now_ms >= self.expires {
            self.counted.clear();
        }
        let at = at_ms.max(self.counted.last().map_or(0, |&(t, _)| t));
        let longest = limits.longest_ms();
        if at + longest <= now_ms {
            return;
        }
        let held: u64 = self.counted.iter().filter(|&&(t, _)| t + longest > at).map(|&(_, c)| u64::from(c)).sum();
        let room = u64::from(limits.capacity()).saturating_sub(held);
        if room > 0 {
            self.count(at, limits, u64::from(cost).min(room) as u32);
        }
    }

    /// Counts a request of `cost` at `now_ms` (the key's clock) without deciding it: one
    /// that another party (an older release) allowed.
    pub fn count(&mut self, now_ms: u64, limits: &super::Limits, cost: u32) {
        let longest = limits.longest_ms();
        if now_ms >= self.expires {
            self.counted.clear();
        }
        self.counted.retain(|&(t, _)| t + longest > now_ms);
        self.counted.push((now_ms, cost));
        if self.expires < now_ms + longest {
            self.expires = now_ms + longest + longest / 8;
        }
    }
}
