//! The event journal: every RUNNING and RESULT event is written (and flushed) to a file in the
//! worker's data directory before it is sent, and marked done when a master ACKs it. A worker
//! started on the same data directory replays what was never ACKed, so a result is not lost to
//! a crash; and for an attempt that had started but has no result (its processes died with the
//! worker, or were ended at start), it reports WORKER_STOPPED, which the master fails over.
//!
//! The file holds one line per record: `add <master> <hex of the protobuf event>`, `ack <event
//! id>`, or `run <master> <hex of a RUNNING event>` (an attempt accepted, written before the
//! worker answers ACCEPTED, or started, that has no result yet; kept when the file is
//! rewritten: with only what is still pending, and the attempts still running, when the worker
//! starts and whenever done records outnumber pending ones by far).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
        Ok((Journal { path, file: Mutex::new((file, state)) }, replay))
    }

    /// Writes `event` for `master` and flushes it to disk: call before sending it.
    pub fn add(&self, master: &str, event: &TaskEvent) -> std::io::Result<()> {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let (file, state) = &mut *guard;
        file.write_all(add_line(master, event).as_bytes())?;
        file.sync_data()?;
        state.track(master, event);
        state.by_id.insert(event.event_id.clone(), state.next);
        state.pending.insert(state.next, (master.to_string(), event.clone()));
        state.next += 1;
        Ok(())
    }

    /// Records that attempt `attempt` of task instance `task_instance_id` (of run
    /// `workflow_instance_id`, dispatched by `master`) was accepted, flushed to disk: call
    /// before answering ACCEPTED. Should the worker die before the attempt reports a result
    /// (even before it started), the next worker on this data directory reports it stopped.
    pub fn accepted(
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
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let (file, state) = &mut *guard;
        file.write_all(run_line(master, &event).as_bytes())?;
        file.sync_data()?;
        state.track(master, &event);
        Ok(())
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

    #[test]
    fn unacked_events_come_back_and_started_attempts_without_a_result_are_reported_stopped() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (j, replay) = Journal::open(dir.path(), || "x".into()).expect("open");
            assert!(replay.is_empty());
            j.add("m:1", &running("r1", 1)).expect("add");
            j.add("m:1", &result("s1", 1)).expect("add");
            j.add("m:1", &running("r2", 2)).expect("add");
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

    #[test]
    fn an_attempt_accepted_but_never_started_is_reported_stopped() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (j, _) = Journal::open(dir.path(), || "x".into()).expect("open");
            j.accepted("m:1", 3, 2, 7).expect("accepted");
            j.accepted("m:1", 4, 1, 7).expect("accepted");
            j.add("m:1", &result("s4", 4)).expect("add");
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

    #[test]
    fn an_attempt_still_running_survives_a_rewrite() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (j, _) = Journal::open(dir.path(), || "x".into()).expect("open");
            j.add("m:1", &running("r1", 1)).expect("add");
            j.ack("r1");
            let mut guard = j.file.lock().expect("lock");
            let (file, state) = &mut *guard;
            *file = rewrite(&j.path, state).expect("rewrite");
        }
        let (_, replay) = Journal::open(dir.path(), || "stop".into()).expect("reopen");
        let ids: Vec<&str> = replay.iter().map(|(_, e)| e.event_id.as_str()).collect();
        assert_eq!(ids, ["stop"], "the started attempt is reported stopped");
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (j, _) = Journal::open(dir.path(), || "x".into()).expect("open");
            j.add("m:1", &result("s1", 1)).expect("add");
        }
        let mut f = OpenOptions::new().append(true).open(dir.path().join(FILE)).expect("open");
        f.write_all(b"add m:1 0a0").expect("write");
        let (_, replay) = Journal::open(dir.path(), || "x".into()).expect("reopen");
        assert_eq!(replay.len(), 1);
    }
}
