//! The fence against a partition. A worker that cannot renew its registry lease for half the
//! lease TTL, and cannot read the registry either, asks the masters that dispatched to it
//! whether they can read the registry. If one
//! can (or none answers), this worker is the one cut off: the masters will give it up for gone
//! when its lease ends and run its attempts elsewhere, so it kills its tasks now (reported
//! WORKER_STOPPED, which a master fails over at once) and takes no task until its lease is
//! renewed. If every master that answers cannot read the registry either, the registry is down
//! for everyone: nothing will be failed over, and the tasks run on.

use std::sync::Arc;
use std::time::Duration;

use porpoise_proto::tls::Transport;
use porpoise_proto::v1::ProbeRegistryRequest;
use porpoise_proto::v1::task_event_service_client::TaskEventServiceClient;
use porpoise_registry::{Registration, Registry, Selector};
use tokio::task::JoinSet;
use tracing::{debug, info};

use crate::server::WorkerServer;

/// How long the worker gives the registry itself before it asks the masters.
const SELF_CHECK_WAIT: Duration = Duration::from_secs(1);
/// How long one master has to answer a probe: more than a master gives the registry (1 s), so
/// that a master waiting on a registry that is down answers "unreachable" in time.
const PROBE_WAIT: Duration = Duration::from_secs(3);

/// What the masters said.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// A master reads the registry: this worker is cut off.
    CutOff(String),
    /// No master answered.
    Alone,
    /// Every master that answered cannot read the registry either.
    RegistryDown,
}

/// Runs until the worker stops: checks the lease every `ttl / 6`.
pub(crate) async fn run(
    server: Arc<WorkerServer>,
    registry: Arc<dyn Registry>,
    registration: Arc<Registration>,
    ttl: Duration,
    addr: String,
) {
    let limit = ttl / 2;
    let mut tick = tokio::time::interval((ttl / 6).max(Duration::from_millis(100)));
    // after a "down for everyone" answer, ask again only this much later
    let mut quiet_until = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let silent = registration.last_renewed().elapsed();
        if silent <= limit {
            server.unfence();
            continue;
        }
        if server.fenced() || tokio::time::Instant::now() < quiet_until {
            continue;
        }
        // the registry answers this worker again (it came back after an outage): the lease is
        // renewed or granted again by the keep-alive, nothing to fence
        if let Ok(Ok(_)) = tokio::time::timeout(SELF_CHECK_WAIT, registry.members(&Selector::Masters)).await {
            continue;
        }
        match ask_masters(&server.transport(), &server.masters(), &addr).await {
            Verdict::CutOff(master) => {
                server.fence(format!("master {master} reads the registry, this worker has not for {silent:?}"))
            }
            Verdict::Alone => server.fence(format!("no registry for {silent:?} and no master answers")),
            Verdict::RegistryDown => {
                info!(silent = ?silent, "the registry is unreachable for the masters too: tasks run on");
                quiet_until = tokio::time::Instant::now() + limit;
            }
        }
    }
}

/// Asks every master in `masters` at once whether it reads the registry.
async fn ask_masters(transport: &Transport, masters: &[String], addr: &str) -> Verdict {
    let mut asks = JoinSet::new();
    for master in masters {
        let (master, addr, transport) = (master.clone(), addr.to_string(), transport.clone());
        asks.spawn(async move {
            let answer = tokio::time::timeout(PROBE_WAIT, probe(&transport, &master, &addr)).await;
            (master, answer)
        });
    }
    let mut answered = false;
    while let Some(joined) = asks.join_next().await {
        match joined {
            Ok((master, Ok(Ok(true)))) => return Verdict::CutOff(master),
            Ok((_, Ok(Ok(false)))) => answered = true,
            Ok((master, Ok(Err(e)))) => debug!(%master, error = %e, "registry probe failed"),
            Ok((master, Err(_))) => debug!(%master, "registry probe timed out"),
            Err(_) => {}
        }
    }
    if answered { Verdict::RegistryDown } else { Verdict::Alone }
}

/// Whether `master` reads the registry.
async fn probe(transport: &Transport, master: &str, addr: &str) -> Result<bool, String> {
    let channel = transport
        .endpoint(master, porpoise_proto::tls::MASTER)?
        .connect_timeout(PROBE_WAIT)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let reply = TaskEventServiceClient::new(channel)
        .probe_registry(ProbeRegistryRequest { worker_addr: addr.to_string() })
        .await
        .map_err(|s| s.to_string())?;
    Ok(reply.into_inner().reachable)
}
