//! Faults a cluster must survive without losing or doubling anything: lost ACKs, late and
//! duplicate events, a Postgres outage mid-run, and events that can never be handled.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ClusterOptions, Deployment, lines};
use porpoise_proto::v1::task_event_service_client::TaskEventServiceClient;
use porpoise_proto::v1::task_event_service_server::{TaskEventService, TaskEventServiceServer};
use porpoise_proto::v1::worker_service_client::WorkerServiceClient;
use porpoise_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use porpoise_proto::v1::{
    AckStatus, DispatchStatus, DispatchTaskReply, DispatchTaskRequest, GetRunReply, GetRunRequest, GetTaskLogReply,
    GetTaskLogRequest, KillTaskReply, KillTaskRequest, ReportTaskEventsReply, ReportTaskEventsRequest, TaskEvent,
    TaskOutcome, TaskResult, TaskRunning, task_event,
};
use porpoise_testkit::TestPostgres;
use tonic::{Request, Response, Status};

/// Sits between the workers and the master: forwards every report, but for the first
/// `drop_replies` calls throws the master's reply away and tells the worker the call failed —
/// the master handled the events, the worker never learns it.
#[derive(Clone)]
struct AckDropper {
    /// The master's real address, known once it has started.
    master: Arc<Mutex<String>>,
    drop_replies: Arc<Mutex<u32>>,
    forwarded: Arc<Mutex<HashMap<String, u32>>>,
    /// Events whose HANDLED ACK reached the worker: it has nothing left to do for them.
    acked: Arc<Mutex<std::collections::HashSet<String>>>,
    /// While set, reports are not forwarded at all: the master never sees them.
    swallow: Arc<std::sync::atomic::AtomicBool>,
    /// Results seen (forwarded or not): (task instance, attempt).
    results: Arc<Mutex<Vec<(i64, i32)>>>,
}

#[tonic::async_trait]
impl TaskEventService for AckDropper {
    async fn report_task_events(
        &self,
        request: Request<ReportTaskEventsRequest>,
    ) -> Result<Response<ReportTaskEventsReply>, Status> {
        let req = request.into_inner();
        {
            let mut r = self.results.lock().expect("lock");
            for e in &req.events {
                if matches!(e.kind, Some(task_event::Kind::Result(_))) {
                    r.push((e.task_instance_id, e.attempt));
                }
            }
        }
        if self.swallow.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Status::unavailable("the network ate the report"));
        }
        {
            let mut f = self.forwarded.lock().expect("lock");
            for e in &req.events {
                *f.entry(e.event_id.clone()).or_default() += 1;
            }
        }
        let master = self.master.lock().expect("lock").clone();
        let mut client = TaskEventServiceClient::connect(format!("http://{master}"))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let reply = client.report_task_events(req).await?;
        let drop_it = {
            let mut d = self.drop_replies.lock().expect("lock");
            let drop_it = *d > 0;
            *d = d.saturating_sub(1);
            drop_it
        };
        if drop_it {
            return Err(Status::unavailable("reply lost on the way back"));
        }
        let mut acked = self.acked.lock().expect("lock");
        for a in &reply.get_ref().acks {
            if a.status == AckStatus::Handled as i32 {
                acked.insert(a.event_id.clone());
            }
        }
        Ok(reply)
    }

    async fn probe_registry(
        &self,
        request: Request<porpoise_proto::v1::ProbeRegistryRequest>,
    ) -> Result<Response<porpoise_proto::v1::ProbeRegistryReply>, Status> {
        let master = self.master.lock().expect("lock").clone();
        let mut client = TaskEventServiceClient::connect(format!("http://{master}"))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        client.probe_registry(request.into_inner()).await
    }
}

fn chain(name: &str, marks: &str, sleep: &str) -> String {
    format!(
        "name: {name}\ntasks:\n  - name: one\n    command: sleep {sleep}; echo $PORPOISE_TASK_INSTANCE_ID >> {marks}\n  - name: two\n    depends_on: [one]\n    command: sleep {sleep}; echo $PORPOISE_TASK_INSTANCE_ID >> {marks}\n  - name: three\n    depends_on: [two]\n    command: sleep {sleep}; echo $PORPOISE_TASK_INSTANCE_ID >> {marks}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_loses_nothing_and_the_resent_event_is_handled_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
    let proxy_addr = listener.local_addr().expect("addr").to_string();
    let dropper = AckDropper {
        master: Arc::default(),
        drop_replies: Arc::new(Mutex::new(3)),
        forwarded: Arc::default(),
        acked: Arc::default(),
        swallow: Arc::default(),
        results: Arc::default(),
    };
    common::serve(listener, tonic::service::Routes::new(TaskEventServiceServer::new(dropper.clone())));
    let options = ClusterOptions { advertise: Some(proxy_addr.clone()), ..Default::default() };
    let mut d = Deployment::cluster_on(TestPostgres::shared(), options).await;
    *dropper.master.lock().expect("lock") = d.master_addr.clone();

    let marks = d.path("marks");
    d.apply("chain", &chain("chain", &marks.display().to_string(), "0"));
    let out = d.porpoise(&["run", "chain", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", String::from_utf8_lossy(&out.stderr), d.logs_text());
    let id = common::run_id(&out);
    let run = d.finished_run(id).await;
    assert!(run.tasks.iter().all(|t| t.state == "success" && t.attempt == 1), "{run:?}");
    // a wrong second run would come from an event resent without an ACK: wait until the worker
    // holds none, and until no task process is left, before counting the runs
    let (forwarded, acked) = (dropper.forwarded.clone(), dropper.acked.clone());
    d.wait_until("every event is ACKed", || {
        let (forwarded, acked) = (forwarded.clone(), acked.clone());
        async move {
            let acked = acked.lock().expect("lock");
            forwarded.lock().expect("lock").keys().all(|id| acked.contains(id))
        }
    })
    .await;
    d.wait_for_no_task_process().await;
    assert_eq!(lines(&marks).len(), 3, "each task ran exactly once");
    let resent = dropper.forwarded.lock().expect("lock").values().filter(|&&n| n > 1).count();
    assert!(resent >= 1, "the worker resent the events whose ACK was lost");
    assert!(d.dead_letters().await.is_empty(), "nothing was dead-lettered");
    let metrics = d.metrics_text().await;
    let ignored = common::metric(&metrics, r#"porpoise_state_events_ignored_total{kind="task_state_change"}"#);
    assert!(ignored >= resent as f64, "each resent event was recognised as already handled ({ignored} < {resent})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_and_duplicate_events_change_nothing() {
    let mut d = Deployment::cluster().await;
    let yaml = "name: late\ntasks:\n  - name: a\n    command: echo a\n  - name: b\n    depends_on: [a]\n    command: sleep 1\n";
    d.apply("late", yaml);
    let id = d.start_run("late").await;
    d.wait_for_run(id, "a succeeds", |run| {
        run.tasks.len() == 2 && run.tasks.iter().any(|t| t.task_name == "a" && t.state == "success")
    })
    .await;
    let mut admin = d.admin().await;
    let run = admin.get_run(GetRunRequest { run_id: id }).await.expect("get").into_inner();
    let a = run.tasks.into_iter().find(|t| t.task_name == "a").expect("task a");
    let mut events = TaskEventServiceClient::connect(d.server.clone()).await.expect("connect");
    let event = |kind| TaskEvent {
        event_id: format!("test-{}", rand_suffix()),
        task_instance_id: a.task_instance_id,
        attempt: 1,
        workflow_instance_id: id,
        kind: Some(kind),
    };
    let late_running = event(task_event::Kind::Running(TaskRunning {
        started_at_ms: 1,
        worker_addr: "127.0.0.1:1".into(),
        log_path: String::new(),
    }));
    let second_result = event(task_event::Kind::Result(TaskResult {
        outcome: TaskOutcome::Failure as i32,
        exit_code: Some(9),
        started_at_ms: 1,
        ended_at_ms: 2,
        message: "a conflicting second result".into(),
    }));
    // sent as the worker that ran it: a late or second report from anyone else is refused outright
    let reply = events
        .report_task_events(ReportTaskEventsRequest {
            worker_addr: a.worker_addr.clone(),
            events: vec![late_running, second_result.clone()],
        })
        .await
        .expect("report")
        .into_inner();
    assert_eq!(reply.acks.len(), 2);
    assert!(reply.acks.iter().all(|a| a.status == AckStatus::Handled as i32), "{reply:?}");

    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}");
    let a_after = run.tasks.iter().find(|t| t.task_name == "a").expect("a");
    assert_eq!(
        (a_after.state.as_str(), a_after.exit_code, a_after.worker_addr.as_str()),
        ("success", Some(0), a.worker_addr.as_str())
    );
    // and once more after the run ended
    let reply = events
        .report_task_events(ReportTaskEventsRequest { worker_addr: a.worker_addr.clone(), events: vec![second_result] })
        .await
        .expect("report")
        .into_inner();
    assert_eq!(reply.acks[0].status, AckStatus::Handled as i32);
    let again = admin.get_run(GetRunRequest { run_id: id }).await.expect("get").into_inner();
    assert_eq!(again.run.map(|r| r.state), Some("success".into()));
    assert!(d.dead_letters().await.is_empty(), "late and duplicate events are not errors");
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_mid_run_loses_nothing() {
    const RUNS: usize = 10;
    let pg = TestPostgres::start();
    let mut d = Deployment::cluster_on(&pg, ClusterOptions::default()).await;
    let marks = d.path("marks");
    d.apply("outage", &chain("outage", &marks.display().to_string(), "0.4"));
    let mut ids = Vec::new();
    for _ in 0..RUNS {
        ids.push(d.start_run("outage").await);
    }
    d.wait_for_run(ids[0], "the runs are under way", |run| run.tasks.iter().any(|t| t.state == "running")).await;
    pg.stop();
    // the outage itself: Postgres is away for 5 s while tasks finish and report
    tokio::time::sleep(Duration::from_secs(5)).await;
    pg.restart();
    for id in &ids {
        let run = d.finished_run(*id).await;
        assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "run {id}: {run:?}");
        assert!(run.tasks.iter().all(|t| t.attempt == 1));
    }
    assert_eq!(lines(&marks).len(), RUNS * 3, "every task ran exactly once");
    assert!(d.dead_letters().await.is_empty(), "an outage is retried, never dead-lettered");
    let metrics = d.metrics_text().await;
    let retried: f64 = ["task_state_change", "workflow_state_change"]
        .iter()
        .map(|k| common::metric(&metrics, &format!(r#"porpoise_state_events_retried_total{{kind="{k}"}}"#)))
        .sum();
    assert!(retried >= 1.0, "the outage made state events retry:\n{metrics}");
    assert_eq!(
        common::metric(&metrics, "porpoise_workflow_instances_stalled"),
        0.0,
        "no run is stalled once Postgres is back"
    );
}

/// A chain of tasks one → two → three; each marks that it started, then waits at its gate
/// `DIR/gate-NAME` (closed here) before it ends, so the test decides when each task finishes.
fn gated_chain(name: &str, dir: &std::path::Path) -> String {
    let task = |t: &str| {
        let gate = dir.join(format!("gate-{t}"));
        common::close_gate(&gate);
        format!("echo {t} >> {marks}; {wait}", marks = dir.join("marks").display(), wait = common::wait_at(&gate))
    };
    format!(
        "name: {name}\ntasks:\n  - name: one\n    command: {}\n  - name: two\n    depends_on: [one]\n    command: {}\n  - name: three\n    depends_on: [two]\n    command: {}\n",
        task("one"),
        task("two"),
        task("three")
    )
}

fn open_gate(dir: &std::path::Path, task: &str) {
    common::open_gate(&dir.join(format!("gate-{task}")));
}

/// An event whose handling keeps failing makes the run say it is stalled, and why — in the
/// metrics and in its status — and recovery clears that while the run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_events_keep_failing_says_it_is_stalled() {
    let pg = TestPostgres::start();
    let mut d = Deployment::cluster_on(&pg, ClusterOptions::default()).await;
    let dir = d.dir.path().to_path_buf();
    let marks = dir.join("marks");
    d.apply("stall", &gated_chain("stall", &dir));
    let id = d.start_run("stall").await;
    d.wait_for_run(id, "task one runs", |run| run.tasks.iter().any(|t| t.task_name == "one" && t.state == "running"))
        .await;
    let admin = d.admin().await;
    pg.stop();
    // task one ends while its RESULT cannot be written
    open_gate(&dir, "one");
    let metrics_addr = d.metrics.clone().expect("metrics");
    d.wait_until("the run reports that it is stalled", || {
        let (metrics_addr, mut admin) = (metrics_addr.clone(), admin.clone());
        async move {
            let text = common::scrape(&metrics_addr).await;
            let status = admin.get_run(GetRunRequest { run_id: id }).await;
            common::metric(&text, "porpoise_workflow_instances_stalled") >= 1.0
                && status.is_err_and(|s| s.message().contains("is stalled handling a task_state_change event"))
        }
    })
    .await;
    let out = d.porpoise(&["status", &id.to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("stalled"), "porpoise status says the run is stalled: {stderr}");
    // the first task's RESULT could not be written, so nothing moved ahead of the database
    assert_eq!(lines(&marks), ["one"], "the next task started although its upstream's result is not durable");

    pg.restart();
    // task two waits on its gate, so the run is still going: only recovery can clear the stall
    d.wait_until("the stall clears while the run goes on", || {
        let (metrics_addr, mut admin) = (metrics_addr.clone(), admin.clone());
        async move {
            let text = common::scrape(&metrics_addr).await;
            let Ok(run) = admin.get_run(GetRunRequest { run_id: id }).await else { return false };
            let run = run.into_inner();
            let summary = run.run.unwrap_or_default();
            common::metric(&text, "porpoise_workflow_instances_stalled") == 0.0
                && summary.state == "running"
                && summary.state_reason.is_empty()
                && run.tasks.iter().any(|t| t.task_name == "one" && t.state == "success")
        }
    })
    .await;
    open_gate(&dir, "two");
    open_gate(&dir, "three");
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}");
    assert_eq!(lines(&marks), ["one", "two", "three"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_cannot_be_handled_are_dead_lettered_and_counted() {
    let d = Deployment::cluster().await;
    d.apply("hello", "name: hello\ntasks:\n  - name: hi\n    command: echo hi\n");
    let out = d.porpoise(&["run", "hello", "--wait"]);
    assert_eq!(out.status.code(), Some(0));
    let id = common::run_id(&out);
    let mut events = TaskEventServiceClient::connect(d.server.clone()).await.expect("connect");
    let unknown = common::success_event("unknown-1", id, 987_654, 1);
    let malformed = TaskEvent {
        event_id: "malformed-1".into(),
        task_instance_id: 5,
        attempt: 1,
        workflow_instance_id: id,
        kind: None,
    };
    let worker = d.worker_addr.clone().expect("the worker's address");
    let reply = events
        .report_task_events(ReportTaskEventsRequest { worker_addr: worker, events: vec![unknown, malformed] })
        .await
        .expect("the master answers; it does not fail the call")
        .into_inner();
    assert!(reply.acks.iter().all(|a| a.status == AckStatus::Handled as i32), "{reply:?}");
    let letters = d.dead_letters().await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(letters[0].contains("unknown task instance 987654"), "{letters:?}");
    assert!(letters[1].contains("malformed event"), "{letters:?}");
    let metrics = d.metrics_text().await;
    assert_eq!(
        common::metric(&metrics, r#"porpoise_state_events_dropped_total{kind="task_state_change"}"#),
        1.0,
        "{metrics}"
    );
    assert_eq!(common::metric(&metrics, "porpoise_task_events_rejected_total"), 1.0, "{metrics}");
    // the master still works
    let out = d.porpoise(&["run", "hello", "--wait"]);
    assert_eq!(out.status.code(), Some(0));
}

/// Events for a live run that its runner cannot apply: an earlier attempt's result is ignored,
/// an attempt ahead of the current one and an illegal transition are dead-lettered by the
/// runner, counted, and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_runs_runner_ignores_stale_events_and_dead_letters_impossible_ones() {
    let mut d = Deployment::cluster().await;
    let dir = d.dir.path().to_path_buf();
    // "retried" fails once and then holds on its gate; "stuck" waits for a worker group nobody serves
    let yaml = format!(
        "name: live\ntasks:\n  - name: retried\n    retries: 1\n    retry_interval: 0s\n    command: '[ $PORPOISE_ATTEMPT -ge 2 ] || exit 1; {hold}'\n  - name: stuck\n    worker_group: nowhere\n    command: echo never\n",
        hold = common::hold_until(&dir.join("gate"))
    );
    d.apply("live", &yaml);
    let id = d.start_run("live").await;
    d.wait_for_run(id, "attempt 2 of retried runs and stuck waits", |run| {
        run.tasks.iter().any(|t| t.task_name == "retried" && t.state == "running" && t.attempt == 2)
            && run.tasks.iter().any(|t| t.task_name == "stuck" && t.state == "submitted")
    })
    .await;
    let run = d.admin().await.get_run(GetRunRequest { run_id: id }).await.expect("get").into_inner();
    let ti = |name: &str| run.tasks.iter().find(|t| t.task_name == name).expect("task").task_instance_id;
    let events = vec![
        common::success_event("earlier-attempt", id, ti("retried"), 1),
        common::success_event("attempt-ahead", id, ti("retried"), 7),
        common::success_event("never-dispatched", id, ti("stuck"), 1),
    ];
    let mut client = TaskEventServiceClient::connect(d.server.clone()).await.expect("connect");
    let worker = run.tasks.iter().find(|t| t.task_name == "retried").expect("retried").worker_addr.clone();
    let reply = client
        .report_task_events(ReportTaskEventsRequest { worker_addr: worker, events })
        .await
        .expect("report")
        .into_inner();
    let ack = |id: &str| reply.acks.iter().find(|a| a.event_id == id).expect("an ack per event").clone();
    assert_eq!(ack("earlier-attempt").status, AckStatus::Handled as i32);
    assert_eq!(ack("earlier-attempt").message, "", "an earlier attempt's event is ignored, not dropped");
    assert!(ack("attempt-ahead").message.contains("attempt 7 is ahead of the current attempt 2"), "{reply:?}");
    assert!(
        ack("never-dispatched").message.contains("does not hold attempt 1 (it is on no worker)"),
        "a result for a task no worker was sent: {reply:?}"
    );

    let letters = d.dead_letters().await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    let metrics = d.metrics_text().await;
    assert_eq!(common::metric(&metrics, r#"porpoise_state_events_dropped_total{kind="task_state_change"}"#), 2.0);
    let after = d.admin().await.get_run(GetRunRequest { run_id: id }).await.expect("get").into_inner();
    let state = |name: &str| {
        let t = after.tasks.iter().find(|t| t.task_name == name).expect("task");
        (t.state.clone(), t.attempt)
    };
    assert_eq!(state("retried"), ("running".to_string(), 2), "nothing changed");
    assert_eq!(state("stuck"), ("submitted".to_string(), 1), "nothing changed");
    open_gate_file(&dir.join("gate"));
    d.wait_for_run(id, "retried succeeds", |run| {
        run.tasks.iter().any(|t| t.task_name == "retried" && t.state == "success")
    })
    .await;
}

fn open_gate_file(path: &std::path::Path) {
    std::fs::write(path, "").expect("open a gate");
}

/// A task instance's (id, recorded worker, state).
type Recorded = (i64, Option<String>, String);

/// A worker's answer to a dispatch: status and message.
type Answer = (i32, String);

/// Sits between the master and the worker: forwards WorkerService calls, and throws away the
/// reply to the first dispatch of each task. When a dispatch arrives, it reads the task instance
/// from the database: the worker must already be recorded there.
#[derive(Clone)]
struct DispatchReplyDropper {
    worker: Arc<Mutex<String>>,
    database_url: String,
    proxy_addr: String,
    /// task instance → dispatches seen
    seen: Arc<Mutex<HashMap<i64, u32>>>,
    /// task instance → the worker's answers to its resent dispatches (status, message)
    resend_replies: Arc<Mutex<HashMap<i64, Vec<Answer>>>>,
    /// What the database held at the moment of each task's first dispatch.
    recorded: Arc<Mutex<Vec<Recorded>>>,
}

impl DispatchReplyDropper {
    async fn client(&self) -> Result<WorkerServiceClient<tonic::transport::Channel>, Status> {
        let worker = self.worker.lock().expect("lock").clone();
        WorkerServiceClient::connect(format!("http://{worker}")).await.map_err(|e| Status::unavailable(e.to_string()))
    }
}

#[tonic::async_trait]
impl WorkerService for DispatchReplyDropper {
    async fn dispatch_task(
        &self,
        request: Request<DispatchTaskRequest>,
    ) -> Result<Response<DispatchTaskReply>, Status> {
        let req = request.into_inner();
        let first = {
            let mut seen = self.seen.lock().expect("lock");
            let n = seen.entry(req.task_instance_id).or_default();
            *n += 1;
            *n == 1
        };
        if first {
            let pool = sqlx::PgPool::connect(&self.database_url).await.map_err(|e| Status::internal(e.to_string()))?;
            let (worker, state): (Option<String>, String) =
                sqlx::query_as("SELECT worker_addr, state FROM task_instance WHERE id = $1")
                    .bind(req.task_instance_id)
                    .fetch_one(&pool)
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
            self.recorded.lock().expect("lock").push((req.task_instance_id, worker, state));
        }
        let ti = req.task_instance_id;
        let reply = self.client().await?.dispatch_task(req).await?;
        if !first {
            let r = reply.get_ref();
            self.resend_replies.lock().expect("lock").entry(ti).or_default().push((r.status, r.message.clone()));
        }
        if first { Err(Status::unavailable("reply lost on the way back")) } else { Ok(reply) }
    }

    async fn kill_task(&self, request: Request<KillTaskRequest>) -> Result<Response<KillTaskReply>, Status> {
        self.client().await?.kill_task(request.into_inner()).await
    }

    async fn get_task_log(&self, request: Request<GetTaskLogRequest>) -> Result<Response<GetTaskLogReply>, Status> {
        self.client().await?.get_task_log(request.into_inner()).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_whose_reply_is_lost_runs_the_task_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
    let proxy_addr = listener.local_addr().expect("addr").to_string();
    let pg = TestPostgres::shared();
    let options = ClusterOptions { worker_advertise: Some(proxy_addr.clone()), ..Default::default() };
    let mut d = Deployment::cluster_on(pg, options).await;
    let common::Database::Postgres(url) = d.database.clone() else { panic!("a cluster runs on Postgres") };
    let proxy = DispatchReplyDropper {
        worker: Arc::new(Mutex::new(d.worker_addr.clone().expect("worker address"))),
        database_url: url,
        proxy_addr: proxy_addr.clone(),
        seen: Arc::default(),
        resend_replies: Arc::default(),
        recorded: Arc::default(),
    };
    common::serve(listener, tonic::service::Routes::new(WorkerServiceServer::new(proxy.clone())));

    let marks = d.path("marks");
    d.apply("chain", &chain("chain", &marks.display().to_string(), "0"));
    let out = d.porpoise(&["run", "chain", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", String::from_utf8_lossy(&out.stderr), d.logs_text());
    assert_eq!(lines(&marks).len(), 3, "each task ran exactly once although every first dispatch reply was lost");
    // the master resends each unanswered dispatch (the last one maybe after the run ended);
    // the worker's answer to a resend is where it decides not to run the attempt again
    let answered = proxy.resend_replies.clone();
    d.wait_until("every resent dispatch is answered", || {
        let answered = answered.clone();
        async move { answered.lock().expect("lock").len() == 3 }
    })
    .await;
    for (ti, replies) in proxy.resend_replies.lock().expect("lock").iter() {
        for (status, message) in replies {
            assert_eq!(*status, DispatchStatus::Accepted as i32, "task {ti}: resend answered {message}");
            assert_eq!(message, "already accepted", "task {ti}: the worker did not recognise the resend");
        }
    }
    d.wait_for_no_task_process().await;
    assert_eq!(lines(&marks).len(), 3, "the resent dispatches ran nothing again");
    for (ti, worker, state) in proxy.recorded.lock().expect("lock").iter() {
        assert_eq!(
            worker.as_deref(),
            Some(proxy.proxy_addr.as_str()),
            "task {ti}: the worker is recorded before the dispatch"
        );
        assert_eq!(state, "dispatched", "task {ti}");
    }
    let run = d.finished_run(common::run_id(&out)).await;
    assert!(run.tasks.iter().all(|t| t.state == "success" && t.attempt == 1), "{run:?}");
}

/// The only master is killed (SIGKILL) while tasks run on the worker; they finish while it is
/// away; it is started again at the same address. Every run completes, and no task ran twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_started_again_completes_its_runs_and_runs_nothing_twice() {
    let mut d = Deployment::cluster().await;
    let dir = d.dir.path().to_path_buf();
    d.apply("resume", &gated_chain("resume", &dir));
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(d.start_run("resume").await);
    }
    for &id in &runs {
        d.wait_for_run(id, "task one runs", |run| {
            run.tasks.iter().any(|t| t.task_name == "one" && t.state == "running")
        })
        .await;
    }
    d.kill("porpoise-master");
    open_gate(&dir, "one");
    open_gate(&dir, "two");
    open_gate(&dir, "three");
    d.start_again("porpoise-master");
    d.wait_for_master().await;
    for &id in &runs {
        let run = d.finished_run(id).await;
        assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}\n{}", d.logs_text());
        assert!(run.tasks.iter().all(|t| t.state == "success" && t.attempt == 1), "{run:?}");
    }
    let marks = dir.join("marks");
    d.wait_for_no_task_process().await;
    let mut ran = lines(&marks);
    ran.sort();
    assert_eq!(ran, ["one", "one", "one", "three", "three", "three", "two", "two", "two"], "each task ran once");
}

/// Task `name` of `run`; fails the test if it has none.
fn task_named<'a>(run: &'a GetRunReply, name: &str) -> &'a porpoise_proto::v1::TaskInstanceInfo {
    find_task(run, name).expect("the task exists")
}

/// Task `name` of `run`, if it has been created.
fn find_task<'a>(run: &'a GetRunReply, name: &str) -> Option<&'a porpoise_proto::v1::TaskInstanceInfo> {
    run.tasks.iter().find(|t| t.task_name == name)
}

/// The worker running a task is killed (SIGKILL) while a second worker is alive: the task runs
/// again, as a new attempt, on the other worker, and the run succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_on_a_killed_worker_runs_again_on_the_other_worker() {
    let options = ClusterOptions { workers: Some(2), ..Default::default() };
    let mut d = Deployment::cluster_on(TestPostgres::shared(), options).await;
    let dir = d.dir.path().to_path_buf();
    d.apply("failover", &gated_chain("failover", &dir));
    let id = d.start_run("failover").await;
    d.wait_for_run(id, "task one runs", |run| find_task(run, "one").is_some_and(|t| t.state == "running")).await;
    let mut admin = d.admin().await;
    let run = admin.get_run(GetRunRequest { run_id: id }).await.expect("get").into_inner();
    let doomed = task_named(&run, "one").worker_addr.clone();
    let name = d.worker_addrs.get(&doomed).expect("one of the deployment's workers").clone();
    d.kill(&name);
    d.wait_for_run(id, "task one runs again on the other worker", |run| {
        find_task(run, "one").is_some_and(|one| one.attempt == 2 && one.state == "running" && one.worker_addr != doomed)
    })
    .await;
    for gate in ["one", "two", "three"] {
        open_gate(&dir, gate);
    }
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}");
    let one = task_named(&run, "one");
    assert!(one.warning.contains("attempt 1 failed over") && one.warning.contains(&doomed), "{one:?}");
    let mut ran = lines(&dir.join("marks"));
    ran.sort();
    assert_eq!(ran, ["one", "one", "three", "two"], "one ran on each worker; the rest once");
}

/// `porpoise standalone` killed mid-run (SIGKILL) and started again on its data directory: what
/// its worker left running is ended, the task runs again, and the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_standalone_started_again_completes_its_runs() {
    let mut d = Deployment::standalone().await;
    let dir = d.dir.path().to_path_buf();
    d.apply("again", &gated_chain("again", &dir));
    let id = d.start_run("again").await;
    d.wait_for_run(id, "task one runs", |run| find_task(run, "one").is_some_and(|t| t.state == "running")).await;
    d.kill("porpoise");
    d.start_again("porpoise");
    d.wait_for_master().await;
    d.wait_for_run(id, "task one runs again", |run| {
        find_task(run, "one").is_some_and(|one| one.attempt == 2 && one.state == "running")
    })
    .await;
    for gate in ["one", "two", "three"] {
        open_gate(&dir, gate);
    }
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}\n{}", d.logs_text());
    let mut ran = lines(&dir.join("marks"));
    ran.sort();
    assert_eq!(ran, ["one", "one", "three", "two"], "one ran again after the restart; the rest once");
}

/// Two masters share 100 runs; the owner of most is killed (SIGKILL) while their tasks run.
/// The survivor takes them over, the workers' results reach it, and every task ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_masters_runs_are_taken_over_and_every_task_runs_once() {
    runs_taken_over_from_a_master_stopped_by(Stop::Kill, 100, None).await;
}

/// As above (20 runs), with Postgres stopped for longer than the master's lease right after
/// the kill: the takeover cannot happen until Postgres is back, and then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_during_a_postgres_outage_completes_once_it_is_back() {
    runs_taken_over_from_a_master_stopped_by(Stop::Kill, 20, Some(TestPostgres::start())).await;
}

/// As above, with SIGTERM: the master leaves the registry first, so the survivor takes its
/// runs over without waiting for its lease to end, and it exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masters_runs_are_handed_over_when_it_is_stopped_with_sigterm() {
    runs_taken_over_from_a_master_stopped_by(Stop::Term, 20, None).await;
}

/// As above, with the master paused (SIGSTOP) until the survivor has taken its runs over, then
/// resumed (SIGCONT) while their tasks still run: it learns that it lost its lease, its runners
/// find their runs owned by the survivor and stop, whatever it still tries to write is refused,
/// and every task runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_master_writes_nothing_for_the_runs_it_lost() {
    runs_taken_over_from_a_master_stopped_by(Stop::Pause, 20, None).await;
}

/// How the test stops the master that owns the most runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    Kill,
    Term,
    /// SIGSTOP until its runs are taken over, then SIGCONT.
    Pause,
}

/// Two masters share `n` gated runs; the owner of most is stopped as `how` says while their
/// first tasks run (and, given a private Postgres, that is stopped for 10 s right after); the
/// survivor completes every run and each task runs once.
async fn runs_taken_over_from_a_master_stopped_by(how: Stop, n: usize, outage: Option<TestPostgres>) {
    let options = ClusterOptions { masters: Some(2), workers: Some(2), slots: Some(64), ..Default::default() };
    let mut d = Deployment::cluster_on(outage.as_ref().unwrap_or_else(|| TestPostgres::shared()), options).await;
    let dir = d.dir.path().to_path_buf();
    d.apply("pair", &gated_chain("pair", &dir));
    let mut runs = Vec::new();
    for _ in 0..n {
        runs.push(d.start_run("pair").await);
    }
    for &id in &runs {
        d.wait_for_run(id, "task one runs", |run| find_task(run, "one").is_some_and(|t| t.state == "running")).await;
    }
    // both masters count the whole cluster's runs from the database
    for (_, metrics_addr, _) in d.masters.clone() {
        d.wait_until("the cluster gauge to count the running runs", || {
            let metrics_addr = metrics_addr.clone();
            async move {
                let text = common::scrape(&metrics_addr).await;
                common::metric(&text, r#"porpoise_cluster_workflow_instances{state="running"}"#) == n as f64
            }
        })
        .await;
    }
    let mut admin = d.admin().await;
    let mut owners = HashMap::<String, usize>::new();
    for &id in &runs {
        let run = admin.get_run(GetRunRequest { run_id: id }).await.expect("get").into_inner();
        *owners.entry(run.run.map(|r| r.owner).unwrap_or_default()).or_default() += 1;
    }
    // kill the master that owns the most runs; talk to the other from now on
    let (doomed, taken) = owners.iter().max_by_key(|(_, n)| **n).map(|(o, n)| (o.clone(), *n)).expect("owners");
    let doomed_index = d.masters.iter().position(|m| m.0 == doomed).expect("a master of the deployment");
    let name = d.masters[doomed_index].2.clone();
    match how {
        Stop::Kill => d.kill(&name),
        Stop::Term => {
            d.signal(&name, "TERM");
            let status = d.wait_exit(&name).await;
            assert!(status.success(), "the master exits 0 after SIGTERM: {status}\n{}", d.logs_text());
        }
        Stop::Pause => {
            d.signal(&name, "STOP");
            d.use_master(1 - doomed_index).await;
            let admin = d.admin().await;
            let (runs, doomed) = (runs.clone(), doomed.clone());
            d.wait_until("the survivor to take over every run of the paused master", || {
                let (mut admin, runs, doomed) = (admin.clone(), runs.clone(), doomed.clone());
                async move {
                    for id in runs {
                        match admin.get_run(GetRunRequest { run_id: id }).await {
                            Ok(run) if run.get_ref().run.as_ref().is_some_and(|r| r.owner != doomed) => {}
                            _ => return false,
                        }
                    }
                    true
                }
            })
            .await;
            d.signal(&name, "CONT");
            // before any task ends (no event tells it), the resumed master finds that it lost
            // its lease and that its runs are the survivor's, and stops their runners
            let paused_metrics = d.masters[doomed_index].1.clone();
            d.wait_until("the resumed master to stop the runners of the runs it lost", || {
                let paused_metrics = paused_metrics.clone();
                async move {
                    let text = common::scrape(&paused_metrics).await;
                    common::metric(&text, "porpoise_master_registrations_lost_total") >= 1.0
                        && common::metric(&text, "porpoise_workflow_instances_running") == 0.0
                }
            })
            .await;
        }
    }
    if let Some(pg) = &outage {
        pg.stop();
        // longer than the killed master's lease (3 s): the survivor would take over now
        tokio::time::sleep(Duration::from_secs(10)).await;
        pg.restart();
    }
    d.use_master(1 - doomed_index).await;
    for gate in ["one", "two", "three"] {
        open_gate(&dir, gate);
    }
    for &id in &runs {
        let run = d.finished_run(id).await;
        let summary = run.run.clone().expect("the run");
        assert_eq!(summary.state, "success", "{run:?}\n{}", d.logs_text());
        assert_ne!(summary.owner, doomed, "the run was taken over");
        assert!(run.tasks.iter().all(|t| t.state == "success" && t.attempt == 1), "{run:?}");
    }
    let marks = dir.join("marks");
    d.wait_for_no_task_process().await;
    let ran = lines(&marks);
    for task in ["one", "two", "three"] {
        assert_eq!(ran.iter().filter(|l| *l == task).count(), n, "task {task} ran once per run");
    }
    if how == Stop::Pause {
        let letters = d.dead_letters().await;
        assert!(letters.is_empty(), "nothing was dead-lettered: {letters:?}");
    }
    let metrics = d.metrics_text().await;
    let taken_over = common::metric(&metrics, r#"porpoise_failovers_total{kind="master"}"#);
    assert_eq!(taken_over, taken as f64, "the survivor took over each of the stopped master's runs");
    // the cluster-wide gauges come from the database: nothing is left running or unowned
    let metrics_addr = d.metrics.clone().expect("metrics");
    d.wait_until("the cluster gauges to show no unfinished run", || {
        let metrics_addr = metrics_addr.clone();
        async move {
            let text = common::scrape(&metrics_addr).await;
            common::metric(&text, r#"porpoise_cluster_workflow_instances{state="running"}"#) == 0.0
                && common::metric(&text, "porpoise_workflow_instances_without_live_owner") == 0.0
        }
    })
    .await;
}

/// Starts two workers with `grace` as their shutdown grace and one gated run; returns the
/// deployment, the run, and the process name and address of the worker running task one.
async fn gated_run_on_two_workers(grace: &str) -> (Deployment, i64, String, String) {
    let options = ClusterOptions {
        workers: Some(2),
        worker_args: vec!["--shutdown-grace".into(), grace.into()],
        ..Default::default()
    };
    let mut d = Deployment::cluster_on(TestPostgres::shared(), options).await;
    let dir = d.dir.path().to_path_buf();
    d.apply("drain", &gated_chain("drain", &dir));
    let id = d.start_run("drain").await;
    d.wait_for_run(id, "task one runs", |run| find_task(run, "one").is_some_and(|t| t.state == "running")).await;
    let mut admin = d.admin().await;
    let run = admin.get_run(GetRunRequest { run_id: id }).await.expect("get").into_inner();
    let addr = task_named(&run, "one").worker_addr.clone();
    let name = d.worker_addrs.get(&addr).expect("one of the deployment's workers").clone();
    (d, id, name, addr)
}

/// SIGTERM on a worker whose task ends within the grace period: it takes nothing new, the
/// task's result is delivered, the task is not run again, and the worker exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_with_sigterm_lets_its_task_finish() {
    let (mut d, id, name, addr) = gated_run_on_two_workers("60s").await;
    let dir = d.dir.path().to_path_buf();
    d.sigterm(&name);
    let worker = name.clone();
    let log = d.dir.path().join(format!("{worker}.log"));
    d.wait_until("the worker drains", || {
        let log = log.clone();
        async move { std::fs::read_to_string(&log).is_ok_and(|l| l.contains("draining: waiting for running tasks")) }
    })
    .await;
    open_gate(&dir, "one");
    let status = d.wait_exit(&name).await;
    assert!(status.success(), "the worker exits 0 after SIGTERM: {status}\n{}", d.logs_text());
    open_gate(&dir, "two");
    open_gate(&dir, "three");
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}");
    let one = task_named(&run, "one");
    assert_eq!((one.attempt, one.worker_addr.as_str()), (1, addr.as_str()), "the result came from the stopped worker");
    assert!(run.tasks.iter().filter(|t| t.task_name != "one").all(|t| t.worker_addr != addr), "{run:?}");
    let mut ran = lines(&dir.join("marks"));
    ran.sort();
    assert_eq!(ran, ["one", "three", "two"], "each task ran once");
}

/// SIGTERM on a worker whose task outlasts the grace period: the task's processes are killed
/// (none survives), the attempt is failed over to the other worker, and the run succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_grace_runs_out_kills_its_task_and_it_runs_elsewhere() {
    let (mut d, id, name, addr) = gated_run_on_two_workers("1s").await;
    let dir = d.dir.path().to_path_buf();
    let status = d.terminate(&name).await;
    assert!(status.success(), "the worker exits 0 after SIGTERM: {status}\n{}", d.logs_text());
    d.wait_for_run(id, "task one runs again on the other worker", |run| {
        find_task(run, "one").is_some_and(|t| t.attempt == 2 && t.state == "running" && t.worker_addr != addr)
    })
    .await;
    let mut admin = d.admin().await;
    let run = admin.get_run(GetRunRequest { run_id: id }).await.expect("get").into_inner();
    let ti = task_named(&run, "one").task_instance_id;
    // a task process carries `<its worker's token>.<task instance>.<attempt>`; other tests'
    // task instances have the same small ids, so the worker's token tells them apart
    let token = |worker: &str, attempt: i32| {
        let token = std::fs::read_to_string(dir.join(worker).join("worker.token")).expect("the worker's token");
        format!("{}.{ti}.{attempt}", token.trim())
    };
    let other = if name == "porpoise-worker" { "porpoise-worker-2" } else { "porpoise-worker" };
    let survivors = porpoise_testkit::processes_with_env("PORPOISE_TASK_TOKEN", &token(&name, 1));
    assert!(survivors.is_empty(), "processes of the killed attempt survived: {survivors:?}");
    // the same lookup finds the new attempt's processes: the check above can see them
    assert!(!porpoise_testkit::processes_with_env("PORPOISE_TASK_TOKEN", &token(other, 2)).is_empty());
    for gate in ["one", "two", "three"] {
        open_gate(&dir, gate);
    }
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}");
    let one = task_named(&run, "one");
    assert!(one.warning.contains("stopped before the task ended"), "{one:?}");
}

/// A workflow `name` of one task, `one`, that marks each execution in `DIR/marks` and holds a
/// lock while it runs (until the test opens gate `one`): an execution that starts while another
/// holds the lock marks `overlap`.
fn overlap_detecting_task(name: &str, dir: &std::path::Path) -> String {
    common::close_gate(&dir.join("gate-one"));
    let command = format!(
        "exec 9>{lock}; flock -n 9 || echo overlap >> {marks}; echo one >> {marks}; {wait}",
        lock = dir.join("lock").display(),
        marks = dir.join("marks").display(),
        wait = common::wait_at(&dir.join("gate-one"))
    );
    format!("name: {name}\ntasks:\n  - name: one\n    command: {command:?}\n")
}

/// A worker paused (SIGSTOP) past its lease while it runs a task, then resumed (SIGCONT): its
/// watchdog ends the task before the master starts it on the other worker, so two executions
/// never overlap (each holds a lock while it runs); the resumed worker's report of the old
/// attempt changes nothing, and the run succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_never_leaves_two_executions_of_its_task_running() {
    let options = ClusterOptions { workers: Some(2), ..Default::default() };
    let mut d = Deployment::cluster_on(TestPostgres::shared(), options).await;
    let dir = d.dir.path().to_path_buf();
    d.apply("paused", &overlap_detecting_task("paused", &dir));
    let id = d.start_run("paused").await;
    d.wait_for_run(id, "task one runs", |run| find_task(run, "one").is_some_and(|t| t.state == "running")).await;
    let mut admin = d.admin().await;
    let run = admin.get_run(GetRunRequest { run_id: id }).await.expect("get").into_inner();
    let paused = task_named(&run, "one").worker_addr.clone();
    let name = d.worker_addrs.get(&paused).expect("one of the deployment's workers").clone();
    d.signal(&name, "STOP");
    d.wait_for_run(id, "task one runs again on the other worker", |run| {
        find_task(run, "one").is_some_and(|t| t.attempt == 2 && t.state == "running" && t.worker_addr != paused)
    })
    .await;
    d.signal(&name, "CONT");
    open_gate(&dir, "one");
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}");
    assert_eq!(task_named(&run, "one").attempt, 2);
    let ran = lines(&dir.join("marks"));
    assert!(!ran.contains(&"overlap".to_string()), "two executions overlapped: {ran:?}");
    assert_eq!(ran, ["one", "one"]);
}

/// A worker cut off from etcd (the network between them fails; the masters still reach etcd)
/// while it runs a task: it asks the master, learns that it is the one cut off, and kills its
/// task before its lease ends; the master runs the task again on the other worker, and the two
/// executions never overlap (each holds a lock while it runs). Once the network is back the
/// worker registers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_etcd_ends_its_task_before_it_runs_elsewhere() {
    let etcd = porpoise_testkit::TestEtcd::shared();
    let proxy = porpoise_testkit::CuttableProxy::start(&etcd.endpoint()).await;
    let options = ClusterOptions { first_worker_etcd: Some(proxy.endpoint.clone()), ..Default::default() };
    let mut d = Deployment::cluster_on(TestPostgres::shared(), options).await;
    let dir = d.dir.path().to_path_buf();
    d.apply("cut", &overlap_detecting_task("cut", &dir));
    let id = d.start_run("cut").await;
    d.wait_for_run(id, "task one runs", |run| find_task(run, "one").is_some_and(|t| t.state == "running")).await;
    let first = d.worker_addr.clone().expect("the first worker");
    let second = d.start_worker_like("porpoise-worker", "porpoise-worker-2", &etcd.endpoint());
    let metrics = d.metrics.clone().expect("metrics");
    let workers_seen = |n: f64| {
        let metrics = metrics.clone();
        move || {
            let metrics = metrics.clone();
            async move { common::metric(&common::scrape(&metrics).await, r#"porpoise_workers{group="default"}"#) == n }
        }
    };
    d.wait_until("the second worker registers", workers_seen(2.0)).await;
    proxy.cut();
    d.wait_for_run(id, "task one runs again on the other worker", |run| {
        find_task(run, "one").is_some_and(|t| t.attempt == 2 && t.state == "running" && t.worker_addr == second)
    })
    .await;
    assert!(d.log_of("porpoise-worker").contains("fenced off"), "{}", d.log_of("porpoise-worker"));
    let run = d.admin().await.get_run(GetRunRequest { run_id: id }).await.expect("get").into_inner();
    assert_eq!(task_named(&run, "one").attempt, 2, "failed over once, from {first}");
    proxy.heal();
    open_gate(&dir, "one");
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}");
    let ran = lines(&dir.join("marks"));
    assert!(!ran.contains(&"overlap".to_string()), "two executions overlapped: {ran:?}");
    assert_eq!(ran, ["one", "one"]);
    // back on the network, the worker registers again and takes tasks
    let log = dir.join("porpoise-worker.log");
    d.wait_until("the cut-off worker to take tasks again", || {
        let log = log.clone();
        async move { std::fs::read_to_string(&log).is_ok_and(|l| l.contains("taking tasks again")) }
    })
    .await;
    d.wait_until("both workers to be listed again", workers_seen(2.0)).await;
}

/// A worker's task finished, but the report never reached the master (the network ate it);
/// the worker is killed (SIGKILL) and started again on its data directory. The result is
/// delivered from its journal, and the task is not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_a_killed_worker_never_delivered_comes_from_its_journal() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
    let proxy_addr = listener.local_addr().expect("addr").to_string();
    let dropper = AckDropper {
        master: Arc::default(),
        drop_replies: Arc::new(Mutex::new(0)),
        forwarded: Arc::default(),
        acked: Arc::default(),
        swallow: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        results: Arc::default(),
    };
    common::serve(listener, tonic::service::Routes::new(TaskEventServiceServer::new(dropper.clone())));
    let options = ClusterOptions { advertise: Some(proxy_addr.clone()), ..Default::default() };
    let mut d = Deployment::cluster_on(TestPostgres::shared(), options).await;
    *dropper.master.lock().expect("lock") = d.master_addr.clone();
    let dir = d.dir.path().to_path_buf();
    let marks = dir.join("marks");
    d.apply(
        "journal",
        &format!("name: journal\ntasks:\n  - name: one\n    command: echo one >> {}\n", marks.display()),
    );
    let id = d.start_run("journal").await;
    let results = dropper.results.clone();
    d.wait_until("the worker to report the result", || {
        let results = results.clone();
        async move { !results.lock().expect("lock").is_empty() }
    })
    .await;
    d.kill("porpoise-worker");
    d.start_again("porpoise-worker");
    dropper.swallow.store(false, std::sync::atomic::Ordering::SeqCst);
    let run = d.finished_run(id).await;
    assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}\n{}", d.logs_text());
    assert_eq!(task_named(&run, "one").attempt, 1, "the result of attempt 1 was delivered");
    assert_eq!(lines(&marks), ["one"], "the task ran once");
}

/// etcd is down (SIGKILL) for longer than three lease TTLs while tasks run, then comes back.
/// Masters and workers keep the membership they last saw, tasks finish and report, every run
/// completes, and no task runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_mid_run_loses_nothing_and_runs_nothing_twice() {
    let options = ClusterOptions { workers: Some(2), ..Default::default() };
    let mut d = Deployment::cluster_on(TestPostgres::shared(), options).await;
    let dir = d.dir.path().to_path_buf();
    d.apply("outage", &gated_chain("outage", &dir));
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(d.start_run("outage").await);
    }
    for &id in &runs {
        d.wait_for_run(id, "task one runs", |run| find_task(run, "one").is_some_and(|t| t.state == "running")).await;
    }
    let etcd = porpoise_testkit::TestEtcd::shared();
    etcd.kill();
    open_gate(&dir, "one");
    for &id in &runs {
        d.wait_for_run(id, "task two runs while etcd is down", |run| {
            find_task(run, "two").is_some_and(|t| t.state == "running")
        })
        .await;
    }
    // the outage outlasts three lease TTLs (3 s each)
    tokio::time::sleep(Duration::from_secs(10)).await;
    etcd.restart();
    open_gate(&dir, "two");
    open_gate(&dir, "three");
    for &id in &runs {
        let run = d.finished_run(id).await;
        assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}\n{}", d.logs_text());
        assert!(run.tasks.iter().all(|t| t.attempt == 1), "no task was failed over: {run:?}");
    }
    d.wait_for_no_task_process().await;
    let ran = lines(&dir.join("marks"));
    for task in ["one", "two", "three"] {
        assert_eq!(ran.iter().filter(|l| *l == task).count(), 5, "task {task} ran once per run: {ran:?}");
    }
}

/// Both masters restarted (SIGKILL, then started again) one after the other while runs keep
/// coming: every run completes once, and each task runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_restarted_one_after_another_under_load_complete_every_run_once() {
    let options = ClusterOptions { masters: Some(2), slots: Some(32), ..Default::default() };
    let mut d = Deployment::cluster_on(TestPostgres::shared(), options).await;
    let marks = d.path("marks");
    d.apply("rolling", &chain("rolling", &marks.display().to_string(), "0.2"));
    let mut runs = Vec::new();
    for round in 0..2 {
        for _ in 0..10 {
            runs.push(d.start_run("rolling").await);
        }
        let (_, _, name) = d.masters[round].clone();
        // the CLI talks to the master that stays up
        d.use_master(1 - round).await;
        d.kill(&name);
        for _ in 0..10 {
            runs.push(d.start_run("rolling").await);
        }
        d.start_again(&name);
        d.use_master(round).await;
    }
    for &id in &runs {
        let run = d.finished_run(id).await;
        assert_eq!(run.run.as_ref().map(|r| r.state.as_str()), Some("success"), "{run:?}\n{}", d.logs_text());
        assert!(run.tasks.iter().all(|t| t.state == "success"), "{run:?}");
    }
    d.wait_for_no_task_process().await;
    let mut ran = lines(&marks);
    let total = ran.len();
    ran.sort();
    ran.dedup();
    assert_eq!((ran.len(), total), (runs.len() * 3, runs.len() * 3), "each task ran once");
}
