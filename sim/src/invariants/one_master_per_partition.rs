//! After the election bound, each connected group of live agents has exactly one master. A host whose
//! network is down (isolated) is a group of one with nobody to be master of: it must not be master
//! (its role is `isolated`), and is exempt from having one.

use crate::world::{Violation, World};

pub fn check(w: &World) -> Vec<Violation> {
    let masters = w.masters();
    let mut out = Vec::new();
    for comp in w.components() {
        let n: Vec<_> = masters.iter().filter(|m| comp.contains(m)).collect();
        let isolated = comp.len() == 1 && !w.network_up(comp[0]);
        if isolated && n.is_empty() {
            continue;
        }
        if n.len() != 1 {
            out.push(Violation {
                invariant: "one_master_per_partition",
                at: w.now,
                detail: format!("partition {comp:?} has masters {n:?}"),
            });
        }
    }
    out
}
