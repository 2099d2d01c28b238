//! Restart limits and same-host restart attempts (issue 14, item 4).

use super::harness::*;
use crate::{Event, HypervisorEvent, VmRunState};
use heartbeat_fs::records::{
    ClusterConfig, IsolationResponse, RestartLimit, RestartPriority, RestartState,
};
use heartbeat_fs::{DatastoreId, HostId, VmId};
use std::time::Duration;

const VM: u32 = 1;

fn cluster(max_restarts: u32, same_host_attempts: u32, same_host_wait_ms: u64) -> ClusterConfig {
    let mut cfg = config(
        3,
        &[&[1, 2, 3]],
        vec![vm(
            VM,
            1,
            RestartPriority::Medium,
            IsolationResponse::PowerOff,
        )],
    );
    cfg.ha.restart_limit = RestartLimit {
        max_restarts,
        window_ms: 3_600_000,
    };
    cfg.ha.same_host_restart_attempts = same_host_attempts;
    cfg.ha.same_host_restart_wait_ms = same_host_wait_ms;
    cfg
}

/// A cluster settled with its master on host 1 and the VM on host 2.
fn settled(cfg: ClusterConfig) -> Cluster {
    let mut c = Cluster::new(cfg);
    c.place(HostId(2), VM);
    c.run_until(Duration::from_secs(10), |c| c.masters().len() == 1)
        .expect("a master");
    c.run_secs(8.0);
    assert_eq!(c.masters(), vec![HostId(1)], "the lowest id wins a tie");
    c
}

/// The VM crashes where it runs (its host's hypervisor says so).
fn crash_vm(c: &mut Cluster) -> HostId {
    let on = c.where_runs(VM);
    assert_eq!(on.len(), 1, "runs once before it crashes: {on:?}");
    let h = on[0];
    c.hosts.get_mut(&h).unwrap().running.remove(&VmId(VM));
    let now = c.now;
    let a = c.hosts.get_mut(&h).unwrap().agent.as_mut().unwrap();
    a.handle_hypervisor(
        now,
        HypervisorEvent::VmStopped {
            vm: VmId(VM),
            state: VmRunState::Crashed,
        },
    );
    h
}

/// Crash the VM and wait for it to run again: where, and how long it took.
fn crash_and_restart(c: &mut Cluster) -> (HostId, HostId, Duration) {
    let from = crash_vm(c);
    let t0 = c.now;
    let t = c
        .run_until(Duration::from_secs(30), |c| c.where_runs(VM).len() == 1)
        .expect("restarted");
    let on = c.where_runs(VM)[0];
    // Until its host's agent has seen the power-on through, a crash is a failed attempt of the
    // restart, not a crash of a running VM.
    c.run_secs(3.0);
    (from, on, t.since(t0))
}

fn listed_state(c: &Cluster) -> Option<RestartState> {
    c.ds[&DatastoreId(1)]
        .protected_list()
        .and_then(|l| l.vms.iter().find(|e| e.vm == VmId(VM)))
        .map(|e| e.restart.clone())
}

fn limit_events(c: &Cluster) -> Vec<(u32, u64)> {
    c.all_events()
        .into_iter()
        .filter_map(|(_, _, e)| match e {
            Event::RestartLimitReached {
                restarts,
                window_ms,
                ..
            } => Some((restarts, window_ms)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_crash_loop_is_restarted_up_to_its_limit_then_failed() {
    let mut c = settled(cluster(3, 1, 0));
    for _ in 0..3 {
        crash_and_restart(&mut c);
    }
    assert_eq!(c.power_ons.len(), 3);
    crash_vm(&mut c);
    c.run_secs(30.0);
    assert!(c.where_runs(VM).is_empty(), "a 4th restart within the hour");
    assert_eq!(c.power_ons.len(), 3);
    assert_eq!(
        listed_state(&c),
        Some(RestartState::LimitReached { restarts: 3 }),
        "failed in the protected list"
    );
    assert_eq!(limit_events(&c), vec![(3, 3_600_000)], "one event");
    assert_eq!(c.agent(1).stats().restart_limits_reached, 1);
    // Three crashes brought back, each a restart; the VM already ran, so no first placement.
    let stats = c.agent(1).stats();
    assert_eq!((stats.restarts.issued, stats.restarts.succeeded), (3, 3));
    assert_eq!(stats.placements, crate::StartStats::default());
    let view = c.agent(1).status(c.now);
    let v = view.vms.iter().find(|v| v.vm == VmId(VM)).expect("listed");
    assert!(v.failed && v.restart.starts_with("failed"), "{}", v.restart);
}

#[test]
fn a_vms_own_limit_wins_over_the_clusters() {
    let mut cfg = cluster(3, 1, 0);
    cfg.vms[0].ha.restart_limit = Some(RestartLimit {
        max_restarts: 1,
        window_ms: 600_000,
    });
    let mut c = settled(cfg);
    crash_and_restart(&mut c);
    crash_vm(&mut c);
    c.run_secs(20.0);
    assert!(c.where_runs(VM).is_empty());
    assert_eq!(limit_events(&c), vec![(1, 600_000)]);
}

#[test]
fn restarts_that_left_the_window_no_longer_count() {
    let mut cfg = cluster(1, 1, 0);
    cfg.ha.restart_limit.window_ms = 20_000;
    let mut c = settled(cfg);
    crash_and_restart(&mut c);
    c.run_secs(25.0);
    crash_and_restart(&mut c);
    assert_eq!(c.power_ons.len(), 2, "the first restart is 25 s old");
    assert!(limit_events(&c).is_empty());
}

#[test]
fn same_host_attempts_are_a_count_with_a_wait_between_them() {
    let mut c = settled(cluster(10, 2, 5_000));
    let (from, on, first) = crash_and_restart(&mut c);
    assert_eq!((from, on), (HostId(2), HostId(2)), "first try on its host");
    assert!(first < Duration::from_secs(3), "at once: {first:?}");
    let (_, on, second) = crash_and_restart(&mut c);
    assert_eq!(on, HostId(2), "second try on its host");
    assert!(
        second >= Duration::from_secs(5),
        "after the wait: {second:?}"
    );
    let (_, on, third) = crash_and_restart(&mut c);
    assert_ne!(on, HostId(2), "two tries used: another host");
    assert!(third < Duration::from_secs(3), "no wait for another host");
    // On its new host the count starts again.
    let (from, on, _) = crash_and_restart(&mut c);
    assert_eq!(from, on, "a first try on the new host");
}

#[test]
fn no_same_host_attempts_means_another_host_at_once() {
    let mut c = settled(cluster(10, 0, 0));
    let (from, on, _) = crash_and_restart(&mut c);
    assert_ne!(from, on);
}

#[test]
fn a_new_master_keeps_counting_the_restarts_of_the_old_one() {
    // Two same-host tries: both restarts on host 2, away from the master that will die.
    let mut c = settled(cluster(2, 2, 0));
    crash_and_restart(&mut c);
    crash_and_restart(&mut c);
    assert_eq!(c.where_runs(VM), vec![HostId(2)]);
    c.crash_host(HostId(1));
    c.run_until(Duration::from_secs(30), |c| c.masters().len() == 1)
        .expect("a new master");
    c.run_secs(10.0);
    crash_vm(&mut c);
    c.run_secs(30.0);
    assert!(
        c.where_runs(VM).is_empty(),
        "the new master must not restart it a third time"
    );
    assert_eq!(
        listed_state(&c),
        Some(RestartState::LimitReached { restarts: 2 })
    );
}

#[test]
fn an_operators_clear_restarts_a_failed_vm_once() {
    let mut c = settled(cluster(1, 1, 0));
    crash_and_restart(&mut c);
    crash_vm(&mut c);
    c.run_secs(20.0);
    assert!(c.where_runs(VM).is_empty(), "failed");
    // The management plane clears it: a new configuration whose generation the VM records.
    let mut cfg = c.config.clone();
    cfg.generation += 1;
    cfg.vms[0].ha.restart_cleared = cfg.generation;
    c.config = cfg.clone();
    for d in c.ds.values_mut() {
        d.config = Some(cfg.clone());
    }
    c.run_until(Duration::from_secs(30), |c| c.where_runs(VM).len() == 1)
        .expect("restarted after the clear");
    c.run_secs(3.0);
    assert!(
        c.all_events()
            .iter()
            .any(|(_, _, e)| matches!(e, Event::RestartLimitCleared { vm } if *vm == VmId(VM)))
    );
    // The clear is spent: the next crash meets the limit again (one restart, the one above).
    crash_vm(&mut c);
    c.run_secs(20.0);
    assert!(c.where_runs(VM).is_empty(), "failed again");
    assert_eq!(limit_events(&c).len(), 2);
}

#[test]
fn a_first_placement_is_not_counted_as_a_restart() {
    // The VM is protected and runs nowhere: the master starts it once, a first placement.
    let mut c = Cluster::new(cluster(3, 1, 0));
    c.run_until(Duration::from_secs(30), |c| c.where_runs(VM).len() == 1)
        .expect("placed");
    c.run_secs(3.0);
    let master = c.masters()[0];
    let stats = c.agent(master.0).stats();
    assert_eq!(
        (stats.placements.issued, stats.placements.succeeded),
        (1, 1)
    );
    assert_eq!(stats.restarts, crate::StartStats::default());
    // Then it crashes: bringing it back is a restart.
    crash_and_restart(&mut c);
    let stats = c.agent(master.0).stats();
    assert_eq!((stats.restarts.issued, stats.restarts.succeeded), (1, 1));
    assert_eq!(stats.placements.issued, 1);
}
