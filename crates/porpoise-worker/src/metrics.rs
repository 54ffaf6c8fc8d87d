//! The worker's metric names, descriptions, and their registration at 0 at start (so a scrape
//! shows the whole set before anything happened).

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

pub const TASKS_RUNNING: &str = "porpoise_worker_tasks_running";
pub const SLOTS: &str = "porpoise_worker_slots";
pub const DISPATCHES: &str = "porpoise_worker_dispatches_total";
pub const TASK_SECONDS: &str = "porpoise_worker_task_duration_seconds";
pub const EVENTS_UNACKED: &str = "porpoise_worker_events_unacked";
pub const EVENT_RESENDS: &str = "porpoise_worker_event_resends_total";
pub const JOURNAL_BYTES: &str = "porpoise_worker_journal_bytes";
pub const JOURNAL_SYNCS: &str = "porpoise_worker_journal_syncs_total";
pub const DATA_DIR_WRITABLE: &str = "porpoise_worker_data_dir_writable";

/// Every metric the worker exports (dashboards and alerts may use only these).
pub const ALL: &[&str] = &[
    TASKS_RUNNING,
    SLOTS,
    DISPATCHES,
    TASK_SECONDS,
    EVENTS_UNACKED,
    EVENT_RESENDS,
    JOURNAL_BYTES,
    JOURNAL_SYNCS,
    DATA_DIR_WRITABLE,
];

/// The answers a dispatch gets, as metric labels.
pub const DISPATCH_ANSWERS: [&str; 4] = ["accepted", "full", "draining", "invalid"];
/// How a task attempt ends, as metric labels.
pub const OUTCOMES: [&str; 5] = ["success", "failure", "timed_out", "killed", "worker_stopped"];

/// A protobuf enum value's name as a metric label: `TASK_OUTCOME_TIMED_OUT` → `timed_out`.
pub fn label(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_ascii_lowercase()
}

/// Describes every metric and registers each at 0.
pub fn register(slots: u32) {
    describe_gauge!(TASKS_RUNNING, "Task attempts running on this worker");
    describe_gauge!(SLOTS, "Task attempts this worker runs at once at most");
    describe_counter!(DISPATCHES, "Dispatches this worker answered, by answer");
    describe_histogram!(TASK_SECONDS, metrics::Unit::Seconds, "Task attempt durations, by outcome");
    describe_gauge!(EVENTS_UNACKED, "Task events no master has acknowledged yet");
    describe_counter!(EVENT_RESENDS, "Task event batches sent again after a failed delivery");
    describe_gauge!(JOURNAL_BYTES, "Size of the worker's event journal");
    describe_counter!(
        JOURNAL_SYNCS,
        "Flushes of the event journal to disk (each serves the records written before it)"
    );
    describe_gauge!(
        DATA_DIR_WRITABLE,
        "1 while the worker's data directory can be written; 0 while it takes no tasks because it cannot"
    );
    gauge!(TASKS_RUNNING).set(0.0);
    gauge!(SLOTS).set(f64::from(slots));
    for answer in DISPATCH_ANSWERS {
        counter!(DISPATCHES, "answer" => answer).increment(0);
    }
    for outcome in OUTCOMES {
        // a histogram shows once it has a sample; the label set is known from the start
        let _ = histogram!(TASK_SECONDS, "outcome" => outcome);
    }
    gauge!(EVENTS_UNACKED).set(0.0);
    counter!(EVENT_RESENDS).increment(0);
    gauge!(JOURNAL_BYTES).set(0.0);
    counter!(JOURNAL_SYNCS).increment(0);
    gauge!(DATA_DIR_WRITABLE).set(1.0);
    porpoise_registry::metrics::describe();
}
