//! Election, heartbeats and verdicts (issue 3's behaviours).

use super::harness::*;
use crate::{Agent, Event, Output, Role, Time, Verdict};
use heartbeat_fs::records::{IsolationResponse, RestartPriority};
use heartbeat_fs::{DatastoreId, HostId};
use std::time::Duration;

fn cluster4() -> Cluster {
    let vms = (1..=4)
        .map(|i| vm(i, 1, RestartPriority::Medium, IsolationResponse::PowerOff))
        .collect();
    let mut c = Cluster::new(config(4, &[&[1, 2, 3, 4], &[1, 2, 3, 4]], vms));
    for i in 1..=4 {
        c.place(HostId(i), i);
    }
    c
}

fn settle(c: &mut Cluster) -> HostId {
    c.run_until(Duration::from_secs(10), |c| c.masters().len() == 1)
        .expect("a master is elected");
    c.run_secs(8.0);
    let m = c.masters();
    assert_eq!(m.len(), 1, "one master: {m:?}");
    m[0]
}

#[test]
fn most_datastores_host_wins_election() {
    // Host 3 sees both datastores, the others only one.
    let mut c = Cluster::new(config(4, &[&[1, 2, 3, 4], &[3]], vec![]));
    assert_eq!(settle(&mut c), HostId(3));
}

#[test]
fn tie_goes_to_lowest_host_id() {
    let mut c = Cluster::new(config(5, &[&[1, 2, 3, 4, 5]], vec![]));
    assert_eq!(settle(&mut c), HostId(1));
    for h in 2..=5 {
        assert_eq!(c.agent(h).role(), Role::Slave { master: HostId(1) });
    }
}

#[test]
fn same_inputs_elect_the_same_master() {
    let a = settle(&mut Cluster::new(config(
        6,
        &[&[1, 2, 3], &[4, 5, 6], &[2, 5]],
        vec![],
    )));
    let b = settle(&mut Cluster::new(config(
        6,
        &[&[1, 2, 3], &[4, 5, 6], &[2, 5]],
        vec![],
    )));
    assert_eq!(a, b);
    assert_eq!(a, HostId(2), "2 and 5 see two datastores; 2 is lower");
}

#[test]
fn incumbent_master_is_kept_when_an_equal_host_returns() {
    let mut c = Cluster::new(config(3, &[&[1, 2, 3]], vec![]));
    assert_eq!(settle(&mut c), HostId(1));
    c.crash_host(HostId(1));
    c.run_secs(6.0);
    assert_eq!(c.masters(), vec![HostId(2)]);
    // Host 1 comes back: it would win a fresh election on id, but 2 is master now.
    c.boot_host(HostId(1));
    c.run_secs(10.0);
    assert_eq!(c.masters(), vec![HostId(2)]);
    assert_eq!(c.agent(1).role(), Role::Slave { master: HostId(2) });
}

#[test]
fn new_master_within_three_seconds_of_master_death() {
    let mut c = cluster4();
    assert_eq!(settle(&mut c), HostId(1));
    let died = c.now;
    c.crash_host(HostId(1));
    let t = c
        .run_until(Duration::from_secs(10), |c| c.masters() == vec![HostId(2)])
        .expect("new master");
    let took = t.since(died);
    assert!(took < Duration::from_secs(3), "new master after {took:?}");
}

#[test]
fn partition_heal_leaves_one_master() {
    let mut c = cluster4();
    settle(&mut c);
    c.partition(&[&[1, 2], &[3, 4]]);
    c.run_secs(10.0);
    let mut m = c.masters();
    m.sort();
    assert_eq!(m, vec![HostId(1), HostId(3)], "one master per side");
    c.heal();
    let t = c.run_until(Duration::from_secs(10), |c| c.masters().len() == 1);
    assert!(t.is_some(), "masters merge: {:?}", c.masters());
    assert_eq!(c.masters(), vec![HostId(1)]);
    assert!(
        c.events(3)
            .iter()
            .any(|(_, e)| matches!(e, Event::Yielded { to } if *to == HostId(1)))
    );
    c.run_secs(5.0);
    for h in 2..=4 {
        assert_eq!(c.agent(h).role(), Role::Slave { master: HostId(1) });
    }
}

#[test]
fn partitioned_host_is_not_declared_dead_and_its_vms_stay() {
    let mut c = cluster4();
    settle(&mut c);
    c.partition(&[&[1, 2, 3], &[4]]);
    c.run_secs(20.0);
    assert_eq!(c.verdict(1, 4), Some(Verdict::Partitioned));
    assert_eq!(c.where_runs(4), vec![HostId(4)]);
    assert!(
        c.power_ons.is_empty(),
        "nothing restarted: {:?}",
        c.power_ons
    );
    // Host 4 is master of its own partition (its gateway answers) and holds no claim.
    assert_eq!(c.agent(4).role(), Role::Master);
}

#[test]
fn isolated_host_declares_itself_isolated_and_master_agrees() {
    let mut c = cluster4();
    settle(&mut c);
    let t0 = c.now;
    {
        let h = c.hosts.get_mut(&HostId(3)).unwrap();
        h.network_up = false;
    }
    let t = c
        .run_until(Duration::from_secs(15), |c| {
            c.agent(3).role() == Role::Isolated
        })
        .expect("isolation declared");
    assert!(
        t.since(t0) < Duration::from_secs(10),
        "isolation declared after {:?}",
        t.since(t0)
    );
    c.run_until(Duration::from_secs(5), |c| {
        c.verdict(1, 3) == Some(Verdict::Isolated)
    })
    .expect("master sees isolation");
}

#[test]
fn dead_host_is_declared_dead_only_after_the_lease() {
    let mut c = cluster4();
    settle(&mut c);
    let t0 = c.now;
    c.crash_host(HostId(4));
    let t = c
        .run_until(Duration::from_secs(10), |c| {
            c.verdict(1, 4) == Some(Verdict::Dead)
        })
        .expect("dead verdict");
    let took = t.since(t0);
    let lease = c.timings.ds_lease;
    assert!(
        took >= lease,
        "declared dead after {took:?}, before the {lease:?} lease"
    );
    assert!(took < Duration::from_secs(4), "dead verdict took {took:?}");
}

#[test]
fn corrupt_heartbeat_record_is_not_taken_as_death() {
    let mut c = cluster4();
    settle(&mut c);
    // Host 4 loses the network; its heartbeat sectors read back torn from now on, although it is
    // alive and writing (the storage returns garbage to the master).
    c.partition(&[&[1, 2, 3], &[4]]);
    for _ in 0..2000 {
        for d in c.ds.values_mut() {
            d.tear_heartbeat(HostId(4));
        }
        c.run_for(TICK);
    }
    assert_ne!(c.verdict(1, 4), Some(Verdict::Dead));
    assert!(c.power_ons.is_empty());
}

#[test]
fn host_that_loses_storage_and_network_fences_its_vms() {
    let mut c = cluster4();
    settle(&mut c);
    {
        let h = c.hosts.get_mut(&HostId(4)).unwrap();
        h.ds_lost.insert(DatastoreId(1));
        h.ds_lost.insert(DatastoreId(2));
    }
    c.partition(&[&[1, 2, 3], &[4]]);
    let t0 = c.now;
    let t = c
        .run_until(Duration::from_secs(10), |c| {
            c.where_runs(4) != vec![HostId(4)]
        })
        .expect("fenced");
    assert!(
        c.events(4)
            .iter()
            .any(|(_, e)| matches!(e, Event::SelfFenced { .. }))
    );
    // Fenced before the master could restart it anywhere.
    let restarted = c.first_event(|e| matches!(e, Event::VmRestarted { .. }));
    assert!(
        restarted.is_none_or(|r| r > t),
        "fence at {t}, restart at {restarted:?}"
    );
    assert!(t.since(t0) < c.timings.ds_lease);
}

#[test]
fn host_that_loses_only_storage_keeps_its_vms() {
    let mut c = cluster4();
    settle(&mut c);
    let h = c.hosts.get_mut(&HostId(4)).unwrap();
    h.ds_lost.insert(DatastoreId(1));
    h.ds_lost.insert(DatastoreId(2));
    c.run_secs(20.0);
    assert_eq!(c.where_runs(4), vec![HostId(4)]);
    assert_eq!(c.verdict(1, 4), Some(Verdict::Alive));
    assert!(
        !c.events(4)
            .iter()
            .any(|(_, e)| matches!(e, Event::SelfFenced { .. }))
    );
}

fn lone_agent() -> Agent {
    let c = Cluster::new(config(3, &[&[1, 2, 3]], vec![]));
    let settings = c.settings(HostId(1), 9);
    Agent::new(settings, Some(c.config.clone()), Time::from_millis(1000))
}

#[test]
fn spurious_timeouts_are_no_ops() {
    let mut a = lone_agent();
    while a.poll_output().is_some() {}
    let next = a.poll_timeout().expect("has a timer");
    a.handle_timeout(next);
    while a.poll_output().is_some() {}
    let before = a.poll_timeout();
    // Called again at the same instant, and before the next deadline: nothing happens.
    a.handle_timeout(next);
    a.handle_timeout(before.unwrap() - Duration::from_millis(1));
    let outs: Vec<Output> = std::iter::from_fn(|| a.poll_output()).collect();
    assert!(outs.is_empty(), "spurious timeout produced {outs:?}");
    assert_eq!(a.poll_timeout(), before);
}

#[test]
fn duplicated_and_reordered_datagrams_change_nothing() {
    let run = |dup: bool, reorder: bool| {
        let mut c = cluster4();
        c.duplicate_datagrams = dup;
        c.reorder_datagrams = reorder;
        settle(&mut c);
        c.crash_host(HostId(4));
        c.run_secs(15.0);
        let roles: Vec<Role> = (1..=3).map(|h| c.agent(h).role()).collect();
        (
            roles,
            c.where_runs(4).len(),
            c.power_ons.len(),
            c.verdict(1, 4),
        )
    };
    let base = run(false, false);
    assert_eq!(base.1, 1, "vm4 restarted once");
    assert_eq!(run(true, false), base);
    assert_eq!(run(false, true), base);
    assert_eq!(run(true, true), base);
}

#[test]
fn garbage_datagrams_are_counted_and_dropped() {
    let mut a = lone_agent();
    a.handle_datagram(Time::from_millis(1001), b"not a datagram");
    a.handle_datagram(Time::from_millis(1002), &[0u8; 2000]);
    assert_eq!(a.stats().drops.total(), 2);
    assert_eq!(a.role(), Role::Starting);
}
