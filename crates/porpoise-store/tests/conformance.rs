//! One suite, run against both stores: the Postgres one on a private test server and the
//! SQLite one on a file in a temporary directory.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use porpoise_core::engine::{TaskWrite, WorkflowWrite};
use porpoise_core::{ExecutionState, Priority, WorkflowSpec};
use porpoise_store::{
    ApplyOutcome, CommandKind, NewCommand, NewDeadLetter, NewTaskInstance, NewWorkflowInstance, PgStore, SqliteStore,
    Store, StoreError,
};
use porpoise_testkit::TestPostgres;

use ExecutionState::*;

async fn postgres() -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    let url = TestPostgres::shared().fresh_database().await;
    let store = PgStore::connect(&url, 16).await.expect("connect to the test Postgres");
    (Arc::new(store), None)
}

async fn sqlite() -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(&dir.path().join("porpoise.db")).await.expect("open SQLite");
    (Arc::new(store), Some(dir))
}

fn spec(name: &str, command: &str) -> WorkflowSpec {
    let yaml = format!(
        "name: {name}\ntasks:\n  - name: a\n    command: {command}\n  - name: b\n    command: echo b\n    depends_on: [a]\n"
    );
    WorkflowSpec::parse("test.yaml", &yaml).expect("valid spec")
}

async fn definition(store: &dyn Store, name: &str) -> i64 {
    store.apply_definition(&spec(name, "echo a"), "yaml").await.expect("apply").definition_id()
}

async fn instance(store: &dyn Store, owner: &str) -> i64 {
    let def = definition(store, "wf").await;
    let new = NewWorkflowInstance {
        workflow_definition_id: def,
        command_id: None,
        workflow_name: "wf".into(),
        owner: owner.into(),
        priority: Priority::Medium,
        params: BTreeMap::from([("day".into(), "2026-01-01".into())]),
        state: Submitted,
    };
    store.create_workflow_instance(&new).await.expect("create instance").id
}

fn command(def: i64, priority: Priority) -> NewCommand {
    NewCommand {
        kind: CommandKind::StartWorkflow,
        workflow_definition_id: def,
        workflow_instance_id: None,
        params: BTreeMap::new(),
        priority,
    }
}

fn wf(expected: ExecutionState, new: ExecutionState) -> WorkflowWrite {
    WorkflowWrite { expected, new, reason: None, started_at: None, ended_at: None }
}

async fn definitions_are_versioned(store: Arc<dyn Store>) {
    let v1 = store.apply_definition(&spec("etl", "echo 1"), "v1").await.expect("apply v1");
    assert!(matches!(v1, ApplyOutcome::Created { version: 1, .. }), "{v1:?}");
    let again = store.apply_definition(&spec("etl", "echo 1"), "v1 reformatted").await.expect("re-apply");
    assert_eq!(again, ApplyOutcome::Unchanged { id: v1.definition_id(), version: 1 });
    let v2 = store.apply_definition(&spec("etl", "echo 2"), "v2").await.expect("apply v2");
    assert!(matches!(v2, ApplyOutcome::Updated { version: 2, .. }), "{v2:?}");
    store.apply_definition(&spec("other", "echo"), "o").await.expect("apply other");

    let latest = store.latest_definition("etl").await.expect("latest").expect("etl exists");
    assert_eq!((latest.version, latest.spec_yaml.as_str(), latest.task_count), (2, "v2", 2));
    let parsed: WorkflowSpec = serde_json::from_str(&latest.spec_json).expect("canonical JSON");
    assert_eq!(parsed, spec("etl", "echo 2"));
    let first = store.definition(v1.definition_id()).await.expect("by id").expect("v1 kept");
    assert_eq!(first.version, 1);
    let all: Vec<(String, i32)> =
        store.list_definitions().await.expect("list").into_iter().map(|d| (d.name, d.version)).collect();
    assert_eq!(all, [("etl".to_string(), 2), ("other".to_string(), 1)]);
    assert!(store.latest_definition("missing").await.expect("query").is_none());
}

async fn commands_are_claimed_by_priority_then_age(store: Arc<dyn Store>) {
    let def = definition(&*store, "wf").await;
    let low = store.insert_command(&command(def, Priority::Low)).await.expect("insert");
    let medium1 = store.insert_command(&command(def, Priority::Medium)).await.expect("insert");
    let high = store.insert_command(&command(def, Priority::High)).await.expect("insert");
    let medium2 = store.insert_command(&command(def, Priority::Medium)).await.expect("insert");
    let claimed = store.claim_commands("master-1", 3).await.expect("claim");
    let ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    assert_eq!(ids, [high, medium1, medium2]);
    assert!(claimed.iter().all(|c| c.claimed_by.as_deref() == Some("master-1") && c.claimed_at.is_some()));
    let rest = store.claim_commands("master-2", 10).await.expect("claim");
    assert_eq!(rest.iter().map(|c| c.id).collect::<Vec<_>>(), [low]);
    assert!(store.claim_commands("master-2", 10).await.expect("claim").is_empty());
}

async fn concurrent_claimers_claim_each_command_once(store: Arc<dyn Store>) {
    const COMMANDS: usize = 1000;
    const CLAIMERS: usize = 8;
    let def = definition(&*store, "wf").await;
    for _ in 0..COMMANDS {
        store.insert_command(&command(def, Priority::Medium)).await.expect("insert");
    }
    let mut handles = Vec::new();
    for c in 0..CLAIMERS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let owner = format!("master-{c}");
            let mut mine = Vec::new();
            loop {
                let batch = store.claim_commands(&owner, 7).await.expect("claim");
                if batch.is_empty() {
                    return mine;
                }
                assert!(batch.iter().all(|cmd| cmd.claimed_by.as_deref() == Some(owner.as_str())));
                mine.extend(batch.into_iter().map(|cmd| cmd.id));
            }
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("claimer task"));
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), COMMANDS, "every command claimed exactly once");
    assert_eq!(unique.len(), COMMANDS, "no command claimed twice");
}

async fn workflow_updates_refuse_stale_writers(store: Arc<dyn Store>) {
    let id = instance(&*store, "master-1").await;
    let now = chrono::Utc::now();
    let start = WorkflowWrite { started_at: Some(now), ..wf(Submitted, Running) };
    let running = store.update_workflow_state("master-1", id, &start).await.expect("first update");
    assert_eq!((running.state, running.started_at.is_some()), (Running, true));

    // the same update again: the expected state is stale
    let err = store.update_workflow_state("master-1", id, &start).await.expect_err("stale state refused");
    let StoreError::Conflict { found, .. } = &err else { panic!("expected a conflict, got {err:?}") };
    assert!(found.contains("running owned by master-1"), "{err}");

    // right state, wrong owner
    let err = store.update_workflow_state("master-2", id, &wf(Running, Success)).await.expect_err("stale owner");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert!(!err.is_retryable());
    let unchanged = store.workflow_instance(id).await.expect("read").expect("exists");
    assert_eq!(unchanged.state, Running, "a refused write changes nothing");

    let err = store.update_workflow_state("master-1", 9_999_999, &wf(Running, Success)).await.expect_err("gone");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");

    let fail = WorkflowWrite { reason: Some("task a failed".into()), ended_at: Some(now), ..wf(Running, Failure) };
    let done = store.update_workflow_state("master-1", id, &fail).await.expect("finish");
    assert_eq!((done.state, done.state_reason.as_deref()), (Failure, Some("task a failed")));
    assert_eq!(done.params["day"], "2026-01-01");
}

async fn takeover_fences_the_previous_owner(store: Arc<dyn Store>) {
    let id = instance(&*store, "master-1").await;
    let taken = store.take_over_workflow_instance(id, "master-1", 0, "master-2").await.expect("take over");
    assert_eq!((taken.owner.as_deref(), taken.epoch), (Some("master-2"), 1));
    // a second takeover from the same stale view is refused
    let err = store.take_over_workflow_instance(id, "master-1", 0, "master-3").await.expect_err("stale takeover");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    // the old owner can no longer write
    let err = store.update_workflow_state("master-1", id, &wf(Submitted, Running)).await.expect_err("fenced");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    store.update_workflow_state("master-2", id, &wf(Submitted, Running)).await.expect("new owner writes");
}

async fn task_updates_refuse_stale_writers(store: Arc<dyn Store>) {
    let wf = instance(&*store, "master-1").await;
    let new: Vec<NewTaskInstance> = ["a", "b"]
        .iter()
        .map(|n| NewTaskInstance { workflow_instance_id: wf, task_name: n.to_string(), state: Submitted })
        .collect();
    let err = store.create_task_instances("master-2", &new).await.expect_err("not the owner");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert!(store.task_instances_of(wf).await.expect("list").is_empty(), "a refused batch creates nothing");
    let tasks = store.create_task_instances("master-1", &new).await.expect("create");
    assert_eq!(tasks.len(), 2);
    let again = store.create_task_instances("master-1", &new).await.expect("re-create is idempotent");
    assert_eq!(again, tasks);
    let a = tasks[0].id;
    assert_eq!((tasks[0].state, tasks[0].attempt), (Submitted, 1));

    let mut dispatch = TaskWrite::change(a, Submitted, 1, Dispatched);
    dispatch.worker = Some("10.0.0.7:5679".into());
    let t = store.update_task_state("master-1", &dispatch).await.expect("dispatch");
    assert_eq!((t.state, t.worker_addr.as_deref()), (Dispatched, Some("10.0.0.7:5679")));

    // replayed dispatch: stale state
    let err = store.update_task_state("master-1", &dispatch).await.expect_err("stale state");
    let StoreError::Conflict { found, .. } = &err else { panic!("expected a conflict, got {err:?}") };
    assert!(found.contains("dispatched attempt 1 owned by master-1"), "{err}");
    // wrong owner
    let err =
        store.update_task_state("master-2", &TaskWrite::change(a, Dispatched, 1, Running)).await.expect_err("owner");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    // wrong attempt
    let err =
        store.update_task_state("master-1", &TaskWrite::change(a, Dispatched, 2, Running)).await.expect_err("attempt");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    let err = store
        .update_task_state("master-1", &TaskWrite::change(8_888_888, Dispatched, 1, Running))
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert_eq!(store.task_instance(a).await.expect("read").expect("exists").state, Dispatched);

    let mut done = TaskWrite::change(a, Dispatched, 1, Success);
    done.exit_code = Some(0);
    done.ended_at = Some(chrono::Utc::now());
    let t = store.update_task_state("master-1", &done).await.expect("result");
    assert_eq!((t.state, t.exit_code, t.worker_addr.as_deref()), (Success, Some(0), Some("10.0.0.7:5679")));

    // a retry starts attempt 2
    let b = tasks[1].id;
    store.update_task_state("master-1", &TaskWrite::change(b, Submitted, 1, Dispatched)).await.expect("dispatch b");
    store.update_task_state("master-1", &TaskWrite::change(b, Dispatched, 1, Delayed)).await.expect("b failed once");
    let mut retry = TaskWrite::change(b, Delayed, 1, Submitted);
    retry.attempt = Some(2);
    assert_eq!(store.update_task_state("master-1", &retry).await.expect("retry").attempt, 2);
}

async fn queries_by_owner_state_and_worker(store: Arc<dyn Store>) {
    let w1 = instance(&*store, "master-1").await;
    let w2 = instance(&*store, "master-1").await;
    let w3 = instance(&*store, "master-2").await;
    store.update_workflow_state("master-1", w2, &wf(Submitted, Running)).await.expect("run");
    store.update_workflow_state("master-1", w2, &wf(Running, Success)).await.expect("finish");
    store.update_workflow_state("master-2", w3, &wf(Submitted, Running)).await.expect("run");
    let mine: Vec<i64> =
        store.unfinished_workflow_instances_of("master-1").await.expect("by owner").iter().map(|w| w.id).collect();
    assert_eq!(mine, [w1]);
    let running: Vec<i64> =
        store.workflow_instances_in(&[Running, Submitted], 10).await.expect("by state").iter().map(|w| w.id).collect();
    assert_eq!(running, [w1, w3]);
    assert!(store.workflow_instances_in(&[], 10).await.expect("empty").is_empty());

    let tasks = store
        .create_task_instances(
            "master-2",
            &[NewTaskInstance { workflow_instance_id: w3, task_name: "a".into(), state: Submitted }],
        )
        .await
        .expect("create");
    let mut d = TaskWrite::change(tasks[0].id, Submitted, 1, Dispatched);
    d.worker = Some("w-1:5679".into());
    store.update_task_state("master-2", &d).await.expect("dispatch");
    let on_worker = store.task_instances_on_worker("w-1:5679", &[Dispatched, Running]).await.expect("by worker");
    assert_eq!(on_worker.iter().map(|t| t.id).collect::<Vec<_>>(), [tasks[0].id]);
    assert!(store.task_instances_on_worker("w-2:5679", &[Dispatched, Running]).await.expect("by worker").is_empty());
}

async fn a_run_is_requested_then_adopted(store: Arc<dyn Store>) {
    let def = definition(&*store, "wf").await;
    let run = porpoise_store::NewRun {
        workflow_definition_id: def,
        workflow_name: "wf".into(),
        priority: Priority::High,
        params: BTreeMap::from([("day".into(), "d1".into())]),
        schedule_time: chrono::Utc::now(),
        timezone: "UTC".into(),
        kind: porpoise_store::RunKind::Manual,
        execution: Default::default(),
        backfill: None,
    };
    let (instance, command_id) = store.create_run(&run).await.expect("create run");
    assert_eq!((instance.state, instance.owner.as_deref(), instance.command_id), (Submitted, None, Some(command_id)));
    let claimed = store.claim_commands("master-1", 10).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].workflow_instance_id, claimed[0].params["day"].as_str()), (Some(instance.id), "d1"));
    // the claim and the adoption are one commit: no claimed command leaves its run unowned
    let adopted = store.workflow_instance(instance.id).await.expect("read").expect("exists");
    assert_eq!((adopted.owner.as_deref(), adopted.epoch), (Some("master-1"), 1));
    assert!(store.claim_commands("master-2", 10).await.expect("claim").is_empty());
    // a bare command (no run yet) gets its run, owned by the claimant, in the same commit
    let bare = store.insert_command(&command(def, Priority::Low)).await.expect("insert");
    let claimed = store.claim_commands("master-2", 10).await.expect("claim");
    assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), [bare]);
    let created = claimed[0].workflow_instance_id.expect("the claim created the run");
    let created = store.workflow_instance(created).await.expect("read").expect("exists");
    assert_eq!(
        (created.owner.as_deref(), created.state, created.command_id, created.workflow_name.as_str()),
        (Some("master-2"), Submitted, Some(bare), "wf")
    );
    let (second, _) = store.create_run(&run).await.expect("second run");
    let newest: Vec<i64> =
        store.list_workflow_instances(Some("wf"), None, 10).await.expect("list").iter().map(|w| w.id).collect();
    assert_eq!(newest, [second.id, created.id, instance.id]);
    assert!(store.list_workflow_instances(Some("other"), None, 10).await.expect("list").is_empty());
    assert_eq!(store.list_workflow_instances(None, None, 1).await.expect("list").len(), 1);
}

async fn dead_letters_keep_event_and_reason(store: Arc<dyn Store>) {
    let letter = NewDeadLetter {
        workflow_instance_id: Some(7),
        task_instance_id: Some(99),
        event_kind: "task_state_change".into(),
        event: r#"{"kind":"task_state_change"}"#.into(),
        reason: "unknown task instance 99".into(),
    };
    let id = store.record_dead_letter(&letter).await.expect("record");
    let letters = store.dead_letters(10).await.expect("read");
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!((l.id, l.task_instance_id, l.reason.as_str()), (id, Some(99), "unknown task instance 99"));
    assert_eq!(l.event, letter.event);
}

async fn a_failover_starts_a_new_attempt_and_is_counted(store: Arc<dyn Store>) {
    let wf = instance(&*store, "master-1").await;
    let new = [NewTaskInstance { workflow_instance_id: wf, task_name: "a".into(), state: Submitted }];
    let a = store.create_task_instances("master-1", &new).await.expect("create")[0].id;
    let mut dispatch = TaskWrite::change(a, Submitted, 1, Dispatched);
    dispatch.worker = Some("10.0.0.7:5679".into());
    store.update_task_state("master-1", &dispatch).await.expect("dispatch");
    let mut failover = TaskWrite::change(a, Dispatched, 1, Submitted);
    failover.attempt = Some(2);
    failover.failover = true;
    failover.warning = Some("attempt 1 failed over".into());
    let t = store.update_task_state("master-1", &failover).await.expect("fail over");
    assert_eq!((t.state, t.attempt, t.failovers), (Submitted, 2, 1));
    assert_eq!(t.warning.as_deref(), Some("attempt 1 failed over"));
    // an ordinary update leaves the count alone
    let t = store.update_task_state("master-1", &TaskWrite::change(a, Submitted, 2, Dispatched)).await.expect("on");
    assert_eq!((t.attempt, t.failovers), (2, 1));
    assert_eq!(store.task_instance(a).await.expect("read").expect("exists").failovers, 1);
}

/// API tokens are found by the hash of their secret, listed by name, unique by name, and gone
/// once deleted.
async fn api_tokens_are_found_by_hash_and_unique_by_name(store: Arc<dyn Store>) {
    let made = store.create_api_token("ci", "operator", "hash-ci").await.expect("create");
    assert_eq!((made.name.as_str(), made.role.as_str()), ("ci", "operator"));
    store.create_api_token("alice", "admin", "hash-alice").await.expect("create");
    let taken = store.create_api_token("ci", "viewer", "hash-other").await.expect_err("the name is taken");
    assert!(matches!(taken, porpoise_store::StoreError::Conflict { .. }), "{taken:?}");
    let found = store.api_token_by_hash("hash-ci").await.expect("read").expect("found");
    assert_eq!((found.name.as_str(), found.role.as_str()), ("ci", "operator"));
    assert_eq!(store.api_token_by_hash("hash-other").await.expect("read"), None);
    let names: Vec<String> = store.api_tokens().await.expect("list").into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["alice", "ci"]);
    assert!(store.delete_api_token("ci").await.expect("delete"));
    assert!(!store.delete_api_token("ci").await.expect("delete again"));
    assert_eq!(store.api_token_by_hash("hash-ci").await.expect("read"), None);
}

/// A batch of task writes lands as the same writes one by one would: every field, each write
/// on the state the one before left (a task written twice in one batch), and created tasks
/// come back in the order they were asked for.
async fn a_batch_of_task_writes_lands_as_one_by_one(store: Arc<dyn Store>) {
    use porpoise_core::engine::Write;
    let id = instance(&*store, "master-1").await;
    let names: Vec<porpoise_core::engine::NewTask> = (0..5).map(|i| format!("t{i}").as_str().into()).collect();
    let created = store.persist("master-1", id, &[Write::CreateTasks(names)]).await.expect("create");
    let order: Vec<&str> = created.iter().map(|t| t.task_name.as_str()).collect();
    assert_eq!(order, ["t0", "t1", "t2", "t3", "t4"]);
    let ids: Vec<i64> = created.iter().map(|t| t.id).collect();
    let start = chrono::Utc::now() - chrono::Duration::seconds(5);
    let end = chrono::Utc::now();
    let dispatched = |task: i64| {
        Write::Task(TaskWrite { worker: Some("w-1:5679".into()), ..TaskWrite::change(task, Submitted, 1, Dispatched) })
    };
    let mut batch: Vec<Write> = ids.iter().map(|&t| dispatched(t)).collect();
    // t0 runs and succeeds within the same batch
    batch.push(Write::Task(TaskWrite { started_at: Some(start), ..TaskWrite::change(ids[0], Dispatched, 1, Running) }));
    batch.push(Write::Task(TaskWrite {
        exit_code: Some(0),
        ended_at: Some(end),
        ..TaskWrite::change(ids[0], Running, 1, Success)
    }));
    // t1 fails over to attempt 2 with a warning; t2 fails with its exit code
    batch.push(Write::Task(TaskWrite {
        attempt: Some(2),
        failover: true,
        warning: Some("failed over".into()),
        ..TaskWrite::change(ids[1], Dispatched, 1, Submitted)
    }));
    batch.push(Write::Task(TaskWrite {
        exit_code: Some(3),
        ended_at: Some(end),
        ..TaskWrite::change(ids[2], Dispatched, 1, Failure)
    }));
    store.persist("master-1", id, &batch).await.expect("the batch lands");
    let rows = store.task_instances_of(id).await.expect("read");
    let t = |i: usize| &rows[i];
    assert_eq!((t(0).state, t(0).worker_addr.as_deref(), t(0).exit_code), (Success, Some("w-1:5679"), Some(0)));
    let micros = |d: Option<chrono::DateTime<chrono::Utc>>| d.map(|d| d.timestamp_micros());
    assert_eq!((micros(t(0).started_at), micros(t(0).ended_at)), (micros(Some(start)), micros(Some(end))));
    assert_eq!((t(1).state, t(1).attempt, t(1).failovers), (Submitted, 2, 1));
    assert_eq!(t(1).warning.as_deref(), Some("failed over"));
    assert_eq!((t(2).state, t(2).exit_code), (Failure, Some(3)));
    assert_eq!((t(3).state, t(4).state), (Dispatched, Dispatched));
    // a batch with one stale write lands not at all
    let stale = [
        Write::Task(TaskWrite::change(ids[3], Dispatched, 1, Running)),
        Write::Task(TaskWrite::change(ids[4], Running, 1, Success)),
    ];
    let err = store.persist("master-1", id, &stale).await.expect_err("t4 is not running");
    assert!(matches!(err, StoreError::Conflict { id, .. } if id == ids[4]), "{err:?}");
    assert_eq!(store.task_instance(ids[3]).await.expect("read").map(|t| t.state), Some(Dispatched));
}

macro_rules! suite {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _dir) = super::$backend().await;
                    super::$case(store).await;
                }
            )*
        }
    };
}

macro_rules! suites {
    ($($case:ident),* $(,)?) => {
        suite!(postgres: $($case),*);
        suite!(sqlite: $($case),*);
    };
}

/// A feed opened before a command is queued wakes up for it, and not before.
async fn a_queued_command_wakes_the_command_feed(store: Arc<dyn Store>) {
    let def = definition(&*store, "wf").await;
    let mut feed = store.command_feed().await.expect("open the feed");
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(200), feed.next()).await;
    assert!(quiet.is_err(), "woken with nothing queued");
    store.insert_command(&command(def, Priority::Medium)).await.expect("insert");
    tokio::time::timeout(std::time::Duration::from_secs(10), feed.next())
        .await
        .expect("woken by the queued command")
        .expect("the feed works");
    let run = porpoise_store::NewRun {
        workflow_definition_id: def,
        workflow_name: "wf".into(),
        priority: Priority::Medium,
        params: BTreeMap::new(),
        schedule_time: chrono::Utc::now(),
        timezone: "UTC".into(),
        kind: porpoise_store::RunKind::Manual,
        execution: Default::default(),
        backfill: None,
    };
    store.create_run(&run).await.expect("request a run");
    tokio::time::timeout(std::time::Duration::from_secs(10), feed.next())
        .await
        .expect("woken by the requested run")
        .expect("the feed works");
}

/// The writes of one engine transition land together, or not at all.
async fn an_engine_transition_is_persisted_all_or_nothing(store: Arc<dyn Store>) {
    use porpoise_core::engine::Write;
    let id = instance(&*store, "master-1").await;
    let start = Write::Workflow(WorkflowWrite {
        expected: Submitted,
        new: Running,
        reason: None,
        started_at: Some(chrono::Utc::now()),
        ended_at: None,
    });
    let created = store
        .persist("master-1", id, &[start, Write::CreateTasks(vec!["a".into(), "b".into()])])
        .await
        .expect("start and create");
    assert_eq!(
        created.iter().map(|t| (t.task_name.as_str(), t.state, t.attempt)).collect::<Vec<_>>(),
        [("a", Submitted, 1), ("b", Submitted, 1)]
    );
    let write = |task: i64, expected, new| TaskWrite {
        worker: Some("w-1:5679".into()),
        ..TaskWrite::change(task, expected, 1, new)
    };
    // the second write expects a state b is not in: neither lands
    let unit =
        [Write::Task(write(created[0].id, Submitted, Dispatched)), Write::Task(write(created[1].id, Running, Success))];
    let err = store.persist("master-1", id, &unit).await.expect_err("one write is refused");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(store.task_instance(created[0].id).await.expect("read").map(|t| t.state), Some(Submitted));
    // another owner's transition is refused whole
    let err = store.persist("master-2", id, &[Write::CreateTasks(vec!["c".into()])]).await.expect_err("not the owner");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(store.task_instances_of(id).await.expect("read").len(), 2);
    // a creation repeated after a lost answer finds the rows the first one made
    let again = store.persist("master-1", id, &[Write::CreateTasks(vec!["a".into()])]).await.expect("again");
    assert_eq!(again.iter().map(|t| t.id).collect::<Vec<_>>(), [created[0].id]);
    let both = [
        Write::Task(write(created[0].id, Submitted, Dispatched)),
        Write::Task(write(created[1].id, Submitted, Dispatched)),
    ];
    store.persist("master-1", id, &both).await.expect("both land");
    let states: Vec<_> = store.task_instances_of(id).await.expect("read").iter().map(|t| t.state).collect();
    assert_eq!(states, [Dispatched, Dispatched]);
}

/// A task group's slots are taken by conditional writes, by priority then first come, and
/// given back by the write that moves a task on; a forced success keeps the attempt it marks.
async fn task_group_slots_are_taken_by_priority_and_given_back(store: Arc<dyn Store>) {
    use porpoise_core::engine::{NewTask, RerunTask, Write};
    store.create_task_group("db", 1, "the warehouse").await.expect("create the group");
    let id = instance(&*store, "master-1").await;
    let grouped = |name: &str, group: &str, priority| NewTask {
        name: name.into(),
        task_group: Some(group.into()),
        task_group_priority: priority,
    };
    let start = Write::Workflow(wf(Submitted, Running));
    let created = store
        .persist("master-1", id, &[start, Write::CreateTasks(vec![grouped("a", "db", 0), grouped("b", "db", 5)])])
        .await
        .expect("start and create");
    let (a, b) = (created[0].id, created[1].id);
    assert!(created.iter().all(|t| t.state == Waiting && t.group_waiting_since.is_some()), "{created:?}");
    let take = |task| [Write::TakeSlot(TaskWrite::change(task, Waiting, 1, Submitted))];
    let err = store.persist("master-1", id, &take(a)).await.expect_err("b is ahead of a");
    assert!(matches!(err, StoreError::NoFreeSlot { used: 0, ahead: 1, slots: 1, .. }), "{err:?}");
    store.persist("master-1", id, &take(b)).await.expect("b takes the slot");
    let group = store.task_group("db").await.expect("read").expect("the group");
    assert_eq!((group.slots, group.used, group.waiting, group.description.as_str()), (1, 1, 1, "the warehouse"));
    let err = store.persist("master-1", id, &take(a)).await.expect_err("the slot is held");
    assert!(matches!(err, StoreError::NoFreeSlot { used: 1, ahead: 0, .. }), "{err:?}");
    for (from, to) in [(Submitted, Dispatched), (Dispatched, Running), (Running, Success)] {
        store.persist("master-1", id, &[Write::Task(TaskWrite::change(b, from, 1, to))]).await.expect("b moves on");
    }
    store.persist("master-1", id, &take(a)).await.expect("b gave the slot back");
    // a task whose group is gone cannot take a slot
    store.persist("master-1", id, &[Write::CreateTasks(vec![grouped("c", "gone", 0)])]).await.expect("create");
    let c = store.task_instances_of(id).await.expect("read").iter().find(|t| t.task_name == "c").map(|t| t.id);
    let err = store.persist("master-1", id, &take(c.expect("c"))).await.expect_err("no such group");
    assert!(matches!(err, StoreError::NotFound { entity: "task group", .. }), "{err:?}");
    // groups are listed, changed and deleted
    let group = store.update_task_group("db", Some(3), None).await.expect("update");
    assert_eq!((group.slots, group.used), (3, 1));
    assert_eq!(store.task_groups().await.expect("list").iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["db"]);
    assert!(matches!(store.update_task_group("nope", Some(1), None).await, Err(StoreError::NotFound { .. })));
    store.delete_task_group("db").await.expect("delete");
    assert!(matches!(store.delete_task_group("db").await, Err(StoreError::NotFound { .. })));
    // a forced success keeps its attempt and says it was forced
    for (from, to) in [(Submitted, Dispatched), (Dispatched, Running), (Running, Failure)] {
        store.persist("master-1", id, &[Write::Task(TaskWrite::change(a, from, 1, to))]).await.expect("a moves on");
    }
    store.persist("master-1", id, &[Write::Workflow(wf(Running, Failure))]).await.expect("the run fails");
    let forced = RerunTask { id: a, state: Failure, attempt: 1, new: ForcedSuccess, await_slot: false };
    store.rerun(id, &[forced]).await.expect("mark it");
    let row = store.task_instance(a).await.expect("read").expect("a");
    assert_eq!((row.state, row.attempt), (ForcedSuccess, 1));
    assert_eq!(row.warning.as_deref(), Some("marked successful by an operator; attempt 1 had ended failure"));
}

/// Each fire time fires one run, whatever plans say twice; missed fire times follow the catchup
/// policy; a paused schedule fires nothing.
async fn schedules_fire_each_time_once(store: Arc<dyn Store>) {
    use porpoise_core::schedule::{Catchup, FirePlan, Schedule, ScheduleSpec};
    use std::time::Duration;
    definition(&*store, "wf").await;
    let spec = ScheduleSpec {
        cron: "* * * * * *".into(),
        timezone: "Europe/Berlin".into(),
        start: None,
        end: None,
        catchup: Catchup::Latest,
    };
    let row = store.put_schedule("wf", &spec, false).await.expect("put");
    assert_eq!((row.paused, row.from_spec), (false, false));
    let again = store.put_schedule("wf", &spec, false).await.expect("put the same");
    assert_eq!(again.done_until, row.done_until, "an unchanged schedule goes on where it was");
    let schedule = Schedule::new(spec.clone()).expect("valid");
    let t0 = row.done_until;
    let by_schedule = |at| {
        let schedule = schedule.clone();
        move |r: &porpoise_store::ScheduleRow, missed: bool| schedule.plan(r.done_until, at, missed)
    };
    let at = t0 + chrono::Duration::milliseconds(3500);
    let fired = store.fire_schedules(at, Duration::from_secs(5), &by_schedule(at)).await.expect("fire");
    assert!((3..=4).contains(&fired.len()), "every second up to 3.5 s: {fired:?}");
    let run = store.workflow_instance(fired[0].run_id).await.expect("read").expect("the run");
    assert_eq!(
        (run.schedule_time, run.timezone.as_str(), run.kind),
        (Some(fired[0].fire_time), "Europe/Berlin", porpoise_store::RunKind::Schedule)
    );
    // a plan that says the same fire times again (another master, a lost answer) fires nothing
    let same: Vec<_> = fired.iter().map(|f| f.fire_time).collect();
    let replay =
        move |_: &porpoise_store::ScheduleRow, _: bool| FirePlan { fire: same.clone(), done_until: at, skipped: 0 };
    assert_eq!(store.fire_schedules(at, Duration::from_secs(5), &replay).await.expect("fire").len(), 0);
    // no look for ten seconds: missed, and `latest` fires only the last one
    let later = at + chrono::Duration::seconds(10);
    let fired = store.fire_schedules(later, Duration::from_secs(5), &by_schedule(later)).await.expect("fire");
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert!(fired[0].fire_time > later - chrono::Duration::seconds(1));
    // paused: nothing
    store.set_schedule_paused("wf", true).await.expect("pause");
    let paused = later + chrono::Duration::seconds(3);
    assert!(store.fire_schedules(paused, Duration::from_secs(5), &by_schedule(paused)).await.expect("fire").is_empty());
    store.delete_schedule("wf").await.expect("delete");
    assert!(matches!(store.delete_schedule("wf").await, Err(StoreError::NotFound { .. })));
}

suites!(
    a_batch_of_task_writes_lands_as_one_by_one,
    api_tokens_are_found_by_hash_and_unique_by_name,
    schedules_fire_each_time_once,
    task_group_slots_are_taken_by_priority_and_given_back,
    an_engine_transition_is_persisted_all_or_nothing,
    a_queued_command_wakes_the_command_feed,
    definitions_are_versioned,
    commands_are_claimed_by_priority_then_age,
    concurrent_claimers_claim_each_command_once,
    workflow_updates_refuse_stale_writers,
    takeover_fences_the_previous_owner,
    task_updates_refuse_stale_writers,
    a_failover_starts_a_new_attempt_and_is_counted,
    queries_by_owner_state_and_worker,
    dead_letters_keep_event_and_reason,
    a_run_is_requested_then_adopted,
);

/// An outage is a retryable error, and the same store works again once Postgres is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_retryable_and_recovers() {
    let pg = TestPostgres::start();
    let url = pg.fresh_database().await;
    let store = PgStore::connect(&url, 4).await.expect("connect");
    let def = definition(&store, "wf").await;
    pg.stop();
    let err = store.insert_command(&command(def, Priority::Medium)).await.expect_err("Postgres is down");
    assert!(err.is_retryable(), "an outage must be retryable: {err:?}");
    pg.restart();
    let id = store.insert_command(&command(def, Priority::Medium)).await.expect("works again after restart");
    assert_eq!(store.claim_commands("m", 10).await.expect("claim").iter().map(|c| c.id).collect::<Vec<_>>(), [id]);
}
