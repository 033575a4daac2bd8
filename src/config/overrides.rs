//! The audit trail of overrides: one structured log line (`audit` field) and a count for
//! every override that starts or ends, whether a reload of the limits file did it or its
//! `until` passed (no reload needed: the lookup itself switches at that time), naming the
//! fingerprint and alias, the policy before and after, the actor and the reason; never a
//! raw key.

use std::future::Future;
use std::time::{Duration, UNIX_EPOCH};

use crate::domain::{Fingerprint, Override, Policies, SharedPolicies, unix_ms};
use crate::metrics;

/// Who changes overrides through the limits file.
const ACTOR: &str = "limits file";

/// Logs every override a reload starts, changes or ends: `before` was in force and `after`
/// replaces it, at `now_ms`.
pub fn audit_reload(before: &Policies, after: &Policies, now_ms: u64) {
    for (key, entry) in &after.overrides {
        if before.overrides.get(key) != Some(entry) {
            let (was, is) = (before.lookup_at(key, now_ms), after.lookup_at(key, now_ms));
            log(true, key, entry, &was.policy.name, &is.policy.name, "the limits file was reloaded");
        }
    }
    for (key, entry) in &before.overrides {
        if !after.overrides.contains_key(key) && !entry.has_ended(now_ms) {
            let was = before.lookup_at(key, now_ms);
            log(false, key, entry, &was.policy.name, &after.default.name, "removed from the limits file");
        }
    }
    metrics::overrides(in_force(after, now_ms));
}

/// Logs each override whose `until` passes, once a second, until `shutdown` resolves.
pub async fn watch_ends(policies: SharedPolicies, shutdown: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = unix_ms();
    metrics::overrides(in_force(&policies.current(), last));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {
                let (now, current) = (unix_ms(), policies.current());
                ends_between(&current, last, now);
                metrics::overrides(in_force(&current, now));
                last = now;
            }
        }
    }
}

/// Logs the overrides of `policies` whose end falls in (`from`, `to`].
fn ends_between(policies: &Policies, from: u64, to: u64) {
    for (key, entry) in &policies.overrides {
        if entry.until_ms.is_some_and(|until| from < until && until <= to) {
            let after = entry.then.as_ref().unwrap_or(&policies.default);
            log(false, key, entry, &entry.policy.name, &after.name, "its `until` has passed");
        }
    }
}

fn in_force(policies: &Policies, now_ms: u64) -> usize {
    policies.overrides.values().filter(|o| !o.has_ended(now_ms)).count()
}

fn log(started: bool, key: &Fingerprint, entry: &Override, before: &str, after: &str, reason: &str) {
    metrics::override_change(started);
    let until = entry
        .until_ms
        .map(|ms| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string())
        .unwrap_or_default();
    tracing::info!(
        audit = if started { "override started" } else { "override ended" },
        actor = ACTOR,
        key = %key,
        alias = entry.alias.as_deref().unwrap_or_default(),
        before,
        after,
        until,
        reason,
        "override {}: {before} -> {after}",
        if started { "started" } else { "ended" },
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::domain::Policy;

    /// An override in force until a time switches at that time, both ways: a raise falls back
    /// to the default, a temporary lowering to the key's `then` policy.
    #[test]
    fn an_override_switches_at_its_until() {
        let default = Policy::default_with(300, Duration::from_secs(60)).unwrap();
        let gold = Arc::new(Policy::new("gold", crate::domain::Limits::single(3000, Duration::from_secs(60)).unwrap()));
        let clamp = Arc::new(Policy::new("clamp", crate::domain::Limits::single(10, Duration::from_secs(60)).unwrap()));
        let mut policies = Policies::uniform(default);
        let (raised, clamped) = (Fingerprint::from_bytes([1; 16]), Fingerprint::from_bytes([2; 16]));
        let mut raise = Override::new(gold.clone(), Some("Acme".into()));
        raise.until_ms = Some(1_000);
        let mut lower = Override::new(clamp, None);
        lower.until_ms = Some(2_000);
        lower.then = Some(gold);
        policies.overrides.insert(raised, raise);
        policies.overrides.insert(clamped, lower);
        let name = |key, at| policies.lookup_at(&key, at).policy.name.to_string();
        assert_eq!((name(raised, 999), name(raised, 1_000)), ("gold".into(), "default".into()));
        assert_eq!((name(clamped, 1_999), name(clamped, 2_000)), ("clamp".into(), "gold".into()));
        assert!(!policies.lookup_at(&raised, 1_000).overridden && policies.lookup_at(&clamped, 2_000).overridden);
        assert_eq!(policies.lookup_at(&raised, 1_000).alias.as_deref(), Some("Acme"), "the alias stays");
        assert_eq!((in_force(&policies, 500), in_force(&policies, 1_500), in_force(&policies, 2_500)), (2, 1, 0));
    }
}
