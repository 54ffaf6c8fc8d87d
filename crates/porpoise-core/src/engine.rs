//! The run engine, free of I/O: a run's state, the typed events that change it, and the pure
//! transition function `(state, event) → (new state, writes, effects)`. The master's runner
//! persists a transition's writes as one unit, then adopts its state, then carries out its
//! effects (queue a task, free a slot, set a timer, count and log). Nothing here reads a clock,
//! a database or the network: the time is an argument, so tests drive it directly.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    Dag, DropReason, ExecutionState, FailureStrategy, StateEventKind, TaskSpec, TimeoutStrategy, WorkflowSpec,
};

use ExecutionState::*;

/// One attempt of one task instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRef {
    pub task_instance_id: i64,
    pub attempt: i32,
}

/// An event for one run's runner; each kind has one handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Start a new run (`submitted` → `running`).
    Start,
    /// The dispatcher chose `worker` for the attempt; recorded before the dispatch leaves.
    Dispatched { at: AttemptRef, worker: String },
    /// The dispatch was refused by `worker` (or never reached it): queue the attempt again
    /// after `after`, to another worker if one can take it.
    Requeue { at: AttemptRef, worker: Option<String>, after: Duration },
    /// The worker started the attempt. Only the worker that holds the attempt may say so.
    Running { at: AttemptRef, worker: String, started_at: Option<DateTime<Utc>> },
    /// The attempt ended (a failure may be retried).
    Ended(Ending),
    /// The retry interval of a delayed task is over.
    RetryDue { at: AttemptRef },
    /// A `warn` timeout ran out while the attempt may still run.
    TimeoutDue { at: AttemptRef },
    /// A worker left and stayed away past the grace period.
    WorkerLost { worker: String },
    /// One attempt on a lost (or stopped) worker is failed over to a new attempt.
    Failover { at: AttemptRef, worker: String, why: String },
    /// An operator's control command (stored first; `command` is its id, applied in order);
    /// `task` is the task instance it is about (a task kill).
    Control {
        command: i64,
        action: Control,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<i64>,
    },
    /// The run's own timeout ran out.
    WorkflowTimeoutDue,
    /// A task waiting for a slot of its task group tries to take one (when a slot may have
    /// been freed, and now and then).
    SlotDue { at: AttemptRef },
    /// The task waited for a worker of its group past its `worker_group_wait`: it fails.
    NoWorker { at: AttemptRef, reason: String },
}

/// What an operator asks of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// Kill what runs, start nothing more, end the run `stopped`.
    Stop,
    /// Start nothing more, let what runs finish, end `paused`.
    Pause,
    /// Carry on a paused run.
    Resume,
    /// Kill one task: on its worker if it runs there (it ends `killed`; one not yet on a
    /// worker ends `stopped`), and the run fails
    /// (as a task failure does, by its failure strategy).
    KillTask,
    /// Mark one task that ended without success as successful (`forced-success`): the run goes
    /// on as if it had succeeded.
    MarkSuccess,
}

impl Control {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::KillTask => "kill-task",
            Self::MarkSuccess => "mark-success",
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ending {
    pub at: AttemptRef,
    /// The worker that reports the end (or refused the attempt): it must be the one that holds
    /// the attempt. `None` when the master ends the attempt itself.
    pub worker: Option<String>,
    pub succeeded: bool,
    pub exit_code: Option<i32>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub message: String,
    /// The worker killed the attempt at its timeout.
    pub timed_out: bool,
}

impl Event {
    /// The kind, for metrics, logs and the dead-letter table.
    pub fn kind(&self) -> StateEventKind {
        match self {
            Self::Start => StateEventKind::WorkflowStateChange,
            Self::Dispatched { .. }
            | Self::Requeue { .. }
            | Self::Running { .. }
            | Self::Ended(_)
            | Self::NoWorker { .. } => StateEventKind::TaskStateChange,
            Self::RetryDue { .. } => StateEventKind::TaskRetry,
            Self::TimeoutDue { .. } => StateEventKind::TaskTimeout,
            Self::WorkerLost { .. } => StateEventKind::WorkerLost,
            Self::Failover { .. } => StateEventKind::TaskFailover,
            Self::Control { .. } => StateEventKind::Control,
            Self::WorkflowTimeoutDue => StateEventKind::WorkflowTimeout,
            Self::SlotDue { .. } => StateEventKind::TaskGroupSlot,
        }
    }

    /// The attempt the event is about, for task events.
    pub fn attempt(&self) -> Option<AttemptRef> {
        match self {
            Self::Dispatched { at, .. }
            | Self::Requeue { at, .. }
            | Self::Running { at, .. }
            | Self::RetryDue { at }
            | Self::TimeoutDue { at }
            | Self::Failover { at, .. }
            | Self::SlotDue { at }
            | Self::NoWorker { at, .. } => Some(*at),
            Self::Ended(e) => Some(e.at),
            Self::Start | Self::WorkerLost { .. } | Self::Control { .. } | Self::WorkflowTimeoutDue => None,
        }
    }
}

/// One task instance as the run knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskState {
    pub id: i64,
    pub state: ExecutionState,
    pub attempt: i32,
    /// Attempts failed over: they do not count against the task's retries.
    pub failovers: i32,
    /// Attempts before the run was last rerun: they do not count against the retries either.
    pub rerun_base: i32,
    pub worker: Option<String>,
    pub exit_code: Option<i32>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// `waiting` for a slot of its task group (rather than for the tasks it depends on).
    pub awaiting_slot: bool,
}

impl TaskState {
    fn is_on_worker(&self) -> bool {
        matches!(self.state, Dispatched | Running)
    }

    fn attempt_ref(&self) -> AttemptRef {
        AttemptRef { task_instance_id: self.id, attempt: self.attempt }
    }

    fn slot_due(&self) -> Effect {
        Effect::Post(Event::SlotDue { at: self.attempt_ref() })
    }
}

/// A run: its state and its task instances, by the task's index in the workflow.
///
/// Every event derives a new state from the current one, and the runner adopts it only once
/// the event's writes are durable. The task instances live in persistent collections, so that
/// copy costs what the event touches, not the size of the run; counts of tasks by kind and of
/// each task's upstream tasks that have not succeeded are kept as tasks change, so moving the
/// run on never rescans it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    pub state: ExecutionState,
    dag: Arc<Dag>,
    /// Shared, so that changing one task copies a chunk of pointers, not of task states (and a
    /// small run's fit in the vector itself).
    tasks: imbl::Vector<Option<Arc<TaskState>>>,
    by_id: imbl::HashMap<i64, usize>,
    /// Per task: how many of its upstream tasks have not succeeded.
    blocked: imbl::Vector<u32>,
    /// Tasks whose upstream tasks all succeeded that are not created yet, or that a rerun made
    /// wait for them: what moving the run on starts next.
    ready: imbl::OrdSet<usize>,
    tally: Tally,
    /// Why the run fails, once a task failed: nothing new starts, and the run ends `failure`.
    pub failing: Option<String>,
    /// A stop or pause under way, with its command: nothing new starts, and the run ends
    /// `stopped` or `paused` once no task is on a worker. The pending command is what makes it
    /// durable: a run rebuilt from the database applies it again.
    pub control: Option<(i64, Control)>,
    /// The newest control command applied: an older or repeated one changes nothing.
    pub last_command: i64,
    /// Why a stop under way stops the run.
    pub stop_reason: Option<String>,
    /// Task instances an operator asked to kill, with the command, until they end.
    pub killing: std::collections::BTreeMap<i64, i64>,
    /// When the run started, for its timeout.
    pub started_at: Option<DateTime<Utc>>,
}

/// How many task instances of a run are of each kind that moving the run on asks about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    created: usize,
    succeeded: usize,
    /// Not ended, and not waiting for upstream tasks (what waits for a slot is active).
    active: usize,
    on_worker: usize,
    delayed: usize,
    awaiting_slot: usize,
}

/// What [`Tally`] and the ready set count a task as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Kind {
    created: bool,
    succeeded: bool,
    active: bool,
    on_worker: bool,
    delayed: bool,
    awaiting_slot: bool,
    /// Waiting for its upstream tasks (a rerun made it).
    parked: bool,
}

impl Kind {
    fn of(task: Option<&TaskState>) -> Kind {
        let Some(t) = task else { return Kind::default() };
        let waiting = t.state == Waiting;
        Kind {
            created: true,
            succeeded: t.state.is_success(),
            active: !t.state.is_terminal() && (!waiting || t.awaiting_slot),
            on_worker: t.is_on_worker(),
            delayed: t.state == Delayed,
            awaiting_slot: waiting && t.awaiting_slot,
            parked: waiting && !t.awaiting_slot,
        }
    }
}

impl Tally {
    fn count(&mut self, kind: Kind, sign: isize) {
        let add = |n: &mut usize, on: bool| {
            if on {
                *n = n.wrapping_add_signed(sign);
            }
        };
        add(&mut self.created, kind.created);
        add(&mut self.succeeded, kind.succeeded);
        add(&mut self.active, kind.active);
        add(&mut self.on_worker, kind.on_worker);
        add(&mut self.delayed, kind.delayed);
        add(&mut self.awaiting_slot, kind.awaiting_slot);
    }
}

/// Task `idx` of a run, borrowed to change: the run's counts follow when it is given back.
struct TaskMut<'a> {
    run: &'a mut RunState,
    idx: usize,
    before: Kind,
}

impl std::ops::Deref for TaskMut<'_> {
    type Target = TaskState;
    fn deref(&self) -> &TaskState {
        self.run.tasks[self.idx].as_deref().expect("the engine changes only tasks it found")
    }
}

impl std::ops::DerefMut for TaskMut<'_> {
    fn deref_mut(&mut self) -> &mut TaskState {
        Arc::make_mut(self.run.tasks[self.idx].as_mut().expect("the engine changes only tasks it found"))
    }
}

impl Drop for TaskMut<'_> {
    fn drop(&mut self) {
        self.run.recount(self.idx, self.before);
    }
}

impl RunState {
    /// A run of `workflow` in `state` with the task instances `rows` (by task name) that the
    /// database holds; a new run has none. Returns the run and the names of rows that match
    /// no task of the workflow (left alone).
    pub fn rebuild(
        workflow: &Workflow,
        state: ExecutionState,
        rows: impl IntoIterator<Item = (String, TaskState)>,
    ) -> (RunState, Vec<String>) {
        let dag = workflow.dag.clone();
        let n = dag.len();
        let blocked: imbl::Vector<u32> = (0..n).map(|i| dag.upstream(i).len() as u32).collect();
        let ready = (0..n).filter(|&i| blocked[i] == 0).collect();
        let mut run = RunState {
            state,
            tasks: std::iter::repeat_n(None, n).collect(),
            dag,
            by_id: imbl::HashMap::new(),
            blocked,
            ready,
            tally: Tally::default(),
            failing: None,
            control: None,
            last_command: 0,
            stop_reason: None,
            killing: Default::default(),
            started_at: None,
        };
        let mut unknown = Vec::new();
        for (name, task) in rows {
            match workflow.dag.index_of(&name) {
                Some(idx) => run.insert(idx, task),
                None => unknown.push(name),
            }
        }
        run.failing = run.first_failure(workflow);
        (run, unknown)
    }

    /// Why the run fails, from the first task (in workflow order) that ended without success.
    fn first_failure(&self, workflow: &Workflow) -> Option<String> {
        self.tasks().find(|(_, t)| t.state.is_unsuccessful()).map(|(idx, t)| {
            let name = &workflow.task(idx).name;
            match t.state {
                Killed => killed_reason(name),
                _ => failure_reason(name, t.exit_code, ""),
            }
        })
    }

    fn insert(&mut self, idx: usize, task: TaskState) {
        let before = Kind::of(self.task(idx));
        if let Some(old) = self.task(idx).map(|t| t.id) {
            self.by_id.remove(&old);
        }
        self.by_id.insert(task.id, idx);
        self.tasks.set(idx, Some(Arc::new(task)));
        self.recount(idx, before);
    }

    /// Task `idx`'s instance, once created.
    pub fn task(&self, idx: usize) -> Option<&TaskState> {
        self.tasks.get(idx).and_then(Option::as_deref)
    }

    /// The index and state of task instance `id`.
    pub fn task_by_id(&self, id: i64) -> Option<(usize, &TaskState)> {
        let idx = *self.by_id.get(&id)?;
        Some((idx, self.task(idx)?))
    }

    /// Every created task instance with its index.
    pub fn tasks(&self) -> impl Iterator<Item = (usize, &TaskState)> {
        self.tasks.iter().enumerate().filter_map(|(i, t)| t.as_deref().map(|t| (i, t)))
    }

    /// Task `idx`'s instance, to change; it must exist.
    fn task_mut(&mut self, idx: usize) -> TaskMut<'_> {
        let before = Kind::of(self.task(idx));
        TaskMut { run: self, idx, before }
    }

    /// Brings the counts and the ready set up to date after task `idx`, counted as `before`,
    /// changed.
    fn recount(&mut self, idx: usize, before: Kind) {
        let after = Kind::of(self.task(idx));
        if after == before {
            return;
        }
        self.tally.count(before, -1);
        self.tally.count(after, 1);
        if before.succeeded != after.succeeded {
            let dag = self.dag.clone();
            for &d in dag.downstream(idx) {
                if let Some(b) = self.blocked.get_mut(d) {
                    *b = if after.succeeded { b.saturating_sub(1) } else { *b + 1 };
                }
                self.refresh_ready(d);
            }
        }
        self.refresh_ready(idx);
    }

    fn refresh_ready(&mut self, idx: usize) {
        let kind = Kind::of(self.task(idx));
        if self.blocked.get(idx) == Some(&0) && (!kind.created || kind.parked) {
            self.ready.insert(idx);
        } else {
            self.ready.remove(&idx);
        }
    }

    /// Adds task instances the database created for a transition's [`Write::CreateTasks`];
    /// returns the effects that follow (queue those waiting for a worker).
    pub fn created(&mut self, rows: impl IntoIterator<Item = (usize, TaskState)>) -> Vec<Effect> {
        let mut effects = Vec::new();
        for (idx, task) in rows {
            if idx >= self.tasks.len() {
                continue;
            }
            if task.state == Submitted {
                effects.push(Effect::Enqueue { task: idx, after: Duration::ZERO, avoid: None });
            } else if task.state == Waiting && task.awaiting_slot {
                effects.push(task.slot_due());
            }
            self.insert(idx, task);
        }
        effects
    }
}

/// A task instance a rerun starts again as a new attempt: found in `state` at `attempt`, it
/// becomes `new` (`submitted`; `waiting` for the tasks it depends on, or for a slot of its
/// task group when `await_slot`). `forced-success` is no new attempt: an operator marked it so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RerunTask {
    pub id: i64,
    pub state: ExecutionState,
    pub attempt: i32,
    pub new: ExecutionState,
    pub await_slot: bool,
}

/// A task instance to create, with the task group it takes a slot of (it starts `waiting`
/// for one) and its priority there; without a group it starts `submitted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    pub name: String,
    pub task_group: Option<String>,
    pub task_group_priority: i32,
}

/// The instance of task `name`, outside any task group.
impl From<&str> for NewTask {
    fn from(name: &str) -> Self {
        Self { name: name.to_string(), task_group: None, task_group_priority: 0 }
    }
}

/// A write a transition needs durable before its state is adopted.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Task(TaskWrite),
    Workflow(WorkflowWrite),
    /// Create the task instances of these tasks, attempt 1 (idempotent).
    CreateTasks(Vec<NewTask>),
    /// Move a task instance from `waiting` to `submitted` by taking a slot of its task group:
    /// refused, changing nothing, unless the group has a slot free and no waiter ahead of it.
    TakeSlot(TaskWrite),
    /// Mark control command `id` as carried out (idempotent).
    CompleteCommand(i64),
}

/// A conditional update of one task instance: refused unless it is still in `expected` at
/// `expected_attempt` and the run is still the writer's.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskWrite {
    pub id: i64,
    pub expected: ExecutionState,
    pub expected_attempt: i32,
    pub new: ExecutionState,
    /// Starts a new attempt.
    pub attempt: Option<i32>,
    pub worker: Option<String>,
    pub exit_code: Option<i32>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub warning: Option<String>,
    /// The attempt was failed over: counts one more failover.
    pub failover: bool,
    /// The task now waits for a slot of its task group (in line from now).
    pub await_slot: bool,
}

impl TaskWrite {
    /// A write that changes only the state of task instance `id`, expected in `expected` at
    /// `expected_attempt`.
    pub fn change(id: i64, expected: ExecutionState, expected_attempt: i32, new: ExecutionState) -> Self {
        Self {
            id,
            expected,
            expected_attempt,
            new,
            attempt: None,
            worker: None,
            exit_code: None,
            started_at: None,
            ended_at: None,
            warning: None,
            failover: false,
            await_slot: false,
        }
    }

    fn new(task: &TaskState, new: ExecutionState) -> Self {
        Self::change(task.id, task.state, task.attempt, new)
    }

    /// `next` expects what this write leaves: the two can be one write.
    fn continues_into(&self, next: &TaskWrite) -> bool {
        next.id == self.id
            && next.expected == self.new
            && next.expected_attempt == self.attempt.unwrap_or(self.expected_attempt)
            && !(self.failover && next.failover)
    }

    /// This write followed by `next`, as one.
    fn absorb(&mut self, next: TaskWrite) {
        self.new = next.new;
        self.attempt = next.attempt.or(self.attempt);
        self.worker = next.worker.or(self.worker.take());
        self.exit_code = next.exit_code.or(self.exit_code);
        self.started_at = next.started_at.or(self.started_at);
        self.ended_at = next.ended_at.or(self.ended_at);
        self.warning = next.warning.or(self.warning.take());
        self.failover |= next.failover;
        self.await_slot = next.await_slot;
    }
}

/// `writes` with each task write merged into the one before it on the same task instance when
/// it continues it, so that a task instance several events of one transaction change is
/// written once (dispatched, running and ended together: one update). The database ends in
/// the same state; the other writes keep their order.
pub fn coalesce(writes: Vec<Write>) -> Vec<Write> {
    let mut out: Vec<Write> = Vec::with_capacity(writes.len());
    let mut last: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    for w in writes {
        match w {
            Write::Task(t) => {
                if let Some(&i) = last.get(&t.id)
                    && let Some(Write::Task(prev)) = out.get_mut(i)
                    && prev.continues_into(&t)
                {
                    prev.absorb(t);
                    continue;
                }
                last.insert(t.id, out.len());
                out.push(Write::Task(t));
            }
            Write::TakeSlot(t) => {
                last.remove(&t.id);
                out.push(Write::TakeSlot(t));
            }
            other => out.push(other),
        }
    }
    out
}

/// A conditional update of the run itself.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowWrite {
    pub expected: ExecutionState,
    pub new: ExecutionState,
    pub reason: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// What the runner does once a transition's writes are durable.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Queue task `task`'s current attempt for dispatch after `after`, away from `avoid`.
    Enqueue { task: usize, after: Duration, avoid: Option<String> },
    /// Send task `task`'s current attempt to the worker it is recorded on, again (after a
    /// restart; the worker runs an attempt it has once).
    Resend { task: usize },
    /// Count a slot on `worker` as used by this run (rebuilt after a restart).
    ReserveSlot { worker: String },
    /// Free a slot counted on `worker`.
    ReleaseSlot { worker: String },
    /// A worker the run has attempts on is not in the registry: fail them over after the
    /// grace period unless it comes back.
    WorkerMissing { worker: String },
    /// Post `event` to this run after `after`.
    Schedule { event: Event, after: Duration },
    /// Post `event` to this run now.
    Post(Event),
    /// Kill task `task`'s current attempt on its worker.
    Kill { task: usize },
    /// Something to count and log.
    Note(Note),
}

/// What happened, for metrics and logs.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    RunStarted,
    RunFinished {
        state: ExecutionState,
        reason: Option<String>,
    },
    TaskFinished {
        task: usize,
        state: ExecutionState,
    },
    RetryScheduled {
        task: usize,
        attempt: i32,
    },
    Retried {
        task: usize,
        attempt: i32,
    },
    RetryCalledOff {
        task: usize,
        attempt: i32,
    },
    TimedOut {
        task: usize,
        attempt: i32,
        warned: bool,
    },
    FailedOver {
        task: usize,
        attempt: i32,
        worker: String,
    },
    /// An operator's stop or pause is under way.
    Controlling {
        action: Control,
    },
    RunResumed,
    /// The run ran past its own timeout (`warned`: its strategy says so).
    RunTimedOut {
        warned: bool,
    },
}

/// A change to a run: the state to adopt once `writes` are durable, then `effects`.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub state: RunState,
    pub writes: Vec<Write>,
    pub effects: Vec<Effect>,
    /// Tasks may have become ready or the run may be over: [`Workflow::advance`] is due.
    pub advance: bool,
}

/// What an event does to a run.
#[derive(Debug, Clone, PartialEq)]
// returned once per event and taken apart at once: boxing would only add an allocation
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// Nothing: a duplicate, a late or a stale event.
    Ignored,
    Changed(Transition),
}

/// A workflow as the engine needs it: its spec and its task graph.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub spec: WorkflowSpec,
    pub dag: Arc<Dag>,
}

impl Workflow {
    pub fn new(spec: WorkflowSpec) -> Self {
        let dag = Arc::new(spec.dag());
        Self { spec, dag }
    }

    fn task(&self, idx: usize) -> &TaskSpec {
        &self.spec.tasks[idx]
    }

    /// The transition function: what `event` does to `run` at time `now`. `Err` when the event
    /// can never be applied (it is dropped and dead-lettered).
    pub fn apply(&self, run: &RunState, event: &Event, now: DateTime<Utc>) -> Result<Outcome, DropReason> {
        match event {
            Event::Start => self.on_start(run, now),
            Event::Dispatched { at, worker } => self.on_task_change(
                run,
                *at,
                Dispatched,
                Change { worker: Some(worker.clone()), ..Change::default() },
                now,
            ),
            Event::Requeue { at, worker, after } => self.on_task_change(
                run,
                *at,
                Submitted,
                Change { worker: worker.clone(), requeue_after: *after, ..Change::default() },
                now,
            ),
            Event::Running { at, worker, started_at } => self.on_task_change(
                run,
                *at,
                Running,
                Change {
                    worker: Some(worker.clone()),
                    reporter: Some(worker.clone()),
                    started_at: *started_at,
                    ..Change::default()
                },
                now,
            ),
            Event::Ended(e) => {
                let change = Change {
                    worker: e.worker.clone(),
                    reporter: e.worker.clone(),
                    exit_code: e.exit_code,
                    started_at: e.started_at,
                    ended_at: e.ended_at,
                    message: e.message.clone(),
                    timed_out: e.timed_out,
                    requeue_after: Duration::ZERO,
                };
                self.on_task_change(run, e.at, if e.succeeded { Success } else { Failure }, change, now)
            }
            Event::RetryDue { at } => self.on_retry_due(run, *at),
            Event::TimeoutDue { at } => self.on_timeout_due(run, *at),
            Event::WorkerLost { worker } => Ok(self.on_worker_lost(run, worker)),
            Event::Failover { at, worker, why } => self.on_failover(run, *at, worker, why),
            Event::Control { command, action: Control::KillTask, task } => {
                Ok(self.on_kill_task(run, *command, *task, now))
            }
            Event::Control { command, action: Control::MarkSuccess, task } => {
                Ok(self.on_mark_success(run, *command, *task))
            }
            Event::SlotDue { at } => self.on_slot_due(run, *at),
            Event::NoWorker { at, reason } => self.on_no_worker(run, *at, reason, now),
            Event::Control { command, action, .. } => Ok(self.on_control(run, *command, *action, now)),
            Event::WorkflowTimeoutDue => Ok(self.on_workflow_timeout(run, now)),
        }
    }

    /// An operator's control command, in command order.
    fn on_control(&self, run: &RunState, command: i64, action: Control, now: DateTime<Utc>) -> Outcome {
        if command <= run.last_command {
            return Outcome::Ignored; // applied already
        }
        let mut state = run.clone();
        state.last_command = command;
        let mut writes = Vec::new();
        let mut effects = Vec::new();
        let mut advance = false;
        match action {
            Control::Stop if !run.state.is_terminal() => {
                self.begin_stop(run, &mut state, command, "stopped by an operator", now, &mut writes, &mut effects);
                effects.push(Effect::Note(Note::Controlling { action }));
                advance = true;
            }
            Control::Pause if run.state == Running && run.control.is_none() => {
                state.control = Some((command, Control::Pause));
                effects.push(Effect::Note(Note::Controlling { action }));
                advance = true;
            }
            Control::Resume if run.state == Paused => {
                writes.push(Write::Workflow(WorkflowWrite {
                    expected: Paused,
                    new: Running,
                    reason: None,
                    started_at: None,
                    ended_at: None,
                }));
                writes.push(Write::CompleteCommand(command));
                state.state = Running;
                effects.extend(self.carry_on(run, now));
                effects.push(Effect::Note(Note::RunResumed));
                advance = true;
            }
            Control::Resume if matches!(run.control, Some((_, Control::Pause))) => {
                // resumed before the pause was over: the pause is called off
                if let Some((pause, _)) = run.control {
                    writes.push(Write::CompleteCommand(pause));
                }
                writes.push(Write::CompleteCommand(command));
                state.control = None;
                effects.extend(self.carry_on(run, now));
                effects.push(Effect::Note(Note::RunResumed));
                advance = true;
            }
            // nothing to do for the run's state (it ended, or is already so): done
            _ => writes.push(Write::CompleteCommand(command)),
        }
        Outcome::Changed(Transition { state, writes, effects, advance })
    }

    /// The task instances a rerun of `run` (ended) starts again: those that failed or were
    /// stopped, or with `from`, that task and every task downstream of it that has an instance
    /// (those wait for what they depend on). `Err` says why there is nothing to rerun.
    pub fn rerun_tasks(&self, run: &RunState, from: Option<&str>) -> Result<Vec<RerunTask>, String> {
        // (task, its new state): what follows the task it starts from waits for it
        let picked: Vec<(usize, ExecutionState)> = match from {
            Some(name) => {
                let idx = self.dag.index_of(name).ok_or_else(|| format!("the workflow has no task {name:?}"))?;
                if run.task(idx).is_none() {
                    return Err(format!("task {name} never ran in this run: nothing to rerun from it"));
                }
                std::iter::once((idx, Submitted))
                    .chain(self.dag.descendants(idx).into_iter().map(|d| (d, Waiting)))
                    .collect()
            }
            None => run.tasks().filter(|(_, t)| t.state.is_unsuccessful()).map(|(i, _)| (i, Submitted)).collect(),
        };
        let tasks: Vec<RerunTask> = picked
            .into_iter()
            .filter_map(|(i, new)| {
                let t = run.task(i)?;
                // a task of a task group waits for a slot where another would be submitted
                let await_slot = new == Submitted && self.task(i).task_group.is_some();
                let new = if await_slot { Waiting } else { new };
                Some(RerunTask { id: t.id, state: t.state, attempt: t.attempt, new, await_slot })
            })
            .collect();
        if tasks.is_empty() {
            return Err("no task failed or was stopped: nothing to rerun (use --from TASK)".into());
        }
        Ok(tasks)
    }

    /// What marking task instance `id` of ended run `run` successful changes: it becomes
    /// `forced-success`, and what depends on it and has an instance that did not succeed
    /// waits for what it depends on, as a new attempt. `Err` says why it cannot be marked.
    pub fn mark_success_tasks(&self, run: &RunState, id: i64) -> Result<Vec<RerunTask>, String> {
        let (idx, t) = run.task_by_id(id).ok_or_else(|| format!("task instance {id} is not one of its tasks"))?;
        if !t.state.is_unsuccessful() {
            return Err(format!(
                "task {} is {}: only a task that ended without success can be marked",
                self.task(idx).name,
                t.state
            ));
        }
        let forced = RerunTask { id, state: t.state, attempt: t.attempt, new: ForcedSuccess, await_slot: false };
        let downstream = self.dag.descendants(idx).into_iter().filter_map(|d| {
            let t = run.task(d)?;
            (!t.state.is_success() && t.state != Waiting).then_some(RerunTask {
                id: t.id,
                state: t.state,
                attempt: t.attempt,
                new: Waiting,
                await_slot: false,
            })
        });
        Ok(std::iter::once(forced).chain(downstream).collect())
    }

    /// An operator marked a task that ended without success successful, on a run not ended.
    fn on_mark_success(&self, run: &RunState, command: i64, task: Option<i64>) -> Outcome {
        if command <= run.last_command {
            return Outcome::Ignored;
        }
        let mut state = run.clone();
        state.last_command = command;
        let mut writes = Vec::new();
        let mut effects = Vec::new();
        let found = task.and_then(|id| run.task_by_id(id)).map(|(idx, t)| (idx, t.clone()));
        if let Some((idx, t)) = found.filter(|(_, t)| t.state.is_unsuccessful()) {
            let mut write = TaskWrite::new(&t, ForcedSuccess);
            write.warning = Some(forced_warning(t.attempt, t.state));
            writes.push(Write::Task(write));
            state.task_mut(idx).state = ForcedSuccess;
            state.failing = state.first_failure(self);
            effects.push(Effect::Note(Note::TaskFinished { task: idx, state: ForcedSuccess }));
        }
        // anything else (the task ran again or succeeded meanwhile): nothing to do
        writes.push(Write::CompleteCommand(command));
        Outcome::Changed(Transition { state, writes, effects, advance: true })
    }

    /// A task waiting for a slot of its task group tries to take one; the store refuses the
    /// write (and nothing changes) while the group has none free for it.
    fn on_slot_due(&self, run: &RunState, at: AttemptRef) -> Result<Outcome, DropReason> {
        let (idx, cur) = task_of(run, at)?;
        let held = run.control.is_some() || run.state != Running;
        if cur.state != Waiting || !cur.awaiting_slot || at.attempt != cur.attempt || held {
            return Ok(Outcome::Ignored); // it took one, ended, or the run holds still: a resume asks again
        }
        let mut state = run.clone();
        let mut task = state.task_mut(idx);
        task.state = Submitted;
        task.awaiting_slot = false;
        drop(task);
        Ok(Outcome::Changed(Transition {
            state,
            writes: vec![Write::TakeSlot(TaskWrite::new(cur, Submitted))],
            effects: vec![Effect::Enqueue { task: idx, after: Duration::ZERO, avoid: None }],
            advance: false,
        }))
    }

    /// A task waited past its `worker_group_wait` for a worker of its group: it fails, without
    /// a retry (the next attempt would wait for the same missing worker).
    fn on_no_worker(
        &self,
        run: &RunState,
        at: AttemptRef,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Outcome, DropReason> {
        let (idx, cur) = task_of(run, at)?;
        if cur.state != Submitted || at.attempt != cur.attempt || run.control.is_some() || run.state != Running {
            return Ok(Outcome::Ignored); // dispatched or moved on meanwhile, or the run holds still
        }
        let mut state = run.clone();
        state.task_mut(idx).state = Failure;
        state.task_mut(idx).ended_at = Some(now);
        state.failing.get_or_insert_with(|| failure_reason(&self.task(idx).name, None, reason));
        let write =
            TaskWrite { ended_at: Some(now), warning: Some(reason.to_string()), ..TaskWrite::new(cur, Failure) };
        Ok(Outcome::Changed(Transition {
            state,
            writes: vec![Write::Task(write)],
            effects: vec![Effect::Note(Note::TaskFinished { task: idx, state: Failure })],
            advance: true,
        }))
    }

    /// An operator's kill of one task instance.
    fn on_kill_task(&self, run: &RunState, command: i64, task: Option<i64>, now: DateTime<Utc>) -> Outcome {
        if command <= run.last_command {
            return Outcome::Ignored;
        }
        let mut state = run.clone();
        state.last_command = command;
        let found = task.and_then(|id| run.task_by_id(id)).map(|(idx, t)| (idx, t.clone()));
        let Some((idx, t)) = found.filter(|(_, t)| !t.state.is_terminal()) else {
            // gone or ended meanwhile: nothing to kill
            return Outcome::Changed(Transition {
                state,
                writes: vec![Write::CompleteCommand(command)],
                effects: Vec::new(),
                advance: false,
            });
        };
        if t.is_on_worker() {
            state.killing.insert(t.id, command);
            return Outcome::Changed(Transition {
                state,
                writes: Vec::new(),
                effects: vec![
                    Effect::Kill { task: idx },
                    Effect::Note(Note::Controlling { action: Control::KillTask }),
                ],
                advance: false,
            });
        }
        // not on a worker: it ends now
        state.task_mut(idx).state = Stopped;
        state.failing.get_or_insert_with(|| killed_reason(&self.task(idx).name));
        Outcome::Changed(Transition {
            state,
            writes: vec![
                Write::Task(TaskWrite { ended_at: Some(now), ..TaskWrite::new(&t, Stopped) }),
                Write::CompleteCommand(command),
            ],
            effects: vec![Effect::Note(Note::TaskFinished { task: idx, state: Stopped })],
            advance: true,
        })
    }

    /// Starts stopping the run (`command` is the stop's command, 0 for the run's own timeout):
    /// what is on a worker is killed, what waits is stopped now; the run ends once nothing is on
    /// a worker.
    #[allow(clippy::too_many_arguments)]
    fn begin_stop(
        &self,
        run: &RunState,
        state: &mut RunState,
        command: i64,
        reason: &str,
        now: DateTime<Utc>,
        writes: &mut Vec<Write>,
        effects: &mut Vec<Effect>,
    ) {
        if let Some((pause, Control::Pause)) = run.control
            && pause > 0
        {
            writes.push(Write::CompleteCommand(pause)); // the stop supersedes it
        }
        state.control = Some((command, Control::Stop));
        state.stop_reason = Some(reason.to_string());
        for (idx, t) in run.tasks() {
            if t.is_on_worker() {
                effects.push(Effect::Kill { task: idx });
            } else if matches!(t.state, Submitted | Delayed | Waiting) {
                writes.push(Write::Task(TaskWrite { ended_at: Some(now), ..TaskWrite::new(t, Stopped) }));
                state.task_mut(idx).state = Stopped;
                effects.push(Effect::Note(Note::TaskFinished { task: idx, state: Stopped }));
            }
        }
    }

    /// The run's own timeout ran out: say so (`warn`), stop the run (`fail`), or both.
    fn on_workflow_timeout(&self, run: &RunState, now: DateTime<Utc>) -> Outcome {
        if run.state.is_terminal() || matches!(run.control, Some((_, Control::Stop))) {
            return Outcome::Ignored;
        }
        let strategy = self.spec.timeout_strategy;
        let timeout = humantime::format_duration(self.spec.timeout.unwrap_or_default()).to_string();
        let mut state = run.clone();
        let (mut writes, mut effects) = (Vec::new(), Vec::new());
        let warned = matches!(strategy, TimeoutStrategy::Warn | TimeoutStrategy::WarnFail);
        effects.push(Effect::Note(Note::RunTimedOut { warned }));
        if matches!(strategy, TimeoutStrategy::Fail | TimeoutStrategy::WarnFail) {
            let reason = format!("stopped: the run ran past its timeout of {timeout}");
            self.begin_stop(run, &mut state, 0, &reason, now, &mut writes, &mut effects);
        }
        Outcome::Changed(Transition { state, writes, effects, advance: true })
    }

    /// The timer of the run's own timeout, for what is left of it.
    fn run_timer(&self, run: &RunState, now: DateTime<Utc>) -> Option<Effect> {
        let timeout = self.spec.timeout?;
        let elapsed = run.started_at.map_or(Duration::ZERO, |t| (now - t).to_std().unwrap_or_default());
        Some(Effect::Schedule { event: Event::WorkflowTimeoutDue, after: timeout.saturating_sub(elapsed) })
    }

    /// What carrying on a paused run takes: queue what waits for a worker and set the retry
    /// timers again.
    fn carry_on(&self, run: &RunState, now: DateTime<Utc>) -> Vec<Effect> {
        let mut effects = Vec::new();
        for (idx, t) in run.tasks() {
            match t.state {
                Submitted => effects.push(Effect::Enqueue { task: idx, after: Duration::ZERO, avoid: None }),
                Delayed => effects.push(self.retry_timer(idx, t, now)),
                Waiting if t.awaiting_slot => effects.push(t.slot_due()),
                _ => {}
            }
        }
        effects
    }

    /// The timer of delayed task `idx`, for what is left of its retry interval.
    fn retry_timer(&self, idx: usize, t: &TaskState, now: DateTime<Utc>) -> Effect {
        let waited = t.ended_at.map_or(Duration::ZERO, |e| (now - e).to_std().unwrap_or_default());
        let left = self.task(idx).retry_interval.saturating_sub(waited);
        Effect::Schedule {
            event: Event::RetryDue { at: AttemptRef { task_instance_id: t.id, attempt: t.attempt } },
            after: left,
        }
    }

    fn on_start(&self, run: &RunState, now: DateTime<Utc>) -> Result<Outcome, DropReason> {
        match run.state {
            Submitted => {
                let mut state = run.clone();
                state.state = Running;
                state.started_at = Some(now);
                // a rerun starts with the task instances it sent back to `submitted`
                let requeued = run.tasks().filter_map(|(idx, t)| match t.state {
                    Submitted => Some(Effect::Enqueue { task: idx, after: Duration::ZERO, avoid: None }),
                    Waiting if t.awaiting_slot => Some(t.slot_due()),
                    _ => None,
                });
                let effects = [Effect::Note(Note::RunStarted)]
                    .into_iter()
                    .chain(requeued)
                    .chain(self.run_timer(&state, now))
                    .collect();
                Ok(Outcome::Changed(Transition {
                    state,
                    writes: vec![Write::Workflow(WorkflowWrite {
                        expected: Submitted,
                        new: Running,
                        reason: None,
                        started_at: Some(now),
                        ended_at: None,
                    })],
                    effects,
                    advance: true,
                }))
            }
            Running => Ok(Outcome::Ignored),
            other => Err(DropReason::Unsupported(format!("workflow transition {other} -> running"))),
        }
    }

    /// A task attempt moving to `requested`, as its worker or the dispatcher reports it.
    fn on_task_change(
        &self,
        run: &RunState,
        at: AttemptRef,
        requested: ExecutionState,
        change: Change,
        now: DateTime<Utc>,
    ) -> Result<Outcome, DropReason> {
        let (idx, cur) = task_of(run, at)?;
        if at.attempt < cur.attempt {
            return Ok(Outcome::Ignored); // an earlier attempt's event
        }
        if at.attempt > cur.attempt {
            return Err(DropReason::Malformed(format!(
                "attempt {} is ahead of the current attempt {}",
                at.attempt, cur.attempt
            )));
        }
        // only the worker the attempt was sent to speaks for it
        if let Some(sender) = &change.reporter
            && cur.worker.as_deref() != Some(sender.as_str())
        {
            return Err(DropReason::NotTheAttemptsWorker {
                sender: sender.clone(),
                attempt: at.attempt,
                holder: cur.worker.clone(),
            });
        }
        let spec = self.task(idx);
        let retries_used = (cur.attempt - 1 - cur.failovers - cur.rerun_base).max(0) as u32;
        let kill = run.killing.get(&cur.id).copied();
        let stopping = matches!(run.control, Some((_, Control::Stop))) || kill.is_some();
        let target = match requested {
            // a stop is under way: what ends without success was killed; what comes back
            // undispatched never ran, and is stopped
            Failure if stopping => Killed,
            Submitted if stopping => Stopped,
            // a task that never ran (its task group is gone) is not retried
            Failure if retries_used < spec.retries && cur.state != Waiting => Delayed,
            other => other,
        };
        if target == Dispatched && (run.control.is_some() || run.state != Running) {
            return Ok(Outcome::Ignored); // paused, or a stop or pause under way: nothing new is sent
        }
        if cur.state == target
            // the dispatcher raced with another dispatch of the same attempt: only one sends it
            || (target == Dispatched && cur.state != Submitted)
            // a requeue that lost to the worker's own report: the task is under way already
            || (target == Submitted && cur.state != Dispatched)
        {
            return Ok(Outcome::Ignored);
        }
        if !cur.state.can_transition_to(target) {
            if cur.state.is_terminal() || cur.state == Delayed || (target == Running && cur.state != Submitted) {
                return Ok(Outcome::Ignored); // a late event
            }
            return Err(DropReason::IllegalTransition { from: cur.state, to: target });
        }

        let mut write = TaskWrite::new(cur, target);
        if matches!(target, Dispatched | Running) {
            write.worker = change.worker.clone();
        }
        write.exit_code = change.exit_code;
        write.started_at = change.started_at;
        if target.is_terminal() || target == Delayed {
            write.ended_at = change.ended_at.or(Some(now));
        }
        // warnfail: the worker killed it at the timeout, as for fail; the overrun is a warning too
        let warned = change.timed_out && spec.timeout_strategy == TimeoutStrategy::WarnFail;
        if warned {
            write.warning = Some(timeout_warning(spec, cur.attempt, "it was killed (timeout_strategy warnfail)"));
        }

        let mut state = run.clone();
        let mut effects = Vec::new();
        let (exit_code, started_at, ended_at) = (write.exit_code, write.started_at, write.ended_at);
        let mut writes = vec![Write::Task(write)];
        if let Some(command) = kill
            && target.is_terminal()
        {
            // the kill an operator asked for is done with the attempt's end
            state.killing.remove(&cur.id);
            writes.push(Write::CompleteCommand(command));
            if target == Killed {
                state.failing.get_or_insert_with(|| killed_reason(&spec.name));
            }
        }
        if change.timed_out {
            effects.push(Effect::Note(Note::TimedOut { task: idx, attempt: cur.attempt, warned }));
        }
        let mut task = state.task_mut(idx);
        task.state = target;
        if matches!(target, Dispatched | Running) && change.worker.is_some() {
            task.worker = change.worker.clone();
        }
        if exit_code.is_some() {
            task.exit_code = exit_code;
        }
        if started_at.is_some() {
            task.started_at = started_at;
        }
        if ended_at.is_some() {
            task.ended_at = ended_at;
        }
        drop(task);
        if cur.is_on_worker()
            && !matches!(target, Dispatched | Running)
            && let Some(worker) = cur.worker.clone().or_else(|| change.worker.clone())
        {
            effects.push(Effect::ReleaseSlot { worker });
        }
        match target {
            Success => effects.push(Effect::Note(Note::TaskFinished { task: idx, state: Success })),
            Stopped | Killed if stopping && kill.is_none() => {
                effects.push(Effect::Note(Note::TaskFinished { task: idx, state: target }))
            }
            Failure | Stopped | Killed => {
                effects.push(Effect::Note(Note::TaskFinished { task: idx, state: target }));
                state.failing.get_or_insert_with(|| failure_reason(&spec.name, change.exit_code, &change.message));
            }
            Delayed => {
                effects.push(Effect::Note(Note::RetryScheduled { task: idx, attempt: cur.attempt }));
                effects.push(Effect::Schedule {
                    event: Event::RetryDue { at: AttemptRef { task_instance_id: cur.id, attempt: cur.attempt } },
                    after: spec.retry_interval,
                });
            }
            Submitted if run.control.is_none() && run.state == Running => {
                effects.push(Effect::Enqueue { task: idx, after: change.requeue_after, avoid: change.worker.clone() })
            }
            Running => {
                if let Some(left) = warn_timeout_left(spec, change.started_at, now) {
                    effects.push(Effect::Schedule {
                        event: Event::TimeoutDue { at: AttemptRef { task_instance_id: cur.id, attempt: cur.attempt } },
                        after: left,
                    });
                }
            }
            _ => {}
        }
        Ok(Outcome::Changed(Transition { state, writes, effects, advance: target.is_terminal() || target == Delayed }))
    }

    fn on_retry_due(&self, run: &RunState, at: AttemptRef) -> Result<Outcome, DropReason> {
        let (idx, cur) = task_of(run, at)?;
        let called_off = run.failing.is_some() && self.spec.failure_strategy == FailureStrategy::End;
        let held = run.control.is_some() || run.state != Running;
        if cur.state != Delayed || at.attempt != cur.attempt || called_off || held {
            return Ok(Outcome::Ignored); // a resume sets the timer again
        }
        // a task of a task group takes a slot for each attempt
        let grouped = self.task(idx).task_group.is_some();
        let new = if grouped { Waiting } else { Submitted };
        let mut write = TaskWrite::new(cur, new);
        write.attempt = Some(cur.attempt + 1);
        write.await_slot = grouped;
        let mut state = run.clone();
        let mut task = state.task_mut(idx);
        task.state = new;
        task.attempt = cur.attempt + 1;
        task.worker = None;
        task.awaiting_slot = grouped;
        let next =
            if grouped { task.slot_due() } else { Effect::Enqueue { task: idx, after: Duration::ZERO, avoid: None } };
        drop(task);
        Ok(Outcome::Changed(Transition {
            state,
            writes: vec![Write::Task(write)],
            effects: vec![Effect::Note(Note::Retried { task: idx, attempt: cur.attempt + 1 }), next],
            advance: false,
        }))
    }

    fn on_timeout_due(&self, run: &RunState, at: AttemptRef) -> Result<Outcome, DropReason> {
        let (idx, cur) = task_of(run, at)?;
        if at.attempt != cur.attempt || cur.state != Running {
            return Ok(Outcome::Ignored); // it ended in time, or this is an earlier attempt's timer
        }
        let mut write = TaskWrite::new(cur, Running);
        write.warning = Some(timeout_warning(self.task(idx), cur.attempt, "it runs on (timeout_strategy warn)"));
        Ok(Outcome::Changed(Transition {
            state: run.clone(),
            writes: vec![Write::Task(write)],
            effects: vec![Effect::Note(Note::TimedOut { task: idx, attempt: cur.attempt, warned: true })],
            advance: false,
        }))
    }

    /// One failover event per attempt of this run on the lost worker, each handled on its own.
    fn on_worker_lost(&self, run: &RunState, worker: &str) -> Outcome {
        let effects: Vec<Effect> = run
            .tasks()
            .filter(|(_, t)| t.is_on_worker() && t.worker.as_deref() == Some(worker))
            .map(|(_, t)| {
                Effect::Post(Event::Failover {
                    at: AttemptRef { task_instance_id: t.id, attempt: t.attempt },
                    worker: worker.to_string(),
                    why: "was lost".into(),
                })
            })
            .collect();
        if effects.is_empty() {
            return Outcome::Ignored;
        }
        Outcome::Changed(Transition { state: run.clone(), writes: Vec::new(), effects, advance: false })
    }

    /// A new attempt, queued for another worker of the group; a failover does not use up a
    /// retry, and the task instance keeps a warning saying which attempt ran where.
    fn on_failover(&self, run: &RunState, at: AttemptRef, worker: &str, why: &str) -> Result<Outcome, DropReason> {
        let (idx, cur) = task_of(run, at)?;
        if at.attempt != cur.attempt || !cur.is_on_worker() || cur.worker.as_deref() != Some(worker) {
            return Ok(Outcome::Ignored); // it ended, or moved on, meanwhile
        }
        if matches!(run.control, Some((_, Control::Stop))) {
            // a stop is under way: the attempt is over, not moved
            let mut state = run.clone();
            state.task_mut(idx).state = Stopped;
            state.task_mut(idx).worker = None;
            return Ok(Outcome::Changed(Transition {
                state,
                writes: vec![Write::Task(TaskWrite::new(cur, Stopped))],
                effects: vec![
                    Effect::ReleaseSlot { worker: worker.to_string() },
                    Effect::Note(Note::TaskFinished { task: idx, state: Stopped }),
                ],
                advance: true,
            }));
        }
        let mut write = TaskWrite::new(cur, Submitted);
        write.attempt = Some(cur.attempt + 1);
        write.failover = true;
        write.warning = Some(format!("attempt {} failed over: its worker {worker} {why}", cur.attempt));
        let mut state = run.clone();
        let mut task = state.task_mut(idx);
        task.state = Submitted;
        task.attempt = cur.attempt + 1;
        task.failovers += 1;
        task.worker = None;
        drop(task);
        Ok(Outcome::Changed(Transition {
            state,
            writes: vec![Write::Task(write)],
            effects: [
                Effect::ReleaseSlot { worker: worker.to_string() },
                Effect::Note(Note::FailedOver { task: idx, attempt: cur.attempt, worker: worker.to_string() }),
            ]
            .into_iter()
            .chain(run.control.is_none().then(|| Effect::Enqueue {
                task: idx,
                after: Duration::ZERO,
                avoid: Some(worker.to_string()),
            }))
            .collect(),
            advance: run.control.is_some(),
        }))
    }

    /// Moves the run on after a change: once it is failing, calls off the retries it waits
    /// for; otherwise creates the tasks that became ready; ends the run when nothing is left
    /// to do. `None` when there is nothing to do; safe to repeat.
    pub fn advance(&self, run: &RunState, now: DateTime<Utc>) -> Option<Transition> {
        if let Some((command, action)) = run.control {
            return self.advance_control(run, command, action, now);
        }
        if run.state != Running {
            return None;
        }
        let mut state = run.clone();
        let mut writes = Vec::new();
        let mut effects = Vec::new();
        let ends = self.spec.failure_strategy == FailureStrategy::End;
        if run.failing.is_some() && ends {
            if run.tally.delayed > 0 {
                for (idx, t) in run.tasks().filter(|(_, t)| t.state == Delayed) {
                    writes.push(Write::Task(TaskWrite::new(t, Failure)));
                    state.task_mut(idx).state = Failure;
                    effects.push(Effect::Note(Note::TaskFinished { task: idx, state: Failure }));
                    effects.push(Effect::Note(Note::RetryCalledOff { task: idx, attempt: t.attempt }));
                }
            }
            // what waits for a task-group slot never gets one: it is stopped, and leaves the line
            if run.tally.awaiting_slot > 0 {
                for (idx, t) in run.tasks().filter(|(_, t)| t.state == Waiting && t.awaiting_slot) {
                    writes.push(Write::Task(TaskWrite { ended_at: Some(now), ..TaskWrite::new(t, Stopped) }));
                    let mut task = state.task_mut(idx);
                    task.state = Stopped;
                    task.awaiting_slot = false;
                    drop(task);
                    effects.push(Effect::Note(Note::TaskFinished { task: idx, state: Stopped }));
                }
            }
        }
        let mut creating = false;
        if run.failing.is_none() || !ends {
            // what is not created yet is created; what a rerun made wait for the tasks it
            // depends on goes (to the line for a slot, if it has a task group)
            let mut create = Vec::new();
            for &idx in &run.ready {
                match run.task(idx) {
                    None => create.push(self.new_task(idx)),
                    Some(t) if self.task(idx).task_group.is_some() => {
                        writes.push(Write::Task(TaskWrite { await_slot: true, ..TaskWrite::new(t, Waiting) }));
                        state.task_mut(idx).awaiting_slot = true;
                        effects.push(t.slot_due());
                    }
                    Some(t) => {
                        writes.push(Write::Task(TaskWrite::new(t, Submitted)));
                        state.task_mut(idx).state = Submitted;
                        effects.push(Effect::Enqueue { task: idx, after: Duration::ZERO, avoid: None });
                    }
                }
            }
            if !create.is_empty() {
                creating = true;
                writes.insert(0, Write::CreateTasks(create));
            }
        }
        // what is about to be created, and what waits for a slot, is active too; what waits
        // on a task that will never succeed is not
        let active = creating || state.tally.active > 0;
        let all_succeeded = state.tally.succeeded == self.dag.len();
        let end = match &state.failing {
            _ if active => None,
            Some(reason) => Some((Failure, Some(reason.clone()))),
            None if all_succeeded => Some((Success, None)),
            None => None,
        };
        if let Some((new, reason)) = end {
            writes.push(Write::Workflow(WorkflowWrite {
                expected: Running,
                new,
                reason: reason.clone(),
                started_at: None,
                ended_at: Some(now),
            }));
            state.state = new;
            effects.push(Effect::Note(Note::RunFinished { state: new, reason }));
        }
        if writes.is_empty() {
            return None;
        }
        Some(Transition { state, writes, effects, advance: false })
    }

    /// Ends a stop or pause once no task is on a worker any more.
    fn advance_control(&self, run: &RunState, command: i64, action: Control, now: DateTime<Utc>) -> Option<Transition> {
        if run.tally.on_worker > 0 {
            return None;
        }
        let new = if action == Control::Stop { Stopped } else { Paused };
        let mut state = run.clone();
        state.control = None;
        let mut writes = Vec::new();
        let mut effects = Vec::new();
        if new == Paused {
            // a paused run holds no task-group slot: its queued tasks get back in line
            for (idx, t) in run.tasks().filter(|(i, t)| t.state == Submitted && self.task(*i).task_group.is_some()) {
                writes.push(Write::Task(TaskWrite { await_slot: true, ..TaskWrite::new(t, Waiting) }));
                let mut task = state.task_mut(idx);
                task.state = Waiting;
                task.awaiting_slot = true;
            }
        }
        if run.state != new {
            let reason = (new == Stopped)
                .then(|| run.stop_reason.clone().unwrap_or_else(|| "stopped by an operator".to_string()));
            writes.push(Write::Workflow(WorkflowWrite {
                expected: run.state,
                new,
                reason: reason.clone(),
                started_at: None,
                ended_at: (new == Stopped).then_some(now),
            }));
            state.state = new;
            effects.push(Effect::Note(Note::RunFinished { state: new, reason }));
        }
        if command > 0 {
            writes.push(Write::CompleteCommand(command));
        }
        Some(Transition { state, writes, effects, advance: false })
    }

    /// What carrying on a run rebuilt from the database takes (after a restart or a
    /// takeover): queue what waited for a worker, resend what was dispatched, count the slots
    /// of what runs, set the timers again. `listed` says whether a worker is in the registry.
    pub fn resume(&self, run: &RunState, now: DateTime<Utc>, listed: impl Fn(&str) -> bool) -> Vec<Effect> {
        let mut effects = Vec::new();
        if run.state == Paused {
            return effects; // it waits for a resume
        }
        effects.extend(self.run_timer(run, now));
        for (idx, t) in run.tasks() {
            let spec = self.task(idx);
            let at = AttemptRef { task_instance_id: t.id, attempt: t.attempt };
            match (t.state, &t.worker) {
                (Submitted, _) => effects.push(Effect::Enqueue { task: idx, after: Duration::ZERO, avoid: None }),
                (Dispatched | Running, Some(worker)) if !listed(worker) => {
                    // its worker left while nobody owned the run: fail it over after the grace
                    effects.push(Effect::WorkerMissing { worker: worker.clone() });
                }
                (Dispatched, Some(worker)) => {
                    effects.push(Effect::ReserveSlot { worker: worker.clone() });
                    effects.push(Effect::Resend { task: idx });
                }
                // recorded as dispatched to nobody: queue it again
                (Dispatched, None) => {
                    effects.push(Effect::Post(Event::Requeue { at, worker: None, after: Duration::ZERO }))
                }
                (Running, worker) => {
                    if let Some(worker) = worker {
                        effects.push(Effect::ReserveSlot { worker: worker.clone() });
                    }
                    if let Some(left) = warn_timeout_left(spec, t.started_at, now) {
                        effects.push(Effect::Schedule { event: Event::TimeoutDue { at }, after: left });
                    }
                }
                (Delayed, _) => effects.push(self.retry_timer(idx, t, now)),
                (Waiting, _) if t.awaiting_slot => effects.push(t.slot_due()),
                _ => {}
            }
        }
        effects
    }

    /// The instance of task `idx` to create.
    fn new_task(&self, idx: usize) -> NewTask {
        let spec = self.task(idx);
        NewTask {
            name: spec.name.clone(),
            task_group: spec.task_group.clone(),
            task_group_priority: spec.task_group_priority,
        }
    }
}

/// The details a task change carries.
#[derive(Debug, Clone, Default)]
struct Change {
    worker: Option<String>,
    /// The worker that reports the change: it must hold the attempt.
    reporter: Option<String>,
    exit_code: Option<i32>,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    message: String,
    timed_out: bool,
    requeue_after: Duration,
}

fn task_of(run: &RunState, at: AttemptRef) -> Result<(usize, &TaskState), DropReason> {
    run.task_by_id(at.task_instance_id).ok_or(DropReason::UnknownTaskInstance(at.task_instance_id))
}

/// How long a `warn` timeout has left for an attempt started at `started_at` (the worker does
/// not enforce it: the master notices the overrun). `None` for other strategies.
fn warn_timeout_left(spec: &TaskSpec, started_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<Duration> {
    match (spec.timeout, spec.timeout_strategy) {
        (Some(timeout), TimeoutStrategy::Warn) => {
            let elapsed = started_at.map_or(Duration::ZERO, |t| (now - t).to_std().unwrap_or_default());
            Some(timeout.saturating_sub(elapsed))
        }
        _ => None,
    }
}

/// The warning on a task instance an operator marked successful after attempt `attempt`
/// ended `state`.
pub fn forced_warning(attempt: i32, state: ExecutionState) -> String {
    format!("marked successful by an operator; attempt {attempt} had ended {state}")
}

/// Why the run fails, when an operator killed task `name`.
fn killed_reason(name: &str) -> String {
    format!("task {name} was killed by an operator")
}

/// Why the run fails, when task `name` failed.
pub fn failure_reason(name: &str, exit_code: Option<i32>, message: &str) -> String {
    match exit_code {
        Some(code) => format!("task {name} failed with exit code {code}"),
        None if message.is_empty() => format!("task {name} failed"),
        None => format!("task {name} failed: {message}"),
    }
}

/// The warning recorded on a task instance whose attempt ran past its timeout.
fn timeout_warning(task: &TaskSpec, attempt: i32, consequence: &str) -> String {
    let timeout = humantime::format_duration(task.timeout.unwrap_or_default());
    format!("attempt {attempt} ran past its timeout of {timeout}; {consequence}")
}

#[cfg(test)]
mod tests;
