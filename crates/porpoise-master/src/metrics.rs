//! Metric names (Prometheus, `porpoise_` prefix) and their descriptions, registered at start.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use porpoise_core::{StateEventKind, TimeoutStrategy};

pub const COMMANDS_CONSUMED: &str = "porpoise_commands_consumed_total";
pub const WORKFLOWS_SUBMITTED: &str = "porpoise_workflow_instances_submitted_total";
pub const WORKFLOWS_FINISHED: &str = "porpoise_workflow_instances_finished_total";
pub const WORKFLOWS_RUNNING: &str = "porpoise_workflow_instances_running";
pub const TASKS_SUBMITTED: &str = "porpoise_tasks_submitted_total";
pub const TASKS_DISPATCHED: &str = "porpoise_tasks_dispatched_total";
pub const TASKS_DISPATCH_FAILED: &str = "porpoise_tasks_dispatch_failed_total";
pub const TASKS_FINISHED: &str = "porpoise_tasks_finished_total";
pub const TASKS_RETRIED: &str = "porpoise_tasks_retried_total";
pub const TASKS_TIMED_OUT: &str = "porpoise_tasks_timed_out_total";
pub const WORKFLOWS_TIMED_OUT: &str = "porpoise_workflow_instances_timed_out_total";
pub const TASKS_WAITING_FOR_WORKER: &str = "porpoise_tasks_waiting_for_worker";
pub const SCHEDULE_FIRES: &str = "porpoise_schedule_fires_total";
pub const DATABASE_ERRORS: &str = "porpoise_database_errors_total";
pub const WORKFLOW_SECONDS: &str = "porpoise_workflow_instance_duration_seconds";
pub const TASK_SECONDS: &str = "porpoise_task_instance_duration_seconds";
pub const WORKERS: &str = "porpoise_workers";
pub const FREE_SLOTS: &str = "porpoise_free_slots";
pub const FAILOVERS: &str = "porpoise_failovers_total";
pub const TASKS_FAILED_OVER: &str = "porpoise_task_attempts_failed_over_total";
pub const TAKEOVER_SECONDS: &str = "porpoise_takeover_seconds";
pub const REGISTRATIONS_LOST: &str = "porpoise_master_registrations_lost_total";
pub const CLUSTER_WORKFLOWS: &str = "porpoise_cluster_workflow_instances";
pub const WORKFLOWS_WITHOUT_OWNER: &str = "porpoise_workflow_instances_without_live_owner";
pub const STATE_EVENTS_HANDLED: &str = "porpoise_state_events_handled_total";
pub const STATE_EVENTS_IGNORED: &str = "porpoise_state_events_ignored_total";
pub const STATE_EVENTS_RETRIED: &str = "porpoise_state_events_retried_total";
pub const STATE_EVENTS_DROPPED: &str = "porpoise_state_events_dropped_total";
pub const WORKFLOWS_STALLED: &str = "porpoise_workflow_instances_stalled";
pub const TASK_EVENTS_REJECTED: &str = "porpoise_task_events_rejected_total";
pub const TASK_EVENTS_REFUSED: &str = "porpoise_task_events_refused_total";
pub const DEAD_LETTERS_SUPPRESSED: &str = "porpoise_dead_letters_suppressed_total";
pub const ADMIN_CALLS_REFUSED: &str = "porpoise_admin_calls_refused_total";
pub const PERSIST_TRANSACTIONS: &str = "porpoise_persist_transactions_total";
pub const PERSIST_RUNS_TOGETHER: &str = "porpoise_persist_runs_together_total";
pub const PERSIST_WAITING: &str = "porpoise_persist_waiting";

/// How [`PERSIST_TRANSACTIONS`] counts a transaction: the writes of several runs together, or
/// of one run alone.
pub const PERSIST_KINDS: [&str; 2] = ["together", "alone"];

/// Why [`ADMIN_CALLS_REFUSED`] counts a call: no token, a token nobody holds, a role too low.
pub const ADMIN_REFUSALS: [&str; 3] = ["no_token", "unknown_token", "role"];

/// Why [`TASK_EVENTS_REFUSED`] counts an event: its sender is not the worker it claims to be,
/// or not the worker that holds the attempt.
pub const REFUSALS: [&str; 2] = ["unauthenticated", "not_the_attempts_worker"];
pub const DISPATCH_SECONDS: &str = "porpoise_dispatch_seconds";
pub const STATE_EVENT_SECONDS: &str = "porpoise_state_event_seconds";
pub const QUEUE_DEPTH: &str = "porpoise_task_queue_depth";

/// The latency histograms, whose buckets start below a millisecond (durations use the
/// daemon's default buckets, from 10 ms to hours).
pub const LATENCIES: [&str; 3] = [DISPATCH_SECONDS, STATE_EVENT_SECONDS, TAKEOVER_SECONDS];

/// The operations [`DATABASE_ERRORS`] counts, as its label values.
pub const DATABASE_OPERATIONS: [&str; 11] = [
    "persist",
    "load_run",
    "read_run",
    "dead_letter",
    "claim_commands",
    "control_commands",
    "resume_runs",
    "sweep",
    "fire_schedules",
    "release_runs",
    "read_token",
];

/// Counts a failed database call of `operation` (a refused conditional write is no error: it
/// is how ownership and stale state are told apart).
pub(crate) fn database_error(operation: &'static str, e: &porpoise_store::StoreError) {
    if !matches!(e, porpoise_store::StoreError::Conflict { .. } | porpoise_store::StoreError::NoFreeSlot { .. }) {
        counter!(DATABASE_ERRORS, "operation" => operation).increment(1);
    }
}

/// Every metric the master exports (dashboards and alerts may use only these).
pub const ALL: &[&str] = &[
    COMMANDS_CONSUMED,
    WORKFLOWS_SUBMITTED,
    WORKFLOWS_FINISHED,
    WORKFLOWS_RUNNING,
    TASKS_SUBMITTED,
    TASKS_DISPATCHED,
    TASKS_DISPATCH_FAILED,
    TASKS_FINISHED,
    TASKS_RETRIED,
    TASKS_TIMED_OUT,
    WORKFLOWS_TIMED_OUT,
    TASKS_WAITING_FOR_WORKER,
    SCHEDULE_FIRES,
    DATABASE_ERRORS,
    WORKFLOW_SECONDS,
    TASK_SECONDS,
    WORKERS,
    FREE_SLOTS,
    FAILOVERS,
    TASKS_FAILED_OVER,
    TAKEOVER_SECONDS,
    REGISTRATIONS_LOST,
    CLUSTER_WORKFLOWS,
    WORKFLOWS_WITHOUT_OWNER,
    STATE_EVENTS_HANDLED,
    STATE_EVENTS_IGNORED,
    STATE_EVENTS_RETRIED,
    STATE_EVENTS_DROPPED,
    WORKFLOWS_STALLED,
    TASK_EVENTS_REJECTED,
    TASK_EVENTS_REFUSED,
    DEAD_LETTERS_SUPPRESSED,
    ADMIN_CALLS_REFUSED,
    PERSIST_TRANSACTIONS,
    PERSIST_RUNS_TOGETHER,
    PERSIST_WAITING,
    DISPATCH_SECONDS,
    STATE_EVENT_SECONDS,
    QUEUE_DEPTH,
];

/// Registers every metric's description with the installed recorder, and every counter and
/// gauge at 0 for its known labels, so a scrape shows them before anything happened.
pub fn describe() {
    register_at_zero();
    porpoise_registry::metrics::describe();
    describe_counter!(COMMANDS_CONSUMED, "Commands claimed from the database");
    describe_counter!(WORKFLOWS_SUBMITTED, "Workflow instances this master started");
    describe_counter!(WORKFLOWS_FINISHED, "Workflow instances finished, by state");
    describe_gauge!(WORKFLOWS_RUNNING, "Workflow instances with a runner on this master");
    describe_counter!(TASKS_SUBMITTED, "Task attempts queued for dispatch");
    describe_counter!(TASKS_DISPATCHED, "Task attempts accepted by a worker");
    describe_counter!(TASKS_DISPATCH_FAILED, "Dispatch attempts rejected or failed, by reason");
    describe_counter!(TASKS_FINISHED, "Task attempts finished, by state");
    describe_counter!(TASKS_RETRIED, "Task retries scheduled");
    describe_counter!(TASKS_TIMED_OUT, "Task attempts that ran past their timeout, by timeout strategy");
    describe_counter!(WORKFLOWS_TIMED_OUT, "Workflow instances that ran past their timeout, by timeout strategy");
    describe_gauge!(TASKS_WAITING_FOR_WORKER, "Tasks waiting because their worker group has no free worker");
    describe_counter!(SCHEDULE_FIRES, "Runs this master started at a schedule's fire time");
    describe_counter!(DATABASE_ERRORS, "Database calls that failed (unreachable, or refused), by operation");
    describe_histogram!(WORKFLOW_SECONDS, metrics::Unit::Seconds, "Run durations from start to end, by end state");
    describe_histogram!(
        TASK_SECONDS,
        metrics::Unit::Seconds,
        "Task attempt durations as the master recorded them, by end state"
    );
    describe_gauge!(WORKERS, "Live workers this master can dispatch to, by worker group");
    describe_gauge!(FREE_SLOTS, "Free slots of the live workers this master can dispatch to, by worker group");
    describe_counter!(
        FAILOVERS,
        "Failovers this master carried out, by kind: runs taken over from a lost master, workers whose attempts were failed over"
    );
    describe_histogram!(
        TAKEOVER_SECONDS,
        metrics::Unit::Seconds,
        "Time of the conditional write that takes one run of a lost master over"
    );
    describe_counter!(
        REGISTRATIONS_LOST,
        "Times this master's registry lease ended under it (a pause, a partition): it stopped dispatching until registered again"
    );
    describe_gauge!(
        CLUSTER_WORKFLOWS,
        "Unfinished workflow instances in the whole cluster, by state, as the database holds them (updated every second)"
    );
    describe_gauge!(WORKFLOWS_WITHOUT_OWNER, "Unfinished workflow instances whose owner is not a live master");
    describe_counter!(TASKS_FAILED_OVER, "Task attempts failed over to a new attempt because their worker was lost");
    describe_counter!(STATE_EVENTS_HANDLED, "State events handled, by kind");
    describe_counter!(STATE_EVENTS_IGNORED, "State events with nothing to do (duplicate, late or stale), by kind");
    describe_counter!(STATE_EVENTS_RETRIED, "State event handling attempts that failed and will be retried, by kind");
    describe_counter!(STATE_EVENTS_DROPPED, "State events dropped and dead-lettered, by kind");
    describe_gauge!(WORKFLOWS_STALLED, "Workflow instances whose event handling keeps failing");
    describe_counter!(TASK_EVENTS_REJECTED, "Malformed task events received from workers");
    describe_counter!(
        TASK_EVENTS_REFUSED,
        "Task events refused and never applied, by reason: unauthenticated (the sender is not the worker it claims), not_the_attempts_worker"
    );
    describe_counter!(
        ADMIN_CALLS_REFUSED,
        "AdminService calls refused, by reason: no_token, unknown_token, role (the token's role is too low)"
    );
    describe_counter!(
        DEAD_LETTERS_SUPPRESSED,
        "Dead letters not stored one by one because their source sent too many at once (each source's are summarised in one row)"
    );
    describe_counter!(
        PERSIST_TRANSACTIONS,
        "Transactions that saved runs' state changes, by kind: several runs' together (group commit) or one run's alone"
    );
    describe_counter!(PERSIST_RUNS_TOGETHER, "Runs' state changes saved in transactions of several runs");
    describe_gauge!(
        PERSIST_WAITING,
        "Runs' state changes waiting for a transaction to save them (the database is behind)"
    );
    describe_histogram!(DISPATCH_SECONDS, metrics::Unit::Seconds, "Time from queueing a task to a worker accepting it");
    describe_histogram!(
        STATE_EVENT_SECONDS,
        metrics::Unit::Seconds,
        "Time a runner took to handle one state event, database writes and retries included, by kind"
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Task attempts queued on this master for dispatch (ready, or waiting for a worker of their group), by workflow priority"
    );
}

fn register_at_zero() {
    for name in [
        COMMANDS_CONSUMED,
        WORKFLOWS_SUBMITTED,
        TASKS_SUBMITTED,
        TASKS_DISPATCHED,
        TASKS_RETRIED,
        SCHEDULE_FIRES,
        TASK_EVENTS_REJECTED,
        TASKS_FAILED_OVER,
        REGISTRATIONS_LOST,
    ] {
        counter!(name).increment(0);
    }
    for state in porpoise_core::ExecutionState::ALL.into_iter().filter(|s| !s.is_terminal()) {
        gauge!(CLUSTER_WORKFLOWS, "state" => state.as_str()).increment(0.0);
    }
    for name in [WORKFLOWS_RUNNING, WORKFLOWS_STALLED, TASKS_WAITING_FOR_WORKER, WORKFLOWS_WITHOUT_OWNER] {
        gauge!(name).increment(0.0);
    }
    for operation in DATABASE_OPERATIONS {
        counter!(DATABASE_ERRORS, "operation" => operation).increment(0);
    }
    for state in ["success", "failure", "stopped", "discarded"] {
        counter!(WORKFLOWS_FINISHED, "state" => state).increment(0);
    }
    let task_end =
        |s: &porpoise_core::ExecutionState| s.is_terminal() && *s != porpoise_core::ExecutionState::Discarded;
    for state in porpoise_core::ExecutionState::ALL.into_iter().filter(task_end) {
        counter!(TASKS_FINISHED, "state" => state.as_str()).increment(0);
    }
    for priority in porpoise_core::Priority::ALL {
        gauge!(QUEUE_DEPTH, "priority" => priority.as_str()).increment(0.0);
    }
    gauge!(WORKERS, "group" => porpoise_core::spec::DEFAULT_WORKER_GROUP).increment(0.0);
    gauge!(FREE_SLOTS, "group" => porpoise_core::spec::DEFAULT_WORKER_GROUP).increment(0.0);
    counter!(FAILOVERS, "kind" => "worker").increment(0);
    counter!(FAILOVERS, "kind" => "master").increment(0);
    for reason in REFUSALS {
        counter!(TASK_EVENTS_REFUSED, "reason" => reason).increment(0);
    }
    counter!(DEAD_LETTERS_SUPPRESSED).increment(0);
    for kind in PERSIST_KINDS {
        counter!(PERSIST_TRANSACTIONS, "kind" => kind).increment(0);
    }
    counter!(PERSIST_RUNS_TOGETHER).increment(0);
    gauge!(PERSIST_WAITING).set(0.0);
    for reason in ADMIN_REFUSALS {
        counter!(ADMIN_CALLS_REFUSED, "reason" => reason).increment(0);
    }
    for reason in ["invalid", "full", "draining", "unreachable"] {
        counter!(TASKS_DISPATCH_FAILED, "reason" => reason).increment(0);
    }
    for strategy in TimeoutStrategy::ALL {
        counter!(TASKS_TIMED_OUT, "strategy" => strategy.as_str()).increment(0);
        counter!(WORKFLOWS_TIMED_OUT, "strategy" => strategy.as_str()).increment(0);
    }
    for kind in StateEventKind::ALL {
        for name in [STATE_EVENTS_HANDLED, STATE_EVENTS_IGNORED, STATE_EVENTS_RETRIED, STATE_EVENTS_DROPPED] {
            counter!(name, "kind" => kind.as_str()).increment(0);
        }
    }
}
