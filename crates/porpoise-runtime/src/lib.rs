//! One owner for everything a daemon spawns — a master's runners, timers, dispatches, consumer,
//! watches and gRPC server; a worker's task attempts, event delivery, heartbeats and gRPC
//! server: stopping the daemon cancels them all and waits for them. And the one helper every
//! retry loop waits with: [`retry_delay`], capped exponential backoff with jitter.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use porpoise_core::Backoff;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Spawns tasks that end when the owner stops.
#[derive(Debug, Clone, Default)]
pub struct Spawner {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Spawner {
    /// Runs `task` until it ends or the owner stops, whichever comes first.
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Resolves when the owner stops.
    pub fn stopping(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// Cancels every task, without waiting.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Cancels every task and waits until all have ended.
    pub async fn stop(&self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Tasks not yet ended.
    pub fn live(&self) -> usize {
        self.tracker.len()
    }
}

/// How long to wait before retry `attempt` (0 is the first) of work that failed: `backoff`'s
/// delay, a quarter shorter to a quarter longer at random, so that daemons that failed together
/// (an outage ended) do not retry in step.
pub fn retry_delay(backoff: &Backoff, attempt: u32) -> Duration {
    backoff.jittered(attempt, random_unit())
}

/// A number from 0 to 1, different on each call and in each process (xorshift, seeded once
/// from the standard library's per-process random hasher keys).
fn random_unit() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        x = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8) | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_stay_within_a_quarter_and_differ() {
        let backoff = Backoff { initial: Duration::from_millis(400), max: Duration::from_secs(10), multiplier: 2.0 };
        let delays: Vec<Duration> = (0..1000).map(|_| retry_delay(&backoff, 0)).collect();
        assert!(
            delays.iter().all(|d| (Duration::from_millis(300)..=Duration::from_millis(500)).contains(d)),
            "{delays:?}"
        );
        let distinct: std::collections::BTreeSet<Duration> = delays.iter().copied().collect();
        assert!(distinct.len() > 100, "spread, not in step: {} distinct of 1000", distinct.len());
    }
}
