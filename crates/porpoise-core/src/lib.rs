//! Porpoise's domain, free of I/O: what a workflow is, how its tasks depend on each other, which
//! states a run moves through and what each event does to a run, in what order ready tasks leave
//! the queue, and how a state-event handler says whether its failure is worth retrying.

/// Roles of API tokens and what each AdminService call needs.
pub mod auth;
/// Capped exponential backoff for retried work.
pub mod backoff;
/// The task graph of a workflow: roots, topological order, ready sets, cycles.
pub mod dag;
/// Date parameters: DolphinScheduler's built-ins and time expressions.
pub mod dateparams;
/// A run's state, its typed events, and the pure transition function.
pub mod engine;
/// State event kinds and the typed errors of handling an event.
pub mod event;
/// Bounds on input, checked before costly work: spec size and nesting, exec argument sizes.
pub mod limits;
/// Workflow and task priorities and the order of the task priority queue.
pub mod priority;
/// Held runs: serial workflows and backfills, who goes next.
pub mod release;
/// Schedules: cron expressions in a time zone, fire times and catch-up after downtime.
pub mod schedule;
/// How params reach a task's command as data: quoted references to environment variables.
pub mod shell;
/// The YAML workflow spec: parsing and validation.
pub mod spec;
/// Execution states and the legal transitions between them.
pub mod state;

pub use backoff::Backoff;
pub use dag::Dag;
pub use event::{DropReason, HandlerError, StateEventKind};
pub use priority::{Priority, QueueKey, TaskPriorityQueue};
pub use spec::{Execution, FailureStrategy, SpecError, SpecProblem, TaskSpec, TaskType, TimeoutStrategy, WorkflowSpec};
pub use state::ExecutionState;
