//! An operator's stop and start of a VM through HA (`fdmctl vm stop|start`), with real agents in
//! network namespaces: the request reaches the agents with the cluster configuration (written to
//! every datastore here, as `fdm-shim` does), the master passes the stop to the host running the VM,
//! the VM stays stopped (even when that host dies), and a start brings it back once.
//!
//! Needs root, like `multihost.rs`; `MEASURED` lines with `--nocapture`.
#![allow(clippy::disallowed_methods, clippy::print_stdout)]

// Shared with the other multi-host suites; each uses a part of it.
#[allow(dead_code)]
mod testbed;

use heartbeat_fs::VmId;
use heartbeat_fs::fs::DatastoreDir;
use heartbeat_fs::records::{DesiredPower, PowerRequest};
use std::time::{Duration, Instant};
use testbed::{Options, Testbed, report, serial, unavailable, wait_until};

macro_rules! need_testbed {
    () => {
        if let Some(why) = unavailable() {
            println!("SKIPPED: multi-host test {}", why);
            return;
        }
    };
}

/// Publish a power request for `vm` as a new configuration generation on every datastore.
fn request(tb: &mut Testbed, vm: u32, power: DesiredPower) {
    let mut cfg = tb.config.clone();
    cfg.generation += 1;
    let generation = cfg.generation;
    let v = cfg
        .vms
        .iter_mut()
        .find(|v| v.id == VmId(vm))
        .expect("configured VM");
    v.ha.power_request = Some(PowerRequest { generation, power });
    for d in &tb.datastores {
        DatastoreDir::open(d)
            .expect("datastore")
            .write_config(&cfg)
            .expect("config");
    }
    tb.config = cfg;
}

fn runs_anywhere(tb: &Testbed, vm: u32) -> bool {
    tb.placement().get(&vm).is_some_and(|on| !on.is_empty())
}

#[test]
fn operator_stop_is_kept_and_start_brings_the_vm_back_once() {
    need_testbed!();
    let _serial = serial();
    let mut tb = Testbed::new(Options::default());
    tb.start();
    let master = tb.wait_settled();
    // A VM on a slave, so that its host can die while the VM is stopped.
    let placement = tb.placement();
    let (vm, host) = placement
        .iter()
        .find_map(|(&vm, on)| on.first().filter(|&&h| h != master).map(|&h| (vm, h)))
        .expect("a VM on a slave");
    let starts_before = tb.starts().get(&vm).copied().unwrap_or(0);

    let t0 = Instant::now();
    request(&mut tb, vm, DesiredPower::Off);
    let stopped = wait_until(Duration::from_secs(40), || {
        (!runs_anywhere(&tb, vm)).then(|| t0.elapsed())
    })
    .unwrap_or_else(|| panic!("vm{vm} not stopped (logs in {})", tb.root.display()));

    // Its host dies: nothing to restart, the VM was stopped on purpose.
    tb.kill_host(host);
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        !runs_anywhere(&tb, vm),
        "vm{vm} was restarted after an operator stopped it (logs in {})",
        tb.root.display()
    );

    let t1 = Instant::now();
    request(&mut tb, vm, DesiredPower::On);
    let started = wait_until(Duration::from_secs(40), || {
        runs_anywhere(&tb, vm).then(|| t1.elapsed())
    })
    .unwrap_or_else(|| panic!("vm{vm} not started (logs in {})", tb.root.display()));
    std::thread::sleep(Duration::from_secs(3));
    let starts_after = tb.starts().get(&vm).copied().unwrap_or(0);
    assert_eq!(starts_after - starts_before, 1, "vm{vm} started once");
    tb.assert_every_vm_once();
    report(
        "operator stop and start through HA",
        &[
            ("stopped_after_request", stopped.as_secs_f64()),
            ("running_again_after_start", started.as_secs_f64()),
        ],
    );
}
