//! The benchmark report: throughput, latency percentiles, outcomes, and the
//! exactness verdict, for people (Display) and machines (JSON).

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::LoadOptions;
use ratelimitd::domain::oracle::Audit;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub targets: Vec<String>,
    pub callers: usize,
    /// "closed" or "open".
    pub mode: &'static str,
    pub target_rate: Option<f64>,
    pub distribution: super::keys::KeyDistribution,
    pub keys: usize,
    pub cost: u32,
    pub elapsed_s: f64,
    pub calls: u64,
    pub throughput_per_s: f64,
    pub allowed: u64,
    pub denied: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency_us: Latency,
    pub exactness: Exactness,
    /// Redis script calls per check, when the benchmark could read Redis's counters.
    pub redis_calls_per_check: Option<f64>,
    /// CPU time this generator used per call (user and system, µs), where the OS says:
    /// on a shared machine, what the load itself costs.
    pub generator_cpu_us_per_call: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Exactness {
    pub keys_checked: usize,
    pub window_ms: u64,
    /// The most units allowed for one key in any window, and that key's limit.
    pub worst_max_in_window: u64,
    pub worst_limit: u32,
    /// Keys that got more than their limit in some window (rule 1 broken).
    pub keys_over: usize,
    /// Sum over keys of the units allowed beyond the limit in their worst window.
    pub over_admitted_units: u64,
    /// Denials that fitted (rule 2 broken).
    pub wrongly_denied: usize,
}

impl Exactness {
    pub fn holds(&self) -> bool {
        self.keys_over == 0 && self.wrongly_denied == 0
    }
}

impl Report {
    pub(super) fn new(
        options: &LoadOptions,
        elapsed: Duration,
        latency: &Histogram<u64>,
        errors: u64,
        first_error: Option<String>,
        audits: &[(u32, Audit)],
    ) -> Self {
        let (mut allowed, mut calls) = (0u64, errors);
        let mut exactness = Exactness {
            keys_checked: audits.len(),
            window_ms: options.window_ms,
            worst_max_in_window: 0,
            worst_limit: 0,
            keys_over: 0,
            over_admitted_units: 0,
            wrongly_denied: 0,
        };
        for (limit, v) in audits {
            allowed += v.allowed as u64;
            calls += v.calls as u64;
            let over = v.max_in_window.saturating_sub(u64::from(*limit));
            exactness.keys_over += usize::from(over > 0);
            exactness.over_admitted_units += over;
            exactness.wrongly_denied += v.wrongly_denied;
            if v.max_in_window >= exactness.worst_max_in_window {
                exactness.worst_max_in_window = v.max_in_window;
                exactness.worst_limit = *limit;
            }
        }
        let secs = elapsed.as_secs_f64();
        Self {
            targets: options.targets.clone(),
            callers: options.callers,
            mode: if options.rate.is_some() { "open" } else { "closed" },
            target_rate: options.rate,
            distribution: options.distribution,
            keys: options.keys,
            cost: options.cost,
            elapsed_s: secs,
            calls,
            throughput_per_s: if secs > 0.0 { calls as f64 / secs } else { 0.0 },
            allowed,
            denied: calls - errors - allowed,
            errors,
            first_error,
            latency_us: Latency {
                p50: latency.value_at_quantile(0.5),
                p90: latency.value_at_quantile(0.9),
                p99: latency.value_at_quantile(0.99),
                p999: latency.value_at_quantile(0.999),
                max: latency.max(),
                mean: latency.mean(),
            },
            exactness,
            redis_calls_per_check: None,
            generator_cpu_us_per_call: None,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = self.target_rate.map_or(String::new(), |r| format!(" at {r:.0}/s"));
        writeln!(
            f,
            "ratelimitd-bench: {} callers, {} loop{rate}, {} keys {:?}, cost {}, {} target(s), {:.1} s",
            self.callers,
            self.mode,
            self.keys,
            self.distribution,
            self.cost,
            self.targets.len(),
            self.elapsed_s
        )?;
        writeln!(
            f,
            "calls      {} ({:.0}/s): {} allowed, {} denied, {} errors",
            self.calls, self.throughput_per_s, self.allowed, self.denied, self.errors
        )?;
        if let Some(error) = &self.first_error {
            writeln!(f, "first error {error}")?;
        }
        let l = &self.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        writeln!(
            f,
            "latency ms p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        )?;
        let e = &self.exactness;
        writeln!(
            f,
            "exactness  {}: {} keys; worst key {} units in a {} ms window (limit {}); {} keys over, {} units over, {} wrongly denied",
            if e.holds() { "holds" } else { "BROKEN" },
            e.keys_checked,
            e.worst_max_in_window,
            e.window_ms,
            e.worst_limit,
            e.keys_over,
            e.over_admitted_units,
            e.wrongly_denied
        )?;
        if let Some(per_check) = self.redis_calls_per_check {
            writeln!(f, "redis      {per_check:.4} script calls per check")?;
        }
        if let Some(cpu) = self.generator_cpu_us_per_call {
            writeln!(f, "generator  {cpu:.1} µs of CPU per call")?;
        }
        Ok(())
    }
}
