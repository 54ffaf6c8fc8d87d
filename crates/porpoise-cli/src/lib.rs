//! The code behind Porpoise's three binaries: the `porpoise` command's client subcommands and
//! standalone mode, and the start-up shared by `porpoise-master` and `porpoise-worker`.

/// `porpoise cert`: a cluster CA and node certificates.
pub mod cert;
/// `porpoise` subcommands that talk to a master's AdminService.
pub mod client;
/// The daemons' operations listener: metrics, liveness and readiness.
pub mod ops;
/// What commands print, ending quietly when standard output's reader has gone.
pub mod output;
/// `porpoise schedule …` subcommands.
pub mod schedule;
/// `porpoise standalone`: a master and a worker in one process on SQLite.
pub mod standalone;
/// The tables listings print: each column as wide as its widest cell.
pub mod table;

use std::process::ExitCode;

/// The version and the git commit the binaries were built from, for `--version`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("PORPOISE_GIT_COMMIT"), ")");

/// Exit code for input the user must fix (an invalid spec, a missing file, bad arguments).
pub const EXIT_INVALID: u8 = 2;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    init_logs(LogFormat::Text);
}

/// How daemons write their log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: one line per event, fields as `name=value`.
    Text,
    /// For log pipelines: one JSON object per line, fields as keys.
    Json,
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default `info`).
pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}

/// Calls `attempt` until it succeeds, backing off from half a second to ten (with jitter, so
/// daemons started together do not retry in step) and logging each failure, for at most
/// `timeout`: how daemons wait at start for the database and etcd.
pub async fn wait_for<T, E, F, Fut>(what: &str, timeout: std::time::Duration, mut attempt: F) -> Result<T, String>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let backoff = porpoise_core::Backoff {
        initial: std::time::Duration::from_millis(500),
        max: std::time::Duration::from_secs(10),
        multiplier: 2.0,
    };
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(v) => {
                if failures > 0 {
                    tracing::info!(failures, "{what}: reached");
                }
                return Ok(v);
            }
            Err(e) => {
                failures += 1;
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(format!(
                        "{what}: gave up after {failures} attempts in {}: {e}",
                        humantime_secs(timeout)
                    ));
                }
                let delay = porpoise_runtime::retry_delay(&backoff, failures - 1).min(deadline - now);
                tracing::warn!(failures, error = %e, retry_in = ?delay, "{what}: not reachable yet; waiting");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn humantime_secs(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs())
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// Prints `message` as the one error line of a failed command and returns `code`.
pub fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    output::error_line(format_args!("porpoise: {message}"));
    ExitCode::from(code)
}

/// How a daemon talks to the other nodes (the master binary shares the worker's settings).
pub use porpoise_worker::config::TlsArgs;
