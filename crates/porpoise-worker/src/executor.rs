//! Runs one task attempt: `bash -c COMMAND` in the attempt's own working directory and process
//! group, the run's params substituted for `${name}` and exported as environment variables,
//! stdout and stderr appended to the attempt's log file. Ends by timeout or kill take the whole
//! process group down.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use porpoise_proto::v1::{TaskOutcome, TaskResult, TaskRunning};
use tokio::process::Command;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::now_ms;

/// One attempt to run.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub task_instance_id: i64,
    pub attempt: i32,
    pub command: String,
    pub params: HashMap<String, String>,
    pub timeout: Option<Duration>,
}

/// The directory of one attempt below the worker's `tasks/` directory.
pub fn attempt_dir(tasks_dir: &Path, task_instance_id: i64, attempt: i32) -> PathBuf {
    tasks_dir.join(task_instance_id.to_string()).join(attempt.to_string())
}

/// The log file of one attempt.
pub fn log_path(tasks_dir: &Path, task_instance_id: i64, attempt: i32) -> PathBuf {
    attempt_dir(tasks_dir, task_instance_id, attempt).join("task.log")
}

/// Replaces `${name}` with the value of param `name`; unknown names are left for the shell.
pub fn substitute(command: &str, params: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(command.len());
    let mut rest = command;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) if params.contains_key(&after[..end]) => {
                out.push_str(&params[&after[..end]]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Runs `attempt`; `on_running` is called once the process has started. `kill` ends it early.
pub async fn run(
    tasks_dir: &Path,
    attempt: &Attempt,
    worker_addr: &str,
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
    let (stdout, stderr) = match open_log(&log) {
        Ok(files) => files,
        Err(e) => return failed(format!("cannot open log file {}: {e}", log.display())),
    };
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(substitute(&attempt.command, &attempt.params))
        .current_dir(&dir)
        .envs(&attempt.params)
        .env("PORPOISE_TASK_INSTANCE_ID", attempt.task_instance_id.to_string())
        .env("PORPOISE_ATTEMPT", attempt.attempt.to_string())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return failed(format!("cannot start bash: {e}")),
    };
    let pgid = child.id();
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
        _ = timeout => (TaskOutcome::TimedOut, format!("timed out after {:?}", attempt.timeout.unwrap_or_default())),
        _ = kill.notified() => (TaskOutcome::Killed, "killed on request".to_string()),
    };
    kill_group(pgid).await;
    let _ = child.kill().await;
    info!(task_instance_id = attempt.task_instance_id, attempt = attempt.attempt, %message, "task ended early");
    TaskResult { outcome: outcome as i32, exit_code: None, started_at_ms, ended_at_ms: now_ms(), message }
}

fn open_log(path: &Path) -> std::io::Result<(std::fs::File, std::fs::File)> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    Ok((file.try_clone()?, file))
}

/// Sends SIGKILL to a whole process group, so the task's children go too.
async fn kill_group(pgid: Option<u32>) {
    let Some(pgid) = pgid else { return };
    match Command::new("kill").arg("-KILL").arg("--").arg(format!("-{pgid}")).status().await {
        Ok(s) if s.success() => {}
        Ok(s) => warn!(pgid, status = %s, "kill of the task's process group failed"),
        Err(e) => warn!(pgid, error = %e, "cannot run kill for the task's process group"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_known_params_only() {
        let params = HashMap::from([("day".to_string(), "2026-01-01".to_string())]);
        assert_eq!(substitute("echo ${day} ${HOME} $day ${", &params), "echo 2026-01-01 ${HOME} $day ${");
        assert_eq!(substitute("${day}${day}", &params), "2026-01-012026-01-01");
    }
}
