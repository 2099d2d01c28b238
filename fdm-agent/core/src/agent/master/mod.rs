//! The master's duties: datastore claims, verdicts on every host, protected-VM lists, and failover
//! (reconcile what should run against what runs, plan, write the intent, command, follow up).

use super::super::cluster::ClusterView;
use super::super::config::Timings;
use super::super::events::{Event, Verdict, count};
use super::super::io::{Output, VmRunState};
use super::super::messages::{
    MasterHeartbeat, Message, PowerOnCommand, PowerOnResult, SlaveHeartbeat, VmReport, VmStatus,
};
use super::super::placement::{
    self, HostCandidate, PlanInput, RestartPlan, RestartRequest, WaitReason,
};
use super::super::time::Time;
use super::ctx::Ctx;
use super::{Agent, DsPurpose, HostView, VmView};
use heartbeat_fs::ops::{ClaimWrite, DsError, DsOp, DsReply};
use heartbeat_fs::records::{
    ClusterConfig, DatastoreClaim, DesiredPower, HostFlags, PowerOnList, ProtectedVm,
    ProtectedVmList, Resources, RestartLimit, RestartPolicy, RestartPriority, RestartState,
};
use heartbeat_fs::{DatastoreId, Epoch, HostId, VmId};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

mod claims;
mod failover;
mod hold;
mod limit;
mod protected;

use protected::sync_protected_with_config;
mod verdict;
use limit::RestartLog;
use verdict::*;

/// The command that starts `vm` under the claim on its home datastore `d` at `epoch`.
fn power_on_command(vm: VmId, d: DatastoreId, epoch: Epoch, attempt: u32) -> PowerOnCommand {
    PowerOnCommand {
        vm,
        datastore: d,
        epoch,
        attempt,
    }
}

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
    /// The newest of our heartbeat rounds it echoed (the storage-outage hold).
    echo_round: u64,
    /// VMs an earlier report of it showed stopped by an operator, that its later reports no
    /// longer list (its agent restarted or its host rebooted since).
    user_stopped_gone: BTreeSet<VmId>,
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
    /// A VM lost from a host (`from`), not one that never ran: the metrics count the two apart.
    /// A previous master's intent keeps the host its list last saw the VM on.
    fn is_restart(&self) -> bool {
        self.from.is_some()
    }

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
    /// Restarts after a crash within each VM's restart-limit window, on this master's clock (the
    /// protected lists keep them as ages; `limit.rs`).
    restart_logs: BTreeMap<VmId, RestartLog>,
    /// Operator stops to send (host, VM), drained after each reconcile, and when each VM's stop
    /// was last sent (resent while it still runs).
    stop_commands: Vec<(HostId, VmId)>,
    stop_sent: BTreeMap<VmId, Time>,
    /// Second copies to stop (`resolve_duplicates`): host, VM, the host whose copy is kept.
    stale_stops: Vec<(HostId, VmId, HostId)>,
    /// When each VM's second copies were last told to stop (resent while they run).
    stale_stop_sent: BTreeMap<VmId, Time>,
    reconcile_due: bool,
    last_reconcile: Time,
    /// A slave that has reached more datastores than us, and since when (for the handover).
    better_since: Option<(HostId, Time)>,
    /// Our numbered heartbeat rounds, and the datastores the last one covered without a claim.
    rounds: hold::HeartbeatRounds,
    outage_held: BTreeSet<DatastoreId>,
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
            restart_logs: BTreeMap::new(),
            stop_commands: Vec::new(),
            stop_sent: BTreeMap::new(),
            stale_stops: Vec::new(),
            stale_stop_sent: BTreeMap::new(),
            reconcile_due: true,
            last_reconcile: now,
            better_since: None,
            rounds: hold::HeartbeatRounds::default(),
            outage_held: BTreeSet::new(),
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
    /// Returns the VMs an operator cleared (their restart-limit state is forgotten).
    pub(super) fn config_changed(&mut self, _now: Time, config: &ClusterView) -> Vec<VmId> {
        let mut cleared = Vec::new();
        for (d, pd) in self.protected.iter_mut() {
            if !pd.loaded {
                continue;
            }
            let wanted: Vec<&heartbeat_fs::records::VmConfig> = config
                .vms
                .iter()
                .filter(|v| v.home == *d && v.protected)
                .collect();
            cleared.extend(sync_protected_with_config(pd, &wanted));
        }
        for vm in &cleared {
            self.restart_logs.remove(vm);
        }
        // A VM no list protects any more has nothing left to restart.
        let listed: BTreeSet<VmId> = self
            .protected
            .values()
            .flat_map(|pd| pd.list.vms.iter().map(|e| e.vm))
            .collect();
        self.tracks.retain(|vm, _| listed.contains(vm));
        self.restart_logs.retain(|vm, _| listed.contains(vm));
        self.reconcile_due = true;
        cleared
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
            // A VM an operator stopped here that a restarted agent (or a rebooted host) no longer
            // lists is still stopped on purpose: its stop may never have reached a protected list
            // (the datastore was away), and this host is the only witness left.
            for (vm, s) in &old {
                if *s == VmRunState::StoppedByUser && !p.vms.contains_key(vm) {
                    p.user_stopped_gone.insert(*vm);
                }
            }
            p.user_stopped_gone.retain(|vm| !p.vms.contains_key(vm));
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
        for (&d, pd) in &self.protected {
            for e in &pd.list.vms {
                // Where the evidence says it runs, as failover judges it: not on a dead host, nor
                // on an isolated one whose power-on list says its isolation response stopped it
                // (that host's last report, from before the isolation, still lists it).
                let on = self.running_on(d, e.vm);
                let host = on.first().copied().or(e.last_host);
                let restart = match self.tracks.get(&e.vm) {
                    Some(t) => describe_track(t),
                    None => describe_entry(e),
                };
                out.push(VmView {
                    vm: e.vm,
                    host,
                    state: (!on.is_empty()).then_some(VmRunState::Running),
                    restart,
                    failed: matches!(e.restart, RestartState::LimitReached { .. }),
                });
            }
        }
        out
    }
}

/// A restart under way, in words for status and reports (`fdm-agent status`, `fdmctl status`).
fn describe_track(t: &RestartTrack) -> String {
    let from = t.from.map(|h| format!(" from {h}")).unwrap_or_default();
    match t.stage {
        Stage::Waiting => format!(
            "waiting to restart{from} ({} so far)",
            count(t.attempts, "attempt")
        ),
        Stage::Resume { target, attempt } => {
            format!("resuming attempt {attempt} on {target}{from}")
        }
        Stage::IntentWriting {
            target, attempt, ..
        } => format!("recording attempt {attempt} on {target}{from}"),
        Stage::Issued {
            target, attempt, ..
        } => format!("restarting on {target}{from} (attempt {attempt})"),
    }
}

/// A protected entry with no restart under way, in words for status and reports.
fn describe_entry(e: &ProtectedVm) -> String {
    match e.restart {
        RestartState::Idle => "idle".to_string(),
        RestartState::Pending { attempts } => {
            format!("pending ({} so far)", count(attempts, "attempt"))
        }
        RestartState::Intent {
            target, attempt, ..
        } => format!("restarting on {target} (attempt {attempt})"),
        RestartState::Failed { attempts } => {
            format!("{} failed, retrying later", count(attempts, "attempt"))
        }
        RestartState::LimitReached { restarts } => format!(
            "failed: restart limit ({}); fdmctl vm clear",
            count(restarts, "restart")
        ),
    }
}

impl Agent {
    // ----- network -------------------------------------------------------------------------------

    /// One heartbeat round to every host (see `MasterState::send_heartbeats`).
    pub(super) fn master_send_heartbeats(&mut self, now: Time) {
        let Some(whole) = self.as_master(|m, cx| m.send_heartbeats(cx, now)) else {
            return;
        };
        if whole {
            // Our own VMs are held like everyone's: a lease granted to ourselves at `now`.
            let until = now + self.t.shrink(self.t.net_lease);
            for d in self.config.datastores.iter().map(|d| d.id) {
                let e = self.net_lease.entry(d).or_insert(until);
                *e = (*e).max(until);
            }
        }
    }

    /// A heartbeat outside the rounds (to a host that has no master): it never covers all.
    pub(super) fn master_send_heartbeat_to(&mut self, now: Time, to: HostId) {
        self.as_master(|m, cx| m.send_heartbeat(cx, now, to, false));
    }

    /// A slave heartbeat (the message's fields, from `(host, incarnation)`).
    pub(super) fn master_on_slave_heartbeat(
        &mut self,
        now: Time,
        from: (HostId, u64),
        hb: SlaveHeartbeat,
    ) {
        self.as_master(|m, cx| m.on_slave_heartbeat(cx, now, from, hb));
    }

    // ----- datastores ----------------------------------------------------------------------------

    pub(super) fn master_read_datastores(&mut self, now: Time) {
        self.as_master(|m, cx| m.read_datastores(cx, now));
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
        let Some(judge_now) = self.as_master(|m, cx| match (purpose, result) {
            (DsPurpose::HeartbeatRead, Ok(DsReply::Heartbeats(slots))) => {
                m.on_heartbeats_read(cx, now, issued, d, slots);
                // Judge at once: a death this read confirms should not wait for the next tick.
                true
            }
            (DsPurpose::ClaimRead, Ok(DsReply::Claim(current))) => {
                m.on_claim_read(cx, now, issued, d, current);
                false
            }
            (DsPurpose::ClaimWrite(sent), result) => {
                m.on_claim_written(cx, now, d, sent, result);
                false
            }
            (DsPurpose::ProtectedRead, Ok(DsReply::ProtectedList(list))) => {
                m.on_protected_read(cx, now, d, list);
                false
            }
            (DsPurpose::ProtectedRead, Err(_)) => {
                // Retried by the next evaluation while the list is not loaded.
                false
            }
            (DsPurpose::ProtectedWrite { generation }, result) => {
                m.on_protected_written(cx, now, d, generation, result);
                false
            }
            (DsPurpose::PowerOnListRead { host }, Ok(DsReply::PowerOnList(list))) => {
                m.on_power_on_list_read(d, host, list);
                false
            }
            _ => false,
        }) else {
            return;
        };
        if judge_now {
            self.master_evaluate(now);
        }
    }
}

impl MasterState {
    /// One heartbeat round to every host. The round's `covers_all` is decided once, here: it
    /// needs every host's echo, and a cluster of thousands cannot check that per datagram.
    /// Returns it: when it covers all, the master's own VMs are held too.
    fn send_heartbeats(&mut self, cx: &mut Ctx<'_>, now: Time) -> bool {
        let hosts: Vec<HostId> = cx.config.hosts.iter().map(|h| h.id).collect();
        self.rounds.next(now);
        let proved =
            self.whole_membership(now, &hosts, cx.t) || step_removed!(self, HoldMembership);
        let whole = proved && !step_removed!(self, OutageHold);
        // What the hold adds: datastores covered without a claim we could renew (a storage
        // outage). Only changes of that set are news for operators.
        let held: BTreeSet<DatastoreId> = if whole {
            cx.config
                .datastores
                .iter()
                .map(|d| d.id)
                .filter(|&d| self.held_valid(d, now, cx.t).is_none())
                .collect()
        } else {
            BTreeSet::new()
        };
        let started: Vec<DatastoreId> = held.difference(&self.outage_held).copied().collect();
        let ended: Vec<DatastoreId> = self.outage_held.difference(&held).copied().collect();
        self.outage_held = held;
        for datastore in started {
            cx.out.emit(Event::StorageOutageHold {
                datastore,
                holding: true,
            });
        }
        for datastore in ended {
            cx.out.emit(Event::StorageOutageHold {
                datastore,
                holding: false,
            });
        }
        for h in hosts.into_iter().filter(|&h| h != cx.settings.host) {
            self.send_heartbeat(cx, now, h, whole);
        }
        whole
    }

    fn send_heartbeat(&mut self, cx: &mut Ctx<'_>, now: Time, to: HostId, covers_all: bool) {
        let t = cx.t;
        let reachable_datastores = cx.reachable_datastores(now).len() as u32;
        let claims: Vec<(DatastoreId, Epoch)> = self
            .claims
            .keys()
            .filter_map(|&d| self.held_valid(d, now, t).map(|e| (d, e)))
            .collect();
        let p = self.peers.entry(to).or_default();
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
        let round = self.rounds.current(now);
        let msg = Message::MasterHeartbeat(MasterHeartbeat {
            round,
            covers_all,
            echo_seq,
            echo_token,
            reachable_datastores,
            claims,
            want_vm_report,
            config_generation: cx.config.generation,
        });
        cx.out.send(to, &msg);
    }

    fn on_slave_heartbeat(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Time,
        (from, incarnation): (HostId, u64),
        hb: SlaveHeartbeat,
    ) {
        let SlaveHeartbeat {
            seq,
            echo_round,
            token,
            reachable,
            vm_generation,
            maintenance,
            config_generation: _,
        } = hb;
        let p = self.peers.entry(from).or_default();
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
        p.echo_round = echo_round;
        p.reachable = reachable;
        p.maintenance = maintenance;
        if p.vm_gen_reported != vm_generation {
            p.vm_gen_reported = vm_generation;
        }
        if p.verdict != Some(Verdict::Alive) {
            self.set_verdict(cx, from, Verdict::Alive, "network heartbeat received");
        }
    }

    fn set_verdict(&mut self, cx: &mut Ctx<'_>, host: HostId, to: Verdict, reason: &str) {
        let Some(p) = self.peers.get_mut(&host) else {
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
            for vm in p.vms.keys() {
                if let Some(s) = self.running.get_mut(vm) {
                    s.remove(&host);
                }
            }
        }
        self.reconcile_due = true;
        if !(first && to == Verdict::Unreachable) {
            cx.out.emit(Event::VerdictChanged {
                subject: host,
                from,
                to,
                reason: reason.to_string(),
            });
        }
    }

    fn read_datastores(&mut self, cx: &mut Ctx<'_>, now: Time) {
        for &d in cx.mounted.keys() {
            let out = &mut *cx.out;
            if !out.has_inflight(d, |p| matches!(p, DsPurpose::HeartbeatRead)) {
                out.ds_request(now, d, DsOp::ReadHeartbeats, DsPurpose::HeartbeatRead);
            }
            let held = self.claims.get(&d).is_some_and(|c| c.held.is_some());
            if !held
                && !out.has_inflight(d, |p| {
                    matches!(p, DsPurpose::ClaimRead | DsPurpose::ClaimWrite(_))
                })
            {
                out.ds_request(now, d, DsOp::ReadClaim, DsPurpose::ClaimRead);
            }
            let wanted = self
                .peers
                .iter()
                .filter(|(_, p)| p.lists_wanted.contains(&d))
                .map(|(&h, _)| h);
            for host in wanted {
                if !out.has_inflight(d, |p| *p == DsPurpose::PowerOnListRead { host }) {
                    out.ds_request(
                        now,
                        d,
                        DsOp::ReadPowerOnList { host },
                        DsPurpose::PowerOnListRead { host },
                    );
                }
            }
        }
    }

    fn on_power_on_list_read(&mut self, d: DatastoreId, host: HostId, list: Option<PowerOnList>) {
        if let Some(p) = self.peers.get_mut(&host) {
            p.lists_wanted.remove(&d);
            match list {
                Some(l) if l.host == host => {
                    p.power_on_lists.insert(d, l);
                }
                _ => {
                    p.power_on_lists.remove(&d);
                }
            }
            self.reconcile_due = true;
        }
    }

    fn on_heartbeats_read(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Time,
        issued: Time,
        d: DatastoreId,
        slots: Vec<heartbeat_fs::ops::HeartbeatSlot>,
    ) {
        let cluster = cx.settings.cluster;
        self.ds_read_ok.insert(d, now);
        let mut seen: BTreeSet<HostId> = BTreeSet::new();
        for slot in slots {
            if slot.host == self.me {
                continue;
            }
            let Some(p) = self.peers.get_mut(&slot.host) else {
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
        for &h in cx.config.hosts_of(d) {
            if h == self.me || seen.contains(&h) {
                continue;
            }
            if let Some(p) = self.peers.get_mut(&h) {
                observe(p, d, (issued, now), HeartbeatSeen::default());
            }
        }
    }

    /// Send a restart's command to `target` (its intent is durable, unless a knob removed that
    /// step).
    fn issue_power_on(&mut self, cx: &mut Ctx<'_>, target: HostId, command: PowerOnCommand) {
        let (vm, epoch, attempt) = (command.vm, command.epoch, command.attempt);
        // Write-ahead (docs/safety.md): a command goes out only for the intent its datastore's
        // protected list records, under the claim it names.
        debug_assert!(
            step_removed!(self, WriteAheadIntent)
                || self.intent_recorded(vm, (target, attempt), command.datastore, epoch),
            "a power-on command for {vm} on {target} (attempt {attempt}, {epoch}) without its intent under a held claim"
        );
        self.start_stats(&mut cx.out.stats, vm).issued += 1;
        cx.out.emit(Event::RestartIssued {
            vm,
            target,
            epoch,
            attempt,
        });
        cx.out.send(target, &Message::PowerOn(command));
    }

    /// The counters `vm`'s start belongs to: a restart when its track names a host it was lost
    /// from, a first placement otherwise.
    fn start_stats<'s>(
        &self,
        stats: &'s mut crate::AgentStats,
        vm: VmId,
    ) -> &'s mut crate::StartStats {
        if self.tracks.get(&vm).is_some_and(RestartTrack::is_restart) {
            &mut stats.restarts
        } else {
            &mut stats.placements
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fdm-agent status` and `fdmctl status` show these: plain words, no Rust debug text.
    #[test]
    fn restart_states_read_in_words() {
        let mut t = RestartTrack::waiting(DatastoreId(1), Time::ZERO, Some(HostId(1)), None);
        let mut texts = vec![describe_track(&t)];
        for stage in [
            Stage::Resume {
                target: HostId(2),
                attempt: 1,
            },
            Stage::IntentWriting {
                target: HostId(2),
                attempt: 1,
                generation: 9,
            },
            Stage::Issued {
                target: HostId(2),
                attempt: 1,
                sent_at: Time::ZERO,
            },
        ] {
            t.stage = stage;
            texts.push(describe_track(&t));
        }
        assert_eq!(
            texts[0],
            "waiting to restart from host-1 (0 attempts so far)"
        );
        assert_eq!(texts[3], "restarting on host-2 from host-1 (attempt 1)");
        t.from = None;
        texts.push(describe_track(&t));
        for restart in [
            RestartState::Idle,
            RestartState::Pending { attempts: 1 },
            RestartState::Intent {
                target: HostId(2),
                epoch: Epoch(3),
                attempt: 2,
            },
            RestartState::Failed { attempts: 3 },
            RestartState::LimitReached { restarts: 3 },
        ] {
            let e = ProtectedVm {
                vm: VmId(4),
                home: DatastoreId(1),
                last_host: Some(HostId(1)),
                desired: heartbeat_fs::records::DesiredPower::On,
                settings: Default::default(),
                restart,
                recent_restarts: Vec::new(),
                pending_power: None,
            };
            texts.push(describe_entry(&e));
        }
        assert!(texts.contains(&"pending (1 attempt so far)".to_string()));
        for text in &texts {
            for mark in ["Id(", "Some(", "None", "Time(", "Epoch(", "{", "(s)"] {
                assert!(!text.contains(mark), "{text:?} shows {mark:?}");
            }
        }
    }
}
