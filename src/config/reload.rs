//! Hot reload of the limits file: on a change of its content (polled, since editors
//! and Kubernetes ConfigMaps replace files in ways that file watches miss) and on
//! SIGHUP. A file that does not validate is logged, counted, and kept out: the
//! policies in force stay as they were. A new policy set replaces the old one in one
//! atomic swap, so no call is dropped or sees half of each.

use std::future::Future;

use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use super::LimitsFile;
use super::limits::{self, LimitsError};
use crate::domain::{Policies, SharedPolicies};
use crate::metrics;

/// How long after a read a changed file is read again, to be sure it is complete.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// What one look at the file found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Applied,
    Rejected,
}

/// Watches the file until `shutdown` resolves. Each message on `reload_now` (SIGHUP)
/// reloads it even if unchanged.
pub async fn watch(
    file: LimitsFile,
    policies: SharedPolicies,
    mut reload_now: mpsc::Receiver<()>,
    shutdown: impl Future<Output = ()>,
) {
    // The content loaded at start-up is the baseline: a change since then is applied.
    let last = Some(file.loaded.clone());
    let mut watcher = Watcher { file, policies, last, unreadable: false };
    // The first poll comes one interval after start-up: an interval's immediate first tick
    // could run late on a busy machine and apply a change made after start-up at once.
    let every = watcher.file.poll_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => { watcher.check(false).await; }
            Some(()) = reload_now.recv() => {
                tracing::info!(path = %watcher.file.path.display(), "SIGHUP: reloading the limits file");
                watcher.check(true).await;
            }
        }
    }
}

/// The file, and the content last seen (loaded or rejected), so a broken file is
/// reported once, not on every poll.
pub struct Watcher {
    pub file: LimitsFile,
    pub policies: SharedPolicies,
    pub last: Option<Vec<u8>>,
    /// Whether the last read failed (reported once until it is readable again).
    pub unreadable: bool,
}

impl Watcher {
    /// Reloads if the content changed (or always, if `force`). A changed file is read
    /// again a moment later and used only if both reads agree, so a file caught half
    /// written in place (rather than replaced whole) is not applied.
    pub async fn check(&mut self, force: bool) -> Reload {
        let Some(content) = self.read() else { return Reload::Rejected };
        if !force && self.last.as_ref() == Some(&content) {
            return Reload::Unchanged;
        }
        tokio::time::sleep(SETTLE).await;
        match self.read() {
            Some(again) if again == content => self.apply(content),
            // Still being written: the next poll sees the finished file.
            Some(_) => Reload::Unchanged,
            None => Reload::Rejected,
        }
    }

    fn read(&mut self) -> Option<Vec<u8>> {
        match std::fs::read(&self.file.path) {
            Ok(content) => {
                self.unreadable = false;
                Some(content)
            }
            Err(source) => {
                if !std::mem::replace(&mut self.unreadable, true) {
                    reject(&LimitsError::Read { path: self.file.path.display().to_string(), source });
                }
                None
            }
        }
    }

    fn apply(&mut self, content: Vec<u8>) -> Reload {
        let checked = match std::str::from_utf8(&content) {
            Ok(text) => limits::parse(text, &self.file.default_policy).and_then(|policies| self.keeps(text, policies)),
            Err(e) => Err(format!("the file is not UTF-8: {e}")),
        };
        match checked {
            Ok(policies) => {
                let (named, overrides) = (count_policies(&policies), policies.overrides.len());
                super::overrides::audit_reload(&self.policies.current(), &policies, crate::domain::unix_ms());
                self.policies.replace(policies);
                self.last = Some(content);
                metrics::config_loaded(true);
                tracing::info!(path = %self.file.path.display(), policies = named, overrides, "limits file loaded");
                Reload::Applied
            }
            Err(message) => {
                self.last = Some(content);
                reject(&LimitsError::Invalid { path: self.file.path.display().to_string(), message });
                Reload::Rejected
            }
        }
    }
}

impl Watcher {
    /// Refuses a file that would drop every override in force without saying so: an
    /// emptied or truncated file would otherwise put every partner back on the default.
    fn keeps(&self, text: &str, policies: Policies) -> Result<Policies, String> {
        let in_force = self.policies.current().overrides.len();
        if in_force > 0 && policies.overrides.is_empty() && !limits::declares_overrides(text) {
            return Err(format!(
                "it has no overrides, and the file in force has {in_force}: a reload that drops them all must say \
                 so with `overrides: {{}}`"
            ));
        }
        Ok(policies)
    }
}

fn reject(error: &LimitsError) {
    metrics::config_loaded(false);
    tracing::error!(error = %error, "limits file rejected; the policies in force are kept");
}

fn count_policies(policies: &Policies) -> usize {
    let names: std::collections::HashSet<&str> = policies.overrides.values().map(|o| &*o.policy.name).collect();
    names.len() + 1
}

/// Without --limits-file: logs each SIGHUP, which then does nothing (its default action
/// would end the process).
pub async fn ignore_hangups() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else { return };
        while hangups.recv().await.is_some() {
            tracing::warn!("SIGHUP received, but there is no --limits-file to reload: ignored");
        }
    }
}

/// Sends on `to` at each SIGHUP, until the receiver is gone.
pub async fn forward_hangups(to: mpsc::Sender<()>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; the limits file is still reloaded on change");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            if to.send(()).await.is_err() {
                return;
            }
        }
    }
    #[cfg(not(unix))]
    drop(to);
}
