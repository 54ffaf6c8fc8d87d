//! Who goes next: serial workflows one at a time, backfills in order and up to their width.

use super::*;

fn waiter(id: i64, workflow: &str, execution: Execution) -> Waiter {
    Waiter { id, workflow: workflow.into(), execution, priority: Priority::Medium, backfill: None }
}

fn released(d: &Decisions) -> Vec<i64> {
    d.runs.iter().filter_map(|d| if let Decision::Release(id) = d { Some(*id) } else { None }).collect()
}

#[test]
fn a_serial_wait_workflow_starts_its_oldest_waiter_once_none_is_active() {
    let mut s = Snapshot {
        waiters: vec![waiter(5, "etl", Execution::SerialWait), waiter(6, "etl", Execution::SerialWait)],
        ..Snapshot::default()
    };
    s.active.insert("etl".into(), 4);
    assert_eq!(decide(&s), Decisions::default(), "run 4 is active: both wait");
    s.active.clear();
    assert_eq!(released(&decide(&s)), [5], "one at a time, oldest first");
    // parallel workflows are not held by it
    s.waiters.push(waiter(7, "other", Execution::Parallel));
    assert_eq!(released(&decide(&s)), [5, 7]);
}

#[test]
fn serial_priority_starts_the_most_urgent_waiter() {
    let mut low = waiter(5, "etl", Execution::SerialPriority);
    low.priority = Priority::Low;
    let mut high = waiter(6, "etl", Execution::SerialPriority);
    high.priority = Priority::High;
    let s = Snapshot { waiters: vec![low, high], ..Snapshot::default() };
    assert_eq!(released(&decide(&s)), [6]);
}

#[test]
fn serial_discard_discards_a_run_that_would_overlap() {
    let mut s = Snapshot { waiters: vec![waiter(5, "etl", Execution::SerialDiscard)], ..Snapshot::default() };
    s.active.insert("etl".into(), 4);
    assert_eq!(
        decide(&s).runs,
        [Decision::Discard { run: 5, reason: "discarded: run 4 of workflow etl was active (serial_discard)".into() }]
    );
    // two new at once with none active: the oldest runs, the other is discarded
    s.active.clear();
    s.waiters.push(waiter(6, "etl", Execution::SerialDiscard));
    let d = decide(&s);
    assert_eq!(released(&d), [5]);
    assert!(matches!(&d.runs[1], Decision::Discard { run: 6, .. }), "{d:?}");
}

#[test]
fn a_backfill_releases_up_to_its_width_in_order_and_stops_at_a_failure() {
    let dates = |ids: &[i64]| -> Vec<Waiter> {
        ids.iter()
            .enumerate()
            .map(|(seq, id)| Waiter { backfill: Some((1, seq as i32)), ..waiter(*id, "etl", Execution::Parallel) })
            .collect()
    };
    let mut s = Snapshot {
        waiters: dates(&[12, 11, 13, 14]),
        backfills: vec![Backfill { id: 1, parallel: 2, keep_going: false, active: 1, failed: None }],
        ..Snapshot::default()
    };
    assert_eq!(released(&decide(&s)), [12], "one more beside the active one, by sequence not id");
    s.backfills[0].failed = Some(10);
    let d = decide(&s);
    assert_eq!(d.runs.len(), 4);
    assert!(
        d.runs.iter().all(
            |r| matches!(r, Decision::Stop { reason, .. } if reason == "backfill 1 stopped: run 10 did not succeed")
        )
    );
    assert!(d.backfills.is_empty(), "over once its active run ends");
    s.backfills[0].active = 0;
    assert_eq!(
        decide(&s).backfills,
        [BackfillEnd { id: 1, succeeded: false, reason: Some("backfill 1 stopped: run 10 did not succeed".into()) }]
    );
    // keep going: the failure does not stop it; it ends failed once every date ran
    s.backfills[0].keep_going = true;
    assert_eq!(released(&decide(&s)), [12, 11]);
    s.waiters.clear();
    assert_eq!(
        decide(&s).backfills,
        [BackfillEnd { id: 1, succeeded: false, reason: Some("run 10 did not succeed".into()) }]
    );
    s.backfills[0].failed = None;
    assert_eq!(decide(&s).backfills, [BackfillEnd { id: 1, succeeded: true, reason: None }]);
}

#[test]
fn a_backfill_of_a_serial_workflow_waits_for_both_turns() {
    let s = Snapshot {
        waiters: vec![Waiter { backfill: Some((1, 0)), ..waiter(3, "etl", Execution::SerialWait) }],
        active: BTreeMap::from([("etl".to_string(), 2)]),
        backfills: vec![Backfill { id: 1, parallel: 3, keep_going: false, active: 0, failed: None }],
    };
    assert_eq!(released(&decide(&s)), Vec::<i64>::new(), "the workflow's run 2 is active");
}
