//! State events — every change to a running workflow arrives in its runner's inbox as one — and
//! the typed error a handler returns: retry the event later, or drop it and record why.

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
    WorkflowTimeout,
    TaskRetry,
    WaitTaskGroup,
    WorkflowBlocked,
    /// A worker left the registry (and stayed away past the grace period): its attempts of
    /// this run are failed over.
    WorkerLost,
    /// One attempt on a lost worker is failed over: a new attempt goes to another worker.
    TaskFailover,
    /// The master lost its registration, or found the run owned by another master: the runner
    /// checks that the run is still its master's, and stops if it is not.
    OwnershipCheck,
}

impl StateEventKind {
    pub const ALL: [StateEventKind; 10] = [
        Self::TaskStateChange,
        Self::WorkflowStateChange,
        Self::TaskTimeout,
        Self::WorkflowTimeout,
        Self::TaskRetry,
        Self::WaitTaskGroup,
        Self::WorkflowBlocked,
        Self::WorkerLost,
        Self::TaskFailover,
        Self::OwnershipCheck,
    ];

    /// The label used in metrics, logs and the dead-letter table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskStateChange => "task_state_change",
            Self::WorkflowStateChange => "workflow_state_change",
            Self::TaskTimeout => "task_timeout",
            Self::WorkflowTimeout => "workflow_timeout",
            Self::TaskRetry => "task_retry",
            Self::WaitTaskGroup => "wait_task_group",
            Self::WorkflowBlocked => "workflow_blocked",
            Self::WorkerLost => "worker_lost",
            Self::TaskFailover => "task_failover",
            Self::OwnershipCheck => "ownership_check",
        }
    }
}

impl fmt::Display for StateEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event for one workflow instance's runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateEvent {
    pub kind: StateEventKind,
    pub workflow_instance_id: i64,
    /// The task instance the event is about, for task events.
    pub task_instance_id: Option<i64>,
    /// The task attempt the event belongs to; events of an older attempt are stale.
    pub attempt: Option<i32>,
    /// The state the event reports or asks for.
    pub state: Option<ExecutionState>,
    /// Kind-specific details (exit code, times, worker, message).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

impl StateEvent {
    /// An [`StateEventKind::OwnershipCheck`] for run `workflow_instance_id`.
    pub fn ownership_check(workflow_instance_id: i64) -> Self {
        Self {
            kind: StateEventKind::OwnershipCheck,
            workflow_instance_id,
            task_instance_id: None,
            attempt: None,
            state: None,
            detail: serde_json::Value::Null,
        }
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
    #[error("no handler for {0} events")]
    NoHandler(StateEventKind),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("malformed event: {0}")]
    Malformed(String),
}

/// A state-event handler's failure, typed by what the runner must do with the event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HandlerError {
    /// A transient fault (the database is down): keep the event at the head of the inbox, roll
    /// back what the attempt changed in memory, and retry after a backoff.
    #[error("retryable: {reason}")]
    Retryable { reason: String, after: Option<Duration> },
    /// The event is broken: remove it and record it in the dead-letter table.
    #[error("dropped: {0}")]
    Drop(DropReason),
    /// Another master owns the run now (it took the run over): this runner stops, and the
    /// event goes to the owner, not to the dead-letter table.
    #[error("the run is owned by {} now", owner.as_deref().unwrap_or("no master"))]
    NotOwner { owner: Option<String> },
}

/// What to do with an event whose handling failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    Retry {
        after: Option<Duration>,
    },
    Drop {
        reason: String,
    },
    /// Stop the runner: the run belongs to `owner` now.
    HandOver {
        owner: Option<String>,
    },
}

impl HandlerError {
    pub fn retryable(reason: impl Into<String>) -> Self {
        Self::Retryable { reason: reason.into(), after: None }
    }

    pub fn disposition(&self) -> Disposition {
        match self {
            Self::Retryable { after, .. } => Disposition::Retry { after: *after },
            Self::Drop(reason) => Disposition::Drop { reason: reason.to_string() },
            Self::NotOwner { owner } => Disposition::HandOver { owner: owner.clone() },
        }
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
        assert_eq!(e.disposition(), Disposition::Retry { after: None });
        let e: HandlerError = DropReason::UnknownTaskInstance(42).into();
        assert_eq!(e.disposition(), Disposition::Drop { reason: "unknown task instance 42".into() });
    }

    #[test]
    fn kinds_have_distinct_labels() {
        let mut labels: Vec<_> = StateEventKind::ALL.iter().map(|k| k.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), StateEventKind::ALL.len());
    }
}
