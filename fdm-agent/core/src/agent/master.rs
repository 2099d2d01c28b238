//! The master's duties: datastore claims, verdicts on every host, protected-VM lists, and failover
//! (reconcile what should run against what runs, plan, write the intent, command, follow up).

use super::super::cluster::ClusterView;
use super::super::config::Timings;
use super::super::events::{Event, Role, Verdict};
use super::super::io::{Output, VmRunState};
use super::super::messages::{
    MasterHeartbeat, Message, PowerOnCommand, PowerOnResult, SlaveHeartbeat, VmReport, VmStatus,
};
use super::super::placement::{
    self, HostCandidate, PlanInput, RestartPlan, RestartRequest, WaitReason,
};
use super::super::time::Time;
use super::{Agent, DsPurpose, HostView, VmView};
use heartbeat_fs::ops::{ClaimWrite, DsError, DsOp, DsReply};
use heartbeat_fs::records::{
    ClusterConfig, DatastoreClaim, DesiredPower, HostFlags, PowerOnList, ProtectedVm,
    ProtectedVmList, Resources, RestartPolicy, RestartPriority, RestartState,
};
use heartbeat_fs::{DatastoreId, Epoch, HostId, VmId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// How old a liveness-probe answer may be and still count.
const PROBE_REFRESH: Duration = Duration::from_millis(1_000);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClaimWriteKind {
    Acquire,
    Renew,
    Release,
}

/// A claim write on its way: when it left, what it does, the record it writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ClaimWriteSent {
    pub(super) started: Time,
    pub(super) mode: ClaimWriteKind,
    pub(super) record: DatastoreClaim,
}

#[derive(Debug, Clone, Copy)]
struct HeldClaim {
    epoch: Epoch,
    renewal: u64,
    last_renew_start: Time,
    acquired_at: Time,
}

#[derive(Debug, Clone, Default)]
struct ClaimTrack {
    /// The record as last read, and since when it has looked exactly like that.
    seen: Option<DatastoreClaim>,
    seen_since: Option<Time>,
    read_once: bool,
    held: Option<HeldClaim>,
}

/// What the master last saw of one host's heartbeat sector on one datastore.
#[derive(Debug, Clone, Copy)]
struct DsObs {
    incarnation: u64,
    sequence: u64,
    last_advance: Time,
    last_clean_read: Time,
    flags: HostFlags,
    power_on_generation: u64,
}

/// A VM report arriving in parts: its generation, and each part once it came.
#[derive(Debug, Clone)]
struct PartialReport {
    generation: u64,
    parts: Vec<Option<Vec<VmStatus>>>,
}

/// What the master knows of one other host.
#[derive(Debug, Clone, Default)]
struct Peer {
    /// Agent incarnation the reports below came from; a new one voids them.
    incarnation: u64,
    /// When its last network heartbeat arrived.
    last_net: Option<Time>,
    /// The newest heartbeat heard: its sequence and the token to echo with it.
    last_seq: u64,
    last_token: u64,
    /// Datastores it wrote its heartbeat to of late, as it says.
    reachable: Vec<DatastoreId>,
    maintenance: bool,
    /// The newest generation of its VM list it announced (heartbeats, power-on results).
    vm_gen_reported: u64,
    /// The generation of the complete report `vms` holds.
    vm_gen_have: Option<u64>,
    /// Its VMs, from its last complete report.
    vms: BTreeMap<VmId, VmRunState>,
    /// A report still arriving.
    report: Option<PartialReport>,
    verdict: Option<Verdict>,
    /// Its heartbeat record on each datastore, as last read.
    ds: BTreeMap<DatastoreId, DsObs>,
    probe_in_flight: bool,
    /// The last liveness probe: when it was sent and whether it was answered.
    probe: Option<(Time, bool)>,
    /// Its power-on lists as last read (they tell isolation apart from death).
    power_on_lists: BTreeMap<DatastoreId, PowerOnList>,
    /// Datastores whose power-on list of this host is to be read again.
    lists_wanted: BTreeSet<DatastoreId>,
}

impl Peer {
    /// False for a message of an older incarnation. A newer one voids the VM report we hold: the
    /// restarted agent numbers its reports afresh, and until its own report arrives we keep taking
    /// the VMs of the old report as running there (an agent restart leaves VMs running).
    fn note_incarnation(&mut self, incarnation: u64) -> bool {
        if incarnation < self.incarnation {
            return false;
        }
        if incarnation > self.incarnation {
            self.incarnation = incarnation;
            self.vm_gen_have = None;
            self.vm_gen_reported = 0;
            self.report = None;
            self.last_seq = 0;
            self.last_token = 0;
        }
        true
    }
}

#[derive(Debug, Clone)]
struct ProtectedDs {
    list: ProtectedVmList,
    loaded: bool,
    dirty: bool,
    write_in_flight: Option<u64>,
    durable: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for its retry time, capacity, a lease, or ordering.
    Waiting,
    /// A previous master's intent to `target`: re-stamp it with our epoch once the target is alive.
    Resume { target: HostId, attempt: u32 },
    /// Intent written into list generation `generation`; the command goes out once that is durable.
    IntentWriting {
        target: HostId,
        attempt: u32,
        generation: u64,
    },
    /// Command sent.
    Issued {
        target: HostId,
        attempt: u32,
        sent_at: Time,
    },
}

#[derive(Debug, Clone)]
struct RestartTrack {
    home: DatastoreId,
    attempts: u32,
    next_try: Time,
    /// The host it was lost from (for reports).
    from: Option<HostId>,
    preferred: Option<HostId>,
    excluded: Vec<HostId>,
    stage: Stage,
    reported_waiting: bool,
}

impl RestartTrack {
    /// A restart just decided on, waiting for placement from `next_try`.
    fn waiting(
        home: DatastoreId,
        next_try: Time,
        from: Option<HostId>,
        preferred: Option<HostId>,
    ) -> Self {
        RestartTrack {
            home,
            attempts: 0,
            next_try,
            from,
            preferred,
            excluded: Vec::new(),
            stage: Stage::Waiting,
            reported_waiting: false,
        }
    }
}

/// What `reconcile` needs of the agent besides the master's state, gathered once per pass.
struct ReconcileContext {
    now: Time,
    me: HostId,
    /// The first restart delay (ms).
    retry0: u64,
    same_host_attempts: u32,
    config: Arc<ClusterView>,
    /// This host's own VMs, as its hypervisor last reported them.
    local: BTreeMap<VmId, VmRunState>,
}

impl MasterState {
    /// Our own VMs are reported directly, including the ones gone from our list altogether (a
    /// power-on that failed here): a stale "runs on the master" would hide a lost VM forever.
    fn note_own_vms(&mut self, me: HostId, local: &BTreeMap<VmId, VmRunState>) {
        let active = |s: &VmRunState| matches!(s, VmRunState::Running | VmRunState::PoweringOn);
        for (vm, on) in self.running.iter_mut() {
            if on.contains(&me) && !local.get(vm).is_some_and(active) {
                on.remove(&me);
            }
        }
        for (vm, s) in local {
            if active(s) {
                self.running.entry(*vm).or_default().insert(me);
            }
        }
    }

    /// The hosts a VM runs on as far as evidence goes. Reports from hosts we cannot hear are stale;
    /// an isolated host's power-on list is the better authority for what its isolation response
    /// stopped.
    fn running_on(&self, d: DatastoreId, vm: VmId) -> Vec<HostId> {
        self.running
            .get(&vm)
            .map(|s| {
                s.iter()
                    .copied()
                    .filter(|&h| match self.verdict(h) {
                        Some(Verdict::Dead) => false,
                        Some(Verdict::Isolated) => !self.powered_off_by_isolation(h, d, vm),
                        _ => true,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One protected-list entry: the entry as it must now read, if it changes.
    fn reconcile_entry(
        &mut self,
        ctx: &ReconcileContext,
        d: DatastoreId,
        e: &ProtectedVm,
        events: &mut Vec<Event>,
    ) -> Option<ProtectedVm> {
        ctx.config.vm(e.vm)?;
        if let Some(&h) = self.running_on(d, e.vm).first() {
            return self.found_running(e, h);
        }
        if self.tracks.contains_key(&e.vm) || e.desired == DesiredPower::Off {
            // In progress, or off on purpose.
            return None;
        }
        let stopped_at = e
            .last_host
            .is_none()
            .then(|| {
                if ctx.local.get(&e.vm) == Some(&VmRunState::StoppedByUser) {
                    Some(ctx.me)
                } else {
                    stopped_by_user_on(self, e.vm)
                }
            })
            .flatten();
        if let Some(h) = stopped_at {
            // Stopped by an operator (or its guest) before any report showed it running:
            // off on purpose, not lost.
            let mut ne = e.clone();
            ne.last_host = Some(h);
            ne.desired = DesiredPower::Off;
            return Some(ne);
        }
        match e.last_host {
            None => self.never_seen_running(ctx, d, e, events),
            Some(h) => self.judge_last_host(ctx, (d, h), e, events),
        }
    }

    /// Running (or starting) on `h`: that is where it lives now.
    fn found_running(&mut self, e: &ProtectedVm, h: HostId) -> Option<ProtectedVm> {
        let mut ne = e.clone();
        ne.last_host = Some(h);
        ne.desired = DesiredPower::On;
        let stage = self.tracks.get(&e.vm).map(|tr| &tr.stage);
        if matches!(stage, Some(Stage::Issued { target, .. } | Stage::Resume { target, .. }) if *target == h)
        {
            // The power-on result will close the track.
        } else if matches!(stage, Some(Stage::Waiting)) {
            self.tracks.remove(&e.vm);
            ne.restart = RestartState::Idle;
        } else if stage.is_none() && e.restart != RestartState::Idle {
            ne.restart = RestartState::Idle;
        }
        (ne != *e).then_some(ne)
    }

    /// Protected but never seen running (a new master's list, written before any report came in).
    /// Start it only when every host that mounts its datastore is dead or has reported, completely,
    /// that it does not run it.
    fn never_seen_running(
        &mut self,
        ctx: &ReconcileContext,
        d: DatastoreId,
        e: &ProtectedVm,
        events: &mut Vec<Event>,
    ) -> Option<ProtectedVm> {
        let cfg = ctx.config.vm(e.vm)?;
        let active =
            |s: Option<VmRunState>| matches!(s, Some(VmRunState::Running | VmRunState::PoweringOn));
        let nowhere = ctx.config.hosts_of(d).iter().all(|&h| {
            if h == ctx.me {
                return !active(ctx.local.get(&e.vm).copied());
            }
            match self.verdict(h) {
                Some(Verdict::Dead) => true,
                Some(Verdict::Alive) => {
                    reported_state(self.peers.get(&h), e.vm).is_some_and(|s| !active(s))
                }
                _ => false,
            }
        });
        if !(nowhere && restart_allowed(cfg, false)) {
            return None;
        }
        let next_try = ctx.now + Duration::from_millis(ctx.retry0);
        self.tracks
            .insert(e.vm, RestartTrack::waiting(d, next_try, None, None));
        events.push(Event::RestartNeeded {
            vm: e.vm,
            from: None,
            reason: "protected but running nowhere".to_string(),
        });
        Some(pending(e))
    }

    /// Last seen on `h` and running nowhere now (home datastore `d`): what `h`'s verdict and
    /// report say to do.
    fn judge_last_host(
        &mut self,
        ctx: &ReconcileContext,
        (d, h): (DatastoreId, HostId),
        e: &ProtectedVm,
        events: &mut Vec<Event>,
    ) -> Option<ProtectedVm> {
        let cfg = ctx.config.vm(e.vm)?;
        let state = if h == ctx.me {
            Some(ctx.local.get(&e.vm).copied())
        } else {
            reported_state(self.peers.get(&h), e.vm)
        };
        let stopped_by_isolation = self.powered_off_by_isolation(h, d, e.vm);
        match restart_decision(self.verdict(h), state, stopped_by_isolation) {
            Decision::Restart { reason, same_host } => {
                if !restart_allowed(cfg, same_host) {
                    return None;
                }
                let next_try = ctx.now + Duration::from_millis(ctx.retry0);
                let preferred = (same_host && ctx.same_host_attempts > 0).then_some(h);
                let mut track = RestartTrack::waiting(d, next_try, Some(h), preferred);
                if same_host && ctx.same_host_attempts == 0 {
                    // No restart on the host it crashed on: another host first.
                    track.excluded.push(h);
                }
                self.tracks.insert(e.vm, track);
                events.push(Event::RestartNeeded {
                    vm: e.vm,
                    from: Some(h),
                    reason: reason.to_string(),
                });
                Some(pending(e))
            }
            Decision::DesiredOff => {
                let mut ne = e.clone();
                ne.desired = DesiredPower::Off;
                Some(ne)
            }
            Decision::Wait => None,
        }
    }
}

/// The VM's policy lets HA restart it (`same_host`: a restart of a VM that failed on a live host).
fn restart_allowed(cfg: &heartbeat_fs::records::VmConfig, same_host: bool) -> bool {
    let by_policy = match cfg.ha.restart_policy {
        RestartPolicy::Never => false,
        RestartPolicy::HostFailureOnly => !same_host,
        RestartPolicy::Always => true,
    };
    by_policy && cfg.ha.priority != RestartPriority::Disabled
}

/// The protected-list entry with a restart pending.
fn pending(e: &ProtectedVm) -> ProtectedVm {
    let mut ne = e.clone();
    ne.restart = RestartState::Pending { attempts: 0 };
    ne
}

#[derive(Debug)]
pub(super) struct MasterState {
    me: HostId,
    since: Time,
    peers: BTreeMap<HostId, Peer>,
    claims: BTreeMap<DatastoreId, ClaimTrack>,
    /// Last time a heartbeat read of the datastore succeeded.
    ds_read_ok: BTreeMap<DatastoreId, Time>,
    protected: BTreeMap<DatastoreId, ProtectedDs>,
    /// Where each VM is reported running or starting (by non-dead hosts).
    running: BTreeMap<VmId, BTreeSet<HostId>>,
    tracks: BTreeMap<VmId, RestartTrack>,
    reconcile_due: bool,
    last_reconcile: Time,
    /// A slave that has reached more datastores than us, and since when (for the handover).
    better_since: Option<(HostId, Time)>,
    #[cfg(feature = "fault-knobs")]
    pub(super) fault_knobs: crate::FaultKnobs,
}

impl MasterState {
    /// A fresh master's state (its fault knobs, if any, are set by the agent that owns it).
    pub(super) fn new(now: Time, config: &ClusterConfig, me: HostId) -> Self {
        let peers = config
            .hosts
            .iter()
            .filter(|h| h.id != me)
            .map(|h| (h.id, Peer::default()))
            .collect();
        MasterState {
            me,
            since: now,
            peers,
            claims: BTreeMap::new(),
            ds_read_ok: BTreeMap::new(),
            protected: BTreeMap::new(),
            running: BTreeMap::new(),
            tracks: BTreeMap::new(),
            reconcile_due: true,
            last_reconcile: now,
            better_since: None,
            #[cfg(feature = "fault-knobs")]
            fault_knobs: crate::FaultKnobs::default(),
        }
    }

    /// The isolated host recorded, in its power-on list on `d`, that its isolation response stopped
    /// `vm` (only then may it run elsewhere: a VM left running keeps its datastore lease).
    fn powered_off_by_isolation(&self, host: HostId, d: DatastoreId, vm: VmId) -> bool {
        let Some(list) = self.peers.get(&host).and_then(|p| p.power_on_lists.get(&d)) else {
            return false;
        };
        list.isolated
            && (list.isolation_powered_off.contains(&vm) || step_removed!(self, IsolationRecord))
    }

    pub(super) fn verdict(&self, host: HostId) -> Option<Verdict> {
        if host == self.me {
            return Some(Verdict::Alive);
        }
        self.peers.get(&host).and_then(|p| p.verdict)
    }

    /// A newer cluster configuration: the protected lists follow it at once (VMs protected,
    /// unprotected, moved to another home, HA settings changed), not only at the next claim.
    pub(super) fn config_changed(&mut self, _now: Time, config: &ClusterView) {
        for (d, pd) in self.protected.iter_mut() {
            if !pd.loaded {
                continue;
            }
            let wanted: Vec<heartbeat_fs::records::VmConfig> = config
                .vms
                .iter()
                .filter(|v| v.home == *d && v.protected)
                .cloned()
                .collect();
            sync_protected_with_config(pd, &wanted);
        }
        // A VM no list protects any more has nothing left to restart.
        let listed: BTreeSet<VmId> = self
            .protected
            .values()
            .flat_map(|pd| pd.list.vms.iter().map(|e| e.vm))
            .collect();
        self.tracks.retain(|vm, _| listed.contains(vm));
        self.reconcile_due = true;
    }

    pub(super) fn on_probe(&mut self, now: Time, host: HostId, answered: bool) {
        if let Some(p) = self.peers.get_mut(&host) {
            p.probe_in_flight = false;
            p.probe = Some((now, answered));
        }
    }

    /// The alive slave that would win an election without us.
    pub(super) fn best_successor(&self, _me: HostId) -> Option<HostId> {
        let cands: Vec<election::Candidacy<HostId>> = self
            .peers
            .iter()
            .filter(|(_, p)| p.verdict == Some(Verdict::Alive))
            .map(|(&h, p)| election::Candidacy {
                host: h,
                reachable_datastores: p.reachable.len() as u32,
                incumbent: false,
            })
            .collect();
        election::winner(&cands).map(|c| c.host)
    }

    /// Until when our claim on `d` is ours to trust, if we hold it.
    pub(super) fn claim_valid_until(&self, d: DatastoreId, t: &Timings) -> Option<Time> {
        let h = self.claims.get(&d)?.held?;
        Some(h.last_renew_start + t.shrink(t.claim_lease) - t.fence_margin)
    }

    fn held_valid(&self, d: DatastoreId, now: Time, t: &Timings) -> Option<Epoch> {
        let h = self.claims.get(&d)?.held?;
        if step_removed!(self, DropOnClaimLoss) {
            return Some(h.epoch);
        }
        (now < self.claim_valid_until(d, t)?).then_some(h.epoch)
    }

    /// Holding the claim long enough that every network lease granted by an earlier holder expired.
    ///
    /// Also requires a renewal that started after any rival's racing acquisition write must have
    /// landed: a renewal re-checks owner and epoch on disk, so it confirms the compare-and-write.
    fn settled(&self, d: DatastoreId, now: Time, t: &Timings) -> Option<Epoch> {
        let epoch = self.held_valid(d, now, t)?;
        if step_removed!(self, SettleWait) {
            return Some(epoch);
        }
        let h = self.claims.get(&d)?.held?;
        let confirmed = h.last_renew_start >= h.acquired_at + t.datastore_call_deadline;
        (confirmed && now.since(h.acquired_at) >= t.stretch(t.net_lease)).then_some(epoch)
    }

    pub(super) fn on_vm_report(&mut self, (from, incarnation): (HostId, u64), report: VmReport) {
        let VmReport {
            generation,
            part,
            parts,
            vms,
        } = report;
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        if !p.note_incarnation(incarnation) {
            return;
        }
        if parts == 0 || part >= parts || parts > 1024 {
            return;
        }
        // A host's report generations only grow within an incarnation: a late part of an older
        // report (a delayed datagram) must not replace what we know with what was.
        if generation < p.vm_gen_reported || p.vm_gen_have.is_some_and(|g| generation < g) {
            return;
        }
        let fresh = match &p.report {
            Some(r) => r.generation != generation || r.parts.len() != parts as usize,
            None => true,
        };
        if fresh {
            p.report = Some(PartialReport {
                generation,
                parts: vec![None; parts as usize],
            });
        }
        let Some(PartialReport { parts: buf, .. }) = p.report.as_mut() else {
            return;
        };
        buf[part as usize] = Some(vms);
        if buf.iter().all(Option::is_some) {
            let all: BTreeMap<VmId, VmRunState> = buf
                .drain(..)
                .flatten()
                .flatten()
                .map(|s| (s.vm, s.state))
                .collect();
            p.report = None;
            p.vm_gen_have = Some(generation);
            let old = std::mem::replace(&mut p.vms, all);
            for vm in old.keys() {
                if let Some(s) = self.running.get_mut(vm) {
                    s.remove(&from);
                }
            }
            let now_active: Vec<VmId> = p
                .vms
                .iter()
                .filter(|(_, s)| matches!(s, VmRunState::Running | VmRunState::PoweringOn))
                .map(|(&vm, _)| vm)
                .collect();
            for vm in now_active {
                self.running.entry(vm).or_default().insert(from);
            }
            self.reconcile_due = true;
        }
    }

    pub(super) fn host_views(&self, now: Time) -> Vec<HostView> {
        let mut v: Vec<HostView> = vec![HostView {
            host: self.me,
            verdict: Verdict::Alive,
            net_age: Some(0.0),
            ds_age: Vec::new(),
        }];
        for (&h, p) in &self.peers {
            v.push(HostView {
                host: h,
                verdict: p.verdict.unwrap_or(Verdict::Unreachable),
                net_age: p.last_net.map(|t| now.since(t).as_secs_f64()),
                ds_age: p
                    .ds
                    .iter()
                    .map(|(&d, o)| (d, Some(now.since(o.last_advance).as_secs_f64())))
                    .collect(),
            });
        }
        v
    }

    pub(super) fn vm_views(&self) -> Vec<VmView> {
        let mut out = Vec::new();
        for pd in self.protected.values() {
            for e in &pd.list.vms {
                let host = self
                    .running
                    .get(&e.vm)
                    .and_then(|s| s.iter().next().copied())
                    .or(e.last_host);
                let restart = match self.tracks.get(&e.vm) {
                    Some(t) => {
                        format!("{:?} (from {:?}, attempts {})", t.stage, t.from, t.attempts)
                    }
                    None => format!("{:?}", e.restart),
                };
                out.push(VmView {
                    vm: e.vm,
                    host,
                    state: self
                        .running
                        .get(&e.vm)
                        .filter(|s| !s.is_empty())
                        .map(|_| VmRunState::Running),
                    restart,
                });
            }
        }
        out
    }
}

impl Agent {
    // ----- network -------------------------------------------------------------------------------

    pub(super) fn master_send_heartbeats(&mut self, now: Time) {
        for h in self.other_hosts() {
            self.master_send_heartbeat_to(now, h);
        }
    }

    pub(super) fn master_send_heartbeat_to(&mut self, now: Time, to: HostId) {
        let t = &self.t;
        let reachable_datastores = self.reachable_datastores(now).len() as u32;
        let config_generation = self.config.generation;
        let Some(m) = self.role.master_mut() else {
            return;
        };
        let claims: Vec<(DatastoreId, Epoch)> = m
            .claims
            .keys()
            .copied()
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|d| m.held_valid(d, now, t).map(|e| (d, e)))
            .collect();
        let p = m.peers.entry(to).or_default();
        // Echo only a heartbeat heard recently: an old echo would grant nothing anyway.
        let (echo_seq, echo_token) = if p
            .last_net
            .is_some_and(|t0| now.since(t0) < t.host_unreachable_after)
        {
            (p.last_seq, p.last_token)
        } else {
            (0, 0)
        };
        let want_vm_report = p.vm_gen_have != Some(p.vm_gen_reported) && p.last_net.is_some();
        let msg = Message::MasterHeartbeat(MasterHeartbeat {
            echo_seq,
            echo_token,
            reachable_datastores,
            claims,
            want_vm_report,
            config_generation,
        });
        self.send(to, &msg);
    }

    /// A slave heartbeat (the message's fields, from `(host, incarnation)`).
    pub(super) fn master_on_slave_heartbeat(
        &mut self,
        now: Time,
        (from, incarnation): (HostId, u64),
        hb: SlaveHeartbeat,
    ) {
        let SlaveHeartbeat {
            seq,
            token,
            reachable,
            vm_generation,
            maintenance,
            config_generation: _,
        } = hb;
        let Some(m) = self.role.master_mut() else {
            return;
        };
        let p = m.peers.entry(from).or_default();
        if !p.note_incarnation(incarnation) {
            return;
        }
        // A heartbeat older than one already heard (delayed, reordered) is old news: it must not
        // roll back what the host reported since.
        if seq <= p.last_seq {
            return;
        }
        p.last_net = Some(now);
        p.last_seq = seq;
        p.last_token = token;
        p.reachable = reachable;
        p.maintenance = maintenance;
        if p.vm_gen_reported != vm_generation {
            p.vm_gen_reported = vm_generation;
        }
        if p.verdict != Some(Verdict::Alive) {
            self.set_verdict(from, Verdict::Alive, "network heartbeat received");
        }
    }

    fn set_verdict(&mut self, host: HostId, to: Verdict, reason: &str) {
        let Some(m) = self.role.master_mut() else {
            return;
        };
        let Some(p) = m.peers.get_mut(&host) else {
            return;
        };
        let from = p.verdict.unwrap_or(Verdict::Unreachable);
        if p.verdict == Some(to) {
            return;
        }
        let first = p.verdict.is_none();
        p.verdict = Some(to);
        if to == Verdict::Dead {
            // What a dead host reported running is not running any more.
            let vms: Vec<VmId> = p.vms.keys().copied().collect();
            for vm in vms {
                if let Some(s) = m.running.get_mut(&vm) {
                    s.remove(&host);
                }
            }
        }
        m.reconcile_due = true;
        if !(first && to == Verdict::Unreachable) {
            self.emit(Event::VerdictChanged {
                subject: host,
                from,
                to,
                reason: reason.to_string(),
            });
        }
    }

    // ----- datastores ----------------------------------------------------------------------------

    pub(super) fn master_read_datastores(&mut self, now: Time) {
        let ds: Vec<DatastoreId> = self.mounted.keys().copied().collect();
        for d in ds {
            if !self.has_inflight(d, |p| matches!(p, DsPurpose::HeartbeatRead)) {
                self.ds_request(now, d, DsOp::ReadHeartbeats, DsPurpose::HeartbeatRead);
            }
            let held = self
                .role
                .master()
                .and_then(|m| m.claims.get(&d))
                .is_some_and(|c| c.held.is_some());
            if !held
                && !self.has_inflight(d, |p| {
                    matches!(p, DsPurpose::ClaimRead | DsPurpose::ClaimWrite(_))
                })
            {
                self.ds_request(now, d, DsOp::ReadClaim, DsPurpose::ClaimRead);
            }
            let wanted: Vec<HostId> = self
                .role
                .master()
                .map(|m| {
                    m.peers
                        .iter()
                        .filter(|(_, p)| p.lists_wanted.contains(&d))
                        .map(|(&h, _)| h)
                        .collect()
                })
                .unwrap_or_default();
            for host in wanted {
                if !self.has_inflight(d, |p| *p == DsPurpose::PowerOnListRead { host }) {
                    self.ds_request(
                        now,
                        d,
                        DsOp::ReadPowerOnList { host },
                        DsPurpose::PowerOnListRead { host },
                    );
                }
            }
        }
    }

    pub(super) fn master_renew_claims(&mut self, now: Time) {
        let held: Vec<(DatastoreId, HeldClaim)> = self
            .role
            .master()
            .map(|m| {
                m.claims
                    .iter()
                    .filter_map(|(&d, c)| c.held.map(|h| (d, h)))
                    .collect()
            })
            .unwrap_or_default();
        for (d, h) in held {
            if self.has_inflight(d, |p| matches!(p, DsPurpose::ClaimWrite(_))) {
                continue;
            }
            let record = DatastoreClaim {
                cluster: self.settings.cluster,
                datastore: d,
                owner: self.settings.host,
                owner_incarnation: self.settings.incarnation,
                epoch: h.epoch,
                renewal: h.renewal + 1,
                released: false,
            };
            self.ds_request(
                now,
                d,
                DsOp::WriteClaim {
                    record,
                    mode: ClaimWrite::Renew,
                },
                DsPurpose::ClaimWrite(ClaimWriteSent {
                    started: now,
                    mode: ClaimWriteKind::Renew,
                    record,
                }),
            );
        }
    }

    pub(super) fn master_release_claims(&mut self, now: Time) {
        let held: Vec<(DatastoreId, HeldClaim)> = self
            .role
            .master()
            .map(|m| {
                m.claims
                    .iter()
                    .filter_map(|(&d, c)| c.held.map(|h| (d, h)))
                    .collect()
            })
            .unwrap_or_default();
        for (d, h) in held {
            let record = DatastoreClaim {
                cluster: self.settings.cluster,
                datastore: d,
                owner: self.settings.host,
                owner_incarnation: self.settings.incarnation,
                epoch: h.epoch,
                renewal: h.renewal + 1,
                released: true,
            };
            self.ds_request(
                now,
                d,
                DsOp::WriteClaim {
                    record,
                    mode: ClaimWrite::Release,
                },
                DsPurpose::ClaimWrite(ClaimWriteSent {
                    started: now,
                    mode: ClaimWriteKind::Release,
                    record,
                }),
            );
            self.emit(Event::ClaimLost {
                datastore: d,
                epoch: h.epoch,
                reason: "stepping down".into(),
            });
        }
    }

    fn try_acquire(
        &mut self,
        now: Time,
        d: DatastoreId,
        current: Option<DatastoreClaim>,
        lapsed: bool,
    ) {
        if self.role() != Role::Master || self.shutting_down {
            return;
        }
        let epoch = Epoch(current.map_or(0, |c| c.epoch.0) + 1);
        let record = DatastoreClaim {
            cluster: self.settings.cluster,
            datastore: d,
            owner: self.settings.host,
            owner_incarnation: self.settings.incarnation,
            epoch,
            renewal: 0,
            released: false,
        };
        self.ds_request(
            now,
            d,
            DsOp::WriteClaim {
                record,
                mode: ClaimWrite::Acquire {
                    expect: current,
                    lapsed,
                },
            },
            DsPurpose::ClaimWrite(ClaimWriteSent {
                started: now,
                mode: ClaimWriteKind::Acquire,
                record,
            }),
        );
    }

    /// `issued`: when the request left; the datastore's state it reports was read somewhere between
    /// then and `now`.
    pub(super) fn master_ds_completion(
        &mut self,
        now: Time,
        issued: Time,
        d: DatastoreId,
        purpose: DsPurpose,
        result: Result<DsReply, DsError>,
    ) {
        if self.role.master().is_none() {
            return;
        }
        match (purpose, result) {
            (DsPurpose::HeartbeatRead, Ok(DsReply::Heartbeats(slots))) => {
                self.on_heartbeats_read(now, issued, d, slots);
                // Judge at once: a death this read confirms should not wait for the next tick.
                self.master_evaluate(now);
            }
            (DsPurpose::ClaimRead, Ok(DsReply::Claim(current))) => {
                self.on_claim_read(now, issued, d, current)
            }
            (DsPurpose::ClaimWrite(sent), result) => self.on_claim_written(now, d, sent, result),
            (DsPurpose::ProtectedRead, Ok(DsReply::ProtectedList(list))) => {
                self.on_protected_read(now, d, list)
            }
            (DsPurpose::ProtectedRead, Err(_)) => {
                // Retried by the next evaluation while the list is not loaded.
            }
            (DsPurpose::ProtectedWrite { generation }, result) => {
                self.on_protected_written(now, d, generation, result)
            }
            (DsPurpose::PowerOnListRead { host }, Ok(DsReply::PowerOnList(list))) => {
                let Some(m) = self.role.master_mut() else {
                    return;
                };
                if let Some(p) = m.peers.get_mut(&host) {
                    p.lists_wanted.remove(&d);
                    match list {
                        Some(l) if l.host == host => {
                            p.power_on_lists.insert(d, l);
                        }
                        _ => {
                            p.power_on_lists.remove(&d);
                        }
                    }
                    m.reconcile_due = true;
                }
            }
            _ => {}
        }
    }

    fn on_heartbeats_read(
        &mut self,
        now: Time,
        issued: Time,
        d: DatastoreId,
        slots: Vec<heartbeat_fs::ops::HeartbeatSlot>,
    ) {
        let cluster = self.settings.cluster;
        let mounts: Vec<HostId> = self.config.hosts_of(d).to_vec();
        let Some(m) = self.role.master_mut() else {
            return;
        };
        m.ds_read_ok.insert(d, now);
        let mut seen: BTreeSet<HostId> = BTreeSet::new();
        for slot in slots {
            if slot.host == m.me {
                continue;
            }
            let Some(p) = m.peers.get_mut(&slot.host) else {
                continue;
            };
            seen.insert(slot.host);
            let Ok(rec) = slot.record else {
                // Torn or corrupt: no new information, and certainly no evidence of death.
                continue;
            };
            if rec.cluster != cluster || rec.host != slot.host {
                continue;
            }
            let seen_now = HeartbeatSeen {
                incarnation: rec.incarnation,
                sequence: rec.sequence,
                flags: rec.flags,
                power_on_generation: rec.power_on_generation,
            };
            observe(p, d, (issued, now), seen_now);
        }
        // A host that mounts the datastore but never wrote there: a clean read of "nothing".
        for h in mounts {
            if h == m.me || seen.contains(&h) {
                continue;
            }
            if let Some(p) = m.peers.get_mut(&h) {
                observe(p, d, (issued, now), HeartbeatSeen::default());
            }
        }
    }

    fn on_claim_read(
        &mut self,
        now: Time,
        issued: Time,
        d: DatastoreId,
        current: Option<DatastoreClaim>,
    ) {
        let me = self.settings.host;
        let lease = self.t.stretch(self.t.claim_lease);
        let Some(m) = self.role.master_mut() else {
            return;
        };
        let c = m.claims.entry(d).or_default();
        if c.held.is_some() {
            return;
        }
        let same = c.seen.map(|s| (s.owner, s.epoch, s.renewal, s.released))
            == current.map(|s| (s.owner, s.epoch, s.renewal, s.released));
        if !same || !c.read_once {
            c.seen = current;
            c.seen_since = Some(now);
            c.read_once = true;
        }
        // From when the record was surely there (the reply of the first read that showed it) to
        // when it surely still was (the request of the latest one): a read delayed in a queue or
        // on the network must not make a live holder's record look older than it is.
        let lapsed = c.seen_since.is_some_and(|t0| issued.since(t0) >= lease);
        let acquirable = match current {
            None => true,
            Some(rec) if rec.released || rec.owner == me || rec.owner.is_none() => true,
            Some(_) => lapsed,
        };
        if acquirable {
            self.try_acquire(now, d, current, lapsed);
        }
    }

    fn on_claim_written(
        &mut self,
        now: Time,
        d: DatastoreId,
        sent: ClaimWriteSent,
        result: Result<DsReply, DsError>,
    ) {
        let ClaimWriteSent {
            started,
            mode,
            record,
        } = sent;
        match (mode, result) {
            (ClaimWriteKind::Acquire, Ok(_)) => {
                let Some(m) = self.role.master_mut() else {
                    return;
                };
                let c = m.claims.entry(d).or_default();
                c.held = Some(HeldClaim {
                    epoch: record.epoch,
                    renewal: record.renewal,
                    last_renew_start: started,
                    acquired_at: started,
                });
                self.emit(Event::ClaimAcquired {
                    datastore: d,
                    epoch: record.epoch,
                });
                self.ds_request(now, d, DsOp::ReadProtectedList, DsPurpose::ProtectedRead);
            }
            (ClaimWriteKind::Acquire, Err(DsError::ClaimMismatch { current })) => {
                let Some(m) = self.role.master_mut() else {
                    return;
                };
                let c = m.claims.entry(d).or_default();
                c.seen = current;
                c.seen_since = Some(now);
            }
            (ClaimWriteKind::Acquire, Err(_)) => {}
            (ClaimWriteKind::Renew, Ok(_)) => {
                let Some(m) = self.role.master_mut() else {
                    return;
                };
                if let Some(h) = m.claims.get_mut(&d).and_then(|c| c.held.as_mut())
                    && h.epoch == record.epoch
                {
                    h.renewal = h.renewal.max(record.renewal);
                    if started > h.last_renew_start {
                        h.last_renew_start = started;
                    }
                }
            }
            (ClaimWriteKind::Renew, Err(DsError::ClaimMismatch { current })) => {
                self.lose_claim(d, "another master holds it now");
                let Some(m) = self.role.master_mut() else {
                    return;
                };
                let c = m.claims.entry(d).or_default();
                c.seen = current;
                c.seen_since = Some(now);
            }
            (ClaimWriteKind::Renew, Err(_)) => {
                // Keep trying: the claim is lost by time in master_evaluate if this goes on.
            }
            (ClaimWriteKind::Release, _) => {}
        }
    }

    fn lose_claim(&mut self, d: DatastoreId, reason: &str) {
        if step_removed!(self, DropOnClaimLoss) {
            return;
        }
        let Some(m) = self.role.master_mut() else {
            return;
        };
        let Some(c) = m.claims.get_mut(&d) else {
            return;
        };
        let Some(h) = c.held.take() else { return };
        c.seen = None;
        c.seen_since = None;
        c.read_once = false;
        if let Some(pd) = m.protected.get_mut(&d) {
            pd.loaded = false;
        }
        // Stop issuing at once; in-flight commands fail the target's intent check or complete under
        // the intent already written.
        let vms: Vec<VmId> = m
            .tracks
            .iter()
            .filter(|(_, t)| t.home == d)
            .map(|(&vm, _)| vm)
            .collect();
        for vm in vms {
            m.tracks.remove(&vm);
        }
        self.emit(Event::ClaimLost {
            datastore: d,
            epoch: h.epoch,
            reason: reason.to_string(),
        });
    }

    fn on_protected_read(&mut self, now: Time, d: DatastoreId, list: Option<ProtectedVmList>) {
        let me = self.settings.host;
        let cluster = self.settings.cluster;
        let config_vms: Vec<heartbeat_fs::records::VmConfig> = self
            .config
            .vms
            .iter()
            .filter(|v| v.home == d && v.protected)
            .cloned()
            .collect();
        let Some(m) = self.role.master_mut() else {
            return;
        };
        let Some(epoch) = m.claims.get(&d).and_then(|c| c.held).map(|h| h.epoch) else {
            return;
        };
        let mut list = list
            .filter(|l| l.cluster == cluster && l.datastore == d)
            .unwrap_or(ProtectedVmList {
                cluster,
                datastore: d,
                master: me,
                epoch,
                generation: 0,
                vms: Vec::new(),
            });
        list.master = me;
        list.epoch = epoch;
        // Resume what a previous master left: intents go back to their target, never elsewhere
        // while that target may still start them.
        for e in &list.vms {
            if let RestartState::Intent {
                target, attempt, ..
            } = e.restart
            {
                m.tracks.insert(
                    e.vm,
                    RestartTrack {
                        home: d,
                        attempts: attempt.saturating_sub(1),
                        next_try: now,
                        from: e.last_host,
                        preferred: None,
                        excluded: Vec::new(),
                        stage: Stage::Resume { target, attempt },
                        reported_waiting: false,
                    },
                );
            }
        }
        let generation = list.generation;
        m.protected.insert(
            d,
            ProtectedDs {
                list,
                loaded: true,
                dirty: true,
                write_in_flight: None,
                durable: generation,
            },
        );
        sync_protected_with_config(m.protected.get_mut(&d).expect("inserted"), &config_vms);
        m.reconcile_due = true;
    }

    fn on_protected_written(
        &mut self,
        now: Time,
        d: DatastoreId,
        generation: u64,
        result: Result<DsReply, DsError>,
    ) {
        let Some(m) = self.role.master_mut() else {
            return;
        };
        let Some(pd) = m.protected.get_mut(&d) else {
            return;
        };
        pd.write_in_flight = None;
        match result {
            Ok(_) => {
                pd.durable = pd.durable.max(generation);
            }
            Err(DsError::ClaimMismatch { .. }) => {
                self.lose_claim(d, "protected list write found another claim");
                return;
            }
            Err(_) => {
                pd.dirty = true;
                return;
            }
        }
        // Intents now on disk: their commands may go out.
        let mut ready: Vec<(VmId, HostId, u32)> = m
            .tracks
            .iter()
            .filter_map(|(&vm, t)| match t.stage {
                Stage::IntentWriting {
                    target,
                    attempt,
                    generation: g,
                } if t.home == d && g <= generation => Some((vm, target, attempt)),
                _ => None,
            })
            .collect();
        // Commands go out in placement order: priority first, then VM id.
        ready.sort_by_key(|(vm, _, _)| {
            let prio = self
                .config
                .vm(*vm)
                .map(|c| c.ha.priority)
                .unwrap_or_default();
            (std::cmp::Reverse(prio), *vm)
        });
        let m = self.role.master_mut().expect("master");
        let epoch = m.claims.get(&d).and_then(|c| c.held).map(|h| h.epoch);
        let Some(epoch) = epoch else { return };
        for (vm, target, attempt) in ready {
            if let Some(t) = self.role.master_mut().and_then(|m| m.tracks.get_mut(&vm)) {
                t.stage = Stage::Issued {
                    target,
                    attempt,
                    sent_at: now,
                };
            }
            self.issue_power_on(vm, target, d, epoch, attempt);
        }
    }

    /// Send a restart's command (its intent is durable, unless a knob removed that step).
    fn issue_power_on(
        &mut self,
        vm: VmId,
        target: HostId,
        d: DatastoreId,
        epoch: Epoch,
        attempt: u32,
    ) {
        // Write-ahead (docs/safety.md): a command goes out only for the intent its datastore's
        // protected list records, under the claim it names.
        debug_assert!(
            step_removed!(self, WriteAheadIntent)
                || self.role.master().is_some_and(|m| m.intent_recorded(
                    vm,
                    (target, attempt),
                    d,
                    epoch
                )),
            "a power-on command for {vm} on {target} (attempt {attempt}, {epoch}) without its intent under a held claim"
        );
        self.stats.restarts_issued += 1;
        self.emit(Event::RestartIssued {
            vm,
            target,
            epoch,
            attempt,
        });
        self.send(
            target,
            &Message::PowerOn(PowerOnCommand {
                vm,
                datastore: d,
                epoch,
                attempt,
            }),
        );
    }

    fn flush_protected(&mut self, now: Time) {
        // A copy: ds_request below needs all of self.
        let t = self.t.clone();
        let Some(m) = self.role.master_mut() else {
            return;
        };
        let mut writes = Vec::new();
        for (&d, pd) in m.protected.iter_mut() {
            if !pd.loaded || !pd.dirty || pd.write_in_flight.is_some() {
                continue;
            }
            pd.dirty = false;
            pd.list.generation += 1;
            pd.write_in_flight = Some(pd.list.generation);
            writes.push((d, pd.list.clone()));
        }
        for (d, list) in writes {
            if self
                .role
                .master()
                .and_then(|m| m.held_valid(d, now, &t))
                .is_none()
            {
                if let Some(pd) = self.role.master_mut().and_then(|m| m.protected.get_mut(&d)) {
                    pd.write_in_flight = None;
                    pd.dirty = true;
                }
                continue;
            }
            let generation = list.generation;
            self.ds_request(
                now,
                d,
                DsOp::WriteProtectedList(list),
                DsPurpose::ProtectedWrite { generation },
            );
        }
    }

    // ----- evaluation ----------------------------------------------------------------------------

    pub(super) fn master_evaluate(&mut self, now: Time) {
        if self.hand_over_to_better_connected(now) {
            return;
        }
        self.expire_claims(now);
        self.update_verdicts(now);
        self.load_missing_lists(now);
        let due = {
            let Some(m) = self.role.master_mut() else {
                return;
            };
            m.reconcile_due || now.since(m.last_reconcile) >= Duration::from_secs(2)
        };
        if due {
            let Some(m) = self.role.master_mut() else {
                return;
            };
            m.reconcile_due = false;
            m.last_reconcile = now;
            self.reconcile(now);
        }
        self.follow_up_restarts(now);
        self.schedule_restarts(now);
        self.flush_protected(now);
    }

    /// The election ranks hosts by the datastores they reach, but only when there is no master; a
    /// master elected while storage was down would otherwise keep the role after the storage comes
    /// back to others but not to it, and nobody would protect the VMs there. When an alive slave has
    /// reached strictly more datastores for `better_master_handover`, hand over to the best one.
    fn hand_over_to_better_connected(&mut self, now: Time) -> bool {
        let mine = self.reachable_datastores(now).len() as u32;
        let wait = self.t.better_master_handover;
        let me = self.settings.host;
        let Some(m) = self.role.master_mut() else {
            return false;
        };
        let best = m.best_successor(me).filter(|h| {
            m.peers
                .get(h)
                .is_some_and(|p| p.reachable.len() as u32 > mine)
        });
        let Some(best) = best else {
            m.better_since = None;
            return false;
        };
        let since = match m.better_since {
            Some((h, t)) if h == best => t,
            _ => {
                m.better_since = Some((best, now));
                now
            }
        };
        if now.since(since) < wait {
            return false;
        }
        self.emit(Event::Yielded { to: best });
        self.step_down(now, Some(best), "a slave reaches more datastores");
        true
    }

    fn expire_claims(&mut self, now: Time) {
        let t = &self.t;
        let expired: Vec<DatastoreId> = self
            .role
            .master()
            .map(|m| {
                m.claims
                    .iter()
                    .filter(|(d, c)| c.held.is_some() && m.held_valid(**d, now, t).is_none())
                    .map(|(&d, _)| d)
                    .collect()
            })
            .unwrap_or_default();
        for d in expired {
            self.lose_claim(d, "could not renew within the lease");
        }
    }

    fn load_missing_lists(&mut self, now: Time) {
        let need: Vec<DatastoreId> = self
            .role
            .master()
            .map(|m| {
                m.claims
                    .iter()
                    .filter(|(d, c)| {
                        c.held.is_some() && m.protected.get(d).is_none_or(|p| !p.loaded)
                    })
                    .map(|(&d, _)| d)
                    .collect()
            })
            .unwrap_or_default();
        for d in need {
            if !self.has_inflight(d, |p| matches!(p, DsPurpose::ProtectedRead)) {
                self.ds_request(now, d, DsOp::ReadProtectedList, DsPurpose::ProtectedRead);
            }
        }
    }

    fn update_verdicts(&mut self, now: Time) {
        let t = &self.t;
        let skip_lease_wait = step_removed!(self, LeaseWait);
        let mounted: BTreeSet<DatastoreId> = self.mounted.keys().copied().collect();
        let read_fresh = t
            .ds_read_interval
            .saturating_mul(4)
            .saturating_add(t.datastore_call_deadline);
        let mut changes: Vec<(HostId, Verdict, &'static str)> = Vec::new();
        let mut probes: Vec<HostId> = Vec::new();
        let config = &self.config;
        let Some(m) = self.role.master_mut() else {
            return;
        };
        let ctx = VerdictContext {
            now,
            t,
            skip_lease_wait,
            config,
            mounted: &mounted,
            ds_read_ok: &m.ds_read_ok,
            read_fresh,
            master_since: m.since,
        };
        for (&h, p) in m.peers.iter_mut() {
            let (v, why) = judge(h, p, &ctx);
            // Probe a silent host early and keep the answer fresh, so that the probe never delays
            // a dead verdict once the leases have run out.
            let stale = p.probe.is_none_or(|(at, _)| now.since(at) >= PROBE_REFRESH);
            let silent = p
                .last_net
                .is_none_or(|t0| now.since(t0) >= t.host_unreachable_after / 2);
            if v != Verdict::Alive && silent && stale && !p.probe_in_flight {
                p.probe_in_flight = true;
                probes.push(h);
            }
            if p.verdict != Some(v) {
                changes.push((h, v, why));
            }
            // Hosts we cannot hear: keep their power-on lists fresh, they tell isolation apart.
            if v != Verdict::Alive {
                for (&d, o) in &p.ds {
                    let known = p.power_on_lists.get(&d).map(|l| l.generation);
                    if known != Some(o.power_on_generation) {
                        p.lists_wanted.insert(d);
                    }
                }
            }
        }
        for h in probes {
            self.outputs.push_back(Output::Probe { host: h });
        }
        for (h, v, why) in changes {
            self.set_verdict(h, v, why);
        }
    }

    /// Decide, for every protected VM, whether it must be restarted, and open a restart track.
    fn reconcile(&mut self, now: Time) {
        let t = &self.t;
        let local: BTreeMap<VmId, VmRunState> = self
            .vms
            .statuses()
            .into_iter()
            .map(|s| (s.vm, s.state))
            .collect();
        let ctx = ReconcileContext {
            now,
            me: self.settings.host,
            retry0: self
                .config
                .ha
                .restart_retry_ms
                .first()
                .copied()
                .unwrap_or(0),
            same_host_attempts: self.config.ha.same_host_restart_attempts,
            config: self.config.clone(),
            local,
        };
        let mut events = Vec::new();
        let Some(m) = self.role.master_mut() else {
            return;
        };
        m.note_own_vms(ctx.me, &ctx.local);
        let ds_list: Vec<DatastoreId> = m.protected.keys().copied().collect();
        for d in ds_list {
            if m.settled(d, now, t).is_none() || !m.protected[&d].loaded {
                continue;
            }
            let n = m.protected[&d].list.vms.len();
            for i in 0..n {
                let e = m.protected[&d].list.vms[i].clone();
                if let Some(ne) = m.reconcile_entry(&ctx, d, &e, &mut events) {
                    let pd = m.protected.get_mut(&d).expect("listed");
                    pd.list.vms[i] = ne;
                    pd.dirty = true;
                }
            }
        }
        for e in events {
            self.emit(e);
        }
    }

    /// Power-on commands that went unanswered, targets that died, intents of a previous master.
    fn follow_up_restarts(&mut self, now: Time) {
        let t = &self.t;
        let Some(m) = self.role.master_mut() else {
            return;
        };
        let f = m.follow_ups(now, t);
        let sends = m.resend_power_ons(f.resend, now, t);
        m.restamp_intents(f.restamp, now, t);
        m.abandon_targets(f.abandon, now);
        for (target, msg) in sends {
            self.send(target, &msg);
        }
    }

    pub(super) fn master_on_power_on_result(&mut self, now: Time, from: HostId, r: PowerOnResult) {
        let retry = self.config.ha.restart_retry_ms.clone();
        let Some(m) = self.role.master_mut() else {
            return;
        };
        if r.running {
            m.note_started(from, r.vm, r.vm_generation);
        }
        let Some(tr) = m.tracks.get(&r.vm).cloned() else {
            return;
        };
        let Stage::Issued {
            target, attempt: a, ..
        } = tr.stage
        else {
            return;
        };
        if target != from || a != r.attempt {
            return;
        }
        let (vm, attempt) = (r.vm, r.attempt);
        if r.stopped_by_operator || r.running {
            // Done: running there, or started and then stopped on purpose (not a failure to retry
            // elsewhere).
            let desired = if r.stopped_by_operator {
                DesiredPower::Off
            } else {
                DesiredPower::On
            };
            m.restart_ended(vm, tr.home, from, desired);
            self.emit(if r.stopped_by_operator {
                Event::RestartEndedByOperator { vm, on: from }
            } else {
                Event::VmRestarted {
                    vm,
                    on: from,
                    attempt,
                }
            });
            return;
        }
        let (attempts, gave_up) = m.restart_failed(vm, from, &retry, now);
        self.emit(Event::RestartFailed {
            vm,
            target: from,
            attempt,
            error: r.error.unwrap_or_else(|| "unknown error".into()),
        });
        if gave_up {
            self.emit(Event::RestartGaveUp { vm, attempts });
        }
    }

    /// Place the restarts that are due, write their intents.
    fn schedule_restarts(&mut self, now: Time) {
        if self.paused() {
            self.report_paused_restarts();
            return;
        }
        let t = &self.t;
        let me = self.settings.host;
        let me_as_target = TargetSelf {
            host: me,
            reachable: self.reachable_datastores(now).into_iter().collect(),
            maintenance: self.maintenance || self.shutting_down,
        };
        let config = self.config.clone();
        let Some(m) = self.role.master_mut() else {
            return;
        };
        let due = m.due_restarts(now, t);
        if due.is_empty() {
            return;
        }
        let plan = placement::plan_restarts(&PlanInput {
            hosts: m.restart_candidates(&config, &me_as_target),
            requests: m.restart_requests(&config, &due),
            running: m.running_vms(),
            max_concurrent_per_host: config.ha.max_concurrent_power_ons_per_host.max(1),
            hold_below: m.hold_below(&config, now),
        });
        let mut events = Vec::new();
        let early_commands = m.write_intents(&plan, now, t, &mut events);
        m.note_waiting(&plan, &mut events);
        for e in events {
            self.emit(e);
        }
        for (vm, target, d, epoch, attempt) in early_commands {
            self.issue_power_on(vm, target, d, epoch, attempt);
        }
        // Generations above assume one write per pass: flush now so they line up.
        self.flush_protected(now);
    }

    /// HA is paused: say once per waiting restart that it does not happen.
    fn report_paused_restarts(&mut self) {
        let pending: Vec<VmId> = self
            .role
            .master()
            .map(|m| {
                m.tracks
                    .iter()
                    .filter(|(_, t)| t.stage == Stage::Waiting && !t.reported_waiting)
                    .map(|(&v, _)| v)
                    .collect()
            })
            .unwrap_or_default();
        for vm in pending {
            if let Some(tr) = self.role.master_mut().and_then(|m| m.tracks.get_mut(&vm)) {
                tr.reported_waiting = true;
            }
            self.emit(Event::ActionSuppressed {
                what: format!("restart of {vm} (HA paused)"),
            });
        }
    }
}

/// What `follow_up_restarts` found to do: `(vm, target, attempt, datastore)` to resend or to
/// re-stamp under this master's epoch, `(vm, target)` to give up on.
#[derive(Default)]
struct FollowUps {
    resend: Vec<(VmId, HostId, u32, DatastoreId)>,
    restamp: Vec<(VmId, HostId, u32, DatastoreId)>,
    abandon: Vec<(VmId, HostId)>,
}

impl MasterState {
    fn follow_ups(&self, now: Time, t: &Timings) -> FollowUps {
        let mut f = FollowUps::default();
        for (&vm, tr) in &self.tracks {
            match tr.stage {
                Stage::Issued {
                    target,
                    attempt,
                    sent_at,
                } => {
                    let v = self.verdict(target);
                    let overdue = now.since(sent_at) >= t.power_on_timeout;
                    if v == Some(Verdict::Dead) || (overdue && step_removed!(self, OneTarget)) {
                        f.abandon.push((vm, target));
                    } else if overdue && v == Some(Verdict::Alive) {
                        f.resend.push((vm, target, attempt, tr.home));
                    }
                }
                Stage::Resume { target, attempt } => match self.verdict(target) {
                    Some(Verdict::Dead) => f.abandon.push((vm, target)),
                    Some(Verdict::Alive) => f.restamp.push((vm, target, attempt, tr.home)),
                    _ => {}
                },
                _ => {}
            }
        }
        f
    }

    /// Power-on commands that went unanswered by a live target: the same attempt again, under the
    /// claim as it is now.
    fn resend_power_ons(
        &mut self,
        resend: Vec<(VmId, HostId, u32, DatastoreId)>,
        now: Time,
        t: &Timings,
    ) -> Vec<(HostId, Message)> {
        let mut sends = Vec::new();
        for (vm, target, attempt, d) in resend {
            let Some(epoch) = self.held_valid(d, now, t) else {
                continue;
            };
            if let Some(tr) = self.tracks.get_mut(&vm) {
                tr.stage = Stage::Issued {
                    target,
                    attempt,
                    sent_at: now,
                };
            }
            sends.push((
                target,
                Message::PowerOn(PowerOnCommand {
                    vm,
                    datastore: d,
                    epoch,
                    attempt,
                }),
            ));
        }
        sends
    }

    /// Intents of a previous master whose target lives: written again under our epoch.
    fn restamp_intents(
        &mut self,
        restamp: Vec<(VmId, HostId, u32, DatastoreId)>,
        now: Time,
        t: &Timings,
    ) {
        for (vm, target, attempt, d) in restamp {
            let Some(epoch) = self.held_valid(d, now, t) else {
                continue;
            };
            let Some(pd) = self.protected.get_mut(&d) else {
                continue;
            };
            let generation = pd.list.generation + 1;
            if let Some(e) = pd.list.vms.iter_mut().find(|e| e.vm == vm) {
                e.restart = RestartState::Intent {
                    target,
                    epoch,
                    attempt,
                };
                pd.dirty = true;
            }
            if let Some(tr) = self.tracks.get_mut(&vm) {
                tr.stage = Stage::IntentWriting {
                    target,
                    attempt,
                    generation,
                };
            }
        }
    }

    /// The target died: its lease on the VM expired with it, so another host may start it.
    fn abandon_targets(&mut self, abandon: Vec<(VmId, HostId)>, now: Time) {
        for (vm, target) in abandon {
            if let Some(tr) = self.tracks.get_mut(&vm) {
                tr.attempts += 1;
                tr.excluded.push(target);
                tr.stage = Stage::Waiting;
                tr.next_try = now;
                let d = tr.home;
                let attempts = tr.attempts;
                if let Some(e) = self
                    .protected
                    .get_mut(&d)
                    .and_then(|pd| pd.list.vms.iter_mut().find(|e| e.vm == vm))
                {
                    e.restart = RestartState::Pending { attempts };
                }
                if let Some(pd) = self.protected.get_mut(&d) {
                    pd.dirty = true;
                }
            }
        }
    }
}

impl MasterState {
    /// A target says it runs `vm`. Its reports up to this generation do not know the VM runs
    /// there: until a newer one arrives, none of them may say it does not.
    fn note_started(&mut self, from: HostId, vm: VmId, vm_generation: u64) {
        if let Some(p) = self.peers.get_mut(&from) {
            let newer_than_report = p.vm_gen_have.is_none_or(|g| vm_generation >= g);
            p.vm_gen_reported = p.vm_gen_reported.max(vm_generation);
            if newer_than_report {
                self.running.entry(vm).or_default().insert(from);
            }
        }
    }

    /// A restart is over: the VM lives on `on`, powered as `desired`.
    fn restart_ended(&mut self, vm: VmId, d: DatastoreId, on: HostId, desired: DesiredPower) {
        self.tracks.remove(&vm);
        if let Some(pd) = self.protected.get_mut(&d) {
            if let Some(e) = pd.list.vms.iter_mut().find(|e| e.vm == vm) {
                e.restart = RestartState::Idle;
                e.last_host = Some(on);
                e.desired = desired;
            }
            pd.dirty = true;
        }
    }

    /// A power-on failed on `on`: wait for the next delay of the retry schedule and try another
    /// host, or give up for now once the schedule is used up. Returns the attempts so far and
    /// whether it gave up.
    fn restart_failed(&mut self, vm: VmId, on: HostId, retry: &[u64], now: Time) -> (u32, bool) {
        let Some((d, attempts)) = self.tracks.get(&vm).map(|tr| (tr.home, tr.attempts + 1)) else {
            return (0, false);
        };
        let gave_up = attempts as usize >= retry.len().max(1);
        let delay = if gave_up {
            retry.last().copied().unwrap_or(60_000).max(60_000)
        } else {
            retry.get(attempts as usize).copied().unwrap_or(0)
        };
        if let Some(tr) = self.tracks.get_mut(&vm) {
            tr.attempts = attempts;
            tr.stage = Stage::Waiting;
            tr.next_try = now + Duration::from_millis(delay);
            tr.excluded.push(on);
            tr.preferred = None;
            tr.reported_waiting = false;
            if gave_up {
                // Start over with every host on the next round: the failure may have been theirs.
                tr.excluded.clear();
            }
        }
        if let Some(pd) = self.protected.get_mut(&d) {
            if let Some(e) = pd.list.vms.iter_mut().find(|e| e.vm == vm) {
                e.restart = if gave_up {
                    RestartState::Failed { attempts }
                } else {
                    RestartState::Pending { attempts }
                };
            }
            pd.dirty = true;
        }
        (attempts, gave_up)
    }
}

/// The master's own host as a restart target (its verdict is not in its peer table).
struct TargetSelf {
    host: HostId,
    reachable: BTreeSet<DatastoreId>,
    maintenance: bool,
}

/// A restart that the master has decided but not yet sent: `(vm, target, datastore, epoch, attempt)`.
type EarlyCommand = (VmId, HostId, DatastoreId, Epoch, u32);

impl MasterState {
    /// Whether `d`'s protected list records exactly this intent and we hold `d`'s claim at its
    /// epoch.
    fn intent_recorded(
        &self,
        vm: VmId,
        (target, attempt): (HostId, u32),
        d: DatastoreId,
        epoch: Epoch,
    ) -> bool {
        let held = self
            .claims
            .get(&d)
            .and_then(|c| c.held)
            .is_some_and(|h| h.epoch == epoch);
        let recorded = self.protected.get(&d).is_some_and(|pd| {
            pd.list.vms.iter().any(|e| {
                e.vm == vm
                    && e.restart
                        == RestartState::Intent {
                            target,
                            epoch,
                            attempt,
                        }
            })
        });
        held && recorded
    }

    /// Waiting restarts whose time has come, on datastores whose claim is settled.
    fn due_restarts(&self, now: Time, t: &Timings) -> Vec<VmId> {
        self.tracks
            .iter()
            .filter(|(_, tr)| {
                tr.stage == Stage::Waiting
                    && tr.next_try <= now
                    && self.settled(tr.home, now, t).is_some()
            })
            .map(|(&vm, _)| vm)
            .collect()
    }

    /// Hosts that can take VMs now, with what they run and what is on its way to them.
    fn restart_candidates(&self, config: &ClusterView, me: &TargetSelf) -> Vec<HostCandidate> {
        let mut in_flight: BTreeMap<HostId, (u32, Resources)> = BTreeMap::new();
        for (vm, tr) in &self.tracks {
            if let Stage::IntentWriting { target, .. }
            | Stage::Issued { target, .. }
            | Stage::Resume { target, .. } = tr.stage
            {
                let r = config.vm(*vm).map(|c| c.reservation).unwrap_or_default();
                let e = in_flight.entry(target).or_default();
                e.0 += 1;
                e.1 = add(e.1, r);
            }
        }
        let mut used: BTreeMap<HostId, (Resources, u32, Vec<String>)> = BTreeMap::new();
        for (vm, on) in &self.running {
            for h in on {
                let cfg = config.vm(*vm);
                let e = used.entry(*h).or_default();
                e.0 = add(e.0, cfg.map(|c| c.reservation).unwrap_or_default());
                e.1 += 1;
                if let Some(g) = cfg.and_then(|c| c.anti_affinity_group.clone()) {
                    e.2.push(g);
                }
            }
        }
        let mut hosts = Vec::new();
        for hc in &config.hosts {
            let (alive, maintenance, reachable) = if hc.id == me.host {
                (true, me.maintenance, me.reachable.clone())
            } else {
                match self.peers.get(&hc.id) {
                    Some(p) if p.verdict == Some(Verdict::Alive) => {
                        (true, p.maintenance, p.reachable.iter().copied().collect())
                    }
                    _ => (false, true, BTreeSet::new()),
                }
            };
            if !alive || maintenance || hc.maintenance {
                continue;
            }
            let (u, count, groups) = used.get(&hc.id).cloned().unwrap_or_default();
            let (pending, pr) = in_flight.get(&hc.id).copied().unwrap_or_default();
            hosts.push(HostCandidate {
                host: hc.id,
                capacity: hc.capacity,
                used: add(u, pr),
                datastores: reachable,
                failover_host: config.ha.failover_hosts.contains(&hc.id),
                powering_on: pending,
                groups,
                vm_count: count,
            });
        }
        hosts
    }

    fn restart_requests(&self, config: &ClusterView, due: &[VmId]) -> Vec<RestartRequest> {
        due.iter()
            .filter_map(|vm| {
                let c = config.vm(*vm)?;
                let tr = &self.tracks[vm];
                Some(RestartRequest {
                    vm: *vm,
                    home: tr.home,
                    reservation: c.reservation,
                    priority: c.ha.priority,
                    depends_on: c.depends_on.clone(),
                    anti_affinity_group: c.anti_affinity_group.clone(),
                    preferred_host: tr.preferred,
                    excluded_hosts: tr.excluded.clone(),
                })
            })
            .collect()
    }

    /// Orchestrated restarts: the highest priority still starting (within the configured wait),
    /// below which nothing is placed yet.
    fn hold_below(&self, config: &ClusterView, now: Time) -> Option<RestartPriority> {
        config.ha.orchestrated_wait_ms.and_then(|wait| {
            self.tracks
                .iter()
                .filter(|(_, tr)| match tr.stage {
                    Stage::Issued { sent_at, .. } => {
                        now.since(sent_at) < Duration::from_millis(wait)
                    }
                    Stage::IntentWriting { .. } => true,
                    _ => false,
                })
                .filter_map(|(vm, _)| config.vm(*vm).map(|c| c.ha.priority))
                .max()
        })
    }

    fn running_vms(&self) -> BTreeSet<VmId> {
        self.running
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(&v, _)| v)
            .collect()
    }

    /// Write each placement's intent into its protected list (the write-ahead step). Returns the
    /// commands to send at once, which exist only with the write-ahead step removed.
    fn write_intents(
        &mut self,
        plan: &RestartPlan,
        now: Time,
        t: &Timings,
        events: &mut Vec<Event>,
    ) -> Vec<EarlyCommand> {
        let mut early_commands = Vec::new();
        for p in &plan.placements {
            let Some(tr) = self.tracks.get(&p.vm) else {
                continue;
            };
            let d = tr.home;
            let Some(epoch) = self.settled(d, now, t) else {
                continue;
            };
            let attempt = tr.attempts + 1;
            let Some(pd) = self.protected.get_mut(&d) else {
                continue;
            };
            let generation = pd.list.generation + 1;
            if let Some(e) = pd.list.vms.iter_mut().find(|e| e.vm == p.vm) {
                e.restart = RestartState::Intent {
                    target: p.host,
                    epoch,
                    attempt,
                };
            } else {
                continue;
            }
            pd.dirty = true;
            let early = step_removed!(self, WriteAheadIntent);
            if let Some(tr) = self.tracks.get_mut(&p.vm) {
                tr.stage = if early {
                    Stage::Issued {
                        target: p.host,
                        attempt,
                        sent_at: now,
                    }
                } else {
                    Stage::IntentWriting {
                        target: p.host,
                        attempt,
                        generation,
                    }
                };
            }
            if early {
                early_commands.push((p.vm, p.host, d, epoch, attempt));
            }
            if let Some(group) = p.broke_anti_affinity.clone() {
                events.push(Event::AntiAffinityBroken {
                    vm: p.vm,
                    host: p.host,
                    group,
                });
            }
        }
        early_commands
    }

    /// Restarts the plan could not place: reported once each.
    fn note_waiting(&mut self, plan: &RestartPlan, events: &mut Vec<Event>) {
        for (vm, why) in &plan.waiting {
            if let Some(tr) = self.tracks.get_mut(vm)
                && !tr.reported_waiting
            {
                tr.reported_waiting = true;
                if *why == WaitReason::NoCapacity {
                    events.push(Event::NoCapacity { vm: *vm });
                }
            }
        }
    }
}

fn add(a: Resources, b: Resources) -> Resources {
    Resources {
        cpu_mhz: a.cpu_mhz.saturating_add(b.cpu_mhz),
        memory_mb: a.memory_mb.saturating_add(b.memory_mb),
    }
}

/// What the master takes from one host's datastore heartbeat record (all zero: the host mounts the
/// datastore but never wrote there).
#[derive(Debug, Clone, Copy, Default)]
struct HeartbeatSeen {
    incarnation: u64,
    sequence: u64,
    flags: HostFlags,
    power_on_generation: u64,
}

/// One host's heartbeat record as a read returned it. `(issued, now)`: the read's request and reply
/// times. A new value counts from the reply (it was surely there by then), an unchanged one from the
/// request (it was surely there no later): so that a slow read can only delay a "stopped", never
/// hasten it.
fn observe(p: &mut Peer, d: DatastoreId, (issued, now): (Time, Time), seen: HeartbeatSeen) {
    let HeartbeatSeen {
        incarnation,
        sequence,
        flags,
        power_on_generation,
    } = seen;
    match p.ds.get_mut(&d) {
        Some(o) => {
            let have = (o.incarnation, o.sequence);
            if (incarnation, sequence) < have {
                // An older record than one already seen (replies out of order): old news.
                return;
            }
            if (incarnation, sequence) != have {
                o.incarnation = incarnation;
                o.sequence = sequence;
                o.last_advance = now;
            } else {
                o.last_clean_read = o.last_clean_read.max(issued);
            }
            o.flags = flags;
            o.power_on_generation = power_on_generation;
        }
        None => {
            p.ds.insert(
                d,
                DsObs {
                    incarnation,
                    sequence,
                    last_advance: now,
                    last_clean_read: now,
                    flags,
                    power_on_generation,
                },
            );
        }
    }
}

/// What the master knows that every host's verdict depends on, gathered once per evaluation.
struct VerdictContext<'a> {
    now: Time,
    t: &'a Timings,
    /// The lease-wait step removed (fault knobs only).
    skip_lease_wait: bool,
    config: &'a ClusterView,
    /// The datastores this master mounts.
    mounted: &'a BTreeSet<DatastoreId>,
    /// When each datastore was last read successfully.
    ds_read_ok: &'a BTreeMap<DatastoreId, Time>,
    /// How recent a successful read must be to count as evidence.
    read_fresh: Duration,
    /// Since when this host is master.
    master_since: Time,
}

/// The verdict on one host and the reason, from the master's observations (the rules: `docs/protocol.md`,
/// "The master's verdicts on each host").
fn judge(h: HostId, p: &Peer, ctx: &VerdictContext<'_>) -> (Verdict, &'static str) {
    let &VerdictContext {
        now,
        t,
        skip_lease_wait,
        master_since,
        ..
    } = ctx;
    if p.last_net
        .is_some_and(|t0| now.since(t0) < t.host_unreachable_after)
    {
        return (Verdict::Alive, "network heartbeat received");
    }
    if p.last_net.is_none() && now.since(master_since) < t.host_unreachable_after {
        return (p.verdict.unwrap_or(Verdict::Unreachable), "not heard yet");
    }
    let shared = shared_fresh_datastores(h, ctx);
    if shared.is_empty() {
        return (Verdict::Unreachable, "no shared datastore to confirm");
    }
    let evidence = datastore_evidence(p, &shared, ctx);
    if evidence.advancing {
        return if evidence.isolated {
            (
                Verdict::Isolated,
                "datastore heartbeat advancing, host reports isolation",
            )
        } else {
            (Verdict::Partitioned, "datastore heartbeat advancing")
        };
    }
    if !evidence.all_stopped {
        return (
            Verdict::Unreachable,
            "datastore heartbeat not yet confirmed stopped",
        );
    }
    // Its network lease from our acknowledgements ran from a heartbeat we received by last_net.
    if !skip_lease_wait
        && p.last_net
            .is_some_and(|t0| now.since(t0) < t.stretch(t.net_lease))
    {
        return (Verdict::Unreachable, "network lease not yet expired");
    }
    probe_verdict(p, now)
}

/// Datastores both of us use, that we read successfully of late.
fn shared_fresh_datastores(h: HostId, ctx: &VerdictContext<'_>) -> Vec<DatastoreId> {
    ctx.config
        .datastores_of(h)
        .iter()
        .copied()
        .filter(|d| ctx.mounted.contains(d))
        .filter(|d| {
            ctx.ds_read_ok
                .get(d)
                .is_some_and(|t0| ctx.now.since(*t0) < ctx.read_fresh)
        })
        .collect()
}

/// What a host's datastore heartbeats say, over the datastores both of us read.
struct DatastoreEvidence {
    /// Advanced since the network went quiet, within a lease: alive somewhere.
    advancing: bool,
    /// One that advanced carries the host's own isolation flag.
    isolated: bool,
    /// Every one is positively stopped: a clean read a lease after its last advance.
    all_stopped: bool,
}

fn datastore_evidence(
    p: &Peer,
    shared: &[DatastoreId],
    ctx: &VerdictContext<'_>,
) -> DatastoreEvidence {
    let (now, t, skip_lease_wait) = (ctx.now, ctx.t, ctx.skip_lease_wait);
    let lease = t.stretch(t.ds_lease);
    let mut e = DatastoreEvidence {
        advancing: false,
        isolated: false,
        all_stopped: true,
    };
    for d in shared {
        match p.ds.get(d) {
            None => {
                // Not read yet: no evidence either way.
                e.all_stopped = false;
            }
            Some(o) => {
                // Advancing means alive elsewhere only if it advanced after the network went
                // quiet, by more than one write and one read: a dead host's last write, read late,
                // must not look like a partitioned host for a lease time.
                let quiet_since =
                    p.last_net.unwrap_or(Time::ZERO) + t.ds_heartbeat_interval + t.ds_read_interval;
                if now.since(o.last_advance) < lease
                    && o.last_advance > quiet_since
                    && !skip_lease_wait
                {
                    e.advancing = true;
                    e.isolated |= o.flags.contains(HostFlags::ISOLATED);
                }
                // Stopped only on positive evidence: a clean read, a lease after the last advance.
                if o.last_clean_read.since(o.last_advance) < lease && !skip_lease_wait {
                    e.all_stopped = false;
                }
            }
        }
    }
    e
}

/// Both heartbeats stopped and both leases over: dead only if a fresh liveness probe, sent after
/// we last heard the host, went unanswered.
fn probe_verdict(p: &Peer, now: Time) -> (Verdict, &'static str) {
    match p.probe {
        Some((at, answered))
            if at >= p.last_net.unwrap_or(Time::ZERO) && now.since(at) < PROBE_REFRESH * 2 =>
        {
            if answered {
                (
                    Verdict::Unreachable,
                    "host answers the liveness probe (agent down?)",
                )
            } else {
                (
                    Verdict::Dead,
                    "network and datastore heartbeats stopped, leases expired, no probe answer",
                )
            }
        }
        _ => {
            if p.verdict == Some(Verdict::Dead) {
                (Verdict::Dead, "still dead")
            } else {
                (Verdict::Unreachable, "probing")
            }
        }
    }
}

/// A host we can hear whose complete, current report says an operator (or the guest) stopped `vm`.
fn stopped_by_user_on(m: &MasterState, vm: VmId) -> Option<HostId> {
    m.peers.iter().find_map(|(&h, p)| {
        (m.verdict(h) == Some(Verdict::Alive)
            && reported_state(Some(p), vm) == Some(Some(VmRunState::StoppedByUser)))
        .then_some(h)
    })
}

fn reported_state(p: Option<&Peer>, vm: VmId) -> Option<Option<VmRunState>> {
    let p = p?;
    // Only a complete, current report says what is NOT there (generation 0: not inventoried yet).
    if p.vm_gen_reported == 0 || p.vm_gen_have != Some(p.vm_gen_reported) {
        return None;
    }
    Some(p.vms.get(&vm).copied())
}

enum Decision {
    Restart {
        reason: &'static str,
        same_host: bool,
    },
    DesiredOff,
    Wait,
}

/// Whether a protected VM last seen on a host must be restarted, from the host's verdict and what it
/// reports. `state`: None = no complete report; Some(None) = reported absent.
/// `stopped_by_isolation`: the host recorded that its isolation response powered the VM off.
fn restart_decision(
    verdict: Option<Verdict>,
    state: Option<Option<VmRunState>>,
    stopped_by_isolation: bool,
) -> Decision {
    match verdict {
        Some(Verdict::Alive) => match state {
            Some(Some(VmRunState::Crashed)) => Decision::Restart {
                reason: "VM crashed",
                same_host: true,
            },
            Some(Some(VmRunState::StoppedByUser)) => Decision::DesiredOff,
            Some(Some(VmRunState::StoppedByAgent)) => Decision::Restart {
                reason: "stopped by its host's agent (fence or isolation)",
                same_host: false,
            },
            Some(None) => Decision::Restart {
                reason: "host runs without it (host restarted)",
                same_host: false,
            },
            _ => Decision::Wait,
        },
        Some(Verdict::Dead) => Decision::Restart {
            reason: "host dead",
            same_host: false,
        },
        Some(Verdict::Isolated) => {
            if stopped_by_isolation {
                Decision::Restart {
                    reason: "powered off by its isolated host",
                    same_host: false,
                }
            } else {
                Decision::Wait
            }
        }
        _ => Decision::Wait,
    }
}

/// Bring a protected list in line with the configuration: add newly protected VMs, drop VMs no longer
/// protected, refresh HA settings. Restart state and last host are kept.
fn sync_protected_with_config(
    pd: &mut ProtectedDs,
    config_vms: &[heartbeat_fs::records::VmConfig],
) {
    let wanted: BTreeMap<VmId, &heartbeat_fs::records::VmConfig> =
        config_vms.iter().map(|v| (v.id, v)).collect();
    pd.list.vms.retain(|e| wanted.contains_key(&e.vm));
    for e in pd.list.vms.iter_mut() {
        let c = wanted[&e.vm];
        e.settings = c.ha.clone();
        e.home = c.home;
    }
    let have: BTreeSet<VmId> = pd.list.vms.iter().map(|e| e.vm).collect();
    for (vm, c) in wanted {
        if !have.contains(&vm) {
            pd.list.vms.push(ProtectedVm {
                vm,
                home: c.home,
                last_host: None,
                desired: DesiredPower::On,
                settings: c.ha.clone(),
                restart: RestartState::Idle,
            });
        }
    }
    pd.list.vms.sort_by_key(|e| e.vm);
    pd.dirty = true;
}

#[cfg(test)]
mod tests {
    use super::*;
    use heartbeat_fs::records::VmConfig;

    fn vm(restart_policy: RestartPolicy, priority: RestartPriority) -> VmConfig {
        let mut v = VmConfig::new(VmId(1), DatastoreId(1)).with_priority(priority);
        v.ha.restart_policy = restart_policy;
        v
    }

    #[test]
    fn restart_policy_and_priority_decide_what_ha_restarts() {
        use RestartPolicy::{Always, HostFailureOnly, Never};
        // (policy, priority, after a host failure, after a failure on a live host)
        let cases = [
            (Always, RestartPriority::Medium, true, true),
            (HostFailureOnly, RestartPriority::Medium, true, false),
            (Never, RestartPriority::Medium, false, false),
            (Always, RestartPriority::Disabled, false, false),
            (HostFailureOnly, RestartPriority::Disabled, false, false),
            (Always, RestartPriority::Lowest, true, true),
        ];
        for (policy, priority, host_failure, same_host) in cases {
            let cfg = vm(policy, priority);
            assert_eq!(
                restart_allowed(&cfg, false),
                host_failure,
                "{policy:?} at {priority:?} after a host failure"
            );
            assert_eq!(
                restart_allowed(&cfg, true),
                same_host,
                "{policy:?} at {priority:?} on a live host"
            );
        }
    }
}
