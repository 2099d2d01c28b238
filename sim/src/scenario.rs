//! Scenario files (TOML, documented in `docs/scenarios.md`): a cluster, a timeline of faults and
//! expectations checked at given times.

use crate::world::{Fault, Micros, NetParams, SimParams};
use fdm_core::Timings;
use heartbeat_fs::records::*;
use heartbeat_fs::{ClusterId, DatastoreId, HostId, VmId};
use serde::Deserialize;
use std::collections::BTreeMap;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ScenarioError {
    #[error("{0}")]
    Toml(String),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// `"12.5s"`, `"300ms"`, `"2m"` -> microseconds.
pub fn parse_time(s: &str) -> Result<Micros, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000_000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000_000.0)
    } else {
        return Err(format!("`{s}`: give a unit (ms, s or m)"));
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration"))?;
    if !(0.0..1e7).contains(&v) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok((v * mult) as Micros)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub name: String,
    /// Which real-world case this models.
    pub models: String,
    #[serde(default = "one")]
    pub seed: u64,
    pub duration: String,
    pub cluster: ClusterSpec,
    #[serde(default)]
    pub timings: BTreeMap<String, u64>,
    #[serde(default)]
    pub network: NetworkSpec,
    #[serde(default)]
    pub fault: Vec<FaultSpec>,
    #[serde(default)]
    pub expect: Vec<ExpectSpec>,
    /// End-of-run invariants that need every VM running (default: on).
    #[serde(default = "yes")]
    pub expect_all_running_at_end: bool,
}

fn one() -> u64 {
    1
}
fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    pub hosts: u32,
    #[serde(default = "default_mem")]
    pub host_memory_mb: u64,
    /// Per host overrides of memory (host id -> MB).
    #[serde(default)]
    pub host_memory: BTreeMap<String, u64>,
    /// Mounts per datastore: `[[1,2,3], [2,3]]` = ds1 on hosts 1-3, ds2 on hosts 2-3.
    pub datastores: Vec<Vec<u32>>,
    /// `n` VMs per host, home datastores round robin, placed on their host.
    #[serde(default)]
    pub vms_per_host: u32,
    #[serde(default)]
    pub vm: Vec<VmSpec>,
    #[serde(default)]
    pub failover_hosts: Vec<u32>,
    #[serde(default)]
    pub drift_ppm: BTreeMap<String, i64>,
    #[serde(default)]
    pub max_concurrent_power_ons_per_host: Option<u32>,
    #[serde(default)]
    pub restart_retry_ms: Option<Vec<u64>>,
    /// Restarts of a crashed VM on its own host before another host is tried.
    #[serde(default)]
    pub same_host_restart_attempts: Option<u32>,
    /// A VM whose host lost its datastore this long gets its `storage_loss_response` (`"10s"`).
    #[serde(default)]
    pub storage_loss_timeout: Option<String>,
    /// Wait between two same-host restarts of a crashed VM (default 0).
    #[serde(default)]
    pub same_host_restart_wait_ms: Option<u64>,
    /// How long the hypervisor takes to start a VM (default 300 ms): a boot storm on slow storage
    /// can make it longer than the master waits for an answer.
    #[serde(default)]
    pub power_on_ms: Option<u64>,
    /// The hypervisors start at boot what their host ran when it crashed (libvirt autostart left
    /// on): copies fdm did not start, which the agents must end (`stale_copy_ended`).
    #[serde(default)]
    pub autostart: bool,
}

fn default_mem() -> u64 {
    16_384
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub id: u32,
    pub home: u32,
    /// Initial host (absent: not running at start).
    pub host: Option<u32>,
    #[serde(default = "medium")]
    pub priority: String,
    #[serde(default = "power_off")]
    pub isolation_response: String,
    #[serde(default = "always")]
    pub restart_policy: String,
    /// `keep`, `pause` or `power-off`.
    #[serde(default = "keep")]
    pub storage_loss_response: String,
    #[serde(default = "default_vm_mem")]
    pub memory_mb: u64,
    #[serde(default)]
    pub depends_on: Vec<u32>,
    pub anti_affinity: Option<String>,
    /// The VM's own restart limit: restarts after a crash within `restart_window` (either one
    /// given sets both; the other takes the cluster's, 3 per hour).
    pub max_restarts: Option<u32>,
    pub restart_window: Option<String>,
}

fn medium() -> String {
    "medium".into()
}
fn power_off() -> String {
    "power-off".into()
}
fn always() -> String {
    "always".into()
}
fn keep() -> String {
    "keep".into()
}
fn default_vm_mem() -> u64 {
    1_024
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    #[serde(default)]
    pub loss: f64,
    #[serde(default)]
    pub duplicate: f64,
    pub latency_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub at: String,
    pub kind: String,
    pub host: Option<u32>,
    pub to: Option<u32>,
    pub ds: Option<u32>,
    pub vm: Option<u32>,
    pub groups: Option<Vec<Vec<u32>>>,
    pub p: Option<f64>,
    pub reboot: Option<bool>,
    pub latency_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub hosts: Option<Vec<u32>>,
    pub max_ms: Option<f64>,
    /// `crash-loop`: how long after each start the VM crashes.
    pub after_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectSpec {
    pub at: String,
    pub kind: String,
    pub vm: Option<u32>,
    pub host: Option<u32>,
    pub hosts: Option<Vec<u32>>,
    pub verdict: Option<String>,
    pub count: Option<usize>,
    pub role: Option<String>,
    pub vms: Option<Vec<u32>>,
    /// `no-stop`: the start of the span that ends at `at`.
    pub from: Option<String>,
    /// `event-seen`, `event-not-seen`: the event's name (as the trace spells it, e.g.
    /// `IsolationResponseDeferred`).
    pub event: Option<String>,
}

/// An expectation, checked at its time.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// The VM runs on exactly one host, one of these (any host if empty).
    VmOn {
        vm: VmId,
        hosts: Vec<HostId>,
    },
    VmStopped {
        vm: VmId,
    },
    /// Every protected VM (not stopped by an operator) runs exactly once.
    AllRunning,
    /// The master (of the partition containing `from`, default any) sees `host` with this verdict.
    Verdict {
        host: HostId,
        verdict: String,
    },
    Master {
        host: HostId,
    },
    Masters {
        count: usize,
    },
    /// No power-on happened so far.
    NoRestarts,
    Restarts {
        count: usize,
    },
    Role {
        host: HostId,
        role: String,
    },
    /// The VM is failed at its restart limit: its home datastore's protected list says so.
    VmFailed {
        vm: VmId,
    },
    /// The VM was powered on exactly `count` times (after the start of the run).
    VmRestarts {
        vm: VmId,
        count: usize,
    },
    /// Each of these VMs was powered on (after the start of the run) no later than the next one:
    /// restart order by priority or dependency.
    StartOrder {
        vms: Vec<VmId>,
    },
    /// HA stopped nothing (or not `vm`) between `from` and the expectation's time: no isolation
    /// response, fence or abort took a running VM down.
    NoStop {
        from: Micros,
        vm: Option<VmId>,
    },
    /// The VM runs nowhere, and its home datastore's protected list keeps it wanted on and not
    /// failed: HA starts it once it can (a claim, capacity, a lapsed lease).
    VmPending {
        vm: VmId,
    },
    /// Some agent emitted an event of this name (optionally about `vm`) by the expectation's time.
    EventSeen {
        event: String,
        vm: Option<VmId>,
    },
    /// No agent emitted an event of this name (optionally about `vm`) by the expectation's time.
    EventNotSeen {
        event: String,
        vm: Option<VmId>,
    },
    /// The VM runs on exactly one host, one of these (any host if empty), and is paused there by
    /// the storage-loss response.
    VmPaused {
        vm: VmId,
        hosts: Vec<HostId>,
    },
    /// The VM is paused nowhere.
    VmNotPaused {
        vm: VmId,
    },
}

#[derive(Debug)]
pub struct Scenario {
    pub name: String,
    pub models: String,
    pub config: ClusterConfig,
    pub params: SimParams,
    pub placement: Vec<(HostId, VmId)>,
    pub faults: Vec<(Micros, Fault)>,
    pub expects: Vec<(Micros, Expect)>,
    pub duration: Micros,
    pub all_running_at_end: bool,
}

fn priority(s: &str) -> Result<RestartPriority, String> {
    Ok(match s {
        "disabled" => RestartPriority::Disabled,
        "lowest" => RestartPriority::Lowest,
        "low" => RestartPriority::Low,
        "medium" => RestartPriority::Medium,
        "high" => RestartPriority::High,
        "highest" => RestartPriority::Highest,
        _ => return Err(format!("`{s}`: disabled|lowest|low|medium|high|highest")),
    })
}

fn isolation(s: &str) -> Result<IsolationResponse, String> {
    Ok(match s {
        "power-off" => IsolationResponse::PowerOff,
        "shutdown" => IsolationResponse::Shutdown,
        "leave-running" => IsolationResponse::LeaveRunning,
        _ => return Err(format!("`{s}`: power-off|shutdown|leave-running")),
    })
}

fn storage_loss(s: &str) -> Result<StorageLossResponse, String> {
    Ok(match s {
        "keep" => StorageLossResponse::Keep,
        "pause" => StorageLossResponse::Pause,
        "power-off" => StorageLossResponse::PowerOff,
        _ => return Err(format!("`{s}`: keep|pause|power-off")),
    })
}

fn policy(s: &str) -> Result<RestartPolicy, String> {
    Ok(match s {
        "always" => RestartPolicy::Always,
        "host-failure-only" => RestartPolicy::HostFailureOnly,
        "never" => RestartPolicy::Never,
        _ => return Err(format!("`{s}`: always|host-failure-only|never")),
    })
}

/// A VM's own restart limit, if the scenario gives one.
fn restart_limit(v: &VmSpec) -> Result<Option<RestartLimit>, String> {
    if v.max_restarts.is_none() && v.restart_window.is_none() {
        return Ok(None);
    }
    let cluster = RestartLimit::default();
    let window_ms = match &v.restart_window {
        Some(w) => parse_time(w)? / 1_000,
        None => cluster.window_ms,
    };
    Ok(Some(RestartLimit {
        max_restarts: v.max_restarts.unwrap_or(cluster.max_restarts),
        window_ms,
    }))
}

/// The simulator's hosts 1..=n: 64 GHz each, memory per host from `memory_mb`.
pub fn host_configs(n: u32, memory_mb: impl Fn(u32) -> u64) -> Vec<HostConfig> {
    (1..=n)
        .map(|i| {
            HostConfig::simulated(HostId(i)).with_capacity(Resources::new(64_000, memory_mb(i)))
        })
        .collect()
}

pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    let f: ScenarioFile = toml::from_str(text).map_err(|e| ScenarioError::Toml(e.to_string()))?;
    let c = &f.cluster;
    if c.hosts == 0 || c.hosts > 100_000 {
        return Err(invalid("cluster.hosts", "between 1 and 100000"));
    }
    let host_ok = |h: u32| h >= 1 && h <= c.hosts;
    for (i, d) in c.datastores.iter().enumerate() {
        if let Some(h) = d.iter().find(|h| !host_ok(**h)) {
            return Err(invalid(
                format!("cluster.datastores[{i}]"),
                format!("unknown host {h}"),
            ));
        }
    }
    let mem_of = |h: u32| {
        c.host_memory
            .get(&h.to_string())
            .copied()
            .unwrap_or(c.host_memory_mb)
    };
    let mut vms = Vec::new();
    let mut placement = Vec::new();
    let nds = c.datastores.len() as u32;
    if c.vms_per_host > 0 && nds == 0 {
        return Err(invalid(
            "cluster.vms_per_host",
            "needs at least one datastore",
        ));
    }
    let mut next = 1;
    for h in 1..=c.hosts {
        for k in 0..c.vms_per_host {
            // Home: a datastore the host mounts, round robin.
            let mounted: Vec<u32> = (1..=nds)
                .filter(|d| c.datastores[*d as usize - 1].contains(&h))
                .collect();
            let Some(&home) = mounted.get(k as usize % mounted.len().max(1)) else {
                return Err(invalid(
                    "cluster.vms_per_host",
                    format!("host {h} mounts no datastore"),
                ));
            };
            vms.push(
                VmConfig::new(VmId(next), DatastoreId(home))
                    .with_reservation(Resources::new(500, 1_024)),
            );
            placement.push((HostId(h), VmId(next)));
            next += 1;
        }
    }
    for (i, v) in c.vm.iter().enumerate() {
        let field = |f: &str| format!("cluster.vm[{i}].{f}");
        if v.home == 0 || v.home > nds {
            return Err(invalid(
                field("home"),
                format!("unknown datastore {}", v.home),
            ));
        }
        if vms.iter().any(|x: &VmConfig| x.id == VmId(v.id)) {
            return Err(invalid(field("id"), format!("duplicate VM {}", v.id)));
        }
        let ha = VmHaSettings {
            priority: priority(&v.priority).map_err(|e| invalid(field("priority"), e))?,
            isolation_response: isolation(&v.isolation_response)
                .map_err(|e| invalid(field("isolation_response"), e))?,
            restart_policy: policy(&v.restart_policy)
                .map_err(|e| invalid(field("restart_policy"), e))?,
            storage_loss_response: storage_loss(&v.storage_loss_response)
                .map_err(|e| invalid(field("storage_loss_response"), e))?,
            restart_limit: restart_limit(v).map_err(|e| invalid(field("restart_window"), e))?,
            restart_cleared: 0,
            power_request: None,
        };
        vms.push(
            VmConfig::new(VmId(v.id), DatastoreId(v.home))
                .with_reservation(Resources::new(500, v.memory_mb))
                .with_ha(ha)
                .with_depends_on(v.depends_on.iter().copied().map(VmId))
                .with_anti_affinity_group(v.anti_affinity.clone()),
        );
        if let Some(h) = v.host {
            if !host_ok(h) {
                return Err(invalid(field("host"), format!("unknown host {h}")));
            }
            placement.push((HostId(h), VmId(v.id)));
        }
    }
    let mut ha = HaSettings {
        failover_hosts: c.failover_hosts.iter().map(|h| HostId(*h)).collect(),
        restart_retry_ms: vec![0, 2_000, 5_000, 10_000],
        ..HaSettings::default()
    };
    if let Some(n) = c.max_concurrent_power_ons_per_host {
        ha.max_concurrent_power_ons_per_host = n;
    }
    if let Some(t) = &c.storage_loss_timeout {
        let us = parse_time(t).map_err(|e| invalid("cluster.storage_loss_timeout", e))?;
        ha.storage_loss_timeout_ms = Some(us / 1_000);
    }
    if let Some(n) = c.same_host_restart_attempts {
        ha.same_host_restart_attempts = n;
    }
    if let Some(ms) = c.same_host_restart_wait_ms {
        ha.same_host_restart_wait_ms = ms;
    }
    if let Some(r) = &c.restart_retry_ms {
        ha.restart_retry_ms = r.clone();
    }
    let timings = Timings::default()
        .with_overrides(&f.timings)
        .map_err(|e| invalid("timings", e.to_string()))?;
    let mut drift = BTreeMap::new();
    for (h, p) in &c.drift_ppm {
        let id: u32 = h
            .parse()
            .map_err(|_| invalid("cluster.drift_ppm", format!("`{h}` is not a host id")))?;
        drift.insert(HostId(id), *p);
    }
    let net = NetParams {
        loss: f.network.loss,
        duplicate: f.network.duplicate,
        latency_us: f.network.latency_ms.map_or(200, |m| (m * 1000.0) as u64),
        jitter_us: f.network.jitter_ms.map_or(300, |m| (m * 1000.0) as u64),
        ..NetParams::default()
    };
    let params = SimParams {
        seed: f.seed,
        timings,
        net,
        drift_ppm: drift,
        power_on_us: match c.power_on_ms {
            Some(ms) => ms
                .checked_mul(1_000)
                .ok_or_else(|| invalid("cluster.power_on_ms", "too large"))?,
            None => SimParams::default().power_on_us,
        },
        autostart: c.autostart,
        ..SimParams::default()
    };
    let mut faults = Vec::new();
    for (i, fs) in f.fault.iter().enumerate() {
        let at = parse_time(&fs.at).map_err(|e| invalid(format!("fault[{i}].at"), e))?;
        faults.push((
            at,
            fault(fs, c.hosts).map_err(|e| invalid(format!("fault[{i}]"), e))?,
        ));
    }
    let mut expects = Vec::new();
    for (i, es) in f.expect.iter().enumerate() {
        let at = parse_time(&es.at).map_err(|e| invalid(format!("expect[{i}].at"), e))?;
        expects.push((
            at,
            expect(es).map_err(|e| invalid(format!("expect[{i}]"), e))?,
        ));
    }
    let duration = parse_time(&f.duration).map_err(|e| invalid("duration", e))?;
    let config = ClusterConfig::new(ClusterId(7))
        .with_ha(ha)
        .with_hosts(host_configs(c.hosts, mem_of))
        .with_layout(&c.datastores)
        .with_vms(vms);
    // The agents would refuse the layout and run without it; a scenario about such a cluster
    // models nothing fdm runs.
    config
        .check_layout()
        .map_err(|e| invalid("cluster.datastores", e.to_string()))?;
    Ok(Scenario {
        name: f.name,
        models: f.models,
        config,
        params,
        placement,
        faults,
        expects,
        duration,
        all_running_at_end: f.expect_all_running_at_end,
    })
}

fn fault(f: &FaultSpec, n: u32) -> Result<Fault, String> {
    let host = || {
        f.host
            .filter(|h| *h >= 1 && *h <= n)
            .map(HostId)
            .ok_or_else(|| format!("`{}` needs a valid `host`", f.kind))
    };
    let ds = || {
        f.ds.map(DatastoreId)
            .ok_or_else(|| format!("`{}` needs `ds`", f.kind))
    };
    let vm = || {
        f.vm.map(VmId)
            .ok_or_else(|| format!("`{}` needs `vm`", f.kind))
    };
    let reboot = f.reboot.unwrap_or(false);
    Ok(match f.kind.as_str() {
        "crash" => Fault::Crash {
            host: host()?,
            reboot,
        },
        "boot" => Fault::Boot { host: host()? },
        "agent-restart" => Fault::AgentRestart { host: host()? },
        "agent-hang" => Fault::AgentHang { host: host()? },
        "agent-thaw" => Fault::AgentThaw { host: host()? },
        "partition" => Fault::Partition {
            groups: f
                .groups
                .clone()
                .ok_or("`partition` needs `groups`")?
                .into_iter()
                .map(|g| g.into_iter().map(HostId).collect())
                .collect(),
        },
        "cut-one-way" => Fault::CutOneWay {
            from: host()?,
            to: HostId(f.to.ok_or("`cut-one-way` needs `to`")?),
        },
        "heal" => Fault::Heal,
        "isolate" => Fault::Isolate { host: host()? },
        "unisolate" => Fault::Unisolate { host: host()? },
        "ds-loss" => Fault::DsLoss {
            host: host()?,
            ds: ds()?,
        },
        "ds-restore" => Fault::DsRestore {
            host: host()?,
            ds: ds()?,
        },
        "ds-hang" => Fault::DsHang {
            host: host()?,
            ds: ds()?,
        },
        "ds-unhang" => Fault::DsUnhang {
            host: host()?,
            ds: ds()?,
        },
        "ds-dead" => Fault::DsDead { ds: ds()? },
        "ds-alive" => Fault::DsAlive { ds: ds()? },
        "torn-write" => Fault::TornWrite {
            host: host()?,
            ds: ds()?,
        },
        "loss" => Fault::Loss {
            p: f.p.ok_or("`loss` needs `p`")?,
        },
        "duplicate" => Fault::Duplicate {
            p: f.p.ok_or("`duplicate` needs `p`")?,
        },
        "delay" => Fault::Delay {
            latency_us: (f.latency_ms.ok_or("`delay` needs `latency_ms`")? * 1000.0) as u64,
            jitter_us: (f.jitter_ms.unwrap_or(0.0) * 1000.0) as u64,
        },
        "delay-spike" => Fault::DelaySpike {
            p: f.p.ok_or("`delay-spike` needs `p`")?,
            max_us: (f.max_ms.ok_or("`delay-spike` needs `max_ms`")? * 1000.0) as u64,
        },
        "rack-cut" => Fault::RackCut {
            hosts: f
                .hosts
                .clone()
                .ok_or("`rack-cut` needs `hosts`")?
                .into_iter()
                .map(HostId)
                .collect(),
        },
        "vm-stop-after-master-change" => Fault::VmStopAfterMasterChange { vm: vm()? },
        "stall-next-command" => Fault::StallNextCommand {
            hold_us: (f.max_ms.ok_or("`stall-next-command` needs `max_ms`")? * 1000.0) as u64,
        },
        "vm-crash" => Fault::VmCrash { vm: vm()? },
        "crash-loop" => Fault::CrashLoop {
            vm: vm()?,
            after_us: (f.after_ms.ok_or("`crash-loop` needs `after_ms`")? * 1000.0) as Micros,
        },
        "vm-clear" => Fault::VmClear { vm: vm()? },
        "vm-request-stop" => Fault::PowerRequest {
            vm: vm()?,
            on: false,
        },
        "vm-request-start" => Fault::PowerRequest {
            vm: vm()?,
            on: true,
        },
        "protect" => Fault::Protect {
            vm: vm()?,
            protected: true,
        },
        "unprotect" => Fault::Protect {
            vm: vm()?,
            protected: false,
        },
        "vm-stop" => Fault::VmStop { vm: vm()? },
        "crash-master" => Fault::CrashMaster { reboot },
        "crash-master-on-restart" => Fault::CrashMasterOnRestart,
        "power-on-fails" => Fault::PowerOnFails {
            host: host()?,
            fails: true,
        },
        "power-on-works" => Fault::PowerOnFails {
            host: host()?,
            fails: false,
        },
        "pause-ha" => Fault::PauseHa { paused: true },
        "resume-ha" => Fault::PauseHa { paused: false },
        "management-down" => Fault::ManagementDown,
        "heal-all" => Fault::HealAll,
        other => return Err(format!("unknown fault kind `{other}`")),
    })
}

fn expect(e: &ExpectSpec) -> Result<Expect, String> {
    let vm = || {
        e.vm.map(VmId)
            .ok_or_else(|| format!("`{}` needs `vm`", e.kind))
    };
    let host = || {
        e.host
            .map(HostId)
            .ok_or_else(|| format!("`{}` needs `host`", e.kind))
    };
    Ok(match e.kind.as_str() {
        "vm-on" => Expect::VmOn {
            vm: vm()?,
            hosts: e
                .hosts
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(HostId)
                .collect(),
        },
        "vm-stopped" => Expect::VmStopped { vm: vm()? },
        "all-running" => Expect::AllRunning,
        "verdict" => Expect::Verdict {
            host: host()?,
            verdict: e.verdict.clone().ok_or("`verdict` needs `verdict`")?,
        },
        "master" => Expect::Master { host: host()? },
        "masters" => Expect::Masters {
            count: e.count.ok_or("`masters` needs `count`")?,
        },
        "no-restarts" => Expect::NoRestarts,
        "restarts" => Expect::Restarts {
            count: e.count.ok_or("`restarts` needs `count`")?,
        },
        "vm-failed" => Expect::VmFailed { vm: vm()? },
        "vm-restarts" => Expect::VmRestarts {
            vm: vm()?,
            count: e.count.ok_or("`vm-restarts` needs `count`")?,
        },
        "role" => Expect::Role {
            host: host()?,
            role: e.role.clone().ok_or("`role` needs `role`")?,
        },
        "start-order" => Expect::StartOrder {
            vms: e
                .vms
                .clone()
                .filter(|v| v.len() >= 2)
                .ok_or("`start-order` needs `vms` (two or more)")?
                .into_iter()
                .map(VmId)
                .collect(),
        },
        "no-stop" => Expect::NoStop {
            from: parse_time(e.from.as_deref().ok_or("`no-stop` needs `from`")?)?,
            vm: e.vm.map(VmId),
        },
        "vm-pending" => Expect::VmPending { vm: vm()? },
        "event-seen" => Expect::EventSeen {
            event: e.event.clone().ok_or("`event-seen` needs `event`")?,
            vm: e.vm.map(VmId),
        },
        "event-not-seen" => Expect::EventNotSeen {
            event: e.event.clone().ok_or("`event-not-seen` needs `event`")?,
            vm: e.vm.map(VmId),
        },
        "vm-paused" => Expect::VmPaused {
            vm: vm()?,
            hosts: e
                .hosts
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(HostId)
                .collect(),
        },
        "vm-not-paused" => Expect::VmNotPaused { vm: vm()? },
        other => return Err(format!("unknown expectation kind `{other}`")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_time("12.5s"), Ok(12_500_000));
        assert_eq!(parse_time("300ms"), Ok(300_000));
        assert_eq!(parse_time("2m"), Ok(120_000_000));
        assert!(parse_time("12").is_err());
        assert!(parse_time("-1s").is_err());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let base = "name='x'\nmodels='y'\nduration='10s'\n[cluster]\nhosts=2\ndatastores=[[1,2]]\n";
        assert!(parse(base).is_ok());
        let e = parse(&format!("{base}[[fault]]\nat='1s'\nkind='explode'\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("fault[0]") && e.contains("explode"), "{e}");
        let e = parse(&format!("{base}[[fault]]\nat='1'\nkind='crash'\nhost=1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unit"), "{e}");
        let e = parse(&format!("{base}[[fault]]\nat='1s'\nkind='crash'\nhost=9\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("host"), "{e}");
        let e =
            parse("name='x'\nmodels='y'\nduration='10s'\n[cluster]\nhosts=2\ndatastores=[[1,5]]\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("unknown host 5"), "{e}");
        assert!(matches!(parse("nonsense = "), Err(ScenarioError::Toml(_))));
        let e = parse(&format!(
            "{base}[[expect]]\nat='1s'\nkind='event-not-seen'\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("expect[0]") && e.contains("needs `event`"),
            "{e}"
        );
        let e = parse(&format!("{base}[[expect]]\nat='1s'\nkind='vm-paused'\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs `vm`"), "{e}");
    }
}
