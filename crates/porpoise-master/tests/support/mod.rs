//! An in-process test cluster: one real master (its gRPC services on a loopback port) over a
//! SQLite store (or a given one) wrapped in a [`FaultyStore`], the in-memory registry, and
//! [`VirtualWorker`]s that answer dispatches as each test tells them.

pub mod faulty_store;
pub mod virtual_worker;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use porpoise_core::ExecutionState;
use porpoise_master::{MasterConfig, MasterHandle, WorkerSelector};
use porpoise_proto::v1::admin_service_client::AdminServiceClient;
use porpoise_proto::v1::{ApplyWorkflowRequest, StartRunRequest, TaskOutcome};
use porpoise_registry::{MemoryRegistry, Registry};
use porpoise_store::{SqliteStore, Store, TaskInstance, WorkflowInstance};
use tonic::transport::Channel;

pub use faulty_store::{FaultyStore, Op, When};
pub use virtual_worker::{Answer, VirtualWorker};

/// How long any wait in these tests may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Waits until `check` returns something, polling; fails the test after [`DEADLINE`].
pub async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The process's metrics (one recorder per test process; nextest runs each test in its own).
fn metrics() -> &'static PrometheusHandle {
    let _ = tracing_subscriber::fmt().with_env_filter("porpoise_master=debug").with_test_writer().try_init();
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().expect("install the metrics recorder"))
}

/// See the module doc.
#[derive(Debug)]
pub struct Cluster {
    pub store: Arc<FaultyStore>,
    pub registry: Arc<dyn Registry>,
    pub master: MasterHandle,
    config: MasterConfig,
    admin: AdminServiceClient<Channel>,
    _dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// A master choosing workers with `selector`, on a fresh SQLite database.
    pub async fn start(selector: WorkerSelector) -> Cluster {
        Self::start_with(MasterConfig { selector, ..Self::config() }).await
    }

    /// A master with `config` on a fresh SQLite database.
    pub async fn start_with(config: MasterConfig) -> Cluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = SqliteStore::open(&dir.path().join("porpoise.db")).await.expect("open SQLite");
        let mut cluster = Self::start_on(config, Arc::new(store)).await;
        cluster._dir = Some(dir);
        cluster
    }

    /// The settings tests use: retries of state events come quickly.
    pub fn config() -> MasterConfig {
        let mut config = MasterConfig::default();
        config.event_backoff.initial = Duration::from_millis(20);
        config.event_backoff.max = Duration::from_millis(200);
        config.worker_failover_grace = Duration::from_millis(100);
        // these tests are about the engine; API tokens have their own (porpoise-cli::security)
        config.admin_auth = porpoise_master::AdminAuth::Open;
        config
    }

    /// A master with `config` on `store`.
    pub async fn start_on(config: MasterConfig, store: Arc<dyn Store>) -> Cluster {
        metrics();
        let store = Arc::new(FaultyStore::new(store));
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let master =
            MasterHandle::start(config.clone(), store.clone(), registry.clone()).await.expect("start the master");
        let admin =
            AdminServiceClient::connect(format!("http://{}", master.addr)).await.expect("connect to the master");
        Cluster { store, registry, master, config, admin, _dir: None }
    }

    /// Stops the master; checks that nothing it started is left running.
    pub async fn stop_master(&self) {
        self.master.stop().await;
        assert_eq!(self.master.live_tasks(), 0, "the stopped master left tasks running");
    }

    /// Starts a new master on the stopped one's address, store and registry, as a master
    /// restarted in place.
    pub async fn start_master(&mut self) {
        let listen = self.master.addr.parse().expect("the master's address");
        let config = MasterConfig { listen, ..self.config.clone() };
        self.master = MasterHandle::start(config, self.store.clone(), self.registry.clone())
            .await
            .expect("start the master again");
        self.admin =
            AdminServiceClient::connect(format!("http://{}", self.master.addr)).await.expect("connect to the master");
    }

    /// Another master on the same store and registry.
    pub async fn extra_master(&self) -> MasterHandle {
        let config = MasterConfig { listen: "127.0.0.1:0".parse().expect("an address"), ..self.config.clone() };
        MasterHandle::start(config, self.store.clone(), self.registry.clone()).await.expect("start a master")
    }

    /// A client of the master's AdminService.
    pub fn admin(&self) -> AdminServiceClient<Channel> {
        self.admin.clone()
    }

    /// A virtual worker of `group` with `slots` slots and no load.
    pub async fn worker(&self, group: &str, slots: u32) -> VirtualWorker {
        VirtualWorker::start(&self.registry, group, slots, 0.0, None).await
    }

    /// A virtual worker that finishes every task it accepts at once with `outcome` — from its
    /// first dispatch on: tasks already waiting are dispatched as soon as it registers.
    pub async fn auto_worker(&self, group: &str, slots: u32, outcome: TaskOutcome) -> VirtualWorker {
        VirtualWorker::start(&self.registry, group, slots, 0.0, Some(outcome)).await
    }

    /// Applies `yaml` and starts a run of it; returns the run id.
    pub async fn run(&self, yaml: &str) -> i64 {
        let mut admin = self.admin.clone();
        let applied = admin
            .apply_workflow(ApplyWorkflowRequest { spec_yaml: yaml.to_string(), file_name: "test.yaml".into() })
            .await
            .expect("apply the workflow")
            .into_inner();
        admin
            .start_run(StartRunRequest {
                workflow_name: applied.name,
                params: Default::default(),
                priority: String::new(),
                count: 1,
            })
            .await
            .expect("start a run")
            .into_inner()
            .run_id
    }

    /// Waits until run `id` has ended and returns it.
    pub async fn run_ends(&self, id: i64) -> WorkflowInstance {
        self.wait_run(id, &format!("run {id} to end"), |r| r.state.is_terminal()).await
    }

    /// Waits until run `id` satisfies `done`.
    pub async fn wait_run(&self, id: i64, what: &str, done: impl Fn(&WorkflowInstance) -> bool) -> WorkflowInstance {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let run = self.store.workflow_instance(id).await.expect("read the run").expect("the run exists");
            if done(&run) {
                return run;
            }
            if tokio::time::Instant::now() >= deadline {
                let tasks = states(&self.tasks(id).await);
                panic!("timed out waiting for {what}; it is {}, its tasks {tasks:?}", run.state);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the states of run `id`'s tasks (see [`states`]) satisfy `done`.
    pub async fn wait_tasks(&self, id: i64, what: &str, done: impl Fn(&[(String, ExecutionState)]) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let now = states(&self.tasks(id).await);
            if done(&now) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}; tasks are {now:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Run `id`'s task instances, by id.
    pub async fn tasks(&self, id: i64) -> Vec<TaskInstance> {
        self.store.task_instances_of(id).await.expect("read the task instances")
    }

    /// Run `id`'s task instance called `name`.
    pub async fn task(&self, id: i64, name: &str) -> TaskInstance {
        self.tasks(id).await.into_iter().find(|t| t.task_name == name).expect("the task instance exists")
    }

    /// The value of a metric sample, `name{labels}` exactly as exposed; fails if there is none.
    pub fn metric(&self, sample: &str) -> f64 {
        self.try_metric(sample).unwrap_or_else(|| panic!("no metric sample {sample} in:\n{}", metrics().render()))
    }

    /// The value of a metric sample, if it is exposed yet.
    pub fn try_metric(&self, sample: &str) -> Option<f64> {
        metrics()
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// The states of `tasks`, by task name, sorted by name.
pub fn states(tasks: &[TaskInstance]) -> Vec<(String, ExecutionState)> {
    let mut s: Vec<_> = tasks.iter().map(|t| (t.task_name.clone(), t.state)).collect();
    s.sort();
    s
}
