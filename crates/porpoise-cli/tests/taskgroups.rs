//! Task groups on real processes: a group's slots bound how many of its tasks run at once across
//! runs and masters, waiters take slots by task-group priority, and a master killed mid-way
//! changes neither.

mod common;

use std::path::Path;

use common::{ClusterOptions, Deployment, close_gate, markers, most_at_once, open_gate, wait_at};
use porpoise_testkit::TestPostgres;

/// Runs `porpoise ARGS`; returns (exit code, stdout, stderr).
fn cli(d: &Deployment, args: &[&str]) -> (i32, String, String) {
    let out = d.porpoise(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A workflow of `tasks` independent tasks of task group `group` at `priority`; each writes a
/// timestamped `start` and `end` marker around `body`.
fn grouped(name: &str, group: &str, priority: i32, tasks: &[&str], body: &str, marks: &Path) -> String {
    let mut yaml = format!("name: {name}\ntasks:\n");
    for t in tasks {
        yaml.push_str(&format!(
            "  - name: {t}\n    task_group: {group}\n    task_group_priority: {priority}\n    command: \"echo start {t} $(date +%s%N) >> {m}; {body}; echo end {t} $(date +%s%N) >> {m}\"\n",
            m = marks.display()
        ));
    }
    yaml
}

/// Each task's number of starts and ends.
fn runs_of(events: &[(u128, bool, String)], task: &str) -> (usize, usize) {
    let starts = events.iter().filter(|e| e.2 == task && e.1).count();
    let ends = events.iter().filter(|e| e.2 == task && !e.1).count();
    (starts, ends)
}

async fn group_counts(d: &Deployment, group: &str) -> (i64, i64) {
    let (code, out, err) = cli(d, &["taskgroup", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let groups: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let g = groups.as_array().and_then(|a| a.iter().find(|g| g["name"] == group)).expect("the group is listed");
    (g["used"].as_i64().unwrap_or(-1), g["waiting"].as_i64().unwrap_or(-1))
}

/// Two slots, ten tasks across three runs: two blockers hold the slots while eight tasks of two
/// runs get in line; then the high-priority run's four go first, never more than two run at
/// once, and every task completes once. Unknown groups are refused at apply, and a group that a
/// workflow names cannot be deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_group_of_two_slots_runs_two_at_a_time_highest_priority_first() {
    let mut d = Deployment::cluster().await;
    let dir = d.dir.path().to_path_buf();
    let marks = dir.join("marks");
    let gate = dir.join("gate");
    let (code, _, err) = cli(&d, &["taskgroup", "create", "db", "--slots", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--slots must be at least 1"), "{err}");
    let unknown = dir.join("unknown.yaml");
    std::fs::write(&unknown, grouped("unknown", "nope", 0, &["x"], "true", &marks)).expect("write");
    let (code, _, err) = cli(&d, &["workflow", "apply", "-f", &unknown.display().to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("task_group: no task group \"nope\""), "{err}");
    let (code, out, err) = cli(&d, &["taskgroup", "create", "db", "--slots", "2", "--description", "the warehouse"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("task group db: created; 2 slots"), "{out}");
    let (code, _, err) = cli(&d, &["taskgroup", "create", "db", "--slots", "3"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("exists already"), "{err}");

    close_gate(&gate);
    d.apply("blocker", &grouped("blocker", "db", 0, &["b1", "b2"], &wait_at(&gate), &marks));
    d.apply("low", &grouped("low", "db", 1, &["l1", "l2", "l3", "l4"], "sleep 0.2", &marks));
    d.apply("high", &grouped("high", "db", 9, &["h1", "h2", "h3", "h4"], "sleep 0.2", &marks));
    let blocker = d.start_run("blocker").await;
    d.wait_for_run(blocker, "both blockers run", |r| r.tasks.iter().filter(|t| t.state == "running").count() == 2)
        .await;
    let low = d.start_run("low").await;
    let high = d.start_run("high").await;
    for run in [low, high] {
        d.wait_for_run(run, "its four tasks wait for a slot", |r| {
            r.tasks.len() == 4
                && r.tasks.iter().all(|t| t.state == "waiting" && t.waiting_for == "a slot of task group db")
        })
        .await;
    }
    assert_eq!(group_counts(&d, "db").await, (2, 8));
    let (code, out, _) = cli(&d, &["status", &low.to_string()]);
    assert_eq!(code, 0);
    assert!(out.contains("waits for a slot of task group db"), "{out}");
    let (code, _, err) = cli(&d, &["taskgroup", "delete", "db"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is in use (2 running, 8 waiting)"), "{err}");

    open_gate(&gate);
    for run in [blocker, low, high] {
        let done = d.finished_run(run).await;
        assert_eq!(done.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{done:?}");
    }
    let events = markers(&marks);
    assert_eq!(most_at_once(&events), 2, "two at a time, never more: {events:?}");
    let all = ["b1", "b2", "l1", "l2", "l3", "l4", "h1", "h2", "h3", "h4"];
    for t in all {
        assert_eq!(runs_of(&events, t), (1, 1), "{t} ran once: {events:?}");
    }
    let started = |prefix: char| events.iter().filter(move |e| e.1 && e.2.starts_with(prefix)).map(|e| e.0);
    let last_high = started('h').max().expect("high ran");
    let first_low = started('l').min().expect("low ran");
    assert!(last_high < first_low, "every high-priority task started before any low one: {events:?}");
    assert_eq!(group_counts(&d, "db").await, (0, 0));
    let (code, _, err) = cli(&d, &["taskgroup", "delete", "db"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is named by workflow"), "{err}");
}

/// Two masters, two slots, ten tasks across three runs; the owner of a run is killed mid-way.
/// Its runs are taken over, still never more than two tasks run at once, and every task
/// completes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_master_neither_breaks_the_slot_limit_nor_strands_a_waiter() {
    let options = ClusterOptions { masters: Some(2), ..Default::default() };
    let mut d = Deployment::cluster_on(TestPostgres::shared(), options).await;
    let dir = d.dir.path().to_path_buf();
    let marks = dir.join("marks");
    let (code, _, err) = cli(&d, &["taskgroup", "create", "etl", "--slots", "2"]);
    assert_eq!(code, 0, "{err}");
    let runs =
        [("one", &["a1", "a2", "a3", "a4"][..]), ("two", &["b1", "b2", "b3"][..]), ("three", &["c1", "c2", "c3"][..])];
    for (name, tasks) in runs {
        d.apply(name, &grouped(name, "etl", 0, tasks, "sleep 0.7", &marks));
    }
    let mut ids = Vec::new();
    for (name, _) in runs {
        ids.push(d.start_run(name).await);
    }
    let ended = |marks: &Path| markers(marks).iter().filter(|e| !e.1).count();
    d.wait_until("three tasks have ended", || {
        let marks = marks.clone();
        async move { marks.exists() && ended(&marks) >= 3 }
    })
    .await;
    let mut admin = d.admin().await;
    let run = admin.get_run(porpoise_proto::v1::GetRunRequest { run_id: ids[0] }).await.expect("get").into_inner();
    let owner = run.run.map(|r| r.owner).unwrap_or_default();
    let doomed = d.masters.iter().position(|m| m.0 == owner).expect("one of the masters");
    let name = d.masters[doomed].2.clone();
    d.kill(&name);
    d.use_master(1 - doomed).await;
    for id in ids {
        let done = d.finished_run(id).await;
        assert_eq!(done.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{done:?}");
    }
    let events = markers(&marks);
    assert!(most_at_once(&events) <= 2, "never more than two at once: {events:?}");
    for (_, tasks) in runs {
        for t in tasks {
            assert_eq!(runs_of(&events, t), (1, 1), "{t} ran once: {events:?}");
        }
    }
    assert_eq!(group_counts(&d, "etl").await, (0, 0));
}
