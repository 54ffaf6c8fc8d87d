//! One owner for everything a daemon spawns — a master's runners, timers, dispatches, consumer,
//! watches and gRPC server; a worker's task attempts, event delivery, heartbeats and gRPC
//! server: stopping the daemon cancels them all and waits for them.

use std::future::Future;

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
