//! Task timeouts as a user sees them, through the real binaries, on a cluster and in
//! standalone: `warn` lets the task run on to its own end and says so (a log line, a counter, a
//! warning in `porpoise status`); `fail` kills every process of the task and fails it;
//! `warnfail` does both.

mod common;

use common::{Deployment, lines, run_id};
use porpoise_testkit::processes_named;

fn spec(strategy: &str, command: &str) -> String {
    format!(
        "name: slow\ntasks:\n  - name: slow\n    timeout: 1s\n    timeout_strategy: {strategy}\n    command: {command}\n"
    )
}

async fn warn_lets_the_task_run_on_and_says_so(mut d: Deployment) {
    let (gate, marks) = (d.path("gate"), d.path("marks"));
    // the task runs until the test opens the gate: well past its timeout, however slow the machine
    let command = format!("{}; echo done >> {}", common::hold_until(&gate), marks.display());
    d.apply("slow", &spec("warn", &command));
    let id = d.start_run("slow").await;
    d.wait_for_run(id, "the overrun to be marked on the running task", |r| {
        r.tasks.iter().any(|t| t.state == "running" && t.warning.contains("ran past its timeout of 1s"))
    })
    .await;
    std::fs::write(&gate, "").expect("open the gate");
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}");
    let task = &run.tasks[0];
    assert_eq!((task.state.as_str(), task.exit_code), ("success", Some(0)));
    assert_eq!(task.warning, "attempt 1 ran past its timeout of 1s; it runs on (timeout_strategy warn)");
    assert_eq!(lines(&marks), ["done"], "the task ran to its own end, once");

    let out = d.porpoise(&["status", &id.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("warning: task slow ({}): attempt 1 ran past its timeout of 1s", task.task_instance_id)),
        "{text}"
    );
    let logs = d.logs_text();
    let line = logs.lines().find(|l| l.contains("task ran past its timeout")).unwrap_or_else(|| panic!("{logs}"));
    assert!(
        line.contains(&format!("run_id={id}")) && line.contains("task=slow"),
        "the line names run and task: {line}"
    );
    if d.metrics.is_some() {
        let metrics = d.metrics_text().await;
        assert_eq!(common::metric(&metrics, r#"porpoise_tasks_timed_out_total{strategy="warn"}"#), 1.0);
    }
}

/// A task that starts a background `sleep` named `name`, then sleeps past its timeout.
fn sprawling(name: &str, marks: &std::path::Path) -> String {
    format!(
        "bash -c 'exec -a {name} sleep 300' & echo started >> {m}; sleep 300; echo done >> {m}",
        m = marks.display()
    )
}

async fn fail_and_warnfail_kill_every_process_and_fail_the_task(d: Deployment) {
    for strategy in ["fail", "warnfail"] {
        let marks = d.path(&format!("marks-{strategy}"));
        let name = format!("porpoise-e2e-{}-{strategy}", std::process::id());
        d.apply("slow", &spec(strategy, &sprawling(&name, &marks)));
        let out = d.porpoise(&["run", "slow", "--wait"]);
        assert_eq!(out.status.code(), Some(1), "{strategy}: the run fails");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("task slow failed: timed out after 1s"), "{strategy}: {stderr}");
        assert_eq!(processes_named(&name), Vec::<String>::new(), "{strategy}: a process of the task survived");
        assert_eq!(lines(&marks), ["started"], "{strategy}: the task was killed before its end");

        let id = run_id(&out);
        let out = d.porpoise(&["status", &id.to_string(), "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
        let task = &status["tasks"][0];
        assert_eq!(task["state"], "failure", "{strategy}");
        match strategy {
            "fail" => assert_eq!(task["warning"], serde_json::Value::Null, "fail does not warn"),
            _ => assert_eq!(
                task["warning"],
                "attempt 1 ran past its timeout of 1s; it was killed (timeout_strategy warnfail)"
            ),
        }
    }
    if d.metrics.is_some() {
        let metrics = d.metrics_text().await;
        assert_eq!(common::metric(&metrics, r#"porpoise_tasks_timed_out_total{strategy="fail"}"#), 1.0);
        assert_eq!(common::metric(&metrics, r#"porpoise_tasks_timed_out_total{strategy="warnfail"}"#), 1.0);
    }
}

/// A timeout with retries (DolphinScheduler's #11796 lost them): every attempt that times out
/// is retried after its interval, until the retries run out.
async fn each_timed_out_attempt_is_retried_after_its_interval(d: Deployment) {
    let marks = d.path("marks");
    let yaml = format!(
        "name: stubborn\ntasks:\n  - name: stubborn\n    timeout: 1s\n    retries: 2\n    retry_interval: 1s\n    command: echo $(date +%s%N) >> {m}; sleep 300\n",
        m = marks.display()
    );
    d.apply("stubborn", &yaml);
    let out = d.porpoise(&["run", "stubborn", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "the run fails once the retries are used up");
    let starts: Vec<u128> = lines(&marks).iter().map(|l| l.parse().expect("a timestamp")).collect();
    assert_eq!(starts.len(), 3, "the first attempt and two retries: {starts:?}");
    for pair in starts.windows(2) {
        let gap_ms = (pair[1] - pair[0]) / 1_000_000;
        assert!(gap_ms >= 2000, "each retry came after the timeout (1s) and the interval (1s): {gap_ms} ms");
    }
    let id = run_id(&out);
    let out = d.porpoise(&["status", &id.to_string(), "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(
        (status["tasks"][0]["state"].as_str(), status["tasks"][0]["attempt"].as_i64()),
        (Some("failure"), Some(3))
    );
}

common::both_modes!(
    warn_lets_the_task_run_on_and_says_so,
    fail_and_warnfail_kill_every_process_and_fail_the_task,
    each_timed_out_attempt_is_retried_after_its_interval
);
