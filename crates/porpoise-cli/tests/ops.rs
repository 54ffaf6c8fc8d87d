//! Operating the daemons: start-up before etcd is up, `/healthz` and `/readyz` through an etcd
//! and a Postgres outage, `/metrics`, and JSON log lines that carry the run's fields.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use porpoise_testkit::{TestEtcd, TestPostgres, free_port};

/// A daemon started by the test, its stderr in a file; killed when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(binary: &str, args: &[String], log: PathBuf) -> Daemon {
        let file = std::fs::File::create(&log).expect("a log file");
        let child = Command::new(binary)
            .args(args)
            .env("RUST_LOG", "info")
            .env("PORPOISE_ADMIN_TOKEN", "pp_ops-test-admin")
            .env("PORPOISE_ALLOW_ROOT_TASKS", "true")
            .env("PORPOISE_INSECURE", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A master's arguments: serving on `addr` and `/metrics` on `ops`, on database `url`, then `rest`.
fn master_args(addr: &str, url: String, ops: &str, rest: &[String]) -> Vec<String> {
    let mut args = vec!["--listen".to_string(), addr.to_string(), "--database-url".into(), url];
    args.extend(["--metrics-listen".to_string(), ops.to_string()]);
    args.extend(rest.iter().cloned());
    args
}

/// `GET path` on `addr`: (status, body); (0, "") when nothing answers.
async fn get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await else {
        return (0, String::new());
    };
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await;
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Waits until `GET path` on `addr` answers `status`, for at most a minute; returns the body.
async fn until_status(addr: &str, path: &str, status: u16, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = get(addr, path).await;
        if code == status {
            return body;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}: last answer {code} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn until_logged(daemon: &Daemon, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !daemon.log().contains(text) {
        assert!(Instant::now() < deadline, "{text:?} was never logged: {}", daemon.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn porpoise(server: &str, dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_porpoise"))
        .env("PORPOISE_TOKEN", "pp_ops-test-admin")
        .args(["--server", server])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run porpoise")
}

/// A master and a worker started while etcd is down wait for it (saying so) and join once it
/// is up; `/healthz` answers throughout, `/readyz` only once they can work, and turns false
/// while Postgres is stopped and true again after; other paths are 404; the JSON log lines parse
/// and carry the run's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_wait_for_etcd_and_say_when_they_are_ready() {
    let pg = TestPostgres::start();
    let url = pg.fresh_database().await;
    let etcd = TestEtcd::start();
    etcd.kill();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let master_addr = format!("127.0.0.1:{}", free_port());
    let master_ops = format!("127.0.0.1:{}", free_port());
    let worker_ops = format!("127.0.0.1:{}", free_port());
    let common = [
        "--etcd".to_string(),
        etcd.endpoint(),
        "--lease-ttl-secs".into(),
        "3".into(),
        "--log-format".into(),
        "json".into(),
    ];
    let master_args = master_args(&master_addr, url, &master_ops, &common);
    let master = Daemon::start(env!("CARGO_BIN_EXE_porpoise-master"), &master_args, dir.path().join("master.log"));
    let mut worker_args = vec![
        "--listen".to_string(),
        format!("127.0.0.1:{}", free_port()),
        "--data-dir".into(),
        dir.path().join("worker").display().to_string(),
        "--metrics-listen".into(),
        worker_ops.clone(),
    ];
    worker_args.extend(common.iter().cloned());
    let worker = Daemon::start(env!("CARGO_BIN_EXE_porpoise-worker"), &worker_args, dir.path().join("worker.log"));

    // etcd is down: both wait, alive but not ready
    until_logged(&master, "not reachable yet; waiting").await;
    until_logged(&worker, "not reachable yet; waiting").await;
    for ops in [&master_ops, &worker_ops] {
        assert_eq!(get(ops, "/healthz").await.0, 200);
        let (code, body) = get(ops, "/readyz").await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("starting"), "{body}");
    }
    etcd.restart();
    until_status(&master_ops, "/readyz", 200, "the master is ready once etcd is up").await;
    until_status(&worker_ops, "/readyz", 200, "the worker is ready once etcd is up").await;
    assert_eq!(get(&master_ops, "/nope").await.0, 404);
    // the gRPC health service and reflection on the master's port
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    for service in ["", "porpoise.v1.AdminService", "porpoise.v1.TaskEventService"] {
        assert_eq!(grpc_health(&master_addr, service).await, serving, "{service}");
    }
    let services = grpc_services(&master_addr).await;
    for service in ["porpoise.v1.AdminService", "porpoise.v1.TaskEventService", "grpc.health.v1.Health"] {
        assert!(services.contains(&service.to_string()), "{service} in {services:?}");
    }
    let (code, metrics) = get(&master_ops, "/metrics").await;
    assert!(code == 200 && metrics.contains("porpoise_workflow_instances_running"), "{metrics}");

    // a run, for the log lines
    let server = format!("http://{master_addr}");
    let spec = dir.path().join("hello.yaml");
    std::fs::write(&spec, "name: hello\ntasks:\n  - { name: a, command: 'true' }\n").expect("write a spec");
    let out = porpoise(&server, dir.path(), &["workflow", "apply", "-f", &spec.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = porpoise(&server, dir.path(), &["run", "hello", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run_id: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("a run id");

    // Postgres goes away and comes back: the master is not ready meanwhile
    pg.stop();
    let body = until_status(&master_ops, "/readyz", 503, "the master is not ready without Postgres").await;
    assert!(body.contains("database"), "{body}");
    assert_eq!(get(&master_ops, "/healthz").await.0, 200, "still alive");
    // gRPC probes see the same: NOT_SERVING overall while not ready
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    let deadline = Instant::now() + Duration::from_secs(30);
    while grpc_health(&master_addr, "").await != not_serving {
        assert!(Instant::now() < deadline, "the gRPC health status never followed readiness");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // the outage is counted: the schedules' looks fail meanwhile
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, text) = get(&master_ops, "/metrics").await;
        if sample(&text, "porpoise_database_errors_total{operation=\"fire_schedules\"}") > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "database errors were never counted: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pg.restart();
    until_status(&master_ops, "/readyz", 200, "the master is ready again with Postgres back").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while grpc_health(&master_addr, "").await != serving {
        assert!(Instant::now() < deadline, "the gRPC health status never came back to SERVING");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // both daemons' metrics pass Prometheus's own lint, and say what happened
    for ops in [&master_ops, &worker_ops] {
        let (code, text) = get(ops, "/metrics").await;
        assert_eq!(code, 200);
        promtool_check_metrics(&text);
        assert!(text.contains("porpoise_build_info{version=\"0.1.0\",commit=\""), "{text}");
        assert!(
            text.contains("process_resident_memory_bytes ") && text.contains("process_cpu_seconds_total "),
            "{text}"
        );
    }
    let (_, master_metrics) = get(&master_ops, "/metrics").await;
    assert!(master_metrics.contains("porpoise_free_slots{group=\"default\"} 16"), "{master_metrics}");
    assert!(master_metrics.contains("porpoise_task_queue_depth{priority=\"medium\"} 0"), "{master_metrics}");
    // state-event latencies have buckets below a millisecond
    assert!(
        master_metrics.contains("porpoise_state_event_seconds_bucket{kind=\"task_state_change\",le=\"0.0005\"}"),
        "{master_metrics}"
    );
    // both daemons renew their etcd leases (every second with a 3 s TTL), and say so
    for text in [&master_metrics, &get(&worker_ops, "/metrics").await.1] {
        let renewed = sample(text, "porpoise_registry_lease_renewals_total{outcome=\"renewed\"}");
        assert!(renewed >= 1.0, "{text}");
        assert_eq!(sample(text, "porpoise_registry_reregistrations_total"), 0.0, "{text}");
    }
    assert!(
        master_metrics.contains("porpoise_workflow_instance_duration_seconds_bucket{state=\"success\",le=\"0.5\"}"),
        "{master_metrics}"
    );
    let (_, worker_metrics) = get(&worker_ops, "/metrics").await;
    for sample in [
        "porpoise_worker_dispatches_total{answer=\"accepted\"} 1",
        "porpoise_worker_dispatches_total{answer=\"full\"} 0",
        "porpoise_worker_slots 16",
        "porpoise_worker_task_duration_seconds_count{outcome=\"success\"} 1",
    ] {
        assert!(worker_metrics.contains(sample), "{sample} in {worker_metrics}");
    }

    // every log line is a JSON object; the run's carry its id and workflow
    let lines: Vec<serde_json::Value> = master
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let about_run: Vec<&serde_json::Value> = lines.iter().filter(|l| l["run_id"] == run_id).collect();
    assert!(
        about_run.iter().any(|l| l["message"] == "run finished" && l["workflow"] == "hello" && l["state"] == "success"),
        "{about_run:#?}"
    );
    let worker_lines: Vec<serde_json::Value> = worker
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    // the task's line carries the run, the workflow, the task instance and the attempt
    assert!(
        worker_lines.iter().any(|l| l["message"] == "task finished"
            && l["run_id"] == run_id
            && l["workflow"] == "hello"
            && l["task"] == "a"
            && l["task_instance_id"].is_i64()
            && l["attempt"] == 1
            && l["outcome"] == "success"),
        "{worker_lines:#?}"
    );
}

/// The value of the metric sample `name{labels}` in `text`; fails when there is none.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

/// `promtool check metrics` on `text`: fails the test with promtool's findings.
fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/install-deps installs it)");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write the metrics");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shipped Prometheus config and alert rules are valid, and each alert fires on what it is
/// for and not on a healthy cluster (`deploy/prometheus/alerts_test.yml`).
#[test]
fn the_prometheus_config_and_alert_rules_check_and_their_unit_tests_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus");
    for args in [["check", "config", "prometheus.yml"], ["test", "rules", "alerts_test.yml"]] {
        let out = Command::new("promtool").args(args).current_dir(&dir).output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every metric the Grafana dashboard and the alert rules use is one the daemons export.
#[test]
fn the_dashboard_and_the_alerts_use_only_metrics_the_daemons_export() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let dashboard = std::fs::read_to_string(deploy.join("grafana/dashboards/porpoise.json")).expect("the dashboard");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut exprs: Vec<String> = parsed["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() >= 15, "a dashboard with its panels: {exprs:?}");
    let alerts = std::fs::read_to_string(deploy.join("prometheus/alerts.yml")).expect("the alerts");
    exprs.extend(alerts.lines().filter_map(|l| l.trim().strip_prefix("expr:").map(str::to_string)));
    let known: Vec<&str> = porpoise_master::metrics::ALL
        .iter()
        .chain(porpoise_worker::metrics::ALL)
        .chain(porpoise_registry::metrics::ALL)
        .copied()
        .chain([porpoise_cli::ops::BUILD_INFO])
        .collect();
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.starts_with("porpoise_") {
                continue;
            }
            let name = ["_bucket", "_count", "_sum"].iter().fold(word, |w, s| w.strip_suffix(s).unwrap_or(w));
            assert!(known.contains(&name), "{name} (in {expr}) is not a metric the daemons export");
        }
    }
}

/// A worker whose data directory cannot be written (made read-only under it, the worker running
/// as an unprivileged user) says so — `/readyz` 503 naming it, the gauge at 0 — and answers
/// dispatches FULL, so its task waits rather than fails; once the directory can be written the
/// worker is ready again and the task runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_write_its_data_directory_takes_no_tasks_and_says_why() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let pg = TestPostgres::shared();
    let url = pg.fresh_database().await;
    let etcd = TestEtcd::shared();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = format!("/ops-{}", free_port());
    let master_addr = format!("127.0.0.1:{}", free_port());
    let master_ops = format!("127.0.0.1:{}", free_port());
    let worker_ops = format!("127.0.0.1:{}", free_port());
    let registry =
        ["--etcd".to_string(), etcd.endpoint(), "--etcd-root".into(), root, "--lease-ttl-secs".into(), "3".into()];
    let master_args = master_args(&master_addr, url, &master_ops, &registry);
    let _master = Daemon::start(env!("CARGO_BIN_EXE_porpoise-master"), &master_args, dir.path().join("master.log"));
    // the worker runs as an unprivileged user, so a read-only directory stops it
    let data = dir.path().join("worker");
    std::fs::create_dir(&data).expect("the data directory");
    let ids = porpoise_testkit::unprivileged_ids();
    if let Some((uid, gid)) = ids {
        for path in [dir.path(), data.as_path()] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("hand the directory over");
        }
    }
    let mut worker_args = vec![
        "--listen".to_string(),
        format!("127.0.0.1:{}", free_port()),
        "--data-dir".into(),
        data.display().to_string(),
        "--metrics-listen".into(),
        worker_ops.clone(),
    ];
    worker_args.extend(registry.iter().cloned());
    let log = std::fs::File::create(dir.path().join("worker.log")).expect("a log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_porpoise-worker"));
    command
        .args(&worker_args)
        .env("RUST_LOG", "info")
        .env("PORPOISE_ALLOW_ROOT_TASKS", "true")
        .env("PORPOISE_INSECURE", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if let Some((uid, gid)) = ids {
        command.uid(uid).gid(gid);
    }
    let worker = Daemon { child: command.spawn().expect("start the worker"), log: dir.path().join("worker.log") };
    until_status(&master_ops, "/readyz", 200, "the master is ready").await;
    until_status(&worker_ops, "/readyz", 200, "the worker is ready").await;

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).expect("make it read-only");
    let body = until_status(&worker_ops, "/readyz", 503, "the worker is not ready without a writable directory").await;
    assert!(body.contains("the data directory cannot be written"), "{body}");
    let (_, metrics) = get(&worker_ops, "/metrics").await;
    assert!(metrics.contains("porpoise_worker_data_dir_writable 0"), "{metrics}");
    until_logged(&worker, "the data directory cannot be written").await;

    // a run meanwhile: its task is refused (FULL), so it waits instead of failing
    let server = format!("http://{master_addr}");
    let spec = dir.path().join("hello.yaml");
    std::fs::write(&spec, "name: hello\ntasks:\n  - { name: a, command: 'true' }\n").expect("write a spec");
    assert!(porpoise(&server, dir.path(), &["workflow", "apply", "-f", &spec.display().to_string()]).status.success());
    let out = porpoise(&server, dir.path(), &["run", "hello"]);
    let run = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, metrics) = get(&worker_ops, "/metrics").await;
        let full = metrics
            .lines()
            .find_map(|l| l.strip_prefix("porpoise_worker_dispatches_total{answer=\"full\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if full >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the dispatch was never refused: {metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = porpoise(&server, dir.path(), &["status", &run, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert_eq!(status["state"], "running", "the run waits: {status:#}");

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("make it writable");
    until_status(&worker_ops, "/readyz", 200, "the worker is ready again").await;
    let out = porpoise(&server, dir.path(), &["run", "hello", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = porpoise(&server, dir.path(), &["status", &run, "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
        if status["state"] == "success" {
            break;
        }
        assert!(Instant::now() < deadline, "the waiting run never ran: {status:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `grpc.health.v1` status of `service` on `addr`.
async fn grpc_health(addr: &str, service: &str) -> i32 {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel(addr).await);
    let request = tonic_health::pb::HealthCheckRequest { service: service.to_string() };
    client.check(request).await.expect("a health answer").into_inner().status
}

/// The services `addr` lists through gRPC reflection.
async fn grpc_services(addr: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel(addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers =
        client.server_reflection_info(tokio_stream_once(request)).await.expect("a reflection answer").into_inner();
    let first = answers.message().await.expect("a reflection message").expect("one message");
    match first.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("not a list of services: {other:?}"),
    }
}

/// A one-message request stream.
fn tokio_stream_once<T: Send + 'static>(item: T) -> impl tonic::codegen::tokio_stream::Stream<Item = T> {
    tonic::codegen::tokio_stream::iter([item])
}

async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("an endpoint")
        .connect()
        .await
        .expect("connect")
}
