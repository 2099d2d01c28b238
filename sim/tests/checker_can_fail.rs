//! The invariant checker catches a broken core. With the lease wait before a restart switched off
//! (a sim-only fault knob), a bounded sweep finds a VM powered on while it still runs elsewhere and
//! names the seed that replays it; with the knob off, the same seeds find nothing.

use fdm_agent::core::FaultKnobs;
use fdm_sim::run;

fn double_power_on_seeds(knobs: FaultKnobs, seeds: std::ops::Range<u64>) -> Vec<u64> {
    seeds
        .filter(|&seed| {
            let r = run::run_scenario(&run::sweep_scenario(8, seed), false, knobs);
            r.violations
                .iter()
                .any(|v| v.invariant == "no_vm_on_two_hosts")
        })
        .collect()
}

#[test]
fn skipping_the_lease_wait_is_caught() {
    let broken = FaultKnobs {
        skip_lease_wait: true,
        ..FaultKnobs::default()
    };
    let found = double_power_on_seeds(broken, 1..41);
    assert!(!found.is_empty(), "no seed caught the missing lease wait");
    let cmd = run::replay_command(8, found[0], broken);
    assert!(cmd.contains(&format!("--seed {}", found[0])) && cmd.contains("skip-lease-wait"));
    // The replay command reproduces it exactly.
    let again = run::run_scenario(&run::sweep_scenario(8, found[0]), false, broken);
    assert!(
        again
            .violations
            .iter()
            .any(|v| v.invariant == "no_vm_on_two_hosts")
    );
    // The same seeds with the real core: nothing.
    assert_eq!(
        double_power_on_seeds(FaultKnobs::default(), 1..41),
        Vec::<u64>::new()
    );
}
