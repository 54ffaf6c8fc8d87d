//! `porpoise-worker`: registers in etcd and runs the tasks masters dispatch until stopped.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use porpoise_registry::EtcdRegistry;
use porpoise_worker::config::Args;
use porpoise_worker::{WorkerConfig, WorkerHandle};
use tracing::{error, info};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = match WorkerConfig::try_from(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("porpoise-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let registry = match EtcdRegistry::connect(&args.etcd, &args.etcd_root).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("porpoise-worker: cannot connect to etcd at {}: {e}", args.etcd.join(","));
            return ExitCode::FAILURE;
        }
    };
    let worker = match WorkerHandle::start(config, Arc::new(registry)).await {
        Ok(w) => w,
        Err(e) => {
            eprintln!("porpoise-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("porpoise-worker listening on {}", worker.addr);
    match tokio::signal::ctrl_c().await {
        Ok(()) => info!("stopping"),
        Err(e) => error!(error = %e, "cannot wait for a stop signal; stopping"),
    }
    worker.stop().await;
    ExitCode::SUCCESS
}
