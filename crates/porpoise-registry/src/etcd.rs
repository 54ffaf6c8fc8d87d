//! The etcd registry: one lease per registration, renewed by a background task (and re-granted
//! if it was lost while etcd was unreachable); watches that survive etcd restarts by listing
//! again and telling watchers what changed meanwhile; locks as lease-bound keys created with a
//! compare-and-swap.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use porpoise_core::Backoff;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::{
    AbortOnDrop, Control, Heartbeat, LockGuard, Member, MemberEvent, MemberKey, MemberWatch, Registration, Registry,
    RegistryError, Result, Selector, renew_every,
};

/// The default key root.
pub const DEFAULT_ROOT: &str = "/porpoise";

/// A registry on an etcd cluster.
#[derive(Clone)]
pub struct EtcdRegistry {
    client: Client,
    endpoints: Vec<String>,
    root: String,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry").field("endpoints", &self.endpoints).field("root", &self.root).finish()
    }
}

impl EtcdRegistry {
    /// Connects to `endpoints` (e.g. `http://127.0.0.1:2379`); keys live under `root`.
    pub async fn connect(endpoints: &[String], root: &str) -> Result<EtcdRegistry> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        let client = Client::connect(endpoints, Some(options)).await?;
        Ok(EtcdRegistry { client, endpoints: endpoints.to_vec(), root: root.trim_end_matches('/').to_string() })
    }

    /// Connects to `endpoints` and checks that etcd answers (a connection is made lazily, so
    /// [`EtcdRegistry::connect`] alone may succeed while etcd is down).
    pub async fn connect_checked(endpoints: &[String], root: &str) -> Result<EtcdRegistry> {
        let registry = Self::connect(endpoints, root).await?;
        registry
            .client
            .clone()
            .get(registry.key("workers/"), Some(GetOptions::new().with_keys_only().with_limit(1)))
            .await?;
        Ok(registry)
    }

    fn key(&self, path: &str) -> String {
        format!("{}/{path}", self.root)
    }

    fn member_from(&self, key: &[u8], value: &[u8]) -> Result<Member> {
        let key = String::from_utf8_lossy(key);
        let path = key.strip_prefix(&format!("{}/", self.root)).unwrap_or(&key);
        let member_key = MemberKey::from_path(path)
            .ok_or_else(|| RegistryError::Corrupt { key: key.to_string(), detail: "not a member key".into() })?;
        let heartbeat = serde_json::from_slice(value)
            .map_err(|e| RegistryError::Corrupt { key: key.to_string(), detail: e.to_string() })?;
        Ok(Member { key: member_key, heartbeat })
    }

    /// Lists members under `prefix`, skipping (and logging) values that cannot be read.
    async fn list(&self, prefix: &str) -> Result<(Vec<Member>, i64)> {
        let resp = self.client.clone().get(self.key(prefix), Some(GetOptions::new().with_prefix())).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut members = Vec::new();
        for kv in resp.kvs() {
            match self.member_from(kv.key(), kv.value()) {
                Ok(m) => members.push(m),
                Err(e) => warn!(error = %e, "skipping unreadable registry entry"),
            }
        }
        Ok((members, revision))
    }

    async fn grant_and_put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<i64> {
        let mut client = self.client.clone();
        let lease = client.lease_grant(ttl_secs(ttl), None).await?.id();
        client.put(key, value, Some(PutOptions::new().with_lease(lease))).await?;
        Ok(lease)
    }

    /// Keeps `lease` alive until released; re-registers `value` under a new lease if the old
    /// one was lost. `value` is `None` for locks, which are not re-taken once lost.
    async fn keep_alive(
        self,
        key: String,
        mut lease: i64,
        mut value: Option<Vec<u8>>,
        ttl: Duration,
        mut control: mpsc::Receiver<Control>,
        renewed: Option<watch::Sender<Instant>>,
    ) {
        let confirmed = || {
            if let Some(r) = &renewed {
                r.send_replace(Instant::now());
            }
        };
        let mut client = self.client.clone();
        let mut tick = tokio::time::interval(renew_every(ttl));
        let backoff = Backoff { initial: Duration::from_millis(100), max: ttl / 2, multiplier: 2.0 };
        let mut failures = 0u32;
        let mut keep_alive = KeepAlive::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    match keep_alive.renew(&mut client, lease).await {
                        Ok(true) => {
                            crate::metrics::renewal("renewed");
                            failures = 0;
                            confirmed();
                        }
                        Ok(false) => {
                            crate::metrics::renewal("lost");
                            warn!(%key, lease, "registry lease lost");
                            let Some(v) = &value else { return };
                            match self.grant_and_put(&key, v, ttl).await {
                                Ok(new) => {
                                    crate::metrics::reregistered();
                                    lease = new;
                                    failures = 0;
                                    confirmed();
                                    debug!(%key, lease, "registered again under a new lease");
                                }
                                Err(e) => {
                                    failures += 1;
                                    warn!(%key, error = %e, "cannot register again; retrying");
                                    tokio::time::sleep(porpoise_runtime::retry_delay(&backoff, failures)).await;
                                }
                            }
                        }
                        Err(e) => {
                            crate::metrics::renewal("failed");
                            failures += 1;
                            warn!(%key, lease, error = %e, failures, "cannot renew registry lease");
                            tokio::time::sleep(porpoise_runtime::retry_delay(&backoff, failures)).await;
                        }
                    }
                }
                cmd = control.recv() => match cmd {
                    Some(Control::Update(hb, reply)) => {
                        let result = match serde_json::to_vec(&hb) {
                            Ok(v) => {
                                let put = client.put(key.as_str(), v.clone(), Some(PutOptions::new().with_lease(lease))).await;
                                value = Some(v);
                                put.map(|_| ()).map_err(RegistryError::from)
                            }
                            Err(e) => Err(RegistryError::Corrupt { key: key.clone(), detail: e.to_string() }),
                        };
                        let _ = reply.send(result);
                    }
                    Some(Control::Release(reply)) => {
                        let result = client.lease_revoke(lease).await.map(|_| ()).map_err(RegistryError::from);
                        let _ = reply.send(result);
                        return;
                    }
                    None => return,
                },
            }
        }
    }

    async fn try_lock_once(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>> {
        let key = self.key(&format!("locks/{name}"));
        let mut client = self.client.clone();
        let lease = client.lease_grant(ttl_secs(ttl), None).await?.id();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), "", Some(PutOptions::new().with_lease(lease)))]);
        if !client.txn(txn).await?.succeeded() {
            let _ = client.lease_revoke(lease).await;
            return Ok(None);
        }
        let (control, rx) = mpsc::channel(4);
        let task = tokio::spawn(self.clone().keep_alive(key, lease, None, ttl, rx, None));
        Ok(Some(LockGuard::new(name.to_string(), control, task)))
    }
}

/// A lease's keep-alive stream, opened once and reopened only after it broke.
#[derive(Default)]
struct KeepAlive {
    stream: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
}

impl KeepAlive {
    /// One keep-alive round trip: `Ok(false)` when the lease no longer exists.
    async fn renew(&mut self, client: &mut Client, lease: i64) -> Result<bool> {
        if self.stream.is_none() {
            match client.lease_keep_alive(lease).await {
                Ok(stream) => self.stream = Some(stream),
                // opening the stream for a lease that ended (it was cut off for longer than its
                // TTL) says so as an error, not as a TTL of 0
                Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        let result = match self.stream.as_mut() {
            Some((keeper, stream)) => match keeper.keep_alive().await {
                Ok(()) => match stream.message().await {
                    Ok(Some(resp)) => Ok(resp.ttl() > 0),
                    Ok(None) => Err(RegistryError::Unavailable("keep-alive stream closed".into())),
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e.into()),
            },
            None => Err(RegistryError::Unavailable("no keep-alive stream".into())),
        };
        if !matches!(result, Ok(true)) {
            // broken, or its lease is gone: the next renewal starts afresh
            self.stream = None;
        }
        result
    }
}

fn ttl_secs(ttl: Duration) -> i64 {
    ttl.as_secs().max(1) as i64
}

#[async_trait]
impl Registry for EtcdRegistry {
    async fn register(&self, key: MemberKey, heartbeat: Heartbeat, ttl: Duration) -> Result<Registration> {
        let path = self.key(&key.path());
        let value = serde_json::to_vec(&heartbeat)
            .map_err(|e| RegistryError::Corrupt { key: path.clone(), detail: e.to_string() })?;
        let lease = self.grant_and_put(&path, &value, ttl).await?;
        let (control, rx) = mpsc::channel(16);
        let (renewed_tx, renewed) = watch::channel(Instant::now());
        let task = tokio::spawn(self.clone().keep_alive(path, lease, Some(value), ttl, rx, Some(renewed_tx)));
        Ok(Registration::new(key, control, task, renewed))
    }

    async fn members(&self, selector: &Selector) -> Result<Vec<Member>> {
        Ok(self.list(&selector.prefix()).await?.0)
    }

    async fn watch(&self, selector: &Selector) -> Result<MemberWatch> {
        let prefix = selector.prefix();
        let (initial, revision) = self.list(&prefix).await?;
        let (tx, events) = mpsc::unbounded_channel();
        let known: HashMap<String, Member> = initial.iter().map(|m| (m.key.path(), m.clone())).collect();
        let task = tokio::spawn(self.clone().forward_watch(prefix, revision, known, tx));
        Ok(MemberWatch { initial, events, _task: Some(AbortOnDrop(task)) })
    }

    async fn try_lock(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>> {
        self.try_lock_once(name, ttl).await
    }

    async fn lock(&self, name: &str, ttl: Duration) -> Result<LockGuard> {
        let key = self.key(&format!("locks/{name}"));
        loop {
            // watch before trying, so a release between the try and the watch is not missed
            let mut client = self.client.clone();
            let mut stream = client.watch(key.as_str(), None).await?;
            if let Some(guard) = self.try_lock_once(name, ttl).await? {
                return Ok(guard);
            }
            loop {
                match stream.message().await? {
                    Some(resp) if resp.events().iter().any(|e| e.event_type() == EventType::Delete) => break,
                    Some(_) => continue,
                    None => break,
                }
            }
        }
    }
}

impl EtcdRegistry {
    /// Forwards watch events to `tx` until the receiver goes away. When the watch breaks (etcd
    /// restarted, connection lost), lists again, reports the difference, and watches anew.
    async fn forward_watch(
        self,
        prefix: String,
        mut revision: i64,
        mut known: HashMap<String, Member>,
        tx: mpsc::UnboundedSender<MemberEvent>,
    ) {
        let backoff = Backoff::default();
        let mut failures = 0u32;
        loop {
            if let Err(e) = self.watch_from(&prefix, revision, &mut known, &tx).await {
                if tx.is_closed() {
                    return;
                }
                failures += 1;
                warn!(%prefix, error = %e, "registry watch broke; listing again");
                tokio::time::sleep(porpoise_runtime::retry_delay(&backoff, failures)).await;
            }
            if tx.is_closed() {
                return;
            }
            match self.list(&prefix).await {
                Ok((members, rev)) => {
                    failures = 0;
                    revision = rev;
                    let now: HashMap<String, Member> = members.into_iter().map(|m| (m.key.path(), m)).collect();
                    for (path, m) in &known {
                        if !now.contains_key(path) && tx.send(MemberEvent::Down(m.key.clone())).is_err() {
                            return;
                        }
                    }
                    for (path, m) in &now {
                        if known.get(path) != Some(m) && tx.send(MemberEvent::Up(m.clone())).is_err() {
                            return;
                        }
                    }
                    known = now;
                }
                Err(e) => warn!(%prefix, error = %e, "cannot list registry members"),
            }
        }
    }

    async fn watch_from(
        &self,
        prefix: &str,
        revision: i64,
        known: &mut HashMap<String, Member>,
        tx: &mpsc::UnboundedSender<MemberEvent>,
    ) -> Result<()> {
        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let mut stream = self.client.clone().watch(self.key(prefix), Some(options)).await?;
        while let Some(resp) = stream.message().await? {
            if resp.canceled() {
                return Err(RegistryError::Unavailable(format!("watch canceled: {}", resp.cancel_reason())));
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).to_string();
                let path = key.strip_prefix(&format!("{}/", self.root)).unwrap_or(&key).to_string();
                let sent = match event.event_type() {
                    EventType::Put => match self.member_from(kv.key(), kv.value()) {
                        Ok(m) => {
                            known.insert(path, m.clone());
                            tx.send(MemberEvent::Up(m))
                        }
                        Err(e) => {
                            warn!(error = %e, "skipping unreadable registry entry");
                            Ok(())
                        }
                    },
                    EventType::Delete => {
                        match known.remove(&path).map(|m| m.key).or_else(|| MemberKey::from_path(&path)) {
                            Some(k) => tx.send(MemberEvent::Down(k)),
                            None => Ok(()),
                        }
                    }
                };
                if sent.is_err() {
                    return Ok(());
                }
            }
        }
        Err(RegistryError::Unavailable("watch stream ended".into()))
    }
}
