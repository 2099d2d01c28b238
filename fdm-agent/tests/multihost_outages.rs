//! Outages HA must ride out without stopping anything, with real agents in network namespaces
//! (`docs/operations.md`, "Outages HA rides out"): the whole network down, and a datastore lost by
//! every host. Each case checks that no VM process was stopped or started during and after the
//! outage, and the usual end check (no VM ever on two hosts, every protected VM once).
//!
//! Needs root, like `multihost.rs`; `MEASURED` lines with `--nocapture`.
#![allow(clippy::disallowed_methods, clippy::print_stdout)]

// Shared with the other multi-host suites; each uses a part of it.
#[allow(dead_code)]
mod testbed;

use std::time::{Duration, Instant};
use testbed::{Options, Testbed, report, serial, unavailable, wait_for, wait_until};

macro_rules! need_testbed {
    () => {
        if let Some(why) = unavailable() {
            println!("SKIPPED: multi-host test {}", why);
            return;
        }
    };
}

/// Sample the VM processes every 200 ms for `d`; the first sample that differs from `before`.
fn unchanged_for(tb: &Testbed, before: &std::collections::BTreeMap<u32, (u32, i32)>, d: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < d {
        let now = tb.pids();
        assert_eq!(
            &now,
            before,
            "a VM was stopped or started {:.1} s into the outage (logs in {})",
            t0.elapsed().as_secs_f64(),
            tb.root.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// VMs whose process is not the one they had before.
fn moved(tb: &Testbed, before: &std::collections::BTreeMap<u32, (u32, i32)>) -> usize {
    let now = tb.pids();
    before
        .iter()
        .filter(|(vm, p)| now.get(vm) != Some(p))
        .count()
}

#[test]
fn whole_network_outage_of_30_s_stops_and_restarts_nothing() {
    need_testbed!();
    let _serial = serial();
    let mut tb = Testbed::new(Options::default());
    tb.start();
    tb.wait_settled();
    let before = tb.pids();
    let n = tb.hosts.len() as u32;

    // A core switch dies: every host's link goes down (the isolation address is behind it too).
    let t0 = Instant::now();
    for h in 1..=n {
        tb.link(h, false);
    }
    let all_isolated = wait_until(Duration::from_secs(20), || {
        (1..=n)
            .all(|h| tb.host(h).status().is_some_and(|s| s["role"] == "isolated"))
            .then(|| t0.elapsed())
    })
    .unwrap_or_else(|| panic!("not every host isolated (logs in {})", tb.root.display()));
    unchanged_for(
        &tb,
        &before,
        Duration::from_secs(30).saturating_sub(t0.elapsed()),
    );

    let t1 = Instant::now();
    for h in 1..=n {
        tb.link(h, true);
    }
    assert!(
        wait_for(Duration::from_secs(30), || tb.masters().len() == 1),
        "no single master after the network returned (logs in {})",
        tb.root.display()
    );
    let one_master = t1.elapsed();
    unchanged_for(&tb, &before, Duration::from_secs(5));
    tb.assert_every_vm_once();
    report(
        "whole network outage",
        &[
            ("every_host_isolated", all_isolated.as_secs_f64()),
            (
                "one_master_after_the_network_returned",
                one_master.as_secs_f64(),
            ),
            ("vms_moved", moved(&tb, &before) as f64),
        ],
    );
}

#[test]
fn datastore_outage_of_20_s_for_every_host_stops_nothing() {
    need_testbed!();
    let _serial = serial();
    let opts = Options::default();
    let mut tb = Testbed::new(Options {
        fuse_views: (1..=opts.hosts).collect(),
        ..opts
    });
    tb.start();
    tb.wait_settled();
    let before = tb.pids();
    let n = tb.hosts.len() as u32;

    // The NFS server of datastore 1 fails over: every host's calls on it hang for 20 s.
    for h in 1..=n {
        tb.view_signal(h, 1, libc::SIGSTOP);
    }
    unchanged_for(&tb, &before, Duration::from_secs(20));
    let alive = (1..=n).all(|h| tb.host(h).status().is_some());
    for h in 1..=n {
        tb.view_signal(h, 1, libc::SIGCONT);
    }
    assert!(alive, "an agent stopped answering during the outage");
    unchanged_for(&tb, &before, Duration::from_secs(8));
    assert_eq!(tb.masters().len(), 1);
    tb.assert_every_vm_once();
    report(
        "datastore outage for every host",
        &[
            ("outage_s", 20.0),
            ("vms_moved", moved(&tb, &before) as f64),
        ],
    );
}
