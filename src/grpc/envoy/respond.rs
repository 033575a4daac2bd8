//! The response to `ShouldRateLimit`: one status per descriptor, and the rate-limit
//! headers of the most constrained key.

use std::sync::Arc;

use super::pb::{Code, DescriptorStatus, HeaderValue, RateLimit, RateLimitResponse, Unit};
use crate::domain::{Policy, Window};
use crate::limiter::{Verdict, headers};

/// Where a descriptor's status comes from.
pub(super) enum Target {
    /// No API key entry: not limited.
    Unlimited,
    /// Refused without asking the store (a key that cannot be valid, a cost that can
    /// never fit, too many keys): over the limit of this policy, nothing counted.
    Refused(Arc<Policy>),
    /// The answer of the request's i-th distinct key.
    Key(usize),
}

/// One status per descriptor, in order; OVER_LIMIT overall if any descriptor is.
/// The headers are those of the most constrained key: the denied one with the longest
/// wait, else the one with the fewest units left (shadow policies send none).
pub(super) fn respond(targets: &[Target], verdicts: &[Verdict]) -> RateLimitResponse {
    let statuses: Vec<DescriptorStatus> = targets
        .iter()
        .map(|target| match target {
            Target::Key(i) => status(&verdicts[*i]),
            Target::Refused(policy) => refused(policy),
            Target::Unlimited => DescriptorStatus { code: Code::Ok as i32, ..Default::default() },
        })
        .collect();
    let over = statuses.iter().any(|s| s.code == Code::OverLimit as i32);
    let tightest = verdicts.iter().filter(|v| !v.policy.shadow).min_by_key(|v| {
        let d = &v.decision;
        (d.allowed, std::cmp::Reverse(d.retry_after_ms), d.remaining)
    });
    let response_headers_to_add = tightest
        .map(headers::for_verdict)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| HeaderValue { key: name.to_owned(), value })
        .collect();
    RateLimitResponse {
        overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
        statuses,
        response_headers_to_add,
    }
}

fn refused(policy: &Policy) -> DescriptorStatus {
    let windows = policy.limits.windows();
    let tightest = windows.iter().min_by_key(|w| w.limit()).unwrap_or(&windows[0]);
    DescriptorStatus {
        code: Code::OverLimit as i32,
        current_limit: Some(rate_limit(policy, tightest)),
        ..Default::default()
    }
}

fn rate_limit(policy: &Policy, window: &Window) -> RateLimit {
    RateLimit {
        name: policy.name.to_string(),
        requests_per_unit: window.limit(),
        unit: unit(window.window_ms()) as i32,
    }
}

fn status(verdict: &Verdict) -> DescriptorStatus {
    let d = &verdict.decision;
    let window = verdict.policy.limits.windows()[usize::from(d.window)];
    let reset = std::time::Duration::from_millis(d.window_reset_ms);
    DescriptorStatus {
        code: if d.allowed { Code::Ok } else { Code::OverLimit } as i32,
        current_limit: Some(rate_limit(&verdict.policy, &window)),
        limit_remaining: d.remaining,
        duration_until_reset: Some(prost_types::Duration {
            seconds: reset.as_secs() as i64,
            nanos: reset.subsec_nanos() as i32,
        }),
    }
}

/// Envoy's unit for a window, UNKNOWN for windows that are not one unit long (the
/// headers and our own API still carry the exact window).
fn unit(window_ms: u64) -> Unit {
    match window_ms {
        1_000 => Unit::Second,
        60_000 => Unit::Minute,
        3_600_000 => Unit::Hour,
        86_400_000 => Unit::Day,
        604_800_000 => Unit::Week,
        _ => Unit::Unknown,
    }
}
