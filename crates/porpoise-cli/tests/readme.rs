//! The README's commands, run as a newcomer would run them: the main job (`scripts/demo`) and
//! the "A cluster by hand" section, whose lines are taken from README.md verbatim.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use porpoise_testkit::{free_port, unprivileged_ids};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_main_job_runs_a_workflow_in_standalone() {
    let root = root();
    let out = Command::new(root.join("scripts/demo"))
        .current_dir(&root)
        .env("PORPOISE_BIN", env!("CARGO_BIN_EXE_porpoise"))
        .env("PORPOISE_DEMO_PORT", free_port().to_string())
        .output()
        .expect("run scripts/demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scripts/demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("applied: workflow daily-etl"), "{stdout}");
    assert!(stdout.contains("of daily-etl (version 1): success"), "{stdout}");
    assert!(stdout.contains("extract 2026-01-31"), "the first task's log is shown: {stdout}");
}

/// The shell block that follows `<!-- MARKER ...-->` in the README.
fn readme_block(readme: &str, marker: &str) -> String {
    let start = readme.find(&format!("<!-- {marker}")).unwrap_or_else(|| panic!("README.md has no {marker} block"));
    let rest = &readme[start..];
    let body = rest.split_once("```sh\n").map(|(_, b)| b).expect("a ```sh block after the marker");
    body.split_once("\n```").map(|(b, _)| b).expect("the block ends").to_string()
}

/// A place the README's lines can run in as an unprivileged user: the binaries and the examples
/// copied where that user can read them, a home of its own, free ports.
struct Sandbox {
    dir: tempfile::TempDir,
    ids: Option<(u32, u32)>,
    env: Vec<(String, String)>,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ids = unprivileged_ids();
        let (bin, repo) = (dir.path().join("bin"), dir.path().join("repo"));
        std::fs::create_dir_all(&bin).expect("bin dir");
        std::fs::create_dir_all(repo.join("examples")).expect("repo dir");
        for (name, path) in [
            ("porpoise", env!("CARGO_BIN_EXE_porpoise")),
            ("porpoise-master", env!("CARGO_BIN_EXE_porpoise-master")),
            ("porpoise-worker", env!("CARGO_BIN_EXE_porpoise-worker")),
        ] {
            std::fs::copy(path, bin.join(name)).expect("copy a binary");
        }
        for e in std::fs::read_dir(root().join("examples")).expect("examples").flatten() {
            std::fs::copy(e.path(), repo.join("examples").join(e.file_name())).expect("copy an example");
        }
        if let Some((uid, gid)) = ids {
            for p in [dir.path(), &bin, &repo, &repo.join("examples")] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("hand the sandbox over");
            }
        }
        let home = dir.path().display().to_string();
        let mut env = vec![
            ("HOME".to_string(), home.clone()),
            ("PORPOISE_HOME".to_string(), format!("{home}/cluster")),
            ("PORPOISE_BIN".to_string(), bin.display().to_string()),
        ];
        for var in ["PG_PORT", "ETCD_PORT", "ETCD_PEER_PORT", "MASTER_PORT", "WORKER_PORT", "METRICS_PORT"] {
            env.push((var.to_string(), free_port().to_string()));
        }
        Sandbox { dir, ids, env }
    }

    /// Runs `script` with bash (`-euo pipefail`) from the copied repository root; kills it and
    /// everything it started in its process group after `limit`.
    fn run(&self, name: &str, script: &str, limit: Duration) -> (bool, String) {
        let log = self.dir.path().join(format!("{name}.out"));
        let file = std::fs::File::create(&log).expect("output file");
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::chown(&log, Some(uid), Some(gid)).expect("hand the output file over");
        }
        let mut cmd = Command::new("bash");
        cmd.args(["-euo", "pipefail", "-c", script])
            .current_dir(self.dir.path().join("repo"))
            .env_remove("PORPOISE_SERVER")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("output file"))
            .stderr(file)
            .process_group(0);
        if let Some((uid, gid)) = self.ids {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().expect("start bash");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for bash") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        (status.is_some_and(|s| s.success()), output)
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("cluster").join(name)).unwrap_or_default()
    }
}

#[test]
fn the_readme_cluster_section_brings_up_a_cluster_that_completes_a_run() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let (start, stop) = (readme_block(&readme, "cluster-start"), readme_block(&readme, "cluster-stop"));
    let sandbox = Sandbox::new();
    let (started, output) = sandbox.run("start", &start, Duration::from_secs(180));
    // the stop lines run whatever happened, and must work too
    let (stopped, stop_output) = sandbox.run("stop", &stop, Duration::from_secs(60));
    if !started {
        let logs: String = ["master.log", "worker.log", "etcd.log", "postgres.log"]
            .iter()
            .map(|f| format!("--- {f}\n{}\n", sandbox.file(f)))
            .collect();
        panic!("the README's cluster lines failed:\n{output}\n{logs}");
    }
    assert!(output.contains("applied: workflow daily-etl version 1"), "{output}");
    let run_line =
        output.lines().find(|l| l.ends_with("succeeded")).unwrap_or_else(|| panic!("no run succeeded: {output}"));
    assert!(run_line.starts_with("run "), "{run_line}");
    assert!(stopped, "the README's stop lines failed:\n{stop_output}");
    assert!(!sandbox.dir.path().join("cluster").exists(), "the stop lines remove the cluster's files");
}
