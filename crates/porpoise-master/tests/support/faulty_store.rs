//! A store that fails chosen writes on purpose, around a real one: before the write (the
//! database never saw it) or after it (the write is durable, its answer is lost), or slows
//! them down. These are the
//! faults a connection dropped at the wrong instant causes, placed exactly where a test needs
//! them, which stopping the real database cannot do.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use porpoise_core::engine::{TaskWrite, WorkflowWrite, Write};
use porpoise_core::{ExecutionState, WorkflowSpec};
use porpoise_store::*;

/// Which write fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A task instance moving to this state.
    TaskTo(ExecutionState),
    /// Creating task instances.
    CreateTasks,
    /// A workflow instance moving to this state.
    WorkflowTo(ExecutionState),
    /// A claim that claims at least one command (only [`When::AnswerLost`] is meaningful).
    ClaimCommands,
    /// Marking a control command done.
    CompleteCommand,
}

impl Op {
    /// The kind of write an engine write is.
    fn of(write: &Write) -> Op {
        match write {
            Write::Task(t) | Write::TakeSlot(t) => Op::TaskTo(t.new),
            Write::Workflow(w) => Op::WorkflowTo(w.new),
            Write::CreateTasks(_) => Op::CreateTasks,
            Write::CompleteCommand(_) => Op::CompleteCommand,
        }
    }
}

/// Where the write fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// The database never sees the write.
    Before,
    /// The write is committed, but the caller gets an outage error instead of its answer.
    AnswerLost,
    /// The write waits this long first (a slow database), then happens.
    Slow(std::time::Duration),
    /// The write waits until [`FaultyStore::release`], then happens.
    Held,
}

#[derive(Debug)]
struct Fault {
    op: Op,
    when: When,
    left: u32,
}

/// See the module doc.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    faults: Mutex<Vec<Fault>>,
    fired: Mutex<Vec<(Op, When)>>,
    /// Open once [`FaultyStore::release`] was called.
    gate: tokio::sync::watch::Sender<bool>,
    /// For each unit held at the gate, the task instances it writes.
    held: Mutex<Vec<Vec<i64>>>,
    /// For each transaction of several runs' writes: how many runs, and whether it committed.
    together: Mutex<Vec<(usize, bool)>>,
}

fn outage() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolTimedOut)
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            faults: Mutex::default(),
            fired: Mutex::default(),
            gate: tokio::sync::watch::channel(false).0,
            held: Mutex::default(),
            together: Mutex::default(),
        }
    }

    /// For each transaction of several runs' writes so far: how many runs, and whether it
    /// committed.
    pub fn together(&self) -> Vec<(usize, bool)> {
        self.together.lock().expect("together lock").clone()
    }

    /// Fails the next `times` writes that match `op`, at `when`.
    pub fn fail(&self, op: Op, when: When, times: u32) {
        self.faults.lock().expect("faults lock").push(Fault { op, when, left: times });
    }

    /// How many faults of `op` fired so far.
    pub fn fired(&self, op: Op) -> usize {
        self.fired.lock().expect("fired lock").iter().filter(|(o, _)| *o == op).count()
    }

    fn armed(&self, op: Op) -> bool {
        self.faults.lock().expect("faults lock").iter().any(|f| f.op == op && f.left > 0)
    }

    fn armed_with(&self, op: Op, when: When) -> bool {
        self.faults.lock().expect("faults lock").iter().any(|f| f.op == op && f.when == when && f.left > 0)
    }

    /// Lets every write [`When::Held`] at the gate, and every later one, go on.
    pub fn release(&self) {
        self.gate.send_replace(true);
    }

    /// For each unit held at the gate so far, the task instances it writes.
    pub fn held(&self) -> Vec<Vec<i64>> {
        self.held.lock().expect("held lock").clone()
    }

    /// The fault to apply to this call of `op`, if any is armed.
    fn take(&self, op: Op) -> Option<When> {
        let mut faults = self.faults.lock().expect("faults lock");
        let f = faults.iter_mut().find(|f| f.op == op && f.left > 0)?;
        f.left -= 1;
        let when = f.when;
        self.fired.lock().expect("fired lock").push((op, when));
        Some(when)
    }

    async fn faulty<T>(&self, op: Op, write: impl Future<Output = Result<T>>) -> Result<T> {
        match self.take(op) {
            Some(When::Before) => Err(outage()),
            Some(When::AnswerLost) => write.await.and_then(|_| Err(outage())),
            Some(When::Slow(delay)) => {
                tokio::time::sleep(delay).await;
                write.await
            }
            Some(When::Held) => {
                let _ = self.gate.subscribe().wait_for(|open| *open).await;
                write.await
            }
            None => write.await,
        }
    }
}

#[async_trait]
impl Store for FaultyStore {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }
    async fn command_feed(&self) -> Result<Box<dyn CommandFeed>> {
        self.inner.command_feed().await
    }
    async fn run_end_feed(&self) -> Result<Box<dyn CommandFeed>> {
        self.inner.run_end_feed().await
    }
    async fn close(&self) {
        self.inner.close().await
    }
    async fn apply_definition(&self, spec: &WorkflowSpec, spec_yaml: &str) -> Result<ApplyOutcome> {
        self.inner.apply_definition(spec, spec_yaml).await
    }
    async fn latest_definition(&self, name: &str) -> Result<Option<WorkflowDefinition>> {
        self.inner.latest_definition(name).await
    }
    async fn definition(&self, id: i64) -> Result<Option<WorkflowDefinition>> {
        self.inner.definition(id).await
    }
    async fn list_definitions(&self) -> Result<Vec<WorkflowDefinition>> {
        self.inner.list_definitions().await
    }
    async fn insert_command(&self, command: &NewCommand) -> Result<i64> {
        self.inner.insert_command(command).await
    }
    async fn claim_commands(&self, owner: &str, limit: u32) -> Result<Vec<Command>> {
        let claimed = self.inner.claim_commands(owner, limit).await?;
        if !claimed.is_empty() && self.take(Op::ClaimCommands).is_some() {
            return Err(outage());
        }
        Ok(claimed)
    }
    async fn create_runs(&self, run: &NewRun, count: u32) -> Result<Vec<WorkflowInstance>> {
        self.inner.create_runs(run, count).await
    }
    async fn create_run(&self, run: &NewRun) -> Result<(WorkflowInstance, i64)> {
        self.inner.create_run(run).await
    }
    async fn list_workflow_instances(
        &self,
        workflow_name: Option<&str>,
        state: Option<ExecutionState>,
        limit: u32,
    ) -> Result<Vec<WorkflowInstance>> {
        self.inner.list_workflow_instances(workflow_name, state, limit).await
    }
    async fn rerun(&self, id: i64, tasks: &[porpoise_core::engine::RerunTask]) -> Result<i64> {
        self.inner.rerun(id, tasks).await
    }
    async fn pending_control_commands(&self, owner: &str) -> Result<Vec<Command>> {
        self.inner.pending_control_commands(owner).await
    }
    async fn control_commands_of(&self, id: i64) -> Result<Vec<Command>> {
        self.inner.control_commands_of(id).await
    }
    async fn definition_version(&self, name: &str, version: i32) -> Result<Option<WorkflowDefinition>> {
        self.inner.definition_version(name, version).await
    }
    async fn create_workflow_instance(&self, new: &NewWorkflowInstance) -> Result<WorkflowInstance> {
        self.inner.create_workflow_instance(new).await
    }
    async fn workflow_instance(&self, id: i64) -> Result<Option<WorkflowInstance>> {
        self.inner.workflow_instance(id).await
    }
    async fn unfinished_workflow_instances_of(&self, owner: &str) -> Result<Vec<WorkflowInstance>> {
        self.inner.unfinished_workflow_instances_of(owner).await
    }
    async fn workflow_instances_in(&self, states: &[ExecutionState], limit: u32) -> Result<Vec<WorkflowInstance>> {
        self.inner.workflow_instances_in(states, limit).await
    }
    async fn update_workflow_state(&self, owner: &str, id: i64, write: &WorkflowWrite) -> Result<WorkflowInstance> {
        self.faulty(Op::WorkflowTo(write.new), self.inner.update_workflow_state(owner, id, write)).await
    }
    async fn take_over_workflow_instance(
        &self,
        id: i64,
        expected_owner: &str,
        expected_epoch: i64,
        new_owner: &str,
    ) -> Result<WorkflowInstance> {
        self.inner.take_over_workflow_instance(id, expected_owner, expected_epoch, new_owner).await
    }
    async fn create_task_instances(&self, owner: &str, new: &[NewTaskInstance]) -> Result<Vec<TaskInstance>> {
        self.faulty(Op::CreateTasks, self.inner.create_task_instances(owner, new)).await
    }
    async fn task_instance(&self, id: i64) -> Result<Option<TaskInstance>> {
        self.inner.task_instance(id).await
    }
    async fn task_instances_of(&self, workflow_instance_id: i64) -> Result<Vec<TaskInstance>> {
        self.inner.task_instances_of(workflow_instance_id).await
    }
    async fn task_instances_on_worker(
        &self,
        worker_addr: &str,
        states: &[ExecutionState],
    ) -> Result<Vec<TaskInstance>> {
        self.inner.task_instances_on_worker(worker_addr, states).await
    }
    async fn update_task_state(&self, owner: &str, write: &TaskWrite) -> Result<TaskInstance> {
        self.faulty(Op::TaskTo(write.new), self.inner.update_task_state(owner, write)).await
    }
    /// A unit fails as a whole when a fault is armed for any of its writes.
    async fn persist(&self, owner: &str, run: i64, writes: &[Write]) -> Result<Vec<TaskInstance>> {
        let armed = writes.iter().map(Op::of).find(|op| self.armed(*op));
        match armed {
            Some(op) => {
                if self.armed_with(op, When::Held) {
                    let tasks = writes
                        .iter()
                        .filter_map(|w| match w {
                            Write::Task(t) | Write::TakeSlot(t) => Some(t.id),
                            _ => None,
                        })
                        .collect();
                    self.held.lock().expect("held lock").push(tasks);
                }
                self.faulty(op, self.inner.persist(owner, run, writes)).await
            }
            None => self.inner.persist(owner, run, writes).await,
        }
    }
    async fn persist_together(&self, owner: &str, units: &[(i64, &[Write])]) -> Result<Option<Vec<Vec<TaskInstance>>>> {
        let mut ops = units.iter().flat_map(|(_, writes)| writes.iter()).map(Op::of);
        if let Some(op) = ops.clone().find(|op| self.armed_with(*op, When::Before)) {
            // an outage hits the whole group
            self.take(op);
            self.together.lock().expect("together lock").push((units.len(), false));
            return Err(outage());
        }
        // a unit with another fault armed goes alone, through `persist`, where the fault fires
        if ops.any(|op| self.armed(op)) {
            return Ok(None);
        }
        let made = self.inner.persist_together(owner, units).await;
        self.together.lock().expect("together lock").push((units.len(), matches!(made, Ok(Some(_)))));
        made
    }
    async fn put_schedule(
        &self,
        name: &str,
        spec: &porpoise_core::schedule::ScheduleSpec,
        from_spec: bool,
    ) -> Result<ScheduleRow> {
        self.inner.put_schedule(name, spec, from_spec).await
    }
    async fn schedule(&self, name: &str) -> Result<Option<ScheduleRow>> {
        self.inner.schedule(name).await
    }
    async fn schedules(&self) -> Result<Vec<ScheduleRow>> {
        self.inner.schedules().await
    }
    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<ScheduleRow> {
        self.inner.set_schedule_paused(name, paused).await
    }
    async fn delete_schedule(&self, name: &str) -> Result<()> {
        self.inner.delete_schedule(name).await
    }
    async fn fire_schedules(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        max_gap: std::time::Duration,
        plan: &PlanFires<'_>,
    ) -> Result<Vec<FiredRun>> {
        self.inner.fire_schedules(now, max_gap, plan).await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn release_waiting(&self, decide: &DecideReleases<'_>) -> Result<Released> {
        self.inner.release_waiting(decide).await
    }
    async fn create_backfill(&self, new: &NewBackfill) -> Result<(BackfillRow, Vec<WorkflowInstance>)> {
        self.inner.create_backfill(new).await
    }
    async fn backfill(&self, id: i64) -> Result<Option<(BackfillRow, Vec<WorkflowInstance>)>> {
        self.inner.backfill(id).await
    }
    async fn stop_waiting_run(&self, id: i64, reason: &str) -> Result<bool> {
        self.inner.stop_waiting_run(id, reason).await
    }
    async fn create_task_group(&self, name: &str, slots: i32, description: &str) -> Result<TaskGroup> {
        self.inner.create_task_group(name, slots, description).await
    }
    async fn task_group(&self, name: &str) -> Result<Option<TaskGroup>> {
        self.inner.task_group(name).await
    }
    async fn task_groups(&self) -> Result<Vec<TaskGroup>> {
        self.inner.task_groups().await
    }
    async fn update_task_group(&self, name: &str, slots: Option<i32>, description: Option<&str>) -> Result<TaskGroup> {
        self.inner.update_task_group(name, slots, description).await
    }
    async fn delete_task_group(&self, name: &str) -> Result<()> {
        self.inner.delete_task_group(name).await
    }
    async fn create_api_token(&self, name: &str, role: &str, token_hash: &str) -> Result<porpoise_store::ApiToken> {
        self.inner.create_api_token(name, role, token_hash).await
    }
    async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<porpoise_store::ApiToken>> {
        self.inner.api_token_by_hash(token_hash).await
    }
    async fn api_tokens(&self) -> Result<Vec<porpoise_store::ApiToken>> {
        self.inner.api_tokens().await
    }
    async fn delete_api_token(&self, name: &str) -> Result<bool> {
        self.inner.delete_api_token(name).await
    }
    async fn record_dead_letter(&self, letter: &NewDeadLetter) -> Result<i64> {
        self.inner.record_dead_letter(letter).await
    }
    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters(limit).await
    }
}
