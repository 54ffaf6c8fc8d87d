//! The workers this master can dispatch to: kept current by a registry watch, with the slots
//! each one has and the attempts this master has in flight on it, and the selector that picks
//! one for a task.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use porpoise_proto::v1::worker_service_client::WorkerServiceClient;
use porpoise_registry::{Member, MemberEvent, Registry, Role, Selector};
use tokio::sync::mpsc::UnboundedSender;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::queue::DispatchQueue;

/// How a worker is chosen among the group's workers with a free slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerSelector {
    Random,
    RoundRobin,
    LowestLoad,
}

impl FromStr for WorkerSelector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(Self::Random),
            "round-robin" => Ok(Self::RoundRobin),
            "lowest-load" => Ok(Self::LowestLoad),
            other => Err(format!("unknown worker selector {other:?} (expected random, round-robin or lowest-load)")),
        }
    }
}

#[derive(Debug)]
struct Worker {
    group: String,
    slots: u32,
    load: f64,
    /// Attempts this master dispatched there that have not reported a result.
    inflight: u32,
    /// It answered DRAINING: it takes nothing more until it leaves and joins again.
    draining: bool,
}

impl State {
    /// Sets the live-workers gauge of `group`.
    fn count_group(&self, group: &str) {
        let n = self.workers.values().filter(|w| w.group == group).count();
        metrics::gauge!(crate::metrics::WORKERS, "group" => group.to_string()).set(n as f64);
        self.count_free_slots(group);
    }

    /// Publishes the slots of `group`'s live workers that this master could dispatch to now.
    fn count_free_slots(&self, group: &str) {
        let free: u32 = self
            .workers
            .values()
            .filter(|w| w.group == group && !w.draining)
            .map(|w| w.slots.saturating_sub(w.inflight))
            .sum();
        metrics::gauge!(crate::metrics::FREE_SLOTS, "group" => group.to_string()).set(f64::from(free));
    }
}

#[derive(Debug, Default)]
struct State {
    workers: HashMap<String, Worker>,
    turn: HashMap<String, usize>,
    /// Groups whose tasks were said to wait for a worker, until one joins.
    waiting_said: std::collections::HashSet<String>,
}

/// The live workers, by address.
#[derive(Debug, Clone)]
pub(crate) struct WorkerDirectory {
    state: Arc<Mutex<State>>,
    selector: WorkerSelector,
    clients: Arc<Mutex<HashMap<String, WorkerServiceClient<Channel>>>>,
    seed: Arc<AtomicU64>,
    /// True once the registry's first list of workers is in.
    listed: Arc<tokio::sync::watch::Sender<bool>>,
    /// Mutual TLS with workers, or plain TCP.
    transport: porpoise_proto::tls::Transport,
}

impl WorkerDirectory {
    pub fn new(selector: WorkerSelector, transport: porpoise_proto::tls::Transport) -> Self {
        let seed = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8);
        Self {
            state: Arc::default(),
            selector,
            clients: Arc::default(),
            seed: Arc::new(AtomicU64::new(seed | 1)),
            listed: Arc::new(tokio::sync::watch::Sender::new(false)),
            transport,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows worker membership in `registry`; unparks tasks when a worker joins, and sends
    /// the address of each worker that leaves to `lost`.
    pub async fn follow(self, registry: Arc<dyn Registry>, queue: DispatchQueue, lost: UnboundedSender<String>) {
        let mut backoff = 0u32;
        loop {
            match registry.watch(&Selector::Workers { group: None }).await {
                Ok(mut watch) => {
                    backoff = 0;
                    let before: Vec<String> = {
                        let mut st = self.state();
                        let gone: Vec<(String, Worker)> = st.workers.drain().collect();
                        for (_, w) in &gone {
                            st.count_group(&w.group);
                        }
                        gone.into_iter().map(|(addr, _)| addr).collect()
                    };
                    for m in watch.initial.drain(..) {
                        self.up(m, &queue);
                    }
                    // workers that left while the watch was broken
                    for addr in before.into_iter().filter(|a| !self.contains(a)) {
                        info!(worker = %addr, "worker left");
                        let _ = lost.send(addr);
                    }
                    self.listed.send_replace(true);
                    while let Some(event) = watch.next().await {
                        match event {
                            MemberEvent::Up(m) => self.up(m, &queue),
                            MemberEvent::Down(key) => {
                                info!(worker = %key.addr, "worker left");
                                let mut st = self.state();
                                if let Some(w) = st.workers.remove(&key.addr) {
                                    st.count_group(&w.group);
                                }
                                drop(st);
                                let _ = lost.send(key.addr);
                            }
                        }
                    }
                    warn!("worker watch ended; watching again");
                }
                Err(e) => {
                    backoff += 1;
                    warn!(error = %e, "cannot watch workers; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(backoff.min(25)))).await;
                }
            }
        }
    }

    fn up(&self, m: Member, queue: &DispatchQueue) {
        let Role::Worker { group } = m.key.role else { return };
        let is_new = {
            let mut st = self.state();
            let is_new = !st.workers.contains_key(&m.key.addr);
            let w = st.workers.entry(m.key.addr.clone()).or_insert(Worker {
                group: group.clone(),
                slots: m.heartbeat.slots,
                load: m.heartbeat.load,
                inflight: 0,
                draining: false,
            });
            w.slots = m.heartbeat.slots;
            w.load = m.heartbeat.load;
            if is_new {
                st.count_group(&group);
            }
            is_new
        };
        if is_new {
            self.state().waiting_said.remove(&group);
            info!(worker = %m.key.addr, %group, slots = m.heartbeat.slots, "worker joined");
            queue.unpark(&group, usize::MAX);
        }
    }

    /// True the first time tasks of `group` wait since a worker of the group last joined.
    pub fn first_wait(&self, group: &str) -> bool {
        self.state().waiting_said.insert(group.to_string())
    }

    /// Whether a live worker of `group` is registered (free or not).
    pub fn has_group(&self, group: &str) -> bool {
        self.state().workers.values().any(|w| w.group == group)
    }

    pub fn contains(&self, addr: &str) -> bool {
        self.state().workers.contains_key(addr)
    }

    /// Picks a worker of `group` with a free slot and counts the attempt on it; `avoid` (a
    /// worker that just refused the task) only when no other worker has a free slot.
    pub fn acquire(&self, group: &str, avoid: Option<&str>) -> Option<String> {
        let mut st = self.state();
        let mut free: Vec<(&String, &Worker)> =
            st.workers.iter().filter(|(_, w)| w.group == group && w.inflight < w.slots && !w.draining).collect();
        if free.len() > 1 {
            free.retain(|(addr, _)| Some(addr.as_str()) != avoid);
        }
        if free.is_empty() {
            return None;
        }
        free.sort_by(|a, b| a.0.cmp(b.0));
        let chosen = match self.selector {
            WorkerSelector::Random => free[(self.next_random() % free.len() as u64) as usize].0.clone(),
            WorkerSelector::LowestLoad => free
                .iter()
                .min_by(|a, b| {
                    let la = f64::from(a.1.inflight) / f64::from(a.1.slots.max(1)) + a.1.load / 100.0;
                    let lb = f64::from(b.1.inflight) / f64::from(b.1.slots.max(1)) + b.1.load / 100.0;
                    la.total_cmp(&lb)
                })
                .map(|(addr, _)| (*addr).clone())
                .unwrap_or_default(),
            WorkerSelector::RoundRobin => {
                let n = free.len();
                let addr = {
                    let turn = st.turn.get(group).copied().unwrap_or(0);
                    free[turn % n].0.clone()
                };
                *st.turn.entry(group.to_string()).or_insert(0) += 1;
                addr
            }
        };
        if let Some(w) = st.workers.get_mut(&chosen) {
            w.inflight += 1;
        }
        st.count_free_slots(group);
        Some(chosen)
    }

    /// `addr` answered DRAINING: no more dispatches to it until it leaves and joins again.
    pub fn drain(&self, addr: &str) {
        let mut st = self.state();
        if let Some(w) = st.workers.get_mut(addr) {
            w.draining = true;
            let group = w.group.clone();
            st.count_free_slots(&group);
        }
    }

    /// Counts an attempt already on `addr` (found dispatched or running when a run resumes).
    pub fn reserve(&self, addr: &str) {
        let mut st = self.state();
        if let Some(w) = st.workers.get_mut(addr) {
            w.inflight += 1;
            let group = w.group.clone();
            st.count_free_slots(&group);
        }
    }

    /// Waits until the first list of workers has been read from the registry.
    pub async fn listed(&self) {
        let mut listed = self.listed.subscribe();
        let _ = listed.wait_for(|&l| l).await;
    }

    /// The attempt counted on `addr` ended (or was never accepted): frees its slot.
    /// Returns the worker's group, so a parked task can take the slot.
    pub fn release(&self, addr: &str) -> Option<String> {
        let mut st = self.state();
        let w = st.workers.get_mut(addr)?;
        w.inflight = w.inflight.saturating_sub(1);
        let group = w.group.clone();
        st.count_free_slots(&group);
        Some(group)
    }

    fn next_random(&self) -> u64 {
        // xorshift64*
        let mut x = self.seed.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.seed.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A client for the worker at `addr` (connections are made lazily and reused).
    pub fn client(&self, addr: &str) -> Result<WorkerServiceClient<Channel>, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let channel = self
            .transport
            .endpoint(addr, porpoise_proto::tls::WORKER)?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .connect_lazy();
        let client = WorkerServiceClient::new(channel);
        clients.insert(addr.to_string(), client.clone());
        Ok(client)
    }
}
