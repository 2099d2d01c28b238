//! One-way latency of an fdm network heartbeat between two agent runtimes (issue 8 item 1).
//!
//! A sender thread encodes a `SlaveHeartbeat` exactly as `Agent::send` does (postcard body, wire
//! header, keyed MAC) and sends it over UDP; a receiver thread receives it and hands it to a real
//! sans-IO `Agent` (`handle_datagram`), which is master and knows the sender, so the heartbeat goes
//! all the way to `master_on_slave_heartbeat`. Latency: from before encoding to after
//! `handle_datagram` returned, on one clock (both ends are threads of this process). The floor sends
//! a raw datagram of the same size and stops the clock when `recv` returns.
//!
//! One datagram in flight: the sender waits (spinning) until the receiver has finished the previous
//! one, so this is latency, not throughput. Sender and receiver are pinned to different CPUs so the
//! spinning sender never delays the receiver.
//!
//! Paths: loopback (127.0.0.1), and a veth pair between two network namespaces that the bench
//! creates (and deletes, also on failure); each thread `setns`es into its own namespace before making
//! its socket. The receiver uses a blocking std socket; the agent's runtime uses tokio, whose epoll
//! wake-up adds a little on top of these numbers.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use fdm_agent::core::messages::{Handover, Message, SlaveHeartbeat};
use fdm_agent::core::{Agent, AgentSettings, Role, Time, Timings, Verdict};
use fdm_agent::wire::{Header, Key, seal};
use fdm_benches::{Samples, iterations, md_percentiles, mono_ns};
use heartbeat_fs::records::{ClusterConfig, HostConfig};
use heartbeat_fs::{ClusterId, DatastoreId, HostId};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

const CLUSTER: ClusterId = ClusterId(0xF0F0);
const SECRET: [u8; 32] = [7; 32];
const RECEIVER: HostId = HostId(1);
const SENDER: HostId = HostId(2);
const SENDER_INCARNATION: u64 = 1;
/// Wire sequence of the `Yield` that makes the receiver master; heartbeats follow it.
const YIELD_SEQ: u64 = 1;
const WARMUP: usize = 1_000;
/// A datagram not answered within this long means it was lost or the receiver died: fail, don't hang.
const STALL: Duration = Duration::from_secs(10);

const NS_TX: &str = "fdmlat-tx";
const NS_RX: &str = "fdmlat-rx";
const VETH_TX: &str = "fdmlat0";
const VETH_RX: &str = "fdmlat1";
const ADDR_TX: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const ADDR_RX: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Fdm,
    Floor,
}

/// Where each end lives: its own namespace (or the current one) and its address there.
#[derive(Clone, Copy, Debug)]
struct Path {
    name: &'static str,
    tx: (Option<&'static str>, Ipv4Addr),
    rx: (Option<&'static str>, Ipv4Addr),
}

fn cluster_config() -> ClusterConfig {
    let host = |id: HostId| HostConfig::new(id, format!("10.78.0.{}:7000", id.0));
    ClusterConfig::new(CLUSTER)
        .with_hosts([host(RECEIVER), host(SENDER)])
        .with_shared_datastores(["/ds1"])
}

fn now() -> Time {
    Time::from_micros(mono_ns() / 1_000)
}

/// Seal `msg` from the sender exactly as `Agent::send` does.
fn seal_from_sender(key: &Key, sequence: u64, msg: &Message) -> Vec<u8> {
    let body = postcard::to_stdvec(msg).unwrap();
    let header = Header {
        kind: msg.kind(),
        cluster: CLUSTER,
        sender: SENDER,
        incarnation: SENDER_INCARNATION,
        recipient: RECEIVER,
        // First contact: the sender has not heard the receiver's incarnation.
        recipient_incarnation: 0,
        sequence,
    };
    seal(key, &header, &body).unwrap()
}

fn heartbeat(seq: u64) -> Message {
    Message::SlaveHeartbeat(SlaveHeartbeat {
        seq,
        echo_round: 0,
        token: seq,
        reachable: vec![DatastoreId(1)],
        vm_generation: 1,
        maintenance: false,
        config_generation: 1,
    })
}

/// A receiver agent that is master of a two-host cluster and has not heard from the sender yet.
fn master_agent(key: &Key) -> Agent {
    let settings = AgentSettings::new(
        RECEIVER,
        1,
        CLUSTER,
        SECRET,
        vec![DatastoreId(1)],
        Timings::default(),
    );
    let mut agent = Agent::new(settings, Some(cluster_config()), now());
    // A hand-over from the sender is the shortest way to the master role without running an
    // election's worth of timers and datastore completions.
    let y = seal_from_sender(key, YIELD_SEQ, &Message::Yield(Handover { to: RECEIVER }));
    agent.handle_datagram(now(), &y);
    while agent.poll_output().is_some() {}
    assert_eq!(agent.role(), Role::Master, "receiver did not become master");
    agent
}

/// Pin the calling thread to one CPU.
fn pin_to(cpu: usize) {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays inside it for cpu < CPU_SETSIZE;
    // sched_setaffinity(0, ..) only reads it and applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Move the calling thread (only) into network namespace `name`; sockets made afterwards live there.
fn enter_netns(name: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("open netns {name}: {e}"));
    // SAFETY: `f` is an open namespace file; setns with CLONE_NEWNET changes only this thread's
    // network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

fn wait_for(counter: &AtomicU64, value: u64) {
    let since = mono_ns();
    while counter.load(Ordering::Acquire) < value {
        std::hint::spin_loop();
        assert!(
            mono_ns() - since < STALL.as_nanos() as u64,
            "datagram {value} not handled within {STALL:?}"
        );
    }
}

struct Measured {
    /// Before encode -> after handle_datagram (fdm), or before send -> after recv (floor).
    total: Samples,
    /// fdm only: encode + MAC at the sender.
    encode: Samples,
    /// fdm only: handle_datagram at the receiver.
    handle: Samples,
    bytes: usize,
}

fn measure(path: Path, mode: Mode, n: usize, floor_bytes: usize) -> Measured {
    let total_count = WARMUP + n;
    let handled = Arc::new(AtomicU64::new(0));
    let (port_tx, port_rx) = mpsc::channel::<SocketAddr>();
    let key = Key::new(SECRET);

    let receiver = {
        let handled = handled.clone();
        let key = key.clone();
        std::thread::spawn(move || {
            pin_to(1);
            if let Some(ns) = path.rx.0 {
                enter_netns(ns);
            }
            let sock = UdpSocket::bind((path.rx.1, 0)).unwrap();
            sock.set_read_timeout(Some(STALL)).unwrap();
            let mut agent = (mode == Mode::Fdm).then(|| master_agent(&key));
            let before = agent.as_ref().map(|a| a.stats().clone());
            port_tx.send(sock.local_addr().unwrap()).unwrap();
            let mut done = Vec::with_capacity(total_count);
            let mut handle = Samples::with_capacity(n);
            let mut buf = [0u8; 2048];
            for i in 0..total_count {
                let len = sock.recv(&mut buf).expect("receive");
                if let Some(a) = agent.as_mut() {
                    let t = mono_ns();
                    a.handle_datagram(Time::from_micros(t / 1_000), &buf[..len]);
                    let t1 = mono_ns();
                    done.push(t1);
                    if i >= WARMUP {
                        handle.push(Duration::from_nanos(t1 - t));
                    }
                    // The runtime would transmit these next; out of the timed part.
                    while a.poll_output().is_some() {}
                } else {
                    done.push(mono_ns());
                    assert_eq!(len, floor_bytes);
                }
                handled.store(i as u64 + 1, Ordering::Release);
            }
            if let (Some(a), Some(before)) = (agent, before) {
                let after = a.stats();
                // A dropped datagram is cheaper than a handled one: measuring drops would flatter fdm.
                assert_eq!(
                    after.datagrams_received - before.datagrams_received,
                    total_count as u64,
                    "datagrams received"
                );
                assert_eq!(
                    after.drops.total(),
                    before.drops.total(),
                    "the core dropped datagrams: {:?}",
                    after.drops
                );
                assert_eq!(
                    after.unknown_sender, before.unknown_sender,
                    "unknown sender"
                );
                assert_eq!(a.verdict_of(SENDER), Some(Verdict::Alive));
            }
            (done, handle)
        })
    };

    let to = port_rx.recv().expect("receiver failed to start");
    let sender = {
        let handled = handled.clone();
        std::thread::spawn(move || {
            pin_to(0);
            if let Some(ns) = path.tx.0 {
                enter_netns(ns);
            }
            let sock = UdpSocket::bind((path.tx.1, 0)).unwrap();
            sock.connect(to).unwrap();
            let mut started = Vec::with_capacity(total_count);
            let mut encode = Samples::with_capacity(n);
            let mut bytes = 0;
            let mut raw = vec![0x5au8; floor_bytes];
            for i in 0..total_count {
                wait_for(&handled, i as u64);
                let t0 = mono_ns();
                if mode == Mode::Fdm {
                    let d =
                        seal_from_sender(&key, YIELD_SEQ + 1 + i as u64, &heartbeat(i as u64 + 1));
                    if i >= WARMUP {
                        encode.push(Duration::from_nanos(mono_ns() - t0));
                    }
                    bytes = bytes.max(d.len());
                    assert_eq!(sock.send(&d).unwrap(), d.len());
                } else {
                    raw[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    bytes = raw.len();
                    assert_eq!(sock.send(&raw).unwrap(), raw.len());
                }
                started.push(t0);
            }
            (started, encode, bytes)
        })
    };

    let (started, encode, bytes) = match sender.join() {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    };
    let (done, handle) = match receiver.join() {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    };
    let mut total = Samples::with_capacity(n);
    for (t0, t1) in started.iter().zip(&done).skip(WARMUP) {
        total.push(Duration::from_nanos(t1 - t0));
    }
    Measured {
        total,
        encode,
        handle,
        bytes,
    }
}

/// Deletes the bench's namespaces (and with them the veth pair) when dropped, also while a panic
/// unwinds.
struct Namespaces;

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [NS_TX, NS_RX] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces joined by a veth pair, or why not.
fn veth_setup() -> Result<Namespaces, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err("`ip` (iproute2) not found".into());
    }
    // Left over by a run that was killed before it could clean up.
    for ns in [NS_TX, NS_RX] {
        let _ = ip(&["netns", "del", ns]);
    }
    ip(&["netns", "add", NS_TX])?;
    let guard = Namespaces;
    ip(&["netns", "add", NS_RX])?;
    ip(&[
        "link", "add", VETH_TX, "netns", NS_TX, "type", "veth", "peer", "name", VETH_RX, "netns",
        NS_RX,
    ])?;
    for (ns, dev, addr) in [(NS_TX, VETH_TX, ADDR_TX), (NS_RX, VETH_RX, ADDR_RX)] {
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    Ok(guard)
}

fn main() {
    let n = iterations(20_000);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split(' ').take(3).collect::<Vec<_>>().join(" ");
    let started = mono_ns();

    let mut paths = vec![Path {
        name: "loopback",
        tx: (None, Ipv4Addr::LOCALHOST),
        rx: (None, Ipv4Addr::LOCALHOST),
    }];
    let veth = veth_setup();
    let mut notes = String::new();
    match &veth {
        Ok(_) => paths.push(Path {
            name: "veth (2 netns)",
            tx: (Some(NS_TX), ADDR_TX),
            rx: (Some(NS_RX), ADDR_RX),
        }),
        Err(why) => {
            writeln!(notes, "\nveth path skipped: {why}.").unwrap();
        }
    }

    // The floor matches the size of the largest fdm datagram of the run (postcard's varint sequence
    // makes them differ by a byte or two).
    let key = Key::new(SECRET);
    let size = seal_from_sender(
        &key,
        (WARMUP + n) as u64 + 1,
        &heartbeat((WARMUP + n) as u64),
    )
    .len();

    let mut md = String::new();
    writeln!(
        md,
        "# Network heartbeat latency, sender thread -> receiver agent core\n\n\
         {n} samples per row after {WARMUP} warm-up datagrams, one datagram in flight, sender and \
         receiver pinned to CPUs 0 and 1. Load average at start: {load}. fdm: before encoding a \
         `SlaveHeartbeat` (postcard + envelope + keyed BLAKE3 MAC) until `Agent::handle_datagram` \
         (master, known sender) returned. Floor: a raw {size}-byte datagram, before `send` until \
         `recv` returned. Every fdm datagram was checked to be accepted by the core (received \
         count, no drops, sender Alive).\n\n\
         | path | payload | bytes | n | p50 us | p99 us | p99.9 us | fdm/floor p50 | fdm/floor p99 \
         | encode+MAC p50 us | handle_datagram p50 us |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    .unwrap();
    for path in &paths {
        let mut fdm = measure(*path, Mode::Fdm, n, size);
        let mut floor = measure(*path, Mode::Floor, n, size);
        let ratio = |p: f64, a: &mut Samples, b: &mut Samples| {
            a.percentile(p) as f64 / b.percentile(p).max(1) as f64
        };
        let (r50, r99) = (
            ratio(0.5, &mut fdm.total, &mut floor.total),
            ratio(0.99, &mut fdm.total, &mut floor.total),
        );
        writeln!(
            md,
            "| {} | fdm SlaveHeartbeat | {} | {} | {} | {r50:.2} | {r99:.2} | {:.1} | {:.1} |",
            path.name,
            fdm.bytes,
            fdm.total.len(),
            md_percentiles(&mut fdm.total),
            fdm.encode.percentile(0.5) as f64 / 1e3,
            fdm.handle.percentile(0.5) as f64 / 1e3,
        )
        .unwrap();
        writeln!(
            md,
            "| {} | floor: raw UDP | {} | {} | {} | 1 | 1 | - | - |",
            path.name,
            floor.bytes,
            floor.total.len(),
            md_percentiles(&mut floor.total),
        )
        .unwrap();
    }
    drop(veth);
    md.push_str(&notes);
    fdm_benches::report::finish("net_latency.md", md, (mono_ns() - started) as f64 / 1e9);
}
