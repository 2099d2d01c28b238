//! Every scenario of `sim/scenarios/` passes its expectations and every invariant.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use fdm_core::FaultKnobs;
use fdm_sim::{report, run, scenario};
use std::path::Path;

#[test]
fn every_library_scenario_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 30,
        "the library holds {} scenarios",
        files.len()
    );
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let sc = match scenario::parse(&text) {
            Ok(sc) => sc,
            Err(e) => {
                failures.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        assert!(
            !sc.models.trim().is_empty(),
            "{}: says what it models",
            f.display()
        );
        assert!(
            text.trim_start().starts_with('#'),
            "{}: opens with a comment on the real-world case",
            f.display()
        );
        let r = run::run_scenario(&sc, false, FaultKnobs::default());
        if !r.passed() {
            failures.push(format!("{}\n{}", f.display(), report::summary_table(&r)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An expectation that is false must fail: the checks are not vacuous.
#[test]
fn a_wrong_expectation_fails() {
    let text = r#"
name = "wrong"
models = "a host crash, with an expectation that nothing restarts"
duration = "30s"
[cluster]
hosts = 3
datastores = [[1, 2, 3]]
vms_per_host = 1
[[fault]]
at = "5s"
kind = "crash"
host = 3
[[expect]]
at = "25s"
kind = "no-restarts"
"#;
    let sc = scenario::parse(text).unwrap();
    let r = run::run_scenario(&sc, false, FaultKnobs::default());
    assert!(!r.passed());
    assert!(!r.expectations[0].ok, "{}", r.expectations[0].detail);
}

/// A layout in which two hosts each mount a datastore the other does not is refused, as the agents
/// refuse it (`docs/safety.md`, "Datastore layout"), with the reason.
#[test]
fn a_crossed_datastore_layout_is_refused() {
    let text = r#"
# Two racks, each with its own NFS server, and no host that mounts both.
name = "crossed"
models = "two racks with one datastore each"
duration = "30s"
[cluster]
hosts = 4
datastores = [[1, 2], [3, 4]]
vms_per_host = 1
"#;
    let e = scenario::parse(text).expect_err("refused").to_string();
    assert!(
        e.contains("cluster.datastores") && e.contains("host-1 mounts ds-1 but not ds-2"),
        "{e}"
    );
}
