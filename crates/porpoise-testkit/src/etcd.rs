//! A private etcd for tests: a temporary data directory, free client and peer ports on
//! 127.0.0.1, one member. It can be stopped and started again to play an outage.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::process::{Guardian, find_binary, shell_quote};

const INSTALL_HINT: &str = "apt-get install -y etcd-server etcd-client (Debian), or put etcd on PATH";

/// A running private etcd. Stopped and deleted when dropped or when the process exits.
#[derive(Debug)]
pub struct TestEtcd {
    client_port: u16,
    peer_port: u16,
    binary: PathBuf,
    data_dir: PathBuf,
    child: Mutex<Option<Child>>,
    _guardian: Guardian,
    _root: tempfile::TempDir,
}

impl TestEtcd {
    /// The server shared by every test in this process, started on first use.
    pub fn shared() -> &'static TestEtcd {
        static SHARED: OnceLock<TestEtcd> = OnceLock::new();
        SHARED.get_or_init(TestEtcd::start)
    }

    /// Starts a new private etcd and waits until it answers.
    pub fn start() -> TestEtcd {
        let binary = find_binary("etcd", &[], INSTALL_HINT);
        let root = tempfile::Builder::new()
            .prefix("porpoise-etcd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory for etcd: {e}"));
        let data_dir = root.path().join("data");
        let pid_file = root.path().join("pid");
        let guardian = Guardian::spawn(&format!(
            "kill -9 $(cat {pid}) 2>/dev/null; rm -rf {root}",
            pid = shell_quote(&pid_file),
            root = shell_quote(root.path())
        ));
        let mut last = String::new();
        for _ in 0..5 {
            let (client_port, peer_port) = (crate::free_port(), crate::free_port());
            let _ = std::fs::remove_dir_all(&data_dir);
            match spawn(&binary, &data_dir, client_port, peer_port, &pid_file) {
                Ok(child) => {
                    return TestEtcd {
                        client_port,
                        binary,
                        peer_port,
                        data_dir,
                        child: Mutex::new(Some(child)),
                        _guardian: guardian,
                        _root: root,
                    };
                }
                Err(e) => last = e,
            }
        }
        panic!("cannot start the test etcd: {last}");
    }

    /// The client URL, e.g. `http://127.0.0.1:23790`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills the server (SIGKILL), as a crash would. Its data stays for [`TestEtcd::restart`].
    pub fn kill(&self) {
        if let Some(mut child) = lock(&self.child).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and data after [`TestEtcd::kill`].
    pub fn restart(&self) {
        let pid_file = self.data_dir.with_file_name("pid");
        let child = spawn(&self.binary, &self.data_dir, self.client_port, self.peer_port, &pid_file)
            .unwrap_or_else(|e| panic!("cannot restart the test etcd: {e}"));
        *lock(&self.child) = Some(child);
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(binary: &Path, data_dir: &Path, client_port: u16, peer_port: u16, pid_file: &Path) -> Result<Child, String> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let log_path = data_dir.with_extension("log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("etcd log file: {e}"))?;
    let mut child = Command::new(binary)
        .arg("--name=porpoise-test")
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=porpoise-test={peer}"))
        .arg("--unsafe-no-fsync=true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let _ = std::fs::write(pid_file, child.id().to_string());
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("etcd exited ({status}):\n{}", std::fs::read_to_string(&log_path).unwrap_or_default()));
        }
        if healthy(client_port) {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err("etcd did not become healthy within 30s".into())
}

fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
