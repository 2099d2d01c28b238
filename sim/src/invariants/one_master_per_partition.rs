//! After the election bound, each connected group of live agents has exactly one master.

use crate::world::{Violation, World};

pub fn check(w: &World) -> Vec<Violation> {
    let masters = w.masters();
    let mut out = Vec::new();
    for comp in w.components() {
        let n: Vec<_> = masters.iter().filter(|m| comp.contains(m)).collect();
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
