//! A copy the hypervisor started on its own (`World::outside`: libvirt autostart at a returning
//! host's boot, before any agent runs) that runs beside another copy of the VM is ended within
//! `bound` of its start (`docs/safety.md`, "Returning hosts"): by its agent's check of the
//! protected list at start, or by the master, which stops the second copy of a VM reported on
//! two hosts. fdm cannot keep a hypervisor from starting a VM before the agent runs; it must not
//! let that copy live on. Checked continuously while outside copies run.

use crate::world::{Micros, World, us};
use heartbeat_fs::{HostId, VmId};

pub const NAME: &str = "stale_copy_ended";

/// How long an outside copy may run beside another one: the agent joins (an election window and
/// a master's silence at most), reads the VM's home datastore (two calls' deadlines), and the
/// stop or the master's word arrives (a few heartbeats).
pub fn bound(w: &World) -> Micros {
    let t = &w.params.timings;
    let parts = [
        t.election_window,
        t.host_unreachable_after,
        t.datastore_call_deadline * 2,
        t.heartbeat_interval * 4,
    ];
    parts.iter().map(|&d| us(d)).sum()
}

/// Outside copies that have run beside another copy for longer than `bound`, not yet reported.
pub fn overdue(w: &World) -> Vec<((HostId, VmId), String)> {
    let limit = bound(w);
    let mut out = Vec::new();
    for (&(h, vm), &since) in &w.outside {
        if w.outside_reported.contains(&(h, vm)) || !w.is_outside_copy(h, vm) {
            continue;
        }
        let others: Vec<HostId> = w.where_runs(vm).into_iter().filter(|&o| o != h).collect();
        let age = w.now.saturating_sub(since);
        if !others.is_empty() && age > limit {
            out.push((
                (h, vm),
                format!(
                    "{vm}: the copy {h}'s hypervisor started at its boot still runs {:.1} s \
                     later beside the one on {others:?}",
                    age as f64 / 1e6
                ),
            ));
        }
    }
    out
}
