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

mod faults;
mod host;
mod hypervisor;
mod net;
mod observe;
mod queue;
mod storage;

pub use faults::Fault;
pub use host::SimHost;
use queue::{Ev, Scheduled};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    HostCrash,
    VmCrash,
    Operator,
    Agent(StopCause),
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
