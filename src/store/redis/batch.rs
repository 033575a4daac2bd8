//! Batching: checks that meet on a lane while its earlier calls are out go together in
//! one script call. The script decides a batch's checks one after another, each as if
//! called alone, so batching changes what a check costs Redis, never what it decides.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use super::lanes::Lanes;
use super::script::{Check, Reply};
use crate::domain::{Limits, Mode};
use crate::metrics;
use crate::store::StoreError;
use crate::sync::lock;

/// Batches a lane may have out at once. While they are, new checks wait and leave
/// together in the next batch; two keep Redis busy while one answer travels.
const BATCHES_IN_FLIGHT: usize = 2;

/// One check waiting for its batch.
struct Pending {
    key: Vec<u8>,
    limits: Limits,
    cost: u32,
    mode: Mode,
    /// When its caller stops waiting (less the margin to answer it).
    until: Instant,
    answer: oneshot::Sender<Result<Reply, StoreError>>,
}

/// A lane's waiting checks, and how many of its batches are out.
#[derive(Default)]
struct Queue {
    waiting: Vec<Pending>,
    in_flight: usize,
}

impl Queue {
    /// The next batch (at most `max` checks), or `None` when nothing waits, which ends
    /// the sender that asked.
    fn next(&mut self, max: usize) -> Option<Vec<Pending>> {
        if self.waiting.is_empty() {
            self.in_flight -= 1;
            return None;
        }
        let rest = self.waiting.split_off(self.waiting.len().min(max));
        Some(std::mem::replace(&mut self.waiting, rest))
    }
}

/// The lanes, and the checks waiting for each check lane's next batch. Shared by the
/// store and its batch senders, which may outlive the call that started them.
pub(super) struct Batches {
    pub(super) lanes: Lanes,
    queues: Box<[Mutex<Queue>]>,
    /// The most checks per script call; 1 sends each check on its own.
    pub(super) max: usize,
}

impl Batches {
    pub(super) fn new(lanes: Lanes, check_lanes: usize, max: usize) -> Self {
        Self { lanes, queues: (0..check_lanes).map(|_| Mutex::default()).collect(), max: max.max(1) }
    }

    /// Waits for a check to be decided in a batch. The check joins its lane's queue;
    /// if fewer than [`BATCHES_IN_FLIGHT`] batches are out, a sender task takes the
    /// queue to Redis, and goes on with what queued meanwhile until nothing waits.
    /// The batch belongs to that task: a caller who stops waiting (its deadline, or a
    /// cancelled request) cancels no one else's check.
    pub(super) async fn decide(
        self: &Arc<Self>,
        lane: usize,
        key: Vec<u8>,
        limits: Limits,
        cost: u32,
        mode: Mode,
    ) -> Result<Reply, StoreError> {
        let (answer, decided) = oneshot::channel();
        let until = self.lanes.wait_until(Instant::now());
        let start = {
            let mut queue = lock(&self.queues[lane]);
            queue.waiting.push(Pending { key, limits, cost, mode, until, answer });
            if queue.in_flight < BATCHES_IN_FLIGHT {
                queue.in_flight += 1;
                queue.next(self.max)
            } else {
                None
            }
        };
        if let Some(batch) = start {
            // The sender is made before it is spawned: dropped unrun, it still gives its place back.
            let sender = Sender { batches: Arc::clone(self), lane, done: false };
            tokio::spawn(sender.run(batch));
        }
        let waited = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout_at(until.into(), decided).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(dropped()),
            Err(_) => Err(StoreError::Timeout(waited)),
        }
    }

    /// One script call deciding `batch`; each check gets its own answer.
    async fn send(&self, lane: usize, batch: Vec<Pending>) {
        metrics::redis_batch(batch.len());
        let checks: Vec<_> = batch
            .iter()
            .map(|p| Check { key: p.key.as_slice(), limits: &p.limits, cost: p.cost, mode: p.mode })
            .collect();
        // The script counts nothing once the first of these callers has stopped waiting;
        // the call is waited for as long as the last of them waits.
        let first = batch.iter().map(|p| p.until).min().unwrap_or_else(Instant::now);
        let last = batch.iter().map(|p| p.until).max().unwrap_or(first);
        let replies = self.lanes.bounded(lane, last, self.lanes.eval(lane, &checks, false, first)).await;
        match replies {
            Ok(replies) => {
                for (check, reply) in batch.into_iter().zip(replies) {
                    let _ = check.answer.send(reply);
                }
            }
            Err(e) => {
                for check in batch {
                    let _ = check.answer.send(Err(e.clone()));
                }
            }
        }
    }
}

/// A lane's batch sender. It holds one of the lane's `in_flight` places, and gives it back
/// when it finds nothing waiting, or when it is dropped unfinished (its event loop stopped,
/// even before it first ran); then, if no sender is left, the checks still waiting are
/// answered at once rather than at their deadline.
struct Sender {
    batches: Arc<Batches>,
    lane: usize,
    done: bool,
}

impl Sender {
    /// Sends `batch`, then each batch that queued on the lane meanwhile, until none has.
    async fn run(mut self, mut batch: Vec<Pending>) {
        let (batches, lane) = (&self.batches, self.lane);
        loop {
            // A check whose caller stopped waiting is not counted.
            batch.retain(|check| !check.answer.is_closed());
            if !batch.is_empty() {
                batches.send(lane, batch).await;
            }
            match lock(&batches.queues[lane]).next(batches.max) {
                Some(next) => batch = next,
                None => break,
            }
        }
        self.done = true;
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let orphans = {
            let mut queue = lock(&self.batches.queues[self.lane]);
            queue.in_flight -= 1;
            if queue.in_flight == 0 { std::mem::take(&mut queue.waiting) } else { Vec::new() }
        };
        for check in orphans {
            let _ = check.answer.send(Err(dropped()));
        }
    }
}

/// The error of a check whose batch was dropped with the event loop running it.
fn dropped() -> StoreError {
    StoreError::Unavailable("the Redis call was dropped: its event loop stopped".into())
}
