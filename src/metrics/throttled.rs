//! Which keys are throttled, with bounded memory and a bounded number of series
//! however many keys are denied: the top K keys by denials, the number of distinct
//! keys throttled, and the number of keys near their limit, over the last one to
//! two intervals. Also rate-limits the "key throttled" log line to once per key
//! per interval.

use std::collections::HashSet;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::sketch::{HyperLogLog, SpaceSaving};
use crate::domain::{Decision, Fingerprint};
use crate::sync::lock;

/// Keys logged individually per interval; further throttled keys are summed up in
/// one line at the end of the interval, so a flood of keys cannot flood the logs.
const MAX_LOGGED_KEYS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
pub struct ThrottleOptions {
    pub top_k: usize,
    pub interval: Duration,
    /// A key counts as near its limit once it has used this fraction of it.
    pub near_limit_fraction: f64,
}

#[derive(Debug)]
pub struct Throttled {
    options: ThrottleOptions,
    intervals: Mutex<(Interval, Interval)>,
}

/// What one interval saw. Bounded: the sketch holds 4 K counters, each HLL 4 KiB,
/// the log set at most MAX_LOGGED_KEYS fingerprints.
#[derive(Debug, Clone)]
struct Interval {
    denials: SpaceSaving,
    throttled: HyperLogLog,
    near_limit: HyperLogLog,
    logged: HashSet<Fingerprint>,
    unlogged: u64,
}

impl Interval {
    fn new(top_k: usize) -> Self {
        Self {
            denials: SpaceSaving::new((4 * top_k).max(64)),
            throttled: HyperLogLog::default(),
            near_limit: HyperLogLog::default(),
            logged: HashSet::new(),
            unlogged: 0,
        }
    }
}

impl Throttled {
    pub fn new(options: ThrottleOptions) -> Self {
        let fresh = Interval::new(options.top_k);
        Self { options, intervals: Mutex::new((fresh.clone(), fresh)) }
    }

    pub fn interval(&self) -> Duration {
        self.options.interval
    }

    /// Notes one decision. Allowed decisions below the near-limit fraction take no lock.
    /// `alias` is the key's readable name from the limits file, for the log line.
    pub fn record(&self, key: &Fingerprint, alias: Option<&str>, decision: &Decision) {
        let used = f64::from(decision.limit - decision.remaining) / f64::from(decision.limit);
        if decision.allowed && used < self.options.near_limit_fraction {
            return;
        }
        let first_denial = {
            let mut intervals = lock(&self.intervals);
            let current = &mut intervals.1;
            current.near_limit.add(key);
            if decision.allowed {
                return;
            }
            current.denials.add(*key);
            current.throttled.add(key);
            let first = !current.logged.contains(key);
            if first && current.logged.len() >= MAX_LOGGED_KEYS {
                current.unlogged += 1;
                false
            } else {
                first && current.logged.insert(*key)
            }
        };
        if first_denial {
            let (limit, retry_after_ms) = (decision.limit, decision.retry_after_ms);
            tracing::info!(key = %key, alias = alias.unwrap_or(""), limit, retry_after_ms, "key throttled");
        }
    }

    /// Starts a new interval; the one that ends stays in the report as the previous.
    pub fn rotate(&self) {
        let ended = {
            let mut intervals = lock(&self.intervals);
            let (previous, current) = &mut *intervals;
            *previous = std::mem::replace(current, Interval::new(self.options.top_k));
            previous.unlogged
        };
        if ended > 0 {
            tracing::warn!(keys = ended, "more keys throttled than logged individually in the last interval");
        }
    }

    /// Appends the three metrics in Prometheus text format; `alias` names keys that
    /// have a readable name in the limits file (an `alias` label).
    pub fn render(&self, out: &mut String, alias: impl Fn(&Fingerprint) -> Option<Arc<str>>) {
        let (denials, throttled, near_limit) = {
            let intervals = lock(&self.intervals);
            let (previous, current) = &*intervals;
            (
                previous.denials.merged(&current.denials).top(self.options.top_k),
                previous.throttled.merged(&current.throttled).estimate(),
                previous.near_limit.merged(&current.near_limit).estimate(),
            )
        };
        let _ = writeln!(out, "# HELP {} {}", super::THROTTLED_KEY_DENIALS, super::THROTTLED_KEY_DENIALS_HELP);
        let _ = writeln!(out, "# TYPE {} gauge", super::THROTTLED_KEY_DENIALS);
        for (key, count) in denials {
            let name = super::THROTTLED_KEY_DENIALS;
            // Aliases are checked when the limits file loads: no character needs escaping.
            let _ = match alias(&key) {
                Some(alias) => writeln!(out, "{name}{{key=\"{key}\",alias=\"{alias}\"}} {count}"),
                None => writeln!(out, "{name}{{key=\"{key}\"}} {count}"),
            };
        }
        for (name, help, value) in [
            (super::THROTTLED_KEYS, super::THROTTLED_KEYS_HELP, throttled),
            (super::KEYS_NEAR_LIMIT, super::KEYS_NEAR_LIMIT_HELP, near_limit),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}", value.round());
        }
    }
}
