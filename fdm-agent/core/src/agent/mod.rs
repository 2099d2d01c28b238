//! The agent state machine: one entry point per kind of input, all state changes in this module tree.
//!
//! `mod.rs` holds the state, the input dispatch, timers, the network and datastore heartbeats and the
//! election; `local.rs` the duties every host has for its own VMs (power-on on command, isolation
//! response, self-fencing, adoption); `master/` the master's duties (`mod.rs`: its state, claims,
//! protected lists; `verdict.rs`: the verdict on each host; `failover.rs`: restarts).

/// Whether a safety step is removed for this agent (or its master state): always false without
/// the `fault-knobs` feature, where neither has any knobs and the branch compiles away.
macro_rules! step_removed {
    ($settings:expr, $step:ident) => {{
        #[cfg(feature = "fault-knobs")]
        let removed = $settings.fault_knobs.removes($crate::SafetyStep::$step);
        #[cfg(not(feature = "fault-knobs"))]
        let removed = false;
        removed
    }};
}

mod ctx;
mod local;
mod master;
mod outbox;

use super::cluster::ClusterView;
use super::config::{AgentSettings, Timings, TimingsError};
use super::events::{Event, Role, Verdict};
use super::io::{HypervisorEvent, OperatorCommand, Output, VmRunState};
use super::messages::{
    CandidacyNotice, Handover, MasterHeartbeat, Message, SlaveHeartbeat, VmReport,
};
use super::time::Time;
use crate::wire::{self, DropCounters, Key, Recipient};
use election::Candidacy;
use heartbeat_fs::ops::{DsCompletion, DsError, DsOp, DsReply, RequestId};
use heartbeat_fs::records::{ClusterConfig, HeartbeatRecord, HostFlags};
use heartbeat_fs::{ClusterId, DatastoreId, HostId, VmId};
use local::LocalVms;
use master::MasterState;
use outbox::Outbox;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Counters for metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AgentStats {
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub drops: DropCounters,
    /// Authenticated datagrams from a host that is not in the cluster configuration.
    pub unknown_sender: u64,
    pub ds_ops_issued: u64,
    pub ds_ops_failed: u64,
    /// This agent as master: VMs lost from a host (a crash, a dead host, an isolation response)
    /// brought back. These are the restarts HA exists for.
    pub restarts: StartStats,
    /// This agent as master: first placements, VMs started that ran nowhere before (protected
    /// but never seen running, or started by an operator through HA). Counted apart so that a
    /// new inventory does not read as a wave of failures.
    pub placements: StartStats,
    /// VMs this agent, as master, declared failed at their restart limit.
    pub restart_limits_reached: u64,
    /// Cluster configurations read from a datastore and refused (their timings are invalid).
    pub configs_rejected: u64,
}

/// One kind of VM start as the master drives it: the commands it sent and how each ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StartStats {
    /// Power-on commands sent, each attempt one (a retry on another host counts again).
    pub issued: u64,
    /// The target answered that the VM runs.
    pub succeeded: u64,
    /// The target answered that it could not start the VM (each failed attempt one).
    pub failed: u64,
    /// Every retry was used; the VM waits for capacity or a configuration change.
    pub gave_up: u64,
    /// No host could take the VM when it was due (once per wait).
    pub no_capacity: u64,
    /// The VM started and was stopped on purpose before the master saw it through.
    pub ended_by_operator: u64,
}

/// The master's view of one host, for status and reports.
#[derive(Debug, Clone, PartialEq)]
pub struct HostView {
    pub host: HostId,
    pub verdict: Verdict,
    /// Seconds since the last network heartbeat, if any.
    pub net_age: Option<f64>,
    /// Per datastore: seconds since the heartbeat sequence last advanced.
    pub ds_age: Vec<(DatastoreId, Option<f64>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VmView {
    pub vm: VmId,
    pub host: Option<HostId>,
    pub state: Option<VmRunState>,
    /// Where it stands in the restart pipeline, in words.
    pub restart: String,
    /// At its restart limit: HA leaves it alone until an operator clears it.
    pub failed: bool,
}

/// What `fdm-agent status` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusSnapshot {
    pub host: HostId,
    pub role: Role,
    pub master: Option<HostId>,
    pub hosts: Vec<HostView>,
    pub vms: Vec<VmView>,
    pub config_generation: u64,
}

/// What the datastore request in flight was for.
#[derive(Debug, Clone, PartialEq)]
enum DsPurpose {
    HeartbeatWrite {
        started: Time,
    },
    HeartbeatRead,
    PowerOnListWrite {
        generation: u64,
    },
    PowerOnListRead {
        host: HostId,
    },
    ClaimRead,
    ClaimWrite(master::ClaimWriteSent),
    ProtectedRead,
    ProtectedWrite {
        generation: u64,
    },
    ConfigRead,
    CheckIntent {
        vm: VmId,
        attempt: u32,
    },
    /// Isolated host: is a master holding this datastore's claim?
    OwnerRead,
    /// The protected list, for the VMs found running at start (`check_found_copies`).
    FoundCopyRead,
    /// The power-on list of the host the protected list places a found VM on.
    FoundCopyListRead {
        vm: VmId,
        host: HostId,
    },
}

#[derive(Debug, Clone)]
struct Inflight {
    datastore: DatastoreId,
    purpose: DsPurpose,
    issued: Time,
}

/// This host's own use of one mounted datastore.
#[derive(Debug, Clone, Default)]
struct MountedDs {
    hb_sequence: u64,
    /// Start time of the last heartbeat write that succeeded: the datastore lease runs from here.
    last_ok_write_start: Option<Time>,
    /// Last write failed (or none succeeded yet).
    failing: bool,
    /// Since when the writes fail (the storage-loss response's clock); `None` while they work.
    failing_since: Option<Time>,
    reported_lost: bool,
}

/// What this agent is in the cluster, with the data that only that role has.
#[derive(Debug)]
enum RoleState {
    /// Just started: reading the datastores and the hypervisor inventory.
    Starting,
    /// No master heard: standing in an election.
    Candidate(ElectionRound),
    /// Following `master`, last heard at `heard`.
    Slave { master: HostId, heard: Time },
    /// Master: its peer table, claims, protected lists and restarts. Boxed: most agents are
    /// slaves, and a slave should not carry a master's size.
    Master(Box<MasterState>),
    /// Heard nobody and cannot reach any isolation address.
    Isolated,
}

impl RoleState {
    fn role(&self) -> Role {
        match self {
            RoleState::Starting => Role::Starting,
            RoleState::Candidate(_) => Role::Candidate,
            RoleState::Slave { master, .. } => Role::Slave { master: *master },
            RoleState::Master(_) => Role::Master,
            RoleState::Isolated => Role::Isolated,
        }
    }
    fn master(&self) -> Option<&MasterState> {
        match self {
            RoleState::Master(m) => Some(m),
            _ => None,
        }
    }
    fn master_mut(&mut self) -> Option<&mut MasterState> {
        match self {
            RoleState::Master(m) => Some(m),
            _ => None,
        }
    }
    fn election(&self) -> Option<&ElectionRound> {
        match self {
            RoleState::Candidate(r) => Some(r),
            _ => None,
        }
    }
    fn election_mut(&mut self) -> Option<&mut ElectionRound> {
        match self {
            RoleState::Candidate(r) => Some(r),
            _ => None,
        }
    }
    /// When the master we follow was last heard (slaves only).
    fn master_heard(&self) -> Option<Time> {
        match self {
            RoleState::Slave { heard, .. } => Some(*heard),
            _ => None,
        }
    }
}

/// An election in progress.
#[derive(Debug, Clone)]
struct ElectionRound {
    started: Time,
    /// Candidacies heard since the round started (own one is added at the end).
    heard: BTreeMap<HostId, Candidacy<HostId>>,
    /// The winner we wait for, when it is not us.
    awaiting: Option<(HostId, Time)>,
}

impl ElectionRound {
    fn new(started: Time) -> Self {
        ElectionRound {
            started,
            heard: BTreeMap::new(),
            awaiting: None,
        }
    }
}

/// Deadlines of the periodic duties. Timers are data: `poll_timeout` is their minimum, and a duty runs
/// only when its own deadline has passed, so a spurious `handle_timeout` does nothing.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    net_heartbeat: Time,
    ds_heartbeat: Time,
    evaluate: Time,
    config_poll: Time,
    /// Master only.
    ds_read: Time,
    claim_renew: Time,
}

/// One host's agent: the whole protocol as a state machine, with no IO of its own.
///
/// # The contract
///
/// **Inputs.** Everything that happens to the agent arrives through one `handle_*` method per kind
/// of input, each with the current time:
///
/// - [`handle_datagram`](Self::handle_datagram): a UDP payload as received, unchecked;
/// - [`handle_datastore`](Self::handle_datastore): the completion of an `Output::Datastore` request
///   (late, duplicate or unknown completions are ignored);
/// - [`handle_hypervisor`](Self::handle_hypervisor): the result of an `Output::Hypervisor` action, or
///   an event the hypervisor reports on its own (a VM started, crashed, was stopped);
/// - [`handle_isolation_check`](Self::handle_isolation_check) and
///   [`handle_probe`](Self::handle_probe): answers to `Output::CheckIsolation` and `Output::Probe`;
/// - [`handle_command`](Self::handle_command): an operator's command (maintenance, shutdown);
/// - [`handle_timeout`](Self::handle_timeout): a timer fired. Spurious or early calls do nothing.
///
/// **Time.** `now` is a monotonic clock of the host (`Time` counts from an arbitrary origin) and
/// must never decrease from one call to the next (checked in debug builds). It is never compared
/// with another host's clock: the safety argument assumes only bounded drift of rates
/// (`docs/safety.md`).
///
/// **Outputs.** After every `handle_*` call the driver drains [`poll_output`](Self::poll_output)
/// until it returns `None`, carries each output out (send, datastore request, hypervisor action,
/// ping, watchdog kick, event to log), and then asks [`poll_timeout`](Self::poll_timeout) for the
/// next deadline, calling `handle_timeout` once it has passed. An output's answer may come at any
/// later time or never: the agent gives up on unanswered requests itself. Answers are fed back with
/// the matching `handle_*` call, at once or later, also while outputs are still queued: new outputs
/// queue behind the old ones, and the order of outputs is the order to carry them out in.
///
/// **Start.** [`new`](Self::new) (or [`with_shared_config`](Self::with_shared_config)), then drain
/// the outputs: the first ones ask for the hypervisor's inventory (so that VMs already running are
/// adopted, never restarted), write this host's datastore heartbeats and read the configuration
/// from the datastores.
#[derive(Debug)]
pub struct Agent {
    settings: AgentSettings,
    t: Timings,
    config: Arc<ClusterView>,
    role: RoleState,
    started_at: Time,
    now: Time,
    out: Outbox,
    deadlines: Deadlines,
    mounted: BTreeMap<DatastoreId, MountedDs>,
    /// Our recent `SlaveHeartbeat`s, for the network lease: sequence, echo token, send time.
    hb_sent: VecDeque<(u64, u64, Time)>,
    hb_seq: u64,
    /// The newest heartbeat round heard from our master, echoed in our heartbeats.
    master_round: u64,
    /// Network lease per datastore: until when a master's acknowledgement covers our VMs there.
    net_lease: BTreeMap<DatastoreId, Time>,
    last_heard_anyone: Time,
    want_vm_report: bool,
    isolation: local::IsolationState,
    vms: LocalVms,
    maintenance: bool,
    shutting_down: bool,
    inventory_requested: bool,
    /// Highest configuration generation refused: not read again until a newer one is announced.
    config_refused: u64,
    /// Safety steps removed so the simulator can show its checks catch their removal.
    #[cfg(feature = "fault-knobs")]
    fault_knobs: crate::FaultKnobs,
}

/// Messages that change what the recipient does with its VMs or leases: accepted only when they name
/// the recipient's current incarnation.
fn needs_bound_recipient(msg: &Message) -> bool {
    match msg {
        Message::PowerOn(_)
        | Message::PowerOff(_)
        | Message::PowerOnResult(_)
        | Message::VmReport(_) => true,
        Message::MasterHeartbeat(hb) => hb.echo_seq != 0,
        Message::Candidacy(_) | Message::SlaveHeartbeat(_) | Message::Yield(_) => false,
    }
}

/// Datastores whose last heartbeat write (by this host) succeeded and started within the lease.
fn reachable_datastores(
    mounted: &BTreeMap<DatastoreId, MountedDs>,
    t: &Timings,
    now: Time,
) -> Vec<DatastoreId> {
    let lease = t.shrink(t.ds_lease);
    mounted
        .iter()
        .filter(|(_, m)| m.last_ok_write_start.is_some_and(|t| now.since(t) < lease) && !m.failing)
        .map(|(&d, _)| d)
        .collect()
}

/// Generation 0: older than any configuration a datastore holds, so the first one read replaces it.
fn empty_config(cluster: ClusterId) -> ClusterConfig {
    ClusterConfig::new(cluster).with_generation(0)
}

impl Agent {
    /// A fresh agent. `config` is the bootstrap cluster configuration (from the local config file's
    /// seed list or a previous datastore read); the newest valid copy on the datastores replaces it.
    pub fn new(settings: AgentSettings, config: Option<ClusterConfig>, now: Time) -> Self {
        let config = Arc::new(ClusterView::new(
            config.unwrap_or_else(|| empty_config(settings.cluster)),
        ));
        Self::with_shared_config(settings, config, now)
    }

    /// Like `new`, with a configuration view shared with other agents (the simulator runs thousands
    /// of agents on one configuration; copying it per agent would dominate its memory and time).
    pub fn with_shared_config(
        settings: AgentSettings,
        config: Arc<ClusterView>,
        now: Time,
    ) -> Self {
        let (t, refused) = match settings
            .timings
            .clone()
            .with_overrides(&config.ha.timings_ms)
        {
            Ok(t) => (t, None),
            Err(e) => (settings.timings.clone(), Some(e)),
        };
        let mounted = settings
            .datastores
            .iter()
            .map(|&d| (d, MountedDs::default()))
            .collect();
        let key = Key::new(settings.secret);
        let mut agent = Agent {
            deadlines: Deadlines {
                net_heartbeat: now,
                ds_heartbeat: now,
                evaluate: now,
                config_poll: now,
                ds_read: now,
                claim_renew: now,
            },
            out: Outbox::new(settings.host, settings.cluster, settings.incarnation, key),
            settings,
            t,
            config,
            role: RoleState::Starting,
            started_at: now,
            now,
            mounted,
            hb_sent: VecDeque::new(),
            hb_seq: 0,
            master_round: 0,
            net_lease: BTreeMap::new(),
            last_heard_anyone: now,
            want_vm_report: true,
            isolation: local::IsolationState::default(),
            vms: LocalVms::default(),
            maintenance: false,
            shutting_down: false,
            inventory_requested: false,
            config_refused: 0,
            #[cfg(feature = "fault-knobs")]
            fault_knobs: crate::FaultKnobs::default(),
        };
        agent.vms.rebuild_homes(&agent.config);
        if let Some(e) = refused {
            agent.out.stats.configs_rejected += 1;
            agent.emit(Event::ConfigRejected {
                generation: agent.config.generation,
                reason: e.to_string(),
            });
        }
        agent.start(now);
        agent
    }

    /// Every input starts here: time only moves forward (a driver that feeds an earlier `now` has a
    /// broken clock or a reordered queue; leases judged on such a clock would be wrong).
    fn enter(&mut self, now: Time) {
        debug_assert!(
            now >= self.now,
            "time went backwards: {} after {}",
            now.as_micros(),
            self.now.as_micros()
        );
        self.now = now;
    }

    fn start(&mut self, now: Time) {
        // Adopt whatever runs already (agent restart, upgrade): never restart it.
        let op = self.op();
        self.inventory_requested = true;
        self.out
            .outputs
            .push_back(Output::Hypervisor(super::io::HypervisorAction::List { op }));
        self.vms.inventory_op = Some(op);
        self.write_ds_heartbeats(now);
        self.read_config(now);
    }

    // ----- inputs -------------------------------------------------------------------------------

    pub fn handle_datagram(&mut self, now: Time, payload: &[u8]) {
        self.enter(now);
        self.out.stats.datagrams_received += 1;
        let me = Recipient {
            host: self.settings.host,
            incarnation: self.settings.incarnation,
        };
        let (header, body) = match wire::open(&self.out.key, self.settings.cluster, me, payload) {
            Ok(x) => x,
            Err(e) => {
                self.out.stats.drops.count(e);
                return;
            }
        };
        if header.sender == self.settings.host || self.config.host(header.sender).is_none() {
            self.out.stats.unknown_sender += 1;
            return;
        }
        let msg: Message = match postcard::from_bytes(body) {
            Ok(m) => m,
            Err(_) => {
                self.out.stats.drops.count(wire::WireError::MalformedBody);
                return;
            }
        };
        if msg.kind() != header.kind {
            self.out.stats.drops.count(wire::WireError::MalformedBody);
            return;
        }
        // A message that acts on this agent's state must name this incarnation: its sender has
        // heard us, and a copy meant for an earlier incarnation of us is not for us.
        if needs_bound_recipient(&msg) && header.recipient_incarnation != me.incarnation {
            self.out
                .stats
                .drops
                .count(wire::WireError::UnboundRecipient);
            return;
        }
        // Replay is checked last so that garbage cannot advance a sender's window.
        if let Err(e) = self.out.replay.check(&header) {
            self.out.stats.drops.count(e);
            return;
        }
        self.on_message(now, header.sender, header.incarnation, msg);
        self.after_input(now);
    }

    pub fn handle_datastore(&mut self, now: Time, completion: DsCompletion) {
        self.enter(now);
        let Some(inflight) = self.out.inflight.remove(&completion.id) else {
            // Unknown or already abandoned request: nothing to learn from it.
            return;
        };
        if completion.result.is_err() {
            self.out.stats.ds_ops_failed += 1;
        }
        self.on_ds_completion(now, inflight, completion.result);
        self.after_input(now);
    }

    pub fn handle_hypervisor(&mut self, now: Time, event: HypervisorEvent) {
        self.enter(now);
        self.on_hypervisor(event);
        self.after_input(now);
    }

    /// Answer to `Output::CheckIsolation`: whether any isolation address answered.
    pub fn handle_isolation_check(&mut self, now: Time, reachable: bool) {
        self.enter(now);
        self.on_isolation_check(now, reachable);
        self.after_input(now);
    }

    /// Answer to `Output::Probe`.
    pub fn handle_probe(&mut self, now: Time, host: HostId, answered: bool) {
        self.enter(now);
        if let Some(m) = self.role.master_mut() {
            m.on_probe(now, host, answered);
        }
        self.after_input(now);
    }

    pub fn handle_command(&mut self, now: Time, command: OperatorCommand) {
        self.enter(now);
        match command {
            OperatorCommand::Maintenance(on) => {
                self.maintenance = on;
            }
            OperatorCommand::Shutdown => {
                self.shutting_down = true;
                if self.role() == Role::Master {
                    let successor = self
                        .role
                        .master()
                        .and_then(|m| m.best_successor(self.settings.host));
                    self.step_down(now, successor, "agent shutting down");
                }
                self.write_ds_heartbeats(now);
            }
        }
        self.after_input(now);
    }

    /// A timer fired (or the driver is not sure: spurious calls are no-ops).
    pub fn handle_timeout(&mut self, now: Time) {
        self.enter(now);
        if self.shutting_down {
            return;
        }
        self.abandon_unanswered_requests(now);
        if now >= self.deadlines.ds_heartbeat {
            self.deadlines.ds_heartbeat = now + self.t.ds_heartbeat_interval;
            self.write_ds_heartbeats(now);
        }
        if now >= self.deadlines.net_heartbeat {
            self.deadlines.net_heartbeat = now + self.t.heartbeat_interval;
            self.send_net_heartbeat(now);
        }
        if now >= self.deadlines.config_poll {
            self.deadlines.config_poll = now + self.t.config_poll_interval;
            self.read_config(now);
        }
        if self.role.master().is_some() {
            if now >= self.deadlines.ds_read {
                self.deadlines.ds_read = now + self.t.ds_read_interval;
                self.master_read_datastores(now);
            }
            if now >= self.deadlines.claim_renew {
                self.deadlines.claim_renew = now + self.t.claim_renew_interval;
                self.as_master(|m, cx| m.renew_claims(cx, now));
            }
        }
        if now >= self.deadlines.evaluate {
            self.deadlines.evaluate = now + self.t.evaluate_interval();
            self.evaluate(now);
        }
        self.after_input(now);
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.outputs.pop_front()
    }

    /// The earliest time `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.shutting_down {
            return None;
        }
        let d = &self.deadlines;
        let mut t = d
            .net_heartbeat
            .min(d.ds_heartbeat)
            .min(d.evaluate)
            .min(d.config_poll);
        if self.role.master().is_some() {
            t = t.min(d.ds_read).min(d.claim_renew);
        }
        Some(t)
    }

    pub fn role(&self) -> Role {
        self.role.role()
    }

    /// Remove safety steps from this agent, to show that the simulator catches their removal
    /// (`docs/safety.md`). Only with the `fault-knobs` feature, which no production build has;
    /// call it before the first input.
    #[cfg(feature = "fault-knobs")]
    pub fn remove_safety_steps(&mut self, knobs: crate::FaultKnobs) {
        self.fault_knobs = knobs;
    }
    pub fn host(&self) -> HostId {
        self.settings.host
    }
    pub fn stats(&self) -> &AgentStats {
        &self.out.stats
    }
    pub fn timings(&self) -> &Timings {
        &self.t
    }

    /// Replace this host's own timing overrides (the agent file's, on SIGHUP). The cluster's
    /// overrides still apply on top; a combination that fails validation is refused and nothing
    /// changes. Takes effect at the next deadline of each timer.
    pub fn set_local_timings(&mut self, local: Timings) -> Result<(), TimingsError> {
        let t = local.clone().with_overrides(&self.config.ha.timings_ms)?;
        self.settings.timings = local;
        self.t = t;
        Ok(())
    }
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }
    /// The master this host follows (itself when master).
    pub fn current_master(&self) -> Option<HostId> {
        match self.role() {
            Role::Master => Some(self.settings.host),
            Role::Slave { master } => Some(master),
            _ => None,
        }
    }
    /// The master's verdict on `host`, when this agent is master.
    pub fn verdict_of(&self, host: HostId) -> Option<Verdict> {
        self.role.master().and_then(|m| m.verdict(host))
    }

    pub fn status(&self, now: Time) -> StatusSnapshot {
        let (hosts, vms) = match self.role.master() {
            Some(m) => (m.host_views(now), m.vm_views()),
            None => (Vec::new(), self.vms.views()),
        };
        StatusSnapshot {
            host: self.settings.host,
            role: self.role(),
            master: self.current_master(),
            hosts,
            vms,
            config_generation: self.config.generation,
        }
    }

    // ----- plumbing -----------------------------------------------------------------------------

    /// The newest configuration generation this agent has looked at, applied or refused.
    fn config_seen(&self) -> u64 {
        self.config.generation.max(self.config_refused)
    }

    fn emit(&mut self, e: Event) {
        self.out.emit(e);
    }

    fn op(&mut self) -> u64 {
        self.out.op()
    }

    fn paused(&self) -> bool {
        self.config.ha.paused
    }

    /// The driver answers every request by its deadline; one that did not (a driver bug, a lost
    /// completion) is treated as a timeout after twice the deadline, through the same path as a real
    /// one, so that whatever waited on it (a power-on's intent check, a claim write) moves on.
    fn abandon_unanswered_requests(&mut self, now: Time) {
        let limit = self.t.datastore_call_deadline.saturating_mul(2);
        let mut late: Vec<RequestId> = self
            .out
            .inflight
            .iter()
            .filter(|(_, f)| now.since(f.issued) > limit)
            .map(|(&id, _)| id)
            .collect();
        late.sort_unstable();
        for id in late {
            if let Some(f) = self.out.inflight.remove(&id) {
                self.out.stats.ds_ops_failed += 1;
                self.on_ds_completion(now, f, Err(heartbeat_fs::ops::DsError::Timeout));
            }
        }
    }

    fn has_inflight(&self, ds: DatastoreId, pred: impl Fn(&DsPurpose) -> bool) -> bool {
        self.out.has_inflight(ds, pred)
    }

    fn send(&mut self, to: HostId, msg: &Message) {
        self.out.send(to, msg);
    }

    fn other_hosts(&self) -> Vec<HostId> {
        let me = self.settings.host;
        self.config
            .hosts
            .iter()
            .map(|h| h.id)
            .filter(|&h| h != me)
            .collect()
    }

    fn after_input(&mut self, now: Time) {
        // Messages to ourselves are handled after the input that produced them, never recursively.
        let mut guard = 0;
        while let Some(msg) = self.out.loopback.pop_front() {
            let me = self.settings.host;
            self.on_message(now, me, self.settings.incarnation, msg);
            guard += 1;
            if guard > 10_000 {
                break;
            }
        }
    }

    /// Enter a role (or a fresh state of the same role); the change, if the role changes, is an
    /// event.
    fn set_role(&mut self, to: RoleState, reason: &str) {
        let from = self.role.role();
        self.role = to;
        let to = self.role.role();
        if from != to {
            self.emit(Event::RoleChanged {
                from,
                to,
                reason: reason.to_string(),
            });
        }
    }

    // ----- datastore heartbeats ------------------------------------------------------------------

    /// Datastores this host wrote its heartbeat to within the lease time.
    fn reachable_datastores(&self, now: Time) -> Vec<DatastoreId> {
        reachable_datastores(&self.mounted, &self.t, now)
    }

    fn host_flags(&self) -> HostFlags {
        HostFlags::default()
            .with(HostFlags::ISOLATED, self.role() == Role::Isolated)
            .with(HostFlags::SHUTTING_DOWN, self.shutting_down)
            .with(HostFlags::MAINTENANCE, self.maintenance)
            .with(HostFlags::MASTER, self.role() == Role::Master)
    }

    fn write_ds_heartbeats(&mut self, now: Time) {
        let ds: Vec<DatastoreId> = self.mounted.keys().copied().collect();
        let master = self.current_master().unwrap_or(HostId::NONE);
        for d in ds {
            if self.has_inflight(d, |p| matches!(p, DsPurpose::HeartbeatWrite { .. })) {
                continue;
            }
            let fenced = self.vms.fenced.contains(&d);
            let flags = self.host_flags().with(HostFlags::FENCED, fenced);
            let power_on_generation = self.vms.list_generation(d);
            let m = self.mounted.get_mut(&d).expect("listed above");
            m.hb_sequence += 1;
            let record = HeartbeatRecord {
                cluster: self.settings.cluster,
                host: self.settings.host,
                incarnation: self.settings.incarnation,
                sequence: m.hb_sequence,
                flags,
                power_on_generation,
                master,
            };
            self.out.ds_request(
                now,
                d,
                DsOp::WriteHeartbeat(record),
                DsPurpose::HeartbeatWrite { started: now },
            );
        }
    }

    fn read_config(&mut self, now: Time) {
        // One datastore per poll, round robin by generation parity is enough: any valid newest copy wins.
        let ds: Vec<DatastoreId> = self.reachable_datastores(now);
        let pick = if ds.is_empty() {
            self.mounted.keys().next().copied()
        } else {
            Some(ds[(now.0 / 1000) as usize % ds.len()])
        };
        if let Some(d) = pick
            && !self.has_inflight(d, |p| matches!(p, DsPurpose::ConfigRead))
        {
            let newer_than = self.config_seen();
            self.out.ds_request(
                now,
                d,
                DsOp::ReadConfig { newer_than },
                DsPurpose::ConfigRead,
            );
        }
    }

    fn on_ds_completion(&mut self, now: Time, f: Inflight, result: Result<DsReply, DsError>) {
        let d = f.datastore;
        match f.purpose {
            DsPurpose::HeartbeatWrite { started } => {
                let Some(m) = self.mounted.get_mut(&d) else {
                    return;
                };
                match result {
                    Ok(_) => {
                        if m.last_ok_write_start.is_none_or(|t| t < started) {
                            m.last_ok_write_start = Some(started);
                        }
                        m.failing = false;
                        m.failing_since = None;
                        if m.reported_lost {
                            m.reported_lost = false;
                            self.emit(Event::DatastoreRestored { datastore: d });
                        }
                    }
                    Err(e) => {
                        m.failing = true;
                        m.failing_since.get_or_insert(started);
                        if !m.reported_lost {
                            m.reported_lost = true;
                            self.emit(Event::DatastoreLost {
                                datastore: d,
                                error: e.to_string(),
                            });
                        }
                    }
                }
                if self.role() == Role::Starting {
                    self.maybe_leave_starting(now);
                }
            }
            DsPurpose::ConfigRead => {
                if let Ok(DsReply::Config(Some(cfg))) = result {
                    self.apply_config(now, *cfg);
                }
            }
            DsPurpose::PowerOnListWrite { generation } => {
                self.on_power_on_list_written(now, d, generation, result)
            }
            DsPurpose::CheckIntent { vm, attempt } => {
                self.on_intent_checked(now, d, vm, attempt, result)
            }
            DsPurpose::OwnerRead => self.on_owner_read(now, d, result),
            DsPurpose::FoundCopyRead => self.on_found_copy_read(d, result),
            DsPurpose::FoundCopyListRead { vm, host } => {
                self.on_found_copy_list_read(vm, host, result)
            }
            DsPurpose::HeartbeatRead
            | DsPurpose::PowerOnListRead { .. }
            | DsPurpose::ClaimRead
            | DsPurpose::ClaimWrite(_)
            | DsPurpose::ProtectedRead
            | DsPurpose::ProtectedWrite { .. } => {
                self.master_ds_completion(now, f.issued, d, f.purpose, result)
            }
        }
    }

    fn apply_config(&mut self, now: Time, cfg: ClusterConfig) {
        if cfg.cluster != self.settings.cluster || cfg.generation <= self.config_seen() {
            return;
        }
        // Keep running on the last good configuration: a bad value published to every datastore
        // must not take every agent down with it, and a layout whose VMs a master might not be
        // able to restart must not replace one whose VMs it can.
        let checked = cfg
            .check_layout()
            .map_err(|e| e.to_string())
            .and_then(|()| {
                self.settings
                    .timings
                    .clone()
                    .with_overrides(&cfg.ha.timings_ms)
                    .map_err(|e| e.to_string())
            });
        match checked {
            Ok(t) => self.t = t,
            Err(reason) => {
                self.config_refused = cfg.generation;
                self.out.stats.configs_rejected += 1;
                self.emit(Event::ConfigRejected {
                    generation: cfg.generation,
                    reason,
                });
                return;
            }
        }
        let generation = cfg.generation;
        self.config = Arc::new(ClusterView::new(cfg));
        self.vms.rebuild_homes(&self.config);
        self.emit(Event::ConfigApplied { generation });
        let cleared = match self.role.master_mut() {
            Some(m) => m.config_changed(now, &self.config),
            None => Vec::new(),
        };
        for vm in cleared {
            self.emit(Event::RestartLimitCleared { vm });
        }
    }

    // ----- network heartbeats and election -------------------------------------------------------

    fn maybe_leave_starting(&mut self, now: Time) {
        // Stand for election once every datastore answered once (or the deadline passed), so that
        // our candidacy carries a true datastore count.
        let all_answered = self
            .mounted
            .values()
            .all(|m| m.last_ok_write_start.is_some() || m.failing);
        if all_answered || now.since(self.started_at) >= self.t.datastore_call_deadline {
            self.become_candidate(now, "started");
        }
    }

    fn my_candidacy(&self, now: Time) -> Candidacy<HostId> {
        Candidacy {
            host: self.settings.host,
            reachable_datastores: self.reachable_datastores(now).len() as u32,
            incumbent: self.role() == Role::Master,
        }
    }

    fn become_candidate(&mut self, now: Time, reason: &str) {
        if self.role() == Role::Isolated {
            return;
        }
        self.set_role(RoleState::Candidate(ElectionRound::new(now)), reason);
        // Candidacies go out staggered by host rank over the first half heartbeat interval, and a
        // candidate that has heard a better one stays quiet (see `send_net_heartbeat`): with every
        // host broadcasting at once an election costs n^2 datagrams (a million at 1024 hosts); this
        // way the best few speak and the rest listen. The winner is the same: the best candidacy is
        // never suppressed.
        let ids = &self.config.hosts;
        let rank = ids.iter().filter(|h| h.id < self.settings.host).count() as u32;
        let n = ids.len().max(1) as u32;
        let stagger = (self.t.heartbeat_interval / 2)
            .checked_mul(rank)
            .map_or(Duration::ZERO, |d| d / n);
        self.deadlines.net_heartbeat = now + stagger;
    }

    /// This round has heard a candidacy that beats ours: saying ours changes nothing.
    fn heard_better(&self, now: Time) -> bool {
        let me = self.my_candidacy(now);
        self.role.election().is_some_and(|r| {
            r.heard
                .values()
                .any(|c| election::compare(c, &me) == std::cmp::Ordering::Greater)
        })
    }

    fn send_candidacy(&mut self, now: Time) {
        let c = self.my_candidacy(now);
        let msg = Message::Candidacy(CandidacyNotice {
            reachable_datastores: c.reachable_datastores,
            incumbent: false,
        });
        for h in self.other_hosts() {
            self.send(h, &msg);
        }
    }

    fn send_net_heartbeat(&mut self, now: Time) {
        match self.role() {
            Role::Starting => {}
            Role::Candidate => {
                if !self.heard_better(now) {
                    self.send_candidacy(now);
                }
            }
            Role::Isolated => {
                // Keep knocking: the network may be back.
                self.send_candidacy(now);
            }
            Role::Slave { master } => {
                self.hb_seq += 1;
                let token = self.out.key.echo_token(
                    self.settings.host,
                    self.settings.incarnation,
                    self.hb_seq,
                );
                self.hb_sent.push_back((self.hb_seq, token, now));
                while self.hb_sent.len() > 64 {
                    self.hb_sent.pop_front();
                }
                let msg = Message::SlaveHeartbeat(SlaveHeartbeat {
                    seq: self.hb_seq,
                    echo_round: self.master_round,
                    token,
                    reachable: self.reachable_datastores(now),
                    // 0 until the inventory is in: no report yet, so the master cannot take our
                    // VMs for absent.
                    vm_generation: if self.vms.inventoried {
                        self.vms.generation
                    } else {
                        0
                    },
                    maintenance: self.maintenance,
                    config_generation: self.config.generation,
                });
                self.send(master, &msg);
                if self.want_vm_report {
                    self.want_vm_report = false;
                    self.send_vm_report(master);
                }
            }
            Role::Master => self.master_send_heartbeats(now),
        }
    }

    fn send_vm_report(&mut self, to: HostId) {
        if !self.vms.inventoried {
            // Sent once the inventory is in (the generation moves then and the master asks again).
            return;
        }
        let all = self.vms.statuses();
        let chunks: Vec<Vec<_>> = if all.is_empty() {
            vec![Vec::new()]
        } else {
            all.chunks(super::messages::VM_REPORT_PART)
                .map(|c| c.to_vec())
                .collect()
        };
        let parts = chunks.len() as u16;
        for (i, vms) in chunks.into_iter().enumerate() {
            let msg = Message::VmReport(VmReport {
                generation: self.vms.generation,
                part: i as u16,
                parts,
                vms,
            });
            self.send(to, &msg);
        }
    }

    fn on_message(&mut self, now: Time, from: HostId, incarnation: u64, msg: Message) {
        if from != self.settings.host {
            self.last_heard_anyone = now;
            if self.role() == Role::Isolated {
                self.end_isolation(now);
            }
        }
        match msg {
            Message::Candidacy(CandidacyNotice {
                reachable_datastores,
                incumbent,
            }) => {
                let c = Candidacy {
                    host: from,
                    reachable_datastores,
                    incumbent,
                };
                match self.role() {
                    Role::Master => {
                        // A host without a master: tell it at once who is master.
                        self.master_send_heartbeat_to(now, from);
                    }
                    Role::Candidate => {
                        if let Some(r) = self.role.election_mut() {
                            r.heard.insert(from, c);
                        }
                    }
                    _ => {}
                }
            }
            Message::MasterHeartbeat(hb) => {
                self.on_master_heartbeat(now, from, hb);
            }
            Message::SlaveHeartbeat(hb) => {
                if self.role() == Role::Master {
                    let config_generation = hb.config_generation;
                    self.master_on_slave_heartbeat(now, (from, incarnation), hb);
                    if config_generation > self.config_seen() {
                        self.read_config(now);
                    }
                }
            }
            Message::VmReport(report) => {
                if let Some(m) = self.role.master_mut() {
                    m.on_vm_report((from, incarnation), report);
                }
            }
            Message::PowerOn(command) => self.on_power_on_command(now, from, command),
            Message::PowerOff(command) => self.on_power_off_command(from, command),
            Message::PowerOnResult(result) => {
                if self.role() == Role::Master {
                    self.master_on_power_on_result(now, from, result);
                }
            }
            Message::Yield(Handover { to }) => {
                if to == self.settings.host {
                    if self.role() != Role::Master {
                        self.become_master(now, "previous master handed over");
                    }
                } else if self.role() != Role::Master && self.config.host(to).is_some() {
                    self.follow(now, to, "previous master handed over");
                }
            }
        }
    }

    fn on_master_heartbeat(&mut self, now: Time, from: HostId, hb: MasterHeartbeat) {
        let MasterHeartbeat {
            round,
            echo_seq,
            echo_token,
            reachable_datastores,
            claims,
            covers_all,
            want_vm_report,
            config_generation,
        } = hb;
        if config_generation > self.config_seen() {
            self.read_config(now);
        }
        match self.role() {
            Role::Master => {
                let me = self.my_candidacy(now);
                let other = Candidacy {
                    host: from,
                    reachable_datastores,
                    incumbent: true,
                };
                if election::should_yield(&me, &other) {
                    self.emit(Event::Yielded { to: from });
                    self.step_down(now, Some(from), "met a better master");
                }
                return;
            }
            Role::Slave { master } if master != from => {
                // Two masters reach us; stay with ours until it is lost (the masters sort it out).
                if self
                    .role
                    .master_heard()
                    .is_some_and(|t| now.since(t) < self.t.master_lost_after)
                {
                    return;
                }
                self.follow(now, from, "previous master lost");
            }
            Role::Slave { .. } => {}
            Role::Starting | Role::Candidate => self.follow(now, from, "master found"),
            Role::Isolated => return,
        }
        if let RoleState::Slave { heard, .. } = &mut self.role {
            *heard = now;
        }
        // Echoed in our next heartbeat. A late datagram makes the echo look older to the master,
        // which only shortens its storage-outage hold.
        self.master_round = round;
        if want_vm_report {
            self.want_vm_report = true;
        }
        // The network lease runs from the moment we sent the heartbeat the master echoes.
        // Only the token this host put in that very heartbeat counts: an echo meant for another
        // slave (whose sequences run in lockstep with ours) grants nothing here.
        if let Some(&(_, _, sent)) = self
            .hb_sent
            .iter()
            .find(|(s, tok, _)| *s == echo_seq && *tok == echo_token)
        {
            let until = sent + self.t.shrink(self.t.net_lease);
            let covered: Vec<DatastoreId> = if covers_all {
                self.config.datastores.iter().map(|d| d.id).collect()
            } else {
                claims.into_iter().map(|(d, _)| d).collect()
            };
            for d in covered {
                let e = self.net_lease.entry(d).or_insert(until);
                if *e < until {
                    *e = until;
                }
            }
        }
    }

    fn follow(&mut self, now: Time, master: HostId, reason: &str) {
        self.want_vm_report = true;
        // A round number is the old master's: echoed to the new one it would mean another time.
        self.master_round = 0;
        self.set_role(RoleState::Slave { master, heard: now }, reason);
        // Tell the new master about us at once.
        self.deadlines.net_heartbeat = now;
    }

    fn become_master(&mut self, now: Time, reason: &str) {
        #[cfg_attr(not(feature = "fault-knobs"), allow(unused_mut))]
        let mut master = MasterState::new(now, &self.config, self.settings.host);
        #[cfg(feature = "fault-knobs")]
        {
            master.fault_knobs = self.fault_knobs;
        }
        self.set_role(RoleState::Master(Box::new(master)), reason);
        self.deadlines.ds_read = now;
        self.deadlines.claim_renew = now;
        self.deadlines.net_heartbeat = now;
    }

    /// Leave the master role: stop restarts at once, release claims, tell everyone whom to follow.
    fn step_down(&mut self, now: Time, successor: Option<HostId>, reason: &str) {
        if self.role() != Role::Master {
            return;
        }
        // The master's state goes with the role, when follow or become_candidate replaces it; in
        // between only Yields are sent.
        self.as_master(|m, cx| m.release_claims(cx, now));
        if let Some(to) = successor {
            for h in self.other_hosts() {
                self.send(h, &Message::Yield(Handover { to }));
            }
            if to != self.settings.host {
                self.follow(now, to, reason);
                return;
            }
        }
        self.become_candidate(now, reason);
    }

    fn evaluate_election(&mut self, now: Time) {
        let Some(round) = self.role.election() else {
            return;
        };
        if let Some((winner, since)) = round.awaiting {
            // The winner never took the role (it died, or cannot reach us): stand again.
            if now.since(since) >= self.t.master_lost_after {
                tracing::debug!(%winner, "elected host did not become master; new round");
                self.become_candidate(now, "elected master never appeared");
            }
            return;
        }
        if now.since(round.started) < self.t.election_window {
            return;
        }
        let me = self.my_candidacy(now);
        let mut all: Vec<Candidacy<HostId>> = round.heard.values().copied().collect();
        all.push(me);
        let winner = *election::winner(&all).expect("own candidacy present");
        let candidates = all.len() as u32;
        if winner.host == self.settings.host {
            self.emit(Event::ElectionWon {
                reachable_datastores: me.reachable_datastores,
                candidates,
            });
            self.become_master(now, "won election");
        } else if let Some(r) = self.role.election_mut() {
            r.awaiting = Some((winner.host, now));
        }
    }

    /// Periodic checks: election end, lost master, isolation, leases and fencing, the master's work.
    fn evaluate(&mut self, now: Time) {
        if self.role() == Role::Starting {
            self.maybe_leave_starting(now);
        }
        if let Role::Slave { .. } = self.role()
            && self
                .role
                .master_heard()
                .is_none_or(|t| now.since(t) >= self.t.master_lost_after)
        {
            self.become_candidate(now, "master lost");
        }
        if self.role() == Role::Candidate {
            self.evaluate_election(now);
        }
        self.check_found_copies(now);
        self.evaluate_isolation(now);
        self.evaluate_storage_loss(now);
        self.evaluate_leases(now);
        self.evaluate_storage_resume(now);
        if self.role.master().is_some() {
            self.master_evaluate(now);
        }
    }
}
