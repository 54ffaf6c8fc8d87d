//! The live masters, followed in the registry, and the takeover of runs whose owner is not one
//! of them (it died, or lost its lease). Each live master takes its share of such runs at once
//! (by run id, modulo the number of live masters) and any survivor takes what is still left a
//! sweep later, so that a master dying halfway through a takeover leaves nothing unowned. A
//! takeover is a conditional write on owner and epoch: of two masters trying, one wins, and
//! the loser's writes are refused from then on. The winner rebuilds the run's runner from the
//! database, as after a restart. The same sweep starts a runner for any run this master owns
//! but does not run (a claim whose answer was lost, say).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use porpoise_core::ExecutionState;
use porpoise_registry::{MemberEvent, Registry, Selector};
use porpoise_store::StoreError;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics as m;
use crate::{Shared, consumer};

/// Runs looked at per sweep, at most.
const SWEEP_LIMIT: u32 = 10_000;

/// The masters registered now.
#[derive(Debug)]
pub(crate) struct Masters {
    live: watch::Sender<BTreeSet<String>>,
    /// Woken when a master leaves.
    pub left: tokio::sync::Notify,
    /// Woken when this master's own registration was lost (its lease ended).
    pub lost_self: tokio::sync::Notify,
}

impl Default for Masters {
    fn default() -> Self {
        Self { live: watch::Sender::new(BTreeSet::new()), left: Default::default(), lost_self: Default::default() }
    }
}

impl Masters {
    fn live(&self) -> BTreeSet<String> {
        self.live.borrow().clone()
    }

    pub fn is_live(&self, addr: &str) -> bool {
        self.live.borrow().contains(addr)
    }

    /// Returns once `addr` is registered (at once if it is).
    pub async fn until_live(&self, addr: &str) {
        if self.is_live(addr) {
            return;
        }
        info!(master = %addr, "this master is not registered: it takes no new work until it is again");
        let mut rx = self.live.subscribe();
        let _ = rx.wait_for(|live| live.contains(addr)).await;
        info!(master = %addr, "this master is registered again: it takes work again");
    }

    /// Follows the masters in `registry`; `me` is this master.
    pub async fn follow(self: Arc<Self>, registry: Arc<dyn Registry>, me: String) {
        let mut failures = 0u32;
        loop {
            match registry.watch(&Selector::Masters).await {
                Ok(mut watch) => {
                    failures = 0;
                    let initial: BTreeSet<String> = watch.initial.drain(..).map(|m| m.key.addr).collect();
                    let was_live = self.is_live(&me);
                    let lost = was_live && !initial.contains(&me);
                    self.live.send_replace(initial);
                    self.left.notify_one();
                    if lost {
                        self.lost(&me);
                    }
                    while let Some(event) = watch.next().await {
                        match event {
                            MemberEvent::Up(member) => {
                                self.live.send_modify(|live| {
                                    live.insert(member.key.addr);
                                });
                            }
                            MemberEvent::Down(key) => {
                                info!(master = %key.addr, "master left");
                                self.live.send_modify(|live| {
                                    live.remove(&key.addr);
                                });
                                self.left.notify_one();
                                if key.addr == me {
                                    self.lost(&me);
                                }
                            }
                        }
                    }
                    warn!("master watch ended; watching again");
                }
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, failures, "cannot watch masters; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(25)))).await;
                }
            }
        }
    }

    fn lost(&self, me: &str) {
        warn!(master = %me, "this master's registration was lost (its lease ended): it stops dispatching and checks which runs are still its own");
        metrics::counter!(m::REGISTRATIONS_LOST).increment(1);
        self.lost_self.notify_one();
    }
}

/// Runs forever: whenever this master's registration was lost, has each of its runners check
/// that its run is still this master's (another may have taken it over meanwhile).
pub(crate) async fn check_runs_after_losing_registration(shared: Arc<Shared>) {
    loop {
        shared.masters.lost_self.notified().await;
        for (_, runner) in shared.runners() {
            runner.check_ownership();
        }
    }
}

/// Runs forever: takes over runs whose owner is not a live master.
pub(crate) async fn take_over_orphans(shared: Arc<Shared>) {
    let unfinished: Vec<ExecutionState> = ExecutionState::ALL.into_iter().filter(|s| !s.is_terminal()).collect();
    // orphans another master should have taken in the previous sweep: anyone takes them now
    let mut overdue: HashSet<i64> = HashSet::new();
    loop {
        tokio::select! {
            () = shared.draining.cancelled() => return, // a stopping master takes nothing over
            () = tokio::time::sleep(shared.takeover_sweep) => {}
            () = shared.masters.left.notified() => {}
        }
        let live: Vec<String> = shared.masters.live().into_iter().collect();
        let Some(me) = live.iter().position(|a| *a == shared.addr) else {
            continue; // not registered (the lease was lost): take no work
        };
        let runs = match shared.store.workflow_instances_in(&unfinished, SWEEP_LIMIT).await {
            Ok(runs) => runs,
            Err(e) => {
                m::database_error("sweep", &e);
                warn!(error = %e, "cannot look for runs without a live owner; retrying");
                continue;
            }
        };
        count_runs(&runs, &live);
        check_runners(&shared, &runs, runs.len() < SWEEP_LIMIT as usize);
        let mut next = HashSet::new();
        for run in runs {
            if run.owner.as_deref() == Some(shared.addr.as_str()) {
                if shared.runner(run.id).is_none() {
                    // ours without a runner: a claim whose answer was lost, or a start that gave
                    // up; the runner reloads the run and does nothing if it finished meanwhile
                    consumer::spawn_runner(&shared, run);
                }
                continue;
            }
            let Some(owner) = run.owner.clone().filter(|o| !live.contains(o)) else { continue };
            let share = (run.id.unsigned_abs() % live.len() as u64) as usize;
            if share != me && !overdue.contains(&run.id) {
                next.insert(run.id);
                continue;
            }
            let began = Instant::now();
            match shared.store.take_over_workflow_instance(run.id, &owner, run.epoch, &shared.addr).await {
                Ok(instance) => {
                    info!(run_id = run.id, from = %owner, epoch = instance.epoch, "run taken over");
                    metrics::counter!(m::FAILOVERS, "kind" => "master").increment(1);
                    // the run is ours now, so no later sweep sees it orphaned: start it until it runs
                    consumer::spawn_runner(&shared, instance);
                    metrics::histogram!(m::TAKEOVER_SECONDS).record(began.elapsed().as_secs_f64());
                }
                Err(StoreError::Conflict { .. }) => {} // another master took it
                Err(e) => {
                    warn!(run_id = run.id, error = %e, "cannot take the run over; retrying");
                    next.insert(run.id);
                }
            }
        }
        overdue = next;
    }
}

/// Has every runner of this master whose run the sweep found owned by another master (or, when
/// the sweep saw every unfinished run, did not find unfinished and owned by this one) check its
/// run: it stops if another master owns it now.
fn check_runners(shared: &Shared, runs: &[porpoise_store::WorkflowInstance], complete: bool) {
    let owners: HashMap<i64, Option<&str>> = runs.iter().map(|r| (r.id, r.owner.as_deref())).collect();
    for (id, runner) in shared.runners() {
        let suspect = match owners.get(&id) {
            Some(owner) => *owner != Some(shared.addr.as_str()),
            None => complete,
        };
        if suspect {
            runner.check_ownership();
        }
    }
}

/// Sets the cluster-wide gauges from one sweep's unfinished runs: by state, and those whose
/// owner is not a live master.
fn count_runs(runs: &[porpoise_store::WorkflowInstance], live: &[String]) {
    for state in ExecutionState::ALL.into_iter().filter(|s| !s.is_terminal()) {
        let n = runs.iter().filter(|r| r.state == state).count();
        metrics::gauge!(m::CLUSTER_WORKFLOWS, "state" => state.as_str()).set(n as f64);
    }
    let orphaned = runs.iter().filter(|r| r.owner.as_ref().is_some_and(|o| !live.contains(o))).count();
    metrics::gauge!(m::WORKFLOWS_WITHOUT_OWNER).set(orphaned as f64);
}
