//! The SQLite store, for `porpoise standalone`: one database file, WAL journal, one writer
//! connection (SQLite serialises writers anyway), migrations applied at open, and wake-ups for
//! the commands queued through it.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::sql::impl_store;
use crate::{Backend, CommandFeed, Result};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

/// Porpoise's store on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Counts the commands queued through this store; feeds wait for it to change.
    queued: std::sync::Arc<watch::Sender<u64>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and applies migrations.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore { pool, queued: std::sync::Arc::new(watch::Sender::new(0)) })
    }

    /// The connection pool, for tests.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Wake-ups for the commands queued through this store: SQLite is one process's database.
    async fn open_command_feed(&self) -> Result<Box<dyn CommandFeed>> {
        Ok(Box::new(Queued(self.queued.subscribe())))
    }

    async fn close_pools(&self) {
        self.pool.close().await;
    }

    /// No feed: SQLite is one process's database, whose master knows the ends of its runs.
    async fn open_run_end_feed(&self) -> Result<Box<dyn CommandFeed>> {
        Ok(Box::new(Never))
    }

    fn command_queued(&self) {
        self.queued.send_modify(|n| *n += 1);
    }
}

/// A feed that never wakes.
struct Never;

#[async_trait]
impl CommandFeed for Never {
    async fn next(&mut self) -> Result<()> {
        std::future::pending().await
    }
}

/// Wake-ups for commands queued through one [`SqliteStore`].
struct Queued(watch::Receiver<u64>);

#[async_trait]
impl CommandFeed for Queued {
    async fn next(&mut self) -> Result<()> {
        if self.0.changed().await.is_err() {
            // the store is gone: no command will ever be queued through it again
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

impl_store!(
    SqliteStore,
    sqlx::Sqlite,
    Backend::Sqlite,
    claim = "UPDATE command SET claimed_by = $1, claimed_at = $2 WHERE id IN \
             (SELECT id FROM command WHERE claimed_by IS NULL AND kind = 'start-workflow' ORDER BY priority, id LIMIT $3) RETURNING {}"
);

/// Task-instance writes and creations, a statement per row: SQLite runs in the process, so a
/// statement costs no round trip, and one transaction holds them all.
impl SqliteStore {
    /// Applies `writes` in order on `conn`; the index of the first one refused, if any is.
    async fn update_tasks_on(
        conn: &mut sqlx::SqliteConnection,
        owner: &str,
        _run: i64,
        writes: &[&porpoise_core::engine::TaskWrite],
    ) -> Result<Option<usize>> {
        for (i, w) in writes.iter().enumerate() {
            if Self::update_task_on(conn, owner, w).await?.is_none() {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// Inserts the task instances `names` of run `run` that do not exist yet; returns all of
    /// them, or `None` when the run is not `owner`'s.
    async fn insert_tasks_on(
        conn: &mut sqlx::SqliteConnection,
        owner: &str,
        run: i64,
        names: &[(porpoise_core::engine::NewTask, porpoise_core::ExecutionState)],
    ) -> Result<Option<Vec<crate::sql::TaskRow>>> {
        use crate::sql::{TASK_COLUMNS, TaskRow, now};
        if !Self::owns(conn, owner, run).await? {
            return Ok(None);
        }
        let t = now();
        let mut rows = Vec::with_capacity(names.len());
        for (new, state) in names {
            let waiting_since = (*state == porpoise_core::ExecutionState::Waiting).then_some(t);
            sqlx::query::<sqlx::Sqlite>(
                "INSERT INTO task_instance (workflow_instance_id, task_name, state, attempt, created_at, \
                 updated_at, task_group, task_group_priority, group_waiting_since) \
                 VALUES ($1, $2, $3, 1, $4, $4, $5, $6, $7) \
                 ON CONFLICT (workflow_instance_id, task_name) DO NOTHING",
            )
            .bind(run)
            .bind(&new.name)
            .bind(state.as_str())
            .bind(t)
            .bind(&new.task_group)
            .bind(new.task_group_priority)
            .bind(waiting_since.filter(|_| new.task_group.is_some()))
            .execute(&mut *conn)
            .await?;
            let row = sqlx::query_as::<sqlx::Sqlite, TaskRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {TASK_COLUMNS} FROM task_instance WHERE workflow_instance_id = $1 AND task_name = $2"
            )))
            .bind(run)
            .bind(&new.name)
            .fetch_one(&mut *conn)
            .await?;
            rows.push(row);
        }
        Ok(Some(rows))
    }
}
