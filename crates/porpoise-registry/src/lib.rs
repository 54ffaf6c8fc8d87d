//! Membership, heartbeats and locks: one API ([`Registry`]) with an etcd implementation for
//! clusters and an in-memory one for standalone and tests.
//!
//! Keys (under a root, `/porpoise` by default): `masters/<host:port>` and
//! `workers/<group>/<host:port>`, each bound to its process's lease and holding a JSON
//! [`Heartbeat`]; `locks/<name>` for locks.

/// The etcd registry.
pub mod etcd;
/// The in-memory registry.
pub mod memory;
pub mod metrics;
/// Members, heartbeats, events and the registry's error type.
pub mod types;

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use etcd::EtcdRegistry;
pub use memory::MemoryRegistry;
pub use types::*;

/// Membership and locks.
#[async_trait]
pub trait Registry: Send + Sync + std::fmt::Debug + 'static {
    /// Registers `key` with `heartbeat` under a lease of `ttl`, renewed in the background until
    /// the [`Registration`] is revoked or dropped. If the lease is lost (the registry was
    /// unreachable for longer than `ttl`), the member registers again as soon as it can.
    async fn register(&self, key: MemberKey, heartbeat: Heartbeat, ttl: Duration) -> Result<Registration>;
    /// The members `selector` picks, now.
    async fn members(&self, selector: &Selector) -> Result<Vec<Member>>;
    /// The members `selector` picks, now and as they come and go.
    async fn watch(&self, selector: &Selector) -> Result<MemberWatch>;
    /// Takes lock `name` if it is free. The lock is held until released, or until `ttl` after
    /// the holder stops renewing it (its process died).
    async fn try_lock(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>>;
    /// Takes lock `name`, waiting for it as long as needed.
    async fn lock(&self, name: &str, ttl: Duration) -> Result<LockGuard>;
}

/// Commands from a [`Registration`] or [`LockGuard`] handle to its background task.
#[derive(Debug)]
pub(crate) enum Control {
    Update(Heartbeat, oneshot::Sender<Result<()>>),
    Release(oneshot::Sender<Result<()>>),
}

/// A live registration. Dropping it stops renewing the lease without revoking it — what a
/// crash looks like to everyone else; call [`Registration::revoke`] to leave cleanly.
#[derive(Debug)]
pub struct Registration {
    key: MemberKey,
    control: mpsc::Sender<Control>,
    task: JoinHandle<()>,
    renewed: watch::Receiver<Instant>,
}

impl Registration {
    pub(crate) fn new(
        key: MemberKey,
        control: mpsc::Sender<Control>,
        task: JoinHandle<()>,
        renewed: watch::Receiver<Instant>,
    ) -> Self {
        Self { key, control, task, renewed }
    }

    pub fn key(&self) -> &MemberKey {
        &self.key
    }

    /// When the registry last confirmed this registration (granted or renewed its lease). A
    /// member that has not heard from the registry for a while may have been given up for gone.
    pub fn last_renewed(&self) -> Instant {
        *self.renewed.borrow()
    }

    /// Publishes a new heartbeat value.
    pub async fn update(&self, heartbeat: Heartbeat) -> Result<()> {
        request(&self.control, |tx| Control::Update(heartbeat, tx)).await
    }

    /// Removes the member now; renewals stop.
    pub async fn revoke(&self) -> Result<()> {
        request(&self.control, Control::Release).await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A held lock. Dropping it stops renewing without releasing: the lock frees itself after its
/// TTL, as when the holder's process dies. Call [`LockGuard::release`] to free it now.
#[derive(Debug)]
pub struct LockGuard {
    name: String,
    control: mpsc::Sender<Control>,
    task: JoinHandle<()>,
}

impl LockGuard {
    pub(crate) fn new(name: String, control: mpsc::Sender<Control>, task: JoinHandle<()>) -> Self {
        Self { name, control, task }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Frees the lock now.
    pub async fn release(self) -> Result<()> {
        request(&self.control, Control::Release).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn request(
    control: &mpsc::Sender<Control>,
    make: impl FnOnce(oneshot::Sender<Result<()>>) -> Control,
) -> Result<()> {
    let (tx, rx) = oneshot::channel();
    control.send(make(tx)).await.map_err(|_| RegistryError::Closed)?;
    rx.await.map_err(|_| RegistryError::Closed)?
}

/// The renewal period for a lease of `ttl`: a third of it, so two renewals may fail in a row.
pub(crate) fn renew_every(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
}
