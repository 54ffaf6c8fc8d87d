//! The dispatcher: pops the most urgent ready task, picks a worker of its group with a free
//! slot, has the runner record the worker on the task instance, then sends the dispatch. A
//! rejected dispatch goes back to the queue with backoff; an unanswered one is resent to the same
//! worker with the same attempt (which the worker runs once) while that worker is alive.

use std::sync::Arc;
use std::time::Duration;

use porpoise_core::{Backoff, ExecutionState, StateEvent, StateEventKind};
use porpoise_proto::v1::{DispatchStatus, DispatchTaskRequest};
use tracing::{debug, info, warn};

use crate::Shared;
use crate::metrics as m;
use crate::queue::QueuedTask;
use crate::runner::{Ack, TaskChange};

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
                debug!(task = %task.task_name, group = %task.worker_group, parked, "no free worker in the group; task waits");
                shared.warn_no_worker(&task.worker_group);
            }
        }
    }
}

fn change_event(task: &QueuedTask, state: ExecutionState, change: TaskChange) -> StateEvent {
    StateEvent {
        kind: StateEventKind::TaskStateChange,
        workflow_instance_id: task.workflow_instance_id,
        task_instance_id: Some(task.task_instance_id),
        attempt: Some(task.attempt),
        state: Some(state),
        detail: serde_json::to_value(change).unwrap_or_default(),
    }
}

async fn dispatch_one(shared: Arc<Shared>, task: QueuedTask, worker: String) {
    // the worker is on the task instance before the dispatch leaves
    let marked = task
        .runner
        .request(change_event(
            &task,
            ExecutionState::Dispatched,
            TaskChange { worker: Some(worker.clone()), ..Default::default() },
        ))
        .await;
    if marked != Ack::Handled {
        debug!(task_instance_id = task.task_instance_id, ?marked, "dispatch skipped: the task no longer waits for one");
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
                warn!(task_instance_id = task.task_instance_id, %worker, message = %r.message, "worker rejected the task as invalid");
                let change = TaskChange {
                    worker: Some(worker.clone()),
                    message: format!("rejected by worker {worker}: {}", r.message),
                    ..Default::default()
                };
                task.runner.request(change_event(&task, ExecutionState::Failure, change)).await;
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
                debug!(task_instance_id = task.task_instance_id, %worker, message = %r.message, "worker refused the task; requeueing");
                requeue(&task, &worker, backoff.delay(failures)).await;
                return;
            }
            Err(e) => {
                failures += 1;
                metrics::counter!(m::TASKS_DISPATCH_FAILED, "reason" => "unreachable").increment(1);
                if !shared.workers.contains(&worker) {
                    warn!(task_instance_id = task.task_instance_id, %worker, error = %e, "worker gone before accepting the task; requeueing");
                    requeue(&task, &worker, Duration::ZERO).await;
                    return;
                }
                warn!(task_instance_id = task.task_instance_id, %worker, error = %e, failures, "dispatch unanswered; resending");
                tokio::time::sleep(backoff.delay(failures - 1)).await;
            }
        }
    }
}

/// Sends the task back to `submitted`: the runner queues it again after `delay`, to go to
/// another worker than `worker` if one has a free slot.
async fn requeue(task: &QueuedTask, worker: &str, delay: Duration) {
    let change = TaskChange {
        worker: Some(worker.to_string()),
        requeue_after_ms: Some(delay.as_millis() as u64),
        ..Default::default()
    };
    task.runner.request(change_event(task, ExecutionState::Submitted, change)).await;
}
