//! The exactness oracle: checks rules 1 (never over) and 2 (never under) of
//! `docs/design.md#what-it-guarantees` over the recorded decisions of one key, on the
//! decisions' own clock (`decided_at_ms`). It shares no code with the ring or the
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
