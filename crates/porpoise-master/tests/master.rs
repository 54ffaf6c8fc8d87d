//! The master's own rules, in one process and in milliseconds: worker selection and slot
//! counting, worker groups, the answers a worker can give a dispatch, the queue's priority
//! order, command wake-ups, and recovery from work a failure left half done. A real master
//! (its gRPC services, runners, queue and dispatcher) runs against virtual workers.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use porpoise_core::ExecutionState::{self, *};
use porpoise_master::{MasterConfig, WorkerSelector};
use porpoise_proto::v1::TaskOutcome;
use porpoise_store::{NewRun, PgStore, Store};
use porpoise_testkit::TestPostgres;
use support::{Answer, Cluster, Op, VirtualWorker, When, states, wait_for};

/// A workflow of `n` independent tasks `t0`, `t1`, … in worker group `group`.
fn independent(name: &str, n: usize, group: &str) -> String {
    let mut yaml = format!("name: {name}\ntasks:\n");
    for i in 0..n {
        yaml.push_str(&format!("  - {{ name: t{i}, command: 'true', worker_group: {group} }}\n"));
    }
    yaml
}

/// How many of `worker`'s accepted attempts there are.
fn count(worker: &VirtualWorker) -> usize {
    worker.accepted().len()
}

/// Waits until the master has seen `n` live workers in `group`.
async fn workers_seen(cluster: &Cluster, group: &str, n: usize) {
    let sample = format!("porpoise_workers{{group=\"{group}\"}}");
    wait_for(&format!("the master to see {n} workers in {group}"), || {
        (cluster.try_metric(&sample) == Some(n as f64)).then_some(())
    })
    .await;
}

/// Waits until `n` tasks wait for a worker of their group.
async fn tasks_waiting(cluster: &Cluster, n: usize) {
    wait_for(&format!("{n} tasks to wait for a worker"), || {
        (cluster.metric("porpoise_tasks_waiting_for_worker") == n as f64).then_some(())
    })
    .await;
}

mod selection {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_robin_takes_the_groups_workers_in_turn() {
        let cluster = Cluster::start(WorkerSelector::RoundRobin).await;
        let mut workers = Vec::new();
        for _ in 0..3 {
            let w = cluster.auto_worker("default", 10, TaskOutcome::Success).await;
            workers.push(w);
        }
        workers_seen(&cluster, "default", 3).await;
        let run = cluster.run(&independent("spread", 9, "default")).await;
        assert_eq!(cluster.run_ends(run).await.state, Success);
        let counts: Vec<usize> = workers.iter().map(count).collect();
        assert_eq!(counts, [3, 3, 3], "round-robin gives each of the group's workers its turn");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lowest_load_weighs_the_heartbeat_load_and_the_slots_in_use() {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let busy = VirtualWorker::start(&cluster.registry, "default", 4, 80.0, None).await;
        let idle = VirtualWorker::start(&cluster.registry, "default", 4, 10.0, None).await;
        workers_seen(&cluster, "default", 2).await;
        let run = cluster.run(&independent("weighed", 4, "default")).await;
        // load 10% + n/4 of the slots against 80%: the idle machine takes three, then the busy one
        wait_for("four tasks to be accepted", || (count(&busy) + count(&idle) == 4).then_some(())).await;
        assert_eq!((count(&idle), count(&busy)), (3, 1));
        for w in [&busy, &idle] {
            for a in w.running() {
                w.finish(a, TaskOutcome::Success).await;
            }
        }
        assert_eq!(cluster.run_ends(run).await.state, Success);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_uses_every_worker_of_the_group_within_its_slots() {
        let cluster = Cluster::start(WorkerSelector::Random).await;
        let a = cluster.worker("default", 2).await;
        let b = cluster.worker("default", 2).await;
        let elsewhere = cluster.worker("other", 8).await;
        for w in [&a, &b, &elsewhere] {
            w.auto(TaskOutcome::Success);
        }
        workers_seen(&cluster, "default", 2).await;
        let run = cluster.run(&independent("scatter", 40, "default")).await;
        assert_eq!(cluster.run_ends(run).await.state, Success);
        assert_eq!(count(&a) + count(&b), 40);
        // the chance that one of two workers gets none of 40 tasks at random is 2^-39
        assert!(count(&a) > 0 && count(&b) > 0, "random chose only one worker: {} and {}", count(&a), count(&b));
        assert!(elsewhere.received().is_empty(), "a worker of another group was chosen");
        assert_eq!(a.over_slots() + b.over_slots(), 0, "a worker was sent more tasks than it has slots");
    }
}

mod slots_and_groups {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_never_gets_more_tasks_than_its_slots_and_a_freed_slot_is_reused() {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let w = cluster.worker("default", 2).await;
        workers_seen(&cluster, "default", 1).await;
        let run = cluster.run(&independent("narrow", 5, "default")).await;
        w.wait_accepted(2).await;
        tasks_waiting(&cluster, 3).await;
        assert_eq!(count(&w), 2, "only two slots");
        for done in 0..5 {
            let first = w.running()[0];
            w.finish(first, TaskOutcome::Success).await;
            let expected = (done + 3).min(5);
            w.wait_accepted(expected).await;
            tasks_waiting(&cluster, 5 - expected).await;
        }
        assert_eq!(cluster.run_ends(run).await.state, Success);
        assert_eq!(w.most_running(), 2);
        assert_eq!(w.over_slots(), 0, "the master sent a dispatch beyond the free slots");
        assert_eq!(w.received().len(), 5, "one dispatch per task");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_wait_for_a_worker_of_their_group() {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let plain = cluster.auto_worker("default", 4, TaskOutcome::Success).await;
        workers_seen(&cluster, "default", 1).await;
        let yaml = "name: grouped\ntasks:\n  - { name: plain, command: 'true' }\n  - { name: gpu-job, command: 'true', worker_group: gpu }\n";
        let run = cluster.run(yaml).await;
        tasks_waiting(&cluster, 1).await;
        wait_for("the plain task to succeed", || (count(&plain) == 1).then_some(())).await;
        let gpu = cluster.auto_worker("gpu", 1, TaskOutcome::Success).await;
        assert_eq!(cluster.run_ends(run).await.state, Success);
        assert_eq!(gpu.accepted_names(), ["gpu-job"]);
        assert_eq!(plain.accepted_names(), ["plain"], "a task went to a worker outside its group");
        assert_eq!(cluster.metric("porpoise_tasks_waiting_for_worker"), 0.0);
    }
}

mod answers {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_sends_the_task_back_to_the_queue_and_it_is_dispatched_again() {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let w = cluster.worker("default", 4).await;
        w.script(&[Answer::Full, Answer::Full]);
        w.auto(TaskOutcome::Success);
        workers_seen(&cluster, "default", 1).await;
        let run = cluster.run(&independent("refused", 1, "default")).await;
        assert_eq!(cluster.run_ends(run).await.state, Success);
        let received = w.received();
        assert_eq!(received.len(), 3, "two refusals, then accepted");
        assert!(received.iter().all(|r| r.attempt == 1), "a refused dispatch is not a new attempt");
        assert_eq!(cluster.metric("porpoise_tasks_dispatch_failed_total{reason=\"full\"}"), 2.0);
        assert_eq!(cluster.task(run, "t0").await.attempt, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_worker_is_passed_over_for_one_with_a_free_slot() {
        // lowest-load would choose the same idle worker every time, were it not passed over
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let a = cluster.worker("default", 4).await;
        let b = cluster.worker("default", 4).await;
        for w in [&a, &b] {
            w.answer(Answer::Full);
        }
        workers_seen(&cluster, "default", 2).await;
        let run = cluster.run(&independent("passed-over", 1, "default")).await;
        wait_for("both workers to refuse once", || {
            (!a.received().is_empty() && !b.received().is_empty()).then_some(())
        })
        .await;
        b.auto(TaskOutcome::Success);
        b.answer(Answer::Accept);
        assert_eq!(cluster.run_ends(run).await.state, Success);
        assert_eq!(b.accepted_names(), ["t0"]);
        // after each refusal the other worker is tried: they alternate
        let a_tries = a.received().len();
        let b_tries = b.received().len();
        assert!(a_tries.abs_diff(b_tries) <= 1, "refusals did not alternate: {a_tries} and {b_tries}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_draining_worker_gets_nothing_more_until_it_joins_again() {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let draining = cluster.worker("default", 8).await;
        draining.answer(Answer::Draining);
        workers_seen(&cluster, "default", 1).await;
        let run = cluster.run(&independent("drained", 3, "default")).await;
        // each task is refused at most once (those already on their way when the first answer
        // came back); then the worker is left alone and the tasks wait
        tasks_waiting(&cluster, 3).await;
        let refused: Vec<i64> = draining.received().iter().map(|r| r.task_instance_id).collect();
        let mut distinct = refused.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), refused.len(), "a task was sent to a draining worker twice: {refused:?}");
        assert_eq!(cluster.metric("porpoise_tasks_dispatch_failed_total{reason=\"draining\"}"), refused.len() as f64);
        let fresh = cluster.auto_worker("default", 8, TaskOutcome::Success).await;
        assert_eq!(cluster.run_ends(run).await.state, Success);
        assert_eq!(fresh.accepted().len(), 3);
        assert_eq!(draining.received().len(), refused.len(), "a draining worker was sent more tasks");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invalid_fails_the_task_with_the_workers_reason() {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let w = cluster.worker("default", 4).await;
        w.answer(Answer::Invalid);
        workers_seen(&cluster, "default", 1).await;
        let yaml = "name: refused\ntasks:\n  - { name: bad, command: 'true', retries: 0 }\n  - { name: after, command: 'true', depends_on: [bad] }\n";
        let run = cluster.run(yaml).await;
        let ended = cluster.run_ends(run).await;
        assert_eq!(ended.state, Failure);
        let reason = ended.state_reason.unwrap_or_default();
        assert!(
            reason.contains("rejected by worker") && reason.contains("the virtual worker refuses this task"),
            "the run's reason does not carry the worker's: {reason}"
        );
        assert_eq!(states(&cluster.tasks(run).await), [("bad".to_string(), Failure)]);
        assert_eq!(w.received().len(), 1, "an invalid task is not dispatched again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_whose_worker_is_gone_goes_to_another() {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let doomed = cluster.worker("edge", 4).await;
        doomed.stop_serving();
        workers_seen(&cluster, "edge", 1).await;
        let run = cluster.run(&independent("orphaned", 1, "edge")).await;
        // registered but unreachable: the dispatch is resent to it while it stays registered
        wait_for("a dispatch to fail", || {
            (cluster.metric("porpoise_tasks_dispatch_failed_total{reason=\"unreachable\"}") >= 2.0).then_some(())
        })
        .await;
        assert_eq!(cluster.task(run, "t0").await.state, Dispatched);
        let heir = cluster.auto_worker("edge", 4, TaskOutcome::Success).await;
        doomed.leave().await;
        assert_eq!(cluster.run_ends(run).await.state, Success);
        assert_eq!(heir.accepted_names(), ["t0"]);
        let task = cluster.task(run, "t0").await;
        // requeued (same attempt) or failed over (a new one), whichever came first: no retry used
        assert_eq!((task.attempt - task.failovers, task.worker_addr.as_deref()), (1, Some(heir.addr.as_str())));
    }
}

mod queue {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_tasks_leave_by_workflow_priority_then_task_priority() {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let mut yaml = String::from("name: many\npriority: medium\ntasks:\n");
        for p in ["low", "highest", "lowest", "medium", "high"] {
            yaml.push_str(&format!("  - {{ name: m-{p}, command: 'true', priority: {p}, worker_group: one }}\n"));
        }
        let medium = cluster.run(&yaml).await;
        tasks_waiting(&cluster, 5).await;
        let urgent = cluster
            .run("name: urgent\npriority: high\ntasks:\n  - { name: u-lowest, command: 'true', priority: lowest, worker_group: one }\n")
            .await;
        let idle = cluster
            .run("name: idle\npriority: lowest\ntasks:\n  - { name: i-highest, command: 'true', priority: highest, worker_group: one }\n")
            .await;
        tasks_waiting(&cluster, 7).await;
        // the queue's depth by workflow priority: five medium, one high, one lowest
        for (priority, depth) in [("highest", 0.0), ("high", 1.0), ("medium", 5.0), ("low", 0.0), ("lowest", 1.0)] {
            assert_eq!(
                cluster.metric(&format!("porpoise_task_queue_depth{{priority=\"{priority}\"}}")),
                depth,
                "{priority}"
            );
        }
        let w = cluster.worker("one", 1).await;
        for n in 1..=7 {
            let accepted = w.wait_accepted(n).await;
            w.finish(accepted[n - 1], TaskOutcome::Success).await;
        }
        for run in [medium, urgent, idle] {
            assert_eq!(cluster.run_ends(run).await.state, Success);
        }
        assert_eq!(
            w.accepted_names(),
            ["u-lowest", "m-highest", "m-high", "m-medium", "m-low", "m-lowest", "i-highest"],
            "the workflow's priority first, then the task's"
        );
        for priority in ["high", "medium", "lowest"] {
            assert_eq!(cluster.metric(&format!("porpoise_task_queue_depth{{priority=\"{priority}\"}}")), 0.0);
        }
    }
}

mod commands {
    use super::*;

    /// Requests a run of workflow `name` straight through `store`, as another master's
    /// AdminService would; returns the run's id.
    pub(super) async fn request_run(store: &dyn porpoise_store::Store, name: &str) -> i64 {
        let def = store.latest_definition(name).await.expect("read").expect("applied");
        let run = NewRun {
            workflow_definition_id: def.id,
            workflow_name: def.name.clone(),
            priority: Default::default(),
            params: Default::default(),
            schedule_time: chrono::Utc::now(),
            timezone: "UTC".into(),
            kind: Default::default(),
            execution: Default::default(),
            backfill: None,
        };
        store.create_run(&run).await.expect("request a run").0.id
    }

    /// The fallback poll is an hour: a run that starts at all was started by the wake-up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_requested_elsewhere_wakes_the_master_through_postgres() {
        let pg = TestPostgres::shared();
        let url = pg.fresh_database().await;
        let store = PgStore::connect(&url, 4).await.expect("connect to Postgres");
        let config = MasterConfig { command_poll: Duration::from_secs(3600), ..Cluster::config() };
        let cluster = Cluster::start_on(config, Arc::new(store)).await;
        let _w = cluster.auto_worker("default", 4, TaskOutcome::Success).await;
        workers_seen(&cluster, "default", 1).await;
        // a first run, through this master: it is listening once that one has started
        let first = cluster.run(&independent("woken", 1, "default")).await;
        assert_eq!(cluster.run_ends(first).await.state, Success);

        let elsewhere = PgStore::connect(&url, 1).await.expect("connect to Postgres");
        let run = request_run(&elsewhere, "woken").await;
        assert_eq!(cluster.run_ends(run).await.state, Success);
    }
}

mod waits {
    use porpoise_proto::v1::WaitRunRequest;
    use porpoise_proto::v1::admin_service_client::AdminServiceClient;

    use super::*;

    /// A wait for a run, asked of a master that does not run it, is answered as soon as the
    /// run ends: the database tells every master. The wait may take 60 s; the test's deadline
    /// for the answer is 20 s, which only the run's end (milliseconds away) can meet.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wait_on_another_masters_run_is_answered_when_the_run_ends() {
        let pg = TestPostgres::shared();
        let url = pg.fresh_database().await;
        let store = PgStore::connect(&url, 4).await.expect("connect to Postgres");
        let cluster = Cluster::start_on(Cluster::config(), Arc::new(store)).await;
        let other = cluster.extra_master().await;
        let w = cluster.worker("default", 4).await;
        workers_seen(&cluster, "default", 1).await;
        let run = cluster.run(&independent("waited", 1, "default")).await;
        let attempt = w.wait_accepted(1).await[0];
        let owner = cluster.store.workflow_instance(run).await.expect("read").and_then(|r| r.owner);
        let bystander = if owner.as_deref() == Some(cluster.master.addr.as_str()) {
            other.addr.clone()
        } else {
            cluster.master.addr.clone()
        };
        let mut admin = AdminServiceClient::connect(format!("http://{bystander}")).await.expect("connect");
        let now = admin.wait_run(WaitRunRequest { run_id: run, timeout_ms: 0 }).await.expect("wait").into_inner();
        assert!(!now.ended, "the run still runs: {now:?}");
        let waiting = tokio::spawn(async move {
            admin.wait_run(WaitRunRequest { run_id: run, timeout_ms: 60_000 }).await.map(|r| r.into_inner())
        });
        w.finish(attempt, TaskOutcome::Success).await;
        let reply = tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .expect("the wait was not answered when the run ended")
            .expect("join")
            .expect("the wait is answered");
        assert!(reply.ended, "{reply:?}");
        assert_eq!(reply.run.map(|r| r.state), Some("success".to_string()));
        other.stop().await;
    }
}

mod sqlite_wakeups {
    use super::commands::request_run;
    use super::*;

    /// On SQLite the store itself wakes the master for a run requested through it (the fallback
    /// poll is an hour).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_requested_through_the_store_wakes_the_master() {
        let config = MasterConfig { command_poll: Duration::from_secs(3600), ..Cluster::config() };
        let cluster = Cluster::start_with(config).await;
        let _w = cluster.auto_worker("default", 4, TaskOutcome::Success).await;
        workers_seen(&cluster, "default", 1).await;
        let first = cluster.run(&independent("woken", 1, "default")).await;
        assert_eq!(cluster.run_ends(first).await.state, Success);
        let run = request_run(&*cluster.store, "woken").await;
        assert_eq!(cluster.run_ends(run).await.state, Success);
    }
}

mod half_done_work {
    use super::*;

    const CHAIN: &str =
        "name: chain\ntasks:\n  - { name: a, command: 'true' }\n  - { name: b, command: 'true', depends_on: [a] }\n";

    fn attempts(tasks: &[porpoise_store::TaskInstance]) -> HashMap<String, (ExecutionState, i32)> {
        tasks.iter().map(|t| (t.task_name.clone(), (t.state, t.attempt))).collect()
    }

    /// Every kind of write a run makes.
    const WRITES: [Op; 6] = [
        Op::WorkflowTo(Running),
        Op::CreateTasks,
        Op::TaskTo(Dispatched),
        Op::TaskTo(Running),
        Op::TaskTo(Success),
        Op::WorkflowTo(Success),
    ];

    /// Runs the chain with each of [`WRITES`] failing `times` times at `when`, and checks that
    /// the run succeeded as if nothing had happened.
    async fn chain_survives(when: When, times: u32) {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let w = cluster.auto_worker("default", 4, TaskOutcome::Success).await;
        workers_seen(&cluster, "default", 1).await;
        for op in WRITES {
            cluster.store.fail(op, when, times);
        }
        let run = cluster.run(CHAIN).await;
        assert_eq!(cluster.run_ends(run).await.state, Success);
        for op in WRITES {
            assert_eq!(cluster.store.fired(op), times as usize, "fault {op:?} did not fire {times} times");
        }
        let tasks = cluster.tasks(run).await;
        assert_eq!(tasks.len(), 2, "task instances were created twice: {tasks:?}");
        assert_eq!(attempts(&tasks), HashMap::from([("a".into(), (Success, 1)), ("b".into(), (Success, 1))]));
        assert_eq!(w.accepted_names(), ["a", "b"], "each task runs once");
        let letters = cluster.store.dead_letters(10).await.expect("read dead letters");
        assert!(letters.is_empty(), "dead-lettered: {letters:?}");
    }

    /// The claim of a run's command committed, but its answer was lost: the run is this
    /// master's all the same (claiming it and owning it are one commit), and the master's next
    /// sweep starts it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_whose_answer_was_lost_still_starts_the_run() {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let w = cluster.auto_worker("default", 4, TaskOutcome::Success).await;
        workers_seen(&cluster, "default", 1).await;
        cluster.store.fail(Op::ClaimCommands, When::AnswerLost, 1);
        let run = cluster.run(CHAIN).await;
        assert_eq!(cluster.run_ends(run).await.state, Success);
        assert_eq!(cluster.store.fired(Op::ClaimCommands), 1);
        assert_eq!(w.accepted_names(), ["a", "b"], "each task runs once");
    }

    /// Each write fails before the database sees it: the runner must put its memory back as
    /// it was, or the retry would find nothing to do and the database would never catch up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_that_fail_are_retried_from_memory_as_it_was() {
        chain_survives(When::Before, 2).await;
    }

    /// Each write is committed but its answer lost: the retry must see that the database
    /// already holds it, not refuse it as a conflict nor do it twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_whose_answer_was_lost_is_recognised() {
        chain_survives(When::AnswerLost, 1).await;
    }

    /// A result is saved and its slot freed; then starting the next task fails and is
    /// retried. The retry must not free the slot again: the worker would be sent more tasks
    /// than it has slots.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retry_after_a_partial_failure_frees_the_slot_once() {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let w = cluster.worker("default", 1).await;
        workers_seen(&cluster, "default", 1).await;
        let chain = cluster.run(CHAIN).await;
        let a = w.wait_accepted(1).await[0];
        let single = cluster.run(&independent("single", 1, "default")).await;
        tasks_waiting(&cluster, 1).await;

        cluster.store.fail(Op::CreateTasks, When::Before, 3);
        w.finish(a, TaskOutcome::Success).await;
        // the freed slot goes to the waiting task; b, created on the retry, must wait for it
        let c = w.wait_accepted(2).await[1];
        wait_for("b to be created", || (cluster.store.fired(Op::CreateTasks) == 3).then_some(())).await;
        tasks_waiting(&cluster, 1).await;
        assert_eq!(w.over_slots(), 0, "a slot was freed twice: the worker was sent a task beyond its slots");

        w.finish(c, TaskOutcome::Success).await;
        let b = w.wait_accepted(3).await[2];
        w.finish(b, TaskOutcome::Success).await;
        for run in [chain, single] {
            assert_eq!(cluster.run_ends(run).await.state, Success);
        }
        assert_eq!((w.most_running(), w.over_slots()), (1, 0));
    }

    /// A sibling fails while a failed task waits an hour for its retry: the retry is called
    /// off and the run ends now.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_that_fails_calls_off_the_retries_it_was_waiting_for() {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let _w = cluster.auto_worker("default", 4, TaskOutcome::Failure).await;
        workers_seen(&cluster, "default", 1).await;
        let yaml = "name: doomed\ntasks:\n  - { name: patient, command: 'false', retries: 3, retry_interval: 1h }\n  - { name: fragile, command: 'false' }\n";
        let run = cluster.run(yaml).await;
        let ended = cluster.run_ends(run).await;
        assert_eq!(ended.state, Failure);
        assert_eq!(
            attempts(&cluster.tasks(run).await),
            HashMap::from([("patient".into(), (Failure, 1)), ("fragile".into(), (Failure, 1))])
        );
    }
}

mod acks {
    use porpoise_proto::v1::AckStatus;

    use super::*;

    /// A worker hears HANDLED for an event only once the transaction that saved it has
    /// committed: while the commit of a task's result is held in the database, the worker's
    /// report waits (and the events that arrive meanwhile wait behind it); once the commit
    /// lands, every report is answered and everything answered is saved.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_result_is_acked_only_once_its_commit_has_landed() {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let w = cluster.worker("default", 8).await;
        workers_seen(&cluster, "default", 1).await;
        let run = cluster.run(&independent("wide", 8, "default")).await;
        let attempts = w.wait_accepted(8).await;
        cluster.store.fail(Op::TaskTo(Success), When::Held, 1);
        let mut first = tokio::spawn({
            let (w, attempt) = (w.clone(), attempts[0]);
            async move { w.report_once(&[attempt], TaskOutcome::Success).await }
        });
        let held =
            wait_for("the first result's commit to reach the database", || cluster.store.held().first().cloned()).await;
        assert!(held.iter().all(|&id| id == attempts[0].0), "the held commit saves the first task: {held:?}");
        let rest = tokio::spawn({
            let (w, rest) = (w.clone(), attempts[1..].to_vec());
            async move { w.report_once(&rest, TaskOutcome::Success).await }
        });
        // an absence, so a window: an answer sent before the commit would arrive within it
        let early = tokio::time::timeout(Duration::from_millis(300), &mut first).await;
        assert!(early.is_err(), "the worker was answered before its result was committed: {early:?}");
        let saved = cluster.tasks(run).await;
        assert!(saved.iter().all(|t| t.state == Dispatched), "nothing is saved while held: {:?}", states(&saved));
        cluster.store.release();
        for report in [first, rest] {
            let answered = report.await.expect("the report completes");
            assert!(
                answered.iter().all(|(_, status)| *status == AckStatus::Handled),
                "every event handled once committed: {answered:?}"
            );
        }
        let saved = cluster.tasks(run).await;
        assert!(saved.iter().all(|t| t.state == Success), "every ACKed result is saved: {:?}", states(&saved));
        assert_eq!(cluster.run_ends(run).await.state, Success);
        assert_eq!(cluster.store.held().len(), 1, "one commit was held");
    }
}

mod group_commit {
    use porpoise_proto::v1::AckStatus;

    use super::*;

    /// What goes wrong while the eight results wait.
    #[derive(PartialEq)]
    enum Twist {
        None,
        /// Run 2 is handed to another master.
        Steal,
        /// The database cannot be reached for their transaction.
        Outage,
    }

    /// Ten one-task runs whose tasks a worker holds; the results of runs 0 and 1 are reported
    /// and their commits held at the gate, which keeps the committer's transactions busy while
    /// the other eight runs' results arrive and wait; then `twist`. Returns the runs, and the
    /// answers to the eight results once the gate opens.
    async fn eight_results_wait_together(cluster: &Cluster, twist: Twist) -> (Vec<i64>, Vec<(String, AckStatus)>) {
        let w = cluster.worker("default", 10).await;
        workers_seen(cluster, "default", 1).await;
        let mut runs = Vec::new();
        for _ in 0..10 {
            runs.push(cluster.run(&independent("single", 1, "default")).await);
        }
        w.wait_accepted(10).await;
        let mut attempts = Vec::new();
        for &run in &runs {
            let task = cluster.task(run, "t0").await;
            attempts.push((task.id, task.attempt));
        }
        cluster.store.fail(Op::TaskTo(Success), When::Held, 2);
        let mut first = Vec::new();
        for (n, &attempt) in attempts[..2].iter().enumerate() {
            // one at a time, so that each takes a transaction of its own
            first.push(tokio::spawn({
                let w = w.clone();
                async move { w.report_once(&[attempt], TaskOutcome::Success).await }
            }));
            wait_for("the result's transaction to be held", || (cluster.store.held().len() == n + 1).then_some(()))
                .await;
        }
        if twist == Twist::Steal {
            let run = cluster.store.workflow_instance(runs[2]).await.expect("read").expect("run");
            cluster
                .store
                .take_over_workflow_instance(runs[2], &cluster.master.addr, run.epoch, "10.9.9.9:1")
                .await
                .expect("another master takes run 2");
        }
        let rest = tokio::spawn({
            let (w, eight) = (w.clone(), attempts[2..].to_vec());
            async move { w.report_once(&eight, TaskOutcome::Success).await }
        });
        wait_for("the eight results to wait for a transaction", || {
            (cluster.metric("porpoise_persist_waiting") == 8.0).then_some(())
        })
        .await;
        if twist == Twist::Outage {
            cluster.store.fail(Op::TaskTo(Success), When::Before, 1);
        }
        cluster.store.release();
        for report in first {
            let answered = report.await.expect("the report completes");
            assert!(answered.iter().all(|(_, s)| *s == AckStatus::Handled), "{answered:?}");
        }
        (runs, rest.await.expect("the report completes"))
    }

    /// Runs whose results wait together are saved in one transaction, and each is answered
    /// HANDLED only after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_of_many_runs_that_wait_together_are_saved_in_one_transaction() {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let (runs, answered) = eight_results_wait_together(&cluster, Twist::None).await;
        assert!(answered.iter().all(|(_, s)| *s == AckStatus::Handled), "{answered:?}");
        assert_eq!(cluster.store.together(), [(8, true)], "the eight results in one transaction");
        for run in runs {
            assert_eq!(cluster.run_ends(run).await.state, Success);
        }
    }

    /// One run in the group that another master owns now spoils the transaction: nothing of it
    /// is written, and then each run is saved alone — the seven runs still owned succeed, and
    /// the taken run's result is sent on to its new owner, not written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_taken_over_in_a_group_commit_spoils_only_its_own_writes() {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let (runs, answered) = eight_results_wait_together(&cluster, Twist::Steal).await;
        assert_eq!(cluster.store.together(), [(8, false)], "the group was refused as a whole");
        let taken = format!("{}-", cluster.task(runs[2], "t0").await.id);
        for (event, status) in &answered {
            // the taken run's events go to its new owner; the others are saved
            let expected = if event.starts_with(&taken) { AckStatus::RetryLater } else { AckStatus::Handled };
            assert_eq!(*status, expected, "{event}: {answered:?}");
        }
        for (i, &run) in runs.iter().enumerate() {
            if i == 2 {
                let task = cluster.task(run, "t0").await;
                assert_eq!(task.state, Dispatched, "the taken run's result is not written by its old owner");
            } else {
                assert_eq!(cluster.run_ends(run).await.state, Success, "run {i}");
            }
        }
    }

    /// An outage that fails a group's transaction is every run's answer at once: each worker
    /// hears RETRY_LATER straight away (no run's writes wait out the outage alone, one after
    /// another), each runner retries on its own, and every result is saved in the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outage_in_a_group_commit_is_every_runs_answer_and_each_retries() {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let (runs, answered) = eight_results_wait_together(&cluster, Twist::Outage).await;
        assert_eq!(cluster.store.together().first(), Some(&(8, false)), "the group met the outage");
        assert!(answered.iter().all(|(_, s)| *s == AckStatus::RetryLater), "{answered:?}");
        for run in runs {
            assert_eq!(cluster.run_ends(run).await.state, Success, "saved once the database answers");
        }
    }
}

mod worker_failover {
    use super::*;

    /// The worker running a task leaves and stays away: after the grace period the task runs
    /// again, as a new attempt, on another worker, without using up a retry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_on_a_lost_worker_runs_again_elsewhere_without_using_a_retry() {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let lost = cluster.worker("default", 4).await;
        workers_seen(&cluster, "default", 1).await;
        let run = cluster.run(&independent("failover", 2, "default")).await;
        lost.wait_accepted(2).await;
        let heir = cluster.auto_worker("default", 4, TaskOutcome::Success).await;
        workers_seen(&cluster, "default", 2).await;
        lost.stop_serving();
        lost.leave().await;
        assert_eq!(cluster.run_ends(run).await.state, Success);
        for name in ["t0", "t1"] {
            let task = cluster.task(run, name).await;
            assert_eq!((task.attempt, task.failovers), (2, 1), "{task:?}");
            assert_eq!(task.worker_addr.as_deref(), Some(heir.addr.as_str()));
            let warning = task.warning.unwrap_or_default();
            assert!(warning.contains("attempt 1 failed over") && warning.contains(&lost.addr), "{warning}");
        }
        assert_eq!(heir.accepted().iter().map(|a| a.1).collect::<Vec<_>>(), [2, 2]);
        assert_eq!(cluster.metric("porpoise_task_attempts_failed_over_total"), 2.0);
        assert_eq!(cluster.metric("porpoise_failovers_total{kind=\"worker\"}"), 1.0);
    }

    /// A worker back within the grace period keeps its tasks: nothing runs twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_back_within_the_grace_period_keeps_its_tasks() {
        let config = MasterConfig { worker_failover_grace: Duration::from_secs(3600), ..Cluster::config() };
        let cluster = Cluster::start_with(config).await;
        let w = cluster.worker("default", 4).await;
        workers_seen(&cluster, "default", 1).await;
        let run = cluster.run(&independent("blip", 1, "default")).await;
        let attempt = w.wait_accepted(1).await[0];
        w.leave().await;
        workers_seen(&cluster, "default", 0).await;
        w.rejoin().await;
        workers_seen(&cluster, "default", 1).await;
        w.finish(attempt, TaskOutcome::Success).await;
        assert_eq!(cluster.run_ends(run).await.state, Success);
        let task = cluster.task(run, "t0").await;
        assert_eq!((task.attempt, task.failovers), (1, 0));
        assert_eq!(cluster.metric("porpoise_failovers_total{kind=\"worker\"}"), 0.0);
    }
}

mod restarts {
    use super::*;

    /// Before the restart each task is in another state the database can hold: running on a
    /// worker, dispatched without an answer, waiting for a worker, waiting for its retry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_master_resumes_its_runs_and_runs_nothing_again() {
        let mut cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let plain = cluster.worker("default", 8).await;
        let slow = cluster.worker("slow", 8).await;
        slow.answer(Answer::Hang);
        let flaky = cluster.auto_worker("flaky", 8, TaskOutcome::Failure).await;
        for group in ["default", "slow", "flaky"] {
            workers_seen(&cluster, group, 1).await;
        }
        let yaml = "name: resumed\ntasks:\n  - { name: running, command: 'true' }\n  - { name: after, command: 'true', depends_on: [running] }\n  - { name: unanswered, command: 'true', worker_group: slow }\n  - { name: waiting, command: 'true', worker_group: later }\n  - { name: retried, command: 'true', retries: 1, retry_interval: 1s, worker_group: flaky }\n";
        let run = cluster.run(yaml).await;
        plain.wait_accepted(1).await;
        tasks_waiting(&cluster, 1).await;
        wait_for("the dispatch to hang", || (slow.received().len() == 1).then_some(())).await;
        cluster
            .wait_tasks(run, "the retry to wait and the hung dispatch to be recorded", |s| {
                s.contains(&("retried".into(), Delayed)) && s.contains(&("unanswered".into(), Dispatched))
            })
            .await;

        cluster.stop_master().await;
        slow.answer(Answer::Accept);
        flaky.auto(TaskOutcome::Success);
        cluster.start_master().await;

        // the dispatch that was never answered is sent again, to the same worker, same attempt
        let unanswered = slow.wait_accepted(1).await[0];
        slow.finish(unanswered, TaskOutcome::Success).await;
        // the running task's result reaches the new master
        let running = plain.accepted()[0];
        plain.finish(running, TaskOutcome::Success).await;
        let after = plain.wait_accepted(2).await[1];
        plain.finish(after, TaskOutcome::Success).await;
        let later = cluster.auto_worker("later", 1, TaskOutcome::Success).await;
        assert_eq!(cluster.run_ends(run).await.state, Success);

        assert_eq!(plain.accepted_names(), ["running", "after"], "the running task was not run again");
        assert_eq!(slow.received().len(), 2, "the unanswered dispatch was sent once more");
        assert_eq!(slow.accepted().len(), 1);
        assert_eq!(later.accepted_names(), ["waiting"]);
        let attempts: Vec<i32> = flaky.accepted().iter().map(|a| a.1).collect();
        assert_eq!(attempts, [1, 2], "the retry waited for across the restart ran once");
        let letters = cluster.store.dead_letters(10).await.expect("read dead letters");
        assert!(letters.is_empty(), "dead-lettered: {letters:?}");
    }

    /// The worker of a running task left while the master was down: the restarted master
    /// fails the attempt over to another worker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_resumed_after_its_worker_was_lost_fails_the_attempt_over() {
        let mut cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let lost = cluster.worker("default", 4).await;
        workers_seen(&cluster, "default", 1).await;
        let run = cluster.run(&independent("orphan", 1, "default")).await;
        let attempt = lost.wait_accepted(1).await[0];
        lost.report_running(attempt).await;
        cluster.wait_tasks(run, "the task to run", |s| s == [("t0".to_string(), Running)]).await;
        cluster.stop_master().await;
        lost.stop_serving();
        lost.leave().await;
        let heir = cluster.auto_worker("default", 4, TaskOutcome::Success).await;
        cluster.start_master().await;
        assert_eq!(cluster.run_ends(run).await.state, Success);
        let task = cluster.task(run, "t0").await;
        assert_eq!((task.attempt, task.failovers, task.worker_addr.as_deref()), (2, 1, Some(heir.addr.as_str())));
    }
}

mod takeover {
    use super::*;
    use porpoise_proto::v1::GetRunRequest;
    use porpoise_proto::v1::task_event_service_client::TaskEventServiceClient;
    use porpoise_proto::v1::{AckStatus, ReportTaskEventsRequest, TaskEvent, TaskResult, task_event};
    use porpoise_registry::{Heartbeat, MemberKey};

    /// Another master took the run over while this one still ran it (this one was paused past
    /// its lease, say). This master's next write is refused; its runner stops without
    /// dead-lettering anything, and the worker is told to send the event elsewhere.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_master_whose_run_was_taken_over_writes_nothing_more_for_it() {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let w = cluster.worker("default", 4).await;
        workers_seen(&cluster, "default", 1).await;
        let run = cluster.run(&independent("fenced", 1, "default")).await;
        let (ti, attempt) = w.wait_accepted(1).await[0];
        let before = cluster.store.workflow_instance(run).await.expect("read").expect("the run");
        let owner = before.owner.clone().expect("owned");
        // the new owner is a live master (registered), so this one does not take the run back
        let _other = cluster
            .registry
            .register(MemberKey::master("127.0.0.1:9"), Heartbeat::idle(0), Duration::from_secs(60))
            .await
            .expect("register another master");
        cluster.store.take_over_workflow_instance(run, &owner, before.epoch, "127.0.0.1:9").await.expect("take over");

        let mut client =
            TaskEventServiceClient::connect(format!("http://{owner}")).await.expect("connect to the master");
        let result = TaskEvent {
            event_id: "fenced-result".into(),
            task_instance_id: ti,
            attempt,
            workflow_instance_id: run,
            kind: Some(task_event::Kind::Result(TaskResult {
                outcome: TaskOutcome::Success as i32,
                exit_code: Some(0),
                started_at_ms: 1,
                ended_at_ms: 2,
                message: String::new(),
            })),
        };
        let req = ReportTaskEventsRequest { worker_addr: w.addr.clone(), events: vec![result] };
        let ack = client.report_task_events(req).await.expect("report").into_inner().acks.remove(0);
        assert_eq!(ack.status, AckStatus::RetryLater as i32, "{ack:?}");
        let task = cluster.task(run, "t0").await;
        assert_eq!(task.state, Dispatched, "the old owner's write was refused");
        let after = cluster.store.workflow_instance(run).await.expect("read").expect("the run");
        assert_eq!(after.owner.as_deref(), Some("127.0.0.1:9"));
        wait_for("the runner to stop", || (cluster.metric("porpoise_workflow_instances_running") == 0.0).then_some(()))
            .await;
        let letters = cluster.store.dead_letters(10).await.expect("read dead letters");
        assert!(letters.is_empty(), "dead-lettered: {letters:?}");
    }

    /// A run whose owner is not a live master says that it waits to be taken over (the sweep
    /// that would take it is an hour away here), with its owner and epoch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_whose_master_is_gone_says_it_waits_to_be_taken_over() {
        let config = MasterConfig { takeover_sweep: Duration::from_secs(3600), ..Cluster::config() };
        let cluster = Cluster::start_with(config).await;
        let w = cluster.worker("default", 4).await;
        workers_seen(&cluster, "default", 1).await;
        let run = cluster.run(&independent("orphaned", 1, "default")).await;
        w.wait_accepted(1).await;
        let before = cluster.store.workflow_instance(run).await.expect("read").expect("the run");
        let owner = before.owner.clone().expect("owned");
        let mut admin = cluster.admin();
        let summary = admin.get_run(GetRunRequest { run_id: run }).await.expect("get").into_inner().run.expect("run");
        assert_eq!(
            (summary.owner.as_str(), summary.epoch, summary.awaiting_takeover),
            (owner.as_str(), before.epoch, false)
        );

        cluster.store.take_over_workflow_instance(run, &owner, before.epoch, "127.0.0.1:9").await.expect("take over");
        let summary = admin.get_run(GetRunRequest { run_id: run }).await.expect("get").into_inner().run.expect("run");
        assert_eq!(summary.owner, "127.0.0.1:9");
        assert_eq!(summary.epoch, before.epoch + 1);
        assert!(summary.awaiting_takeover, "{summary:?}");
    }

    /// A master stopped while its runner is in the middle of an event (a slow write) finishes
    /// that event before it leaves, leaves nothing running, and the other master takes the run
    /// over at once and completes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopping_master_finishes_the_event_in_hand_and_hands_the_run_over() {
        let config = MasterConfig { lease_ttl: Duration::from_secs(3600), ..Cluster::config() };
        let cluster = Cluster::start_with(config).await;
        let w = cluster.worker("default", 4).await;
        workers_seen(&cluster, "default", 1).await;
        let yaml = "name: handed\ntasks:\n  - { name: a, command: 'true' }\n  - { name: b, command: 'true', depends_on: [a] }\n";
        let run = cluster.run(yaml).await;
        let a = w.wait_accepted(1).await[0];
        // started now, it cannot have claimed the run
        let other = cluster.extra_master().await;
        cluster.store.fail(Op::TaskTo(Success), When::Slow(Duration::from_millis(500)), 1);
        let finishing = {
            let w = w.clone();
            tokio::spawn(async move { w.finish(a, TaskOutcome::Success).await })
        };
        wait_for("the result's write to begin", || (cluster.store.fired(Op::TaskTo(Success)) == 1).then_some(())).await;
        cluster.stop_master().await;
        assert_eq!(cluster.task(run, "a").await.state, Success, "the event in hand was finished");
        finishing.await.expect("the result was delivered");
        // the lease is an hour: only the stopped master leaving the registry lets the other in
        let b = w.wait_accepted(2).await[1];
        w.finish(b, TaskOutcome::Success).await;
        let ended = cluster.run_ends(run).await;
        assert_eq!((ended.state, ended.owner.as_deref()), (Success, Some(other.addr.as_str())));
        assert_eq!(w.accepted_names(), ["a", "b"], "nothing ran twice");
        other.stop().await;
    }

    /// Three masters: the owner of every run stops, the second dies right away (with its share
    /// taken over or not), and the third completes the takeover: every run completes, and
    /// nothing runs twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_master_dying_halfway_through_a_takeover_leaves_the_rest_to_a_third() {
        let cluster = Cluster::start(WorkerSelector::LowestLoad).await;
        let w = cluster.worker("default", 16).await;
        workers_seen(&cluster, "default", 1).await;
        let mut runs = Vec::new();
        for i in 0..6 {
            runs.push(cluster.run(&independent(&format!("relay-{i}"), 1, "default")).await);
        }
        w.wait_accepted(6).await;
        let second = cluster.extra_master().await;
        let third = cluster.extra_master().await;
        cluster.stop_master().await;
        second.stop().await;
        for attempt in w.running() {
            w.finish(attempt, TaskOutcome::Success).await;
        }
        for &run in &runs {
            let ended = cluster.run_ends(run).await;
            assert_eq!((ended.state, ended.owner.as_deref()), (Success, Some(third.addr.as_str())), "{ended:?}");
        }
        assert_eq!(w.accepted().len(), 6, "nothing ran twice");
        third.stop().await;
    }
}

mod application {
    use porpoise_core::engine::Control;
    use porpoise_master::app::AppError;

    use super::*;

    /// The application layer's errors say whose they are: a bad request, an unknown run or task
    /// group, or a control that makes no sense for the run's state are the user's; a database
    /// that cannot be reached is not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors_say_whether_they_are_the_users() {
        let cluster = Cluster::start(WorkerSelector::RoundRobin).await;
        let app = cluster.master.app();
        let users = [
            app.apply("x.yaml", "name: [").await.expect_err("not a spec"),
            app.run(424242).await.expect_err("no such run"),
            app.create_task_group("a b", 1, "").await.expect_err("a bad name"),
            app.create_task_group("db", 0, "").await.expect_err("no slots"),
            app.delete_task_group("nope").await.expect_err("no such group"),
            app.runs(None, Some("sideways"), 10).await.expect_err("no such state"),
            app.start_run("absent", Default::default(), None).await.expect_err("no such workflow"),
        ];
        assert!(matches!(users[1], AppError::NotFound(_)), "{:?}", users[1]);
        for e in &users {
            assert!(e.is_users(), "the user's: {e:?}");
        }
        let _worker = cluster.auto_worker("default", 4, TaskOutcome::Success).await;
        let id = cluster.run("name: quick\ntasks:\n  - { name: a, command: 'true' }\n").await;
        assert_eq!(cluster.run_ends(id).await.state, Success);
        let wrong = app.control(id, Control::Pause).await.expect_err("it has ended");
        assert_eq!(
            wrong,
            AppError::WrongState(format!("run {id} is success: only a submitted or running run can be paused"))
        );
        assert!(wrong.is_users());
        // the database goes away
        cluster.store.close().await;
        let down = app.runs(None, None, 10).await.expect_err("no database");
        assert!(matches!(down, AppError::Unavailable(_)), "{down:?}");
        assert!(!down.is_users());
    }
}
