//! Porpoise's domain, free of I/O: what a workflow is, how its tasks depend on each other, which
//! states a run moves through, in what order ready tasks leave the queue, and how a state-event
//! handler says whether its failure is worth retrying.

/// Capped exponential backoff for retried work.
pub mod backoff;
/// The task graph of a workflow: roots, topological order, ready sets, cycles.
pub mod dag;
/// State events sent to a workflow runner and the typed errors of their handlers.
pub mod event;
/// Workflow and task priorities and the order of the task priority queue.
pub mod priority;
/// The YAML workflow spec: parsing and validation.
pub mod spec;
/// Execution states and the legal transitions between them.
pub mod state;

pub use backoff::Backoff;
pub use dag::Dag;
pub use event::{Disposition, DropReason, HandlerError, StateEvent, StateEventKind};
pub use priority::{Priority, QueueKey, TaskPriorityQueue};
pub use spec::{SpecError, SpecProblem, TaskSpec, TaskType, TimeoutStrategy, WorkflowSpec};
pub use state::ExecutionState;
