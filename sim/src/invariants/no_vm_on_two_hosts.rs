//! No VM runs on two hosts at any instant. Checked at every power-on (`at_power_on`, called by the
//! world the instant a hypervisor start completes) and on a snapshot at the end (`check`).
//!
//! A copy the hypervisor started on its own (`World::outside`: libvirt autostart at a host's boot)
//! is not fdm's start and is not counted here while it is young: no agent can keep a hypervisor
//! from starting a VM before the agent runs, nor a master from finishing a restart it issued
//! before the copy appeared. `stale_copy_ended` holds the agents to ending such a copy within its
//! bound; past that bound the copy counts like any other (a start beside it is fdm's doing).

use crate::world::{Violation, World};
use heartbeat_fs::{HostId, VmId};
use std::collections::BTreeMap;

pub const NAME: &str = "no_vm_on_two_hosts";

/// `vm` has just come up on `h`: a violation when another powered host runs it.
pub fn at_power_on(w: &World, h: HostId, vm: VmId) -> Option<String> {
    let elsewhere: Vec<HostId> = w
        .hosts
        .iter()
        .filter(|o| o.id != h && o.powered && o.running.contains_key(&vm))
        .filter(|o| !young_outside_copy(w, o.id, vm))
        .map(|o| o.id)
        .collect();
    (!elsewhere.is_empty())
        .then(|| format!("{vm} powered on at {h} while running on {elsewhere:?}"))
}

pub fn check(w: &World) -> Vec<Violation> {
    let mut seen = BTreeMap::new();
    let mut out = Vec::new();
    for h in w.hosts.iter().filter(|h| h.powered) {
        for vm in h.running.keys() {
            if young_outside_copy(w, h.id, *vm) {
                continue;
            }
            if let Some(other) = seen.insert(*vm, h.id) {
                out.push(Violation {
                    invariant: NAME,
                    at: w.now,
                    detail: format!("{vm} runs on {other} and {}", h.id),
                });
            }
        }
    }
    out
}

fn young_outside_copy(w: &World, h: HostId, vm: VmId) -> bool {
    use crate::invariants::stale_copy_ended;
    w.is_outside_copy(h, vm)
        && w.outside
            .get(&(h, vm))
            .is_some_and(|&since| w.now.saturating_sub(since) <= stale_copy_ended::bound(w))
}
