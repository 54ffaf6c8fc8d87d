//! Schedules on real processes: every fire time makes exactly one run across masters, one of
//! them killed mid-way; fire times missed while no master was up follow the catchup policy; the
//! `porpoise schedule` commands; and date parameters computed from each run's schedule time.

mod common;

use std::collections::BTreeSet;

use common::{ClusterOptions, Deployment, lines};
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

/// A workflow firing every two seconds (with `catchup`), whose task writes its run's
/// `${system.datetime}` to `marks`.
fn ticker(name: &str, catchup: &str, marks: &std::path::Path) -> String {
    format!(
        "name: {name}\nschedule:\n  cron: '*/2 * * * * *'\n  catchup: {catchup}\ntasks:\n  - name: tick\n    command: echo ${{system.datetime}} >> {}\n",
        marks.display()
    )
}

/// A run as `runs list --json` shows it: (run id, schedule time in ms, created at in ms, kind).
fn runs_of(d: &Deployment, workflow: &str) -> Vec<(i64, i64, i64, String)> {
    let (code, out, err) = cli(d, &["runs", "list", "--workflow", workflow, "--limit", "1000", "--json"]);
    assert_eq!(code, 0, "{err}");
    let runs: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let mut runs: Vec<(i64, i64, i64, String)> = runs
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| {
            (
                r["run_id"].as_i64().unwrap_or(0),
                r["schedule_time_ms"].as_i64().unwrap_or(0),
                r["created_at_ms"].as_i64().unwrap_or(0),
                r["kind"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    runs.sort_by_key(|r| r.1);
    runs
}

/// Waits until `check` holds, for at most a minute.
async fn until(d: &Deployment, what: &str, check: impl Fn(&Deployment) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !check(d) {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `*/2 * * * * *` on two masters for about twenty seconds, one master killed half-way: one run
/// per fire time, no gaps, each with its fire time as schedule time, and each task saw it as
/// `${system.datetime}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fire_time_makes_exactly_one_run_across_masters_one_killed_mid_way() {
    let options = ClusterOptions { masters: Some(2), ..Default::default() };
    let mut d = Deployment::cluster_on(TestPostgres::shared(), options).await;
    let marks = d.path("marks");
    d.apply("ticker", &ticker("ticker", "latest", &marks));
    let started = now_ms();
    until(&d, "five runs are fired", |d| {
        let n = runs_of(d, "ticker").len();
        n >= 5
    })
    .await;
    let killed_at = now_ms();
    let name = d.masters[0].2.clone();
    d.kill(&name);
    d.use_master(1).await;
    until(&d, "ten seconds of fires after the kill", |d| {
        let latest = runs_of(d, "ticker").last().map_or(0, |r| r.1);
        latest >= killed_at + 10_000
    })
    .await;
    let (code, _, err) = cli(&d, &["schedule", "pause", "ticker"]);
    assert_eq!(code, 0, "{err}");
    let runs = runs_of(&d, "ticker");
    let times: Vec<i64> = runs.iter().map(|r| r.1).collect();
    assert!(runs.iter().all(|r| r.3 == "schedule"), "{runs:?}");
    assert!(times.iter().all(|t| t % 2000 == 0), "every schedule time is a fire time: {times:?}");
    assert_eq!(times.iter().collect::<BTreeSet<_>>().len(), times.len(), "no fire time twice: {times:?}");
    assert!(times.windows(2).all(|w| w[1] - w[0] == 2000), "no fire time missed: {times:?}");
    assert!(times[0] >= started - 2000 && times.len() >= 10, "{times:?}");
    for r in &runs {
        let run = d.finished_run(r.0).await;
        assert_eq!(run.run.as_ref().map(|s| s.state.as_str()), Some("success"), "{run:?}");
    }
    // each task saw its own run's schedule time
    let mut seen = lines(&marks);
    seen.sort();
    let expected: Vec<String> = times
        .iter()
        .map(|t| {
            chrono::DateTime::from_timestamp_millis(*t)
                .map(|t| t.format("%Y%m%d%H%M%S").to_string())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(seen, expected);
}

/// The only master is down across five fire times, then started again: `none` runs none of
/// the missed times, `latest` the last one, `all` every one, oldest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_times_missed_while_no_master_was_up_follow_the_catchup_policy() {
    let mut d = Deployment::cluster().await;
    let marks = d.path("marks");
    for policy in ["none", "latest", "all"] {
        d.apply(policy, &ticker(policy, policy, &marks));
    }
    until(&d, "each workflow has fired", |d| {
        let n = ["none", "latest", "all"].iter().map(|w| runs_of(d, w).len().min(1)).sum::<usize>();
        n == 3
    })
    .await;
    d.kill("porpoise-master");
    let last_before = newest_schedule_time(&d).await;
    // a real outage: no master for five fire times and more
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    d.start_again("porpoise-master");
    d.wait_for_master().await;
    until(&d, "the master catches up and fires the next time", |d| {
        let next = runs_of(d, "none").iter().filter(|r| r.1 > last_before).count();
        next >= 1
    })
    .await;
    for policy in ["none", "latest", "all"] {
        let (code, _, err) = cli(&d, &["schedule", "pause", policy]);
        assert_eq!(code, 0, "{err}");
    }
    // the fire times the first look after the restart found missed: the runs `all` made in it
    // (one transaction, milliseconds long; the next look is half a second later)
    let all = runs_of(&d, "all");
    let first_look = all.iter().filter(|r| r.1 > last_before).map(|r| r.2).min().unwrap_or(0);
    let missed: Vec<i64> = all.iter().filter(|r| r.1 > last_before && r.2 < first_look + 250).map(|r| r.1).collect();
    assert!(missed.len() >= 5, "five fire times and more were missed: {missed:?}");
    let expected: Vec<i64> = (0..missed.len() as i64).map(|i| last_before + 2000 * (i + 1)).collect();
    assert_eq!(missed, expected, "all: every missed time, oldest first");
    let newest = *missed.last().unwrap_or(&0);
    let in_gap = |w: &str| -> Vec<i64> {
        runs_of(&d, w).iter().map(|r| r.1).filter(|t| *t > last_before && *t <= newest).collect()
    };
    assert_eq!(in_gap("latest"), [newest], "latest: one run, for the last missed time");
    assert_eq!(in_gap("none"), Vec::<i64>::new(), "none: no run for a missed time");
    assert!(runs_of(&d, "none").iter().any(|r| r.1 > newest), "none: the next fire time runs");
}

/// The newest schedule time of any run, in ms, read from the database (the master is down).
async fn newest_schedule_time(d: &Deployment) -> i64 {
    let newest = d
        .query_strings(
            "SELECT COALESCE(MAX(EXTRACT(EPOCH FROM schedule_time) * 1000), 0)::bigint::text FROM workflow_instance \
             WHERE id > $1",
            0,
        )
        .await;
    newest.first().and_then(|t| t.parse().ok()).unwrap_or(0)
}

/// The `porpoise schedule` commands, `workflow list`'s schedule column, and the errors that
/// name the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_commands_make_list_pause_resume_and_delete() {
    let d = Deployment::standalone().await;
    d.apply("nightly", "name: nightly\ntasks:\n  - { name: a, command: 'true' }\n");
    let (code, _, err) = cli(&d, &["schedule", "create", "nightly", "--cron", "every night"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--cron: bad cron expression"), "{err}");
    let (code, _, err) = cli(&d, &["schedule", "create", "nightly", "--cron", "0 2 * * *", "--timezone", "Mars/Base"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--timezone: unknown time zone \"Mars/Base\""), "{err}");
    let (code, _, err) = cli(&d, &["schedule", "create", "nowhere", "--cron", "0 2 * * *"]);
    assert_eq!(code, 2, "{err}");
    let args = ["schedule", "create", "nightly", "--cron", "0 2 * * *", "--timezone", "Asia/Tokyo", "--catchup", "all"];
    let (code, out, err) = cli(&d, &args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("workflow nightly: schedule created; next fire"), "{out}");
    let (code, _, err) = cli(&d, &args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("has a schedule already"), "{err}");
    let (code, out, _) = cli(&d, &["schedule", "show", "nightly"]);
    assert_eq!(code, 0);
    assert!(out.contains("time zone:  Asia/Tokyo\n") && out.contains("catchup:    all\n"), "{out}");
    let (code, out, _) = cli(&d, &["schedule", "show", "nightly", "--json"]);
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        (shown["cron"].as_str(), shown["timezone"].as_str(), shown["catchup"].as_str()),
        (Some("0 2 * * *"), Some("Asia/Tokyo"), Some("all"))
    );
    // 02:00 in Tokyo is 17:00 UTC
    let next = shown["next_fire_ms"].as_i64().and_then(chrono::DateTime::from_timestamp_millis).expect("a next fire");
    assert_eq!(next.format("%H:%M").to_string(), "17:00");
    let (code, out, _) = cli(&d, &["workflow", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("0 2 * * * Asia/Tokyo") && out.contains("T17:00:00.000Z"), "{out}");
    let (code, out, _) = cli(&d, &["workflow", "list", "--json"]);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let nightly = listed.as_array().and_then(|all| all.iter().find(|w| w["name"] == "nightly")).expect("listed");
    assert_eq!(nightly["schedule"]["cron"], "0 2 * * *", "{out}");
    let (code, out, _) = cli(&d, &["schedule", "pause", "nightly"]);
    assert_eq!(code, 0);
    assert!(out.contains("schedule paused"), "{out}");
    let (code, _, err) = cli(&d, &["schedule", "pause", "nightly"]);
    assert_eq!(code, 2, "{err}");
    let (code, out, _) = cli(&d, &["workflow", "list"]);
    assert!(code == 0 && out.contains("(paused)"), "{out}");
    let (code, _, _) = cli(&d, &["schedule", "resume", "nightly"]);
    assert_eq!(code, 0);
    let (code, out, _) = cli(&d, &["schedule", "list", "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"paused\": false"), "{out}");
    let (code, _, _) = cli(&d, &["schedule", "delete", "nightly"]);
    assert_eq!(code, 0);
    let (code, _, err) = cli(&d, &["schedule", "show", "nightly"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("workflow nightly has no schedule"), "{err}");
    // a spec's schedule is the spec's: the commands leave it to the next apply
    d.apply("specced", "name: specced\nschedule: { cron: '@daily' }\ntasks:\n  - { name: a, command: 'true' }\n");
    let (code, _, err) = cli(&d, &["schedule", "create", "specced", "--cron", "0 3 * * *"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("set by its spec"), "{err}");
    d.apply("specced", "name: specced\ntasks:\n  - { name: a, command: 'true' }\n");
    let (code, _, _) = cli(&d, &["schedule", "show", "specced"]);
    assert_eq!(code, 2, "the spec no longer sets one");
}
