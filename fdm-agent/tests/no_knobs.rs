//! The agent as built for production has no fault knobs: building `fdm-agent` (and the shim, which
//! links its core) on its own, as `docs/operations.md` says, does not enable `fdm-core`'s
//! `fault-knobs` feature through any dependency. The simulator's build does, and the check sees it
//! there, so it would see a production dependency that turned the feature on.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::process::Command;

/// `cargo tree` of `packages` with normal dependencies and features only (a release build, no
/// dev-dependencies), as lines.
fn features_of(packages: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args([
            "tree",
            "--locked",
            "--edges",
            "normal,build,features",
            "--prefix",
            "none",
        ]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    let out = cmd.output().expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("cargo tree prints UTF-8")
}

#[test]
fn a_production_build_has_no_fault_knobs() {
    let production = features_of(&["fdm-agent", "vcenter-shim"]);
    assert!(production.contains("fdm-agent"), "{production}");
    assert!(production.contains("fdm-core"), "{production}");
    assert!(
        !production.contains("fault-knobs"),
        "a production dependency enables the fault knobs:\n{production}"
    );
    let simulator = features_of(&["fdm-sim"]);
    assert!(
        simulator.contains("fdm-core feature \"fault-knobs\""),
        "the check does not see the simulator's knobs, so it sees nothing:\n{simulator}"
    );
}
