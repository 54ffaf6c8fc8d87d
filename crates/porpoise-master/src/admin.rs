//! AdminService: the gRPC face of the [`App`] — each call translates its request, calls the
//! application layer, and translates the answer or the error (the user's errors become
//! INVALID_ARGUMENT, NOT_FOUND or FAILED_PRECONDITION, which the CLI turns into exit 2).

use porpoise_core::engine::Control;
use porpoise_core::schedule::{Catchup, ScheduleSpec};
use porpoise_core::{ExecutionState, Priority};
use porpoise_proto::v1::admin_service_server::AdminService;
use porpoise_proto::v1::{
    ApplyWorkflowReply, ApplyWorkflowRequest, BackfillReply, BackfillRequest, CreateTokenReply, CreateTokenRequest,
    DeleteScheduleReply, DeleteTaskGroupReply, DeleteTaskGroupRequest, DeleteTokenReply, DeleteTokenRequest,
    GetBackfillRequest, GetRunReply, GetRunRequest, GetTaskInstanceLogReply, GetTaskInstanceLogRequest,
    GetWorkflowReply, GetWorkflowRequest, ListRunsReply, ListRunsRequest, ListSchedulesReply, ListSchedulesRequest,
    ListTaskGroupsReply, ListTaskGroupsRequest, ListTokensReply, ListTokensRequest, ListWorkflowsReply,
    ListWorkflowsRequest, RerunRunRequest, RunControlReply, RunControlRequest, RunSummary, ScheduleInfo, ScheduleName,
    ScheduleRequest, StartRunReply, StartRunRequest, TaskControlRequest, TaskGroupInfo, TaskGroupRequest,
    TaskInstanceInfo, TokenInfo, WaitRunReply, WaitRunRequest, WorkflowSummary,
};
use porpoise_store::{ApiToken, BackfillRow, TaskGroup, TaskInstance, WorkflowInstance};
use tonic::{Request, Response, Status};

use crate::app::{self, App, AppError, Controlled, RerunScope, RunView, ScheduleView};

/// The AdminService over the application layer.
#[derive(Debug, Clone)]
pub(crate) struct Admin(pub App);

fn status(e: AppError) -> Status {
    match e {
        AppError::Invalid(m) => Status::invalid_argument(m),
        AppError::NotFound(m) => Status::not_found(m),
        AppError::WrongState(m) => Status::failed_precondition(m),
        AppError::Unavailable(m) => Status::unavailable(m),
        AppError::Internal(m) => Status::internal(m),
    }
}

fn ms(t: Option<chrono::DateTime<chrono::Utc>>) -> i64 {
    t.map_or(0, |t| t.timestamp_millis())
}

fn summary(v: RunView) -> RunSummary {
    let w = v.run;
    RunSummary {
        run_id: w.id,
        workflow_name: w.workflow_name,
        workflow_version: v.version,
        state: w.state.as_str().to_string(),
        state_reason: v.reason.unwrap_or_default(),
        owner: w.owner.unwrap_or_default(),
        created_at_ms: w.created_at.timestamp_millis(),
        started_at_ms: ms(w.started_at),
        ended_at_ms: ms(w.ended_at),
        epoch: w.epoch,
        awaiting_takeover: v.awaiting_takeover,
        schedule_time_ms: ms(w.schedule_time),
        timezone: w.timezone,
        kind: w.kind.as_str().to_string(),
    }
}

fn backfill_reply(row: BackfillRow, runs: Vec<WorkflowInstance>) -> BackfillReply {
    let runs = runs
        .into_iter()
        .map(|run| summary(RunView { reason: run.state_reason.clone(), awaiting_takeover: false, version: 0, run }))
        .collect();
    BackfillReply {
        backfill_id: row.id,
        workflow_name: row.workflow_name,
        state: row.state,
        state_reason: row.state_reason.unwrap_or_default(),
        parallel: row.parallel,
        keep_going: row.keep_going,
        runs,
    }
}

fn schedule_info(v: ScheduleView) -> ScheduleInfo {
    let r = v.row;
    ScheduleInfo {
        workflow_name: r.workflow_name,
        cron: r.spec.cron,
        timezone: r.spec.timezone,
        start_ms: ms(r.spec.start),
        end_ms: ms(r.spec.end),
        catchup: r.spec.catchup.as_str().to_string(),
        paused: r.paused,
        from_spec: r.from_spec,
        next_fire_ms: ms(v.next_fire),
    }
}

/// A schedule request as the domain has it; a bad field is the user's error, naming it.
fn schedule_spec(req: ScheduleRequest) -> Result<ScheduleSpec, Status> {
    let timezone = if req.timezone.is_empty() { "UTC".to_string() } else { req.timezone };
    let tz = porpoise_core::schedule::parse_timezone(&timezone)
        .map_err(|e| Status::invalid_argument(format!("--timezone: {e}")))?;
    let instant = |flag: &str, text: &str| {
        (!text.is_empty())
            .then(|| porpoise_core::schedule::parse_instant(text, tz))
            .transpose()
            .map_err(|e| Status::invalid_argument(format!("{flag}: {e}")))
    };
    let catchup = match req.catchup.as_str() {
        "" => Catchup::default(),
        c => c.parse().map_err(|e: String| Status::invalid_argument(format!("--catchup: {e}")))?,
    };
    Ok(ScheduleSpec {
        cron: req.cron,
        timezone,
        start: instant("--start", &req.start)?,
        end: instant("--end", &req.end)?,
        catchup,
    })
}

fn token_info(t: ApiToken) -> TokenInfo {
    TokenInfo { name: t.name, role: t.role, created_at_ms: t.created_at.timestamp_millis() }
}

fn task_info(t: TaskInstance) -> TaskInstanceInfo {
    let waiting_for = match (&t.task_group, t.group_waiting_since) {
        _ if t.state != ExecutionState::Waiting => String::new(),
        (Some(group), Some(_)) => format!("a slot of task group {group}"),
        _ => "the tasks it depends on".to_string(),
    };
    TaskInstanceInfo {
        waiting_for,
        task_instance_id: t.id,
        task_name: t.task_name,
        state: t.state.as_str().to_string(),
        attempt: t.attempt,
        worker_addr: t.worker_addr.unwrap_or_default(),
        started_at_ms: ms(t.started_at),
        ended_at_ms: ms(t.ended_at),
        exit_code: t.exit_code,
        warning: t.warning.unwrap_or_default(),
        task_group: t.task_group.unwrap_or_default(),
    }
}

fn group_info(g: TaskGroup) -> TaskGroupInfo {
    TaskGroupInfo { name: g.name, slots: g.slots, description: g.description, used: g.used, waiting: g.waiting }
}

fn controlled(c: Result<Controlled, AppError>) -> Result<Response<RunControlReply>, Status> {
    let c = c.map_err(status)?;
    Ok(Response::new(RunControlReply { state: c.state.as_str().to_string(), message: c.message }))
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn apply_workflow(
        &self,
        request: Request<ApplyWorkflowRequest>,
    ) -> Result<Response<ApplyWorkflowReply>, Status> {
        let req = request.into_inner();
        let file = if req.file_name.is_empty() { "<spec>".to_string() } else { req.file_name };
        let a = self.0.apply(&file, &req.spec_yaml).await.map_err(status)?;
        Ok(Response::new(ApplyWorkflowReply { name: a.name, version: a.version, changed: a.changed }))
    }

    async fn list_workflows(&self, _: Request<ListWorkflowsRequest>) -> Result<Response<ListWorkflowsReply>, Status> {
        let workflows = self
            .0
            .workflows()
            .await
            .map_err(status)?
            .into_iter()
            .map(|(d, schedule)| WorkflowSummary {
                name: d.name,
                version: d.version,
                task_count: d.task_count as u32,
                updated_at_ms: d.created_at.timestamp_millis(),
                schedule: schedule.map(schedule_info),
            })
            .collect();
        Ok(Response::new(ListWorkflowsReply { workflows }))
    }

    async fn get_workflow(&self, request: Request<GetWorkflowRequest>) -> Result<Response<GetWorkflowReply>, Status> {
        let req = request.into_inner();
        let version = (req.version != 0).then_some(req.version);
        let def = self.0.workflow(&req.name, version).await.map_err(status)?;
        Ok(Response::new(GetWorkflowReply { name: def.name, version: def.version, spec_yaml: def.spec_yaml }))
    }

    async fn start_run(&self, request: Request<StartRunRequest>) -> Result<Response<StartRunReply>, Status> {
        let req = request.into_inner();
        let priority = match req.priority.as_str() {
            "" => None,
            p => Some(p.parse::<Priority>().map_err(|e| Status::invalid_argument(format!("--priority: {e}")))?),
        };
        let params = req.params.into_iter().collect();
        let count = req.count.max(1);
        let run_ids = self.0.start_runs(&req.workflow_name, params, priority, count).await.map_err(status)?;
        let run_id = run_ids.first().copied().unwrap_or_default();
        Ok(Response::new(StartRunReply { run_id, run_ids }))
    }

    async fn wait_run(&self, request: Request<WaitRunRequest>) -> Result<Response<WaitRunReply>, Status> {
        let req = request.into_inner();
        let timeout = std::time::Duration::from_millis(u64::from(req.timeout_ms));
        let (view, ended) = self.0.wait_run(req.run_id, timeout).await.map_err(status)?;
        Ok(Response::new(WaitRunReply { run: Some(summary(view)), ended }))
    }

    async fn get_run(&self, request: Request<GetRunRequest>) -> Result<Response<GetRunReply>, Status> {
        let detail = self.0.run(request.into_inner().run_id).await.map_err(status)?;
        let tasks = detail.tasks.into_iter().map(task_info).collect();
        Ok(Response::new(GetRunReply { run: Some(summary(detail.view)), tasks }))
    }

    async fn list_runs(&self, request: Request<ListRunsRequest>) -> Result<Response<ListRunsReply>, Status> {
        let req = request.into_inner();
        let name = (!req.workflow_name.is_empty()).then_some(req.workflow_name.as_str());
        let state = (!req.state.is_empty()).then_some(req.state.as_str());
        let runs = self.0.runs(name, state, req.limit).await.map_err(status)?;
        Ok(Response::new(ListRunsReply { runs: runs.into_iter().map(summary).collect() }))
    }

    async fn stop_run(&self, request: Request<RunControlRequest>) -> Result<Response<RunControlReply>, Status> {
        controlled(self.0.control(request.into_inner().run_id, Control::Stop).await)
    }

    async fn pause_run(&self, request: Request<RunControlRequest>) -> Result<Response<RunControlReply>, Status> {
        controlled(self.0.control(request.into_inner().run_id, Control::Pause).await)
    }

    async fn resume_run(&self, request: Request<RunControlRequest>) -> Result<Response<RunControlReply>, Status> {
        controlled(self.0.control(request.into_inner().run_id, Control::Resume).await)
    }

    async fn rerun_run(&self, request: Request<RerunRunRequest>) -> Result<Response<StartRunReply>, Status> {
        let req = request.into_inner();
        let scope = match (req.failed_only, req.from_task.is_empty()) {
            (true, false) => return Err(Status::invalid_argument("--failed and --from are one or the other")),
            (_, true) => RerunScope::Failed,
            (false, false) => RerunScope::From(req.from_task),
        };
        self.0.rerun(req.run_id, scope).await.map_err(status)?;
        Ok(Response::new(StartRunReply { run_id: req.run_id, run_ids: vec![req.run_id] }))
    }

    async fn kill_task(&self, request: Request<TaskControlRequest>) -> Result<Response<RunControlReply>, Status> {
        controlled(self.0.kill_task(request.into_inner().task_instance_id).await)
    }

    async fn mark_task_success(
        &self,
        request: Request<TaskControlRequest>,
    ) -> Result<Response<RunControlReply>, Status> {
        controlled(self.0.mark_success(request.into_inner().task_instance_id).await)
    }

    async fn create_task_group(&self, request: Request<TaskGroupRequest>) -> Result<Response<TaskGroupInfo>, Status> {
        let req = request.into_inner();
        let description = req.description.unwrap_or_default();
        let group = self.0.create_task_group(&req.name, req.slots, &description).await.map_err(status)?;
        Ok(Response::new(group_info(group)))
    }

    async fn list_task_groups(
        &self,
        _: Request<ListTaskGroupsRequest>,
    ) -> Result<Response<ListTaskGroupsReply>, Status> {
        let groups = self.0.task_groups().await.map_err(status)?;
        Ok(Response::new(ListTaskGroupsReply { groups: groups.into_iter().map(group_info).collect() }))
    }

    async fn update_task_group(&self, request: Request<TaskGroupRequest>) -> Result<Response<TaskGroupInfo>, Status> {
        let req = request.into_inner();
        let slots = (req.slots != 0).then_some(req.slots);
        let group = self.0.update_task_group(&req.name, slots, req.description.as_deref()).await.map_err(status)?;
        Ok(Response::new(group_info(group)))
    }

    async fn delete_task_group(
        &self,
        request: Request<DeleteTaskGroupRequest>,
    ) -> Result<Response<DeleteTaskGroupReply>, Status> {
        self.0.delete_task_group(&request.into_inner().name).await.map_err(status)?;
        Ok(Response::new(DeleteTaskGroupReply {}))
    }

    async fn create_schedule(&self, request: Request<ScheduleRequest>) -> Result<Response<ScheduleInfo>, Status> {
        let req = request.into_inner();
        let name = req.workflow_name.clone();
        let spec = schedule_spec(req)?;
        Ok(Response::new(schedule_info(self.0.create_schedule(&name, spec).await.map_err(status)?)))
    }

    async fn list_schedules(&self, _: Request<ListSchedulesRequest>) -> Result<Response<ListSchedulesReply>, Status> {
        let schedules = self.0.schedules().await.map_err(status)?;
        Ok(Response::new(ListSchedulesReply { schedules: schedules.into_iter().map(schedule_info).collect() }))
    }

    async fn get_schedule(&self, request: Request<ScheduleName>) -> Result<Response<ScheduleInfo>, Status> {
        let v = self.0.schedule(&request.into_inner().workflow_name).await.map_err(status)?;
        Ok(Response::new(schedule_info(v)))
    }

    async fn pause_schedule(&self, request: Request<ScheduleName>) -> Result<Response<ScheduleInfo>, Status> {
        let v = self.0.pause_schedule(&request.into_inner().workflow_name, true).await.map_err(status)?;
        Ok(Response::new(schedule_info(v)))
    }

    async fn resume_schedule(&self, request: Request<ScheduleName>) -> Result<Response<ScheduleInfo>, Status> {
        let v = self.0.pause_schedule(&request.into_inner().workflow_name, false).await.map_err(status)?;
        Ok(Response::new(schedule_info(v)))
    }

    async fn delete_schedule(&self, request: Request<ScheduleName>) -> Result<Response<DeleteScheduleReply>, Status> {
        self.0.delete_schedule(&request.into_inner().workflow_name).await.map_err(status)?;
        Ok(Response::new(DeleteScheduleReply {}))
    }

    async fn start_backfill(&self, request: Request<BackfillRequest>) -> Result<Response<BackfillReply>, Status> {
        let req = request.into_inner();
        let b = app::BackfillRequest {
            workflow: req.workflow_name,
            from: req.from,
            to: req.to,
            daily: req.daily,
            parallel: req.parallel.max(1),
            reverse: req.reverse,
            keep_going: req.keep_going,
            params: req.params.into_iter().collect(),
        };
        let (row, runs) = self.0.backfill(b).await.map_err(status)?;
        Ok(Response::new(backfill_reply(row, runs)))
    }

    async fn get_backfill(&self, request: Request<GetBackfillRequest>) -> Result<Response<BackfillReply>, Status> {
        let (row, runs) = self.0.backfill_status(request.into_inner().backfill_id).await.map_err(status)?;
        Ok(Response::new(backfill_reply(row, runs)))
    }

    async fn create_token(&self, request: Request<CreateTokenRequest>) -> Result<Response<CreateTokenReply>, Status> {
        let req = request.into_inner();
        let (token, secret) = self.0.create_token(&req.name, &req.role).await.map_err(status)?;
        Ok(Response::new(CreateTokenReply { token: Some(token_info(token)), secret }))
    }

    async fn list_tokens(&self, _: Request<ListTokensRequest>) -> Result<Response<ListTokensReply>, Status> {
        let tokens = self.0.tokens().await.map_err(status)?.into_iter().map(token_info).collect();
        Ok(Response::new(ListTokensReply { tokens }))
    }

    async fn delete_token(&self, request: Request<DeleteTokenRequest>) -> Result<Response<DeleteTokenReply>, Status> {
        self.0.delete_token(&request.into_inner().name).await.map_err(status)?;
        Ok(Response::new(DeleteTokenReply {}))
    }

    async fn get_task_log(
        &self,
        request: Request<GetTaskInstanceLogRequest>,
    ) -> Result<Response<GetTaskInstanceLogReply>, Status> {
        let req = request.into_inner();
        let chunk = self.0.task_log(req.task_instance_id, req.offset).await.map_err(status)?;
        Ok(Response::new(GetTaskInstanceLogReply {
            content: chunk.content,
            next_offset: chunk.next_offset,
            eof: chunk.eof,
        }))
    }
}
