//! Every host's duties for its own VMs: adoption at start, power-on on a master's command (checked
//! against the datastore first), the power-on lists that are its leases on those VMs, the isolation
//! response, and self-fencing when both leases lapse.

use super::super::events::{Event, Role};
use super::super::io::{HypervisorAction, HypervisorEvent, Output, StopCause, VmRunState};
use super::super::messages::{
    Message, PowerOffCommand, PowerOffReason, PowerOnCommand, PowerOnResult, VmStatus,
};
use super::super::time::Time;
use super::{Agent, DsPurpose, ElectionRound, RoleState, VmView};
use heartbeat_fs::ops::{DsError, DsOp, DsReply};
use heartbeat_fs::records::{IsolationResponse, PowerOnEntry, PowerOnList, PowerOnState};
use heartbeat_fs::{DatastoreId, HostId, VmId};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub(super) struct IsolationState {
    checking: bool,
    last_check: Option<Time>,
    declared_at: Option<Time>,
    /// VMs the response was applied to (or that are left running by their setting).
    responded: BTreeSet<VmId>,
    /// VMs whose response waits for a master to hold their home datastore's claim (said once).
    deferred: BTreeSet<VmId>,
    /// What we see of the claim on each datastore while isolated.
    owners: BTreeMap<DatastoreId, OwnerWatch>,
}

/// An isolated host's view of one datastore's claim: whether some master holds it, i.e. whether
/// anyone would restart what the isolation response stops there (FDM 5.x's rule).
#[derive(Debug, Clone, Default)]
struct OwnerWatch {
    /// Owner, epoch and renewal counter of the last claim read, when held (not released).
    last: Option<(HostId, heartbeat_fs::Epoch, u64)>,
    /// When (our clock) we last saw the renewal counter move: a held claim whose counter stands
    /// still is a master that is gone or cut off from the datastore.
    advanced_at: Option<Time>,
    /// The last read failed: we cannot tell, so we decide as FDM does (apply the response).
    unreadable: bool,
}

impl OwnerWatch {
    fn observe(&mut self, now: Time, claim: Option<&heartbeat_fs::records::DatastoreClaim>) {
        self.unreadable = false;
        let held = claim
            .filter(|c| !c.released && c.owner != HostId::NONE)
            .map(|c| (c.owner, c.epoch, c.renewal));
        if held.is_some() && held != self.last && self.last.is_some() {
            self.advanced_at = Some(now);
        }
        if held.is_none() {
            self.advanced_at = None;
        }
        self.last = held;
    }

    /// Whether the response may stop a VM of this datastore now.
    fn someone_will_restart(&self, now: Time, lease: std::time::Duration) -> bool {
        self.unreadable || self.advanced_at.is_some_and(|t| now.since(t) < lease)
    }
}

/// Where a power-on commanded by a master stands on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PowerOnStage {
    /// Asked the datastore whether the command's claim epoch and intent are current.
    CheckingIntent,
    /// Writing our power-on list with the VM in it (taking the VM's lease) before starting it.
    TakingLease { generation: u64 },
    /// The hypervisor is starting it.
    Starting { op: u64 },
}

/// A power-on given up while the hypervisor was still starting the VM: the start may yet succeed, so
/// the VM counts as starting (it keeps its lease and is reported) until it is known to be off, and
/// only then does the master hear that the attempt failed.
#[derive(Debug, Clone)]
struct AbortedStart {
    pending: PendingPowerOn,
    op: u64,
    error: String,
    /// The start succeeded after all: a power-off of our own is on its way.
    came_up: bool,
}

#[derive(Debug, Clone, Copy)]
struct PendingPowerOn {
    from: HostId,
    datastore: DatastoreId,
    attempt: u32,
    stage: PowerOnStage,
}

#[derive(Debug, Clone, Copy)]
struct LocalVm {
    state: VmRunState,
    /// Home datastore per the configuration, cached: leases are evaluated several times a second
    /// and a lookup in a large cluster's VM table is a cache miss.
    home: Option<DatastoreId>,
    /// Paused by the storage-loss response. Only ever set on a `Running` VM, which stays
    /// `Running`: a paused VM holds its memory and disks, so for the power-on lists, the reports
    /// to the master, the isolation response and fencing it is a running VM like any other.
    pause: Option<StoragePause>,
}

/// A VM this host paused because it could not write the VM's home datastore for
/// `storage_loss_timeout_ms` (`docs/safety.md`, "Storage outages").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StoragePause {
    /// When the pause was asked for: only a write to the datastore that started later and
    /// succeeded shows the storage back.
    since: Time,
    stage: PauseStage,
    /// The hypervisor said it paused the VM. A pause that failed is not retried in this outage,
    /// but the VM is resumed all the same when the storage returns: the pause may have taken
    /// effect after the driver gave up on it (libvirt finishes a suspend that `virsh` was killed
    /// for at its deadline), and a resume of a VM that is not paused does nothing.
    confirmed: bool,
    /// Our leases on its home datastore reached their fence point while it was paused: from then
    /// on a master may take the VM for lost and restart it elsewhere, so it is never resumed
    /// here (the fence stops it; if that stop fails or fencing is off or suppressed, it stays
    /// frozen for an operator).
    lapsed: bool,
    /// Resumes that failed in a row: the first is a warning, the retries (one per evaluation)
    /// only debug lines.
    resume_failures: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PauseStage {
    /// The hypervisor is pausing it.
    Pausing { op: u64 },
    /// Paused (or its pause failed): waiting for the storage to return.
    Paused,
    /// The hypervisor is resuming it.
    Resuming { op: u64 },
}

/// One power-on list: the generation wanted (bumped on every change) and the one known on disk.
#[derive(Debug, Clone, Default)]
struct ListState {
    wanted: u64,
    durable: u64,
    in_flight: Option<u64>,
    isolation_powered_off: BTreeSet<VmId>,
}

#[derive(Debug, Default)]
pub(super) struct LocalVms {
    vms: BTreeMap<VmId, LocalVm>,
    /// The shared configuration, for VMs' home datastores (no per-agent copy: a simulator runs
    /// thousands of agents on one configuration).
    homes: Option<std::sync::Arc<crate::cluster::ClusterView>>,
    /// Bumped on every change of `vms`, reported to the master.
    pub(super) generation: u64,
    pub(super) inventory_op: Option<u64>,
    /// The hypervisor's list of running VMs has been read since the agent started; before that our
    /// view of what runs here is incomplete and must not be reported as complete.
    pub(super) inventoried: bool,
    lists: BTreeMap<DatastoreId, ListState>,
    pub(super) fenced: BTreeSet<DatastoreId>,
    pending: BTreeMap<VmId, PendingPowerOn>,
    aborted: BTreeMap<VmId, AbortedStart>,
    /// Power-on attempts already answered with a failure (a late duplicate command gets the same).
    failed_attempts: BTreeMap<VmId, u32>,
    /// The last attempt each VM was started for on a master's command: a command for that attempt
    /// again (resent, or resumed by a new master) after an operator stopped the VM must not start
    /// it again.
    started_attempts: BTreeMap<VmId, u32>,
    /// Stop operations in flight: op -> (vm, cause).
    stops: BTreeMap<u64, (VmId, StopCause)>,
    /// VMs found running at the agent's start, not yet checked against their home datastore's
    /// protected list (`check_found_copies`): running here, listed, reported and fenced like any
    /// other, adopted or stopped once the check has spoken.
    found: BTreeMap<VmId, FoundCopy>,
}

/// A VM found running at start, waiting for its check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FoundCopy {
    /// A read of the home datastore's protected list is out.
    reading: bool,
}

/// What the protected list says of a VM found running here at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FoundVerdict {
    /// A restart of it to `target` is in flight: the cluster is starting it elsewhere.
    StartingOn { target: HostId },
    /// The list places it on another host: stale if that host's power-on list still holds it
    /// (a host lists a VM before it starts it and drops it once it stopped it, so a host whose
    /// list lacks the VM does not run it: fenced, stopped, crashed since the list was written).
    PlacedOn { host: HostId },
    /// Nothing places it elsewhere: this copy is the cluster's (or the VM is not protected).
    Ours,
}

impl LocalVms {
    pub(super) fn rebuild_homes(&mut self, cfg: &std::sync::Arc<crate::cluster::ClusterView>) {
        self.homes = Some(cfg.clone());
        for (vm, v) in self.vms.iter_mut() {
            v.home = cfg.vm(*vm).map(|c| c.home);
        }
    }

    pub(super) fn home(&self, vm: VmId) -> Option<DatastoreId> {
        if let Some(v) = self.vms.get(&vm) {
            return v.home;
        }
        self.homes.as_ref()?.vm(vm).map(|v| v.home)
    }

    pub(super) fn list_generation(&self, d: DatastoreId) -> u64 {
        self.lists.get(&d).map_or(0, |l| l.durable)
    }

    pub(super) fn statuses(&self) -> Vec<VmStatus> {
        self.vms
            .iter()
            .map(|(&vm, v)| VmStatus { vm, state: v.state })
            .collect()
    }

    pub(super) fn state(&self, vm: VmId) -> Option<VmRunState> {
        self.vms.get(&vm).map(|v| v.state)
    }

    pub(super) fn is_active(&self, vm: VmId) -> bool {
        matches!(
            self.state(vm),
            Some(VmRunState::Running | VmRunState::PoweringOn)
        )
    }

    /// VMs running or starting here whose home is `d`.
    fn active_on(&self, d: DatastoreId) -> Vec<VmId> {
        self.vms
            .iter()
            .filter(|(_, v)| {
                matches!(v.state, VmRunState::Running | VmRunState::PoweringOn) && v.home == Some(d)
            })
            .map(|(&vm, _)| vm)
            .collect()
    }

    /// Every VM this host runs, with state, for status when not master.
    pub(super) fn views(&self) -> Vec<VmView> {
        self.vms
            .iter()
            .map(|(&vm, v)| VmView {
                vm,
                host: None,
                state: Some(v.state),
                restart: String::new(),
                failed: false,
            })
            .collect()
    }

    fn set(&mut self, vm: VmId, state: VmRunState) {
        let changed = self.vms.get(&vm).is_none_or(|v| v.state != state);
        let home = match self.vms.get(&vm) {
            Some(v) => v.home,
            None => self.homes.as_ref().and_then(|c| c.vm(vm)).map(|c| c.home),
        };
        // A pause belongs to the running VM it froze: once the VM is off (stopped, fenced,
        // crashed) there is nothing to resume, and a later start is a new VM, not a paused one.
        let pause = self
            .vms
            .get(&vm)
            .filter(|v| v.state == VmRunState::Running && state == VmRunState::Running)
            .and_then(|v| v.pause);
        self.vms.insert(vm, LocalVm { state, home, pause });
        if changed {
            self.generation += 1;
        }
    }

    fn touch_list(&mut self, d: Option<DatastoreId>) {
        if let Some(d) = d {
            self.lists.entry(d).or_default().wanted += 1;
        }
    }
}

impl Agent {
    fn local_vm_changed(&mut self, vm: VmId) {
        let home = self.vms.home(vm);
        self.vms.touch_list(home);
        self.want_vm_report = true;
        self.deadlines.net_heartbeat = self.now;
        self.flush_power_on_lists(self.now);
    }

    /// Write every power-on list whose wanted generation is ahead of the one on disk.
    pub(super) fn flush_power_on_lists(&mut self, now: Time) {
        let dirty: Vec<DatastoreId> = self
            .vms
            .lists
            .iter()
            .filter(|(_, l)| l.in_flight.is_none() && l.wanted > l.durable)
            .map(|(&d, _)| d)
            .collect();
        for d in dirty {
            if !self.mounted.contains_key(&d) {
                continue;
            }
            let list = self.power_on_list(d);
            let generation = list.generation;
            if let Some(l) = self.vms.lists.get_mut(&d) {
                l.in_flight = Some(generation);
            }
            self.out.ds_request(
                now,
                d,
                DsOp::WritePowerOnList(list),
                DsPurpose::PowerOnListWrite { generation },
            );
        }
    }

    fn power_on_list(&self, d: DatastoreId) -> PowerOnList {
        let l = self.vms.lists.get(&d).cloned().unwrap_or_default();
        // A copy found at start is listed before its check too: the list says what runs here,
        // and another returning host's check reads "not listed" as "not running there".
        let entries = self
            .vms
            .active_on(d)
            .into_iter()
            .map(|vm| PowerOnEntry {
                vm,
                state: if self.vms.state(vm) == Some(VmRunState::Running) {
                    PowerOnState::Running
                } else {
                    PowerOnState::PoweringOn
                },
            })
            .collect();
        PowerOnList {
            cluster: self.settings.cluster,
            host: self.settings.host,
            incarnation: self.settings.incarnation,
            generation: l.wanted,
            isolated: self.role() == Role::Isolated,
            entries,
            isolation_powered_off: l.isolation_powered_off.iter().copied().collect(),
        }
    }

    pub(super) fn on_power_on_list_written(
        &mut self,
        now: Time,
        d: DatastoreId,
        generation: u64,
        result: Result<DsReply, DsError>,
    ) {
        let ok = result.is_ok();
        if let Some(l) = self.vms.lists.get_mut(&d) {
            l.in_flight = None;
            if ok && generation > l.durable {
                l.durable = generation;
            }
        }
        let durable = self.vms.list_generation(d);
        let waiting: Vec<(VmId, PendingPowerOn)> = self
            .vms
            .pending
            .iter()
            .filter(|(_, p)| {
                p.datastore == d && matches!(p.stage, PowerOnStage::TakingLease { .. })
            })
            .map(|(&vm, &p)| (vm, p))
            .collect();
        for (vm, p) in waiting {
            let PowerOnStage::TakingLease { generation: needed } = p.stage else {
                continue;
            };
            if durable >= needed {
                self.start_pending(vm);
            } else if !ok {
                // We could not take the lease: the VM must not start here.
                self.vms.vms.remove(&vm);
                self.vms.generation += 1;
                self.fail_power_on(vm, p, format!("cannot write power-on list on {d}"));
            }
        }
        self.flush_power_on_lists(now);
    }

    /// The VM's lease is taken: ask the hypervisor to start it.
    fn start_pending(&mut self, vm: VmId) {
        // The target's half of the argument (docs/safety.md, steps 4 and 5): only a power-on whose
        // intent the datastore confirmed reaches TakingLease, and it starts only once its entry
        // in our power-on list is on disk.
        debug_assert!(
            step_removed!(self, PowerOnListEntry)
                || self.vms.pending.get(&vm).is_some_and(|p| matches!(
                    p.stage,
                    PowerOnStage::TakingLease { generation }
                        if self.vms.list_generation(p.datastore) >= generation
                )),
            "{vm} would start before its intent was confirmed and its power-on list entry written"
        );
        let definition = self
            .config
            .vm(vm)
            .map(|v| v.definition.clone())
            .unwrap_or_default();
        let op = self.op();
        if let Some(pp) = self.vms.pending.get_mut(&vm) {
            pp.stage = PowerOnStage::Starting { op };
        }
        self.out
            .outputs
            .push_back(Output::Hypervisor(HypervisorAction::PowerOn {
                op,
                vm,
                definition,
            }));
    }

    /// Give up a power-on. One the hypervisor is already carrying out cannot be taken back: it
    /// is finished (and the VM stopped again if it came up) before the master hears it failed, so
    /// that no other host is given the VM while it may still start here.
    fn abort_power_on(&mut self, vm: VmId, p: PendingPowerOn, error: String) {
        let PowerOnStage::Starting { op } = p.stage else {
            self.fail_power_on(vm, p, error);
            return;
        };
        self.vms.pending.remove(&vm);
        self.vms.aborted.insert(
            vm,
            AbortedStart {
                pending: p,
                op,
                error,
                came_up: false,
            },
        );
    }

    /// The aborted start is over and the VM is off: now the master may place it elsewhere.
    fn finish_abort(&mut self, vm: VmId) {
        if let Some(a) = self.vms.aborted.remove(&vm) {
            self.fail_power_on(vm, a.pending, a.error);
        }
    }

    fn fail_power_on(&mut self, vm: VmId, p: PendingPowerOn, error: String) {
        self.vms.pending.remove(&vm);
        self.vms.failed_attempts.insert(vm, p.attempt);
        let home = self.vms.home(vm);
        self.vms.touch_list(home);
        let msg = Message::PowerOnResult(PowerOnResult {
            vm,
            attempt: p.attempt,
            running: false,
            error: Some(error),
            stopped_by_operator: false,
            vm_generation: self.vms.generation,
        });
        self.send(p.from, &msg);
    }

    /// Our master passes on an operator's stop. Only from the master we follow (or ourselves as
    /// master): a stop from anyone else, even authenticated, is a deposed master's. A VM still
    /// starting is left to its start; the master resends while the VM runs.
    pub(super) fn on_power_off_command(&mut self, from: HostId, command: PowerOffCommand) {
        let ours = self.current_master() == Some(from)
            || (from == self.settings.host && self.role() == Role::Master);
        if !ours || self.vms.state(command.vm) != Some(VmRunState::Running) {
            return;
        }
        if self.vms.stops.values().any(|(v, _)| *v == command.vm) {
            return;
        }
        match command.reason {
            PowerOffReason::Operator => {
                self.emit(Event::StoppingForOperator { vm: command.vm });
                self.stop_vm(command.vm, StopCause::Operator, IsolationResponse::Shutdown);
            }
            PowerOffReason::StaleCopy => {
                self.vms.found.remove(&command.vm);
                self.emit(Event::StoppingStaleCopy { vm: command.vm });
                self.stop_vm(
                    command.vm,
                    StopCause::StaleCopy,
                    IsolationResponse::PowerOff,
                );
            }
        }
    }

    /// A master asks us to start a VM. Checked against the datastore before anything happens.
    pub(super) fn on_power_on_command(&mut self, now: Time, from: HostId, command: PowerOnCommand) {
        let PowerOnCommand {
            vm,
            datastore,
            epoch,
            attempt,
        } = command;
        if self.answer_repeated_power_on(from, vm, attempt) {
            return;
        }
        let p = PendingPowerOn {
            from,
            datastore,
            attempt,
            stage: PowerOnStage::CheckingIntent,
        };
        if let Some(error) = self.power_on_refusal(now, vm, datastore) {
            self.fail_power_on(vm, p, error);
            return;
        }
        self.vms.pending.insert(vm, p);
        if step_removed!(self, TargetIntentCheck) {
            self.on_intent_checked(now, datastore, vm, attempt, Ok(DsReply::IntentConfirmed));
            return;
        }
        let op = DsOp::CheckIntent {
            owner: from,
            epoch,
            vm,
            target: self.settings.host,
            attempt,
        };
        self.out
            .ds_request(now, datastore, op, DsPurpose::CheckIntent { vm, attempt });
    }

    /// A command this host already acted on (masters resend until they hear back): answered from
    /// what happened, or left to the answer already on its way. Returns whether it was one.
    fn answer_repeated_power_on(&mut self, from: HostId, vm: VmId, attempt: u32) -> bool {
        let answer = |running: bool, error: Option<&str>, stopped_by_operator: bool| {
            Message::PowerOnResult(PowerOnResult {
                vm,
                attempt,
                running,
                error: error.map(str::to_string),
                stopped_by_operator,
                vm_generation: self.vms.generation,
            })
        };
        let state = self.vms.state(vm);
        if let Some(state) = state
            && matches!(state, VmRunState::Running | VmRunState::PoweringOn)
        {
            if state == VmRunState::Running {
                let msg = answer(true, None, false);
                self.send(from, &msg);
            }
            return true;
        }
        if self.vms.pending.contains_key(&vm) {
            return true;
        }
        if state == Some(VmRunState::StoppedByUser)
            && self.vms.started_attempts.get(&vm) == Some(&attempt)
        {
            let msg = answer(
                false,
                Some("an operator stopped the VM after this attempt started it"),
                true,
            );
            self.send(from, &msg);
            return true;
        }
        if self.vms.failed_attempts.get(&vm) == Some(&attempt) {
            let msg = answer(false, Some("attempt already failed"), false);
            self.send(from, &msg);
            return true;
        }
        false
    }

    /// Why this host must refuse to start `vm` from `datastore` now, if it must.
    fn power_on_refusal(&self, now: Time, vm: VmId, datastore: DatastoreId) -> Option<String> {
        if self.config.vm(vm).is_none() {
            Some("unknown VM".to_string())
        } else if self.vms.home(vm) != Some(datastore) {
            Some(format!("{vm} does not live on {datastore}"))
        } else if !self.reachable_datastores(now).contains(&datastore) {
            Some(format!("{datastore} is not reachable from this host"))
        } else if self.role() == Role::Isolated || self.maintenance || self.shutting_down {
            Some("host cannot take VMs now".to_string())
        } else {
            None
        }
    }

    pub(super) fn on_intent_checked(
        &mut self,
        now: Time,
        d: DatastoreId,
        vm: VmId,
        attempt: u32,
        result: Result<DsReply, DsError>,
    ) {
        let Some(&p) = self.vms.pending.get(&vm) else {
            return;
        };
        if p.attempt != attempt || p.stage != PowerOnStage::CheckingIntent {
            return;
        }
        match result {
            Ok(DsReply::IntentConfirmed) => {
                if step_removed!(self, PowerOnListEntry) {
                    self.vms.set(vm, VmRunState::PoweringOn);
                    self.want_vm_report = true;
                    self.start_pending(vm);
                    return;
                }
                // Take the lease: the VM goes into our power-on list on disk before it starts.
                self.vms.set(vm, VmRunState::PoweringOn);
                self.vms.touch_list(Some(d));
                let generation = self.vms.lists.get(&d).map_or(0, |l| l.wanted);
                if let Some(pp) = self.vms.pending.get_mut(&vm) {
                    pp.stage = PowerOnStage::TakingLease { generation };
                }
                self.want_vm_report = true;
                self.flush_power_on_lists(now);
            }
            Ok(DsReply::IntentRefused { reason }) => {
                self.emit(Event::PowerOnRefused {
                    vm,
                    from: p.from,
                    reason: reason.clone(),
                });
                self.fail_power_on(vm, p, format!("refused: {reason}"));
            }
            // Not a reply an intent check gives (a bug): reported to the master in words, as
            // every failure reason reaches operators.
            Ok(_) => self.fail_power_on(
                vm,
                p,
                "unexpected datastore reply to the intent check".into(),
            ),
            Err(e) => self.fail_power_on(vm, p, format!("intent check failed: {e}")),
        }
    }

    pub(super) fn on_hypervisor(&mut self, event: HypervisorEvent) {
        match event {
            HypervisorEvent::Inventory { op, running } => self.on_inventory(op, running),
            HypervisorEvent::PowerOnResult { op, vm, result } => {
                self.on_power_on_done(op, vm, result);
            }
            HypervisorEvent::PowerOffResult { op, vm, result } => {
                self.on_power_off_done(op, vm, result);
            }
            HypervisorEvent::VmStopped { vm, state } => self.on_vm_stopped(vm, state),
            HypervisorEvent::VmStarted { vm } => {
                if !self.vms.is_active(vm) {
                    self.vms.set(vm, VmRunState::Running);
                    self.local_vm_changed(vm);
                }
            }
            HypervisorEvent::PauseResult { op, vm, result } => self.on_pause_done(op, vm, result),
            HypervisorEvent::ResumeResult { op, vm, result } => {
                self.on_resume_done(op, vm, result);
            }
        }
    }

    /// The VMs the hypervisor runs at start: never restarted, and adopted once their home
    /// datastore's protected list shows that the cluster does not hold them elsewhere
    /// (`check_found_copies`). Until then they run, are listed, reported as running and fenced
    /// like any other.
    fn on_inventory(&mut self, op: u64, running: Vec<VmId>) {
        if self.vms.inventory_op != Some(op) {
            return;
        }
        self.vms.inventory_op = None;
        self.vms.inventoried = true;
        self.vms.generation += 1;
        let check = !step_removed!(self, StaleCopyCheck);
        for vm in running {
            if !self.vms.is_active(vm) {
                self.vms.set(vm, VmRunState::Running);
                if check {
                    self.vms.found.insert(vm, FoundCopy::default());
                } else {
                    self.emit(Event::Adopted { vm });
                }
                self.local_vm_changed(vm);
            }
        }
    }

    /// Check the VMs found running at start against their home datastores' protected lists: one
    /// read per datastore, retried at every evaluation while it fails (the VM keeps running
    /// listed meanwhile: stopping it on no evidence could stop the only copy).
    pub(super) fn check_found_copies(&mut self, now: Time) {
        if self.vms.found.is_empty() {
            return;
        }
        let Some(config) = self.vms.homes.clone() else {
            return;
        };
        let mut reads: BTreeSet<DatastoreId> = BTreeSet::new();
        let found: Vec<(VmId, FoundCopy)> = self.vms.found.iter().map(|(&v, &f)| (v, f)).collect();
        for (vm, f) in found {
            let still_here = self.vms.state(vm) == Some(VmRunState::Running);
            match config.vm(vm).map(|c| c.home) {
                _ if !still_here => {
                    self.vms.found.remove(&vm);
                }
                // Not a cluster VM: nobody else holds it, and HA leaves it alone.
                None => self.adopt_found(vm),
                Some(d) if !f.reading => {
                    reads.insert(d);
                }
                Some(_) => {}
            }
        }
        for d in reads {
            if !self.mounted.contains_key(&d) {
                continue;
            }
            for (vm, f) in self.vms.found.iter_mut() {
                if config.vm(*vm).is_some_and(|c| c.home == d) {
                    f.reading = true;
                }
            }
            self.out
                .ds_request(now, d, DsOp::ReadProtectedList, DsPurpose::FoundCopyRead);
        }
    }

    pub(super) fn on_found_copy_read(&mut self, d: DatastoreId, result: Result<DsReply, DsError>) {
        let waiting: Vec<VmId> = self
            .vms
            .found
            .keys()
            .copied()
            .filter(|&vm| self.vms.home(vm) == Some(d))
            .collect();
        let list = match result {
            Ok(DsReply::ProtectedList(list)) => list,
            other => {
                if let Err(e) = other {
                    tracing::debug!(datastore = %d, error = %e, "protected list unreadable; found VMs checked again later");
                }
                for vm in waiting {
                    if let Some(f) = self.vms.found.get_mut(&vm) {
                        f.reading = false;
                    }
                }
                return;
            }
        };
        for vm in waiting {
            let entry = list
                .as_ref()
                .and_then(|l| l.vms.iter().find(|e| e.vm == vm));
            match found_verdict(self.settings.host, entry) {
                FoundVerdict::Ours => self.adopt_found(vm),
                FoundVerdict::StartingOn { target } => self.stop_stale_copy(vm, target),
                FoundVerdict::PlacedOn { host } => {
                    let op = DsOp::ReadPowerOnList { host };
                    self.out
                        .ds_request(self.now, d, op, DsPurpose::FoundCopyListRead { vm, host });
                }
            }
        }
    }

    /// The power-on list of the host the protected list places a found VM on.
    pub(super) fn on_found_copy_list_read(
        &mut self,
        vm: VmId,
        host: HostId,
        result: Result<DsReply, DsError>,
    ) {
        if !self.vms.found.contains_key(&vm) {
            return;
        }
        match result {
            Ok(DsReply::PowerOnList(list)) => {
                let held = list.is_some_and(|l| l.entries.iter().any(|e| e.vm == vm));
                if held {
                    self.stop_stale_copy(vm, host);
                } else {
                    self.adopt_found(vm);
                }
            }
            other => {
                if let Err(e) = other {
                    tracing::debug!(%vm, %host, error = %e, "power-on list unreadable; found VM checked again later");
                }
                if let Some(f) = self.vms.found.get_mut(&vm) {
                    f.reading = false;
                }
            }
        }
    }

    fn stop_stale_copy(&mut self, vm: VmId, placed_on: HostId) {
        self.vms.found.remove(&vm);
        self.emit(Event::StaleCopyFound { vm, placed_on });
        self.stop_vm(vm, StopCause::StaleCopy, IsolationResponse::PowerOff);
    }

    fn adopt_found(&mut self, vm: VmId) {
        self.vms.found.remove(&vm);
        self.emit(Event::Adopted { vm });
        self.local_vm_changed(vm);
    }

    fn on_power_on_done(&mut self, op: u64, vm: VmId, result: Result<(), String>) {
        if self.vms.aborted.get(&vm).is_some_and(|a| a.op == op) {
            match result {
                Ok(()) => {
                    // Up after all, without a lease we still want: stop it, and let any
                    // stop that raced ahead of the start be forgotten.
                    self.vms.stops.retain(|_, (v, _)| *v != vm);
                    if let Some(a) = self.vms.aborted.get_mut(&vm) {
                        a.came_up = true;
                    }
                    self.vms.set(vm, VmRunState::Running);
                    self.local_vm_changed(vm);
                    self.stop_vm(vm, StopCause::Abort, IsolationResponse::PowerOff);
                }
                Err(_) => {
                    self.vms.vms.remove(&vm);
                    self.vms.generation += 1;
                    self.finish_abort(vm);
                    self.local_vm_changed(vm);
                }
            }
            return;
        }
        let Some(&p) = self.vms.pending.get(&vm) else {
            return;
        };
        if p.stage != (PowerOnStage::Starting { op }) {
            return;
        }
        match result {
            Ok(()) => {
                self.vms.pending.remove(&vm);
                self.vms.started_attempts.insert(vm, p.attempt);
                self.vms.set(vm, VmRunState::Running);
                self.emit(Event::PoweredOn {
                    vm,
                    attempt: p.attempt,
                });
                self.local_vm_changed(vm);
                let msg = Message::PowerOnResult(PowerOnResult {
                    vm,
                    attempt: p.attempt,
                    running: true,
                    error: None,
                    stopped_by_operator: false,
                    vm_generation: self.vms.generation,
                });
                self.send(p.from, &msg);
            }
            Err(e) => {
                self.vms.vms.remove(&vm);
                self.vms.generation += 1;
                self.fail_power_on(vm, p, e);
                self.local_vm_changed(vm);
            }
        }
    }

    fn on_power_off_done(&mut self, op: u64, vm: VmId, result: Result<(), String>) {
        let Some((_, cause)) = self.vms.stops.remove(&op) else {
            return;
        };
        let starting = self
            .vms
            .pending
            .get(&vm)
            .is_some_and(|p| matches!(p.stage, PowerOnStage::Starting { .. }))
            || self.vms.aborted.get(&vm).is_some_and(|a| !a.came_up);
        if starting {
            // The stop ran before the hypervisor's start finished: the VM may still come
            // up, so it is not "stopped" yet (its start's result decides).
            return;
        }
        match result {
            Ok(()) => {
                if self.vms.aborted.contains_key(&vm) {
                    self.vms.set(vm, VmRunState::StoppedByAgent);
                    self.finish_abort(vm);
                    self.local_vm_changed(vm);
                    return;
                }
                // An operator's stop ends as any operator's stop: off on purpose.
                let state = if cause == StopCause::Operator {
                    VmRunState::StoppedByUser
                } else {
                    VmRunState::StoppedByAgent
                };
                self.vms.set(vm, state);
                if cause == StopCause::Isolation
                    && let Some(d) = self.vms.home(vm)
                {
                    self.vms
                        .lists
                        .entry(d)
                        .or_default()
                        .isolation_powered_off
                        .insert(vm);
                }
                self.local_vm_changed(vm);
            }
            Err(e) => {
                // Still running: when fencing, the watchdog is no longer kicked (see
                // evaluate_leases), so the host is reset before any lease can expire.
                tracing::error!(%vm, error = %e, ?cause, "stopping VM failed");
            }
        }
    }

    /// The hypervisor reports a VM stopped on its own (crash, guest shutdown, an operator).
    fn on_vm_stopped(&mut self, vm: VmId, state: VmRunState) {
        if self.vms.state(vm).is_some() || self.vms.home(vm).is_some() {
            // A stop we asked for is recorded by its PowerOffResult.
            if self.vms.stops.values().any(|(v, _)| *v == vm) {
                return;
            }
            if let Some(p) = self.vms.pending.get(&vm).copied() {
                self.abort_power_on(vm, p, "the VM stopped while it was starting".into());
            }
            if self.vms.aborted.get(&vm).is_some_and(|a| !a.came_up) {
                // The hypervisor is still inside its start: its result says what runs.
                return;
            }
            self.finish_abort(vm);
            self.vms.set(vm, state);
            self.local_vm_changed(vm);
        }
    }

    fn stop_vm(&mut self, vm: VmId, cause: StopCause, response: IsolationResponse) {
        if self.vms.stops.values().any(|(v, _)| *v == vm) {
            return;
        }
        let op = self.op();
        self.vms.stops.insert(op, (vm, cause));
        // A frozen guest cannot shut down cleanly: waiting `shutdown_timeout` for it would only
        // delay the stop (and a process driver's SIGTERM waits for a SIGCONT that never comes).
        let frozen = self.vms.vms.get(&vm).is_some_and(|v| v.pause.is_some());
        let action = match response {
            IsolationResponse::Shutdown if !frozen => HypervisorAction::Shutdown {
                op,
                vm,
                timeout: self.t.shutdown_timeout,
                cause,
            },
            _ => HypervisorAction::PowerOff { op, vm, cause },
        };
        self.out.outputs.push_back(Output::Hypervisor(action));
    }

    // ----- isolation -----------------------------------------------------------------------------

    pub(super) fn evaluate_isolation(&mut self, now: Time) {
        if self.role() == Role::Starting || self.other_hosts().is_empty() {
            return;
        }
        let silent = now.since(self.last_heard_anyone) >= self.t.isolation_detect_after;
        let check_due = self
            .isolation
            .last_check
            .is_none_or(|t| now.since(t) >= self.t.isolation_detect_after);
        if (silent || self.role() == Role::Isolated) && check_due && !self.isolation.checking {
            self.isolation.checking = true;
            self.isolation.last_check = Some(now);
            self.out.outputs.push_back(Output::CheckIsolation);
        }
        if self.role() != Role::Isolated {
            return;
        }
        self.watch_owners(now);
        if self
            .isolation
            .declared_at
            .is_some_and(|t| now.since(t) >= self.t.isolation_response_delay)
        {
            self.apply_isolation_response(now);
        }
    }

    /// While isolated, read the claim of every datastore a running VM of ours lives on, so that
    /// the response stops only what a master will restart.
    fn watch_owners(&mut self, now: Time) {
        let homes: BTreeSet<DatastoreId> = self
            .vms
            .vms
            .iter()
            .filter(|(vm, v)| {
                v.state == VmRunState::Running && !self.isolation.responded.contains(vm)
            })
            .filter_map(|(_, v)| v.home)
            .filter(|d| self.mounted.contains_key(d))
            .collect();
        for d in homes {
            if !self.has_inflight(d, |p| matches!(p, DsPurpose::OwnerRead)) {
                self.out
                    .ds_request(now, d, DsOp::ReadClaim, DsPurpose::OwnerRead);
            }
        }
    }

    pub(super) fn on_owner_read(
        &mut self,
        now: Time,
        d: DatastoreId,
        result: Result<DsReply, DsError>,
    ) {
        if self.role() != Role::Isolated {
            return;
        }
        let w = self.isolation.owners.entry(d).or_default();
        match result {
            Ok(DsReply::Claim(c)) => w.observe(now, c.as_ref()),
            Ok(_) | Err(_) => w.unreadable = true,
        }
    }

    pub(super) fn on_isolation_check(&mut self, now: Time, reachable: bool) {
        self.isolation.checking = false;
        let silent = now.since(self.last_heard_anyone) >= self.t.isolation_detect_after;
        if reachable {
            if self.role() == Role::Isolated {
                self.end_isolation(now);
            }
            return;
        }
        if !silent || self.role() == Role::Isolated {
            return;
        }
        if self.role() == Role::Master {
            // An isolated master protects nothing: release the claims for the other side's master.
            self.step_down(now, None, "isolated");
        }
        self.set_role(
            RoleState::Isolated,
            "no host heard and no isolation address answers",
        );
        self.isolation.declared_at = Some(now);
        self.isolation.responded.clear();
        self.isolation.deferred.clear();
        self.isolation.owners.clear();
        self.emit(Event::IsolationDeclared);
        let ds: Vec<DatastoreId> = self.mounted.keys().copied().collect();
        for d in ds {
            self.vms.touch_list(Some(d));
        }
        self.deadlines.ds_heartbeat = now;
        self.flush_power_on_lists(now);
    }

    pub(super) fn end_isolation(&mut self, now: Time) {
        if self.role() != Role::Isolated {
            return;
        }
        self.emit(Event::IsolationEnded);
        self.isolation = IsolationState::default();
        // What the isolation response stopped is now reported over the network (StoppedByAgent).
        let ds: Vec<DatastoreId> = self.vms.lists.keys().copied().collect();
        for d in ds {
            if let Some(l) = self.vms.lists.get_mut(&d) {
                l.isolation_powered_off.clear();
            }
            self.vms.touch_list(Some(d));
        }
        // Leave Isolated first: become_candidate stays put while isolated.
        self.set_role(
            RoleState::Candidate(ElectionRound::new(now)),
            "network back",
        );
        self.become_candidate(now, "network back");
        self.flush_power_on_lists(now);
    }

    /// Apply each running VM's response once, but only where a master holds the VM's home
    /// datastore's claim: with no master (the whole network down) nobody could restart what we
    /// stop, so the VM keeps running on its datastore lease and is re-checked on every evaluation.
    fn apply_isolation_response(&mut self, now: Time) {
        let running: Vec<(VmId, Option<DatastoreId>)> = self
            .vms
            .vms
            .iter()
            .filter(|(vm, v)| {
                v.state == VmRunState::Running && !self.isolation.responded.contains(vm)
            })
            .map(|(&vm, v)| (vm, v.home))
            .collect();
        for (vm, home) in running {
            let response = self
                .config
                .vm(vm)
                .map(|c| c.ha.isolation_response)
                .unwrap_or(self.config.ha.default_isolation_response);
            if response == IsolationResponse::LeaveRunning {
                self.isolation.responded.insert(vm);
                continue;
            }
            if let Some(d) = home
                && !step_removed!(self, IsolationOwnerCheck)
                && !self
                    .isolation
                    .owners
                    .get(&d)
                    .is_some_and(|w| w.someone_will_restart(now, self.t.claim_lease))
            {
                if self.isolation.deferred.insert(vm) {
                    self.emit(Event::IsolationResponseDeferred { vm, datastore: d });
                }
                continue;
            }
            self.isolation.responded.insert(vm);
            if self.paused() {
                self.emit(Event::ActionSuppressed {
                    what: format!("isolation response {response} for {vm}"),
                });
                continue;
            }
            self.emit(Event::IsolationResponseApplied { vm, response });
            self.stop_vm(vm, StopCause::Isolation, response);
        }
    }

    // ----- storage loss ---------------------------------------------------------------------------

    /// A VM whose home datastore this host has not been able to write for `storage_loss_timeout_ms`
    /// gets its `storage_loss_response`: `power-off` stops it (once) so that the master restarts it
    /// on a host that reaches the datastore (vSphere's VM component protection); `pause` freezes it
    /// (once per outage) until the storage is back here (`evaluate_storage_resume`); `keep` leaves
    /// it. Nothing happens without a timeout set, or while HA is paused.
    pub(super) fn evaluate_storage_loss(&mut self, now: Time) {
        use heartbeat_fs::records::StorageLossResponse;
        let Some(timeout) = self
            .config
            .ha
            .storage_loss_timeout_ms
            .map(Duration::from_millis)
        else {
            return;
        };
        let due: Vec<(VmId, DatastoreId, StorageLossResponse)> = self
            .vms
            .vms
            .iter()
            .filter(|(_, v)| v.state == VmRunState::Running)
            .filter_map(|(&vm, v)| Some((vm, v.home?, v.pause.is_some())))
            .filter(|(_, d, _)| {
                self.mounted
                    .get(d)
                    .and_then(|m| m.failing_since)
                    .is_some_and(|t| now.since(t) >= timeout)
            })
            .filter_map(|(vm, d, has_pause)| {
                let response = self.config.vm(vm)?.ha.storage_loss_response;
                match response {
                    // Also a VM paused before its response was changed to power-off.
                    StorageLossResponse::PowerOff => Some((vm, d, response)),
                    // Once per outage: a pause that failed is not retried (see StoragePause).
                    StorageLossResponse::Pause if !has_pause => Some((vm, d, response)),
                    StorageLossResponse::Pause | StorageLossResponse::Keep => None,
                }
            })
            .collect();
        for (vm, datastore, response) in due {
            if self.vms.stops.values().any(|(v, _)| *v == vm) {
                continue;
            }
            if self.paused() {
                continue;
            }
            match response {
                StorageLossResponse::PowerOff => {
                    self.emit(Event::StorageLossResponseApplied { vm, datastore });
                    self.stop_vm(vm, StopCause::StorageLoss, IsolationResponse::PowerOff);
                }
                StorageLossResponse::Pause => self.pause_vm(now, vm),
                StorageLossResponse::Keep => {}
            }
        }
    }

    fn pause_vm(&mut self, now: Time, vm: VmId) {
        let op = self.op();
        let Some(v) = self.vms.vms.get_mut(&vm) else {
            return;
        };
        v.pause = Some(StoragePause {
            since: now,
            stage: PauseStage::Pausing { op },
            confirmed: false,
            lapsed: false,
            resume_failures: 0,
        });
        self.out
            .outputs
            .push_back(Output::Hypervisor(HypervisorAction::Pause { op, vm }));
    }

    fn on_pause_done(&mut self, op: u64, vm: VmId, result: Result<(), String>) {
        let Some(v) = self.vms.vms.get_mut(&vm) else {
            return;
        };
        let home = v.home;
        let Some(p) = v.pause.as_mut() else {
            return;
        };
        if p.stage != (PauseStage::Pausing { op }) {
            return;
        }
        p.stage = PauseStage::Paused;
        match result {
            Ok(()) => {
                p.confirmed = true;
                if let Some(datastore) = home {
                    self.emit(Event::StorageLossPaused { vm, datastore });
                }
            }
            Err(e) => {
                // It runs on, exactly as with `keep`; not retried in this outage (a failing
                // driver would be asked at every evaluation), resumed all the same at its end.
                tracing::warn!(%vm, error = %e, "pausing the VM after its datastore was lost failed; it keeps running");
            }
        }
    }

    /// Resume what a storage loss paused, once this host writes the VM's home datastore again (a
    /// write that started after the pause, and succeeded) and the VM is still ours: running here,
    /// no stop on its way, and its leases never at their fence point since it was paused. Such a
    /// VM was never eligible for a restart elsewhere (docs/safety.md, "Storage outages"). Runs
    /// after `evaluate_leases` at the same instant, so that a lapse seen now is marked first.
    /// Not suppressed while HA is paused: a resume undoes HA's own pause and starts nothing.
    pub(super) fn evaluate_storage_resume(&mut self, now: Time) {
        let due: Vec<VmId> = self
            .vms
            .vms
            .iter()
            .filter(|(_, v)| v.state == VmRunState::Running)
            .filter_map(|(&vm, v)| Some((vm, v.home?, v.pause?)))
            .filter(|(_, d, p)| {
                p.stage == PauseStage::Paused && !p.lapsed && self.storage_back(now, *d, p.since)
            })
            .map(|(vm, _, _)| vm)
            .collect();
        for vm in due {
            if self.vms.stops.values().any(|(v, _)| *v == vm) {
                // A stop (fence, isolation response, operator) is on its way: it wins.
                continue;
            }
            let op = self.op();
            if let Some(p) = self.vms.vms.get_mut(&vm).and_then(|v| v.pause.as_mut()) {
                p.stage = PauseStage::Resuming { op };
                self.out
                    .outputs
                    .push_back(Output::Hypervisor(HypervisorAction::Resume { op, vm }));
            }
        }
    }

    /// Whether this host writes `d` again: the last heartbeat write succeeded and started after
    /// `since`, and our leases on `d` are short of their fence point.
    fn storage_back(&self, now: Time, d: DatastoreId, since: Time) -> bool {
        self.mounted.get(&d).is_some_and(|m| {
            m.failing_since.is_none() && m.last_ok_write_start.is_some_and(|t| t > since)
        }) && !self.vms.fenced.contains(&d)
            && now < self.lease_expiry(d) - self.t.fence_margin
    }

    fn on_resume_done(&mut self, op: u64, vm: VmId, result: Result<(), String>) {
        let Some(v) = self.vms.vms.get_mut(&vm) else {
            return;
        };
        let home = v.home;
        let Some(p) = v.pause else {
            return;
        };
        if p.stage != (PauseStage::Resuming { op }) {
            return;
        }
        match result {
            Ok(()) => {
                v.pause = None;
                match home {
                    Some(datastore) if p.confirmed => {
                        self.emit(Event::StorageLossResumed { vm, datastore });
                    }
                    _ => {
                        tracing::info!(%vm, "the datastore is back; VM whose pause had failed resumed in case the pause took effect late");
                    }
                }
            }
            Err(e) => {
                let failures = p.resume_failures.saturating_add(1);
                if let Some(p) = v.pause.as_mut() {
                    p.stage = PauseStage::Paused;
                    p.resume_failures = failures;
                }
                if failures == 1 {
                    tracing::warn!(%vm, error = %e, "resuming the VM paused for its datastore's loss failed; retrying at every evaluation");
                } else {
                    tracing::debug!(%vm, error = %e, failures, "resuming the VM failed again");
                }
            }
        }
    }

    // ----- leases and fencing --------------------------------------------------------------------

    /// When our leases covering VMs on `d` end: the later of the datastore lease and the network
    /// lease (for a master, its claim stands in for the network lease).
    fn lease_expiry(&self, d: DatastoreId) -> Time {
        let base = self
            .mounted
            .get(&d)
            .and_then(|m| m.last_ok_write_start)
            .unwrap_or(self.started_at);
        let ds_expiry = base + self.t.shrink(self.t.ds_lease);
        let net_expiry = self.net_lease.get(&d).copied().unwrap_or(Time::ZERO);
        let claim_expiry = self
            .role
            .master()
            .and_then(|m| m.claim_valid_until(d, &self.t))
            .unwrap_or(Time::ZERO);
        ds_expiry.max(net_expiry).max(claim_expiry)
    }

    pub(super) fn evaluate_leases(&mut self, now: Time) {
        let homes: BTreeSet<DatastoreId> = self
            .vms
            .vms
            .values()
            .filter(|v| matches!(v.state, VmRunState::Running | VmRunState::PoweringOn))
            .filter_map(|v| v.home)
            .collect();
        let mut unsafe_to_kick = false;
        for d in homes {
            let fence_at = self.lease_expiry(d) - self.t.fence_margin;
            if now < fence_at {
                self.vms.fenced.remove(&d);
                continue;
            }
            // Past the fence point a master may soon take these VMs for lost: a paused one must
            // never run again here, whatever becomes of the fence below (suppressed while HA is
            // paused, off, or a power-off that fails).
            for v in self.vms.vms.values_mut() {
                if v.home == Some(d)
                    && let Some(p) = v.pause.as_mut()
                {
                    p.lapsed = true;
                }
            }
            if !self.settings.self_fence || step_removed!(self, SelfFence) {
                continue;
            }
            if self.paused() {
                if !self.vms.fenced.contains(&d) {
                    self.vms.fenced.insert(d);
                    self.emit(Event::ActionSuppressed {
                        what: format!("self-fence of VMs on {d}"),
                    });
                }
                continue;
            }
            unsafe_to_kick = true;
            let vms = self.vms.active_on(d);
            if !self.vms.fenced.contains(&d) {
                self.vms.fenced.insert(d);
                self.emit(Event::SelfFenced {
                    datastore: d,
                    vms: vms.clone(),
                });
            }
            for vm in vms {
                if let Some(p) = self.vms.pending.get(&vm).copied() {
                    self.abort_power_on(vm, p, "lease lost while starting".into());
                }
                self.stop_vm(vm, StopCause::Fence, IsolationResponse::PowerOff);
            }
        }
        if !unsafe_to_kick {
            self.out.outputs.push_back(Output::KickWatchdog);
        }
    }
}

/// The rule for a VM found running at start (`docs/safety.md`, "Returning hosts"): a stale copy
/// when a restart of it to another host is in flight, or when its protected entry places it on
/// another host (running there, no restart pending) whose power-on list still holds it; the
/// cluster's own copy otherwise (never seen running, waiting for a restart that has not picked a
/// target, last seen here, not protected).
fn found_verdict(me: HostId, entry: Option<&heartbeat_fs::records::ProtectedVm>) -> FoundVerdict {
    use heartbeat_fs::records::{DesiredPower, RestartState};
    let Some(e) = entry else {
        return FoundVerdict::Ours;
    };
    match e.restart {
        RestartState::Intent { target, .. } if target != me => FoundVerdict::StartingOn { target },
        RestartState::Idle => match e.last_host {
            Some(h) if h != me && e.desired == DesiredPower::On => {
                FoundVerdict::PlacedOn { host: h }
            }
            _ => FoundVerdict::Ours,
        },
        _ => FoundVerdict::Ours,
    }
}
