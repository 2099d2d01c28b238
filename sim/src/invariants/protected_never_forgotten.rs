//! No protected VM ever goes missing: each one runs somewhere, was stopped by an operator, or is in
//! its home datastore's protected list (waiting, failed, or with an intent), where any master finds it.

use crate::world::{Violation, World};

pub fn check(w: &World) -> Vec<Violation> {
    let mut out = Vec::new();
    for vm in w.config.vms.iter().filter(|v| v.protected) {
        if !w.where_runs(vm.id).is_empty() || w.operator_stopped.contains(&vm.id) {
            continue;
        }
        let listed =
            w.ds.get(&vm.home)
                .and_then(|d| d.protected_list())
                .is_some_and(|l| l.vms.iter().any(|e| e.vm == vm.id));
        if !listed {
            out.push(Violation {
                invariant: "protected_never_forgotten",
                at: w.now,
                detail: format!(
                    "{} runs nowhere and is not in the protected list of {}",
                    vm.id, vm.home
                ),
            });
        }
    }
    out
}
