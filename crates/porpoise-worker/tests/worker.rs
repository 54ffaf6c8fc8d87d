//! The worker as a real gRPC server, dispatched to by a real gRPC client and reporting to a
//! test master that serves a real `TaskEventService` on loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use porpoise_proto::v1::task_event_service_server::{TaskEventService, TaskEventServiceServer};
use porpoise_proto::v1::worker_service_client::WorkerServiceClient;
use porpoise_proto::v1::{
    AckStatus, DispatchStatus, DispatchTaskRequest, EventAck, GetTaskLogRequest, KillTaskRequest,
    ReportTaskEventsReply, ReportTaskEventsRequest, TaskEvent, TaskOutcome, task_event,
};
use porpoise_registry::{MemoryRegistry, Registry, Selector};
use porpoise_testkit::processes_named;
use porpoise_worker::{WorkerConfig, WorkerHandle};
use tokio::sync::Notify;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Events the test master handled, in arrival order, and how many report calls to refuse.
#[derive(Debug, Default)]
struct Master {
    handled: Mutex<Vec<TaskEvent>>,
    /// The events of each call it handled, call by call.
    calls_handled: Mutex<Vec<Vec<TaskEvent>>>,
    refuse_calls: Mutex<u32>,
    calls: Mutex<u32>,
    changed: Notify,
}

#[derive(Debug, Clone)]
struct MasterSvc(Arc<Master>);

#[tonic::async_trait]
impl TaskEventService for MasterSvc {
    async fn report_task_events(
        &self,
        request: Request<ReportTaskEventsRequest>,
    ) -> Result<Response<ReportTaskEventsReply>, Status> {
        let events = request.into_inner().events;
        *self.0.calls.lock().expect("lock") += 1;
        let refuse = {
            let mut r = self.0.refuse_calls.lock().expect("lock");
            let refuse = *r > 0;
            *r = r.saturating_sub(1);
            refuse
        };
        let status = if refuse { AckStatus::RetryLater } else { AckStatus::Handled };
        let acks = events
            .iter()
            .map(|e| EventAck {
                event_id: e.event_id.clone(),
                status: status as i32,
                message: String::new(),
                owner: String::new(),
            })
            .collect();
        if !refuse {
            self.0.calls_handled.lock().expect("lock").push(events.clone());
            self.0.handled.lock().expect("lock").extend(events);
            self.0.changed.notify_waiters();
        }
        Ok(Response::new(ReportTaskEventsReply { acks }))
    }

    async fn probe_registry(
        &self,
        _: Request<porpoise_proto::v1::ProbeRegistryRequest>,
    ) -> Result<Response<porpoise_proto::v1::ProbeRegistryReply>, Status> {
        Err(Status::unimplemented("the test master has no registry"))
    }
}

impl Master {
    async fn serve_on(listener: tokio::net::TcpListener, refuse_calls: u32) -> Arc<Master> {
        let master = Arc::new(Master { refuse_calls: Mutex::new(refuse_calls), ..Master::default() });
        let svc = TaskEventServiceServer::new(MasterSvc(master.clone()));
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .expect("test master serves");
        });
        master
    }

    async fn start(refuse_calls: u32) -> (Arc<Master>, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        (Master::serve_on(listener, refuse_calls).await, addr)
    }

    /// Waits until the events of attempt `(ti, attempt)` include a RESULT; returns them all.
    async fn wait_result(&self, ti: i64, attempt: i32) -> Vec<TaskEvent> {
        self.wait_event(ti, attempt, |e| matches!(e.kind, Some(task_event::Kind::Result(_)))).await
    }

    /// For each call that carried events of task instance `ti`, their kinds ("running",
    /// "result"), in order.
    fn reports_of(&self, ti: i64) -> Vec<Vec<&'static str>> {
        let calls = self.calls_handled.lock().expect("lock");
        calls
            .iter()
            .map(|events| {
                events
                    .iter()
                    .filter(|e| e.task_instance_id == ti)
                    .map(|e| match e.kind {
                        Some(task_event::Kind::Running(_)) => "running",
                        Some(task_event::Kind::Result(_)) => "result",
                        None => "none",
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|kinds| !kinds.is_empty())
            .collect()
    }

    /// Waits until an event of attempt `(ti, attempt)` satisfies `found`; returns them all.
    async fn wait_event(&self, ti: i64, attempt: i32, found: impl Fn(&TaskEvent) -> bool) -> Vec<TaskEvent> {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let events: Vec<TaskEvent> = self
                    .handled
                    .lock()
                    .expect("lock")
                    .iter()
                    .filter(|e| e.task_instance_id == ti && e.attempt == attempt)
                    .cloned()
                    .collect();
                if events.iter().any(&found) {
                    return events;
                }
                notified.await;
            }
        })
        .await
        .expect("the task's event arrives in time")
    }
}

struct Setup {
    worker: WorkerHandle,
    client: WorkerServiceClient<Channel>,
    registry: MemoryRegistry,
    dir: tempfile::TempDir,
}

async fn worker(slots: u32) -> Setup {
    worker_with_grace(slots, Duration::from_secs(5)).await
}

async fn worker_with_grace(slots: u32, shutdown_grace: Duration) -> Setup {
    worker_with(slots, |c| c.shutdown_grace = shutdown_grace).await
}

async fn worker_with(slots: u32, tune: impl FnOnce(&mut WorkerConfig)) -> Setup {
    let dir = tempfile::tempdir().expect("temporary directory");
    let registry = MemoryRegistry::new();
    let mut config = WorkerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise: None,
        group: "default".into(),
        slots,
        data_dir: dir.path().to_path_buf(),
        lease_ttl: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(5),
        // the test process may be root: its tasks run as it does
        tenants: porpoise_worker::tenant::TenantPolicy { allowed: None, allow_root: true },
        transport: Default::default(),
        report_linger: porpoise_worker::DEFAULT_REPORT_LINGER,
    };
    tune(&mut config);
    let worker = WorkerHandle::start(config, Arc::new(registry.clone())).await.expect("worker starts");
    let client = WorkerServiceClient::connect(format!("http://{}", worker.addr)).await.expect("connect to worker");
    Setup { worker, client, registry, dir }
}

fn dispatch(ti: i64, command: &str, master: SocketAddr) -> DispatchTaskRequest {
    DispatchTaskRequest {
        task_instance_id: ti,
        attempt: 1,
        workflow_instance_id: 1,
        workflow_name: "wf".into(),
        task_name: format!("t{ti}"),
        task_type: "shell".into(),
        command: command.into(),
        params: HashMap::from([("day".to_string(), "2026-01-01".to_string())]),
        timeout_ms: 0,
        master_addr: master.to_string(),
        epoch: 0,
        tenant: String::new(),
    }
}

async fn send(client: &mut WorkerServiceClient<Channel>, req: DispatchTaskRequest) -> DispatchStatus {
    let reply = client.dispatch_task(req).await.expect("dispatch call").into_inner();
    DispatchStatus::try_from(reply.status).expect("known status")
}

/// The whole log of attempt `attempt` of task instance `ti`, as the worker serves it.
async fn log_of(
    client: &mut WorkerServiceClient<Channel>,
    ti: i64,
    attempt: i32,
) -> porpoise_proto::v1::GetTaskLogReply {
    let request = GetTaskLogRequest { task_instance_id: ti, attempt, offset: 0, limit: 0 };
    client.get_task_log(request).await.expect("the log is served").into_inner()
}

fn result_of(events: &[TaskEvent]) -> porpoise_proto::v1::TaskResult {
    events
        .iter()
        .find_map(|e| match &e.kind {
            Some(task_event::Kind::Result(r)) => Some(r.clone()),
            _ => None,
        })
        .expect("a RESULT event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_shell_task_reports_running_then_result_and_serves_its_log() {
    let (master, addr) = Master::start(0).await;
    let mut s = worker(4).await;
    let cmd = r#"echo "hello ${day}"; echo "env $day"; echo oops >&2; pwd"#;
    assert_eq!(send(&mut s.client, dispatch(11, cmd, addr)).await, DispatchStatus::Accepted);
    let events = master.wait_result(11, 1).await;
    assert_eq!(events.len(), 2, "one RUNNING and one RESULT: {events:?}");
    assert!(matches!(events[0].kind, Some(task_event::Kind::Running(_))), "RUNNING first");
    let result = result_of(&events);
    assert_eq!((result.outcome, result.exit_code), (TaskOutcome::Success as i32, Some(0)));
    assert!(result.ended_at_ms >= result.started_at_ms);

    let log = log_of(&mut s.client, 11, 1).await;
    let text = String::from_utf8_lossy(&log.content);
    assert!(text.contains("hello 2026-01-01"), "params substituted: {text}");
    assert!(text.contains("env 2026-01-01"), "params exported: {text}");
    assert!(text.contains("oops"), "stderr captured: {text}");
    assert!(text.contains("/tasks/11.1"), "runs in its own working directory: {text}");
    assert!(log.eof);

    // a log written by a worker before the flat layout (`tasks/<id>/<attempt>/`) is served too
    let old = s.dir.path().join("tasks/12/3");
    std::fs::create_dir_all(&old).expect("old layout");
    std::fs::write(old.join("task.log"), "from before the upgrade\n").expect("old log");
    assert_eq!(log_of(&mut s.client, 12, 3).await.content, b"from before the upgrade\n");

    let workers = s.registry.members(&Selector::Workers { group: Some("default".into()) }).await.expect("members");
    assert_eq!(workers.len(), 1);
    assert_eq!((workers[0].key.addr.as_str(), workers[0].heartbeat.slots), (s.worker.addr.as_str(), 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_reports_its_exit_code() {
    let (master, addr) = Master::start(0).await;
    let mut s = worker(4).await;
    send(&mut s.client, dispatch(12, "echo failing; exit 3", addr)).await;
    let result = result_of(&master.wait_result(12, 1).await);
    assert_eq!((result.outcome, result.exit_code), (TaskOutcome::Failure as i32, Some(3)));
}

/// A task that ends within the worker's report linger is reported in one call, RUNNING and
/// RESULT together, so that the master saves its attempt once; a task that runs on past the
/// linger has its RUNNING reported on its own while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_tasks_running_and_result_go_in_one_report_a_long_tasks_running_goes_ahead() {
    let (master, addr) = Master::start(0).await;
    // long enough that `true` ends within it however loaded the machine is
    let mut s = worker_with(4, |c| c.report_linger = Duration::from_secs(2)).await;
    assert_eq!(send(&mut s.client, dispatch(21, "true", addr)).await, DispatchStatus::Accepted);
    master.wait_result(21, 1).await;
    assert_eq!(master.reports_of(21), [["running", "result"]], "one report with both events");

    let gate = tempfile::tempdir().expect("dir");
    let go = gate.path().join("go");
    let cmd = format!("while [ ! -e {} ]; do sleep 0.01; done", go.display());
    assert_eq!(send(&mut s.client, dispatch(22, &cmd, addr)).await, DispatchStatus::Accepted);
    master.wait_event(22, 1, |e| matches!(e.kind, Some(task_event::Kind::Running(_)))).await;
    assert_eq!(master.reports_of(22), [["running"]], "RUNNING reported while the task runs");
    std::fs::write(&go, b"").expect("open the gate");
    master.wait_result(22, 1).await;
    assert_eq!(master.reports_of(22), [["running"], ["result"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_dispatch_runs_the_task_once() {
    let (master, addr) = Master::start(0).await;
    let mut s = worker(4).await;
    let marker = tempfile::tempdir().expect("dir");
    let file = marker.path().join("runs");
    let cmd = format!("echo run >> {}; sleep 0.3", file.display());
    assert_eq!(send(&mut s.client, dispatch(13, &cmd, addr)).await, DispatchStatus::Accepted);
    // the reply was "lost": the master sends the same attempt again, while it runs and after
    assert_eq!(send(&mut s.client, dispatch(13, &cmd, addr)).await, DispatchStatus::Accepted);
    master.wait_result(13, 1).await;
    assert_eq!(send(&mut s.client, dispatch(13, &cmd, addr)).await, DispatchStatus::Accepted);
    let runs = std::fs::read_to_string(&file).expect("marker");
    assert_eq!(runs.lines().count(), 1, "ran exactly once");
    let events = master.handled.lock().expect("lock").iter().filter(|e| e.task_instance_id == 13).count();
    assert_eq!(events, 2, "one RUNNING and one RESULT, no more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatches_beyond_the_slots_are_rejected_and_kill_frees_the_slot() {
    let (master, addr) = Master::start(0).await;
    let mut s = worker(1).await;
    assert_eq!(send(&mut s.client, dispatch(14, "sleep 60", addr)).await, DispatchStatus::Accepted);
    assert_eq!(send(&mut s.client, dispatch(15, "echo second", addr)).await, DispatchStatus::Full);
    let killed = s.client.kill_task(KillTaskRequest { task_instance_id: 14, attempt: 1 }).await.expect("kill");
    assert!(killed.into_inner().found);
    let result = result_of(&master.wait_result(14, 1).await);
    assert_eq!(result.outcome, TaskOutcome::Killed as i32);
    assert_eq!(send(&mut s.client, dispatch(15, "echo second", addr)).await, DispatchStatus::Accepted);
    master.wait_result(15, 1).await;
}

/// A task that leaves three `sleep 300`s named `NAME-…`: one in its process group, one that
/// left the group with setsid, and one that also left the shell's tree (double fork + setsid).
fn sprawling_task(name: &str) -> String {
    format!(
        "bash -c 'exec -a {name}-child sleep 300' & \
         setsid bash -c 'exec -a {name}-escaped sleep 300' & \
         (setsid bash -c 'exec -a {name}-orphan sleep 300' &); \
         sleep 300"
    )
}

/// Waits until all three processes of [`sprawling_task`] run; fails if the task ended first.
async fn wait_sprawl(master: &Master, ti: i64, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let started = || {
        let running = processes_named(name);
        ["child", "escaped", "orphan"].iter().all(|k| running.iter().any(|c| c.starts_with(&format!("{name}-{k} "))))
    };
    while !started() {
        let ended = master
            .handled
            .lock()
            .expect("lock")
            .iter()
            .any(|e| e.task_instance_id == ti && matches!(e.kind, Some(task_event::Kind::Result(_))));
        assert!(!ended, "task {ti} ended before all its processes started: {:?}", processes_named(name));
        assert!(
            tokio::time::Instant::now() < deadline,
            "the task's processes did not start: {:?}",
            processes_named(name)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_of_a_killed_or_timed_out_task_survives() {
    let (master, addr) = Master::start(0).await;
    let mut s = worker(2).await;
    let name = format!("porpoise-test-{}", std::process::id());

    let killed = format!("{name}-k");
    send(&mut s.client, dispatch(16, &sprawling_task(&killed), addr)).await;
    wait_sprawl(&master, 16, &killed).await;
    let reply = s.client.kill_task(KillTaskRequest { task_instance_id: 16, attempt: 1 }).await.expect("kill");
    assert!(reply.into_inner().found);
    let result = result_of(&master.wait_result(16, 1).await);
    assert_eq!(result.outcome, TaskOutcome::Killed as i32);
    assert_eq!(processes_named(&killed), Vec::<String>::new(), "processes of the killed task survived");

    let timed_out = format!("{name}-t");
    let mut req = dispatch(17, &sprawling_task(&timed_out), addr);
    req.timeout_ms = 2_000;
    send(&mut s.client, req).await;
    wait_sprawl(&master, 17, &timed_out).await;
    let result = result_of(&master.wait_result(17, 1).await);
    assert_eq!(result.outcome, TaskOutcome::TimedOut as i32);
    assert_eq!(result.message, "timed out after 2s");
    assert_eq!(processes_named(&timed_out), Vec::<String>::new(), "processes of the timed-out task survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_finished_task_left_in_its_group_is_ended() {
    let (master, addr) = Master::start(0).await;
    let mut s = worker(2).await;
    let name = format!("porpoise-test-{}-left", std::process::id());
    // the task ends once its background sleep runs under its new name
    let cmd =
        format!("bash -c 'exec -a {name} sleep 300' & until grep -qa '^{name}' /proc/$!/cmdline; do sleep 0.01; done");
    send(&mut s.client, dispatch(19, &cmd, addr)).await;
    let result = result_of(&master.wait_result(19, 1).await);
    assert_eq!((result.outcome, result.exit_code), (TaskOutcome::Success as i32, Some(0)));
    assert_eq!(processes_named(&name), Vec::<String>::new(), "a background process outlived its task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_kept_until_acked_even_while_the_master_is_away() {
    // the master's address is known but nothing listens there yet
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let mut s = worker(2).await;
    send(&mut s.client, dispatch(18, "echo done", addr)).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while s.worker.unacked_events() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both events queued");
    // the master comes up, and refuses the first two calls (RETRY_LATER: a lost ACK)
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind the master's port");
    let master = Master::serve_on(listener, 2).await;
    let events = master.wait_result(18, 1).await;
    assert_eq!(events.len(), 2, "each event handled exactly once: {events:?}");
    assert!(*master.calls.lock().expect("lock") >= 3, "refused calls were resent");
    tokio::time::timeout(Duration::from_secs(5), async {
        while s.worker.unacked_events() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("nothing left unacked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_dispatch_is_rejected_and_the_worker_keeps_serving() {
    let (master, addr) = Master::start(0).await;
    let mut s = worker(2).await;
    let mut bad = dispatch(0, "echo", addr);
    assert_eq!(send(&mut s.client, bad.clone()).await, DispatchStatus::Invalid);
    bad.task_instance_id = 19;
    bad.command = "  ".into();
    assert_eq!(send(&mut s.client, bad.clone()).await, DispatchStatus::Invalid);
    bad.command = "echo".into();
    bad.task_type = "spark".into();
    assert_eq!(send(&mut s.client, bad.clone()).await, DispatchStatus::Invalid);
    // params that would change how bash behaves, or that no exec can carry
    bad.task_type = "shell".into();
    bad.params = HashMap::from([("BASH_ENV".to_string(), "/tmp/evil".to_string())]);
    assert_eq!(send(&mut s.client, bad.clone()).await, DispatchStatus::Invalid);
    bad.params = HashMap::from([("big".to_string(), "x".repeat(200_000))]);
    assert_eq!(send(&mut s.client, bad.clone()).await, DispatchStatus::Invalid);
    bad.params = HashMap::new();
    bad.command = format!("echo {}", "x".repeat(200_000));
    assert_eq!(send(&mut s.client, bad).await, DispatchStatus::Invalid);
    assert_eq!(send(&mut s.client, dispatch(20, "echo fine", addr)).await, DispatchStatus::Accepted);
    master.wait_result(20, 1).await;
}

/// Stopping a worker ends everything it started: the attempt still running past the grace
/// period (with every process it left), the event delivery, the heartbeats and the server; it
/// leaves the registry, and its last events reached the master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_leaves_nothing_running() {
    let (master, addr) = Master::start(0).await;
    let Setup { mut worker, mut client, registry, dir: _dir } = worker_with_grace(2, Duration::from_millis(100)).await;
    let name = format!("porpoise-test-{}-stop", std::process::id());
    send(&mut client, dispatch(30, &sprawling_task(&name), addr)).await;
    wait_sprawl(&master, 30, &name).await;
    assert!(worker.live_tasks() > 0);

    worker.stop().await;
    assert_eq!(worker.live_tasks(), 0, "the stopped worker left tasks running");
    assert_eq!(processes_named(&name), Vec::<String>::new(), "processes of the task outlived the worker");
    let result = result_of(&master.wait_result(30, 1).await);
    assert_eq!(result.outcome, TaskOutcome::WorkerStopped as i32);
    assert!(registry.members(&Selector::Workers { group: None }).await.expect("members").is_empty());
    let refused = WorkerServiceClient::connect(format!("http://{}", worker.addr)).await;
    assert!(refused.is_err(), "the worker's port still answers");
}
