//! The kinds of state event (labels for metrics, logs and the dead-letter table; the events
//! themselves are [`crate::engine::Event`]) and the typed error of handling one: retry the
//! event later, drop it and record why, or hand the run to the master that owns it now.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ExecutionState;

/// The kinds of state event; each has one handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateEventKind {
    TaskStateChange,
    WorkflowStateChange,
    TaskTimeout,
    TaskRetry,
    /// A worker left the registry (and stayed away past the grace period): its attempts of
    /// this run are failed over.
    WorkerLost,
    /// One attempt on a lost worker is failed over: a new attempt goes to another worker.
    TaskFailover,
    /// The master lost its registration, or found the run owned by another master: the runner
    /// checks that the run is still its master's, and stops if it is not.
    OwnershipCheck,
    /// An operator's stop, pause, resume, task kill or mark-success.
    Control,
    /// The run's own timeout ran out.
    WorkflowTimeout,
    /// A task waiting for a task-group slot tries to take one.
    TaskGroupSlot,
}

impl StateEventKind {
    pub const ALL: [StateEventKind; 10] = [
        Self::TaskStateChange,
        Self::WorkflowStateChange,
        Self::TaskTimeout,
        Self::TaskRetry,
        Self::WorkerLost,
        Self::TaskFailover,
        Self::OwnershipCheck,
        Self::Control,
        Self::WorkflowTimeout,
        Self::TaskGroupSlot,
    ];

    /// The label used in metrics, logs and the dead-letter table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskStateChange => "task_state_change",
            Self::WorkflowStateChange => "workflow_state_change",
            Self::TaskTimeout => "task_timeout",
            Self::TaskRetry => "task_retry",
            Self::WorkerLost => "worker_lost",
            Self::TaskFailover => "task_failover",
            Self::OwnershipCheck => "ownership_check",
            Self::Control => "control",
            Self::WorkflowTimeout => "workflow_timeout",
            Self::TaskGroupSlot => "task_group_slot",
        }
    }
}

impl fmt::Display for StateEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an event was dropped: it cannot ever be handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    #[error("unknown workflow instance {0}")]
    UnknownWorkflowInstance(i64),
    #[error("unknown task instance {0}")]
    UnknownTaskInstance(i64),
    #[error("illegal transition from {from} to {to}")]
    IllegalTransition { from: ExecutionState, to: ExecutionState },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("malformed event: {0}")]
    Malformed(String),
    /// A worker reported on an attempt that is not on it (a forgery, or a worker that lost it).
    #[error("worker {sender} does not hold attempt {attempt} (it is on {})", holder.as_deref().unwrap_or("no worker"))]
    NotTheAttemptsWorker { sender: String, attempt: i32, holder: Option<String> },
}

/// A state-event handler's failure, typed by what the runner must do with the event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HandlerError {
    /// A transient fault (the database is down): keep the event at the head of the inbox and
    /// retry after a backoff; the run's state is as it was before the attempt.
    #[error("retryable: {reason}")]
    Retryable { reason: String, after: Option<Duration> },
    /// The event is broken: remove it and record it in the dead-letter table.
    #[error("dropped: {0}")]
    Drop(DropReason),
    /// Another master owns the run now (it took the run over): this runner stops, and the
    /// event goes to the owner, not to the dead-letter table.
    #[error("the run is owned by {} now", owner.as_deref().unwrap_or("no master"))]
    NotOwner { owner: Option<String> },
    /// The change waits for something outside the run (a task-group slot held by other
    /// tasks): nothing changed, the event is done, and the runner tries again when woken.
    #[error("waiting: {reason}")]
    Wait { reason: String },
}

impl HandlerError {
    pub fn retryable(reason: impl Into<String>) -> Self {
        Self::Retryable { reason: reason.into(), after: None }
    }
}

impl From<DropReason> for HandlerError {
    fn from(reason: DropReason) -> Self {
        Self::Drop(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_to_do() {
        let e = HandlerError::retryable("database unavailable");
        assert_eq!(e, HandlerError::Retryable { reason: "database unavailable".into(), after: None });
        let e: HandlerError = DropReason::UnknownTaskInstance(42).into();
        assert_eq!(e.to_string(), "dropped: unknown task instance 42");
    }

    #[test]
    fn kinds_have_distinct_labels() {
        let mut labels: Vec<_> = StateEventKind::ALL.iter().map(|k| k.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), StateEventKind::ALL.len());
    }
}
