//! The scheduler: every master looks at the schedules twice a second and fires what is due,
//! and at the held runs (serial workflows, backfills) and releases those whose turn came.
//! The store makes each look one transaction that masters take in turn, and each fire time fire
//! once, so any number of masters share the firing and none is special.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use porpoise_core::schedule::{FirePlan, Schedule, ScheduleSpec};
use porpoise_store::ScheduleRow;
use tracing::{info, warn};

use crate::Shared;
use crate::metrics as m;

/// How often a master looks at the schedules.
const TICK: Duration = Duration::from_millis(500);

/// When no master looked for longer than this, the fire times due were missed (no master was
/// up): the schedule's catchup policy decides what runs.
pub const MISSED_AFTER: Duration = Duration::from_secs(5);

/// Runs until the master stops: one look at the schedules per tick.
pub(crate) async fn run(shared: Arc<Shared>) {
    // parsed schedules, by what they say
    let parsed: Mutex<HashMap<String, Result<Schedule, String>>> = Mutex::default();
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = shared.draining.cancelled() => return,
            () = tokio::time::sleep(TICK) => {}
        }
        let now = Utc::now();
        let plan = |row: &ScheduleRow, missed: bool| -> FirePlan {
            let key = serde_json::to_string(&row.spec).unwrap_or_default();
            let mut parsed = parsed.lock().unwrap_or_else(|p| p.into_inner());
            let schedule = parsed.entry(key).or_insert_with(|| parse(&row.spec));
            match schedule {
                Ok(s) => s.plan(row.done_until, now, missed),
                // a stored schedule that no longer parses (a time zone gone from the database)
                Err(_) => FirePlan { fire: Vec::new(), done_until: row.done_until, skipped: 0 },
            }
        };
        release_held_runs(&shared).await;
        match shared.store.fire_schedules(now, MISSED_AFTER, &plan).await {
            Ok(fired) => {
                failures = 0;
                for f in &fired {
                    metrics::counter!(m::SCHEDULE_FIRES).increment(1);
                    info!(workflow = %f.workflow_name, fire_time = %f.fire_time, run_id = f.run_id, "schedule fired");
                }
                if !fired.is_empty() {
                    shared.wake_consumer();
                }
            }
            Err(e) => {
                failures += 1;
                m::database_error("fire_schedules", &e);
                // once per outage, then now and then
                if failures == 1 || failures.is_multiple_of(60) {
                    warn!(error = %e, failures, "cannot look at the schedules; trying again");
                }
            }
        }
    }
}

/// Releases the held runs whose turn has come (serial workflows, backfills), and ends what
/// must end; a failure is tried again at the next tick.
async fn release_held_runs(shared: &Shared) {
    match shared.store.release_waiting(&porpoise_core::release::decide).await {
        Ok(r) => {
            for id in &r.released {
                info!(run_id = id, "held run released: its turn came");
            }
            for id in &r.discarded {
                metrics::counter!(m::WORKFLOWS_FINISHED, "state" => "discarded").increment(1);
                info!(run_id = id, "run discarded: another run of its serial_discard workflow was active");
            }
            for id in &r.stopped {
                metrics::counter!(m::WORKFLOWS_FINISHED, "state" => "stopped").increment(1);
                info!(run_id = id, "held run stopped: its backfill stopped at a failure");
            }
            for (id, succeeded) in &r.backfills_ended {
                info!(backfill_id = id, succeeded, "backfill ended");
            }
            if !r.released.is_empty() {
                shared.wake_consumer();
            }
        }
        Err(e) => {
            m::database_error("release_runs", &e);
            warn!(error = %e, "cannot look at the held runs; trying again")
        }
    }
}

fn parse(spec: &ScheduleSpec) -> Result<Schedule, String> {
    Schedule::new(spec.clone()).map_err(|e| {
        warn!(cron = %spec.cron, timezone = %spec.timezone, error = %e, "a stored schedule does not parse; it does not fire");
        e.to_string()
    })
}
