//! The Postgres store, for clusters: a connection pool, migrations applied at open (sqlx holds
//! an advisory lock while it migrates, so masters starting together do not race), and command
//! claiming with `FOR UPDATE SKIP LOCKED`.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::sql::impl_store;
use crate::{Backend, Result};

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

    /// The connection pool, for LISTEN/NOTIFY and tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl_store!(
    PgStore,
    sqlx::Postgres,
    Backend::Postgres,
    claim = "UPDATE command SET claimed_by = $1, claimed_at = $2 WHERE id IN \
             (SELECT id FROM command WHERE claimed_by IS NULL ORDER BY priority, id LIMIT $3 \
             FOR UPDATE SKIP LOCKED) RETURNING {}"
);
