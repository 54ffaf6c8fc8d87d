//! `porpoise-worker` as a real process against a real etcd: it registers, and when it is
//! killed (no clean exit, no revoke) watchers see it leave within twice its lease TTL.

use std::process::{Command, Stdio};
use std::time::Duration;

use porpoise_registry::{EtcdRegistry, MemberEvent, Registry, Selector};
use porpoise_testkit::{TestEtcd, free_port, unique_name};

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
}
