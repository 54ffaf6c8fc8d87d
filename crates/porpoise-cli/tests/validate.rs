//! `porpoise workflow validate`, run as the real binary: valid examples pass, each kind of
//! invalid spec fails with exit 2 and a message naming the file, the task and the field.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn porpoise(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_porpoise")).args(args).output().expect("run porpoise")
}

fn validate(file: &Path) -> Output {
    porpoise(&["workflow", "validate", "-f", file.to_str().expect("utf-8 path")])
}

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_is_valid() {
    let files = examples();
    assert!(files.len() >= 3, "examples/ should hold the sample workflows");
    for file in files {
        let out = validate(&file);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(": ok: workflow "), "{stdout}");
    }
}

#[test]
fn summary_counts_tasks_edges_and_roots() {
    let out = validate(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/daily-etl.yaml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("workflow daily-etl: 4 tasks, 4 edges, 1 root (extract)"), "{stdout}");
}

/// Each invalid case: the spec, and what the one error line must say.
const INVALID: &[(&str, &str, &str)] = &[
    (
        "unknown-key",
        "name: x\ntasks:\n  - name: a\n    command: echo\n    retires: 3\n",
        ":5: task \"a\", field \"retires\": unknown key",
    ),
    ("missing-name", "name: x\ntasks:\n  - command: echo\n", "task \"#1\", field \"name\": the task has no name"),
    (
        "duplicate-name",
        "name: x\ntasks:\n  - name: a\n    command: echo\n  - name: a\n    command: echo\n",
        "task \"a\", field \"name\": duplicate task name",
    ),
    (
        "unknown-dependency",
        "name: x\ntasks:\n  - name: a\n    command: echo\n    depends_on: [b]\n",
        "task \"a\", field \"depends_on\": depends on unknown task \"b\"",
    ),
    (
        "cycle",
        "name: x\ntasks:\n  - name: a\n    command: echo\n    depends_on: [b]\n  - name: b\n    command: echo\n    depends_on: [a]\n",
        "dependency cycle: a -> b -> a",
    ),
    (
        "empty-command",
        "name: x\ntasks:\n  - name: a\n    command: \"\"\n",
        "task \"a\", field \"command\": the command is empty",
    ),
    (
        "bad-duration",
        "name: x\ntasks:\n  - name: a\n    command: echo\n    timeout: soon\n",
        "task \"a\", field \"timeout\": bad duration \"soon\"",
    ),
    (
        "bad-priority",
        "name: x\npriority: urgent\ntasks:\n  - name: a\n    command: echo\n",
        "field \"priority\": unknown priority \"urgent\"",
    ),
    (
        "bad-strategy",
        "name: x\ntasks:\n  - name: a\n    command: echo\n    timeout: 1m\n    timeout_strategy: ignore\n",
        "task \"a\", field \"timeout_strategy\": unknown timeout strategy \"ignore\"",
    ),
    (
        "unknown-type",
        "name: x\ntasks:\n  - name: a\n    type: spark\n    command: echo\n",
        "task \"a\", field \"type\": unknown task type \"spark\"",
    ),
    (
        "task-group",
        "name: x\ntasks:\n  - name: a\n    command: echo\n    task_group: ware/house\n",
        ":5: task \"a\", field \"task_group\": task group \"ware/house\" has '/'",
    ),
    (
        "schedule-cron",
        "name: x\nschedule:\n  cron: '61 * * * *'\ntasks:\n  - name: a\n    command: echo\n",
        ":3: field \"schedule.cron\": bad cron expression \"61 * * * *\"",
    ),
    (
        "time-expression",
        "name: x\ntasks:\n  - name: a\n    command: echo $[next_day(yyyyMMdd)]\n",
        ":4: task \"a\", field \"command\": bad time expression \"$[next_day(yyyyMMdd)]\": unknown function next_day()",
    ),
    (
        "self-dependency",
        "name: x\ntasks:\n  - name: a\n    command: echo\n    depends_on: [a]\n",
        "task \"a\", field \"depends_on\": the task depends on itself",
    ),
];

#[test]
fn each_invalid_case_exits_2_naming_the_problem() {
    let dir = tempfile::tempdir().expect("temporary directory");
    for (name, spec, expected) in INVALID {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, spec).expect("write spec");
        let out = validate(&file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}: nothing on stdout for an invalid spec");
        assert!(stderr.starts_with(file.to_str().expect("utf-8")), "{name}: the message names the file: {stderr}");
        assert!(stderr.contains(expected), "{name}: expected {expected:?} in {stderr:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: one clear error line: {stderr}");
    }
}

#[test]
fn a_missing_file_exits_2() {
    let out = porpoise(&["workflow", "validate", "-f", "/nonexistent/wf.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/wf.yaml: cannot read"), "{stderr}");
}

#[test]
fn one_bad_file_among_good_ones_fails_the_run() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: x\ntasks: []\n").expect("write");
    let good = examples().remove(0);
    let out = porpoise(&["workflow", "validate", "-f", good.to_str().expect("utf-8"), bad.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok:"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the workflow has no tasks"));
}

#[test]
fn an_unreachable_server_is_one_clear_error() {
    let port = porpoise_testkit::free_port();
    let out = porpoise(&["--server", &format!("http://127.0.0.1:{port}"), "workflow", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("porpoise: cannot reach the Porpoise server at http://127.0.0.1:"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

/// `porpoise completions SHELL` prints a completion script naming the commands; an unknown
/// shell exits 2. `--version` names the git commit.
#[test]
fn completions_and_the_version() {
    let out = porpoise(&["completions", "bash"]);
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("_porpoise()") && script.contains("backfill") && script.contains("taskgroup"), "{script}");
    assert_eq!(porpoise(&["completions", "nosh"]).status.code(), Some(2));
    let version = porpoise(&["--version"]);
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(version.starts_with("porpoise 0.1.0 (") && version.trim_end().ends_with(')'), "{version}");
}
