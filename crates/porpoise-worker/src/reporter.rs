//! Delivers task events to masters: events queue in order, go out in batches per master, and
//! stay queued until the master ACKs them `HANDLED`. A failed call or `RETRY_LATER` keeps them
//! for the next round, after a capped exponential backoff. Events follow their run: an ACK
//! naming the run's new owner (it was taken over) sends them there, and events for a master
//! that left the registry go to a live one, which names the owner.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use porpoise_core::Backoff;
use porpoise_proto::tls::Transport;
use porpoise_proto::v1::task_event_service_client::TaskEventServiceClient;
use porpoise_proto::v1::{AckStatus, ReportTaskEventsRequest, TaskEvent};
use porpoise_registry::{Registry, Selector};
use porpoise_runtime::Spawner;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tracing::{debug, error, info, warn};

use crate::journal::Journal;

/// Events sent in one call, at most.
const BATCH: usize = 512;
/// How long one report may take before the master counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn is_running(event: &TaskEvent) -> bool {
    matches!(event.kind, Some(porpoise_proto::v1::task_event::Kind::Running(_)))
}

/// How events go to masters.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Mutual TLS, or plain TCP.
    pub transport: Transport,
    /// How long RUNNING events wait for more events (their tasks' results, most often) to go
    /// with them.
    pub linger: Duration,
}

/// The handle through which executors queue events.
#[derive(Debug, Clone)]
pub struct Reporter {
    tx: mpsc::UnboundedSender<(String, TaskEvent)>,
    next_id: Arc<AtomicU64>,
    pending: Arc<AtomicUsize>,
    /// Prefix of this worker process's event ids: its address and its token.
    id_prefix: String,
    journal: Arc<Journal>,
}

impl Reporter {
    /// Starts the delivery task for a worker serving at `worker_addr` (its process token
    /// `token`); `registry` says which masters are live. `replay` (from the journal) goes first.
    pub fn start(
        worker_addr: String,
        token: &str,
        registry: Arc<dyn Registry>,
        journal: Arc<Journal>,
        replay: Vec<(String, TaskEvent)>,
        delivery: Delivery,
        spawner: &Spawner,
    ) -> Reporter {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(replay.len()));
        for event in replay {
            let _ = tx.send(event);
        }
        spawner.spawn(deliver(worker_addr.clone(), rx, pending.clone(), registry, journal.clone(), delivery));
        let id_prefix = format!("{worker_addr}#{token}");
        Reporter { tx, next_id: Arc::new(AtomicU64::new(1)), pending, id_prefix, journal }
    }

    /// Journals a RESULT (or any event that must survive a crash) for `master_addr`, waits
    /// until it is on disk, then queues it, giving it a unique id. Returns the id.
    pub async fn send(&self, master_addr: &str, mut event: TaskEvent) -> String {
        let id = self.new_id(&mut event);
        if let Err(e) = self.journal.add(master_addr, &event).await {
            error!(event_id = %id, error = %e, "cannot journal the event; sending it anyway (a crash now would lose it)");
        }
        self.queue(master_addr, event);
        id
    }

    /// Journals a RUNNING event for `master_addr` and queues it at once, without waiting for the
    /// journal's next flush (see [`crate::journal`] for why that loses nothing). Returns its id.
    pub fn send_running(&self, master_addr: &str, mut event: TaskEvent) -> String {
        let id = self.new_id(&mut event);
        if let Err(e) = self.journal.add_unflushed(master_addr, &event) {
            error!(event_id = %id, error = %e, "cannot journal the event; sending it anyway");
        }
        self.queue(master_addr, event);
        id
    }

    fn new_id(&self, event: &mut TaskEvent) -> String {
        let id = format!("{}-{}", self.id_prefix, self.next_id.fetch_add(1, Ordering::Relaxed));
        event.event_id = id.clone();
        id
    }

    fn queue(&self, master_addr: &str, event: TaskEvent) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::error::SendError((_, event))) = self.tx.send((master_addr.to_string(), event)) {
            warn!(event_id = %event.event_id, "event reporter stopped; event not queued");
        }
    }

    /// Journals that an attempt was accepted and waits until that is on disk (see
    /// [`Journal::accepted`]).
    pub async fn accepted(&self, master_addr: &str, task_instance_id: i64, attempt: i32, workflow_instance_id: i64) {
        if let Err(e) = self.journal.accepted(master_addr, task_instance_id, attempt, workflow_instance_id).await {
            error!(task_instance_id, attempt, error = %e, "cannot journal the accepted attempt (a crash before it reports would leave it dispatched)");
        }
    }

    /// Events queued and not yet ACKed.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}

/// What a master said of a batch.
struct Outcome {
    /// Events ACKed `HANDLED`.
    handled: Vec<String>,
    /// Events whose run another master owns now → that master.
    moved: HashMap<String, String>,
}

async fn deliver(
    worker_addr: String,
    mut rx: mpsc::UnboundedReceiver<(String, TaskEvent)>,
    pending: Arc<AtomicUsize>,
    registry: Arc<dyn Registry>,
    journal: Arc<Journal>,
    delivery: Delivery,
) {
    let Delivery { transport, linger } = delivery;
    // seq → (master, event): insertion order is delivery order
    let mut queue: BTreeMap<u64, (String, TaskEvent)> = BTreeMap::new();
    let mut seq = 0u64;
    let mut clients: HashMap<String, TaskEventServiceClient<Channel>> = HashMap::new();
    let backoff = Backoff { initial: Duration::from_millis(50), max: Duration::from_secs(5), multiplier: 2.0 };
    let mut failures = 0u32;
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some((master, event)) => {
                    queue.insert(seq, (master, event));
                    seq += 1;
                }
                None => return,
            }
        }
        while let Ok((master, event)) = rx.try_recv() {
            queue.insert(seq, (master, event));
            seq += 1;
        }
        // a task that ends soon after it started reports both in one batch: the master then
        // persists its attempt once (the dispatch is durable already, so a RUNNING held back
        // a little loses nothing)
        if failures == 0 && queue.values().all(|(_, e)| is_running(e)) {
            let deadline = tokio::time::Instant::now() + linger;
            while queue.values().all(|(_, e)| is_running(e)) {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some((master, event))) => {
                        queue.insert(seq, (master, event));
                        seq += 1;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            while let Ok((master, event)) = rx.try_recv() {
                queue.insert(seq, (master, event));
                seq += 1;
            }
        }
        let mut all_ok = true;
        let masters: Vec<String> = {
            let mut m: Vec<String> = queue.values().map(|(m, _)| m.clone()).collect();
            m.dedup();
            m.sort();
            m.dedup();
            m
        };
        // every master at once: one that hangs (paused, say) holds up only its own events
        let mut sends = tokio::task::JoinSet::new();
        for master in masters {
            let batch: Vec<(u64, TaskEvent)> = queue
                .iter()
                .filter(|(_, (m, _))| *m == master)
                .take(BATCH)
                .map(|(s, (_, e))| (*s, e.clone()))
                .collect();
            let client = clients.remove(&master);
            let (worker_addr, transport) = (worker_addr.clone(), transport.clone());
            sends.spawn(async move {
                let events = batch.iter().map(|(_, e)| e.clone()).collect();
                let result = send_batch(client, &transport, &worker_addr, &master, events).await;
                (master, batch, result)
            });
        }
        while let Some(joined) = sends.join_next().await {
            let Ok((master, batch, result)) = joined else {
                all_ok = false;
                continue;
            };
            match result {
                Ok((client, outcome)) => {
                    clients.insert(master.clone(), client);
                    for (s, e) in &batch {
                        if outcome.handled.contains(&e.event_id) {
                            queue.remove(s);
                            pending.fetch_sub(1, Ordering::Relaxed);
                            journal.ack(&e.event_id);
                        } else if let Some(owner) = outcome.moved.get(&e.event_id)
                            && let Some(entry) = queue.get_mut(s)
                        {
                            debug!(event_id = %e.event_id, from = %master, to = %owner, "the run moved; resending there");
                            entry.0 = owner.clone();
                            all_ok = false;
                        } else {
                            all_ok = false;
                        }
                    }
                }
                Err(e) => {
                    all_ok = false;
                    ::metrics::counter!(crate::metrics::EVENT_RESENDS).increment(1);
                    warn!(%master, error = %e, events = batch.len(), "cannot deliver task events; will resend");
                    // a master that left the registry will not come back to take them: a live
                    // one will say where their runs went
                    if let Ok(live) = registry.members(&Selector::Masters).await {
                        let live: Vec<String> = live.into_iter().map(|m| m.key.addr).collect();
                        if !live.is_empty() && !live.contains(&master) {
                            let to = &live[(seq as usize) % live.len()];
                            info!(from = %master, to = %to, events = batch.len(), "master gone; sending its events to a live master");
                            for (s, _) in &batch {
                                if let Some(entry) = queue.get_mut(s) {
                                    entry.0 = to.clone();
                                }
                            }
                        }
                    }
                }
            }
        }
        if all_ok {
            failures = 0;
        } else {
            failures += 1;
            let delay = porpoise_runtime::retry_delay(&backoff, failures.saturating_sub(1));
            debug!(?delay, queued = queue.len(), "events not all ACKed; backing off");
            // keep accepting new events while waiting
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    msg = rx.recv() => match msg {
                        Some((master, event)) => {
                            queue.insert(seq, (master, event));
                            seq += 1;
                        }
                        None => break,
                    },
                }
            }
        }
    }
}

/// Sends one batch over `client` (connecting first when there is none); returns the client
/// and which events the master ACKed as handled and which went elsewhere.
async fn send_batch(
    client: Option<TaskEventServiceClient<Channel>>,
    transport: &Transport,
    worker_addr: &str,
    master: &str,
    events: Vec<TaskEvent>,
) -> Result<(TaskEventServiceClient<Channel>, Outcome), String> {
    let mut client = match client {
        Some(c) => c,
        None => {
            let endpoint = transport.endpoint(master, porpoise_proto::tls::MASTER)?;
            let channel = endpoint
                .connect_timeout(Duration::from_secs(3))
                // a master answers within its reply wait (5 s); longer means it is not running
                .timeout(REQUEST_TIMEOUT)
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            TaskEventServiceClient::new(channel)
        }
    };
    let reply = client
        .report_task_events(ReportTaskEventsRequest { worker_addr: worker_addr.to_string(), events })
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    let mut outcome = Outcome { handled: Vec::new(), moved: HashMap::new() };
    for a in reply.acks {
        if a.status == AckStatus::Handled as i32 {
            outcome.handled.push(a.event_id);
        } else if !a.owner.is_empty() && a.owner != master {
            outcome.moved.insert(a.event_id, a.owner);
        }
    }
    Ok((client, outcome))
}
