//! The compose topology's monitoring, natively: Postgres, etcd, a master, two workers and
//! Prometheus (the Debian package) with the repository's scrape config and alert rules pointed
//! at them. Every target is up, a run's metrics are visible through Prometheus's query API, and
//! an alert fires when the worker group loses its last worker.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ClusterOptions, Deployment};
use porpoise_testkit::{TestPostgres, free_port};

/// Prometheus, started by the test; killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository's Prometheus config for this deployment: its scrape jobs, with the compose
/// DNS names replaced by the daemons' addresses, looking every second; its alert rules, with
/// their `for` cut to two seconds.
fn start_prometheus(d: &Deployment, dir: &Path) -> Prometheus {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus");
    let config = std::fs::read_to_string(deploy.join("prometheus.yml")).expect("the scrape config");
    let targets = |addrs: &[String]| {
        format!(
            "static_configs:\n      - targets: [{}]",
            addrs.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ")
        )
    };
    let masters: Vec<String> = d.masters.iter().map(|m| m.1.clone()).collect();
    let config = config
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace(
            "dns_sd_configs:\n      - names: [\"master\"]\n        type: A\n        port: 9464\n        refresh_interval: 15s",
            &targets(&masters),
        )
        .replace(
            "dns_sd_configs:\n      - names: [\"worker\"]\n        type: A\n        port: 9464\n        refresh_interval: 15s",
            &targets(&d.worker_metrics),
        );
    assert!(!config.contains("dns_sd_configs"), "the test knows the repository's scrape config: {config}");
    std::fs::write(dir.join("prometheus.yml"), config).expect("write the config");
    let alerts = std::fs::read_to_string(deploy.join("alerts.yml")).expect("the alert rules");
    std::fs::write(dir.join("alerts.yml"), alerts.replace("for: 1m", "for: 2s").replace("for: 5m", "for: 2s"))
        .expect("write the rules");
    let addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("a log file");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus (Debian package prometheus; scripts/install-deps installs it)");
    Prometheus { child, addr }
}

/// A Prometheus API call's `data`, or `None` while it does not answer.
async fn api(addr: &str, path: &str) -> Option<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await.ok()?.ok()?;
    let body = out.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    (v["status"] == "success").then(|| v["data"].clone())
}

/// An instant query's samples as (labels, value).
async fn query(addr: &str, promql: &str) -> Vec<(serde_json::Value, f64)> {
    let encoded: String = promql
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect();
    let Some(data) = api(addr, &format!("/api/v1/query?query={encoded}")).await else { return Vec::new() };
    data["result"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|s| (s["metric"].clone(), s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)))
                .collect()
        })
        .unwrap_or_default()
}

async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_daemon_sees_a_run_and_alerts_when_a_group_loses_its_last_worker() {
    let options = ClusterOptions { workers: Some(2), worker_metrics: true, ..Default::default() };
    let mut d = Deployment::cluster_on(TestPostgres::shared(), options).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let prometheus = start_prometheus(&d, dir.path());
    let p = prometheus.addr.clone();
    until("every target is up", || {
        let p = p.clone();
        async move {
            let up = query(&p, "up").await;
            up.len() == 3 && up.iter().all(|(_, v)| *v == 1.0)
        }
    })
    .await;
    d.apply("seen", "name: seen\ntasks:\n  - { name: a, command: 'true' }\n");
    let id = d.start_run("seen").await;
    d.finished_run(id).await;
    until("the run's metrics are visible through Prometheus", || {
        let p = p.clone();
        async move {
            let finished = query(&p, r#"porpoise_workflow_instances_finished_total{state="success"}"#).await;
            let dispatched = query(&p, r#"sum(porpoise_worker_dispatches_total{answer="accepted"})"#).await;
            finished.first().is_some_and(|s| s.1 >= 1.0) && dispatched.first().is_some_and(|s| s.1 >= 1.0)
        }
    })
    .await;
    let firing = |p: String| async move {
        let Some(data) = api(&p, "/api/v1/alerts").await else { return Vec::new() };
        data["alerts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|a| a["state"] == "firing")
                    .map(|a| {
                        format!(
                            "{}:{}",
                            a["labels"]["alertname"].as_str().unwrap_or(""),
                            a["labels"]["group"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<String>>()
            })
            .unwrap_or_default()
    };
    assert!(
        !firing(p.clone()).await.contains(&"PorpoiseNoWorkerInGroup:default".to_string()),
        "not while workers are up"
    );
    d.kill("porpoise-worker");
    d.kill("porpoise-worker-2");
    until("the no-worker alert fires for the default group", || {
        let p = p.clone();
        async move { firing(p).await.contains(&"PorpoiseNoWorkerInGroup:default".to_string()) }
    })
    .await;
}
