//! Finding server binaries, and the guardian that cleans up after the test process.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// Finds `name` on PATH or in one of `extra_dirs`; panics with the install hint otherwise.
pub fn find_binary(name: &str, extra_dirs: &[PathBuf], install_hint: &str) -> PathBuf {
    let path_dirs = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    for dir in extra_dirs.iter().chain(path_dirs.iter()) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` not found on PATH or in {extra_dirs:?}: the tests need it. Install it with: {install_hint}");
}

/// A guardian: a shell that waits for its stdin to close — which happens when this test process
/// exits, even by SIGKILL — and then runs `cleanup`. Dropping the guard runs the cleanup now.
#[derive(Debug)]
pub struct Guardian {
    stdin: Option<ChildStdin>,
    child: Child,
}

impl Guardian {
    /// Starts a guardian that runs the shell snippet `cleanup` when this process goes away.
    pub fn spawn(cleanup: &str) -> Guardian {
        let script = format!("cat >/dev/null; {cleanup}");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the cleanup guardian (sh): {e}"));
        let stdin = child.stdin.take();
        Guardian { stdin, child }
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// Single-quotes `p` for a shell command line.
pub fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// The uid and gid to run Postgres as: ourselves, or the `postgres` (else `nobody`) account
/// when we are root, because Postgres refuses to run as root.
pub fn unprivileged_ids() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    if me != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let lookup = |user: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?))).flatten()
        })
    };
    Some(lookup("postgres").or_else(|| lookup("nobody")).unwrap_or((65534, 65534)))
}
