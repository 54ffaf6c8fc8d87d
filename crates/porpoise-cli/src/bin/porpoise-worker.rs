//! `porpoise-worker`: registers in etcd and runs the tasks masters dispatch until stopped.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches};
use porpoise_cli::{EXIT_INVALID, LogFormat, fail, init_logs, ops, outln, shutdown_signal, wait_for};
use porpoise_registry::EtcdRegistry;
use porpoise_worker::config::Args;
use porpoise_worker::{WorkerConfig, WorkerHandle};

#[tokio::main]
async fn main() -> ExitCode {
    // the version with the git commit, which only this crate's build knows
    let matches = Args::command().version(porpoise_cli::VERSION).get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logs(if args.log_format == "json" { LogFormat::Json } else { LogFormat::Text });
    let config = match WorkerConfig::try_from(&args) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_INVALID, e),
    };
    let ops = match args.metrics_listen {
        Some(addr) => match ops::serve(addr).await {
            Ok(ops) => Some(ops),
            Err(e) => return fail(1, format!("cannot serve metrics on {addr}: {e}")),
        },
        None => None,
    };
    let etcd = args.etcd.join(",");
    let connect = || EtcdRegistry::connect_checked(&args.etcd, &args.etcd_root);
    let registry = match wait_for(&format!("etcd at {etcd}"), args.startup_timeout, connect).await {
        Ok(r) => r,
        Err(e) => return fail(1, format!("cannot connect to etcd: {e}")),
    };
    let mut worker = match WorkerHandle::start(config, Arc::new(registry)).await {
        Ok(w) => w,
        Err(e) => return fail(1, e),
    };
    if let Some(ops) = ops {
        let probe = worker.ready_probe();
        ops.set_ready(Arc::new(move || {
            let result = probe.check();
            Box::pin(async move { result })
        }));
    }
    let _ = outln!("porpoise-worker listening on {}", worker.addr);
    shutdown_signal().await;
    worker.stop().await;
    ExitCode::SUCCESS
}
