//! `porpoise standalone`: a master and a worker in one process, on SQLite and the in-memory
//! registry, talking over the same gRPC paths on loopback as a cluster does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use porpoise_master::{AdminAuth, MasterConfig, MasterHandle};
use porpoise_registry::MemoryRegistry;
use porpoise_store::{SqliteStore, Store};
use porpoise_worker::{WorkerConfig, WorkerHandle};
use tracing::info;

/// Where standalone keeps its database and task logs by default.
pub const DEFAULT_DATA_DIR: &str = "porpoise-data";
/// Where standalone serves the CLI by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5678";

/// A running standalone instance.
#[derive(Debug)]
pub struct Standalone {
    pub master: MasterHandle,
    pub worker: WorkerHandle,
    store: Arc<dyn Store>,
}

impl Standalone {
    /// Opens the database under `data_dir`, then starts the master on `listen` and a worker
    /// with `slots` slots on a free loopback port.
    pub async fn start(
        data_dir: PathBuf,
        listen: SocketAddr,
        slots: u32,
        tenants: porpoise_worker::tenant::TenantPolicy,
    ) -> Result<Standalone, String> {
        std::fs::create_dir_all(&data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
        let db = data_dir.join("porpoise.db");
        let store = SqliteStore::open(&db).await.map_err(|e| format!("cannot open {}: {e}", db.display()))?;
        let registry = Arc::new(MemoryRegistry::new());
        // on loopback only this host reaches AdminService; anywhere else it takes tokens
        let admin_auth = if listen.ip().is_loopback() {
            info!("AdminService takes no API tokens: standalone listens on loopback only");
            AdminAuth::Open
        } else {
            match std::env::var("PORPOISE_ADMIN_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
                Some(token) => AdminAuth::TokensWithBootstrap(token),
                None => {
                    return Err(format!(
                        "standalone on {listen} (not loopback) needs API tokens: set PORPOISE_ADMIN_TOKEN"
                    ));
                }
            }
        };
        let config = MasterConfig { listen, admin_auth, ..MasterConfig::default() };
        let store: Arc<dyn Store> = Arc::new(store);
        let master = MasterHandle::start(config, store.clone(), registry.clone())
            .await
            .map_err(|e| format!("cannot start the master: {e}"))?;
        let worker_config = WorkerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            group: "default".into(),
            slots,
            data_dir: data_dir.join("worker"),
            lease_ttl: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            tenants,
            // master and worker in one process, on loopback: plain TCP between them
            transport: Default::default(),
            report_linger: porpoise_worker::DEFAULT_REPORT_LINGER,
        };
        let worker =
            WorkerHandle::start(worker_config, registry).await.map_err(|e| format!("cannot start the worker: {e}"))?;
        Ok(Standalone { master, worker, store })
    }

    pub async fn stop(mut self) {
        self.worker.stop().await;
        self.master.stop().await;
        self.store.close().await;
    }
}
