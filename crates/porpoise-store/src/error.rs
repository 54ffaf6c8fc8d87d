//! The store's error type. Database failures are classified once, here: an outage (connection
//! lost, server shutting down, pool exhausted, lock contention) is retryable; anything else is not.

/// A failed store call.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional update found something other than what the writer expected.
    #[error("stale write to {entity} {id}: expected {expected}, found {found}")]
    Conflict { entity: &'static str, id: i64, expected: String, found: String },
    #[error("{entity} {key} not found")]
    NotFound { entity: &'static str, key: String },
    /// A task instance cannot take a slot of its task group now: the slots are held, or other
    /// waiters are ahead of it. Nothing changed.
    #[error(
        "task group {group} has no slot for task instance {task_instance}: {used} of {slots} held, {ahead} waiting ahead"
    )]
    NoFreeSlot { group: String, task_instance: i64, slots: i32, used: i64, ahead: i64 },
    /// The database cannot be reached or is overloaded: retry later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database refused the statement; retrying will not help.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A stored value Porpoise cannot read.
    #[error("corrupt {what} in the database: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("cannot apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Whether the same call may succeed later (the database is down, not the request wrong).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// For another caller of a call that failed for several at once (a group commit): the same
    /// outage, `None` when `self` is not one (each caller must then learn its own error).
    pub fn outage_again(&self) -> Option<StoreError> {
        match self {
            Self::Unavailable(e) => Some(Self::Unavailable(sqlx::Error::Io(std::io::Error::other(e.to_string())))),
            _ => None,
        }
    }

    pub(crate) fn corrupt(what: &'static str, detail: impl ToString) -> Self {
        Self::Corrupt { what, detail: detail.to_string() }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_outage(&e) { Self::Unavailable(e) } else { Self::Database(e) }
    }
}

fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes
                return code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6));
            }
            // Postgres SQLSTATE: 08 connection exception, 57P0x shutdown, 53 insufficient
            // resources, 40001 serialization failure, 40P01 deadlock.
            code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code == "40001"
                || code == "40P01"
        }
        _ => false,
    }
}
