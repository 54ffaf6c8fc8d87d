//! The workflow runner (DolphinScheduler's WorkflowExecuteRunnable): one tokio task per
//! workflow instance owning its DAG state. Every change arrives as a [`StateEvent`] in its
//! inbox and is handled one at a time, in order, by the handler for its kind.
//!
//! A handler persists first and changes memory only after the write succeeded. Its error is
//! typed: a retryable error restores the memory the attempt touched, keeps the event at the head
//! of the inbox and retries it with capped exponential backoff (after a few failures the run is
//! reported stalled); a drop error removes the event and records it in the dead-letter table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use porpoise_core::{
    Backoff, Dag, DropReason, ExecutionState, HandlerError, StateEvent, StateEventKind, TaskSpec, TimeoutStrategy,
    WorkflowSpec,
};
use porpoise_store::{
    NewDeadLetter, NewTaskInstance, StoreError, TaskInstance, TaskStateUpdate, WorkflowInstance, WorkflowStateUpdate,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::metrics as m;
use crate::queue::QueuedTask;
use crate::{Shared, dispatch};

use ExecutionState::*;

/// What became of an event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ack {
    /// Applied.
    Handled,
    /// Nothing to do: a duplicate, a late or a stale event.
    Ignored,
    /// Could not be handled now; it stays queued and will be retried.
    RetryLater(String),
    /// Broken; recorded in the dead-letter table.
    Dropped(String),
    /// The run belongs to another master now (`None`: to none yet): send the event there.
    Moved(Option<String>),
}

/// The details of a task state change, carried in [`StateEvent::detail`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct TaskChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// For a dispatch that went back to `submitted`: how long to wait before queueing again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeue_after_ms: Option<u64>,
    /// The worker killed the attempt at its timeout.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
}

struct Envelope {
    event: StateEvent,
    reply: Option<oneshot::Sender<Ack>>,
    /// Reply at the first outcome (a worker's event: RetryLater lets the worker resend) rather
    /// than the final one (the dispatcher waits for the write).
    early: bool,
    /// Held while the event is queued or being handled (see [`crate::events`]).
    _pending: Option<PendingGuard>,
}

/// What identifies a worker's event for deduplication while it waits in an inbox.
pub(crate) type EventKey = (i64, i32, ExecutionState);

/// Marks a worker's event as queued in a runner; unmarks it when dropped.
#[derive(Debug)]
pub(crate) struct PendingGuard {
    pub set: Arc<std::sync::Mutex<std::collections::HashSet<EventKey>>>,
    pub key: EventKey,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

/// Sends events to one runner.
#[derive(Debug, Clone)]
pub(crate) struct RunnerHandle {
    tx: mpsc::UnboundedSender<Envelope>,
}

impl RunnerHandle {
    /// Queues an event nobody waits for (timers).
    pub fn post(&self, event: StateEvent) {
        let _ = self.tx.send(Envelope { event, reply: None, early: false, _pending: None });
    }

    /// Queues a worker's event; the receiver gets the first outcome. `Err` if the runner is gone.
    pub fn report(&self, event: StateEvent, pending: PendingGuard) -> Result<oneshot::Receiver<Ack>, StateEvent> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Envelope { event, reply: Some(tx), early: true, _pending: Some(pending) })
            .map_err(|e| e.0.event)?;
        Ok(rx)
    }

    /// Queues an event and waits for its final outcome.
    pub async fn request(&self, event: StateEvent) -> Ack {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Envelope { event, reply: Some(tx), early: false, _pending: None }).is_err() {
            return Ack::Ignored;
        }
        rx.await.unwrap_or(Ack::Ignored)
    }
}

#[derive(Debug, Clone)]
struct TaskRt {
    id: i64,
    state: ExecutionState,
    attempt: i32,
    /// Attempts failed over: they do not count against the task's retries.
    failovers: i32,
    worker: Option<String>,
}

impl TaskRt {
    fn of(row: &TaskInstance) -> TaskRt {
        TaskRt {
            id: row.id,
            state: row.state,
            attempt: row.attempt,
            failovers: row.failovers,
            worker: row.worker_addr.clone(),
        }
    }
}

#[derive(Clone)]
struct Memory {
    instance: WorkflowInstance,
    tasks: Vec<Option<TaskRt>>,
    by_id: HashMap<i64, usize>,
    failing: Option<String>,
}

/// One workflow instance's runner.
pub(crate) struct Runner {
    shared: Arc<Shared>,
    spec: WorkflowSpec,
    dag: Dag,
    params: HashMap<String, String>,
    mem: Memory,
    handle: RunnerHandle,
    finished: bool,
    /// The handled event may have made tasks ready or ended the run: [`Runner::advance`] is due.
    advance_pending: bool,
    /// The run was taken over by this master (`None` inside: by none yet).
    moved_to: Option<Option<String>>,
}

/// How many failed attempts at one event before the run is reported stalled.
const STALL_AFTER: u32 = 3;

impl Runner {
    /// Starts the runner of `instance` (owned by this master) unless one runs already. The
    /// runner first loads the run's task instances: a new run has none, a run resumed after a
    /// restart or taken over carries on from what the database holds.
    pub fn spawn(shared: Arc<Shared>, instance: WorkflowInstance, spec: WorkflowSpec) -> Option<RunnerHandle> {
        let (tx, inbox) = mpsc::unbounded_channel();
        let handle = RunnerHandle { tx };
        let mut params: HashMap<String, String> = spec.params.clone().into_iter().collect();
        params.extend(instance.params.clone());
        let dag = spec.dag();
        let id = instance.id;
        let runner = Runner {
            shared: shared.clone(),
            params,
            mem: Memory { instance, tasks: vec![None; dag.len()], by_id: HashMap::new(), failing: None },
            spec,
            dag,
            handle: handle.clone(),
            finished: false,
            advance_pending: false,
            moved_to: None,
        };
        if shared.draining.is_cancelled() || !shared.add_runner(id, handle.clone()) {
            return None;
        }
        shared.spawner.spawn(runner.run(inbox));
        Some(handle)
    }

    /// The event that starts a run, and stands for its resumption.
    fn start_event(&self) -> StateEvent {
        StateEvent {
            kind: StateEventKind::WorkflowStateChange,
            workflow_instance_id: self.mem.instance.id,
            task_instance_id: None,
            attempt: None,
            state: Some(Running),
            detail: serde_json::Value::Null,
        }
    }

    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Envelope>) {
        let id = self.mem.instance.id;
        match self.rebuild().await {
            None => {}
            Some(_) if self.mem.instance.state == Submitted => {
                metrics::counter!(m::WORKFLOWS_SUBMITTED).increment(1);
                let start = Envelope { event: self.start_event(), reply: None, early: false, _pending: None };
                self.process(start).await;
            }
            Some(rows) => self.resume(&rows).await,
        }
        let draining = self.shared.draining.clone();
        while !self.finished {
            let env = tokio::select! {
                biased;
                () = draining.cancelled() => break,
                env = inbox.recv() => env,
            };
            let Some(env) = env else { break };
            self.process(env).await;
        }
        self.shared.remove_runner(id);
        inbox.close();
        // events that raced with the end of the run are late (or belong to its new owner, or,
        // when the master stops, to the next one)
        let late = match &self.moved_to {
            Some(owner) => Ack::Moved(owner.clone()),
            None if !self.finished => Ack::RetryLater("the master is stopping".into()),
            None => Ack::Ignored,
        };
        while let Ok(env) = inbox.try_recv() {
            if let Some(tx) = env.reply {
                let _ = tx.send(late.clone());
            }
        }
        debug!(workflow_instance_id = id, "runner finished");
    }

    /// Loads the run and its task instances into memory, retrying until the database answers,
    /// and returns the task instances; `None` when there is nothing to run: the run is gone,
    /// finished or owned by another master (this runner was started from an older reading).
    async fn rebuild(&mut self) -> Option<Vec<TaskInstance>> {
        let id = self.mem.instance.id;
        let mut failures = 0u32;
        let loaded = loop {
            let read = async {
                let instance = self.shared.store.workflow_instance(id).await?;
                let rows = self.shared.store.task_instances_of(id).await?;
                Ok::<_, StoreError>(instance.map(|i| (i, rows)))
            };
            match read.await {
                Ok(loaded) => break loaded,
                Err(e) => {
                    failures += 1;
                    error!(workflow_instance_id = id, error = %e, failures, "cannot load the run; retrying");
                    if failures == STALL_AFTER {
                        self.shared.set_stall(id, format!("stalled loading the run: {e}"));
                    }
                    tokio::time::sleep(self.shared.event_backoff.delay(failures - 1)).await;
                    if self.shared.draining.is_cancelled() {
                        self.shared.clear_stall(id);
                        return None; // the master stops: the next owner loads it
                    }
                }
            }
        };
        if failures >= STALL_AFTER {
            self.shared.clear_stall(id);
        }
        let Some((instance, rows)) = loaded else {
            warn!(workflow_instance_id = id, "run to start is gone");
            self.finished = true;
            return None;
        };
        if instance.owner.as_deref() != Some(self.shared.addr.as_str()) {
            info!(workflow_instance_id = id, owner = ?instance.owner, "run is owned by another master; not started");
            self.moved_to = Some(instance.owner);
            self.finished = true;
            return None;
        }
        if instance.state.is_terminal() {
            debug!(workflow_instance_id = id, state = %instance.state, "run has finished; not started");
            self.finished = true;
            return None;
        }
        self.mem.instance = instance;
        for t in &rows {
            let Some(idx) = self.dag.index_of(&t.task_name) else {
                warn!(workflow_instance_id = id, task_instance_id = t.id, task = %t.task_name, "task instance of no task in the workflow; left alone");
                continue;
            };
            self.mem.by_id.insert(t.id, idx);
            self.mem.tasks[idx] = Some(TaskRt::of(t));
            if matches!(t.state, Failure | Stopped) {
                self.mem.failing.get_or_insert_with(|| failure_reason(&t.task_name, t.exit_code, ""));
            }
        }
        Some(rows)
    }

    /// Carries on a run rebuilt from the database (after a restart or a takeover): queues what
    /// waited for a worker, resends what was dispatched, counts the slots of what runs, arms
    /// the timers again, then moves the run on.
    async fn resume(&mut self, rows: &[TaskInstance]) {
        self.shared.workers.listed().await;
        info!(workflow_instance_id = self.mem.instance.id, workflow = %self.spec.name, "run resumed");
        for row in rows {
            let Some(&idx) = self.mem.by_id.get(&row.id) else { continue };
            let task = &self.spec.tasks[idx];
            match (row.state, row.worker_addr.clone()) {
                (Submitted, _) => self.enqueue(idx, Duration::ZERO, None),
                (Dispatched | Running, Some(worker)) if !self.shared.workers.contains(&worker) => {
                    // its worker left while nobody owned the run: fail it over after the grace
                    self.shared.worker_lost(worker);
                }
                (Dispatched, Some(worker)) => {
                    self.shared.workers.reserve(&worker);
                    self.shared.spawner.spawn(dispatch::send(self.shared.clone(), self.queued(idx, None), worker));
                }
                (Dispatched, None) => {
                    // recorded as dispatched to nobody: queue it again
                    let change = TaskChange { requeue_after_ms: Some(0), ..Default::default() };
                    self.handle.post(self.task_event(row.id, row.attempt, Submitted, change));
                }
                (Running, worker) => {
                    if let Some(worker) = worker {
                        self.shared.workers.reserve(&worker);
                    }
                    if let (Some(timeout), TimeoutStrategy::Warn) = (task.timeout, task.timeout_strategy) {
                        let elapsed =
                            row.started_at.map_or(Duration::ZERO, |t| (Utc::now() - t).to_std().unwrap_or_default());
                        let left = timeout.saturating_sub(elapsed);
                        self.schedule(StateEventKind::TaskTimeout, row.id, row.attempt, Running, left);
                    }
                }
                (Delayed, _) => {
                    let waited = row.ended_at.map_or(Duration::ZERO, |t| (Utc::now() - t).to_std().unwrap_or_default());
                    let left = task.retry_interval.saturating_sub(waited);
                    self.schedule(StateEventKind::TaskRetry, row.id, row.attempt, Submitted, left);
                }
                _ => {}
            }
        }
        self.advance_pending = true;
        let event = self.start_event();
        let failures = self.advance_until_done(&event, 0).await;
        if failures >= STALL_AFTER {
            self.shared.clear_stall(self.mem.instance.id);
        }
    }

    /// A task state change event about attempt `attempt` of task instance `id`.
    fn task_event(&self, id: i64, attempt: i32, state: ExecutionState, change: TaskChange) -> StateEvent {
        StateEvent {
            kind: StateEventKind::TaskStateChange,
            workflow_instance_id: self.mem.instance.id,
            task_instance_id: Some(id),
            attempt: Some(attempt),
            state: Some(state),
            detail: serde_json::to_value(change).unwrap_or_default(),
        }
    }

    async fn process(&mut self, env: Envelope) {
        let Envelope { event, mut reply, early, _pending } = env;
        let kind = event.kind.as_str();
        let mut failures = 0u32;
        loop {
            let snapshot = self.mem.clone();
            match self.handle(&event).await {
                Ok(applied) => {
                    let counter = if applied { m::STATE_EVENTS_HANDLED } else { m::STATE_EVENTS_IGNORED };
                    metrics::counter!(counter, "kind" => kind).increment(1);
                    if let Some(tx) = reply.take() {
                        let _ = tx.send(if applied { Ack::Handled } else { Ack::Ignored });
                    }
                    break;
                }
                Err(HandlerError::Drop(reason)) => {
                    self.mem = snapshot;
                    self.advance_pending = false;
                    let reason = reason.to_string();
                    self.dead_letter(&event, &reason).await;
                    if let Some(tx) = reply.take() {
                        let _ = tx.send(Ack::Dropped(reason));
                    }
                    break;
                }
                Err(HandlerError::NotOwner { owner }) => {
                    self.mem = snapshot;
                    self.hand_over(owner.clone());
                    if let Some(tx) = reply.take() {
                        let _ = tx.send(Ack::Moved(owner));
                    }
                    return;
                }
                Err(HandlerError::Retryable { reason, after }) => {
                    self.mem = snapshot;
                    self.advance_pending = false;
                    failures += 1;
                    if early && let Some(tx) = reply.take() {
                        let _ = tx.send(Ack::RetryLater(reason.clone()));
                    }
                    self.wait_to_retry(kind, failures, &reason, after).await;
                    if self.shared.draining.is_cancelled() {
                        // the master stops: the event stays with its sender, for the next owner
                        if let Some(tx) = reply.take() {
                            let _ = tx.send(Ack::RetryLater("the master is stopping".into()));
                        }
                        self.advance_pending = false;
                        return;
                    }
                }
            }
        }
        // The event is durable and its effects (a freed slot, counters, timers) have happened
        // once; what follows from it (new tasks, the run's end) is retried on its own.
        let failures = self.advance_until_done(&event, failures).await;
        if failures >= STALL_AFTER {
            self.shared.clear_stall(self.mem.instance.id);
        }
    }

    /// Runs [`Runner::advance`] while it is due, retrying it on its own (`event` is the one that
    /// made it due, `failures` how often handling it failed so far). Returns the failures.
    async fn advance_until_done(&mut self, event: &StateEvent, mut failures: u32) -> u32 {
        let kind = event.kind.as_str();
        while self.advance_pending {
            match self.advance().await {
                Ok(()) => self.advance_pending = false,
                Err(HandlerError::Drop(reason)) => {
                    self.advance_pending = false;
                    self.dead_letter(event, &reason.to_string()).await;
                }
                Err(HandlerError::NotOwner { owner }) => self.hand_over(owner),
                Err(HandlerError::Retryable { reason, after }) => {
                    failures += 1;
                    self.wait_to_retry(kind, failures, &reason, after).await;
                    if self.shared.draining.is_cancelled() {
                        break; // the next owner moves the run on from the database
                    }
                }
            }
        }
        failures
    }

    /// Another master took the run over: this runner writes nothing more and stops; events
    /// still queued for it go to the new owner (their senders are told where).
    fn hand_over(&mut self, owner: Option<String>) {
        warn!(
            run_id = self.mem.instance.id,
            owner = owner.as_deref().unwrap_or("none yet"),
            "the run is owned by another master now; this runner stops"
        );
        self.advance_pending = false;
        self.finished = true;
        self.moved_to = Some(owner);
        // the slots its attempts hold are the new owner's to count now
        for t in self.mem.tasks.iter().flatten() {
            if let (Dispatched | Running, Some(worker)) = (t.state, &t.worker) {
                self.shared.release_worker(worker);
            }
        }
    }

    /// Says that handling a `kind` event failed for the `failures`th time, reports the run
    /// stalled at [`STALL_AFTER`] failures, and waits before the retry.
    async fn wait_to_retry(&self, kind: &'static str, failures: u32, reason: &str, after: Option<Duration>) {
        metrics::counter!(m::STATE_EVENTS_RETRIED, "kind" => kind).increment(1);
        let delay = after.unwrap_or_else(|| self.shared.event_backoff.delay(failures - 1));
        error!(
            workflow_instance_id = self.mem.instance.id,
            kind,
            failures,
            retry_in = ?delay,
            %reason,
            "state event handling failed; will retry"
        );
        if failures == STALL_AFTER {
            self.shared.set_stall(self.mem.instance.id, format!("stalled handling a {kind} event: {reason}"));
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = self.shared.draining.cancelled() => {} // the caller gives the event up
        }
    }

    /// Moves the run on after a change: creates and queues the tasks that became ready, and ends
    /// the run when nothing is left to do. Safe to repeat.
    async fn advance(&mut self) -> Result<(), HandlerError> {
        self.call_off_retries().await?;
        self.submit_ready().await?;
        self.maybe_finish().await
    }

    /// Once the run is failing, a failed attempt waiting for its retry is not retried: the task
    /// fails now, so that the run ends when its running tasks have finished.
    async fn call_off_retries(&mut self) -> Result<(), HandlerError> {
        if self.mem.failing.is_none() {
            return Ok(());
        }
        let delayed: Vec<TaskRt> = self.mem.tasks.iter().flatten().filter(|t| t.state == Delayed).cloned().collect();
        for t in delayed {
            self.persist_task(&TaskStateUpdate::new(t.id, &self.shared.addr, Delayed, t.attempt, Failure)).await?;
            if let Some(&idx) = self.mem.by_id.get(&t.id)
                && let Some(rt) = self.mem.tasks[idx].as_mut()
            {
                rt.state = Failure;
            }
            metrics::counter!(m::TASKS_FINISHED, "state" => "failure").increment(1);
            info!(task_instance_id = t.id, attempt = t.attempt, "retry called off: the run is failing");
        }
        Ok(())
    }

    /// Records a dropped event; retries the write until it succeeds (it must not be lost).
    async fn dead_letter(&self, event: &StateEvent, reason: &str) {
        let kind = event.kind.as_str();
        metrics::counter!(m::STATE_EVENTS_DROPPED, "kind" => kind).increment(1);
        warn!(workflow_instance_id = event.workflow_instance_id, task_instance_id = ?event.task_instance_id, kind, %reason, "state event dropped");
        record_dead_letter(&self.shared, event, reason).await;
    }

    /// Dispatches to the handler of the event's kind. `Ok(false)`: nothing to do.
    async fn handle(&mut self, event: &StateEvent) -> Result<bool, HandlerError> {
        match event.kind {
            StateEventKind::TaskStateChange => self.on_task_state_change(event).await,
            StateEventKind::TaskRetry => self.on_task_retry(event).await,
            StateEventKind::WorkflowStateChange => self.on_workflow_state_change(event).await,
            StateEventKind::TaskTimeout => self.on_task_timeout(event).await,
            StateEventKind::WorkerLost => self.on_worker_lost(event),
            StateEventKind::TaskFailover => self.on_task_failover(event).await,
            StateEventKind::OwnershipCheck => self.still_owner().await.map(|()| false),
            kind @ (StateEventKind::WorkflowTimeout
            | StateEventKind::WaitTaskGroup
            | StateEventKind::WorkflowBlocked) => {
                Err(DropReason::Unsupported(format!("{kind} events are not handled yet")).into())
            }
        }
    }

    async fn on_workflow_state_change(&mut self, event: &StateEvent) -> Result<bool, HandlerError> {
        let target = event.state.ok_or_else(|| DropReason::Malformed("no target state".into()))?;
        let current = self.mem.instance.state;
        match (current, target) {
            (Submitted, Running) => {
                self.persist_workflow(Running, None, Some(Utc::now()), None).await?;
                info!(workflow_instance_id = self.mem.instance.id, workflow = %self.spec.name, "run started");
                self.advance_pending = true;
                Ok(true)
            }
            (c, t) if c == t => Ok(false),
            (c, t) => {
                Err(DropReason::Unsupported(format!("workflow transition {c} -> {t} (run control comes later)")).into())
            }
        }
    }

    async fn on_task_state_change(&mut self, event: &StateEvent) -> Result<bool, HandlerError> {
        let (idx, cur) = self.task_of(event)?;
        let attempt = event.attempt.ok_or_else(|| DropReason::Malformed("no attempt".into()))?;
        let requested = event.state.ok_or_else(|| DropReason::Malformed("no target state".into()))?;
        let change: TaskChange = if event.detail.is_null() {
            TaskChange::default()
        } else {
            serde_json::from_value(event.detail.clone()).map_err(|e| DropReason::Malformed(e.to_string()))?
        };
        if attempt < cur.attempt {
            debug!(task_instance_id = cur.id, attempt, current = cur.attempt, "event of an earlier attempt ignored");
            return Ok(false);
        }
        if attempt > cur.attempt {
            return Err(DropReason::Malformed(format!(
                "attempt {attempt} is ahead of the current attempt {}",
                cur.attempt
            ))
            .into());
        }
        let task = self.spec.tasks[idx].clone();
        let retries_used = (cur.attempt - 1 - cur.failovers).max(0) as u32;
        let target = if requested == Failure && retries_used < task.retries { Delayed } else { requested };
        if cur.state == target {
            return Ok(false);
        }
        if target == Dispatched && cur.state != Submitted {
            // the dispatcher raced with another dispatch of the same attempt: only one may send it
            return Ok(false);
        }
        if target == Submitted && cur.state != Dispatched {
            // a requeue that lost to the worker's own report: the task is under way already
            return Ok(false);
        }
        if !cur.state.can_transition_to(target) {
            if cur.state.is_terminal() || cur.state == Delayed || (target == Running && cur.state != Submitted) {
                debug!(task_instance_id = cur.id, from = %cur.state, to = %target, "late event ignored");
                return Ok(false);
            }
            return Err(DropReason::IllegalTransition { from: cur.state, to: target }.into());
        }
        let mut update = TaskStateUpdate::new(cur.id, &self.shared.addr, cur.state, cur.attempt, target);
        if matches!(target, Dispatched | Running) {
            update.worker_addr = change.worker.clone();
        }
        update.exit_code = change.exit_code;
        update.started_at = change.started_at_ms.and_then(DateTime::from_timestamp_millis);
        if target.is_terminal() || target == Delayed {
            update.ended_at = change.ended_at_ms.and_then(DateTime::from_timestamp_millis).or(Some(Utc::now()));
        }
        // warnfail: the worker killed it at the timeout, as for fail; the overrun is also a warning
        let warned = change.timed_out && task.timeout_strategy == TimeoutStrategy::WarnFail;
        if warned {
            update.warning = Some(timeout_warning(&task, cur.attempt, "it was killed (timeout_strategy warnfail)"));
        }
        self.persist_task(&update).await?;
        if change.timed_out {
            self.timed_out(&task, cur.id, cur.attempt, warned);
        }

        // the write is durable: now memory
        let leaving_worker = matches!(cur.state, Dispatched | Running) && !matches!(target, Dispatched | Running);
        let rt = self.mem.tasks[idx].as_mut().ok_or(DropReason::UnknownTaskInstance(cur.id))?;
        rt.state = target;
        if matches!(target, Dispatched | Running) && change.worker.is_some() {
            rt.worker = change.worker.clone();
        }
        if leaving_worker && let Some(worker) = cur.worker.as_deref().or(change.worker.as_deref()) {
            self.shared.release_worker(worker);
        }
        match target {
            Success => {
                metrics::counter!(m::TASKS_FINISHED, "state" => "success").increment(1);
            }
            Failure | Stopped => {
                metrics::counter!(m::TASKS_FINISHED, "state" => target.as_str()).increment(1);
                self.mem.failing.get_or_insert_with(|| failure_reason(&task.name, change.exit_code, &change.message));
            }
            Delayed => {
                metrics::counter!(m::TASKS_RETRIED).increment(1);
                self.schedule(StateEventKind::TaskRetry, cur.id, cur.attempt, Submitted, task.retry_interval);
            }
            Submitted => {
                let delay = Duration::from_millis(change.requeue_after_ms.unwrap_or(0));
                self.enqueue(idx, delay, change.worker.clone());
            }
            Running => {
                if let (Some(timeout), TimeoutStrategy::Warn) = (task.timeout, task.timeout_strategy) {
                    // the worker does not enforce a warn timeout: the master notices the overrun
                    let elapsed = change.started_at_ms.map_or(0, |t| (Utc::now().timestamp_millis() - t).max(0));
                    let left = timeout.saturating_sub(Duration::from_millis(elapsed as u64));
                    self.schedule(StateEventKind::TaskTimeout, cur.id, cur.attempt, Running, left);
                }
            }
            _ => {}
        }
        self.advance_pending = target.is_terminal() || target == Delayed;
        Ok(true)
    }

    /// A worker left and stayed away past the grace period: posts one `task_failover` event per
    /// attempt of this run on it, so that each is failed over (and retried) on its own.
    fn on_worker_lost(&mut self, event: &StateEvent) -> Result<bool, HandlerError> {
        let worker = lost_worker(event)?;
        let hit: Vec<TaskRt> = self
            .mem
            .tasks
            .iter()
            .flatten()
            .filter(|t| matches!(t.state, Dispatched | Running) && t.worker.as_deref() == Some(worker))
            .cloned()
            .collect();
        for t in &hit {
            self.handle.post(StateEvent {
                kind: StateEventKind::TaskFailover,
                workflow_instance_id: self.mem.instance.id,
                task_instance_id: Some(t.id),
                attempt: Some(t.attempt),
                state: Some(t.state),
                detail: event.detail.clone(),
            });
        }
        Ok(!hit.is_empty())
    }

    /// Fails over one attempt on a lost worker: a new attempt, queued for another worker of
    /// the group. A failover does not use up a retry; the task instance keeps a warning
    /// saying which attempt was failed over and where it ran.
    async fn on_task_failover(&mut self, event: &StateEvent) -> Result<bool, HandlerError> {
        let (idx, cur) = self.task_of(event)?;
        let worker = lost_worker(event)?.to_string();
        if event.attempt != Some(cur.attempt)
            || !matches!(cur.state, Dispatched | Running)
            || cur.worker.as_deref() != Some(worker.as_str())
        {
            return Ok(false); // it ended, or moved on, meanwhile
        }
        let mut update = TaskStateUpdate::new(cur.id, &self.shared.addr, cur.state, cur.attempt, Submitted);
        update.attempt = Some(cur.attempt + 1);
        update.failover = true;
        let why = event.detail.get("why").and_then(serde_json::Value::as_str).unwrap_or("was lost");
        update.warning = Some(format!("attempt {} failed over: its worker {worker} {why}", cur.attempt));
        self.persist_task(&update).await?;
        if let Some(rt) = self.mem.tasks[idx].as_mut() {
            rt.state = Submitted;
            rt.attempt = cur.attempt + 1;
            rt.failovers += 1;
            rt.worker = None;
        }
        self.shared.release_worker(&worker);
        metrics::counter!(m::TASKS_FAILED_OVER).increment(1);
        warn!(
            run_id = self.mem.instance.id,
            task = %self.spec.tasks[idx].name,
            task_instance_id = cur.id,
            attempt = cur.attempt,
            %worker,
            "task attempt failed over: its worker was lost"
        );
        self.enqueue(idx, Duration::ZERO, Some(worker));
        Ok(true)
    }

    /// A warn timeout's timer fired: if the attempt still runs, mark and report the overrun;
    /// the task runs on to its own end.
    async fn on_task_timeout(&mut self, event: &StateEvent) -> Result<bool, HandlerError> {
        let (idx, cur) = self.task_of(event)?;
        if event.attempt != Some(cur.attempt) || cur.state != Running {
            return Ok(false); // it ended in time, or this is an earlier attempt's timer
        }
        let task = self.spec.tasks[idx].clone();
        let mut update = TaskStateUpdate::new(cur.id, &self.shared.addr, Running, cur.attempt, Running);
        update.warning = Some(timeout_warning(&task, cur.attempt, "it runs on (timeout_strategy warn)"));
        self.persist_task(&update).await?;
        self.timed_out(&task, cur.id, cur.attempt, true);
        Ok(true)
    }

    /// Counts a timeout, and logs it when the strategy warns.
    fn timed_out(&self, task: &TaskSpec, task_instance_id: i64, attempt: i32, warn: bool) {
        let strategy = task.timeout_strategy.as_str();
        metrics::counter!(m::TASKS_TIMED_OUT, "strategy" => strategy).increment(1);
        if warn {
            warn!(
                run_id = self.mem.instance.id,
                workflow = %self.spec.name,
                task = %task.name,
                task_instance_id,
                attempt,
                timeout = %humantime::format_duration(task.timeout.unwrap_or_default()),
                timeout_strategy = strategy,
                "task ran past its timeout"
            );
        }
    }

    async fn on_task_retry(&mut self, event: &StateEvent) -> Result<bool, HandlerError> {
        let (idx, cur) = self.task_of(event)?;
        if cur.state != Delayed || event.attempt != Some(cur.attempt) || self.mem.failing.is_some() {
            return Ok(false);
        }
        let mut update = TaskStateUpdate::new(cur.id, &self.shared.addr, Delayed, cur.attempt, Submitted);
        update.attempt = Some(cur.attempt + 1);
        self.persist_task(&update).await?;
        if let Some(rt) = self.mem.tasks[idx].as_mut() {
            rt.state = Submitted;
            rt.attempt = cur.attempt + 1;
            rt.worker = None;
        }
        info!(task_instance_id = cur.id, attempt = cur.attempt + 1, "task retried");
        self.enqueue(idx, Duration::ZERO, None);
        Ok(true)
    }

    fn task_of(&self, event: &StateEvent) -> Result<(usize, TaskRt), HandlerError> {
        let ti = event.task_instance_id.ok_or_else(|| DropReason::Malformed("no task instance".into()))?;
        let idx = *self.mem.by_id.get(&ti).ok_or(DropReason::UnknownTaskInstance(ti))?;
        let rt = self.mem.tasks[idx].clone().ok_or(DropReason::UnknownTaskInstance(ti))?;
        Ok((idx, rt))
    }

    /// Posts a `kind` event about one task attempt into this runner's inbox `after` from now.
    fn schedule(
        &self,
        kind: StateEventKind,
        task_instance_id: i64,
        attempt: i32,
        state: ExecutionState,
        after: Duration,
    ) {
        let handle = self.handle.clone();
        let wi = self.mem.instance.id;
        self.shared.spawner.spawn(async move {
            tokio::time::sleep(after).await;
            handle.post(StateEvent {
                kind,
                workflow_instance_id: wi,
                task_instance_id: Some(task_instance_id),
                attempt: Some(attempt),
                state: Some(state),
                detail: serde_json::Value::Null,
            });
        });
    }

    /// Creates the task instances that became ready and queues them.
    async fn submit_ready(&mut self) -> Result<(), HandlerError> {
        if self.mem.failing.is_some() {
            return Ok(());
        }
        let succeeded: Vec<bool> =
            self.mem.tasks.iter().map(|t| t.as_ref().is_some_and(|t| t.state == Success)).collect();
        let started: Vec<bool> = self.mem.tasks.iter().map(Option::is_some).collect();
        let ready = self.dag.ready(&succeeded, &started);
        if ready.is_empty() {
            return Ok(());
        }
        let wi = self.mem.instance.id;
        let new: Vec<NewTaskInstance> = ready
            .iter()
            .map(|&i| NewTaskInstance {
                workflow_instance_id: wi,
                task_name: self.dag.name(i).to_string(),
                state: Submitted,
            })
            .collect();
        let created = match self.shared.store.create_task_instances(&self.shared.addr, &new).await {
            Ok(created) => created,
            Err(e @ StoreError::Conflict { .. }) => {
                self.still_owner().await?;
                return Err(store_error(e));
            }
            Err(e) => return Err(store_error(e)),
        };
        for (&idx, ti) in ready.iter().zip(created) {
            self.mem.by_id.insert(ti.id, idx);
            self.mem.tasks[idx] = Some(TaskRt::of(&ti));
        }
        for idx in ready {
            if self.mem.tasks[idx].as_ref().is_some_and(|t| t.state == Submitted) {
                self.enqueue(idx, Duration::ZERO, None);
            }
        }
        Ok(())
    }

    /// Queues task `idx`'s current attempt after `delay`, away from worker `avoid` if it can.
    fn enqueue(&self, idx: usize, delay: Duration, avoid: Option<String>) {
        if self.mem.tasks[idx].is_none() {
            return;
        }
        metrics::counter!(m::TASKS_SUBMITTED).increment(1);
        self.shared.queue.push_after(self.queued(idx, avoid), delay);
    }

    /// Task `idx`'s current attempt as the dispatcher sends it. The task instance must exist.
    fn queued(&self, idx: usize, avoid: Option<String>) -> QueuedTask {
        let (id, attempt) = self.mem.tasks[idx].as_ref().map_or((0, 0), |t| (t.id, t.attempt));
        let task = &self.spec.tasks[idx];
        QueuedTask {
            workflow_instance_id: self.mem.instance.id,
            task_instance_id: id,
            attempt,
            epoch: self.mem.instance.epoch,
            workflow_name: self.spec.name.clone(),
            task_name: task.name.clone(),
            task_type: task.task_type.as_str().to_string(),
            command: task.command.clone(),
            params: self.params.clone(),
            // the worker kills at a fail or warnfail timeout; a warn timeout is the master's
            timeout_ms: match (task.timeout, task.timeout_strategy) {
                (Some(t), TimeoutStrategy::Fail | TimeoutStrategy::WarnFail) => t.as_millis() as u64,
                _ => 0,
            },
            worker_group: task.worker_group.clone(),
            workflow_priority: self.spec.priority,
            task_priority: task.priority,
            queued_at: Instant::now(),
            avoid,
            runner: self.handle.clone(),
        }
    }

    /// Ends the run when nothing is active: failure if a task failed, success if all succeeded.
    async fn maybe_finish(&mut self) -> Result<(), HandlerError> {
        if self.mem.instance.state != Running {
            return Ok(());
        }
        let active = self.mem.tasks.iter().flatten().any(|t| !t.state.is_terminal());
        if active {
            return Ok(());
        }
        let all_done = self.mem.tasks.iter().all(|t| t.as_ref().is_some_and(|t| t.state == Success));
        let (state, reason) = match &self.mem.failing {
            Some(reason) => (Failure, Some(reason.clone())),
            None if all_done => (Success, None),
            None => return Ok(()),
        };
        self.persist_workflow(state, reason.clone(), None, Some(Utc::now())).await?;
        metrics::counter!(m::WORKFLOWS_FINISHED, "state" => state.as_str()).increment(1);
        info!(workflow_instance_id = self.mem.instance.id, workflow = %self.spec.name, %state, reason = reason.unwrap_or_default(), "run finished");
        self.finished = true;
        Ok(())
    }

    async fn persist_workflow(
        &mut self,
        new: ExecutionState,
        reason: Option<String>,
        started_at: Option<DateTime<Utc>>,
        ended_at: Option<DateTime<Utc>>,
    ) -> Result<(), HandlerError> {
        let update = WorkflowStateUpdate {
            id: self.mem.instance.id,
            owner: self.shared.addr.clone(),
            expected: self.mem.instance.state,
            new,
            reason,
            started_at,
            ended_at,
        };
        match self.shared.store.update_workflow_state(&update).await {
            Ok(instance) => {
                self.mem.instance = instance;
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => {
                // a retry after a write whose answer was lost: the database may already have it
                match self.shared.store.workflow_instance(update.id).await.map_err(store_error)? {
                    Some(found) if found.state == new && found.owner.as_deref() == Some(&self.shared.addr) => {
                        self.mem.instance = found;
                        Ok(())
                    }
                    Some(found) if found.owner.as_deref() != Some(&self.shared.addr) => {
                        Err(HandlerError::NotOwner { owner: found.owner })
                    }
                    Some(found) => Err(DropReason::Unsupported(format!(
                        "workflow instance {} is {} owned by {:?}, not {} owned by this master",
                        found.id, found.state, found.owner, update.expected
                    ))
                    .into()),
                    None => Err(DropReason::UnknownWorkflowInstance(update.id).into()),
                }
            }
            Err(e) => Err(store_error(e)),
        }
    }

    /// `Err(NotOwner)` when the database says another master (or none) owns the run now.
    async fn still_owner(&self) -> Result<(), HandlerError> {
        let id = self.mem.instance.id;
        match self.shared.store.workflow_instance(id).await.map_err(store_error)? {
            Some(w) if w.owner.as_deref() == Some(self.shared.addr.as_str()) => Ok(()),
            Some(w) => Err(HandlerError::NotOwner { owner: w.owner }),
            None => Err(DropReason::UnknownWorkflowInstance(id).into()),
        }
    }

    async fn persist_task(&self, update: &TaskStateUpdate) -> Result<(), HandlerError> {
        match self.shared.store.update_task_state(update).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict { found, .. }) => {
                self.still_owner().await?;
                let row = self.shared.store.task_instance(update.id).await.map_err(store_error)?;
                let attempt = update.attempt.unwrap_or(update.expected_attempt);
                match row {
                    Some(t) if t.state == update.new && t.attempt == attempt => Ok(()),
                    _ => {
                        Err(DropReason::Unsupported(format!("task instance {} changed underneath: {found}", update.id))
                            .into())
                    }
                }
            }
            Err(StoreError::NotFound { .. }) => Err(DropReason::UnknownTaskInstance(update.id).into()),
            Err(e) => Err(store_error(e)),
        }
    }
}

/// The worker a `worker_lost` or `task_failover` event names.
fn lost_worker(event: &StateEvent) -> Result<&str, HandlerError> {
    event
        .detail
        .get("worker")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| DropReason::Malformed("no worker named".into()).into())
}

/// Why the run fails, when task `name` failed.
fn failure_reason(name: &str, exit_code: Option<i32>, message: &str) -> String {
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

/// Maps a store failure to a handler error: an outage is retryable, anything else drops.
pub(crate) fn store_error(e: StoreError) -> HandlerError {
    if e.is_retryable() {
        HandlerError::retryable(e.to_string())
    } else {
        DropReason::Unsupported(format!("database refused the change: {e}")).into()
    }
}

/// Writes a dead letter, retrying until it is stored.
pub(crate) async fn record_dead_letter(shared: &Shared, event: &StateEvent, reason: &str) {
    let letter = NewDeadLetter {
        workflow_instance_id: Some(event.workflow_instance_id),
        task_instance_id: event.task_instance_id,
        event_kind: event.kind.as_str().to_string(),
        event: serde_json::to_string(event).unwrap_or_else(|e| format!("unserialisable event: {e}")),
        reason: reason.to_string(),
    };
    let backoff = Backoff::default();
    let mut failures = 0u32;
    while let Err(e) = shared.store.record_dead_letter(&letter).await {
        failures += 1;
        error!(error = %e, failures, "cannot record a dead letter; retrying");
        tokio::time::sleep(backoff.delay(failures - 1)).await;
    }
}
