//! An operator's stop is respected: no VM powers on after an operator stopped it, at whatever moment
//! of the cluster's life the stop came. A stop on a host cut off from some live host is exempt (the
//! world records it in `operator_stop_unknowable`): no master can learn of it. Checked the instant a
//! hypervisor start completes.

use crate::world::World;
use heartbeat_fs::{HostId, VmId};

pub const NAME: &str = "operator_stop_respected";

/// `vm` has just come up on `h`: a violation when an operator had stopped it.
pub fn at_power_on(w: &World, h: HostId, vm: VmId) -> Option<String> {
    (w.operator_stopped.contains(&vm) && !w.operator_stop_unknowable.contains(&vm))
        .then(|| format!("{vm} restarted at {h} after an operator stopped it"))
}
