//! Wakes the waits for runs to end (`WaitRun`): a counter bumped when a runner of this master
//! stops and for each run-end notification the database sends (on Postgres, whichever master
//! ended the run). While that feed is broken it is bumped every [`POLL`], so a wait never
//! depends on the feed alone; a woken wait reads its run again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use crate::Shared;

/// How often waits are woken while the database's feed is broken.
const POLL: Duration = Duration::from_secs(1);
/// How long to wait before opening the feed again after it broke.
const REOPEN_AFTER: Duration = Duration::from_secs(5);

/// See the module doc.
#[derive(Debug)]
pub(crate) struct RunEnds(watch::Sender<u64>);

impl Default for RunEnds {
    fn default() -> Self {
        Self(watch::Sender::new(0))
    }
}

impl RunEnds {
    /// Some run may have ended.
    pub fn bump(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every later bump.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// Runs until the master stops: follows the database's run-end feed.
pub(crate) async fn follow(shared: Arc<Shared>) {
    loop {
        let feed = tokio::select! {
            () = shared.draining.cancelled() => return,
            feed = shared.store.run_end_feed() => feed,
        };
        match feed {
            Ok(mut feed) => loop {
                tokio::select! {
                    () = shared.draining.cancelled() => return,
                    next = feed.next() => match next {
                        Ok(()) => shared.run_ends.bump(),
                        Err(e) => {
                            warn!(error = %e, "run-end wake-ups broke; waits for runs poll until they are back");
                            break;
                        }
                    },
                }
            },
            Err(e) => warn!(error = %e, "cannot follow run ends; waits for runs poll instead"),
        }
        let reopen = tokio::time::Instant::now() + REOPEN_AFTER;
        while tokio::time::Instant::now() < reopen {
            shared.run_ends.bump();
            tokio::select! {
                () = shared.draining.cancelled() => return,
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }
}
