//! One request that names several keys (several Envoy descriptors): each distinct key
//! is checked once, the request is allowed only if every key allows it, and then it
//! counts in all of them; denied, it counts in none.

use std::time::Instant;

use super::{Answer, CheckError, Checked, Limiter, Verdict};
use crate::domain::Mode;
use crate::store::{KeyCheck, Store, StoreError};

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

    /// Makes every check a peek: the request is refused whole, so none of its keys
    /// may count it, and each key's status is what it would have answered.
    pub fn peek_only(&mut self) {
        for (_, mode) in &mut self.checks {
            *mode = Mode::Peek;
        }
    }
}

impl<S: Store> Limiter<S> {
    /// Decides every key of one request, all or nothing: if any would deny it, no key
    /// counts it ([`Store::check_all`]: one atomic call where the keys share a Redis).
    /// Keys under a shadow policy never deny, so they take no part: they are decided
    /// after the others, counting only if the others allowed.
    pub async fn decide_all(&self, keys: &KeyChecks) -> Result<Vec<Verdict>, CheckError> {
        let checks = &keys.checks;
        let counts = checks.iter().any(|(_, mode)| *mode == Mode::Consume);
        let (group, shadow): (Vec<usize>, Vec<usize>) = (0..checks.len()).partition(|&i| !checks[i].0.policy().shadow);
        let mut verdicts: Vec<Option<Verdict>> = vec![None; checks.len()];
        if counts && group.len() > 1 {
            let members: Vec<&(Checked, Mode)> = group.iter().map(|&i| &checks[i]).collect();
            for (&i, verdict) in group.iter().zip(self.decide_group(&members).await?) {
                verdicts[i] = Some(verdict);
            }
        } else {
            for &i in &group {
                let (check, mode) = &checks[i];
                verdicts[i] = Some(self.decide(check.clone(), *mode).await?);
            }
        }
        let all_fit = verdicts.iter().flatten().all(|v| v.decision.allowed);
        for &i in &shadow {
            let (check, mode) = &checks[i];
            let mode = if all_fit { *mode } else { Mode::Peek };
            verdicts[i] = Some(self.decide(check.clone(), mode).await?);
        }
        Ok(verdicts.into_iter().flatten().collect())
    }

    /// One store call for the group; the failure modes answer if the store fails.
    async fn decide_group(&self, members: &[&(Checked, Mode)]) -> Result<Vec<Verdict>, CheckError> {
        let started = Instant::now();
        let checks: Vec<KeyCheck<'_>> = members
            .iter()
            .map(|(c, mode)| KeyCheck { key: &c.key, limits: &c.resolved.policy.limits, cost: c.cost, mode: *mode })
            .collect();
        self.settle(checks.iter().map(|c| c.key)).await;
        let answers: Vec<Answer> = match self.call_store(self.store.check_all(&checks)).await {
            Ok(decisions) => {
                if let Some(cache) = &self.deny_cache {
                    for (c, decision) in checks.iter().zip(&decisions) {
                        cache.remember(c.key, c.limits, c.cost, started, decision);
                    }
                }
                decisions.into_iter().map(Answer::Store).collect()
            }
            Err(CheckError::Store(error)) => self.fall_back_all(members, &error).await,
            Err(e) => return Err(e),
        };
        // Denied, the request counted in no key: a key that would have allowed it is reported
        // as asked (a peek), not as an allowed, counted check.
        let counted = answers.iter().all(|answer| answer.decision().allowed);
        let verdicts = members.iter().zip(answers).map(|((c, mode), answer)| {
            let mode = if counted || !answer.decision().allowed { *mode } else { Mode::Peek };
            self.verdict(c.clone(), mode, answer, started)
        });
        Ok(verdicts.collect())
    }

    /// The failure modes' answers, all or nothing as the store's would be.
    async fn fall_back_all(&self, members: &[&(Checked, Mode)], error: &StoreError) -> Vec<Answer> {
        let mut decisions = Vec::with_capacity(members.len());
        for (c, _) in members {
            let policy = &c.resolved.policy;
            decisions.push(self.fall_back(&c.key, &policy.limits, c.cost, Mode::Peek, policy.failure).await);
        }
        if decisions.iter().all(|d| d.allowed) {
            for ((c, mode), decision) in members.iter().zip(&mut decisions) {
                if *mode == Mode::Consume {
                    let policy = &c.resolved.policy;
                    *decision = self.fall_back(&c.key, &policy.limits, c.cost, *mode, policy.failure).await;
                }
            }
        }
        let failure = |c: &Checked| c.resolved.policy.failure;
        members.iter().zip(decisions).map(|((c, _), d)| Answer::FellBack(d, failure(c), error.clone())).collect()
    }
}
