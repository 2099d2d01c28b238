//! A simulated host: power, its agent (started, crashed, rebooted; its clock drifted), and the
//! routing of the agent's outputs to the network, the datastores and the hypervisor.

use super::*;

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
    pub(super) drift_ppm: i64,
    pub running: BTreeMap<VmId, Micros>,
    /// Of `running`, the VMs frozen by a `Pause` (the storage-loss response), since when. A paused
    /// VM holds its memory and disks: it stays in `running` for every invariant.
    pub paused: BTreeMap<VmId, Micros>,
    pub ds_lost: BTreeSet<DatastoreId>,
    pub ds_hung: BTreeSet<DatastoreId>,
    /// Datastores whose executor worker is stuck in a hung call.
    pub(super) ds_stuck: BTreeSet<DatastoreId>,
    /// When each datastore's worker is free again (calls run one at a time).
    pub(super) ds_busy_until: BTreeMap<DatastoreId, Micros>,
    pub(super) torn_next: BTreeSet<DatastoreId>,
    /// Last time each datastore was faulty for this host (lost, hung, dead).
    pub ds_fault_at: BTreeMap<DatastoreId, Micros>,
    /// What ran here when the host last crashed (started again at boot with `autostart`).
    pub(super) ran_at_crash: Vec<VmId>,
    pub(super) timer_at: Option<Micros>,
    pub(super) last_kick: Option<Micros>,
    pub(super) watchdog_pending: bool,
    pub power_on_fails: bool,
    /// Inputs that reached the agent while it was hung (a stopped process): delivered at the thaw,
    /// like a socket buffer and the executor's completion queue. Datagrams beyond the buffer drop.
    pub(super) held: Vec<Ev>,
}

pub(super) fn ppm(x: Micros, ppm: i64) -> Micros {
    ((x as i128 * (1_000_000 + ppm as i128)) / 1_000_000) as Micros
}

/// The least sim-time span whose drifted length reaches `x`: the exact inverse of `ppm`, rounded up,
/// so that a timer fires no earlier than the agent asked (rounding down would re-fire forever).
pub(super) fn unppm(x: Micros, ppm: i64) -> Micros {
    let rate = 1_000_000 + ppm as i128;
    ((x as i128 * 1_000_000 + rate - 1) / rate) as Micros
}

impl World {
    pub(super) fn agent_now(&self, i: usize) -> Time {
        let h = &self.hosts[i];
        Time::from_micros(h.agent_base + ppm(self.now - h.agent_base, h.drift_ppm))
    }

    pub(super) fn start_agent(&mut self, h: HostId) {
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

    pub(super) fn release_locks(&mut self, i: usize) {
        let caller = Caller {
            host: self.hosts[i].id,
            incarnation: self.hosts[i].incarnation,
        };
        for d in self.ds.values_mut() {
            d.release_locks_of(caller);
        }
    }

    pub(super) fn crash(&mut self, h: HostId, reboot: bool) {
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

    pub(super) fn boot(&mut self, h: HostId) {
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

    pub(super) fn drain(&mut self, i: usize) {
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

    pub(super) fn output(&mut self, i: usize, out: Output) {
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

    /// Feed an input to host `i`'s agent if it runs, is not hung and has incarnation `inc`.
    pub(super) fn deliver(&mut self, i: usize, inc: u64, f: impl FnOnce(&mut Agent, Time)) {
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

    /// `vm` no longer paused at host `i` (resumed, stopped, crashed): its paused span closes.
    pub(super) fn unpause(&mut self, i: usize, vm: VmId) {
        if let Some(since) = self.hosts[i].paused.remove(&vm) {
            self.paused_us += u128::from(self.now.saturating_sub(since));
        }
    }
}
