//! The Postgres store, for clusters: a connection pool, migrations applied at open (sqlx holds
//! an advisory lock while it migrates, so masters starting together do not race), command
//! claiming with `FOR UPDATE SKIP LOCKED`, and wake-ups for queued commands by LISTEN/NOTIFY.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use crate::sql::impl_store;
use crate::{Backend, CommandFeed, Result};

/// The channel the `command_notify` trigger notifies on each queued command.
const CHANNEL: &str = "porpoise_command";
/// Notified by the database for each run that ends (`migrations/postgres/0010`).
const RUN_END_CHANNEL: &str = "porpoise_run_end";

/// The wake-up feeds a store opens at once: queued commands and ended runs.
pub const FEEDS: u32 = 2;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// Porpoise's store on Postgres.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The connections the feeds LISTEN on (one per feed, held while it lives), apart from
    /// `pool` so that they never take a connection the queries need.
    listeners: PgPool,
}

impl PgStore {
    /// Connects to `url` with up to `max_connections` connections for queries (and up to
    /// [`FEEDS`] more, one for each wake-up feed) and applies migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<PgStore> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            // an outage surfaces as a retryable error within seconds, not a hang
            .acquire_timeout(Duration::from_secs(3))
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        let listeners = PgPoolOptions::new()
            .max_connections(FEEDS)
            .acquire_timeout(Duration::from_secs(3))
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with((*pool.connect_options()).clone());
        Ok(PgStore { pool, listeners })
    }

    /// The connection pool, for tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// LISTENs on the channel the database notifies for each queued command, on a connection
    /// of its own.
    async fn open_command_feed(&self) -> Result<Box<dyn CommandFeed>> {
        let mut listener = PgListener::connect_with(&self.listeners).await?;
        listener.listen(CHANNEL).await?;
        Ok(Box::new(Notifications(listener)))
    }

    /// LISTENs on the channel the database notifies for each run that ends, on a connection of
    /// its own.
    async fn open_run_end_feed(&self) -> Result<Box<dyn CommandFeed>> {
        let mut listener = PgListener::connect_with(&self.listeners).await?;
        listener.listen(RUN_END_CHANNEL).await?;
        Ok(Box::new(Notifications(listener)))
    }

    async fn close_pools(&self) {
        self.listeners.close().await;
        self.pool.close().await;
    }

    /// The database's trigger notifies the masters: nothing to do here.
    fn command_queued(&self) {}
}

/// Postgres notifications (of queued commands, or of ended runs).
struct Notifications(PgListener);

#[async_trait]
impl CommandFeed for Notifications {
    async fn next(&mut self) -> Result<()> {
        self.0.recv().await?;
        Ok(())
    }
}

impl_store!(
    PgStore,
    sqlx::Postgres,
    Backend::Postgres,
    claim = "UPDATE command SET claimed_by = $1, claimed_at = $2 WHERE id IN \
             (SELECT id FROM command WHERE claimed_by IS NULL AND kind = 'start-workflow' ORDER BY priority, id LIMIT $3 \
             FOR UPDATE SKIP LOCKED) RETURNING {}"
);

/// Task-instance writes and creations as one statement per batch: each row is a round trip to
/// the server, so a batch binds its rows as arrays and unnests them.
impl PgStore {
    /// Applies `writes` (of distinct task instances of run `run`) on `conn`, each only if its
    /// task instance is still in the expected state and attempt and the run is `owner`'s; the
    /// index of one refused, if any is (the caller then rolls back).
    async fn update_tasks_on(
        conn: &mut sqlx::PgConnection,
        owner: &str,
        run: i64,
        writes: &[&porpoise_core::engine::TaskWrite],
    ) -> Result<Option<usize>> {
        if let [one] = writes {
            return Ok(Self::update_task_on(conn, owner, one).await?.is_none().then_some(0));
        }
        let column = |f: &dyn Fn(&porpoise_core::engine::TaskWrite) -> Option<String>| -> Vec<Option<String>> {
            writes.iter().map(|w| f(w)).collect()
        };
        let updated: Vec<(i64,)> = sqlx::query_as(
            "UPDATE task_instance t SET state = v.new, attempt = COALESCE(v.attempt, t.attempt), \
             worker_addr = COALESCE(v.worker, t.worker_addr), exit_code = COALESCE(v.exit_code, t.exit_code), \
             started_at = COALESCE(v.started_at, t.started_at), ended_at = COALESCE(v.ended_at, t.ended_at), \
             updated_at = $1, warning = COALESCE(v.warning, t.warning), failovers = t.failovers + v.failovers, \
             group_waiting_since = CASE WHEN v.await_slot THEN $1 ELSE NULL END \
             FROM unnest($2::bigint[], $3::text[], $4::int[], $5::text[], $6::int[], $7::text[], $8::int[], \
             $9::timestamptz[], $10::timestamptz[], $11::text[], $12::int[], $13::bool[]) \
             AS v(id, expected, expected_attempt, new, attempt, worker, exit_code, started_at, ended_at, warning, \
             failovers, await_slot) \
             WHERE t.id = v.id AND t.state = v.expected AND t.attempt = v.expected_attempt \
             AND t.workflow_instance_id = $14 \
             AND EXISTS (SELECT 1 FROM workflow_instance w WHERE w.id = $14 AND w.owner = $15) \
             RETURNING t.id",
        )
        .bind(crate::sql::now())
        .bind(writes.iter().map(|w| w.id).collect::<Vec<_>>())
        .bind(column(&|w| Some(w.expected.as_str().to_string())))
        .bind(writes.iter().map(|w| w.expected_attempt).collect::<Vec<_>>())
        .bind(column(&|w| Some(w.new.as_str().to_string())))
        .bind(writes.iter().map(|w| w.attempt).collect::<Vec<_>>())
        .bind(column(&|w| w.worker.clone()))
        .bind(writes.iter().map(|w| w.exit_code).collect::<Vec<_>>())
        .bind(writes.iter().map(|w| w.started_at).collect::<Vec<_>>())
        .bind(writes.iter().map(|w| w.ended_at).collect::<Vec<_>>())
        .bind(column(&|w| w.warning.clone()))
        .bind(writes.iter().map(|w| i32::from(w.failover)).collect::<Vec<_>>())
        .bind(writes.iter().map(|w| w.await_slot).collect::<Vec<_>>())
        .bind(run)
        .bind(owner)
        .fetch_all(&mut *conn)
        .await?;
        if updated.len() == writes.len() {
            return Ok(None);
        }
        let done: std::collections::HashSet<i64> = updated.into_iter().map(|(id,)| id).collect();
        Ok(writes.iter().position(|w| !done.contains(&w.id)))
    }

    /// Inserts the task instances `names` of run `run` that do not exist yet, in one
    /// statement that also checks the run is `owner`'s; returns all of them in the order they
    /// were created, or `None` when the run is not `owner`'s. Only a retried creation (some
    /// exist) or a refusal costs more statements.
    async fn insert_tasks_on(
        conn: &mut sqlx::PgConnection,
        owner: &str,
        run: i64,
        names: &[(porpoise_core::engine::NewTask, porpoise_core::ExecutionState)],
    ) -> Result<Option<Vec<crate::sql::TaskRow>>> {
        use crate::sql::{TASK_COLUMNS, TaskRow, now};
        let t = now();
        let waiting_since = |new: &porpoise_core::engine::NewTask, state: porpoise_core::ExecutionState| {
            (state == porpoise_core::ExecutionState::Waiting && new.task_group.is_some()).then_some(t)
        };
        let task_names: Vec<String> = names.iter().map(|(n, _)| n.name.clone()).collect();
        let mut rows = sqlx::query_as::<sqlx::Postgres, TaskRow>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO task_instance (workflow_instance_id, task_name, state, attempt, created_at, updated_at, \
             task_group, task_group_priority, group_waiting_since) \
             SELECT $1, v.name, v.state, 1, $2, $2, v.task_group, v.priority, v.since \
             FROM unnest($3::text[], $4::text[], $5::text[], $6::int[], $7::timestamptz[]) WITH ORDINALITY \
             AS v(name, state, task_group, priority, since, n) \
             WHERE EXISTS (SELECT 1 FROM workflow_instance w WHERE w.id = $1 AND w.owner = $8) ORDER BY v.n \
             ON CONFLICT (workflow_instance_id, task_name) DO NOTHING RETURNING {TASK_COLUMNS}"
        )))
        .bind(run)
        .bind(t)
        .bind(&task_names)
        .bind(names.iter().map(|(_, s)| s.as_str().to_string()).collect::<Vec<_>>())
        .bind(names.iter().map(|(n, _)| n.task_group.clone()).collect::<Vec<_>>())
        .bind(names.iter().map(|(n, _)| n.task_group_priority).collect::<Vec<_>>())
        .bind(names.iter().map(|(n, s)| waiting_since(n, *s)).collect::<Vec<_>>())
        .bind(owner)
        .fetch_all(&mut *conn)
        .await?;
        if rows.len() < names.len() {
            // some existed (a retry after a lost answer), or the run is not the owner's
            if !Self::owns(conn, owner, run).await? {
                return Ok(None);
            }
            rows = sqlx::query_as::<sqlx::Postgres, TaskRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {TASK_COLUMNS} FROM task_instance WHERE workflow_instance_id = $1 AND task_name = ANY($2)"
            )))
            .bind(run)
            .bind(&task_names)
            .fetch_all(&mut *conn)
            .await?;
        }
        rows.sort_by_key(|r| r.id);
        Ok(Some(rows))
    }
}
