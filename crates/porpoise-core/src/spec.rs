//! The YAML workflow spec: parsing, defaults and validation. Every problem found is reported
//! with the file, the task and the field it concerns, and the line where one can be found.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits;
use crate::schedule::{Catchup, Schedule, ScheduleSpec};
use crate::{Dag, Priority};

/// A validated workflow: what `porpoise workflow apply` stores and a run executes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowSpec {
    pub name: String,
    pub description: Option<String>,
    pub priority: Priority,
    /// The run's time limit, counted from its start.
    #[serde(with = "opt_millis")]
    pub timeout: Option<Duration>,
    /// What happens at the run's timeout: `warn` says so, `fail` stops the run, `warnfail` both.
    #[serde(default)]
    pub timeout_strategy: TimeoutStrategy,
    /// What a failed task does to the rest of the run.
    #[serde(default)]
    pub failure_strategy: FailureStrategy,
    /// Whether runs of the workflow may overlap.
    #[serde(default)]
    pub execution: Execution,
    /// When the workflow runs by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    pub params: BTreeMap<String, String>,
    pub tasks: Vec<TaskSpec>,
}

/// One validated task of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub name: String,
    pub task_type: TaskType,
    pub command: String,
    pub depends_on: Vec<String>,
    pub retries: u32,
    #[serde(with = "millis")]
    pub retry_interval: Duration,
    #[serde(with = "opt_millis")]
    pub timeout: Option<Duration>,
    pub timeout_strategy: TimeoutStrategy,
    pub priority: Priority,
    pub worker_group: String,
    /// How long the task waits for a live worker of its group before it fails.
    #[serde(with = "millis", default = "default_worker_group_wait")]
    pub worker_group_wait: Duration,
    /// The task group whose slots limit how many of its tasks run at once.
    pub task_group: Option<String>,
    /// The task's place among its group's waiters: higher first, then first come.
    #[serde(default)]
    pub task_group_priority: i32,
    /// Params whose text is pasted into the command as written, instead of being quoted
    /// ([`crate::shell`]): the author's explicit opt-in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raw_params: Vec<String>,
    /// The OS user the task runs as on its worker (DolphinScheduler's tenant); the worker's own
    /// user when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// How long a task waits for a live worker of its group unless its spec says otherwise.
pub const DEFAULT_WORKER_GROUP_WAIT: Duration = Duration::from_secs(600);

fn default_worker_group_wait() -> Duration {
    DEFAULT_WORKER_GROUP_WAIT
}

/// How a task is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskType {
    /// `bash -c COMMAND` in the task's working directory.
    Shell,
}

impl TaskType {
    pub const ALL: [TaskType; 1] = [TaskType::Shell];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shell => "shell",
        }
    }
}

/// What happens when a task runs past its timeout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeoutStrategy {
    /// Log a warning and count it; the task keeps running.
    Warn,
    /// Kill the task; it fails (and may retry).
    #[default]
    Fail,
    /// Both: warn, then kill.
    WarnFail,
}

impl TimeoutStrategy {
    pub const ALL: [TimeoutStrategy; 3] = [Self::Warn, Self::Fail, Self::WarnFail];

    /// The name used in specs, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warn => "warn",
            Self::Fail => "fail",
            Self::WarnFail => "warnfail",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// What a failed task (no retry left) does to the rest of the run, as in DolphinScheduler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureStrategy {
    /// Nothing new starts and waiting retries are called off; the run fails once what runs ends.
    #[default]
    End,
    /// Every branch that does not depend on the failed task runs on; the run fails at the end.
    Continue,
}

impl FailureStrategy {
    pub const ALL: [FailureStrategy; 2] = [Self::End, Self::Continue];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::End => "end",
            Self::Continue => "continue",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// Whether runs of one workflow may overlap (DolphinScheduler's execution types).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Execution {
    /// Runs overlap freely.
    #[default]
    Parallel,
    /// A new run waits (`waiting`) until the runs before it have ended; waiters start in order.
    SerialWait,
    /// A new run that would overlap an active one is discarded (it ends `discarded`).
    SerialDiscard,
    /// As `serial_wait`, but the waiter of highest priority starts next.
    SerialPriority,
}

impl Execution {
    pub const ALL: [Execution; 4] = [Self::Parallel, Self::SerialWait, Self::SerialDiscard, Self::SerialPriority];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Parallel => "parallel",
            Self::SerialWait => "serial_wait",
            Self::SerialDiscard => "serial_discard",
            Self::SerialPriority => "serial_priority",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// The default pause between two attempts of a task, as in DolphinScheduler.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(60);
/// The worker group a task runs in when its spec names none.
pub const DEFAULT_WORKER_GROUP: &str = "default";

/// One thing wrong with a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    pub task: Option<String>,
    pub field: Option<String>,
    pub line: Option<usize>,
    pub message: String,
}

/// A spec that cannot be used, with every problem found in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    pub file: String,
    pub problems: Vec<SpecProblem>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file)?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
            }
            f.write_str(": ")?;
            match (&p.task, &p.field) {
                (Some(t), Some(field)) => write!(f, "task {t:?}, field {field:?}: ")?,
                (Some(t), None) => write!(f, "task {t:?}: ")?,
                (None, Some(field)) => write!(f, "field {field:?}: ")?,
                (None, None) => {}
            }
            f.write_str(&p.message)?;
        }
        Ok(())
    }
}

/// A YAML scalar where the spec wants text: numbers and booleans are accepted as their text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Str(s) => f.write_str(s),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Bool(b) => write!(f, "{b}"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    name: Option<Scalar>,
    description: Option<String>,
    priority: Option<Scalar>,
    timeout: Option<Scalar>,
    timeout_strategy: Option<Scalar>,
    failure_strategy: Option<Scalar>,
    execution: Option<Scalar>,
    schedule: Option<RawSchedule>,
    #[serde(default)]
    params: BTreeMap<String, Scalar>,
    #[serde(default)]
    tasks: Vec<RawTask>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    cron: Option<Scalar>,
    timezone: Option<Scalar>,
    start: Option<Scalar>,
    end: Option<Scalar>,
    catchup: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: Option<Scalar>,
    #[serde(rename = "type")]
    task_type: Option<Scalar>,
    command: Option<String>,
    #[serde(default)]
    depends_on: Vec<Scalar>,
    retries: Option<u32>,
    retry_interval: Option<Scalar>,
    timeout: Option<Scalar>,
    timeout_strategy: Option<Scalar>,
    priority: Option<Scalar>,
    worker_group: Option<Scalar>,
    worker_group_wait: Option<Scalar>,
    task_group: Option<Scalar>,
    task_group_priority: Option<i32>,
    #[serde(default)]
    raw_params: Vec<Scalar>,
    tenant: Option<Scalar>,
}

impl WorkflowSpec {
    /// Parses and validates a spec. `file` names the source in every problem reported.
    pub fn parse(file: &str, source: &str) -> Result<WorkflowSpec, SpecError> {
        let refuse = |line, message| SpecError {
            file: file.to_string(),
            problems: vec![SpecProblem { task: None, field: None, line, message }],
        };
        if source.len() > limits::MAX_SPEC_BYTES {
            let message = format!(
                "the spec is {} bytes; a spec may have at most {} (1 MiB)",
                source.len(),
                limits::MAX_SPEC_BYTES
            );
            return Err(refuse(None, message));
        }
        if let Some(line) = limits::too_deep(source, limits::MAX_NESTING) {
            let message = format!("the spec nests deeper than {} levels", limits::MAX_NESTING);
            return Err(refuse(Some(line), message));
        }
        let raw: RawWorkflow = serde_yaml_ng::from_str(source)
            .map_err(|e| SpecError { file: file.to_string(), problems: vec![yaml_problem(source, &e)] })?;
        let mut v = Validator { source, problems: Vec::new() };
        let spec = v.workflow(raw);
        if v.problems.is_empty() { Ok(spec) } else { Err(SpecError { file: file.to_string(), problems: v.problems }) }
    }

    /// The task graph. The spec was validated, so the graph has no cycle.
    pub fn dag(&self) -> Dag {
        let index: HashMap<&str, usize> = self.tasks.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
        let mut edges = Vec::new();
        for (i, t) in self.tasks.iter().enumerate() {
            for d in &t.depends_on {
                if let Some(&u) = index.get(d.as_str()) {
                    edges.push((u, i));
                }
            }
        }
        Dag::new(self.tasks.iter().map(|t| t.name.clone()).collect(), &edges)
    }

    pub fn task(&self, name: &str) -> Option<&TaskSpec> {
        self.tasks.iter().find(|t| t.name == name)
    }
}

struct Validator<'a> {
    source: &'a str,
    problems: Vec<SpecProblem>,
}

impl Validator<'_> {
    fn problem(&mut self, task: Option<&str>, field: Option<&str>, message: String) {
        let line = locate(self.source, task, field);
        self.problems.push(SpecProblem {
            task: task.map(str::to_string),
            field: field.map(str::to_string),
            line,
            message,
        });
    }

    fn workflow(&mut self, raw: RawWorkflow) -> WorkflowSpec {
        let name = match raw.name.map(|n| n.to_string()) {
            None => {
                self.problem(None, Some("name"), "the workflow has no name".into());
                String::new()
            }
            Some(n) => {
                if let Err(m) = check_name(&n) {
                    self.problem(None, Some("name"), format!("workflow name {m}"));
                }
                n
            }
        };
        let priority = self.priority(None, raw.priority.as_ref());
        let timeout = self.duration(None, "timeout", raw.timeout.as_ref(), false);
        let timeout_strategy = match raw.timeout_strategy.map(|s| s.to_string()) {
            None => TimeoutStrategy::default(),
            Some(s) => {
                if raw.timeout.is_none() {
                    self.problem(None, Some("timeout_strategy"), "is set but the workflow has no timeout".into());
                }
                TimeoutStrategy::parse(&s).unwrap_or_else(|| {
                    let m = format!("unknown timeout strategy {s:?} (expected warn, fail or warnfail)");
                    self.problem(None, Some("timeout_strategy"), m);
                    TimeoutStrategy::default()
                })
            }
        };
        let failure_strategy = match raw.failure_strategy.map(|s| s.to_string()) {
            None => FailureStrategy::default(),
            Some(s) => FailureStrategy::parse(&s).unwrap_or_else(|| {
                let m = format!("unknown failure strategy {s:?} (expected end or continue)");
                self.problem(None, Some("failure_strategy"), m);
                FailureStrategy::default()
            }),
        };
        let execution = match raw.execution.map(|s| s.to_string()) {
            None => Execution::default(),
            Some(s) => Execution::parse(&s).unwrap_or_else(|| {
                let m = format!(
                    "unknown execution type {s:?} (expected parallel, serial_wait, serial_discard or serial_priority)"
                );
                self.problem(None, Some("execution"), m);
                Execution::default()
            }),
        };
        let schedule = raw.schedule.and_then(|r| self.schedule(r));
        let mut params = BTreeMap::new();
        for (k, v) in raw.params {
            if let Err(m) = check_param_name(&k) {
                self.problem(None, Some("params"), m);
            }
            let v = v.to_string();
            if let Err(e) = crate::dateparams::check(&v) {
                self.problem(None, Some("params"), format!("param {k}: {e}"));
            }
            params.insert(k, v);
        }
        if raw.tasks.is_empty() {
            self.problem(None, Some("tasks"), "the workflow has no tasks".into());
        }
        let tasks: Vec<TaskSpec> = raw.tasks.into_iter().enumerate().map(|(i, t)| self.task(i, t)).collect();
        self.graph(&tasks);
        WorkflowSpec {
            name,
            description: raw.description,
            priority,
            timeout,
            timeout_strategy,
            failure_strategy,
            execution,
            schedule,
            params,
            tasks,
        }
    }

    /// The workflow's `schedule:`; `None` (with the problems said) when it is invalid.
    fn schedule(&mut self, raw: RawSchedule) -> Option<ScheduleSpec> {
        let Some(cron) = raw.cron.map(|c| c.to_string()) else {
            self.problem(None, Some("schedule.cron"), "the schedule has no cron expression".into());
            return None;
        };
        let timezone = raw.timezone.map_or_else(|| "UTC".to_string(), |t| t.to_string());
        let tz = match crate::schedule::parse_timezone(&timezone) {
            Ok(tz) => Some(tz),
            Err(m) => {
                self.problem(None, Some("schedule.timezone"), m);
                None
            }
        };
        let mut instant = |field: &str, raw: Option<Scalar>| {
            let text = raw?.to_string();
            match crate::schedule::parse_instant(&text, tz.unwrap_or(chrono_tz::UTC)) {
                Ok(t) => Some(t),
                Err(m) => {
                    self.problem(None, Some(field), m);
                    None
                }
            }
        };
        let start = instant("schedule.start", raw.start);
        let end = instant("schedule.end", raw.end);
        let catchup = match raw.catchup.map(|c| c.to_string()) {
            None => Catchup::default(),
            Some(c) => c.parse().unwrap_or_else(|m| {
                self.problem(None, Some("schedule.catchup"), m);
                Catchup::default()
            }),
        };
        let spec = ScheduleSpec { cron, timezone, start, end, catchup };
        match Schedule::new(spec.clone()) {
            Ok(_) => Some(spec),
            Err(e) => {
                // a bad time zone was said already
                if e.field != "timezone" {
                    self.problem(None, Some(&format!("schedule.{}", e.field)), e.message);
                }
                None
            }
        }
    }

    fn task(&mut self, index: usize, raw: RawTask) -> TaskSpec {
        let name = match raw.name.map(|n| n.to_string()) {
            Some(n) if !n.trim().is_empty() => {
                if let Err(m) = check_name(&n) {
                    self.problem(Some(&n), Some("name"), format!("task name {m}"));
                }
                n
            }
            _ => {
                let label = format!("#{}", index + 1);
                self.problem(Some(&label), Some("name"), "the task has no name".into());
                label
            }
        };
        let t = Some(name.as_str());
        let task_type = match raw.task_type.map(|s| s.to_string()) {
            None => TaskType::Shell,
            Some(s) => match TaskType::ALL.into_iter().find(|k| k.as_str() == s) {
                Some(k) => k,
                None => {
                    let known: Vec<_> = TaskType::ALL.iter().map(|k| k.as_str()).collect();
                    self.problem(t, Some("type"), format!("unknown task type {s:?} (supported: {})", known.join(", ")));
                    TaskType::Shell
                }
            },
        };
        let command = raw.command.unwrap_or_default();
        if command.trim().is_empty() {
            self.problem(t, Some("command"), "the command is empty".into());
        }
        if let Err(e) = crate::dateparams::check(&command) {
            self.problem(t, Some("command"), e.to_string());
        }
        // as bash gets it: every `${name}` that could be a param quoted
        let runs_as = crate::shell::reference_params(&command, is_param_name).len();
        if runs_as >= limits::MAX_ARG_BYTES {
            let message = format!(
                "the command is {} bytes ({runs_as} with its params quoted); one exec argument may have at most {} (128 KiB)",
                command.len(),
                limits::MAX_ARG_BYTES - 1
            );
            self.problem(t, Some("command"), message);
        }
        let mut depends_on: Vec<String> = Vec::new();
        for d in raw.depends_on.iter().map(Scalar::to_string) {
            if depends_on.contains(&d) {
                self.problem(t, Some("depends_on"), format!("lists {d:?} twice"));
            } else {
                depends_on.push(d);
            }
        }
        let retry_interval =
            self.duration(t, "retry_interval", raw.retry_interval.as_ref(), true).unwrap_or(DEFAULT_RETRY_INTERVAL);
        let timeout = self.duration(t, "timeout", raw.timeout.as_ref(), false);
        let timeout_strategy = match raw.timeout_strategy.map(|s| s.to_string()) {
            None => TimeoutStrategy::default(),
            Some(s) => match TimeoutStrategy::parse(&s) {
                Some(st) => {
                    if timeout.is_none() && raw.timeout.is_none() {
                        self.problem(t, Some("timeout_strategy"), "is set but the task has no timeout".into());
                    }
                    st
                }
                None => {
                    self.problem(
                        t,
                        Some("timeout_strategy"),
                        format!("unknown timeout strategy {s:?} (expected warn, fail or warnfail)"),
                    );
                    TimeoutStrategy::default()
                }
            },
        };
        let priority = self.priority(t, raw.priority.as_ref());
        let worker_group = match raw.worker_group.map(|g| g.to_string()) {
            None => DEFAULT_WORKER_GROUP.to_string(),
            Some(g) => {
                if let Err(m) = check_name(&g) {
                    self.problem(t, Some("worker_group"), format!("worker group {m}"));
                }
                g
            }
        };
        let worker_group_wait = self
            .duration(t, "worker_group_wait", raw.worker_group_wait.as_ref(), false)
            .unwrap_or(DEFAULT_WORKER_GROUP_WAIT);
        let task_group = raw.task_group.map(|g| g.to_string());
        if let Some(g) = &task_group
            && let Err(m) = check_name(g)
        {
            self.problem(t, Some("task_group"), format!("task group {m}"));
        }
        if raw.task_group_priority.is_some() && task_group.is_none() {
            self.problem(t, Some("task_group_priority"), "task_group_priority without a task_group".into());
        }
        let tenant = raw.tenant.map(|s| s.to_string());
        if let Some(user) = &tenant
            && let Err(m) = check_tenant(user)
        {
            self.problem(t, Some("tenant"), m);
        }
        let mut raw_params = Vec::new();
        for p in raw.raw_params.iter().map(Scalar::to_string) {
            if let Err(m) = check_param_name(&p) {
                self.problem(t, Some("raw_params"), m);
            } else if !command.contains(&format!("${{{p}}}")) {
                self.problem(t, Some("raw_params"), format!("the command has no ${{{p}}} to paste {p} into"));
            }
            raw_params.push(p);
        }
        TaskSpec {
            name,
            task_type,
            command,
            depends_on,
            retries: raw.retries.unwrap_or(0),
            retry_interval,
            timeout,
            timeout_strategy,
            priority,
            worker_group,
            worker_group_wait,
            task_group,
            task_group_priority: raw.task_group_priority.unwrap_or(0),
            raw_params,
            tenant,
        }
    }

    fn priority(&mut self, task: Option<&str>, raw: Option<&Scalar>) -> Priority {
        match raw.map(Scalar::to_string) {
            None => Priority::default(),
            Some(s) => s.parse().unwrap_or_else(|m| {
                self.problem(task, Some("priority"), m);
                Priority::default()
            }),
        }
    }

    fn duration(&mut self, task: Option<&str>, field: &str, raw: Option<&Scalar>, zero_ok: bool) -> Option<Duration> {
        let text = raw?.to_string();
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d.is_zero() && !zero_ok => {
                self.problem(task, Some(field), format!("bad duration {text:?}: must be greater than zero"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(task, Some(field), format!("bad duration {text:?}: {e} (write it like 30s, 5m or 1h30m)"));
                None
            }
        }
    }

    fn graph(&mut self, tasks: &[TaskSpec]) {
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, t) in tasks.iter().enumerate() {
            if let Some(&first) = index.get(t.name.as_str()) {
                self.problem(
                    Some(&t.name),
                    Some("name"),
                    format!("duplicate task name (task #{} has it too)", first + 1),
                );
            } else {
                index.insert(&t.name, i);
            }
        }
        let mut edges = Vec::new();
        for (i, t) in tasks.iter().enumerate() {
            for d in &t.depends_on {
                if *d == t.name {
                    self.problem(Some(&t.name), Some("depends_on"), "the task depends on itself".into());
                } else if let Some(&u) = index.get(d.as_str()) {
                    edges.push((u, i));
                } else {
                    self.problem(Some(&t.name), Some("depends_on"), format!("depends on unknown task {d:?}"));
                }
            }
        }
        let dag = Dag::new(tasks.iter().map(|t| t.name.clone()).collect(), &edges);
        if let Some(cycle) = dag.find_cycle() {
            let mut names: Vec<&str> = cycle.iter().map(|&t| dag.name(t)).collect();
            names.push(dag.name(cycle[0]));
            self.problem(
                Some(dag.name(cycle[0])),
                Some("depends_on"),
                format!("dependency cycle: {}", names.join(" -> ")),
            );
        }
    }
}

/// The rule for the names of workflows, tasks, worker groups and task groups: 1–128 letters,
/// digits, `-`, `_` and `.`.
pub fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.len() > 128 {
        return Err(format!("{s:?} is longer than 128 characters"));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(format!("{s:?} has {c:?}: use letters, digits, '-', '_' and '.'"));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        // `-rf` would read as a flag, `.` and `..` as directories
        return Err(format!("{s:?} must start with a letter or a digit"));
    }
    Ok(())
}

/// Checks a tenant (an OS user name): what `useradd` accepts, up to 32 characters.
pub fn check_tenant(user: &str) -> Result<(), String> {
    let mut chars = user.chars();
    let ok = user.len() <= 32
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!("tenant {user:?} is not a user name: lower-case letters, digits, '_' and '-', at most 32"))
    }
}

/// Environment variables that change how bash, the dynamic loader or libc behave: a param of
/// one of these names would run code or change files the workflow never mentions.
const RESERVED_PARAMS: [&str; 31] = [
    "BASH_ENV",
    "ENV",
    "PATH",
    "IFS",
    "SHELLOPTS",
    "BASHOPTS",
    "PS1",
    "PS2",
    "PS3",
    "PS4",
    "PROMPT_COMMAND",
    "CDPATH",
    "GLOBIGNORE",
    "EXECIGNORE",
    "FUNCNEST",
    "HOME",
    "SHELL",
    "PWD",
    "OLDPWD",
    "TMOUT",
    "POSIXLY_CORRECT",
    "INPUTRC",
    "HISTFILE",
    "GCONV_PATH",
    "GETCONF_DIR",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "TMPDIR",
];

/// Prefixes of reserved environment variables: the loader's (`LD_PRELOAD`, …), bash's own
/// (`BASH_XTRACEFD`, …), glibc's `MALLOC_*`, and the worker's `PORPOISE_*`.
const RESERVED_PARAM_PREFIXES: [&str; 4] = ["LD_", "BASH_", "MALLOC_", "PORPOISE_"];

/// Whether `s` can name a param: letters, digits and `_`, not starting with a digit (so that
/// `${name}` substitution and the environment variable of the same name work).
fn is_param_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a param name (in a spec or a run request); `Err` says what is wrong with it.
pub fn check_param_name(name: &str) -> Result<(), String> {
    if !is_param_name(name) {
        return Err(format!("param name {name:?} must be letters, digits and _ and not start with a digit"));
    }
    if RESERVED_PARAMS.contains(&name) || RESERVED_PARAM_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Err(format!(
            "param name {name:?} is reserved: as an environment variable it would change how bash or the loader behaves"
        ));
    }
    Ok(())
}

/// Turns a YAML or shape error into a problem; `tasks[3]` in serde's path becomes the task's
/// name where the source lets us find it.
fn yaml_problem(source: &str, e: &serde_yaml_ng::Error) -> SpecProblem {
    let line = e.location().map(|l| l.line());
    let text = e.to_string();
    // serde_yaml_ng prefixes the path: "tasks[1]: unknown field `comand`, expected ... at line 7 column 5"
    let text = text.split(" at line ").next().unwrap_or(&text).to_string();
    let (path, message) = match text.split_once(": ") {
        Some((p, m)) if !p.contains(' ') => (Some(p.to_string()), m.to_string()),
        _ => (None, text.clone()),
    };
    let mut task = None;
    let mut field = None;
    if let Some(path) = &path {
        if let Some(rest) = path.strip_prefix("tasks[") {
            let (idx, after) = rest.split_once(']').unwrap_or((rest, ""));
            if let Ok(i) = idx.parse::<usize>() {
                task = Some(task_name_at(source, i).unwrap_or_else(|| format!("#{}", i + 1)));
            }
            let after = after.trim_start_matches('.');
            if !after.is_empty() {
                field = Some(after.to_string());
            }
        } else if path != "." {
            field = Some(path.clone());
        }
    }
    let mut message = message;
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((key, expected)) = rest.split_once('`')
    {
        field = Some(key.to_string());
        message = format!("unknown key{}", expected.replacen(", expected", " (expected", 1) + ")");
    }
    SpecProblem { task, field, line, message }
}

fn task_name_at(source: &str, index: usize) -> Option<String> {
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(source).ok()?;
    let name = value.get("tasks")?.get(index)?.get("name")?;
    match name {
        serde_yaml_ng::Value::String(s) => Some(s.clone()),
        other => serde_yaml_ng::to_string(other).ok().map(|s| s.trim().to_string()),
    }
}

/// Best-effort line of a task (its `name:` line) or of a field within it, 1-based.
fn locate(source: &str, task: Option<&str>, field: Option<&str>) -> Option<usize> {
    let lines: Vec<&str> = source.lines().collect();
    let key_of = |line: &str| -> Option<(usize, String, String)> {
        let indent = line.len() - line.trim_start().len();
        let body = line.trim_start().trim_start_matches("- ");
        let (k, v) = body.split_once(':')?;
        let v = v.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
        Some((indent, k.trim().to_string(), v))
    };
    let (start, end) = match task {
        None => (0, lines.len()),
        Some(t) => {
            let start = lines.iter().position(|l| matches!(key_of(l), Some((_, k, v)) if k == "name" && v == t))?;
            let item_indent = lines[start].len() - lines[start].trim_start().len();
            let end = lines[start + 1..]
                .iter()
                .position(|l| {
                    let indent = l.len() - l.trim_start().len();
                    l.trim_start().starts_with("- ") && indent <= item_indent
                })
                .map_or(lines.len(), |p| start + 1 + p);
            (start, end)
        }
    };
    match field {
        None => Some(start + 1),
        Some(f) => {
            // `schedule.cron`: the key `cron` after the key `schedule` (or that line)
            let (start, f) = match f.split_once('.') {
                Some((parent, child)) => {
                    let p = lines[start..end].iter().position(|l| matches!(key_of(l), Some((_, k, _)) if k == parent));
                    match p {
                        Some(p) => (start + p, child),
                        None => return None,
                    }
                }
                None => (start, f),
            };
            let found = lines[start..end].iter().position(|l| matches!(key_of(l), Some((_, k, _)) if k == f));
            let dotted = field.is_some_and(|f| f.contains('.'));
            Some(found.map_or(start, |p| start + p) + 1).filter(|_| found.is_some() || task.is_some() || dotted)
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|o| o.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests;
