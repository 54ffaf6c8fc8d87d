//! The code behind Porpoise's three binaries: the `porpoise` command's client subcommands and
//! standalone mode, and the start-up shared by `porpoise-master` and `porpoise-worker`.

/// `porpoise` subcommands that talk to a master's AdminService.
pub mod client;
/// What commands print, ending quietly when standard output's reader has gone.
pub mod output;
/// `porpoise schedule …` subcommands.
pub mod schedule;
/// `porpoise standalone`: a master and a worker in one process on SQLite.
pub mod standalone;

use std::process::ExitCode;

/// Exit code for input the user must fix (an invalid spec, a missing file, bad arguments).
pub const EXIT_INVALID: u8 = 2;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
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
