//! The HTTP headers a gateway adds to its response, computed once for every API:
//! `RateLimit-Policy` and `RateLimit` as in the IETF draft
//! (draft-ietf-httpapi-ratelimit-headers, structured fields), and `Retry-After`.

use super::Verdict;
use crate::domain::{FailureMode, Policy, Window};

pub const RATELIMIT_POLICY: &str = "RateLimit-Policy";
pub const RATELIMIT: &str = "RateLimit";
pub const RETRY_AFTER: &str = "Retry-After";

/// The headers for one verdict, as (name, value) pairs. A shadow policy is on
/// trial, so clients are not told about it: no headers.
///
/// - `RateLimit-Policy: "<item>";q=<limit>;w=<window seconds>` for each window;
/// - `RateLimit: "<item>";r=<remaining>;t=<seconds until the binding window is empty>`
///   for the binding window (the one that denied, or with the fewest units left);
/// - `Retry-After: <seconds>` when denied: the exact wait, rounded up.
///
/// When the store failed: the `open` failure mode sends no headers (nothing was
/// counted), `closed` sends `RateLimit-Policy` and `Retry-After` only.
///
/// Items are named after the policy; with several windows, `<policy>-<window>`
/// (e.g. `"gold-1m"`, `"gold-1s"`). Seconds are rounded up, so a client that
/// waits them out is never early.
pub fn for_verdict(verdict: &Verdict) -> Vec<(&'static str, String)> {
    let policy = &verdict.policy;
    if policy.shadow {
        return Vec::new();
    }
    let d = &verdict.decision;
    let windows = policy.limits.windows();
    let policy_value = windows
        .iter()
        .map(|w| format!("\"{}\";q={};w={}", item(policy, w), w.limit(), seconds(w.window_ms())))
        .collect::<Vec<_>>()
        .join(", ");
    let mut headers = vec![(RATELIMIT_POLICY, policy_value)];
    match verdict.fallback {
        Some(FailureMode::Open) => return Vec::new(),
        Some(FailureMode::Closed) => {}
        // This replica's share of the limit answered: the policy's quotas would not match `r`.
        Some(FailureMode::Local) => {
            headers.clear();
            if d.allowed {
                return headers;
            }
        }
        _ => {
            let binding = &windows[usize::from(d.window)];
            let value = format!("\"{}\";r={};t={}", item(policy, binding), d.remaining, seconds(d.window_reset_ms));
            headers.push((RATELIMIT, value));
        }
    }
    if !d.allowed {
        headers.push((RETRY_AFTER, seconds(d.retry_after_ms).max(1).to_string()));
    }
    headers
}

/// The name of one window's quota policy item. Policy names are checked when the
/// limits file loads (letters, digits, `.`, `_`, `-`), so no escaping is needed.
fn item(policy: &Policy, window: &Window) -> String {
    if policy.limits.windows().len() == 1 {
        return policy.name.to_string();
    }
    let length = humantime::format_duration(std::time::Duration::from_millis(window.window_ms()));
    format!("{}-{}", policy.name, length.to_string().replace(' ', ""))
}

/// Whole seconds, rounded up.
fn seconds(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::domain::{Decision, Limits, WindowCheck};

    fn verdict(policy: Policy, checks: &[WindowCheck], cost: u32) -> Verdict {
        let decision = Decision::assemble(&policy.limits, cost, 100_000, 99_500, checks);
        Verdict { decision, policy: Arc::new(policy), alias: None, shadow_denied: false, fallback: None }
    }

    #[test]
    fn one_window_allowed_and_denied() {
        let policy = Policy::default_with(300, Duration::from_secs(60)).unwrap();
        let allowed = verdict(policy.clone(), &[WindowCheck { spare: 10, retry_after_ms: 0 }], 1);
        assert_eq!(
            for_verdict(&allowed),
            [(RATELIMIT_POLICY, "\"default\";q=300;w=60".into()), (RATELIMIT, "\"default\";r=9;t=60".into())]
        );
        let denied = verdict(policy, &[WindowCheck { spare: 0, retry_after_ms: 1_001 }], 1);
        let headers = for_verdict(&denied);
        assert_eq!(headers[1], (RATELIMIT, "\"default\";r=0;t=60".into()), "59.5 s rounded up");
        assert_eq!(headers[2], (RETRY_AFTER, "2".into()), "1.001 s rounded up");
    }

    #[test]
    fn several_windows_name_each_and_report_the_binding_one() {
        let minute = Window::new(300, Duration::from_secs(60)).unwrap();
        let second = Window::new(20, Duration::from_secs(1)).unwrap();
        let policy = Policy::new("gold", Limits::new(&[minute, second]).unwrap());
        let checks = [WindowCheck { spare: 200, retry_after_ms: 0 }, WindowCheck { spare: 0, retry_after_ms: 400 }];
        let headers = for_verdict(&verdict(policy.clone(), &checks, 1));
        assert_eq!(headers[0].1, "\"gold-1m\";q=300;w=60, \"gold-1s\";q=20;w=1");
        assert_eq!(headers[1].1, "\"gold-1s\";r=0;t=1");
        assert_eq!(headers[2].1, "1");
        let shadow = Policy { shadow: true, ..policy };
        assert!(for_verdict(&verdict(shadow, &checks, 1)).is_empty());
    }
}
