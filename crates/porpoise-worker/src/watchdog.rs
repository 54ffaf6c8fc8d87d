//! The watchdog: a small shell process beside the worker that ends the worker's task processes
//! when the worker stops making progress — it died (SIGKILL, a crash) or is paused (SIGSTOP, a
//! long stall) — so that they are gone before a master fails their attempts over and starts
//! them elsewhere. The worker touches a liveness file every [`BEAT`]; the watchdog kills every
//! process carrying the worker's token once the file is older than the limit (half the lease
//! TTL, while the master waits the whole TTL and a grace period), and exits, after a last
//! sweep, when the worker's process is gone. An etcd outage does not stop the beat, so it kills
//! nothing.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use porpoise_runtime::Spawner;
use tracing::warn;

use crate::process::TOKEN_VAR;

/// How often the worker shows it is alive.
pub const BEAT: Duration = Duration::from_millis(200);

const SCRIPT: &str = r#"
W=$1; F=$2; T=$3; LIMIT=$4
kill_tasks() {
  for p in /proc/[0-9]*; do
    if tr '\0' '\n' < "$p/environ" 2>/dev/null | grep -q "^$TOKEN_VAR=$T\."; then
      kill -KILL -- "-${p#/proc/}" 2>/dev/null
      kill -KILL "${p#/proc/}" 2>/dev/null
    fi
  done
}
while :; do
  sleep 0.5
  if ! kill -0 "$W" 2>/dev/null; then kill_tasks; exit 0; fi
  now=$(date +%s); seen=$(stat -c %Y "$F" 2>/dev/null || echo 0)
  if [ $((now - seen)) -gt "$LIMIT" ]; then kill_tasks; fi
done
"#;

/// The running watchdog and the worker's beat.
#[derive(Debug)]
pub struct Watchdog {
    child: Child,
}

impl Watchdog {
    /// Starts the watchdog of the worker whose tasks carry `worker_token`, with its liveness file
    /// in `data_dir`, killing after `limit` without a beat.
    /// The beat is spawned with `spawner`: it stops with the worker.
    pub fn start(data_dir: &Path, worker_token: &str, limit: Duration, spawner: &Spawner) -> std::io::Result<Watchdog> {
        let alive: PathBuf = data_dir.join("worker.alive");
        touch(&alive)?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("porpoise-watchdog")
            .arg(std::process::id().to_string())
            .arg(&alive)
            .arg(worker_token)
            .arg(limit.as_secs().max(1).to_string())
            .env("TOKEN_VAR", TOKEN_VAR)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        spawner.spawn(async move {
            let mut tick = tokio::time::interval(BEAT);
            loop {
                tick.tick().await;
                if let Err(e) = touch(&alive) {
                    warn!(file = %alive.display(), error = %e, "cannot touch the liveness file; the watchdog will end the tasks");
                }
            }
        });
        Ok(Watchdog { child })
    }

    /// Stops the watchdog (the worker is stopping cleanly and its tasks have ended).
    pub fn stop(self) {}
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn touch(path: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    file.set_modified(SystemTime::now())
}
