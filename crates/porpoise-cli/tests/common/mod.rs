//! End-to-end harness: Porpoise's real binaries as separate processes — `porpoise-master` and
//! `porpoise-worker` on the test Postgres and etcd, or `porpoise standalone` — driven through
//! the `porpoise` CLI and the gRPC API. Processes are killed when the harness is dropped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use porpoise_proto::v1::admin_service_client::AdminServiceClient;
use porpoise_proto::v1::{GetRunReply, GetRunRequest};
use porpoise_registry::{EtcdRegistry, Registry, Selector};
use porpoise_testkit::{TestEtcd, TestPostgres, free_port, unique_name};
use tonic::transport::Channel;

/// Where the database of a test deployment is.
#[derive(Debug, Clone)]
pub enum Database {
    Postgres(String),
    Sqlite(PathBuf),
}

/// One deployment under test.
pub struct Deployment {
    /// `http://127.0.0.1:PORT` of the master's AdminService.
    pub server: String,
    /// The master's address (host:port), where TaskEventService is served.
    pub master_addr: String,
    /// The (first) worker's own address (cluster only).
    pub worker_addr: Option<String>,
    /// Every worker's address → its process name (cluster only).
    pub worker_addrs: HashMap<String, String>,
    /// Every master's (address, metrics address, process name), in start order.
    pub masters: Vec<(String, String, String)>,
    /// Every worker's metrics address, when [`ClusterOptions::worker_metrics`] asked for them.
    pub worker_metrics: Vec<String>,
    pub metrics: Option<String>,
    pub database: Database,
    pub dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
    /// The arguments each process was started with, to start it again.
    args: HashMap<String, Vec<String>>,
    /// The binary each process runs.
    binaries: HashMap<String, String>,
}

/// Options for a cluster deployment.
#[derive(Debug, Default, Clone)]
pub struct ClusterOptions {
    /// The address the master advertises to workers (a proxy in front of it); its own when None.
    pub advertise: Option<String>,
    /// The address the worker advertises to masters (a proxy in front of it); its own when None.
    pub worker_advertise: Option<String>,
    pub slots: Option<u32>,
    /// How many workers (default 1). The first is `porpoise-worker`, the next
    /// `porpoise-worker-2` and so on, as process names for [`Deployment::kill`].
    pub workers: Option<usize>,
    /// How many masters (default 1), named like the workers: `porpoise-master`,
    /// `porpoise-master-2`, …; the CLI talks to the first until [`Deployment::use_master`].
    pub masters: Option<usize>,
    /// More arguments for every worker.
    pub worker_args: Vec<String>,
    /// The etcd endpoint of the first worker (a proxy in front of etcd), instead of etcd's.
    pub first_worker_etcd: Option<String>,
    /// Each worker serves /metrics on a port of its own.
    pub worker_metrics: bool,
}

/// The bootstrap admin token every master of a test deployment accepts (its CLI calls send it).
pub const ADMIN_TOKEN: &str = "pp_test-admin-token";

/// An AdminService client of `server` that sends `token`.
pub async fn admin_client(server: &str, token: Option<&str>) -> porpoise_proto::AdminClient {
    let channel = Channel::from_shared(server.to_string()).expect("a server address").connect().await.expect("connect");
    let bearer = porpoise_proto::Bearer::new(token).expect("a token");
    AdminServiceClient::with_interceptor(channel, bearer)
}

fn bin(name: &str) -> &'static str {
    match name {
        "porpoise" => env!("CARGO_BIN_EXE_porpoise"),
        "porpoise-master" => env!("CARGO_BIN_EXE_porpoise-master"),
        "porpoise-worker" => env!("CARGO_BIN_EXE_porpoise-worker"),
        other => panic!("unknown binary {other}"),
    }
}

impl Deployment {
    fn spawn(&mut self, name: &str, args: &[String]) {
        self.spawn_as(name, name, args);
    }

    /// Starts `binary` as process `name` (its log file and the name to kill it by).
    fn spawn_as(&mut self, name: &str, binary: &str, args: &[String]) {
        let log = self.dir.path().join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let err = file.try_clone().expect("log file");
        let child = Command::new(bin(binary))
            .args(args)
            .env("RUST_LOG", "info")
            .env("PORPOISE_ADMIN_TOKEN", ADMIN_TOKEN)
            // the tests may run as root; their workers are told to run tasks as root then
            .env("PORPOISE_ALLOW_ROOT_TASKS", "true")
            // a loopback test cluster: plain TCP between nodes (crates/porpoise-cli/tests/security.rs
            // and the README's cluster run over mutual TLS)
            .env("PORPOISE_INSECURE", "true")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.children.push((name.to_string(), child));
        self.args.insert(name.to_string(), args.to_vec());
        self.binaries.insert(name.to_string(), binary.to_string());
    }

    /// Talks to master `i` (0-based, in start order) from now on: the CLI, admin and metrics.
    pub async fn use_master(&mut self, i: usize) {
        let (addr, metrics, _) = self.masters[i].clone();
        self.server = format!("http://{addr}");
        self.master_addr = addr;
        self.metrics = Some(metrics);
        self.wait_for_master().await;
    }

    fn database_url(&self) -> String {
        match &self.database {
            Database::Postgres(url) => url.clone(),
            Database::Sqlite(path) => path.display().to_string(),
        }
    }

    /// Waits until no task process of this deployment is left: the tests' tasks name the
    /// `marks` file in its directory on their command lines (the daemons do not).
    pub async fn wait_for_no_task_process(&mut self) {
        let dir = self.path("marks").display().to_string();
        self.wait_until("no task process is left", || {
            let dir = dir.clone();
            async move { porpoise_testkit::processes_named(&dir).is_empty() }
        })
        .await;
    }

    /// Sends process `name` SIGTERM.
    pub fn sigterm(&self, name: &str) {
        self.signal(name, "TERM");
    }

    /// Sends process `name` signal `sig` (`TERM`, `STOP`, `CONT`, …).
    pub fn signal(&self, name: &str, sig: &str) {
        let (_, child) = self.children.iter().find(|(n, _)| n == name).expect("a process of that name");
        let status =
            Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// The log of process `name` so far.
    pub fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Sends process `name` SIGTERM and waits (up to 60 s) for it to exit; returns its status.
    pub async fn terminate(&mut self, name: &str) -> std::process::ExitStatus {
        self.sigterm(name);
        self.wait_exit(name).await
    }

    /// Waits (up to 60 s) for process `name` to exit; returns its status.
    pub async fn wait_exit(&mut self, name: &str) -> std::process::ExitStatus {
        let i = self.children.iter().position(|(n, _)| n == name).expect("a process of that name");
        let (_, mut child) = self.children.remove(i);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the process") {
                return status;
            }
            assert!(tokio::time::Instant::now() < deadline, "{name} did not exit after SIGTERM\n{}", self.logs_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills process `name` with SIGKILL and reaps it.
    pub fn kill(&mut self, name: &str) {
        let i = self.children.iter().position(|(n, _)| n == name).expect("a process of that name");
        let (_, mut child) = self.children.remove(i);
        child.kill().expect("kill the process");
        child.wait().expect("reap the process");
    }

    /// Starts another worker, `name`, set up as worker `like` is, with its own address and data
    /// directory, on etcd `etcd`; returns its address.
    pub fn start_worker_like(&mut self, like: &str, name: &str, etcd: &str) -> String {
        let mut args = self.args.get(like).expect("a worker of that name was started").clone();
        let addr = format!("127.0.0.1:{}", free_port());
        let dir = self.dir.path().join(name).display().to_string();
        for (flag, value) in [("--listen", addr.as_str()), ("--data-dir", dir.as_str()), ("--etcd", etcd)] {
            let i = args.iter().position(|a| a == flag).expect("the worker has the flag");
            args[i + 1] = value.to_string();
        }
        self.worker_addrs.insert(addr.clone(), name.to_string());
        self.spawn_as(name, "porpoise-worker", &args);
        addr
    }

    /// Starts process `name` again with the arguments it had (its log goes on in the same file).
    pub fn start_again(&mut self, name: &str) {
        let args = self.args.get(name).expect("a process of that name was started").clone();
        let binary = self.binaries.get(name).expect("a process of that name was started").clone();
        self.spawn_as(name, &binary, &args);
    }

    /// A master and a worker as separate processes on the shared test Postgres and etcd.
    pub async fn cluster() -> Deployment {
        Self::cluster_on(TestPostgres::shared(), ClusterOptions::default()).await
    }

    /// A master and a worker on `pg` (a fresh database) and the shared test etcd.
    pub async fn cluster_on(pg: &TestPostgres, options: ClusterOptions) -> Deployment {
        let url = pg.fresh_database().await;
        let etcd = TestEtcd::shared();
        let root = format!("/{}", unique_name("porpoise-e2e"));
        let registry_args: Vec<String> = vec![
            "--etcd".into(),
            etcd.endpoint(),
            "--etcd-root".into(),
            root.clone(),
            "--lease-ttl-secs".into(),
            "3".into(),
        ];
        let master_port = free_port();
        let metrics_port = free_port();
        let master_addr = format!("127.0.0.1:{master_port}");
        let mut d = Deployment {
            server: format!("http://{master_addr}"),
            master_addr: master_addr.clone(),
            worker_addr: None,
            worker_addrs: HashMap::new(),
            masters: vec![(master_addr.clone(), format!("127.0.0.1:{metrics_port}"), "porpoise-master".into())],
            worker_metrics: Vec::new(),
            metrics: Some(format!("127.0.0.1:{metrics_port}")),
            database: Database::Postgres(url.clone()),
            dir: tempfile::tempdir().expect("temporary directory"),
            children: Vec::new(),
            args: HashMap::new(),
            binaries: HashMap::new(),
        };
        let mut master_args = vec![
            "--listen".into(),
            master_addr.clone(),
            "--database-url".into(),
            url,
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics_port}"),
        ];
        master_args.extend(registry_args.iter().cloned());
        if let Some(adv) = &options.advertise {
            master_args.extend(["--advertise".to_string(), adv.clone()]);
        }
        d.spawn("porpoise-master", &master_args);
        for n in 2..=options.masters.unwrap_or(1) {
            let name = format!("porpoise-master-{n}");
            let addr = format!("127.0.0.1:{}", free_port());
            let metrics = format!("127.0.0.1:{}", free_port());
            let mut args = vec!["--listen".to_string(), addr.clone(), "--database-url".into()];
            args.extend([d.database_url(), "--metrics-listen".into(), metrics.clone()]);
            args.extend(registry_args.iter().cloned());
            d.spawn_as(&name, "porpoise-master", &args);
            d.masters.push((addr, metrics, name));
        }
        let workers = options.workers.unwrap_or(1);
        for n in 1..=workers {
            let name = if n == 1 { "porpoise-worker".to_string() } else { format!("porpoise-worker-{n}") };
            let worker_dir = d.dir.path().join(&name);
            let worker_addr = format!("127.0.0.1:{}", free_port());
            if n == 1 {
                d.worker_addr = Some(worker_addr.clone());
            }
            d.worker_addrs.insert(worker_addr.clone(), name.clone());
            let mut worker_args: Vec<String> =
                options.worker_advertise.iter().flat_map(|a| ["--advertise".to_string(), a.clone()]).collect();
            worker_args.extend([
                "--listen".into(),
                worker_addr.clone(),
                "--slots".into(),
                options.slots.unwrap_or(16).to_string(),
                "--data-dir".into(),
                worker_dir.display().to_string(),
            ]);
            let mut registry_args = registry_args.clone();
            if let (1, Some(endpoint)) = (n, &options.first_worker_etcd) {
                registry_args[1] = endpoint.clone();
            }
            worker_args.extend(registry_args);
            worker_args.extend(options.worker_args.iter().cloned());
            if options.worker_metrics {
                let ops = format!("127.0.0.1:{}", free_port());
                worker_args.extend(["--metrics-listen".to_string(), ops.clone()]);
                d.worker_metrics.push(ops);
            }
            d.spawn_as(&name, "porpoise-worker", &worker_args);
        }
        d.wait_for_master().await;
        let registry = EtcdRegistry::connect(&[etcd.endpoint()], &root).await.expect("connect etcd");
        d.wait_until("the workers register", || {
            let registry = registry.clone();
            async move {
                registry.members(&Selector::Workers { group: None }).await.map(|m| m.len() == workers).unwrap_or(false)
            }
        })
        .await;
        d
    }

    /// `porpoise standalone` as one process.
    pub async fn standalone() -> Deployment {
        let port = free_port();
        let master_addr = format!("127.0.0.1:{port}");
        let dir = tempfile::tempdir().expect("temporary directory");
        let data = dir.path().join("data");
        let mut d = Deployment {
            server: format!("http://{master_addr}"),
            master_addr: master_addr.clone(),
            worker_addr: None,
            worker_addrs: HashMap::new(),
            masters: Vec::new(),
            worker_metrics: Vec::new(),
            metrics: None,
            database: Database::Sqlite(data.join("porpoise.db")),
            dir,
            children: Vec::new(),
            args: HashMap::new(),
            binaries: HashMap::new(),
        };
        d.spawn(
            "porpoise",
            &["standalone".into(), "--data-dir".into(), data.display().to_string(), "--listen".into(), master_addr],
        );
        d.wait_for_master().await;
        d
    }

    pub async fn wait_for_master(&mut self) {
        let server = self.server.clone();
        self.wait_until("the master serves", || {
            let server = server.clone();
            async move { AdminServiceClient::connect(server).await.is_ok() }
        })
        .await;
    }

    /// Waits for `check` to hold, up to 60 s; fails with the process logs otherwise.
    pub async fn wait_until<F, Fut>(&mut self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut delay = Duration::from_millis(10);
        while tokio::time::Instant::now() < deadline {
            if check().await {
                return;
            }
            let exited = self
                .children
                .iter_mut()
                .find_map(|(name, child)| child.try_wait().ok().flatten().map(|status| (name.clone(), status)));
            if let Some((name, status)) = exited {
                panic!("{name} exited ({status}) while waiting for {what}:\n{}", self.logs_text());
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
        panic!("timed out waiting for {what}:\n{}", self.logs_text());
    }

    /// Everything the processes logged, for failure messages.
    pub fn logs_text(&self) -> String {
        let mut out = String::new();
        let mut names: Vec<&String> = self.args.keys().collect();
        names.sort();
        for name in names {
            let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            out.push_str(&format!("--- {name} (last lines) ---\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Runs the `porpoise` CLI against this deployment.
    pub fn porpoise(&self, args: &[&str]) -> Output {
        Command::new(bin("porpoise"))
            .env("PORPOISE_TOKEN", ADMIN_TOKEN)
            .arg("--server")
            .arg(&self.server)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run porpoise")
    }

    /// Runs the `porpoise` CLI against this deployment with `input` on its standard input.
    pub fn porpoise_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = Command::new(bin("porpoise"))
            .env("PORPOISE_TOKEN", ADMIN_TOKEN)
            .arg("--server")
            .arg(&self.server)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run porpoise");
        let mut stdin = child.stdin.take().expect("its standard input");
        // a command that refuses early closes its input: a broken pipe here is its answer
        let _ = stdin.write_all(input);
        drop(stdin);
        child.wait_with_output().expect("porpoise ran")
    }

    /// Runs the `porpoise` CLI with its standard output a pipe whose reader has already gone,
    /// as in `porpoise status 7 | head -0`; every write to it fails with a broken pipe.
    pub fn porpoise_into_closed_pipe(&self, args: &[&str]) -> Output {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        Command::new(bin("porpoise"))
            .env("PORPOISE_TOKEN", ADMIN_TOKEN)
            .arg("--server")
            .arg(&self.server)
            .args(args)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run porpoise")
    }

    /// Writes `yaml` to a file and applies it with the CLI.
    pub fn apply(&self, name: &str, yaml: &str) {
        let file = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).expect("write spec");
        let out = self.porpoise(&["workflow", "apply", "-f", file.to_str().expect("utf-8")]);
        assert!(out.status.success(), "apply failed: {}\n{}", String::from_utf8_lossy(&out.stderr), self.logs_text());
    }

    /// An AdminService client with the deployment's admin token.
    pub async fn admin(&self) -> porpoise_proto::AdminClient {
        admin_client(&self.server, Some(ADMIN_TOKEN)).await
    }

    /// Starts a run of workflow `name` through the API and returns its id.
    pub async fn start_run(&self, name: &str) -> i64 {
        let request = porpoise_proto::v1::StartRunRequest {
            workflow_name: name.into(),
            params: Default::default(),
            priority: String::new(),
            count: 1,
        };
        self.admin().await.start_run(request).await.expect("start run").into_inner().run_id
    }

    /// Waits until run `id`, as `GetRun` shows it, satisfies `check`.
    pub async fn wait_for_run(&mut self, id: i64, what: &str, check: impl Fn(&GetRunReply) -> bool + Clone) {
        let admin = self.admin().await;
        self.wait_until(what, || {
            let (mut admin, check) = (admin.clone(), check.clone());
            async move {
                match admin.get_run(GetRunRequest { run_id: id }).await {
                    Ok(run) => check(&run.into_inner()),
                    Err(_) => false,
                }
            }
        })
        .await;
    }

    /// Waits for run `id` to end and returns it.
    pub async fn finished_run(&mut self, id: i64) -> GetRunReply {
        let mut admin = self.admin().await;
        let mut last = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut delay = Duration::from_millis(10);
        while tokio::time::Instant::now() < deadline {
            match admin.get_run(GetRunRequest { run_id: id }).await {
                Ok(run) => {
                    let run = run.into_inner();
                    let state = run.run.as_ref().map(|r| r.state.clone()).unwrap_or_default();
                    if matches!(state.as_str(), "success" | "failure" | "stopped") {
                        return run;
                    }
                    last = Some(format!("{run:?}"));
                }
                // a stalled run or a database still coming back: ask again
                Err(s) if s.code() == tonic::Code::Unavailable => last = Some(s.message().to_string()),
                Err(s) => panic!("get run {id}: {s}"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
        panic!("run {id} did not finish in time: {}\n{}", last.unwrap_or_default(), self.logs_text());
    }

    /// `(state, count)` rows of one SQL query against the deployment's database.
    pub async fn query_strings(&self, sql: &'static str, bind: i64) -> Vec<String> {
        match &self.database {
            Database::Postgres(url) => {
                let pool = sqlx::PgPool::connect(url).await.expect("connect to the test database");
                sqlx::query_scalar::<_, String>(sql).bind(bind).fetch_all(&pool).await.expect("query")
            }
            Database::Sqlite(path) => {
                let pool =
                    sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.expect("open SQLite");
                sqlx::query_scalar::<_, String>(sql).bind(bind).fetch_all(&pool).await.expect("query")
            }
        }
    }

    /// The reasons of every dead letter.
    pub async fn dead_letters(&self) -> Vec<String> {
        self.query_strings("SELECT reason FROM dead_letter WHERE id > $1 ORDER BY id", 0).await
    }

    /// The master's Prometheus metrics text.
    pub async fn metrics_text(&self) -> String {
        scrape(self.metrics.as_ref().expect("this deployment serves metrics")).await
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Serves `routes` (a test's own gRPC service) on `listener` in the background.
pub fn serve(listener: tokio::net::TcpListener, routes: tonic::service::Routes) {
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .expect("the test's gRPC server serves");
    });
}

/// GET /metrics from `addr`.
pub async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to /metrics");
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read metrics");
    body
}

/// The run id a `porpoise run` printed.
pub fn run_id(out: &Output) -> i64 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().next().and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| {
        panic!("porpoise run printed no run id: stdout {stdout:?} stderr {:?}", String::from_utf8_lossy(&out.stderr))
    })
}

/// Lines of a marker file (empty when it does not exist).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).map(|s| s.lines().map(str::to_string).collect()).unwrap_or_default()
}

/// The value of one series (`name{labels}`) in Prometheus text. Panics when the series is
/// absent, so that a renamed metric fails the test instead of reading as 0.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {name_and_labels} in the metrics:\n{text}"))
}

/// Runs each listed `async fn case(d: Deployment)` of the test file twice: `cluster::case` on
/// a master and a worker process over Postgres and etcd, `standalone::case` in standalone.
#[allow(unused_macros)] // like the rest of this module, not every test binary uses it
macro_rules! both_modes {
    ($($case:ident),* $(,)?) => {
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Deployment::cluster().await).await;
                }
            )*
        }
        mod standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Deployment::standalone().await).await;
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use both_modes;

/// A shell loop that holds a task until the test creates `gate`. It ends by itself (failing)
/// once the gate's directory is gone, so a test that failed leaves no task looping.
pub fn hold_until(gate: &Path) -> String {
    let dir = gate.parent().unwrap_or(gate);
    format!("until [ -f {} ]; do [ -d {} ] || exit 1; sleep 0.02; done", gate.display(), dir.display())
}

/// Gates this test process holds closed, by path: each is an exclusive `flock` on its file.
static GATES: std::sync::Mutex<std::collections::BTreeMap<PathBuf, std::fs::File>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Closes `gate`: a task running [`wait_at`] on it blocks (in the kernel, no polling, so a
/// hundred tasks can wait at once) until [`open_gate`]. A test that fails lets its tasks go
/// when it exits, since the kernel drops its locks, so none is left waiting.
pub fn close_gate(gate: &Path) {
    let mut gates = GATES.lock().unwrap_or_else(|p| p.into_inner());
    if gates.contains_key(gate) {
        return;
    }
    let file = std::fs::File::create(gate).expect("create a gate file");
    file.lock().expect("lock the gate file");
    gates.insert(gate.to_path_buf(), file);
}

/// The shell command that waits at `gate` until the test opens it.
pub fn wait_at(gate: &Path) -> String {
    format!("flock -s {} true", gate.display())
}

/// Opens `gate`: every task waiting at it goes on, and any that comes later passes.
pub fn open_gate(gate: &Path) {
    GATES.lock().unwrap_or_else(|p| p.into_inner()).remove(gate);
}

/// Timestamped markers tasks wrote as `start|end NAME NANOS` lines: (time, is start, name), in
/// time order.
#[allow(dead_code)]
pub fn markers(path: &Path) -> Vec<(u128, bool, String)> {
    let mut out: Vec<(u128, bool, String)> = lines(path)
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "a marker line: {l:?}");
            (f[2].parse().expect("a timestamp"), f[0] == "start", f[1].to_string())
        })
        .collect();
    out.sort();
    out
}

/// The most tasks that ran at once, by their markers.
#[allow(dead_code)]
pub fn most_at_once(markers: &[(u128, bool, String)]) -> usize {
    let (mut now, mut most) = (0usize, 0usize);
    for (_, start, _) in markers {
        if *start {
            now += 1;
            most = most.max(now);
        } else {
            now = now.saturating_sub(1);
        }
    }
    most
}

/// A RESULT SUCCESS event for `(task_instance_id, attempt)` of run `run`, as a worker would send
/// it (or a forger would).
#[allow(dead_code)]
pub fn success_event(event_id: &str, run: i64, task_instance_id: i64, attempt: i32) -> porpoise_proto::v1::TaskEvent {
    use porpoise_proto::v1::{TaskEvent, TaskOutcome, TaskResult, task_event};
    TaskEvent {
        event_id: event_id.into(),
        task_instance_id,
        attempt,
        workflow_instance_id: run,
        kind: Some(task_event::Kind::Result(TaskResult {
            outcome: TaskOutcome::Success as i32,
            exit_code: Some(0),
            started_at_ms: 1,
            ended_at_ms: 2,
            message: String::new(),
        })),
    }
}
