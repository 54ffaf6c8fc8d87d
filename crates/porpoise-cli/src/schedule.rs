//! `porpoise schedule …`: a workflow's schedule, made, listed, paused, resumed and deleted
//! through the master's AdminService.

use porpoise_proto::v1::{ListSchedulesRequest, ScheduleInfo, ScheduleName, ScheduleRequest};

use crate::client::{ClientError, connect, from_status, time};
use crate::outln;

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
pub async fn create(server: &str, name: &str, new: NewSchedule) -> Result<(), ClientError> {
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
pub async fn list(server: &str, json: bool) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    let reply = client.list_schedules(ListSchedulesRequest {}).await.map_err(from_status)?.into_inner();
    if json {
        let all: Vec<serde_json::Value> = reply.schedules.iter().map(to_json).collect();
        outln!("{:#}", serde_json::Value::Array(all))?;
        return Ok(());
    }
    outln!("{:<32} {:<24} {:<20} {:<8} {:<7} NEXT FIRE", "WORKFLOW", "CRON", "TIME ZONE", "CATCHUP", "PAUSED")?;
    for s in &reply.schedules {
        outln!(
            "{:<32} {:<24} {:<20} {:<8} {:<7} {}",
            s.workflow_name,
            s.cron,
            s.timezone,
            s.catchup,
            if s.paused { "yes" } else { "no" },
            time(s.next_fire_ms)
        )?;
    }
    Ok(())
}

/// `porpoise schedule show NAME`
pub async fn show(server: &str, name: &str) -> Result<(), ClientError> {
    let mut client = connect(server).await?;
    let s = client.get_schedule(named(name)).await.map_err(from_status)?.into_inner();
    outln!("{:#}", to_json(&s))?;
    Ok(())
}

/// `porpoise schedule pause|resume NAME`
pub async fn pause(server: &str, name: &str, paused: bool) -> Result<(), ClientError> {
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
pub async fn delete(server: &str, name: &str) -> Result<(), ClientError> {
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
