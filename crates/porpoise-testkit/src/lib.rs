//! Test harness: a private Postgres and a private etcd, each started once per test process in a
//! temporary directory on free loopback ports, and removed when the process ends — however it
//! ends (a guardian process watches for the test process to go away).
//!
//! Missing server binaries fail the test with a message saying how to install them.

/// A private etcd server.
pub mod etcd;
/// A private PostgreSQL server with a fresh database per test.
pub mod postgres;
mod process;
/// A TCP forwarder the test can cut and heal.
pub mod proxy;

pub use etcd::TestEtcd;
pub use postgres::TestPostgres;
pub use process::unprivileged_ids;
pub use proxy::CuttableProxy;

/// Ports handed out by [`free_port`]: below Linux's ephemeral range (32768–60999), so that
/// no outgoing connection can take one between the check and the server binding it.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A free TCP port on 127.0.0.1 for a server a test is about to start: a random one of
/// [`PORTS`] that can be bound now and that no other test process holds. (A port the kernel
/// picks for a throwaway listener comes from the ephemeral range, where client connections may
/// take it before the server binds it.) Each port handed out is held — an exclusive lock on a
/// file named after it, in a directory shared by all test processes — until this process
/// ends, so two test processes (or two suites running at once) never get the same port.
pub fn free_port() -> u16 {
    use std::hash::BuildHasher;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("porpoise-test-ports");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let state = std::collections::hash_map::RandomState::new();
    for _ in 0..1000 {
        let draw = state.hash_one((std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let port = PORTS.start + (draw % u64::from(PORTS.end - PORTS.start)) as u16;
        let Ok(file) =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(port.to_string()))
        else {
            continue;
        };
        if file.try_lock().is_ok() && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock().unwrap_or_else(|p| p.into_inner()).push(file);
            return port;
        }
    }
    panic!("no free loopback port in {PORTS:?} for a test server")
}

/// A name unique within this machine for the life of this process: pid and a counter.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Command lines (NULs shown as spaces) of the live processes whose command line contains
/// `name`; zombies have an empty one. Tests name a task's processes with `exec -a NAME` and
/// look for survivors with this.
pub fn processes_named(name: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(name))
        .collect()
}

/// Pids of the live processes whose environment sets `var` to a value ending in `suffix`
/// (a task attempt's processes carry `PORPOISE_TASK_TOKEN=<worker>.<task instance>.<attempt>`).
pub fn processes_with_env(var: &str, suffix: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let prefix = format!("{var}=");
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, t)| t.trim_start().chars().next()))
                .is_some_and(|state| state != Some('Z') && state != Some('X'));
            alive
                && std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                    env.split(|&b| b == 0)
                        .filter_map(|v| std::str::from_utf8(v).ok())
                        .any(|v| v.strip_prefix(&prefix).is_some_and(|value| value.ends_with(suffix)))
                })
        })
        .collect()
}
