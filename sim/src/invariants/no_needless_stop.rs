//! HA never takes down what it cannot bring back (`docs/safety.md`, "The other promise"). Every
//! stop an agent makes of a running VM must be justified at that moment:
//! - an **isolation response** only while some master holds the claim of the VM's home datastore
//!   (the claim record, not released, written within a few claim leases), or while the isolated
//!   host cannot read that datastore (it cannot tell, and decides as FDM does);
//! - a **fence** only while a competing master is possible: not after the whole cluster (every
//!   host up with a running agent, the network whole, without loss or long delays, and no new
//!   master) has been so for long enough that the storage-outage hold must have started.
//!
//! - a **storage-loss response** (an operator's `power-off` after `storage_loss_timeout_ms`) only
//!   while the host really has no storage for the VM's datastore.
//!
//! - a **stale-copy stop** only while another copy runs, or a start of the VM elsewhere is in
//!   flight (an intent naming another host), or the other copy stopped moments ago (the host
//!   judged from a protected list read a moment earlier), or the records on the VM's datastore
//!   place it on another host that holds it in its power-on list (a host that lost the datastore
//!   cannot drop a VM it fenced from its list: the returning host cannot tell, stops its copy,
//!   and the master restarts the VM, which the HA-downtime figure counts).
//!
//! Aborts (a start the master cancelled) stop a VM that had no business running and are not judged.
//! A pause (the storage-loss response `pause`) is no stop: the VM keeps running at its host (the
//! world keeps it in `running`), so it is not judged here; its VM-seconds are reported apart.
//! The checks are continuous: the world calls `at_agent_stop` at the moment of every stop.

use crate::world::{Micros, World, us};
use fdm_core::StopCause;
use heartbeat_fs::{HostId, VmId};

pub const NAME: &str = "no_needless_stop";

/// Why the stop was needless, if it was.
pub fn at_agent_stop(w: &World, host: HostId, vm: VmId, cause: StopCause) -> Option<String> {
    let home = w.config.vm(vm)?.home;
    let t = &w.params.timings;
    match cause {
        StopCause::Isolation => {
            let blind = w.hosts.iter().find(|h| h.id == host).is_some_and(|h| {
                h.ds_lost.contains(&home) || h.ds_hung.contains(&home) || w.ds_dead.contains(&home)
            });
            // The host judges from its last completed read (one evaluation and one datastore call
            // old at most) of a renewal it saw advancing within a claim lease: a master that
            // released the claim since then (it stepped down, isolated itself) is a race the rule
            // cannot see, and FDM's has the same.
            let window = us(t.stretch(t.claim_lease)) * 3;
            // Reads are issued at every evaluation and answered within milliseconds here (a
            // call that times out makes the host decide blind, which is the host's to do).
            let read_age = us(t.evaluate_interval()) * 4;
            let renewed = w
                .claim_renewed_at
                .get(&home)
                .is_some_and(|&at| w.now.saturating_sub(at) <= window);
            let released_long_ago = w.claim_released_at.get(&home).is_some_and(|&at| {
                w.claim_renewed_at.get(&home).is_none_or(|&r| at > r)
                    && w.now.saturating_sub(at) > read_age
            });
            let held = renewed && !released_long_ago;
            (!blind && !held).then(|| {
                format!(
                    "{host} applied the isolation response to {vm} although no master held \
                     the claim of {home}: nobody could restart it"
                )
            })
        }
        StopCause::Fence => {
            let settle = whole_settle_us(w);
            let whole_for = w.whole_since.map(|since| w.now.saturating_sub(since));
            whole_for.filter(|&d| d > settle).map(|d| {
                format!(
                    "{host} fenced {vm} (home {home}) although every host was up and the \
                     network whole for {:.1} s: no other master could act on {home}",
                    d as f64 / 1e6
                )
            })
        }
        // An operator asked (`fdmctl vm stop`).
        StopCause::Abort | StopCause::Operator => None,
        StopCause::StaleCopy => {
            let elsewhere = w.where_runs(vm).iter().any(|&o| o != host);
            let starting_elsewhere = matches!(
                w.listed_restart_state(vm),
                Some(heartbeat_fs::records::RestartState::Intent { target, .. }) if target != host
            );
            // The agent judges from a protected-list read at most an evaluation and a datastore
            // call old (twice, for scheduling).
            let recent =
                (us(t.evaluate_interval()) + us(t.datastore_call_deadline)).saturating_mul(2);
            let just_stopped = w
                .stops
                .get(&vm)
                .is_some_and(|&(at, h, _)| h != host && w.now.saturating_sub(at) <= recent);
            let records_place_elsewhere = w.ds.get(&home).is_some_and(|d| {
                d.protected_list()
                    .and_then(|l| l.vms.iter().find(|e| e.vm == vm))
                    .is_some_and(|e| {
                        e.restart == heartbeat_fs::records::RestartState::Idle
                            && e.desired == heartbeat_fs::records::DesiredPower::On
                            && e.last_host.is_some_and(|h| {
                                h != host
                                    && d.power_on
                                        .get(&h)
                                        .is_some_and(|l| l.entries.iter().any(|x| x.vm == vm))
                            })
                    })
            });
            let justified =
                elsewhere || starting_elsewhere || just_stopped || records_place_elsewhere;
            (!justified).then(|| {
                format!("{host} stopped {vm} as a stale copy although it ran nowhere else")
            })
        }
        // The operator's own rule: justified while the host really has no storage for the VM.
        // (or did until a moment ago: the host learns that storage is back from its next write).
        StopCause::StorageLoss => {
            let tolerance = us(t.ds_heartbeat_interval + t.datastore_call_deadline) * 2;
            let lost = w.hosts.iter().find(|h| h.id == host).is_some_and(|h| {
                h.ds_lost.contains(&home)
                    || h.ds_hung.contains(&home)
                    || w.ds_dead.contains(&home)
                    || h.ds_fault_at
                        .get(&home)
                        .is_some_and(|&at| w.now.saturating_sub(at) <= tolerance)
            });
            (!lost).then(|| {
                format!("{host} applied the storage-loss response to {vm} with {home} reachable")
            })
        }
    }
}

/// How long the cluster must have been whole, under one master, before no fence is justified any
/// more: every host hears the master's round, echoes it, and the master's next round counts it
/// (three heartbeat intervals), within the follow window, with an election window to spare; twice
/// that, for the scheduling of evaluations.
fn whole_settle_us(w: &World) -> Micros {
    let t = &w.params.timings;
    let parts = [
        t.heartbeat_interval * 3,
        t.host_unreachable_after,
        t.election_window,
    ];
    parts.iter().map(|&d| us(d)).sum::<Micros>() * 2
}
