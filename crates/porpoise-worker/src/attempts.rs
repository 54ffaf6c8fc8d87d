//! The worker's table of attempts: those running, each with its kill switch, and for
//! [`KEEP_DONE`] those that ended — so that a resent dispatch of an ended attempt is still
//! recognised ("already accepted") while the table stays bounded. Counting the running ones
//! costs nothing: they are a map of their own.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// A task instance's attempt.
pub(crate) type AttemptKey = (i64, i32);

/// How long an ended attempt is remembered. A master resends a dispatch only while its answer
/// is missing (seconds); ten minutes covers that many times over.
pub(crate) const KEEP_DONE: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
pub(crate) struct Attempts {
    running: HashMap<AttemptKey, Arc<Notify>>,
    done: HashMap<AttemptKey, Instant>,
    /// `done` in the order the attempts ended, to forget the oldest first.
    ended: VecDeque<(Instant, AttemptKey)>,
}

impl Attempts {
    /// Whether the attempt runs here or ended here recently.
    pub fn knows(&self, key: &AttemptKey) -> bool {
        self.running.contains_key(key) || self.done.contains_key(key)
    }

    pub fn is_running(&self, key: &AttemptKey) -> bool {
        self.running.contains_key(key)
    }

    /// The kill switch of a running attempt.
    pub fn kill_switch(&self, key: &AttemptKey) -> Option<&Arc<Notify>> {
        self.running.get(key)
    }

    /// Every running attempt's kill switch.
    pub fn kill_switches(&self) -> impl Iterator<Item = &Arc<Notify>> {
        self.running.values()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn start(&mut self, key: AttemptKey, kill: Arc<Notify>) {
        self.running.insert(key, kill);
    }

    /// The attempt ended at `now`; attempts that ended more than [`KEEP_DONE`] ago are forgotten.
    pub fn finish(&mut self, key: AttemptKey, now: Instant) {
        self.running.remove(&key);
        self.done.insert(key, now);
        self.ended.push_back((now, key));
        while let Some(&(at, old)) = self.ended.front() {
            if now.saturating_duration_since(at) <= KEEP_DONE {
                break;
            }
            self.ended.pop_front();
            if self.done.get(&old) == Some(&at) {
                self.done.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_attempts_are_known_for_a_while_then_forgotten() {
        let mut a = Attempts::default();
        let t0 = Instant::now();
        a.start((1, 1), Arc::default());
        a.start((2, 1), Arc::default());
        assert_eq!(a.running(), 2);
        a.finish((1, 1), t0);
        assert!(a.knows(&(1, 1)) && !a.is_running(&(1, 1)));
        assert_eq!((a.running(), a.kill_switches().count()), (1, 1));
        a.finish((2, 1), t0 + KEEP_DONE / 2);
        a.start((3, 1), Arc::default());
        a.finish((3, 1), t0 + KEEP_DONE + Duration::from_secs(1));
        assert!(!a.knows(&(1, 1)), "forgotten after KEEP_DONE");
        assert!(a.knows(&(2, 1)) && a.knows(&(3, 1)));
        assert_eq!((a.done.len(), a.ended.len()), (2, 2), "the table stays bounded");
    }
}
