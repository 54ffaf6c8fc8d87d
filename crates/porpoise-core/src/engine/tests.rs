//! The engine driven event by event, as a runner would, with no database and no clock.

use chrono::TimeZone;

use super::*;

const CHAIN: &str = "name: chain\ntasks:\n  - { name: a, command: 'true' }\n  - { name: b, command: 'true', depends_on: [a], retries: 1, retry_interval: 30s }\n";

fn workflow(yaml: &str) -> Workflow {
    Workflow::new(WorkflowSpec::parse("test.yaml", yaml).expect("a valid spec"))
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("a time")
}

fn at(seconds: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(seconds)
}

fn changed(outcome: Result<Outcome, DropReason>) -> Transition {
    match outcome {
        Ok(Outcome::Changed(t)) => t,
        other => panic!("expected a change, got {other:?}"),
    }
}

/// A run of `workflow` as the database holds it before it started.
fn new_run(workflow: &Workflow) -> RunState {
    RunState::rebuild(workflow, Submitted, Vec::new()).0
}

/// What the database gives back for a `CreateTasks` write: ids from `first_id` up.
fn create(run: &mut RunState, workflow: &Workflow, writes: &[Write], first_id: i64) -> Vec<Effect> {
    let new: Vec<NewTask> = writes
        .iter()
        .find_map(|w| match w {
            Write::CreateTasks(new) => Some(new.clone()),
            _ => None,
        })
        .expect("a CreateTasks write");
    let rows = new.iter().enumerate().map(|(i, n)| {
        let idx = workflow.dag.index_of(&n.name).expect("a task of the workflow");
        // a task of a task group starts waiting for a slot
        let state = if n.task_group.is_some() { Waiting } else { Submitted };
        (idx, TaskState { awaiting_slot: n.task_group.is_some(), ..task(first_id + i as i64, state, 1, None) })
    });
    run.created(rows)
}

fn task(id: i64, state: ExecutionState, attempt: i32, worker: Option<&str>) -> TaskState {
    TaskState {
        id,
        state,
        attempt,
        failovers: 0,
        rerun_base: 0,
        worker: worker.map(str::to_string),
        exit_code: None,
        started_at: None,
        ended_at: None,
        awaiting_slot: false,
    }
}

fn attempt(task_instance_id: i64, attempt: i32) -> AttemptRef {
    AttemptRef { task_instance_id, attempt }
}

fn ending_of(event: &Event) -> Ending {
    match event {
        Event::Ended(e) => e.clone(),
        other => panic!("not an end: {other:?}"),
    }
}

fn ended(at: AttemptRef, succeeded: bool, exit_code: i32) -> Event {
    Event::Ended(Ending {
        at,
        worker: Some("w1".into()),
        succeeded,
        exit_code: Some(exit_code),
        started_at: None,
        ended_at: None,
        message: String::new(),
        timed_out: false,
    })
}

/// Applies `event` and adopts the new state, as the runner does after persisting.
fn step(workflow: &Workflow, run: &mut RunState, event: Event, now: DateTime<Utc>) -> Transition {
    let t = changed(workflow.apply(run, &event, now));
    *run = t.state.clone();
    t
}

/// Runs task `id` (attempt `n`) on `w1` up to its end.
fn run_task(workflow: &Workflow, run: &mut RunState, id: i64, n: i32, succeeded: bool) -> Transition {
    step(workflow, run, Event::Dispatched { at: attempt(id, n), worker: "w1".into() }, t0());
    step(workflow, run, Event::Running { at: attempt(id, n), worker: "w1".into(), started_at: Some(t0()) }, t0());
    step(workflow, run, ended(attempt(id, n), succeeded, if succeeded { 0 } else { 3 }), at(1))
}

#[test]
fn a_new_run_starts_creates_its_roots_and_queues_them() {
    let wf = workflow(CHAIN);
    let mut run = new_run(&wf);
    let start = step(&wf, &mut run, Event::Start, t0());
    assert_eq!(
        start.writes,
        [Write::Workflow(WorkflowWrite {
            expected: Submitted,
            new: Running,
            reason: None,
            started_at: Some(t0()),
            ended_at: None
        })]
    );
    assert!(start.advance);
    let advance = wf.advance(&run, t0()).expect("the roots are ready");
    assert_eq!(advance.writes, [Write::CreateTasks(vec!["a".into()])]);
    run = advance.state.clone();
    let effects = create(&mut run, &wf, &advance.writes, 1);
    assert_eq!(effects, [Effect::Enqueue { task: 0, after: Duration::ZERO, avoid: None }]);
    assert_eq!(wf.advance(&run, t0()), None, "nothing more to do until a ends");
    assert_eq!(wf.apply(&run, &Event::Start, t0()), Ok(Outcome::Ignored), "a second start changes nothing");
}

#[test]
fn a_chain_runs_in_order_frees_each_slot_once_and_succeeds() {
    let wf = workflow(CHAIN);
    let mut run = new_run(&wf);
    step(&wf, &mut run, Event::Start, t0());
    let advance = wf.advance(&run, t0()).expect("a is ready");
    run = advance.state.clone();
    create(&mut run, &wf, &advance.writes, 1);
    let end_of_a = run_task(&wf, &mut run, 1, 1, true);
    let released: Vec<&Effect> = end_of_a.effects.iter().filter(|e| matches!(e, Effect::ReleaseSlot { .. })).collect();
    assert_eq!(released, [&Effect::ReleaseSlot { worker: "w1".into() }]);
    assert!(end_of_a.advance);
    let advance = wf.advance(&run, at(1)).expect("b is ready");
    assert_eq!(advance.writes, [Write::CreateTasks(vec!["b".into()])]);
    run = advance.state.clone();
    create(&mut run, &wf, &advance.writes, 2);
    run_task(&wf, &mut run, 2, 1, true);
    let finish = wf.advance(&run, at(2)).expect("the run ends");
    assert_eq!(
        finish.writes,
        [Write::Workflow(WorkflowWrite {
            expected: Running,
            new: Success,
            reason: None,
            started_at: None,
            ended_at: Some(at(2))
        })]
    );
    assert_eq!(finish.state.state, Success);
    assert_eq!(wf.advance(&finish.state, at(2)), None, "a finished run does nothing");
}

#[test]
fn a_failed_attempt_waits_for_its_retry_then_runs_again_and_retries_run_out() {
    let wf = workflow(CHAIN);
    let (mut run, _) = RunState::rebuild(
        &wf,
        Running,
        [("a".to_string(), task(1, Success, 1, None)), ("b".to_string(), task(2, Submitted, 1, None))],
    );
    let failed = run_task(&wf, &mut run, 2, 1, false);
    assert_eq!(run.task(1).map(|t| t.state), Some(Delayed), "one retry left: the task waits");
    assert!(
        failed.effects.contains(&Effect::Schedule {
            event: Event::RetryDue { at: attempt(2, 1) },
            after: Duration::from_secs(30)
        })
    );
    assert_eq!(wf.advance(&run, at(1)), None, "a delayed task keeps the run going");
    assert_eq!(wf.apply(&run, &Event::RetryDue { at: attempt(2, 0) }, at(31)), Ok(Outcome::Ignored));
    let retried = step(&wf, &mut run, Event::RetryDue { at: attempt(2, 1) }, at(31));
    assert!(matches!(&retried.writes[..], [Write::Task(w)] if w.attempt == Some(2) && w.new == Submitted));
    assert!(retried.effects.contains(&Effect::Enqueue { task: 1, after: Duration::ZERO, avoid: None }));
    run_task(&wf, &mut run, 2, 2, false);
    assert_eq!(run.task(1).map(|t| (t.state, t.attempt)), Some((Failure, 2)), "the retries ran out");
    assert_eq!(run.failing.as_deref(), Some("task b failed with exit code 3"));
    let finish = wf.advance(&run, at(40)).expect("the run ends");
    assert_eq!(finish.state.state, Failure);
    assert!(
        matches!(&finish.writes[..], [Write::Workflow(w)] if w.reason.as_deref() == Some("task b failed with exit code 3"))
    );
}

#[test]
fn a_failing_run_calls_off_the_retries_it_waits_for_and_ends() {
    let wf = workflow(
        "name: fan\ntasks:\n  - { name: a, command: 'true' }\n  - { name: b, command: 'true', retries: 3, retry_interval: 1h }\n",
    );
    let (mut run, _) = RunState::rebuild(
        &wf,
        Running,
        [("a".to_string(), task(1, Submitted, 1, None)), ("b".to_string(), task(2, Delayed, 1, None))],
    );
    run_task(&wf, &mut run, 1, 1, false);
    let advance = wf.advance(&run, at(2)).expect("the retry is called off and the run ends");
    let called_off = TaskWrite { ended_at: None, ..TaskWrite::new(&task(2, Delayed, 1, None), Failure) };
    assert_eq!(advance.writes[0], Write::Task(called_off));
    assert!(matches!(&advance.writes[1], Write::Workflow(w) if w.new == Failure));
    assert!(advance.effects.contains(&Effect::Note(Note::RetryCalledOff { task: 1, attempt: 1 })));
    assert_eq!(wf.apply(&advance.state, &Event::RetryDue { at: attempt(2, 1) }, at(3)), Ok(Outcome::Ignored));
}

#[test]
fn stale_late_and_impossible_events() {
    let wf = workflow(CHAIN);
    let (run, _) = RunState::rebuild(
        &wf,
        Running,
        [("a".to_string(), task(1, Running, 2, Some("w1"))), ("b".to_string(), task(2, Submitted, 1, None))],
    );
    assert_eq!(wf.apply(&run, &ended(attempt(1, 1), true, 0), t0()), Ok(Outcome::Ignored), "an earlier attempt");
    assert_eq!(
        wf.apply(&run, &ended(attempt(1, 7), true, 0), t0()),
        Err(DropReason::Malformed("attempt 7 is ahead of the current attempt 2".into()))
    );
    assert_eq!(
        wf.apply(&run, &ended(attempt(2, 1), true, 0), t0()),
        Err(DropReason::NotTheAttemptsWorker { sender: "w1".into(), attempt: 1, holder: None }),
        "a worker's result for a task never dispatched"
    );
    let by_master = Event::Ended(Ending { worker: None, ..ending_of(&ended(attempt(2, 1), true, 0)) });
    assert_eq!(
        wf.apply(&run, &by_master, t0()),
        Err(DropReason::IllegalTransition { from: Submitted, to: Success }),
        "an end for a task never dispatched"
    );
    // only the worker that holds the attempt speaks for it: a forged result or RUNNING is refused
    let forged = Event::Ended(Ending { worker: Some("w9".into()), ..ending_of(&ended(attempt(1, 2), true, 0)) });
    let refused = Err(DropReason::NotTheAttemptsWorker { sender: "w9".into(), attempt: 2, holder: Some("w1".into()) });
    assert_eq!(wf.apply(&run, &forged, t0()), refused);
    let forged_running = Event::Running { at: attempt(1, 2), worker: "w9".into(), started_at: None };
    assert_eq!(wf.apply(&run, &forged_running, t0()), refused);
    assert_eq!(wf.apply(&run, &ended(attempt(9, 1), true, 0), t0()), Err(DropReason::UnknownTaskInstance(9)));
    let dispatch_again = Event::Dispatched { at: attempt(1, 2), worker: "w2".into() };
    assert_eq!(wf.apply(&run, &dispatch_again, t0()), Ok(Outcome::Ignored), "only one dispatch of an attempt");
    let requeue = Event::Requeue { at: attempt(1, 2), worker: Some("w1".into()), after: Duration::ZERO };
    assert_eq!(wf.apply(&run, &requeue, t0()), Ok(Outcome::Ignored), "a requeue after the worker started it");
    let running_again = Event::Running { at: attempt(1, 2), worker: "w1".into(), started_at: None };
    assert_eq!(wf.apply(&run, &running_again, t0()), Ok(Outcome::Ignored), "a duplicate");
}

#[test]
fn a_lost_workers_attempts_fail_over_without_using_a_retry() {
    let wf = workflow(
        "name: pair\ntasks:\n  - { name: a, command: 'true' }\n  - { name: b, command: 'true', retries: 0 }\n",
    );
    let (mut run, _) = RunState::rebuild(
        &wf,
        Running,
        [("a".to_string(), task(1, Running, 1, Some("w1"))), ("b".to_string(), task(2, Dispatched, 1, Some("w2")))],
    );
    let lost = step(&wf, &mut run, Event::WorkerLost { worker: "w2".into() }, t0());
    assert!(lost.writes.is_empty());
    let failover = Event::Failover { at: attempt(2, 1), worker: "w2".into(), why: "was lost".into() };
    assert_eq!(lost.effects, [Effect::Post(failover.clone())], "only the attempt on the lost worker");
    assert_eq!(wf.apply(&run, &Event::WorkerLost { worker: "w9".into() }, t0()), Ok(Outcome::Ignored));

    let moved = step(&wf, &mut run, failover.clone(), t0());
    let [Write::Task(w)] = &moved.writes[..] else { panic!("one task write: {:?}", moved.writes) };
    assert_eq!((w.new, w.attempt, w.failover), (Submitted, Some(2), true));
    assert_eq!(w.warning.as_deref(), Some("attempt 1 failed over: its worker w2 was lost"));
    assert!(moved.effects.contains(&Effect::ReleaseSlot { worker: "w2".into() }));
    assert!(moved.effects.contains(&Effect::Enqueue { task: 1, after: Duration::ZERO, avoid: Some("w2".into()) }));
    assert_eq!(wf.apply(&run, &failover, t0()), Ok(Outcome::Ignored), "a failover is applied once");
    // attempt 2 failing is a failure: the failover used no retry, and there are none
    run_task(&wf, &mut run, 2, 2, false);
    assert_eq!(run.task(1).map(|t| (t.state, t.attempt, t.failovers)), Some((Failure, 2, 1)));
}

#[test]
fn a_failed_over_attempt_does_not_count_against_the_retries() {
    let wf = workflow("name: one\ntasks:\n  - { name: a, command: 'true', retries: 1, retry_interval: 1s }\n");
    let mut a = task(1, Running, 2, Some("w1"));
    a.failovers = 1;
    let (mut run, _) = RunState::rebuild(&wf, Running, [("a".to_string(), a)]);
    step(&wf, &mut run, ended(attempt(1, 2), false, 1), t0());
    assert_eq!(run.task(0).map(|t| t.state), Some(Delayed), "attempt 2 was the first real one: a retry is left");
}

#[test]
fn a_warn_timeout_is_noticed_by_the_master_and_the_task_runs_on() {
    let wf = workflow("name: slow\ntasks:\n  - { name: a, command: 'true', timeout: 10s, timeout_strategy: warn }\n");
    let (mut run, _) = RunState::rebuild(&wf, Running, [("a".to_string(), task(1, Dispatched, 1, Some("w1")))]);
    let running =
        step(&wf, &mut run, Event::Running { at: attempt(1, 1), worker: "w1".into(), started_at: Some(t0()) }, at(4));
    assert!(
        running.effects.contains(&Effect::Schedule {
            event: Event::TimeoutDue { at: attempt(1, 1) },
            after: Duration::from_secs(6)
        })
    );
    let due = step(&wf, &mut run, Event::TimeoutDue { at: attempt(1, 1) }, at(10));
    let [Write::Task(w)] = &due.writes[..] else { panic!("one task write") };
    assert_eq!((w.expected, w.new), (Running, Running));
    assert_eq!(w.warning.as_deref(), Some("attempt 1 ran past its timeout of 10s; it runs on (timeout_strategy warn)"));
    assert_eq!(run.task(0).map(|t| t.state), Some(Running));
}

#[test]
fn a_run_rebuilt_from_the_database_resumes_each_task_where_it_was() {
    let wf = workflow(
        "name: many\ntasks:\n  - { name: queued, command: 'true' }\n  - { name: sent, command: 'true' }\n  - { name: nowhere, command: 'true' }\n  - { name: running, command: 'true', timeout: 60s, timeout_strategy: warn }\n  - { name: orphaned, command: 'true' }\n  - { name: waiting, command: 'true', retries: 2, retry_interval: 30s }\n  - { name: done, command: 'true' }\n",
    );
    let mut running = task(4, Running, 1, Some("w1"));
    running.started_at = Some(t0());
    let mut waiting = task(6, Delayed, 1, None);
    waiting.ended_at = Some(at(10));
    let (run, unknown) = RunState::rebuild(
        &wf,
        Running,
        [
            ("queued".to_string(), task(1, Submitted, 1, None)),
            ("sent".to_string(), task(2, Dispatched, 1, Some("w1"))),
            ("nowhere".to_string(), task(3, Dispatched, 1, None)),
            ("running".to_string(), running),
            ("orphaned".to_string(), task(5, Running, 1, Some("gone"))),
            ("waiting".to_string(), waiting),
            ("done".to_string(), task(7, Success, 1, Some("w1"))),
            ("removed".to_string(), task(8, Success, 1, None)),
        ],
    );
    assert_eq!(unknown, ["removed"]);
    let effects = wf.resume(&run, at(20), |w| w == "w1");
    assert_eq!(
        effects,
        [
            Effect::Enqueue { task: 0, after: Duration::ZERO, avoid: None },
            Effect::ReserveSlot { worker: "w1".into() },
            Effect::Resend { task: 1 },
            Effect::Post(Event::Requeue { at: attempt(3, 1), worker: None, after: Duration::ZERO }),
            Effect::ReserveSlot { worker: "w1".into() },
            Effect::Schedule { event: Event::TimeoutDue { at: attempt(4, 1) }, after: Duration::from_secs(40) },
            Effect::WorkerMissing { worker: "gone".into() },
            Effect::Schedule { event: Event::RetryDue { at: attempt(6, 1) }, after: Duration::from_secs(20) },
        ]
    );
}

#[test]
fn a_run_rebuilt_with_a_failed_task_is_failing() {
    let wf = workflow(CHAIN);
    let mut a = task(1, Failure, 1, None);
    a.exit_code = Some(2);
    let (run, _) = RunState::rebuild(&wf, Running, [("a".to_string(), a)]);
    assert_eq!(run.failing.as_deref(), Some("task a failed with exit code 2"));
    let finish = wf.advance(&run, t0()).expect("the run ends");
    assert!(matches!(&finish.writes[..], [Write::Workflow(w)] if w.new == Failure), "b is never created");
}

#[test]
fn events_name_their_kind_and_attempt_and_serialise_for_the_dead_letter_table() {
    let e = ended(attempt(5, 2), true, 0);
    assert_eq!((e.kind(), e.attempt()), (StateEventKind::TaskStateChange, Some(attempt(5, 2))));
    let json = serde_json::to_value(&e).expect("serialise");
    assert_eq!(json["event"], "ended");
    assert_eq!(json["at"]["task_instance_id"], 5);
    assert_eq!(Event::WorkerLost { worker: "w".into() }.kind(), StateEventKind::WorkerLost);
}

#[test]
fn a_stop_kills_what_runs_stops_what_waits_and_ends_the_run_stopped() {
    let wf = workflow(
        "name: three\ntasks:\n  - { name: a, command: 'true' }\n  - { name: b, command: 'true' }\n  - { name: c, command: 'true', retries: 2, retry_interval: 1h }\n",
    );
    let (mut run, _) = RunState::rebuild(
        &wf,
        Running,
        [
            ("a".to_string(), task(1, Running, 1, Some("w1"))),
            ("b".to_string(), task(2, Submitted, 1, None)),
            ("c".to_string(), task(3, Delayed, 1, None)),
        ],
    );
    let stop = step(&wf, &mut run, Event::Control { command: 10, action: Control::Stop, task: None }, t0());
    assert!(stop.effects.contains(&Effect::Kill { task: 0 }));
    let stopped: Vec<i64> = stop
        .writes
        .iter()
        .filter_map(|w| match w {
            Write::Task(t) if t.new == Stopped => Some(t.id),
            _ => None,
        })
        .collect();
    assert_eq!(stopped, [2, 3], "what waited is stopped at once");
    assert_eq!(wf.advance(&run, t0()), None, "a still runs: the run is not over");
    assert_eq!(
        wf.apply(&run, &Event::Dispatched { at: attempt(2, 1), worker: "w1".into() }, t0()),
        Ok(Outcome::Ignored)
    );
    // the killed attempt reports a failure: it is killed, not retried
    step(&wf, &mut run, ended(attempt(1, 1), false, 137), at(1));
    assert_eq!(run.task(0).map(|t| t.state), Some(Killed));
    let end = wf.advance(&run, at(1)).expect("the run ends");
    assert_eq!(end.state.state, Stopped);
    assert!(end.writes.contains(&Write::CompleteCommand(10)), "the command is done with the run's end");
    assert_eq!(
        wf.apply(&end.state, &Event::Control { command: 10, action: Control::Stop, task: None }, at(2)),
        Ok(Outcome::Ignored),
        "a command is applied once"
    );
}

#[test]
fn a_pause_lets_what_runs_finish_and_a_resume_carries_on_where_it_was() {
    let wf = workflow(CHAIN);
    let (mut run, _) = RunState::rebuild(&wf, Running, [("a".to_string(), task(1, Running, 1, Some("w1")))]);
    let pause = step(&wf, &mut run, Event::Control { command: 5, action: Control::Pause, task: None }, t0());
    assert!(pause.writes.is_empty(), "the pending command is what makes the pause durable");
    assert_eq!(wf.advance(&run, t0()), None, "a still runs");
    step(&wf, &mut run, ended(attempt(1, 1), true, 0), at(1));
    let paused = wf.advance(&run, at(1)).expect("the run pauses");
    assert_eq!(paused.writes.len(), 2, "{:?}", paused.writes);
    assert!(matches!(&paused.writes[0], Write::Workflow(w) if w.new == Paused));
    run = paused.state;
    assert_eq!(wf.advance(&run, at(2)), None, "b is not created while paused");
    let resumed = step(&wf, &mut run, Event::Control { command: 6, action: Control::Resume, task: None }, at(3));
    assert!(matches!(&resumed.writes[0], Write::Workflow(w) if (w.expected, w.new) == (Paused, Running)));
    assert!(resumed.advance);
    let next = wf.advance(&run, at(3)).expect("b becomes ready");
    assert_eq!(next.writes, [Write::CreateTasks(vec!["b".into()])], "a succeeded and is not run again");
    assert_eq!(
        wf.apply(&run, &Event::Control { command: 5, action: Control::Pause, task: None }, at(4)),
        Ok(Outcome::Ignored),
        "an older command changes nothing"
    );
}

#[test]
fn with_failure_strategy_continue_a_pending_retry_and_the_independent_branch_run_and_the_run_fails_at_the_end() {
    let wf = workflow(
        "name: branches\nfailure_strategy: continue\ntasks:\n  - { name: bad, command: 'false' }\n  - { name: after_bad, command: 'true', depends_on: [bad] }\n  - { name: flaky, command: 'true', retries: 1, retry_interval: 10s }\n  - { name: after_flaky, command: 'true', depends_on: [flaky] }\n",
    );
    let (mut run, _) = RunState::rebuild(
        &wf,
        Running,
        [("bad".to_string(), task(1, Submitted, 1, None)), ("flaky".to_string(), task(2, Submitted, 1, None))],
    );
    run_task(&wf, &mut run, 2, 1, false); // flaky fails once: waits for its retry
    run_task(&wf, &mut run, 1, 1, false); // bad fails for good
    assert!(run.failing.is_some());
    assert_eq!(wf.advance(&run, at(2)), None, "the retry is not called off, and nothing depends only on success");
    step(&wf, &mut run, Event::RetryDue { at: attempt(2, 1) }, at(11));
    run_task(&wf, &mut run, 2, 2, true);
    let next = wf.advance(&run, at(12)).expect("the independent branch goes on");
    assert_eq!(next.writes, [Write::CreateTasks(vec!["after_flaky".into()])]);
    run = next.state;
    create(&mut run, &wf, &next.writes, 3);
    run_task(&wf, &mut run, 3, 1, true);
    let end = wf.advance(&run, at(13)).expect("the run ends");
    assert!(matches!(&end.writes[..], [Write::Workflow(w)] if w.new == Failure), "{:?}", end.writes);
    assert_eq!(end.state.task(1), None, "what depends on the failed task never starts");
}

#[test]
fn a_run_past_its_timeout_with_fail_is_stopped() {
    let wf = workflow("name: slow\ntimeout: 1m\ntimeout_strategy: fail\ntasks:\n  - { name: a, command: 'true' }\n");
    let mut run = new_run(&wf);
    let start = step(&wf, &mut run, Event::Start, t0());
    assert!(
        start.effects.contains(&Effect::Schedule { event: Event::WorkflowTimeoutDue, after: Duration::from_secs(60) })
    );
    let advance = wf.advance(&run, t0()).expect("a is created");
    run = advance.state.clone();
    create(&mut run, &wf, &advance.writes, 1);
    step(&wf, &mut run, Event::Dispatched { at: attempt(1, 1), worker: "w1".into() }, t0());
    let due = step(&wf, &mut run, Event::WorkflowTimeoutDue, at(60));
    assert!(due.effects.contains(&Effect::Kill { task: 0 }));
    step(&wf, &mut run, ended(attempt(1, 1), false, 137), at(61));
    let end = wf.advance(&run, at(61)).expect("the run ends");
    assert!(
        matches!(&end.writes[..], [Write::Workflow(w)] if w.new == Stopped && w.reason.as_deref() == Some("stopped: the run ran past its timeout of 1m")),
        "{:?}",
        end.writes
    );
    // rebuilt later, a run already past its timeout is due at once
    let mut rebuilt = RunState::rebuild(&wf, Running, Vec::new()).0;
    rebuilt.started_at = Some(t0());
    assert!(
        wf.resume(&rebuilt, at(90), |_| true)
            .contains(&Effect::Schedule { event: Event::WorkflowTimeoutDue, after: Duration::ZERO })
    );
}

#[test]
fn a_rerun_picks_the_failed_tasks_or_a_task_and_what_follows_it_and_gives_fresh_retries() {
    let wf = workflow(CHAIN);
    let (run, _) = RunState::rebuild(
        &wf,
        Failure,
        [("a".to_string(), task(1, Success, 1, None)), ("b".to_string(), task(2, Failure, 2, None))],
    );
    let rerun = |id, state, attempt, new| RerunTask { id, state, attempt, new, await_slot: false };
    assert_eq!(wf.rerun_tasks(&run, None), Ok(vec![rerun(2, Failure, 2, Submitted)]));
    assert_eq!(
        wf.rerun_tasks(&run, Some("a")),
        Ok(vec![rerun(1, Success, 1, Submitted), rerun(2, Failure, 2, Waiting)]),
        "what follows waits for the task the rerun starts from"
    );
    assert!(wf.rerun_tasks(&run, Some("zz")).is_err());
    let (ok, _) = RunState::rebuild(&wf, Success, [("a".to_string(), task(1, Success, 1, None))]);
    assert!(wf.rerun_tasks(&ok, None).is_err(), "nothing failed");
    // b rerun as attempt 3 after 2 attempts: its one retry is fresh
    let mut b = task(2, Running, 3, Some("w1"));
    b.rerun_base = 2;
    let (mut again, _) =
        RunState::rebuild(&wf, Running, [("a".to_string(), task(1, Success, 1, None)), ("b".to_string(), b)]);
    step(&wf, &mut again, ended(attempt(2, 3), false, 1), t0());
    assert_eq!(again.task(1).map(|t| t.state), Some(Delayed));
}

#[test]
fn a_paused_run_sends_and_retries_nothing_until_it_is_resumed() {
    let wf = workflow(
        "name: two\ntasks:\n  - { name: a, command: 'true' }\n  - { name: b, command: 'true', retries: 1, retry_interval: 1s }\n",
    );
    let (mut run, _) = RunState::rebuild(
        &wf,
        Running,
        [("a".to_string(), task(1, Submitted, 1, None)), ("b".to_string(), task(2, Delayed, 1, None))],
    );
    step(&wf, &mut run, Event::Control { command: 3, action: Control::Pause, task: None }, t0());
    let paused = wf.advance(&run, t0()).expect("nothing is on a worker: paused at once");
    run = paused.state;
    assert_eq!(run.state, Paused);
    // the queued task leaves the dispatcher's queue, and the retry timer fires, while paused
    let dispatch = Event::Dispatched { at: attempt(1, 1), worker: "w1".into() };
    assert_eq!(wf.apply(&run, &dispatch, at(1)), Ok(Outcome::Ignored));
    assert_eq!(wf.apply(&run, &Event::RetryDue { at: attempt(2, 1) }, at(1)), Ok(Outcome::Ignored));
    let resumed = step(&wf, &mut run, Event::Control { command: 4, action: Control::Resume, task: None }, at(2));
    assert!(resumed.effects.contains(&Effect::Enqueue { task: 0, after: Duration::ZERO, avoid: None }));
    assert!(resumed.effects.iter().any(|e| matches!(e, Effect::Schedule { event: Event::RetryDue { .. }, .. })));
    assert!(matches!(wf.apply(&run, &dispatch, at(3)), Ok(Outcome::Changed(_))), "sent once resumed");
}

#[test]
fn a_killed_task_ends_killed_without_a_retry_and_the_run_fails() {
    let wf = workflow(
        "name: pair\ntasks:\n  - { name: slow, command: 'true', retries: 3 }\n  - { name: queued, command: 'true' }\n",
    );
    let (mut run, _) = RunState::rebuild(
        &wf,
        Running,
        [("slow".to_string(), task(1, Running, 1, Some("w1"))), ("queued".to_string(), task(2, Submitted, 1, None))],
    );
    let kill = step(&wf, &mut run, Event::Control { command: 8, action: Control::KillTask, task: Some(1) }, t0());
    assert!(kill.effects.contains(&Effect::Kill { task: 0 }));
    assert!(kill.writes.is_empty(), "the pending command is what keeps the kill");
    let ended_killed = step(&wf, &mut run, ended(attempt(1, 1), false, 137), at(1));
    assert_eq!(run.task(0).map(|t| t.state), Some(Killed), "killed, not retried");
    assert!(ended_killed.writes.contains(&Write::CompleteCommand(8)));
    assert_eq!(run.failing.as_deref(), Some("task slow was killed by an operator"));
    // a task not on a worker ends at once, stopped: it never ran
    let now = step(&wf, &mut run, Event::Control { command: 9, action: Control::KillTask, task: Some(2) }, at(2));
    assert!(now.writes.contains(&Write::CompleteCommand(9)));
    assert_eq!(run.task(1).map(|t| t.state), Some(Stopped));
    let end = wf.advance(&run, at(2)).expect("the run ends");
    assert!(matches!(&end.writes[..], [Write::Workflow(w)] if w.new == Failure));
}

#[test]
fn a_task_group_task_waits_for_a_slot_takes_one_and_gives_it_back_when_it_ends() {
    let wf = workflow(
        "name: grouped\ntasks:\n  - { name: a, command: 'true', task_group: db, task_group_priority: 3, retries: 1 }\n",
    );
    let mut run = new_run(&wf);
    step(&wf, &mut run, Event::Start, t0());
    let advance = wf.advance(&run, t0()).expect("a is ready");
    let Write::CreateTasks(new) = &advance.writes[0] else { panic!("{:?}", advance.writes) };
    assert_eq!((new[0].task_group.as_deref(), new[0].task_group_priority), (Some("db"), 3));
    run = advance.state.clone();
    let effects = create(&mut run, &wf, &advance.writes, 1);
    assert_eq!(effects, [Effect::Post(Event::SlotDue { at: attempt(1, 1) })], "in line, not queued");
    assert_eq!(run.task(0).map(|t| t.state), Some(Waiting));
    // taking the slot is one conditional write; only then is the task queued
    let took = step(&wf, &mut run, Event::SlotDue { at: attempt(1, 1) }, t0());
    assert!(matches!(&took.writes[..], [Write::TakeSlot(t)] if t.expected == Waiting && t.new == Submitted));
    assert_eq!(took.effects, [Effect::Enqueue { task: 0, after: Duration::ZERO, avoid: None }]);
    assert_eq!(wf.apply(&run, &Event::SlotDue { at: attempt(1, 1) }, t0()), Ok(Outcome::Ignored), "taken once");
    // a failed attempt gives the slot back; its retry gets in line again
    run_task(&wf, &mut run, 1, 1, false);
    assert_eq!(run.task(0).map(|t| t.state), Some(Delayed));
    let retry = step(&wf, &mut run, Event::RetryDue { at: attempt(1, 1) }, at(2));
    assert!(matches!(&retry.writes[..], [Write::Task(t)] if t.new == Waiting && t.await_slot && t.attempt == Some(2)));
    assert!(retry.effects.contains(&Effect::Post(Event::SlotDue { at: attempt(1, 2) })));
}

#[test]
fn a_paused_run_gives_its_queued_slots_back_and_gets_in_line_again_on_resume() {
    let wf = workflow("name: grouped\ntasks:\n  - { name: a, command: 'true', task_group: db }\n");
    let (mut run, _) = RunState::rebuild(&wf, Running, [("a".to_string(), task(1, Submitted, 1, None))]);
    step(&wf, &mut run, Event::Control { command: 2, action: Control::Pause, task: None }, t0());
    let paused = wf.advance(&run, t0()).expect("paused at once");
    assert!(paused.writes.iter().any(|w| matches!(w, Write::Task(t) if t.new == Waiting && t.await_slot)));
    run = paused.state;
    assert_eq!((run.state, run.task(0).map(|t| t.awaiting_slot)), (Paused, Some(true)));
    assert_eq!(wf.apply(&run, &Event::SlotDue { at: attempt(1, 1) }, at(1)), Ok(Outcome::Ignored), "paused: no slot");
    let resumed = step(&wf, &mut run, Event::Control { command: 3, action: Control::Resume, task: None }, at(2));
    assert!(resumed.effects.contains(&Effect::Post(Event::SlotDue { at: attempt(1, 1) })));
}

#[test]
fn a_rerun_puts_a_task_group_task_in_line_and_its_downstream_waits_for_it() {
    let wf = workflow(
        "name: grouped\ntasks:\n  - { name: a, command: 'true', task_group: db }\n  - { name: b, command: 'true', depends_on: [a], task_group: db }\n",
    );
    let (run, _) = RunState::rebuild(&wf, Failure, [("a".to_string(), task(1, Failure, 1, None))]);
    let picked = wf.rerun_tasks(&run, None).expect("a failed");
    assert_eq!(picked, [RerunTask { id: 1, state: Failure, attempt: 1, new: Waiting, await_slot: true }]);
    // b waits for a (not for a slot) until a has succeeded; then it gets in line
    let (mut run, _) = RunState::rebuild(
        &wf,
        Running,
        [("a".to_string(), task(1, Success, 2, None)), ("b".to_string(), task(2, Waiting, 2, None))],
    );
    let advance = wf.advance(&run, t0()).expect("b gets in line");
    assert!(
        matches!(&advance.writes[..], [Write::Task(t)] if t.expected == Waiting && t.new == Waiting && t.await_slot)
    );
    assert_eq!(advance.effects, [Effect::Post(Event::SlotDue { at: attempt(2, 2) })]);
    run = advance.state;
    assert_eq!(wf.advance(&run, t0()), None, "in line once");
}

#[test]
fn a_task_marked_successful_lets_its_run_go_on() {
    let wf = workflow(CHAIN);
    // on a run that still runs: a control command
    let (mut run, _) = RunState::rebuild(&wf, Running, [("a".to_string(), task(1, Failure, 1, None))]);
    assert!(run.failing.is_some());
    let marked = step(&wf, &mut run, Event::Control { command: 4, action: Control::MarkSuccess, task: Some(1) }, t0());
    assert!(marked.writes.iter().any(|w| matches!(w, Write::Task(t) if t.new == ForcedSuccess && t.warning.as_deref() == Some("marked successful by an operator; attempt 1 had ended failure"))));
    assert!(marked.writes.contains(&Write::CompleteCommand(4)));
    assert_eq!((run.task(0).map(|t| t.state), run.failing.as_deref()), (Some(ForcedSuccess), None));
    let advance = wf.advance(&run, t0()).expect("b is ready");
    assert_eq!(advance.writes, [Write::CreateTasks(vec!["b".into()])], "what depends on it runs");
    // on a run that ended: the task and what waits downstream, as a rerun
    let (ended_run, _) = RunState::rebuild(
        &wf,
        Stopped,
        [("a".to_string(), task(1, Killed, 1, None)), ("b".to_string(), task(2, Stopped, 1, None))],
    );
    let picked = wf.mark_success_tasks(&ended_run, 1).expect("a was killed");
    assert_eq!(
        picked,
        [
            RerunTask { id: 1, state: Killed, attempt: 1, new: ForcedSuccess, await_slot: false },
            RerunTask { id: 2, state: Stopped, attempt: 1, new: Waiting, await_slot: false },
        ]
    );
    let (done, _) = RunState::rebuild(&wf, Success, [("a".to_string(), task(1, Success, 1, None))]);
    assert!(
        wf.mark_success_tasks(&done, 1).expect_err("it succeeded").contains("only a task that ended without success")
    );
}

#[test]
fn a_failing_run_stops_its_slot_waiters_or_with_continue_waits_for_them() {
    let yaml = "name: grouped\ntasks:\n  - { name: bad, command: 'true' }\n  - { name: queued, command: 'true', task_group: db }\n";
    let waiting = TaskState { awaiting_slot: true, ..task(2, Waiting, 1, None) };
    let rows = || [("bad".to_string(), task(1, Failure, 1, None)), ("queued".to_string(), waiting.clone())];
    // end: the waiter never gets a slot; it is stopped and the run fails
    let wf = workflow(yaml);
    let (run, _) = RunState::rebuild(&wf, Running, rows());
    let end = wf.advance(&run, t0()).expect("the run ends");
    assert!(end.writes.iter().any(|w| matches!(w, Write::Task(t) if t.id == 2 && t.new == Stopped)));
    assert_eq!(end.state.state, Failure);
    // continue: the waiter is still to run, so the run goes on
    let wf = workflow(&yaml.replace("name: grouped\n", "name: grouped\nfailure_strategy: continue\n"));
    let (run, _) = RunState::rebuild(&wf, Running, rows());
    assert_eq!(wf.advance(&run, t0()), None, "the run waits for the task in line");
}

/// Drives a run of `workflow` to its end as the runner would, every task succeeding on its
/// first attempt; returns the run's state and how many task instances were created.
fn drive_to_end(wf: &Workflow) -> (RunState, usize) {
    let mut run = new_run(wf);
    step(wf, &mut run, Event::Start, t0());
    let mut next_id = 1;
    let mut created = 0;
    loop {
        let Some(t) = wf.advance(&run, t0()) else { panic!("the run stalled: {:?}", run.state) };
        run = t.state.clone();
        if run.state.is_terminal() {
            return (run, created);
        }
        let effects = create(&mut run, wf, &t.writes, next_id);
        let queued: Vec<i64> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Enqueue { task, .. } => run.task(*task).map(|t| t.id),
                _ => None,
            })
            .collect();
        next_id += queued.len() as i64;
        created += queued.len();
        for id in queued {
            run_task(wf, &mut run, id, 1, true);
        }
    }
}

#[test]
fn a_ten_thousand_task_run_and_a_two_thousand_step_chain_run_to_success() {
    let mut wide = String::from("name: wide\ntasks:\n");
    for i in 0..10_000 {
        wide.push_str(&format!("  - {{ name: t{i}, command: 'true' }}\n"));
    }
    let (run, created) = drive_to_end(&workflow(&wide));
    assert_eq!((run.state, created), (Success, 10_000));
    assert!(run.tasks().all(|(_, t)| t.state == Success));

    let mut chain = String::from("name: long\ntasks:\n  - { name: s0, command: 'true' }\n");
    for i in 1..2_000 {
        chain.push_str(&format!("  - {{ name: s{i}, command: 'true', depends_on: [s{}] }}\n", i - 1));
    }
    let (run, created) = drive_to_end(&workflow(&chain));
    assert_eq!((run.state, created), (Success, 2_000));
}

#[test]
fn writes_that_continue_each_other_become_one() {
    let w = |id, from, attempt, to| TaskWrite::change(id, from, attempt, to);
    let writes = vec![
        Write::Task(TaskWrite { worker: Some("w1".into()), ..w(1, Submitted, 1, Dispatched) }),
        Write::Task(w(2, Submitted, 1, Dispatched)),
        Write::Task(TaskWrite { started_at: Some(t0()), worker: Some("w1".into()), ..w(1, Dispatched, 1, Running) }),
        Write::CompleteCommand(7),
        Write::Task(TaskWrite { exit_code: Some(0), ended_at: Some(at(1)), ..w(1, Running, 1, Success) }),
        // expects another state than the write before leaves: kept apart, to be refused
        Write::Task(w(2, Running, 1, Success)),
        // a failover starts attempt 2; the write after it continues attempt 2
        Write::Task(TaskWrite { attempt: Some(2), failover: true, ..w(3, Running, 1, Submitted) }),
        Write::Task(TaskWrite { worker: Some("w2".into()), ..w(3, Submitted, 2, Dispatched) }),
    ];
    let merged = coalesce(writes);
    assert_eq!(
        merged,
        [
            Write::Task(TaskWrite {
                worker: Some("w1".into()),
                started_at: Some(t0()),
                exit_code: Some(0),
                ended_at: Some(at(1)),
                ..w(1, Submitted, 1, Success)
            }),
            Write::Task(w(2, Submitted, 1, Dispatched)),
            Write::CompleteCommand(7),
            Write::Task(w(2, Running, 1, Success)),
            Write::Task(TaskWrite {
                attempt: Some(2),
                failover: true,
                worker: Some("w2".into()),
                ..w(3, Running, 1, Dispatched)
            }),
        ]
    );
}
