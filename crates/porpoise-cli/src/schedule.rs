//! `porpoise schedule …` and `porpoise backfill`: when a workflow runs by itself, and runs of it
//! for past dates, through the master's AdminService.

use porpoise_proto::v1::{
    BackfillReply, BackfillRequest, GetBackfillRequest, ListSchedulesRequest, ScheduleInfo, ScheduleName,
    ScheduleRequest,
};

use crate::client::{ClientError, Server, connect, from_status, parse_params, time};
use crate::outln;
use crate::table::Table;

/// What `schedule create` is given.
#[derive(Debug, Clone, Default)]
pub struct NewSchedule {
    pub cron: String,
    pub timezone: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub catchup: Option<String>,
}

/// `porpoise schedule create NAME --cron EXPR …`
pub async fn create(server: &Server, name: &str, new: NewSchedule) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    let request = ScheduleRequest {
        workflow_name: name.to_string(),
        cron: new.cron,
        timezone: new.timezone.unwrap_or_default(),
        start: new.start.unwrap_or_default(),
        end: new.end.unwrap_or_default(),
        catchup: new.catchup.unwrap_or_default(),
    };
    let s = client.create_schedule(request).await.map_err(from_status)?.into_inner();
    outln!("workflow {name}: schedule created; next fire {}", time(s.next_fire_ms))?;
    Ok(())
}

/// `porpoise schedule list [--json]`
pub async fn list(server: &Server, json: bool) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    let reply = client.list_schedules(ListSchedulesRequest {}).await.map_err(from_status)?.into_inner();
    if json {
        let all: Vec<serde_json::Value> = reply.schedules.iter().map(to_json).collect();
        outln!("{:#}", serde_json::Value::Array(all))?;
        return Ok(());
    }
    let mut table = Table::new(&["WORKFLOW", "CRON", "TIME ZONE", "CATCHUP", "PAUSED", "NEXT FIRE"]);
    for s in &reply.schedules {
        table.row([
            s.workflow_name.clone(),
            s.cron.clone(),
            s.timezone.clone(),
            s.catchup.clone(),
            (if s.paused { "yes" } else { "no" }).to_string(),
            time(s.next_fire_ms),
        ]);
    }
    table.print()
}

/// `porpoise schedule show NAME [--json]`
pub async fn show(server: &Server, name: &str, json: bool) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    let s = client.get_schedule(named(name)).await.map_err(from_status)?.into_inner();
    if json {
        outln!("{:#}", to_json(&s))?;
        return Ok(());
    }
    let bound = |ms: i64| if ms == 0 { "-".to_string() } else { time(ms) };
    outln!("workflow:   {}", s.workflow_name)?;
    outln!("cron:       {}", s.cron)?;
    outln!("time zone:  {}", s.timezone)?;
    outln!("start:      {}", bound(s.start_ms))?;
    outln!("end:        {}", bound(s.end_ms))?;
    outln!("catchup:    {}", s.catchup)?;
    outln!("paused:     {}", if s.paused { "yes" } else { "no" })?;
    outln!("set by:     {}", if s.from_spec { "the workflow's spec" } else { "porpoise schedule create" })?;
    outln!("next fire:  {}", bound(s.next_fire_ms))?;
    Ok(())
}

/// `porpoise schedule pause|resume NAME`
pub async fn pause(server: &Server, name: &str, paused: bool) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    let reply =
        if paused { client.pause_schedule(named(name)).await } else { client.resume_schedule(named(name)).await };
    let s = reply.map_err(from_status)?.into_inner();
    if paused {
        outln!("workflow {name}: schedule paused; it fires nothing until resumed")?;
    } else {
        outln!("workflow {name}: schedule resumed; next fire {}", time(s.next_fire_ms))?;
    }
    Ok(())
}

/// `porpoise schedule delete NAME`
pub async fn delete(server: &Server, name: &str) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    client.delete_schedule(named(name)).await.map_err(from_status)?;
    outln!("workflow {name}: schedule deleted")?;
    Ok(())
}

fn named(name: &str) -> ScheduleName {
    ScheduleName { workflow_name: name.to_string() }
}

/// A schedule as `list --json` and `show` print it.
pub fn to_json(s: &ScheduleInfo) -> serde_json::Value {
    let ms = |v: i64| (v != 0).then_some(v);
    serde_json::json!({
        "workflow": s.workflow_name,
        "cron": s.cron,
        "timezone": s.timezone,
        "start_ms": ms(s.start_ms),
        "end_ms": ms(s.end_ms),
        "catchup": s.catchup,
        "paused": s.paused,
        "from_spec": s.from_spec,
        "next_fire_ms": ms(s.next_fire_ms),
    })
}

/// What `porpoise backfill` is given.
#[derive(Debug, Clone, Default)]
pub struct NewBackfill {
    pub name: String,
    pub from: String,
    pub to: String,
    pub daily: bool,
    pub parallel: u32,
    pub reverse: bool,
    pub keep_going: bool,
    pub params: Vec<String>,
}

/// `porpoise backfill NAME --from DATE --to DATE …`: starts it; prints its id, then each run's
/// id and schedule time.
pub async fn backfill(server: &Server, new: NewBackfill) -> Result<(), ClientError> {
    let params = parse_params(&new.params)?;
    if new.parallel == 0 {
        return Err(ClientError::invalid("--parallel must be at least 1"));
    }
    let mut client = connect(server).await?;
    let request = BackfillRequest {
        workflow_name: new.name,
        from: new.from,
        to: new.to,
        daily: new.daily,
        parallel: new.parallel,
        reverse: new.reverse,
        keep_going: new.keep_going,
        params: params.into_iter().collect(),
    };
    let b = client.start_backfill(request).await.map_err(from_status)?.into_inner();
    let width = if b.parallel == 1 { "one at a time".to_string() } else { format!("{} at a time", b.parallel) };
    outln!("backfill {}: {} runs of {}, {width}", b.backfill_id, b.runs.len(), b.workflow_name)?;
    for r in &b.runs {
        outln!("{} {}", r.run_id, time(r.schedule_time_ms))?;
    }
    Ok(())
}

/// `porpoise backfill status ID [--json]`
pub async fn backfill_status(server: &Server, id: i64, json: bool) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    let b = client.get_backfill(GetBackfillRequest { backfill_id: id }).await.map_err(from_status)?.into_inner();
    if json {
        outln!("{:#}", backfill_json(&b))?;
        return Ok(());
    }
    let reason = if b.state_reason.is_empty() { String::new() } else { format!(": {}", b.state_reason) };
    outln!("backfill {} of {}: {}{reason}", b.backfill_id, b.workflow_name, b.state)?;
    let mut table = Table::new(&["RUN>", "SCHEDULE TIME", "STATE", "REASON"]);
    for r in &b.runs {
        table.row([r.run_id.to_string(), time(r.schedule_time_ms), r.state.clone(), r.state_reason.clone()]);
    }
    table.print()
}

fn backfill_json(b: &BackfillReply) -> serde_json::Value {
    let runs: Vec<serde_json::Value> = b
        .runs
        .iter()
        .map(|r| {
            serde_json::json!({
                "run_id": r.run_id,
                "schedule_time_ms": r.schedule_time_ms,
                "state": r.state,
                "reason": (!r.state_reason.is_empty()).then_some(&r.state_reason),
            })
        })
        .collect();
    serde_json::json!({
        "backfill_id": b.backfill_id,
        "workflow": b.workflow_name,
        "state": b.state,
        "reason": (!b.state_reason.is_empty()).then_some(&b.state_reason),
        "parallel": b.parallel,
        "keep_going": b.keep_going,
        "runs": runs,
    })
}
