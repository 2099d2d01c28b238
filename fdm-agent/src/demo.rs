//! `fdm-agent demo`: a 4-host cluster on this machine (each host an `fdm-agent run` process on a
//! loopback port, two temporary directories as shared datastores, process-driver VMs), then a host
//! dies (its agent and all its VMs are killed) and the failover is narrated with measured times.

use fdm_agent::driver::process::{pid_files, running_vm_pids, start_detached};
use fdm_agent::runtime::status::query;
use fdm_agent::wait::wait_until;
use heartbeat_fs::fs::DatastoreDir;
use heartbeat_fs::records::*;
use heartbeat_fs::{ClusterId, DatastoreId, HostId, VmId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOSTS: u32 = 4;
const VMS: u32 = 8;

struct Host {
    id: u32,
    dir: PathBuf,
    agent: Option<Child>,
}

impl Host {
    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
    fn vm_dir(&self) -> PathBuf {
        self.dir.join("state").join("vms")
    }
    /// VMs whose process runs on this host now (from the driver's own pid files).
    fn running(&self) -> Vec<u32> {
        running_vm_pids(&self.vm_dir())
            .into_iter()
            .map(|(vm, _)| vm.0)
            .collect()
    }
    fn kill(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        for (_, pid) in pid_files(&self.vm_dir()) {
            // SAFETY: kill the VM's process group, as a host power loss would.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn status(h: &Host) -> Option<serde_json::Value> {
    query(&h.socket(), "status")
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
}

/// `items` in words, `a, b, c`, or `none`.
fn words<T>(items: &[T], word: impl Fn(&T) -> String) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items.iter().map(word).collect::<Vec<_>>().join(", ")
}

/// VM numbers as the events name them: `vm-1, vm-5`.
fn vms(ids: &[u32]) -> String {
    words(ids, |&v| VmId(v).to_string())
}

/// Host numbers as the events name them: `host-1, host-3`.
fn hosts_of(ids: &[u32]) -> String {
    words(ids, |&h| HostId(h).to_string())
}

/// A line of the narration on standard output. Unlike `println!` it does not panic when the reader
/// went away (`fdm-agent demo | head`): the demo then runs on silently and still cleans up.
macro_rules! out {
    ($($arg:tt)*) => {{
        // The narration is not the outcome: the exit status says whether the failover worked.
        let _ = fdm_agent::cli::print_line(format_args!($($arg)*));
    }};
}

struct Clock(Instant);
impl Clock {
    fn say(&self, what: impl AsRef<str>) {
        out!(
            "[{:>7.3}s] {}",
            self.0.elapsed().as_secs_f64(),
            what.as_ref()
        );
    }
}

pub fn run(keep: bool, kill_master: bool) -> anyhow::Result<bool> {
    let tmp = tempfile::Builder::new().prefix("fdm-demo-").tempdir()?;
    let root = tmp.path().to_path_buf();
    let clock = Clock(Instant::now());
    out!(
        "fdm demo: {HOSTS} hosts, 2 shared datastores, {VMS} protected VMs, in {}",
        root.display()
    );
    let ds: Vec<PathBuf> = (1..=2).map(|i| root.join(format!("ds{i}"))).collect();
    for d in &ds {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(root.join("secret"), "5a".repeat(32))?;
    let ledger = root.join("vm-starts.log");
    let ports: Vec<u16> = (0..HOSTS).map(|_| free_port()).collect::<Result<_, _>>()?;
    let config = cluster_config(&ports, &ds, &ledger);
    for d in &ds {
        DatastoreDir::open(d)?.write_config(&config)?;
    }
    let exe = std::env::current_exe()?;
    let mut hosts: Vec<Host> = Vec::new();
    for id in 1..=HOSTS {
        let dir = root.join(format!("host{id}"));
        std::fs::create_dir_all(dir.join("state"))?;
        let toml = format!(
            "host_id = {id}\ncluster_id = 1\nsecret_file = \"{}\"\nbind = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\n\
             status_socket = \"{}\"\nprobe = \"none\"\n[driver]\nkind = \"process\"\n\
             [[datastores]]\nid = 1\npath = \"{}\"\n[[datastores]]\nid = 2\npath = \"{}\"\n{}",
            root.join("secret").display(),
            ports[id as usize - 1],
            dir.join("state").display(),
            dir.join("agent.sock").display(),
            ds[0].display(),
            ds[1].display(),
            (1..=HOSTS)
                .map(|h| format!(
                    "[[seed_hosts]]\nid = {h}\naddress = \"127.0.0.1:{}\"\n",
                    ports[h as usize - 1]
                ))
                .collect::<String>(),
        );
        std::fs::write(dir.join("agent.toml"), toml)?;
        hosts.push(Host {
            id,
            dir,
            agent: None,
        });
    }
    // Initial placement: two VMs per host, started before the agents, which adopt them.
    for vm in 1..=VMS {
        let h = &hosts[((vm - 1) % HOSTS) as usize];
        let def = &config.vm(VmId(vm)).expect("configured").definition;
        start_detached(&h.vm_dir(), &h.id.to_string(), VmId(vm), def)?;
    }
    for h in hosts.iter_mut() {
        let log = std::fs::File::create(h.dir.join("agent.log"))?;
        let child = Command::new(&exe)
            .args(["--log-format", "json", "run", "--config"])
            .arg(h.dir.join("agent.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        h.agent = Some(child);
    }
    clock.say(format!(
        "started {HOSTS} agents on 127.0.0.1 ports {}",
        words(&ports, |p| p.to_string())
    ));

    let outcome = drive(&clock, &mut hosts, kill_master, &ledger);
    for h in hosts.iter_mut() {
        h.kill();
    }
    if keep {
        let kept = tmp.keep();
        out!("kept {} (agent logs in host*/agent.log)", kept.display());
    }
    outcome
}

fn cluster_config(ports: &[u16], ds: &[PathBuf], ledger: &Path) -> ClusterConfig {
    use RestartPriority::{High, Highest, Low, Medium};
    let host = |i: u32| {
        HostConfig::new(HostId(i), format!("127.0.0.1:{}", ports[i as usize - 1]))
            .with_name(format!("host{i}"))
            .with_capacity(Resources::new(8_000, 8_192))
    };
    // The VM writes its own start record: the demo's independent check that no VM ever ran twice
    // at once.
    let vm = |v: u32| {
        VmConfig::new(VmId(v), DatastoreId(1 + (v % 2)))
            .with_definition(format!(
                "echo \"$(date +%s.%N) start vm=$FDM_VM host=$FDM_HOST pid=$$\" >> {}; exec sleep 100000",
                ledger.display()
            ))
            .with_priority([Highest, High, Medium, Low][(v as usize - 1) % 4])
    };
    ClusterConfig::new(ClusterId(1))
        .with_ha(HaSettings {
            restart_retry_ms: vec![0, 1_000, 5_000, 15_000],
            ..HaSettings::default()
        })
        .with_hosts((1..=HOSTS).map(host))
        .with_shared_datastores(ds.iter().map(|p| p.display().to_string()))
        .with_vms((1..=VMS).map(vm))
}

/// VM -> hosts it runs on, among the hosts that are up (a killed host's VMs may take a moment to
/// disappear from its pid files; they do not count as running anywhere).
fn placement(hosts: &[Host]) -> BTreeMap<u32, Vec<u32>> {
    let mut m: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for h in hosts.iter().filter(|h| h.agent.is_some()) {
        for vm in h.running() {
            m.entry(vm).or_default().push(h.id);
        }
    }
    m
}

fn master_of(hosts: &[Host]) -> Option<(u32, serde_json::Value)> {
    hosts.iter().filter(|h| h.agent.is_some()).find_map(|h| {
        let s = status(h)?;
        (s["role"] == "master").then_some((h.id, s))
    })
}

fn drive(
    clock: &Clock,
    hosts: &mut [Host],
    kill_master: bool,
    ledger: &Path,
) -> anyhow::Result<bool> {
    // 1. Election, and every host alive in the master's eyes.
    let every_host_alive = |s: &serde_json::Value| {
        s["hosts"].as_array().map_or(0, |hs| {
            hs.iter().filter(|h| h["verdict"] == "alive").count()
        }) == HOSTS as usize
    };
    let Some(master) = wait_until(Duration::from_secs(30), || {
        master_of(hosts)
            .filter(|(_, s)| every_host_alive(s))
            .map(|(m, _)| m)
    }) else {
        anyhow::bail!("no master with every host alive after 30 s (see the agents' logs)");
    };
    clock.say(format!("{} is master; every host alive", HostId(master)));
    // Let the master take its datastore claims and settle (docs/timings.md).
    std::thread::sleep(Duration::from_secs(4));
    for (vm, on) in placement(hosts) {
        clock.say(format!("{} runs on {}", VmId(vm), HostId(on[0])));
    }
    let victim = if kill_master {
        master
    } else {
        (1..=HOSTS).rev().find(|&h| h != master).expect("4 hosts")
    };
    let lost: Vec<u32> = hosts[victim as usize - 1].running();
    out!("");
    clock.say(format!(
        "*** {} dies: its agent and its VMs {} are killed ***",
        HostId(victim),
        vms(&lost)
    ));
    let killed_at = Instant::now();
    hosts[victim as usize - 1].kill();

    let mut dead_at = None;
    let mut issued: BTreeMap<String, f64> = BTreeMap::new();
    let mut back: BTreeMap<u32, (u32, f64)> = BTreeMap::new();
    let mut twice = false;
    let mut new_master = None;
    while killed_at.elapsed() < Duration::from_secs(40) {
        let since = killed_at.elapsed().as_secs_f64();
        if let Some((m, s)) = master_of(hosts) {
            if m != master && new_master.is_none() {
                new_master = Some(m);
                clock.say(format!("t+{since:.3}s {} is the new master", HostId(m)));
            }
            let verdict = s["hosts"]
                .as_array()
                .and_then(|hs| hs.iter().find(|h| h["host"] == victim))
                .map(|h| h["verdict"].clone());
            if dead_at.is_none() && verdict.as_ref().is_some_and(|v| v == "dead") {
                dead_at = Some(since);
                clock.say(format!(
                    "t+{since:.3}s master {} declares {} DEAD",
                    HostId(m),
                    HostId(victim)
                ));
            }
            // The master's events as `fdm-agent status` shows them: told apart by name, narrated
            // in their own words.
            for e in s["events"].as_array().into_iter().flatten() {
                let Some(what) = e["message"].as_str() else {
                    continue;
                };
                if e["name"] == "restart-issued" && !issued.contains_key(what) {
                    issued.insert(what.to_string(), since);
                    clock.say(format!("t+{since:.3}s {what}"));
                }
            }
        }
        for (vm, on) in placement(hosts) {
            if on.len() > 1 {
                twice = true;
                clock.say(format!(
                    "!!! {} runs on {} at once",
                    VmId(vm),
                    hosts_of(&on)
                ));
            }
            if lost.contains(&vm) && !back.contains_key(&vm) {
                back.insert(vm, (on[0], since));
                clock.say(format!(
                    "t+{since:.3}s {} running again on {}",
                    VmId(vm),
                    HostId(on[0])
                ));
            }
        }
        // Keep watching a moment after the last VM is back: the master's status may lag a little.
        if back.len() == lost.len()
            && (dead_at.is_some() || back.values().all(|(_, t)| since - t > 1.0))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    out!("");
    out!("summary");
    out!(
        "  killed host             {} (VMs {})",
        HostId(victim),
        vms(&lost)
    );
    match dead_at {
        Some(t) => out!("  dead verdict after      {t:.3} s"),
        None => out!("  dead verdict            not seen"),
    }
    if let Some(t) = issued.values().copied().reduce(f64::min) {
        out!("  first restart issued    {t:.3} s");
    }
    if let Some(t) = back.values().map(|(_, t)| *t).reduce(f64::max) {
        out!("  all VMs running again   {t:.3} s");
    }
    for (vm, on) in placement(hosts) {
        out!("  {:<5} on {}", VmId(vm).to_string(), hosts_of(&on));
    }
    // A VM process writes its start record first thing; give the last ones a moment.
    std::thread::sleep(Duration::from_millis(300));
    let starts = std::fs::read_to_string(ledger).unwrap_or_default();
    out!(
        "  VM start records        {} ({} initial + restarts)",
        starts.lines().count(),
        VMS
    );
    let now_placed = placement(hosts);
    let all_back = lost
        .iter()
        .all(|vm| now_placed.get(vm).is_some_and(|on| on.len() == 1));
    let ok = back.len() == lost.len() && all_back && !twice && !lost.is_empty();
    out!(
        "  result                  {}",
        if ok {
            "every lost VM runs again, exactly once"
        } else {
            "FAILOVER INCOMPLETE"
        }
    );
    Ok(ok)
}
