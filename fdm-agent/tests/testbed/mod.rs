//! A cluster of real `fdm-agent` processes on one machine, one network namespace per host.
//!
//! Hosts are joined by a bridge that lives in its own "switch" namespace; host addresses (10.77.0.x)
//! exist only inside the namespaces. Datastores are shared directories (optionally seen by one host
//! through its own bindfs view, so that one host alone can lose or hang a datastore). VMs are
//! process-driver VMs: each one appends a start record to a shared ledger, and a monitor thread
//! samples every host's pid files (the driver's own records) to catch any VM running twice.
//!
//! Needs root, `ip`, `nft` and `ping`; `unavailable` says why not when it cannot run.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::print_stdout
)]

use fdm_agent::driver::process::{alive, running_vm_pids};
pub use fdm_agent::wait::wait_until;
use heartbeat_fs::fs::DatastoreDir;
use heartbeat_fs::records::*;
use heartbeat_fs::{ClusterId, DatastoreId, HostId, VmId};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SUBNET: &str = "10.77.0";
pub const GATEWAY: &str = "10.77.0.254";
const AGENT_PORT: u16 = 7001;

/// Why the multi-host tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces)".into());
    }
    for tool in ["ip", "nft", "ping"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "`{tool}` missing: run scripts/install-test-deps.sh"
            ));
        }
    }
    None
}

/// Multi-host tests run one at a time: they share the machine's two cores and the protocol's
/// timings are real time.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn sh(cmd: &str) -> Result<String, String> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn must(cmd: &str) -> String {
    sh(cmd).unwrap_or_else(|e| panic!("testbed: {e}"))
}

/// `(vm, pid)` of every VM process alive in a process-driver state directory (the driver's own
/// records).
pub fn running_in(vm_dir: &Path) -> Vec<(u32, i32)> {
    running_vm_pids(vm_dir)
        .into_iter()
        .map(|(vm, pid)| (vm.0, pid))
        .collect()
}

#[derive(Debug, Clone)]
pub struct Options {
    pub hosts: u32,
    pub datastores: u32,
    pub vms: u32,
    /// Hosts that see every datastore through their own bindfs view (for per-host storage faults).
    pub fuse_views: Vec<u32>,
    /// Each host runs its own libvirtd (QEMU under TCG) and the agents use the libvirt driver;
    /// VMs are small diskless QEMU domains.
    pub libvirt: bool,
    /// Agents kick a fake watchdog (a kick file); the testbed resets (kills) a host whose kicks stop
    /// for `WATCHDOG_RESET` once armed, as a hardware watchdog would.
    pub watchdog: bool,
}

/// How long a fake watchdog waits for a kick before it resets the host (the agent's
/// `watchdog_timeout` is 1 s; the harness polls every 100 ms).
pub const WATCHDOG_RESET: Duration = Duration::from_millis(1500);

impl Default for Options {
    fn default() -> Self {
        Options {
            hosts: 4,
            datastores: 2,
            vms: 8,
            fuse_views: Vec::new(),
            libvirt: false,
            watchdog: false,
        }
    }
}

#[derive(Debug)]
pub struct TestHost {
    pub id: u32,
    pub ns: String,
    /// The host's port on the switch.
    pub port: String,
    pub dir: PathBuf,
    pub agent: Option<Child>,
    /// bindfs daemons of this host's datastore views, by datastore id.
    pub views: BTreeMap<u32, (PathBuf, i32)>,
    pub libvirt: bool,
}

impl TestHost {
    pub fn addr(&self) -> String {
        format!("{SUBNET}.{}", self.id)
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
    pub fn vm_dir(&self) -> PathBuf {
        self.dir.join("state").join("vms")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
    pub fn running(&self) -> Vec<(u32, i32)> {
        running_on(&self.ns, &self.vm_dir(), self.libvirt)
    }
    pub fn libvirt_uri(&self) -> String {
        format!(
            "qemu+unix:///system?socket={}/libvirt/libvirt-sock",
            self.dir.display()
        )
    }
    pub fn virsh(&self, args: &str) -> Result<String, String> {
        sh(&format!("virsh -q -c '{}' {args}", self.libvirt_uri()))
    }
    pub fn vms(&self) -> Vec<u32> {
        self.running().into_iter().map(|(v, _)| v).collect()
    }
    pub fn status(&self) -> Option<serde_json::Value> {
        fdm_agent::runtime::status::query(&self.socket(), "status")
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
    }
}

/// A VM seen on more than one host at the same sample.
/// VMs running on a host, from the hypervisor's own records: the process driver's pid files, or
/// the QEMU processes of the host's namespace (`-name guest=fdmvm<N>`).
pub fn running_on(ns: &str, vm_dir: &Path, libvirt: bool) -> Vec<(u32, i32)> {
    if !libvirt {
        return running_in(vm_dir);
    }
    let Ok(pids) = sh(&format!("ip netns pids {ns}")) else {
        return Vec::new();
    };
    let mut v: Vec<(u32, i32)> = pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|&p| alive(p))
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd);
            let rest = cmd.split_once("guest=fdmvm")?.1;
            let id: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            Some((id.parse().ok()?, pid))
        })
        .collect();
    v.sort();
    v
}

/// A diskless QEMU domain: boots into firmware with nothing to boot and idles (TESTBED.md).
pub fn qemu_domain(vm: u32) -> String {
    format!(
        "<domain type='qemu'><name>fdmvm{vm}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><on_crash>destroy</on_crash>\
         <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>"
    )
}

// Read through `Debug`, in the assertion message that reports a double run.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct DoubleRun {
    pub at: Duration,
    pub vm: u32,
    pub hosts: Vec<u32>,
}

#[derive(Debug)]
struct Monitor {
    stop: Arc<AtomicBool>,
    doubles: Arc<Mutex<Vec<DoubleRun>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
pub struct Testbed {
    pub root: PathBuf,
    _tmp: tempfile::TempDir,
    pub switch: String,
    pub hosts: Vec<TestHost>,
    pub datastores: Vec<PathBuf>,
    pub ledger: PathBuf,
    pub config: ClusterConfig,
    pub started: Instant,
    exe: PathBuf,
    monitor: Monitor,
    watchdog: bool,
    /// Hosts the fake watchdog reset, with the time.
    pub resets: Arc<Mutex<Vec<(u32, Duration)>>>,
    partitioned: bool,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A process VM that records its start in the shared ledger, then idles.
fn process_vm(ledger: &Path) -> String {
    format!(
        "echo \"$(date +%s.%N) start vm=$FDM_VM host=$FDM_HOST pid=$$\" >> {}; exec sleep 100000",
        ledger.display()
    )
}

impl Testbed {
    pub fn new(opts: Options) -> Testbed {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Interface names are limited to 15 bytes: keep the tag short.
        let tag = format!(
            "f{}{}",
            std::process::id() % 10_000,
            (b'a' + n as u8) as char
        );
        let tmp = tempfile::Builder::new()
            .prefix(&format!("fdm-{tag}-"))
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().to_path_buf();
        let switch = format!("{tag}-sw");
        must(&format!(
            "ip netns add {switch} && ip -n {switch} link set lo up && \
             ip -n {switch} link add br0 type bridge && \
             ip -n {switch} addr add {GATEWAY}/24 dev br0 && ip -n {switch} link set br0 up"
        ));
        let mut tb = Testbed {
            root: root.clone(),
            _tmp: tmp,
            switch: switch.clone(),
            hosts: Vec::new(),
            datastores: Vec::new(),
            ledger: root.join("vm-starts.log"),
            config: ClusterConfig::new(ClusterId(77)),
            started: Instant::now(),
            exe: PathBuf::from(env!("CARGO_BIN_EXE_fdm-agent")),
            monitor: Monitor {
                stop: Arc::new(AtomicBool::new(false)),
                doubles: Arc::default(),
                thread: None,
            },
            partitioned: false,
            watchdog: opts.watchdog,
            resets: Arc::default(),
        };
        for d in 1..=opts.datastores {
            let p = root.join(format!("ds{d}"));
            std::fs::create_dir_all(&p).expect("datastore dir");
            tb.datastores.push(p);
        }
        std::fs::write(root.join("secret"), "3c".repeat(32)).expect("secret");
        for id in 1..=opts.hosts {
            let ns = format!("{tag}-h{id}");
            let port = format!("{tag}p{id}");
            must(&format!(
                "ip netns add {ns} && ip -n {ns} link set lo up && \
                 ip link add {port} netns {switch} type veth peer name eth0 netns {ns} && \
                 ip -n {switch} link set {port} master br0 up && \
                 ip -n {ns} addr add {SUBNET}.{id}/24 dev eth0 && ip -n {ns} link set eth0 up"
            ));
            let dir = root.join(format!("host{id}"));
            std::fs::create_dir_all(dir.join("state").join("vms")).expect("host dir");
            let mut views = BTreeMap::new();
            if opts.fuse_views.contains(&id) {
                for (i, shared) in tb.datastores.iter().enumerate() {
                    let view = dir.join(format!("view-ds{}", i + 1));
                    std::fs::create_dir_all(&view).expect("view dir");
                    must(&format!(
                        "bindfs -o attr_timeout=0,entry_timeout=0,negative_timeout=0 {} {}",
                        shared.display(),
                        view.display()
                    ));
                    let pid = bindfs_pid(&view).expect("bindfs pid");
                    views.insert(i as u32 + 1, (view, pid));
                }
            }
            tb.hosts.push(TestHost {
                id,
                ns,
                port,
                dir,
                agent: None,
                views,
                libvirt: opts.libvirt,
            });
        }
        if opts.libvirt {
            for h in &tb.hosts {
                start_libvirtd(h);
            }
            for h in &tb.hosts {
                assert!(
                    wait_for(Duration::from_secs(90), || h.virsh("version").is_ok()),
                    "libvirtd of host{} did not answer (log in {})",
                    h.id,
                    h.dir.join("libvirtd.log").display()
                );
            }
        }
        tb.config = tb.cluster_config(&opts);
        for d in &tb.datastores {
            DatastoreDir::open(d)
                .expect("datastore")
                .write_config(&tb.config)
                .expect("config");
        }
        for h in &tb.hosts {
            let ds: String = (1..=opts.datastores)
                .map(|d| {
                    let path = h
                        .views
                        .get(&d)
                        .map(|(p, _)| p.clone())
                        .unwrap_or_else(|| tb.datastores[d as usize - 1].clone());
                    format!("[[datastores]]\nid = {d}\npath = \"{}\"\n", path.display())
                })
                .collect();
            let seeds: String = (1..=opts.hosts)
                .map(|s| {
                    format!("[[seed_hosts]]\nid = {s}\naddress = \"{SUBNET}.{s}:{AGENT_PORT}\"\n")
                })
                .collect();
            let driver = if opts.libvirt {
                format!(
                    "[driver]\nkind = \"libvirt\"\nuri = \"{}\"\n",
                    h.libvirt_uri()
                )
            } else {
                "[driver]\nkind = \"process\"\n".to_string()
            };
            let toml = format!(
                "host_id = {}\ncluster_id = 77\nsecret_file = \"{}\"\nbind = \"{}:{AGENT_PORT}\"\n\
                 state_dir = \"{}\"\nstatus_socket = \"{}\"\nprobe = \"icmp\"\n{}\n{driver}{ds}{seeds}",
                h.id,
                root.join("secret").display(),
                h.addr(),
                h.dir.join("state").display(),
                h.socket().display(),
                if opts.watchdog {
                    format!("watchdog = \"file:{}\"", h.dir.join("watchdog").display())
                } else {
                    String::new()
                },
            );
            std::fs::write(h.dir.join("agent.toml"), toml).expect("agent.toml");
        }
        tb
    }

    fn cluster_config(&self, opts: &Options) -> ClusterConfig {
        use RestartPriority::{High, Highest, Low, Medium};
        let host = |h: &TestHost| {
            HostConfig::new(HostId(h.id), format!("{}:{AGENT_PORT}", h.addr()))
                .with_name(format!("host{}", h.id))
        };
        let vm = |v: u32| {
            VmConfig::new(VmId(v), DatastoreId(1 + (v % opts.datastores)))
                .with_definition(if opts.libvirt {
                    qemu_domain(v)
                } else {
                    process_vm(&self.ledger)
                })
                .with_reservation(Resources::new(500, 512))
                .with_priority([Highest, High, Medium, Low][(v as usize - 1) % 4])
        };
        ClusterConfig::new(ClusterId(77))
            .with_ha(HaSettings {
                isolation_addresses: vec![GATEWAY.to_string()],
                restart_retry_ms: vec![0, 1_000, 3_000, 10_000],
                ..HaSettings::default()
            })
            .with_hosts(self.hosts.iter().map(host))
            .with_shared_datastores(self.datastores.iter().map(|p| p.display().to_string()))
            .with_vms((1..=opts.vms).map(vm))
    }

    pub fn host(&self, id: u32) -> &TestHost {
        &self.hosts[id as usize - 1]
    }

    /// Start a process VM on a host as if it had been running before the agents (the agent adopts
    /// it from its pid file).
    pub fn place_vm(&self, vm: u32, host: u32) {
        let h = self.host(host);
        let def = &self.config.vm(VmId(vm)).expect("configured VM").definition;
        if h.libvirt {
            let f = h.dir.join(format!("vm{vm}.xml"));
            std::fs::write(&f, def).expect("domain xml");
            h.virsh(&format!("define {}", f.display()))
                .and_then(|_| h.virsh(&format!("start fdmvm{vm}")))
                .unwrap_or_else(|e| panic!("starting vm{vm} on host{host}: {e}"));
            return;
        }
        let pid_file = h.vm_dir().join(format!("vm-{vm}.pid"));
        // setsid: the VM leads its own process group, as the driver's VMs do.
        let mut child = Command::new("ip")
            .args(["netns", "exec", &h.ns, "setsid", "sh", "-c"])
            .arg(format!(
                "echo $$ > {}; exec sh -c \"$0\"",
                pid_file.display()
            ))
            .arg(def)
            .env("FDM_VM", vm.to_string())
            .env("FDM_HOST", host.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start VM");
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        assert!(
            wait_for(Duration::from_secs(5), || {
                running_in(&h.vm_dir()).iter().any(|(v, _)| *v == vm)
            }),
            "vm{vm} did not start on host{host}"
        );
    }

    /// Two VMs per host, round robin, then every agent.
    pub fn start(&mut self) {
        let hosts = self.hosts.len() as u32;
        for vm in 1..=self.config.vms.len() as u32 {
            self.place_vm(vm, 1 + (vm - 1) % hosts);
        }
        for id in 1..=hosts {
            self.start_agent(id);
        }
        self.start_monitor();
        if self.watchdog {
            self.start_watchdog();
        }
    }

    pub fn start_agent(&mut self, id: u32) {
        let exe = self.exe.clone();
        let h = &mut self.hosts[id as usize - 1];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(h.log())
            .expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &h.ns])
            .arg(&exe)
            .args(["--log-format", "json", "run", "--config"])
            .arg(h.dir.join("agent.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start agent");
        h.agent = Some(child);
    }

    /// The fake watchdog: armed by a host's first kick, disarmed by the agent's clean stop; kicks
    /// that stop for `WATCHDOG_RESET` reset the host (every process of its namespace killed, NIC
    /// dark), exactly what the hardware would do.
    fn start_watchdog(&mut self) {
        let hosts: Vec<(u32, String, PathBuf)> = self
            .hosts
            .iter()
            .map(|h| (h.id, h.ns.clone(), h.dir.join("watchdog")))
            .collect();
        let (stop, resets, t0) = (self.monitor.stop.clone(), self.resets.clone(), self.started);
        std::thread::spawn(move || {
            let mut last: BTreeMap<u32, (String, Instant)> = BTreeMap::new();
            let mut reset = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                for (id, ns, file) in &hosts {
                    if reset.contains(id) {
                        continue;
                    }
                    let content = std::fs::read_to_string(file).unwrap_or_default();
                    if content.trim().parse::<u64>().is_err() {
                        // Never kicked yet, or disarmed by a clean stop.
                        last.remove(id);
                        continue;
                    }
                    let entry = last
                        .entry(*id)
                        .or_insert_with(|| (content.clone(), Instant::now()));
                    if entry.0 != content {
                        *entry = (content, Instant::now());
                    } else if entry.1.elapsed() > WATCHDOG_RESET {
                        let _ = sh(&format!(
                            "ip -n {ns} link set eth0 down; ip netns pids {ns} | xargs -r kill -9"
                        ));
                        reset.insert(*id);
                        resets.lock().expect("resets").push((*id, t0.elapsed()));
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }

    fn start_monitor(&mut self) {
        let dirs: Vec<(u32, String, PathBuf, bool)> = self
            .hosts
            .iter()
            .map(|h| (h.id, h.ns.clone(), h.vm_dir(), h.libvirt))
            .collect();
        let (stop, doubles, t0) = (
            self.monitor.stop.clone(),
            self.monitor.doubles.clone(),
            self.started,
        );
        self.monitor.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut on: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
                for (h, ns, d, libvirt) in &dirs {
                    for (vm, _) in running_on(ns, d, *libvirt) {
                        on.entry(vm).or_default().push(*h);
                    }
                }
                for (vm, hosts) in on {
                    if hosts.len() > 1 {
                        doubles.lock().expect("doubles").push(DoubleRun {
                            at: t0.elapsed(),
                            vm,
                            hosts,
                        });
                    }
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }));
    }

    /// VM -> hosts it runs on now.
    pub fn placement(&self) -> BTreeMap<u32, Vec<u32>> {
        let mut m: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for h in &self.hosts {
            for vm in h.vms() {
                m.entry(vm).or_default().push(h.id);
            }
        }
        m
    }

    /// Wait until every VM of `vms` runs on a host outside `gone`; the time since `t0`. Panics with
    /// `what`, the placement and the log directory when `limit` passes first.
    pub fn wait_moved_off(
        &self,
        vms: &[u32],
        gone: &[u32],
        t0: Instant,
        limit: Duration,
        what: &str,
    ) -> Duration {
        wait_until(limit, || {
            let p = self.placement();
            vms.iter()
                .all(|vm| {
                    p.get(vm)
                        .is_some_and(|h| h.iter().all(|x| !gone.contains(x)))
                })
                .then(|| t0.elapsed())
        })
        .unwrap_or_else(|| {
            panic!(
                "{what} within {limit:?}: placement {:?} (logs in {})",
                self.placement(),
                self.root.display()
            )
        })
    }

    pub fn pids(&self) -> BTreeMap<u32, (u32, i32)> {
        let mut m = BTreeMap::new();
        for h in &self.hosts {
            for (vm, pid) in h.running() {
                m.insert(vm, (h.id, pid));
            }
        }
        m
    }

    /// Start records per VM, from the ledger the VMs write themselves.
    pub fn starts(&self) -> BTreeMap<u32, usize> {
        let mut m = BTreeMap::new();
        for line in std::fs::read_to_string(&self.ledger)
            .unwrap_or_default()
            .lines()
        {
            if let Some(vm) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("vm="))
                .and_then(|v| v.parse::<u32>().ok())
            {
                *m.entry(vm).or_default() += 1;
            }
        }
        m
    }

    pub fn doubles(&self) -> Vec<DoubleRun> {
        self.monitor.doubles.lock().expect("doubles").clone()
    }

    /// Hosts that call themselves master now (agents that answer).
    pub fn masters(&self) -> Vec<u32> {
        self.hosts
            .iter()
            .filter(|h| h.agent.is_some())
            .filter(|h| h.status().is_some_and(|s| s["role"] == "master"))
            .map(|h| h.id)
            .collect()
    }

    /// Verdict the master `m` holds on `host`.
    pub fn verdict(&self, m: u32, host: u32) -> Option<String> {
        let s = self.host(m).status()?;
        s["hosts"]
            .as_array()?
            .iter()
            .find(|h| h["host"] == host)
            .and_then(|h| h["verdict"].as_str().map(String::from))
    }

    /// Wait for one master with every running agent alive in its eyes and every VM reported; the
    /// master then holds its claims (docs/timings.md).
    pub fn wait_settled(&self) -> u32 {
        let expect = self.hosts.iter().filter(|h| h.agent.is_some()).count();
        let vms = self.config.vms.len();
        let m = wait_until(Duration::from_secs(40), || {
            let ms = self.masters();
            let [m] = ms[..] else { return None };
            let s = self.host(m).status()?;
            let alive = s["hosts"]
                .as_array()?
                .iter()
                .filter(|h| h["verdict"] == "alive")
                .count();
            let reported = s["vms"]
                .as_array()?
                .iter()
                .filter(|v| v["state"].as_str() == Some("running"))
                .count();
            (alive >= expect && reported == vms).then_some(m)
        });
        let m = m.unwrap_or_else(|| {
            panic!(
                "cluster did not settle in 40 s (masters {:?}); logs in {}",
                self.masters(),
                self.root.display()
            )
        });
        // The claims and the protected lists are written within a claim lease of the election.
        std::thread::sleep(Duration::from_secs(4));
        m
    }

    /// Power the host off: every process in its namespace dies at once (agent, VMs) and its NIC
    /// goes dark (the kernel of a namespace would otherwise go on answering pings).
    pub fn kill_host(&mut self, id: u32) {
        let h = &mut self.hosts[id as usize - 1];
        let _ = sh(&format!("ip -n {} link set eth0 down", h.ns));
        if let Ok(pids) = sh(&format!("ip netns pids {}", h.ns)) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: SIGKILL to a pid of the test's own namespace.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        if let Some(mut a) = h.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    /// Freeze or thaw the agent process (a hung agent: its VMs go on running).
    pub fn freeze_agent(&self, id: u32, frozen: bool) {
        if let Some(a) = &self.host(id).agent {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(
                    a.id() as i32,
                    if frozen { libc::SIGSTOP } else { libc::SIGCONT },
                );
            }
        }
    }

    /// Kill the agent process only (its VMs go on running).
    pub fn kill_agent(&mut self, id: u32, signal: i32) {
        let h = &mut self.hosts[id as usize - 1];
        if let Some(mut a) = h.agent.take() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(a.id() as i32, signal);
            }
            let _ = a.wait();
        }
    }

    /// Cut a host's link to the switch (its NIC, cable or switch port failed).
    pub fn link(&self, id: u32, up: bool) {
        must(&format!(
            "ip -n {} link set {} {}",
            self.switch,
            self.host(id).port,
            if up { "up" } else { "down" }
        ));
    }

    /// Split the network: hosts in different groups no longer reach each other (the gateway stays
    /// reachable from every host: this is a partition, not isolation).
    pub fn partition(&mut self, groups: &[&[u32]]) {
        let mut rules = String::new();
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i == j {
                    continue;
                }
                let ports = |g: &[u32]| {
                    g.iter()
                        .map(|h| self.host(*h).port.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                rules.push_str(&format!(
                    "add rule bridge fdm cut iifname {{ {} }} oifname {{ {} }} drop\n",
                    ports(a),
                    ports(b)
                ));
            }
        }
        let script = format!(
            "add table bridge fdm\nadd chain bridge fdm cut {{ type filter hook forward priority 0; }}\n{rules}"
        );
        let f = self.root.join("partition.nft");
        std::fs::write(&f, script).expect("nft script");
        must(&format!(
            "ip netns exec {} nft -f {}",
            self.switch,
            f.display()
        ));
        self.partitioned = true;
    }

    pub fn heal(&mut self) {
        if self.partitioned {
            must(&format!(
                "ip netns exec {} nft delete table bridge fdm",
                self.switch
            ));
            self.partitioned = false;
        }
    }

    /// Fault one host's view of a datastore: `lose` kills its bindfs (calls fail with ENOTCONN),
    /// otherwise the view hangs (SIGSTOP) or resumes (SIGCONT).
    pub fn view_signal(&self, host: u32, ds: u32, signal: i32) {
        let (_, pid) = self.host(host).views[&ds];
        // SAFETY: signalling the bindfs daemon this testbed started.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// The check after every case: no VM ever ran on two hosts at once, and every protected VM runs
    /// exactly once now.
    pub fn assert_every_vm_once(&self) {
        let doubles = self.doubles();
        assert!(
            doubles.is_empty(),
            "VMs ran on two hosts at once: {doubles:?} (logs in {})",
            self.root.display()
        );
        let placement = self.placement();
        for vm in 1..=self.config.vms.len() as u32 {
            let on = placement.get(&vm).cloned().unwrap_or_default();
            assert_eq!(
                on.len(),
                1,
                "vm{vm} runs on {on:?}; placement {placement:?} (logs in {})",
                self.root.display()
            );
        }
    }
}

/// The host's own libvirtd, inside its namespace, with private run/state/log directories (a
/// mount namespace of its own; `/run` too, for the daemons' pid files, and `/etc/libvirt`, where
/// libvirt keeps the persistent domain definitions) and its socket in the host's directory where the agent reaches it.
fn start_libvirtd(h: &TestHost) {
    let dir = h.dir.join("libvirt");
    std::fs::create_dir_all(&dir).expect("libvirt dir");
    let conf = h.dir.join("libvirtd.conf");
    std::fs::write(
        &conf,
        format!(
            "unix_sock_dir = \"{}\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n",
            dir.display()
        ),
    )
    .expect("libvirtd.conf");
    let log = std::fs::File::create(h.dir.join("libvirtd.log")).expect("libvirtd log");
    let script = format!(
        "for d in /run /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do \
           mkdir -p $d && mount -t tmpfs fdm-test $d || exit 1; done; mkdir -p /run/libvirt /run/lock; \
         mkdir -p {etc} && cp /etc/libvirt/*.conf {etc}/ && mount --bind {etc} /etc/libvirt || exit 1; \
         virtlogd -d && exec libvirtd --config {conf}",
        conf = conf.display(),
        etc = h.dir.join("etc-libvirt").display(),
    );
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &h.ns,
            "unshare",
            "-m",
            "--propagation",
            "private",
        ])
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start libvirtd");
    std::thread::spawn(move || {
        let _ = child.wait();
    });
}

fn bindfs_pid(view: &Path) -> Option<i32> {
    let out = sh("ps -eo pid=,args=").ok()?;
    out.lines().find_map(|l| {
        let l = l.trim();
        let (pid, args) = l.split_once(' ')?;
        (args.starts_with("bindfs") && args.trim_end().ends_with(&*view.to_string_lossy()))
            .then(|| pid.parse().ok())
            .flatten()
    })
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.monitor.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.monitor.thread.take() {
            let _ = t.join();
        }
        let _ = sh(&format!(
            "ip netns exec {} nft delete table bridge fdm",
            self.switch
        ));
        for id in 1..=self.hosts.len() as u32 {
            // Resume hung views first: a stopped FUSE daemon would leave its callers hanging.
            for (_, pid) in self.hosts[id as usize - 1].views.values() {
                // SAFETY: our own bindfs daemons.
                unsafe {
                    libc::kill(*pid, libc::SIGCONT);
                }
            }
            self.kill_host(id);
            // VMs that escaped the namespace kill (none should): by their pid files.
            for (_, pid) in self.hosts[id as usize - 1].running() {
                // SAFETY: the VM's process group, started by this test.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
        }
        for h in &self.hosts {
            for (view, _) in h.views.values() {
                let _ = sh(&format!(
                    "fusermount3 -u -z {0} 2>/dev/null || umount -l {0}",
                    view.display()
                ));
            }
            let _ = sh(&format!("ip netns del {}", h.ns));
        }
        let _ = sh(&format!("ip netns del {}", self.switch));
    }
}

/// `wait_until` for a condition.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    wait_until(limit, || f().then_some(())).is_some()
}

/// Measured times a case prints, collected by `docs/operations.md`.
pub fn report(case: &str, figures: &[(&str, f64)]) {
    let f: Vec<String> = figures
        .iter()
        .map(|(k, v)| format!("{k}={v:.2}s"))
        .collect();
    println!("MEASURED {case}: {}", f.join(" "));
}

impl Testbed {
    /// Power a host killed by [`Testbed::kill_host`] on again: its NIC up, its libvirtd (when the
    /// bed runs libvirt; it keeps its persistent definitions and autostart flags, which live in
    /// the host's directory, as a disk does across a reboot), then its agent.
    #[allow(dead_code)] // multihost_libvirt.rs only
    pub fn boot_host(&mut self, id: u32) {
        self.boot_hypervisor(id);
        self.start_agent(id);
    }

    /// The first half of [`Testbed::boot_host`]: the host is up (NIC, and its libvirtd answering
    /// when the bed runs libvirt, after any autostart it makes) but its agent does not run yet,
    /// as while a host's boot starts the hypervisor before the HA agent.
    #[allow(dead_code)] // multihost_libvirt.rs only
    pub fn boot_hypervisor(&mut self, id: u32) {
        let h = self.host(id);
        must(&format!("ip -n {} link set eth0 up", h.ns));
        if h.libvirt {
            start_libvirtd(h);
            assert!(
                wait_for(Duration::from_secs(90), || h.virsh("version").is_ok()),
                "libvirtd of host{id} did not answer after the boot (log in {})",
                h.dir.join("libvirtd.log").display()
            );
        }
    }

    /// Forget the double runs seen so far and return them: for a case that makes one on purpose
    /// (a stale copy HA must end), checks them itself, and wants [`Testbed::assert_every_vm_once`]
    /// to judge only what follows.
    #[allow(dead_code)] // multihost_libvirt.rs only
    pub fn take_doubles(&self) -> Vec<DoubleRun> {
        std::mem::take(&mut *self.monitor.doubles.lock().expect("doubles"))
    }
}
