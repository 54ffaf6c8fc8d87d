//! The application layer: every operator action — apply and show workflows, start, list and
//! inspect runs, control runs and tasks, manage task groups, read task logs — as a plain Rust
//! API over the store and the master's state. The gRPC AdminService only translates requests
//! and replies (a REST API would call the same functions), and [`AppError`] says which errors
//! are the user's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use porpoise_core::engine::{Control, RerunTask, RunState, Workflow};
use porpoise_core::schedule::{Schedule, ScheduleSpec};
use porpoise_core::{ExecutionState, Priority, WorkflowSpec};
use porpoise_proto::v1::GetTaskLogRequest;
use porpoise_store::{
    ApiToken, ApplyOutcome, BackfillRow, CommandKind, NewBackfill, NewCommand, NewRun, RunKind, ScheduleRow,
    StoreError, TASK_INSTANCE_PARAM, TaskGroup, TaskInstance, WorkflowDefinition, WorkflowInstance,
};
use tracing::info;

use crate::Shared;

/// Why an operator's request was not carried out. The first three are the user's (fix the
/// request); the others are Porpoise's or its surroundings'.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    /// The request itself is wrong (a bad name, a bad spec, options that exclude each other).
    #[error("{0}")]
    Invalid(String),
    /// It names something that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It makes no sense in the current state of what it names (resume a successful run).
    #[error("{0}")]
    WrongState(String),
    /// The database or a worker cannot be reached now: the same request may succeed later.
    #[error("{0}")]
    Unavailable(String),
    /// Porpoise failed (unreadable stored data, a refused statement).
    #[error("{0}")]
    Internal(String),
}

impl AppError {
    /// Whether the error is the user's to fix (exit 2 in the CLI) rather than Porpoise's.
    pub fn is_users(&self) -> bool {
        matches!(self, Self::Invalid(_) | Self::NotFound(_) | Self::WrongState(_))
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => Self::NotFound(e.to_string()),
            StoreError::Conflict { .. } => Self::WrongState(format!("changed meanwhile: {e}")),
            e if e.is_retryable() => Self::Unavailable(e.to_string()),
            e => Self::Internal(e.to_string()),
        }
    }
}

type Result<T, E = AppError> = std::result::Result<T, E>;

/// A workflow as stored by an apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub name: String,
    pub version: i32,
    /// False when an identical spec was already the newest version.
    pub changed: bool,
}

/// A run as an operator sees it.
#[derive(Debug, Clone)]
pub struct RunView {
    pub run: WorkflowInstance,
    /// The version of the workflow it runs (0 if the definition is gone).
    pub version: i32,
    /// Why the run is in its state: a stall first, else the stored reason.
    pub reason: Option<String>,
    /// Unfinished, and its owner is not a live master: it waits to be taken over.
    pub awaiting_takeover: bool,
}

/// A run with its task instances.
#[derive(Debug, Clone)]
pub struct RunDetail {
    pub view: RunView,
    pub tasks: Vec<TaskInstance>,
}

/// A control request, recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controlled {
    /// The state of the run (or task) when the request was recorded.
    pub state: ExecutionState,
    /// What happens next, in one line.
    pub message: String,
}

/// Which tasks a rerun starts again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RerunScope {
    /// The failed, stopped and killed ones.
    Failed,
    /// This task and everything downstream of it.
    From(String),
}

/// A piece of a task's log.
#[derive(Debug, Clone)]
pub struct LogChunk {
    pub content: Vec<u8>,
    pub next_offset: u64,
    pub eof: bool,
}

/// The most runs a listing returns.
pub const MAX_LIST: u32 = 1000;

/// The application: operators' actions over one master's store and state.
#[derive(Debug, Clone)]
pub struct App(pub(crate) Arc<Shared>);

impl App {
    /// Validates `yaml` (named `file` in errors) and stores it as the newest version of its
    /// workflow; the task groups it names must exist.
    pub async fn apply(&self, file: &str, yaml: &str) -> Result<Applied> {
        // parsing is bounded (size and nesting are checked first) but still CPU work: keep it off
        // the threads that run the runners
        let (f, y) = (file.to_string(), yaml.to_string());
        let parsed = tokio::task::spawn_blocking(move || WorkflowSpec::parse(&f, &y))
            .await
            .map_err(|e| AppError::Internal(format!("the spec parser failed: {e}")))?;
        let spec = parsed.map_err(|e| AppError::Invalid(e.to_string()))?;
        for task in &spec.tasks {
            if let Some(group) = &task.task_group
                && self.0.store.task_group(group).await?.is_none()
            {
                return Err(AppError::Invalid(format!(
                    "{file}: task {}: task_group: no task group {group:?}; create it first with \
                     `porpoise taskgroup create {group} --slots N`",
                    task.name
                )));
            }
        }
        let existing = self.0.store.schedule(&spec.name).await?;
        if spec.schedule.is_some() && existing.as_ref().is_some_and(|s| !s.from_spec) {
            return Err(AppError::WrongState(format!(
                "{file}: schedule: workflow {} has a schedule made by `porpoise schedule create`; delete it first \
                 (porpoise schedule delete {})",
                spec.name, spec.name
            )));
        }
        let outcome = self.0.store.apply_definition(&spec, yaml).await?;
        // the spec's schedule replaces the one an earlier version of the spec set
        match &spec.schedule {
            Some(schedule) => {
                self.0.store.put_schedule(&spec.name, schedule, true).await?;
            }
            None if existing.is_some_and(|s| s.from_spec) => self.0.store.delete_schedule(&spec.name).await?,
            None => {}
        }
        let changed = !matches!(outcome, ApplyOutcome::Unchanged { .. });
        info!(workflow = %spec.name, version = outcome.version(), changed, "workflow applied");
        Ok(Applied { name: spec.name, version: outcome.version(), changed })
    }

    /// The newest version of every workflow, with its schedule.
    pub async fn workflows(&self) -> Result<Vec<(WorkflowDefinition, Option<ScheduleView>)>> {
        let mut schedules: HashMap<String, ScheduleRow> =
            self.0.store.schedules().await?.into_iter().map(|s| (s.workflow_name.clone(), s)).collect();
        let defs = self.0.store.list_definitions().await?;
        Ok(defs
            .into_iter()
            .map(|d| {
                let schedule = schedules.remove(&d.name).map(schedule_view);
                (d, schedule)
            })
            .collect())
    }

    /// Version `version` of workflow `name` (`None`: the newest).
    pub async fn workflow(&self, name: &str, version: Option<i32>) -> Result<WorkflowDefinition> {
        let def = match version {
            None => self.0.store.latest_definition(name).await?,
            Some(v) => self.0.store.definition_version(name, v).await?,
        };
        def.ok_or_else(|| match version {
            None => AppError::NotFound(format!("no workflow named {name}")),
            Some(v) => AppError::NotFound(format!("workflow {name} has no version {v}")),
        })
    }

    /// Requests a run of the newest version of workflow `name` (at `priority`, else the
    /// workflow's); returns its id. A run of a serial workflow waits for its turn.
    pub async fn start_run(
        &self,
        name: &str,
        params: BTreeMap<String, String>,
        priority: Option<Priority>,
    ) -> Result<i64> {
        let ids = self.start_runs(name, params, priority, 1).await?;
        ids.first().copied().ok_or_else(|| AppError::Internal("no run was started".into()))
    }

    /// Starts `count` runs of workflow `name` alike (1 to [`MAX_RUNS_PER_CALL`]), in one
    /// transaction; returns their ids in order.
    pub async fn start_runs(
        &self,
        name: &str,
        params: BTreeMap<String, String>,
        priority: Option<Priority>,
        count: u32,
    ) -> Result<Vec<i64>> {
        if count == 0 || count as usize > MAX_RUNS_PER_CALL {
            return Err(AppError::Invalid(format!(
                "--count {count}: from 1 to {MAX_RUNS_PER_CALL} runs may be started at once"
            )));
        }
        let def = self
            .0
            .store
            .latest_definition(name)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("no workflow named {name:?}; apply it first")))?;
        let spec = spec_of(&def)?;
        porpoise_core::limits::check_params(&params).map_err(AppError::Invalid)?;
        for (key, value) in &params {
            porpoise_core::dateparams::check(value).map_err(|e| AppError::Invalid(format!("param {key}: {e}")))?;
        }
        // its date parameters count from now, in the time zone of the workflow's schedule
        let schedule = self.0.store.schedule(&def.name).await?;
        let timezone = schedule.map(|s| s.spec.timezone).unwrap_or_else(|| "UTC".to_string());
        let run = NewRun {
            workflow_definition_id: def.id,
            workflow_name: def.name.clone(),
            priority: priority.unwrap_or(spec.priority),
            params,
            schedule_time: chrono::Utc::now(),
            timezone,
            kind: RunKind::Manual,
            execution: spec.execution,
            backfill: None,
        };
        let ids: Vec<i64> = self.0.store.create_runs(&run, count).await?.iter().map(|r| r.id).collect();
        self.0.wake_consumer();
        match ids.as_slice() {
            [one] => info!(workflow = %def.name, run_id = one, "run requested"),
            many => {
                info!(workflow = %def.name, runs = many.len(), first = ?many.first(), last = ?many.last(), "runs requested")
            }
        }
        Ok(ids)
    }

    /// Run `id` once it has ended, or as it is when `timeout` (capped at [`MAX_WAIT`]) has
    /// passed first; with whether it has ended.
    pub async fn wait_run(&self, id: i64, timeout: Duration) -> Result<(RunView, bool)> {
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_WAIT);
        // subscribed before the first read: an end between the read and the wait still wakes it
        let mut ends = self.0.run_ends.subscribe();
        loop {
            let run = self.find_run(id).await?;
            let ended = run.state.is_terminal();
            if ended || tokio::time::Instant::now() >= deadline {
                let version = self.version_of(run.workflow_definition_id).await;
                return Ok((self.view(run, version), ended));
            }
            tokio::select! {
                changed = ends.changed() => {
                    if changed.is_err() {
                        return Err(AppError::Unavailable("the master is stopping".into()));
                    }
                }
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Run `id` with its task instances.
    pub async fn run(&self, id: i64) -> Result<RunDetail> {
        // a stalled run cannot reach the database: say why at once rather than time out on it
        if let Some(reason) = self.0.stall(id) {
            return Err(AppError::Unavailable(format!("run {id} is {reason}")));
        }
        let run = self.find_run(id).await?;
        let tasks = self.0.store.task_instances_of(id).await?;
        let version = self.version_of(run.workflow_definition_id).await;
        Ok(RunDetail { view: self.view(run, version), tasks })
    }

    /// Runs of workflow `name` (or of all), in state `state` (or any), newest first; `limit`
    /// 0 means 50.
    pub async fn runs(&self, name: Option<&str>, state: Option<&str>, limit: u32) -> Result<Vec<RunView>> {
        let limit = if limit == 0 { 50 } else { limit.min(MAX_LIST) };
        let state = state
            .map(|s| s.parse::<ExecutionState>().map_err(|e| AppError::Invalid(format!("--state: {e}"))))
            .transpose()?;
        let runs = self.0.store.list_workflow_instances(name, state, limit).await?;
        let mut versions = HashMap::new();
        let mut out = Vec::with_capacity(runs.len());
        for r in runs {
            let version = match versions.get(&r.workflow_definition_id) {
                Some(&v) => v,
                None => {
                    let v = self.version_of(r.workflow_definition_id).await;
                    versions.insert(r.workflow_definition_id, v);
                    v
                }
            };
            out.push(self.view(r, version));
        }
        Ok(out)
    }

    /// Records an operator's control of run `id` (durable first: the run's owner, or the master
    /// that takes it over, carries it out), after checking that it makes sense for the run's
    /// state. A resume of a stopped run reruns what did not succeed.
    pub async fn control(&self, id: i64, action: Control) -> Result<Controlled> {
        let run = self.find_run(id).await?;
        let state = run.state;
        if action == Control::Stop && state == ExecutionState::Waiting && run.owner.is_none() {
            // held for its turn: no master has it, so it is stopped here
            if self.0.store.stop_waiting_run(id, "stopped by an operator before its turn").await? {
                let message = format!("run {id}: stopped before its turn came");
                return Ok(Controlled { state, message });
            }
            return Err(AppError::WrongState(format!("run {id} changed meanwhile: look again")));
        }
        if action == Control::Resume && state == ExecutionState::Stopped {
            let picked = self
                .rerun_pick(&run, |workflow, state| Ok(workflow.rerun_tasks(state, None).unwrap_or_default()))
                .await?;
            self.rerun_with(&run, &picked).await?;
            let message = format!("run {id}: resumed; what did not succeed runs again, what succeeded does not");
            return Ok(Controlled { state, message });
        }
        let allowed = match action {
            Control::Stop => !state.is_terminal(),
            Control::Pause => matches!(state, ExecutionState::Running | ExecutionState::Submitted),
            Control::Resume => state == ExecutionState::Paused,
            Control::KillTask | Control::MarkSuccess => false, // a task's, not a run's
        };
        if !allowed {
            let which = match action {
                Control::Stop => "a submitted, running or paused run can be stopped",
                Control::Pause => "a submitted or running run can be paused",
                Control::Resume => "a paused or stopped run can be resumed (rerun a failed one)",
                Control::KillTask | Control::MarkSuccess => "a task instance can be",
            };
            return Err(AppError::WrongState(format!("run {id} is {state}: only {which}")));
        }
        self.command(&run, action, None).await?;
        let message = match action {
            Control::Stop => format!("run {id}: stop requested; its running tasks are killed and it ends stopped"),
            Control::Pause => format!("run {id}: pause requested; its running tasks finish and it ends paused"),
            _ => format!("run {id}: resume requested; it carries on where it was"),
        };
        Ok(Controlled { state, message })
    }

    /// Records an operator's kill of task instance `id` as a command on its run.
    pub async fn kill_task(&self, id: i64) -> Result<Controlled> {
        let (task, run) = self.find_task(id).await?;
        if task.state.is_terminal() || run.state.is_terminal() {
            return Err(AppError::WrongState(format!(
                "task instance {id} is {} (its run is {}): only a task that has not ended can be killed",
                task.state, run.state
            )));
        }
        self.command(&run, Control::KillTask, Some(id)).await?;
        let message =
            format!("task instance {id} ({}): kill requested; it ends killed and run {} fails", task.task_name, run.id);
        Ok(Controlled { state: task.state, message })
    }

    /// Marks task instance `id`, which ended without success, successful: the run goes on as
    /// if it had succeeded. On a run that has ended, this reruns the run from there.
    pub async fn mark_success(&self, id: i64) -> Result<Controlled> {
        let (task, run) = self.find_task(id).await?;
        if !task.state.is_unsuccessful() {
            return Err(AppError::WrongState(format!(
                "task instance {id} ({}) is {}: only a task that failed, was stopped or was killed can be marked \
                 successful",
                task.task_name, task.state
            )));
        }
        let message = if run.state.is_terminal() {
            let picked = self.rerun_pick(&run, |workflow, state| workflow.mark_success_tasks(state, id)).await?;
            self.rerun_with(&run, &picked).await?;
            format!("task instance {id} ({}): marked successful; run {} goes on from it", task.task_name, run.id)
        } else {
            self.command(&run, Control::MarkSuccess, Some(id)).await?;
            format!(
                "task instance {id} ({}): marked successful; run {} goes on as if it had succeeded",
                task.task_name, run.id
            )
        };
        Ok(Controlled { state: task.state, message })
    }

    /// Reruns run `id`, which has ended, keeping its id and history.
    pub async fn rerun(&self, id: i64, scope: RerunScope) -> Result<()> {
        let run = self.find_run(id).await?;
        if !run.state.is_terminal() || run.state == ExecutionState::Discarded {
            return Err(AppError::WrongState(format!(
                "run {id} is {}: only a run that has ended (not discarded) can be rerun",
                run.state
            )));
        }
        let from = match &scope {
            RerunScope::Failed => None,
            RerunScope::From(task) => Some(task.as_str()),
        };
        let picked = self.rerun_pick(&run, |workflow, state| workflow.rerun_tasks(state, from)).await?;
        self.rerun_with(&run, &picked).await?;
        info!(run_id = id, tasks = picked.len(), from = from.unwrap_or("(the failed tasks)"), "rerun requested");
        Ok(())
    }

    /// Up to `limit` bytes (0: the worker's default) of task instance `id`'s log from `offset`,
    /// read from the worker that ran it.
    pub async fn task_log(&self, id: i64, offset: u64) -> Result<LogChunk> {
        let task = self.0.store.task_instance(id).await?;
        let task = task.ok_or_else(|| AppError::NotFound(format!("no task instance {id}")))?;
        let worker = task
            .worker_addr
            .ok_or_else(|| AppError::WrongState(format!("task instance {id} has not been dispatched yet")))?;
        let mut client = self.0.workers.client(&worker).map_err(AppError::Internal)?;
        let reply = client
            .get_task_log(GetTaskLogRequest { task_instance_id: task.id, attempt: task.attempt, offset, limit: 0 })
            .await
            .map_err(|s| AppError::Unavailable(format!("cannot read the log from worker {worker}: {}", s.message())))?
            .into_inner();
        Ok(LogChunk { content: reply.content, next_offset: reply.next_offset, eof: reply.eof })
    }

    /// Creates task group `name` with `slots` slots.
    pub async fn create_task_group(&self, name: &str, slots: i32, description: &str) -> Result<TaskGroup> {
        porpoise_core::spec::check_name(name).map_err(|e| AppError::Invalid(format!("task group name: {e}")))?;
        check_slots(slots)?;
        if self.0.store.task_group(name).await?.is_some() {
            return Err(AppError::WrongState(format!("task group {name} exists already (change it with update)")));
        }
        let group = self.0.store.create_task_group(name, slots, description).await?;
        info!(task_group = name, slots, "task group created");
        Ok(group)
    }

    /// Every task group, with the slots in use and the tasks waiting.
    pub async fn task_groups(&self) -> Result<Vec<TaskGroup>> {
        Ok(self.0.store.task_groups().await?)
    }

    /// Changes task group `name`'s slots and/or description. Fewer slots than are in use take
    /// effect as tasks end: nothing running is stopped.
    pub async fn update_task_group(
        &self,
        name: &str,
        slots: Option<i32>,
        description: Option<&str>,
    ) -> Result<TaskGroup> {
        if let Some(slots) = slots {
            check_slots(slots)?;
        }
        if slots.is_none() && description.is_none() {
            return Err(AppError::Invalid("nothing to change: give --slots or --description".into()));
        }
        let group = self.0.store.update_task_group(name, slots, description).await?;
        self.0.slots_freed(name);
        info!(task_group = name, slots = group.slots, "task group updated");
        Ok(group)
    }

    /// Deletes task group `name`, unless a task instance not yet ended or the newest version of
    /// a workflow names it.
    /// Makes API token `name` with `role`; returns it and its secret (stored only hashed).
    pub async fn create_token(&self, name: &str, role: &str) -> Result<(ApiToken, String)> {
        porpoise_core::spec::check_name(name).map_err(|e| AppError::Invalid(format!("token name {e}")))?;
        let role: porpoise_core::auth::Role = role.parse().map_err(AppError::Invalid)?;
        let secret = crate::auth::new_secret().map_err(AppError::Internal)?;
        let token = match self.0.store.create_api_token(name, role.as_str(), &crate::auth::hash(&secret)).await {
            Err(StoreError::Conflict { .. }) => {
                return Err(AppError::WrongState(format!("token {name} exists already (delete it first)")));
            }
            other => other?,
        };
        info!(token = name, %role, "API token created");
        Ok((token, secret))
    }

    /// Every API token (names and roles; the secrets are not kept).
    pub async fn tokens(&self) -> Result<Vec<ApiToken>> {
        Ok(self.0.store.api_tokens().await?)
    }

    /// Deletes API token `name`: it stops working within seconds.
    pub async fn delete_token(&self, name: &str) -> Result<()> {
        if !self.0.store.delete_api_token(name).await? {
            return Err(AppError::NotFound(format!("no token {name}")));
        }
        info!(token = name, "API token deleted");
        Ok(())
    }

    pub async fn delete_task_group(&self, name: &str) -> Result<()> {
        let group = self.0.store.task_group(name).await?;
        let group = group.ok_or_else(|| AppError::NotFound(format!("no task group {name}")))?;
        if group.used + group.waiting > 0 {
            return Err(AppError::WrongState(format!(
                "task group {name} is in use ({} running, {} waiting): delete it once they end",
                group.used, group.waiting
            )));
        }
        for def in self.0.store.list_definitions().await? {
            if spec_of(&def)?.tasks.iter().any(|t| t.task_group.as_deref() == Some(name)) {
                return Err(AppError::WrongState(format!(
                    "task group {name} is named by workflow {} (version {}): change the workflow first",
                    def.name, def.version
                )));
            }
        }
        self.0.store.delete_task_group(name).await?;
        info!(task_group = name, "task group deleted");
        Ok(())
    }

    /// Starts a backfill of workflow `name`: one run per date from `req.from` to `req.to` — the
    /// schedule's fire times in the range, or one a day at 00:00 in the workflow's time zone
    /// when it has no schedule or `req.daily` — each with that time as its schedule time, run
    /// `req.parallel` at a time in date order (newest first with `req.reverse`). Returns the
    /// backfill and its runs.
    pub async fn backfill(&self, req: BackfillRequest) -> Result<(BackfillRow, Vec<WorkflowInstance>)> {
        let name = req.workflow.as_str();
        let def = self.0.store.latest_definition(name).await?;
        let def = def.ok_or_else(|| AppError::NotFound(format!("no workflow named {name:?}; apply it first")))?;
        let spec = spec_of(&def)?;
        let date = |flag: &str, text: &str| {
            chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
                .map_err(|_| AppError::Invalid(format!("{flag}: bad date {text:?} (write 2026-01-31)")))
        };
        let (from, to) = (date("--from", &req.from)?, date("--to", &req.to)?);
        if to < from {
            return Err(AppError::Invalid(format!("--to {to} is before --from {from}")));
        }
        if req.parallel == 0 {
            return Err(AppError::Invalid("--parallel must be at least 1".into()));
        }
        porpoise_core::limits::check_params(&req.params).map_err(AppError::Invalid)?;
        for (key, value) in &req.params {
            porpoise_core::dateparams::check(value).map_err(|e| AppError::Invalid(format!("param {key}: {e}")))?;
        }
        let schedule = self.0.store.schedule(name).await?;
        let timezone = schedule.as_ref().map_or_else(|| "UTC".to_string(), |s| s.spec.timezone.clone());
        let tz = porpoise_core::schedule::parse_timezone(&timezone).map_err(AppError::Internal)?;
        let midnight = |d: chrono::NaiveDate| porpoise_core::schedule::parse_instant(&d.to_string(), tz);
        let start = midnight(from).map_err(AppError::Internal)?;
        let end = midnight(to + chrono::Days::new(1)).map_err(AppError::Internal)?;
        let mut times: Vec<chrono::DateTime<chrono::Utc>> = match schedule.filter(|_| !req.daily) {
            Some(s) => {
                // the schedule's fire times in the range, whatever its own window says
                let spec = ScheduleSpec { start: None, end: None, ..s.spec };
                let schedule = Schedule::new(spec).map_err(|e| AppError::Internal(e.to_string()))?;
                let limit = MAX_BACKFILL_RUNS + 1;
                schedule.fire_times(start - chrono::Duration::seconds(1), end - chrono::Duration::seconds(1), limit)
            }
            None => {
                let days = from.iter_days().take_while(|d| *d <= to).take(MAX_BACKFILL_RUNS + 1);
                days.map(midnight).collect::<Result<_, String>>().map_err(AppError::Internal)?
            }
        };
        if times.len() > MAX_BACKFILL_RUNS {
            return Err(AppError::Invalid(format!(
                "the range has more than {MAX_BACKFILL_RUNS} dates: backfill it in parts"
            )));
        }
        if times.is_empty() {
            return Err(AppError::Invalid(format!("no fire time of the schedule falls from {from} to {to}")));
        }
        if req.reverse {
            times.reverse();
        }
        let runs = times
            .into_iter()
            .map(|t| NewRun {
                workflow_definition_id: def.id,
                workflow_name: def.name.clone(),
                priority: spec.priority,
                params: req.params.clone(),
                schedule_time: t,
                timezone: timezone.clone(),
                kind: RunKind::Backfill,
                execution: spec.execution,
                backfill: None,
            })
            .collect();
        let new =
            NewBackfill { workflow_name: def.name.clone(), parallel: req.parallel, keep_going: req.keep_going, runs };
        let (row, runs) = self.0.store.create_backfill(&new).await?;
        info!(backfill_id = row.id, workflow = name, runs = runs.len(), parallel = req.parallel, "backfill started");
        Ok((row, runs))
    }

    /// Backfill `id` and its runs, in order.
    pub async fn backfill_status(&self, id: i64) -> Result<(BackfillRow, Vec<WorkflowInstance>)> {
        self.0.store.backfill(id).await?.ok_or_else(|| AppError::NotFound(format!("no backfill {id}")))
    }

    /// Gives workflow `name` a schedule (one its spec does not set).
    pub async fn create_schedule(&self, name: &str, spec: ScheduleSpec) -> Result<ScheduleView> {
        if self.0.store.latest_definition(name).await?.is_none() {
            return Err(AppError::NotFound(format!("no workflow named {name:?}; apply it first")));
        }
        Schedule::new(spec.clone()).map_err(|e| AppError::Invalid(format!("--{}: {}", e.field, e.message)))?;
        match self.0.store.schedule(name).await? {
            Some(s) if s.from_spec => {
                return Err(AppError::WrongState(format!(
                    "workflow {name}'s schedule is set by its spec: change the spec's schedule: and apply it"
                )));
            }
            Some(_) => {
                return Err(AppError::WrongState(format!(
                    "workflow {name} has a schedule already (delete it first to make another)"
                )));
            }
            None => {}
        }
        let row = self.0.store.put_schedule(name, &spec, false).await?;
        info!(workflow = name, cron = %spec.cron, timezone = %spec.timezone, "schedule created");
        Ok(schedule_view(row))
    }

    /// Every schedule, with its next fire time.
    pub async fn schedules(&self) -> Result<Vec<ScheduleView>> {
        Ok(self.0.store.schedules().await?.into_iter().map(schedule_view).collect())
    }

    /// Workflow `name`'s schedule.
    pub async fn schedule(&self, name: &str) -> Result<ScheduleView> {
        let row = self.0.store.schedule(name).await?;
        row.map(schedule_view).ok_or_else(|| AppError::NotFound(format!("workflow {name} has no schedule")))
    }

    /// Pauses (`true`) or resumes workflow `name`'s schedule; a resumed schedule fires from now
    /// on, nothing for the time it was paused.
    pub async fn pause_schedule(&self, name: &str, paused: bool) -> Result<ScheduleView> {
        let current = self.schedule(name).await?;
        if current.row.paused == paused {
            let state = if paused { "paused" } else { "not paused" };
            return Err(AppError::WrongState(format!("workflow {name}'s schedule is {state} already")));
        }
        let row = self.0.store.set_schedule_paused(name, paused).await?;
        info!(workflow = name, paused, "schedule paused or resumed");
        Ok(schedule_view(row))
    }

    /// Deletes workflow `name`'s schedule (one its spec sets comes back with the next apply).
    pub async fn delete_schedule(&self, name: &str) -> Result<()> {
        self.schedule(name).await?;
        self.0.store.delete_schedule(name).await?;
        info!(workflow = name, "schedule deleted");
        Ok(())
    }

    async fn find_run(&self, id: i64) -> Result<WorkflowInstance> {
        self.0.store.workflow_instance(id).await?.ok_or_else(|| AppError::NotFound(format!("no run {id}")))
    }

    async fn find_task(&self, id: i64) -> Result<(TaskInstance, WorkflowInstance)> {
        let task = self.0.store.task_instance(id).await?;
        let task = task.ok_or_else(|| AppError::NotFound(format!("no task instance {id}")))?;
        let run = self.find_run(task.workflow_instance_id).await?;
        Ok((task, run))
    }

    /// Stores control command `action` (about task instance `task`) for `run` and wakes the
    /// consumer, which hands it to the run's runner.
    async fn command(&self, run: &WorkflowInstance, action: Control, task: Option<i64>) -> Result<i64> {
        let params = task.map(|t| (TASK_INSTANCE_PARAM.to_string(), t.to_string())).into_iter().collect();
        let command = NewCommand {
            kind: CommandKind::Control(action),
            workflow_definition_id: run.workflow_definition_id,
            workflow_instance_id: Some(run.id),
            params,
            priority: run.priority,
        };
        let command_id = self.0.store.insert_command(&command).await?;
        info!(run_id = run.id, task_instance_id = ?task, action = action.as_str(), command_id, "control requested");
        self.0.wake_consumer();
        Ok(command_id)
    }

    /// The task instances of ended run `run` that `pick` chooses, from the run as the engine
    /// rebuilds it.
    async fn rerun_pick(
        &self,
        run: &WorkflowInstance,
        pick: impl FnOnce(&Workflow, &RunState) -> Result<Vec<RerunTask>, String>,
    ) -> Result<Vec<RerunTask>> {
        let workflow = self.definition(run.workflow_definition_id).await?.workflow.clone();
        let rows = self.0.store.task_instances_of(run.id).await?;
        let (state, _) = RunState::rebuild(&workflow, run.state, rows.iter().map(TaskInstance::engine_state));
        pick(&workflow, &state).map_err(|why| AppError::WrongState(format!("run {}: {why}", run.id)))
    }

    /// Starts ended run `run` again with `tasks` as the engine picked them.
    async fn rerun_with(&self, run: &WorkflowInstance, tasks: &[RerunTask]) -> Result<()> {
        self.0.store.rerun(run.id, tasks).await.map_err(|e| match e {
            StoreError::Conflict { .. } => AppError::WrongState(format!("run {} changed meanwhile: {e}", run.id)),
            e => e.into(),
        })?;
        self.0.wake_consumer();
        Ok(())
    }

    fn view(&self, run: WorkflowInstance, version: i32) -> RunView {
        let reason = self.0.stall(run.id).or_else(|| run.state_reason.clone());
        let awaiting_takeover =
            !run.state.is_terminal() && run.owner.as_deref().is_some_and(|o| !self.0.masters.is_live(o));
        RunView { run, version, reason, awaiting_takeover }
    }

    async fn version_of(&self, definition_id: i64) -> i32 {
        self.definition(definition_id).await.map_or(0, |d| d.version)
    }

    /// Definition `id`, read once and then kept.
    async fn definition(&self, id: i64) -> Result<Arc<crate::definitions::Definition>> {
        self.0.definitions.get(self.0.store.as_ref(), id).await.map_err(|e| match e {
            crate::definitions::DefinitionError::Store(e) => AppError::from(e),
            other => AppError::Internal(other.to_string()),
        })
    }
}

fn spec_of(def: &WorkflowDefinition) -> Result<WorkflowSpec> {
    serde_json::from_str(&def.spec_json).map_err(|e| {
        AppError::Internal(format!("the stored spec of {} version {} is unreadable: {e}", def.name, def.version))
    })
}

/// The most runs one `StartRun` call starts.
pub const MAX_RUNS_PER_CALL: usize = 1000;

/// The longest one `WaitRun` call waits.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The most runs one backfill makes.
pub const MAX_BACKFILL_RUNS: usize = 1000;

/// What `porpoise backfill` asks for.
#[derive(Debug, Clone, Default)]
pub struct BackfillRequest {
    pub workflow: String,
    /// `YYYY-MM-DD`, both included.
    pub from: String,
    pub to: String,
    /// One run a day at 00:00, even when the workflow has a schedule.
    pub daily: bool,
    /// How many dates run at once.
    pub parallel: u32,
    /// Newest date first.
    pub reverse: bool,
    /// Go on after a date fails (otherwise the dates not started are stopped).
    pub keep_going: bool,
    pub params: BTreeMap<String, String>,
}

/// A schedule with its next fire time.
#[derive(Debug, Clone)]
pub struct ScheduleView {
    pub row: ScheduleRow,
    /// `None` when paused or past its end.
    pub next_fire: Option<chrono::DateTime<chrono::Utc>>,
}

fn schedule_view(row: ScheduleRow) -> ScheduleView {
    let next_fire = match Schedule::new(row.spec.clone()) {
        Ok(s) if !row.paused => s.next_fire(row.done_until.max(chrono::Utc::now())),
        _ => None,
    };
    ScheduleView { row, next_fire }
}

fn check_slots(slots: i32) -> Result<()> {
    if slots < 1 {
        return Err(AppError::Invalid(format!("--slots must be at least 1, not {slots}")));
    }
    Ok(())
}
