//! One suite, run against both registries: etcd on a private test server, and the in-memory one.
//! Every wait is on a condition with a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use porpoise_registry::{
    EtcdRegistry, Heartbeat, MemberEvent, MemberKey, MemberWatch, MemoryRegistry, Registry, Selector,
};
use porpoise_testkit::{TestEtcd, unique_name};
use tokio::time::{Instant, timeout};

const TTL: Duration = Duration::from_secs(2);

/// A factory of clients that share one registry: separate connections for etcd.
type Connect =
    Box<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn Registry>> + Send>> + Send + Sync>;

fn etcd() -> Connect {
    let endpoint = TestEtcd::shared().endpoint();
    let root = format!("/{}", unique_name("porpoise-test"));
    Box::new(move || {
        let (endpoint, root) = (endpoint.clone(), root.clone());
        Box::pin(async move {
            let r = EtcdRegistry::connect(&[endpoint], &root).await.expect("connect to the test etcd");
            Arc::new(r) as Arc<dyn Registry>
        })
    })
}

fn memory() -> Connect {
    let shared = MemoryRegistry::new();
    Box::new(move || {
        let r = shared.clone();
        Box::pin(async move { Arc::new(r) as Arc<dyn Registry> })
    })
}

async fn next_event(watch: &mut MemberWatch, within: Duration) -> MemberEvent {
    timeout(within, watch.next()).await.expect("a membership event in time").expect("watch open")
}

async fn members_are_listed_by_role_and_group(connect: Connect) {
    let r = connect().await;
    let _m = r.register(MemberKey::master("10.0.0.1:5678"), Heartbeat::idle(0), TTL).await.expect("register");
    let _w1 =
        r.register(MemberKey::worker("default", "10.0.0.2:5679"), Heartbeat::idle(8), TTL).await.expect("register");
    let _w2 = r.register(MemberKey::worker("gpu", "10.0.0.3:5679"), Heartbeat::idle(2), TTL).await.expect("register");
    let addrs = |ms: Vec<porpoise_registry::Member>| ms.into_iter().map(|m| m.key.addr).collect::<Vec<_>>();
    assert_eq!(addrs(r.members(&Selector::Masters).await.expect("list")), ["10.0.0.1:5678"]);
    let mut all = addrs(r.members(&Selector::Workers { group: None }).await.expect("list"));
    all.sort();
    assert_eq!(all, ["10.0.0.2:5679", "10.0.0.3:5679"]);
    let gpu = r.members(&Selector::Workers { group: Some("gpu".into()) }).await.expect("list");
    assert_eq!(gpu.len(), 1);
    assert_eq!((gpu[0].key.addr.as_str(), gpu[0].heartbeat.slots), ("10.0.0.3:5679", 2));
}

async fn watchers_see_join_update_and_leave(connect: Connect) {
    let r = connect().await;
    let other = connect().await;
    let _before = r.register(MemberKey::worker("default", "w0:1"), Heartbeat::idle(1), TTL).await.expect("register");
    let mut watch = other.watch(&Selector::Workers { group: Some("default".into()) }).await.expect("watch");
    assert_eq!(watch.initial.len(), 1);

    let reg = r.register(MemberKey::worker("default", "w1:1"), Heartbeat::idle(4), TTL).await.expect("register");
    let MemberEvent::Up(m) = next_event(&mut watch, TTL).await else { panic!("expected a join") };
    assert_eq!(m.key, MemberKey::worker("default", "w1:1"));

    let mut busy = Heartbeat::idle(4);
    busy.running_tasks = 3;
    reg.update(busy).await.expect("update heartbeat");
    let MemberEvent::Up(m) = next_event(&mut watch, TTL).await else { panic!("expected an update") };
    assert_eq!(m.heartbeat.running_tasks, 3);

    // another group is not seen by this watcher
    let _gpu = r.register(MemberKey::worker("gpu", "g1:1"), Heartbeat::idle(1), TTL).await.expect("register");

    reg.revoke().await.expect("revoke");
    assert_eq!(next_event(&mut watch, TTL).await, MemberEvent::Down(MemberKey::worker("default", "w1:1")));
}

async fn a_member_that_stops_renewing_is_gone_within_twice_its_ttl(connect: Connect) {
    let r = connect().await;
    let observer = connect().await;
    let mut watch = observer.watch(&Selector::Masters).await.expect("watch");
    let reg = r.register(MemberKey::master("m1:1"), Heartbeat::idle(0), TTL).await.expect("register");
    assert!(matches!(next_event(&mut watch, TTL).await, MemberEvent::Up(_)));
    // it keeps renewing: still there after more than its TTL
    let quiet = timeout(TTL + TTL / 2, watch.next()).await;
    assert!(quiet.is_err(), "a renewing member must not leave: {quiet:?}");
    // the process "dies": renewals stop, nothing is revoked
    drop(reg);
    let died = Instant::now();
    let event = next_event(&mut watch, 2 * TTL).await;
    assert_eq!(event, MemberEvent::Down(MemberKey::master("m1:1")), "gone after {:?}", died.elapsed());
    assert!(observer.members(&Selector::Masters).await.expect("list").is_empty());
}

async fn two_clients_never_hold_a_lock_at_once(connect: Connect) {
    let a = connect().await;
    let b = connect().await;
    let held = a.try_lock("failover", TTL).await.expect("try").expect("free lock taken");
    assert!(b.try_lock("failover", TTL).await.expect("try").is_none(), "held lock must exclude");
    // b waits for it; it gets it once a releases
    let waiter = tokio::spawn(async move { b.lock("failover", TTL).await.expect("lock") });
    tokio::time::sleep(TTL + TTL / 2).await; // past the TTL: a renews, so b must still wait
    assert!(!waiter.is_finished(), "the lock was taken while still held");
    held.release().await.expect("release");
    let got = timeout(TTL, waiter).await.expect("waiter gets the released lock in time").expect("join");
    got.release().await.expect("release");

    // many clients contend; the critical section never has two
    let inside = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let r = connect().await;
        let inside = inside.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let g = r.lock("contended", TTL).await.expect("lock");
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders at once");
                tokio::time::sleep(Duration::from_millis(10)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                g.release().await.expect("release");
            }
        }));
    }
    for t in tasks {
        timeout(Duration::from_secs(60), t).await.expect("contention finishes").expect("join");
    }
}

async fn a_lock_whose_holder_died_frees_itself(connect: Connect) {
    let a = connect().await;
    let b = connect().await;
    let held = a.try_lock("leader", TTL).await.expect("try").expect("taken");
    drop(held); // stops renewing without releasing
    let got = timeout(2 * TTL + Duration::from_secs(1), b.lock("leader", TTL)).await.expect("lock freed by expiry");
    got.expect("lock").release().await.expect("release");
}

macro_rules! suite {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::$backend()).await;
                }
            )*
        }
    };
}

macro_rules! suites {
    ($($case:ident),* $(,)?) => {
        suite!(etcd: $($case),*);
        suite!(memory: $($case),*);
    };
}

suites!(
    members_are_listed_by_role_and_group,
    watchers_see_join_update_and_leave,
    a_member_that_stops_renewing_is_gone_within_twice_its_ttl,
    two_clients_never_hold_a_lock_at_once,
    a_lock_whose_holder_died_frees_itself,
);

/// etcd faults caused for real on a private etcd: a lease revoked behind the registry's back,
/// and etcd killed and started again.
mod etcd_faults {
    use super::*;

    async fn client(etcd: &TestEtcd, root: &str) -> EtcdRegistry {
        EtcdRegistry::connect(&[etcd.endpoint()], root).await.expect("connect to the test etcd")
    }

    /// The next event about `key`, skipping others (a re-list may repeat what is known).
    async fn next_about(watch: &mut MemberWatch, key: &MemberKey, within: Duration) -> MemberEvent {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event =
                timeout(left, watch.next()).await.unwrap_or_else(|_| panic!("no event about {key:?} in {within:?}"));
            let event = event.expect("watch open");
            let about = match &event {
                MemberEvent::Up(m) => &m.key,
                MemberEvent::Down(k) => k,
            };
            if about == key {
                return event;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_lease_is_granted_again_and_the_member_comes_back() {
        let etcd = TestEtcd::start();
        let root = format!("/{}", unique_name("porpoise-lease"));
        let (r, observer) = (client(&etcd, &root).await, client(&etcd, &root).await);
        let mut watch = observer.watch(&Selector::Masters).await.expect("watch");
        let key = MemberKey::master("m1:1");
        let _reg = r.register(key.clone(), Heartbeat::idle(0), TTL).await.expect("register");
        assert!(matches!(next_about(&mut watch, &key, TTL).await, MemberEvent::Up(_)));

        // the lease goes away behind the registry's back, as after a long partition
        let mut raw = etcd_client::Client::connect([etcd.endpoint()], None).await.expect("connect");
        let leases = raw.leases().await.expect("list leases");
        for lease in leases.leases() {
            raw.lease_revoke(lease.id()).await.expect("revoke");
        }
        assert_eq!(next_about(&mut watch, &key, TTL).await, MemberEvent::Down(key.clone()));
        assert!(matches!(next_about(&mut watch, &key, 2 * TTL).await, MemberEvent::Up(_)), "registered again");
        let masters = observer.members(&Selector::Masters).await.expect("list");
        assert_eq!(masters.iter().map(|m| &m.key).collect::<Vec<_>>(), [&key]);
    }

    /// A member cut off from etcd (the network between them, not etcd, fails) for longer than
    /// its TTL: its lease ends; once the network is back it is granted a new one and listed
    /// again, and says when the registry last confirmed it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_cut_off_past_its_lease_registers_again_when_the_network_is_back() {
        let etcd = TestEtcd::start();
        let proxy = porpoise_testkit::CuttableProxy::start(&etcd.endpoint()).await;
        let root = format!("/{}", unique_name("porpoise-cut"));
        let r = EtcdRegistry::connect(std::slice::from_ref(&proxy.endpoint), &root)
            .await
            .expect("connect through the proxy");
        let observer = client(&etcd, &root).await;
        let mut watch = observer.watch(&Selector::Masters).await.expect("watch");
        let key = MemberKey::master("m1:1");
        let reg = r.register(key.clone(), Heartbeat::idle(0), TTL).await.expect("register");
        assert!(matches!(next_about(&mut watch, &key, TTL).await, MemberEvent::Up(_)));

        proxy.cut();
        let cut_at = Instant::now();
        assert_eq!(next_about(&mut watch, &key, 3 * TTL).await, MemberEvent::Down(key.clone()), "the lease ended");
        assert!(reg.last_renewed() <= cut_at, "nothing was renewed while cut off");
        proxy.heal();
        assert!(matches!(next_about(&mut watch, &key, 4 * TTL).await, MemberEvent::Up(_)), "registered again");
        // the watch may see the new key before the registration notes its new lease
        let deadline = Instant::now() + TTL;
        while reg.last_renewed() <= cut_at {
            assert!(Instant::now() < deadline, "the new lease counts as renewed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn registrations_and_watches_survive_an_etcd_restart() {
        let etcd = TestEtcd::start();
        let root = format!("/{}", unique_name("porpoise-restart"));
        let (r, observer) = (client(&etcd, &root).await, client(&etcd, &root).await);
        let all = Selector::Workers { group: None };
        let mut watch = observer.watch(&all).await.expect("watch");
        let w1 = MemberKey::worker("default", "w1:1");
        let reg1 = r.register(w1.clone(), Heartbeat::idle(1), TTL).await.expect("register");
        assert!(matches!(next_about(&mut watch, &w1, TTL).await, MemberEvent::Up(_)));

        etcd.kill();
        // down for longer than the lease TTL: renewals fail meanwhile
        tokio::time::sleep(TTL + TTL / 2).await;
        etcd.restart();

        // the member is still registered once etcd is back
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(members) = observer.members(&all).await
                && members.iter().any(|m| m.key == w1)
            {
                break;
            }
            assert!(Instant::now() < deadline, "w1 is not registered after etcd came back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // the watch opened before the restart still tells joins and leaves
        let w2 = MemberKey::worker("default", "w2:1");
        let reg2 = client(&etcd, &root).await.register(w2.clone(), Heartbeat::idle(1), TTL).await.expect("register");
        assert!(matches!(next_about(&mut watch, &w2, Duration::from_secs(30)).await, MemberEvent::Up(_)));
        reg1.revoke().await.expect("revoke");
        assert_eq!(next_about(&mut watch, &w1, Duration::from_secs(30)).await, MemberEvent::Down(w1));
        reg2.revoke().await.expect("revoke");
    }
}
