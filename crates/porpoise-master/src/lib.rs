//! Porpoise's master: claims commands, runs one [`runner`] per workflow instance, queues ready
//! tasks by priority and dispatches them to workers, takes the workers' task events
//! (TaskEventService) and serves the CLI (AdminService).

/// AdminService.
mod admin;
/// Operators' actions as a plain Rust API: what the AdminService translates.
pub mod app;
/// Who may call AdminService: API tokens and roles.
mod auth;
/// Group commit: several runs' writes in one transaction.
mod committer;
/// The command consumer.
mod consumer;
/// Writes dead letters, bounded per source.
mod dead_letters;
/// Workflow definitions by id, read once.
mod definitions;
/// The dispatcher.
mod dispatch;
/// TaskEventService.
mod events;
/// The live masters and the takeover of runs without a live owner.
mod masters;
/// Metric names and descriptions.
pub mod metrics;
/// The task priority queue with per-group parking.
mod queue;
/// Wake-ups for waits on runs' ends.
mod run_ends;
/// Workflow runners and their state-event handlers.
mod runner;
/// Schedules firing, shared by every master.
mod scheduler;
/// The live workers and the worker selector.
pub mod workers;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use porpoise_core::Backoff;
use porpoise_proto::v1::admin_service_server::AdminServiceServer;
use porpoise_proto::v1::task_event_service_server::TaskEventServiceServer;
use porpoise_registry::{Heartbeat, MemberKey, Registration, Registry};
use porpoise_store::Store;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use workers::WorkerSelector;

use crate::queue::DispatchQueue;
use crate::runner::RunnerHandle;
use crate::workers::WorkerDirectory;
use porpoise_runtime::Spawner;

/// How a master is set up.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// Where to serve TaskEventService and AdminService; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The address workers and the CLI reach this master at; the listen address when `None`.
    pub advertise: Option<String>,
    pub selector: WorkerSelector,
    /// The registry lease TTL.
    pub lease_ttl: Duration,
    /// Backoff between retries of a state event that failed with a retryable error.
    pub event_backoff: Backoff,
    /// How often commands are polled for besides the wake-ups (Postgres NOTIFY, this master's
    /// own AdminService): the fallback for a missed notification.
    pub command_poll: Duration,
    /// How long a worker must stay out of the registry before its attempts are failed over.
    pub worker_failover_grace: Duration,
    /// How often runs without a live owner are looked for (also at once when a master leaves).
    pub takeover_sweep: Duration,
    /// Who may call AdminService.
    pub admin_auth: AdminAuth,
    /// Mutual TLS with workers, or plain TCP (`--insecure`).
    pub transport: porpoise_proto::tls::Transport,
}

/// Who may call AdminService.
#[derive(Clone, Default)]
pub enum AdminAuth {
    /// API tokens with roles, as `porpoise token create` makes them.
    #[default]
    Tokens,
    /// The same, and an admin token held only in memory, to make the first ones
    /// (`PORPOISE_ADMIN_TOKEN`).
    TokensWithBootstrap(String),
    /// Every call is allowed: only for a master reachable from this host alone (standalone on
    /// loopback).
    Open,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tokens => "Tokens",
            Self::TokensWithBootstrap(_) => "TokensWithBootstrap(<secret>)",
            Self::Open => "Open",
        })
    }
}

impl Default for MasterConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            selector: WorkerSelector::LowestLoad,
            lease_ttl: Duration::from_secs(10),
            event_backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(5),
                multiplier: 2.0,
            },
            command_poll: Duration::from_secs(5),
            worker_failover_grace: Duration::from_secs(2),
            takeover_sweep: Duration::from_secs(1),
            admin_auth: AdminAuth::default(),
            transport: porpoise_proto::tls::Transport::default(),
        }
    }
}

/// Errors starting a master.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot register in the registry: {0}")]
    Register(#[from] porpoise_registry::RegistryError),
    #[error("{0}")]
    Reflection(String),
    /// The TLS settings cannot be used.
    #[error("{0}")]
    Tls(String),
}

/// State shared by the master's parts.
#[derive(Debug)]
pub(crate) struct Shared {
    /// This master's address: its identity as an owner of workflow instances.
    pub addr: String,
    pub store: Arc<dyn Store>,
    pub queue: DispatchQueue,
    /// Spawns the master's tasks, so that stopping it stops them all.
    pub spawner: Spawner,
    pub workers: WorkerDirectory,
    pub event_backoff: Backoff,
    pub consumer_wake: Notify,
    pub command_poll: Duration,
    pub worker_failover_grace: Duration,
    pub takeover_sweep: Duration,
    /// Workers' events queued in a runner's inbox, so a resend does not queue a second copy.
    pub pending_events: Arc<Mutex<HashSet<runner::EventKey>>>,
    runners: Mutex<HashMap<i64, RunnerHandle>>,
    stalls: Mutex<HashMap<i64, String>>,
    /// Lost workers waiting out their grace period.
    lost_workers: Mutex<HashSet<String>>,
    /// Wakes this master's runners whose tasks wait for a slot of a task group.
    slot_waiters: Mutex<HashMap<String, Arc<Notify>>>,
    pub masters: Arc<masters::Masters>,
    pub registry: Arc<dyn Registry>,
    /// Cancelled when the master begins to stop: it takes no new work, and each runner ends
    /// after the event in hand.
    pub draining: CancellationToken,
    /// Bounds the dead letters each source writes.
    pub dead_letters: dead_letters::Limiter,
    /// How this master reaches workers, and whose task events it takes.
    pub transport: porpoise_proto::tls::Transport,
    /// Workers' host names, resolved.
    pub host_addrs: events::HostAddrs,
    /// Definitions read so far.
    pub definitions: definitions::Definitions,
    /// Wakes waits for runs to end.
    pub run_ends: run_ends::RunEnds,
    /// Persists runners' writes, several runs' in one transaction when they wait together.
    pub committer: committer::Committer,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn runner(&self, workflow_instance_id: i64) -> Option<RunnerHandle> {
        lock(&self.runners).get(&workflow_instance_id).cloned()
    }

    /// Every runner of this master, with its run's id.
    pub fn runners(&self) -> Vec<(i64, RunnerHandle)> {
        lock(&self.runners).iter().map(|(id, r)| (*id, r.clone())).collect()
    }

    /// Registers the runner of an instance; `false` (and nothing changes) if it has one.
    pub fn add_runner(&self, workflow_instance_id: i64, handle: RunnerHandle) -> bool {
        let n = {
            let mut r = lock(&self.runners);
            if r.contains_key(&workflow_instance_id) {
                return false;
            }
            r.insert(workflow_instance_id, handle);
            r.len()
        };
        ::metrics::gauge!(metrics::WORKFLOWS_RUNNING).set(n as f64);
        true
    }

    pub fn remove_runner(&self, workflow_instance_id: i64) {
        let n = {
            let mut r = lock(&self.runners);
            r.remove(&workflow_instance_id);
            r.len()
        };
        self.run_ends.bump();
        self.clear_stall(workflow_instance_id);
        ::metrics::gauge!(metrics::WORKFLOWS_RUNNING).set(n as f64);
    }

    pub fn set_stall(&self, workflow_instance_id: i64, reason: String) {
        let n = {
            let mut s = lock(&self.stalls);
            s.insert(workflow_instance_id, reason);
            s.len()
        };
        ::metrics::gauge!(metrics::WORKFLOWS_STALLED).set(n as f64);
    }

    pub fn clear_stall(&self, workflow_instance_id: i64) {
        let n = {
            let mut s = lock(&self.stalls);
            if s.remove(&workflow_instance_id).is_none() {
                return;
            }
            s.len()
        };
        ::metrics::gauge!(metrics::WORKFLOWS_STALLED).set(n as f64);
    }

    /// Why the run is stalled, if it is.
    pub fn stall(&self, workflow_instance_id: i64) -> Option<String> {
        lock(&self.stalls).get(&workflow_instance_id).cloned()
    }

    /// Frees a slot counted on `worker` and lets a parked task of its group take it.
    pub fn release_worker(&self, worker: &str) {
        if let Some(group) = self.workers.release(worker) {
            self.queue.unpark(&group, 1);
        }
    }

    /// Says once per group (until a worker joins it) that tasks wait for a worker.
    pub fn warn_no_worker(&self, group: &str) {
        if self.workers.first_wait(group) {
            warn!(%group, "tasks wait: no worker with a free slot in the group");
        }
    }

    pub fn wake_consumer(&self) {
        self.consumer_wake.notify_one();
    }

    /// What wakes the tasks waiting for a slot of task group `group` on this master.
    pub fn slot_notify(&self, group: &str) -> Arc<Notify> {
        lock(&self.slot_waiters).entry(group.to_string()).or_default().clone()
    }

    /// A slot of task group `group` may be free: its waiters on this master try for it.
    pub fn slots_freed(&self, group: &str) {
        if let Some(n) = lock(&self.slot_waiters).get(group) {
            n.notify_waiters();
        }
    }

    /// Worker `addr` is gone (it left the registry, or a resumed run found it absent): once it
    /// has stayed away for the grace period, every run fails over its attempts there.
    pub fn worker_lost(self: &Arc<Self>, addr: String) {
        if !lock(&self.lost_workers).insert(addr.clone()) {
            return; // already waiting out its grace period
        }
        let shared = self.clone();
        self.spawner.spawn(async move {
            tokio::time::sleep(shared.worker_failover_grace).await;
            lock(&shared.lost_workers).remove(&addr);
            if shared.workers.contains(&addr) {
                info!(worker = %addr, "worker is back within the grace period; nothing failed over");
                return;
            }
            let runners = shared.runners();
            warn!(worker = %addr, runs = runners.len(), "worker lost; failing over its task attempts");
            ::metrics::counter!(metrics::FAILOVERS, "kind" => "worker").increment(1);
            for (_, runner) in runners {
                runner.post(porpoise_core::engine::Event::WorkerLost { worker: addr.clone() });
            }
        });
    }
}

/// A running master.
#[derive(Debug)]
pub struct MasterHandle {
    pub addr: String,
    registration: Arc<Registration>,
    spawner: Spawner,
    shared: Arc<Shared>,
    lease_ttl: Duration,
    health: tonic_health::server::HealthReporter,
}

/// Whether a master can do its work: its database answers, and its registration in etcd is
/// current (renewed within one lease).
#[derive(Debug, Clone)]
pub struct ReadyProbe {
    shared: Arc<Shared>,
    registration: Arc<Registration>,
    lease_ttl: Duration,
}

/// How often the gRPC health status is brought in line with readiness.
const HEALTH_EVERY: Duration = Duration::from_secs(2);

/// Runs until the master stops: the overall gRPC health status follows readiness (SERVING
/// while ready, NOT_SERVING while not), so gRPC probes see what `/readyz` sees.
async fn follow_readiness(probe: ReadyProbe, health: tonic_health::server::HealthReporter) {
    loop {
        let status = match probe.check().await {
            Ok(()) => tonic_health::ServingStatus::Serving,
            Err(_) => tonic_health::ServingStatus::NotServing,
        };
        health.set_service_status("", status).await;
        tokio::time::sleep(HEALTH_EVERY).await;
    }
}

/// How long a readiness check waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

impl ReadyProbe {
    /// `Err` says why the master is not ready.
    pub async fn check(&self) -> Result<(), String> {
        if self.shared.draining.is_cancelled() {
            return Err("the master is stopping".into());
        }
        match tokio::time::timeout(READY_TIMEOUT, self.shared.store.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("the database does not answer: {e}")),
            Err(_) => return Err(format!("the database did not answer within {READY_TIMEOUT:?}")),
        }
        let since = self.registration.last_renewed().elapsed();
        if since > self.lease_ttl {
            return Err(format!("the etcd registration was last renewed {}s ago", since.as_secs()));
        }
        Ok(())
    }
}

/// How long a stopping master waits for its runners to finish the events in hand.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

impl MasterHandle {
    /// Starts a master on `store` and `registry`.
    pub async fn start(
        config: MasterConfig,
        store: Arc<dyn Store>,
        registry: Arc<dyn Registry>,
    ) -> Result<MasterHandle, MasterError> {
        metrics::describe();
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| MasterError::Listen { addr: config.listen, source })?;
        let bound = listener.local_addr().map_err(|source| MasterError::Listen { addr: config.listen, source })?;
        let addr = config.advertise.clone().unwrap_or_else(|| bound.to_string());
        let spawner = Spawner::default();
        let committer = committer::Committer::start(store.clone(), addr.clone(), &spawner);
        let shared = Arc::new(Shared {
            addr: addr.clone(),
            store,
            queue: DispatchQueue::new(spawner.clone()),
            spawner: spawner.clone(),
            workers: WorkerDirectory::new(config.selector, config.transport.clone()),
            event_backoff: config.event_backoff,
            consumer_wake: Notify::new(),
            command_poll: config.command_poll,
            worker_failover_grace: config.worker_failover_grace,
            takeover_sweep: config.takeover_sweep,
            pending_events: Arc::default(),
            runners: Mutex::default(),
            stalls: Mutex::default(),
            lost_workers: Mutex::default(),
            slot_waiters: Mutex::default(),
            masters: Arc::default(),
            registry: registry.clone(),
            draining: CancellationToken::new(),
            dead_letters: dead_letters::Limiter::default(),
            transport: config.transport.clone(),
            host_addrs: events::HostAddrs::default(),
            definitions: definitions::Definitions::default(),
            run_ends: run_ends::RunEnds::default(),
            committer,
        });
        spawner.spawn(run_ends::follow(shared.clone()));
        let (lost_tx, mut lost) = tokio::sync::mpsc::unbounded_channel();
        spawner.spawn(shared.workers.clone().follow(registry.clone(), shared.queue.clone(), lost_tx));
        let failovers = shared.clone();
        spawner.spawn(async move {
            while let Some(addr) = lost.recv().await {
                failovers.worker_lost(addr);
            }
        });
        spawner.spawn(dispatch::run(shared.clone()));
        spawner.spawn(dispatch::fail_tasks_without_workers(shared.clone()));
        spawner.spawn(scheduler::run(shared.clone()));
        spawner.spawn(dead_letters::summarise(shared.clone()));

        let events = TaskEventServiceServer::new(events::TaskEvents(shared.clone()))
            .max_decoding_message_size(porpoise_proto::MAX_MESSAGE_BYTES);
        let tokens = match &config.admin_auth {
            AdminAuth::Open => {
                warn!("AdminService is open: every call is allowed without a token (loopback only)");
                auth::Tokens::new(shared.store.clone(), false, None)
            }
            AdminAuth::Tokens => auth::Tokens::new(shared.store.clone(), true, None),
            AdminAuth::TokensWithBootstrap(secret) => auth::Tokens::new(shared.store.clone(), true, Some(secret)),
        };
        let admin = auth::Authorized {
            inner: AdminServiceServer::new(admin::Admin(app::App(shared.clone())))
                .max_decoding_message_size(porpoise_proto::MAX_MESSAGE_BYTES),
            tokens,
        };
        // the standard health service (grpc.health.v1) and reflection, for probes and grpcurl
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<TaskEventServiceServer<events::TaskEvents>>().await;
        health.set_serving::<AdminServiceServer<admin::Admin>>().await;
        let reflection = porpoise_proto::reflection().map_err(MasterError::Reflection)?;
        let stopping = spawner.stopping();
        // the CLI comes without a certificate; TaskEventService asks workers for theirs
        let mut builder = config.transport.server(true).map_err(MasterError::Tls)?;
        spawner.spawn(async move {
            let result = builder
                .add_service(health_service)
                .add_service(reflection)
                .add_service(events)
                .add_service(admin)
                .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), stopping)
                .await;
            if let Err(e) = result {
                warn!(error = %e, "master gRPC server stopped");
            }
        });
        let registration =
            match registry.register(MemberKey::master(addr.clone()), Heartbeat::idle(0), config.lease_ttl).await {
                Ok(r) => Arc::new(r),
                Err(e) => {
                    spawner.stop().await;
                    return Err(e.into());
                }
            };
        spawner.spawn(shared.masters.clone().follow(registry.clone(), addr.clone()));
        spawner.spawn(masters::check_runs_after_losing_registration(shared.clone()));
        spawner.spawn(masters::take_over_orphans(shared.clone()));
        spawner.spawn(consumer::resume_own_runs(shared.clone()));
        spawner.spawn(consumer::run(shared.clone()));
        info!(%addr, "master started");
        let handle = MasterHandle { addr, registration, spawner, shared, lease_ttl: config.lease_ttl, health };
        handle.spawner.spawn(follow_readiness(handle.ready_probe(), handle.health.clone()));
        Ok(handle)
    }

    /// Stops the master: it claims and dispatches nothing more, each runner finishes the event
    /// in hand (for up to [`STOP_GRACE`]), then the master leaves the registry, so that the
    /// other masters take its runs over at once, and everything it started (timers, dispatches,
    /// watches, the gRPC server) is stopped and waited for. What a runner had not finished is
    /// in the database for the next owner.
    pub async fn stop(&self) {
        info!(addr = %self.addr, runs = self.shared.runners().len(), "master stopping: no new work; finishing the events in hand");
        self.health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        self.shared.draining.cancel();
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while !self.shared.runners().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.shared.runners().len();
        if left > 0 {
            warn!(runs = left, "runners still busy at the end of the stop grace; stopping them where they are");
        }
        if let Err(e) = self.registration.revoke().await {
            warn!(error = %e, "cannot leave the registry cleanly; the other masters take the runs over when the lease ends");
        }
        self.spawner.stop().await;
        info!(addr = %self.addr, "master stopped");
    }

    /// Tasks the master started that have not ended: none once [`MasterHandle::stop`] returned.
    pub fn live_tasks(&self) -> usize {
        self.spawner.live()
    }

    /// What `/readyz` asks: whether this master can do its work now.
    pub fn ready_probe(&self) -> ReadyProbe {
        ReadyProbe { shared: self.shared.clone(), registration: self.registration.clone(), lease_ttl: self.lease_ttl }
    }

    /// The application layer of this master: operators' actions as a Rust API.
    pub fn app(&self) -> app::App {
        app::App(self.shared.clone())
    }
}

impl Drop for MasterHandle {
    fn drop(&mut self) {
        self.spawner.cancel();
    }
}
