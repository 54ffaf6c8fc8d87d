//! A workflow runs end to end through the real binaries: on a cluster (master and worker as
//! separate processes on Postgres and etcd) and in standalone mode.

mod common;

use std::collections::{HashMap, HashSet};

use common::{Deployment, lines, run_id};
use porpoise_proto::v1::{GetRunRequest, StartRunRequest};

fn diamond(marks: &str) -> String {
    format!(
        r#"name: diamond
params: {{ day: "2026-01-01" }}
tasks:
  - name: a
    command: echo "a ${{day}}"; echo a >> {marks}
  - name: b
    depends_on: [a]
    command: sleep 0.2; echo "b ${{day}}"; echo b >> {marks}
  - name: c
    depends_on: [a]
    command: echo "c $day"; echo c >> {marks}
  - name: d
    depends_on: [b, c]
    command: echo "d ${{day}}"; echo d >> {marks}
"#
    )
}

async fn diamond_runs_in_order_with_params_and_logs(d: Deployment) {
    let marks = d.path("marks");
    d.apply("diamond", &diamond(&marks.display().to_string()));
    let out = d.porpoise(&["run", "diamond", "--param", "day=2026-02-03", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "run --wait: {}\n{}", String::from_utf8_lossy(&out.stderr), d.logs_text());
    let id = run_id(&out);

    let out = d.porpoise(&["status", &id.to_string(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert_eq!(status["state"], "success");
    let tasks: HashMap<String, serde_json::Value> = status["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| (t["task"].as_str().expect("name").to_string(), t.clone()))
        .collect();
    assert_eq!(tasks.len(), 4);
    for (name, t) in &tasks {
        assert_eq!(t["state"], "success", "{name}");
        assert_eq!(t["attempt"], 1, "{name}");
        assert_eq!(t["exit_code"], 0, "{name}");
        assert!(t["worker"].as_str().is_some_and(|w| !w.is_empty()), "{name} records its worker");
    }
    let ms = |name: &str, field: &str| tasks[name][field].as_i64().expect("time");
    assert!(ms("d", "started_at_ms") >= ms("b", "ended_at_ms"), "d started before b ended");
    assert!(ms("d", "started_at_ms") >= ms("c", "ended_at_ms"), "d started before c ended");
    assert_eq!(lines(&marks).last().map(String::as_str), Some("d"));
    assert_eq!(lines(&marks).len(), 4, "each task ran once");

    // the database says the same
    let states = d.query_strings("SELECT state FROM task_instance WHERE workflow_instance_id = $1", id).await;
    assert_eq!(states, ["success"; 4]);
    let run_state = d.query_strings("SELECT state FROM workflow_instance WHERE id = $1", id).await;
    assert_eq!(run_state, ["success"]);

    for name in ["a", "b", "c", "d"] {
        let ti = tasks[name]["task_instance_id"].as_i64().expect("id").to_string();
        let out = d.porpoise(&["logs", &ti]);
        assert!(out.status.success(), "logs {name}: {}", String::from_utf8_lossy(&out.stderr));
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(log.contains(&format!("{name} 2026-02-03")), "{name}'s log holds its output with the param: {log:?}");
    }
}

fn failing(marks: &str) -> String {
    format!(
        r#"name: failing
tasks:
  - name: first
    command: echo first >> {marks}
  - name: broken
    depends_on: [first]
    command: echo broken >> {marks}; exit 3
  - name: after-broken
    depends_on: [broken]
    command: echo after-broken >> {marks}
  - name: sibling
    depends_on: [first]
    command: sleep 0.3; echo sibling >> {marks}
"#
    )
}

async fn a_failing_task_fails_the_run(d: Deployment) {
    let marks = d.path("marks");
    d.apply("failing", &failing(&marks.display().to_string()));
    let out = d.porpoise(&["run", "failing", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "run --wait exits 1 on failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("task broken failed with exit code 3"), "{stderr}");
    let id = run_id(&out);
    let ran = lines(&marks);
    assert!(!ran.contains(&"after-broken".to_string()), "a task downstream of the failure ran: {ran:?}");
    assert!(ran.contains(&"sibling".to_string()), "the running sibling was let finish: {ran:?}");
    let states = d.query_strings("SELECT state FROM workflow_instance WHERE id = $1", id).await;
    assert_eq!(states, ["failure"]);
    let names =
        d.query_strings("SELECT task_name FROM task_instance WHERE workflow_instance_id = $1 ORDER BY id", id).await;
    assert!(!names.contains(&"after-broken".to_string()), "{names:?}");
}

fn ten_tasks(marks: &str) -> String {
    let mut yaml = String::from("name: ten\ntasks:\n");
    let mark = format!("echo $PORPOISE_TASK_INSTANCE_ID >> {marks}");
    yaml.push_str(&format!("  - name: t0\n    command: {mark}\n"));
    for i in 1..9 {
        yaml.push_str(&format!("  - name: t{i}\n    depends_on: [t0]\n    command: {mark}\n"));
    }
    yaml.push_str(&format!("  - name: t9\n    depends_on: [t1, t2, t3, t4, t5, t6, t7, t8]\n    command: {mark}\n"));
    yaml
}

async fn two_hundred_concurrent_runs_each_task_once(mut d: Deployment) {
    const RUNS: usize = 200;
    let marks = d.path("marks");
    d.apply("ten", &ten_tasks(&marks.display().to_string()));
    let admin = d.admin().await;
    let mut starts = Vec::new();
    for _ in 0..RUNS {
        let mut admin = admin.clone();
        starts.push(tokio::spawn(async move {
            admin
                .start_run(StartRunRequest {
                    workflow_name: "ten".into(),
                    params: Default::default(),
                    priority: String::new(),
                    count: 1,
                })
                .await
                .expect("start run")
                .into_inner()
                .run_id
        }));
    }
    let mut ids = Vec::new();
    for s in starts {
        ids.push(s.await.expect("join"));
    }
    let mut task_ids = HashSet::new();
    for id in &ids {
        let run = d.finished_run(*id).await;
        assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "run {id}: {run:?}");
        assert_eq!(run.tasks.len(), 10);
        task_ids.extend(run.tasks.iter().map(|t| t.task_instance_id.to_string()));
    }
    let ran = lines(&marks);
    let unique: HashSet<String> = ran.iter().cloned().collect();
    assert_eq!(ran.len(), RUNS * 10, "every task ran exactly once (no more, no less)");
    assert_eq!(unique, task_ids, "the markers are exactly the task instances");
    let mut admin = d.admin().await;
    let one = admin.get_run(GetRunRequest { run_id: ids[0] }).await.expect("get").into_inner();
    assert!(one.tasks.iter().all(|t| t.attempt == 1));
}

async fn bad_input_is_refused_and_changes_nothing(d: Deployment) {
    let file = d.path("cycle.yaml");
    std::fs::write(&file, "name: cyclic\ntasks:\n  - name: a\n    command: echo\n    depends_on: [b]\n  - name: b\n    command: echo\n    depends_on: [a]\n").expect("write");
    let out = d.porpoise(&["workflow", "apply", "-f", file.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dependency cycle: a -> b -> a"), "{stderr}");
    let list = d.porpoise(&["workflow", "list"]);
    assert!(list.status.success(), "workflow list: {}", String::from_utf8_lossy(&list.stderr));
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.starts_with("WORKFLOW"), "{listed}");
    assert!(!listed.contains("cyclic"), "an invalid spec is not stored: {listed}");
    let out = d.porpoise(&["run", "cyclic"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no workflow named \"cyclic\""));
    let out = d.porpoise(&["status", "424242"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run 424242"));
    let out = d.porpoise(&["run", "cyclic", "--param", "oops"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not name=value"));
}

/// `run --count N` starts N runs in one call and prints their ids; `--wait` waits for all of
/// them and says which did not succeed; a count out of range is refused and starts nothing.
async fn many_runs_start_in_one_call_and_are_waited_for(d: Deployment) {
    let marks = d.path("marks");
    let yaml = format!(
        "name: many\ntasks:\n  - name: mark\n    command: echo $PORPOISE_TASK_INSTANCE_ID >> {}\n",
        marks.display()
    );
    d.apply("many", &yaml);
    let out = d.porpoise(&["run", "many", "--count", "5", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let ids: Vec<i64> = String::from_utf8_lossy(&out.stdout).lines().map(|l| l.parse().expect("a run id")).collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 5, "five distinct runs: {ids:?}");
    for id in &ids {
        let state = d.query_strings("SELECT state FROM workflow_instance WHERE id = $1", *id).await;
        assert_eq!(state, ["success"], "run {id} had ended when --wait returned");
    }
    assert_eq!(lines(&marks).len(), 5, "each run ran its task once");

    d.apply("doomed", "name: doomed\ntasks:\n  - name: fail\n    command: exit 7\n");
    let out = d.porpoise(&["run", "doomed", "--count", "2", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 of 2 runs did not succeed"), "{stderr}");

    for count in ["0", "1001", "x"] {
        let out = d.porpoise(&["run", "many", "--count", count]);
        assert_eq!(out.status.code(), Some(2), "--count {count}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--count"), "the error names --count: {stderr}");
    }
    let runs = d
        .query_strings(
            "SELECT CAST(COUNT(*) AS TEXT) FROM workflow_instance WHERE workflow_name = 'many' AND id > $1",
            0,
        )
        .await;
    assert_eq!(runs, ["5"], "a refused count started nothing");
}

/// A task that fails its first attempt is retried after its interval (it waits `delayed`), and
/// its downstream task runs once it succeeds; a task whose retries run out fails the run.
async fn failed_attempts_are_retried_until_retries_run_out(mut d: Deployment) {
    let marks = d.path("marks");
    let m = marks.display();
    d.apply(
        "flaky",
        &format!(
            "name: flaky\ntasks:\n  - name: flaky\n    retries: 2\n    retry_interval: 3s\n    command: echo \"flaky $PORPOISE_ATTEMPT\" >> {m}; [ $PORPOISE_ATTEMPT -ge 2 ]\n  - name: after\n    depends_on: [flaky]\n    command: echo after >> {m}\n"
        ),
    );
    let id = d.start_run("flaky").await;
    d.wait_for_run(id, "the failed attempt waits out its retry interval", |run| {
        run.tasks.iter().any(|t| t.task_name == "flaky" && t.state == "delayed" && t.attempt == 1)
    })
    .await;
    assert_eq!(lines(&marks), ["flaky 1"], "nothing ran during the retry interval");
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}");
    let flaky = run.tasks.iter().find(|t| t.task_name == "flaky").expect("flaky");
    assert_eq!((flaky.state.as_str(), flaky.attempt, flaky.exit_code), ("success", 2, Some(0)));
    assert_eq!(lines(&marks), ["flaky 1", "flaky 2", "after"]);

    let marks = d.path("marks-hopeless");
    d.apply(
        "hopeless",
        &format!("name: hopeless\ntasks:\n  - name: hopeless\n    retries: 1\n    retry_interval: 0s\n    command: echo $PORPOISE_ATTEMPT >> {}; exit 4\n", marks.display()),
    );
    let out = d.porpoise(&["run", "hopeless", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("task hopeless failed with exit code 4"));
    let run = d.finished_run(run_id(&out)).await;
    assert_eq!((run.tasks[0].state.as_str(), run.tasks[0].attempt), ("failure", 2));
    assert_eq!(lines(&marks), ["1", "2"], "one first attempt and one retry, no more");
}

/// Like `ls | head`: a reader that goes away ends a command quietly, never with a panic.
async fn output_into_a_closed_pipe_ends_quietly(d: Deployment) {
    d.apply("hello", "name: hello\ntasks:\n  - name: greet\n    command: echo hello\n");
    let out = d.porpoise(&["run", "hello", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = run_id(&out).to_string();
    let ti = d
        .query_strings(
            "SELECT CAST(id AS TEXT) FROM task_instance WHERE workflow_instance_id = $1",
            id.parse().expect("id"),
        )
        .await;
    let spec = d.path("hello.yaml");
    let spec = spec.to_str().expect("utf-8");
    let commands: [&[&str]; 7] = [
        &["status", &id],
        &["status", &id, "--json"],
        &["workflow", "list"],
        &["workflow", "validate", "-f", spec],
        &["workflow", "apply", "-f", spec],
        &["logs", &ti[0]],
        &["run", "hello"],
    ];
    for args in commands {
        let out = d.porpoise_into_closed_pipe(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "porpoise {args:?}: {stderr}");
        assert_eq!(stderr, "", "porpoise {args:?} printed to stderr");
    }
}

common::both_modes!(
    diamond_runs_in_order_with_params_and_logs,
    a_failing_task_fails_the_run,
    two_hundred_concurrent_runs_each_task_once,
    many_runs_start_in_one_call_and_are_waited_for,
    bad_input_is_refused_and_changes_nothing,
    output_into_a_closed_pipe_ends_quietly,
    failed_attempts_are_retried_until_retries_run_out,
);
