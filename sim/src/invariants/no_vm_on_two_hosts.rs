//! No VM runs on two hosts at any instant. Checked at every power-on (in `world::power_on_done`) and
//! on a snapshot at the end.

use crate::world::{Violation, World};
use std::collections::BTreeMap;

pub fn check(w: &World) -> Vec<Violation> {
    let mut seen = BTreeMap::new();
    let mut out = Vec::new();
    for h in w.hosts.iter().filter(|h| h.powered) {
        for vm in h.running.keys() {
            if let Some(other) = seen.insert(*vm, h.id) {
                out.push(Violation {
                    invariant: "no_vm_on_two_hosts",
                    at: w.now,
                    detail: format!("{vm} runs on {other} and {}", h.id),
                });
            }
        }
    }
    out
}
