//! Every process of one task attempt, and how to end them all. An attempt's processes are its
//! process group (the shell is started as a group leader), the descendants of its shell, and
//! any process carrying the attempt's token in its environment — which finds what left the
//! group (`setsid`, a double fork) and was re-parented away from the shell. Signals go through
//! rustix: no `kill` binary is needed, and none is spawned.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// The environment variable that marks every process of an attempt (inherited by children).
pub const TOKEN_VAR: &str = "PORPOISE_TASK_TOKEN";

/// How one attempt's processes are recognised.
#[derive(Debug, Clone)]
pub struct TaskProcesses {
    /// The shell's pid, which is also its process group id.
    pub leader: i32,
    /// The value of [`TOKEN_VAR`] in the attempt's environment.
    pub token: String,
}

/// What a kill did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillReport {
    /// Processes sent SIGKILL.
    pub killed: usize,
    /// Processes still alive at the deadline (0 unless something resists SIGKILL).
    pub survivors: usize,
}

/// One line of `/proc/PID/stat`, the fields needed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    pid: i32,
    state: char,
    ppid: i32,
    pgrp: i32,
}

/// Parses `/proc/PID/stat`. The command name (field 2) may hold spaces and parentheses, so
/// the fields after it are read from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (head, tail) = text.rsplit_once(')')?;
    let pid = head.split_once('(')?.0.trim().parse().ok()?;
    let mut fields = tail.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Stat { pid, state, ppid, pgrp })
}

fn has_token(proc_dir: &Path, pid: i32, entry: &[u8]) -> bool {
    std::fs::read(proc_dir.join(pid.to_string()).join("environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == entry))
}

impl TaskProcesses {
    /// The live processes of the attempt (zombies excluded: they are dead already).
    fn scan(&self, proc_dir: &Path) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir(proc_dir) else { return Vec::new() };
        let me = std::process::id() as i32;
        let stats: Vec<Stat> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me)
            .filter_map(|pid| parse_stat(&std::fs::read_to_string(proc_dir.join(pid.to_string()).join("stat")).ok()?))
            .filter(|s| s.state != 'Z' && s.state != 'X')
            .collect();
        let parent: HashMap<i32, i32> = stats.iter().map(|s| (s.pid, s.ppid)).collect();
        let descends_from_leader = |mut pid: i32| {
            let mut seen = HashSet::new();
            while pid > 1 && seen.insert(pid) {
                if pid == self.leader {
                    return true;
                }
                pid = parent.get(&pid).copied().unwrap_or(0);
            }
            false
        };
        let entry = format!("{TOKEN_VAR}={}", self.token).into_bytes();
        stats
            .iter()
            .filter(|s| s.pgrp == self.leader || descends_from_leader(s.pid) || has_token(proc_dir, s.pid, &entry))
            .map(|s| s.pid)
            .collect()
    }

    /// Whether any process of the attempt is alive.
    pub fn any_alive(&self) -> bool {
        !self.scan(Path::new("/proc")).is_empty()
    }

    /// Sends SIGKILL to every process of the attempt, again and again until none is left (a
    /// process may fork between a scan and its kill) or `deadline` passes. Blocking: call it
    /// off the async runtime.
    pub fn kill_all(&self, deadline: Duration) -> KillReport {
        let proc_dir = Path::new("/proc");
        let until = Instant::now() + deadline;
        let mut killed = HashSet::new();
        loop {
            let alive = self.scan(proc_dir);
            if alive.is_empty() {
                return KillReport { killed: killed.len(), survivors: 0 };
            }
            // the group first, in one call, so that a forking group has no time to grow
            if let Some(group) = Pid::from_raw(self.leader) {
                let _ = rustix::process::kill_process_group(group, Signal::KILL);
            }
            for pid in &alive {
                if let Some(p) = Pid::from_raw(*pid) {
                    // ESRCH: it died meanwhile
                    let _ = rustix::process::kill_process(p, Signal::KILL);
                    killed.insert(*pid);
                }
            }
            if Instant::now() >= until {
                return KillReport { killed: killed.len(), survivors: self.scan(proc_dir).len() };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Kills every process whose [`TOKEN_VAR`] starts with `worker_token.`: what a previous
/// worker process on the same data directory left running when it died (SIGKILL, a crash),
/// whose results nobody will ever report. Blocking: call it off the async runtime.
pub fn kill_leftovers(worker_token: &str, deadline: Duration) -> KillReport {
    let proc_dir = Path::new("/proc");
    let prefix = format!("{TOKEN_VAR}={worker_token}.").into_bytes();
    let scan = || -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir(proc_dir) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| {
                std::fs::read(proc_dir.join(pid.to_string()).join("environ"))
                    .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var.starts_with(&prefix)))
            })
            .filter(|&pid| {
                std::fs::read_to_string(proc_dir.join(pid.to_string()).join("stat"))
                    .ok()
                    .and_then(|s| parse_stat(&s))
                    .is_some_and(|s| s.state != 'Z' && s.state != 'X')
            })
            .collect()
    };
    let until = Instant::now() + deadline;
    let mut killed = HashSet::new();
    loop {
        let alive = scan();
        if alive.is_empty() || Instant::now() >= until {
            return KillReport { killed: killed.len(), survivors: alive.len() };
        }
        for pid in alive {
            if let Some(p) = Pid::from_raw(pid) {
                let _ = rustix::process::kill_process_group(p, Signal::KILL);
                let _ = rustix::process::kill_process(p, Signal::KILL);
                killed.insert(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let s = parse_stat("4242 (my (odd) cmd) S 17 4242 4242 0 -1 4194560 ...").expect("parses");
        assert_eq!(s, Stat { pid: 4242, state: 'S', ppid: 17, pgrp: 4242 });
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn the_tree_of_a_shell_is_found_and_killed() {
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        let token = format!("test-{}-{}", std::process::id(), line!());
        // a child in the group, a grandchild that left the group with setsid
        let mut shell = Command::new("bash")
            .arg("-c")
            .arg("sleep 300 & setsid sleep 300 & wait")
            .env(TOKEN_VAR, &token)
            .process_group(0)
            .stdout(Stdio::null())
            .spawn()
            .expect("start bash");
        let procs = TaskProcesses { leader: shell.id() as i32, token };
        let deadline = Instant::now() + Duration::from_secs(10);
        while procs.scan(Path::new("/proc")).len() < 3 {
            assert!(Instant::now() < deadline, "the shell and its two sleeps did not all start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let report = procs.kill_all(Duration::from_secs(5));
        let _ = shell.wait();
        assert_eq!(report.survivors, 0);
        assert!(report.killed >= 3, "the shell and both sleeps: {report:?}");
        assert!(!procs.any_alive());
    }
}
