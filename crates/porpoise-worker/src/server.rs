//! The `WorkerService` gRPC server: dispatches are accepted up to the slot count and are
//! idempotent per (task instance, attempt); kills and log reads address an attempt.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use porpoise_proto::v1::worker_service_server::WorkerService;
use porpoise_proto::v1::{
    DispatchStatus, DispatchTaskReply, DispatchTaskRequest, GetTaskLogReply, GetTaskLogRequest, KillTaskReply,
    KillTaskRequest, TaskEvent, task_event,
};
use porpoise_registry::Heartbeat;
use porpoise_runtime::Spawner;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::executor::{self, Attempt};
use crate::{Reporter, heartbeat};

/// The most a log read returns at once.
const LOG_SLICE: u32 = 256 * 1024;

use crate::attempts::Attempts;

/// The worker's service state.
#[derive(Debug)]
pub struct WorkerServer {
    addr: String,
    slots: u32,
    tasks_dir: PathBuf,
    reporter: Reporter,
    attempts: Mutex<Attempts>,
    started_at: chrono::DateTime<chrono::Utc>,
    /// Unique to this worker process: marks its tasks' processes (see [`crate::process`]).
    token: String,
    /// Stopping: dispatches are answered DRAINING.
    draining: std::sync::atomic::AtomicBool,
    /// Stopping, and the grace period ran out: killed tasks are reported WORKER_STOPPED.
    stopping: std::sync::atomic::AtomicBool,
    /// Cut off from the registry (see [`crate::fence`]): why. Dispatches are answered FULL,
    /// and the tasks it killed are reported WORKER_STOPPED.
    fenced: Mutex<Option<String>>,
    /// The masters that dispatched to this worker: those it asks when cut off.
    masters: Mutex<std::collections::BTreeSet<String>>,
    /// Why the data directory cannot be written (full, read-only): dispatches are answered
    /// FULL, saying so, until it can.
    disk: Mutex<Option<String>>,
    sampler: crate::system::SystemSampler,
    /// Spawns the attempts, so that stopping the worker ends them all.
    spawner: Spawner,
    /// Which OS users tasks may run as.
    tenants: Mutex<crate::tenant::TenantPolicy>,
    /// How the worker reaches masters, and whom it takes calls from.
    transport: Mutex<porpoise_proto::tls::Transport>,
}

impl WorkerServer {
    pub fn new(
        addr: String,
        slots: u32,
        tasks_dir: PathBuf,
        reporter: Reporter,
        token: String,
        spawner: Spawner,
    ) -> Self {
        let started_at = chrono::Utc::now();
        Self {
            spawner,
            token,
            draining: Default::default(),
            stopping: Default::default(),
            fenced: Mutex::default(),
            masters: Mutex::default(),
            disk: Mutex::default(),
            addr,
            slots,
            tasks_dir,
            reporter,
            attempts: Mutex::default(),
            started_at,
            sampler: Default::default(),
            tenants: Mutex::default(),
            transport: Mutex::default(),
        }
    }

    /// Sets how the worker talks to masters.
    pub fn set_transport(&self, transport: porpoise_proto::tls::Transport) {
        *self.transport.lock().unwrap_or_else(|p| p.into_inner()) = transport;
    }

    /// How the worker talks to masters.
    pub fn transport(&self) -> porpoise_proto::tls::Transport {
        self.transport.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Refuses a call whose peer did not show a master's certificate (under TLS).
    fn check_caller_is_a_master<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if porpoise_proto::tls::peer_is(&self.transport(), request, porpoise_proto::tls::MASTER) {
            Ok(())
        } else {
            warn!(peer = ?request.remote_addr(), "a call without a master's certificate refused");
            Err(Status::permission_denied("only a master of this cluster (its certificate) may call a worker"))
        }
    }

    /// Sets which OS users tasks may run as.
    pub fn set_tenants(&self, policy: crate::tenant::TenantPolicy) {
        *self.tenants.lock().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    fn attempts(&self) -> MutexGuard<'_, Attempts> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    /// Whether the worker has stopped taking dispatches.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Why the data directory cannot be written now, if it cannot.
    pub fn disk_problem(&self) -> Option<String> {
        self.disk.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records whether the data directory can be written (`None`: it can); says so on a change.
    pub fn set_disk_problem(&self, problem: Option<String>) {
        let mut disk = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        match (&*disk, &problem) {
            (None, Some(why)) => warn!(%why, "the data directory cannot be written: taking no tasks until it can"),
            (Some(_), None) => info!("the data directory can be written again: taking tasks"),
            _ => {}
        }
        ::metrics::gauge!(crate::metrics::DATA_DIR_WRITABLE).set(if problem.is_none() { 1.0 } else { 0.0 });
        *disk = problem;
    }

    /// Takes no more tasks: dispatches are answered DRAINING from now on.
    pub fn drain(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Fenced off: the worker is cut off from the registry and will be given up for gone, so
    /// it kills every running task (each reported WORKER_STOPPED, which the master fails over
    /// at once) and takes no task until [`WorkerServer::unfence`].
    pub fn fence(&self, reason: String) {
        let killed = {
            let attempts = self.attempts();
            *self.fenced.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
            let mut killed = 0;
            for kill in attempts.kill_switches() {
                kill.notify_one();
                killed += 1;
            }
            killed
        };
        warn!(%reason, killed, "fenced off: tasks killed, no task taken until the registry lease is renewed");
    }

    /// The registry renewed the lease again: tasks are taken again.
    pub fn unfence(&self) {
        if self.fenced.lock().unwrap_or_else(|p| p.into_inner()).take().is_some() {
            info!("the registry lease is renewed: taking tasks again");
        }
    }

    pub fn fenced(&self) -> bool {
        self.fenced.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// The masters that dispatched to this worker.
    pub fn masters(&self) -> Vec<String> {
        self.masters.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// Kills every running task (the shutdown grace ran out); each is reported WORKER_STOPPED.
    pub fn kill_running(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        for kill in self.attempts().kill_switches() {
            kill.notify_one();
        }
    }

    /// Tasks running now.
    pub fn running(&self) -> u32 {
        self.attempts().running() as u32
    }

    pub fn heartbeat(&self) -> Heartbeat {
        heartbeat(&self.sampler, self.slots, self.running(), self.started_at)
    }

    fn reply(&self, status: DispatchStatus, message: impl Into<String>) -> Response<DispatchTaskReply> {
        let answer = crate::metrics::label(status.as_str_name(), "DISPATCH_STATUS_");
        ::metrics::counter!(crate::metrics::DISPATCHES, "answer" => answer).increment(1);
        Response::new(DispatchTaskReply {
            status: status as i32,
            message: message.into(),
            worker_addr: self.addr.clone(),
        })
    }

    fn start_attempt(
        self: &Arc<Self>,
        req: DispatchTaskRequest,
        run_as: Option<crate::tenant::RunAs>,
        kill: Arc<Notify>,
    ) {
        let attempt = Attempt {
            task_instance_id: req.task_instance_id,
            attempt: req.attempt,
            command: req.command,
            params: req.params,
            timeout: (req.timeout_ms > 0).then(|| Duration::from_millis(req.timeout_ms)),
            run_as,
        };
        let master = req.master_addr;
        let workflow_instance_id = req.workflow_instance_id;
        let (workflow, task) = (req.workflow_name, req.task_name);
        let this = self.clone();
        self.spawner.spawn(async move {
            let event = |kind| TaskEvent {
                event_id: String::new(),
                task_instance_id: attempt.task_instance_id,
                attempt: attempt.attempt,
                workflow_instance_id,
                kind: Some(kind),
            };
            let result = executor::run(&this.tasks_dir, &attempt, &this.addr, &this.token, kill, |running| {
                this.reporter.send_running(&master, event(task_event::Kind::Running(running)));
            })
            .await;
            let mut result = result;
            if result.outcome == porpoise_proto::v1::TaskOutcome::Killed as i32 {
                let fenced = this.fenced.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if this.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    result.outcome = porpoise_proto::v1::TaskOutcome::WorkerStopped as i32;
                    result.message = "the worker stopped before the task ended (its shutdown grace ran out)".into();
                } else if let Some(reason) = fenced {
                    result.outcome = porpoise_proto::v1::TaskOutcome::WorkerStopped as i32;
                    result.message = format!("the worker was cut off from the registry: {reason}");
                }
            }
            let outcome = porpoise_proto::v1::TaskOutcome::try_from(result.outcome)
                .map_or("unknown".to_string(), |o| crate::metrics::label(o.as_str_name(), "TASK_OUTCOME_"));
            let seconds = (result.ended_at_ms - result.started_at_ms).max(0) as f64 / 1000.0;
            ::metrics::histogram!(crate::metrics::TASK_SECONDS, "outcome" => outcome.clone()).record(seconds);
            info!(
                run_id = workflow_instance_id,
                %workflow,
                %task,
                task_instance_id = attempt.task_instance_id,
                attempt = attempt.attempt,
                %outcome,
                exit_code = ?result.exit_code,
                seconds,
                "task finished"
            );
            // the result is queued (pending) before the attempt stops counting as running, so a
            // stopping worker never sees neither and leaves the registry before reporting it
            this.reporter.send(&master, event(task_event::Kind::Result(result))).await;
            this.attempts().finish((attempt.task_instance_id, attempt.attempt), std::time::Instant::now());
        });
    }
}

fn invalid(req: &DispatchTaskRequest) -> Option<String> {
    if req.task_instance_id <= 0 {
        return Some(format!("task_instance_id must be positive, got {}", req.task_instance_id));
    }
    if req.attempt <= 0 {
        return Some(format!("attempt must be positive, got {}", req.attempt));
    }
    if req.command.trim().is_empty() {
        return Some("command is empty".into());
    }
    if req.master_addr.is_empty() {
        return Some("master_addr is empty".into());
    }
    if !req.task_type.is_empty() && req.task_type != "shell" {
        return Some(format!("unsupported task type {:?}", req.task_type));
    }
    // the master checks these too: a worker refuses what would change how bash behaves
    if let Err(why) = porpoise_core::limits::check_params(&req.params) {
        return Some(why);
    }
    use porpoise_core::limits::MAX_ARG_BYTES;
    let runs_as = porpoise_core::shell::reference_params(&req.command, |n| req.params.contains_key(n)).len();
    if runs_as >= MAX_ARG_BYTES {
        return Some(format!(
            "the command is {runs_as} bytes as bash gets it; one exec argument may have at most {}",
            MAX_ARG_BYTES - 1
        ));
    }
    None
}

/// The gRPC face of a shared [`WorkerServer`].
#[derive(Debug, Clone)]
pub struct WorkerGrpc(pub Arc<WorkerServer>);

impl std::ops::Deref for WorkerGrpc {
    type Target = Arc<WorkerServer>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerGrpc {
    async fn dispatch_task(
        &self,
        request: Request<DispatchTaskRequest>,
    ) -> Result<Response<DispatchTaskReply>, Status> {
        self.check_caller_is_a_master(&request)?;
        let req = request.into_inner();
        if let Some(problem) = invalid(&req) {
            warn!(task_instance_id = req.task_instance_id, %problem, "rejected malformed dispatch");
            return Ok(self.reply(DispatchStatus::Invalid, problem));
        }
        let policy = self.0.tenants.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let run_as = match crate::tenant::resolve(&req.tenant, &policy) {
            Ok(run_as) => run_as,
            Err(problem) => {
                warn!(task_instance_id = req.task_instance_id, tenant = %req.tenant, %problem, "refused the task's tenant");
                return Ok(self.reply(DispatchStatus::Invalid, problem));
            }
        };
        let key = (req.task_instance_id, req.attempt);
        if self.0.draining.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(self.reply(DispatchStatus::Draining, "the worker is shutting down"));
        }
        if let Some(why) = self.0.disk_problem() {
            return Ok(self.reply(DispatchStatus::Full, format!("the data directory cannot be written: {why}")));
        }
        self.0.masters.lock().unwrap_or_else(|p| p.into_inner()).insert(req.master_addr.clone());
        let kill = {
            let mut attempts = self.attempts();
            // under the attempts lock, as in `fence`: no attempt starts after the fence killed
            if let Some(reason) = self.0.fenced.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                return Ok(self.reply(DispatchStatus::Full, format!("cut off from the registry ({reason})")));
            }
            if attempts.knows(&key) {
                // a resent dispatch (the reply was lost): the attempt runs or ran once already
                return Ok(self.reply(DispatchStatus::Accepted, "already accepted"));
            }
            let running = attempts.running() as u32;
            if running >= self.slots {
                return Ok(self.reply(DispatchStatus::Full, format!("all {} slots are busy", self.slots)));
            }
            let kill = Arc::new(Notify::new());
            attempts.start(key, kill.clone());
            kill
        };
        // durable before the answer: a worker dying from here on still reports the attempt. The
        // attempt is taken from here on, so it is journaled and started apart from this call,
        // which its caller may give up on (a timeout) while the journal flushes
        let (started, flushed) = tokio::sync::oneshot::channel();
        let this = self.0.clone();
        self.0.spawner.spawn(async move {
            this.reporter.accepted(&req.master_addr, req.task_instance_id, req.attempt, req.workflow_instance_id).await;
            this.start_attempt(req, run_as, kill);
            let _ = started.send(());
        });
        if flushed.await.is_err() {
            return Ok(self.reply(DispatchStatus::Draining, "the worker is shutting down"));
        }
        Ok(self.reply(DispatchStatus::Accepted, ""))
    }

    async fn kill_task(&self, request: Request<KillTaskRequest>) -> Result<Response<KillTaskReply>, Status> {
        self.check_caller_is_a_master(&request)?;
        let req = request.into_inner();
        let found = match self.attempts().kill_switch(&(req.task_instance_id, req.attempt)) {
            Some(kill) => {
                kill.notify_one();
                true
            }
            None => false,
        };
        Ok(Response::new(KillTaskReply { found }))
    }

    async fn get_task_log(&self, request: Request<GetTaskLogRequest>) -> Result<Response<GetTaskLogReply>, Status> {
        self.check_caller_is_a_master(&request)?;
        let req = request.into_inner();
        let path = executor::log_path(&self.tasks_dir, req.task_instance_id, req.attempt);
        let old = || std::fs::File::open(executor::old_log_path(&self.tasks_dir, req.task_instance_id, req.attempt));
        let mut file = std::fs::File::open(&path).or_else(|e| old().map_err(|_| e)).map_err(|e| {
            Status::not_found(format!("no log for task instance {} attempt {}: {e}", req.task_instance_id, req.attempt))
        })?;
        let len = file.metadata().map_err(|e| Status::internal(e.to_string()))?.len();
        let limit = if req.limit == 0 { LOG_SLICE } else { req.limit.min(LOG_SLICE) };
        let offset = req.offset.min(len);
        file.seek(SeekFrom::Start(offset)).map_err(|e| Status::internal(e.to_string()))?;
        let mut content = Vec::new();
        file.take(u64::from(limit)).read_to_end(&mut content).map_err(|e| Status::internal(e.to_string()))?;
        let next_offset = offset + content.len() as u64;
        let done = !self.attempts().is_running(&(req.task_instance_id, req.attempt));
        Ok(Response::new(GetTaskLogReply { content, next_offset, eof: done && next_offset >= len }))
    }
}
