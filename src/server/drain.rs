//! The one shutdown type: its phases, in order, and futures that resolve when each
//! begins. Everything that serves watches it: the metrics endpoint and the reloader
//! stop when draining starts, gRPC health turns NOT_SERVING and then the workers stop
//! accepting, and when the grace period is over (or everything is done) what is still
//! running is ended.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    /// Shutdown was signalled: health says NOT_SERVING, side services stop.
    Draining,
    /// No new connections or calls; in-flight calls finish.
    Closing,
    /// Everything still running ends.
    Done,
}

/// A shared handle on the shutdown's phase. A phase once reached is never left, and
/// reaching one reaches every phase before it.
#[derive(Debug, Clone)]
pub struct Drain {
    phase: Arc<watch::Sender<Phase>>,
}

impl Default for Drain {
    fn default() -> Self {
        Self { phase: Arc::new(watch::Sender::new(Phase::Serving)) }
    }
}

impl Drain {
    /// Starts draining once `signal` resolves. The task ends with the returned guard.
    pub fn start_on(&self, signal: impl Future<Output = ()> + Send + 'static) -> Task {
        let drain = self.clone();
        Task(tokio::spawn(async move {
            signal.await;
            drain.start();
        }))
    }

    pub fn start(&self) {
        self.advance(Phase::Draining);
    }

    pub fn close(&self) {
        self.advance(Phase::Closing);
    }

    pub fn finish(&self) {
        self.advance(Phase::Done);
    }

    /// Resolves once draining has started.
    pub fn started(&self) -> impl Future<Output = ()> + Send + 'static {
        self.reached(Phase::Draining)
    }

    /// Resolves once no new connections or calls are taken.
    pub fn closing(&self) -> impl Future<Output = ()> + Send + 'static {
        self.reached(Phase::Closing)
    }

    /// Resolves once everything is to end.
    pub fn finished(&self) -> impl Future<Output = ()> + Send + 'static {
        self.reached(Phase::Done)
    }

    fn advance(&self, to: Phase) {
        self.phase.send_if_modified(|phase| {
            let later = to > *phase;
            if later {
                *phase = to;
            }
            later
        });
    }

    fn reached(&self, phase: Phase) -> impl Future<Output = ()> + Send + 'static {
        let mut watch = self.phase.subscribe();
        async move {
            // The sender lives as long as any Drain; gone, there is nothing left to wait for.
            let _ = watch.wait_for(|now| *now >= phase).await;
        }
    }
}

/// A background task that is aborted when this is dropped.
#[derive(Debug)]
pub struct Task(JoinHandle<()>);

impl Task {
    pub fn spawn(future: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(future))
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Finishes the drain when dropped: whatever way serving ends, nothing is left running.
#[derive(Debug)]
pub struct FinishOnDrop(pub Drain);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn resolved(future: impl Future<Output = ()>) -> bool {
        tokio::time::timeout(Duration::from_millis(50), future).await.is_ok()
    }

    #[tokio::test]
    async fn phases_come_in_order_and_a_later_one_reaches_the_earlier() {
        let drain = Drain::default();
        assert!(!resolved(drain.started()).await);
        drain.start();
        assert!(resolved(drain.started()).await);
        assert!(!resolved(drain.closing()).await);
        drain.finish();
        assert!(resolved(drain.closing()).await, "finishing closes too");
        drain.start();
        assert!(resolved(drain.finished()).await, "a phase once reached is never left");
    }
}
