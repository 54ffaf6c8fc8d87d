//! The command consumer: claims commands as they arrive (woken by the store's command feed —
//! Postgres LISTEN/NOTIFY — or by this master's own AdminService; a slow poll only as a
//! fallback); the claim makes this
//! master the owner of each command's run, and the consumer starts its runner.

use std::sync::Arc;
use std::time::Duration;

use porpoise_core::Backoff;
use porpoise_core::engine::{Event, Workflow};
use porpoise_store::{Command, CommandFeed, CommandKind, WorkflowInstance};
use tracing::{error, info, warn};

use crate::Shared;
use crate::definitions::DefinitionError;
use crate::metrics as m;
use crate::runner::Runner;

/// Commands claimed per round.
const BATCH: u32 = 64;
/// How long to wait before opening the wake-up feed again after it broke.
const REOPEN_AFTER: Duration = Duration::from_secs(5);

/// Runs forever: claims commands and starts runs.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut feed = open_feed(&shared).await;
    let backoff = Backoff::default();
    let mut failures = 0u32;
    loop {
        // a master that lost its registration claims nothing until it has it back
        shared.masters.until_live(&shared.addr).await;
        if shared.draining.is_cancelled() {
            return; // the master stops: commands are left to the others
        }
        match shared.store.claim_commands(&shared.addr, BATCH).await {
            Ok(commands) => {
                failures = 0;
                let full = commands.len() as u32 == BATCH;
                for c in commands {
                    metrics::counter!(m::COMMANDS_CONSUMED).increment(1);
                    shared.spawner.spawn(start(shared.clone(), c));
                }
                if full {
                    continue;
                }
                post_control_commands(&shared).await;
            }
            Err(e) => {
                failures += 1;
                m::database_error("claim_commands", &e);
                warn!(error = %e, failures, "cannot claim commands; retrying");
                tokio::time::sleep(porpoise_runtime::retry_delay(&backoff, failures - 1)).await;
                continue;
            }
        }
        tokio::select! {
            () = shared.draining.cancelled() => return,
            _ = shared.consumer_wake.notified() => {}
            woken = next_wakeup(&mut feed) => {
                if !woken {
                    feed = None;
                }
            }
            _ = tokio::time::sleep(shared.command_poll) => {}
        }
        if feed.is_none() {
            feed = open_feed(&shared).await;
        }
    }
}

/// Hands the control commands waiting for this master's runs to their runners (a runner
/// applies each once, in order; one also loads its run's pending commands when it is rebuilt).
async fn post_control_commands(shared: &Shared) {
    match shared.store.pending_control_commands(&shared.addr).await {
        Ok(commands) => {
            for c in commands {
                let (Some(run), CommandKind::Control(action)) = (c.workflow_instance_id, c.kind) else { continue };
                if let Some(runner) = shared.runner(run) {
                    runner.post(Event::Control { command: c.id, action, task: c.task_instance_id() });
                }
            }
        }
        Err(e) => {
            m::database_error("control_commands", &e);
            warn!(error = %e, "cannot read the control commands for this master's runs; retrying at the next wake-up")
        }
    }
}

async fn open_feed(shared: &Shared) -> Option<Box<dyn CommandFeed>> {
    match shared.store.command_feed().await {
        Ok(feed) => Some(feed),
        Err(e) => {
            warn!(error = %e, poll = ?shared.command_poll, "cannot follow queued commands; polling for them instead");
            None
        }
    }
}

/// Waits for the next wake-up, and takes every other one already there with it (one claim
/// serves them all); `false` when the feed broke (after a pause, so that a broken feed is not
/// reopened in a tight loop).
async fn next_wakeup(feed: &mut Option<Box<dyn CommandFeed>>) -> bool {
    match feed {
        Some(f) => match f.next().await {
            Ok(()) => {
                while let Ok(Ok(())) = tokio::time::timeout(Duration::ZERO, f.next()).await {}
                true
            }
            Err(e) => {
                warn!(error = %e, "command wake-ups broke; polling until they are back");
                tokio::time::sleep(REOPEN_AFTER).await;
                false
            }
        },
        None => std::future::pending().await,
    }
}

/// Starts the run of one claimed command, retrying outages until it has started.
async fn start(shared: Arc<Shared>, command: Command) {
    let backoff = Backoff::default();
    let mut failures = 0u32;
    loop {
        match try_start(&shared, &command).await {
            Ok(()) => return,
            Err(StartError::Retry(e)) => {
                failures += 1;
                warn!(command_id = command.id, error = %e, failures, "cannot start the run yet; retrying");
                tokio::time::sleep(porpoise_runtime::retry_delay(&backoff, failures - 1)).await;
            }
            Err(StartError::Fatal(e)) => {
                error!(command_id = command.id, error = %e, "cannot start the run");
                return;
            }
        }
    }
}

enum StartError {
    Retry(String),
    Fatal(String),
}

fn classify(e: porpoise_store::StoreError) -> StartError {
    if e.is_retryable() { StartError::Retry(e.to_string()) } else { StartError::Fatal(e.to_string()) }
}

/// Resumes the unfinished runs this master owns: it was restarted with the same address. Each
/// runner is rebuilt from the database, as for a new run.
pub(crate) async fn resume_own_runs(shared: Arc<Shared>) {
    let backoff = Backoff::default();
    let mut failures = 0u32;
    let runs = loop {
        match shared.store.unfinished_workflow_instances_of(&shared.addr).await {
            Ok(runs) => break runs,
            Err(e) => {
                failures += 1;
                m::database_error("resume_runs", &e);
                warn!(error = %e, failures, "cannot list this master's unfinished runs; retrying");
                tokio::time::sleep(porpoise_runtime::retry_delay(&backoff, failures - 1)).await;
            }
        }
    };
    if !runs.is_empty() {
        info!(runs = runs.len(), "resuming this master's unfinished runs");
    }
    for run in runs {
        spawn_runner(&shared, run);
    }
}

/// Starts the runner of `instance` (owned by this master: resumed or taken over) in the
/// background, retrying outages until it has started.
pub(crate) fn spawn_runner(shared: &Arc<Shared>, instance: WorkflowInstance) {
    let shared = shared.clone();
    shared.clone().spawner.spawn(async move {
        let backoff = Backoff::default();
        let mut failures = 0u32;
        loop {
            match start_runner(&shared, instance.clone()).await {
                Ok(()) => return,
                Err(StartError::Retry(e)) => {
                    failures += 1;
                    warn!(run_id = instance.id, error = %e, failures, "cannot start the run's runner yet; retrying");
                    tokio::time::sleep(porpoise_runtime::retry_delay(&backoff, failures - 1)).await;
                }
                Err(StartError::Fatal(e)) => {
                    error!(run_id = instance.id, error = %e, "cannot start the run's runner");
                    return;
                }
            }
        }
    });
}

/// The workflow of definition `id`.
async fn workflow_of(shared: &Shared, id: i64) -> Result<Arc<Workflow>, StartError> {
    match shared.definitions.get(shared.store.as_ref(), id).await {
        Ok(definition) => Ok(definition.workflow.clone()),
        Err(DefinitionError::Store(e)) => Err(classify(e)),
        Err(e) => Err(StartError::Fatal(e.to_string())),
    }
}

/// Starts the runner of `instance`, owned by this master, unless it has one.
async fn start_runner(shared: &Arc<Shared>, instance: WorkflowInstance) -> Result<(), StartError> {
    if shared.runner(instance.id).is_some() {
        return Ok(());
    }
    let workflow = workflow_of(shared, instance.workflow_definition_id).await?;
    info!(run_id = instance.id, workflow = %workflow.spec.name, state = %instance.state, "starting runner");
    Runner::spawn(shared.clone(), instance, workflow);
    Ok(())
}

/// Starts the runner of the run `command` starts, which the claim made ours.
async fn try_start(shared: &Arc<Shared>, command: &Command) -> Result<(), StartError> {
    let Some(id) = command.workflow_instance_id else {
        return Err(StartError::Fatal(format!("command {} names no run", command.id)));
    };
    match shared.store.workflow_instance(id).await.map_err(classify)? {
        Some(instance) if instance.owner.as_deref() == Some(shared.addr.as_str()) => {
            start_runner(shared, instance).await
        }
        // taken over already (this master looked dead) or gone: its owner runs it, not us
        other => Err(StartError::Fatal(format!("run {id} is not ours: {other:?}"))),
    }
}
