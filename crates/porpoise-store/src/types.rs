//! The rows the store keeps and the values written to them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use porpoise_core::{ExecutionState, Priority};

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// One version of a workflow definition.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowDefinition {
    pub id: i64,
    pub name: String,
    pub version: i32,
    /// The YAML the user applied.
    pub spec_yaml: String,
    /// The validated spec in canonical JSON (`porpoise_core::WorkflowSpec`).
    pub spec_json: String,
    pub task_count: i32,
    pub created_at: DateTime<Utc>,
}

/// What applying a spec did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The first version of a new workflow.
    Created { id: i64, version: i32 },
    /// A new version of an existing workflow.
    Updated { id: i64, version: i32 },
    /// The newest version was identical: nothing changed.
    Unchanged { id: i64, version: i32 },
}

impl ApplyOutcome {
    pub fn version(self) -> i32 {
        match self {
            Self::Created { version, .. } | Self::Updated { version, .. } | Self::Unchanged { version, .. } => version,
        }
    }

    pub fn definition_id(self) -> i64 {
        match self {
            Self::Created { id, .. } | Self::Updated { id, .. } | Self::Unchanged { id, .. } => id,
        }
    }
}

/// What a command asks a master to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// Start a new run of a workflow definition; any master claims it.
    StartWorkflow,
    /// An operator's control of a run; the master that owns the run carries it out.
    Control(porpoise_core::engine::Control),
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        use porpoise_core::engine::Control;
        match self {
            Self::StartWorkflow => "start-workflow",
            Self::Control(Control::Stop) => "stop-workflow",
            Self::Control(Control::Pause) => "pause-workflow",
            Self::Control(Control::Resume) => "resume-workflow",
            Self::Control(Control::KillTask) => "kill-task",
            Self::Control(Control::MarkSuccess) => "mark-success",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        use porpoise_core::engine::Control;
        Some(match s {
            "start-workflow" => Self::StartWorkflow,
            "stop-workflow" => Self::Control(Control::Stop),
            "pause-workflow" => Self::Control(Control::Pause),
            "resume-workflow" => Self::Control(Control::Resume),
            "kill-task" => Self::Control(Control::KillTask),
            "mark-success" => Self::Control(Control::MarkSuccess),
            _ => return None,
        })
    }
}

/// A command to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCommand {
    pub kind: CommandKind,
    pub workflow_definition_id: i64,
    /// The run the command starts, when it was created with one.
    pub workflow_instance_id: Option<i64>,
    pub params: BTreeMap<String, String>,
    pub priority: Priority,
}

/// A stored command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: i64,
    pub kind: CommandKind,
    pub workflow_definition_id: i64,
    pub workflow_instance_id: Option<i64>,
    pub params: BTreeMap<String, String>,
    pub priority: Priority,
    pub created_at: DateTime<Utc>,
    pub claimed_by: Option<String>,
    pub claimed_at: Option<DateTime<Utc>>,
}

impl TaskInstance {
    /// The task instance as the engine knows it, with its task's name.
    pub fn engine_state(&self) -> (String, porpoise_core::engine::TaskState) {
        let state = porpoise_core::engine::TaskState {
            id: self.id,
            state: self.state,
            attempt: self.attempt,
            failovers: self.failovers,
            rerun_base: self.rerun_base,
            worker: self.worker_addr.clone(),
            exit_code: self.exit_code,
            started_at: self.started_at,
            ended_at: self.ended_at,
            awaiting_slot: self.state == ExecutionState::Waiting && self.group_waiting_since.is_some(),
        };
        (self.task_name.clone(), state)
    }
}

impl Command {
    /// The task instance a task command (a kill) is about, from its params.
    pub fn task_instance_id(&self) -> Option<i64> {
        self.params.get(TASK_INSTANCE_PARAM).and_then(|v| v.parse().ok())
    }
}

/// The param of a task command naming its task instance.
pub const TASK_INSTANCE_PARAM: &str = "task_instance_id";

/// A run to request: an unowned workflow instance and the command that starts it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub workflow_definition_id: i64,
    pub workflow_name: String,
    pub priority: Priority,
    pub params: BTreeMap<String, String>,
    /// The time its date parameters are computed from, in `timezone`.
    pub schedule_time: DateTime<Utc>,
    pub timezone: String,
    pub kind: RunKind,
    /// The workflow's execution type: a run of a serial workflow is held `waiting` until its
    /// turn.
    pub execution: porpoise_core::Execution,
    /// Its backfill and its place there: held `waiting` until its turn too.
    pub backfill: Option<(i64, i32)>,
}

impl NewRun {
    /// Whether the run waits for its turn rather than starting at once.
    pub fn held(&self) -> bool {
        self.execution != porpoise_core::Execution::Parallel || self.backfill.is_some()
    }
}

/// A backfill to create: one run per date, held until their turn.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBackfill {
    pub workflow_name: String,
    pub parallel: u32,
    pub keep_going: bool,
    /// In the order they run; their `backfill` is set by the store.
    pub runs: Vec<NewRun>,
}

/// A stored backfill.
#[derive(Debug, Clone, PartialEq)]
pub struct BackfillRow {
    pub id: i64,
    pub workflow_name: String,
    pub parallel: u32,
    pub keep_going: bool,
    /// running, success, failure or stopped.
    pub state: String,
    pub state_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What one look at the held runs did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Released {
    pub released: Vec<i64>,
    pub discarded: Vec<i64>,
    pub stopped: Vec<i64>,
    /// Backfills that ended, with whether they succeeded.
    pub backfills_ended: Vec<(i64, bool)>,
}

/// Decides, from a snapshot of the held runs, what happens to them.
pub type DecideReleases<'a> =
    dyn Fn(&porpoise_core::release::Snapshot) -> porpoise_core::release::Decisions + Send + Sync + 'a;

/// How a run was started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunKind {
    /// `porpoise run` (or the API): its schedule time is when it was requested.
    #[default]
    Manual,
    /// A fire time of its workflow's schedule.
    Schedule,
    /// One date of a backfill.
    Backfill,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Schedule => "schedule",
            Self::Backfill => "backfill",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Manual, Self::Schedule, Self::Backfill].into_iter().find(|k| k.as_str() == s)
    }
}

/// A workflow's schedule as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRow {
    pub workflow_name: String,
    pub spec: porpoise_core::schedule::ScheduleSpec,
    /// Set by the workflow's spec (an apply replaces it), not by `porpoise schedule create`.
    pub from_spec: bool,
    pub paused: bool,
    /// Every fire time up to here is done with (fired or skipped).
    pub done_until: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A run a schedule fired.
#[derive(Debug, Clone, PartialEq)]
pub struct FiredRun {
    pub workflow_name: String,
    pub fire_time: DateTime<Utc>,
    pub run_id: i64,
}

/// What a look at the schedules decides for one of them: given the row and whether its due
/// fire times were missed (no master was up), the plan.
pub type PlanFires<'a> = dyn Fn(&ScheduleRow, bool) -> porpoise_core::schedule::FirePlan + Send + Sync + 'a;

/// A workflow instance to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWorkflowInstance {
    pub workflow_definition_id: i64,
    pub command_id: Option<i64>,
    pub workflow_name: String,
    pub owner: String,
    pub priority: Priority,
    pub params: BTreeMap<String, String>,
    pub state: ExecutionState,
}

/// A stored workflow instance (a run).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowInstance {
    pub id: i64,
    pub workflow_definition_id: i64,
    pub command_id: Option<i64>,
    pub workflow_name: String,
    pub state: ExecutionState,
    /// Why it is in its state, where there is more to say.
    pub state_reason: Option<String>,
    pub owner: Option<String>,
    /// Bumped on every change of owner; fences writes of an earlier owner.
    pub epoch: i64,
    pub priority: Priority,
    pub params: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// The time its date parameters are computed from (runs from before schedules: none).
    pub schedule_time: Option<DateTime<Utc>>,
    pub timezone: String,
    pub kind: RunKind,
    pub execution: porpoise_core::Execution,
    /// The backfill it is a date of.
    pub backfill_id: Option<i64>,
}

/// A task instance to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTaskInstance {
    pub workflow_instance_id: i64,
    pub task_name: String,
    pub state: ExecutionState,
}

/// A stored task instance: one task of one run, across its attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskInstance {
    pub id: i64,
    pub workflow_instance_id: i64,
    pub task_name: String,
    pub state: ExecutionState,
    /// 1 for the first attempt, raised by each retry.
    pub attempt: i32,
    /// The worker the current attempt was dispatched to.
    pub worker_addr: Option<String>,
    pub exit_code: Option<i32>,
    /// What a user should know that the state does not say (an attempt ran past its timeout).
    pub warning: Option<String>,
    /// Attempts failed over because their worker was lost (they do not count as retries).
    pub failovers: i32,
    /// The attempts it had before its run was last rerun (they do not count as retries).
    pub rerun_base: i32,
    /// The task group it takes a slot of, and its priority among the group's waiters.
    pub task_group: Option<String>,
    pub task_group_priority: i32,
    /// Since when it waits for a slot of its task group (`None` when it does not).
    pub group_waiting_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// A task group: at most `slots` of its task instances hold a slot (are on their way to a
/// worker or on one) at once.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskGroup {
    pub name: String,
    pub slots: i32,
    pub description: String,
    /// Task instances holding a slot now.
    pub used: i64,
    /// Task instances waiting for a slot (in runs that are running).
    pub waiting: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An API token as stored: its name, its role and when it was made (the token itself is kept
/// only as its hash).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiToken {
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
}

/// A dropped state event to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeadLetter {
    pub workflow_instance_id: Option<i64>,
    pub task_instance_id: Option<i64>,
    pub event_kind: String,
    /// The event, as JSON.
    pub event: String,
    pub reason: String,
}

/// A recorded dropped state event.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub id: i64,
    pub workflow_instance_id: Option<i64>,
    pub task_instance_id: Option<i64>,
    pub event_kind: String,
    pub event: String,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}
