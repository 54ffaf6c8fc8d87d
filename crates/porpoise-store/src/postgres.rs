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

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// Porpoise's store on Postgres.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to `url` with up to `max_connections` connections and applies migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<PgStore> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            // an outage surfaces as a retryable error within seconds, not a hang
            .acquire_timeout(Duration::from_secs(3))
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(PgStore { pool })
    }

    /// The connection pool, for tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// LISTENs on the channel the database notifies for each queued command, on a connection
    /// of its own.
    async fn open_command_feed(&self) -> Result<Box<dyn CommandFeed>> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Box::new(Notifications(listener)))
    }

    /// The database's trigger notifies the masters: nothing to do here.
    fn command_queued(&self) {}
}

/// Postgres notifications of queued commands.
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
