//! The dispatcher: pops the most urgent ready task, picks a worker of its group with a free
//! slot, has the runner record the worker on the task instance, then sends the dispatch. A
//! rejected dispatch goes back to the queue with backoff; an unanswered one is resent to the same
//! worker with the same attempt (which the worker runs once) while that worker is alive.

use std::sync::Arc;
use std::time::Duration;

use porpoise_core::Backoff;
use porpoise_core::engine::{AttemptRef, Ending, Event};
use porpoise_proto::v1::{DispatchStatus, DispatchTaskRequest, KillTaskRequest};
use tracing::{debug, info, warn};

use crate::Shared;
use crate::metrics as m;
use crate::queue::QueuedTask;
use crate::runner::Ack;

/// Runs forever: the dispatcher loop.
pub(crate) async fn run(shared: Arc<Shared>) {
    loop {
        let task = tokio::select! {
            // a stopping master dispatches nothing more: the next owner queues what waits
            () = shared.draining.cancelled() => return,
            task = shared.queue.pop() => task,
        };
        // a master that lost its registration sends nothing until it has it back
        shared.masters.until_live(&shared.addr).await;
        match shared.workers.acquire(&task.worker_group, task.avoid.as_deref()) {
            Some(worker) => {
                shared.spawner.spawn(dispatch_one(shared.clone(), task, worker));
            }
            None => {
                let parked = shared.queue.park(task.clone());
                metrics::gauge!(m::TASKS_WAITING_FOR_WORKER).set(parked as f64);
                debug!(run_id = task.workflow_instance_id, task_instance_id = task.task_instance_id, attempt = task.attempt, workflow = %task.workflow_name, task = %task.task_name, group = %task.worker_group, parked, "no free worker in the group; task waits");
                shared.warn_no_worker(&task.worker_group);
            }
        }
    }
}

/// How often parked tasks are checked against their `worker_group_wait`.
const WORKER_WAIT_CHECK: Duration = Duration::from_secs(1);

/// Runs forever: fails each parked task whose worker group has had no live worker for its
/// `worker_group_wait` (counted from when it was queued or the group was last seen empty, the
/// later), through its runner.
pub(crate) async fn fail_tasks_without_workers(shared: Arc<Shared>) {
    let mut empty_since: std::collections::HashMap<String, std::time::Instant> = Default::default();
    loop {
        tokio::select! {
            () = shared.draining.cancelled() => return,
            () = tokio::time::sleep(WORKER_WAIT_CHECK) => {}
        }
        let groups = shared.queue.parked_groups();
        empty_since.retain(|g, _| groups.contains(g) && !shared.workers.has_group(g));
        for group in groups.into_iter().filter(|g| !shared.workers.has_group(g)) {
            let since = *empty_since.entry(group.clone()).or_insert_with(std::time::Instant::now);
            let expired = shared.queue.take_parked(&group, |t| t.queued_at.max(since).elapsed() >= t.worker_group_wait);
            for task in expired {
                let wait = humantime::format_duration(task.worker_group_wait);
                let why = format!("no live worker in worker group {group} for {wait} (worker_group_wait)");
                warn!(run_id = task.workflow_instance_id, task_instance_id = task.task_instance_id, attempt = task.attempt, workflow = %task.workflow_name, task = %task.task_name, %group, "{why}; the task fails");
                metrics::counter!(m::TASKS_DISPATCH_FAILED, "reason" => "no_worker").increment(1);
                task.runner.post(Event::NoWorker { at: attempt_of(&task), reason: why });
            }
        }
    }
}

/// The attempt `task` stands for.
fn attempt_of(task: &QueuedTask) -> AttemptRef {
    AttemptRef { task_instance_id: task.task_instance_id, attempt: task.attempt }
}

async fn dispatch_one(shared: Arc<Shared>, task: QueuedTask, worker: String) {
    // the worker is on the task instance before the dispatch leaves
    let marked = task.runner.request(Event::Dispatched { at: attempt_of(&task), worker: worker.clone() }).await;
    if marked != Ack::Handled {
        debug!(run_id = task.workflow_instance_id, task_instance_id = task.task_instance_id, attempt = task.attempt, workflow = %task.workflow_name, task = %task.task_name, ?marked, "dispatch skipped: the task no longer waits for one");
        shared.release_worker(&worker);
        return;
    }
    send(shared, task, worker).await;
}

/// Sends `task` to `worker`, on which the task instance already records it (`dispatched`),
/// until the worker answers: a run resumed after a restart resends its dispatched attempts
/// this way, and the worker runs an attempt it already has only once.
pub(crate) async fn send(shared: Arc<Shared>, task: QueuedTask, worker: String) {
    let request = DispatchTaskRequest {
        task_instance_id: task.task_instance_id,
        attempt: task.attempt,
        workflow_instance_id: task.workflow_instance_id,
        workflow_name: task.workflow_name.clone(),
        task_name: task.task_name.clone(),
        task_type: task.task_type.clone(),
        command: task.command.clone(),
        params: task.params.clone(),
        timeout_ms: task.timeout_ms,
        master_addr: shared.addr.clone(),
        epoch: task.epoch,
        tenant: task.tenant.clone(),
    };
    let backoff = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(10), multiplier: 2.0 };
    let mut failures = 0u32;
    loop {
        let reply = match shared.workers.client(&worker) {
            Ok(mut client) => {
                client.dispatch_task(request.clone()).await.map(|r| r.into_inner()).map_err(|s| s.to_string())
            }
            Err(e) => Err(e),
        };
        match reply {
            Ok(r) if r.status == DispatchStatus::Accepted as i32 => {
                metrics::counter!(m::TASKS_DISPATCHED).increment(1);
                metrics::histogram!(m::DISPATCH_SECONDS).record(task.queued_at.elapsed().as_secs_f64());
                return;
            }
            Ok(r) if r.status == DispatchStatus::Invalid as i32 => {
                metrics::counter!(m::TASKS_DISPATCH_FAILED, "reason" => "invalid").increment(1);
                warn!(run_id = task.workflow_instance_id, task_instance_id = task.task_instance_id, attempt = task.attempt, workflow = %task.workflow_name, task = %task.task_name, %worker, message = %r.message, "worker rejected the task as invalid");
                let ending = Ending {
                    at: attempt_of(&task),
                    worker: Some(worker.clone()),
                    succeeded: false,
                    exit_code: None,
                    started_at: None,
                    ended_at: None,
                    message: format!("rejected by worker {worker}: {}", r.message),
                    timed_out: false,
                };
                task.runner.request(Event::Ended(ending)).await;
                return;
            }
            Ok(r) if r.status == DispatchStatus::Draining as i32 => {
                metrics::counter!(m::TASKS_DISPATCH_FAILED, "reason" => "draining").increment(1);
                info!(%worker, "worker is draining; no more dispatches to it until it joins again");
                shared.workers.drain(&worker);
                requeue(&task, &worker, Duration::ZERO).await;
                return;
            }
            Ok(r) => {
                // FULL (its slots are taken by other masters' tasks too) or an unknown answer
                metrics::counter!(m::TASKS_DISPATCH_FAILED, "reason" => "full").increment(1);
                debug!(run_id = task.workflow_instance_id, task_instance_id = task.task_instance_id, attempt = task.attempt, workflow = %task.workflow_name, task = %task.task_name, %worker, message = %r.message, "worker refused the task; requeueing");
                requeue(&task, &worker, porpoise_runtime::retry_delay(&backoff, failures)).await;
                return;
            }
            Err(e) => {
                failures += 1;
                metrics::counter!(m::TASKS_DISPATCH_FAILED, "reason" => "unreachable").increment(1);
                if !shared.workers.contains(&worker) {
                    warn!(run_id = task.workflow_instance_id, task_instance_id = task.task_instance_id, attempt = task.attempt, workflow = %task.workflow_name, task = %task.task_name, %worker, error = %e, "worker gone before accepting the task; requeueing");
                    requeue(&task, &worker, Duration::ZERO).await;
                    return;
                }
                warn!(run_id = task.workflow_instance_id, task_instance_id = task.task_instance_id, attempt = task.attempt, workflow = %task.workflow_name, task = %task.task_name, %worker, error = %e, failures, "dispatch unanswered; resending");
                tokio::time::sleep(porpoise_runtime::retry_delay(&backoff, failures - 1)).await;
            }
        }
    }
}

/// Sends the task back to `submitted`: the runner queues it again after `delay`, to go to
/// another worker than `worker` if one has a free slot.
async fn requeue(task: &QueuedTask, worker: &str, delay: Duration) {
    let event = Event::Requeue { at: attempt_of(task), worker: Some(worker.to_string()), after: delay };
    task.runner.request(event).await;
}

/// Kills attempt `attempt` of task instance `task_instance_id` on `worker` (a stop): asks until
/// the worker says it killed it, for a while, since a dispatch still on its way may reach the
/// worker after the first ask.
pub(crate) async fn kill(shared: Arc<Shared>, worker: String, task_instance_id: i64, attempt: i32) {
    for _ in 0..KILL_TRIES {
        let reply = match shared.workers.client(&worker) {
            Ok(mut client) => {
                client.kill_task(KillTaskRequest { task_instance_id, attempt }).await.map(|r| r.into_inner())
            }
            Err(e) => {
                warn!(%worker, task_instance_id, attempt, error = %e, "cannot reach the worker to kill the task");
                return;
            }
        };
        match reply {
            Ok(r) if r.found => {
                info!(%worker, task_instance_id, attempt, "task killed");
                return;
            }
            Ok(_) => {
                debug!(%worker, task_instance_id, attempt, "the worker does not run the attempt (yet); asking again")
            }
            Err(e) => debug!(%worker, task_instance_id, attempt, error = %e, "kill unanswered; asking again"),
        }
        tokio::time::sleep(KILL_EVERY).await;
    }
    warn!(%worker, task_instance_id, attempt, "the worker never had the attempt to kill");
}

/// How often, and how far apart, a kill is asked for.
const KILL_TRIES: u32 = 20;
const KILL_EVERY: Duration = Duration::from_millis(500);
