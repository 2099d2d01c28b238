//! No restart of a VM whose host was alive: a host never stops (fences) a VM while its storage for the
//! VM's datastore has been healthy for longer than a lease, so a live host's VMs are never restarted
//! elsewhere. (A VM restarted while it still runs is caught by `no_vm_on_two_hosts`.)

use crate::world::{Micros, SimHost};
use heartbeat_fs::DatastoreId;
use std::collections::BTreeSet;

pub const NAME: &str = "no_false_restart";

/// True when host `h` fencing a VM of datastore `home` at `now` is needless.
pub fn needless_fence(
    h: &SimHost,
    home: DatastoreId,
    now: Micros,
    lease: Micros,
    dead: &BTreeSet<DatastoreId>,
) -> bool {
    let healthy = !h.ds_lost.contains(&home) && !h.ds_hung.contains(&home) && !dead.contains(&home);
    let healthy_since = h
        .ds_fault_at
        .get(&home)
        .copied()
        .unwrap_or(0)
        .max(h.agent_base);
    healthy && now.saturating_sub(healthy_since) > lease * 2
}
