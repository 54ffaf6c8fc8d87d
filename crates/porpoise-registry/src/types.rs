//! Members, heartbeats, selectors, membership events and the registry's error type.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// What a member is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    Master,
    Worker { group: String },
}

/// A member's identity: its role and the address it serves on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberKey {
    pub role: Role,
    pub addr: String,
}

impl MemberKey {
    pub fn master(addr: impl Into<String>) -> Self {
        Self { role: Role::Master, addr: addr.into() }
    }

    pub fn worker(group: impl Into<String>, addr: impl Into<String>) -> Self {
        Self { role: Role::Worker { group: group.into() }, addr: addr.into() }
    }

    /// The key below the registry root: `masters/<addr>` or `workers/<group>/<addr>`.
    pub fn path(&self) -> String {
        match &self.role {
            Role::Master => format!("masters/{}", self.addr),
            Role::Worker { group } => format!("workers/{group}/{}", self.addr),
        }
    }

    /// The inverse of [`MemberKey::path`].
    pub fn from_path(path: &str) -> Option<Self> {
        let mut parts = path.splitn(3, '/');
        match (parts.next()?, parts.next()?, parts.next()) {
            ("masters", addr, None) if !addr.is_empty() => Some(Self::master(addr)),
            ("workers", group, Some(addr)) if !group.is_empty() && !addr.is_empty() && !addr.contains('/') => {
                Some(Self::worker(group, addr))
            }
            _ => None,
        }
    }
}

/// The value a member publishes and renews: what schedulers need to pick a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// CPU use, 0–100 %.
    pub cpu: f64,
    /// Memory use, 0–100 %.
    pub memory: f64,
    /// One-minute load average.
    pub load: f64,
    pub running_tasks: u32,
    /// How many tasks the member runs at once (workers); 0 for masters.
    pub slots: u32,
    pub started_at: DateTime<Utc>,
}

impl Heartbeat {
    /// An idle member with `slots` slots, started now.
    pub fn idle(slots: u32) -> Self {
        Self { cpu: 0.0, memory: 0.0, load: 0.0, running_tasks: 0, slots, started_at: Utc::now() }
    }
}

/// A registered member and its latest heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub key: MemberKey,
    pub heartbeat: Heartbeat,
}

/// Which members to list or watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Masters,
    /// Workers of one group, or of every group.
    Workers {
        group: Option<String>,
    },
}

impl Selector {
    /// The key prefix below the registry root.
    pub fn prefix(&self) -> String {
        match self {
            Selector::Masters => "masters/".into(),
            Selector::Workers { group: None } => "workers/".into(),
            Selector::Workers { group: Some(g) } => format!("workers/{g}/"),
        }
    }
}

/// A change of membership.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberEvent {
    /// A member joined or published a new heartbeat.
    Up(Member),
    /// A member left: revoked, or its lease expired.
    Down(MemberKey),
}

/// The members at the time of the call, and every change after it, in order.
#[derive(Debug)]
pub struct MemberWatch {
    pub initial: Vec<Member>,
    pub(crate) events: mpsc::UnboundedReceiver<MemberEvent>,
    pub(crate) _task: Option<AbortOnDrop>,
}

impl MemberWatch {
    /// The next change; `None` once the registry is gone.
    pub async fn next(&mut self) -> Option<MemberEvent> {
        self.events.recv().await
    }
}

/// Aborts a background task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A failed registry call.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry cannot be reached: retry later.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// A stored value Porpoise cannot read.
    #[error("corrupt registry value at {key}: {detail}")]
    Corrupt { key: String, detail: String },
    /// The registration or lock's background task is gone.
    #[error("registration closed")]
    Closed,
}

impl From<etcd_client::Error> for RegistryError {
    fn from(e: etcd_client::Error) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// Results of registry calls.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
