//! TaskEventService: workers report RUNNING and RESULT events here. Each event goes to its
//! workflow instance's runner, in arrival order per instance and in parallel across instances;
//! the reply ACKs each event once its outcome is known. A malformed event is dead-lettered and
//! ACKed, never a reason to fail the call.

use std::sync::Arc;

use porpoise_core::{DropReason, ExecutionState, StateEvent, StateEventKind};
use porpoise_proto::v1::task_event_service_server::TaskEventService;
use porpoise_proto::v1::{
    AckStatus, EventAck, ReportTaskEventsReply, ReportTaskEventsRequest, TaskEvent, TaskOutcome, task_event,
};
use tonic::{Request, Response, Status};
use tracing::{debug, warn};

use crate::Shared;
use crate::metrics as m;
use crate::runner::{Ack, PendingGuard, TaskChange, record_dead_letter};

/// How long a report waits for the runners' outcomes before answering RETRY_LATER for the rest
/// (they stay queued and are handled; the worker's resend then finds them done).
const REPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The gRPC face of the master for workers.
#[derive(Debug, Clone)]
pub(crate) struct TaskEvents(pub Arc<Shared>);

/// Turns a worker's event (sent by `worker`) into a state event, or says what is wrong with it.
fn to_state_event(e: &TaskEvent, worker: &str) -> Result<StateEvent, String> {
    if e.task_instance_id <= 0 || e.workflow_instance_id <= 0 || e.attempt <= 0 {
        return Err(format!(
            "ids and attempt must be positive (task instance {}, workflow instance {}, attempt {})",
            e.task_instance_id, e.workflow_instance_id, e.attempt
        ));
    }
    let (state, change) = match &e.kind {
        Some(task_event::Kind::Running(r)) => (
            ExecutionState::Running,
            TaskChange {
                worker: Some(r.worker_addr.clone()),
                started_at_ms: Some(r.started_at_ms),
                ..Default::default()
            },
        ),
        Some(task_event::Kind::Result(r)) if r.outcome == TaskOutcome::WorkerStopped as i32 => {
            // the worker shut down and killed the task: fail the attempt over, as for a lost worker
            return Ok(StateEvent {
                kind: StateEventKind::TaskFailover,
                workflow_instance_id: e.workflow_instance_id,
                task_instance_id: Some(e.task_instance_id),
                attempt: Some(e.attempt),
                state: Some(ExecutionState::Running),
                detail: serde_json::json!({ "worker": worker, "why": "stopped before the task ended" }),
            });
        }
        Some(task_event::Kind::Result(r)) => {
            let outcome = TaskOutcome::try_from(r.outcome);
            let state = match outcome {
                Ok(TaskOutcome::Success) => ExecutionState::Success,
                Ok(TaskOutcome::Failure | TaskOutcome::TimedOut | TaskOutcome::Killed) => ExecutionState::Failure,
                _ => return Err(format!("unknown task outcome {}", r.outcome)),
            };
            (
                state,
                TaskChange {
                    timed_out: outcome == Ok(TaskOutcome::TimedOut),
                    exit_code: r.exit_code,
                    started_at_ms: Some(r.started_at_ms),
                    ended_at_ms: Some(r.ended_at_ms),
                    message: r.message.clone(),
                    ..Default::default()
                },
            )
        }
        None => return Err("the event has no kind (neither running nor result)".into()),
    };
    Ok(StateEvent {
        kind: StateEventKind::TaskStateChange,
        workflow_instance_id: e.workflow_instance_id,
        task_instance_id: Some(e.task_instance_id),
        attempt: Some(e.attempt),
        state: Some(state),
        detail: serde_json::to_value(change).unwrap_or_default(),
    })
}

fn ack(event_id: String, a: &Ack) -> EventAck {
    match a {
        Ack::Handled | Ack::Ignored => {
            EventAck { event_id, status: AckStatus::Handled as i32, message: String::new(), owner: String::new() }
        }
        Ack::Dropped(reason) => EventAck {
            event_id,
            status: AckStatus::Handled as i32,
            message: format!("dropped: {reason}"),
            owner: String::new(),
        },
        Ack::RetryLater(reason) => {
            EventAck { event_id, status: AckStatus::RetryLater as i32, message: reason.clone(), owner: String::new() }
        }
        Ack::Moved(owner) => EventAck {
            event_id,
            status: AckStatus::RetryLater as i32,
            message: format!("the run is owned by {} now", owner.as_deref().unwrap_or("no master")),
            owner: owner.clone().unwrap_or_default(),
        },
    }
}

impl TaskEvents {
    /// An event whose instance has no runner here: finished, unknown, or owned elsewhere.
    async fn without_runner(&self, event: StateEvent) -> Ack {
        let shared = &self.0;
        let ti = event.task_instance_id.unwrap_or_default();
        let task = match shared.store.task_instance(ti).await {
            Ok(t) => t,
            Err(e) if e.is_retryable() => return Ack::RetryLater(e.to_string()),
            Err(e) => return Ack::RetryLater(format!("cannot look the task up: {e}")),
        };
        let Some(task) = task else {
            let reason = DropReason::UnknownTaskInstance(ti).to_string();
            metrics::counter!(m::STATE_EVENTS_DROPPED, "kind" => event.kind.as_str()).increment(1);
            warn!(task_instance_id = ti, workflow_instance_id = event.workflow_instance_id, %reason, "state event dropped");
            record_dead_letter(shared, &event, &reason).await;
            return Ack::Dropped(reason);
        };
        if task.workflow_instance_id != event.workflow_instance_id {
            let reason = format!(
                "task instance {ti} belongs to workflow instance {}, not {}",
                task.workflow_instance_id, event.workflow_instance_id
            );
            metrics::counter!(m::STATE_EVENTS_DROPPED, "kind" => event.kind.as_str()).increment(1);
            record_dead_letter(shared, &event, &reason).await;
            return Ack::Dropped(reason);
        }
        match shared.store.workflow_instance(task.workflow_instance_id).await {
            Ok(Some(wi)) if wi.state.is_terminal() => {
                debug!(task_instance_id = ti, "event for a finished run ignored");
                Ack::Ignored
            }
            Ok(Some(wi)) if wi.owner.as_deref() == Some(shared.addr.as_str()) => {
                // the runner is being started (or restarted); the worker resends
                Ack::RetryLater("the run's runner is not ready yet".into())
            }
            // taken over by a live master: send it there; otherwise it waits for its next owner
            Ok(Some(wi)) => match wi.owner.filter(|o| shared.masters.is_live(o)) {
                Some(owner) => Ack::Moved(Some(owner)),
                None => Ack::RetryLater(format!("run {} waits to be taken over", wi.id)),
            },
            Ok(None) => Ack::RetryLater("workflow instance not found yet".into()),
            Err(e) => Ack::RetryLater(e.to_string()),
        }
    }
}

#[tonic::async_trait]
impl TaskEventService for TaskEvents {
    async fn report_task_events(
        &self,
        request: Request<ReportTaskEventsRequest>,
    ) -> Result<Response<ReportTaskEventsReply>, Status> {
        let req = request.into_inner();
        let mut waiting = Vec::with_capacity(req.events.len());
        let mut acks = Vec::with_capacity(req.events.len());
        for e in req.events {
            let event_id = e.event_id.clone();
            match to_state_event(&e, &req.worker_addr) {
                Err(problem) => {
                    metrics::counter!(m::TASK_EVENTS_REJECTED).increment(1);
                    warn!(worker = %req.worker_addr, %event_id, %problem, "malformed task event dropped");
                    let recorded = StateEvent {
                        kind: StateEventKind::TaskStateChange,
                        workflow_instance_id: e.workflow_instance_id,
                        task_instance_id: Some(e.task_instance_id),
                        attempt: Some(e.attempt),
                        state: None,
                        detail: serde_json::json!({ "worker": req.worker_addr, "event_id": event_id }),
                    };
                    record_dead_letter(&self.0, &recorded, &format!("malformed event: {problem}")).await;
                    acks.push(ack(event_id, &Ack::Dropped(problem)));
                }
                Ok(event) => match self.0.runner(event.workflow_instance_id) {
                    Some(runner) => {
                        let key = (e.task_instance_id, e.attempt, event.state.unwrap_or(ExecutionState::Running));
                        let set = self.0.pending_events.clone();
                        if !set.lock().unwrap_or_else(|p| p.into_inner()).insert(key) {
                            // a resend of an event still queued: one copy in the inbox is enough
                            acks.push(ack(event_id, &Ack::RetryLater("the event is still being handled".into())));
                            continue;
                        }
                        match runner.report(event, PendingGuard { set, key }) {
                            Ok(rx) => waiting.push((event_id, rx)),
                            Err(event) => acks.push(ack(event_id, &self.without_runner(event).await)),
                        }
                    }
                    None => acks.push(ack(event_id, &self.without_runner(event).await)),
                },
            }
        }
        let deadline = tokio::time::Instant::now() + REPLY_WAIT;
        for (event_id, rx) in waiting {
            let outcome = match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Ack::RetryLater("the runner stopped".into()),
                Err(_) => Ack::RetryLater("queued behind events still being retried".into()),
            };
            acks.push(ack(event_id, &outcome));
        }
        Ok(Response::new(ReportTaskEventsReply { acks }))
    }
}
