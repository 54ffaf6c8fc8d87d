//! Run control from the command line, on real processes: stop, pause and resume (durable
//! commands the run's owner, or the next one, carries out), listing runs and showing workflows.

mod common;

use common::{ClusterOptions, Deployment, lines};
use porpoise_proto::v1::{GetRunReply, GetRunRequest};
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

fn task_state(run: &GetRunReply, name: &str) -> Option<String> {
    run.tasks.iter().find(|t| t.task_name == name).map(|t| t.state.clone())
}

/// A workflow whose one task sleeps for five minutes, as a process named `NAME` the test can
/// look for; after it, task `after` would mark that it ran.
fn sleeper(name: &str, dir: &std::path::Path) -> String {
    format!(
        "name: {name}\ntasks:\n  - name: sleep\n    command: \"bash -c 'exec -a {proc} sleep 300'\"\n  - name: after\n    depends_on: [sleep]\n    command: echo after >> {marks}\n",
        proc = process_name(dir),
        marks = dir.join("marks").display()
    )
}

/// Waits until no process of the [`sleeper`] task of `d` is left.
async fn no_sleeper_left(d: &mut Deployment, what: &str) {
    let name = process_name(d.dir.path());
    d.wait_until(what, || {
        let name = name.clone();
        async move { porpoise_testkit::processes_named(&name).is_empty() }
    })
    .await;
}

fn process_name(dir: &std::path::Path) -> String {
    format!("porpoise-sleeper-{}", dir.file_name().and_then(|n| n.to_str()).unwrap_or("x"))
}

/// Stops a run whose task sleeps for five minutes, through the master given by `d`; checks that
/// it ends `stopped` within seconds with no process of the task left.
async fn stop_and_check(d: &mut Deployment, id: i64) {
    let (code, out, err) = cli(d, &["stop", &id.to_string()]);
    assert_eq!(code, 0, "stop: {out}{err}");
    assert_eq!(out.lines().count(), 1, "one line: {out}");
    assert!(out.contains("stop requested"), "{out}");
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("stopped"), "{run:?}");
    assert_eq!(task_state(&run, "sleep").as_deref(), Some("killed"), "{run:?}");
    assert_eq!(task_state(&run, "after"), None, "nothing after the stop starts: {run:?}");
    no_sleeper_left(d, "no process of the stopped task is left").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_kills_its_task_and_ends_stopped() {
    let mut d = Deployment::cluster().await;
    let dir = d.dir.path().to_path_buf();
    d.apply("sleepy", &sleeper("sleepy", &dir));
    let id = d.start_run("sleepy").await;
    d.wait_for_run(id, "the task runs", |run| task_state(run, "sleep").as_deref() == Some("running")).await;
    stop_and_check(&mut d, id).await;
    assert!(lines(&dir.join("marks")).is_empty());

    // a control that makes no sense for the run's state: exit 2, one line, nothing changes
    let (code, out, err) = cli(&d, &["stop", &id.to_string()]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(err.contains(&format!("run {id} is stopped")), "{err}");
    let (code, _, err) = cli(&d, &["pause", &id.to_string()]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(&d, &["pause", "999999"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no run 999999"), "{err}");

    // listing: the stopped run, by state, in a table and as JSON
    let (code, out, err) = cli(&d, &["runs", "list", "--state", "stopped", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let ids: Vec<i64> = listed.as_array().expect("a list").iter().filter_map(|r| r["run_id"].as_i64()).collect();
    assert_eq!(ids, [id]);
    let (code, out, _) = cli(&d, &["runs", "list", "--state", "success"]);
    assert_eq!((code, out.lines().count()), (0, 1), "only the header: {out}");
    let (code, _, err) = cli(&d, &["runs", "list", "--state", "sideways"]);
    assert_eq!(code, 2, "{err}");
    // a run's params follow the same naming rule as a spec's
    let (code, _, err) = cli(&d, &["run", "sleepy", "--param", "2day=x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("param name \"2day\" must be letters, digits and _"), "{err}");
    // the stored spec, as applied
    let (code, out, err) = cli(&d, &["workflow", "show", "sleepy"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, sleeper("sleepy", &dir));
    let (code, out, err) = cli(&d, &["workflow", "show", "sleepy", "--json"]);
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        (&shown["name"], &shown["version"], &shown["spec"]["tasks"][0]["name"]),
        (&"sleepy".into(), &1.into(), &"sleep".into()),
        "{out}"
    );
    let (code, _, err) = cli(&d, &["workflow", "show", "sleepy", "--version", "7"]);
    assert_eq!(code, 2, "{err}");

    // a name as long as a name may be (128) keeps its table's columns apart and aligned
    let long = format!("long-{}", "x".repeat(123));
    d.apply(&long, &format!("name: {long}\ntasks:\n  - {{ name: a, command: 'true' }}\n"));
    let (code, out, err) = cli(&d, &["workflow", "list"]);
    assert_eq!(code, 0, "{err}");
    let header = out.lines().next().expect("a header");
    let row = out.lines().find(|l| l.starts_with(&long)).expect("the long name, whole");
    assert!(row[long.len()..].starts_with("  "), "{out}");
    let version_ends = header.find("VERSION").expect("a VERSION column") + "VERSION".len();
    assert_eq!(&row[version_ends - 1..version_ends], "1", "the version under its header, right-aligned:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_run_lets_its_task_finish_and_a_resumed_one_runs_the_rest_once() {
    let mut d = Deployment::standalone().await;
    let dir = d.dir.path().to_path_buf();
    let marks = dir.join("marks");
    common::close_gate(&dir.join("gate-one"));
    let yaml = format!(
        "name: paused\ntasks:\n  - name: one\n    command: echo one >> {m}; {wait}\n  - name: two\n    depends_on: [one]\n    command: echo two >> {m}\n",
        m = marks.display(),
        wait = common::wait_at(&dir.join("gate-one"))
    );
    d.apply("paused", &yaml);
    let id = d.start_run("paused").await;
    d.wait_for_run(id, "task one runs", |run| task_state(run, "one").as_deref() == Some("running")).await;
    let (code, out, err) = cli(&d, &["pause", &id.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("pause requested"), "{out}");
    common::open_gate(&dir.join("gate-one"));
    d.wait_for_run(id, "the run to pause once task one is done", |run| {
        run.run.as_ref().is_some_and(|r| r.state == "paused")
    })
    .await;
    let (_, out, _) = cli(&d, &["status", &id.to_string(), "--json"]);
    let status: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    // nothing is sent while paused: task two may exist (if task one ended before the runner had
    // the pause) but only as submitted, on no worker
    let tasks = status["tasks"].as_array().expect("tasks");
    assert!(
        tasks.iter().filter(|t| t["task"] != "one").all(|t| t["state"] == "submitted" && t["worker"].is_null()),
        "nothing new was sent while paused: {out}"
    );
    assert_eq!(lines(&marks), ["one"]);

    let (code, out, err) = cli(&d, &["resume", &id.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}");
    assert_eq!(lines(&marks), ["one", "two"], "what succeeded ran once");
    let (code, _, err) = cli(&d, &["pause", &id.to_string()]);
    assert_eq!(code, 2, "a finished run cannot be paused: {err}");
}

/// `porpoise resume` on a stopped run: the task the stop killed runs again, the one that had
/// succeeded does not, and the run succeeds; a successful run cannot be resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_resumes_where_it_stood() {
    let mut d = Deployment::standalone().await;
    let dir = d.dir.path().to_path_buf();
    let (marks, go) = (dir.join("marks"), dir.join("go"));
    let yaml = format!(
        "name: stoppable\ntasks:\n  - name: first\n    command: echo first >> {m}\n  - name: second\n    depends_on: [first]\n    command: echo second >> {m}; {hold}\n",
        m = marks.display(),
        hold = common::hold_until(&go),
    );
    d.apply("stoppable", &yaml);
    let id = d.start_run("stoppable").await;
    d.wait_for_run(id, "task second runs", |run| task_state(run, "second").as_deref() == Some("running")).await;
    let (code, _, err) = cli(&d, &["stop", &id.to_string()]);
    assert_eq!(code, 0, "{err}");
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("stopped"));
    assert_eq!(task_state(&run, "second").as_deref(), Some("killed"));
    std::fs::write(&go, "").expect("open the way");
    let (code, out, err) = cli(&d, &["resume", &id.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("run {id}: resumed")), "{out}");
    d.wait_for_run(id, "the resumed run to succeed", |run| run.run.as_ref().is_some_and(|r| r.state == "success"))
        .await;
    assert_eq!(lines(&marks), ["first", "second", "second"], "first ran once, second again");
    let (code, _, err) = cli(&d, &["resume", &id.to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("run {id} is success: only a paused or stopped run can be resumed")), "{err}");
}

/// `porpoise task mark-success`: on a run that failed, the task shows forced-success, the run
/// goes on from it and succeeds; on a run still running (another branch holds it), the same;
/// a task that succeeded cannot be marked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_marked_successful_lets_its_run_go_on() {
    let mut d = Deployment::standalone().await;
    let dir = d.dir.path().to_path_buf();
    let marks = dir.join("marks");
    let gate = dir.join("gate");
    common::close_gate(&gate);
    let yaml = format!(
        "name: forced\nfailure_strategy: continue\ntasks:\n  - name: bad\n    command: echo bad >> {m}; exit 3\n  - name: after\n    depends_on: [bad]\n    command: echo after >> {m}\n  - name: slow\n    command: {wait}\n",
        m = marks.display(),
        wait = common::wait_at(&gate),
    );
    d.apply("forced", &yaml);
    // while the run runs: bad failed, slow holds the run open
    let id = d.start_run("forced").await;
    d.wait_for_run(id, "bad fails while slow runs", |run| {
        task_state(run, "bad").as_deref() == Some("failure") && task_state(run, "slow").as_deref() == Some("running")
    })
    .await;
    let mut admin = d.admin().await;
    let ti = |run: &GetRunReply, name: &str| {
        run.tasks.iter().find(|t| t.task_name == name).map(|t| t.task_instance_id).expect("the task")
    };
    let run = admin.get_run(GetRunRequest { run_id: id }).await.expect("get").into_inner();
    let bad = ti(&run, "bad");
    let (code, out, err) = cli(&d, &["task", "mark-success", &bad.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("marked successful"), "{out}");
    d.wait_for_run(id, "after runs", |run| task_state(run, "after").as_deref() == Some("success")).await;
    common::open_gate(&gate);
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}");
    let forced = run.tasks.iter().find(|t| t.task_name == "bad").expect("bad");
    assert_eq!(forced.state, "forced-success");
    assert_eq!(forced.warning, "marked successful by an operator; attempt 1 had ended failure");
    // a task that succeeded cannot be marked
    let (code, _, err) = cli(&d, &["task", "mark-success", &ti(&run, "after").to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is success: only a task that failed, was stopped or was killed"), "{err}");

    // on a run that ended failed: it goes on from the marked task
    let id = d.start_run("forced").await;
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("failure"));
    assert_eq!(task_state(&run, "after"), None);
    let (code, out, err) = cli(&d, &["task", "mark-success", &ti(&run, "bad").to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("run {id} goes on from it")), "{out}");
    d.wait_for_run(id, "the run to succeed", |run| run.run.as_ref().is_some_and(|r| r.state == "success")).await;
    assert_eq!(lines(&marks), ["bad", "after", "bad", "after"]);
    let (code, _, err) = cli(&d, &["task", "mark-success", "999999"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no task instance 999999"), "{err}");
}

/// A task whose worker group has no live worker waits for its `worker_group_wait`, then fails
/// saying why; the run fails with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_without_a_worker_of_its_group_fails_after_its_worker_group_wait() {
    let mut d = Deployment::standalone().await;
    let yaml =
        "name: gpu\ntasks:\n  - name: train\n    command: 'true'\n    worker_group: gpu\n    worker_group_wait: 2s\n";
    d.apply("gpu", yaml);
    let id = d.start_run("gpu").await;
    let run = d.finished_run(id).await;
    let summary = run.run.clone().expect("the run");
    assert_eq!(summary.state, "failure", "{run:?}");
    let why = "no live worker in worker group gpu for 2s (worker_group_wait)";
    assert_eq!(summary.state_reason, format!("task train failed: {why}"));
    let train = run.tasks.iter().find(|t| t.task_name == "train").expect("train");
    assert_eq!((train.state.as_str(), train.warning.as_str(), train.attempt), ("failure", why, 1));
    let waited = summary.ended_at_ms - summary.started_at_ms;
    assert!(waited >= 2000, "it waited its worker_group_wait first: {waited} ms");
}

/// The owner of the run is killed a moment before the stop is asked of the other master: the
/// stop waits in the database, and the master that takes the run over carries it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_asked_while_the_owner_is_dead_is_carried_out_by_the_next_owner() {
    let options = ClusterOptions { masters: Some(2), ..Default::default() };
    let mut d = Deployment::cluster_on(TestPostgres::shared(), options).await;
    let dir = d.dir.path().to_path_buf();
    d.apply("orphan", &sleeper("orphan", &dir));
    let id = d.start_run("orphan").await;
    d.wait_for_run(id, "the task runs", |run| task_state(run, "sleep").as_deref() == Some("running")).await;
    let mut admin = d.admin().await;
    let run = admin.get_run(GetRunRequest { run_id: id }).await.expect("get").into_inner();
    let owner = run.run.map(|r| r.owner).unwrap_or_default();
    let doomed = d.masters.iter().position(|m| m.0 == owner).expect("one of the masters");
    let name = d.masters[doomed].2.clone();
    d.kill(&name);
    d.use_master(1 - doomed).await;
    stop_and_check(&mut d, id).await;
}

/// `failure_strategy: continue`: one branch fails for good while the other waits out a retry
/// interval; the retry runs, the independent branch completes, and the run fails at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_failure_strategy_continue_the_other_branch_and_its_retry_run_and_the_run_fails() {
    let mut d = Deployment::standalone().await;
    let dir = d.dir.path().to_path_buf();
    let m = dir.join("marks").display().to_string();
    let once = dir.join("failed-once").display().to_string();
    // flaky fails its first attempt, then succeeds; bad fails at once
    let yaml = format!(
        "name: branches\nfailure_strategy: continue\ntasks:\n  - name: bad\n    command: echo bad >> {m}; exit 3\n  - name: after_bad\n    depends_on: [bad]\n    command: echo after_bad >> {m}\n  - name: flaky\n    retries: 1\n    retry_interval: 1s\n    command: echo flaky >> {m}; [ -f {once} ] || {{ touch {once}; exit 1; }}\n  - name: after_flaky\n    depends_on: [flaky]\n    command: echo after_flaky >> {m}\n"
    );
    d.apply("branches", &yaml);
    let id = d.start_run("branches").await;
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("failure"), "{run:?}");
    assert_eq!(task_state(&run, "bad").as_deref(), Some("failure"));
    assert_eq!(task_state(&run, "flaky").as_deref(), Some("success"), "the retry ran: {run:?}");
    assert_eq!(task_state(&run, "after_flaky").as_deref(), Some("success"), "the independent branch completed");
    assert_eq!(task_state(&run, "after_bad"), None, "what depends on the failed task never ran");
    let mut ran = lines(&dir.join("marks"));
    ran.sort();
    assert_eq!(ran, ["after_flaky", "bad", "flaky", "flaky"]);
}

/// A workflow `timeout` with `timeout_strategy: fail`: the run is stopped at the limit, and its
/// task with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_timeout_is_stopped() {
    let mut d = Deployment::standalone().await;
    let dir = d.dir.path().to_path_buf();
    let yaml =
        sleeper("limited", &dir).replace("name: limited\n", "name: limited\ntimeout: 2s\ntimeout_strategy: fail\n");
    d.apply("limited", &yaml);
    let id = d.start_run("limited").await;
    let run = d.finished_run(id).await;
    let summary = run.run.clone().expect("the run");
    assert_eq!(summary.state, "stopped", "{run:?}");
    assert_eq!(summary.state_reason, "stopped: the run ran past its timeout of 2s");
    let took = summary.ended_at_ms - summary.started_at_ms;
    assert!((2000..10_000).contains(&took), "stopped at the limit, not before: {took} ms");
    no_sleeper_left(&mut d, "no process of the task is left").await;
}

/// A run failed because a file was missing; the test creates it and reruns the failed tasks:
/// only the failed task and what follows it run again, and the run succeeds, keeping its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_of_the_failed_tasks_after_the_cause_is_fixed_succeeds() {
    let mut d = Deployment::cluster().await;
    let dir = d.dir.path().to_path_buf();
    let m = dir.join("marks").display().to_string();
    let fixed = dir.join("fixed");
    let yaml = format!(
        "name: fixable\ntasks:\n  - name: a\n    command: echo a >> {m}\n  - name: b\n    depends_on: [a]\n    command: echo b >> {m}; cat {f}\n  - name: c\n    depends_on: [b]\n    command: echo c >> {m}\n",
        f = fixed.display()
    );
    d.apply("fixable", &yaml);
    let id = d.start_run("fixable").await;
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("failure"), "{run:?}");
    let (code, _, err) = cli(&d, &["rerun", "999999"]);
    assert_eq!(code, 2, "{err}");

    std::fs::write(&fixed, "").expect("fix the cause");
    let (code, out, err) = cli(&d, &["rerun", &id.to_string(), "--failed"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}");
    let attempt = |name: &str| run.tasks.iter().find(|t| t.task_name == name).map(|t| t.attempt);
    assert_eq!((attempt("a"), attempt("b"), attempt("c")), (Some(1), Some(2), Some(1)), "{run:?}");
    assert_eq!(lines(&dir.join("marks")), ["a", "b", "b", "c"], "only the failed task and what follows ran again");

    // a run that has not ended cannot be rerun; --from reruns a task and what follows it
    let (code, out, err) = cli(&d, &["rerun", &id.to_string(), "--from", "b"]);
    assert_eq!(code, 0, "{out}{err}");
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}");
    assert_eq!(lines(&dir.join("marks")), ["a", "b", "b", "c", "b", "c"]);
    let (code, _, err) = cli(&d, &["rerun", &id.to_string(), "--from", "nope"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no task \"nope\""), "{err}");
}

/// `porpoise task kill`: the task's processes end, it shows `killed`, the run fails saying so;
/// killing it again exits 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_task_ends_and_its_run_fails() {
    let mut d = Deployment::cluster().await;
    let dir = d.dir.path().to_path_buf();
    d.apply("killable", &sleeper("killable", &dir));
    let id = d.start_run("killable").await;
    d.wait_for_run(id, "the task runs", |run| task_state(run, "sleep").as_deref() == Some("running")).await;
    let mut admin = d.admin().await;
    let run = admin.get_run(GetRunRequest { run_id: id }).await.expect("get").into_inner();
    let ti = run.tasks.iter().find(|t| t.task_name == "sleep").map(|t| t.task_instance_id).expect("the task");
    let (code, out, err) = cli(&d, &["task", "kill", &ti.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("kill requested"), "{out}");
    let run = d.finished_run(id).await;
    let summary = run.run.clone().expect("the run");
    assert_eq!(
        (summary.state.as_str(), summary.state_reason.as_str()),
        ("failure", "task sleep was killed by an operator")
    );
    assert_eq!(task_state(&run, "sleep").as_deref(), Some("killed"));
    no_sleeper_left(&mut d, "no process of the killed task is left").await;
    let (code, _, err) = cli(&d, &["task", "kill", &ti.to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("only a task that has not ended can be killed"), "{err}");
}
