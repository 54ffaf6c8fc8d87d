//! Porpoise's worker: accepts task dispatches up to its slot count (`WorkerService`), runs each
//! shell task in its own process group with a per-task log file, and reports RUNNING and RESULT
//! events to the dispatching master, keeping every event until the master ACKs it.

/// Command line and environment settings.
/// The attempts a worker runs and recently ran.
mod attempts;
pub mod config;
/// Running one task attempt: working directory, command, log, timeout, kill.
pub mod executor;
/// Ending the tasks of a worker cut off from the registry.
mod fence;
/// The event journal that keeps unACKed events across a crash.
pub mod journal;
/// Metric names and their registration.
pub mod metrics;
/// Finding and killing every process of a task attempt.
pub mod process;
/// Delivers task events to masters in batches, resending until each is ACKed.
pub mod reporter;
/// The `WorkerService` gRPC server.
pub mod server;
/// CPU, memory and load readings for the heartbeat.
pub mod system;
/// Which OS user a task runs as.
pub mod tenant;
/// The watchdog that ends the tasks of a dead or paused worker.
pub mod watchdog;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use porpoise_registry::{Heartbeat, MemberKey, Registration, Registry};
use porpoise_runtime::Spawner;
use tokio::net::TcpListener;
use tracing::{info, warn};

pub use reporter::Reporter;
pub use server::WorkerServer;

/// How a worker is set up.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Where to listen, e.g. `127.0.0.1:0` for any free port.
    pub listen: SocketAddr,
    /// The address masters reach this worker at; the listen address when `None`.
    pub advertise: Option<String>,
    pub group: String,
    /// How many tasks run at once.
    pub slots: u32,
    /// Task working directories and logs live below `data_dir/tasks/`.
    pub data_dir: PathBuf,
    /// The registry lease TTL.
    pub lease_ttl: Duration,
    /// How long [`WorkerHandle::stop`] lets running tasks go on before it kills them.
    pub shutdown_grace: Duration,
    /// Which OS users tasks may run as.
    pub tenants: tenant::TenantPolicy,
    /// Mutual TLS with masters, or plain TCP (`--insecure`).
    pub transport: porpoise_proto::tls::Transport,
    /// How long a RUNNING event waits for more events (its task's result, most often) to go
    /// to the master in the same report; [`DEFAULT_REPORT_LINGER`] unless tuned.
    pub report_linger: Duration,
}

/// The worker's default [`WorkerConfig::report_linger`].
pub const DEFAULT_REPORT_LINGER: Duration = Duration::from_millis(20);

/// Errors starting a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot register in the registry: {0}")]
    Register(#[from] porpoise_registry::RegistryError),
    #[error("{0}")]
    Reflection(String),
    /// The TLS settings cannot be used.
    #[error("{0}")]
    Tls(String),
}

/// How long a stopping worker waits for killed tasks to end and be reported.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long a stopping worker waits for masters to ACK its last events.
const FLUSH_WAIT: Duration = Duration::from_secs(10);

/// Where a worker keeps the token that marks its tasks' processes.
const TOKEN_FILE: &str = "worker.token";

/// Makes this process the data directory's worker: ends every task process the previous worker
/// on it left running (it died without killing them, and their results would never be
/// reported), then records this worker's token there. Returns the token.
async fn take_over_data_dir(data_dir: &std::path::Path) -> Result<String, WorkerError> {
    let path = data_dir.join(TOKEN_FILE);
    let token = format!("{}-{}", std::process::id(), chrono::Utc::now().timestamp_micros());
    if let Ok(previous) = std::fs::read_to_string(&path) {
        let previous = previous.trim().to_string();
        if !previous.is_empty() {
            let report = tokio::task::spawn_blocking(move || {
                process::kill_leftovers(&previous, std::time::Duration::from_secs(5))
            })
            .await
            .unwrap_or(process::KillReport { killed: 0, survivors: 0 });
            if report.killed > 0 || report.survivors > 0 {
                warn!(
                    killed = report.killed,
                    survivors = report.survivors,
                    "ended task processes the previous worker on this data directory left running"
                );
            }
        }
    }
    std::fs::write(&path, &token).map_err(|source| WorkerError::DataDir { path: path.clone(), source })?;
    Ok(token)
}

/// A running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    pub addr: String,
    server: Arc<WorkerServer>,
    registration: Option<Arc<Registration>>,
    /// Owns every task the worker spawned: attempts, event delivery, heartbeats, the server.
    spawner: Spawner,
    grace: Duration,
    watchdog: Option<watchdog::Watchdog>,
    lease_ttl: Duration,
    health: tonic_health::server::HealthReporter,
}

/// Whether a worker can take tasks: it is registered (renewed within one lease) and not
/// draining.
#[derive(Debug, Clone)]
pub struct ReadyProbe {
    server: Arc<WorkerServer>,
    registration: Option<Arc<Registration>>,
    lease_ttl: Duration,
}

impl ReadyProbe {
    /// `Err` says why the worker is not ready.
    pub fn check(&self) -> Result<(), String> {
        if self.server.is_draining() {
            return Err("the worker is draining: it takes no more tasks".into());
        }
        if let Some(why) = self.server.disk_problem() {
            return Err(format!("the data directory cannot be written: {why}"));
        }
        let Some(registration) = &self.registration else { return Err("the worker is stopping".into()) };
        let since = registration.last_renewed().elapsed();
        if since > self.lease_ttl {
            return Err(format!("the etcd registration was last renewed {}s ago", since.as_secs()));
        }
        Ok(())
    }
}

impl WorkerHandle {
    /// Starts serving, then registers in `registry` under `workers/<group>/<addr>`.
    pub async fn start(config: WorkerConfig, registry: Arc<dyn Registry>) -> Result<WorkerHandle, WorkerError> {
        let tasks_dir = config.data_dir.join("tasks");
        std::fs::create_dir_all(&tasks_dir)
            .map_err(|source| WorkerError::DataDir { path: tasks_dir.clone(), source })?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| WorkerError::Listen { addr: config.listen, source })?;
        let bound = listener.local_addr().map_err(|source| WorkerError::Listen { addr: config.listen, source })?;
        let addr = config.advertise.clone().unwrap_or_else(|| bound.to_string());
        let token = take_over_data_dir(&config.data_dir).await?;
        let spawner = Spawner::default();
        let watchdog = watchdog::Watchdog::start(&config.data_dir, &token, config.lease_ttl / 2, &spawner)
            .map_err(|source| WorkerError::DataDir { path: config.data_dir.clone(), source })?;
        let mut stops = 0u32;
        let (journal, replay) = journal::Journal::open(&config.data_dir, || {
            stops += 1;
            format!("{addr}#{token}-stop-{stops}")
        })
        .map_err(|source| WorkerError::DataDir { path: config.data_dir.join(journal::FILE), source })?;
        if !replay.is_empty() {
            info!(events = replay.len(), "delivering the events a previous worker on this data directory left");
        }
        let reporter = Reporter::start(
            addr.clone(),
            &token,
            registry.clone(),
            Arc::new(journal),
            replay,
            reporter::Delivery { transport: config.transport.clone(), linger: config.report_linger },
            &spawner,
        );
        let server =
            Arc::new(WorkerServer::new(addr.clone(), config.slots, tasks_dir, reporter, token, spawner.clone()));
        server.set_tenants(config.tenants.clone());
        server.set_transport(config.transport.clone());
        let svc =
            porpoise_proto::v1::worker_service_server::WorkerServiceServer::new(server::WorkerGrpc(server.clone()))
                .max_decoding_message_size(porpoise_proto::MAX_MESSAGE_BYTES);
        // the standard health service (grpc.health.v1) and reflection, for probes and grpcurl
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<porpoise_proto::v1::worker_service_server::WorkerServiceServer<server::WorkerGrpc>>()
            .await;
        let reflection = porpoise_proto::reflection().map_err(WorkerError::Reflection)?;
        let stopping = spawner.stopping();
        // under TLS only a client with a certificate of the cluster CA gets through the handshake
        let mut builder = config.transport.server(false).map_err(WorkerError::Tls)?;
        spawner.spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let result = builder
                .add_service(health_service)
                .add_service(reflection)
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, stopping)
                .await;
            if let Err(e) = result {
                warn!(error = %e, "worker gRPC server stopped");
            }
        });
        let key = MemberKey::worker(config.group.clone(), addr.clone());
        let registration = match registry.register(key, server.heartbeat(), config.lease_ttl).await {
            Ok(r) => Arc::new(r),
            Err(e) => {
                spawner.stop().await;
                return Err(e.into());
            }
        };
        crate::metrics::register(config.slots);
        info!(%addr, group = %config.group, slots = config.slots, "worker started");
        spawner.spawn(publish_heartbeats(server.clone(), registration.clone(), config.lease_ttl));
        spawner.spawn(sample_gauges(server.clone(), config.data_dir.join(journal::FILE)));
        spawner.spawn(probe_data_dir(server.clone(), config.data_dir.clone()));
        let probe = ReadyProbe {
            server: server.clone(),
            registration: Some(registration.clone()),
            lease_ttl: config.lease_ttl,
        };
        spawner.spawn(follow_readiness(probe, health.clone()));
        spawner.spawn(fence::run(server.clone(), registry, registration.clone(), config.lease_ttl, addr.clone()));
        Ok(WorkerHandle {
            addr,
            server,
            registration: Some(registration),
            spawner,
            grace: config.shutdown_grace,
            watchdog: Some(watchdog),
            lease_ttl: config.lease_ttl,
            health,
        })
    }

    /// What `/readyz` asks: whether this worker can take tasks now.
    pub fn ready_probe(&self) -> ReadyProbe {
        ReadyProbe { server: self.server.clone(), registration: self.registration.clone(), lease_ttl: self.lease_ttl }
    }

    /// Events not yet ACKed by a master.
    pub fn unacked_events(&self) -> usize {
        self.server.reporter().pending()
    }

    /// Stops gracefully: takes no more tasks (dispatches are answered DRAINING), lets running
    /// tasks finish for the grace period, kills what is left (whole process groups; each is
    /// reported WORKER_STOPPED, and the master fails it over), waits for the masters to ACK the
    /// events, then leaves the registry and stops serving.
    pub async fn stop(&mut self) {
        self.health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        self.server.drain();
        let running = self.server.running();
        if running > 0 {
            info!(running, grace = %humantime::format_duration(self.grace), "draining: waiting for running tasks");
        }
        let deadline = tokio::time::Instant::now() + self.grace;
        while self.server.running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.server.running();
        if left > 0 {
            warn!(tasks = left, "the shutdown grace period ran out: killing the tasks still running");
            self.server.kill_running();
            let deadline = tokio::time::Instant::now() + KILL_WAIT;
            while self.server.running() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let deadline = tokio::time::Instant::now() + FLUSH_WAIT;
        while self.server.reporter().pending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let unsent = self.server.reporter().pending();
        if unsent > 0 {
            warn!(events = unsent, "stopping with task events no master has ACKed");
        }
        if let Some(r) = self.registration.take()
            && let Err(e) = r.revoke().await
        {
            warn!(error = %e, "cannot leave the registry cleanly");
        }
        self.spawner.stop().await;
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
    }

    /// Tasks the worker started that have not ended: none once [`WorkerHandle::stop`] returned.
    pub fn live_tasks(&self) -> usize {
        self.spawner.live()
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.spawner.cancel();
    }
}

/// Publishes the worker's load every `every` so lowest-load selection sees it.
async fn publish_heartbeats(server: Arc<WorkerServer>, registration: Arc<Registration>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = registration.update(server.heartbeat()).await {
            warn!(error = %e, "cannot publish the worker heartbeat");
        }
    }
}

/// Runs until the worker stops: the overall gRPC health status follows readiness (SERVING while
/// it can take tasks, NOT_SERVING while not), so gRPC probes see what `/readyz` sees.
async fn follow_readiness(probe: ReadyProbe, health: tonic_health::server::HealthReporter) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let status = match probe.check() {
            Ok(()) => tonic_health::ServingStatus::Serving,
            Err(_) => tonic_health::ServingStatus::NotServing,
        };
        health.set_service_status("", status).await;
    }
}

/// How often the worker checks that its data directory can be written.
const DISK_PROBE: Duration = Duration::from_secs(2);

/// Runs until the worker stops: writes, syncs and removes a small file in the data directory
/// every [`DISK_PROBE`]; while that fails (disk full, read-only), the worker takes no tasks.
async fn probe_data_dir(server: Arc<WorkerServer>, data_dir: std::path::PathBuf) {
    let probe = data_dir.join(".write-probe");
    let mut tick = tokio::time::interval(DISK_PROBE);
    loop {
        tick.tick().await;
        let probe = probe.clone();
        let written = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(&probe)?;
            f.write_all(b"porpoise")?;
            f.sync_all()?;
            std::fs::remove_file(&probe)
        })
        .await;
        let problem = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{}: {e}", data_dir.display())),
            Err(e) => Some(format!("the check did not run: {e}")),
        };
        server.set_disk_problem(problem);
    }
}

/// Runs until the worker stops: sets the worker's gauges once a second.
async fn sample_gauges(server: Arc<WorkerServer>, journal: std::path::PathBuf) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        ::metrics::gauge!(crate::metrics::TASKS_RUNNING).set(f64::from(server.running()));
        ::metrics::gauge!(crate::metrics::EVENTS_UNACKED).set(server.reporter().pending() as f64);
        let size = std::fs::metadata(&journal).map_or(0, |m| m.len());
        ::metrics::gauge!(crate::metrics::JOURNAL_BYTES).set(size as f64);
    }
}

/// The current time in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A worker's heartbeat value.
pub(crate) fn heartbeat(
    sampler: &system::SystemSampler,
    slots: u32,
    running: u32,
    started_at: chrono::DateTime<chrono::Utc>,
) -> Heartbeat {
    Heartbeat {
        cpu: sampler.cpu_percent(),
        memory: system::memory_percent(),
        load: system::load_average(),
        running_tasks: running,
        slots,
        started_at,
    }
}
