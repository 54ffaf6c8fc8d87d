//! Group commit across runs: runners hand the writes of each transition here, and what several
//! runs have waiting goes to the database in one transaction ([`Store::persist_together`]).
//! At most [`IN_FLIGHT`] transactions are open at once; requests that arrive meanwhile wait
//! and go together in the next, so a busy master makes fewer, larger commits and an idle one
//! commits each transition at once. Each runner still waits for its own writes to be durable
//! before it acknowledges anything: batching never answers before the commit.
//!
//! A transaction that one unit spoils (its write was refused, or the database refused it)
//! writes nothing; each of its units is then persisted alone, so every runner gets the answer
//! its own writes deserve, exactly as without batching. An outage (the database cannot be
//! reached) is every unit's answer at once: each runner retries after its backoff, rather
//! than each unit waiting out the outage alone in turn. A unit that takes a task-group slot always goes
//! alone: slot counts are rows shared between runs.

use std::sync::Arc;

use porpoise_core::engine::Write;
use porpoise_runtime::Spawner;
use porpoise_store::{Store, StoreError, TaskInstance};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::debug;

use crate::metrics as m;

/// Transactions open at once: one commits while the next fills.
pub(crate) const IN_FLIGHT: usize = 2;
/// The most runs' writes one transaction takes.
const MAX_UNITS: usize = 256;

type Reply = Result<Vec<TaskInstance>, StoreError>;

#[derive(Debug)]
struct Request {
    run: i64,
    writes: Vec<Write>,
    reply: oneshot::Sender<Reply>,
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct Committer {
    tx: mpsc::UnboundedSender<Request>,
    store: Arc<dyn Store>,
    owner: String,
}

impl Committer {
    /// Starts committing for the master `owner` (the owner its writes are fenced by).
    pub fn start(store: Arc<dyn Store>, owner: String, spawner: &Spawner) -> Committer {
        let (tx, rx) = mpsc::unbounded_channel();
        spawner.spawn(commit_loop(store.clone(), owner.clone(), rx, spawner.clone()));
        Committer { tx, store, owner }
    }

    /// Persists the writes of one transition of run `run`, as [`Store::persist`] does, once
    /// they are durable.
    pub async fn persist(&self, run: i64, writes: &[Write]) -> Reply {
        if writes.iter().any(|w| matches!(w, Write::TakeSlot(_))) {
            return self.alone(run, writes).await;
        }
        let (reply, answer) = oneshot::channel();
        metrics::gauge!(m::PERSIST_WAITING).increment(1.0);
        if self.tx.send(Request { run, writes: writes.to_vec(), reply }).is_err() {
            metrics::gauge!(m::PERSIST_WAITING).decrement(1.0);
            return self.alone(run, writes).await;
        }
        match answer.await {
            Ok(reply) => reply,
            // the loop stopped with the master: nothing of this request was written
            Err(_) => self.alone(run, writes).await,
        }
    }

    async fn alone(&self, run: i64, writes: &[Write]) -> Reply {
        alone(self.store.as_ref(), &self.owner, run, writes).await
    }
}

/// Persists one run's writes in a transaction of their own.
async fn alone(store: &dyn Store, owner: &str, run: i64, writes: &[Write]) -> Reply {
    metrics::counter!(m::PERSIST_TRANSACTIONS, "kind" => "alone").increment(1);
    store.persist(owner, run, writes).await
}

async fn commit_loop(store: Arc<dyn Store>, owner: String, mut rx: mpsc::UnboundedReceiver<Request>, spawner: Spawner) {
    let open = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = open.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_UNITS
            && let Ok(more) = rx.try_recv()
        {
            batch.push(more);
        }
        metrics::gauge!(m::PERSIST_WAITING).decrement(batch.len() as f64);
        let (store, owner) = (store.clone(), owner.clone());
        spawner.spawn(async move {
            commit(store.as_ref(), &owner, batch).await;
            drop(permit);
        });
    }
}

async fn commit(store: &dyn Store, owner: &str, batch: Vec<Request>) {
    if batch.len() == 1 {
        for request in batch {
            let reply = alone(store, owner, request.run, &request.writes).await;
            let _ = request.reply.send(reply);
        }
        return;
    }
    let units: Vec<(i64, &[Write])> = batch.iter().map(|r| (r.run, r.writes.as_slice())).collect();
    let together = store.persist_together(owner, &units).await;
    drop(units);
    match together {
        Ok(Some(created)) if created.len() == batch.len() => {
            metrics::counter!(m::PERSIST_TRANSACTIONS, "kind" => "together").increment(1);
            metrics::counter!(m::PERSIST_RUNS_TOGETHER).increment(batch.len() as u64);
            for (request, created) in batch.into_iter().zip(created) {
                let _ = request.reply.send(Ok(created));
            }
        }
        Err(e) if e.is_retryable() => {
            // the database cannot be reached: every run retries later, none alone now (each
            // would wait out the same outage in turn)
            debug!(runs = batch.len(), error = %e, "a group commit met an outage");
            for request in batch {
                // (a request left unanswered persists alone)
                if let Some(again) = e.outage_again() {
                    let _ = request.reply.send(Err(again));
                }
            }
        }
        other => {
            // nothing was written: each unit alone says what is wrong with it, if anything
            debug!(runs = batch.len(), outcome = ?other.map(|o| o.map(|c| c.len())), "a group commit was refused; committing its runs one at a time");
            for request in batch {
                let reply = alone(store, owner, request.run, &request.writes).await;
                let _ = request.reply.send(reply);
            }
        }
    }
}
