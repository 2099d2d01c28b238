//! An unprotected VM is the operator's: HA may act on it only until the new configuration has
//! reached the master (a config poll interval, a read, a margin of 5 s). Checked when a master
//! issues a restart.

use crate::world::{Micros, World, us};
use heartbeat_fs::{HostId, VmId};

pub const NAME: &str = "unprotected_vm_left_alone";

/// Master `h` has just issued a restart of `vm`: a violation when the VM was unprotected longer
/// ago than the grace.
pub fn at_restart_issued(w: &World, h: HostId, vm: VmId) -> Option<String> {
    let grace: Micros = us(w.params.timings.config_poll_interval) + 5_000_000;
    let since = *w.unprotected_since.get(&vm)?;
    (w.now.saturating_sub(since) > grace).then(|| {
        format!(
            "{h} issued a restart of {vm}, unprotected {:.1} s ago",
            (w.now - since) as f64 / 1e6
        )
    })
}
