//! The libvirt driver's guest monitoring calls against a real guest running the QEMU guest agent
//! (issue 17): `guest_ping`, `run_in_guest`, `io_counters` and `reset`, under libvirt with QEMU
//! (TCG) in one testbed host.
//!
//! The guest is built by `scripts/build-test-guest.sh` (cached under the target directory): the
//! Debian cloud kernel and a busybox initramfs that starts `qemu-ga` on the
//! `org.qemu.guest_agent.0` port and an "application", `/bin/app`, a loop that touches
//! `/run/app.ok` and writes 256 KiB a second to the guest's small virtio disk.
//!
//! Needs root and libvirt/QEMU (`scripts/install-test-deps.sh`); otherwise every case says why it
//! skipped. `cargo test -p fdm-agent --test guest_agent -- --nocapture` prints the `MEASURED`
//! lines.
//!
//! Unfinished (deadline): docs/operations.md "Guest monitoring setup" is not written yet, and
//! clippy was not run on this change.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::print_stdout
)]

#[allow(dead_code)]
mod testbed;

use fdm_agent::driver::Driver;
use fdm_agent::driver::libvirt::{GuestPing, IoCounters, LibvirtDriver, MonitorOutcome};
use heartbeat_fs::VmId;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testbed::{Options, Testbed, report, serial, unavailable, wait_until};

macro_rules! need_libvirt {
    () => {
        if let Some(why) = unavailable() {
            println!("SKIPPED: guest agent test {}", why);
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

/// The ping timeout of these cases: what the core would give a heartbeat.
const PING: Duration = Duration::from_secs(2);
/// The driver's bound on a call beyond its timeout (libvirt's re-sync with a silent agent, 5 s).
const AGENT_MARGIN: Duration = Duration::from_secs(7);
/// Boot to the first answer: about 4.5 s measured; TCG on a loaded 2-core machine is slower.
const BOOT_LIMIT: Duration = Duration::from_secs(90);

/// The kernel and initramfs, built once (the script keeps them under the target directory).
fn guest_files() -> Result<(PathBuf, PathBuf), String> {
    // target/debug/deps/guest_agent-HASH: three levels up is the target directory.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or("no target directory above the test binary")?;
    let out = target.join("test-guest");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-guest.sh");
    let o = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !o.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok((out.join("vmlinuz"), out.join("initrd.img")))
}

/// The tiny guest: 192 MiB, the agent channel, a raw disk for the application to write to, its
/// console in a file (read it when a case fails).
fn guest_domain(vm: u32, kernel: &Path, initrd: &Path, root: &Path) -> String {
    let disk = root.join(format!("disk{vm}.img"));
    let f = std::fs::File::create(&disk).expect("disk image");
    f.set_len(8 << 20).expect("disk size");
    format!(
        "<domain type='qemu'><name>fdmvm{vm}</name><memory unit='MiB'>192</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel>\
         <initrd>{initrd}</initrd><cmdline>console=ttyS0 quiet</cmdline></os>\
         <on_crash>destroy</on_crash><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
         <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
         <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>\
         <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
         <serial type='file'><source path='{console}'/><target port='0'/></serial>\
         </devices></domain>",
        kernel = kernel.display(),
        initrd = initrd.display(),
        disk = disk.display(),
        console = root.join(format!("console{vm}.log")).display(),
    )
}

/// A diskless firmware-only domain (nothing boots, so no agent ever starts), with or without the
/// agent channel.
fn bare_domain(vm: u32, channel: bool) -> String {
    format!(
        "<domain type='qemu'><name>fdmvm{vm}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><on_crash>destroy</on_crash>\
         <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{}</devices></domain>",
        if channel {
            "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
        } else {
            ""
        }
    )
}

/// One testbed host with its libvirtd (no agents: the driver is called directly) and the driver.
fn bed() -> (Testbed, LibvirtDriver) {
    let tb = Testbed::new(Options {
        hosts: 1,
        datastores: 1,
        vms: 0,
        libvirt: true,
        ..Options::default()
    });
    let d = LibvirtDriver::new(&tb.host(1).libvirt_uri());
    (tb, d)
}

/// Starts the VMs (through the driver's own `power_on`).
fn start(d: &LibvirtDriver, vms: &[(VmId, String)]) {
    d.set_known_vms(vms);
    for (vm, def) in vms {
        d.power_on(*vm, def).expect("power on");
    }
}

/// Pings until the agent answers; the time it took.
fn first_answer(d: &LibvirtDriver, vm: VmId, limit: Duration) -> Duration {
    let t0 = Instant::now();
    let r = wait_until(limit, || {
        matches!(d.guest_ping(vm, PING), Ok(GuestPing::Answered)).then_some(())
    });
    assert!(
        r.is_some(),
        "{vm}: no answer from the guest agent within {limit:?}"
    );
    t0.elapsed()
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn sh(script: &str) -> Vec<String> {
    argv(&["/bin/sh", "-c", script])
}

#[test]
fn the_agent_answers_and_application_checks_pass_and_fail() {
    need_libvirt!();
    let _serial = serial();
    let (kernel, initrd) = guest_files().expect("test guest");
    let (tb, d) = bed();
    let vm = VmId(1);
    let t0 = Instant::now();
    start(&d, &[(vm, guest_domain(1, &kernel, &initrd, &tb.root))]);
    let started = t0.elapsed();
    let boot = first_answer(&d, vm, BOOT_LIMIT);
    report(
        "guest agent boot",
        &[
            ("start", started.as_secs_f64()),
            ("start->first ping", boot.as_secs_f64()),
        ],
    );
    let t = Duration::from_secs(10);
    // `/bin/app` may not have run its first loop yet when the agent answers.
    let ok = wait_until(Duration::from_secs(10), || {
        (d.run_in_guest(vm, &argv(&["test", "-e", "/run/app.ok"]), t)
            .ok()
            == Some(MonitorOutcome::Passed))
        .then_some(())
    });
    assert!(ok.is_some(), "the application never marked itself alive");
    let t1 = Instant::now();
    assert_eq!(
        d.run_in_guest(vm, &argv(&["pidof", "app"]), t).unwrap(),
        MonitorOutcome::Passed
    );
    report(
        "guest-exec check",
        &[("pidof app", t1.elapsed().as_secs_f64())],
    );

    // The output and exit code of a failing check come back.
    match d
        .run_in_guest(vm, &sh("echo broken; echo details >&2; exit 3"), t)
        .unwrap()
    {
        MonitorOutcome::Failed { exit_code, output } => {
            assert_eq!(exit_code, Some(3));
            assert_eq!(output, "broken\ndetails\n");
        }
        other => panic!("expected a failure, got {other:?}"),
    }

    // The application dies: its check fails.
    assert_eq!(
        d.run_in_guest(vm, &sh("kill $(pidof app) && rm -f /run/app.ok"), t)
            .unwrap(),
        MonitorOutcome::Passed
    );
    match d.run_in_guest(vm, &argv(&["pidof", "app"]), t).unwrap() {
        MonitorOutcome::Failed { exit_code, .. } => assert_eq!(exit_code, Some(1)),
        other => panic!("expected pidof to fail, got {other:?}"),
    }
    assert!(matches!(
        d.run_in_guest(vm, &argv(&["test", "-e", "/run/app.ok"]), t)
            .unwrap(),
        MonitorOutcome::Failed {
            exit_code: Some(1),
            ..
        }
    ));

    // A program the guest does not have fails the check (no exit code: it never ran).
    match d
        .run_in_guest(vm, &argv(&["/nonexistent-check"]), t)
        .unwrap()
    {
        MonitorOutcome::Failed { exit_code, output } => {
            assert_eq!(exit_code, None);
            assert!(output.contains("No such file"), "{output}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }

    // A check that hangs times out at its timeout, and is killed in the guest.
    let t2 = Instant::now();
    assert_eq!(
        d.run_in_guest(vm, &argv(&["sleep", "300"]), Duration::from_secs(2))
            .unwrap(),
        MonitorOutcome::TimedOut
    );
    let took = t2.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(2) + AGENT_MARGIN,
        "{took:?}"
    );
    let killed = wait_until(Duration::from_secs(5), || {
        (d.run_in_guest(vm, &sh("! ps | grep -q '[s]leep 300'"), t)
            .ok()
            == Some(MonitorOutcome::Passed))
        .then_some(())
    });
    assert!(
        killed.is_some(),
        "the timed-out check still runs in the guest"
    );
    report(
        "guest-exec timeout",
        &[("sleep 300 with 2 s", took.as_secs_f64())],
    );
}

#[test]
fn a_hung_guest_gives_no_answer_and_a_reset_brings_it_back() {
    need_libvirt!();
    let _serial = serial();
    let (kernel, initrd) = guest_files().expect("test guest");
    let (tb, d) = bed();
    let vm = VmId(1);
    start(&d, &[(vm, guest_domain(1, &kernel, &initrd, &tb.root))]);
    first_answer(&d, vm, BOOT_LIMIT);

    // Frozen by the hypervisor: libvirt refuses agent calls to a paused domain at once.
    tb.host(1).virsh("suspend fdmvm1").expect("suspend");
    let t0 = Instant::now();
    assert_eq!(d.guest_ping(vm, PING).unwrap(), GuestPing::NoAnswer);
    let paused = t0.elapsed();
    assert!(paused < PING + AGENT_MARGIN, "{paused:?}");
    tb.host(1).virsh("resume fdmvm1").expect("resume");
    first_answer(&d, vm, Duration::from_secs(20));

    // Hung inside: the agent stops answering while QEMU and libvirt are fine (as a guest kernel
    // that no longer schedules its userspace).
    // (In the background, a second later: the agent reports the shell's exit first.)
    assert_eq!(
        d.run_in_guest(
            vm,
            &sh("(sleep 1; kill -STOP $(pidof qemu-ga)) >/dev/null 2>&1 &"),
            Duration::from_secs(10)
        )
        .unwrap(),
        MonitorOutcome::Passed
    );
    std::thread::sleep(Duration::from_millis(1500));
    let hung = Instant::now();
    let t1 = Instant::now();
    let ping = d.guest_ping(vm, PING).unwrap();
    let first_miss = t1.elapsed();
    assert_eq!(ping, GuestPing::NoAnswer);
    assert!(
        first_miss >= Duration::from_secs(1) && first_miss < PING + AGENT_MARGIN,
        "a silent agent must be waited for, within the bound: {first_miss:?}"
    );
    // Later pings (libvirt re-synchronises first) stay NoAnswer, within the bound too.
    let t2 = Instant::now();
    assert_eq!(d.guest_ping(vm, PING).unwrap(), GuestPing::NoAnswer);
    let second_miss = t2.elapsed();
    assert!(second_miss < PING + AGENT_MARGIN, "{second_miss:?}");

    let t3 = Instant::now();
    d.reset(vm).expect("reset");
    let reset_call = t3.elapsed();
    let hang_to_reset = hung.elapsed();
    let back = first_answer(&d, vm, BOOT_LIMIT);
    report(
        "hang->reset",
        &[
            ("first miss", first_miss.as_secs_f64()),
            ("second miss", second_miss.as_secs_f64()),
            ("hang->reset done", hang_to_reset.as_secs_f64()),
            ("reset call", reset_call.as_secs_f64()),
            ("paused miss", paused.as_secs_f64()),
        ],
    );
    report(
        "reset->first ping",
        &[("reset->first ping", back.as_secs_f64())],
    );
    // The reset rebooted the guest (a fresh application), not just woke the agent.
    assert_eq!(
        d.run_in_guest(vm, &argv(&["pidof", "app"]), Duration::from_secs(10))
            .unwrap(),
        MonitorOutcome::Passed
    );
    let domains = tb.host(1).virsh("list").expect("list");
    assert!(domains.contains("fdmvm1"), "{domains}");
}

#[test]
fn io_counters_advance_while_the_application_writes() {
    need_libvirt!();
    let _serial = serial();
    let (kernel, initrd) = guest_files().expect("test guest");
    let (tb, d) = bed();
    let vm = VmId(1);
    start(&d, &[(vm, guest_domain(1, &kernel, &initrd, &tb.root))]);
    first_answer(&d, vm, BOOT_LIMIT);
    let a = d.io_counters(vm).expect("counters");
    std::thread::sleep(Duration::from_secs(3));
    let b = d.io_counters(vm).expect("counters");
    // The application writes 256 KiB a second with fsync.
    assert!(
        b.disk_bytes >= a.disk_bytes + (256 << 10),
        "disk bytes did not advance: {a:?} -> {b:?}"
    );
    // No NIC (this machine has no network for guests): the net counters exist and stay 0.
    assert_eq!((a.net_bytes, b.net_bytes), (0, 0));
    // The writes stop with the application: the counters stand still (reads of the guest's
    // page cache do not reach the disk).
    assert_eq!(
        d.run_in_guest(vm, &sh("kill $(pidof app)"), Duration::from_secs(10))
            .unwrap(),
        MonitorOutcome::Passed
    );
    std::thread::sleep(Duration::from_millis(1500));
    let c = d.io_counters(vm).expect("counters");
    std::thread::sleep(Duration::from_secs(2));
    let e = d.io_counters(vm).expect("counters");
    assert_eq!(c, e, "IO without the application");
    report(
        "io counters",
        &[(
            "disk MiB/s while writing",
            (b.disk_bytes - a.disk_bytes) as f64 / 3.0 / f64::from(1u32 << 20),
        )],
    );
    // A VM that does not run has no counters to read.
    let gone = VmId(9);
    d.set_known_vms(&[(gone, bare_domain(9, false))]);
    assert!(d.io_counters(gone).is_err());
    assert_ne!(e, IoCounters::default());
}

#[test]
fn a_domain_without_the_channel_is_unavailable_never_no_answer() {
    need_libvirt!();
    let _serial = serial();
    let (_tb, d) = bed();
    let (without, with) = (VmId(1), VmId(2));
    start(
        &d,
        &[
            (without, bare_domain(1, false)),
            (with, bare_domain(2, true)),
        ],
    );
    for _ in 0..2 {
        // The second time from the driver's cache of the domain XML.
        let t0 = Instant::now();
        assert_eq!(d.guest_ping(without, PING).unwrap(), GuestPing::Unavailable);
        assert!(t0.elapsed() < PING, "no agent call is waited for");
        assert_eq!(
            d.run_in_guest(without, &argv(&["true"]), PING).unwrap(),
            MonitorOutcome::Unavailable
        );
    }
    // A channel but no agent behind it (nothing boots there): that one is NoAnswer.
    assert_eq!(d.guest_ping(with, PING).unwrap(), GuestPing::NoAnswer);
    assert_eq!(
        d.run_in_guest(with, &argv(&["true"]), PING).unwrap(),
        MonitorOutcome::TimedOut
    );
    // Diskless and NIC-less: zero counters, read without error.
    assert_eq!(d.io_counters(without).unwrap(), IoCounters::default());
}
