//! Execution states of workflow and task instances (DolphinScheduler's vocabulary, trimmed) and
//! the one function that says which transitions are legal.
//!
//! ```text
//!              ┌────────── waiting ◀───┐ (task group / dependency)
//!              ▼                       │
//!   submitted ─────▶ dispatched ──▶ running ──▶ success | failure | stopped | killed
//!      ▲  │               │            │
//!      │  └──▶ paused     │            └──▶ delayed (attempt failed, retry later) ──▶ submitted
//!      │                  ▼
//!      └──────── need-fault-tolerance (owner or worker died; re-dispatch or adopt)
//! ```
//!
//! `forced-success` is set by an operator on a task that ended without success; the run goes on
//! as if it had succeeded.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The state of a workflow instance or a task instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutionState {
    /// Created, not yet handed to a worker (tasks) or not yet started (workflows).
    Submitted,
    /// Sent to a worker; no RUNNING event yet.
    Dispatched,
    /// Running on a worker (tasks) or in progress (workflows).
    Running,
    /// Finished successfully. Terminal.
    Success,
    /// Finished unsuccessfully with no retry left. Terminal.
    Failure,
    /// Killed or stopped by a user. Terminal.
    Stopped,
    /// Paused by a user; resumes from where it stood.
    Paused,
    /// Its owner (master) or host (worker) died; failover decides what happens next.
    NeedFaultTolerance,
    /// An attempt failed and the task waits out its retry interval.
    Delayed,
    /// Waiting for a task-group slot or a dependency.
    Waiting,
    /// Killed on its worker by an operator (a stop or a task kill). Terminal. Tasks only.
    Killed,
    /// Ended without success, then marked successful by an operator: what depends on it runs.
    /// Terminal. Tasks only.
    ForcedSuccess,
    /// A run of a `serial_discard` workflow that would have overlapped an active one. Terminal.
    /// Workflows only.
    Discarded,
}

impl ExecutionState {
    /// Every state, for listings and exhaustive tests.
    pub const ALL: [ExecutionState; 13] = [
        Self::Submitted,
        Self::Dispatched,
        Self::Running,
        Self::Success,
        Self::Failure,
        Self::Stopped,
        Self::Paused,
        Self::NeedFaultTolerance,
        Self::Delayed,
        Self::Waiting,
        Self::Killed,
        Self::ForcedSuccess,
        Self::Discarded,
    ];

    /// The name used in the database, the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::Dispatched => "dispatched",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Stopped => "stopped",
            Self::Paused => "paused",
            Self::NeedFaultTolerance => "need-fault-tolerance",
            Self::Delayed => "delayed",
            Self::Waiting => "waiting",
            Self::Killed => "killed",
            Self::ForcedSuccess => "forced-success",
            Self::Discarded => "discarded",
        }
    }

    /// No transition leaves a terminal state; a rerun makes a new instance.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Success | Self::Failure | Self::Stopped | Self::Killed | Self::ForcedSuccess | Self::Discarded
        )
    }

    /// A task instance in this state holds a slot of its task group: it is on its way to a
    /// worker or on one.
    pub fn holds_group_slot(self) -> bool {
        matches!(self, Self::Submitted | Self::Dispatched | Self::Running | Self::NeedFaultTolerance)
    }

    /// Succeeded, or counts as succeeded for what depends on it.
    pub fn is_success(self) -> bool {
        matches!(self, Self::Success | Self::ForcedSuccess)
    }

    /// Ended without success: the run fails because of it (unless an operator marks it
    /// successful), and a rerun of the failed tasks starts it again.
    pub fn is_unsuccessful(self) -> bool {
        matches!(self, Self::Failure | Self::Stopped | Self::Killed)
    }

    /// Whether moving from `self` to `to` is legal. Staying in the same state is not a
    /// transition and is refused, so that a duplicated event is recognised as one.
    pub fn can_transition_to(self, to: ExecutionState) -> bool {
        use ExecutionState::*;
        match (self, to) {
            (from, to) if from == to => false,
            (from, _) if from.is_terminal() => false,
            (Submitted, Dispatched | Waiting | Paused | Stopped | Failure | Running) => true,
            (Waiting, Submitted | Paused | Stopped | Failure) => true,
            // A RESULT may overtake its RUNNING; a rejected dispatch goes back to submitted.
            (Dispatched, Running | Success | Failure | Stopped | Killed | Delayed | Submitted) => true,
            (Dispatched, NeedFaultTolerance) => true,
            (Running, Success | Failure | Stopped | Killed | Delayed | Paused | NeedFaultTolerance) => true,
            // A retry is called off (failure) when the run fails meanwhile.
            (Delayed, Submitted | Failure | Stopped | Paused) => true,
            (Paused, Submitted | Running | Stopped) => true,
            // Failover either re-dispatches or adopts what the worker reports.
            (NeedFaultTolerance, Submitted | Running | Success | Failure | Stopped | Killed | Delayed) => true,
            _ => false,
        }
    }
}

impl fmt::Display for ExecutionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`ExecutionState::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown execution state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for ExecutionState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| UnknownState(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::ExecutionState::*;
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in ExecutionState::ALL {
            assert_eq!(s.as_str().parse::<ExecutionState>(), Ok(s));
        }
        assert!("done".parse::<ExecutionState>().is_err());
    }

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in [Success, Failure, Stopped, Killed, ForcedSuccess, Discarded] {
            for to in ExecutionState::ALL {
                assert!(!from.can_transition_to(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn a_duplicate_event_is_not_a_transition() {
        for s in ExecutionState::ALL {
            assert!(!s.can_transition_to(s), "{s} -> {s}");
        }
    }

    #[test]
    fn the_happy_path_and_late_events() {
        assert!(Submitted.can_transition_to(Dispatched));
        assert!(Dispatched.can_transition_to(Running));
        assert!(Running.can_transition_to(Success));
        // a RESULT that overtook its RUNNING
        assert!(Dispatched.can_transition_to(Success));
        // a RUNNING that arrives after the RESULT changes nothing
        assert!(!Success.can_transition_to(Running));
        assert!(!Failure.can_transition_to(Running));
        // retry path
        assert!(Running.can_transition_to(Delayed));
        assert!(Delayed.can_transition_to(Submitted));
        // a retry called off because the run is failing
        assert!(Delayed.can_transition_to(Failure));
        // never backwards from running to dispatched
        assert!(!Running.can_transition_to(Dispatched));
        assert!(!Running.can_transition_to(Submitted));
    }
}
