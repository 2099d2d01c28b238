//! The faults a scenario or a sweep injects, and how the world applies each one.

use super::*;

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

impl World {
    pub(super) fn apply(&mut self, f: Fault) {
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

    pub(super) fn set_host(&mut self, h: HostId, f: impl FnOnce(&mut SimHost)) {
        if let Some(i) = self.idx(h) {
            f(&mut self.hosts[i]);
        }
    }
}
