//! The SQL both stores share, written once as a macro over the sqlx database type; the few
//! statements that differ are passed in by each backend.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use porpoise_core::{ExecutionState, Priority};

use crate::{Command, CommandKind, DeadLetter, StoreError, TaskInstance, WorkflowDefinition, WorkflowInstance};

pub(crate) const DEFINITION_COLUMNS: &str = "id, name, version, spec_yaml, spec_json, task_count, created_at";
pub(crate) const COMMAND_COLUMNS: &str =
    "id, kind, workflow_definition_id, workflow_instance_id, params, priority, created_at, claimed_by, claimed_at";
pub(crate) const WORKFLOW_COLUMNS: &str = "id, workflow_definition_id, command_id, workflow_name, state, state_reason, \
     owner, epoch, priority, params, created_at, started_at, ended_at, updated_at, schedule_time, timezone, run_kind, \
     execution, backfill_id";
pub(crate) const TASK_COLUMNS: &str = "id, workflow_instance_id, task_name, state, attempt, worker_addr, exit_code, \
     warning, failovers, rerun_base, task_group, task_group_priority, group_waiting_since, created_at, started_at, \
     ended_at, updated_at";
pub(crate) const DEAD_LETTER_COLUMNS: &str =
    "id, workflow_instance_id, task_instance_id, event_kind, event, reason, created_at";

/// `$first, $first+1, …` placeholders for `n` values.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Timestamps at the precision both databases keep (microseconds).
pub(crate) fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

pub(crate) fn state(s: &str) -> Result<ExecutionState, StoreError> {
    s.parse().map_err(|e| StoreError::corrupt("state", e))
}

pub(crate) fn priority(rank: i32) -> Result<Priority, StoreError> {
    Priority::from_rank(rank).ok_or_else(|| StoreError::corrupt("priority", rank))
}

pub(crate) fn params(json: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::corrupt("params", e))
}

pub(crate) fn params_json(p: &BTreeMap<String, String>) -> String {
    serde_json::to_string(p).unwrap_or_else(|_| "{}".into())
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DefinitionRow {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) version: i32,
    pub(crate) spec_yaml: String,
    pub(crate) spec_json: String,
    pub(crate) task_count: i32,
    pub(crate) created_at: DateTime<Utc>,
}

impl From<DefinitionRow> for WorkflowDefinition {
    fn from(r: DefinitionRow) -> Self {
        WorkflowDefinition {
            id: r.id,
            name: r.name,
            version: r.version,
            spec_yaml: r.spec_yaml,
            spec_json: r.spec_json,
            task_count: r.task_count,
            created_at: r.created_at,
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct CommandRow {
    id: i64,
    kind: String,
    workflow_definition_id: i64,
    workflow_instance_id: Option<i64>,
    params: String,
    priority: i32,
    created_at: DateTime<Utc>,
    claimed_by: Option<String>,
    claimed_at: Option<DateTime<Utc>>,
}

impl TryFrom<CommandRow> for Command {
    type Error = StoreError;
    fn try_from(r: CommandRow) -> Result<Self, StoreError> {
        Ok(Command {
            id: r.id,
            kind: CommandKind::parse(&r.kind).ok_or_else(|| StoreError::corrupt("command kind", &r.kind))?,
            workflow_definition_id: r.workflow_definition_id,
            workflow_instance_id: r.workflow_instance_id,
            params: params(&r.params)?,
            priority: priority(r.priority)?,
            created_at: r.created_at,
            claimed_by: r.claimed_by,
            claimed_at: r.claimed_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct WorkflowRow {
    pub(crate) id: i64,
    workflow_definition_id: i64,
    command_id: Option<i64>,
    workflow_name: String,
    state: String,
    state_reason: Option<String>,
    owner: Option<String>,
    epoch: i64,
    priority: i32,
    params: String,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    schedule_time: Option<DateTime<Utc>>,
    timezone: String,
    run_kind: String,
    execution: String,
    backfill_id: Option<i64>,
}

impl TryFrom<WorkflowRow> for WorkflowInstance {
    type Error = StoreError;
    fn try_from(r: WorkflowRow) -> Result<Self, StoreError> {
        Ok(WorkflowInstance {
            id: r.id,
            workflow_definition_id: r.workflow_definition_id,
            command_id: r.command_id,
            workflow_name: r.workflow_name,
            state: state(&r.state)?,
            state_reason: r.state_reason,
            owner: r.owner,
            epoch: r.epoch,
            priority: priority(r.priority)?,
            params: params(&r.params)?,
            created_at: r.created_at,
            started_at: r.started_at,
            ended_at: r.ended_at,
            updated_at: r.updated_at,
            schedule_time: r.schedule_time,
            timezone: r.timezone,
            kind: crate::RunKind::parse(&r.run_kind).ok_or_else(|| StoreError::corrupt("run kind", &r.run_kind))?,
            execution: porpoise_core::Execution::parse(&r.execution)
                .ok_or_else(|| StoreError::corrupt("execution", &r.execution))?,
            backfill_id: r.backfill_id,
        })
    }
}

pub(crate) const BACKFILL_COLUMNS: &str =
    "id, workflow_name, parallel, keep_going, state, state_reason, created_at, updated_at";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct BackfillDbRow {
    pub(crate) id: i64,
    workflow_name: String,
    parallel: i32,
    keep_going: bool,
    state: String,
    state_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<BackfillDbRow> for crate::BackfillRow {
    fn from(r: BackfillDbRow) -> Self {
        crate::BackfillRow {
            id: r.id,
            workflow_name: r.workflow_name,
            parallel: r.parallel.max(1) as u32,
            keep_going: r.keep_going,
            state: r.state,
            state_reason: r.state_reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// The states of a run released and not ended, as an SQL list.
pub(crate) fn active_run_states() -> String {
    ExecutionState::ALL
        .into_iter()
        .filter(|s| !s.is_terminal() && *s != ExecutionState::Waiting)
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) const SCHEDULE_COLUMNS: &str =
    "workflow_name, cron, timezone, start_at, end_at, catchup, from_spec, paused, done_until, created_at, updated_at";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ScheduleDbRow {
    workflow_name: String,
    cron: String,
    timezone: String,
    start_at: Option<DateTime<Utc>>,
    end_at: Option<DateTime<Utc>>,
    catchup: String,
    from_spec: bool,
    paused: bool,
    done_until: DateTime<Utc>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<ScheduleDbRow> for crate::ScheduleRow {
    type Error = StoreError;
    fn try_from(r: ScheduleDbRow) -> Result<Self, StoreError> {
        Ok(crate::ScheduleRow {
            workflow_name: r.workflow_name,
            spec: porpoise_core::schedule::ScheduleSpec {
                cron: r.cron,
                timezone: r.timezone,
                start: r.start_at,
                end: r.end_at,
                catchup: r.catchup.parse().map_err(|e| StoreError::corrupt("catchup", e))?,
            },
            from_spec: r.from_spec,
            paused: r.paused,
            done_until: r.done_until,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct TaskRow {
    pub(crate) id: i64,
    workflow_instance_id: i64,
    task_name: String,
    state: String,
    attempt: i32,
    worker_addr: Option<String>,
    exit_code: Option<i32>,
    warning: Option<String>,
    failovers: i32,
    rerun_base: i32,
    task_group: Option<String>,
    task_group_priority: i32,
    group_waiting_since: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<TaskRow> for TaskInstance {
    type Error = StoreError;
    fn try_from(r: TaskRow) -> Result<Self, StoreError> {
        Ok(TaskInstance {
            id: r.id,
            workflow_instance_id: r.workflow_instance_id,
            task_name: r.task_name,
            state: state(&r.state)?,
            attempt: r.attempt,
            worker_addr: r.worker_addr,
            exit_code: r.exit_code,
            warning: r.warning,
            failovers: r.failovers,
            rerun_base: r.rerun_base,
            task_group: r.task_group,
            task_group_priority: r.task_group_priority,
            group_waiting_since: r.group_waiting_since,
            created_at: r.created_at,
            started_at: r.started_at,
            ended_at: r.ended_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DeadLetterRow {
    id: i64,
    workflow_instance_id: Option<i64>,
    task_instance_id: Option<i64>,
    event_kind: String,
    event: String,
    reason: String,
    created_at: DateTime<Utc>,
}

/// The states in which a task instance holds a slot of its task group, as an SQL list.
pub(crate) fn slot_holding_states() -> String {
    ExecutionState::ALL
        .into_iter()
        .filter(|s| s.holds_group_slot())
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A task group with its use: `$1`.. binds as the caller's query adds.
pub(crate) fn task_group_select(filter: &str) -> String {
    let holding = slot_holding_states();
    format!(
        "SELECT g.name, g.slots, g.description, g.created_at, g.updated_at, \
         (SELECT COUNT(*) FROM task_instance t WHERE t.task_group = g.name AND t.state IN ({holding})) AS used, \
         (SELECT COUNT(*) FROM task_instance t JOIN workflow_instance w ON w.id = t.workflow_instance_id \
          WHERE t.task_group = g.name AND t.state = 'waiting' AND t.group_waiting_since IS NOT NULL \
          AND w.state = 'running') AS waiting \
         FROM task_group g {filter} ORDER BY g.name"
    )
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ApiTokenRow {
    name: String,
    role: String,
    created_at: DateTime<Utc>,
}

impl From<ApiTokenRow> for crate::ApiToken {
    fn from(r: ApiTokenRow) -> Self {
        crate::ApiToken { name: r.name, role: r.role, created_at: r.created_at }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct TaskGroupRow {
    name: String,
    slots: i32,
    description: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    used: i64,
    waiting: i64,
}

impl From<TaskGroupRow> for crate::TaskGroup {
    fn from(r: TaskGroupRow) -> Self {
        crate::TaskGroup {
            name: r.name,
            slots: r.slots,
            description: r.description,
            used: r.used,
            waiting: r.waiting,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

impl From<DeadLetterRow> for DeadLetter {
    fn from(r: DeadLetterRow) -> Self {
        DeadLetter {
            id: r.id,
            workflow_instance_id: r.workflow_instance_id,
            task_instance_id: r.task_instance_id,
            event_kind: r.event_kind,
            event: r.event,
            reason: r.reason,
            created_at: r.created_at,
        }
    }
}

/// Why a unit of writes was refused (see `persist_on` in [`impl_store`]).
pub(crate) enum Refusal<'w> {
    /// A task-instance write found the row other than it expected.
    Task(&'w porpoise_core::engine::TaskWrite),
    /// The run's write found it other than this (or not owned).
    Run(String),
    /// Refused with this error (a task group without a free slot).
    Error(crate::StoreError),
}

/// Implements [`crate::Store`] for `$store` (a struct with a `pool: sqlx::Pool<$db>` field).
/// `$claim` is the statement that claims commands: `$1` owner, `$2` time, `$3` limit.
macro_rules! impl_store {
    ($store:ty, $db:ty, $backend:expr, claim = $claim:expr) => {
        #[async_trait::async_trait]
        impl $crate::Store for $store {
            fn backend(&self) -> $crate::Backend {
                $backend
            }

            async fn command_feed(&self) -> $crate::Result<Box<dyn $crate::CommandFeed>> {
                self.open_command_feed().await
            }

            async fn run_end_feed(&self) -> $crate::Result<Box<dyn $crate::CommandFeed>> {
                self.open_run_end_feed().await
            }

            async fn close(&self) {
                self.close_pools().await;
            }

            async fn ping(&self) -> $crate::Result<()> {
                sqlx::query::<$db>("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn apply_definition(
                &self,
                spec: &porpoise_core::WorkflowSpec,
                spec_yaml: &str,
            ) -> $crate::Result<$crate::ApplyOutcome> {
                use $crate::sql::*;
                let spec_json = serde_json::to_string(spec).map_err(|e| $crate::StoreError::corrupt("spec", e))?;
                let mut tx = self.pool.begin().await?;
                let latest: Option<DefinitionRow> = sqlx::query_as::<$db, DefinitionRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {DEFINITION_COLUMNS} FROM workflow_definition WHERE name = $1 ORDER BY version DESC LIMIT 1"
                )))
                .bind(&spec.name)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(latest) = &latest
                    && latest.spec_json == spec_json
                {
                    return Ok($crate::ApplyOutcome::Unchanged { id: latest.id, version: latest.version });
                }
                let version = latest.as_ref().map_or(1, |l| l.version + 1);
                let (id,): (i64,) = sqlx::query_as::<$db, (i64,)>(
                    "INSERT INTO workflow_definition (name, version, spec_yaml, spec_json, task_count, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                )
                .bind(&spec.name)
                .bind(version)
                .bind(spec_yaml)
                .bind(&spec_json)
                .bind(spec.tasks.len() as i32)
                .bind(now())
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| match &e {
                    sqlx::Error::Database(db) if db.is_unique_violation() => $crate::StoreError::Conflict {
                        entity: "workflow definition",
                        id: 0,
                        expected: format!("{} at version {}", spec.name, version - 1),
                        found: "a newer version applied concurrently".into(),
                    },
                    _ => e.into(),
                })?;
                tx.commit().await?;
                Ok(if version == 1 {
                    $crate::ApplyOutcome::Created { id, version }
                } else {
                    $crate::ApplyOutcome::Updated { id, version }
                })
            }

            async fn latest_definition(&self, name: &str) -> $crate::Result<Option<$crate::WorkflowDefinition>> {
                use $crate::sql::*;
                let row = sqlx::query_as::<$db, DefinitionRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {DEFINITION_COLUMNS} FROM workflow_definition WHERE name = $1 ORDER BY version DESC LIMIT 1"
                )))
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(Into::into))
            }

            async fn definition(&self, id: i64) -> $crate::Result<Option<$crate::WorkflowDefinition>> {
                use $crate::sql::*;
                let row = sqlx::query_as::<$db, DefinitionRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {DEFINITION_COLUMNS} FROM workflow_definition WHERE id = $1"
                )))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(Into::into))
            }

            async fn list_definitions(&self) -> $crate::Result<Vec<$crate::WorkflowDefinition>> {
                use $crate::sql::*;
                let rows = sqlx::query_as::<$db, DefinitionRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {DEFINITION_COLUMNS} FROM workflow_definition d WHERE version = \
                     (SELECT MAX(version) FROM workflow_definition l WHERE l.name = d.name) ORDER BY name"
                )))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn insert_command(&self, command: &$crate::NewCommand) -> $crate::Result<i64> {
                use $crate::sql::*;
                let (id,): (i64,) = sqlx::query_as::<$db, (i64,)>(
                    "INSERT INTO command (kind, workflow_definition_id, workflow_instance_id, params, priority, \
                     created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                )
                .bind(command.kind.as_str())
                .bind(command.workflow_definition_id)
                .bind(command.workflow_instance_id)
                .bind(params_json(&command.params))
                .bind(command.priority.rank())
                .bind(now())
                .fetch_one(&self.pool)
                .await?;
                self.command_queued();
                Ok(id)
            }

            async fn claim_commands(&self, owner: &str, limit: u32) -> $crate::Result<Vec<$crate::Command>> {
                use $crate::sql::*;
                let t = now();
                let mut tx = self.pool.begin().await?;
                let rows = sqlx::query_as::<$db, CommandRow>(sqlx::AssertSqlSafe(format!($claim, COMMAND_COLUMNS)))
                    .bind(owner)
                    .bind(t)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await?;
                let mut commands = rows.into_iter().map(TryInto::try_into).collect::<$crate::Result<Vec<_>>>()?;
                // the claimant owns each command's run from the same commit: a master dying right
                // after claiming leaves an owned run for the takeover, never an unowned one
                for c in &mut commands {
                    let c: &mut $crate::Command = c;
                    match c.workflow_instance_id {
                        Some(id) => {
                            sqlx::query::<$db>(
                                "UPDATE workflow_instance SET owner = $1, epoch = epoch + 1, updated_at = $2 \
                                 WHERE id = $3 AND owner IS NULL",
                            )
                            .bind(owner)
                            .bind(t)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                        }
                        None => {
                            let (id,): (i64,) = sqlx::query_as::<$db, (i64,)>(
                                "INSERT INTO workflow_instance (workflow_definition_id, command_id, workflow_name, \
                                 state, owner, epoch, priority, params, created_at, updated_at) \
                                 SELECT id, $1, name, 'submitted', $2, 1, $3, $4, $5, $5 FROM workflow_definition \
                                 WHERE id = $6 RETURNING id",
                            )
                            .bind(c.id)
                            .bind(owner)
                            .bind(c.priority.rank())
                            .bind(params_json(&c.params))
                            .bind(t)
                            .bind(c.workflow_definition_id)
                            .fetch_one(&mut *tx)
                            .await?;
                            sqlx::query::<$db>("UPDATE command SET workflow_instance_id = $1 WHERE id = $2")
                                .bind(id)
                                .bind(c.id)
                                .execute(&mut *tx)
                                .await?;
                            c.workflow_instance_id = Some(id);
                        }
                    }
                }
                tx.commit().await?;
                commands.sort_by_key(|c: &$crate::Command| (c.priority, c.id));
                Ok(commands)
            }

            async fn create_run(&self, run: &$crate::NewRun) -> $crate::Result<($crate::WorkflowInstance, i64)> {
                let mut tx = self.pool.begin().await?;
                let created = Self::create_run_on(&mut tx, run).await?;
                tx.commit().await?;
                self.command_queued();
                Ok(created)
            }

            async fn create_runs(
                &self,
                run: &$crate::NewRun,
                count: u32,
            ) -> $crate::Result<Vec<$crate::WorkflowInstance>> {
                let mut tx = self.pool.begin().await?;
                let mut created = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    created.push(Self::create_run_on(&mut tx, run).await?.0);
                }
                tx.commit().await?;
                self.command_queued();
                Ok(created)
            }

            async fn list_workflow_instances(
                &self,
                workflow_name: Option<&str>,
                in_state: Option<porpoise_core::ExecutionState>,
                limit: u32,
            ) -> $crate::Result<Vec<$crate::WorkflowInstance>> {
                use $crate::sql::*;
                let rows = sqlx::query_as::<$db, WorkflowRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflow_instance WHERE ($1 IS NULL OR workflow_name = $1) \
                     AND ($2 IS NULL OR state = $2) ORDER BY id DESC LIMIT $3"
                )))
                .bind(workflow_name)
                .bind(in_state.map(|s| s.as_str()))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn rerun(&self, id: i64, tasks: &[porpoise_core::engine::RerunTask]) -> $crate::Result<i64> {
                use $crate::sql::*;
                let t = now();
                let mut tx = self.pool.begin().await?;
                let run = sqlx::query_as::<$db, WorkflowRow>(sqlx::AssertSqlSafe(format!(
                    "UPDATE workflow_instance SET state = 'submitted', state_reason = NULL, owner = NULL, \
                     ended_at = NULL, updated_at = $1 WHERE id = $2 AND state IN ('success', 'failure', 'stopped') \
                     RETURNING {WORKFLOW_COLUMNS}"
                )))
                .bind(t)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(run) = run else {
                    drop(tx);
                    return Err(self.workflow_conflict(id, "ended (success, failure or stopped)").await);
                };
                let run: $crate::WorkflowInstance = run.try_into()?;
                for r in tasks {
                    let (task, expected, attempt) = (r.id, r.state, r.attempt);
                    let done = if r.new == porpoise_core::ExecutionState::ForcedSuccess {
                        // no new attempt: the one that ended counts as a success from now on
                        sqlx::query::<$db>(
                            "UPDATE task_instance SET state = $6, updated_at = $1, warning = $7 \
                             WHERE id = $2 AND workflow_instance_id = $3 AND state = $4 AND attempt = $5",
                        )
                        .bind(t)
                        .bind(task)
                        .bind(id)
                        .bind(expected.as_str())
                        .bind(attempt)
                        .bind(r.new.as_str())
                        .bind(porpoise_core::engine::forced_warning(attempt, expected))
                        .execute(&mut *tx)
                        .await?
                    } else {
                        sqlx::query::<$db>(
                            "UPDATE task_instance SET state = $6, attempt = attempt + 1, rerun_base = attempt, \
                             exit_code = NULL, started_at = NULL, ended_at = NULL, updated_at = $1, \
                             group_waiting_since = CASE WHEN $7 THEN $1 ELSE NULL END \
                             WHERE id = $2 AND workflow_instance_id = $3 AND state = $4 AND attempt = $5",
                        )
                        .bind(t)
                        .bind(task)
                        .bind(id)
                        .bind(expected.as_str())
                        .bind(attempt)
                        .bind(r.new.as_str())
                        .bind(r.await_slot)
                        .execute(&mut *tx)
                        .await?
                    };
                    if done.rows_affected() == 0 {
                        drop(tx);
                        return Err($crate::StoreError::Conflict {
                            entity: "task instance",
                            id: task,
                            expected: format!("{expected} attempt {attempt}"),
                            found: "another state or attempt".into(),
                        });
                    }
                }
                let (command_id,): (i64,) = sqlx::query_as::<$db, (i64,)>(
                    "INSERT INTO command (kind, workflow_definition_id, workflow_instance_id, params, priority, \
                     created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                )
                .bind($crate::CommandKind::StartWorkflow.as_str())
                .bind(run.workflow_definition_id)
                .bind(id)
                .bind("{}")
                .bind(run.priority.rank())
                .bind(t)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                self.command_queued();
                Ok(command_id)
            }

            async fn pending_control_commands(&self, owner: &str) -> $crate::Result<Vec<$crate::Command>> {
                use $crate::sql::*;
                let columns = COMMAND_COLUMNS.split(", ").map(|c| format!("c.{c}")).collect::<Vec<_>>().join(", ");
                let rows = sqlx::query_as::<$db, CommandRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {columns} FROM command c JOIN workflow_instance w ON w.id = c.workflow_instance_id \
                     WHERE c.claimed_by IS NULL AND c.kind <> 'start-workflow' AND w.owner = $1 ORDER BY c.id"
                )))
                .bind(owner)
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn control_commands_of(&self, id: i64) -> $crate::Result<Vec<$crate::Command>> {
                use $crate::sql::*;
                let rows = sqlx::query_as::<$db, CommandRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {COMMAND_COLUMNS} FROM command WHERE workflow_instance_id = $1 \
                     AND kind <> 'start-workflow' ORDER BY id"
                )))
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn definition_version(
                &self,
                name: &str,
                version: i32,
            ) -> $crate::Result<Option<$crate::WorkflowDefinition>> {
                use $crate::sql::*;
                let row = sqlx::query_as::<$db, DefinitionRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {DEFINITION_COLUMNS} FROM workflow_definition WHERE name = $1 AND version = $2"
                )))
                .bind(name)
                .bind(version)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(Into::into))
            }

            async fn create_workflow_instance(
                &self,
                new: &$crate::NewWorkflowInstance,
            ) -> $crate::Result<$crate::WorkflowInstance> {
                use $crate::sql::*;
                let t = now();
                let row = sqlx::query_as::<$db, WorkflowRow>(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO workflow_instance (workflow_definition_id, command_id, workflow_name, state, owner, \
                     epoch, priority, params, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, $8) RETURNING {WORKFLOW_COLUMNS}"
                )))
                .bind(new.workflow_definition_id)
                .bind(new.command_id)
                .bind(&new.workflow_name)
                .bind(new.state.as_str())
                .bind(&new.owner)
                .bind(new.priority.rank())
                .bind(params_json(&new.params))
                .bind(t)
                .fetch_one(&self.pool)
                .await?;
                row.try_into()
            }

            async fn workflow_instance(&self, id: i64) -> $crate::Result<Option<$crate::WorkflowInstance>> {
                use $crate::sql::*;
                let row = sqlx::query_as::<$db, WorkflowRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflow_instance WHERE id = $1"
                )))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn unfinished_workflow_instances_of(
                &self,
                owner: &str,
            ) -> $crate::Result<Vec<$crate::WorkflowInstance>> {
                use $crate::sql::*;
                let rows = sqlx::query_as::<$db, WorkflowRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflow_instance \
                     WHERE owner = $1 AND state NOT IN ('success', 'failure', 'stopped') ORDER BY id"
                )))
                .bind(owner)
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn workflow_instances_in(
                &self,
                states: &[porpoise_core::ExecutionState],
                limit: u32,
            ) -> $crate::Result<Vec<$crate::WorkflowInstance>> {
                use $crate::sql::*;
                if states.is_empty() {
                    return Ok(Vec::new());
                }
                let sql = format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflow_instance WHERE state IN ({}) ORDER BY id LIMIT ${}",
                    placeholders(1, states.len()),
                    states.len() + 1
                );
                let mut q = sqlx::query_as::<$db, WorkflowRow>(sqlx::AssertSqlSafe(sql));
                for s in states {
                    q = q.bind(s.as_str());
                }
                let rows = q.bind(i64::from(limit)).fetch_all(&self.pool).await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn update_workflow_state(
                &self,
                owner: &str,
                id: i64,
                w: &porpoise_core::engine::WorkflowWrite,
            ) -> $crate::Result<$crate::WorkflowInstance> {
                let row = {
                    // given back before a refusal is explained: SQLite has one connection
                    let mut conn = self.pool.acquire().await?;
                    Self::update_workflow_on(&mut conn, owner, id, w).await?
                };
                match row {
                    Some(row) => row.try_into(),
                    None => Err(self.workflow_conflict(id, &format!("{} owned by {owner}", w.expected)).await),
                }
            }

            async fn take_over_workflow_instance(
                &self,
                id: i64,
                expected_owner: &str,
                expected_epoch: i64,
                new_owner: &str,
            ) -> $crate::Result<$crate::WorkflowInstance> {
                use $crate::sql::*;
                let row = sqlx::query_as::<$db, WorkflowRow>(sqlx::AssertSqlSafe(format!(
                    "UPDATE workflow_instance SET owner = $1, epoch = epoch + 1, updated_at = $2 \
                     WHERE id = $3 AND owner = $4 AND epoch = $5 RETURNING {WORKFLOW_COLUMNS}"
                )))
                .bind(new_owner)
                .bind(now())
                .bind(id)
                .bind(expected_owner)
                .bind(expected_epoch)
                .fetch_optional(&self.pool)
                .await?;
                match row {
                    Some(row) => row.try_into(),
                    None => Err(self
                        .workflow_conflict(id, &format!("owned by {expected_owner} at epoch {expected_epoch}"))
                        .await),
                }
            }

            async fn create_task_instances(
                &self,
                owner: &str,
                new: &[$crate::NewTaskInstance],
            ) -> $crate::Result<Vec<$crate::TaskInstance>> {
                let mut tx = self.pool.begin().await?;
                let mut out = Vec::with_capacity(new.len());
                let mut runs: Vec<i64> = new.iter().map(|n| n.workflow_instance_id).collect();
                runs.dedup();
                for run in runs {
                    let names: Vec<(porpoise_core::engine::NewTask, porpoise_core::ExecutionState)> = new
                        .iter()
                        .filter(|n| n.workflow_instance_id == run)
                        .map(|n| (n.task_name.as_str().into(), n.state))
                        .collect();
                    match Self::create_tasks_on(&mut tx, owner, run, &names).await? {
                        Some(rows) => out.extend(rows),
                        None => {
                            drop(tx);
                            return Err(self.workflow_conflict(run, &format!("owned by {owner}")).await);
                        }
                    }
                }
                tx.commit().await?;
                out.into_iter().map(TryInto::try_into).collect()
            }

            async fn persist(
                &self,
                owner: &str,
                run: i64,
                writes: &[porpoise_core::engine::Write],
            ) -> $crate::Result<Vec<$crate::TaskInstance>> {
                let mut tx = self.pool.begin().await?;
                match Self::persist_on(&mut tx, owner, run, writes).await? {
                    Ok(created) => {
                        tx.commit().await?;
                        created.into_iter().map(TryInto::try_into).collect()
                    }
                    Err(refusal) => {
                        // what was found instead is read once the transaction is gone
                        drop(tx);
                        Err(self.refused(owner, run, refusal).await)
                    }
                }
            }

            async fn persist_together(
                &self,
                owner: &str,
                units: &[(i64, &[porpoise_core::engine::Write])],
            ) -> $crate::Result<Option<Vec<Vec<$crate::TaskInstance>>>> {
                let mut tx = self.pool.begin().await?;
                let mut out = Vec::with_capacity(units.len());
                for (run, writes) in units {
                    match Self::persist_on(&mut tx, owner, *run, writes).await? {
                        Ok(created) => out.push(created),
                        Err(_) => return Ok(None),
                    }
                }
                tx.commit().await?;
                out.into_iter()
                    .map(|created| created.into_iter().map(TryInto::try_into).collect())
                    .collect::<$crate::Result<Vec<_>>>()
                    .map(Some)
            }

            async fn task_instance(&self, id: i64) -> $crate::Result<Option<$crate::TaskInstance>> {
                use $crate::sql::*;
                let row = sqlx::query_as::<$db, TaskRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {TASK_COLUMNS} FROM task_instance WHERE id = $1"
                )))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn task_instances_of(&self, workflow_instance_id: i64) -> $crate::Result<Vec<$crate::TaskInstance>> {
                use $crate::sql::*;
                let rows = sqlx::query_as::<$db, TaskRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {TASK_COLUMNS} FROM task_instance WHERE workflow_instance_id = $1 ORDER BY id"
                )))
                .bind(workflow_instance_id)
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn task_instances_on_worker(
                &self,
                worker_addr: &str,
                states: &[porpoise_core::ExecutionState],
            ) -> $crate::Result<Vec<$crate::TaskInstance>> {
                use $crate::sql::*;
                if states.is_empty() {
                    return Ok(Vec::new());
                }
                let sql = format!(
                    "SELECT {TASK_COLUMNS} FROM task_instance WHERE worker_addr = $1 AND state IN ({}) ORDER BY id",
                    placeholders(2, states.len())
                );
                let mut q = sqlx::query_as::<$db, TaskRow>(sqlx::AssertSqlSafe(sql)).bind(worker_addr);
                for s in states {
                    q = q.bind(s.as_str());
                }
                let rows = q.fetch_all(&self.pool).await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn update_task_state(
                &self,
                owner: &str,
                w: &porpoise_core::engine::TaskWrite,
            ) -> $crate::Result<$crate::TaskInstance> {
                let row = {
                    // given back before a refusal is explained: SQLite has one connection
                    let mut conn = self.pool.acquire().await?;
                    Self::update_task_on(&mut conn, owner, w).await?
                };
                match row {
                    Some(row) => row.try_into(),
                    None => Err(self.task_conflict(owner, w).await),
                }
            }

            async fn record_dead_letter(&self, d: &$crate::NewDeadLetter) -> $crate::Result<i64> {
                use $crate::sql::*;
                let (id,): (i64,) = sqlx::query_as::<$db, (i64,)>(
                    "INSERT INTO dead_letter (workflow_instance_id, task_instance_id, event_kind, event, reason, \
                     created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                )
                .bind(d.workflow_instance_id)
                .bind(d.task_instance_id)
                .bind(&d.event_kind)
                .bind(&d.event)
                .bind(&d.reason)
                .bind(now())
                .fetch_one(&self.pool)
                .await?;
                Ok(id)
            }

            async fn put_schedule(
                &self,
                name: &str,
                spec: &porpoise_core::schedule::ScheduleSpec,
                from_spec: bool,
            ) -> $crate::Result<$crate::ScheduleRow> {
                use $crate::sql::*;
                let t = now();
                let mut tx = self.pool.begin().await?;
                let old = sqlx::query_as::<$db, ScheduleDbRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {SCHEDULE_COLUMNS} FROM schedule WHERE workflow_name = $1"
                )))
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .map($crate::ScheduleRow::try_from)
                .transpose()?;
                // unchanged, it goes on where it was; new or changed, it fires from now on
                let (done_until, paused) = match &old {
                    Some(o) if o.spec == *spec => (o.done_until, o.paused),
                    Some(o) => (t, o.paused),
                    None => (t, false),
                };
                let row = sqlx::query_as::<$db, ScheduleDbRow>(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO schedule ({SCHEDULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) \
                     ON CONFLICT (workflow_name) DO UPDATE SET cron = $2, timezone = $3, start_at = $4, end_at = $5, \
                     catchup = $6, from_spec = $7, paused = $8, done_until = $9, updated_at = $10 \
                     RETURNING {SCHEDULE_COLUMNS}"
                )))
                .bind(name)
                .bind(&spec.cron)
                .bind(&spec.timezone)
                .bind(spec.start)
                .bind(spec.end)
                .bind(spec.catchup.as_str())
                .bind(from_spec)
                .bind(paused)
                .bind(done_until)
                .bind(t)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                row.try_into()
            }

            async fn schedule(&self, name: &str) -> $crate::Result<Option<$crate::ScheduleRow>> {
                use $crate::sql::*;
                let row = sqlx::query_as::<$db, ScheduleDbRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {SCHEDULE_COLUMNS} FROM schedule WHERE workflow_name = $1"
                )))
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn schedules(&self) -> $crate::Result<Vec<$crate::ScheduleRow>> {
                use $crate::sql::*;
                let rows = sqlx::query_as::<$db, ScheduleDbRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {SCHEDULE_COLUMNS} FROM schedule ORDER BY workflow_name"
                )))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn set_schedule_paused(&self, name: &str, paused: bool) -> $crate::Result<$crate::ScheduleRow> {
                use $crate::sql::*;
                let t = now();
                // resumed, it fires from now on
                let row = sqlx::query_as::<$db, ScheduleDbRow>(sqlx::AssertSqlSafe(format!(
                    "UPDATE schedule SET paused = $1, updated_at = $2, \
                     done_until = CASE WHEN paused AND NOT $1 THEN $2 ELSE done_until END \
                     WHERE workflow_name = $3 RETURNING {SCHEDULE_COLUMNS}"
                )))
                .bind(paused)
                .bind(t)
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
                row.ok_or_else(|| $crate::StoreError::NotFound { entity: "schedule of workflow", key: name.to_string() })?
                    .try_into()
            }

            async fn delete_schedule(&self, name: &str) -> $crate::Result<()> {
                let done = sqlx::query::<$db>("DELETE FROM schedule WHERE workflow_name = $1")
                    .bind(name)
                    .execute(&self.pool)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err($crate::StoreError::NotFound { entity: "schedule of workflow", key: name.to_string() });
                }
                Ok(())
            }

            async fn fire_schedules(
                &self,
                at: chrono::DateTime<chrono::Utc>,
                max_gap: std::time::Duration,
                plan: &$crate::PlanFires<'_>,
            ) -> $crate::Result<Vec<$crate::FiredRun>> {
                use $crate::sql::*;
                let mut tx = self.pool.begin().await?;
                // masters look in turn: the clock row is locked until this look commits
                sqlx::query::<$db>("UPDATE scheduler_clock SET id = id WHERE id = 1").execute(&mut *tx).await?;
                let (checked_at,): (Option<chrono::DateTime<chrono::Utc>>,) =
                    sqlx::query_as::<$db, (Option<chrono::DateTime<chrono::Utc>>,)>(
                        "SELECT checked_at FROM scheduler_clock WHERE id = 1",
                    )
                    .fetch_one(&mut *tx)
                    .await?;
                let missed = checked_at.is_some_and(|c| (at - c).to_std().is_ok_and(|gap| gap > max_gap));
                sqlx::query::<$db>("UPDATE scheduler_clock SET checked_at = $1 WHERE id = 1")
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                let rows = sqlx::query_as::<$db, ScheduleDbRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {SCHEDULE_COLUMNS} FROM schedule WHERE NOT paused ORDER BY workflow_name"
                )))
                .fetch_all(&mut *tx)
                .await?;
                let mut fired = Vec::new();
                for row in rows {
                    let row: $crate::ScheduleRow = row.try_into()?;
                    let decided = plan(&row, missed);
                    if decided.done_until <= row.done_until && decided.fire.is_empty() {
                        continue;
                    }
                    let def = sqlx::query_as::<$db, DefinitionRow>(sqlx::AssertSqlSafe(format!(
                        "SELECT {DEFINITION_COLUMNS} FROM workflow_definition WHERE name = $1 ORDER BY version DESC LIMIT 1"
                    )))
                    .bind(&row.workflow_name)
                    .fetch_optional(&mut *tx)
                    .await?;
                    for fire_time in decided.fire {
                        let Some(def) = &def else { break }; // the workflow is gone: nothing to run
                        let done: Option<(i64,)> = sqlx::query_as::<$db, (i64,)>(
                            "SELECT workflow_instance_id FROM schedule_fire WHERE workflow_name = $1 AND fire_time = $2",
                        )
                        .bind(&row.workflow_name)
                        .bind(fire_time)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if done.is_some() {
                            continue; // fired already
                        }
                        let spec: porpoise_core::WorkflowSpec = serde_json::from_str(&def.spec_json)
                            .map_err(|e| $crate::StoreError::corrupt("workflow spec", e))?;
                        let run = $crate::NewRun {
                            workflow_definition_id: def.id,
                            workflow_name: row.workflow_name.clone(),
                            priority: spec.priority,
                            params: Default::default(),
                            schedule_time: fire_time,
                            timezone: row.spec.timezone.clone(),
                            kind: $crate::RunKind::Schedule,
                            execution: spec.execution,
                            backfill: None,
                        };
                        let (instance, _) = Self::create_run_on(&mut tx, &run).await?;
                        sqlx::query::<$db>(
                            "INSERT INTO schedule_fire (workflow_name, fire_time, workflow_instance_id, created_at) \
                             VALUES ($1, $2, $3, $4)",
                        )
                        .bind(&row.workflow_name)
                        .bind(fire_time)
                        .bind(instance.id)
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                        fired.push($crate::FiredRun {
                            workflow_name: row.workflow_name.clone(),
                            fire_time,
                            run_id: instance.id,
                        });
                    }
                    sqlx::query::<$db>(
                        "UPDATE schedule SET done_until = $1 WHERE workflow_name = $2 AND done_until < $1",
                    )
                    .bind(decided.done_until)
                    .bind(&row.workflow_name)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                if !fired.is_empty() {
                    self.command_queued();
                }
                Ok(fired)
            }

            async fn release_waiting(
                &self,
                decide: &$crate::DecideReleases<'_>,
            ) -> $crate::Result<$crate::Released> {
                use $crate::sql::*;
                use porpoise_core::release::{Backfill, Decision, Snapshot, Waiter};
                // nothing held (the usual case): no transaction, no lock
                let any: Option<(i64,)> =
                    sqlx::query_as::<$db, (i64,)>("SELECT id FROM workflow_instance WHERE state = 'waiting' LIMIT 1")
                        .fetch_optional(&self.pool)
                        .await?;
                let running: Option<(i64,)> =
                    sqlx::query_as::<$db, (i64,)>("SELECT id FROM backfill WHERE state = 'running' LIMIT 1")
                        .fetch_optional(&self.pool)
                        .await?;
                if any.is_none() && running.is_none() {
                    return Ok($crate::Released::default());
                }
                let t = now();
                let mut tx = self.pool.begin().await?;
                // masters decide in turn: the clock row is locked until this look commits
                sqlx::query::<$db>("UPDATE scheduler_clock SET id = id WHERE id = 1").execute(&mut *tx).await?;
                let rows: Vec<(i64, String, String, i32, Option<i64>, Option<i32>)> =
                    sqlx::query_as::<$db, (i64, String, String, i32, Option<i64>, Option<i32>)>(
                        "SELECT id, workflow_name, execution, priority, backfill_id, backfill_seq FROM workflow_instance \
                         WHERE state = 'waiting' AND owner IS NULL ORDER BY id LIMIT 10000",
                    )
                    .fetch_all(&mut *tx)
                    .await?;
                let mut snapshot = Snapshot::default();
                for (id, workflow, execution, priority, backfill, seq) in rows {
                    snapshot.waiters.push(Waiter {
                        id,
                        workflow,
                        execution: porpoise_core::Execution::parse(&execution)
                            .ok_or_else(|| $crate::StoreError::corrupt("execution", &execution))?,
                        priority: $crate::sql::priority(priority)?,
                        backfill: backfill.map(|b| (b, seq.unwrap_or(0))),
                    });
                }
                let active = active_run_states();
                let serial: std::collections::BTreeSet<String> = snapshot
                    .waiters
                    .iter()
                    .filter(|w| w.execution != porpoise_core::Execution::Parallel)
                    .map(|w| w.workflow.clone())
                    .collect();
                for name in serial {
                    let busy: Option<(i64,)> = sqlx::query_as::<$db, (i64,)>(sqlx::AssertSqlSafe(format!(
                        "SELECT id FROM workflow_instance WHERE workflow_name = $1 AND state IN ({active}) \
                         ORDER BY id DESC LIMIT 1"
                    )))
                    .bind(&name)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some((id,)) = busy {
                        snapshot.active.insert(name, id);
                    }
                }
                let backfills: Vec<(i64, i32, bool)> = sqlx::query_as::<$db, (i64, i32, bool)>(
                    "SELECT id, parallel, keep_going FROM backfill WHERE state = 'running' ORDER BY id",
                )
                .fetch_all(&mut *tx)
                .await?;
                for (id, parallel, keep_going) in backfills {
                    let (n,): (i64,) = sqlx::query_as::<$db, (i64,)>(sqlx::AssertSqlSafe(format!(
                        "SELECT COUNT(*) FROM workflow_instance WHERE backfill_id = $1 AND state IN ({active})"
                    )))
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                    let failed: Option<(i64,)> = sqlx::query_as::<$db, (i64,)>(
                        "SELECT id FROM workflow_instance WHERE backfill_id = $1 \
                         AND state IN ('failure', 'stopped', 'discarded') ORDER BY backfill_seq LIMIT 1",
                    )
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    snapshot.backfills.push(Backfill {
                        id,
                        parallel: parallel.max(1) as u32,
                        keep_going,
                        active: n as usize,
                        failed: failed.map(|f| f.0),
                    });
                }
                let decisions = decide(&snapshot);
                let mut out = $crate::Released::default();
                for d in decisions.runs {
                    // a held run either goes, or ends without running
                    let (run, reason, ended, list) = match d {
                        Decision::Release(id) => {
                            let done = sqlx::query::<$db>(
                                "UPDATE workflow_instance SET state = 'submitted', updated_at = $1 \
                                 WHERE id = $2 AND state = 'waiting'",
                            )
                            .bind(t)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                            if done.rows_affected() == 1 {
                                Self::start_command_on(&mut tx, id).await?;
                                out.released.push(id);
                            }
                            continue;
                        }
                        Decision::Discard { run, reason } => {
                            (run, reason, porpoise_core::ExecutionState::Discarded, &mut out.discarded)
                        }
                        Decision::Stop { run, reason } => {
                            (run, reason, porpoise_core::ExecutionState::Stopped, &mut out.stopped)
                        }
                    };
                    let done = sqlx::query::<$db>(
                        "UPDATE workflow_instance SET state = $1, state_reason = $2, ended_at = $3, \
                         updated_at = $3 WHERE id = $4 AND state = 'waiting'",
                    )
                    .bind(ended.as_str())
                    .bind(&reason)
                    .bind(t)
                    .bind(run)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 1 {
                        list.push(run);
                    }
                }
                for end in decisions.backfills {
                    sqlx::query::<$db>(
                        "UPDATE backfill SET state = $1, state_reason = $2, updated_at = $3 \
                         WHERE id = $4 AND state = 'running'",
                    )
                    .bind(if end.succeeded { "success" } else { "failure" })
                    .bind(&end.reason)
                    .bind(t)
                    .bind(end.id)
                    .execute(&mut *tx)
                    .await?;
                    out.backfills_ended.push((end.id, end.succeeded));
                }
                tx.commit().await?;
                if !out.released.is_empty() {
                    self.command_queued();
                }
                Ok(out)
            }

            async fn create_backfill(
                &self,
                new: &$crate::NewBackfill,
            ) -> $crate::Result<($crate::BackfillRow, Vec<$crate::WorkflowInstance>)> {
                use $crate::sql::*;
                let t = now();
                let mut tx = self.pool.begin().await?;
                let row = sqlx::query_as::<$db, BackfillDbRow>(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO backfill (workflow_name, parallel, keep_going, state, created_at, updated_at) \
                     VALUES ($1, $2, $3, 'running', $4, $4) RETURNING {BACKFILL_COLUMNS}"
                )))
                .bind(&new.workflow_name)
                .bind(new.parallel as i32)
                .bind(new.keep_going)
                .bind(t)
                .fetch_one(&mut *tx)
                .await?;
                let mut runs = Vec::with_capacity(new.runs.len());
                for (seq, run) in new.runs.iter().enumerate() {
                    let run = $crate::NewRun { backfill: Some((row.id, seq as i32)), ..run.clone() };
                    runs.push(Self::create_run_on(&mut tx, &run).await?.0);
                }
                tx.commit().await?;
                Ok((row.into(), runs))
            }

            async fn backfill(
                &self,
                id: i64,
            ) -> $crate::Result<Option<($crate::BackfillRow, Vec<$crate::WorkflowInstance>)>> {
                use $crate::sql::*;
                let row = sqlx::query_as::<$db, BackfillDbRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {BACKFILL_COLUMNS} FROM backfill WHERE id = $1"
                )))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                let Some(row) = row else { return Ok(None) };
                let runs = sqlx::query_as::<$db, WorkflowRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflow_instance WHERE backfill_id = $1 ORDER BY backfill_seq"
                )))
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
                let runs = runs.into_iter().map(TryInto::try_into).collect::<$crate::Result<Vec<_>>>()?;
                Ok(Some((row.into(), runs)))
            }

            async fn stop_waiting_run(&self, id: i64, reason: &str) -> $crate::Result<bool> {
                let t = $crate::sql::now();
                let done = sqlx::query::<$db>(
                    "UPDATE workflow_instance SET state = 'stopped', state_reason = $1, ended_at = $2, updated_at = $2 \
                     WHERE id = $3 AND state = 'waiting' AND owner IS NULL",
                )
                .bind(reason)
                .bind(t)
                .bind(id)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn create_api_token(
                &self,
                name: &str,
                role: &str,
                token_hash: &str,
            ) -> $crate::Result<$crate::ApiToken> {
                let t = $crate::sql::now();
                let done = sqlx::query::<$db>(
                    "INSERT INTO api_token (name, role, token_hash, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(role)
                .bind(token_hash)
                .bind(t)
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Err($crate::StoreError::Conflict {
                        entity: "api token",
                        id: 0,
                        expected: format!("no token named {name}"),
                        found: format!("token {name} exists"),
                    });
                }
                Ok($crate::ApiToken { name: name.to_string(), role: role.to_string(), created_at: t })
            }

            async fn api_token_by_hash(&self, token_hash: &str) -> $crate::Result<Option<$crate::ApiToken>> {
                let row = sqlx::query_as::<$db, $crate::sql::ApiTokenRow>(
                    "SELECT name, role, created_at FROM api_token WHERE token_hash = $1",
                )
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(Into::into))
            }

            async fn api_tokens(&self) -> $crate::Result<Vec<$crate::ApiToken>> {
                let rows = sqlx::query_as::<$db, $crate::sql::ApiTokenRow>(
                    "SELECT name, role, created_at FROM api_token ORDER BY name",
                )
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn delete_api_token(&self, name: &str) -> $crate::Result<bool> {
                let done = sqlx::query::<$db>("DELETE FROM api_token WHERE name = $1")
                    .bind(name)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn create_task_group(
                &self,
                name: &str,
                slots: i32,
                description: &str,
            ) -> $crate::Result<$crate::TaskGroup> {
                let t = $crate::sql::now();
                sqlx::query::<$db>(
                    "INSERT INTO task_group (name, slots, description, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
                )
                .bind(name)
                .bind(slots)
                .bind(description)
                .bind(t)
                .execute(&self.pool)
                .await?;
                self.task_group(name)
                    .await?
                    .ok_or_else(|| $crate::StoreError::NotFound { entity: "task group", key: name.to_string() })
            }

            async fn task_group(&self, name: &str) -> $crate::Result<Option<$crate::TaskGroup>> {
                use $crate::sql::*;
                let row = sqlx::query_as::<$db, TaskGroupRow>(sqlx::AssertSqlSafe(task_group_select("WHERE g.name = $1")))
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(Into::into))
            }

            async fn task_groups(&self) -> $crate::Result<Vec<$crate::TaskGroup>> {
                use $crate::sql::*;
                let rows = sqlx::query_as::<$db, TaskGroupRow>(sqlx::AssertSqlSafe(task_group_select("")))
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn update_task_group(
                &self,
                name: &str,
                slots: Option<i32>,
                description: Option<&str>,
            ) -> $crate::Result<$crate::TaskGroup> {
                let done = sqlx::query::<$db>(
                    "UPDATE task_group SET slots = COALESCE($1, slots), description = COALESCE($2, description), \
                     updated_at = $3 WHERE name = $4",
                )
                .bind(slots)
                .bind(description)
                .bind($crate::sql::now())
                .bind(name)
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Err($crate::StoreError::NotFound { entity: "task group", key: name.to_string() });
                }
                self.task_group(name)
                    .await?
                    .ok_or_else(|| $crate::StoreError::NotFound { entity: "task group", key: name.to_string() })
            }

            async fn delete_task_group(&self, name: &str) -> $crate::Result<()> {
                let done = sqlx::query::<$db>("DELETE FROM task_group WHERE name = $1").bind(name).execute(&self.pool).await?;
                if done.rows_affected() == 0 {
                    return Err($crate::StoreError::NotFound { entity: "task group", key: name.to_string() });
                }
                Ok(())
            }

            async fn dead_letters(&self, limit: u32) -> $crate::Result<Vec<$crate::DeadLetter>> {
                use $crate::sql::*;
                let rows = sqlx::query_as::<$db, DeadLetterRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letter ORDER BY id DESC LIMIT $1"
                )))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }
        }

        impl $store {
            /// Creates an unowned run in `submitted` and the start command naming it, on `conn`.
            async fn create_run_on(
                conn: &mut <$db as sqlx::Database>::Connection,
                run: &$crate::NewRun,
            ) -> $crate::Result<($crate::WorkflowInstance, i64)> {
                use $crate::sql::*;
                let t = now();
                let params = params_json(&run.params);
                let held = run.held();
                let row = sqlx::query_as::<$db, WorkflowRow>(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO workflow_instance (workflow_definition_id, workflow_name, state, epoch, priority, \
                     params, created_at, updated_at, schedule_time, timezone, run_kind, execution, backfill_id, \
                     backfill_seq) VALUES ($1, $2, $9, 0, $3, $4, $5, $5, $6, $7, $8, $10, $11, $12) \
                     RETURNING {WORKFLOW_COLUMNS}"
                )))
                .bind(run.workflow_definition_id)
                .bind(&run.workflow_name)
                .bind(run.priority.rank())
                .bind(&params)
                .bind(t)
                .bind(run.schedule_time)
                .bind(&run.timezone)
                .bind(run.kind.as_str())
                .bind(if held { "waiting" } else { "submitted" })
                .bind(run.execution.as_str())
                .bind(run.backfill.map(|b| b.0))
                .bind(run.backfill.map(|b| b.1))
                .fetch_one(&mut *conn)
                .await?;
                if held {
                    // started when its turn comes (release_waiting)
                    return Ok((row.try_into()?, 0));
                }
                let command_id = Self::start_command_on(conn, row.id).await?;
                let mut instance: $crate::WorkflowInstance = row.try_into()?;
                instance.command_id = Some(command_id);
                Ok((instance, command_id))
            }

            /// Queues the start command of run `id` (unowned, `submitted`) on `conn`.
            async fn start_command_on(
                conn: &mut <$db as sqlx::Database>::Connection,
                id: i64,
            ) -> $crate::Result<i64> {
                let t = $crate::sql::now();
                let (def, params, priority): (i64, String, i32) = sqlx::query_as::<$db, (i64, String, i32)>(
                    "SELECT workflow_definition_id, params, priority FROM workflow_instance WHERE id = $1",
                )
                .bind(id)
                .fetch_one(&mut *conn)
                .await?;
                let (command_id,): (i64,) = sqlx::query_as::<$db, (i64,)>(
                    "INSERT INTO command (kind, workflow_definition_id, workflow_instance_id, params, priority, \
                     created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                )
                .bind($crate::CommandKind::StartWorkflow.as_str())
                .bind(def)
                .bind(id)
                .bind(&params)
                .bind(priority)
                .bind(t)
                .fetch_one(&mut *conn)
                .await?;
                sqlx::query::<$db>("UPDATE workflow_instance SET command_id = $1 WHERE id = $2")
                    .bind(command_id)
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
                Ok(command_id)
            }

            /// Whether run `run` is `owner`'s, read on `conn` (in the caller's transaction).
            async fn owns(
                conn: &mut <$db as sqlx::Database>::Connection,
                owner: &str,
                run: i64,
            ) -> $crate::Result<bool> {
                let found: Option<(i64,)> =
                    sqlx::query_as::<$db, (i64,)>("SELECT id FROM workflow_instance WHERE id = $1 AND owner = $2")
                        .bind(run)
                        .bind(owner)
                        .fetch_optional(&mut *conn)
                        .await?;
                Ok(found.is_some())
            }

            /// Moves a workflow instance to a new state on `conn` if it is still in the expected
            /// state and owned by the expected owner; `None` when the write was refused.
            async fn update_workflow_on(
                conn: &mut <$db as sqlx::Database>::Connection,
                owner: &str,
                id: i64,
                u: &porpoise_core::engine::WorkflowWrite,
            ) -> $crate::Result<Option<$crate::sql::WorkflowRow>> {
                use $crate::sql::*;
                Ok(sqlx::query_as::<$db, WorkflowRow>(sqlx::AssertSqlSafe(format!(
                    "UPDATE workflow_instance SET state = $1, state_reason = $2, \
                     started_at = COALESCE($3, started_at), ended_at = COALESCE($4, ended_at), updated_at = $5 \
                     WHERE id = $6 AND state = $7 AND owner = $8 RETURNING {WORKFLOW_COLUMNS}"
                )))
                .bind(u.new.as_str())
                .bind(&u.reason)
                .bind(u.started_at)
                .bind(u.ended_at)
                .bind(now())
                .bind(id)
                .bind(u.expected.as_str())
                .bind(owner)
                .fetch_optional(&mut *conn)
                .await?)
            }

            /// Moves a task instance to a new state on `conn` if it is still in the expected
            /// state and attempt and its run is owned by the expected owner; `None` when refused.
            async fn update_task_on(
                conn: &mut <$db as sqlx::Database>::Connection,
                owner: &str,
                u: &porpoise_core::engine::TaskWrite,
            ) -> $crate::Result<Option<$crate::sql::TaskRow>> {
                use $crate::sql::*;
                Ok(sqlx::query_as::<$db, TaskRow>(sqlx::AssertSqlSafe(format!(
                    "UPDATE task_instance SET state = $1, attempt = COALESCE($2, attempt), \
                     worker_addr = COALESCE($3, worker_addr), exit_code = COALESCE($4, exit_code), \
                     started_at = COALESCE($5, started_at), ended_at = COALESCE($6, ended_at), updated_at = $7, \
                     warning = COALESCE($12, warning), failovers = failovers + $13, \
                     group_waiting_since = CASE WHEN $14 THEN $7 ELSE NULL END \
                     WHERE id = $8 AND state = $9 AND attempt = $10 AND EXISTS (SELECT 1 FROM workflow_instance w \
                     WHERE w.id = task_instance.workflow_instance_id AND w.owner = $11) RETURNING {TASK_COLUMNS}"
                )))
                .bind(u.new.as_str())
                .bind(u.attempt)
                .bind(&u.worker)
                .bind(u.exit_code)
                .bind(u.started_at)
                .bind(u.ended_at)
                .bind(now())
                .bind(u.id)
                .bind(u.expected.as_str())
                .bind(u.expected_attempt)
                .bind(owner)
                .bind(&u.warning)
                .bind(i32::from(u.failover))
                .bind(u.await_slot)
                .fetch_optional(&mut *conn)
                .await?)
            }

            /// Creates the task instances `names` (with their states, attempt 1) of run `run`
            /// on `conn`, unless they exist (a retried creation finds the rows the first made);
            /// `None` when the run is not `owner`'s.
            async fn create_tasks_on(
                conn: &mut <$db as sqlx::Database>::Connection,
                owner: &str,
                run: i64,
                names: &[(porpoise_core::engine::NewTask, porpoise_core::ExecutionState)],
            ) -> $crate::Result<Option<Vec<$crate::sql::TaskRow>>> {
                Self::insert_tasks_on(conn, owner, run, names).await
            }

            /// Moves a waiting task instance to `submitted` by taking a slot of its task group:
            /// the group's row is locked first, so concurrent takers of one group queue up, and
            /// the slot is granted only if held slots plus waiters ahead of this one (higher
            /// priority, then earlier in line, in runs that are running) leave one free.
            /// `Ok(Err(None))`: the task write itself was refused; `Ok(Err(Some(e)))`: no slot,
            /// or no such group.
            async fn take_slot_on(
                conn: &mut <$db as sqlx::Database>::Connection,
                owner: &str,
                u: &porpoise_core::engine::TaskWrite,
            ) -> $crate::Result<std::result::Result<(), Option<$crate::StoreError>>> {
                use $crate::sql::*;
                let me: Option<(Option<String>, i32, Option<chrono::DateTime<chrono::Utc>>)> =
                    sqlx::query_as::<$db, (Option<String>, i32, Option<chrono::DateTime<chrono::Utc>>)>(
                        "SELECT task_group, task_group_priority, group_waiting_since FROM task_instance \
                         WHERE id = $1 AND state = 'waiting' AND attempt = $2",
                    )
                    .bind(u.id)
                    .bind(u.expected_attempt)
                    .fetch_optional(&mut *conn)
                    .await?;
                let Some((Some(group), priority, since)) = me else {
                    return Ok(Err(None));
                };
                let since = since.unwrap_or_else(now);
                // an update takes the row lock on Postgres and the write lock on SQLite
                let slots: Option<(i32,)> = sqlx::query_as::<$db, (i32,)>(
                    "UPDATE task_group SET slots = slots WHERE name = $1 RETURNING slots",
                )
                .bind(&group)
                .fetch_optional(&mut *conn)
                .await?;
                let Some((slots,)) = slots else {
                    return Ok(Err(Some($crate::StoreError::NotFound { entity: "task group", key: group })));
                };
                let (used,): (i64,) = sqlx::query_as::<$db, (i64,)>(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM task_instance WHERE task_group = $1 AND state IN ({})",
                    slot_holding_states()
                )))
                .bind(&group)
                .fetch_one(&mut *conn)
                .await?;
                let (ahead,): (i64,) = sqlx::query_as::<$db, (i64,)>(
                    "SELECT COUNT(*) FROM task_instance t JOIN workflow_instance w ON w.id = t.workflow_instance_id \
                     WHERE t.task_group = $1 AND t.state = 'waiting' AND t.group_waiting_since IS NOT NULL \
                     AND w.state = 'running' AND t.id <> $2 AND (t.task_group_priority > $3 \
                     OR (t.task_group_priority = $3 AND (t.group_waiting_since < $4 \
                     OR (t.group_waiting_since = $4 AND t.id < $2))))",
                )
                .bind(&group)
                .bind(u.id)
                .bind(priority)
                .bind(since)
                .fetch_one(&mut *conn)
                .await?;
                if used + ahead >= i64::from(slots) {
                    return Ok(Err(Some($crate::StoreError::NoFreeSlot {
                        group,
                        task_instance: u.id,
                        slots,
                        used,
                        ahead,
                    })));
                }
                match Self::update_task_on(conn, owner, u).await? {
                    Some(_) => Ok(Ok(())),
                    None => Ok(Err(None)),
                }
            }

            /// Makes `writes` of run `run` (owned by `owner`) on `conn`, an open transaction; the
            /// rows created, or which write was refused (the transaction must then be dropped).
            async fn persist_on<'w>(
                conn: &mut <$db as sqlx::Database>::Connection,
                owner: &str,
                run: i64,
                writes: &'w [porpoise_core::engine::Write],
            ) -> $crate::Result<std::result::Result<Vec<$crate::sql::TaskRow>, $crate::sql::Refusal<'w>>> {
                use porpoise_core::engine::Write;
                use $crate::sql::Refusal;
                let mut created = Vec::new();
                let mut next = 0;
                while let Some(w) = writes.get(next) {
                    next += 1;
                    match w {
                        Write::Task(first) => {
                            // consecutive task writes of distinct task instances go together
                            let mut chunk = vec![first];
                            while let Some(Write::Task(t)) = writes.get(next)
                                && !chunk.iter().any(|c| c.id == t.id)
                            {
                                chunk.push(t);
                                next += 1;
                            }
                            if let Some(refused) = Self::update_tasks_on(conn, owner, run, &chunk).await? {
                                return Ok(Err(Refusal::Task(chunk[refused])));
                            }
                        }
                        Write::Workflow(wf) => {
                            if Self::update_workflow_on(conn, owner, run, wf).await?.is_none() {
                                return Ok(Err(Refusal::Run(format!("{} owned by {owner}", wf.expected))));
                            }
                        }
                        Write::CompleteCommand(id) => {
                            sqlx::query::<$db>(
                                "UPDATE command SET claimed_by = $1, claimed_at = $2 WHERE id = $3 AND claimed_by IS NULL",
                            )
                            .bind(owner)
                            .bind($crate::sql::now())
                            .bind(id)
                            .execute(&mut *conn)
                            .await?;
                        }
                        Write::TakeSlot(t) => {
                            if let Err(e) = Self::take_slot_on(conn, owner, t).await? {
                                return Ok(Err(match e {
                                    Some(refused) => Refusal::Error(refused),
                                    None => Refusal::Task(t),
                                }));
                            }
                        }
                        Write::CreateTasks(new) => {
                            use porpoise_core::ExecutionState::{Submitted, Waiting};
                            // a task of a task group starts in line for a slot
                            let names: Vec<(porpoise_core::engine::NewTask, porpoise_core::ExecutionState)> = new
                                .iter()
                                .map(|n| (n.clone(), if n.task_group.is_some() { Waiting } else { Submitted }))
                                .collect();
                            match Self::create_tasks_on(conn, owner, run, &names).await? {
                                Some(rows) => created.extend(rows),
                                None => return Ok(Err(Refusal::Run(format!("owned by {owner}")))),
                            }
                        }
                    }
                }
                Ok(Ok(created))
            }

            /// The error for a refused write of run `run`: what was found instead.
            async fn refused(&self, owner: &str, run: i64, refusal: $crate::sql::Refusal<'_>) -> $crate::StoreError {
                use $crate::sql::Refusal;
                match refusal {
                    Refusal::Task(t) => self.task_conflict(owner, t).await,
                    Refusal::Run(expected) => self.workflow_conflict(run, &expected).await,
                    Refusal::Error(e) => e,
                }
            }

            /// The error for a refused task-instance write: what was found instead.
            async fn task_conflict(&self, owner: &str, u: &porpoise_core::engine::TaskWrite) -> $crate::StoreError {
                let found: Result<Option<(String, i32, Option<String>)>, sqlx::Error> =
                    sqlx::query_as::<$db, (String, i32, Option<String>)>(
                        "SELECT t.state, t.attempt, w.owner FROM task_instance t \
                         JOIN workflow_instance w ON w.id = t.workflow_instance_id WHERE t.id = $1",
                    )
                    .bind(u.id)
                    .fetch_optional(&self.pool)
                    .await;
                match found {
                    Err(e) => e.into(),
                    Ok(None) => $crate::StoreError::NotFound { entity: "task instance", key: u.id.to_string() },
                    Ok(Some((state, attempt, found_owner))) => $crate::StoreError::Conflict {
                        entity: "task instance",
                        id: u.id,
                        expected: format!("{} attempt {} owned by {owner}", u.expected, u.expected_attempt),
                        found: format!(
                            "{state} attempt {attempt} owned by {}",
                            found_owner.as_deref().unwrap_or("nobody")
                        ),
                    },
                }
            }

            /// The conflict error for a refused workflow-instance write: what was found instead.
            async fn workflow_conflict(&self, id: i64, expected: &str) -> $crate::StoreError {
                let found: Result<Option<(String, Option<String>, i64)>, sqlx::Error> =
                    sqlx::query_as::<$db, (String, Option<String>, i64)>(
                        "SELECT state, owner, epoch FROM workflow_instance WHERE id = $1",
                    )
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await;
                match found {
                    Err(e) => e.into(),
                    Ok(None) => $crate::StoreError::NotFound { entity: "workflow instance", key: id.to_string() },
                    Ok(Some((state, owner, epoch))) => $crate::StoreError::Conflict {
                        entity: "workflow instance",
                        id,
                        expected: expected.to_string(),
                        found: format!("{state} owned by {} at epoch {epoch}", owner.as_deref().unwrap_or("nobody")),
                    },
                }
            }
        }
    };
}

pub(crate) use impl_store;
