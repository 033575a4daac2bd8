//! Floor 2, Prometheus metrics: names and help texts, the recorder, and the recording
//! helpers the stores and the limiter call (the `/metrics` endpoint is the server's).
//! No metric is labelled with a raw key; per-key series exist only for the top K
//! throttled keys.

mod grpc;
mod sketch;
mod throttled;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::metrics::{Counter, Gauge, Histogram};
use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use grpc::{grpc_call, grpc_method};
pub use throttled::{ThrottleOptions, Throttled};

use crate::domain::FailureMode;

pub const DECISIONS: &str = "ratelimitd_decisions_total";
pub const REQUESTED_UNITS: &str = "ratelimitd_requested_units_total";
pub const INVALID_REQUESTS: &str = "ratelimitd_invalid_requests_total";
pub const CHECK_DURATION: &str = "ratelimitd_check_duration_seconds";
pub const CHECKS_IN_FLIGHT: &str = "ratelimitd_checks_in_flight";
pub const REDIS_CALL_DURATION: &str = "ratelimitd_redis_call_duration_seconds";
pub const REDIS_ERRORS: &str = "ratelimitd_redis_errors_total";
pub const REDIS_BATCH_CHECKS: &str = "ratelimitd_redis_batch_checks";
pub const STORE_UP: &str = "ratelimitd_store_up";
pub const DENY_CACHE_HITS: &str = "ratelimitd_deny_cache_hits_total";
pub const FALLBACKS: &str = "ratelimitd_fallback_decisions_total";
pub const BREAKER_OPEN: &str = "ratelimitd_circuit_breaker_open";
pub const REPLICAS: &str = "ratelimitd_replicas";
pub const GRPC_CALLS: &str = "ratelimitd_grpc_calls_total";
pub const BUILD_INFO: &str = "ratelimitd_build_info";
pub const OVERRIDES: &str = "ratelimitd_overrides";
pub const OVERRIDE_CHANGES: &str = "ratelimitd_override_changes_total";
pub const RESETS: &str = "ratelimitd_key_resets_total";
pub const OWED: &str = "ratelimitd_fallback_admissions_unrecorded";
pub const OWED_DONE: &str = "ratelimitd_fallback_admissions_total";
pub const CONFIG_LOADS: &str = "ratelimitd_config_loads_total";
pub const CONFIG_LAST_SUCCESS: &str = "ratelimitd_config_last_load_success_timestamp_seconds";
pub const CONFIG_VALID: &str = "ratelimitd_config_valid";
pub const THROTTLED_KEY_DENIALS: &str = "ratelimitd_throttled_key_denials";
pub const THROTTLED_KEYS: &str = "ratelimitd_throttled_keys";
pub const KEYS_NEAR_LIMIT: &str = "ratelimitd_keys_near_limit";
pub const ENVOY_REFUSALS: &str = "ratelimitd_envoy_refusals_total";

/// Every metric ratelimitd exports (docs/operations.md and the dashboard are checked against it).
pub const ALL: &[&str] = &[
    DECISIONS,
    REQUESTED_UNITS,
    INVALID_REQUESTS,
    CHECK_DURATION,
    CHECKS_IN_FLIGHT,
    REDIS_CALL_DURATION,
    REDIS_ERRORS,
    REDIS_BATCH_CHECKS,
    STORE_UP,
    DENY_CACHE_HITS,
    FALLBACKS,
    OWED,
    OWED_DONE,
    REPLICAS,
    GRPC_CALLS,
    BUILD_INFO,
    OVERRIDES,
    OVERRIDE_CHANGES,
    RESETS,
    BREAKER_OPEN,
    CONFIG_LOADS,
    CONFIG_LAST_SUCCESS,
    CONFIG_VALID,
    THROTTLED_KEY_DENIALS,
    THROTTLED_KEYS,
    KEYS_NEAR_LIMIT,
    ENVOY_REFUSALS,
];

const THROTTLED_KEY_DENIALS_HELP: &str = "Denials of the most throttled keys (top K by denials, space-saving estimate) \
     over the last one to two throttled intervals, by key fingerprint.";
const THROTTLED_KEYS_HELP: &str =
    "Distinct keys denied at least once over the last one to two throttled intervals (HyperLogLog estimate).";
const KEYS_NEAR_LIMIT_HELP: &str = "Distinct keys that used at least the near-limit fraction of their limit \
     over the last one to two throttled intervals (HyperLogLog estimate).";

/// Latency buckets from 50 µs to 1 s: a check on loopback Redis takes a fraction
/// of a millisecond, so the low end needs the resolution.
const LATENCY_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Checks per Redis script call, up to the largest `--redis-batch`.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

#[derive(Debug, thiserror::Error)]
#[error("cannot set up metrics: {0}")]
pub struct MetricsError(String);

/// The process-wide recorder: the `metrics` facade has one global recorder, so
/// several servers in one process (tests) share it.
pub fn recorder() -> Result<PrometheusHandle, MetricsError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| MetricsError(e.to_string()))?
        .set_buckets_for_metric(Matcher::Full(REDIS_BATCH_CHECKS.into()), BATCH_BUCKETS)
        .map_err(|e| MetricsError(e.to_string()))?
        .build_recorder();
    let handle = HANDLE.get_or_init(|| recorder.handle()).clone();
    if ::metrics::set_global_recorder(recorder).is_ok() {
        describe();
    }
    Ok(handle)
}

fn describe() {
    describe_counter!(
        DECISIONS,
        "Decisions by result (allowed, denied, shadow_denied, error) and policy (default, override)."
    );
    describe_counter!(REQUESTED_UNITS, "Units of cost requested, by result (allowed, denied, shadow_denied, error).");
    describe_counter!(INVALID_REQUESTS, "Requests rejected with INVALID_ARGUMENT, by the field that was wrong.");
    describe_histogram!(
        CHECK_DURATION,
        ::metrics::Unit::Seconds,
        "Time to decide one valid check, store call included."
    );
    describe_gauge!(CHECKS_IN_FLIGHT, "Checks being decided right now.");
    describe_histogram!(
        REDIS_CALL_DURATION,
        ::metrics::Unit::Seconds,
        "Time each check waited for Redis, by outcome: its script call, and any wait for its batch to leave."
    );
    describe_histogram!(REDIS_BATCH_CHECKS, "Checks decided by each Redis script call (a batch).");
    describe_counter!(
        REDIS_ERRORS,
        "Checks whose Redis call failed, by kind (timeout, unavailable, auth, oom, rejected: the call was refused; failed: the check alone)."
    );
    describe_gauge!(STORE_UP, "1 if the last store call or health probe succeeded, else 0.");
    describe_counter!(DENY_CACHE_HITS, "Denials answered from the local deny cache, without a store call.");
    describe_counter!(
        FALLBACKS,
        "Checks answered by the policy's failure mode (open, closed, local) because the store failed, by mode and call (check, peek)."
    );
    describe_counter!(
        GRPC_CALLS,
        "gRPC calls by method and status code, including those refused before a handler (too large, undecodable, unknown method)."
    );
    describe_gauge!(BUILD_INFO, "1, labelled with the version of ratelimitd running.");
    process().describe();
    describe_counter!(RESETS, "Keys whose history the support desk reset (admin Reset).");
    describe_gauge!(OVERRIDES, "Overrides of the limits file in force (those whose `until` has passed excluded).");
    describe_counter!(
        OVERRIDE_CHANGES,
        "Overrides that started or ended, by change (started, ended): by a reload, or at their `until`."
    );
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    start_at_zero();
    describe_gauge!(
        REPLICAS,
        "Replicas the local failure mode divides each limit among: the larger of those sharing the store \
         (each counted there every second) and --expected-replicas."
    );
    describe_gauge!(
        OWED,
        "Requests a failure mode admitted that are not yet written into the store's history (rule 4)."
    );
    describe_counter!(
        OWED_DONE,
        "Requests a failure mode admitted, by outcome: recorded (written into the store's history once it \
         answered again) or lost (too many held, or the store refused them for good)."
    );
    describe_gauge!(BREAKER_OPEN, "1 while the circuit breaker keeps calls away from a failing store, else 0.");
    describe_counter!(
        ENVOY_REFUSALS,
        "ShouldRateLimit descriptors answered without a store decision, by reason: OVER_LIMIT for a key that \
         cannot be valid (key_not_utf8, key_empty, key_too_long), a cost that can never fit (cost_never_fits) \
         or too many keys (too_many_keys); a check that counts nothing for negative_hits."
    );
    describe_counter!(CONFIG_LOADS, "Configuration loads by result (success, failure).");
    describe_gauge!(CONFIG_LAST_SUCCESS, "Unix time of the last successful configuration load.");
    describe_gauge!(
        CONFIG_VALID,
        "1 if the last load of the limits file succeeded; 0 if the file was rejected (the last good policies stay in force)."
    );
}

/// Counts a configuration load; the first is the one at start-up.
pub fn config_loaded(ok: bool) {
    counter!(CONFIG_LOADS, "result" => if ok { "success" } else { "failure" }).increment(1);
    gauge!(CONFIG_VALID).set(if ok { 1.0 } else { 0.0 });
    if ok {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        gauge!(CONFIG_LAST_SUCCESS).set(now);
    }
}

/// One ShouldRateLimit descriptor refused (or, for `negative_hits`, not counted) for `reason`.
pub fn envoy_refusal(reason: &'static str) {
    counter!(ENVOY_REFUSALS, "reason" => reason).increment(1);
}

/// Makes the series of `reason` exist (at 0) before the first refusal.
pub fn envoy_refusal_reason(reason: &'static str) {
    counter!(ENVOY_REFUSALS, "reason" => reason).increment(0);
}

pub fn invalid_request(field: &'static str) {
    counter!(INVALID_REQUESTS, "field" => field).increment(1);
}

pub fn deny_cache_hit() {
    hot().deny_cache_hits.increment(1);
}

/// A check the policy's failure mode answered because the store failed.
pub fn fallback(mode: FailureMode, consume: bool) {
    let call = if consume { "check" } else { "peek" };
    counter!(FALLBACKS, "mode" => mode.as_str(), "call" => call).increment(1);
}

/// Makes every series with a known label set exist from start-up, at 0, so that rates and
/// alerts see them before the first event (per-key series excepted).
fn start_at_zero() {
    hot();
    for method in grpc::METHODS.iter().map(|(_, name)| *name) {
        counter!(GRPC_CALLS, "method" => method, "code" => "OK").increment(0);
    }
    for field in ["key_id", "cost"] {
        counter!(INVALID_REQUESTS, "field" => field).increment(0);
    }
    for kind in ["timeout", "unavailable", "auth", "oom", "rejected", "failed"] {
        counter!(REDIS_ERRORS, "kind" => kind).increment(0);
    }
    for mode in [FailureMode::Open, FailureMode::Closed, FailureMode::Local] {
        for call in ["check", "peek"] {
            counter!(FALLBACKS, "mode" => mode.as_str(), "call" => call).increment(0);
        }
    }
    gauge!(BREAKER_OPEN).set(0.0);
    gauge!(OVERRIDES).set(0.0);
    counter!(RESETS).increment(0);
    for change in ["started", "ended"] {
        counter!(OVERRIDE_CHANGES, "change" => change).increment(0);
    }
}

/// `count` overrides are in force.
pub fn overrides(count: usize) {
    gauge!(OVERRIDES).set(count as f64);
}

/// A key's history was reset by the support desk.
pub fn key_reset() {
    counter!(RESETS).increment(1);
}

/// An override started (`true`) or ended.
pub fn override_change(started: bool) {
    counter!(OVERRIDE_CHANGES, "change" => if started { "started" } else { "ended" }).increment(1);
}

/// The process's CPU, memory, threads and file descriptors (`process_*`, as Prometheus's
/// own clients name them), read from /proc when the metrics are scraped.
fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Updates the process metrics: before each scrape.
pub fn collect_process() {
    process().collect();
}

/// The local failure mode divides each limit among `replicas`.
pub fn replicas(replicas: u32) {
    gauge!(REPLICAS).set(f64::from(replicas));
}

/// `pending` failure-mode admissions wait to be written into the store.
pub fn owed(pending: usize) {
    gauge!(OWED).set(pending as f64);
}

/// `count` failure-mode admissions written into the store (`recorded`) or given up on.
pub fn owed_done(recorded: bool, count: usize) {
    let outcome = if recorded { "recorded" } else { "lost" };
    counter!(OWED_DONE, "outcome" => outcome).increment(count as u64);
}

pub fn breaker_open(open: bool) {
    gauge!(BREAKER_OPEN).set(if open { 1.0 } else { 0.0 });
}

pub fn store_up(up: bool) {
    gauge!(STORE_UP).set(if up { 1.0 } else { 0.0 });
}

const RESULTS: [&str; 4] = ["allowed", "denied", "shadow_denied", "error"];

/// How a check ended, as the `result` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    Allowed = 0,
    Denied = 1,
    /// A shadow policy would have denied it; it was allowed.
    ShadowDenied = 2,
    Error = 3,
}

/// Handles of the metrics every check touches, registered once: looking a metric up
/// by name and labels on each call costs a hash and a map probe per metric.
struct Hot {
    /// By result, then policy (default, override).
    decisions: [[Counter; 2]; 4],
    units: [Counter; 4],
    check_duration: Histogram,
    in_flight: Gauge,
    redis_ok: Histogram,
    redis_error: Histogram,
    redis_batch: Histogram,
    deny_cache_hits: Counter,
}

/// Registered with the recorder installed when first used ([`recorder`] runs first
/// in the service; without a recorder, as in unit tests, they record nothing).
fn hot() -> &'static Hot {
    static HOT: OnceLock<Hot> = OnceLock::new();
    HOT.get_or_init(|| Hot {
        decisions: RESULTS.map(|result| {
            ["default", "override"].map(|policy| counter!(DECISIONS, "result" => result, "policy" => policy))
        }),
        units: RESULTS.map(|result| counter!(REQUESTED_UNITS, "result" => result)),
        check_duration: histogram!(CHECK_DURATION),
        in_flight: gauge!(CHECKS_IN_FLIGHT),
        redis_ok: histogram!(REDIS_CALL_DURATION, "outcome" => "ok"),
        redis_error: histogram!(REDIS_CALL_DURATION, "outcome" => "error"),
        redis_batch: histogram!(REDIS_BATCH_CHECKS),
        deny_cache_hits: counter!(DENY_CACHE_HITS),
    })
}

/// One decided (or failed) check; `overridden` says which policy applied.
pub fn check_done(overridden: bool, cost: u32, result: CheckResult, elapsed: Duration) {
    let result = result as usize;
    let hot = hot();
    hot.decisions[result][usize::from(overridden)].increment(1);
    hot.units[result].increment(u64::from(cost));
    hot.check_duration.record(elapsed.as_secs_f64());
}

pub fn redis_call(elapsed: Duration, error: Option<&'static str>) {
    let hot = hot();
    match error {
        None => hot.redis_ok.record(elapsed.as_secs_f64()),
        Some(kind) => {
            hot.redis_error.record(elapsed.as_secs_f64());
            counter!(REDIS_ERRORS, "kind" => kind).increment(1);
        }
    }
}

/// One Redis script call deciding `checks` checks.
pub fn redis_batch(checks: usize) {
    hot().redis_batch.record(checks as f64);
}

/// Counts a check as in flight until dropped, so cancelled calls are counted out too.
pub struct InFlight(());

impl InFlight {
    pub fn start() -> Self {
        hot().in_flight.increment(1.0);
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        hot().in_flight.decrement(1.0);
    }
}
