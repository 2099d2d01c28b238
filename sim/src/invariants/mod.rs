//! The invariants every run is checked against, one per file. Continuous ones are also checked at the
//! moment the event happens (a power-on, a fence); the rest when the run's heal bound has passed.

pub mod dead_host_vms_restarted;
pub mod no_false_restart;
pub mod no_needless_stop;
pub mod no_vm_on_two_hosts;
pub mod one_master_per_partition;
pub mod operator_stop_respected;
pub mod protected_never_forgotten;
pub mod stale_copy_ended;
pub mod time_advances;
pub mod unprotected_vm_left_alone;

use crate::world::{Violation, World};

/// The end-of-run checks. `all_should_run`: the heal phase restored every host, so every protected
/// VM must run again (capacity exists).
pub fn final_checks(w: &World, all_should_run: bool) -> Vec<Violation> {
    let mut v = Vec::new();
    v.extend(no_vm_on_two_hosts::check(w));
    if all_should_run {
        v.extend(dead_host_vms_restarted::check(w));
    }
    if !w.has_oneway_cuts() {
        v.extend(one_master_per_partition::check(w));
    }
    v.extend(protected_never_forgotten::check(w));
    v
}
