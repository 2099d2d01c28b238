//! A flood of forged datagrams at the master of a real cluster (issue "Trust", item 7).
//!
//! Starts three release `fdm-agent run` processes on loopback ports (process-driver VMs, one each;
//! two temporary directories as shared datastores; `probe = "none"`, since 127.0.0.1 always answers
//! a ping), waits for a master that calls every host `alive`, then a sender thread of this process
//! sends forged datagrams at the master's port at doubling rates while the master's `/metrics` is
//! watched. Any verdict change or role change in any agent's log during a step ends the ramp: the
//! verdicts must not depend on how much garbage arrives.
//!
//! Forgeries: `random` (1-1200 random bytes), `bad-mac` (a well-formed envelope of a real slave's
//! heartbeat size with the right magic, version, cluster and recipient, sealed with a wrong key: the
//! receiver must compute the MAC to refuse it), `bad-mac-1200` (the same at the 1200-byte limit, the
//! most MAC work per datagram), `replay` (sealed with the cluster key, from a real slave's host id but
//! an earlier incarnation: authenticated, so the core decodes it and refuses it in its replay guard,
//! as it does a captured datagram replayed), `mix` (all four, interleaved).
//!
//! Each step reports the rate achieved, the sender's and the master agent's CPU (and the agent's CPU
//! per datagram it handled), the datagrams the kernel dropped at the master's socket
//! (`/proc/net/udp`), the drops the agent counted, its full receive turns and late timers, the
//! oldest slave heartbeat the master's metrics showed and the longest gap between two refreshes of
//! its metrics (it republishes every 200 ms when its event loop runs on time).
//!
//! The sender uses `sendmmsg` so that it costs less per datagram; on loopback the kernel's whole
//! delivery path (up to queueing at the master's socket) runs on the sender's CPU, so on a 2-core
//! machine the sender, not the agent, is what runs out first. `FDM_FLOOD_SENDERS=2` uses both
//! cores for sending and starves the agent of CPU instead.
//!
//!   cargo bench -p fdm-benches --bench flood                 # ramps, writes flood.md
//!   cargo bench -p fdm-benches --bench flood -- --check      # bounded: no change at R for S s
//!
//! Environment: `FDM_FLOOD_AGENT` (agent binary; default: `cargo build --release -p fdm-agent` and
//! use that), `FDM_FLOOD_LABEL` (names the binary in the report), `FDM_FLOOD_KINDS` (comma list),
//! `FDM_FLOOD_STEP_S` (seconds per step, default 6), `FDM_FLOOD_MAX_RATE`, `FDM_FLOOD_SENDERS`
//! (sender threads, default 1); check mode: `FDM_FLOOD_RATE` (default 50000 per second),
//! `FDM_FLOOD_SECONDS` (default 20), kind `mix`.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::print_stdout
)]

use fdm_agent::core::messages::{Message, SlaveHeartbeat};
use fdm_agent::driver::process::{pid_files, start_detached};
use fdm_agent::wire::{Header, Key, MAX_BODY, seal};
use heartbeat_fs::fs::DatastoreDir;
use heartbeat_fs::records::*;
use heartbeat_fs::{ClusterId, DatastoreId, HostId, VmId};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOSTS: u32 = 3;
const CLUSTER: ClusterId = ClusterId(0x7107);
const SECRET_HEX: &str = "5a";
/// A slave heartbeats its master every `heartbeat_interval` (500 ms by default).
const HEARTBEATS_PER_S_PER_SLAVE: f64 = 2.0;
/// `host_unreachable_after`, default: a slave heartbeat older than this turns the verdict.
const UNREACHABLE_AFTER_S: f64 = 1.5;
const POOL: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Random,
    BadMac,
    BadMacMax,
    Replay,
    Mix,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::BadMac,
        Kind::BadMacMax,
        Kind::Random,
        Kind::Replay,
        Kind::Mix,
    ];
    fn name(self) -> &'static str {
        match self {
            Kind::Random => "random",
            Kind::BadMac => "bad-mac",
            Kind::BadMacMax => "bad-mac-1200",
            Kind::Replay => "replay",
            Kind::Mix => "mix",
        }
    }
    fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s.trim())
    }
}

/// xorshift64*: forgeries need variety, not quality.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn heartbeat_body(seq: u64) -> Vec<u8> {
    postcard::to_stdvec(&Message::SlaveHeartbeat(SlaveHeartbeat {
        seq,
        echo_round: 0,
        token: seq.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        reachable: vec![DatastoreId(1), DatastoreId(2)],
        vm_generation: 3,
        maintenance: false,
        config_generation: 1,
    }))
    .expect("heartbeat encodes")
}

/// `POOL` forged datagrams of one kind for the master `master`, claiming to come from `slaves`.
fn forgeries(kind: Kind, master: HostId, slaves: &[HostId], rng: &mut Rng) -> Vec<Vec<u8>> {
    let secret = secret();
    let mut wrong = secret;
    wrong[0] ^= 0xff;
    let (right, wrong) = (Key::new(secret), Key::new(wrong));
    let header = |rng: &mut Rng, seq: u64, incarnation: u64| Header {
        kind: 3,
        cluster: CLUSTER,
        sender: slaves[rng.below(slaves.len() as u64) as usize],
        incarnation,
        recipient: master,
        recipient_incarnation: 0,
        sequence: seq,
    };
    if kind == Kind::Mix {
        let parts: Vec<Vec<Vec<u8>>> = [Kind::Random, Kind::BadMac, Kind::BadMacMax, Kind::Replay]
            .into_iter()
            .map(|k| forgeries(k, master, slaves, rng))
            .collect();
        return (0..POOL).map(|i| parts[i % 4][i].clone()).collect();
    }
    (1..=POOL as u64)
        .map(|seq| match kind {
            Kind::Random => {
                let n = 1 + rng.below(1200) as usize;
                rng.bytes(n)
            }
            Kind::BadMac => {
                let inc = rng.next() >> 1;
                seal(&wrong, &header(rng, seq, inc), &heartbeat_body(seq)).expect("fits")
            }
            Kind::BadMacMax => {
                let inc = rng.next() >> 1;
                let body = rng.bytes(MAX_BODY);
                seal(&wrong, &header(rng, seq, inc), &body).expect("fits")
            }
            // Incarnation 1 is older than any real agent's (milliseconds since the epoch at start):
            // authentic, and never accepted.
            Kind::Replay => seal(&right, &header(rng, seq, 1), &heartbeat_body(seq)).expect("fits"),
            Kind::Mix => unreachable!("interleaved above"),
        })
        .collect()
}

fn secret() -> [u8; 32] {
    let b = u8::from_str_radix(SECRET_HEX, 16).expect("hex");
    [b; 32]
}

// ----- the cluster -------------------------------------------------------------------------------

struct AgentProc {
    id: u32,
    dir: PathBuf,
    port: u16,
    metrics: u16,
    child: Option<Child>,
}

impl AgentProc {
    fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

struct Cluster {
    _tmp: tempfile::TempDir,
    agents: Vec<AgentProc>,
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free TCP port")
}

fn cluster_config(ports: &[u16], ds: &[PathBuf]) -> ClusterConfig {
    let host = |i: u32| {
        HostConfig::new(HostId(i), format!("127.0.0.1:{}", ports[i as usize - 1]))
            .with_name(format!("host{i}"))
            .with_capacity(Resources::new(8_000, 8_192))
    };
    let vm = |v: u32| {
        VmConfig::new(VmId(v), DatastoreId(1 + (v % 2))).with_definition("exec sleep 100000")
    };
    ClusterConfig::new(CLUSTER)
        .with_hosts((1..=HOSTS).map(host))
        .with_shared_datastores(ds.iter().map(|p| p.display().to_string()))
        .with_vms((1..=HOSTS).map(vm))
}

impl Cluster {
    fn start(exe: &Path) -> Result<Cluster, String> {
        let tmp = tempfile::Builder::new()
            .prefix("fdm-flood-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let root = tmp.path().to_path_buf();
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        let ds: Vec<PathBuf> = (1..=2).map(|i| root.join(format!("ds{i}"))).collect();
        for d in &ds {
            std::fs::create_dir_all(d).map_err(|e| io("datastore directory", e))?;
        }
        std::fs::write(root.join("secret"), SECRET_HEX.repeat(32)).map_err(|e| io("secret", e))?;
        let ports: Vec<u16> = (0..HOSTS).map(|_| free_udp_port()).collect();
        let config = cluster_config(&ports, &ds);
        for d in &ds {
            DatastoreDir::open(d)
                .and_then(|dir| dir.write_config(&config))
                .map_err(|e| {
                    format!("writing the cluster configuration to {}: {e}", d.display())
                })?;
        }
        let seeds: String = (1..=HOSTS)
            .map(|h| {
                format!(
                    "[[seed_hosts]]\nid = {h}\naddress = \"127.0.0.1:{}\"\n",
                    ports[h as usize - 1]
                )
            })
            .collect();
        let mut agents = Vec::new();
        for id in 1..=HOSTS {
            let dir = root.join(format!("host{id}"));
            std::fs::create_dir_all(dir.join("state")).map_err(|e| io("state directory", e))?;
            let metrics = free_tcp_port();
            let toml = format!(
                "host_id = {id}\ncluster_id = {}\nsecret_file = \"{}\"\nbind = \"127.0.0.1:{}\"\n\
                 state_dir = \"{}\"\nmetrics = \"127.0.0.1:{metrics}\"\nprobe = \"none\"\n\
                 [driver]\nkind = \"process\"\n\
                 [[datastores]]\nid = 1\npath = \"{}\"\n[[datastores]]\nid = 2\npath = \"{}\"\n{seeds}",
                CLUSTER.0,
                root.join("secret").display(),
                ports[id as usize - 1],
                dir.join("state").display(),
                ds[0].display(),
                ds[1].display(),
            );
            std::fs::write(dir.join("agent.toml"), toml).map_err(|e| io("agent.toml", e))?;
            let def = &config.vm(VmId(id)).expect("configured").definition;
            start_detached(
                &dir.join("state").join("vms"),
                &id.to_string(),
                VmId(id),
                def,
            )
            .map_err(|e| io("starting a VM process", e))?;
            agents.push(AgentProc {
                id,
                dir,
                port: ports[id as usize - 1],
                metrics,
                child: None,
            });
        }
        for a in agents.iter_mut() {
            let log = std::fs::File::create(a.log()).map_err(|e| io("agent log", e))?;
            let child = Command::new(exe)
                .args(["--log-format", "json", "run", "--config"])
                .arg(a.dir.join("agent.toml"))
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("starting {}: {e}", exe.display()))?;
            a.child = Some(child);
        }
        Ok(Cluster { _tmp: tmp, agents })
    }

    /// The master and its metrics, if one agent says it is master.
    fn master(&self) -> Option<(usize, String)> {
        self.agents.iter().enumerate().find_map(|(i, a)| {
            let m = metrics(a.metrics)?;
            (value(&m, "fdm_role{role=\"master\"}") == Some(1.0)).then_some((i, m))
        })
    }

    /// Wait for a master that calls every host alive, then for `quiet` without any verdict or role
    /// change. Returns the master's index.
    fn settle(&self, quiet: Duration) -> Result<usize, String> {
        let t0 = Instant::now();
        loop {
            if let Some((i, m)) = self.master()
                && (1..=HOSTS).all(|h| verdict(&m, h) == Some("alive"))
            {
                let marks = self.log_marks();
                std::thread::sleep(quiet);
                if self.changes_since(&marks).is_empty()
                    && self.master().is_some_and(|(j, _)| j == i)
                {
                    return Ok(i);
                }
            }
            if t0.elapsed() > Duration::from_secs(40) {
                return Err(
                    "no stable master with every host alive after 40 s (agent logs in the temporary directory)".into(),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_marks(&self) -> Vec<u64> {
        self.agents
            .iter()
            .map(|a| std::fs::metadata(a.log()).map(|m| m.len()).unwrap_or(0))
            .collect()
    }

    /// Verdict and role changes logged after `marks`, in words.
    fn changes_since(&self, marks: &[u64]) -> Vec<String> {
        let mut out = Vec::new();
        for (a, &mark) in self.agents.iter().zip(marks) {
            let Ok(mut f) = std::fs::File::open(a.log()) else {
                continue;
            };
            let mut text = String::new();
            let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(mark));
            let _ = f.read_to_string(&mut text);
            for line in text.lines() {
                if let Some(c) = describe_change(line) {
                    out.push(format!("host{}: {c}", a.id));
                }
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in self.agents.iter_mut() {
            if let Some(mut c) = a.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            for (_, pid) in pid_files(&a.dir.join("state").join("vms")) {
                // SAFETY: kill the VM's own process group, started by this bench.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// A verdict or role change in the events' own words (`host-2 declared unreachable: ...`,
/// `role changed from master to candidate: ...`), from a JSON log line, told apart by its `event`
/// field.
fn describe_change(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = &v["fields"];
    match fields["event"].as_str()? {
        "verdict-changed" | "role-changed" => fields["message"].as_str().map(str::to_string),
        _ => None,
    }
}

fn metrics(port: u16) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn verdict(metrics: &str, host: u32) -> Option<&'static str> {
    ["alive", "unreachable", "partitioned", "isolated", "dead"]
        .into_iter()
        .find(|v| {
            value(
                metrics,
                &format!("fdm_host_verdict{{host=\"{host}\",verdict=\"{v}\"}}"),
            ) == Some(1.0)
        })
}

fn dropped_total(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("fdm_datagrams_dropped_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

// ----- measurements --------------------------------------------------------------------------------

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// User + system CPU seconds of a process (all its threads).
fn process_cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which may itself hold spaces and parentheses.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / clk_tck()
}

fn thread_cpu_s() -> f64 {
    // SAFETY: `ru` is a valid, writable rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD on the calling thread, `ru` valid.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The kernel's drop counter of the UDP socket bound to 127.0.0.1:`port`.
fn kernel_drops(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()))
            .then(|| f.last()?.parse().ok())
            .flatten()
    })
}

struct Sent {
    sent: u64,
    secs: f64,
    cpu_s: f64,
}

/// Datagrams per `sendmmsg` call: one system call per batch keeps the sender's own cost down, so
/// that it can outpace the agent for longer on a small machine.
const SEND_BATCH: usize = 64;

/// Send `pool` round-robin (from `offset`) to `to` at `rate` per second for `dur`, paced against
/// the clock: behind schedule it sends back to back, so a rate it cannot reach shows as a shortfall.
fn flood(to: SocketAddr, pool: Arc<Vec<Vec<u8>>>, offset: usize, rate: u64, dur: Duration) -> Sent {
    use std::os::fd::AsRawFd;
    let sock = UdpSocket::bind("127.0.0.1:0").expect("sender socket");
    sock.connect(to).expect("connect to the master's port");
    let cpu0 = thread_cpu_s();
    let t0 = Instant::now();
    let mut sent: u64 = 0;
    let mut next = offset % pool.len();
    loop {
        let el = t0.elapsed();
        if el >= dur {
            break;
        }
        let due = (el.as_secs_f64() * rate as f64) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let n = ((due - sent) as usize).min(SEND_BATCH);
        let mut iov: Vec<libc::iovec> = (0..n)
            .map(|i| {
                let d = &pool[(next + i) % pool.len()];
                libc::iovec {
                    iov_base: d.as_ptr() as *mut libc::c_void,
                    iov_len: d.len(),
                }
            })
            .collect();
        // SAFETY: mmsghdr is plain data; all-zero is a valid (empty) value.
        let mut hdrs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (h, v) in hdrs.iter_mut().zip(iov.iter_mut()) {
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `n` headers, each with one iovec over a live pool datagram that the kernel only
        // reads; the socket is connected, so no address is given.
        let r =
            unsafe { libc::sendmmsg(sock.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
        // A refused batch (the loopback queue full) still counts as sent: the datagrams were
        // offered, and it is the receiver's fate that matters. Only the count is kept.
        let done = usize::try_from(r).unwrap_or(0).max(1).min(n);
        sent += done as u64;
        next = (next + done) % pool.len();
    }
    Sent {
        sent,
        secs: t0.elapsed().as_secs_f64(),
        cpu_s: thread_cpu_s() - cpu0,
    }
}

/// Counters of the master's `/metrics`, read before and after a step.
#[derive(Clone, Copy, Default)]
struct AgentCounters {
    received: f64,
    dropped: f64,
    kernel_drops: f64,
    late_timers: f64,
    full_turns: f64,
}

impl AgentCounters {
    fn read(metrics_text: &str) -> AgentCounters {
        let v = |name: &str| value(metrics_text, name).unwrap_or(0.0);
        AgentCounters {
            received: v("fdm_datagrams_received_total"),
            dropped: dropped_total(metrics_text),
            kernel_drops: v("fdm_udp_kernel_drops_total"),
            late_timers: v("fdm_timers_late_total"),
            full_turns: v("fdm_udp_full_receive_turns_total"),
        }
    }
    fn since(self, before: AgentCounters) -> AgentCounters {
        AgentCounters {
            received: self.received - before.received,
            dropped: self.dropped - before.dropped,
            kernel_drops: self.kernel_drops - before.kernel_drops,
            late_timers: self.late_timers - before.late_timers,
            full_turns: self.full_turns - before.full_turns,
        }
    }
}

struct Step {
    rate: u64,
    achieved: f64,
    sender_cpu: f64,
    agent_cpu: f64,
    /// CPU seconds of the master agent over the datagrams it handled, microseconds.
    agent_us_per_datagram: Option<f64>,
    kernel_drops: Option<u64>,
    agent: AgentCounters,
    max_net_age: f64,
    max_refresh_gap: f64,
    changes: Vec<String>,
}

impl Step {
    fn sender_saturated(&self) -> bool {
        self.achieved < 0.9 * self.rate as f64
    }
    fn agent_saturated(&self) -> bool {
        self.agent_cpu >= 0.95
    }
}

/// One step: flood the master at `rate` for `dur` and watch it.
fn step(
    c: &Cluster,
    master: usize,
    kind_pool: &Arc<Vec<Vec<u8>>>,
    rate: u64,
    dur: Duration,
) -> Step {
    let m = &c.agents[master];
    let pid = m.pid().expect("master running");
    let to = SocketAddr::from(([127, 0, 0, 1], m.port));
    let marks = c.log_marks();
    let k0 = kernel_drops(m.port);
    let a0 = metrics(m.metrics)
        .map(|t| AgentCounters::read(&t))
        .unwrap_or_default();
    let cpu0 = process_cpu_s(pid);
    let t0 = Instant::now();
    let threads = senders();
    let senders: Vec<_> = (0..threads)
        .map(|i| {
            let pool = kind_pool.clone();
            // Each thread its share of the rate and its own part of the pool.
            let share = rate / threads as u64 + u64::from((i as u64) < rate % threads as u64);
            std::thread::spawn(move || flood(to, pool, i * POOL / threads, share, dur))
        })
        .collect();
    let (mut max_age, mut max_gap) = (0.0f64, 0.0f64);
    let mut last_text = String::new();
    let mut last_change = Instant::now();
    while !senders.iter().all(|s| s.is_finished()) {
        if let Some(t) = metrics(m.metrics) {
            // The ages without the first column change on every refresh.
            let ages: String = t
                .lines()
                .filter(|l| l.starts_with("fdm_heartbeat_age_seconds"))
                .collect();
            if ages != last_text {
                max_gap = max_gap.max(last_change.elapsed().as_secs_f64());
                last_change = Instant::now();
                last_text = ages;
            }
            for h in 1..=HOSTS {
                if let Some(a) = value(
                    &t,
                    &format!("fdm_heartbeat_age_seconds{{host=\"{h}\",channel=\"network\"}}"),
                ) {
                    max_age = max_age.max(a);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent: Vec<Sent> = senders
        .into_iter()
        .map(|s| s.join().expect("sender thread"))
        .collect();
    let cpu = process_cpu_s(pid) - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    // The last datagrams in flight and the kernel's counters settle within a moment (the agent
    // republishes its metrics every 200 ms).
    std::thread::sleep(Duration::from_millis(450));
    let k1 = kernel_drops(m.port);
    let agent = metrics(m.metrics)
        .map(|t| AgentCounters::read(&t).since(a0))
        .unwrap_or_default();
    let secs = sent.iter().map(|s| s.secs).fold(0.0, f64::max).max(1e-9);
    Step {
        rate,
        achieved: sent.iter().map(|s| s.sent).sum::<u64>() as f64 / secs,
        sender_cpu: sent.iter().map(|s| s.cpu_s).sum::<f64>() / secs,
        agent_cpu: cpu / wall,
        agent_us_per_datagram: (agent.received >= 1000.0).then(|| 1e6 * cpu / agent.received),
        kernel_drops: k0.zip(k1).map(|(a, b)| b.saturating_sub(a)),
        agent,
        max_net_age: max_age,
        max_refresh_gap: max_gap,
        changes: c.changes_since(&marks),
    }
}

fn pool_for(kind: Kind, master: u32) -> Arc<Vec<Vec<u8>>> {
    let slaves: Vec<HostId> = (1..=HOSTS).filter(|&h| h != master).map(HostId).collect();
    let mut rng = Rng(0x5eed ^ u64::from(master));
    Arc::new(forgeries(kind, HostId(master), &slaves, &mut rng))
}

fn row(kind: &str, s: &Step) -> String {
    let kd = s.kernel_drops.map_or("n/a".to_string(), |d| d.to_string());
    let us = s
        .agent_us_per_datagram
        .map_or("".to_string(), |u| format!("{u:.2}"));
    let verdicts = if s.changes.is_empty() {
        "none".to_string()
    } else {
        s.changes.join("; ")
    };
    format!(
        "| {kind} | {} | {:.0} | {:.0} % | {:.0} % | {us} | {kd} | {:.0} | {:.0} | {:.0} | {:.2} s | {:.2} s | {verdicts} |",
        s.rate,
        s.achieved,
        100.0 * s.sender_cpu,
        100.0 * s.agent_cpu,
        s.agent.dropped,
        s.agent.full_turns,
        s.agent.late_timers,
        s.max_net_age,
        s.max_refresh_gap,
    )
}

const TABLE_HEAD: &str = "| forgery | target /s | sent /s | sender CPU | master agent CPU | agent CPU us per datagram | kernel drops | agent drops | full receive turns | late timers | oldest slave heartbeat | longest metrics gap | verdict or role changes |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";

/// Sender threads (`FDM_FLOOD_SENDERS`, default 1).
fn senders() -> usize {
    (env_num("FDM_FLOOD_SENDERS", 1) as usize).clamp(1, 16)
}

// ----- the agent binary ------------------------------------------------------------------------------

fn agent_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("FDM_FLOOD_AGENT") {
        return Ok(PathBuf::from(p));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let st = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "fdm-agent",
            "--bin",
            "fdm-agent",
        ])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("cargo build: {e}"))?;
    if !st.success() {
        return Err("cargo build --release -p fdm-agent failed".into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release").join("fdm-agent"))
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

// ----- modes -------------------------------------------------------------------------------------------

/// Bounded mode: `rate` of mixed forgeries for `secs`; fails on any verdict or role change, on a
/// slave heartbeat as old as `host_unreachable_after`, or when the flood did not happen as asked
/// (the sender fell short of the rate, or the master did not refuse the datagrams): then nothing
/// was shown.
///
/// The defaults (50 000 per second, 12 500 times the master's real heartbeat rate and above the 43 000
/// per second that once turned verdicts, for 20 s) finish in about 27 s and leave room on a
/// 2-core machine that builds at the same time: the ramp's figures are three to four times that.
fn check(exe: &Path) -> Result<(), String> {
    let rate = env_num("FDM_FLOOD_RATE", 50_000);
    let secs = env_num("FDM_FLOOD_SECONDS", 20);
    let t0 = Instant::now();
    let c = Cluster::start(exe)?;
    let master = c.settle(Duration::from_secs(2))?;
    let id = c.agents[master].id;
    let pool = pool_for(Kind::Mix, id);
    println!(
        "flood check: master host{id} settled after {:.1} s; {rate} forged datagrams/s (mix) for {secs} s",
        t0.elapsed().as_secs_f64()
    );
    let s = step(&c, master, &pool, rate, Duration::from_secs(secs));
    println!("{TABLE_HEAD}{}", row("mix", &s));
    let mut problems = Vec::new();
    if !s.changes.is_empty() {
        problems.push(format!("verdict or role changes: {}", s.changes.join("; ")));
    }
    if s.max_net_age >= UNREACHABLE_AFTER_S {
        problems.push(format!(
            "a slave heartbeat was {:.2} s old at the master (unreachable after {UNREACHABLE_AFTER_S} s)",
            s.max_net_age
        ));
    }
    if s.sender_saturated() {
        problems.push(format!(
            "the sender reached {:.0} of {rate} datagrams/s: the check proved nothing; lower FDM_FLOOD_RATE",
            s.achieved
        ));
    }
    let sent = s.achieved * secs as f64;
    let refused = s.agent.dropped + s.kernel_drops.unwrap_or(0) as f64;
    if refused < 0.9 * sent {
        problems.push(format!(
            "the master refused or lost only {refused:.0} of about {sent:.0} forged datagrams: the flood did not reach it, so the check proved nothing"
        ));
    }
    println!("flood check: {:.1} s wall", t0.elapsed().as_secs_f64());
    if problems.is_empty() {
        println!("flood check: passed");
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

struct Ramp {
    kind: Kind,
    steps: Vec<Step>,
    /// `fdm_udp_receive_buffer_bytes` of the master.
    receive_buffer: Option<f64>,
}

impl Ramp {
    /// The highest rate with no verdict change, and the step it was.
    fn best(&self) -> Option<&Step> {
        self.steps.iter().rev().find(|s| s.changes.is_empty())
    }
    /// The highest rate at which the kernel dropped nothing at the master's socket: the agent kept
    /// up with every datagram.
    fn clean(&self) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|s| s.rate > 0 && s.kernel_drops == Some(0) && s.changes.is_empty())
            .max_by(|a, b| a.achieved.total_cmp(&b.achieved))
    }
    fn ended(&self) -> &'static str {
        match self.steps.last() {
            Some(s) if !s.changes.is_empty() => "verdict changed",
            Some(s) if s.sender_saturated() => "sender saturated",
            Some(s) if s.agent_saturated() => "agent saturated a core",
            _ => "maximum rate reached",
        }
    }
}

fn ramp(exe: &Path, kind: Kind, step_s: u64, max_rate: u64) -> Result<Ramp, String> {
    let c = Cluster::start(exe)?;
    let master = c.settle(Duration::from_secs(3))?;
    let pool = pool_for(kind, c.agents[master].id);
    let mut steps = Vec::new();
    let mut rate = 1_000;
    // Rate 0 first: the same figures without any flood, the reference for the rest.
    let quiet = step(&c, master, &pool, 0, Duration::from_secs(step_s));
    eprintln!("{}", row(kind.name(), &quiet));
    steps.push(quiet);
    while rate <= max_rate {
        let s = step(&c, master, &pool, rate, Duration::from_secs(step_s));
        eprintln!("{}", row(kind.name(), &s));
        let stop = !s.changes.is_empty() || s.sender_saturated() || s.agent_saturated();
        steps.push(s);
        if stop {
            break;
        }
        rate *= 2;
        // Let the socket queue drain so that each step starts from the same state.
        std::thread::sleep(Duration::from_millis(500));
    }
    let receive_buffer =
        metrics(c.agents[master].metrics).and_then(|t| value(&t, "fdm_udp_receive_buffer_bytes"));
    Ok(Ramp {
        kind,
        steps,
        receive_buffer,
    })
}

fn full(exe: &Path) -> Result<(), String> {
    let t0 = Instant::now();
    let kinds: Vec<Kind> = match std::env::var("FDM_FLOOD_KINDS") {
        Ok(v) => v
            .split(',')
            .map(|k| Kind::parse(k).ok_or_else(|| format!("unknown forgery kind `{k}`")))
            .collect::<Result<_, _>>()?,
        Err(_) => Kind::ALL.to_vec(),
    };
    let step_s = env_num("FDM_FLOOD_STEP_S", 6);
    let max_rate = env_num("FDM_FLOOD_MAX_RATE", 1 << 20);
    let label = std::env::var("FDM_FLOOD_LABEL").unwrap_or_else(|_| "this tree".into());
    let mut ramps = Vec::new();
    for k in kinds {
        eprintln!("flood: {} ramp", k.name());
        ramps.push(ramp(exe, k, step_s, max_rate)?);
    }
    let slaves_rate = f64::from(HOSTS - 1) * HEARTBEATS_PER_S_PER_SLAVE;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Forged-datagram flood at a real master (benches/benches/flood.rs)\n\n\
         {HOSTS} release agents on loopback (agent: {label}, `{}`), two temporary datastores, one \
         process VM each, `probe = \"none\"`. {senders} sender thread(s) of the bench send forged \
         datagrams (`sendmmsg`, {SEND_BATCH} per call) at the master's port, doubling the rate each \
         {step_s} s step from 1000/s (the first row of each ramp is the same {step_s} s without a \
         flood); a ramp ends at the first verdict or role change in any agent's log, or when the \
         sender falls 10 % short of the rate, or when the master agent uses 95 % of a core. The \
         master receives {slaves_rate:.0} real slave heartbeats per second; its UDP receive buffer \
         as granted: {rcvbuf}. \"Kernel drops\": datagrams the kernel dropped at the master's socket \
         (queue full: the agent fell behind; real heartbeats are dropped alike). \"Agent CPU per \
         datagram\": the master agent's CPU time over the datagrams it handled (at low rates mostly \
         the cost of waking up). \"Full receive turns\": turns of its event loop that handled the \
         whole per-turn budget of datagrams; \"late timers\": timer expiries handled more than 50 ms \
         late. \"Oldest slave heartbeat\": the largest network heartbeat age in the master's \
         metrics, sampled every 20 ms (it turns a verdict at {UNREACHABLE_AFTER_S} s); \"longest \
         metrics gap\": the longest time the master's metrics did not refresh (it republishes every \
         200 ms when its event loop runs on time).\n",
        exe.display(),
        senders = senders(),
        rcvbuf =
            ramps
                .iter()
                .find_map(|r| r.receive_buffer)
                .map_or("unknown".to_string(), |b| format!(
                    "{:.0} MiB",
                    b / 1048576.0
                )),
    );
    md.push_str("| forgery | highest rate with no verdict change | x real heartbeat rate | master agent CPU there | kernel drops there | highest rate without kernel drops | agent CPU per datagram there | one core's worth at that cost | ramp ended |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in &ramps {
        let clean = r.clean();
        let (clean_rate, clean_us, ceiling) = match clean {
            Some(c) => (
                format!("{:.0} /s", c.achieved),
                c.agent_us_per_datagram
                    .map_or(String::new(), |u| format!("{u:.2} us")),
                c.agent_us_per_datagram
                    .map_or(String::new(), |u| format!("{:.0} /s", 1e6 / u)),
            ),
            None => ("none".into(), String::new(), String::new()),
        };
        match r.best() {
            Some(b) => {
                let kd = match b.kernel_drops {
                    Some(d) if b.achieved > 0.0 => format!(
                        "{d} ({:.1} %)",
                        100.0 * d as f64 / (b.achieved * step_s as f64)
                    ),
                    Some(d) => d.to_string(),
                    None => "n/a".into(),
                };
                let _ = writeln!(
                    md,
                    "| {} | {:.0} /s | {:.0} | {:.0} % | {kd} | {clean_rate} | {clean_us} | {ceiling} | {} |",
                    r.kind.name(),
                    b.achieved,
                    b.achieved / slaves_rate,
                    100.0 * b.agent_cpu,
                    r.ended()
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "| {} | none | | | | {clean_rate} | {clean_us} | {ceiling} | {} |",
                    r.kind.name(),
                    r.ended()
                );
            }
        }
    }
    md.push('\n');
    md.push_str(TABLE_HEAD);
    for r in &ramps {
        for s in &r.steps {
            md.push_str(&row(r.kind.name(), s));
            md.push('\n');
        }
    }
    fdm_benches::report::finish("flood.md", md, t0.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    let is_check = args.iter().any(|a| a == "--check");
    if !is_check && !args.iter().any(|a| a == "--bench") {
        println!(
            "flood: smoke run (no --bench): nothing measured; cargo bench -p fdm-benches --bench flood"
        );
        return ExitCode::SUCCESS;
    }
    let result = agent_binary().and_then(|exe| if is_check { check(&exe) } else { full(&exe) });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flood: {e}");
            ExitCode::FAILURE
        }
    }
}
