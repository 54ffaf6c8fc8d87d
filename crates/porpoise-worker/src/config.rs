//! The worker's command line and environment, validated into a [`WorkerConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::WorkerConfig;

/// Command-line arguments of `porpoise-worker`; each has an environment variable too.
#[derive(Debug, Clone, Parser)]
#[command(name = "porpoise-worker", version, about = "Porpoise worker: runs the tasks masters dispatch")]
pub struct Args {
    /// Address to serve WorkerService on.
    #[arg(long, env = "PORPOISE_WORKER_LISTEN", default_value = "0.0.0.0:5679")]
    pub listen: SocketAddr,
    /// Address masters use to reach this worker (host:port); defaults to the listen address.
    #[arg(long, env = "PORPOISE_WORKER_ADVERTISE")]
    pub advertise: Option<String>,
    /// Worker group this worker serves.
    #[arg(long, env = "PORPOISE_WORKER_GROUP", default_value = "default")]
    pub group: String,
    /// How many tasks run at once.
    #[arg(long, env = "PORPOISE_WORKER_SLOTS", default_value_t = 16)]
    pub slots: u32,
    /// Directory for task working directories and logs.
    #[arg(long, env = "PORPOISE_WORKER_DATA_DIR", default_value = "/var/lib/porpoise/worker")]
    pub data_dir: PathBuf,
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "PORPOISE_ETCD", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// Key root in etcd.
    #[arg(long, env = "PORPOISE_ETCD_ROOT", default_value = porpoise_registry::etcd::DEFAULT_ROOT)]
    pub etcd_root: String,
    /// Registry lease TTL in seconds: how long after a crash the worker is considered gone.
    #[arg(long, env = "PORPOISE_LEASE_TTL_SECS", default_value_t = 10)]
    pub lease_ttl_secs: u64,
    /// On SIGTERM, how long running tasks may go on before they are killed (and failed over).
    #[arg(long, env = "PORPOISE_WORKER_SHUTDOWN_GRACE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Where to serve /metrics (Prometheus), /healthz and /readyz; none when unset.
    #[arg(long, env = "PORPOISE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How long to wait at start for etcd, trying again with backoff.
    #[arg(long, env = "PORPOISE_STARTUP_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub startup_timeout: Duration,
    /// Log lines as text or as one JSON object per line (text, json).
    #[arg(long, env = "PORPOISE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// The only users tasks may run as (their spec's `tenant`), comma-separated; any existing
    /// user but root when unset.
    #[arg(long, env = "PORPOISE_WORKER_TENANTS", value_delimiter = ',')]
    pub tenants: Option<Vec<String>>,
    /// Lets tasks run as root: a `root` tenant, or a task without a tenant on a worker run as
    /// root. Off by default.
    #[arg(long, env = "PORPOISE_ALLOW_ROOT_TASKS")]
    pub allow_root_tasks: bool,
    /// How long a RUNNING event waits for its task's result, so that a short task is reported
    /// (and saved by the master) once; at most 1s.
    #[arg(long, env = "PORPOISE_WORKER_REPORT_LINGER", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub report_linger: Duration,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// A setting that cannot work, named.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting --{field}: {problem}")]
pub struct ConfigError {
    pub field: &'static str,
    pub problem: String,
}

impl TryFrom<&Args> for WorkerConfig {
    type Error = ConfigError;

    fn try_from(a: &Args) -> Result<Self, ConfigError> {
        if a.slots == 0 {
            return Err(ConfigError { field: "slots", problem: "must be at least 1".into() });
        }
        if a.group.is_empty() || a.group.contains('/') {
            return Err(ConfigError {
                field: "group",
                problem: format!("{:?} must be non-empty and have no '/'", a.group),
            });
        }
        if a.lease_ttl_secs < 2 {
            return Err(ConfigError { field: "lease-ttl-secs", problem: "must be at least 2".into() });
        }
        if let Some(adv) = &a.advertise
            && !adv.contains(':')
        {
            return Err(ConfigError { field: "advertise", problem: format!("{adv:?} is not host:port") });
        }
        if a.advertise.is_none() && a.listen.ip().is_unspecified() {
            return Err(ConfigError {
                field: "advertise",
                problem: format!("listening on {} needs an address masters can reach (host:port)", a.listen),
            });
        }
        if let Some(tenants) = &a.tenants
            && let Some(problem) = tenants.iter().find_map(|t| porpoise_core::spec::check_tenant(t).err())
        {
            return Err(ConfigError { field: "tenants", problem });
        }
        if a.report_linger > Duration::from_secs(1) {
            return Err(ConfigError {
                field: "report-linger",
                problem: format!(
                    "{} delays every task's RUNNING; at most 1s",
                    humantime::format_duration(a.report_linger)
                ),
            });
        }
        let transport = a.tls.transport().map_err(|problem| ConfigError { field: "tls-ca", problem })?;
        Ok(WorkerConfig {
            listen: a.listen,
            advertise: a.advertise.clone(),
            group: a.group.clone(),
            slots: a.slots,
            data_dir: a.data_dir.clone(),
            lease_ttl: Duration::from_secs(a.lease_ttl_secs),
            shutdown_grace: a.shutdown_grace,
            tenants: crate::tenant::TenantPolicy { allowed: a.tenants.clone(), allow_root: a.allow_root_tasks },
            transport,
            report_linger: a.report_linger,
        })
    }
}

/// How a daemon talks to the other nodes: mutual TLS, or plain TCP with `--insecure`.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// The cluster CA's certificate (PEM): peers must show a certificate it signed.
    #[arg(long, env = "PORPOISE_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// This node's certificate (PEM), from `porpoise cert node`.
    #[arg(long, env = "PORPOISE_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "PORPOISE_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Plain TCP between nodes, with no authentication: only for a cluster on one host's
    /// loopback (tests). Every other check stays.
    #[arg(long, env = "PORPOISE_INSECURE")]
    pub insecure: bool,
}

impl TlsArgs {
    /// The transport asked for; an incomplete or contradictory setting is an error naming it.
    pub fn transport(&self) -> Result<porpoise_proto::tls::Transport, String> {
        let t = porpoise_proto::tls::Transport::from_settings(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.insecure,
        )?;
        if !t.is_tls() {
            tracing::warn!(
                "--insecure: nodes talk plain TCP and do not authenticate each other (loopback test clusters only)"
            );
        }
        Ok(t)
    }
}
