//! Returning hosts never keep a stale copy (`docs/safety.md`, "Returning hosts"): an agent that
//! starts where a VM already runs adopts it only when the VM's protected entry does not place it
//! elsewhere, and a master that hears a VM from two hosts keeps one copy.

use super::harness::*;
use crate::{Event, FaultKnobs, SafetyStep, Timings};
use heartbeat_fs::records::{IsolationResponse, RestartPriority};
use heartbeat_fs::{HostId, VmId};
use std::time::Duration;

/// Three hosts on one datastore, vm1 on host 3, a master elected and settled.
fn cluster(knobs: FaultKnobs) -> Cluster {
    let vms = vec![vm(
        1,
        1,
        RestartPriority::Medium,
        IsolationResponse::PowerOff,
    )];
    let cfg = config(3, &[&[1, 2, 3]], vms);
    let mut c = Cluster::with_timings(cfg, Timings::default(), knobs);
    c.place(HostId(3), 1);
    c.run_until(Duration::from_secs(10), |c| c.masters().len() == 1)
        .expect("a master");
    c.run_secs(8.0);
    assert_ne!(c.masters(), vec![HostId(3)], "host 3 is a slave here");
    c
}

/// Host 3 dies, vm1 is restarted elsewhere, and host 3 boots with its hypervisor starting vm1
/// before the agent runs (a libvirt autostart): two copies run. Returns the host of the one HA
/// placed.
fn host_returns_with_a_stale_copy(c: &mut Cluster) -> HostId {
    c.crash_host(HostId(3));
    c.run_until(Duration::from_secs(30), |c| c.where_runs(1).len() == 1)
        .expect("vm1 restarted elsewhere");
    c.run_secs(5.0);
    let moved = c.where_runs(1)[0];
    c.boot_with_autostart(HostId(3), &[1]);
    assert_eq!(c.where_runs(1).len(), 2);
    moved
}

#[test]
fn an_agent_back_after_its_vm_moved_ends_its_stale_copy() {
    let mut c = cluster(FaultKnobs::default());
    let moved = host_returns_with_a_stale_copy(&mut c);
    let back = c.now;
    let ended = c
        .run_until(Duration::from_secs(10), |c| c.where_runs(1) == vec![moved])
        .expect("host 3's stale copy stopped");
    assert!(
        ended.since(back) < Duration::from_secs(5),
        "{:?}",
        ended.since(back)
    );
    assert!(
        c.first_event(|e| matches!(
            e,
            Event::StaleCopyFound { vm: VmId(1), .. }
                | Event::DuplicateCopyStopSent { vm: VmId(1), .. }
        ))
        .is_some()
    );
    // The copy HA placed is kept, and nothing starts the VM again.
    let power_ons = c.power_ons.len();
    c.run_secs(20.0);
    assert_eq!(c.where_runs(1), vec![moved]);
    assert_eq!(c.power_ons.len(), power_ons);
    let adopted_again = c
        .all_events()
        .into_iter()
        .any(|(_, t, e)| t >= back && matches!(e, Event::Adopted { vm: VmId(1) }));
    assert!(!adopted_again, "the stale copy was never adopted");
}

#[test]
fn the_agents_check_alone_ends_the_stale_copy() {
    let mut c = cluster(FaultKnobs::removing(&[SafetyStep::DuplicateResolution]));
    let moved = host_returns_with_a_stale_copy(&mut c);
    c.run_until(Duration::from_secs(10), |c| c.where_runs(1) == vec![moved])
        .expect("host 3's stale copy stopped by its own check");
    assert!(
        c.first_event(
            |e| matches!(e, Event::StaleCopyFound { vm: VmId(1), placed_on } if *placed_on == moved)
        )
        .is_some()
    );
}

#[test]
fn without_either_rule_the_stale_copy_lives_on() {
    // The two rules are what ends the copy: removed, it is adopted and runs beside the other.
    let knobs =
        FaultKnobs::removing(&[SafetyStep::StaleCopyCheck, SafetyStep::DuplicateResolution]);
    let mut c = cluster(knobs);
    host_returns_with_a_stale_copy(&mut c);
    c.run_secs(20.0);
    assert_eq!(c.where_runs(1).len(), 2);
}

#[test]
fn an_agent_restarted_at_once_adopts_its_vm() {
    let mut c = cluster(FaultKnobs::default());
    let power_ons = c.power_ons.len();
    c.restart_agent(HostId(3));
    c.run_until(Duration::from_secs(5), |c| {
        c.first_event(|e| matches!(e, Event::Adopted { vm: VmId(1) }))
            .is_some()
    })
    .expect("vm1 adopted");
    c.run_secs(20.0);
    assert_eq!(c.where_runs(1), vec![HostId(3)]);
    assert_eq!(c.power_ons.len(), power_ons, "nothing restarted");
    assert!(
        c.first_event(|e| matches!(
            e,
            Event::StaleCopyFound { .. }
                | Event::DuplicateCopyStopSent { .. }
                | Event::SelfFenced { .. }
        ))
        .is_none()
    );
}
