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
/// (The other copy may be outside too: two hosts back at once with copies of one VM.)
pub fn overdue(w: &World) -> Vec<((HostId, VmId), String)> {
    let limit = bound(w);
    let mut out = Vec::new();
    for (&(h, vm), &since) in &w.outside {
        if w.outside_reported.contains(&(h, vm)) || !w.is_outside_copy(h, vm) {
            continue;
        }
        // The overlap counts from the later of the two starts: a copy adopted long ago (the only
        // one then) is not to blame for a second one that appeared since.
        let overlapping: Vec<(HostId, Micros)> = w
            .hosts
            .iter()
            .filter(|o| o.id != h && o.powered)
            .filter_map(|o| {
                o.running
                    .get(&vm)
                    .map(|&at| (o.id, w.now.saturating_sub(at.max(since))))
            })
            .filter(|&(_, age)| age > limit)
            .collect();
        if let Some(&(_, age)) = overlapping.iter().max_by_key(|(_, age)| *age) {
            let others: Vec<HostId> = overlapping.iter().map(|(o, _)| *o).collect();
            out.push((
                (h, vm),
                format!(
                    "{vm}: the copy {h}'s hypervisor started at its boot has run {:.1} s beside \
                     the one on {others:?}",
                    age as f64 / 1e6
                ),
            ));
        }
    }
    out
}
