//! Multi-host cases with real libvirt and QEMU (TCG): stops that users mean are respected, a paused
//! domain is never taken for a stopped one, a returning host never starts a stale copy, and a
//! stale copy its libvirt starts at boot is stopped and undefined.
//!
//! The guest is a tiny multiboot kernel written below (about 2 KB, no disk): it halts, wakes on
//! interrupts, and powers the machine off through the ACPI PM1a control register when a key
//! arrives on its keyboard controller. `virsh send-key` then makes a real guest-initiated
//! power-off: QEMU reports a guest shutdown and libvirt says `shut off (shutdown)`, exactly what a
//! guest OS running `poweroff` produces. (The diskless firmware-only domain of the other suite
//! ignores ACPI, so `virsh shutdown` would do nothing there.)
//!
//! Needs root and libvirt/QEMU (`scripts/install-test-deps.sh`); otherwise every case says why it
//! skipped. `cargo test -p fdm-agent --test multihost_libvirt -- --nocapture` prints the
//! `MEASURED` lines.
#![allow(clippy::disallowed_methods, clippy::print_stdout)]

#[allow(dead_code)]
mod testbed;

use heartbeat_fs::VmId;
use heartbeat_fs::fs::DatastoreDir;
use heartbeat_fs::records::DesiredPower;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use testbed::{Options, Testbed, report, serial, unavailable, wait_for, wait_until};

macro_rules! need_libvirt {
    () => {
        if let Some(why) = unavailable() {
            println!("SKIPPED: multi-host test {}", why);
            return;
        }
        if !Path::new("/usr/bin/qemu-system-x86_64").exists()
            || Command::new("sh")
                .args(["-c", "command -v libvirtd && command -v virsh"])
                .output()
                .map_or(true, |o| !o.status.success())
        {
            println!("SKIPPED: libvirt/QEMU missing: run scripts/install-test-deps.sh");
            return;
        }
    };
}

/// How long a case watches for a restart that must not come. The testbed's restart retries are
/// 0, 1, 3 and 10 s after a crash, and the control crash below is back within a few seconds.
const NO_RESTART_WATCH: Duration = Duration::from_secs(20);

/// The guest kernel: a multiboot image (the a.out-kludge header, so QEMU loads it flat at 1 MiB).
///
/// ```text
/// 0x20 entry:  cli; lidt [idtr]; sti
/// 0x29 wait:   hlt; in al,0x64; test al,1; jz wait     ; a byte from the keyboard?
/// 0x30         mov dx,0x604; mov ax,0x2000; out dx,ax  ; PM1a_CNT: SLP_EN, S5 -> power off
/// 0x3a         cli; hlt; jmp $-1
/// 0x3e irq:    push eax; mov al,0x20; out 0x20,al; out 0xa0,al; pop eax; iret   ; EOI, return
/// 0x48 idtr:   limit, base; 0x50 idt: 256 interrupt gates to irq
/// ```
fn poweroff_guest() -> Vec<u8> {
    const BASE: u32 = 0x10_0000;
    const MAGIC: u32 = 0x1BAD_B002;
    const FLAGS: u32 = 1 << 16; // load addresses given in the header
    let mut img = Vec::new();
    for w in [
        MAGIC,
        FLAGS,
        0u32.wrapping_sub(MAGIC.wrapping_add(FLAGS)),
        BASE,        // header_addr
        BASE,        // load_addr
        0,           // load_end_addr: the whole file
        0,           // bss_end_addr: none
        BASE + 0x20, // entry
    ] {
        img.extend_from_slice(&w.to_le_bytes());
    }
    img.extend_from_slice(&[0xFA, 0x0F, 0x01, 0x1D]);
    img.extend_from_slice(&(BASE + 0x48).to_le_bytes());
    img.extend_from_slice(&[
        0xFB, 0xF4, 0xE4, 0x64, 0xA8, 0x01, 0x74, 0xF9, // sti; wait loop
        0x66, 0xBA, 0x04, 0x06, 0x66, 0xB8, 0x00, 0x20, 0x66, 0xEF, // power off
        0xFA, 0xF4, 0xEB, 0xFD, // stay down
        0x50, 0xB0, 0x20, 0xE6, 0x20, 0xE6, 0xA0, 0x58, 0xCF, // interrupt handler
    ]);
    assert_eq!(img.len(), 0x47);
    img.push(0);
    img.extend_from_slice(&(256u16 * 8 - 1).to_le_bytes());
    img.extend_from_slice(&(BASE + 0x50).to_le_bytes());
    img.extend_from_slice(&[0, 0]);
    let handler = BASE + 0x3E;
    for _ in 0..256 {
        img.extend_from_slice(&(handler as u16).to_le_bytes());
        img.extend_from_slice(&0x08u16.to_le_bytes()); // the code segment multiboot leaves
        img.extend_from_slice(&[0, 0x8E]); // present, ring 0, 32-bit interrupt gate
        img.extend_from_slice(&((handler >> 16) as u16).to_le_bytes());
    }
    img
}

/// A domain running the guest above; with a UUID, so that defining it again updates it.
fn domain(vm: u32, kernel: &Path) -> String {
    format!(
        "<domain type='qemu'><name>fdmvm{vm}</name>\
         <uuid>6664d000-0000-4000-8000-{vm:012x}</uuid>\
         <memory unit='MiB'>32</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel></os>\
         <features><acpi/></features><on_crash>destroy</on_crash>\
         <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>",
        kernel.display()
    )
}

/// A libvirt bed of two hosts and two VMs (one per host) running the power-off guest.
fn bed() -> Testbed {
    let mut tb = Testbed::new(Options {
        hosts: 2,
        datastores: 1,
        vms: 2,
        libvirt: true,
        ..Options::default()
    });
    let kernel = tb.root.join("poweroff-guest.bin");
    std::fs::write(&kernel, poweroff_guest()).expect("guest kernel");
    for v in &mut tb.config.vms {
        v.definition = domain(v.id.0, &kernel);
    }
    for d in &tb.datastores {
        DatastoreDir::open(d)
            .expect("datastore")
            .write_config(&tb.config)
            .expect("config");
    }
    tb
}

/// A slave other than `master`.
fn a_slave(tb: &Testbed, master: u32) -> u32 {
    (1..=tb.hosts.len() as u32)
        .find(|&h| h != master)
        .expect("two hosts")
}

/// Whether the master's protected list (on the VM's home datastore) has `vm` off on purpose.
fn desired_off(tb: &Testbed, vm: u32) -> bool {
    tb.datastores.iter().any(|d| {
        DatastoreDir::open(d)
            .ok()
            .and_then(|d| d.read_protected_list().ok().flatten())
            .is_some_and(|l| {
                l.vms
                    .iter()
                    .any(|e| e.vm == VmId(vm) && e.desired == DesiredPower::Off)
            })
    })
}

/// The state an agent's status gives a VM: a master's view (`Running` or none), or a slave's
/// own (`Running`, `StoppedByUser`, ...).
fn status_state(tb: &Testbed, host: u32, vm: u32) -> Option<String> {
    let s = tb.host(host).status()?;
    s["vms"]
        .as_array()?
        .iter()
        .find(|v| v["vm"] == vm)
        .and_then(|v| v["state"].as_str().map(String::from))
}

fn domstate(tb: &Testbed, host: u32, vm: u32) -> String {
    tb.host(host)
        .virsh(&format!("domstate --reason fdmvm{vm}"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| e)
}

/// Watch for `limit`: `vm` must run on no host. Returns when it ran, if it did.
fn ran_during(tb: &Testbed, vm: u32, limit: Duration) -> Option<Vec<u32>> {
    wait_until(limit, || tb.placement().get(&vm).cloned())
}

#[test]
fn libvirt_guest_poweroff_is_not_restarted() {
    need_libvirt!();
    let _serial = serial();
    let mut tb = bed();
    tb.start();
    let master = tb.wait_settled();
    let host = a_slave(&tb, master);
    let [vm] = tb.host(host).vms()[..] else {
        panic!("one domain on host{host}: {:?}", tb.placement());
    };

    // The guest powers itself off (a key press makes it write the ACPI sleep register).
    let t0 = Instant::now();
    tb.host(host)
        .virsh(&format!("send-key fdmvm{vm} KEY_A"))
        .expect("send-key");
    assert!(
        wait_for(Duration::from_secs(10), || domstate(&tb, host, vm)
            == "shut off (shutdown)"),
        "fdmvm{vm} did not power itself off: {}",
        domstate(&tb, host, vm)
    );
    let off = t0.elapsed();
    let reported = wait_until(Duration::from_secs(10), || {
        (status_state(&tb, host, vm).as_deref() == Some("stopped by user")).then(|| t0.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "host{host} does not take vm{vm} for stopped by its user: {:?} (logs in {})",
            status_state(&tb, host, vm),
            tb.root.display()
        )
    });
    let marked = wait_until(Duration::from_secs(15), || {
        desired_off(&tb, vm).then(|| t0.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "the master's protected list does not have vm{vm} off (logs in {})",
            tb.root.display()
        )
    });
    if let Some(on) = ran_during(&tb, vm, NO_RESTART_WATCH) {
        panic!(
            "vm{vm} was restarted on {on:?} after its guest powered off (logs in {})",
            tb.root.display()
        );
    }
    assert_eq!(domstate(&tb, host, vm), "shut off (shutdown)");
    assert!(tb.doubles().is_empty(), "double runs: {:?}", tb.doubles());

    // Control: the other VM's QEMU killed is a crash, and HA restarts it.
    let other = 3 - vm;
    let on = tb.placement().get(&other).cloned().unwrap_or_default();
    let [h2] = on[..] else {
        panic!("vm{other} runs on {on:?}");
    };
    let (_, pid) = tb.pids()[&other];
    let t1 = Instant::now();
    // SAFETY: SIGKILL to a QEMU of the test's own namespace.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let back = wait_until(Duration::from_secs(40), || {
        tb.pids()
            .get(&other)
            .is_some_and(|&(_, p)| p != pid)
            .then(|| t1.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "killed vm{other} (host{h2}) not restarted (logs in {})",
            tb.root.display()
        )
    });
    assert!(tb.doubles().is_empty(), "double runs: {:?}", tb.doubles());
    report(
        "libvirt guest power-off",
        &[
            ("guest_off", off.as_secs_f64()),
            ("host_reports_stopped_by_user", reported.as_secs_f64()),
            ("master_marks_desired_off", marked.as_secs_f64()),
            ("watched_without_restart", NO_RESTART_WATCH.as_secs_f64()),
            ("control_crash_restarted", back.as_secs_f64()),
        ],
    );
}

#[test]
fn libvirt_suspended_domain_is_not_restarted_and_stays_on_its_host() {
    need_libvirt!();
    let _serial = serial();
    let mut tb = bed();
    tb.start();
    let master = tb.wait_settled();
    let host = a_slave(&tb, master);
    let [vm] = tb.host(host).vms()[..] else {
        panic!("one domain on host{host}: {:?}", tb.placement());
    };
    let before = tb.pids()[&vm];

    tb.host(host)
        .virsh(&format!("suspend fdmvm{vm}"))
        .expect("suspend");
    assert_eq!(domstate(&tb, host, vm), "paused (user)");
    let t0 = Instant::now();
    // Watch: the paused domain must stay where it is, the same QEMU, and nothing else start it.
    let moved = wait_until(NO_RESTART_WATCH, || {
        let p = tb.placement();
        (p.get(&vm) != Some(&vec![host]) || tb.pids().get(&vm) != Some(&before))
            .then(|| format!("{p:?}"))
    });
    assert!(
        moved.is_none(),
        "paused vm{vm} moved or was restarted: {moved:?} (logs in {})",
        tb.root.display()
    );
    assert_eq!(domstate(&tb, host, vm), "paused (user)");
    assert_eq!(
        status_state(&tb, master, vm).as_deref(),
        Some("running"),
        "the master must see the paused VM as running"
    );
    assert_eq!(
        status_state(&tb, host, vm).as_deref(),
        Some("running"),
        "its host must report the paused VM as running"
    );
    assert!(!desired_off(&tb, vm), "a paused VM is not off");
    tb.host(host)
        .virsh(&format!("resume fdmvm{vm}"))
        .expect("resume");
    std::thread::sleep(Duration::from_secs(2));
    tb.assert_every_vm_once();
    report(
        "libvirt suspend",
        &[("watched_paused_without_restart", t0.elapsed().as_secs_f64())],
    );
}

#[test]
fn libvirt_returning_host_with_autostart_starts_no_second_copy() {
    need_libvirt!();
    let _serial = serial();
    let mut tb = bed();
    // Host 2 holds autostart definitions before any agent runs: its own VM's (vm2, which the
    // testbed starts there), and a stale one of vm1, which runs on host 1.
    let h2 = tb.host(2);
    for vm in [1u32, 2] {
        let xml = h2.dir.join(format!("stale-vm{vm}.xml"));
        std::fs::write(&xml, &tb.config.vm(VmId(vm)).expect("vm").definition).expect("xml");
        h2.virsh(&format!("define {}", xml.display()))
            .and_then(|_| h2.virsh(&format!("autostart fdmvm{vm}")))
            .expect("define with autostart");
    }
    let autostart = |tb: &Testbed, h: u32| {
        tb.host(h)
            .virsh("list --all --autostart --name")
            .map(|s| {
                s.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    assert_eq!(autostart(&tb, 2), vec!["fdmvm1", "fdmvm2"]);

    let t0 = Instant::now();
    tb.start();
    let disabled = wait_until(Duration::from_secs(30), || {
        autostart(&tb, 2).is_empty().then(|| t0.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "autostart still on at host2: {:?} (logs in {})",
            autostart(&tb, 2),
            tb.root.display()
        )
    });
    tb.wait_settled();
    tb.assert_every_vm_once();
    let log = std::fs::read_to_string(tb.host(2).log()).unwrap_or_default();
    assert!(
        log.contains("autostart disabled"),
        "the agent does not log what it changed"
    );

    // Host 2 dies and its VM is restarted on host 1; then host 2 boots again with its libvirt
    // definitions (now without autostart): nothing starts there, no second copy of either VM.
    let on2 = tb.host(2).vms();
    tb.kill_host(2);
    let t1 = Instant::now();
    tb.wait_moved_off(
        &on2,
        &[2],
        t1,
        Duration::from_secs(40),
        "host2's VM restarted on host1",
    );
    let t2 = Instant::now();
    tb.boot_host(2);
    let booted = t2.elapsed();
    let started_on_2 = wait_until(NO_RESTART_WATCH, || {
        let v = tb.host(2).vms();
        (!v.is_empty()).then_some(v)
    });
    assert!(
        started_on_2.is_none(),
        "host2 started {started_on_2:?} after its boot (logs in {})",
        tb.root.display()
    );
    tb.assert_every_vm_once();
    report(
        "libvirt autostart",
        &[
            (
                "autostart_disabled_after_agent_start",
                disabled.as_secs_f64(),
            ),
            ("libvirtd_boot", booted.as_secs_f64()),
            (
                "watched_after_boot_without_copy",
                NO_RESTART_WATCH.as_secs_f64(),
            ),
        ],
    );
}

/// Times `event` (a core event's name, as its JSON log line spells it) was logged for `vm` by any
/// host.
/// How many times the agents logged event `event` (its name, as JSON logs carry it in `event`)
/// about `vm`.
fn events_of(tb: &Testbed, event: &str, vm: u32) -> usize {
    tb.hosts
        .iter()
        .map(|h| {
            std::fs::read_to_string(h.log())
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|j| j["fields"]["event"] == event && j["fields"]["vm"] == vm)
                .count()
        })
        .sum()
}

/// The domain names libvirt holds at `host`, running or not.
fn defined(tb: &Testbed, host: u32) -> Vec<String> {
    tb.host(host)
        .virsh("list --all --name")
        .map(|s| {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn libvirt_returning_host_whose_libvirt_starts_a_stale_copy_stops_it() {
    need_libvirt!();
    let _serial = serial();
    let mut tb = bed();
    tb.start();
    tb.wait_settled();
    let [vm] = tb.host(2).vms()[..] else {
        panic!("one domain on host2: {:?}", tb.placement());
    };

    // Host 2 dies; HA restarts its VM on host 1.
    tb.kill_host(2);
    let t1 = Instant::now();
    let moved = tb.wait_moved_off(
        &[vm],
        &[2],
        t1,
        Duration::from_secs(40),
        "host2's VM restarted on host1",
    );
    let on = tb.placement().get(&vm).cloned().unwrap_or_default();
    let [kept] = on[..] else {
        panic!("vm{vm} runs on {on:?}");
    };

    // Host 2 boots, and its libvirt starts the old domain before the agent runs. The agent turns
    // autostart off on the domains it manages, so the flag is put back here, while the host is
    // down, exactly as `virsh autostart` stores it (a link in the autostart directory of the
    // host's /etc/libvirt/qemu, which survives the reboot): an operator set it by hand and the
    // host died before the agent's next autostart check. Chosen over a `virsh start` after the
    // boot because it is the real path (libvirtd starts the domain during its own start-up,
    // before it answers any client, hence before any agent could act), and it is reliable here:
    // libvirtd autostarts once per boot of its /run, which is a fresh tmpfs at every boot of the
    // testbed's hosts; the wait below fails the case clearly if it ever did not.
    let name = format!("fdmvm{vm}");
    let qemu_etc = tb.host(2).dir.join("etc-libvirt").join("qemu");
    assert!(
        qemu_etc.join(format!("{name}.xml")).exists(),
        "host2 kept no definition of {name} in {}",
        qemu_etc.display()
    );
    std::fs::create_dir_all(qemu_etc.join("autostart")).expect("autostart dir");
    std::os::unix::fs::symlink(
        format!("/etc/libvirt/qemu/{name}.xml"),
        qemu_etc.join("autostart").join(format!("{name}.xml")),
    )
    .expect("autostart link");
    tb.boot_hypervisor(2);
    assert!(
        wait_for(Duration::from_secs(30), || {
            domstate(&tb, 2, vm).starts_with("running") && tb.host(2).vms().contains(&vm)
        }),
        "host2's libvirt did not autostart {name}: {} (logs in {})",
        domstate(&tb, 2, vm),
        tb.root.display()
    );
    let mut both = vec![kept, 2];
    both.sort();
    assert_eq!(
        tb.placement().get(&vm),
        Some(&both),
        "the stale copy and the restarted one both run before host2's agent starts"
    );

    // The agent starts: the stale copy must go, and with it its definition.
    let t0 = Instant::now();
    tb.start_agent(2);
    let bound = Duration::from_secs(30);
    let stopped = wait_until(bound, || {
        (!tb.host(2).vms().contains(&vm)).then(|| t0.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "host2's stale copy of vm{vm} still runs {bound:?} after its agent started: {} (logs in {})",
            domstate(&tb, 2, vm),
            tb.root.display()
        )
    });
    let undefined = wait_until(bound, || {
        (!defined(&tb, 2).contains(&name)).then(|| t0.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "host2 still defines {name} {bound:?} after its agent started: {:?} (logs in {})",
            defined(&tb, 2),
            tb.root.display()
        )
    });
    assert_eq!(
        tb.placement().get(&vm),
        Some(&vec![kept]),
        "vm{vm} must run once, on host{kept} where HA restarted it"
    );
    // The only double run is the one made above, between the autostart and the stop.
    let doubles = tb.take_doubles();
    assert!(
        doubles.iter().all(|d| d.vm == vm && d.hosts.contains(&2)),
        "double runs other than the stale copy: {doubles:?}"
    );

    let log2 = std::fs::read_to_string(tb.host(2).log()).unwrap_or_default();
    let master_logs: String = tb
        .hosts
        .iter()
        .filter(|h| h.id != 2)
        .map(|h| std::fs::read_to_string(h.log()).unwrap_or_default())
        .collect();
    // Either side may end it first (the agent's own check, or the master hearing the VM from
    // two live hosts); a host ignores a stop of a VM it is already stopping.
    let found = log2.contains("\"event\":\"stale-copy-found\"");
    let sent = master_logs.contains("\"event\":\"duplicate-copy-stop-sent\"");
    let stopping = log2.contains("\"event\":\"stopping-stale-copy\"");
    assert!(
        found || (sent && stopping),
        "neither host2's StaleCopyFound nor the master's DuplicateCopyStopSent with host2's \
         StoppingStaleCopy was logged (logs in {})",
        tb.root.display()
    );
    println!(
        "stale copy of vm{vm}: StaleCopyFound at host2 {found}, DuplicateCopyStopSent by the \
         master {sent}, StoppingStaleCopy at host2 {stopping}"
    );

    // No restart follows: the same QEMU on the same host, no new restart or power-on of the VM.
    let pid = tb
        .host(kept)
        .running()
        .into_iter()
        .find(|&(v, _)| v == vm)
        .map(|(_, p)| p)
        .expect("vm's QEMU on the host it was restarted to");
    let (restarts, power_ons) = (
        events_of(&tb, "restart-issued", vm),
        events_of(&tb, "powered-on", vm),
    );
    let changed = wait_until(NO_RESTART_WATCH, || {
        let p = tb.placement();
        let same = p.get(&vm) == Some(&vec![kept]) && tb.host(kept).running().contains(&(vm, pid));
        (!same).then(|| format!("{p:?}"))
    });
    assert!(
        changed.is_none(),
        "vm{vm} moved or was restarted after the stale copy stopped: {changed:?} (logs in {})",
        tb.root.display()
    );
    assert_eq!(
        (
            events_of(&tb, "restart-issued", vm),
            events_of(&tb, "powered-on", vm)
        ),
        (restarts, power_ons),
        "restarts or power-ons of vm{vm} after the stale copy stopped (logs in {})",
        tb.root.display()
    );
    assert!(
        !defined(&tb, 2).contains(&name),
        "{name} defined again at host2"
    );
    tb.assert_every_vm_once();
    report(
        "libvirt stale copy",
        &[
            ("restarted_elsewhere", moved.as_secs_f64()),
            ("agent_start_to_stale_copy_stopped", stopped.as_secs_f64()),
            (
                "agent_start_to_stale_copy_undefined",
                undefined.as_secs_f64(),
            ),
            ("watched_without_restart", NO_RESTART_WATCH.as_secs_f64()),
        ],
    );
}
