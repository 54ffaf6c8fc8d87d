//! Spec parsing and validation: a full spec, defaults, and each kind of invalid spec.

use super::*;

const DIAMOND: &str = r#"
name: daily-etl
description: the diamond
priority: high
timeout: 1h
params: { day: "2026-01-01", limit: 10 }
tasks:
  - name: extract
    command: echo "extract ${day}"
    retries: 2
    retry_interval: 10s
    timeout: 5m
    timeout_strategy: warnfail
    priority: highest
    worker_group: etl
  - name: clean
    depends_on: [extract]
    command: echo clean
  - name: enrich
    depends_on: [extract]
    command: echo enrich
  - name: load
    type: shell
    depends_on: [clean, enrich]
    command: ./load.sh
"#;

fn err(source: &str) -> SpecError {
    WorkflowSpec::parse("wf.yaml", source).expect_err("spec should be invalid")
}

fn single(source: &str) -> SpecProblem {
    let e = err(source);
    assert_eq!(e.problems.len(), 1, "expected one problem, got: {e}");
    e.problems[0].clone()
}

#[test]
fn a_full_spec_parses_with_defaults() {
    let spec = WorkflowSpec::parse("wf.yaml", DIAMOND).expect("valid");
    assert_eq!(spec.name, "daily-etl");
    assert_eq!(spec.priority, Priority::High);
    assert_eq!(spec.timeout, Some(Duration::from_secs(3600)));
    assert_eq!(spec.params["limit"], "10");
    let extract = spec.task("extract").expect("extract");
    assert_eq!(extract.retries, 2);
    assert_eq!(extract.retry_interval, Duration::from_secs(10));
    assert_eq!(extract.timeout, Some(Duration::from_secs(300)));
    assert_eq!(extract.timeout_strategy, TimeoutStrategy::WarnFail);
    assert_eq!(extract.worker_group, "etl");
    assert_eq!(extract.task_group, None);
    let load = spec.task("load").expect("load");
    assert_eq!(load.retries, 0);
    assert_eq!(load.retry_interval, DEFAULT_RETRY_INTERVAL);
    assert_eq!(load.worker_group, DEFAULT_WORKER_GROUP);
    assert_eq!(load.priority, Priority::Medium);
    let dag = spec.dag();
    assert_eq!(dag.edge_count(), 4);
    assert_eq!(dag.roots(), [0]);
}

#[test]
fn the_canonical_form_round_trips_through_json() {
    let spec = WorkflowSpec::parse("wf.yaml", DIAMOND).expect("valid");
    let json = serde_json::to_string(&spec).expect("serialize");
    let back: WorkflowSpec = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, spec);
}

#[test]
fn unknown_task_key_names_task_field_and_line() {
    let p = single("name: x\ntasks:\n  - name: a\n    command: echo\n  - name: b\n    comand: echo\n");
    assert_eq!(p.task.as_deref(), Some("b"));
    assert_eq!(p.field.as_deref(), Some("comand"));
    assert_eq!(p.line, Some(6));
    assert!(p.message.starts_with("unknown key"), "{}", p.message);
    let shown = err("name: x\ntasks:\n  - name: a\n    command: echo\n  - name: b\n    comand: echo\n").to_string();
    assert!(shown.starts_with("wf.yaml:6: task \"b\", field \"comand\": unknown key"), "{shown}");
}

#[test]
fn unknown_workflow_key() {
    let p = single("name: x\nowner: me\ntasks:\n  - name: a\n    command: echo\n");
    assert_eq!((p.task, p.field.as_deref(), p.line), (None, Some("owner"), Some(2)));
}

#[test]
fn missing_task_name() {
    let p = single("name: x\ntasks:\n  - command: echo\n");
    assert_eq!(p.task.as_deref(), Some("#1"));
    assert_eq!(p.field.as_deref(), Some("name"));
    assert!(p.message.contains("no name"), "{}", p.message);
}

#[test]
fn duplicate_task_name() {
    let p = single("name: x\ntasks:\n  - name: a\n    command: echo\n  - name: a\n    command: echo 2\n");
    assert_eq!(p.task.as_deref(), Some("a"));
    assert!(p.message.contains("duplicate task name"), "{}", p.message);
}

#[test]
fn dependency_on_unknown_task() {
    let p = single("name: x\ntasks:\n  - name: a\n    command: echo\n    depends_on: [ghost]\n");
    assert_eq!((p.task.as_deref(), p.field.as_deref(), p.line), (Some("a"), Some("depends_on"), Some(5)));
    assert!(p.message.contains("unknown task \"ghost\""), "{}", p.message);
}

#[test]
fn cycle_names_the_tasks_on_it() {
    let src = "name: x\ntasks:\n  - name: a\n    command: echo\n  - name: b\n    command: echo\n    depends_on: [a, d]\n  - name: c\n    command: echo\n    depends_on: [b]\n  - name: d\n    command: echo\n    depends_on: [c]\n";
    let p = single(src);
    assert!(p.message.contains("dependency cycle: b -> c -> d -> b"), "{}", p.message);
}

#[test]
fn empty_command() {
    for src in ["name: x\ntasks:\n  - name: a\n    command: '  '\n", "name: x\ntasks:\n  - name: a\n"] {
        let p = single(src);
        assert_eq!((p.task.as_deref(), p.field.as_deref()), (Some("a"), Some("command")));
        assert!(p.message.contains("empty"), "{}", p.message);
    }
}

#[test]
fn bad_durations() {
    let p = single("name: x\ntasks:\n  - name: a\n    command: echo\n    timeout: 5x\n");
    assert_eq!((p.task.as_deref(), p.field.as_deref(), p.line), (Some("a"), Some("timeout"), Some(5)));
    assert!(p.message.contains("bad duration \"5x\""), "{}", p.message);
    let p = single("name: x\ntasks:\n  - name: a\n    command: echo\n    retry_interval: 10\n");
    assert_eq!(p.field.as_deref(), Some("retry_interval"));
    let p = single("name: x\ntimeout: 0s\ntasks:\n  - name: a\n    command: echo\n");
    assert_eq!((p.task, p.field.as_deref()), (None, Some("timeout")));
    assert!(p.message.contains("greater than zero"), "{}", p.message);
}

#[test]
fn bad_priority_and_strategy() {
    let p = single("name: x\npriority: urgent\ntasks:\n  - name: a\n    command: echo\n");
    assert_eq!((p.task, p.field.as_deref(), p.line), (None, Some("priority"), Some(2)));
    let p = single("name: x\ntasks:\n  - name: a\n    command: echo\n    priority: 3\n");
    assert_eq!((p.task.as_deref(), p.field.as_deref()), (Some("a"), Some("priority")));
    let p = single("name: x\ntasks:\n  - name: a\n    command: echo\n    timeout: 1m\n    timeout_strategy: retry\n");
    assert_eq!((p.task.as_deref(), p.field.as_deref()), (Some("a"), Some("timeout_strategy")));
    assert!(p.message.contains("warn, fail or warnfail"), "{}", p.message);
}

#[test]
fn unknown_task_type() {
    let p = single("name: x\ntasks:\n  - name: a\n    type: spark\n    command: echo\n");
    assert_eq!((p.task.as_deref(), p.field.as_deref(), p.line), (Some("a"), Some("type"), Some(4)));
    assert!(p.message.contains("unknown task type \"spark\" (supported: shell)"), "{}", p.message);
}

#[test]
fn self_dependency() {
    let p = single("name: x\ntasks:\n  - name: a\n    command: echo\n    depends_on: [a]\n");
    assert_eq!((p.task.as_deref(), p.field.as_deref()), (Some("a"), Some("depends_on")));
    assert!(p.message.contains("depends on itself"), "{}", p.message);
}

#[test]
fn wrong_value_type_names_task_and_field() {
    let p = single("name: x\ntasks:\n  - name: a\n    command: echo\n    retries: -1\n");
    assert_eq!((p.task.as_deref(), p.field.as_deref(), p.line), (Some("a"), Some("retries"), Some(5)));
}

#[test]
fn broken_yaml_has_a_line() {
    let p = single("name: x\ntasks: [\n");
    assert!(p.line.is_some());
}

#[test]
fn every_problem_is_reported() {
    let e = err("tasks:\n  - name: a\n    command: ''\n    depends_on: [zz]\n");
    assert_eq!(e.problems.len(), 3, "{e}");
}

#[test]
fn task_group_names_follow_the_name_rule_and_priority_needs_a_group() {
    let ok = WorkflowSpec::parse(
        "x.yaml",
        "name: x\ntasks:\n  - { name: a, command: echo, task_group: warehouse, task_group_priority: 5 }\n",
    )
    .expect("valid");
    assert_eq!((ok.tasks[0].task_group.as_deref(), ok.tasks[0].task_group_priority), (Some("warehouse"), 5));
    let p = single("name: x\ntasks:\n  - name: a\n    command: echo\n    task_group: 'ware house'\n");
    assert_eq!((p.task.as_deref(), p.field.as_deref(), p.line), (Some("a"), Some("task_group"), Some(5)));
    let p = single("name: x\ntasks:\n  - name: a\n    command: echo\n    task_group_priority: 3\n");
    assert_eq!(p.field.as_deref(), Some("task_group_priority"));
    assert!(p.message.contains("without a task_group"), "{}", p.message);
}

#[test]
fn worker_group_wait_defaults_to_ten_minutes() {
    let spec = WorkflowSpec::parse(
        "x.yaml",
        "name: x\ntasks:\n  - { name: a, command: echo }\n  - { name: b, command: echo, worker_group_wait: 30s }\n",
    )
    .expect("valid");
    assert_eq!(spec.tasks[0].worker_group_wait, Duration::from_secs(600));
    assert_eq!(spec.tasks[1].worker_group_wait, Duration::from_secs(30));
    let p = single("name: x\ntasks:\n  - { name: a, command: echo, worker_group_wait: 0s }\n");
    assert_eq!(p.field.as_deref(), Some("worker_group_wait"));
}

#[test]
fn names_are_letters_digits_dash_underscore_dot_up_to_128() {
    let at_limit = "n".repeat(128);
    let spec = format!("name: {at_limit}\ntasks:\n  - name: a-b_c.d9\n    command: echo\n");
    assert!(WorkflowSpec::parse("wf.yaml", &spec).is_ok(), "128 characters of the allowed kinds are fine");

    let p = single(&format!("name: {}\ntasks:\n  - name: a\n    command: echo\n", "n".repeat(129)));
    assert_eq!((p.task, p.field.as_deref()), (None, Some("name")));
    assert!(p.message.contains("longer than 128 characters"), "{}", p.message);

    let p = single("name: 'daily etl'\ntasks:\n  - name: a\n    command: echo\n");
    assert!(p.message.contains("has ' '"), "{}", p.message);
    let p = single("name: x\ntasks:\n  - name: a/b\n    command: echo\n");
    assert_eq!((p.task.as_deref(), p.field.as_deref()), (Some("a/b"), Some("name")));
    assert!(p.message.contains("has '/'"), "{}", p.message);
    let p = single("name: x\ntasks:\n  - name: a\n    command: echo\n    worker_group: 'gpu pool'\n");
    assert_eq!(p.field.as_deref(), Some("worker_group"));
    // names that would read as a flag or a directory
    for bad in ["-rf", ".", "..", ".x", "_x"] {
        let p = single(&format!("name: '{bad}'\ntasks:\n  - name: a\n    command: echo\n"));
        assert_eq!(p.field.as_deref(), Some("name"), "{bad}");
        assert!(p.message.contains("must start with a letter or a digit"), "{bad}: {}", p.message);
    }
}

#[test]
fn param_names_are_identifiers() {
    let ok = "name: x\nparams: { _day: 1, DAY2: 2 }\ntasks:\n  - name: a\n    command: echo\n";
    assert!(WorkflowSpec::parse("wf.yaml", ok).is_ok());
    for bad in ["2day", "day-of-week", "a b", ""] {
        let p = single(&format!("name: x\nparams: {{ '{bad}': 1 }}\ntasks:\n  - name: a\n    command: echo\n"));
        assert_eq!((p.task, p.field.as_deref()), (None, Some("params")), "{bad:?}");
        assert!(p.message.contains("must be letters, digits and _"), "{bad:?}: {}", p.message);
    }
    for reserved in ["BASH_ENV", "ENV", "PATH", "IFS", "PS4", "LD_PRELOAD", "LD_LIBRARY_PATH", "PORPOISE_ATTEMPT"] {
        let p = single(&format!("name: x\nparams: {{ {reserved}: 1 }}\ntasks:\n  - name: a\n    command: echo\n"));
        assert!(p.message.contains(&format!("param name \"{reserved}\" is reserved")), "{}", p.message);
    }
}

#[test]
fn raw_params_must_be_params_the_command_names() {
    let ok = "name: x\ntasks:\n  - name: a\n    command: echo ${clause}\n    raw_params: [clause]\n";
    assert_eq!(WorkflowSpec::parse("wf.yaml", ok).expect("valid").tasks[0].raw_params, ["clause"]);
    let p = single("name: x\ntasks:\n  - name: a\n    command: echo\n    raw_params: [clause]\n");
    assert_eq!((p.task.as_deref(), p.field.as_deref(), p.line), (Some("a"), Some("raw_params"), Some(5)));
    assert!(p.message.contains("no ${clause}"), "{}", p.message);
    let p = single("name: x\ntasks:\n  - name: a\n    command: echo ${PATH}\n    raw_params: [PATH]\n");
    assert!(p.message.contains("reserved"), "{}", p.message);
}

#[test]
fn a_tenant_is_a_user_name() {
    let ok = "name: x\ntasks:\n  - { name: a, command: echo, tenant: etl_user-1 }\n";
    assert_eq!(WorkflowSpec::parse("wf.yaml", ok).expect("valid").tasks[0].tenant.as_deref(), Some("etl_user-1"));
    for bad in ["'Bad Name'", "'-rf'", "'a/b'", "''"] {
        let p = single(&format!("name: x\ntasks:\n  - {{ name: a, command: echo, tenant: {bad} }}\n"));
        assert_eq!(p.field.as_deref(), Some("tenant"), "{bad}");
        assert!(p.message.contains("is not a user name"), "{bad}: {}", p.message);
    }
}

#[test]
fn a_command_must_fit_one_exec_argument() {
    // quoting adds two bytes per `${name}`: the limit counts the command as bash gets it
    let refs = "${d}".repeat(30_000);
    let p = single(&format!("name: x\ntasks:\n  - name: a\n    command: echo {refs}\n"));
    assert_eq!(p.field.as_deref(), Some("command"));
    assert!(p.message.contains("the command is 120005 bytes (180005 with its params quoted)"), "{}", p.message);
    let fits = format!("name: x\ntasks:\n  - name: a\n    command: echo {}\n", "x".repeat(131_065));
    assert!(WorkflowSpec::parse("wf.yaml", &fits).is_ok());
}

#[test]
fn a_timeout_strategy_needs_a_timeout() {
    let p = single("name: x\ntasks:\n  - name: a\n    command: echo\n    timeout_strategy: warn\n");
    assert_eq!((p.task.as_deref(), p.field.as_deref(), p.line), (Some("a"), Some("timeout_strategy"), Some(5)));
    assert!(p.message.contains("the task has no timeout"), "{}", p.message);
}

#[test]
fn timeout_strategy_names_round_trip() {
    for st in TimeoutStrategy::ALL {
        assert_eq!(TimeoutStrategy::parse(st.as_str()), Some(st));
    }
    assert_eq!(TimeoutStrategy::parse("ignore"), None);
}

#[test]
fn a_schedule_and_an_execution_type_parse_with_defaults() {
    let spec = WorkflowSpec::parse(
        "x.yaml",
        "name: x\nexecution: serial_wait\nschedule:\n  cron: '0 30 2 * * *'\n  timezone: Europe/Berlin\n  start: 2026-01-01\n  catchup: all\ntasks:\n  - { name: a, command: echo }\n",
    )
    .expect("valid");
    assert_eq!(spec.execution, Execution::SerialWait);
    let s = spec.schedule.expect("a schedule");
    assert_eq!((s.cron.as_str(), s.timezone.as_str(), s.catchup), ("0 30 2 * * *", "Europe/Berlin", Catchup::All));
    assert_eq!(s.start.map(|t| t.to_rfc3339()).as_deref(), Some("2025-12-31T23:00:00+00:00"), "midnight in Berlin");
    let plain = WorkflowSpec::parse(
        "x.yaml",
        "name: x\nschedule: { cron: '@daily' }\ntasks:\n  - { name: a, command: echo }\n",
    )
    .expect("valid");
    let s = plain.schedule.expect("a schedule");
    assert_eq!((s.timezone.as_str(), s.catchup), ("UTC", Catchup::Latest));
    assert_eq!(plain.execution, Execution::Parallel);
}

#[test]
fn a_bad_schedule_names_its_field_and_line() {
    let p = single("name: x\nschedule:\n  cron: 'every day'\ntasks:\n  - { name: a, command: echo }\n");
    assert_eq!((p.field.as_deref(), p.line), (Some("schedule.cron"), Some(3)));
    assert!(p.message.contains("bad cron expression"), "{}", p.message);
    let p = single(
        "name: x\nschedule:\n  cron: '@daily'\n  timezone: Mars/Olympus\ntasks:\n  - { name: a, command: echo }\n",
    );
    assert_eq!((p.field.as_deref(), p.line), (Some("schedule.timezone"), Some(4)));
    let p =
        single("name: x\nschedule:\n  cron: '@daily'\n  catchup: sometimes\ntasks:\n  - { name: a, command: echo }\n");
    assert_eq!(p.field.as_deref(), Some("schedule.catchup"));
    let p =
        single("name: x\nschedule:\n  cron: '@daily'\n  start: yesterday\ntasks:\n  - { name: a, command: echo }\n");
    assert_eq!(p.field.as_deref(), Some("schedule.start"));
    let p = single("name: x\nexecution: queued\ntasks:\n  - { name: a, command: echo }\n");
    assert_eq!((p.field.as_deref(), p.line), (Some("execution"), Some(2)));
}

#[test]
fn time_expressions_are_checked_in_commands_and_params() {
    let p = single("name: x\ntasks:\n  - name: a\n    command: echo $[next_day(yyyyMMdd)]\n");
    assert_eq!((p.task.as_deref(), p.field.as_deref(), p.line), (Some("a"), Some("command"), Some(4)));
    assert!(p.message.contains("unknown function next_day()"), "{}", p.message);
    let p = single("name: x\nparams: { day: '$[yyyyMMddQ]' }\ntasks:\n  - { name: a, command: echo }\n");
    assert_eq!(p.field.as_deref(), Some("params"));
    assert!(p.message.contains("param day:"), "{}", p.message);
    WorkflowSpec::parse(
        "x.yaml",
        "name: x\nparams: { day: '$[yyyy-MM-dd-1]' }\ntasks:\n  - { name: a, command: 'echo ${day} ${system.biz.date} $[add_months(yyyyMMdd,-1)]' }\n",
    )
    .expect("valid expressions");
}
