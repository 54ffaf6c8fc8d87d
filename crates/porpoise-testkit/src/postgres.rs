//! A private PostgreSQL server for tests: `initdb` into a temporary directory, started with
//! `pg_ctl` on a free port (as an unprivileged user when the tests run as root), durability
//! switched off for speed. Each test takes a fresh database of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use sqlx::Connection;

use crate::process::{Guardian, find_binary, shell_quote, unprivileged_ids};

const INSTALL_HINT: &str = "apt-get install -y postgresql (Debian), or put initdb/pg_ctl on PATH";
const SUPERUSER: &str = "porpoise";

/// A running private Postgres. Stopped and deleted when dropped or when the process exits.
#[derive(Debug)]
pub struct TestPostgres {
    port: u16,
    data_dir: PathBuf,
    pg_ctl: PathBuf,
    ids: Option<(u32, u32)>,
    /// Tests trade durability for speed; a benchmark measures with it.
    durable: bool,
    // Dropped first: stops the server before the directory goes.
    _guardian: Guardian,
    _root: tempfile::TempDir,
}

impl TestPostgres {
    /// The server shared by every test in this process, started on first use.
    pub fn shared() -> &'static TestPostgres {
        static SHARED: OnceLock<TestPostgres> = OnceLock::new();
        SHARED.get_or_init(TestPostgres::start)
    }

    /// Starts a new private server. Panics with a clear message when it cannot.
    pub fn start() -> TestPostgres {
        Self::start_with(false)
    }

    /// Starts a private server as production runs one: every commit synced to disk, and
    /// `pg_stat_statements` loaded so that a benchmark can count statements.
    pub fn start_durable() -> TestPostgres {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> TestPostgres {
        let bin_dirs = postgres_bin_dirs();
        let initdb = find_binary("initdb", &bin_dirs, INSTALL_HINT);
        let pg_ctl = find_binary("pg_ctl", &bin_dirs, INSTALL_HINT);
        let root = tempfile::Builder::new()
            .prefix("porpoise-pg-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory for Postgres: {e}"));
        let ids = unprivileged_ids();
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(root.path(), Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("cannot hand {} to uid {uid}: {e}", root.path().display()));
        }
        let data_dir = root.path().join("data");
        let guardian = Guardian::spawn(&format!(
            "{} -D {} stop -m immediate; rm -rf {}",
            as_user_prefix(ids) + &shell_quote(&pg_ctl),
            shell_quote(&data_dir),
            shell_quote(root.path())
        ));
        let mut init = Command::new(&initdb);
        init.args(["-D"]).arg(&data_dir).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        run(as_user(&mut init, ids), "initdb");
        let pg = TestPostgres { port: 0, data_dir, pg_ctl, ids, durable, _root: root, _guardian: guardian };
        // A port taken by another process between our probe and the bind makes the start fail:
        // try a few ports before giving up.
        let mut last = String::new();
        for _ in 0..5 {
            let port = crate::free_port();
            match pg.pg_ctl_start(port) {
                Ok(()) => return TestPostgres { port, ..pg },
                Err(e) => last = e,
            }
        }
        panic!("cannot start the test Postgres: {last}");
    }

    fn pg_ctl_start(&self, port: u16) -> Result<(), String> {
        let durability = if self.durable {
            "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"
        } else {
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        };
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} {durability} \
             -c max_connections=300",
            self.data_dir.display()
        );
        let log = self.data_dir.join("server.log");
        let mut cmd = Command::new(&self.pg_ctl);
        cmd.arg("-D").arg(&self.data_dir).arg("-l").arg(&log).args(["-w", "-t", "60", "-o", &opts, "start"]);
        let status = as_user(&mut cmd, self.ids)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start failed ({status}); server log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ))
        }
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates an empty database with a unique name and returns its URL.
    pub async fn fresh_database(&self) -> String {
        let name = crate::unique_name("porpoise_test");
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test Postgres: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        self.url(&name)
    }

    /// Stops the server (fast shutdown: clients are disconnected), as an outage would.
    pub fn stop(&self) {
        let mut cmd = Command::new(&self.pg_ctl);
        cmd.arg("-D").arg(&self.data_dir).args(["-w", "-m", "fast", "stop"]);
        run(as_user(&mut cmd, self.ids), "pg_ctl stop");
    }

    /// Starts the server again on the same port after [`TestPostgres::stop`].
    pub fn restart(&self) {
        self.pg_ctl_start(self.port).unwrap_or_else(|e| panic!("cannot restart the test Postgres: {e}"));
    }
}

fn postgres_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    // newest major version first
    dirs.sort_by_key(|d| std::cmp::Reverse(version_of(d)));
    dirs
}

fn version_of(bin: &Path) -> u32 {
    bin.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn as_user(cmd: &mut Command, ids: Option<(u32, u32)>) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid).current_dir("/");
    }
    cmd
}

fn as_user_prefix(ids: Option<(u32, u32)>) -> String {
    match ids {
        Some((uid, gid)) => format!("setpriv --reuid={uid} --regid={gid} --clear-groups "),
        None => String::new(),
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
