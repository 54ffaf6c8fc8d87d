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

pub use etcd::TestEtcd;
pub use postgres::TestPostgres;
pub use process::unprivileged_ids;

/// A free TCP port on 127.0.0.1, as chosen by the kernel for a throwaway listener.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind a loopback port for a test server: {e}"))
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
