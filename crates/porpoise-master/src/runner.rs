//! The workflow runner (DolphinScheduler's WorkflowExecuteRunnable): one tokio task per
//! workflow instance. Every change arrives as a typed [`Event`] in its inbox and is handled one
//! at a time, in order. The engine's pure transition function ([`Workflow::apply`]) says what
//! the event does; the runner persists the transition's writes as one unit, then adopts its
//! state, then carries out its effects (queue a task, free a slot, set a timer, count and log).
//!
//! A failed write leaves the runner's state as it was. Its error is typed: a retryable error
//! keeps the event at the head of the inbox and retries it with capped exponential backoff
//! (after a few failures the run is reported stalled); a drop error removes the event and
//! records it in the dead-letter table; a refusal because another master owns the run now
//! stops the runner. What follows from an event (creating the tasks that became ready, ending
//! the run) is a separate step ([`Workflow::advance`]), retried on its own, so that a failure
//! there never repeats the event's effects.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use porpoise_core::engine::{Effect, Event, Note, Outcome, RunState, TaskState, Transition, Workflow, Write};
use porpoise_core::{DropReason, HandlerError, StateEventKind, TimeoutStrategy};
use porpoise_store::{CommandKind, StoreError, TaskInstance, WorkflowInstance};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::metrics as m;
use crate::queue::QueuedTask;
use crate::{Shared, dead_letters, dispatch};

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

/// What a runner's inbox holds.
enum Msg {
    Event(Event),
    /// Check that the run is still this master's; stop if it is not.
    CheckOwnership,
}

struct Envelope {
    msg: Msg,
    reply: Option<oneshot::Sender<Ack>>,
    /// Reply at the first outcome (a worker's event: RetryLater lets the worker resend) rather
    /// than the final one (the dispatcher waits for the write).
    early: bool,
    /// Held while the event is queued or being handled (see [`crate::events`]).
    _pending: Option<PendingGuard>,
}

/// What identifies a worker's event for deduplication while it waits in an inbox.
pub(crate) type EventKey = (i64, i32, porpoise_core::ExecutionState);

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
    /// Boxed: the channel's first block is allocated with it, and an idle run's inbox should be
    /// small (10,000 active runs, 10,000 inboxes).
    tx: mpsc::UnboundedSender<Box<Envelope>>,
}

impl RunnerHandle {
    fn send(&self, msg: Msg) {
        let _ = self.tx.send(Box::new(Envelope { msg, reply: None, early: false, _pending: None }));
    }

    /// Queues an event nobody waits for (timers, failovers).
    pub fn post(&self, event: Event) {
        self.send(Msg::Event(event));
    }

    /// Has the runner check that its run is still this master's.
    pub fn check_ownership(&self) {
        self.send(Msg::CheckOwnership);
    }

    /// Queues a worker's event; the receiver gets the first outcome. `None` if the runner is gone.
    pub fn report(&self, event: Event, pending: PendingGuard) -> Option<oneshot::Receiver<Ack>> {
        let (tx, rx) = oneshot::channel();
        let envelope = Envelope { msg: Msg::Event(event), reply: Some(tx), early: true, _pending: Some(pending) };
        self.tx.send(Box::new(envelope)).ok()?;
        Some(rx)
    }

    /// Queues an event and waits for its final outcome.
    pub async fn request(&self, event: Event) -> Ack {
        let (tx, rx) = oneshot::channel();
        if self
            .tx
            .send(Box::new(Envelope { msg: Msg::Event(event), reply: Some(tx), early: false, _pending: None }))
            .is_err()
        {
            return Ack::Ignored;
        }
        rx.await.unwrap_or(Ack::Ignored)
    }
}

/// One workflow instance's runner.
pub(crate) struct Runner {
    shared: Arc<Shared>,
    workflow: Arc<Workflow>,
    params: HashMap<String, String>,
    /// The run's schedule time in its time zone, for the date parameters of its commands.
    clock: chrono::DateTime<chrono_tz::Tz>,
    instance: WorkflowInstance,
    run: RunState,
    handle: RunnerHandle,
    finished: bool,
    /// The handled event may have made tasks ready or ended the run: an advance is due.
    advance_pending: bool,
    /// The run was taken over by this master (`None` inside: by none yet).
    moved_to: Option<Option<String>>,
    /// Messages taken from the inbox and not handled yet.
    backlog: VecDeque<Envelope>,
}

/// How many failed attempts at one event before the run is reported stalled.
const STALL_AFTER: u32 = 3;

/// How often a task waiting for a task-group slot tries again without being woken.
const SLOT_POLL: Duration = Duration::from_secs(1);

/// The most events one transaction persists.
const MAX_GROUP: usize = 512;

impl Runner {
    /// Starts the runner of `instance` (owned by this master) unless one runs already. The
    /// runner first loads the run and its task instances: a new run has none, a run resumed
    /// after a restart or taken over carries on from what the database holds.
    pub fn spawn(shared: Arc<Shared>, instance: WorkflowInstance, workflow: Arc<Workflow>) -> Option<RunnerHandle> {
        let (tx, inbox) = mpsc::unbounded_channel();
        let handle = RunnerHandle { tx };
        let clock = schedule_clock(&instance);
        let mut params: HashMap<String, String> = workflow.spec.params.clone().into_iter().collect();
        params.extend(instance.params.clone());
        // params may be time expressions: computed once, from the run's schedule time
        for (name, value) in params.iter_mut() {
            *value = render(value, clock, instance.id, &format!("param {name}"));
        }
        let id = instance.id;
        let run = RunState::rebuild(&workflow, instance.state, Vec::new()).0;
        let runner = Runner {
            shared: shared.clone(),
            params,
            clock,
            instance,
            run,
            workflow,
            handle: handle.clone(),
            finished: false,
            advance_pending: false,
            moved_to: None,
            backlog: VecDeque::new(),
        };
        if shared.draining.is_cancelled() || !shared.add_runner(id, handle.clone()) {
            return None;
        }
        shared.spawner.spawn(runner.run(inbox));
        Some(handle)
    }

    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Box<Envelope>>) {
        let id = self.instance.id;
        // the steps are boxed: this future lives as long as the run, and would otherwise be as
        // large as the largest step's (kilobytes per idle run)
        if Box::pin(self.rebuild()).await {
            if self.run.state == porpoise_core::ExecutionState::Submitted {
                metrics::counter!(m::WORKFLOWS_SUBMITTED).increment(1);
                let start = Envelope { msg: Msg::Event(Event::Start), reply: None, early: false, _pending: None };
                Box::pin(self.process(start)).await;
            } else {
                Box::pin(self.resume()).await;
            }
        }
        let draining = self.shared.draining.clone();
        while !self.finished {
            if self.backlog.is_empty() {
                let env = tokio::select! {
                    biased;
                    () = draining.cancelled() => break,
                    env = inbox.recv() => env,
                };
                let Some(env) = env else { break };
                self.backlog.push_back(*env);
            }
            while self.backlog.len() < MAX_GROUP
                && let Ok(env) = inbox.try_recv()
            {
                self.backlog.push_back(*env);
            }
            if draining.is_cancelled() {
                break;
            }
            if !Box::pin(self.process_group()).await
                && let Some(env) = self.backlog.pop_front()
            {
                Box::pin(self.process(env)).await;
            }
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
        let backlog = std::mem::take(&mut self.backlog);
        for env in backlog.into_iter().chain(std::iter::from_fn(|| inbox.try_recv().ok().map(|env| *env))) {
            if let Some(tx) = env.reply {
                let _ = tx.send(late.clone());
            }
        }
        debug!(run_id = id, "runner finished");
    }

    /// Loads the run and its task instances, retrying until the database answers. `false` when
    /// there is nothing to run: the run is gone, finished or owned by another master (this
    /// runner was started from an older reading), or the master stops.
    async fn rebuild(&mut self) -> bool {
        let id = self.instance.id;
        let mut failures = 0u32;
        let loaded = loop {
            let read = async {
                let instance = self.shared.store.workflow_instance(id).await?;
                let rows = self.shared.store.task_instances_of(id).await?;
                let commands = self.shared.store.control_commands_of(id).await?;
                Ok::<_, StoreError>(instance.map(|i| (i, rows, commands)))
            };
            match read.await {
                Ok(loaded) => break loaded,
                Err(e) => {
                    failures += 1;
                    m::database_error("load_run", &e);
                    error!(run_id = id, error = %e, failures, "cannot load the run; retrying");
                    if failures == STALL_AFTER {
                        self.shared.set_stall(id, format!("stalled loading the run: {e}"));
                    }
                    tokio::time::sleep(porpoise_runtime::retry_delay(&self.shared.event_backoff, failures - 1)).await;
                    if self.shared.draining.is_cancelled() {
                        self.shared.clear_stall(id);
                        return false; // the master stops: the next owner loads it
                    }
                }
            }
        };
        if failures >= STALL_AFTER {
            self.shared.clear_stall(id);
        }
        let Some((instance, rows, commands)) = loaded else {
            warn!(run_id = id, "run to start is gone");
            self.finished = true;
            return false;
        };
        if instance.owner.as_deref() != Some(self.shared.addr.as_str()) {
            info!(run_id = id, owner = ?instance.owner, "run is owned by another master; not started");
            self.moved_to = Some(instance.owner);
            self.finished = true;
            return false;
        }
        if instance.state.is_terminal() {
            debug!(run_id = id, state = %instance.state, "run has finished; not started");
            self.finished = true;
            return false;
        }
        let (mut run, unknown) =
            RunState::rebuild(&self.workflow, instance.state, rows.iter().map(TaskInstance::engine_state));
        for name in unknown {
            warn!(run_id = id, task = %name, "task instance of no task in the workflow; left alone");
        }
        // control commands carried out before are done; those pending are applied again, in order
        for c in commands {
            match (c.claimed_by.is_some(), c.kind) {
                (true, _) => run.last_command = run.last_command.max(c.id),
                (false, CommandKind::Control(action)) => {
                    self.handle.post(Event::Control { command: c.id, action, task: c.task_instance_id() })
                }
                (false, CommandKind::StartWorkflow) => {}
            }
        }
        run.started_at = instance.started_at;
        self.run = run;
        self.instance = instance;
        true
    }

    /// Carries on a run rebuilt from the database (after a restart or a takeover).
    async fn resume(&mut self) {
        self.shared.workers.listed().await;
        info!(run_id = self.instance.id, workflow = %self.workflow.spec.name, "run resumed");
        let effects = self.workflow.resume(&self.run, Utc::now(), |w| self.shared.workers.contains(w));
        self.carry_out(effects);
        self.advance_pending = true;
        let failures = self.advance_until_done(&Event::Start, 0).await;
        if failures >= STALL_AFTER {
            self.shared.clear_stall(self.instance.id);
        }
    }

    /// Handles the events at the head of the backlog that a worker or the dispatcher sent
    /// (dispatched, requeued, running, ended) together: applies them one after the other, moves
    /// the run on, and persists it all in one transaction, then replies to each. `false` when
    /// the head is not such an event, or the transaction failed: the caller then handles the
    /// events one at a time, where every error has its own answer.
    async fn process_group(&mut self) -> bool {
        let now = Utc::now();
        let began = Instant::now();
        let mut state = self.run.clone();
        let (mut writes, mut effects, mut advance) = (Vec::new(), Vec::new(), false);
        let mut applied = Vec::new();
        for env in &self.backlog {
            let Msg::Event(event) = &env.msg else { break };
            if !matches!(
                event,
                Event::Dispatched { .. } | Event::Requeue { .. } | Event::Running { .. } | Event::Ended(_)
            ) {
                break;
            }
            match self.workflow.apply(&state, event, now) {
                Ok(Outcome::Ignored) => applied.push(false),
                Ok(Outcome::Changed(t)) => {
                    writes.extend(t.writes);
                    effects.extend(t.effects);
                    advance |= t.advance;
                    state = t.state;
                    applied.push(true);
                }
                Err(_) => break, // dropped on its own, with its reason
            }
        }
        if applied.is_empty() {
            return false;
        }
        // what the events made ready is created in the same transaction
        if advance
            && let Some(t) = self.workflow.advance(&state, now)
            && !t.writes.iter().any(|w| matches!(w, Write::TakeSlot(_)))
        {
            writes.extend(t.writes);
            effects.extend(t.effects);
            state = t.state;
        }
        let taken = applied.len();
        let last = self.backlog.get(taken - 1).and_then(|env| match &env.msg {
            Msg::Event(event) => Some(event.clone()),
            Msg::CheckOwnership => None,
        });
        let kind = last.as_ref().map_or("task_change", |e| e.kind().as_str());
        let transition = Transition { state, writes: porpoise_core::engine::coalesce(writes), effects, advance };
        let mut failures = 0u32;
        while !transition.writes.is_empty() {
            match self.commit(transition.clone()).await {
                Ok(()) => break,
                Err(HandlerError::Retryable { reason, after }) => {
                    // the same transaction is tried again: one whose answer was lost is found done
                    failures += 1;
                    for env in self.backlog.iter_mut().take(taken).filter(|env| env.early) {
                        if let Some(tx) = env.reply.take() {
                            let _ = tx.send(Ack::RetryLater(reason.clone()));
                        }
                    }
                    self.wait_to_retry(kind, failures, &reason, after).await;
                    if self.shared.draining.is_cancelled() {
                        return true; // the events stay with their senders, for the next owner
                    }
                }
                Err(HandlerError::NotOwner { owner }) => {
                    self.hand_over(owner.clone());
                    for env in self.backlog.drain(..taken) {
                        if let Some(tx) = env.reply {
                            let _ = tx.send(Ack::Moved(owner.clone()));
                        }
                    }
                    return true;
                }
                // an event to drop, a slot to wait for: each event on its own says which
                Err(HandlerError::Drop(_) | HandlerError::Wait { .. }) if failures == 0 => return false,
                Err(e) => {
                    // the transaction was refused after a retry: its events go one at a time
                    warn!(run_id = self.instance.id, error = %e, "a group of events was refused; handling them one at a time");
                    if failures >= STALL_AFTER {
                        self.shared.clear_stall(self.instance.id);
                    }
                    return false;
                }
            }
        }
        if failures >= STALL_AFTER {
            self.shared.clear_stall(self.instance.id);
        }
        for (env, applied) in self.backlog.drain(..taken).zip(applied) {
            let Msg::Event(event) = &env.msg else { continue };
            let kind = event.kind().as_str();
            let counter = if applied { m::STATE_EVENTS_HANDLED } else { m::STATE_EVENTS_IGNORED };
            metrics::counter!(counter, "kind" => kind).increment(1);
            metrics::histogram!(m::STATE_EVENT_SECONDS, "kind" => kind).record(began.elapsed().as_secs_f64());
            if !applied {
                debug!(run_id = self.instance.id, ?event, "event with nothing to do ignored");
            }
            if let Some(tx) = env.reply {
                let _ = tx.send(if applied { Ack::Handled } else { Ack::Ignored });
            }
        }
        if let Some(event) = last {
            let failures = self.advance_until_done(&event, 0).await;
            if failures >= STALL_AFTER {
                self.shared.clear_stall(self.instance.id);
            }
        }
        true
    }

    async fn process(&mut self, env: Envelope) {
        let Envelope { msg, mut reply, early, _pending } = env;
        let event = match msg {
            Msg::Event(event) => event,
            Msg::CheckOwnership => {
                let ack = self.check_ownership().await;
                if let Some(tx) = reply.take() {
                    let _ = tx.send(ack);
                }
                return;
            }
        };
        let kind = event.kind().as_str();
        let began = Instant::now();
        let mut failures = 0u32;
        loop {
            let result = match self.workflow.apply(&self.run, &event, Utc::now()) {
                Err(reason) => Err(HandlerError::Drop(reason)),
                Ok(Outcome::Ignored) => Ok(false),
                Ok(Outcome::Changed(t)) => self.commit(t).await.map(|()| true),
            };
            match result {
                Ok(applied) => {
                    let counter = if applied { m::STATE_EVENTS_HANDLED } else { m::STATE_EVENTS_IGNORED };
                    metrics::counter!(counter, "kind" => kind).increment(1);
                    if !applied {
                        debug!(run_id = self.instance.id, ?event, "event with nothing to do ignored");
                    }
                    if let Some(tx) = reply.take() {
                        let _ = tx.send(if applied { Ack::Handled } else { Ack::Ignored });
                    }
                    break;
                }
                Err(HandlerError::Drop(reason)) => {
                    if matches!(reason, DropReason::NotTheAttemptsWorker { .. }) {
                        metrics::counter!(m::TASK_EVENTS_REFUSED, "reason" => "not_the_attempts_worker").increment(1);
                    }
                    let reason = reason.to_string();
                    self.dead_letter(&event, &reason).await;
                    if let Some(tx) = reply.take() {
                        let _ = tx.send(Ack::Dropped(reason));
                    }
                    break;
                }
                Err(HandlerError::NotOwner { owner }) => {
                    self.hand_over(owner.clone());
                    if let Some(tx) = reply.take() {
                        let _ = tx.send(Ack::Moved(owner));
                    }
                    return;
                }
                Err(HandlerError::Wait { reason }) => {
                    metrics::counter!(m::STATE_EVENTS_IGNORED, "kind" => kind).increment(1);
                    debug!(run_id = self.instance.id, %reason, "task waits for a task-group slot");
                    self.wait_for_slot(&event);
                    if let Some(tx) = reply.take() {
                        let _ = tx.send(Ack::Ignored);
                    }
                    break;
                }
                Err(HandlerError::Retryable { reason, after }) => {
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
                        return;
                    }
                }
            }
        }
        let failures = self.advance_until_done(&event, failures).await;
        metrics::histogram!(m::STATE_EVENT_SECONDS, "kind" => kind).record(began.elapsed().as_secs_f64());
        if failures >= STALL_AFTER {
            self.shared.clear_stall(self.instance.id);
        }
    }

    /// Persists a transition's writes as one unit, then adopts its state, then carries out its
    /// effects. On error nothing changed.
    async fn commit(&mut self, t: Transition) -> Result<(), HandlerError> {
        let created = self.persist(&t.writes).await?;
        self.announce_freed_slots(&t.writes);
        let Transition { mut state, mut effects, advance, .. } = t;
        if !created.is_empty() {
            let rows: Vec<(usize, TaskState)> = created
                .iter()
                .filter_map(|row| Some((self.workflow.dag.index_of(&row.task_name)?, row.engine_state().1)))
                .collect();
            effects.extend(state.created(rows));
        }
        self.run = state;
        self.advance_pending |= advance;
        if self.run.state.is_terminal() {
            self.finished = true;
        }
        self.carry_out(effects);
        Ok(())
    }

    /// Runs the engine's advance while it is due, retrying it on its own (`event` is the one
    /// that made it due, `failures` how often handling it failed so far). Returns the failures.
    async fn advance_until_done(&mut self, event: &Event, mut failures: u32) -> u32 {
        let kind = event.kind().as_str();
        while self.advance_pending {
            let Some(t) = self.workflow.advance(&self.run, Utc::now()) else {
                self.advance_pending = false;
                break;
            };
            match self.commit(t).await {
                Ok(()) => {}
                Err(HandlerError::Drop(reason)) => {
                    self.advance_pending = false;
                    self.dead_letter(event, &reason.to_string()).await;
                }
                Err(HandlerError::NotOwner { owner }) => self.hand_over(owner),
                Err(HandlerError::Wait { reason }) => {
                    // only a slot taker waits, and advancing takes none
                    self.advance_pending = false;
                    self.dead_letter(event, &format!("advancing the run had to wait: {reason}")).await;
                }
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

    /// Wakes the waiters of each task group a durable transition gave a slot back to.
    fn announce_freed_slots(&self, writes: &[Write]) {
        for w in writes {
            if let Write::Task(t) = w
                && t.expected.holds_group_slot()
                && !t.new.holds_group_slot()
                && let Some((idx, _)) = self.run.task_by_id(t.id)
                && let Some(group) = &self.workflow.spec.tasks[idx].task_group
            {
                self.shared.slots_freed(group);
            }
        }
    }

    /// A task's try for a task-group slot was refused: it tries again when a slot of its
    /// group is given back on this master, or after [`SLOT_POLL`] (a slot given back on
    /// another master, a group given more slots).
    fn wait_for_slot(&self, event: &Event) {
        let Event::SlotDue { at } = event else { return };
        let Some((idx, _)) = self.run.task_by_id(at.task_instance_id) else { return };
        let Some(group) = self.workflow.spec.tasks[idx].task_group.clone() else { return };
        let freed = self.shared.slot_notify(&group);
        let handle = self.handle.clone();
        let at = *at;
        self.shared.spawner.spawn(async move {
            let woken = freed.notified();
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(SLOT_POLL) => {}
            }
            handle.post(Event::SlotDue { at });
        });
    }

    /// Carries out what a durable transition asks for.
    fn carry_out(&self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Enqueue { task, after, avoid } => self.enqueue(task, after, avoid),
                Effect::Resend { task } => {
                    if let Some(worker) = self.run.task(task).and_then(|t| t.worker.clone()) {
                        self.shared.spawner.spawn(dispatch::send(self.shared.clone(), self.queued(task, None), worker));
                    }
                }
                Effect::ReserveSlot { worker } => self.shared.workers.reserve(&worker),
                Effect::ReleaseSlot { worker } => self.shared.release_worker(&worker),
                Effect::WorkerMissing { worker } => self.shared.worker_lost(worker),
                Effect::Schedule { event, after } => {
                    let handle = self.handle.clone();
                    self.shared.spawner.spawn(async move {
                        tokio::time::sleep(after).await;
                        handle.post(event);
                    });
                }
                Effect::Post(event) => self.handle.post(event),
                Effect::Kill { task } => {
                    if let Some(t) = self.run.task(task)
                        && let Some(worker) = t.worker.clone()
                    {
                        self.shared.spawner.spawn(dispatch::kill(self.shared.clone(), worker, t.id, t.attempt));
                    }
                }
                Effect::Note(note) => self.note(note),
            }
        }
    }

    /// Counts and logs what happened.
    fn note(&self, note: Note) {
        let id = self.instance.id;
        let workflow = &self.workflow.spec.name;
        match note {
            Note::RunStarted => info!(run_id = id, %workflow, "run started"),
            Note::RunFinished { state, reason } => {
                metrics::counter!(m::WORKFLOWS_FINISHED, "state" => state.as_str()).increment(1);
                if let Some(started) = self.run.started_at {
                    let seconds = (Utc::now() - started).to_std().unwrap_or_default().as_secs_f64();
                    metrics::histogram!(m::WORKFLOW_SECONDS, "state" => state.as_str()).record(seconds);
                }
                info!(run_id = id, %workflow, %state, reason = reason.unwrap_or_default(), "run finished");
            }
            Note::TaskFinished { task, state } => {
                metrics::counter!(m::TASKS_FINISHED, "state" => state.as_str()).increment(1);
                if let Some(t) = self.run.task(task)
                    && let (Some(started), Some(ended)) = (t.started_at, t.ended_at)
                {
                    let seconds = (ended - started).to_std().unwrap_or_default().as_secs_f64();
                    metrics::histogram!(m::TASK_SECONDS, "state" => state.as_str()).record(seconds);
                }
            }
            Note::RetryScheduled { .. } => metrics::counter!(m::TASKS_RETRIED).increment(1),
            Note::Retried { task, attempt } => {
                info!(run_id = id, %workflow, task = %self.workflow.dag.name(task), attempt, "task retried");
            }
            Note::RetryCalledOff { task, attempt } => {
                info!(run_id = id, %workflow, task = %self.workflow.dag.name(task), attempt, "retry called off: the run is failing");
            }
            Note::TimedOut { task, attempt, warned } => {
                let spec = &self.workflow.spec.tasks[task];
                let strategy = spec.timeout_strategy.as_str();
                metrics::counter!(m::TASKS_TIMED_OUT, "strategy" => strategy).increment(1);
                if warned {
                    warn!(
                        run_id = id,
                        %workflow,
                        task = %spec.name,
                        attempt,
                        timeout = %humantime::format_duration(spec.timeout.unwrap_or_default()),
                        timeout_strategy = strategy,
                        "task ran past its timeout"
                    );
                }
            }
            Note::Controlling { action } => {
                info!(run_id = id, %workflow, action = action.as_str(), "an operator's {} is under way", action.as_str());
            }
            Note::RunResumed => info!(run_id = id, %workflow, "run resumed by an operator"),
            Note::RunTimedOut { warned } => {
                let strategy = self.workflow.spec.timeout_strategy.as_str();
                metrics::counter!(m::WORKFLOWS_TIMED_OUT, "strategy" => strategy).increment(1);
                let timeout = humantime::format_duration(self.workflow.spec.timeout.unwrap_or_default());
                if warned {
                    warn!(run_id = id, %workflow, %timeout, timeout_strategy = strategy, "run ran past its timeout");
                } else {
                    info!(run_id = id, %workflow, %timeout, "run ran past its timeout; stopping it");
                }
            }
            Note::FailedOver { task, attempt, worker } => {
                metrics::counter!(m::TASKS_FAILED_OVER).increment(1);
                warn!(run_id = id, %workflow, task = %self.workflow.dag.name(task), attempt, %worker, "task attempt failed over: its worker was lost");
            }
        }
    }

    /// Another master took the run over: this runner writes nothing more and stops; events
    /// still queued for it go to the new owner (their senders are told where).
    fn hand_over(&mut self, owner: Option<String>) {
        warn!(
            run_id = self.instance.id,
            owner = owner.as_deref().unwrap_or("none yet"),
            "the run is owned by another master now; this runner stops"
        );
        self.advance_pending = false;
        self.finished = true;
        self.moved_to = Some(owner);
        // the slots its attempts hold are the new owner's to count now
        for (_, t) in self.run.tasks() {
            if let (porpoise_core::ExecutionState::Dispatched | porpoise_core::ExecutionState::Running, Some(worker)) =
                (t.state, &t.worker)
            {
                self.shared.release_worker(worker);
            }
        }
    }

    /// Checks that the run is still this master's; hands it over if not.
    async fn check_ownership(&mut self) -> Ack {
        metrics::counter!(m::STATE_EVENTS_HANDLED, "kind" => StateEventKind::OwnershipCheck.as_str()).increment(1);
        match self.still_owner().await {
            Ok(_) => Ack::Ignored,
            Err(HandlerError::NotOwner { owner }) => {
                self.hand_over(owner.clone());
                Ack::Moved(owner)
            }
            // the database is away: the next sweep asks again
            Err(e) => Ack::RetryLater(e.to_string()),
        }
    }

    /// Says that handling a `kind` event failed for the `failures`th time, reports the run
    /// stalled at [`STALL_AFTER`] failures, and waits before the retry.
    async fn wait_to_retry(&self, kind: &'static str, failures: u32, reason: &str, after: Option<Duration>) {
        metrics::counter!(m::STATE_EVENTS_RETRIED, "kind" => kind).increment(1);
        let delay = after.unwrap_or_else(|| porpoise_runtime::retry_delay(&self.shared.event_backoff, failures - 1));
        error!(
            run_id = self.instance.id,
            kind,
            failures,
            retry_in = ?delay,
            %reason,
            "state event handling failed; will retry"
        );
        if failures == STALL_AFTER {
            self.shared.set_stall(self.instance.id, format!("stalled handling a {kind} event: {reason}"));
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = self.shared.draining.cancelled() => {} // the caller gives the event up
        }
    }

    /// Records a dropped event; retries the write until it succeeds (it must not be lost).
    async fn dead_letter(&self, event: &Event, reason: &str) {
        let kind = event.kind();
        let task_instance_id = event.attempt().map(|a| a.task_instance_id);
        metrics::counter!(m::STATE_EVENTS_DROPPED, "kind" => kind.as_str()).increment(1);
        warn!(run_id = self.instance.id, task_instance_id = ?task_instance_id, kind = kind.as_str(), %reason, "state event dropped");
        let json = serde_json::to_string(event).unwrap_or_else(|e| format!("unserialisable event: {e}"));
        let source = match event {
            Event::Running { worker, .. } | Event::Failover { worker, .. } => worker.clone(),
            Event::Ended(e) => e.worker.clone().unwrap_or_else(|| "master".into()),
            _ => "master".into(),
        };
        let letter = dead_letters::Letter {
            source,
            workflow_instance_id: self.instance.id,
            task_instance_id,
            kind,
            event: json,
            reason: reason.to_string(),
        };
        dead_letters::record(&self.shared, letter).await;
    }

    /// Queues task `idx`'s current attempt after `delay`, away from worker `avoid` if it can.
    fn enqueue(&self, idx: usize, delay: Duration, avoid: Option<String>) {
        if self.run.task(idx).is_none() {
            return;
        }
        metrics::counter!(m::TASKS_SUBMITTED).increment(1);
        self.shared.queue.push_after(self.queued(idx, avoid), delay);
    }

    /// Task `idx`'s current attempt as the dispatcher sends it. The task instance must exist.
    fn queued(&self, idx: usize, avoid: Option<String>) -> QueuedTask {
        let (id, attempt) = self.run.task(idx).map_or((0, 0), |t| (t.id, t.attempt));
        let task = &self.workflow.spec.tasks[idx];
        QueuedTask {
            workflow_instance_id: self.instance.id,
            task_instance_id: id,
            attempt,
            epoch: self.instance.epoch,
            workflow_name: self.workflow.spec.name.clone(),
            task_name: task.name.clone(),
            task_type: task.task_type.as_str().to_string(),
            command: porpoise_core::shell::paste_raw(
                &render(&task.command, self.clock, self.instance.id, &format!("task {}", task.name)),
                &task.raw_params,
                |name| self.params.get(name).cloned(),
            ),
            params: self.params.clone(),
            // the worker kills at a fail or warnfail timeout; a warn timeout is the master's
            timeout_ms: match (task.timeout, task.timeout_strategy) {
                (Some(t), TimeoutStrategy::Fail | TimeoutStrategy::WarnFail) => t.as_millis() as u64,
                _ => 0,
            },
            worker_group: task.worker_group.clone(),
            tenant: task.tenant.clone().unwrap_or_default(),
            workflow_priority: self.workflow.spec.priority,
            task_priority: task.priority,
            queued_at: Instant::now(),
            worker_group_wait: task.worker_group_wait,
            avoid,
            runner: self.handle.clone(),
        }
    }

    /// The run as the database holds it, if this master still owns it; `Err(NotOwner)` when
    /// another master (or none) does.
    async fn still_owner(&self) -> Result<WorkflowInstance, HandlerError> {
        let id = self.instance.id;
        let found = self.shared.store.workflow_instance(id).await.inspect_err(|e| m::database_error("read_run", e));
        match found.map_err(store_error)? {
            Some(w) if w.owner.as_deref() == Some(self.shared.addr.as_str()) => Ok(w),
            Some(w) => Err(HandlerError::NotOwner { owner: w.owner }),
            None => Err(DropReason::UnknownWorkflowInstance(id).into()),
        }
    }

    /// Makes `writes` durable as one unit; returns the task instances it created.
    async fn persist(&self, writes: &[Write]) -> Result<Vec<TaskInstance>, HandlerError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let result = self.shared.committer.persist(self.instance.id, writes).await;
        if let Err(e) = &result {
            m::database_error("persist", e);
        }
        match result {
            Ok(created) => Ok(created),
            Err(StoreError::Conflict { found, .. }) => self.already_persisted(writes, &found).await,
            Err(e @ StoreError::NoFreeSlot { .. }) => Err(HandlerError::Wait { reason: e.to_string() }),
            Err(StoreError::NotFound { entity: "task group", key }) => {
                // the group was deleted under a run that names it: the task cannot run
                for w in writes {
                    if let Write::TakeSlot(t) = w {
                        self.handle.post(Event::Ended(porpoise_core::engine::Ending {
                            at: porpoise_core::engine::AttemptRef {
                                task_instance_id: t.id,
                                attempt: t.expected_attempt,
                            },
                            worker: None,
                            succeeded: false,
                            exit_code: None,
                            started_at: None,
                            ended_at: None,
                            message: format!("task group {key} does not exist"),
                            timed_out: false,
                        }));
                    }
                }
                Err(HandlerError::Wait { reason: format!("task group {key} does not exist") })
            }
            Err(e @ StoreError::NotFound { .. }) => Err(DropReason::Unsupported(e.to_string()).into()),
            Err(e) => Err(store_error(e)),
        }
    }

    /// A unit was refused: either another master owns the run now, or this is a retry of a
    /// unit whose answer was lost and the database already holds all of it (then it counts as
    /// persisted), or something changed underneath (the event is dropped).
    async fn already_persisted(&self, writes: &[Write], found: &str) -> Result<Vec<TaskInstance>, HandlerError> {
        let instance = self.still_owner().await?;
        let rows = self.shared.store.task_instances_of(self.instance.id).await.map_err(store_error)?;
        let mut created = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            let held = match w {
                // a task written more than once holds what its last write says
                Write::Task(t) | Write::TakeSlot(t)
                    if writes[i + 1..]
                        .iter()
                        .any(|l| matches!(l, Write::Task(n) | Write::TakeSlot(n) if n.id == t.id)) =>
                {
                    true
                }
                Write::Task(t) | Write::TakeSlot(t) => rows
                    .iter()
                    .any(|r| r.id == t.id && r.state == t.new && r.attempt == t.attempt.unwrap_or(t.expected_attempt)),
                Write::Workflow(wf) => instance.state == wf.new,
                Write::CompleteCommand(_) => true, // idempotent: it never refuses
                Write::CreateTasks(new) => {
                    let found: Vec<&TaskInstance> =
                        rows.iter().filter(|r| new.iter().any(|n| n.name == r.task_name)).collect();
                    let all = found.len() == new.len();
                    created.extend(found.into_iter().cloned());
                    all
                }
            };
            if !held {
                return Err(DropReason::Unsupported(format!(
                    "run {} changed underneath this master: {found}",
                    self.instance.id
                ))
                .into());
            }
        }
        Ok(created)
    }
}

/// The run's schedule time (its request time for a run from before schedules) in its time zone.
fn schedule_clock(instance: &WorkflowInstance) -> chrono::DateTime<chrono_tz::Tz> {
    let tz = porpoise_core::schedule::parse_timezone(&instance.timezone).unwrap_or(chrono_tz::UTC);
    instance.schedule_time.unwrap_or(instance.created_at).with_timezone(&tz)
}

/// `text` with its date parameters computed for schedule time `clock`. They were checked when
/// the spec was applied and the run requested; one that still fails is left as written, and
/// said.
fn render(text: &str, clock: chrono::DateTime<chrono_tz::Tz>, run: i64, what: &str) -> String {
    porpoise_core::dateparams::render(text, clock).unwrap_or_else(|e| {
        warn!(run_id = run, what, error = %e, "date parameter left as written");
        text.to_string()
    })
}

/// Maps a store failure to a handler error: an outage is retryable, anything else drops.
pub(crate) fn store_error(e: StoreError) -> HandlerError {
    if e.is_retryable() {
        HandlerError::retryable(e.to_string())
    } else {
        DropReason::Unsupported(format!("database refused the change: {e}")).into()
    }
}
