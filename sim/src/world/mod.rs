//! The simulated world: hosts running the real `Agent`, a network, shared datastores, hypervisors,
//! and a discrete-event queue in virtual time. Every source of nondeterminism is the seeded `Rng`.

use crate::rng::Rng;
use fdm_core::{
    Agent, AgentSettings, Event, FaultKnobs, HypervisorAction, HypervisorEvent, Output, Role,
    StopCause, Time, Timings, Verdict, VmRunState,
};
use heartbeat_fs::mem::{Caller, MemDatastore};
use heartbeat_fs::ops::{DsCompletion, DsError, DsOp, DsRequest, IoKind};
use heartbeat_fs::records::{ClusterConfig, RestartState};
use heartbeat_fs::{DatastoreId, HostId, VmId};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

mod hypervisor;
mod net;
mod storage;

/// A ping (isolation address, liveness probe) answers after this long.
const PING_US: Micros = 1_000;

/// Microseconds of virtual time.
pub type Micros = u64;

/// Where the envelope keeps the message kind, and the kind of a power-on command (pinned by the
/// wire's golden tests; checked against the agent's own numbering in a test below).
const WIRE_KIND_AT: usize = 5;
const POWER_ON_KIND: u8 = 5;

pub fn us(d: Duration) -> Micros {
    d.as_micros() as Micros
}

#[derive(Debug, Clone)]
pub struct NetParams {
    pub latency_us: Micros,
    pub jitter_us: Micros,
    pub loss: f64,
    pub duplicate: f64,
    /// Probability that a datagram is held up, and for up to how long: UDP promises no delivery
    /// time, and the safety argument must hold whatever the delay (only liveness may suffer).
    pub stall: f64,
    pub stall_max_us: Micros,
}

impl Default for NetParams {
    fn default() -> Self {
        NetParams {
            latency_us: 200,
            jitter_us: 300,
            loss: 0.0,
            duplicate: 0.0,
            stall: 0.0,
            stall_max_us: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimParams {
    pub seed: u64,
    pub timings: Timings,
    pub knobs: FaultKnobs,
    pub net: NetParams,
    pub ds_latency_us: Micros,
    pub power_on_us: Micros,
    pub power_on_fail: f64,
    pub reboot_us: Micros,
    /// Per host clock-rate error, ppm (positive: runs fast).
    pub drift_ppm: BTreeMap<HostId, i64>,
    pub trace: bool,
    /// The hypervisors start at boot every VM their host ran when it crashed, before the agent
    /// runs (libvirt autostart left on by an operator): copies fdm did not start, which the agents
    /// must end (`invariants::stale_copy_ended`).
    pub autostart: bool,
}

impl Default for SimParams {
    fn default() -> Self {
        SimParams {
            seed: 1,
            timings: Timings::default(),
            knobs: FaultKnobs::default(),
            net: NetParams::default(),
            ds_latency_us: 1_000,
            power_on_us: 300_000,
            power_on_fail: 0.0,
            reboot_us: 20_000_000,
            drift_ppm: BTreeMap::new(),
            trace: false,
            autostart: false,
        }
    }
}

/// A fault injected at a point of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Power loss: agent and VMs gone. Reboots after `reboot_us` if `reboot` is set.
    Crash {
        host: HostId,
        reboot: bool,
    },
    Boot {
        host: HostId,
    },
    AgentRestart {
        host: HostId,
    },
    /// The agent stops running (hung process): no input is processed, no watchdog kick.
    AgentHang {
        host: HostId,
    },
    AgentThaw {
        host: HostId,
    },
    Partition {
        groups: Vec<Vec<HostId>>,
    },
    CutOneWay {
        from: HostId,
        to: HostId,
    },
    Heal,
    Isolate {
        host: HostId,
    },
    Unisolate {
        host: HostId,
    },
    DsLoss {
        host: HostId,
        ds: DatastoreId,
    },
    DsRestore {
        host: HostId,
        ds: DatastoreId,
    },
    DsHang {
        host: HostId,
        ds: DatastoreId,
    },
    DsUnhang {
        host: HostId,
        ds: DatastoreId,
    },
    /// The datastore fails for everyone.
    DsDead {
        ds: DatastoreId,
    },
    DsAlive {
        ds: DatastoreId,
    },
    /// The next heartbeat write of the host on the datastore lands torn.
    TornWrite {
        host: HostId,
        ds: DatastoreId,
    },
    Loss {
        p: f64,
    },
    Delay {
        latency_us: Micros,
        jitter_us: Micros,
    },
    Duplicate {
        p: f64,
    },
    /// A fraction `p` of datagrams is held up for up to `max_us` (a congested or flapping path with
    /// deep buffers): late and out of order, but delivered.
    DelaySpike {
        p: f64,
        max_us: Micros,
    },
    /// A rack's top-of-rack switch, which carries both its storage and its management traffic, fails:
    /// `hosts` are cut off from every other host and from every datastore, and keep running.
    RackCut {
        hosts: Vec<HostId>,
    },
    /// An operator stops `vm` the moment a new master takes over (the next master change).
    VmStopAfterMasterChange {
        vm: VmId,
    },
    /// The next power-on command anyone sends is held up for `hold_us` on its way: it arrives late,
    /// after the master has resent it and things have moved on (a stale command).
    StallNextCommand {
        hold_us: Micros,
    },
    VmCrash {
        vm: VmId,
    },
    /// From now on `vm` crashes `after_us` after every start (a guest that dies on every boot),
    /// the copy running now included.
    CrashLoop {
        vm: VmId,
        after_us: Micros,
    },
    /// Internal to `CrashLoop`: the copy of `vm` started at `started` crashes, if it still runs.
    CrashLoopTick {
        vm: VmId,
        started: Micros,
    },
    /// An operator starts or stops a VM through HA (`fdmctl vm start|stop`): a new configuration
    /// generation that carries the request in the VM's `power_request`.
    PowerRequest {
        vm: VmId,
        on: bool,
    },
    /// An operator clears a failed VM (`fdmctl vm clear`): a new configuration generation that
    /// carries the clear in the VM's `restart_cleared`.
    VmClear {
        vm: VmId,
    },
    /// The management plane protects or unprotects a VM: a new configuration generation on every
    /// datastore, which the agents pick up on their own schedule.
    Protect {
        vm: VmId,
        protected: bool,
    },
    /// An operator stops the VM (it must stay stopped).
    VmStop {
        vm: VmId,
    },
    /// Crash whoever is master now.
    CrashMaster {
        reboot: bool,
    },
    /// Crash the master the moment it issues its next restart (middle of a failover).
    CrashMasterOnRestart,
    PowerOnFails {
        host: HostId,
        fails: bool,
    },
    PauseHa {
        paused: bool,
    },
    /// Management plane down: nothing changes for the agents (they keep the last configuration).
    ManagementDown,
    /// Everything back to normal: network healed, storage back, hosts booted, agents thawed.
    HealAll,
}

#[derive(Debug)]
enum Ev {
    Datagram {
        to: HostId,
        payload: Vec<u8>,
    },
    Ds {
        host: HostId,
        inc: u64,
        completion: DsCompletion,
    },
    /// A datastore call reaches the storage: it takes effect now (the host's worker for that
    /// datastore runs one call at a time, like `heartbeat_fs::fs::DatastoreExecutor`).
    DsExec {
        host: HostId,
        inc: u64,
        request: DsRequest,
        /// Past the executor's deadline the caller was answered `Timeout` already; the call still
        /// takes effect, as a syscall that was under way does.
        timed_out: bool,
    },
    Hv {
        host: HostId,
        inc: u64,
        event: HypervisorEvent,
    },
    PowerOnDone {
        host: HostId,
        inc: u64,
        op: u64,
        vm: VmId,
    },
    Isolation {
        host: HostId,
        inc: u64,
    },
    Probe {
        host: HostId,
        inc: u64,
        target: HostId,
    },
    Timer {
        host: HostId,
        inc: u64,
    },
    Watchdog {
        host: HostId,
        inc: u64,
    },
    Fault(Fault),
    Boot {
        host: HostId,
    },
}

/// A queued event; ordered by time, then by the order it was scheduled (FIFO at one instant), which
/// is what makes a run a pure function of its seed.
#[derive(Debug)]
struct Scheduled {
    at: Micros,
    seq: u64,
    ev: Box<Ev>,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    HostCrash,
    VmCrash,
    Operator,
    Agent(StopCause),
}

#[derive(Debug)]
pub struct SimHost {
    pub id: HostId,
    pub agent: Option<Agent>,
    pub incarnation: u64,
    pub powered: bool,
    pub hung: bool,
    pub network_up: bool,
    /// Sim time of the agent's start, and its clock rate.
    pub agent_base: Micros,
    drift_ppm: i64,
    pub running: BTreeMap<VmId, Micros>,
    /// Of `running`, the VMs frozen by a `Pause` (the storage-loss response), since when. A paused
    /// VM holds its memory and disks: it stays in `running` for every invariant.
    pub paused: BTreeMap<VmId, Micros>,
    pub ds_lost: BTreeSet<DatastoreId>,
    pub ds_hung: BTreeSet<DatastoreId>,
    /// Datastores whose executor worker is stuck in a hung call.
    ds_stuck: BTreeSet<DatastoreId>,
    /// When each datastore's worker is free again (calls run one at a time).
    ds_busy_until: BTreeMap<DatastoreId, Micros>,
    torn_next: BTreeSet<DatastoreId>,
    /// Last time each datastore was faulty for this host (lost, hung, dead).
    pub ds_fault_at: BTreeMap<DatastoreId, Micros>,
    /// What ran here when the host last crashed (started again at boot with `autostart`).
    ran_at_crash: Vec<VmId>,
    timer_at: Option<Micros>,
    last_kick: Option<Micros>,
    watchdog_pending: bool,
    pub power_on_fails: bool,
    /// Inputs that reached the agent while it was hung (a stopped process): delivered at the thaw,
    /// like a socket buffer and the executor's completion queue. Datagrams beyond the buffer drop.
    held: Vec<Ev>,
}

/// A record of the run, for the JSON-lines trace and the checks.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TraceLine {
    pub t: f64,
    pub host: Option<u32>,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub invariant: &'static str,
    pub at: Micros,
    pub detail: String,
}

pub struct World {
    pub now: Micros,
    pub params: SimParams,
    rng: Rng,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    pub hosts: Vec<SimHost>,
    pub ds: BTreeMap<DatastoreId, MemDatastore>,
    pub ds_dead: BTreeSet<DatastoreId>,
    groups: BTreeMap<HostId, usize>,
    oneway: BTreeSet<(HostId, HostId)>,
    pub config: ClusterConfig,
    /// The configuration every agent starts from, shared (one copy for thousands of agents).
    view: std::sync::Arc<fdm_core::cluster::ClusterView>,
    pub trace: Vec<TraceLine>,
    pub violations: Vec<Violation>,
    pub events_processed: u64,
    pub messages: u64,
    /// Every completed power-on: (time, host, vm).
    pub power_ons: Vec<(Micros, HostId, VmId)>,
    /// How each VM last stopped, and when.
    pub stops: BTreeMap<VmId, (Micros, HostId, StopKind)>,
    /// Every stop HA made of a running VM: (time, host, vm, cause).
    pub agent_stops: Vec<(Micros, HostId, VmId, StopCause)>,
    /// When each datastore's claim was last written held (acquired or renewed, not released).
    pub claim_renewed_at: BTreeMap<DatastoreId, Micros>,
    /// When each datastore's claim was last released.
    pub claim_released_at: BTreeMap<DatastoreId, Micros>,
    /// Since when every host is up with a running agent and the network is whole (no partition,
    /// cut, isolation, loss or long delay): no competing master is possible.
    pub whole_since: Option<Micros>,
    /// Protected VMs HA stopped and that run nowhere yet, since when; and the VM-seconds closed.
    pub ha_down_since: BTreeMap<VmId, Micros>,
    pub ha_downtime_us: u128,
    /// VM-seconds (as microseconds) VMs spent paused by the storage-loss response, closed spans;
    /// and how many pauses the agents made.
    pub paused_us: u128,
    pub pauses: usize,
    /// The name of every event any agent emitted, with the VMs they were about.
    pub events_seen: BTreeMap<String, BTreeSet<Option<VmId>>>,
    /// Host crash times (for detection statistics).
    pub crashes: Vec<(Micros, HostId)>,
    /// First "dead" verdict per host after each crash: (crash time, verdict time).
    pub detections: Vec<(HostId, Micros, Micros)>,
    /// "Dead" verdicts on hosts that were powered on with a running agent at the time: false
    /// positives of failure detection (subject, time).
    pub false_dead: Vec<(HostId, Micros)>,
    /// Every restart the masters issued: (time, VM).
    pub restarts_issued: Vec<(Micros, VmId)>,
    /// VMs the management plane unprotected, and since when.
    pub unprotected_since: BTreeMap<VmId, Micros>,
    /// Host whose agent's handler time and incoming datagrams are measured (the scale benchmark).
    pub profile: Option<HostId>,
    /// Wall time spent inside the profiled agent's handlers, nanoseconds.
    pub profile_busy_ns: u64,
    /// Datagrams delivered to the profiled agent.
    pub profile_datagrams: u64,
    /// VMs the operator stopped: they must stay stopped.
    pub operator_stopped: BTreeSet<VmId>,
    /// Of those, the ones stopped on a host cut off from some other host at that moment (partition,
    /// isolation, a rack): the master that restarts the VM may be one that cannot hear that host,
    /// and it cannot tell such a stop from the host's failure, so restarting them is allowed.
    pub operator_stop_unknowable: BTreeSet<VmId>,
    crash_master_on_restart: bool,
    /// VMs an operator stops at the next master change.
    stop_on_master_change: Vec<VmId>,
    /// Hold the next power-on command for this long.
    stall_next_command: Option<Micros>,
    /// VMs that crash this long after every start.
    pub crash_loops: BTreeMap<VmId, Micros>,
    /// Recent agent events (for violation reports).
    pub recent: std::collections::VecDeque<TraceLine>,
    /// Copies the hypervisor started on its own (autostart at boot), by host and VM, with their
    /// start time: not fdm's starts, so exempt from `no_vm_on_two_hosts`, and watched by
    /// `stale_copy_ended` while they run (an entry whose copy has stopped is pruned).
    pub outside: BTreeMap<(HostId, VmId), Micros>,
    /// Outside copies already reported for running beside another copy too long.
    pub outside_reported: BTreeSet<(HostId, VmId)>,
    /// Outside copies that ran beside another copy, and the ones stopped by HA.
    pub stale_copies: usize,
    pub stale_copies_stopped: usize,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "World(t={}us, {} hosts)", self.now, self.hosts.len())
    }
}

fn ppm(x: Micros, ppm: i64) -> Micros {
    ((x as i128 * (1_000_000 + ppm as i128)) / 1_000_000) as Micros
}

/// The least sim-time span whose drifted length reaches `x`: the exact inverse of `ppm`, rounded up,
/// so that a timer fires no earlier than the agent asked (rounding down would re-fire forever).
fn unppm(x: Micros, ppm: i64) -> Micros {
    let rate = 1_000_000 + ppm as i128;
    ((x as i128 * 1_000_000 + rate - 1) / rate) as Micros
}

impl World {
    /// A world with the configuration written to every datastore and the initial VMs running.
    pub fn new(config: ClusterConfig, params: SimParams, placement: &[(HostId, VmId)]) -> Self {
        let mut ds = BTreeMap::new();
        for d in &config.datastores {
            let mut m = MemDatastore::new(d.id);
            m.config = Some(config.clone());
            ds.insert(d.id, m);
        }
        let hosts = config
            .hosts
            .iter()
            .map(|h| SimHost {
                id: h.id,
                agent: None,
                incarnation: 0,
                powered: true,
                hung: false,
                network_up: true,
                agent_base: 0,
                drift_ppm: params.drift_ppm.get(&h.id).copied().unwrap_or(0),
                running: BTreeMap::new(),
                paused: BTreeMap::new(),
                ds_lost: BTreeSet::new(),
                ds_hung: BTreeSet::new(),
                ds_stuck: BTreeSet::new(),
                ds_busy_until: BTreeMap::new(),
                torn_next: BTreeSet::new(),
                ds_fault_at: BTreeMap::new(),
                ran_at_crash: Vec::new(),
                timer_at: None,
                last_kick: None,
                watchdog_pending: false,
                power_on_fails: false,
                held: Vec::new(),
            })
            .collect();
        let mut w = World {
            now: 0,
            rng: Rng::new(params.seed),
            params,
            queue: BinaryHeap::new(),
            seq: 0,
            hosts,
            ds,
            ds_dead: BTreeSet::new(),
            groups: BTreeMap::new(),
            oneway: BTreeSet::new(),
            view: std::sync::Arc::new(fdm_core::cluster::ClusterView::new(config.clone())),
            config,
            trace: Vec::new(),
            violations: Vec::new(),
            events_processed: 0,
            messages: 0,
            power_ons: Vec::new(),
            stops: BTreeMap::new(),
            agent_stops: Vec::new(),
            claim_renewed_at: BTreeMap::new(),
            claim_released_at: BTreeMap::new(),
            whole_since: None,
            ha_down_since: BTreeMap::new(),
            ha_downtime_us: 0,
            paused_us: 0,
            pauses: 0,
            events_seen: BTreeMap::new(),
            crashes: Vec::new(),
            detections: Vec::new(),
            false_dead: Vec::new(),
            restarts_issued: Vec::new(),
            unprotected_since: BTreeMap::new(),
            profile: None,
            profile_busy_ns: 0,
            profile_datagrams: 0,
            operator_stopped: BTreeSet::new(),
            operator_stop_unknowable: BTreeSet::new(),
            crash_master_on_restart: false,
            stop_on_master_change: Vec::new(),
            stall_next_command: None,
            crash_loops: BTreeMap::new(),
            recent: std::collections::VecDeque::new(),
            outside: BTreeMap::new(),
            outside_reported: BTreeSet::new(),
            stale_copies: 0,
            stale_copies_stopped: 0,
        };
        for &(h, vm) in placement {
            if let Some(i) = w.idx(h) {
                w.hosts[i].running.insert(vm, 0);
            }
        }
        let ids: Vec<HostId> = w.hosts.iter().map(|h| h.id).collect();
        for h in ids {
            w.start_agent(h);
        }
        w.refresh_whole();
        w
    }

    fn idx(&self, h: HostId) -> Option<usize> {
        let i = h.0.checked_sub(1)? as usize;
        (i < self.hosts.len() && self.hosts[i].id == h)
            .then_some(i)
            .or_else(|| self.hosts.iter().position(|x| x.id == h))
    }

    fn push(&mut self, at: Micros, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            ev: Box::new(ev),
        }));
    }

    pub fn schedule_fault(&mut self, at: Micros, f: Fault) {
        self.push(at, Ev::Fault(f));
    }

    fn log(&mut self, host: Option<HostId>, what: String) {
        let line = TraceLine {
            t: self.now as f64 / 1e6,
            host: host.map(|h| h.0),
            what,
        };
        self.recent.push_back(line.clone());
        if self.recent.len() > 40 {
            self.recent.pop_front();
        }
        if self.params.trace {
            self.trace.push(line);
        }
    }

    fn violate(&mut self, invariant: &'static str, detail: String) {
        self.log(None, format!("VIOLATION {invariant}: {detail}"));
        self.violations.push(Violation {
            invariant,
            at: self.now,
            detail,
        });
    }

    fn agent_now(&self, i: usize) -> Time {
        let h = &self.hosts[i];
        Time::from_micros(h.agent_base + ppm(self.now - h.agent_base, h.drift_ppm))
    }

    fn start_agent(&mut self, h: HostId) {
        let Some(i) = self.idx(h) else { return };
        let datastores: Vec<DatastoreId> = self.config.mounted_by(h).into_iter().collect();
        let host = &mut self.hosts[i];
        host.incarnation += 1;
        host.agent_base = self.now;
        host.timer_at = None;
        host.last_kick = None;
        host.watchdog_pending = false;
        host.hung = false;
        host.ds_stuck.clear();
        host.ds_busy_until.clear();
        host.held.clear();
        let settings = AgentSettings::new(
            h,
            host.incarnation,
            self.config.cluster,
            [0x5a; 32],
            datastores,
            self.params.timings.clone(),
        );
        let now = Time::from_micros(self.now);
        let mut agent = Agent::with_shared_config(settings, self.view.clone(), now);
        agent.remove_safety_steps(self.params.knobs);
        host.agent = Some(agent);
        self.log(
            Some(h),
            format!("agent started (incarnation {})", self.hosts[i].incarnation),
        );
        self.drain(i);
    }

    fn release_locks(&mut self, i: usize) {
        let caller = Caller {
            host: self.hosts[i].id,
            incarnation: self.hosts[i].incarnation,
        };
        for d in self.ds.values_mut() {
            d.release_locks_of(caller);
        }
    }

    fn crash(&mut self, h: HostId, reboot: bool) {
        let Some(i) = self.idx(h) else { return };
        if !self.hosts[i].powered {
            return;
        }
        self.release_locks(i);
        let host = &mut self.hosts[i];
        host.powered = false;
        host.agent = None;
        host.hung = false;
        host.held.clear();
        let vms: Vec<VmId> = host.running.keys().copied().collect();
        host.ran_at_crash.clone_from(&vms);
        host.running.clear();
        for vm in &vms {
            self.unpause(i, *vm);
        }
        for vm in vms {
            self.stops.insert(vm, (self.now, h, StopKind::HostCrash));
        }
        self.crashes.push((self.now, h));
        self.log(Some(h), "host crashed".into());
        if reboot {
            let at = self.now + self.params.reboot_us;
            self.push(at, Ev::Boot { host: h });
        }
    }

    fn boot(&mut self, h: HostId) {
        let Some(i) = self.idx(h) else { return };
        if self.hosts[i].powered {
            return;
        }
        self.hosts[i].powered = true;
        self.log(Some(h), "host booted".into());
        if self.params.autostart {
            for vm in std::mem::take(&mut self.hosts[i].ran_at_crash) {
                self.hosts[i].running.insert(vm, self.now);
                self.outside.insert((h, vm), self.now);
                self.ha_down_since.remove(&vm);
                if !self.where_runs(vm).iter().all(|&o| o == h) {
                    self.stale_copies += 1;
                }
                self.log(
                    Some(h),
                    format!("{vm} autostarted by the hypervisor (not by fdm)"),
                );
            }
        }
        self.start_agent(h);
    }

    /// Can a datagram go from `a` to `b` now?
    pub fn linked(&self, a: HostId, b: HostId) -> bool {
        let (Some(ia), Some(ib)) = (self.idx(a), self.idx(b)) else {
            return false;
        };
        let (ha, hb) = (&self.hosts[ia], &self.hosts[ib]);
        ha.powered
            && hb.powered
            && ha.network_up
            && hb.network_up
            && self.groups.get(&a) == self.groups.get(&b)
            && !self.oneway.contains(&(a, b))
    }

    fn drain(&mut self, i: usize) {
        loop {
            let Some(agent) = self.hosts[i].agent.as_mut() else {
                return;
            };
            let Some(out) = agent.poll_output() else {
                break;
            };
            self.output(i, out);
        }
        // Re-arm the timer when the core's next deadline moved.
        let h = &self.hosts[i];
        let Some(deadline) = h.agent.as_ref().and_then(|a| a.poll_timeout()) else {
            return;
        };
        let rel = deadline.as_micros().saturating_sub(h.agent_base);
        let at = (h.agent_base + unppm(rel, h.drift_ppm)).max(self.now);
        // A timer already due no later stays: when it fires early the core does nothing and the
        // timer is re-armed; not queueing a new event per moved deadline keeps the queue small.
        if h.timer_at.is_none_or(|t| t > at) {
            let (id, inc) = (h.id, h.incarnation);
            self.hosts[i].timer_at = Some(at);
            self.push(at, Ev::Timer { host: id, inc });
        }
    }

    fn output(&mut self, i: usize, out: Output) {
        let (h, inc) = (self.hosts[i].id, self.hosts[i].incarnation);
        match out {
            Output::Transmit(t) => self.transmit(h, t),
            Output::Datastore(req) => self.datastore_call(i, req),
            Output::Hypervisor(a) => self.hypervisor_action(i, a),
            Output::CheckIsolation => self.push(self.now + PING_US, Ev::Isolation { host: h, inc }),
            Output::Probe { host: target } => self.push(
                self.now + PING_US,
                Ev::Probe {
                    host: h,
                    inc,
                    target,
                },
            ),
            Output::KickWatchdog => {
                let now = self.now;
                let host = &mut self.hosts[i];
                host.last_kick = Some(now);
                if !host.watchdog_pending {
                    host.watchdog_pending = true;
                    let at = now + us(self.params.timings.watchdog_timeout);
                    self.push(at, Ev::Watchdog { host: h, inc });
                }
            }
            Output::Event(e) => self.on_agent_event(i, e),
        }
    }

    /// A fence while the host's storage for that VM was healthy for a whole lease is needless: a
    /// live host's VM stopped (and then restarted elsewhere) for nothing.
    fn check_fence(&mut self, i: usize, vm: VmId) {
        let Some(home) = self.config.vms.iter().find(|v| v.id == vm).map(|v| v.home) else {
            return;
        };
        let lease = us(self.params.timings.ds_lease);
        if crate::invariants::no_false_restart::needless_fence(
            &self.hosts[i],
            home,
            self.now,
            lease,
            &self.ds_dead,
        ) {
            let id = self.hosts[i].id;
            self.violate(
                crate::invariants::no_false_restart::NAME,
                format!("{id} fenced {vm} although its storage for {home} was healthy"),
            );
        }
    }

    fn on_agent_event(&mut self, i: usize, e: Event) {
        let h = self.hosts[i].id;
        if let Event::VerdictChanged {
            subject,
            to: Verdict::Dead,
            ..
        } = &e
            && let Some(&(t, _)) = self.crashes.iter().rev().find(|(_, c)| c == subject)
            && !self
                .detections
                .iter()
                .any(|(s, ct, _)| s == subject && *ct == t)
        {
            self.detections.push((*subject, t, self.now));
        }
        if let Event::VerdictChanged {
            subject,
            to: Verdict::Dead,
            ..
        } = &e
            && let Some(j) = self.idx(*subject)
            && self.hosts[j].powered
            && !self.hosts[j].hung
            && self.hosts[j].agent.is_some()
        {
            self.false_dead.push((*subject, self.now));
        }
        if let Event::RestartIssued { vm, .. } = &e {
            self.restarts_issued.push((self.now, *vm));
            use crate::invariants::unprotected_vm_left_alone as inv;
            if let Some(detail) = inv::at_restart_issued(self, h, *vm) {
                self.violate(inv::NAME, detail);
            }
        }
        if matches!(
            e,
            Event::RoleChanged {
                to: Role::Master,
                ..
            }
        ) && self.whole_since.is_some()
        {
            // A new master proves the membership only once every host echoed its rounds: the
            // settle time of `no_needless_stop` starts again.
            self.whole_since = Some(self.now);
        }
        if matches!(
            e,
            Event::RoleChanged {
                to: Role::Master,
                ..
            }
        ) && !self.stop_on_master_change.is_empty()
        {
            for vm in std::mem::take(&mut self.stop_on_master_change) {
                self.push(self.now, Ev::Fault(Fault::VmStop { vm }));
            }
        }
        if matches!(e, Event::RestartIssued { .. }) && self.crash_master_on_restart {
            self.crash_master_on_restart = false;
            self.log(Some(h), format!("{e:?}"));
            // The master dies right after its intent is on disk and the command left.
            self.push(
                self.now,
                Ev::Fault(Fault::Crash {
                    host: h,
                    reboot: true,
                }),
            );
            return;
        }
        let what = format!("{e:?}");
        let name = what
            .split([' ', '('])
            .next()
            .unwrap_or_default()
            .to_string();
        self.events_seen
            .entry(name)
            .or_default()
            .insert(e.subject().1);
        self.log(Some(h), what);
    }

    /// Whether no competing master is possible: every host up with a running agent, the network
    /// whole (no partition, cut, isolation, loss, stalls or long delays) and HA not paused.
    fn is_whole(&self) -> bool {
        let n = &self.params.net;
        self.hosts
            .iter()
            .all(|h| h.powered && !h.hung && h.agent.is_some() && h.network_up)
            && self.groups.values().collect::<BTreeSet<_>>().len() <= 1
            && self.oneway.is_empty()
            && n.loss == 0.0
            && n.stall == 0.0
            && n.latency_us + n.jitter_us < 50_000
            && !self.config.ha.paused
    }

    /// Called after anything that can change `is_whole` (faults, crashes, boots, agent starts).
    fn refresh_whole(&mut self) {
        match (self.is_whole(), self.whole_since) {
            (true, None) => self.whole_since = Some(self.now),
            (false, Some(_)) => self.whole_since = None,
            _ => {}
        }
    }

    /// HA-caused downtime so far, VM-seconds: protected VMs HA stopped, until they run again
    /// (still-open spans count up to now).
    pub fn ha_downtime_s(&self) -> f64 {
        let open: u128 = self
            .ha_down_since
            .values()
            .map(|&t| u128::from(self.now.saturating_sub(t)))
            .sum();
        (self.ha_downtime_us + open) as f64 / 1e6
    }

    /// VM-seconds VMs spent paused by the storage-loss response so far (open spans up to now).
    pub fn paused_s(&self) -> f64 {
        let open: u128 = self
            .hosts
            .iter()
            .flat_map(|h| h.paused.values())
            .map(|&t| u128::from(self.now.saturating_sub(t)))
            .sum();
        (self.paused_us + open) as f64 / 1e6
    }

    /// `vm` no longer paused at host `i` (resumed, stopped, crashed): its paused span closes.
    fn unpause(&mut self, i: usize, vm: VmId) {
        if let Some(since) = self.hosts[i].paused.remove(&vm) {
            self.paused_us += u128::from(self.now.saturating_sub(since));
        }
    }

    /// `vm`'s entry in its home datastore's protected list, as last written.
    pub fn protected_entry(&self, vm: VmId) -> Option<heartbeat_fs::records::ProtectedVm> {
        let home = self.config.vm(vm)?.home;
        let list = self.ds.get(&home)?.protected_list()?;
        list.vms.iter().find(|e| e.vm == vm).cloned()
    }

    /// The restart state of `vm` in its home datastore's protected list, as last written.
    pub fn restart_state(&self, vm: VmId) -> Option<heartbeat_fs::records::RestartState> {
        let home = self.config.vm(vm)?.home;
        let list = self.ds.get(&home)?.protected_list()?;
        list.vms
            .iter()
            .find(|e| e.vm == vm)
            .map(|e| e.restart.clone())
    }

    /// Feed an input to host `i`'s agent if it runs, is not hung and has incarnation `inc`.
    fn deliver(&mut self, i: usize, inc: u64, f: impl FnOnce(&mut Agent, Time)) {
        let h = &self.hosts[i];
        if !h.powered || h.hung || h.incarnation != inc {
            return;
        }
        let now = self.agent_now(i);
        let profiled = self.profile == Some(self.hosts[i].id);
        let Some(agent) = self.hosts[i].agent.as_mut() else {
            return;
        };
        if profiled {
            // Wall time on purpose: this measures the real cost of the handlers (scale benchmark),
            // it never feeds back into the simulation.
            #[allow(clippy::disallowed_methods)]
            let t0 = std::time::Instant::now();
            f(agent, now);
            self.profile_busy_ns += t0.elapsed().as_nanos() as u64;
        } else {
            f(agent, now);
        }
        self.drain(i);
    }

    fn apply(&mut self, f: Fault) {
        self.log(None, format!("fault: {f:?}"));
        match f {
            Fault::Crash { host, reboot } => self.crash(host, reboot),
            Fault::Boot { host } => self.boot(host),
            Fault::AgentRestart { host } => {
                if let Some(i) = self.idx(host)
                    && self.hosts[i].powered
                {
                    self.release_locks(i);
                    self.hosts[i].agent = None;
                    self.start_agent(host);
                }
            }
            Fault::AgentHang { host } => {
                if let Some(i) = self.idx(host) {
                    self.hosts[i].hung = true;
                }
            }
            Fault::AgentThaw { host } => {
                if let Some(i) = self.idx(host)
                    && self.hosts[i].hung
                {
                    self.hosts[i].hung = false;
                    let inc = self.hosts[i].incarnation;
                    self.hosts[i].timer_at = None;
                    for ev in std::mem::take(&mut self.hosts[i].held) {
                        self.push(self.now, ev);
                    }
                    self.deliver(i, inc, |a, now| a.handle_timeout(now));
                }
            }
            Fault::Partition { groups } => {
                self.groups.clear();
                for (g, hs) in groups.iter().enumerate() {
                    for h in hs {
                        self.groups.insert(*h, g + 1);
                    }
                }
            }
            Fault::CutOneWay { from, to } => {
                self.oneway.insert((from, to));
            }
            Fault::Heal => {
                self.groups.clear();
                self.oneway.clear();
            }
            Fault::Isolate { host } => self.set_host(host, |h| h.network_up = false),
            Fault::Unisolate { host } => self.set_host(host, |h| h.network_up = true),
            Fault::DsLoss { host, ds } => {
                let now = self.now;
                self.set_host(host, |h| {
                    h.ds_lost.insert(ds);
                    h.ds_fault_at.insert(ds, now);
                })
            }
            Fault::DsRestore { host, ds } => {
                let now = self.now;
                self.set_host(host, |h| {
                    h.ds_lost.remove(&ds);
                    h.ds_fault_at.insert(ds, now);
                })
            }
            Fault::DsHang { host, ds } => {
                let now = self.now;
                self.set_host(host, |h| {
                    h.ds_hung.insert(ds);
                    h.ds_fault_at.insert(ds, now);
                })
            }
            Fault::DsUnhang { host, ds } => {
                let now = self.now;
                self.set_host(host, |h| {
                    h.ds_hung.remove(&ds);
                    h.ds_stuck.remove(&ds);
                    h.ds_fault_at.insert(ds, now);
                })
            }
            Fault::DsDead { ds } => {
                self.ds_dead.insert(ds);
                let now = self.now;
                for h in &mut self.hosts {
                    h.ds_fault_at.insert(ds, now);
                }
            }
            Fault::DsAlive { ds } => {
                self.ds_dead.remove(&ds);
                let now = self.now;
                for h in &mut self.hosts {
                    h.ds_fault_at.insert(ds, now);
                }
            }
            Fault::TornWrite { host, ds } => self.set_host(host, |h| {
                h.torn_next.insert(ds);
            }),
            Fault::Loss { p } => self.params.net.loss = p,
            Fault::Delay {
                latency_us,
                jitter_us,
            } => {
                self.params.net.latency_us = latency_us;
                self.params.net.jitter_us = jitter_us;
            }
            Fault::Duplicate { p } => self.params.net.duplicate = p,
            Fault::DelaySpike { p, max_us } => {
                self.params.net.stall = p;
                self.params.net.stall_max_us = max_us;
            }
            Fault::RackCut { hosts } => {
                let all: Vec<HostId> = self.hosts.iter().map(|h| h.id).collect();
                let rest: Vec<HostId> = all.into_iter().filter(|h| !hosts.contains(h)).collect();
                self.apply(Fault::Partition {
                    groups: vec![hosts.clone(), rest],
                });
                let ds: Vec<DatastoreId> = self.ds.keys().copied().collect();
                for h in hosts {
                    for &d in &ds {
                        self.apply(Fault::DsLoss { host: h, ds: d });
                    }
                }
            }
            Fault::VmStopAfterMasterChange { vm } => {
                self.stop_on_master_change.push(vm);
            }
            Fault::StallNextCommand { hold_us } => self.stall_next_command = Some(hold_us),
            Fault::Protect { vm, protected } => {
                let mut cfg = self.config.clone();
                cfg.generation += 1;
                if let Some(v) = cfg.vms.iter_mut().find(|v| v.id == vm) {
                    v.protected = protected;
                }
                for d in self.ds.values_mut() {
                    d.config = Some(cfg.clone());
                }
                self.config = cfg;
                if protected {
                    self.unprotected_since.remove(&vm);
                } else {
                    self.unprotected_since.entry(vm).or_insert(self.now);
                }
            }
            Fault::VmCrash { vm } | Fault::VmStop { vm } => {
                let operator = matches!(f, Fault::VmStop { .. });
                let Some(i) = self.hosts.iter().position(|h| h.running.contains_key(&vm)) else {
                    return;
                };
                self.hosts[i].running.remove(&vm);
                self.unpause(i, vm);
                let h = self.hosts[i].id;
                let (kind, state) = if operator {
                    self.operator_stopped.insert(vm);
                    // Cut off from some live host (partition, isolation, a rack): the master that
                    // would restart the VM may be one that cannot hear this host.
                    let cut_off = self.hosts.iter().any(|o| {
                        o.id != h && o.powered && !(self.linked(h, o.id) && self.linked(o.id, h))
                    });
                    if cut_off {
                        self.operator_stop_unknowable.insert(vm);
                    }
                    (StopKind::Operator, VmRunState::StoppedByUser)
                } else {
                    (StopKind::VmCrash, VmRunState::Crashed)
                };
                self.stops.insert(vm, (self.now, h, kind));
                let inc = self.hosts[i].incarnation;
                self.push(
                    self.now + 10_000,
                    Ev::Hv {
                        host: h,
                        inc,
                        event: HypervisorEvent::VmStopped { vm, state },
                    },
                );
            }
            Fault::CrashMaster { reboot } => {
                let masters: Vec<HostId> = self.masters();
                for m in masters {
                    self.crash(m, reboot);
                }
            }
            Fault::CrashMasterOnRestart => self.crash_master_on_restart = true,
            Fault::PowerOnFails { host, fails } => {
                self.set_host(host, |h| h.power_on_fails = fails)
            }
            Fault::PauseHa { paused } => {
                self.config.generation += 1;
                self.config.ha.paused = paused;
                self.view =
                    std::sync::Arc::new(fdm_core::cluster::ClusterView::new(self.config.clone()));
                for d in self.ds.values_mut() {
                    d.config = Some(self.config.clone());
                }
            }
            Fault::CrashLoop { vm, after_us } => {
                self.crash_loops.insert(vm, after_us);
                // The copy running now crashes `after_us` from now, as if it had just started.
                let started = self.hosts.iter().find_map(|h| h.running.get(&vm).copied());
                if let Some(started) = started {
                    let at = self.now + after_us;
                    self.push(at, Ev::Fault(Fault::CrashLoopTick { vm, started }));
                }
            }
            Fault::CrashLoopTick { vm, started } => {
                // Only the copy this tick was set for: a copy started since has its own.
                if self
                    .hosts
                    .iter()
                    .any(|h| h.powered && h.running.get(&vm) == Some(&started))
                {
                    self.apply(Fault::VmCrash { vm });
                }
            }
            Fault::PowerRequest { vm, on } => {
                let mut cfg = self.config.clone();
                cfg.generation += 1;
                let generation = cfg.generation;
                if let Some(v) = cfg.vms.iter_mut().find(|v| v.id == vm) {
                    v.ha.power_request = Some(heartbeat_fs::records::PowerRequest {
                        generation,
                        power: if on {
                            heartbeat_fs::records::DesiredPower::On
                        } else {
                            heartbeat_fs::records::DesiredPower::Off
                        },
                    });
                }
                if on {
                    // Wanted on again: its restart is no longer a broken promise.
                    self.operator_stopped.remove(&vm);
                    self.operator_stop_unknowable.remove(&vm);
                }
                self.view = std::sync::Arc::new(fdm_core::cluster::ClusterView::new(cfg.clone()));
                for d in self.ds.values_mut() {
                    d.config = Some(cfg.clone());
                }
                self.config = cfg;
            }
            Fault::VmClear { vm } => {
                let mut cfg = self.config.clone();
                cfg.generation += 1;
                let generation = cfg.generation;
                if let Some(v) = cfg.vms.iter_mut().find(|v| v.id == vm) {
                    v.ha.restart_cleared = generation;
                }
                self.view = std::sync::Arc::new(fdm_core::cluster::ClusterView::new(cfg.clone()));
                for d in self.ds.values_mut() {
                    d.config = Some(cfg.clone());
                }
                self.config = cfg;
            }
            Fault::ManagementDown => {}
            Fault::HealAll => {
                self.groups.clear();
                self.oneway.clear();
                let dead = std::mem::take(&mut self.ds_dead);
                self.params.net = NetParams::default();
                let now = self.now;
                let ids: Vec<HostId> = self.hosts.iter().map(|h| h.id).collect();
                for h in &mut self.hosts {
                    h.network_up = true;
                    // A datastore dead for everyone was faulty for this host too, until now.
                    for d in &dead {
                        h.ds_fault_at.insert(*d, now);
                    }
                    for d in h.ds_lost.iter().chain(h.ds_hung.iter()) {
                        h.ds_fault_at.insert(*d, now);
                    }
                    h.ds_lost.clear();
                    h.ds_hung.clear();
                    h.ds_stuck.clear();
                    h.power_on_fails = false;
                }
                for h in ids {
                    let i = self.idx(h).expect("host");
                    if !self.hosts[i].powered {
                        self.boot(h);
                    } else if self.hosts[i].hung {
                        self.apply(Fault::AgentThaw { host: h });
                    }
                }
            }
        }
    }

    fn set_host(&mut self, h: HostId, f: impl FnOnce(&mut SimHost)) {
        if let Some(i) = self.idx(h) {
            f(&mut self.hosts[i]);
        }
    }

    /// Hosts whose running, unhung agent is master.
    pub fn masters(&self) -> Vec<HostId> {
        self.hosts
            .iter()
            .filter(|h| {
                h.powered && !h.hung && h.agent.as_ref().is_some_and(|a| a.role() == Role::Master)
            })
            .map(|h| h.id)
            .collect()
    }

    pub fn agent(&self, h: HostId) -> Option<&Agent> {
        let i = self.idx(h)?;
        let host = &self.hosts[i];
        if host.powered && !host.hung {
            host.agent.as_ref()
        } else {
            None
        }
    }

    /// Where a VM runs now.
    /// The VM's restart state in its home datastore's protected list, as on disk.
    pub fn listed_restart_state(&self, vm: VmId) -> Option<RestartState> {
        let home = self.config.vm(vm)?.home;
        self.ds
            .get(&home)?
            .protected_list()?
            .vms
            .iter()
            .find(|e| e.vm == vm)
            .map(|e| e.restart.clone())
    }

    pub fn where_runs(&self, vm: VmId) -> Vec<HostId> {
        self.hosts
            .iter()
            .filter(|h| h.powered && h.running.contains_key(&vm))
            .map(|h| h.id)
            .collect()
    }

    /// Whether `h`'s copy of `vm` is one the hypervisor started on its own and that still runs.
    pub fn is_outside_copy(&self, h: HostId, vm: VmId) -> bool {
        self.outside.get(&(h, vm)).is_some_and(|&at| {
            self.idx(h).is_some_and(|i| {
                self.hosts[i].powered && self.hosts[i].running.get(&vm) == Some(&at)
            })
        })
    }

    /// Prune outside copies that stopped, and check the rest (`stale_copy_ended`).
    fn watch_outside_copies(&mut self) {
        let gone: Vec<(HostId, VmId)> = self
            .outside
            .keys()
            .copied()
            .filter(|&(h, vm)| !self.is_outside_copy(h, vm))
            .collect();
        for k in gone {
            self.outside.remove(&k);
        }
        use crate::invariants::stale_copy_ended;
        for (key, detail) in stale_copy_ended::overdue(self) {
            self.outside_reported.insert(key);
            self.violate(stale_copy_ended::NAME, detail);
        }
    }

    /// Where a VM is paused now (by the storage-loss response; it runs there too).
    pub fn where_paused(&self, vm: VmId) -> Vec<HostId> {
        self.hosts
            .iter()
            .filter(|h| h.powered && h.paused.contains_key(&vm))
            .map(|h| h.id)
            .collect()
    }

    /// Connected groups of live agents (symmetric links only).
    pub fn components(&self) -> Vec<Vec<HostId>> {
        let live: Vec<HostId> = self
            .hosts
            .iter()
            .filter(|h| h.powered && !h.hung && h.agent.is_some())
            .map(|h| h.id)
            .collect();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for &s in &live {
            if !seen.insert(s) {
                continue;
            }
            let mut comp = vec![s];
            let mut stack = vec![s];
            while let Some(x) = stack.pop() {
                for &y in &live {
                    if !seen.contains(&y) && self.linked(x, y) && self.linked(y, x) {
                        seen.insert(y);
                        comp.push(y);
                        stack.push(y);
                    }
                }
            }
            comp.sort();
            out.push(comp);
        }
        out
    }

    pub fn network_up(&self, h: HostId) -> bool {
        self.idx(h).is_some_and(|i| self.hosts[i].network_up)
    }

    pub fn has_oneway_cuts(&self) -> bool {
        !self.oneway.is_empty()
    }

    /// Events waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Run until virtual time `end` (microseconds).
    pub fn run_until(&mut self, end: Micros) {
        let mut same_instant = 0u32;
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > end {
                break;
            }
            let Some(Reverse(Scheduled { at, ev, .. })) = self.queue.pop() else {
                break;
            };
            let ev = *ev;
            same_instant = if at == self.now { same_instant + 1 } else { 0 };
            use crate::invariants::time_advances;
            if same_instant > time_advances::MAX_EVENTS_AT_ONE_INSTANT {
                // Report it instead of spinning.
                self.violate(
                    time_advances::NAME,
                    time_advances::detail(same_instant, &ev),
                );
                self.queue.clear();
                break;
            }
            self.now = at;
            self.events_processed += 1;
            self.dispatch(ev);
            if !self.outside.is_empty() {
                self.watch_outside_copies();
            }
        }
        self.now = self.now.max(end);
    }

    /// A hung agent's inputs wait for the thaw (datagrams up to a socket buffer's worth).
    fn hold_if_hung(&mut self, ev: Ev) -> Option<Ev> {
        let host = match &ev {
            Ev::Datagram { to, .. } => *to,
            Ev::Ds { host, .. }
            | Ev::Hv { host, .. }
            | Ev::Isolation { host, .. }
            | Ev::Probe { host, .. } => *host,
            _ => return Some(ev),
        };
        let Some(i) = self.idx(host) else {
            return Some(ev);
        };
        let h = &mut self.hosts[i];
        if !(h.powered && h.hung) {
            return Some(ev);
        }
        let datagrams = h
            .held
            .iter()
            .filter(|e| matches!(e, Ev::Datagram { .. }))
            .count();
        if !matches!(ev, Ev::Datagram { .. }) || datagrams < 256 {
            h.held.push(ev);
        }
        None
    }

    fn dispatch(&mut self, ev: Ev) {
        let Some(ev) = self.hold_if_hung(ev) else {
            return;
        };
        match ev {
            Ev::Datagram { to, payload } => {
                let Some(i) = self.idx(to) else { return };
                let inc = self.hosts[i].incarnation;
                if self.profile == Some(self.hosts[i].id) {
                    self.profile_datagrams += 1;
                }
                self.deliver(i, inc, |a, now| a.handle_datagram(now, &payload));
            }
            Ev::Ds {
                host,
                inc,
                completion,
            } => {
                let Some(i) = self.idx(host) else { return };
                self.deliver(i, inc, |a, now| a.handle_datastore(now, completion));
            }
            Ev::DsExec {
                host,
                inc,
                request,
                timed_out,
            } => {
                let Some(i) = self.idx(host) else { return };
                self.ds_exec(i, inc, request, timed_out);
            }
            Ev::Hv { host, inc, event } => {
                let Some(i) = self.idx(host) else { return };
                let event = match event {
                    HypervisorEvent::Inventory { op, .. } => HypervisorEvent::Inventory {
                        op,
                        running: self.hosts[i].running.keys().copied().collect(),
                    },
                    e => e,
                };
                self.deliver(i, inc, |a, now| a.handle_hypervisor(now, event));
            }
            Ev::PowerOnDone { host, inc, op, vm } => {
                let Some(i) = self.idx(host) else { return };
                if self.hosts[i].powered && self.hosts[i].incarnation == inc {
                    self.power_on_done(i, op, vm);
                }
            }
            Ev::Isolation { host, inc } => {
                let Some(i) = self.idx(host) else { return };
                let reachable = self.hosts[i].network_up;
                self.deliver(i, inc, |a, now| a.handle_isolation_check(now, reachable));
            }
            Ev::Probe { host, inc, target } => {
                let Some(i) = self.idx(host) else { return };
                let answered = self.linked(host, target) && self.linked(target, host);
                self.deliver(i, inc, |a, now| a.handle_probe(now, target, answered));
            }
            Ev::Timer { host, inc } => {
                let Some(i) = self.idx(host) else { return };
                if self.hosts[i].timer_at != Some(self.now) || self.hosts[i].incarnation != inc {
                    return; // superseded
                }
                self.hosts[i].timer_at = None;
                self.deliver(i, inc, |a, now| a.handle_timeout(now));
                if self.hosts[i].hung {
                    // A thaw re-arms the timer.
                    self.hosts[i].timer_at = None;
                }
            }
            Ev::Watchdog { host, inc } => {
                let Some(i) = self.idx(host) else { return };
                let h = &mut self.hosts[i];
                if h.incarnation != inc || !h.powered {
                    return;
                }
                h.watchdog_pending = false;
                let timeout = us(self.params.timings.watchdog_timeout);
                let last = h.last_kick.unwrap_or(0);
                if self.now.saturating_sub(last) >= timeout {
                    self.log(Some(host), "watchdog fired: host reset".into());
                    self.crash(host, true);
                    self.refresh_whole();
                } else {
                    h.watchdog_pending = true;
                    self.push(last + timeout, Ev::Watchdog { host, inc });
                }
            }
            Ev::Fault(f) => {
                self.apply(f);
                self.refresh_whole();
            }
            Ev::Boot { host } => {
                self.boot(host);
                self.refresh_whole();
            }
        }
    }

    pub fn verdict(&self, master: HostId, of: HostId) -> Option<Verdict> {
        self.agent(master)?.verdict_of(of)
    }
}

#[cfg(test)]
mod tests {
    use fdm_core::messages::{Message, PowerOnCommand};
    use heartbeat_fs::{DatastoreId, Epoch, VmId};

    #[test]
    fn the_stalled_kind_is_the_power_on_command() {
        let m = Message::PowerOn(PowerOnCommand {
            vm: VmId(1),
            datastore: DatastoreId(1),
            epoch: Epoch(1),
            attempt: 1,
        });
        assert_eq!(m.kind(), super::POWER_ON_KIND);
    }
}
