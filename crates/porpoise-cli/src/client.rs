//! Client subcommands: apply and list workflows, start runs (and wait for them), show a run's
//! status, print a task's log. Each failure is one line on stderr and a non-zero exit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use porpoise_proto::v1::admin_service_client::AdminServiceClient;
use porpoise_proto::v1::{
    ApplyWorkflowRequest, CreateTokenRequest, DeleteTaskGroupRequest, DeleteTokenRequest, GetRunReply, GetRunRequest,
    GetTaskInstanceLogRequest, GetWorkflowRequest, ListRunsRequest, ListTaskGroupsRequest, ListTokensRequest,
    ListWorkflowsRequest, RerunRunRequest, RunControlRequest, RunSummary, StartRunRequest, TaskControlRequest,
    TaskGroupRequest, WaitRunRequest,
};
use porpoise_proto::{AdminClient, Bearer};
use tonic::Code;
use tonic::transport::Channel;

use crate::table::Table;
use crate::{EXIT_INVALID, errln, fail, outln, output};

/// The server the CLI talks to when neither `--server` nor `PORPOISE_SERVER` says otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:5678";

/// A failed client command: its exit code and message.
#[derive(Debug)]
pub struct ClientError {
    pub code: u8,
    pub message: String,
}

impl ClientError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self { code: EXIT_INVALID, message: message.into() }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self { code: 1, message: message.into() }
    }

    /// Standard output's reader went away: stop quietly, successfully.
    pub fn reader_gone() -> Self {
        Self { code: 0, message: String::new() }
    }

    pub fn exit(self) -> ExitCode {
        if self.code == 0 && self.message.is_empty() {
            return ExitCode::SUCCESS;
        }
        fail(self.code, self.message)
    }
}

pub(crate) fn from_status(s: tonic::Status) -> ClientError {
    match s.code() {
        Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition => ClientError::invalid(s.message()),
        Code::OutOfRange | Code::ResourceExhausted if s.message().contains("message length too large") => {
            ClientError::invalid(format!(
                "the request is larger than a Porpoise server accepts ({} bytes): {}",
                porpoise_proto::MAX_MESSAGE_BYTES,
                s.message()
            ))
        }
        _ => ClientError::failed(s.message()),
    }
}

/// Where the CLI reaches a master, and the API token it sends.
#[derive(Debug, Clone)]
pub struct Server {
    pub addr: String,
    pub token: Option<String>,
    /// The cluster CA, to check an `https://` master's certificate.
    pub tls_ca: Option<PathBuf>,
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

/// Connects to the master's AdminService at `server`, with its token.
pub async fn connect(server: &Server) -> Result<AdminClient, ClientError> {
    let bearer =
        Bearer::new(server.token.as_deref()).map_err(|e| ClientError::invalid(format!("PORPOISE_TOKEN: {e}")))?;
    let endpoint = match (server.addr.strip_prefix("https://"), &server.tls_ca) {
        (Some(addr), Some(ca)) => porpoise_proto::tls::Transport::server_checked(ca)
            .and_then(|t| t.endpoint(addr, porpoise_proto::tls::MASTER))
            .map_err(ClientError::invalid)?,
        (Some(_), None) => {
            return Err(ClientError::invalid(format!(
                "{server} is https: give the cluster CA with --tls-ca (or PORPOISE_TLS_CA)"
            )));
        }
        (None, _) => Channel::from_shared(server.addr.clone())
            .map_err(|e| ClientError::invalid(format!("bad server address {server:?}: {e}")))?,
    }
    .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| ClientError::failed(format!("cannot reach the Porpoise server at {server}: {e}")))?;
    Ok(AdminServiceClient::with_interceptor(channel, bearer))
}

/// Reads a spec file, or standard input for `-`: its name as messages show it and its text.
/// A file larger than a spec may be is refused before it is read.
pub fn read_spec(file: &Path) -> Result<(String, String), String> {
    use std::io::Read;
    let limit = porpoise_core::limits::MAX_SPEC_BYTES;
    let too_big = |shown: &str, bytes: u64| {
        format!("{shown}: the spec is {bytes} bytes; a spec may have at most {limit} (1 MiB)")
    };
    if file == Path::new("-") {
        let shown = "(standard input)".to_string();
        let mut text = String::new();
        std::io::stdin()
            .lock()
            .take(limit as u64 + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("{shown}: cannot read: {e}"))?;
        if text.len() > limit {
            return Err(format!(
                "{shown}: the spec is more than {limit} bytes; a spec may have at most {limit} (1 MiB)"
            ));
        }
        return Ok((shown, text));
    }
    let shown = file.display().to_string();
    let meta = std::fs::metadata(file).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    if meta.len() > limit as u64 {
        return Err(too_big(&shown, meta.len()));
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    Ok((shown, text))
}

/// `porpoise workflow apply -f FILE...` (`-f -`: standard input)
pub async fn apply(server: &Server, files: &[PathBuf]) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    for file in files {
        let (shown, spec_yaml) = read_spec(file).map_err(ClientError::invalid)?;
        // validate locally first: the same message as `workflow validate`, no round trip
        porpoise_core::WorkflowSpec::parse(&shown, &spec_yaml).map_err(|e| ClientError::invalid(e.to_string()))?;
        let reply = client
            .apply_workflow(ApplyWorkflowRequest { spec_yaml, file_name: shown.clone() })
            .await
            .map_err(from_status)?
            .into_inner();
        let what = if reply.changed { "applied" } else { "unchanged" };
        outln!("{shown}: {what}: workflow {} version {}", reply.name, reply.version)?;
    }
    Ok(())
}

/// `porpoise workflow list [--json]`
pub async fn list(server: &Server, json: bool) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    let reply = client.list_workflows(ListWorkflowsRequest {}).await.map_err(from_status)?.into_inner();
    if json {
        let all: Vec<serde_json::Value> = reply
            .workflows
            .iter()
            .map(|w| {
                serde_json::json!({
                    "name": w.name,
                    "version": w.version,
                    "tasks": w.task_count,
                    "updated_at_ms": w.updated_at_ms,
                    "schedule": w.schedule.as_ref().map(crate::schedule::to_json),
                })
            })
            .collect();
        outln!("{:#}", serde_json::Value::Array(all))?;
        return Ok(());
    }
    let mut table = Table::new(&["WORKFLOW", "VERSION>", "TASKS>", "SCHEDULE", "NEXT FIRE"]);
    for w in &reply.workflows {
        let (schedule, next) = match &w.schedule {
            None => ("-".to_string(), "-".to_string()),
            Some(s) => {
                let paused = if s.paused { " (paused)" } else { "" };
                (format!("{} {}{paused}", s.cron, s.timezone), time(s.next_fire_ms))
            }
        };
        table.row([w.name.clone(), w.version.to_string(), w.task_count.to_string(), schedule, next]);
    }
    table.print()
}

/// Parses `k=v` params.
pub fn parse_params(raw: &[String]) -> Result<HashMap<String, String>, ClientError> {
    raw.iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| ClientError::invalid(format!("--param {p:?} is not name=value")))
        })
        .collect()
}

/// `porpoise run NAME [--param k=v]... [--wait]`: prints the run id; with `wait`, waits for the
/// run to end and fails unless it succeeded.
pub async fn run(
    server: &Server,
    name: &str,
    params: &[String],
    wait: bool,
    priority: Option<&str>,
    count: u32,
) -> Result<(), ClientError> {
    let params = parse_params(params)?;
    let mut client = connect(server).await?;
    let priority = priority.unwrap_or_default().to_string();
    let reply = client
        .start_run(StartRunRequest { workflow_name: name.to_string(), params, priority, count })
        .await
        .map_err(from_status)?
        .into_inner();
    // a server from before --count knows only run_id
    let ids = if reply.run_ids.is_empty() { vec![reply.run_id] } else { reply.run_ids };
    if count > 1 && ids.len() != count as usize {
        return Err(ClientError::failed(format!(
            "asked for {count} runs, the server started {} (an older server ignores --count)",
            ids.len()
        )));
    }
    for id in &ids {
        outln!("{id}")?;
    }
    if !wait {
        return Ok(());
    }
    let mut failed = Vec::new();
    for &id in &ids {
        let run = wait_run(&mut client, id).await?;
        if run.state == "success" {
            errln!("run {id} succeeded");
            continue;
        }
        let why = if run.state_reason.is_empty() { String::new() } else { format!(": {}", run.state_reason) };
        let ended = format!("run {id} ended in {}{why}", run.state);
        if ids.len() == 1 {
            return Err(ClientError::failed(ended));
        }
        errln!("{ended}");
        failed.push(id);
    }
    match failed.as_slice() {
        [] => Ok(()),
        many => Err(ClientError::failed(format!(
            "{} of {} runs did not succeed: {}",
            many.len(),
            ids.len(),
            many.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Run `id` once it has ended: the server answers when it ends (each call waits up to a
/// minute; a run still going is asked about again).
async fn wait_run(client: &mut AdminClient, id: i64) -> Result<RunSummary, ClientError> {
    loop {
        let request = WaitRunRequest { run_id: id, timeout_ms: WAIT_CALL.as_millis() as u32 };
        let reply = client.wait_run(request).await.map_err(from_status)?.into_inner();
        if reply.ended {
            return Ok(reply.run.unwrap_or_default());
        }
    }
}

/// How long one `WaitRun` call may wait (the server's limit).
const WAIT_CALL: Duration = Duration::from_secs(60);

async fn get_run(client: &mut AdminClient, run_id: i64) -> Result<GetRunReply, ClientError> {
    Ok(client.get_run(GetRunRequest { run_id }).await.map_err(from_status)?.into_inner())
}

/// RFC 3339 in UTC to the millisecond, or "-" for a time not reached.
pub(crate) fn time(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) if ms != 0 => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        _ => "-".into(),
    }
}

/// `porpoise status RUN [--json]`
pub async fn status(server: &Server, run_id: i64, json: bool) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    let reply = get_run(&mut client, run_id).await?;
    let run = reply.run.unwrap_or_default();
    if json {
        let tasks: Vec<serde_json::Value> = reply
            .tasks
            .iter()
            .map(|t| {
                serde_json::json!({
                    "task_instance_id": t.task_instance_id,
                    "task": t.task_name,
                    "state": t.state,
                    "attempt": t.attempt,
                    "worker": (!t.worker_addr.is_empty()).then_some(&t.worker_addr),
                    "started_at_ms": (t.started_at_ms != 0).then_some(t.started_at_ms),
                    "ended_at_ms": (t.ended_at_ms != 0).then_some(t.ended_at_ms),
                    "exit_code": t.exit_code,
                    "warning": (!t.warning.is_empty()).then_some(&t.warning),
                    "task_group": (!t.task_group.is_empty()).then_some(&t.task_group),
                    "waiting_for": (!t.waiting_for.is_empty()).then_some(&t.waiting_for),
                })
            })
            .collect();
        let out = serde_json::json!({
            "run_id": run.run_id,
            "workflow": run.workflow_name,
            "version": run.workflow_version,
            "state": run.state,
            "reason": (!run.state_reason.is_empty()).then_some(&run.state_reason),
            "owner": run.owner,
            "epoch": run.epoch,
            "awaiting_takeover": run.awaiting_takeover,
            "schedule_time_ms": (run.schedule_time_ms != 0).then_some(run.schedule_time_ms),
            "timezone": run.timezone,
            "kind": run.kind,
            "created_at_ms": run.created_at_ms,
            "started_at_ms": (run.started_at_ms != 0).then_some(run.started_at_ms),
            "ended_at_ms": (run.ended_at_ms != 0).then_some(run.ended_at_ms),
            "tasks": tasks,
        });
        outln!("{out:#}")?;
        return Ok(());
    }
    outln!("run {} of {} (version {}): {}", run.run_id, run.workflow_name, run.workflow_version, run.state)?;
    if !run.state_reason.is_empty() {
        outln!("  reason: {}", run.state_reason)?;
    }
    outln!("  started {}  ended {}", time(run.started_at_ms), time(run.ended_at_ms))?;
    if run.schedule_time_ms != 0 {
        outln!("  {} run, schedule time {} ({})", run.kind, time(run.schedule_time_ms), run.timezone)?;
    }
    if !run.owner.is_empty() {
        outln!("  owner {} (epoch {})", run.owner, run.epoch)?;
    }
    if run.awaiting_takeover {
        outln!("  waiting to be taken over: its master {} is gone", run.owner)?;
    }
    let mut table = Table::new(&["ID>", "TASK", "STATE", "ATTEMPT>", "WORKER", "EXIT>", "STARTED", "ENDED"]);
    for t in &reply.tasks {
        let exit = t.exit_code.map_or("-".to_string(), |c| c.to_string());
        let worker = if t.worker_addr.is_empty() { "-" } else { &t.worker_addr };
        table.row([
            t.task_instance_id.to_string(),
            t.task_name.clone(),
            t.state.clone(),
            t.attempt.to_string(),
            worker.to_string(),
            exit,
            time(t.started_at_ms),
            time(t.ended_at_ms),
        ]);
    }
    table.print()?;
    for t in reply.tasks.iter().filter(|t| !t.waiting_for.is_empty()) {
        outln!("  waiting: task {} ({}) waits for {}", t.task_name, t.task_instance_id, t.waiting_for)?;
    }
    for t in reply.tasks.iter().filter(|t| !t.warning.is_empty()) {
        outln!("  warning: task {} ({}): {}", t.task_name, t.task_instance_id, t.warning)?;
    }
    Ok(())
}

/// An operator's control of a run.
#[derive(Debug, Clone, Copy)]
pub enum Control {
    Stop,
    Pause,
    Resume,
}

/// `porpoise stop|pause|resume RUN`: records the request; says what happens next.
pub async fn control(server: &Server, run_id: i64, action: Control) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    let request = RunControlRequest { run_id };
    let reply = match action {
        Control::Stop => client.stop_run(request).await,
        Control::Pause => client.pause_run(request).await,
        Control::Resume => client.resume_run(request).await,
    }
    .map_err(from_status)?
    .into_inner();
    outln!("{}", reply.message)?;
    Ok(())
}

/// `porpoise task kill TASK_INSTANCE`
pub async fn kill_task(server: &Server, task_instance_id: i64) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    let reply = client.kill_task(TaskControlRequest { task_instance_id }).await.map_err(from_status)?.into_inner();
    outln!("{}", reply.message)?;
    Ok(())
}

/// `porpoise task mark-success TASK_INSTANCE`
pub async fn mark_success(server: &Server, task_instance_id: i64) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    let request = TaskControlRequest { task_instance_id };
    let reply = client.mark_task_success(request).await.map_err(from_status)?.into_inner();
    outln!("{}", reply.message)?;
    Ok(())
}

/// `porpoise taskgroup create|update NAME`: creates the group, or changes what is given.
pub async fn task_group_set(
    server: &Server,
    create: bool,
    name: &str,
    slots: Option<i32>,
    description: Option<String>,
) -> Result<(), ClientError> {
    if let Some(n) = slots
        && n < 1
    {
        return Err(ClientError::invalid(format!("--slots must be at least 1, not {n}")));
    }
    let mut client = connect(server).await?;
    let request = TaskGroupRequest { name: name.to_string(), slots: slots.unwrap_or(0), description };
    let g = if create { client.create_task_group(request).await } else { client.update_task_group(request).await }
        .map_err(from_status)?
        .into_inner();
    let done = if create { "created" } else { "updated" };
    outln!("task group {}: {done}; {} slots ({} in use, {} waiting)", g.name, g.slots, g.used, g.waiting)?;
    Ok(())
}

/// `porpoise taskgroup list`
pub async fn task_groups(server: &Server, json: bool) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    let reply = client.list_task_groups(ListTaskGroupsRequest {}).await.map_err(from_status)?.into_inner();
    if json {
        let groups: Vec<serde_json::Value> = reply
            .groups
            .iter()
            .map(|g| {
                serde_json::json!({
                    "name": g.name, "slots": g.slots, "used": g.used, "waiting": g.waiting, "description": g.description,
                })
            })
            .collect();
        outln!("{:#}", serde_json::Value::Array(groups))?;
        return Ok(());
    }
    let mut table = Table::new(&["TASK GROUP", "SLOTS>", "USED>", "WAITING>", "DESCRIPTION"]);
    for g in &reply.groups {
        table.row([
            g.name.clone(),
            g.slots.to_string(),
            g.used.to_string(),
            g.waiting.to_string(),
            g.description.clone(),
        ]);
    }
    table.print()
}

/// `porpoise taskgroup delete NAME`
pub async fn task_group_delete(server: &Server, name: &str) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    client.delete_task_group(DeleteTaskGroupRequest { name: name.to_string() }).await.map_err(from_status)?;
    outln!("task group {name}: deleted")?;
    Ok(())
}

/// `porpoise token create NAME --role ROLE`: prints the secret, once.
pub async fn token_create(server: &Server, name: &str, role: &str) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    let request = CreateTokenRequest { name: name.to_string(), role: role.to_string() };
    let reply = client.create_token(request).await.map_err(from_status)?.into_inner();
    let role = reply.token.map(|t| t.role).unwrap_or_default();
    outln!("{}", reply.secret)?;
    errln!("token {name} ({role}) made: it is shown only now; give it as PORPOISE_TOKEN or --token");
    Ok(())
}

/// `porpoise token list [--json]`
pub async fn tokens(server: &Server, json: bool) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    let reply = client.list_tokens(ListTokensRequest {}).await.map_err(from_status)?.into_inner();
    if json {
        let all: Vec<serde_json::Value> = reply
            .tokens
            .iter()
            .map(|t| serde_json::json!({ "name": t.name, "role": t.role, "created_at_ms": t.created_at_ms }))
            .collect();
        outln!("{:#}", serde_json::Value::Array(all))?;
        return Ok(());
    }
    let mut table = Table::new(&["TOKEN", "ROLE", "CREATED"]);
    for t in &reply.tokens {
        table.row([t.name.clone(), t.role.clone(), time(t.created_at_ms)]);
    }
    table.print()
}

/// `porpoise token delete NAME`
pub async fn token_delete(server: &Server, name: &str) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    client.delete_token(DeleteTokenRequest { name: name.to_string() }).await.map_err(from_status)?;
    outln!("token {name} deleted: it stops working within seconds")?;
    Ok(())
}

/// `porpoise rerun RUN [--failed | --from TASK]`
pub async fn rerun(server: &Server, run_id: i64, failed: bool, from: Option<&str>) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    let request = RerunRunRequest { run_id, failed_only: failed, from_task: from.unwrap_or_default().to_string() };
    client.rerun_run(request).await.map_err(from_status)?;
    match from {
        Some(task) => outln!("run {run_id}: rerun requested from task {task}; what succeeded upstream is kept")?,
        None => outln!("run {run_id}: rerun of its failed tasks requested; what succeeded is kept")?,
    }
    Ok(())
}

/// `porpoise runs list`
pub async fn runs(
    server: &Server,
    workflow: Option<&str>,
    state: Option<&str>,
    limit: u32,
    json: bool,
) -> Result<(), ClientError> {
    if let Some(s) = state
        && s.parse::<porpoise_core::ExecutionState>().is_err()
    {
        return Err(ClientError::invalid(format!("invalid --state {s:?}: not a run state")));
    }
    let mut client = connect(server).await?;
    let request = ListRunsRequest {
        workflow_name: workflow.unwrap_or_default().to_string(),
        limit,
        state: state.unwrap_or_default().to_string(),
    };
    let reply = client.list_runs(request).await.map_err(from_status)?.into_inner();
    if json {
        let runs: Vec<serde_json::Value> = reply
            .runs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "run_id": r.run_id,
                    "workflow": r.workflow_name,
                    "version": r.workflow_version,
                    "state": r.state,
                    "reason": (!r.state_reason.is_empty()).then_some(&r.state_reason),
                    "owner": (!r.owner.is_empty()).then_some(&r.owner),
                    "created_at_ms": r.created_at_ms,
                    "started_at_ms": (r.started_at_ms != 0).then_some(r.started_at_ms),
                    "ended_at_ms": (r.ended_at_ms != 0).then_some(r.ended_at_ms),
                    "schedule_time_ms": (r.schedule_time_ms != 0).then_some(r.schedule_time_ms),
                    "kind": r.kind,
                })
            })
            .collect();
        outln!("{:#}", serde_json::Value::Array(runs))?;
        return Ok(());
    }
    let mut table = Table::new(&["RUN>", "WORKFLOW", "VERSION>", "STATE", "STARTED", "ENDED"]);
    for r in &reply.runs {
        table.row([
            r.run_id.to_string(),
            r.workflow_name.clone(),
            r.workflow_version.to_string(),
            r.state.clone(),
            time(r.started_at_ms),
            time(r.ended_at_ms),
        ]);
    }
    table.print()
}

/// `porpoise workflow show NAME [--version V] [--json]`: the stored spec, as applied (with
/// `--json`: its name, version and the spec as a JSON object).
pub async fn show(server: &Server, name: &str, version: Option<i32>, json: bool) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    let request = GetWorkflowRequest { name: name.to_string(), version: version.unwrap_or(0) };
    let reply = client.get_workflow(request).await.map_err(from_status)?.into_inner();
    if json {
        let spec: serde_json::Value = serde_yaml_ng::from_str(&reply.spec_yaml)
            .map_err(|e| ClientError::failed(format!("the server sent a spec that is not YAML: {e}")))?;
        let out = serde_json::json!({ "name": reply.name, "version": reply.version, "spec": spec });
        outln!("{out:#}")?;
        return Ok(());
    }
    output::bytes(reply.spec_yaml.as_bytes())?;
    if !reply.spec_yaml.ends_with('\n') {
        output::bytes(b"\n")?;
    }
    Ok(())
}

/// `porpoise logs TASK_INSTANCE`: the whole log of the task's latest attempt.
pub async fn logs(server: &Server, task_instance_id: i64) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    let mut offset = 0;
    loop {
        let reply = client
            .get_task_log(GetTaskInstanceLogRequest { task_instance_id, offset })
            .await
            .map_err(from_status)?
            .into_inner();
        output::bytes(&reply.content)?;
        if reply.content.is_empty() || reply.next_offset <= offset {
            break;
        }
        offset = reply.next_offset;
        if reply.eof {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(time(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn params_must_be_name_value() {
        assert_eq!(parse_params(&["a=1".into(), "b=x=y".into()]).expect("valid")["b"], "x=y");
        assert_eq!(parse_params(&["oops".into()]).expect_err("invalid").code, EXIT_INVALID);
    }
}
