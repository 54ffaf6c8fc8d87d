//! AdminService: what the `porpoise` CLI talks to — apply and list workflows, start and inspect
//! runs, fetch task logs (through the worker that ran the task).

use std::collections::BTreeMap;
use std::sync::Arc;

use porpoise_core::engine::{Control, RunState, Workflow};
use porpoise_core::{ExecutionState, WorkflowSpec};
use porpoise_proto::v1::admin_service_server::AdminService;
use porpoise_proto::v1::{
    ApplyWorkflowReply, ApplyWorkflowRequest, GetRunReply, GetRunRequest, GetTaskInstanceLogReply,
    GetTaskInstanceLogRequest, GetTaskLogRequest, GetWorkflowReply, GetWorkflowRequest, ListRunsReply, ListRunsRequest,
    ListWorkflowsReply, ListWorkflowsRequest, RerunRunRequest, RunControlReply, RunControlRequest, RunSummary,
    StartRunReply, StartRunRequest, TaskControlRequest, TaskInstanceInfo, WorkflowSummary,
};
use porpoise_store::{
    ApplyOutcome, CommandKind, NewCommand, NewRun, StoreError, TASK_INSTANCE_PARAM, WorkflowInstance,
};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::Shared;

/// The gRPC face of the master for operators.
#[derive(Debug, Clone)]
pub(crate) struct Admin(pub Arc<Shared>);

fn status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        StoreError::Conflict { .. } => Status::aborted(e.to_string()),
        e if e.is_retryable() => Status::unavailable(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

impl Admin {
    /// Records an operator's kill of task instance `id` as a command on its run.
    async fn kill(&self, id: i64) -> Result<Response<RunControlReply>, Status> {
        let task = self.0.store.task_instance(id).await.map_err(status)?;
        let task = task.ok_or_else(|| Status::not_found(format!("no task instance {id}")))?;
        let run = self.0.store.workflow_instance(task.workflow_instance_id).await.map_err(status)?;
        let run = run.ok_or_else(|| Status::not_found(format!("no run {}", task.workflow_instance_id)))?;
        if task.state.is_terminal() || run.state.is_terminal() {
            return Err(Status::failed_precondition(format!(
                "task instance {id} is {} (its run is {}): only a task that has not ended can be killed",
                task.state, run.state
            )));
        }
        let command = NewCommand {
            kind: CommandKind::Control(Control::KillTask),
            workflow_definition_id: run.workflow_definition_id,
            workflow_instance_id: Some(run.id),
            params: BTreeMap::from([(TASK_INSTANCE_PARAM.to_string(), id.to_string())]),
            priority: run.priority,
        };
        let command_id = self.0.store.insert_command(&command).await.map_err(status)?;
        info!(task_instance_id = id, run_id = run.id, command_id, "task kill requested");
        self.0.wake_consumer();
        let message = format!(
            "task instance {id} ({}): kill requested; it ends stopped and run {} fails",
            task.task_name, run.id
        );
        Ok(Response::new(RunControlReply { state: task.state.as_str().to_string(), message }))
    }
}

fn ms(t: Option<chrono::DateTime<chrono::Utc>>) -> i64 {
    t.map_or(0, |t| t.timestamp_millis())
}

impl Admin {
    fn summary(&self, w: &WorkflowInstance, version: i32) -> RunSummary {
        let stall = self.0.stall(w.id);
        RunSummary {
            run_id: w.id,
            workflow_name: w.workflow_name.clone(),
            workflow_version: version,
            state: w.state.as_str().to_string(),
            state_reason: stall.or_else(|| w.state_reason.clone()).unwrap_or_default(),
            owner: w.owner.clone().unwrap_or_default(),
            created_at_ms: w.created_at.timestamp_millis(),
            started_at_ms: ms(w.started_at),
            ended_at_ms: ms(w.ended_at),
            epoch: w.epoch,
            awaiting_takeover: !w.state.is_terminal() && w.owner.as_deref().is_some_and(|o| !self.0.masters.is_live(o)),
        }
    }

    async fn version_of(&self, definition_id: i64) -> i32 {
        match self.0.store.definition(definition_id).await {
            Ok(Some(d)) => d.version,
            _ => 0,
        }
    }
}

impl Admin {
    /// Records an operator's control of run `id` as a command (durable first: the run's owner,
    /// or the master that takes the run over, carries it out), after checking that it makes
    /// sense for the run's state.
    async fn control(&self, id: i64, action: Control) -> Result<Response<RunControlReply>, Status> {
        let run = self.0.store.workflow_instance(id).await.map_err(status)?;
        let run = run.ok_or_else(|| Status::not_found(format!("no run {id}")))?;
        let state = run.state;
        let allowed = match action {
            Control::Stop => !state.is_terminal(),
            Control::Pause => state == ExecutionState::Running || state == ExecutionState::Submitted,
            Control::Resume => state == ExecutionState::Paused,
            Control::KillTask => false, // a task's, not a run's: see `kill_task`
        };
        if !allowed {
            let which = match action {
                Control::Stop => "a submitted, running or paused run can be stopped",
                Control::Pause => "a submitted or running run can be paused",
                Control::Resume => "a paused run can be resumed",
                Control::KillTask => "a task instance can be killed",
            };
            return Err(Status::failed_precondition(format!("run {id} is {state}: only {which}")));
        }
        let command = NewCommand {
            kind: CommandKind::Control(action),
            workflow_definition_id: run.workflow_definition_id,
            workflow_instance_id: Some(id),
            params: BTreeMap::new(),
            priority: run.priority,
        };
        let command_id = self.0.store.insert_command(&command).await.map_err(status)?;
        info!(run_id = id, action = action.as_str(), command_id, "run control requested");
        self.0.wake_consumer();
        let message = match action {
            Control::Stop => format!("run {id}: stop requested; its running tasks are killed and it ends stopped"),
            Control::Pause => format!("run {id}: pause requested; its running tasks finish and it ends paused"),
            Control::Resume => format!("run {id}: resume requested; it carries on where it was"),
            Control::KillTask => String::new(),
        };
        Ok(Response::new(RunControlReply { state: state.as_str().to_string(), message }))
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn apply_workflow(
        &self,
        request: Request<ApplyWorkflowRequest>,
    ) -> Result<Response<ApplyWorkflowReply>, Status> {
        let req = request.into_inner();
        let file = if req.file_name.is_empty() { "<spec>".to_string() } else { req.file_name };
        let spec = WorkflowSpec::parse(&file, &req.spec_yaml).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let outcome = self.0.store.apply_definition(&spec, &req.spec_yaml).await.map_err(status)?;
        let changed = !matches!(outcome, ApplyOutcome::Unchanged { .. });
        info!(workflow = %spec.name, version = outcome.version(), changed, "workflow applied");
        Ok(Response::new(ApplyWorkflowReply { name: spec.name, version: outcome.version(), changed }))
    }

    async fn list_workflows(&self, _: Request<ListWorkflowsRequest>) -> Result<Response<ListWorkflowsReply>, Status> {
        let defs = self.0.store.list_definitions().await.map_err(status)?;
        let workflows = defs
            .into_iter()
            .map(|d| WorkflowSummary {
                name: d.name,
                version: d.version,
                task_count: d.task_count as u32,
                updated_at_ms: d.created_at.timestamp_millis(),
            })
            .collect();
        Ok(Response::new(ListWorkflowsReply { workflows }))
    }

    async fn start_run(&self, request: Request<StartRunRequest>) -> Result<Response<StartRunReply>, Status> {
        let req = request.into_inner();
        let def =
            self.0.store.latest_definition(&req.workflow_name).await.map_err(status)?.ok_or_else(|| {
                Status::not_found(format!("no workflow named {:?}; apply it first", req.workflow_name))
            })?;
        let spec: WorkflowSpec = serde_json::from_str(&def.spec_json)
            .map_err(|e| Status::internal(format!("stored spec of {} is unreadable: {e}", def.name)))?;
        for key in req.params.keys() {
            porpoise_core::spec::check_param_name(key).map_err(Status::invalid_argument)?;
        }
        let params: BTreeMap<String, String> = req.params.into_iter().collect();
        let run =
            NewRun { workflow_definition_id: def.id, workflow_name: def.name.clone(), priority: spec.priority, params };
        let (instance, _) = self.0.store.create_run(&run).await.map_err(status)?;
        self.0.wake_consumer();
        info!(workflow = %def.name, run_id = instance.id, "run requested");
        Ok(Response::new(StartRunReply { run_id: instance.id }))
    }

    async fn get_run(&self, request: Request<GetRunRequest>) -> Result<Response<GetRunReply>, Status> {
        let id = request.into_inner().run_id;
        // a stalled run cannot reach the database: say why at once rather than time out on it
        if let Some(reason) = self.0.stall(id) {
            return Err(Status::unavailable(format!("run {id} is {reason}")));
        }
        let run = self
            .0
            .store
            .workflow_instance(id)
            .await
            .map_err(status)?
            .ok_or_else(|| Status::not_found(format!("no run {id}")))?;
        let tasks = self.0.store.task_instances_of(id).await.map_err(status)?;
        let version = self.version_of(run.workflow_definition_id).await;
        let tasks = tasks
            .into_iter()
            .map(|t| TaskInstanceInfo {
                task_instance_id: t.id,
                task_name: t.task_name,
                state: t.state.as_str().to_string(),
                attempt: t.attempt,
                worker_addr: t.worker_addr.unwrap_or_default(),
                started_at_ms: ms(t.started_at),
                ended_at_ms: ms(t.ended_at),
                exit_code: t.exit_code,
                warning: t.warning.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(GetRunReply { run: Some(self.summary(&run, version)), tasks }))
    }

    async fn list_runs(&self, request: Request<ListRunsRequest>) -> Result<Response<ListRunsReply>, Status> {
        let req = request.into_inner();
        let name = (!req.workflow_name.is_empty()).then_some(req.workflow_name.as_str());
        let limit = if req.limit == 0 { 50 } else { req.limit.min(1000) };
        let state = match req.state.as_str() {
            "" => None,
            s => Some(s.parse::<ExecutionState>().map_err(|e| Status::invalid_argument(e.to_string()))?),
        };
        let runs = self.0.store.list_workflow_instances(name, state, limit).await.map_err(status)?;
        let mut versions = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(runs.len());
        for r in &runs {
            let version = match versions.get(&r.workflow_definition_id) {
                Some(&v) => v,
                None => {
                    let v = self.version_of(r.workflow_definition_id).await;
                    versions.insert(r.workflow_definition_id, v);
                    v
                }
            };
            out.push(self.summary(r, version));
        }
        Ok(Response::new(ListRunsReply { runs: out }))
    }

    async fn stop_run(&self, request: Request<RunControlRequest>) -> Result<Response<RunControlReply>, Status> {
        self.control(request.into_inner().run_id, Control::Stop).await
    }

    async fn pause_run(&self, request: Request<RunControlRequest>) -> Result<Response<RunControlReply>, Status> {
        self.control(request.into_inner().run_id, Control::Pause).await
    }

    async fn resume_run(&self, request: Request<RunControlRequest>) -> Result<Response<RunControlReply>, Status> {
        self.control(request.into_inner().run_id, Control::Resume).await
    }

    async fn kill_task(&self, request: Request<TaskControlRequest>) -> Result<Response<RunControlReply>, Status> {
        self.kill(request.into_inner().task_instance_id).await
    }

    async fn get_workflow(&self, request: Request<GetWorkflowRequest>) -> Result<Response<GetWorkflowReply>, Status> {
        let req = request.into_inner();
        let def = if req.version == 0 {
            self.0.store.latest_definition(&req.name).await
        } else {
            self.0.store.definition_version(&req.name, req.version).await
        }
        .map_err(status)?;
        let def = def.ok_or_else(|| match req.version {
            0 => Status::not_found(format!("no workflow named {}", req.name)),
            v => Status::not_found(format!("workflow {} has no version {v}", req.name)),
        })?;
        Ok(Response::new(GetWorkflowReply { name: def.name, version: def.version, spec_yaml: def.spec_yaml }))
    }

    async fn rerun_run(&self, request: Request<RerunRunRequest>) -> Result<Response<StartRunReply>, Status> {
        let req = request.into_inner();
        let id = req.run_id;
        if req.failed_only && !req.from_task.is_empty() {
            return Err(Status::invalid_argument("--failed and --from are one or the other"));
        }
        let run = self.0.store.workflow_instance(id).await.map_err(status)?;
        let run = run.ok_or_else(|| Status::not_found(format!("no run {id}")))?;
        if !run.state.is_terminal() {
            return Err(Status::failed_precondition(format!(
                "run {id} is {}: only a run that has ended can be rerun",
                run.state
            )));
        }
        let def = self.0.store.definition(run.workflow_definition_id).await.map_err(status)?;
        let def = def.ok_or_else(|| Status::internal(format!("the workflow of run {id} is gone")))?;
        let spec: WorkflowSpec = serde_json::from_str(&def.spec_json)
            .map_err(|e| Status::internal(format!("the stored spec of {} is unreadable: {e}", def.name)))?;
        let workflow = Workflow::new(spec);
        let rows = self.0.store.task_instances_of(id).await.map_err(status)?;
        let tasks = rows.iter().map(porpoise_store::TaskInstance::engine_state);
        let (state, _) = RunState::rebuild(&workflow, run.state, tasks);
        let from = (!req.from_task.is_empty()).then_some(req.from_task.as_str());
        let picked = workflow
            .rerun_tasks(&state, from)
            .map_err(|why| Status::failed_precondition(format!("run {id}: {why}")))?;
        self.0.store.rerun(id, &picked).await.map_err(|e| match e {
            StoreError::Conflict { .. } => Status::failed_precondition(format!("run {id} changed meanwhile: {e}")),
            e => status(e),
        })?;
        info!(run_id = id, tasks = picked.len(), from = from.unwrap_or("(the failed tasks)"), "rerun requested");
        self.0.wake_consumer();
        Ok(Response::new(StartRunReply { run_id: id }))
    }

    async fn get_task_log(
        &self,
        request: Request<GetTaskInstanceLogRequest>,
    ) -> Result<Response<GetTaskInstanceLogReply>, Status> {
        let req = request.into_inner();
        let task = self
            .0
            .store
            .task_instance(req.task_instance_id)
            .await
            .map_err(status)?
            .ok_or_else(|| Status::not_found(format!("no task instance {}", req.task_instance_id)))?;
        let worker = task.worker_addr.ok_or_else(|| {
            Status::failed_precondition(format!("task instance {} has not been dispatched yet", task.id))
        })?;
        let mut client = self.0.workers.client(&worker).map_err(Status::internal)?;
        let reply = client
            .get_task_log(GetTaskLogRequest {
                task_instance_id: task.id,
                attempt: task.attempt,
                offset: req.offset,
                limit: 0,
            })
            .await
            .map_err(|s| Status::unavailable(format!("cannot read the log from worker {worker}: {}", s.message())))?
            .into_inner();
        Ok(Response::new(GetTaskInstanceLogReply {
            content: reply.content,
            next_offset: reply.next_offset,
            eof: reply.eof,
        }))
    }
}
