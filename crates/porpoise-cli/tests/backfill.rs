//! Backfills and serial execution on real processes: runs held `waiting` and released in turn
//! by whichever master looks.

mod common;

use std::path::Path;

use common::{Deployment, close_gate, markers, most_at_once, open_gate, wait_at};

/// Runs `porpoise ARGS`; returns (exit code, stdout, stderr).
fn cli(d: &Deployment, args: &[&str]) -> (i32, String, String) {
    let out = d.porpoise(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A workflow whose task marks `start DATE NS` and `end DATE NS` around `body`, DATE being its
/// run's `${system.biz.curdate}`.
fn dated(name: &str, body: &str, marks: &Path) -> String {
    format!(
        "name: {name}\ntasks:\n  - name: day\n    command: \"echo start ${{system.biz.curdate}} $(date +%s%N) >> {m}; {body}; echo end ${{system.biz.curdate}} $(date +%s%N) >> {m}\"\n",
        m = marks.display()
    )
}

/// `backfill status --json`, once the backfill has ended.
async fn ended_backfill(d: &Deployment, id: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let (code, out, err) = cli(d, &["backfill", "status", id, "--json"]);
        assert_eq!(code, 0, "{err}");
        let b: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        if b["state"] != "running" {
            return b;
        }
        assert!(std::time::Instant::now() < deadline, "backfill {id} did not end: {b:#}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The printed lines of `porpoise backfill`: its id, then (run id, schedule time) per date.
fn started(out: &str) -> (String, Vec<(String, String)>) {
    let mut lines = out.lines();
    let head = lines.next().unwrap_or_default();
    let id = head.trim_start_matches("backfill ").split(':').next().unwrap_or_default().to_string();
    let runs = lines
        .map(|l| {
            let (run, time) = l.split_once(' ').expect("RUN TIME");
            (run.to_string(), time.to_string())
        })
        .collect();
    (id, runs)
}

/// Ten days, one at a time (cluster): ten runs, each with its date as schedule time and
/// `${system.biz.curdate}`, in date order, never two at once; then a backfill that stops at a
/// failing date: the dates after it are stopped, the backfill failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_backfill_runs_each_date_in_order_and_stops_at_a_failing_one() {
    let d = Deployment::cluster().await;
    let marks = d.path("marks");
    d.apply("etl", &dated("etl", "sleep 0.2", &marks));
    let (code, out, err) = cli(&d, &["backfill", "etl", "--from", "2026-01-01", "--to", "2026-01-10"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("backfill ") && out.contains(": 10 runs of etl, one at a time"), "{out}");
    let (id, runs) = started(&out);
    let times: Vec<&str> = runs.iter().map(|r| r.1.as_str()).collect();
    let expected: Vec<String> = (1..=10).map(|day| format!("2026-01-{day:02}T00:00:00.000Z")).collect();
    assert_eq!(times, expected);
    let b = ended_backfill(&d, &id).await;
    assert_eq!(b["state"], "success", "{b:#}");
    let seen = markers(&marks);
    assert_eq!(most_at_once(&seen), 1, "one date at a time: {seen:?}");
    let order: Vec<&str> = seen.iter().filter(|e| e.1).map(|e| e.2.as_str()).collect();
    let dates: Vec<String> = (1..=10).map(|day| format!("202601{day:02}")).collect();
    assert_eq!(order, dates, "in date order, each once, each seeing its own date");

    // a failing date stops the rest
    std::fs::remove_file(&marks).expect("clear the marks");
    d.apply("etl", &dated("etl", "[ ${system.biz.curdate} != 20260105 ] || exit 3", &marks));
    let (code, out, err) = cli(&d, &["backfill", "etl", "--from", "2026-01-01", "--to", "2026-01-10"]);
    assert_eq!(code, 0, "{err}");
    let (id, _) = started(&out);
    let b = ended_backfill(&d, &id).await;
    assert_eq!(b["state"], "failure", "{b:#}");
    let states: Vec<&str> =
        b["runs"].as_array().expect("runs").iter().map(|r| r["state"].as_str().unwrap_or("")).collect();
    assert_eq!(
        states,
        ["success", "success", "success", "success", "failure", "stopped", "stopped", "stopped", "stopped", "stopped"]
    );
    let reason = b["runs"][5]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("stopped: run") && reason.contains("did not succeed"), "{reason}");
    let ran: Vec<String> = markers(&marks).iter().filter(|e| e.1).map(|e| e.2.clone()).collect();
    assert_eq!(ran, ["20260101", "20260102", "20260103", "20260104", "20260105"]);
    let (code, _, err) = cli(&d, &["backfill", "etl", "--from", "2026-01-10", "--to", "2026-01-01"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--to 2026-01-01 is before --from 2026-01-10"), "{err}");
    let (code, _, err) = cli(&d, &["backfill", "status", "999999"]);
    assert_eq!(code, 2, "{err}");
}

/// Ten days, three at a time (standalone), newest first: never more than three at once, at some
/// point three, every date once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_backfill_runs_up_to_its_width() {
    let d = Deployment::standalone().await;
    let marks = d.path("marks");
    d.apply("etl", &dated("etl", "sleep 0.5", &marks));
    let (code, out, err) =
        cli(&d, &["backfill", "etl", "--from", "2026-03-01", "--to", "2026-03-10", "--parallel", "3", "--reverse"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("10 runs of etl, 3 at a time"), "{out}");
    let (id, runs) = started(&out);
    assert_eq!(runs.first().map(|r| r.1.as_str()), Some("2026-03-10T00:00:00.000Z"), "newest first");
    let b = ended_backfill(&d, &id).await;
    assert_eq!(b["state"], "success", "{b:#}");
    let events = markers(&marks);
    assert_eq!(most_at_once(&events), 3, "three at a time, never more: {events:?}");
    let mut ran: Vec<String> = events.iter().filter(|e| e.1).map(|e| e.2.clone()).collect();
    ran.sort();
    assert_eq!(ran, (1..=10).map(|day| format!("202603{day:02}")).collect::<Vec<_>>());
}

/// Run ids printed by `porpoise run`.
fn run(d: &Deployment, args: &[&str]) -> i64 {
    let (code, out, err) = cli(d, args);
    assert_eq!(code, 0, "{err}");
    out.trim().parse().expect("a run id")
}

async fn state_of(d: &Deployment, id: i64) -> (String, String) {
    let mut admin = d.admin().await;
    let r = admin.get_run(porpoise_proto::v1::GetRunRequest { run_id: id }).await.expect("get").into_inner();
    r.run.map(|r| (r.state, r.state_reason)).unwrap_or_default()
}

/// `serial_wait`: overlapping requests wait and run one at a time, oldest first; a waiting run
/// can be stopped. `serial_discard`: a run asked while one is active is discarded, saying why.
/// `serial_priority`: the most urgent waiter goes next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_execution_type_keeps_runs_from_overlapping_its_way() {
    let mut d = Deployment::standalone().await;
    let dir = d.dir.path().to_path_buf();
    let marks = dir.join("marks");
    let gate = dir.join("gate");
    for (name, execution) in [("waiter", "serial_wait"), ("discarder", "serial_discard"), ("ranker", "serial_priority")]
    {
        let yaml = format!(
            "name: {name}\nexecution: {execution}\ntasks:\n  - name: t\n    command: \"echo start $PORPOISE_TASK_INSTANCE_ID $(date +%s%N) >> {m}; {wait}; echo end $PORPOISE_TASK_INSTANCE_ID $(date +%s%N) >> {m}\"\n",
            m = marks.display(),
            wait = wait_at(&gate)
        );
        d.apply(name, &yaml);
    }
    // serial_wait
    close_gate(&gate);
    let first = run(&d, &["run", "waiter"]);
    d.wait_for_run(first, "the first run runs", |r| r.run.as_ref().is_some_and(|r| r.state == "running")).await;
    let second = run(&d, &["run", "waiter"]);
    let third = run(&d, &["run", "waiter"]);
    let doomed = run(&d, &["run", "waiter"]);
    for id in [second, third, doomed] {
        assert_eq!(state_of(&d, id).await.0, "waiting");
    }
    let (code, out, err) = cli(&d, &["stop", &doomed.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stopped before its turn came"), "{out}");
    // serial_discard, while its own first run holds the gate
    let kept = run(&d, &["run", "discarder"]);
    d.wait_for_run(kept, "the kept run runs", |r| r.run.as_ref().is_some_and(|r| r.state == "running")).await;
    let dropped = run(&d, &["run", "discarder"]);
    d.wait_for_run(dropped, "the overlapping run is discarded", |r| {
        r.run.as_ref().is_some_and(|r| r.state == "discarded")
    })
    .await;
    let (_, reason) = state_of(&d, dropped).await;
    assert_eq!(reason, format!("discarded: run {kept} of workflow discarder was active (serial_discard)"));
    // serial_priority
    let busy = run(&d, &["run", "ranker"]);
    d.wait_for_run(busy, "the busy run runs", |r| r.run.as_ref().is_some_and(|r| r.state == "running")).await;
    let low = run(&d, &["run", "ranker", "--priority", "low"]);
    let high = run(&d, &["run", "ranker", "--priority", "high"]);
    open_gate(&gate);
    for id in [first, second, third, kept, busy, low, high] {
        let r = d.finished_run(id).await;
        assert_eq!(r.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{r:?}");
    }
    assert_eq!(state_of(&d, doomed).await.0, "stopped");
    // who ran when, by task instance: the waiters one at a time in order, the urgent one first
    let events = markers(&marks);
    let mut admin = d.admin().await;
    let mut tasks = std::collections::HashMap::new();
    for id in [first, second, third, low, high] {
        let r = admin.get_run(porpoise_proto::v1::GetRunRequest { run_id: id }).await.expect("get").into_inner();
        tasks.insert(id, r.tasks.first().map(|t| t.task_instance_id.to_string()).unwrap_or_default());
    }
    let task_of = |run: i64| tasks[&run].clone();
    let start_of = |task: &str| events.iter().find(|e| e.1 && e.2 == task).map(|e| e.0).expect("it started");
    let end_of = |task: &str| events.iter().find(|e| !e.1 && e.2 == task).map(|e| e.0).expect("it ended");
    let (t1, t2, t3) = (task_of(first), task_of(second), task_of(third));
    assert!(end_of(&t1) < start_of(&t2) && end_of(&t2) < start_of(&t3), "one at a time, oldest first: {events:?}");
    let (tl, th) = (task_of(low), task_of(high));
    assert!(end_of(&th) < start_of(&tl), "the high-priority waiter went first: {events:?}");
}

/// A backfill is stored, not held by a master: the master that released its dates is killed
/// mid-way, and the other one carries it to its end, every date once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_survives_the_loss_of_a_master() {
    let options = common::ClusterOptions { masters: Some(2), ..Default::default() };
    let mut d = Deployment::cluster_on(porpoise_testkit::TestPostgres::shared(), options).await;
    let marks = d.path("marks");
    d.apply("etl", &dated("etl", "sleep 0.5", &marks));
    let (code, out, err) = cli(&d, &["backfill", "etl", "--from", "2026-02-01", "--to", "2026-02-06"]);
    assert_eq!(code, 0, "{err}");
    let (id, _) = started(&out);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while markers(&marks).iter().filter(|e| !e.1).count() < 2 {
        assert!(std::time::Instant::now() < deadline, "two dates did not end");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let name = d.masters[0].2.clone();
    d.kill(&name);
    d.use_master(1).await;
    let b = ended_backfill(&d, &id).await;
    assert_eq!(b["state"], "success", "{b:#}");
    let ran: Vec<String> = markers(&marks).iter().filter(|e| e.1).map(|e| e.2.clone()).collect();
    assert_eq!(ran, (1..=6).map(|day| format!("202602{day:02}")).collect::<Vec<_>>(), "each date once, in order");
}
