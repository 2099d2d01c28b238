//! A small hand-stepped cluster for the core's unit tests: real `Agent`s, in-memory datastores, a
//! network with partitions, toy hypervisors and a fake clock. The full simulator lives in `sim/`;
//! this one is deliberately tiny so that each test reads as a story.

use crate::{
    Agent, AgentSettings, Event, HypervisorAction, HypervisorEvent, Output, Role, Time, Timings,
    Transmit, Verdict,
};
use heartbeat_fs::mem::{Caller, MemDatastore};
use heartbeat_fs::ops::{DsCompletion, DsError, DsRequest, IoKind};
use heartbeat_fs::records::*;
use heartbeat_fs::{ClusterId, DatastoreId, HostId, VmId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

pub const CLUSTER: ClusterId = ClusterId(0xF0F0);
pub const TICK: Duration = Duration::from_millis(10);

#[derive(Debug)]
enum Pending {
    Datagram {
        to: HostId,
        from: HostId,
        payload: Vec<u8>,
    },
    Ds {
        host: HostId,
        incarnation: u64,
        completion: DsCompletion,
    },
    Hv {
        host: HostId,
        incarnation: u64,
        event: HypervisorEvent,
    },
    Isolation {
        host: HostId,
        incarnation: u64,
        reachable: bool,
    },
    Probe {
        host: HostId,
        incarnation: u64,
        target: HostId,
        answered: bool,
    },
}

pub struct HostSim {
    pub agent: Option<Agent>,
    pub powered: bool,
    pub incarnation: u64,
    pub running: BTreeSet<VmId>,
    /// Of `running`, the VMs frozen by a `Pause` (still running for every check).
    pub paused: BTreeSet<VmId>,
    pub network_up: bool,
    pub gateway_reachable: bool,
    pub ds_lost: BTreeSet<DatastoreId>,
    pub events: Vec<(Time, Event)>,
    pub kicks: u64,
    /// Power-ons fail on this host.
    pub power_on_fails: bool,
}

pub struct Cluster {
    pub now: Time,
    pub config: ClusterConfig,
    pub hosts: BTreeMap<HostId, HostSim>,
    pub ds: BTreeMap<DatastoreId, MemDatastore>,
    /// Hosts in different groups cannot talk. Empty: one group.
    pub groups: BTreeMap<HostId, u32>,
    queue: VecDeque<(Time, Pending)>,
    pub timings: Timings,
    pub knobs: crate::FaultKnobs,
    /// Every power-on that completed: (time, host, vm).
    pub power_ons: Vec<(Time, HostId, VmId)>,
    /// Messages dropped on purpose to prove they change nothing, or duplicated.
    pub duplicate_datagrams: bool,
    pub reorder_datagrams: bool,
    /// An on-path relay: every datagram `from -> to` is also delivered to `copy_to`, whatever the
    /// partitions say (an attacker, or a confused switch).
    pub relay: Vec<(HostId, HostId, HostId)>,
    /// Copies a hypervisor started on its own (an autostart at boot, `autostart_at_boot`): not
    /// fdm's starts, so `check_never_twice` lets them run beside another copy until they stop.
    pub outside: BTreeSet<(HostId, VmId)>,
}

pub fn vm(id: u32, home: u32, priority: RestartPriority, response: IsolationResponse) -> VmConfig {
    VmConfig::new(VmId(id), DatastoreId(home))
        .with_priority(priority)
        .with_isolation_response(response)
}

/// `n` hosts, datastores `mounts[d] = hosts`, VMs.
pub fn config(n: u32, mounts: &[&[u32]], vms: Vec<VmConfig>) -> ClusterConfig {
    ClusterConfig::new(CLUSTER)
        .with_ha(HaSettings {
            restart_retry_ms: vec![0, 1_000, 2_000],
            ..HaSettings::default()
        })
        .with_hosts((1..=n).map(HostId).map(HostConfig::simulated))
        .with_layout(mounts)
        .with_vms(vms)
}

impl Cluster {
    pub fn new(config: ClusterConfig) -> Self {
        Self::with_timings(config, Timings::default(), crate::FaultKnobs::default())
    }

    pub fn with_timings(config: ClusterConfig, timings: Timings, knobs: crate::FaultKnobs) -> Self {
        let mut ds = BTreeMap::new();
        for d in &config.datastores {
            let mut m = MemDatastore::new(d.id);
            m.config = Some(config.clone());
            ds.insert(d.id, m);
        }
        let mut c = Cluster {
            now: Time::from_millis(1_000),
            config: config.clone(),
            hosts: BTreeMap::new(),
            ds,
            groups: BTreeMap::new(),
            queue: VecDeque::new(),
            timings,
            knobs,
            power_ons: Vec::new(),
            duplicate_datagrams: false,
            reorder_datagrams: false,
            relay: Vec::new(),
            outside: BTreeSet::new(),
        };
        for h in &config.hosts {
            c.hosts.insert(
                h.id,
                HostSim {
                    agent: None,
                    powered: true,
                    incarnation: 0,
                    running: BTreeSet::new(),
                    paused: BTreeSet::new(),
                    network_up: true,
                    gateway_reachable: true,
                    ds_lost: BTreeSet::new(),
                    events: Vec::new(),
                    kicks: 0,
                    power_on_fails: false,
                },
            );
        }
        let ids: Vec<HostId> = config.hosts.iter().map(|h| h.id).collect();
        for h in ids {
            c.start_agent(h);
        }
        c
    }

    pub fn settings(&self, h: HostId, incarnation: u64) -> AgentSettings {
        AgentSettings::new(
            h,
            incarnation,
            CLUSTER,
            [7u8; 32],
            self.config.mounted_by(h).into_iter().collect(),
            self.timings.clone(),
        )
    }

    pub fn start_agent(&mut self, h: HostId) {
        let inc = self.hosts[&h].incarnation + 1;
        let settings = self.settings(h, inc);
        let mut agent = Agent::new(settings, Some(self.config.clone()), self.now);
        agent.remove_safety_steps(self.knobs);
        let hs = self.hosts.get_mut(&h).unwrap();
        hs.incarnation = inc;
        hs.agent = Some(agent);
        self.drain(h);
    }

    /// Start a VM directly on a host's hypervisor (initial placement, or an operator).
    pub fn place(&mut self, h: HostId, vm: u32) {
        self.hosts.get_mut(&h).unwrap().running.insert(VmId(vm));
    }

    pub fn crash_host(&mut self, h: HostId) {
        let hs = self.hosts.get_mut(&h).unwrap();
        hs.powered = false;
        hs.running.clear();
        hs.paused.clear();
        let inc = hs.incarnation;
        hs.agent = None;
        for d in self.ds.values_mut() {
            d.release_locks_of(Caller {
                host: h,
                incarnation: inc,
            });
        }
    }

    /// Power the host on with its hypervisor starting `vms` before the agent runs (libvirt
    /// autostart), then start the agent.
    pub fn boot_with_autostart(&mut self, h: HostId, vms: &[u32]) {
        self.hosts.get_mut(&h).unwrap().powered = true;
        for &vm in vms {
            self.place(h, vm);
            self.outside.insert((h, VmId(vm)));
        }
        self.start_agent(h);
    }

    pub fn boot_host(&mut self, h: HostId) {
        self.hosts.get_mut(&h).unwrap().powered = true;
        self.start_agent(h);
    }

    pub fn restart_agent(&mut self, h: HostId) {
        let inc = self.hosts[&h].incarnation;
        self.hosts.get_mut(&h).unwrap().agent = None;
        for d in self.ds.values_mut() {
            d.release_locks_of(Caller {
                host: h,
                incarnation: inc,
            });
        }
        self.start_agent(h);
    }

    pub fn partition(&mut self, groups: &[&[u32]]) {
        self.groups.clear();
        for (g, hs) in groups.iter().enumerate() {
            for &h in hs.iter() {
                self.groups.insert(HostId(h), g as u32);
            }
        }
    }

    pub fn heal(&mut self) {
        self.groups.clear();
    }

    fn linked(&self, a: HostId, b: HostId) -> bool {
        let (ha, hb) = (&self.hosts[&a], &self.hosts[&b]);
        ha.powered
            && hb.powered
            && ha.network_up
            && hb.network_up
            && self.groups.get(&a) == self.groups.get(&b)
    }

    pub fn agent(&self, h: u32) -> &Agent {
        self.hosts[&HostId(h)]
            .agent
            .as_ref()
            .expect("agent running")
    }

    pub fn masters(&self) -> Vec<HostId> {
        self.hosts
            .iter()
            .filter(|(_, s)| s.agent.as_ref().is_some_and(|a| a.role() == Role::Master))
            .map(|(&h, _)| h)
            .collect()
    }

    pub fn verdict(&self, master: u32, of: u32) -> Option<Verdict> {
        self.agent(master).verdict_of(HostId(of))
    }

    pub fn where_runs(&self, vm: u32) -> Vec<HostId> {
        self.hosts
            .iter()
            .filter(|(_, s)| s.running.contains(&VmId(vm)))
            .map(|(&h, _)| h)
            .collect()
    }

    pub fn events(&self, h: u32) -> &[(Time, Event)] {
        &self.hosts[&HostId(h)].events
    }

    pub fn all_events(&self) -> Vec<(HostId, Time, Event)> {
        let mut v: Vec<_> = self
            .hosts
            .iter()
            .flat_map(|(&h, s)| s.events.iter().map(move |(t, e)| (h, *t, e.clone())))
            .collect();
        v.sort_by_key(|(h, t, _)| (*t, *h));
        v
    }

    /// First time any host emitted an event matching `f`.
    pub fn first_event(&self, f: impl Fn(&Event) -> bool) -> Option<Time> {
        self.all_events()
            .into_iter()
            .filter(|(_, _, e)| f(e))
            .map(|(_, t, _)| t)
            .min()
    }

    fn drain(&mut self, h: HostId) {
        loop {
            let Some(hs) = self.hosts.get_mut(&h) else {
                return;
            };
            let inc = hs.incarnation;
            let Some(agent) = hs.agent.as_mut() else {
                return;
            };
            let Some(out) = agent.poll_output() else {
                return;
            };
            self.handle_output(h, inc, out);
        }
    }

    fn handle_output(&mut self, h: HostId, inc: u64, out: Output) {
        let at = self.now + Duration::from_millis(1);
        match out {
            Output::Transmit(t) => self.transmit(h, t, at),
            Output::Datastore(req) => self.execute_ds(h, inc, req, at),
            Output::Hypervisor(a) => {
                let event = self.hypervisor_answer(h, a);
                self.queue.push_back((
                    at + Duration::from_millis(49),
                    Pending::Hv {
                        host: h,
                        incarnation: inc,
                        event,
                    },
                ));
            }
            Output::CheckIsolation => {
                let hs = &self.hosts[&h];
                let reachable = hs.network_up && hs.gateway_reachable;
                self.queue.push_back((
                    at,
                    Pending::Isolation {
                        host: h,
                        incarnation: inc,
                        reachable,
                    },
                ));
            }
            Output::Probe { host } => {
                let answered =
                    self.hosts.get(&host).is_some_and(|t| t.powered) && self.linked(h, host);
                self.queue.push_back((
                    at,
                    Pending::Probe {
                        host: h,
                        incarnation: inc,
                        target: host,
                        answered,
                    },
                ));
            }
            Output::KickWatchdog => self.hosts.get_mut(&h).unwrap().kicks += 1,
            Output::Event(e) => {
                let now = self.now;
                self.hosts.get_mut(&h).unwrap().events.push((now, e));
            }
        }
    }

    /// A datagram from `h`: relayed copies, then the datagram itself if the hosts are linked.
    fn transmit(&mut self, h: HostId, t: Transmit, at: Time) {
        for &(_, _, copy_to) in self
            .relay
            .iter()
            .filter(|(f, to, _)| *f == h && *to == t.to)
        {
            let copy = Pending::Datagram {
                to: copy_to,
                from: h,
                payload: t.payload.clone(),
            };
            self.queue.push_back((at, copy));
        }
        if self.linked(h, t.to) {
            let p = Pending::Datagram {
                to: t.to,
                from: h,
                payload: t.payload,
            };
            if self.duplicate_datagrams
                && let Pending::Datagram { to, from, payload } = &p
            {
                let copy = Pending::Datagram {
                    to: *to,
                    from: *from,
                    payload: payload.clone(),
                };
                self.queue.push_back((at, copy));
            }
            if self.reorder_datagrams {
                self.queue.push_back((at + Duration::from_millis(7), p));
            } else {
                self.queue.push_back((at, p));
            }
        }
    }

    /// A datastore request of `h`, answered by the shared in-memory datastore unless `h` lost it.
    fn execute_ds(&mut self, h: HostId, inc: u64, req: DsRequest, at: Time) {
        let lost = self.hosts[&h].ds_lost.contains(&req.datastore);
        let result = if lost {
            Err(DsError::Io {
                kind: IoKind::Io,
                message: "EIO".into(),
            })
        } else {
            match self.ds.get_mut(&req.datastore) {
                Some(d) => d.execute(
                    Caller {
                        host: h,
                        incarnation: inc,
                    },
                    req.op,
                ),
                None => Err(DsError::NotMounted(req.datastore)),
            }
        };
        let completion = DsCompletion {
            id: req.id,
            datastore: req.datastore,
            result,
        };
        self.queue.push_back((
            at,
            Pending::Ds {
                host: h,
                incarnation: inc,
                completion,
            },
        ));
    }

    /// What `h`'s hypervisor answers to `a` (an inventory is filled in at delivery).
    fn hypervisor_answer(&mut self, h: HostId, a: HypervisorAction) -> HypervisorEvent {
        let hs = self.hosts.get_mut(&h).unwrap();
        match a {
            HypervisorAction::PowerOn { op, vm, .. } => {
                if hs.power_on_fails {
                    HypervisorEvent::PowerOnResult {
                        op,
                        vm,
                        result: Err("boot failed".into()),
                    }
                } else {
                    let elsewhere: Vec<HostId> = self
                        .where_runs(vm.0)
                        .into_iter()
                        .filter(|&o| o != h)
                        .collect();
                    assert!(
                        elsewhere.is_empty(),
                        "{vm} powered on at {h} while running on {elsewhere:?} at {}",
                        self.now
                    );
                    let hs = self.hosts.get_mut(&h).unwrap();
                    hs.running.insert(vm);
                    self.power_ons.push((self.now, h, vm));
                    HypervisorEvent::PowerOnResult {
                        op,
                        vm,
                        result: Ok(()),
                    }
                }
            }
            HypervisorAction::PowerOff { op, vm, .. }
            | HypervisorAction::Shutdown { op, vm, .. } => {
                hs.running.remove(&vm);
                hs.paused.remove(&vm);
                HypervisorEvent::PowerOffResult {
                    op,
                    vm,
                    result: Ok(()),
                }
            }
            // Like the real drivers: pausing a paused VM and resuming a running one
            // succeed, neither works on a VM that is not running.
            HypervisorAction::Pause { op, vm } => {
                let result = if hs.running.contains(&vm) {
                    hs.paused.insert(vm);
                    Ok(())
                } else {
                    Err(format!("{vm} is not running"))
                };
                HypervisorEvent::PauseResult { op, vm, result }
            }
            HypervisorAction::Resume { op, vm } => {
                let result = if hs.running.contains(&vm) {
                    hs.paused.remove(&vm);
                    Ok(())
                } else {
                    Err(format!("{vm} is not running"))
                };
                HypervisorEvent::ResumeResult { op, vm, result }
            }
            HypervisorAction::List { op } => {
                // Filled in at delivery: the hypervisor answers with what runs then.
                HypervisorEvent::Inventory {
                    op,
                    running: Vec::new(),
                }
            }
        }
    }

    fn deliver(&mut self, p: Pending) {
        let (h, inc) = match &p {
            Pending::Datagram { to, .. } => (*to, None),
            Pending::Ds {
                host, incarnation, ..
            }
            | Pending::Hv {
                host, incarnation, ..
            }
            | Pending::Isolation {
                host, incarnation, ..
            }
            | Pending::Probe {
                host, incarnation, ..
            } => (*host, Some(*incarnation)),
        };
        let now = self.now;
        let Some(hs) = self.hosts.get_mut(&h) else {
            return;
        };
        if inc.is_some_and(|i| i != hs.incarnation) {
            return;
        }
        let Some(agent) = hs.agent.as_mut() else {
            return;
        };
        match p {
            Pending::Datagram { payload, from, to } => {
                // A partition that starts while a datagram is in flight still drops it.
                let _ = from;
                let _ = to;
                agent.handle_datagram(now, &payload)
            }
            Pending::Ds { completion, .. } => agent.handle_datastore(now, completion),
            Pending::Hv { event, .. } => {
                let event = match event {
                    HypervisorEvent::Inventory { op, .. } => HypervisorEvent::Inventory {
                        op,
                        running: hs.running.iter().copied().collect(),
                    },
                    e => e,
                };
                agent.handle_hypervisor(now, event)
            }
            Pending::Isolation { reachable, .. } => agent.handle_isolation_check(now, reachable),
            Pending::Probe {
                target, answered, ..
            } => agent.handle_probe(now, target, answered),
        }
        self.drain(h);
    }

    /// Advance virtual time by `d` in ticks, delivering everything due and firing timers.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now = self.now + TICK;
            // Deliver due items (queue is roughly time ordered; scan all due).
            let mut due = Vec::new();
            let mut rest = VecDeque::new();
            while let Some((t, p)) = self.queue.pop_front() {
                if t <= self.now {
                    due.push((t, p))
                } else {
                    rest.push_back((t, p))
                }
            }
            self.queue = rest;
            due.sort_by_key(|(t, _)| *t);
            for (_, p) in due {
                self.deliver(p);
            }
            let ids: Vec<HostId> = self.hosts.keys().copied().collect();
            for h in ids {
                let now = self.now;
                let due = self.hosts[&h]
                    .agent
                    .as_ref()
                    .and_then(|a| a.poll_timeout())
                    .is_some_and(|t| t <= now);
                if due {
                    self.hosts
                        .get_mut(&h)
                        .unwrap()
                        .agent
                        .as_mut()
                        .unwrap()
                        .handle_timeout(now);
                    self.drain(h);
                }
            }
            let hosts = &self.hosts;
            self.outside
                .retain(|(h, vm)| hosts.get(h).is_some_and(|s| s.running.contains(vm)));
            self.check_never_twice();
        }
    }

    pub fn run_secs(&mut self, s: f64) {
        self.run_for(Duration::from_secs_f64(s));
    }

    /// Run until `f` holds or `limit` passes; returns the time it first held.
    pub fn run_until(&mut self, limit: Duration, f: impl Fn(&Cluster) -> bool) -> Option<Time> {
        let end = self.now + limit;
        while self.now < end {
            if f(self) {
                return Some(self.now);
            }
            self.run_for(TICK);
        }
        f(self).then_some(self.now)
    }

    pub fn check_never_twice(&self) {
        let mut seen: BTreeMap<VmId, HostId> = BTreeMap::new();
        for (&h, s) in &self.hosts {
            for vm in &s.running {
                if self.outside.contains(&(h, *vm)) {
                    continue;
                }
                if let Some(o) = seen.insert(*vm, h) {
                    panic!("{vm} runs on {o} and {h} at {}", self.now);
                }
            }
        }
    }
}
