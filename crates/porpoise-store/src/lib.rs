//! Porpoise's persistence: one async API ([`Store`]) over sqlx, with a Postgres implementation
//! for clusters and a SQLite one for standalone. Both apply the migrations under
//! `migrations/<backend>/` when they open.
//!
//! Every state update is conditional on the state the writer expects and on the owner (the
//! master) it believes holds the workflow instance, so a stale writer is refused with
//! [`StoreError::Conflict`] instead of overwriting newer state.

/// The store's error type and how database failures map to retryable or not.
pub mod error;
/// The Postgres store.
pub mod postgres;
/// The SQLite store.
pub mod sqlite;
/// Rows and the values written to them.
pub mod types;

mod sql;

use async_trait::async_trait;
use porpoise_core::{ExecutionState, WorkflowSpec};

pub use error::StoreError;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use types::*;

/// Results of store calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Wake-ups from the database: for queued commands, so that masters claim them at once instead
/// of at their next poll; for ended runs, so that a wait for a run is answered at once.
#[async_trait]
pub trait CommandFeed: Send {
    /// Returns when what the feed is about may have happened since the previous call. An error
    /// means the feed broke: poll meanwhile, and open a new feed later.
    async fn next(&mut self) -> Result<()>;
}

/// Everything Porpoise keeps in its database.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Which database this is.
    fn backend(&self) -> Backend;
    /// A feed of wake-ups for queued commands: on Postgres, LISTEN/NOTIFY, which reaches every
    /// master; on SQLite, the commands queued through this store (one process).
    async fn command_feed(&self) -> Result<Box<dyn CommandFeed>>;
    /// A feed of wake-ups for ended runs: on Postgres, LISTEN/NOTIFY, which reaches every master
    /// whoever ended the run; on SQLite, none (one process: its master knows its runs' ends).
    async fn run_end_feed(&self) -> Result<Box<dyn CommandFeed>>;
    /// Closes the store's connections, after those in use are given back.
    async fn close(&self);
    /// Whether the database answers a trivial query now.
    async fn ping(&self) -> Result<()>;

    /// Stores `spec` as the newest version of its workflow, unless the newest version is
    /// identical, in which case nothing changes.
    async fn apply_definition(&self, spec: &WorkflowSpec, spec_yaml: &str) -> Result<ApplyOutcome>;
    /// The newest version of workflow `name`.
    async fn latest_definition(&self, name: &str) -> Result<Option<WorkflowDefinition>>;
    /// One definition version by id.
    async fn definition(&self, id: i64) -> Result<Option<WorkflowDefinition>>;
    /// The newest version of every workflow, by name.
    async fn list_definitions(&self) -> Result<Vec<WorkflowDefinition>>;

    /// Queues a command for a master to claim.
    async fn insert_command(&self, command: &NewCommand) -> Result<i64>;
    /// Claims up to `limit` unclaimed start commands for `owner`, most urgent and oldest first, and
    /// in the same transaction makes `owner` the owner of the run each one starts (adopting the
    /// unowned run the command names, bumping its epoch, or creating the run when the command
    /// names none). Concurrent claimers never claim the same command.
    async fn claim_commands(&self, owner: &str, limit: u32) -> Result<Vec<Command>>;

    /// Requests a run: creates an unowned workflow instance in `submitted` and the command that
    /// starts it, in one transaction. Returns the instance and the command id.
    async fn create_run(&self, run: &NewRun) -> Result<(WorkflowInstance, i64)>;
    /// Requests `count` runs alike, as [`Store::create_run`] does, all in one transaction.
    /// Returns the instances, in order.
    async fn create_runs(&self, run: &NewRun, count: u32) -> Result<Vec<WorkflowInstance>>;
    /// Runs of one workflow (or of all), in one state (or any), newest first.
    async fn list_workflow_instances(
        &self,
        workflow_name: Option<&str>,
        state: Option<ExecutionState>,
        limit: u32,
    ) -> Result<Vec<WorkflowInstance>>;
    /// Reruns run `id`, which has ended, in one transaction: each of `tasks`, if still in the
    /// state and attempt it expects, becomes its new state as a new attempt with fresh retries;
    /// the run goes back to `submitted` with no owner, and a start command is queued for any
    /// master to claim. Returns the command's id.
    async fn rerun(&self, id: i64, tasks: &[porpoise_core::engine::RerunTask]) -> Result<i64>;
    /// The control commands not yet carried out for runs `owner` owns, oldest first.
    async fn pending_control_commands(&self, owner: &str) -> Result<Vec<Command>>;
    /// Every control command of run `id`, carried out or not, oldest first.
    async fn control_commands_of(&self, id: i64) -> Result<Vec<Command>>;
    /// Version `version` of workflow `name`.
    async fn definition_version(&self, name: &str, version: i32) -> Result<Option<WorkflowDefinition>>;
    /// Creates a workflow instance owned by `new.owner`.
    async fn create_workflow_instance(&self, new: &NewWorkflowInstance) -> Result<WorkflowInstance>;
    async fn workflow_instance(&self, id: i64) -> Result<Option<WorkflowInstance>>;
    /// Instances owned by `owner` that are not finished.
    async fn unfinished_workflow_instances_of(&self, owner: &str) -> Result<Vec<WorkflowInstance>>;
    /// Instances in one of `states`, oldest first.
    async fn workflow_instances_in(&self, states: &[ExecutionState], limit: u32) -> Result<Vec<WorkflowInstance>>;
    /// Makes `write` to instance `id` if it is still in the state the write expects and owned
    /// by `owner`; otherwise [`StoreError::Conflict`] says what was found.
    async fn update_workflow_state(
        &self,
        owner: &str,
        id: i64,
        write: &porpoise_core::engine::WorkflowWrite,
    ) -> Result<WorkflowInstance>;
    /// Hands an instance from `expected_owner` (at `expected_epoch`) to `new_owner`, bumping the
    /// epoch so that the previous owner's writes are refused from now on.
    async fn take_over_workflow_instance(
        &self,
        id: i64,
        expected_owner: &str,
        expected_epoch: i64,
        new_owner: &str,
    ) -> Result<WorkflowInstance>;

    /// Creates task instances for a workflow instance owned by `owner`, in one transaction.
    /// Idempotent: a task instance that already exists is returned as it is.
    async fn create_task_instances(&self, owner: &str, new: &[NewTaskInstance]) -> Result<Vec<TaskInstance>>;
    /// Makes the writes of one engine transition for run `run`, owned by `owner`, in one
    /// transaction: all of them or, when one is refused ([`StoreError::Conflict`] says what was
    /// found; [`StoreError::NoFreeSlot`] that a task group has no slot for the task), none. Returns the task instances a [`porpoise_core::engine::Write::CreateTasks`]
    /// created (or found already there).
    async fn persist(
        &self,
        owner: &str,
        run: i64,
        writes: &[porpoise_core::engine::Write],
    ) -> Result<Vec<TaskInstance>>;
    /// Makes the writes of several runs (each a unit as [`Store::persist`] takes it, all owned
    /// by `owner`) in one transaction. `Ok(Some(created))`, per unit, when all were made;
    /// `Ok(None)` when one was refused (or the store does not batch) and nothing was written:
    /// persist each alone then, to learn which and why.
    async fn persist_together(
        &self,
        owner: &str,
        units: &[(i64, &[porpoise_core::engine::Write])],
    ) -> Result<Option<Vec<Vec<TaskInstance>>>> {
        let _ = (owner, units);
        Ok(None)
    }
    async fn task_instance(&self, id: i64) -> Result<Option<TaskInstance>>;
    /// Every task instance of a workflow instance, by id.
    async fn task_instances_of(&self, workflow_instance_id: i64) -> Result<Vec<TaskInstance>>;
    /// Task instances on worker `worker_addr` in one of `states`.
    async fn task_instances_on_worker(&self, worker_addr: &str, states: &[ExecutionState])
    -> Result<Vec<TaskInstance>>;
    /// Makes `write` if the task instance is still in the state and attempt it expects and its
    /// workflow instance is owned by `owner`; otherwise [`StoreError::Conflict`] says what was
    /// found.
    async fn update_task_state(&self, owner: &str, write: &porpoise_core::engine::TaskWrite) -> Result<TaskInstance>;

    /// Stores `spec` as workflow `name`'s schedule (`from_spec`: set by the workflow's spec, and
    /// replaced by the next apply). A new or changed schedule fires from now on; a paused one
    /// stays paused.
    async fn put_schedule(
        &self,
        name: &str,
        spec: &porpoise_core::schedule::ScheduleSpec,
        from_spec: bool,
    ) -> Result<ScheduleRow>;
    /// Workflow `name`'s schedule.
    async fn schedule(&self, name: &str) -> Result<Option<ScheduleRow>>;
    /// Every schedule, by workflow name.
    async fn schedules(&self) -> Result<Vec<ScheduleRow>>;
    /// Pauses or resumes workflow `name`'s schedule ([`StoreError::NotFound`] if none). A
    /// resumed schedule fires from now on: nothing for the time it was paused.
    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<ScheduleRow>;
    /// Deletes workflow `name`'s schedule ([`StoreError::NotFound`] if none).
    async fn delete_schedule(&self, name: &str) -> Result<()>;
    /// One look at the schedules at `now`, in one transaction that masters take in turn. The
    /// fire times due were missed when no master looked for longer than `max_gap`. For each
    /// schedule not paused, `plan` says what to fire; each fire time fires once — a run of the
    /// workflow's newest version with the fire time as its schedule time, and its start command —
    /// recorded under a unique (workflow, fire time) key. Returns the runs fired.
    async fn fire_schedules(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        max_gap: std::time::Duration,
        plan: &PlanFires<'_>,
    ) -> Result<Vec<FiredRun>>;

    /// One look at the held runs (`waiting`, unowned: runs of serial workflows and backfill
    /// dates), in one transaction masters take in turn: `decide` says, from a snapshot, which
    /// are released (submitted, with their start command), discarded or stopped, and which
    /// backfills are over.
    async fn release_waiting(&self, decide: &DecideReleases<'_>) -> Result<Released>;
    /// Creates a backfill and its runs, held until their turn, in one transaction.
    async fn create_backfill(&self, new: &NewBackfill) -> Result<(BackfillRow, Vec<WorkflowInstance>)>;
    /// Backfill `id` and its runs, in order.
    async fn backfill(&self, id: i64) -> Result<Option<(BackfillRow, Vec<WorkflowInstance>)>>;
    /// Stops run `id` if it is still held (`waiting`, unowned); `false` if it is not.
    async fn stop_waiting_run(&self, id: i64, reason: &str) -> Result<bool>;

    /// Creates task group `name` with `slots` slots.
    async fn create_task_group(&self, name: &str, slots: i32, description: &str) -> Result<TaskGroup>;
    /// Task group `name`, with its slots in use and its waiters.
    async fn task_group(&self, name: &str) -> Result<Option<TaskGroup>>;
    /// Every task group, by name.
    async fn task_groups(&self) -> Result<Vec<TaskGroup>>;
    /// Changes task group `name`'s slots and/or description ([`StoreError::NotFound`] if none).
    async fn update_task_group(&self, name: &str, slots: Option<i32>, description: Option<&str>) -> Result<TaskGroup>;
    /// Deletes task group `name` ([`StoreError::NotFound`] if none).
    async fn delete_task_group(&self, name: &str) -> Result<()>;

    /// Stores API token `name` with `role`, as the hash of its secret
    /// ([`StoreError::Conflict`] if the name is taken).
    async fn create_api_token(&self, name: &str, role: &str, token_hash: &str) -> Result<ApiToken>;
    /// The token whose secret hashes to `token_hash`.
    async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>>;
    /// Every API token, by name.
    async fn api_tokens(&self) -> Result<Vec<ApiToken>>;
    /// Deletes token `name`; `false` if there was none.
    async fn delete_api_token(&self, name: &str) -> Result<bool>;

    /// Records a state event that was dropped, with the reason.
    async fn record_dead_letter(&self, letter: &NewDeadLetter) -> Result<i64>;
    /// The newest dead letters first.
    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>>;
}
