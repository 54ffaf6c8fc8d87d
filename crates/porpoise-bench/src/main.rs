//! `porpoise-bench`: runs workflow shapes on `porpoise standalone` and on a native cluster
//! (Postgres with durable commits, etcd, one master, two workers of 16 slots), all release
//! builds, and prints a table: server-side makespan, time per step or task, tasks per second,
//! CPU seconds per task of each process, and Postgres commits and statements per task.
//! `scripts/bench` builds and runs it; `docs/performance.md` records its results.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use porpoise_proto::v1::admin_service_client::AdminServiceClient;
use porpoise_proto::v1::{ApplyWorkflowRequest, ListRunsRequest, StartRunRequest};
use porpoise_proto::{AdminClient, Bearer};
use porpoise_testkit::{TestEtcd, TestPostgres, free_port};

const TOKEN: &str = "pp_bench-admin";

#[derive(Debug, Parser)]
#[command(name = "porpoise-bench", about = "Porpoise's benchmark (see docs/performance.md)")]
struct Args {
    /// Small shapes, to check that the benchmark works (CI), not to measure.
    #[arg(long)]
    quick: bool,
    /// Where the release binaries are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// standalone, cluster or both.
    #[arg(long, default_value = "both", value_parser = ["both", "standalone", "cluster"])]
    mode: String,
    /// Only the shapes whose name contains this text (the memory measurement last is named
    /// `10000 active runs`).
    #[arg(long)]
    only: Option<String>,
    /// After each shape on the cluster, the statements Postgres ran most, with calls per task.
    #[arg(long)]
    statements: bool,
}

/// A workflow shape: `runs` runs of a spec of `tasks` tasks each.
struct Shape {
    name: String,
    spec: String,
    runs: usize,
    tasks: usize,
    /// A chain: report time per step.
    steps: Option<usize>,
}

fn task(name: &str, deps: &[String]) -> String {
    if deps.is_empty() {
        format!("  - {{ name: {name}, command: 'true' }}\n")
    } else {
        format!("  - {{ name: {name}, command: 'true', depends_on: [{}] }}\n", deps.join(", "))
    }
}

fn chain(name: &str, n: usize) -> String {
    let mut spec = format!("name: {name}\ntasks:\n");
    for i in 0..n {
        let deps: Vec<String> = if i == 0 { vec![] } else { vec![format!("t{}", i - 1)] };
        spec.push_str(&task(&format!("t{i}"), &deps));
    }
    spec
}

fn independent(name: &str, n: usize) -> String {
    let mut spec = format!("name: {name}\ntasks:\n");
    for i in 0..n {
        spec.push_str(&task(&format!("t{i}"), &[]));
    }
    spec
}

fn fan(name: &str, width: usize) -> String {
    let mut spec = format!("name: {name}\ntasks:\n");
    spec.push_str(&task("first", &[]));
    let middle: Vec<String> = (0..width).map(|i| format!("m{i}")).collect();
    for m in &middle {
        spec.push_str(&task(m, &["first".to_string()]));
    }
    spec.push_str(&task("last", &middle));
    spec
}

fn shapes(quick: bool) -> Vec<Shape> {
    let (chain_n, few, width, many, runs) = if quick { (5, 10, 10, 50, 20) } else { (50, 100, 200, 1000, 1000) };
    let mut shapes = vec![
        Shape {
            name: format!("{chain_n}-task chain"),
            spec: chain("chain", chain_n),
            runs: 1,
            tasks: chain_n,
            steps: Some(chain_n),
        },
        Shape {
            name: format!("{few} independent tasks"),
            spec: independent("few", few),
            runs: 1,
            tasks: few,
            steps: None,
        },
        Shape {
            name: format!("1 -> {width} -> 1 fan-out"),
            spec: fan("fan", width),
            runs: 1,
            tasks: width + 2,
            steps: None,
        },
        Shape {
            name: format!("{many} independent tasks"),
            spec: independent("many", many),
            runs: 1,
            tasks: many,
            steps: None,
        },
        Shape { name: format!("{runs} runs of a 3-task chain"), spec: chain("runs", 3), runs, tasks: 3, steps: None },
    ];
    if !quick {
        // ten times the tasks and forty times the steps: the master's CPU per task must not grow
        shapes.push(Shape {
            name: "10000 independent tasks".into(),
            spec: independent("huge", 10_000),
            runs: 1,
            tasks: 10_000,
            steps: None,
        });
        shapes.push(Shape {
            name: "2000-task chain".into(),
            spec: chain("long", 2_000),
            runs: 1,
            tasks: 2_000,
            steps: Some(2_000),
        });
    }
    shapes
}

/// A 3-task chain whose first task waits for worker group `held`, which has no worker: each run
/// stays active, its first task queued in the master, until the deployment is torn down.
fn held(name: &str) -> String {
    format!(
        "name: {name}\ntasks:\n  - {{ name: t0, command: 'true', worker_group: held, worker_group_wait: 24h }}\n{}{}",
        task("t1", &["t0".to_string()]),
        task("t2", &["t1".to_string()])
    )
}

/// A process the benchmark started, killed when dropped.
struct Proc {
    label: String,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(label: &str, bin: &Path, args: &[String], log: &Path) -> Proc {
    let file = std::fs::File::create(log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
    let child = Command::new(bin)
        .args(args)
        .env("PORPOISE_ADMIN_TOKEN", TOKEN)
        .env("PORPOISE_ALLOW_ROOT_TASKS", "true")
        .env("PORPOISE_INSECURE", "true")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {}: {e} (build it: cargo build --release -p porpoise-cli)", bin.display())
        });
    Proc { label: label.to_string(), child }
}

/// CPU seconds (user + system) process `pid` has used itself, and its children that ended
/// (a worker's tasks).
fn cpu_seconds(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return (0.0, 0.0) };
    // after the command name in parentheses: state is field 3, utime 14, stime 15, cutime 16,
    // cstime 17 (clock ticks of 1/100 s)
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return (0.0, 0.0) };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ((ticks(11) + ticks(12)) / 100.0, (ticks(13) + ticks(14)) / 100.0)
}

/// CPU seconds of every Postgres server process.
fn postgres_cpu() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .map(|pid| cpu_seconds(pid).0)
        .sum()
}

/// Resident memory of `pid`, now and at its peak, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

async fn client(addr: &str) -> Option<AdminClient> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).ok()?.connect().await.ok()?;
    Some(AdminServiceClient::with_interceptor(channel, Bearer::new(Some(TOKEN)).ok()?))
}

/// What a deployment under benchmark offers.
struct Target {
    name: &'static str,
    addr: String,
    procs: Vec<Proc>,
    /// The database, for commit and statement counts (Postgres only).
    pg: Option<sqlx::PgPool>,
    _keep: Vec<Box<dyn std::any::Any>>,
}

async fn ready(addr: &str) -> AdminClient {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(mut c) = client(addr).await {
            let warm = c
                .apply_workflow(ApplyWorkflowRequest { spec_yaml: chain("warmup", 1), file_name: "warmup".into() })
                .await;
            if warm.is_ok() && run_to_end(&mut c, "warmup", 1).await.is_some() {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "the deployment at {addr} never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts `runs` runs of `workflow` (in calls of up to 1,000) and waits for all to end; the server-side makespan (first
/// created to last ended) in seconds, or `None` if any failed.
async fn run_to_end(client: &mut AdminClient, workflow: &str, runs: usize) -> Option<f64> {
    // as `porpoise run --count` does: up to 1,000 runs a call
    let mut ids = Vec::new();
    while ids.len() < runs {
        let count = (runs - ids.len()).min(1000) as u32;
        let request = StartRunRequest { workflow_name: workflow.into(), count, ..Default::default() };
        ids.extend(client.start_run(request).await.ok()?.into_inner().run_ids);
    }
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let request = ListRunsRequest { workflow_name: workflow.into(), limit: runs as u32 + 10, state: String::new() };
        let listed = client.list_runs(request).await.ok()?.into_inner().runs;
        let ours: Vec<_> = listed.iter().filter(|r| ids.contains(&r.run_id)).collect();
        if ours.len() == runs && ours.iter().all(|r| r.ended_at_ms > 0) {
            if ours.iter().any(|r| r.state != "success") {
                return None;
            }
            let first = ours.iter().map(|r| r.created_at_ms).min()?;
            let last = ours.iter().map(|r| r.ended_at_ms).max()?;
            return Some((last - first) as f64 / 1000.0);
        }
        assert!(Instant::now() < deadline, "{workflow} did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Transactions that wrote (the next transaction id: read-only ones take none; the statistics
/// views lag by up to seconds) and statements run, in the benchmark's database.
async fn pg_counts(pg: &sqlx::PgPool) -> (i64, i64) {
    let commits: i64 = sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
        .fetch_one(pg)
        .await
        .unwrap_or(0);
    let statements: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pg)
    .await
    .unwrap_or(0);
    (commits, statements)
}

async fn standalone(bins: &Path, dir: &Path) -> Target {
    let addr = format!("127.0.0.1:{}", free_port());
    let args = vec![
        "standalone".to_string(),
        "--data-dir".into(),
        dir.join("standalone").display().to_string(),
        "--listen".into(),
        addr.clone(),
        "--slots".into(),
        "32".into(),
    ];
    let procs = vec![spawn("standalone", &bins.join("porpoise"), &args, &dir.join("standalone.log"))];
    Target { name: "standalone", addr, procs, pg: None, _keep: vec![] }
}

async fn cluster(bins: &Path, dir: &Path) -> Target {
    let pg = TestPostgres::start_durable();
    let url = pg.fresh_database().await;
    let pool = sqlx::PgPool::connect(&url).await.expect("connect to the benchmark's Postgres");
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(&pool).await.expect("pg_stat_statements");
    let etcd = TestEtcd::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let registry = ["--etcd".to_string(), etcd.endpoint(), "--etcd-root".into(), "/bench".into()];
    let mut master_args = vec!["--listen".to_string(), addr.clone(), "--database-url".into(), url];
    master_args.extend(registry.iter().cloned());
    let mut procs = vec![spawn("master", &bins.join("porpoise-master"), &master_args, &dir.join("master.log"))];
    for n in 1..=2 {
        let mut args = vec![
            "--listen".to_string(),
            format!("127.0.0.1:{}", free_port()),
            "--slots".into(),
            "16".into(),
            "--data-dir".into(),
            dir.join(format!("worker-{n}")).display().to_string(),
        ];
        args.extend(registry.iter().cloned());
        procs.push(spawn(
            &format!("worker-{n}"),
            &bins.join("porpoise-worker"),
            &args,
            &dir.join(format!("worker-{n}.log")),
        ));
    }
    Target { name: "cluster", addr, procs, pg: Some(pool), _keep: vec![Box::new(pg), Box::new(etcd)] }
}

/// The `n` statements run most since the last reset, with their calls per task.
async fn top_statements(pg: &sqlx::PgPool, n: i64, tasks: f64) {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT calls, query FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         ORDER BY calls DESC LIMIT $1",
    )
    .bind(n)
    .fetch_all(pg)
    .await
    .unwrap_or_default();
    for (calls, query) in rows {
        let query: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
        let short: String = query.chars().take(110).collect();
        println!("  - {:.2}/task: `{short}`", calls as f64 / tasks);
    }
}

/// Starts `runs` runs that stay active (see [`held`]), waits until the server lists them all
/// running, and prints how long that took and the first process's (the master's) memory.
async fn hold(client: &mut AdminClient, target: &Target, runs: usize) {
    client
        .apply_workflow(ApplyWorkflowRequest { spec_yaml: held("held"), file_name: "held".into() })
        .await
        .expect("apply the held shape");
    let started = Instant::now();
    let mut ids = 0;
    while ids < runs {
        let count = (runs - ids).min(1000) as u32;
        let request = StartRunRequest { workflow_name: "held".into(), count, ..Default::default() };
        ids += client.start_run(request).await.expect("start held runs").into_inner().run_ids.len();
    }
    // a run is `submitted` until its runner starts it
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let request = ListRunsRequest { workflow_name: "held".into(), limit: 1, state: "submitted".into() };
        if client.list_runs(request).await.expect("list held runs").into_inner().runs.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the held runs did not all start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed().as_secs_f64();
    let (now, peak) = memory_mib(target.procs[0].child.id());
    println!(
        "- {runs} active runs (a 3-task chain each, its first task queued for a worker group with no worker): \
         all running {took:.1} s after the first was asked for; {} {now:.1} MiB resident (peak {peak:.1})",
        target.procs[0].label
    );
}

async fn bench(target: Target, shapes: &[Shape], show_statements: bool, held_runs: usize) {
    let mut client = ready(&target.addr).await;
    println!("\n## {} ({})", target.name, target.procs.iter().map(|p| p.label.as_str()).collect::<Vec<_>>().join(", "));
    for p in &target.procs {
        let (now, _) = memory_mib(p.child.id());
        println!("- {} idle: {now:.1} MiB resident", p.label);
    }
    println!();
    println!(
        "| shape | makespan | per step or task | tasks/s | CPU ms/task ({}, the tasks{}) | write commits/task | statements/task |",
        target.procs.iter().map(|p| p.label.as_str()).collect::<Vec<_>>().join(", "),
        if target.pg.is_some() { ", postgres" } else { "" }
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for shape in shapes {
        let name = shape.spec.lines().next().and_then(|l| l.strip_prefix("name: ")).unwrap_or("x").to_string();
        client
            .apply_workflow(ApplyWorkflowRequest { spec_yaml: shape.spec.clone(), file_name: name.clone() })
            .await
            .expect("apply the shape");
        let cpu_before: Vec<(f64, f64)> = target.procs.iter().map(|p| cpu_seconds(p.child.id())).collect();
        let pg_cpu_before = postgres_cpu();
        let pg_before = match &target.pg {
            Some(pg) => {
                if show_statements {
                    let _ = sqlx::query("SELECT pg_stat_statements_reset()").execute(pg).await;
                }
                Some(pg_counts(pg).await)
            }
            None => None,
        };
        let Some(makespan) = run_to_end(&mut client, &name, shape.runs).await else {
            println!("| {} | a run failed | | | | | |", shape.name);
            continue;
        };
        let tasks = (shape.runs * shape.tasks) as f64;
        let used: Vec<(f64, f64)> = target
            .procs
            .iter()
            .zip(&cpu_before)
            .map(|(p, before)| {
                let now = cpu_seconds(p.child.id());
                (now.0 - before.0, now.1 - before.1)
            })
            .collect();
        let mut cpu: Vec<String> = used.iter().map(|u| format!("{:.2}", u.0 * 1000.0 / tasks)).collect();
        cpu.push(format!("{:.2}", used.iter().map(|u| u.1).sum::<f64>() * 1000.0 / tasks));
        let (commits, statements) = match (&target.pg, pg_before) {
            (Some(pg), Some((c0, s0))) => {
                cpu.push(format!("{:.2}", (postgres_cpu() - pg_cpu_before) * 1000.0 / tasks));
                let (c1, s1) = pg_counts(pg).await;
                (format!("{:.2}", (c1 - c0) as f64 / tasks), format!("{:.2}", (s1 - s0) as f64 / tasks))
            }
            _ => ("-".to_string(), "-".to_string()),
        };
        let per = match shape.steps {
            Some(steps) => format!("{:.2} ms/step", makespan * 1000.0 / steps as f64),
            None => format!("{:.2} ms/task", makespan * 1000.0 / tasks),
        };
        println!(
            "| {} | {:.3} s | {per} | {:.0} | {} | {commits} | {statements} |",
            shape.name,
            makespan,
            tasks / makespan,
            cpu.join(" / ")
        );
        if let (true, Some(pg)) = (show_statements, &target.pg) {
            top_statements(pg, 15, tasks).await;
        }
    }
    println!();
    for p in &target.procs {
        let (_, peak) = memory_mib(p.child.id());
        println!("- {} peak: {peak:.1} MiB resident", p.label);
    }
    if held_runs > 0 {
        hold(&mut client, &target, held_runs).await;
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("porpoise-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a working directory");
    let mut shapes = shapes(args.quick);
    let mut held_runs = if args.quick { 50 } else { 10_000 };
    if let Some(only) = &args.only {
        shapes.retain(|s| s.name.contains(only.as_str()));
        if !format!("{held_runs} active runs").contains(only.as_str()) {
            held_runs = 0;
        }
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# porpoise-bench{} on {cpus} CPUs", if args.quick { " --quick" } else { "" });
    if args.mode != "cluster" {
        bench(standalone(&args.bin_dir, &dir).await, &shapes, args.statements, held_runs).await;
    }
    if args.mode != "standalone" {
        bench(cluster(&args.bin_dir, &dir).await, &shapes, args.statements, held_runs).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
