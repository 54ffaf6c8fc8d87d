//! `porpoise-worker` as a real process against a real etcd: it registers, and when it is
//! killed (no clean exit, no revoke) watchers see it leave within twice its lease TTL; a
//! worker started again on its data directory ends what the killed one left running.

use std::process::{Command, Stdio};
use std::time::Duration;

use porpoise_proto::v1::DispatchTaskRequest;
use porpoise_proto::v1::worker_service_client::WorkerServiceClient;
use porpoise_registry::{EtcdRegistry, MemberEvent, Registry, Selector};
use porpoise_testkit::{TestEtcd, free_port, processes_named, unique_name};

const TTL_SECS: u64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_leaves_the_registry_within_twice_its_ttl() {
    let etcd = TestEtcd::shared();
    let root = format!("/{}", unique_name("porpoise-test"));
    let registry = EtcdRegistry::connect(&[etcd.endpoint()], &root).await.expect("connect");
    let mut watch = registry.watch(&Selector::Workers { group: Some("etl".into()) }).await.expect("watch");
    let dir = tempfile::tempdir().expect("dir");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_porpoise-worker"))
        .env("PORPOISE_ALLOW_ROOT_TASKS", "true")
        .env("PORPOISE_INSECURE", "true")
        .args(["--listen", &addr, "--group", "etl", "--slots", "3", "--etcd", &etcd.endpoint()])
        .args(["--etcd-root", &root, "--lease-ttl-secs", &TTL_SECS.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start porpoise-worker");
    let joined = tokio::time::timeout(Duration::from_secs(30), watch.next()).await.expect("worker registers in time");
    let Some(MemberEvent::Up(member)) = joined else { panic!("expected the worker to join, got {joined:?}") };
    assert_eq!((member.key.addr.as_str(), member.heartbeat.slots), (addr.as_str(), 3));

    child.kill().expect("kill the worker");
    child.wait().expect("reap");
    let left = tokio::time::timeout(Duration::from_secs(2 * TTL_SECS), async {
        loop {
            match watch.next().await {
                Some(MemberEvent::Down(key)) => return key,
                Some(MemberEvent::Up(_)) => continue,
                None => panic!("watch closed"),
            }
        }
    })
    .await
    .expect("the killed worker is gone within twice its TTL");
    assert_eq!(left.addr, addr);
}

#[test]
fn bad_settings_exit_2_naming_the_setting() {
    let out = Command::new(env!("CARGO_BIN_EXE_porpoise-worker"))
        .args(["--slots", "0", "--etcd", "http://127.0.0.1:1", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run porpoise-worker");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--slots: must be at least 1"), "{stderr}");
    // nodes talk over mutual TLS unless told --insecure; half the TLS settings is no setting
    for (extra, says) in [
        (&[][..], "invalid setting --tls-ca: nodes talk over mutual TLS"),
        (&["--tls-ca", "/nonexistent/ca.pem"][..], "--tls-ca, --tls-cert and --tls-key go together"),
        (&["--tls-ca", "/x", "--tls-cert", "/x", "--tls-key", "/x", "--insecure"][..], "--insecure excludes"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_porpoise-worker"))
            .args(["--etcd", "http://127.0.0.1:1", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("PORPOISE_INSECURE")
            .output()
            .expect("run porpoise-worker");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}

/// A worker process, killed when dropped (also when the test fails).
struct Worker(std::process::Child);

impl Worker {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `porpoise-worker` on `data_dir` against the shared etcd; returns it and its address.
fn start_worker(data_dir: &std::path::Path, root: &str) -> (Worker, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_porpoise-worker"))
        .env("PORPOISE_ALLOW_ROOT_TASKS", "true")
        .env("PORPOISE_INSECURE", "true")
        .args(["--listen", &addr, "--etcd", &TestEtcd::shared().endpoint(), "--etcd-root", root])
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start porpoise-worker");
    (Worker(child), addr)
}

async fn wait_until(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Dispatches a task that leaves two processes named after `name` (one escaped with
/// `setsid`) to the worker at `addr`, and waits until both run.
async fn start_sprawling_task(addr: &str, name: &str) {
    let mut client = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(c) = WorkerServiceClient::connect(format!("http://{addr}")).await {
                break c;
            }
            assert!(tokio::time::Instant::now() < deadline, "the worker never served");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let dispatch = DispatchTaskRequest {
        task_instance_id: 1,
        attempt: 1,
        workflow_instance_id: 1,
        workflow_name: "w".into(),
        task_name: "t".into(),
        task_type: "shell".into(),
        command: format!("setsid bash -c 'exec -a {name}-escaped sleep 300' & exec -a {name} sleep 300"),
        master_addr: "127.0.0.1:1".into(),
        ..Default::default()
    };
    client.dispatch_task(dispatch).await.expect("dispatch");
    wait_until("the task's processes to start", || processes_named(name).len() == 2).await;
}

/// A worker killed with SIGKILL cannot end its tasks itself: its watchdog does, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_watchdog_ends_its_tasks() {
    let root = format!("/{}", unique_name("porpoise-test"));
    let dir = tempfile::tempdir().expect("dir");
    let (mut worker, addr) = start_worker(dir.path(), &root);
    let name = unique_name("porpoise-orphan");
    start_sprawling_task(&addr, &name).await;
    worker.kill();
    wait_until("the watchdog to end the task's processes", || processes_named(&name).is_empty()).await;
}

/// When the watchdog died with the worker (everything but the tasks was killed), the task
/// processes live on; the next worker on the same data directory ends them at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_on_a_killed_workers_data_directory_ends_what_it_left_running() {
    let root = format!("/{}", unique_name("porpoise-test"));
    let dir = tempfile::tempdir().expect("dir");
    let (mut first, addr) = start_worker(dir.path(), &root);
    let name = unique_name("porpoise-leftover");
    start_sprawling_task(&addr, &name).await;
    // the watchdog names the worker's liveness file on its command line
    let alive = dir.path().join("worker.alive").display().to_string();
    let status = Command::new("pkill").args(["-KILL", "-f", &alive]).status().expect("run pkill");
    assert!(status.success(), "no watchdog found for {alive}");
    first.kill();
    assert_eq!(processes_named(&name).len(), 2, "the task's processes outlive a killed worker and watchdog");

    let (_second, _) = start_worker(dir.path(), &root);
    wait_until("the leftovers to be ended", || processes_named(&name).is_empty()).await;
}
