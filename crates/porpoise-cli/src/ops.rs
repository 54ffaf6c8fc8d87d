//! A daemon's operations listener (`--metrics-listen`): `GET /metrics` (Prometheus text),
//! `GET /healthz` (the process is up: always 200), `GET /readyz` (it can do its work: 200, or
//! 503 with the reason in the body); every other path is 404. It serves from the start, so
//! `/readyz` says "starting" while the daemon still waits for the database or etcd.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::warn;

/// Histogram buckets, in seconds: from dispatch latencies of milliseconds to tasks of hours.
const BUCKETS: [f64; 19] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    14400.0,
];

/// Buckets for the master's latencies (dispatch, state-event handling, takeover), in seconds:
/// from half a millisecond up.
const LATENCY_BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The build's version and commit, as labels of a gauge that is always 1.
pub const BUILD_INFO: &str = "porpoise_build_info";

/// Whether the daemon can do its work now; `Err` says why not.
pub type Readiness = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Clone)]
struct Ops {
    metrics: PrometheusHandle,
    process: Arc<metrics_process::Collector>,
    ready: Arc<RwLock<Option<Readiness>>>,
}

/// The running operations listener.
#[derive(Clone)]
pub struct OpsHandle {
    ready: Arc<RwLock<Option<Readiness>>>,
}

impl std::fmt::Debug for OpsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsHandle").finish_non_exhaustive()
    }
}

impl OpsHandle {
    /// From now on `/readyz` asks `ready`.
    pub fn set_ready(&self, ready: Readiness) {
        *self.ready.write().unwrap_or_else(|p| p.into_inner()) = Some(ready);
    }
}

/// Installs the Prometheus recorder (so the daemon's metrics are recorded from its start) and
/// serves on `addr` in the background.
pub async fn serve(addr: SocketAddr) -> Result<OpsHandle, String> {
    let metrics = install_recorder().map_err(|e| format!("cannot record metrics: {e}"))?;
    metrics::describe_gauge!(BUILD_INFO, "Always 1: the version and git commit of this binary, as labels");
    let process = Arc::new(metrics_process::Collector::default());
    process.describe();
    process.collect();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => env!("PORPOISE_GIT_COMMIT"))
        .set(1.0);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let ready: Arc<RwLock<Option<Readiness>>> = Arc::default();
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Ops { metrics, process, ready: ready.clone() });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "the operations listener stopped");
        }
    });
    Ok(OpsHandle { ready })
}

fn install_recorder() -> Result<PrometheusHandle, BuildError> {
    let mut builder = PrometheusBuilder::new().set_buckets(&BUCKETS)?;
    for name in porpoise_master::metrics::LATENCIES {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.to_string()), &LATENCY_BUCKETS)?;
    }
    builder.install_recorder()
}

async fn metrics_text(State(ops): State<Ops>) -> String {
    // the process's CPU, memory, open files and threads, as of this scrape
    ops.process.collect();
    ops.metrics.render()
}

async fn readyz(State(ops): State<Ops>) -> (StatusCode, String) {
    let ready = ops.ready.read().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(ready) = ready else {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting (waiting for the database and etcd)\n".into());
    };
    match ready().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}
