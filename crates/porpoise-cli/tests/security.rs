//! Hostile input, through the real binaries: params that try to run code or change how bash
//! behaves, specs built to stall the parser or that could never run, names that read as flags.

mod common;

use std::time::Instant;

use common::{ClusterOptions, Deployment};
use porpoise_proto::v1::task_event_service_client::TaskEventServiceClient;
use porpoise_proto::v1::{AckStatus, ApplyWorkflowRequest, GetRunRequest, ReportTaskEventsRequest, TaskEvent};
use porpoise_testkit::TestPostgres;
use tonic::transport::Channel;

/// Runs `porpoise ARGS`; returns (exit code, stdout, stderr).
fn cli(d: &Deployment, args: &[&str]) -> (i32, String, String) {
    let out = d.porpoise(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The log of task `name` of run `id`.
async fn log_of(d: &mut Deployment, id: i64, name: &str) -> String {
    let run = d.finished_run(id).await;
    let ti = run.tasks.iter().find(|t| t.task_name == name).expect("the task").task_instance_id;
    let (code, out, err) = cli(d, &["logs", &ti.to_string()]);
    assert_eq!(code, 0, "{err}");
    out
}

/// `--param 'day=$(touch F)'` runs nothing, wherever `${day}` stands in the command: the task
/// prints the text. Names that would change how bash or the loader behave are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_are_data_not_code() {
    let mut d = Deployment::standalone().await;
    let canary = d.path("F");
    let yaml = "name: quoting\ntasks:\n  - name: a\n    command: |\n      echo \"day=${day}\"\n      echo ${day}\n      echo '${day}'\n";
    d.apply("quoting", yaml);
    let hostile = format!("$(touch {})", canary.display());
    let param = format!("day={hostile}");
    let (code, out, err) = cli(&d, &["run", "quoting", "--param", &param, "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    let id: i64 = out.trim().parse().expect("a run id");
    let log = log_of(&mut d, id, "a").await;
    assert!(!canary.exists(), "a param ran as code");
    assert_eq!(log, format!("day={hostile}\n{hostile}\n{hostile}\n"));

    // reserved names: refused at run time and at validate
    for name in ["BASH_ENV", "LD_PRELOAD", "PATH", "IFS", "PS4", "SHELLOPTS"] {
        let (code, _, err) = cli(&d, &["run", "quoting", "--param", &format!("{name}=/tmp/x")]);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(err.contains(&format!("param name \"{name}\" is reserved")), "{err}");
    }
    let spec = d.path("bash-env.yaml");
    std::fs::write(&spec, "name: sneaky\nparams: { BASH_ENV: /tmp/x }\ntasks:\n  - { name: a, command: 'true' }\n")
        .expect("write");
    let (code, _, err) = cli(&d, &["workflow", "validate", "-f", &spec.display().to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("field \"params\": param name \"BASH_ENV\" is reserved"), "{err}");

    // raw_params: the author's opt-in pastes the text as written
    let yaml = "name: raw\ntasks:\n  - name: a\n    command: echo ${clause}\n    raw_params: [clause]\n";
    d.apply("raw", yaml);
    let (code, out, err) = cli(&d, &["run", "raw", "--param", "clause=one; echo two", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    let id: i64 = out.trim().parse().expect("a run id");
    assert_eq!(log_of(&mut d, id, "a").await, "one\ntwo\n");
}

/// Specs built to stall a master or that could never run are refused at once, with the limit
/// named, by `validate` and by the master itself (a request sent straight to AdminService).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_specs_are_refused_naming_the_limit() {
    let d = Deployment::standalone().await;
    let deep = format!("name: deep\ntasks: {}{}\n", "[".repeat(60_000), "]".repeat(60_000));
    let compact = format!("name: deep\ntasks:\n  {}x\n", "- ".repeat(60_000));
    let mut admin = d.admin().await;
    for spec in [&deep, &compact] {
        let began = Instant::now();
        let refused = admin
            .apply_workflow(ApplyWorkflowRequest { spec_yaml: spec.clone(), file_name: "deep.yaml".into() })
            .await
            .expect_err("refused");
        // for the record (not asserted: timing belongs to benchmarks)
        eprintln!("a 60,000-level spec was refused in {:?}", began.elapsed());
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("nests deeper than 64 levels"), "{}", refused.message());
        let file = d.path("deep.yaml");
        std::fs::write(&file, spec).expect("write");
        let (code, _, err) = cli(&d, &["workflow", "validate", "-f", &file.display().to_string()]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("deep.yaml:") && err.contains("nests deeper than 64 levels"), "{err}");
    }

    // a command longer than one exec argument may be
    let long = d.path("long.yaml");
    let command = format!("echo {}", "x".repeat(200_000));
    std::fs::write(&long, format!("name: long\ntasks:\n  - name: a\n    command: {command}\n")).expect("write");
    let (code, _, err) = cli(&d, &["workflow", "validate", "-f", &long.display().to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("long.yaml:4: task \"a\", field \"command\"") && err.contains("at most 131071 (128 KiB)"),
        "{err}"
    );

    // a spec over 1 MiB is refused before it is read
    let big = d.path("big.yaml");
    std::fs::write(
        &big,
        format!("name: big\ndescription: {}\ntasks:\n  - {{ name: a, command: 'true' }}\n", "x".repeat(5 << 20)),
    )
    .expect("write");
    for verb in ["validate", "apply"] {
        let (code, _, err) = cli(&d, &["workflow", verb, "-f", &big.display().to_string()]);
        assert_eq!(code, 2, "{verb}: {err}");
        assert!(err.contains("a spec may have at most 1048576 (1 MiB)"), "{verb}: {err}");
    }

    // names that read as flags or directories
    for name in ["-rf", ".", "..", ".hidden"] {
        let file = d.path("name.yaml");
        std::fs::write(&file, format!("name: '{name}'\ntasks:\n  - {{ name: a, command: 'true' }}\n")).expect("write");
        let (code, _, err) = cli(&d, &["workflow", "validate", "-f", &file.display().to_string()]);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(err.contains("must start with a letter or a digit"), "{name}: {err}");
    }

    // nothing of the above was stored
    let (code, out, _) = cli(&d, &["workflow", "list", "--json"]);
    assert_eq!((code, out.trim()), (0, "[]"));

    // `apply -f -` reads standard input
    let out = d.porpoise_with_input(
        &["workflow", "apply", "-f", "-"],
        b"name: piped\ntasks:\n  - { name: a, command: 'true' }\n",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied: workflow piped version 1"));
    let out = d.porpoise_with_input(&["workflow", "validate", "-f", "-"], deep.as_bytes());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(standard input):2: the spec nests deeper than 64 levels"));
}

/// A TaskEventService client whose connections come from `local` (any of 127/8 is loopback).
async fn events_from(server: &str, local: &str) -> TaskEventServiceClient<Channel> {
    let endpoint = Channel::from_shared(server.to_string()).expect("the master's address");
    let channel = endpoint.local_address(Some(local.parse().expect("an address"))).connect().await.expect("connect");
    TaskEventServiceClient::new(channel)
}

/// Forged RESULT SUCCESS events for a running attempt: from an address that is not the
/// worker's (refused outright), and in the name of a worker that does not hold the attempt
/// (dropped and dead-lettered). Nothing changes, each is counted, and the task ends with its
/// real result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_results_change_nothing_and_are_counted() {
    let options = ClusterOptions { workers: Some(2), ..Default::default() };
    let mut d = Deployment::cluster_on(TestPostgres::shared(), options).await;
    let gate = d.path("gate");
    common::close_gate(&gate);
    let marks = d.path("marks");
    let yaml = format!(
        "name: held\ntasks:\n  - name: one\n    command: '{hold}; echo one >> {marks}'\n  - name: two\n    depends_on: [one]\n    command: echo two >> {marks}\n",
        hold = common::wait_at(&gate),
        marks = marks.display()
    );
    d.apply("held", &yaml);
    let id = d.start_run("held").await;
    d.wait_for_run(id, "task one runs", |run| run.tasks.iter().any(|t| t.task_name == "one" && t.state == "running"))
        .await;
    let run = d.admin().await.get_run(GetRunRequest { run_id: id }).await.expect("get").into_inner();
    let one = run.tasks.iter().find(|t| t.task_name == "one").expect("one").clone();
    let holder = one.worker_addr.clone();
    let other = d.worker_addrs.keys().find(|w| **w != holder).expect("the other worker").clone();
    let forged = |n: &str| common::success_event(n, id, one.task_instance_id, 1);

    // from 127.0.0.2, in the holder's name: not the holder's address
    let mut outsider = events_from(&d.server, "127.0.0.2").await;
    let refused = outsider
        .report_task_events(ReportTaskEventsRequest { worker_addr: holder.clone(), events: vec![forged("outsider")] })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("cannot speak for worker"), "{}", refused.message());

    // from the right host, in the name of a worker that does not hold the attempt
    let mut insider = events_from(&d.server, "127.0.0.1").await;
    for (n, name) in [("other-worker", other.as_str()), ("made-up", "127.0.0.1:1")] {
        let reply = insider
            .report_task_events(ReportTaskEventsRequest { worker_addr: name.to_string(), events: vec![forged(n)] })
            .await
            .expect("answered")
            .into_inner();
        let ack = &reply.acks[0];
        assert_eq!(ack.status, AckStatus::Handled as i32);
        let says = format!("worker {name} does not hold attempt 1 (it is on {holder})");
        assert!(ack.message.contains(&says), "{ack:?}");
    }

    let now = d.admin().await.get_run(GetRunRequest { run_id: id }).await.expect("get").into_inner();
    let one_now = now.tasks.iter().find(|t| t.task_name == "one").expect("one");
    assert_eq!((one_now.state.as_str(), one_now.worker_addr.as_str()), ("running", holder.as_str()), "{now:?}");
    assert!(now.tasks.iter().all(|t| t.task_name != "two"), "nothing downstream started: {now:?}");
    let metrics = d.metrics_text().await;
    assert_eq!(common::metric(&metrics, r#"porpoise_task_events_refused_total{reason="unauthenticated"}"#), 1.0);
    assert_eq!(
        common::metric(&metrics, r#"porpoise_task_events_refused_total{reason="not_the_attempts_worker"}"#),
        2.0
    );
    assert_eq!(d.dead_letters().await.len(), 2);

    // the real result still counts
    common::open_gate(&gate);
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}");
    assert_eq!(common::lines(&marks), ["one", "two"]);
    let one_after = run.tasks.iter().find(|t| t.task_name == "one").expect("one");
    assert_eq!((one_after.worker_addr.as_str(), one_after.attempt), (holder.as_str(), 1));
}

/// 20,000 malformed events in one batch from one worker: each is ACKed and counted, but the
/// dead-letter table gets only the first hundred or so and one row summarising the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_broken_events_is_summarised_not_stored_one_by_one() {
    const FLOOD: usize = 20_000;
    let d = Deployment::cluster_on(TestPostgres::shared(), ClusterOptions::default()).await;
    let worker = d.worker_addr.clone().expect("the worker's address");
    let events: Vec<TaskEvent> = (0..FLOOD)
        .map(|i| TaskEvent {
            event_id: format!("junk-{i}"),
            task_instance_id: i as i64 + 1,
            attempt: 1,
            workflow_instance_id: 1,
            kind: None,
        })
        .collect();
    let mut client = events_from(&d.server, "127.0.0.1").await;
    let reply = client
        .report_task_events(ReportTaskEventsRequest { worker_addr: worker.clone(), events })
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(reply.acks.len(), FLOOD);
    assert!(reply.acks.iter().all(|a| a.status == AckStatus::Handled as i32));
    let summary = format!("more dropped events from {worker} were not stored one by one");
    // the summary is written within ten seconds
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let letters = loop {
        let letters = d.dead_letters().await;
        if letters.iter().any(|l| l.contains(&summary)) {
            break letters;
        }
        assert!(Instant::now() < deadline, "the suppressed events were never summarised");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let (summaries, single): (Vec<&String>, Vec<&String>) = letters.iter().partition(|l| l.contains(&summary));
    assert!((100..1000).contains(&single.len()), "{} rows", single.len());
    let summarised: usize = summaries
        .iter()
        .map(|l| l.split_whitespace().next().and_then(|n| n.parse::<usize>().ok()).expect("a count"))
        .sum();
    assert_eq!(single.len() + summarised, FLOOD, "every event is in a row or a summary");
    let metrics = d.metrics_text().await;
    assert_eq!(common::metric(&metrics, "porpoise_task_events_rejected_total"), FLOOD as f64);
    assert_eq!(common::metric(&metrics, "porpoise_dead_letters_suppressed_total"), summarised as f64);
}

/// Outside standalone, AdminService answers only calls that carry a token, and a token does
/// only what its role allows; a deleted token stops working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_a_token_whose_role_allows_them() {
    let d = Deployment::cluster_on(TestPostgres::shared(), ClusterOptions::default()).await;
    let with = |token: &str, args: &[&str]| {
        let mut all = vec!["--token", token];
        all.extend_from_slice(args);
        cli(&d, &all)
    };
    d.apply("hello", "name: hello\ntasks:\n  - { name: a, command: 'true' }\n");

    let (code, _, err) = with("", &["workflow", "list"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("needs an API token: set PORPOISE_TOKEN"), "{err}");
    let (code, _, err) = with("pp_not-a-token", &["workflow", "list"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the API token is not valid"), "{err}");

    // the admin (the deployment's bootstrap token) makes a viewer and an operator
    let (code, viewer, err) = cli(&d, &["token", "create", "watcher", "--role", "viewer"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("shown only now"), "{err}");
    let viewer = viewer.trim().to_string();
    let (code, operator, err) = cli(&d, &["token", "create", "ci", "--role", "operator"]);
    assert_eq!(code, 0, "{err}");
    let operator = operator.trim().to_string();
    assert!(viewer.starts_with("pp_") && operator.starts_with("pp_") && viewer != operator);

    // a viewer reads, and cannot start a run
    let (code, out, err) = with(&viewer, &["workflow", "list"]);
    assert!(code == 0 && out.contains("hello"), "{out}{err}");
    let (code, _, err) = with(&viewer, &["run", "hello"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("token watcher is a viewer token: StartRun needs operator"), "{err}");
    // an operator runs, and cannot apply or make tokens
    let (code, out, err) = with(&operator, &["run", "hello", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    let spec = d.path("hello.yaml").display().to_string();
    let (code, _, err) = with(&operator, &["workflow", "apply", "-f", &spec]);
    assert!(code == 1 && err.contains("ApplyWorkflow needs admin"), "{err}");
    let (code, _, err) = with(&operator, &["token", "create", "sneaky", "--role", "admin"]);
    assert!(code == 1 && err.contains("CreateToken needs admin"), "{err}");

    // tokens are listed without their secrets, and a deleted one stops working
    let (code, out, _) = cli(&d, &["token", "list", "--json"]);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let names: Vec<(&str, &str)> = listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|t| (t["name"].as_str().unwrap_or(""), t["role"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(names, [("ci", "operator"), ("watcher", "viewer")]);
    assert!(!out.contains(&viewer) && !out.contains(&operator), "no secret is shown again");
    let (code, _, err) = cli(&d, &["token", "create", "ci", "--role", "viewer"]);
    assert!(code == 2 && err.contains("token ci exists already"), "{err}");
    let (code, _, err) = cli(&d, &["token", "delete", "watcher"]);
    assert_eq!(code, 0, "{err}");
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while with(&viewer, &["workflow", "list"]).0 == 0 {
        assert!(Instant::now() < deadline, "a deleted token kept working");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let metrics = d.metrics_text().await;
    assert!(common::metric(&metrics, r#"porpoise_admin_calls_refused_total{reason="role"}"#) >= 3.0, "{metrics}");
    assert!(common::metric(&metrics, r#"porpoise_admin_calls_refused_total{reason="no_token"}"#) >= 1.0);
    assert!(common::metric(&metrics, r#"porpoise_admin_calls_refused_total{reason="unknown_token"}"#) >= 2.0);
}

/// A task with `tenant: nobody` runs as `nobody`, in a working directory it owns (the worker
/// runs as root). A worker that is not root cannot switch users and refuses the task, saying
/// why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_as_its_tenant() {
    let mut d = Deployment::standalone().await;
    let yaml = "name: tenant\ntasks:\n  - name: who\n    tenant: nobody\n    command: id -un; touch mine && echo wrote; echo \"home=$HOME user=$USER\"\n";
    d.apply("tenant", yaml);
    let (code, out, err) = cli(&d, &["run", "tenant", "--wait"]);
    let id: i64 = out.trim().parse().expect("a run id");
    let run = d.finished_run(id).await;
    if nix_is_root() {
        assert_eq!(code, 0, "{out}{err}");
        let log = log_of(&mut d, id, "who").await;
        assert!(log.starts_with("nobody\nwrote\nhome="), "{log}");
        assert!(log.contains("user=nobody"), "{log}");
    } else {
        assert_eq!(code, 1, "{out}{err}");
        let who = run.tasks.iter().find(|t| t.task_name == "who").expect("who");
        assert_eq!(who.state, "failure", "{run:?}");
    }
}

fn nix_is_root() -> bool {
    // the owner of /proc/self is the process's effective user
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

/// A daemon of the mutual-TLS test, killed when dropped.
struct Node(std::process::Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node(binary: &str, args: &[String], log: std::path::PathBuf) -> Node {
    let file = std::fs::File::create(log).expect("a log file");
    let child = std::process::Command::new(binary)
        .args(args)
        .env("PORPOISE_ADMIN_TOKEN", common::ADMIN_TOKEN)
        .env("PORPOISE_ALLOW_ROOT_TASKS", "true")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start a daemon");
    Node(child)
}

/// Runs `porpoise ARGS` (no server needed); fails the test if it fails.
fn porpoise_ok(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_porpoise")).args(args).output().expect("run porpoise");
    assert!(out.status.success(), "porpoise {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A master and a worker over mutual TLS with certificates from `porpoise cert`: a run
/// completes, driven by the CLI over https. A worker takes no dispatch from a client without a
/// certificate of the cluster CA, with another CA's, or with a worker's; a master takes no task
/// event without a worker's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_take_calls_only_from_certificates_of_their_cluster() {
    use porpoise_proto::tls::{MASTER, Transport, WORKER};
    use porpoise_proto::v1::DispatchTaskRequest;
    use porpoise_proto::v1::worker_service_client::WorkerServiceClient;

    let dir = tempfile::tempdir().expect("a directory");
    let (tls, other) = (dir.path().join("tls"), dir.path().join("other"));
    let (tls_s, other_s) = (tls.display().to_string(), other.display().to_string());
    porpoise_ok(&["cert", "ca", "--dir", &tls_s]);
    porpoise_ok(&["cert", "node", "master", "--role", "master", "--host", "127.0.0.1", "--dir", &tls_s]);
    porpoise_ok(&["cert", "node", "worker", "--role", "worker", "--host", "127.0.0.1", "--dir", &tls_s]);
    porpoise_ok(&["cert", "node", "elsewhere", "--role", "worker", "--host", "10.9.9.9", "--dir", &tls_s]);
    let shared = porpoise_ok(&["cert", "node", "replicas", "--role", "worker", "--dir", &tls_s]);
    assert!(shared.contains("shared by replicas"), "{shared}");
    porpoise_ok(&["cert", "ca", "--dir", &other_s]);
    porpoise_ok(&["cert", "node", "master", "--role", "master", "--host", "127.0.0.1", "--dir", &other_s]);
    let file = |d: &std::path::Path, f: &str| d.join(f).display().to_string();
    let tls_args = |name: &str| {
        vec![
            "--tls-ca".to_string(),
            file(&tls, "ca.pem"),
            "--tls-cert".into(),
            file(&tls, &format!("{name}.pem")),
            "--tls-key".into(),
            file(&tls, &format!("{name}.key")),
        ]
    };

    let url = TestPostgres::shared().fresh_database().await;
    let etcd = porpoise_testkit::TestEtcd::shared().endpoint();
    let root = format!("/porpoise-mtls-{}", std::process::id());
    let master_addr = format!("127.0.0.1:{}", porpoise_testkit::free_port());
    let worker_addr = format!("127.0.0.1:{}", porpoise_testkit::free_port());
    let mut args = vec!["--listen".to_string(), master_addr.clone(), "--database-url".into(), url];
    args.extend(["--etcd".to_string(), etcd.clone(), "--etcd-root".into(), root.clone()]);
    args.extend(tls_args("master"));
    let _master = node(env!("CARGO_BIN_EXE_porpoise-master"), &args, dir.path().join("master.log"));
    let mut args = vec!["--listen".to_string(), worker_addr.clone(), "--data-dir".into(), file(dir.path(), "worker")];
    args.extend(["--etcd".to_string(), etcd, "--etcd-root".into(), root]);
    args.extend(tls_args("worker"));
    let _worker = node(env!("CARGO_BIN_EXE_porpoise-worker"), &args, dir.path().join("worker.log"));

    // the CLI over https, checking the master's certificate
    let spec = dir.path().join("hello.yaml");
    std::fs::write(&spec, "name: hello\ntasks:\n  - { name: a, command: 'echo over tls' }\n").expect("write");
    let server = format!("https://{master_addr}");
    let ca = file(&tls, "ca.pem");
    let cli = |args: &[&str]| {
        let mut all = vec!["--server", &server, "--tls-ca", &ca, "--token", common::ADMIN_TOKEN];
        all.extend_from_slice(args);
        std::process::Command::new(env!("CARGO_BIN_EXE_porpoise")).args(&all).output().expect("run porpoise")
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while !cli(&["workflow", "apply", "-f", &spec.display().to_string()]).status.success() {
        assert!(
            Instant::now() < deadline,
            "the master never answered over TLS:\n{}",
            std::fs::read_to_string(dir.path().join("master.log")).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = cli(&["run", "hello", "--wait"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run never completed over TLS: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.path().join("worker.log")).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }

    let dispatch = DispatchTaskRequest {
        task_instance_id: 999,
        attempt: 1,
        command: "touch /tmp/never".into(),
        master_addr: master_addr.clone(),
        ..Default::default()
    };
    let callers = [
        ("no TLS", Transport::Insecure),
        ("no certificate", Transport::server_checked(&tls.join("ca.pem")).expect("the CA")),
        (
            "another CA's master",
            Transport::tls(&tls.join("ca.pem"), &other.join("master.pem"), &other.join("master.key")).expect("certs"),
        ),
        (
            "a worker's certificate",
            Transport::tls(&tls.join("ca.pem"), &tls.join("worker.pem"), &tls.join("worker.key")).expect("certs"),
        ),
    ];
    for (who, transport) in callers {
        let endpoint = transport.endpoint(&worker_addr, WORKER).expect("an endpoint");
        let refused = match endpoint.connect().await {
            Err(_) => true,
            Ok(channel) => WorkerServiceClient::new(channel).dispatch_task(dispatch.clone()).await.is_err(),
        };
        assert!(refused, "a worker took a dispatch from {who}");
    }
    // a master's own certificate is what a worker takes (the check above can pass)
    let master_tls =
        Transport::tls(&tls.join("ca.pem"), &tls.join("master.pem"), &tls.join("master.key")).expect("certs");
    let channel = master_tls.endpoint(&worker_addr, WORKER).expect("endpoint").connect().await.expect("connect");
    let answer = WorkerServiceClient::new(channel)
        .dispatch_task(DispatchTaskRequest { command: String::new(), ..dispatch.clone() })
        .await
        .expect("a master's call is answered");
    assert_eq!(
        answer.into_inner().status,
        porpoise_proto::v1::DispatchStatus::Invalid as i32,
        "an empty command is refused as invalid"
    );

    // task events: only from a worker's certificate
    let event =
        ReportTaskEventsRequest { worker_addr: worker_addr.clone(), events: vec![common::success_event("x", 1, 1, 1)] };
    let worker_cert = |name: &str| {
        Transport::tls(&tls.join("ca.pem"), &tls.join(format!("{name}.pem")), &tls.join(format!("{name}.key")))
            .expect("certs")
    };
    for (who, transport) in [
        ("no certificate", Transport::server_checked(&tls.join("ca.pem")).expect("the CA")),
        ("a master's certificate", master_tls.clone()),
        ("a worker's certificate for another host", worker_cert("elsewhere")),
    ] {
        let channel = transport.endpoint(&master_addr, MASTER).expect("endpoint").connect().await.expect("connect");
        let refused =
            TaskEventServiceClient::new(channel).report_task_events(event.clone()).await.expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{who}: {refused:?}");
    }
    // the worker's own certificate, and one shared by replicas, are heard (the event itself is
    // then dropped: no such task)
    for name in ["worker", "replicas"] {
        let channel =
            worker_cert(name).endpoint(&master_addr, MASTER).expect("endpoint").connect().await.expect("connect");
        let reply = TaskEventServiceClient::new(channel).report_task_events(event.clone()).await;
        assert!(reply.is_ok(), "{name}: {reply:?}");
    }
}
