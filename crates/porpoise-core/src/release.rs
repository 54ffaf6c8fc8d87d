//! Held runs, free of I/O. A run of a serial workflow, or one date of a backfill, is created
//! `waiting` and released (to `submitted`) when its turn comes: a serial workflow runs one run
//! at a time (`serial_wait` oldest first, `serial_priority` most urgent first, `serial_discard`
//! discards a run that would overlap an active one); a backfill runs up to its `parallel` dates
//! at once, in order, and stops at the first failure unless told to keep going. The store takes
//! a snapshot, this module decides, the store applies the decisions in the same transaction.

use std::collections::{BTreeMap, BTreeSet};

use crate::{Execution, Priority};

/// A run waiting for its turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub id: i64,
    pub workflow: String,
    pub execution: Execution,
    pub priority: Priority,
    /// Its backfill and its place there.
    pub backfill: Option<(i64, i32)>,
}

/// A backfill still running, as its runs stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backfill {
    pub id: i64,
    pub parallel: u32,
    pub keep_going: bool,
    /// Its runs released and not ended.
    pub active: usize,
    /// The first of its runs that ended without success, if any.
    pub failed: Option<i64>,
}

/// What the store holds when it looks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Oldest first.
    pub waiters: Vec<Waiter>,
    /// Workflows with a run released and not ended: the newest such run.
    pub active: BTreeMap<String, i64>,
    pub backfills: Vec<Backfill>,
}

/// What happens to one waiting run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Its turn: it is submitted and started.
    Release(i64),
    /// Its serial workflow had a run active: it ends `discarded`.
    Discard { run: i64, reason: String },
    /// Its backfill stopped at a failure: it ends `stopped`.
    Stop { run: i64, reason: String },
}

/// How a backfill ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillEnd {
    pub id: i64,
    pub succeeded: bool,
    pub reason: Option<String>,
}

/// What one look decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decisions {
    pub runs: Vec<Decision>,
    pub backfills: Vec<BackfillEnd>,
}

/// Decides which waiting runs go, which end, and which backfills are over.
pub fn decide(s: &Snapshot) -> Decisions {
    let mut out = Decisions::default();
    let mut settled: BTreeSet<i64> = BTreeSet::new();
    // backfills: how many more may start, or stop at a failure
    let mut budget: BTreeMap<i64, usize> = BTreeMap::new();
    for b in &s.backfills {
        let waiting = s.waiters.iter().filter(|w| w.backfill.map(|(id, _)| id) == Some(b.id)).count();
        match b.failed {
            Some(run) if !b.keep_going => {
                let reason = format!("backfill {} stopped: run {run} did not succeed", b.id);
                for w in s.waiters.iter().filter(|w| w.backfill.map(|(id, _)| id) == Some(b.id)) {
                    out.runs.push(Decision::Stop { run: w.id, reason: reason.clone() });
                    settled.insert(w.id);
                }
                if b.active == 0 {
                    out.backfills.push(BackfillEnd { id: b.id, succeeded: false, reason: Some(reason) });
                }
            }
            failed => {
                if waiting == 0 && b.active == 0 {
                    let reason = failed.map(|run| format!("run {run} did not succeed"));
                    out.backfills.push(BackfillEnd { id: b.id, succeeded: failed.is_none(), reason });
                }
                budget.insert(b.id, (b.parallel as usize).saturating_sub(b.active));
            }
        }
    }
    // waiters in their order: a backfill's by its sequence, the others oldest first
    let mut order: Vec<&Waiter> = s.waiters.iter().filter(|w| !settled.contains(&w.id)).collect();
    order.sort_by_key(|w| (w.backfill.map_or((i64::MAX, 0), |(id, seq)| (id, seq)), w.id));
    let mut started: BTreeSet<&str> = BTreeSet::new();
    // a serial_priority workflow starts its most urgent waiter first
    let urgent: BTreeMap<&str, i64> = {
        let mut best: BTreeMap<&str, &Waiter> = BTreeMap::new();
        for w in order.iter().filter(|w| w.execution == Execution::SerialPriority) {
            let e = best.entry(w.workflow.as_str()).or_insert(w);
            if (w.priority.rank(), w.id) < (e.priority.rank(), e.id) {
                *e = w;
            }
        }
        best.into_iter().map(|(k, w)| (k, w.id)).collect()
    };
    for w in order {
        if let Some((b, _)) = w.backfill {
            match budget.get_mut(&b) {
                Some(0) | None => continue, // its backfill's turn has not come (or it is over)
                Some(_) => {}
            }
        }
        let busy = s.active.get(&w.workflow).copied();
        let go = match w.execution {
            Execution::Parallel => true,
            Execution::SerialDiscard => match busy {
                Some(run) => {
                    let reason = format!("discarded: run {run} of workflow {} was active (serial_discard)", w.workflow);
                    out.runs.push(Decision::Discard { run: w.id, reason });
                    continue;
                }
                None if started.contains(w.workflow.as_str()) => {
                    let reason = format!("discarded: another run of workflow {} started (serial_discard)", w.workflow);
                    out.runs.push(Decision::Discard { run: w.id, reason });
                    continue;
                }
                None => true,
            },
            Execution::SerialWait => busy.is_none() && !started.contains(w.workflow.as_str()),
            Execution::SerialPriority => {
                busy.is_none()
                    && !started.contains(w.workflow.as_str())
                    && urgent.get(w.workflow.as_str()) == Some(&w.id)
            }
        };
        if go {
            out.runs.push(Decision::Release(w.id));
            started.insert(w.workflow.as_str());
            if let Some((b, _)) = w.backfill
                && let Some(n) = budget.get_mut(&b)
            {
                *n -= 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
