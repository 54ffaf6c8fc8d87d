//! Runs one task attempt: `bash -c COMMAND` in the attempt's own working directory and process
//! group, the run's params exported as environment variables and `${name}` in the command
//! turned into a quoted reference to its variable ([`porpoise_core::shell`]),
//! stdout and stderr appended to the attempt's log file. An end by timeout or kill takes every
//! process of the attempt down ([`crate::process`]); so does a normal exit, for what the command
//! left behind in its process group.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use porpoise_proto::v1::{TaskOutcome, TaskResult, TaskRunning};
use tokio::process::Command;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::now_ms;
use crate::process::{TOKEN_VAR, TaskProcesses};

/// How long a kill keeps hunting an attempt's processes before it reports survivors.
const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// `name` looked up on `PATH` once (the first executable file of that name), so that starting
/// a task does not try every `PATH` entry again; `name` itself when none is found (the start
/// then fails saying so).
fn resolved(name: &'static str, cache: &'static OnceLock<PathBuf>) -> &'static Path {
    use std::os::unix::fs::PermissionsExt;
    cache.get_or_init(|| {
        std::env::var_os("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
            })
            .unwrap_or_else(|| PathBuf::from(name))
    })
}

fn bash() -> &'static Path {
    static BASH: OnceLock<PathBuf> = OnceLock::new();
    resolved("bash", &BASH)
}

fn setpriv() -> &'static Path {
    static SETPRIV: OnceLock<PathBuf> = OnceLock::new();
    resolved("setpriv", &SETPRIV)
}

/// One attempt to run.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub task_instance_id: i64,
    pub attempt: i32,
    pub command: String,
    pub params: HashMap<String, String>,
    pub timeout: Option<Duration>,
    /// The user the task runs as; the worker's own when `None`.
    pub run_as: Option<crate::tenant::RunAs>,
}

/// The directory of one attempt, `<task instance>.<attempt>` right below the worker's `tasks/`
/// directory: one directory to create per attempt.
pub fn attempt_dir(tasks_dir: &Path, task_instance_id: i64, attempt: i32) -> PathBuf {
    tasks_dir.join(format!("{task_instance_id}.{attempt}"))
}

/// The log file of one attempt.
pub fn log_path(tasks_dir: &Path, task_instance_id: i64, attempt: i32) -> PathBuf {
    attempt_dir(tasks_dir, task_instance_id, attempt).join(LOG_FILE)
}

/// Where workers before the flat layout kept an attempt's log (`<task instance>/<attempt>/`),
/// so that logs written before an upgrade are still served.
pub fn old_log_path(tasks_dir: &Path, task_instance_id: i64, attempt: i32) -> PathBuf {
    tasks_dir.join(task_instance_id.to_string()).join(attempt.to_string()).join(LOG_FILE)
}

const LOG_FILE: &str = "task.log";

/// Runs `attempt`; `on_running` is called once the process has started. `kill` ends it early.
/// `worker_token` is unique to this worker process; with the attempt it marks the attempt's
/// processes.
pub async fn run(
    tasks_dir: &Path,
    attempt: &Attempt,
    worker_addr: &str,
    worker_token: &str,
    kill: Arc<Notify>,
    on_running: impl FnOnce(TaskRunning),
) -> TaskResult {
    let started_at_ms = now_ms();
    let dir = attempt_dir(tasks_dir, attempt.task_instance_id, attempt.attempt);
    let log = log_path(tasks_dir, attempt.task_instance_id, attempt.attempt);
    let failed = |message: String| TaskResult {
        outcome: TaskOutcome::Failure as i32,
        exit_code: None,
        started_at_ms,
        ended_at_ms: now_ms(),
        message,
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return failed(format!("cannot create working directory {}: {e}", dir.display()));
    }
    if let Some(user) = &attempt.run_as
        && let Err(e) = std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))
    {
        return failed(format!("cannot give working directory {} to tenant {}: {e}", dir.display(), user.name));
    }
    let (stdout, stderr) = match open_log(&log) {
        Ok(files) => files,
        Err(e) => return failed(format!("cannot open log file {}: {e}", log.display())),
    };
    let token = format!("{worker_token}.{}.{}", attempt.task_instance_id, attempt.attempt);
    let script = porpoise_core::shell::reference_params(&attempt.command, |name| attempt.params.contains_key(name));
    let mut cmd = match &attempt.run_as {
        // setpriv (util-linux) becomes the tenant — uid, gid and the user's groups — and execs
        // bash in place: the same process, group and environment marker
        Some(user) => {
            let mut cmd = Command::new(setpriv());
            cmd.arg(format!("--reuid={}", user.uid))
                .arg(format!("--regid={}", user.gid))
                .arg("--init-groups")
                .arg("--")
                .arg(bash())
                .arg("-c")
                .arg(&script)
                .env("HOME", &user.home)
                .env("USER", &user.name)
                .env("LOGNAME", &user.name);
            cmd
        }
        None => {
            let mut cmd = Command::new(bash());
            cmd.arg("-c").arg(&script);
            cmd
        }
    };
    cmd.current_dir(&dir)
        .envs(&attempt.params)
        .env("PORPOISE_TASK_INSTANCE_ID", attempt.task_instance_id.to_string())
        .env("PORPOISE_ATTEMPT", attempt.attempt.to_string())
        .env(TOKEN_VAR, &token)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if attempt.run_as.is_some() => {
            return failed(format!("cannot start setpriv (util-linux), which runs the task as its tenant: {e}"));
        }
        Err(e) => return failed(format!("cannot start bash: {e}")),
    };
    let processes = child.id().map(|pid| TaskProcesses { leader: pid as i32, token });
    on_running(TaskRunning {
        started_at_ms,
        worker_addr: worker_addr.to_string(),
        log_path: log.display().to_string(),
    });
    let timeout = async {
        match attempt.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let (outcome, message) = tokio::select! {
        status = child.wait() => {
            // what the command left behind in its group goes with it
            if let Some(p) = &processes
                && rustix::process::Pid::from_raw(p.leader)
                    .is_some_and(|g| rustix::process::test_kill_process_group(g).is_ok())
            {
                kill_all(attempt, p.clone(), "left behind by the task").await;
            }
            return match status {
                Ok(status) => {
                    let ok = status.success();
                    TaskResult {
                        outcome: if ok { TaskOutcome::Success } else { TaskOutcome::Failure } as i32,
                        exit_code: status.code(),
                        started_at_ms,
                        ended_at_ms: now_ms(),
                        message: if ok { String::new() } else { format!("exited with {status}") },
                    }
                }
                Err(e) => failed(format!("cannot wait for the task process: {e}")),
            };
        }
        _ = timeout => (TaskOutcome::TimedOut, format!("timed out after {}", humantime::format_duration(attempt.timeout.unwrap_or_default()))),
        _ = kill.notified() => (TaskOutcome::Killed, "killed on request".to_string()),
    };
    if let Some(p) = processes {
        kill_all(attempt, p, &message).await;
    }
    // reap the shell (already killed above; this only collects it)
    let _ = child.kill().await;
    info!(task_instance_id = attempt.task_instance_id, attempt = attempt.attempt, %message, "task ended early");
    TaskResult { outcome: outcome as i32, exit_code: None, started_at_ms, ended_at_ms: now_ms(), message }
}

/// Kills every process of the attempt, off the async runtime; says so when one survives.
async fn kill_all(attempt: &Attempt, processes: TaskProcesses, why: &str) {
    let (ti, n) = (attempt.task_instance_id, attempt.attempt);
    match tokio::task::spawn_blocking(move || processes.kill_all(KILL_DEADLINE)).await {
        Ok(report) if report.survivors > 0 => warn!(
            task_instance_id = ti,
            attempt = n,
            survivors = report.survivors,
            "processes of the task survived SIGKILL"
        ),
        Ok(report) if report.killed > 0 => {
            info!(task_instance_id = ti, attempt = n, killed = report.killed, reason = why, "task processes killed")
        }
        Ok(_) => {}
        Err(e) => warn!(task_instance_id = ti, attempt = n, error = %e, "cannot kill the task's processes"),
    }
}

fn open_log(path: &Path) -> std::io::Result<(std::fs::File, std::fs::File)> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    Ok((file.try_clone()?, file))
}
