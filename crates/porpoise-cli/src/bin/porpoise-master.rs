//! `porpoise-master`: claims runs from Postgres, drives them, dispatches their tasks to workers
//! found in etcd, and serves the CLI, until stopped.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use porpoise_cli::{EXIT_INVALID, LogFormat, fail, init_logs, ops, outln, shutdown_signal, wait_for};
use porpoise_master::{AdminAuth, MasterConfig, MasterHandle, WorkerSelector};
use porpoise_registry::EtcdRegistry;
use porpoise_store::{PgStore, Store};

/// Command-line arguments of `porpoise-master`; each has an environment variable too.
#[derive(Debug, Parser)]
#[command(name = "porpoise-master", version = porpoise_cli::VERSION, about = "Porpoise master: drives workflow runs")]
struct Args {
    /// Address to serve TaskEventService and AdminService on.
    #[arg(long, env = "PORPOISE_MASTER_LISTEN", default_value = "0.0.0.0:5678")]
    listen: SocketAddr,
    /// Address workers and the CLI use to reach this master (host:port); defaults to the listen
    /// address. It is also this master's identity as the owner of runs.
    #[arg(long, env = "PORPOISE_MASTER_ADVERTISE")]
    advertise: Option<String>,
    /// Postgres URL, e.g. postgres://porpoise:secret@db:5432/porpoise
    #[arg(long, env = "PORPOISE_DATABASE_URL")]
    database_url: String,
    /// Largest number of database connections for queries; the master holds two more, on
    /// which it LISTENs for queued commands and ended runs.
    #[arg(long, env = "PORPOISE_DATABASE_MAX_CONNECTIONS", default_value_t = 32)]
    database_max_connections: u32,
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "PORPOISE_ETCD", value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// Key root in etcd.
    #[arg(long, env = "PORPOISE_ETCD_ROOT", default_value = porpoise_registry::etcd::DEFAULT_ROOT)]
    etcd_root: String,
    /// How a worker is picked: random, round-robin or lowest-load.
    #[arg(long, env = "PORPOISE_WORKER_SELECTOR", default_value = "lowest-load")]
    selector: String,
    /// Registry lease TTL in seconds.
    #[arg(long, env = "PORPOISE_LEASE_TTL_SECS", default_value_t = 10)]
    lease_ttl_secs: u64,
    /// Where to serve /metrics (Prometheus), /healthz and /readyz; none when unset.
    #[arg(long, env = "PORPOISE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// How long to wait at start for Postgres and etcd, trying again with backoff.
    #[arg(long, env = "PORPOISE_STARTUP_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    startup_timeout: Duration,
    /// Log lines as text or as one JSON object per line.
    #[arg(long, env = "PORPOISE_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// An admin API token this master accepts without a database row: how the first tokens
    /// are made (`porpoise token create`). Without it, only stored tokens work.
    #[arg(long, env = "PORPOISE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[command(flatten)]
    tls: porpoise_cli::TlsArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_logs(args.log_format);
    let selector: WorkerSelector = match args.selector.parse() {
        Ok(s) => s,
        Err(e) => return fail(EXIT_INVALID, format!("invalid setting --selector: {e}")),
    };
    if args.lease_ttl_secs < 2 {
        return fail(EXIT_INVALID, "invalid setting --lease-ttl-secs: must be at least 2");
    }
    if args.advertise.is_none() && args.listen.ip().is_unspecified() {
        return fail(
            EXIT_INVALID,
            format!("invalid setting --advertise: listening on {} needs an address workers can reach", args.listen),
        );
    }
    let transport = match args.tls.transport() {
        Ok(t) => t,
        Err(e) => return fail(EXIT_INVALID, format!("invalid setting --tls-ca: {e}")),
    };
    let ops = match args.metrics_listen {
        Some(addr) => match ops::serve(addr).await {
            Ok(ops) => Some(ops),
            Err(e) => return fail(1, format!("cannot serve metrics on {addr}: {e}")),
        },
        None => None,
    };
    let timeout = args.startup_timeout;
    let connect = || PgStore::connect(&args.database_url, args.database_max_connections);
    let store = match wait_for("the database", timeout, connect).await {
        Ok(s) => s,
        Err(e) => return fail(1, format!("cannot open the database: {e}")),
    };
    let etcd = args.etcd.join(",");
    let registry = match wait_for(&format!("etcd at {etcd}"), timeout, || {
        EtcdRegistry::connect_checked(&args.etcd, &args.etcd_root)
    })
    .await
    {
        Ok(r) => r,
        Err(e) => return fail(1, format!("cannot connect to etcd: {e}")),
    };
    let config = MasterConfig {
        listen: args.listen,
        advertise: args.advertise.clone(),
        selector,
        lease_ttl: Duration::from_secs(args.lease_ttl_secs),
        admin_auth: match args.admin_token.clone().filter(|t| !t.trim().is_empty()) {
            Some(token) => AdminAuth::TokensWithBootstrap(token),
            None => {
                tracing::warn!("no PORPOISE_ADMIN_TOKEN: only API tokens already stored are accepted");
                AdminAuth::Tokens
            }
        },
        transport,
        ..MasterConfig::default()
    };
    let store: Arc<dyn Store> = Arc::new(store);
    let master = match MasterHandle::start(config, store.clone(), Arc::new(registry)).await {
        Ok(m) => m,
        Err(e) => return fail(1, e),
    };
    if let Some(ops) = ops {
        let probe = master.ready_probe();
        ops.set_ready(Arc::new(move || {
            let probe = probe.clone();
            Box::pin(async move { probe.check().await })
        }));
    }
    let _ = outln!("porpoise-master listening on {}", master.addr);
    shutdown_signal().await;
    master.stop().await;
    // last: what the master still wrote while stopping has been given back by now
    store.close().await;
    ExitCode::SUCCESS
}
