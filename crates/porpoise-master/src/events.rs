//! TaskEventService: workers report RUNNING and RESULT events here. Each event goes to its
//! workflow instance's runner, in arrival order per instance and in parallel across instances;
//! the reply ACKs each event once its outcome is known. A malformed event is dead-lettered and
//! ACKed, never a reason to fail the call.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use porpoise_core::engine::{AttemptRef, Ending, Event};
use porpoise_core::{DropReason, ExecutionState, StateEventKind};
use porpoise_proto::v1::task_event_service_server::TaskEventService;
use porpoise_proto::v1::{
    AckStatus, EventAck, ProbeRegistryReply, ProbeRegistryRequest, ReportTaskEventsReply, ReportTaskEventsRequest,
    TaskEvent, TaskOutcome, task_event,
};
use porpoise_registry::Selector;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use crate::Shared;
use crate::dead_letters::{self, Letter};
use crate::metrics as m;
use crate::runner::{Ack, EventKey, PendingGuard};

/// How long a report waits for the runners' outcomes before answering RETRY_LATER for the rest
/// (they stay queued and are handled; the worker's resend then finds them done).
const REPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The gRPC face of the master for workers.
#[derive(Debug, Clone)]
pub(crate) struct TaskEvents(pub Arc<Shared>);

/// A worker's event for one run, as the run's runner takes it.
struct Routed {
    run: i64,
    event: Event,
    /// Identifies the event while it waits in the runner's inbox.
    key: EventKey,
}

impl Routed {
    fn task_instance_id(&self) -> i64 {
        self.key.0
    }

    fn json(&self) -> String {
        serde_json::to_string(&self.event).unwrap_or_else(|e| format!("unserialisable event: {e}"))
    }
}

fn time(ms: i64) -> Option<DateTime<Utc>> {
    (ms > 0).then(|| DateTime::from_timestamp_millis(ms)).flatten()
}

/// Turns a worker's event (sent by `worker`) into a runner's event, or says what is wrong with it.
fn to_event(e: &TaskEvent, worker: &str) -> Result<Routed, String> {
    if e.task_instance_id <= 0 || e.workflow_instance_id <= 0 || e.attempt <= 0 {
        return Err(format!(
            "ids and attempt must be positive (task instance {}, workflow instance {}, attempt {})",
            e.task_instance_id, e.workflow_instance_id, e.attempt
        ));
    }
    let at = AttemptRef { task_instance_id: e.task_instance_id, attempt: e.attempt };
    let (event, state) = match &e.kind {
        Some(task_event::Kind::Running(r)) => (
            // the sender, authenticated, not the message's own say
            Event::Running { at, worker: worker.to_string(), started_at: time(r.started_at_ms) },
            ExecutionState::Running,
        ),
        Some(task_event::Kind::Result(r)) if r.outcome == TaskOutcome::WorkerStopped as i32 => (
            // the worker shut down and killed the task: fail the attempt over, as for a lost worker
            Event::Failover { at, worker: worker.to_string(), why: "stopped before the task ended".into() },
            ExecutionState::Stopped,
        ),
        Some(task_event::Kind::Result(r)) => {
            let outcome = TaskOutcome::try_from(r.outcome);
            let succeeded = match outcome {
                Ok(TaskOutcome::Success) => true,
                Ok(TaskOutcome::Failure | TaskOutcome::TimedOut | TaskOutcome::Killed) => false,
                _ => return Err(format!("unknown task outcome {}", r.outcome)),
            };
            let ending = Ending {
                at,
                worker: Some(worker.to_string()),
                succeeded,
                exit_code: r.exit_code,
                started_at: time(r.started_at_ms),
                ended_at: time(r.ended_at_ms),
                message: r.message.clone(),
                timed_out: outcome == Ok(TaskOutcome::TimedOut),
            };
            let state = if succeeded { ExecutionState::Success } else { ExecutionState::Failure };
            (Event::Ended(ending), state)
        }
        None => return Err("the event has no kind (neither running nor result)".into()),
    };
    Ok(Routed { run: e.workflow_instance_id, event, key: (e.task_instance_id, e.attempt, state) })
}

/// The dead letter of `event`, sent by `worker`, dropped for `reason`.
fn letter(worker: &str, event: &Routed, reason: String) -> Letter {
    Letter {
        source: worker.to_string(),
        workflow_instance_id: event.run,
        task_instance_id: Some(event.task_instance_id()),
        kind: event.event.kind(),
        event: event.json(),
        reason,
    }
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
    async fn without_runner(&self, event: Routed, worker: &str) -> Ack {
        let shared = &self.0;
        let ti = event.task_instance_id();
        let kind = event.event.kind();
        let task = match shared.store.task_instance(ti).await {
            Ok(t) => t,
            Err(e) if e.is_retryable() => return Ack::RetryLater(e.to_string()),
            Err(e) => return Ack::RetryLater(format!("cannot look the task up: {e}")),
        };
        let Some(task) = task else {
            let reason = DropReason::UnknownTaskInstance(ti).to_string();
            metrics::counter!(m::STATE_EVENTS_DROPPED, "kind" => kind.as_str()).increment(1);
            warn!(task_instance_id = ti, run_id = event.run, %reason, "state event dropped");
            dead_letters::record(shared, letter(worker, &event, reason.clone())).await;
            return Ack::Dropped(reason);
        };
        if task.workflow_instance_id != event.run {
            let reason = format!(
                "task instance {ti} belongs to workflow instance {}, not {}",
                task.workflow_instance_id, event.run
            );
            metrics::counter!(m::STATE_EVENTS_DROPPED, "kind" => kind.as_str()).increment(1);
            dead_letters::record(shared, letter(worker, &event, reason.clone())).await;
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
        if !porpoise_proto::tls::peer_is(&self.0.transport, &request, porpoise_proto::tls::WORKER) {
            metrics::counter!(m::TASK_EVENTS_REFUSED, "reason" => "unauthenticated").increment(1);
            warn!(peer = ?request.remote_addr(), "task events without a worker's certificate refused");
            return Err(Status::permission_denied(
                "only a worker of this cluster (its certificate) may report task events",
            ));
        }
        let peer = request.remote_addr();
        let certified =
            porpoise_proto::tls::peer_speaks_for_worker(&self.0.transport, &request, &request.get_ref().worker_addr);
        let req = request.into_inner();
        let authentic = match certified {
            true => self.0.host_addrs.peer_speaks_for(peer, &req.worker_addr).await,
            false => Err(format!("the certificate shown does not name worker {}'s host", req.worker_addr)),
        };
        if let Err(why) = authentic {
            // nothing of the batch is looked at, stored or ACKed: a genuine worker keeps its events
            metrics::counter!(m::TASK_EVENTS_REFUSED, "reason" => "unauthenticated").increment(req.events.len() as u64);
            warn!(worker = %req.worker_addr, peer = ?peer, %why, events = req.events.len(), "task events refused");
            return Err(Status::permission_denied(why));
        }
        let mut waiting = Vec::with_capacity(req.events.len());
        let mut acks = Vec::with_capacity(req.events.len());
        for e in req.events {
            let event_id = e.event_id.clone();
            match to_event(&e, &req.worker_addr) {
                Err(problem) => {
                    metrics::counter!(m::TASK_EVENTS_REJECTED).increment(1);
                    warn!(worker = %req.worker_addr, %event_id, %problem, "malformed task event dropped");
                    let recorded = serde_json::json!({
                        "worker": req.worker_addr,
                        "event_id": event_id,
                        "task_instance_id": e.task_instance_id,
                        "attempt": e.attempt,
                    });
                    let letter = Letter {
                        source: req.worker_addr.clone(),
                        workflow_instance_id: e.workflow_instance_id,
                        task_instance_id: Some(e.task_instance_id),
                        kind: StateEventKind::TaskStateChange,
                        event: recorded.to_string(),
                        reason: format!("malformed event: {problem}"),
                    };
                    dead_letters::record(&self.0, letter).await;
                    acks.push(ack(event_id, &Ack::Dropped(problem)));
                }
                Ok(routed) => match self.0.runner(routed.run) {
                    Some(runner) => {
                        let set = self.0.pending_events.clone();
                        if !set.lock().unwrap_or_else(|p| p.into_inner()).insert(routed.key) {
                            // a resend of an event still queued: one copy in the inbox is enough
                            acks.push(ack(event_id, &Ack::RetryLater("the event is still being handled".into())));
                            continue;
                        }
                        let pending = PendingGuard { set, key: routed.key };
                        match runner.report(routed.event.clone(), pending) {
                            Some(rx) => waiting.push((event_id, rx)),
                            None => acks.push(ack(event_id, &self.without_runner(routed, &req.worker_addr).await)),
                        }
                    }
                    None => acks.push(ack(event_id, &self.without_runner(routed, &req.worker_addr).await)),
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

    async fn probe_registry(
        &self,
        request: Request<ProbeRegistryRequest>,
    ) -> Result<Response<ProbeRegistryReply>, Status> {
        if !porpoise_proto::tls::peer_is(&self.0.transport, &request, porpoise_proto::tls::WORKER) {
            return Err(Status::permission_denied("only a worker of this cluster (its certificate) may ask"));
        }
        let worker = request.into_inner().worker_addr;
        let read = tokio::time::timeout(PROBE_WAIT, self.0.registry.members(&Selector::Workers { group: None })).await;
        let reply = match read {
            Ok(Ok(members)) => {
                ProbeRegistryReply { reachable: true, listed: members.iter().any(|m| m.key.addr == worker) }
            }
            Ok(Err(e)) => {
                debug!(%worker, error = %e, "registry probe: the registry is unreachable from here too");
                ProbeRegistryReply { reachable: false, listed: false }
            }
            Err(_) => ProbeRegistryReply { reachable: false, listed: false },
        };
        info!(%worker, reachable = reply.reachable, listed = reply.listed, "a worker cut off from the registry asked");
        Ok(Response::new(reply))
    }
}

/// Workers' host names resolved to addresses, kept [`RESOLVED_FOR`]: a worker that advertises
/// a name (not an address) costs one lookup every so often, not one per batch of events.
#[derive(Debug, Default)]
pub(crate) struct HostAddrs {
    cache: std::sync::Mutex<std::collections::HashMap<String, (Vec<std::net::IpAddr>, std::time::Instant)>>,
}

/// How long a resolved worker host is trusted.
const RESOLVED_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// How long resolving a worker's host name may take.
const RESOLVE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl HostAddrs {
    /// The addresses of worker `claimed` (`host:port`).
    async fn of(&self, claimed: &str) -> Result<Vec<std::net::IpAddr>, String> {
        if let Ok(addr) = claimed.parse::<std::net::SocketAddr>() {
            return Ok(vec![addr.ip()]);
        }
        let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(claimed).cloned();
        if let Some((ips, at)) = cached
            && at.elapsed() < RESOLVED_FOR
        {
            return Ok(ips);
        }
        let ips: Vec<std::net::IpAddr> =
            match tokio::time::timeout(RESOLVE_WAIT, tokio::net::lookup_host(claimed)).await {
                Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
                Ok(Err(e)) => return Err(format!("worker address {claimed:?} does not resolve: {e}")),
                Err(_) => return Err(format!("worker address {claimed:?} did not resolve in time")),
            };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(claimed.to_string(), (ips.clone(), std::time::Instant::now()));
        Ok(ips)
    }

    /// Whether the peer at `peer` may speak for worker `claimed`: the peer's address must be
    /// one the worker's host resolves to. (A worker on the master's own host can still claim
    /// another's name on that host; node certificates tell them apart.)
    async fn peer_speaks_for(&self, peer: Option<std::net::SocketAddr>, claimed: &str) -> Result<(), String> {
        let Some(peer) = peer else { return Err("the connection has no peer address".into()) };
        let peer_ip = peer.ip().to_canonical();
        if self.of(claimed).await?.iter().any(|ip| ip.to_canonical() == peer_ip) {
            Ok(())
        } else {
            Err(format!("events from {peer_ip} cannot speak for worker {claimed}"))
        }
    }
}

/// How long a registry probe waits for the registry.
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_peer_speaks_for_a_worker_only_from_an_address_of_its_host() {
        let hosts = HostAddrs::default();
        let local = Some("127.0.0.1:40000".parse().expect("an address"));
        let elsewhere = Some("127.0.0.2:40000".parse().expect("an address"));
        assert_eq!(hosts.peer_speaks_for(local, "127.0.0.1:5679").await, Ok(()));
        assert!(hosts.peer_speaks_for(elsewhere, "127.0.0.1:5679").await.is_err());
        // a host name is resolved, and the answer kept for the next batches
        assert_eq!(hosts.peer_speaks_for(local, "localhost:5679").await, Ok(()));
        assert!(hosts.cache.lock().expect("lock").contains_key("localhost:5679"));
        let refused = hosts.peer_speaks_for(elsewhere, "localhost:5679").await.expect_err("not localhost");
        assert!(refused.contains("cannot speak for worker localhost:5679"), "{refused}");
        assert!(hosts.peer_speaks_for(local, "no-such-host.invalid:1").await.is_err());
        assert!(hosts.peer_speaks_for(None, "127.0.0.1:5679").await.is_err());
    }
}
