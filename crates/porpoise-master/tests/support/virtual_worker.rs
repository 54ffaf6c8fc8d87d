//! A virtual worker: a real WorkerService on a loopback port, registered like a worker, that
//! answers dispatches as the test tells it and reports task events back to the master over
//! real gRPC, resending each until the master ACKs it, as a worker does. It runs nothing: a
//! task it accepted is "running" until the test finishes it (or, with `auto`, at once).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use porpoise_proto::v1::task_event_service_client::TaskEventServiceClient;
use porpoise_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use porpoise_proto::v1::*;
use porpoise_registry::{Heartbeat, MemberKey, Registration, Registry};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::wait_for;

/// How the worker answers a dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Takes the task (FULL beyond its slots, as a real worker).
    Accept,
    Full,
    Draining,
    Invalid,
    /// Never answers (the call hangs until the master gives up on it).
    Hang,
}

/// An attempt of a task instance.
pub type Attempt = (i64, i32);

#[derive(Debug)]
struct State {
    slots: usize,
    script: VecDeque<Answer>,
    answer: Answer,
    /// Finish accepted tasks at once with this outcome.
    auto: Option<TaskOutcome>,
    /// Every dispatch call, in arrival order.
    received: Vec<DispatchTaskRequest>,
    /// Attempts accepted, in order (a resent dispatch of a running attempt is not counted).
    accepted: Vec<Attempt>,
    running: Vec<(Attempt, String)>,
    most_running: usize,
    /// Dispatches refused because every slot was taken: a master that counts right sends none.
    over_slots: usize,
}

/// See the module doc.
#[derive(Debug, Clone)]
pub struct VirtualWorker {
    pub addr: String,
    group: String,
    slots: u32,
    registry: Arc<dyn Registry>,
    state: Arc<Mutex<State>>,
    registration: Arc<Mutex<Option<Registration>>>,
    shutdown: Arc<Mutex<Option<oneshot::Sender<()>>>>,
}

#[derive(Debug, Clone)]
struct Service(Arc<Mutex<State>>, String, Arc<dyn Registry>);

impl VirtualWorker {
    /// Starts a worker of `group` with `slots` slots, reporting `load` (percent) in its
    /// heartbeat, registered in `registry`.
    /// With `auto`, it finishes every task it accepts at once with that outcome.
    pub async fn start(
        registry: &Arc<dyn Registry>,
        group: &str,
        slots: u32,
        load: f64,
        auto: Option<TaskOutcome>,
    ) -> VirtualWorker {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address").to_string();
        let state = Arc::new(Mutex::new(State {
            slots: slots as usize,
            script: VecDeque::new(),
            answer: Answer::Accept,
            auto,
            received: Vec::new(),
            accepted: Vec::new(),
            running: Vec::new(),
            most_running: 0,
            over_slots: 0,
        }));
        let (shutdown, stopped) = oneshot::channel::<()>();
        let service = WorkerServiceServer::new(Service(state.clone(), addr.clone(), registry.clone()));
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        let heartbeat = Heartbeat { load, ..Heartbeat::idle(slots) };
        let registration = registry
            .register(MemberKey::worker(group, addr.clone()), heartbeat, Duration::from_secs(10))
            .await
            .expect("register the virtual worker");
        VirtualWorker {
            addr,
            group: group.to_string(),
            slots,
            registry: registry.clone(),
            state,
            registration: Arc::new(Mutex::new(Some(registration))),
            shutdown: Arc::new(Mutex::new(Some(shutdown))),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers every dispatch from now on with `answer`.
    pub fn answer(&self, answer: Answer) {
        self.state().answer = answer;
    }

    /// Answers the next dispatches with `answers`, in order, then as before.
    pub fn script(&self, answers: &[Answer]) {
        self.state().script.extend(answers.iter().copied());
    }

    /// Finishes every task it accepts at once, with `outcome`.
    pub fn auto(&self, outcome: TaskOutcome) {
        self.state().auto = Some(outcome);
    }

    pub fn received(&self) -> Vec<DispatchTaskRequest> {
        self.state().received.clone()
    }

    pub fn accepted(&self) -> Vec<Attempt> {
        self.state().accepted.clone()
    }

    /// Names of the tasks accepted, in order.
    pub fn accepted_names(&self) -> Vec<String> {
        let st = self.state();
        st.accepted
            .iter()
            .filter_map(|a| st.received.iter().find(|r| (r.task_instance_id, r.attempt) == *a))
            .map(|r| r.task_name.clone())
            .collect()
    }

    pub fn running(&self) -> Vec<Attempt> {
        self.state().running.iter().map(|(a, _)| *a).collect()
    }

    /// The most tasks it ever ran at once.
    pub fn most_running(&self) -> usize {
        self.state().most_running
    }

    /// Dispatches that found every slot taken.
    pub fn over_slots(&self) -> usize {
        self.state().over_slots
    }

    /// Waits until it has accepted `n` attempts.
    pub async fn wait_accepted(&self, n: usize) -> Vec<Attempt> {
        wait_for(&format!("worker {} to accept {n} tasks", self.addr), || {
            let a = self.accepted();
            (a.len() >= n).then_some(a)
        })
        .await
    }

    /// Reports the accepted `attempt` RUNNING, until ACKed.
    pub async fn report_running(&self, attempt: Attempt) {
        let request = self.state().received.iter().rev().find(|r| (r.task_instance_id, r.attempt) == attempt).cloned();
        let request = request.expect("the attempt was dispatched here");
        report(&self.registry, &request.master_addr, &self.addr, &request, None).await;
    }

    /// Reports RUNNING and RESULT (`outcome`) of each accepted attempt of `attempts` to the
    /// master that dispatched it, all in one call, once, as a worker reports short tasks;
    /// returns the master's answer to each event.
    pub async fn report_once(&self, attempts: &[Attempt], outcome: TaskOutcome) -> Vec<(String, AckStatus)> {
        let requests: Vec<DispatchTaskRequest> = {
            let mut st = self.state();
            st.running.retain(|(a, _)| !attempts.contains(a));
            attempts
                .iter()
                .map(|a| {
                    let found = st.received.iter().rev().find(|r| (r.task_instance_id, r.attempt) == *a);
                    found.cloned().expect("the attempt was dispatched here")
                })
                .collect()
        };
        let master = requests.first().map(|r| r.master_addr.clone()).expect("at least one attempt");
        let events = requests.iter().flat_map(|r| events_of(r, &self.addr, Some(outcome))).collect();
        let mut client = TaskEventServiceClient::connect(format!("http://{master}")).await.expect("reach the master");
        let req = ReportTaskEventsRequest { worker_addr: self.addr.clone(), events };
        let reply = client.report_task_events(req).await.expect("the master answers").into_inner();
        reply.acks.into_iter().map(|a| (a.event_id, AckStatus::try_from(a.status).expect("a known status"))).collect()
    }

    /// Finishes the running `attempt` with `outcome`: reports RUNNING and RESULT until ACKed.
    pub async fn finish(&self, attempt: Attempt, outcome: TaskOutcome) {
        let master = {
            let mut st = self.state();
            let i = st.running.iter().position(|(a, _)| *a == attempt).expect("the attempt runs on this worker");
            st.running.remove(i).1
        };
        let request = self.state().received.iter().rev().find(|r| (r.task_instance_id, r.attempt) == attempt).cloned();
        let request = request.expect("the attempt was dispatched here");
        report(&self.registry, &master, &self.addr, &request, Some(outcome)).await;
    }

    /// Stops answering (its port refuses connections) while it stays registered, as a worker
    /// whose process hangs or whose network is cut until its lease runs out.
    pub fn stop_serving(&self) {
        if let Some(s) = self.shutdown.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = s.send(());
        }
    }

    /// Registers again after [`VirtualWorker::leave`], as a worker back from a network cut.
    pub async fn rejoin(&self) {
        let registration = self
            .registry
            .register(
                MemberKey::worker(&self.group, self.addr.clone()),
                Heartbeat::idle(self.slots),
                Duration::from_secs(10),
            )
            .await
            .expect("register again");
        *self.registration.lock().unwrap_or_else(|p| p.into_inner()) = Some(registration);
    }

    /// Leaves the registry, as a dead worker does when its lease runs out.
    pub async fn leave(&self) {
        let registration = self.registration.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(r) = registration {
            r.revoke().await.expect("leave the registry");
        }
    }
}

/// RUNNING and, with an `outcome`, RESULT for `request`, as reported by `worker`.
fn events_of(request: &DispatchTaskRequest, worker: &str, outcome: Option<TaskOutcome>) -> Vec<TaskEvent> {
    let now = chrono::Utc::now().timestamp_millis();
    let event = |id: &str, kind| TaskEvent {
        event_id: format!("{}-{}-{id}", request.task_instance_id, request.attempt),
        task_instance_id: request.task_instance_id,
        attempt: request.attempt,
        workflow_instance_id: request.workflow_instance_id,
        kind: Some(kind),
    };
    let running = event(
        "running",
        task_event::Kind::Running(TaskRunning {
            started_at_ms: now,
            worker_addr: worker.to_string(),
            log_path: String::new(),
        }),
    );
    let result = outcome.map(|outcome| {
        event(
            "result",
            task_event::Kind::Result(TaskResult {
                outcome: outcome as i32,
                exit_code: match outcome {
                    TaskOutcome::Success => Some(0),
                    TaskOutcome::Failure => Some(1),
                    _ => None,
                },
                started_at_ms: now,
                ended_at_ms: now,
                message: String::new(),
            }),
        )
    });
    std::iter::once(running).chain(result).collect()
}

/// Sends RUNNING and, with an `outcome`, RESULT for `request` to `master`, each until a master
/// ACKs it — following the run to its new owner when told, and to a live master when `master`
/// cannot be reached, as a worker does.
async fn report(
    registry: &Arc<dyn Registry>,
    master: &str,
    worker: &str,
    request: &DispatchTaskRequest,
    outcome: Option<TaskOutcome>,
) {
    let target = Arc::new(Mutex::new(master.to_string()));
    for e in events_of(request, worker, outcome) {
        wait_for_async(&format!("the master to ACK event {}", e.event_id), || {
            let e = e.clone();
            let target = target.clone();
            async move {
                let to = target.lock().unwrap_or_else(|p| p.into_inner()).clone();
                // the master may be restarting: connect again for each try
                let Ok(mut client) = TaskEventServiceClient::connect(format!("http://{to}")).await else {
                    // gone? any live master says where the run went
                    let live = registry.members(&porpoise_registry::Selector::Masters).await.ok()?;
                    if let Some(m) = live.into_iter().map(|m| m.key.addr).find(|a| *a != to) {
                        *target.lock().unwrap_or_else(|p| p.into_inner()) = m;
                    }
                    return None;
                };
                let req = ReportTaskEventsRequest { worker_addr: worker.to_string(), events: vec![e] };
                let reply = client.report_task_events(req).await.ok()?.into_inner();
                let handled = reply.acks.iter().all(|a| a.status == AckStatus::Handled as i32);
                if let Some(owner) = reply.acks.iter().map(|a| a.owner.clone()).find(|o| !o.is_empty()) {
                    *target.lock().unwrap_or_else(|p| p.into_inner()) = owner;
                }
                if !handled {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                handled.then_some(())
            }
        })
        .await;
    }
}

async fn wait_for_async<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + super::DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tonic::async_trait]
impl WorkerService for Service {
    async fn dispatch_task(
        &self,
        request: Request<DispatchTaskRequest>,
    ) -> Result<Response<DispatchTaskReply>, Status> {
        let req = request.into_inner();
        let attempt = (req.task_instance_id, req.attempt);
        let answer = {
            let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
            st.received.push(req.clone());
            st.script.pop_front().unwrap_or(st.answer)
        };
        if answer == Answer::Hang {
            return std::future::pending().await;
        }
        let (status, auto) = {
            let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
            match answer {
                // a resent dispatch of an attempt it has (or had): a real worker runs it once
                Answer::Accept if st.accepted.contains(&attempt) => (DispatchStatus::Accepted, None),
                Answer::Accept if st.running.len() >= st.slots => {
                    st.over_slots += 1;
                    (DispatchStatus::Full, None)
                }
                Answer::Accept => {
                    st.accepted.push(attempt);
                    st.running.push((attempt, req.master_addr.clone()));
                    st.most_running = st.most_running.max(st.running.len());
                    (DispatchStatus::Accepted, st.auto)
                }
                Answer::Full => (DispatchStatus::Full, None),
                Answer::Draining => (DispatchStatus::Draining, None),
                Answer::Invalid => (DispatchStatus::Invalid, None),
                Answer::Hang => unreachable!("answered above"),
            }
        };
        if let Some(outcome) = auto {
            let state = self.0.clone();
            let worker = self.1.clone();
            let registry = self.2.clone();
            let req = req.clone();
            tokio::spawn(async move {
                {
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    st.running.retain(|(a, _)| *a != attempt);
                }
                report(&registry, &req.master_addr, &worker, &req, Some(outcome)).await;
            });
        }
        let message = match status {
            DispatchStatus::Invalid => "the virtual worker refuses this task".to_string(),
            DispatchStatus::Draining => "draining".to_string(),
            DispatchStatus::Full => "no free slot".to_string(),
            _ => String::new(),
        };
        Ok(Response::new(DispatchTaskReply { status: status as i32, message, worker_addr: self.1.clone() }))
    }

    async fn kill_task(&self, _request: Request<KillTaskRequest>) -> Result<Response<KillTaskReply>, Status> {
        Ok(Response::new(KillTaskReply { found: false }))
    }

    async fn get_task_log(&self, _request: Request<GetTaskLogRequest>) -> Result<Response<GetTaskLogReply>, Status> {
        Ok(Response::new(GetTaskLogReply { content: Vec::new(), next_offset: 0, eof: true }))
    }
}
