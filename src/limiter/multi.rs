//! One request that names several keys (several Envoy descriptors): each distinct key
//! is checked once, and the request is allowed only if every key allows it.

use super::{CheckError, Checked, Limiter, Verdict};
use crate::domain::Mode;
use crate::store::Store;

/// The distinct keys of one request, each checked once: one request counts once per
/// key, whatever number of parts name it (a larger cost wins; a check-only part counts
/// only if another part of its key does).
#[derive(Debug, Default)]
pub struct KeyChecks {
    checks: Vec<(Checked, Mode)>,
}

impl KeyChecks {
    /// Adds one part's check; returns the position of its key's answer in what
    /// [`Limiter::decide_all`] returns.
    pub fn add(&mut self, check: Checked, mode: Mode) -> usize {
        if let Some(i) = self.checks.iter().position(|(c, _)| c.key() == check.key()) {
            let (existing, existing_mode) = &mut self.checks[i];
            existing.merge(&check);
            if mode == Mode::Consume {
                *existing_mode = Mode::Consume;
            }
            return i;
        }
        self.checks.push((check, mode));
        self.checks.len() - 1
    }

    /// How many distinct keys.
    pub fn len(&self) -> usize {
        self.checks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// Makes every check a peek: the request is refused whole, so none of its keys
    /// may count it, and each key's status is what it would have answered.
    pub fn peek_only(&mut self) {
        for (_, mode) in &mut self.checks {
            *mode = Mode::Peek;
        }
    }
}

impl<S: Store> Limiter<S> {
    /// Decides every key. With several keys, all are first peeked: if any would be
    /// denied, nothing is counted (the whole request is rejected). Two requests racing
    /// between the peek and the count can still leave one counted in some keys only.
    pub async fn decide_all(&self, keys: &KeyChecks) -> Result<Vec<Verdict>, CheckError> {
        let mut verdicts = Vec::with_capacity(keys.checks.len());
        let counts = keys.checks.iter().any(|(_, mode)| *mode == Mode::Consume);
        if counts && keys.checks.len() > 1 {
            for (check, _) in &keys.checks {
                verdicts.push(self.decide(check.clone(), Mode::Peek).await?);
            }
            if verdicts.iter().any(|v| !v.decision.allowed) {
                return Ok(verdicts);
            }
            verdicts.clear();
        }
        for (check, mode) in &keys.checks {
            verdicts.push(self.decide(check.clone(), *mode).await?);
        }
        Ok(verdicts)
    }
}
