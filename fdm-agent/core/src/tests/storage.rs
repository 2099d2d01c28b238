//! The storage-loss response `pause` (docs/safety.md, "Storage outages"): a VM frozen while its
//! host cannot write its home datastore, resumed where it is when the storage returns, and never
//! resumed once its host's leases lapsed.

use super::harness::*;
use crate::Event;
use heartbeat_fs::records::{IsolationResponse, RestartPriority, StorageLossResponse};
use heartbeat_fs::{DatastoreId, HostId, VmId};
use std::time::Duration;

const TIMEOUT_MS: u64 = 5_000;

/// Three hosts on two datastores; vm1 (pause) and vm2 (keep) live on datastore 2 and run on host 3.
fn cluster(ha_paused: bool) -> Cluster {
    let mut vms = vec![
        vm(1, 2, RestartPriority::Medium, IsolationResponse::PowerOff),
        vm(2, 2, RestartPriority::Medium, IsolationResponse::PowerOff),
    ];
    vms[0].ha.storage_loss_response = StorageLossResponse::Pause;
    let mut cfg = config(3, &[&[1, 2, 3], &[1, 2, 3]], vms);
    cfg.ha.storage_loss_timeout_ms = Some(TIMEOUT_MS);
    cfg.ha.paused = ha_paused;
    let mut c = Cluster::new(cfg);
    c.place(HostId(3), 1);
    c.place(HostId(3), 2);
    c.run_until(Duration::from_secs(10), |c| c.masters().len() == 1)
        .expect("a master");
    c.run_secs(8.0);
    assert_ne!(c.masters(), vec![HostId(3)], "host 3 is a slave here");
    c
}

fn lose(c: &mut Cluster, hosts: &[u32], lost: bool) {
    for &h in hosts {
        let s = &mut c.hosts.get_mut(&HostId(h)).unwrap().ds_lost;
        if lost {
            s.insert(DatastoreId(2));
        } else {
            s.remove(&DatastoreId(2));
        }
    }
}

fn seen(c: &Cluster, f: impl Fn(&Event) -> bool) -> bool {
    c.first_event(f).is_some()
}

fn paused_on(c: &Cluster, h: u32) -> bool {
    c.hosts[&HostId(h)].paused.contains(&VmId(1))
}

#[test]
fn a_paused_vm_is_resumed_where_it_is_when_its_storage_returns() {
    let mut c = cluster(false);
    let lost_at = c.now;
    lose(&mut c, &[1, 2, 3], true);
    let at = c
        .run_until(Duration::from_secs(15), |c| paused_on(c, 3))
        .expect("vm1 paused");
    assert!(
        at.since(lost_at) >= Duration::from_millis(TIMEOUT_MS),
        "not before the timeout: {:?}",
        at.since(lost_at)
    );
    c.run_secs(1.0);
    assert!(seen(&c, |e| matches!(
        e,
        Event::StorageLossPaused {
            vm: VmId(1),
            datastore: DatastoreId(2)
        }
    )));
    // Paused for a long outage: still a running VM (listed, covered by the hold), nothing fenced,
    // nothing restarted; the keep VM is left alone.
    c.run_secs(20.0);
    assert!(paused_on(&c, 3));
    assert_eq!(c.where_runs(1), vec![HostId(3)]);
    assert_eq!(c.where_runs(2), vec![HostId(3)]);
    assert!(!c.hosts[&HostId(3)].paused.contains(&VmId(2)));
    assert!(!seen(&c, |e| matches!(e, Event::SelfFenced { .. })));
    lose(&mut c, &[1, 2, 3], false);
    c.run_until(Duration::from_secs(5), |c| !paused_on(c, 3))
        .expect("vm1 resumed");
    c.run_secs(2.0);
    assert!(seen(&c, |e| matches!(
        e,
        Event::StorageLossResumed {
            vm: VmId(1),
            datastore: DatastoreId(2)
        }
    )));
    assert_eq!(c.where_runs(1), vec![HostId(3)]);
    assert!(c.power_ons.is_empty(), "{:?}", c.power_ons);
    // Paused once for the outage, not again after it.
    c.run_secs(10.0);
    assert!(!paused_on(&c, 3));
}

#[test]
fn a_paused_vm_whose_host_is_cut_off_is_fenced_and_never_resumed() {
    let mut c = cluster(false);
    lose(&mut c, &[3], true);
    c.run_until(Duration::from_secs(15), |c| paused_on(c, 3))
        .expect("vm1 paused");
    // Storage lost at host 3 only: the master's acknowledgements keep host 3's lease, so the VM
    // stays paused there and is not restarted.
    c.run_secs(10.0);
    assert!(paused_on(&c, 3) && c.power_ons.is_empty());
    // Now its other datastore and the network go too (a rack's switch): both leases lapse and
    // host 3 fences its VMs, paused or not, before the master, which takes it for dead, restarts
    // them elsewhere (the harness panics on a second copy).
    c.hosts
        .get_mut(&HostId(3))
        .unwrap()
        .ds_lost
        .insert(DatastoreId(1));
    c.partition(&[&[1, 2], &[3]]);
    c.run_until(Duration::from_secs(30), |c| {
        c.where_runs(1).len() == 1 && c.where_runs(1) != vec![HostId(3)]
    })
    .expect("vm1 restarted elsewhere");
    assert!(seen(&c, |e| matches!(e, Event::SelfFenced { .. })));
    // Everything returns: the fenced VM is not resumed (it is off at host 3, and runs once).
    c.hosts.get_mut(&HostId(3)).unwrap().ds_lost.clear();
    c.heal();
    c.run_secs(30.0);
    assert!(!seen(&c, |e| matches!(e, Event::StorageLossResumed { .. })));
    assert_eq!(c.where_runs(1).len(), 1, "{:?}", c.where_runs(1));
    assert_ne!(c.where_runs(1), vec![HostId(3)]);
    assert_eq!(
        c.power_ons.iter().filter(|(_, _, v)| *v == VmId(1)).count(),
        1
    );
}

#[test]
fn while_ha_is_paused_no_vm_is_paused_for_a_storage_loss() {
    let mut c = cluster(true);
    lose(&mut c, &[3], true);
    c.run_secs(20.0);
    assert!(!paused_on(&c, 3));
    assert!(!seen(&c, |e| matches!(e, Event::StorageLossPaused { .. })));
    assert_eq!(c.where_runs(1), vec![HostId(3)]);
}

#[test]
fn a_paused_vm_whose_leases_lapsed_stays_paused_even_when_no_fence_stopped_it() {
    let mut c = cluster(false);
    lose(&mut c, &[3], true);
    c.run_until(Duration::from_secs(15), |c| paused_on(c, 3))
        .expect("vm1 paused");
    // The operator pauses HA: from now on fences are suppressed (and restarts too).
    let mut cfg = c.config.clone();
    cfg.generation += 1;
    cfg.ha.paused = true;
    for d in c.ds.values_mut() {
        d.config = Some(cfg.clone());
    }
    c.config = cfg;
    c.run_secs(8.0);
    // Host 3 is cut off: its leases lapse and nothing stops the VM.
    c.hosts
        .get_mut(&HostId(3))
        .unwrap()
        .ds_lost
        .insert(DatastoreId(1));
    c.partition(&[&[1, 2], &[3]]);
    c.run_secs(15.0);
    assert!(c.events(3).iter().any(|(_, e)| matches!(
        e,
        Event::ActionSuppressed { what } if what.contains("self-fence")
    )));
    assert!(paused_on(&c, 3));
    // Everything returns and host 3 writes its datastores again, but while its leases were
    // lapsed a master could have restarted the VM: it is never resumed.
    c.hosts.get_mut(&HostId(3)).unwrap().ds_lost.clear();
    c.heal();
    c.run_secs(20.0);
    assert!(paused_on(&c, 3));
    assert_eq!(c.where_runs(1), vec![HostId(3)]);
    assert!(!seen(&c, |e| matches!(e, Event::StorageLossResumed { .. })));
}
