//! Every protected VM runs again (exactly once) within the bound after the heal, when capacity exists:
//! a protected VM of a dead host is never lost. VMs an operator stopped (or asked HA to stop), VMs
//! whose policy says never restart, and VMs the world made crash-loop that their home's protected list records as
//! failed at their restart limit, are exempt.

use crate::world::{Violation, World};
use heartbeat_fs::records::{RestartPolicy, RestartPriority, RestartState};

pub fn check(w: &World) -> Vec<Violation> {
    let mut out = Vec::new();
    for vm in &w.config.vms {
        let stop_requested = vm
            .ha
            .power_request
            .is_some_and(|r| r.power == heartbeat_fs::records::DesiredPower::Off);
        if !vm.protected
            || w.operator_stopped.contains(&vm.id)
            || stop_requested
            || vm.ha.restart_policy == RestartPolicy::Never
            || vm.ha.priority == RestartPriority::Disabled
            || (w.crash_loops.contains_key(&vm.id)
                && matches!(
                    w.listed_restart_state(vm.id),
                    Some(RestartState::LimitReached { .. })
                ))
        {
            continue;
        }
        let on = w.where_runs(vm.id);
        if on.len() != 1 {
            out.push(Violation {
                invariant: "dead_host_vms_restarted",
                at: w.now,
                detail: format!("{} runs on {on:?} after the heal bound", vm.id),
            });
        }
    }
    out
}
