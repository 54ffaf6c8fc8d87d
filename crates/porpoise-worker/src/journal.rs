//! The event journal: every RUNNING and RESULT event is written to a file in the worker's data
//! directory before it is sent — a RESULT, and the record of an accepted attempt, flushed to
//! disk first — and marked done when a master ACKs it. Flushes are shared: writes that arrive
//! while one `fdatasync` runs (off the async runtime) go to disk together in the next. A worker
//! started on the same data directory replays what was never ACKed, so a result is not lost to
//! a crash; and for an attempt that had started but has no result (its processes died with the
//! worker, or were ended at start), it reports WORKER_STOPPED, which the master fails over.
//!
//! The file holds one line per record: `add <master> <hex of the protobuf event>`, `ack <event
//! id>`, or `run <master> <hex of a RUNNING event>` (an attempt accepted, written before the
//! worker answers ACCEPTED, or started, that has no result yet; kept when the file is
//! rewritten: with only what is still pending, and the attempts still running, when the worker
//! starts and whenever done records outnumber pending ones by far).
//!
//! A RUNNING event is not flushed on its own: should the worker die before the next flush, the
//! attempt's `run` record (flushed before it was accepted) makes the next worker report it
//! stopped, which is what the lost RUNNING would have led to.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use porpoise_proto::v1::{TaskEvent, TaskOutcome, TaskResult, TaskRunning, task_event};
use prost::Message;
use tracing::warn;

/// The journal's file name in the data directory.
pub const FILE: &str = "events.journal";
/// Rewrite the file once it holds this many done records more than pending ones.
const COMPACT_AFTER: usize = 10_000;

/// An event to deliver: the master to send it to, and the event.
pub type Pending = (String, TaskEvent);

#[derive(Debug, Default)]
struct State {
    /// Pending events by journal order.
    pending: BTreeMap<u64, Pending>,
    by_id: HashMap<String, u64>,
    next: u64,
    /// Records in the file that are done (acks, and the adds they answered).
    done: usize,
    /// Attempts that started (a RUNNING was added) and have no result yet, with that RUNNING.
    started: BTreeMap<(i64, i32), Pending>,
    /// Records written since the journal was opened: a flush through record `n` covers every
    /// record up to it.
    written: u64,
}

impl State {
    fn track(&mut self, master: &str, event: &TaskEvent) {
        let key = (event.task_instance_id, event.attempt);
        match &event.kind {
            Some(task_event::Kind::Running(_)) => {
                self.started.insert(key, (master.to_string(), event.clone()));
            }
            Some(task_event::Kind::Result(_)) => {
                self.started.remove(&key);
            }
            None => {}
        }
    }
}

/// See the module doc.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Mutex<(File, State)>,
    /// How many records are on disk (of [`State::written`]); held while a flush runs, so that
    /// writes made meanwhile wait for the next one and share it.
    synced: tokio::sync::Mutex<u64>,
    /// Flushes made.
    syncs: AtomicU64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn run_line(master: &str, event: &TaskEvent) -> String {
    format!("run {master} {}\n", hex(&event.encode_to_vec()))
}

fn add_line(master: &str, event: &TaskEvent) -> String {
    format!("add {master} {}\n", hex(&event.encode_to_vec()))
}

impl Journal {
    /// Opens the journal in `data_dir`; returns it and the events to deliver again, oldest
    /// first: those never ACKed, then a WORKER_STOPPED result for each attempt that started
    /// (RUNNING) but has no result. `new_id` names the synthesized results.
    pub fn open(data_dir: &Path, mut new_id: impl FnMut() -> String) -> std::io::Result<(Journal, Vec<Pending>)> {
        let path = data_dir.join(FILE);
        let mut state = State::default();
        if let Ok(file) = File::open(&path) {
            for (n, line) in BufReader::new(file).lines().enumerate() {
                let line = line?;
                let mut parts = line.splitn(3, ' ');
                let event = |data: &str| unhex(data).and_then(|b| TaskEvent::decode(b.as_slice()).ok());
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("run"), Some(master), Some(data)) => match event(data) {
                        Some(event) => state.track(master, &event),
                        None => warn!(file = %path.display(), line = n + 1, "unreadable journal record skipped"),
                    },
                    (Some("add"), Some(master), Some(data)) => match event(data) {
                        Some(event) => {
                            state.track(master, &event);
                            state.by_id.insert(event.event_id.clone(), state.next);
                            state.pending.insert(state.next, (master.to_string(), event));
                            state.next += 1;
                        }
                        None => warn!(file = %path.display(), line = n + 1, "unreadable journal record skipped"),
                    },
                    (Some("ack"), Some(id), None) => {
                        if let Some(seq) = state.by_id.remove(id) {
                            state.pending.remove(&seq);
                        }
                    }
                    _ => warn!(file = %path.display(), line = n + 1, "unreadable journal record skipped"),
                }
            }
        }
        for ((task_instance_id, attempt), (master, running)) in std::mem::take(&mut state.started) {
            let workflow_instance_id = running.workflow_instance_id;
            let now = chrono::Utc::now().timestamp_millis();
            let event = TaskEvent {
                event_id: new_id(),
                task_instance_id,
                attempt,
                workflow_instance_id,
                kind: Some(task_event::Kind::Result(TaskResult {
                    outcome: TaskOutcome::WorkerStopped as i32,
                    exit_code: None,
                    started_at_ms: now,
                    ended_at_ms: now,
                    message: "the worker died while the task ran".into(),
                })),
            };
            state.by_id.insert(event.event_id.clone(), state.next);
            state.pending.insert(state.next, (master, event));
            state.next += 1;
        }
        let replay: Vec<Pending> = state.pending.values().cloned().collect();
        let file = rewrite(&path, &state)?;
        let journal = Journal {
            path,
            file: Mutex::new((file, state)),
            synced: tokio::sync::Mutex::new(0),
            syncs: AtomicU64::new(0),
        };
        Ok((journal, replay))
    }

    /// Writes `event` for `master` and flushes it to disk: await it before sending the event.
    pub async fn add(&self, master: &str, event: &TaskEvent) -> std::io::Result<()> {
        let through = self.add_unflushed(master, event)?;
        self.flush_through(through).await
    }

    /// Writes `event` for `master` without waiting for a flush (the next one takes it to disk):
    /// for a RUNNING event (see the module doc). Returns the record's number.
    pub fn add_unflushed(&self, master: &str, event: &TaskEvent) -> std::io::Result<u64> {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let (file, state) = &mut *guard;
        file.write_all(add_line(master, event).as_bytes())?;
        state.written += 1;
        state.track(master, event);
        state.by_id.insert(event.event_id.clone(), state.next);
        state.pending.insert(state.next, (master.to_string(), event.clone()));
        state.next += 1;
        Ok(state.written)
    }

    /// Waits until record `through` is on disk, flushing the file unless a flush that covers it
    /// has been made; one flush serves every record written before it started.
    async fn flush_through(&self, through: u64) -> std::io::Result<()> {
        let mut synced = self.synced.lock().await;
        if *synced >= through {
            return Ok(());
        }
        let (written, file) = {
            let guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
            (guard.1.written, guard.0.try_clone()?)
        };
        tokio::task::spawn_blocking(move || file.sync_data()).await.map_err(std::io::Error::other)??;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!(crate::metrics::JOURNAL_SYNCS).increment(1);
        *synced = written;
        Ok(())
    }

    /// Flushes made since the journal was opened.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Records that attempt `attempt` of task instance `task_instance_id` (of run
    /// `workflow_instance_id`, dispatched by `master`) was accepted, flushed to disk: call
    /// before answering ACCEPTED. Should the worker die before the attempt reports a result
    /// (even before it started), the next worker on this data directory reports it stopped.
    pub async fn accepted(
        &self,
        master: &str,
        task_instance_id: i64,
        attempt: i32,
        workflow_instance_id: i64,
    ) -> std::io::Result<()> {
        let event = TaskEvent {
            event_id: String::new(),
            task_instance_id,
            attempt,
            workflow_instance_id,
            kind: Some(task_event::Kind::Running(TaskRunning::default())),
        };
        let through = {
            let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
            let (file, state) = &mut *guard;
            file.write_all(run_line(master, &event).as_bytes())?;
            state.written += 1;
            state.track(master, &event);
            state.written
        };
        self.flush_through(through).await
    }

    /// Marks the event `id` ACKed (not flushed: losing it only resends a duplicate).
    pub fn ack(&self, id: &str) {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let (file, state) = &mut *guard;
        let Some(seq) = state.by_id.remove(id) else { return };
        state.pending.remove(&seq);
        state.done += 2;
        if let Err(e) = file.write_all(format!("ack {id}\n").as_bytes()) {
            warn!(file = %self.path.display(), error = %e, "cannot write to the event journal");
        }
        if state.done > COMPACT_AFTER && state.done > 4 * state.pending.len() {
            match rewrite(&self.path, state) {
                Ok(new) => {
                    *file = new;
                    state.done = 0;
                }
                Err(e) => warn!(file = %self.path.display(), error = %e, "cannot compact the event journal"),
            }
        }
    }
}

/// Replaces the file with the pending events only; returns it open for appending.
fn rewrite(path: &Path, state: &State) -> std::io::Result<File> {
    let tmp = path.with_extension("journal.tmp");
    {
        let mut f = File::create(&tmp)?;
        for (master, event) in state.started.values() {
            f.write_all(run_line(master, event).as_bytes())?;
        }
        for (master, event) in state.pending.values() {
            f.write_all(add_line(master, event).as_bytes())?;
        }
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(id: &str, ti: i64) -> TaskEvent {
        TaskEvent {
            event_id: id.into(),
            task_instance_id: ti,
            attempt: 1,
            workflow_instance_id: 7,
            kind: Some(task_event::Kind::Running(TaskRunning::default())),
        }
    }

    fn result(id: &str, ti: i64) -> TaskEvent {
        TaskEvent {
            event_id: id.into(),
            task_instance_id: ti,
            attempt: 1,
            workflow_instance_id: 7,
            kind: Some(task_event::Kind::Result(TaskResult {
                outcome: TaskOutcome::Success as i32,
                ..Default::default()
            })),
        }
    }

    #[tokio::test]
    async fn unacked_events_come_back_and_started_attempts_without_a_result_are_reported_stopped() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (j, replay) = Journal::open(dir.path(), || "x".into()).expect("open");
            assert!(replay.is_empty());
            j.add("m:1", &running("r1", 1)).await.expect("add");
            j.add("m:1", &result("s1", 1)).await.expect("add");
            j.add("m:1", &running("r2", 2)).await.expect("add");
            j.ack("r1");
            j.ack("r2");
        }
        let mut n = 0;
        let (_, replay) = Journal::open(dir.path(), || {
            n += 1;
            format!("new-{n}")
        })
        .expect("reopen");
        let ids: Vec<&str> = replay.iter().map(|(_, e)| e.event_id.as_str()).collect();
        assert_eq!(ids, ["s1", "new-1"], "the unACKed result, then a stop for task 2");
        let Some(task_event::Kind::Result(r)) = &replay[1].1.kind else { panic!("a result") };
        assert_eq!((replay[1].1.task_instance_id, r.outcome), (2, TaskOutcome::WorkerStopped as i32));
        assert_eq!(replay[1].0, "m:1");
    }

    #[tokio::test]
    async fn an_attempt_accepted_but_never_started_is_reported_stopped() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (j, _) = Journal::open(dir.path(), || "x".into()).expect("open");
            j.accepted("m:1", 3, 2, 7).await.expect("accepted");
            j.accepted("m:1", 4, 1, 7).await.expect("accepted");
            j.add("m:1", &result("s4", 4)).await.expect("add");
            j.ack("s4");
        }
        let (_, replay) = Journal::open(dir.path(), || "stop".into()).expect("reopen");
        assert_eq!(replay.len(), 1, "only the attempt without a result: {replay:?}");
        let (master, event) = &replay[0];
        let Some(task_event::Kind::Result(r)) = &event.kind else { panic!("a result") };
        assert_eq!(
            (master.as_str(), event.task_instance_id, event.attempt, event.workflow_instance_id, r.outcome),
            ("m:1", 3, 2, 7, TaskOutcome::WorkerStopped as i32)
        );
    }

    #[tokio::test]
    async fn an_attempt_still_running_survives_a_rewrite() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (j, _) = Journal::open(dir.path(), || "x".into()).expect("open");
            j.add("m:1", &running("r1", 1)).await.expect("add");
            j.ack("r1");
            let mut guard = j.file.lock().expect("lock");
            let (file, state) = &mut *guard;
            *file = rewrite(&j.path, state).expect("rewrite");
        }
        let (_, replay) = Journal::open(dir.path(), || "stop".into()).expect("reopen");
        let ids: Vec<&str> = replay.iter().map(|(_, e)| e.event_id.as_str()).collect();
        assert_eq!(ids, ["stop"], "the started attempt is reported stopped");
    }

    #[tokio::test]
    async fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (j, _) = Journal::open(dir.path(), || "x".into()).expect("open");
            j.add("m:1", &result("s1", 1)).await.expect("add");
        }
        let mut f = OpenOptions::new().append(true).open(dir.path().join(FILE)).expect("open");
        f.write_all(b"add m:1 0a0").expect("write");
        let (_, replay) = Journal::open(dir.path(), || "x".into()).expect("reopen");
        assert_eq!(replay.len(), 1);
    }

    #[tokio::test]
    async fn events_added_together_share_one_flush_and_all_come_back() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (j, _) = Journal::open(dir.path(), || "x".into()).expect("open");
            let j = std::sync::Arc::new(j);
            // on this single-threaded runtime the first add flushes alone; the other 49 write
            // while it flushes, wait, and go to disk with the second flush
            let adds: Vec<_> = (1..=50)
                .map(|n| {
                    let j = j.clone();
                    tokio::spawn(async move { j.add("m:1", &result(&format!("s{n}"), n)).await })
                })
                .collect();
            for add in adds {
                add.await.expect("joined").expect("add");
            }
            assert_eq!(j.syncs(), 2, "50 results written together take two flushes");
            j.add_unflushed("m:1", &running("r51", 51)).expect("add");
            assert_eq!(j.syncs(), 2, "a RUNNING waits for no flush");
        }
        let (_, replay) = Journal::open(dir.path(), || "stop".into()).expect("reopen");
        assert_eq!(replay.len(), 52, "every result, the RUNNING, and a stop for its attempt");
    }
}
