//! The in-memory registry, for `porpoise standalone` and tests: the same semantics as etcd —
//! members expire when their lease stops being renewed, locks free themselves after their TTL —
//! within one process.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::{
    AbortOnDrop, Control, Heartbeat, LockGuard, Member, MemberEvent, MemberKey, MemberWatch, Registration, Registry,
    Result, Selector, renew_every,
};

/// A registry living in this process. Clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct MemoryRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    /// Woken when the earliest expiry may have changed, or a lock was freed.
    changed: Arc<Notify>,
}

#[derive(Debug, Default)]
struct State {
    members: BTreeMap<String, Lease<Member>>,
    locks: HashMap<String, Lease<u64>>,
    watchers: Vec<(String, mpsc::UnboundedSender<MemberEvent>)>,
    next_token: u64,
    reaper: Option<Arc<AbortOnDrop>>,
}

#[derive(Debug)]
struct Lease<T> {
    value: T,
    token: u64,
    expires: Instant,
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the task that expires members whose leases ran out (once per registry).
    fn ensure_reaper(&self) {
        let mut st = self.state();
        if st.reaper.is_some() {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let changed = inner.changed.clone();
                let notified = changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let next = MemoryRegistry { inner }.expire_members();
                match next {
                    Some(at) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = notified => {}
                        }
                    }
                    None => notified.await,
                }
            }
        });
        st.reaper = Some(Arc::new(AbortOnDrop(task)));
    }

    /// Removes expired members, telling watchers; returns the next expiry.
    fn expire_members(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut st = self.state();
        let expired: Vec<String> =
            st.members.iter().filter(|(_, l)| l.expires <= now).map(|(k, _)| k.clone()).collect();
        for path in expired {
            if let Some(lease) = st.members.remove(&path) {
                st.notify(&path, MemberEvent::Down(lease.value.key));
            }
        }
        st.members.values().map(|l| l.expires).min()
    }

    fn put_member(&self, member: Member, token: u64, ttl: Duration) {
        let path = member.key.path();
        let mut st = self.state();
        st.members.insert(path.clone(), Lease { value: member.clone(), token, expires: Instant::now() + ttl });
        st.notify(&path, MemberEvent::Up(member));
    }

    fn renew_member(&self, path: &str, token: u64, ttl: Duration) -> bool {
        let mut st = self.state();
        match st.members.get_mut(path) {
            Some(l) if l.token == token => {
                l.expires = Instant::now() + ttl;
                true
            }
            _ => false,
        }
    }

    fn remove_member(&self, path: &str, token: u64) {
        let mut st = self.state();
        if st.members.get(path).is_some_and(|l| l.token == token)
            && let Some(lease) = st.members.remove(path)
        {
            st.notify(path, MemberEvent::Down(lease.value.key));
        }
    }

    fn take_lock(&self, name: &str, ttl: Duration) -> Option<u64> {
        let mut st = self.state();
        let now = Instant::now();
        if st.locks.get(name).is_some_and(|l| l.expires > now) {
            return None;
        }
        st.next_token += 1;
        let token = st.next_token;
        st.locks.insert(name.to_string(), Lease { value: token, token, expires: now + ttl });
        Some(token)
    }

    fn lock_guard(&self, name: &str, token: u64, ttl: Duration) -> LockGuard {
        let (control, mut rx) = mpsc::channel(4);
        let registry = self.clone();
        let lock_name = name.to_string();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(renew_every(ttl));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let mut st = registry.state();
                        if let Some(l) = st.locks.get_mut(&lock_name).filter(|l| l.token == token) {
                            l.expires = Instant::now() + ttl;
                        }
                    }
                    cmd = rx.recv() => match cmd {
                        Some(Control::Release(reply)) => {
                            {
                                let mut st = registry.state();
                                if st.locks.get(&lock_name).is_some_and(|l| l.token == token) {
                                    st.locks.remove(&lock_name);
                                }
                            }
                            registry.inner.changed.notify_waiters();
                            let _ = reply.send(Ok(()));
                            return;
                        }
                        Some(Control::Update(_, reply)) => { let _ = reply.send(Ok(())); }
                        None => return,
                    },
                }
            }
        });
        LockGuard::new(name.to_string(), control, task)
    }
}

impl State {
    fn notify(&mut self, path: &str, event: MemberEvent) {
        self.watchers.retain(|(prefix, tx)| !path.starts_with(prefix.as_str()) || tx.send(event.clone()).is_ok());
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, key: MemberKey, heartbeat: Heartbeat, ttl: Duration) -> Result<Registration> {
        self.ensure_reaper();
        let token = {
            let mut st = self.state();
            st.next_token += 1;
            st.next_token
        };
        let path = key.path();
        self.put_member(Member { key: key.clone(), heartbeat: heartbeat.clone() }, token, ttl);
        self.inner.changed.notify_waiters();
        let (control, mut rx) = mpsc::channel(16);
        let (renewed_tx, renewed) = watch::channel(Instant::now());
        let registry = self.clone();
        let member_key = key.clone();
        let task = tokio::spawn(async move {
            let mut heartbeat = heartbeat;
            let mut tick = tokio::time::interval(renew_every(ttl));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if registry.renew_member(&path, token, ttl) {
                            crate::metrics::renewal("renewed");
                        } else {
                            // the lease expired while we were away: register again
                            crate::metrics::renewal("lost");
                            registry.put_member(Member { key: member_key.clone(), heartbeat: heartbeat.clone() }, token, ttl);
                            registry.inner.changed.notify_waiters();
                            crate::metrics::reregistered();
                        }
                        renewed_tx.send_replace(Instant::now());
                    }
                    cmd = rx.recv() => match cmd {
                        Some(Control::Update(hb, reply)) => {
                            heartbeat = hb;
                            registry.put_member(Member { key: member_key.clone(), heartbeat: heartbeat.clone() }, token, ttl);
                            let _ = reply.send(Ok(()));
                        }
                        Some(Control::Release(reply)) => {
                            registry.remove_member(&path, token);
                            let _ = reply.send(Ok(()));
                            return;
                        }
                        None => return,
                    },
                }
            }
        });
        Ok(Registration::new(key, control, task, renewed))
    }

    async fn members(&self, selector: &Selector) -> Result<Vec<Member>> {
        self.expire_members();
        let prefix = selector.prefix();
        let st = self.state();
        Ok(st
            .members
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, l)| l.value.clone())
            .collect())
    }

    async fn watch(&self, selector: &Selector) -> Result<MemberWatch> {
        self.ensure_reaper();
        self.expire_members();
        let prefix = selector.prefix();
        let (tx, events) = mpsc::unbounded_channel();
        let mut st = self.state();
        let initial = st
            .members
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, l)| l.value.clone())
            .collect();
        st.watchers.push((prefix, tx));
        Ok(MemberWatch { initial, events, _task: None })
    }

    async fn try_lock(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>> {
        Ok(self.take_lock(name, ttl).map(|token| self.lock_guard(name, token, ttl)))
    }

    async fn lock(&self, name: &str, ttl: Duration) -> Result<LockGuard> {
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(token) = self.take_lock(name, ttl) {
                return Ok(self.lock_guard(name, token, ttl));
            }
            let expires = self.state().locks.get(name).map(|l| l.expires);
            match expires {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = notified => {}
                    }
                }
                None => continue,
            }
        }
    }
}
