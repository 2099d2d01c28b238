//! Multi-host failover with the real `fdm-agent` binary: one network namespace per host, a bridge,
//! shared datastore directories, process VMs. Each case ends with the same check: no VM ever ran on
//! two hosts at once (sampled from every host's driver records), every protected VM runs exactly once.
//!
//! Needs root (CI runs as root); otherwise every case says why it skipped. The measured times are
//! printed as `MEASURED ...` lines (`cargo test -p fdm-agent --test multihost -- --nocapture`);
//! `docs/operations.md` lists them.
#![allow(clippy::disallowed_methods, clippy::print_stdout)]

mod testbed;

use heartbeat_fs::VmId;
use heartbeat_fs::fs::DatastoreDir;
use heartbeat_fs::records::RestartLimit;
use std::collections::BTreeMap;
use std::process::Command;
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

/// A slave other than `master`, the highest id.
fn a_slave(tb: &Testbed, master: u32) -> u32 {
    (1..=tb.hosts.len() as u32)
        .rev()
        .find(|&h| h != master)
        .expect("two hosts")
}

#[test]
fn host_death_restarts_its_vms_elsewhere_once() {
    need_testbed!();
    let _serial = serial();
    let mut tb = Testbed::new(Options::default());
    tb.start();
    let master = tb.wait_settled();
    let victim = a_slave(&tb, master);
    let lost = tb.host(victim).vms();
    assert!(!lost.is_empty());
    let before = tb.starts();

    let t0 = Instant::now();
    tb.kill_host(victim);
    let dead = wait_until(Duration::from_secs(20), || {
        (tb.verdict(master, victim).as_deref() == Some("dead")).then(|| t0.elapsed())
    })
    .expect("dead verdict within 20 s");
    let back = tb.wait_moved_off(
        &lost,
        &[victim],
        t0,
        Duration::from_secs(30),
        "every lost VM running again",
    );
    std::thread::sleep(Duration::from_secs(2));
    tb.assert_every_vm_once();
    let after = tb.starts();
    for vm in 1..=8u32 {
        let extra = after.get(&vm).copied().unwrap_or(0) - before.get(&vm).copied().unwrap_or(0);
        let want = usize::from(lost.contains(&vm));
        assert_eq!(extra, want, "vm{vm}: {extra} new starts, expected {want}");
    }
    report(
        "host death",
        &[
            ("dead_verdict", dead.as_secs_f64()),
            ("all_vms_back", back.as_secs_f64()),
        ],
    );
}

#[test]
fn partition_restarts_nothing_and_merges_after_heal() {
    need_testbed!();
    let _serial = serial();
    let mut tb = Testbed::new(Options::default());
    tb.start();
    tb.wait_settled();
    let before = tb.pids();

    let t0 = Instant::now();
    tb.partition(&[&[1, 2], &[3, 4]]);
    // One master per side.
    let split = wait_until(Duration::from_secs(20), || {
        let m = tb.masters();
        let left = m.iter().filter(|h| **h <= 2).count();
        let right = m.iter().filter(|h| **h > 2).count();
        (left == 1 && right == 1).then(|| t0.elapsed())
    })
    .unwrap_or_else(|| panic!("no master per side: {:?}", tb.masters()));
    // Each side calls the other partitioned (alive elsewhere), never dead.
    let seen_partitioned = wait_until(Duration::from_secs(15), || {
        let m = tb.masters();
        m.iter()
            .all(|&m| {
                let other: &[u32] = if m <= 2 { &[3, 4] } else { &[1, 2] };
                other
                    .iter()
                    .all(|&o| tb.verdict(m, o).as_deref() == Some("partitioned"))
            })
            .then(|| t0.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "partitioned verdicts not reached (logs in {})",
            tb.root.display()
        )
    });
    // Stay split well past every lease and retry time: nothing may move.
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        tb.pids(),
        before,
        "a VM moved or restarted during the partition"
    );

    let t1 = Instant::now();
    tb.heal();
    let merged = wait_until(Duration::from_secs(30), || {
        let m = tb.masters();
        (m.len() == 1 && (1..=4).all(|h| tb.verdict(m[0], h).as_deref() == Some("alive")))
            .then(|| t1.elapsed())
    })
    .unwrap_or_else(|| panic!("no single master after heal: {:?}", tb.masters()));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(tb.pids(), before, "a VM moved or restarted after the heal");
    tb.assert_every_vm_once();
    report(
        "partition 2+2",
        &[
            ("master_per_side", split.as_secs_f64()),
            ("partitioned_verdicts", seen_partitioned.as_secs_f64()),
            ("one_master_after_heal", merged.as_secs_f64()),
        ],
    );
}

#[test]
fn isolated_host_powers_off_and_master_restarts_exactly_those_vms() {
    need_testbed!();
    let _serial = serial();
    let mut tb = Testbed::new(Options::default());
    tb.start();
    let master = tb.wait_settled();
    let victim = a_slave(&tb, master);
    let before = tb.pids();
    let isolated_vms = tb.host(victim).vms();

    let t0 = Instant::now();
    tb.link(victim, false);
    let declared = wait_until(Duration::from_secs(20), || {
        (tb.host(victim).status()?["role"] == "isolated").then(|| t0.elapsed())
    })
    .expect("the cut-off host declares itself isolated");
    let verdict = wait_until(Duration::from_secs(20), || {
        (tb.verdict(master, victim).as_deref() == Some("isolated")).then(|| t0.elapsed())
    })
    .expect("the master calls the host isolated");
    let back = tb.wait_moved_off(
        &isolated_vms,
        &[victim],
        t0,
        Duration::from_secs(30),
        "the isolated host's VMs run elsewhere",
    );
    std::thread::sleep(Duration::from_secs(2));
    tb.assert_every_vm_once();
    // Exactly those VMs moved; every other VM kept its process.
    let after = tb.pids();
    for (vm, was) in &before {
        if isolated_vms.contains(vm) {
            assert_ne!(after[vm].0, victim, "vm{vm} still on the isolated host");
        } else {
            assert_eq!(
                &after[vm], was,
                "vm{vm} was not on the isolated host but moved"
            );
        }
    }

    // The link returns: the host rejoins as a slave, nothing runs twice.
    tb.link(victim, true);
    assert!(
        wait_for(Duration::from_secs(30), || {
            tb.masters().len() == 1
                && tb
                    .host(victim)
                    .status()
                    .is_some_and(|s| s["role"].as_str().is_some_and(|r| r.starts_with("slave")))
        }),
        "host did not rejoin (logs in {})",
        tb.root.display()
    );
    std::thread::sleep(Duration::from_secs(2));
    tb.assert_every_vm_once();
    report(
        "isolation",
        &[
            ("declared_isolated", declared.as_secs_f64()),
            ("master_verdict_isolated", verdict.as_secs_f64()),
            ("vms_running_elsewhere", back.as_secs_f64()),
        ],
    );
}

#[test]
fn master_death_mid_failover_is_completed_by_the_new_master() {
    need_testbed!();
    let _serial = serial();
    let mut tb = Testbed::new(Options::default());
    tb.start();
    let master = tb.wait_settled();
    let slave = a_slave(&tb, master);
    let lost: Vec<u32> = tb
        .host(slave)
        .vms()
        .into_iter()
        .chain(tb.host(master).vms())
        .collect();

    let t0 = Instant::now();
    tb.kill_host(slave);
    // The master starts the failover (dead verdict), then dies itself before it can finish.
    wait_for(Duration::from_secs(20), || {
        tb.verdict(master, slave).as_deref() == Some("dead")
    });
    tb.kill_host(master);
    let t1 = Instant::now();
    let new_master = wait_until(Duration::from_secs(20), || {
        let m = tb.masters();
        (m.len() == 1).then(|| (m[0], t1.elapsed()))
    })
    .expect("a new master");
    let back = tb.wait_moved_off(
        &lost,
        &[slave, master],
        t1,
        Duration::from_secs(40),
        "VMs of both dead hosts running elsewhere",
    );
    std::thread::sleep(Duration::from_secs(2));
    tb.assert_every_vm_once();
    report(
        "master death mid-failover",
        &[
            ("first_death_to_master_death", (t1 - t0).as_secs_f64()),
            ("new_master", new_master.1.as_secs_f64()),
            ("all_vms_back_after_master_death", back.as_secs_f64()),
        ],
    );
}

#[test]
fn agent_restart_adopts_running_vms() {
    need_testbed!();
    let _serial = serial();
    let mut tb = Testbed::new(Options::default());
    tb.start();
    let master = tb.wait_settled();
    let slave = a_slave(&tb, master);
    let before = tb.pids();

    // Crash and immediate restart (systemd Restart=always), then a clean stop that lasts longer
    // than every lease (an upgrade): the host answers pings, so its VMs are left alone.
    tb.kill_agent(slave, libc::SIGKILL);
    tb.start_agent(slave);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(tb.pids(), before, "a VM restarted after an agent crash");
    tb.kill_agent(slave, libc::SIGTERM);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        tb.pids(),
        before,
        "a VM restarted while its host's agent was stopped"
    );
    assert_eq!(
        tb.verdict(master, slave).as_deref(),
        Some("unreachable"),
        "a stopped agent on a live host is unreachable, never dead"
    );
    tb.start_agent(slave);
    assert!(
        wait_for(Duration::from_secs(20), || {
            tb.verdict(master, slave).as_deref() == Some("alive")
        }),
        "restarted agent not alive again"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        tb.pids(),
        before,
        "a VM restarted after the agent came back"
    );
    tb.assert_every_vm_once();
    assert_eq!(
        tb.starts().values().sum::<usize>(),
        8,
        "no VM may have started again"
    );
}

fn storage_fault_at_one_host(signal: i32, what: &str) {
    let _serial = serial();
    let mut tb = Testbed::new(Options {
        fuse_views: vec![3],
        ..Options::default()
    });
    tb.start();
    let master = tb.wait_settled();
    assert_ne!(
        master, 3,
        "host 3 sees its datastores through FUSE; its election rank is equal"
    );
    let before = tb.pids();
    let t0 = Instant::now();
    tb.view_signal(3, 1, signal);
    // Well past the datastore lease and the retry schedule.
    let mut alive_throughout = true;
    while t0.elapsed() < Duration::from_secs(12) {
        alive_throughout &= tb.verdict(master, 3).as_deref() == Some("alive");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        alive_throughout,
        "host 3 lost {what} on one datastore and left the alive verdict"
    );
    assert!(
        tb.host(3).status().is_some(),
        "host 3's agent stopped answering while its datastore was {what}"
    );
    assert_eq!(tb.pids(), before, "a VM restarted although its host lives");
    tb.assert_every_vm_once();
    if signal == libc::SIGSTOP {
        tb.view_signal(3, 1, libc::SIGCONT);
    }
}

#[test]
fn one_host_losing_one_datastore_restarts_nothing() {
    need_testbed!();
    storage_fault_at_one_host(libc::SIGKILL, "lost (ENOTCONN)");
}

#[test]
fn one_host_with_a_hung_datastore_keeps_heartbeating() {
    need_testbed!();
    storage_fault_at_one_host(libc::SIGSTOP, "hung");
}

#[test]
fn libvirt_qemu_domain_restarted_on_a_surviving_host() {
    need_testbed!();
    if !std::path::Path::new("/usr/bin/qemu-system-x86_64").exists()
        || Command::new("sh")
            .args(["-c", "command -v libvirtd && command -v virsh"])
            .output()
            .map_or(true, |o| !o.status.success())
    {
        println!("SKIPPED: libvirt/QEMU missing: run scripts/install-test-deps.sh");
        return;
    }
    let _serial = serial();
    let mut tb = Testbed::new(Options {
        hosts: 2,
        datastores: 1,
        vms: 2,
        libvirt: true,
        ..Options::default()
    });
    tb.start();
    let master = tb.wait_settled();
    let victim = a_slave(&tb, master);
    let lost = tb.host(victim).vms();
    assert_eq!(lost.len(), 1, "one domain per host");

    let t0 = Instant::now();
    tb.kill_host(victim);
    let back = wait_until(Duration::from_secs(40), || {
        tb.host(master)
            .vms()
            .contains(&lost[0])
            .then(|| t0.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "domain fdmvm{} not restarted on host{master} (logs in {})",
            lost[0],
            tb.root.display()
        )
    });
    // libvirt's own view agrees (the QEMU process exists a moment before the domain is running).
    assert!(
        wait_for(Duration::from_secs(10), || {
            tb.host(master)
                .virsh("list --name --state-running")
                .is_ok_and(|r| r.lines().any(|l| l.trim() == format!("fdmvm{}", lost[0])))
        }),
        "libvirt does not list fdmvm{} as running",
        lost[0]
    );
    std::thread::sleep(Duration::from_secs(2));
    tb.assert_every_vm_once();
    report(
        "libvirt host death",
        &[("qemu_domain_running_on_survivor", back.as_secs_f64())],
    );
}

#[test]
fn hung_agent_is_reset_by_the_watchdog_and_its_vms_fail_over_once() {
    need_testbed!();
    let _serial = serial();
    let mut tb = Testbed::new(Options {
        watchdog: true,
        ..Options::default()
    });
    tb.start();
    let master = tb.wait_settled();
    let victim = a_slave(&tb, master);
    let lost = tb.host(victim).vms();

    // The agent hangs (stopped process); its VMs go on running. Without a reset its host would
    // answer pings for ever and its VMs stay where they are; the watchdog turns the hang into a
    // host reset, which the master can tell apart.
    let t0 = Instant::now();
    tb.freeze_agent(victim, true);
    let reset = wait_until(Duration::from_secs(10), || {
        tb.resets
            .lock()
            .unwrap()
            .iter()
            .find(|(h, _)| *h == victim)
            .map(|_| t0.elapsed())
    })
    .expect("the fake watchdog resets the host of the hung agent");
    let back = tb.wait_moved_off(
        &lost,
        &[victim],
        t0,
        Duration::from_secs(30),
        "VMs of the reset host running elsewhere",
    );
    std::thread::sleep(Duration::from_secs(2));
    tb.assert_every_vm_once();
    assert_eq!(
        tb.resets.lock().unwrap().len(),
        1,
        "only the hung host was reset: {:?}",
        tb.resets.lock().unwrap()
    );
    report(
        "hung agent, watchdog",
        &[
            ("watchdog_reset", reset.as_secs_f64()),
            ("vms_running_elsewhere", back.as_secs_f64()),
        ],
    );
}

/// The master's view of one VM in its status (`vms[]`: host, state, restart, failed).
fn vm_status(tb: &Testbed, master: u32, vm: u32) -> Option<serde_json::Value> {
    tb.host(master).status()?["vms"]
        .as_array()?
        .iter()
        .find(|v| v["vm"] == vm)
        .cloned()
}

#[test]
fn crash_looping_process_vm_reaches_failed_after_its_limit() {
    need_testbed!();
    let _serial = serial();
    let mut tb = Testbed::new(Options {
        vms: 4,
        ..Options::default()
    });
    tb.start();
    let master = tb.wait_settled();
    let looping = 1u32;
    let host = tb
        .placement()
        .get(&looping)
        .and_then(|on| on.first().copied())
        .expect("vm1 runs");

    // From now on vm1 dies 2 s after each start (a guest that crashes on boot), and its limit is
    // 2 restarts within 10 minutes: a new configuration generation on every datastore.
    let mut cfg = tb.config.clone();
    cfg.generation += 1;
    let v = cfg
        .vms
        .iter_mut()
        .find(|v| v.id == VmId(looping))
        .expect("vm1 configured");
    v.definition = format!(
        "echo \"$(date +%s.%N) start vm=$FDM_VM host=$FDM_HOST pid=$$\" >> {}; sleep 2; exit 3",
        tb.ledger.display()
    );
    v.ha.restart_limit = Some(RestartLimit {
        max_restarts: 2,
        window_ms: 600_000,
    });
    for d in &tb.datastores {
        DatastoreDir::open(d)
            .expect("datastore")
            .write_config(&cfg)
            .expect("config");
    }
    tb.config = cfg.clone();
    assert!(
        wait_for(Duration::from_secs(20), || {
            tb.host(master)
                .status()
                .is_some_and(|s| s["config_generation"] == cfg.generation)
        }),
        "the master did not take configuration generation {}",
        cfg.generation
    );
    let before = tb.starts();

    // The running copy crashes (killed); the restarts run the looping definition.
    let (_, pid) = tb
        .host(host)
        .running()
        .into_iter()
        .find(|(v, _)| *v == looping)
        .expect("vm1's pid");
    let t0 = Instant::now();
    // SAFETY: kill sends a signal to a pid we just read; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let failed = wait_until(Duration::from_secs(60), || {
        vm_status(&tb, master, looping)
            .filter(|v| v["failed"] == true)
            .map(|_| t0.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "vm1 not failed within 60 s: {:?} (logs in {})",
            vm_status(&tb, master, looping),
            tb.root.display()
        )
    });
    let status = vm_status(&tb, master, looping).expect("vm1 in status");
    let restart = status["restart"].as_str().unwrap_or_default().to_string();
    assert!(restart.starts_with("failed"), "{restart}");

    // It stays down: no 3rd restart within the window, and nobody else is touched.
    std::thread::sleep(Duration::from_secs(10));
    let after = tb.starts();
    let count = |m: &BTreeMap<u32, usize>, vm| m.get(&vm).copied().unwrap_or(0);
    assert_eq!(
        count(&after, looping) - count(&before, looping),
        2,
        "vm1 restarted exactly its limit (ledger {})",
        tb.ledger.display()
    );
    assert!(
        !tb.placement().contains_key(&looping),
        "vm1 runs again: {:?}",
        tb.placement()
    );
    assert!(tb.doubles().is_empty(), "double runs: {:?}", tb.doubles());
    for vm in 2..=4u32 {
        assert_eq!(count(&after, vm), count(&before, vm), "vm{vm} restarted");
        assert_eq!(tb.placement().get(&vm).map(Vec::len), Some(1), "vm{vm}");
    }
    println!("vm1 in the master's status: {restart}");
    report(
        "crash loop, limit 2 per 10 min",
        &[("failed_after_first_crash", failed.as_secs_f64())],
    );
}
