//! `porpoise-worker`: registers in etcd and runs the tasks masters dispatch until stopped.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use porpoise_cli::{EXIT_INVALID, fail, init_tracing, outln, shutdown_signal};
use porpoise_registry::EtcdRegistry;
use porpoise_worker::config::Args;
use porpoise_worker::{WorkerConfig, WorkerHandle};

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    let args = Args::parse();
    let config = match WorkerConfig::try_from(&args) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_INVALID, e),
    };
    let registry = match EtcdRegistry::connect(&args.etcd, &args.etcd_root).await {
        Ok(r) => r,
        Err(e) => return fail(1, format!("cannot connect to etcd at {}: {e}", args.etcd.join(","))),
    };
    let mut worker = match WorkerHandle::start(config, Arc::new(registry)).await {
        Ok(w) => w,
        Err(e) => return fail(1, e),
    };
    let _ = outln!("porpoise-worker listening on {}", worker.addr);
    shutdown_signal().await;
    worker.stop().await;
    ExitCode::SUCCESS
}
