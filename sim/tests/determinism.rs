//! The same seed gives the same run, byte for byte: the trace of a sweep seed and of a scenario,
//! produced twice, are identical.

use fdm_core::FaultKnobs;
use fdm_sim::sweep::{self, Profile};
use fdm_sim::{report, run};

#[test]
fn same_seed_same_trace() {
    for seed in [3, 17, 4242] {
        let a = run::run_scenario(
            &sweep::scenario(8, seed, Profile::All),
            true,
            FaultKnobs::default(),
        );
        let b = run::run_scenario(
            &sweep::scenario(8, seed, Profile::All),
            true,
            FaultKnobs::default(),
        );
        let (ta, tb) = (report::jsonl(&a), report::jsonl(&b));
        assert!(
            ta.lines().count() > 20,
            "seed {seed}: a real trace ({} lines)",
            ta.lines().count()
        );
        assert_eq!(ta, tb, "seed {seed}: traces differ");
        assert_eq!(a.summary.events, b.summary.events);
    }
}

#[test]
fn different_seeds_differ() {
    let a = run::run_scenario(
        &sweep::scenario(8, 1, Profile::All),
        true,
        FaultKnobs::default(),
    );
    let b = run::run_scenario(
        &sweep::scenario(8, 2, Profile::All),
        true,
        FaultKnobs::default(),
    );
    assert_ne!(report::jsonl(&a), report::jsonl(&b));
}
