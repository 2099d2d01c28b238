//! Typed events out of the core: everything an operator wants to know, with the subject and the reason.
//! The emitting host is implicit (the driver that polled it knows); the runtime logs each as one line,
//! the simulator records them in its trace, the management plane stores them.
//!
//! An event has one rendering for people, its `Display` ("host-3 declared dead: ..."), used by the
//! logs, `fdm-agent status`, the demo and, through the master's report, the management plane; and
//! its structured fields ([`Event::fields`]) for machines (JSON logs, the shim's event store). `Debug`
//! stays the developer's view (the simulator's trace).

use heartbeat_fs::{DatastoreId, Epoch, HostId, VmId};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The agent's role in its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Just started: reading the datastores and the hypervisor inventory.
    Starting,
    /// No master heard: standing in an election.
    Candidate,
    Slave {
        master: HostId,
    },
    Master,
    /// Heard nobody and cannot reach any isolation address.
    Isolated,
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Candidate => "candidate",
            Role::Slave { .. } => "slave",
            Role::Master => "master",
            Role::Isolated => "isolated",
        }
    }
}

/// The role's name, and for a slave whose: `slave of host-2`.
impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Slave { master } => write!(f, "slave of {master}"),
            r => f.write_str(r.name()),
        }
    }
}

/// The master's verdict on another host (rules in `docs/protocol.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    /// Network heartbeats arrive.
    Alive,
    /// Network heartbeats stopped; the datastores are being checked.
    Unreachable,
    /// Network lost, datastore heartbeat advancing, not isolated: alive in another partition.
    Partitioned,
    /// Network lost, datastore heartbeat advancing with the isolated flag.
    Isolated,
    /// Network lost, both its leases expired on every shared datastore, no answer to the probe.
    Dead,
}

impl Verdict {
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Alive => "alive",
            Verdict::Unreachable => "unreachable",
            Verdict::Partitioned => "partitioned",
            Verdict::Isolated => "isolated",
            Verdict::Dead => "dead",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    RoleChanged {
        from: Role,
        to: Role,
        reason: String,
    },
    ElectionWon {
        reachable_datastores: u32,
        candidates: u32,
    },
    /// This master met a better one and steps down to it.
    Yielded {
        to: HostId,
    },
    VerdictChanged {
        subject: HostId,
        from: Verdict,
        to: Verdict,
        reason: String,
    },
    IsolationDeclared,
    IsolationEnded,
    IsolationResponseApplied {
        vm: VmId,
        response: heartbeat_fs::records::IsolationResponse,
    },
    /// Isolated, but no master holds the claim of the VM's home datastore: nobody could restart
    /// it, so it keeps running (re-checked until a master appears or the isolation ends).
    IsolationResponseDeferred {
        vm: VmId,
        datastore: DatastoreId,
    },
    /// Master: an operator asked HA to stop the VM; the stop went to the host running it.
    OperatorStopSent {
        vm: VmId,
        host: HostId,
    },
    /// Master: the VM an operator asked HA to stop runs nowhere now; it stays off until started.
    OperatorStopDone {
        vm: VmId,
    },
    /// This host stops the VM because the master passed on an operator's stop.
    StoppingForOperator {
        vm: VmId,
    },
    /// This host lost the VM's home datastore for longer than `storage_loss_timeout_ms` and the
    /// VM's `storage_loss_response` is power-off: it stops the VM for the master to restart where
    /// the datastore is reachable.
    StorageLossResponseApplied {
        vm: VmId,
        datastore: DatastoreId,
    },
    /// This host lost the VM's home datastore for longer than `storage_loss_timeout_ms` and the
    /// VM's `storage_loss_response` is pause: the VM is frozen (it keeps its memory, its disks and
    /// this host's leases) until the datastore works again here.
    StorageLossPaused {
        vm: VmId,
        datastore: DatastoreId,
    },
    /// The datastore works again at this host and the VM paused for its loss was never fenced:
    /// it runs on where it was.
    StorageLossResumed {
        vm: VmId,
        datastore: DatastoreId,
    },
    /// Master: the acknowledgements cover a datastore whose claim it cannot renew (lost by
    /// everyone: a storage outage), because every configured host follows it; or no longer do.
    /// While held, its VMs keep running.
    StorageOutageHold {
        datastore: DatastoreId,
        holding: bool,
    },
    SelfFenced {
        datastore: DatastoreId,
        vms: Vec<VmId>,
    },
    DatastoreLost {
        datastore: DatastoreId,
        error: String,
    },
    DatastoreRestored {
        datastore: DatastoreId,
    },
    ClaimAcquired {
        datastore: DatastoreId,
        epoch: Epoch,
    },
    ClaimLost {
        datastore: DatastoreId,
        epoch: Epoch,
        reason: String,
    },
    /// Master: this VM needs a restart.
    RestartNeeded {
        vm: VmId,
        from: Option<HostId>,
        reason: String,
    },
    /// Master: intent written to the datastore, command sent.
    RestartIssued {
        vm: VmId,
        target: HostId,
        epoch: Epoch,
        attempt: u32,
    },
    /// Master: the VM runs again.
    VmRestarted {
        vm: VmId,
        on: HostId,
        attempt: u32,
    },
    RestartFailed {
        vm: VmId,
        target: HostId,
        attempt: u32,
        error: String,
    },
    /// Master: the target started the VM and an operator (or its guest) stopped it since; the
    /// restart is over and the VM stays off.
    RestartEndedByOperator {
        vm: VmId,
        on: HostId,
    },
    /// Every retry used: reported, kept in the list, tried again when capacity or config changes.
    RestartGaveUp {
        vm: VmId,
        attempts: u32,
    },
    /// Master: the VM crashed again after `restarts` restarts within its restart limit's window
    /// (`window_ms`); it is failed and HA leaves it alone until an operator clears it.
    RestartLimitReached {
        vm: VmId,
        restarts: u32,
        window_ms: u64,
    },
    /// Master: an operator cleared the VM; its counted restarts are forgotten and, if failed, it
    /// is restarted as any lost VM.
    RestartLimitCleared {
        vm: VmId,
    },
    /// No host can take it now; it waits.
    NoCapacity {
        vm: VmId,
    },
    /// A placement had to break an anti-affinity rule.
    AntiAffinityBroken {
        vm: VmId,
        host: HostId,
        group: String,
    },
    /// Target host: a power-on command did not match the datastore's claim or intent.
    PowerOnRefused {
        vm: VmId,
        from: HostId,
        reason: String,
    },
    /// Target host: started a VM on a master's command.
    PoweredOn {
        vm: VmId,
        attempt: u32,
    },
    /// Host adopted a VM found running at start (agent restart, upgrade).
    Adopted {
        vm: VmId,
    },
    /// Found running at the agent's start while the cluster holds the VM elsewhere (`placed_on`,
    /// or a start in flight to `placed_on`): a stale copy, powered off and undefined.
    StaleCopyFound {
        vm: VmId,
        placed_on: HostId,
    },
    /// Master: the VM is reported running on `host` and on `kept`; `host`'s copy is told to stop.
    DuplicateCopyStopSent {
        vm: VmId,
        host: HostId,
        kept: HostId,
    },
    /// This host powers off its copy of the VM at the master's word: another host runs it.
    StoppingStaleCopy {
        vm: VmId,
    },
    ConfigApplied {
        generation: u64,
    },
    ConfigRejected {
        generation: u64,
        reason: String,
    },
    /// HA is paused: this action was not taken.
    ActionSuppressed {
        what: String,
    },
}

/// The structured fields of an event, for machines: JSON logs, the master's report, the shim's
/// event store. Each is set where the event names it and `None` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFields<'a> {
    /// The event's own name, kebab-case (`restart-issued`): the precise filter.
    pub name: &'static str,
    /// The coarse group the management plane shows and filters by (`restart`, `verdict`, ...).
    pub kind: &'static str,
    /// The host the event is about (the judged host, a restart's target, where a VM ran), not the
    /// host that emitted it.
    pub host: Option<HostId>,
    pub vm: Option<VmId>,
    pub datastore: Option<DatastoreId>,
    /// The new verdict of a verdict change.
    pub verdict: Option<Verdict>,
    /// Why, where the event says: a verdict's or a role change's reason, a lost claim's, an error.
    pub reason: Option<&'a str>,
}

impl Event {
    /// The event's name, kebab-case: what `Debug` would print before the fields, without them.
    pub fn name(&self) -> &'static str {
        match self {
            Event::RoleChanged { .. } => "role-changed",
            Event::ElectionWon { .. } => "election-won",
            Event::Yielded { .. } => "yielded",
            Event::VerdictChanged { .. } => "verdict-changed",
            Event::IsolationDeclared => "isolation-declared",
            Event::IsolationEnded => "isolation-ended",
            Event::IsolationResponseApplied { .. } => "isolation-response-applied",
            Event::IsolationResponseDeferred { .. } => "isolation-response-deferred",
            Event::OperatorStopSent { .. } => "operator-stop-sent",
            Event::OperatorStopDone { .. } => "operator-stop-done",
            Event::StoppingForOperator { .. } => "stopping-for-operator",
            Event::StorageLossResponseApplied { .. } => "storage-loss-response-applied",
            Event::StorageLossPaused { .. } => "storage-loss-paused",
            Event::StorageLossResumed { .. } => "storage-loss-resumed",
            Event::StorageOutageHold { .. } => "storage-outage-hold",
            Event::SelfFenced { .. } => "self-fenced",
            Event::DatastoreLost { .. } => "datastore-lost",
            Event::DatastoreRestored { .. } => "datastore-restored",
            Event::ClaimAcquired { .. } => "claim-acquired",
            Event::ClaimLost { .. } => "claim-lost",
            Event::RestartNeeded { .. } => "restart-needed",
            Event::RestartIssued { .. } => "restart-issued",
            Event::VmRestarted { .. } => "vm-restarted",
            Event::RestartFailed { .. } => "restart-failed",
            Event::RestartEndedByOperator { .. } => "restart-ended-by-operator",
            Event::RestartGaveUp { .. } => "restart-gave-up",
            Event::RestartLimitReached { .. } => "restart-limit-reached",
            Event::RestartLimitCleared { .. } => "restart-limit-cleared",
            Event::NoCapacity { .. } => "no-capacity",
            Event::AntiAffinityBroken { .. } => "anti-affinity-broken",
            Event::PowerOnRefused { .. } => "power-on-refused",
            Event::PoweredOn { .. } => "powered-on",
            Event::Adopted { .. } => "adopted",
            Event::StaleCopyFound { .. } => "stale-copy-found",
            Event::DuplicateCopyStopSent { .. } => "duplicate-copy-stop-sent",
            Event::StoppingStaleCopy { .. } => "stopping-stale-copy",
            Event::ConfigApplied { .. } => "config-applied",
            Event::ConfigRejected { .. } => "config-rejected",
            Event::ActionSuppressed { .. } => "action-suppressed",
        }
    }

    /// Short machine-readable kind, as the management plane shows it.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RoleChanged { .. } | Event::ElectionWon { .. } | Event::Yielded { .. } => "role",
            Event::VerdictChanged { .. } => "verdict",
            Event::IsolationDeclared
            | Event::IsolationEnded
            | Event::IsolationResponseApplied { .. }
            | Event::IsolationResponseDeferred { .. } => "isolation",
            Event::SelfFenced { .. } => "fence",
            Event::StorageOutageHold { .. }
            | Event::StorageLossResponseApplied { .. }
            | Event::StorageLossPaused { .. }
            | Event::StorageLossResumed { .. } => "datastore",
            Event::DatastoreLost { .. }
            | Event::DatastoreRestored { .. }
            | Event::ClaimAcquired { .. }
            | Event::ClaimLost { .. } => "datastore",
            Event::RestartNeeded { .. }
            | Event::RestartIssued { .. }
            | Event::VmRestarted { .. }
            | Event::RestartFailed { .. }
            | Event::RestartGaveUp { .. }
            | Event::RestartEndedByOperator { .. }
            | Event::RestartLimitReached { .. }
            | Event::RestartLimitCleared { .. }
            | Event::NoCapacity { .. }
            | Event::AntiAffinityBroken { .. } => "restart",
            Event::PowerOnRefused { .. } | Event::PoweredOn { .. } | Event::Adopted { .. } => "vm",
            Event::StaleCopyFound { .. }
            | Event::DuplicateCopyStopSent { .. }
            | Event::StoppingStaleCopy { .. } => "stale-copy",
            Event::OperatorStopSent { .. }
            | Event::OperatorStopDone { .. }
            | Event::StoppingForOperator { .. } => "operator",
            Event::ConfigApplied { .. } | Event::ConfigRejected { .. } => "config",
            Event::ActionSuppressed { .. } => "suppressed",
        }
    }

    /// The host and the VM the event is about, where it names them.
    pub fn subject(&self) -> (Option<HostId>, Option<VmId>) {
        let f = self.fields();
        (f.host, f.vm)
    }

    /// Every structured field of the event (see [`EventFields`]).
    #[allow(
        clippy::too_many_lines,
        reason = "one arm per event kind: the fields of all kinds read best side by side"
    )]
    pub fn fields(&self) -> EventFields<'_> {
        let mut f = EventFields {
            name: self.name(),
            kind: self.kind(),
            host: None,
            vm: None,
            datastore: None,
            verdict: None,
            reason: None,
        };
        match self {
            Event::RoleChanged { reason, .. } => f.reason = Some(reason),
            Event::ElectionWon { .. }
            | Event::IsolationDeclared
            | Event::IsolationEnded
            | Event::ConfigApplied { .. }
            | Event::ActionSuppressed { .. } => {}
            Event::Yielded { to } => f.host = Some(*to),
            Event::VerdictChanged {
                subject,
                to,
                reason,
                ..
            } => {
                f.host = Some(*subject);
                f.verdict = Some(*to);
                f.reason = Some(reason);
            }
            Event::IsolationResponseApplied { vm, .. }
            | Event::OperatorStopDone { vm }
            | Event::StoppingForOperator { vm }
            | Event::RestartGaveUp { vm, .. }
            | Event::RestartLimitReached { vm, .. }
            | Event::RestartLimitCleared { vm }
            | Event::NoCapacity { vm }
            | Event::PoweredOn { vm, .. }
            | Event::Adopted { vm }
            | Event::StoppingStaleCopy { vm } => f.vm = Some(*vm),
            Event::IsolationResponseDeferred { vm, datastore }
            | Event::StorageLossResponseApplied { vm, datastore }
            | Event::StorageLossPaused { vm, datastore }
            | Event::StorageLossResumed { vm, datastore } => {
                f.vm = Some(*vm);
                f.datastore = Some(*datastore);
            }
            Event::StorageOutageHold { datastore, .. }
            | Event::SelfFenced { datastore, .. }
            | Event::DatastoreRestored { datastore }
            | Event::ClaimAcquired { datastore, .. } => f.datastore = Some(*datastore),
            Event::DatastoreLost { datastore, error } => {
                f.datastore = Some(*datastore);
                f.reason = Some(error);
            }
            Event::ClaimLost {
                datastore, reason, ..
            } => {
                f.datastore = Some(*datastore);
                f.reason = Some(reason);
            }
            Event::StaleCopyFound { vm, placed_on } => {
                f.host = Some(*placed_on);
                f.vm = Some(*vm);
            }
            Event::DuplicateCopyStopSent { vm, host, .. }
            | Event::AntiAffinityBroken { vm, host, .. }
            | Event::OperatorStopSent { vm, host } => {
                f.host = Some(*host);
                f.vm = Some(*vm);
            }
            Event::RestartNeeded { vm, from, reason } => {
                f.host = *from;
                f.vm = Some(*vm);
                f.reason = Some(reason);
            }
            Event::RestartIssued { vm, target, .. } => {
                f.host = Some(*target);
                f.vm = Some(*vm);
            }
            Event::RestartFailed {
                vm, target, error, ..
            } => {
                f.host = Some(*target);
                f.vm = Some(*vm);
                f.reason = Some(error);
            }
            Event::VmRestarted { vm, on, .. } | Event::RestartEndedByOperator { vm, on } => {
                f.host = Some(*on);
                f.vm = Some(*vm);
            }
            Event::PowerOnRefused { vm, from, reason } => {
                f.host = Some(*from);
                f.vm = Some(*vm);
                f.reason = Some(reason);
            }
            Event::ConfigRejected { reason, .. } => f.reason = Some(reason),
        }
        f
    }
}

/// `n thing` or `n things`.
pub(crate) fn count(n: u32, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// A span of milliseconds in the largest unit that keeps it readable: `800 ms`, `45 s`, `30 min`,
/// `6 h`.
fn span(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 if ms.is_multiple_of(1_000) => format!("{} s", ms / 1_000),
        1_000..120_000 => format!("{:.1} s", ms as f64 / 1_000.0),
        120_000..7_200_000 => format!("{} min", ms / 60_000),
        _ => format!("{} h", ms / 3_600_000),
    }
}

/// A list of VMs in words: `vm-1, vm-2`, or `none`.
fn vm_list(vms: &[VmId]) -> String {
    if vms.is_empty() {
        return "none".into();
    }
    vms.iter()
        .map(VmId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The one rendering of an event for people, in the operator's words (`docs/operations.md`, "Read
/// the logs"). The emitting host is not named: the log line, `fdm-agent status` and the shim's
/// event list already say whose event it is.
impl fmt::Display for Event {
    #[allow(
        clippy::too_many_lines,
        reason = "one arm per event kind: every sentence an operator reads, in one place"
    )]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::RoleChanged { from, to, reason } => {
                write!(f, "role changed from {from} to {to}: {reason}")
            }
            Event::ElectionWon {
                reachable_datastores,
                candidates,
            } => write!(
                f,
                "won the election ({} reachable, {})",
                count(*reachable_datastores, "datastore"),
                count(*candidates, "candidate")
            ),
            Event::Yielded { to } => write!(f, "stepping down: {to} is a better master"),
            Event::VerdictChanged {
                subject,
                from,
                to,
                reason,
            } => write!(f, "{subject} declared {to}: {reason} (was {from})"),
            Event::IsolationDeclared => f.write_str(
                "this host is isolated: it hears no other agent and no isolation address answers",
            ),
            Event::IsolationEnded => f.write_str("isolation ended: the network is back"),
            Event::IsolationResponseApplied { vm, response } => {
                write!(f, "isolation response {response} applied to {vm}")
            }
            Event::IsolationResponseDeferred { vm, datastore } => write!(
                f,
                "{vm} keeps running although this host is isolated: no master holds the claim of \
                 {datastore}, so nobody could restart it"
            ),
            Event::OperatorStopSent { vm, host } => {
                write!(f, "operator's stop of {vm} sent to {host}")
            }
            Event::OperatorStopDone { vm } => write!(
                f,
                "{vm} stopped as an operator asked; it stays off until started"
            ),
            Event::StoppingForOperator { vm } => {
                write!(f, "stopping {vm}: an operator asked HA to stop it")
            }
            Event::StorageLossResponseApplied { vm, datastore } => write!(
                f,
                "{vm} powered off: {datastore} lost here for longer than the storage-loss timeout \
                 (the master restarts it where {datastore} works)"
            ),
            Event::StorageLossPaused { vm, datastore } => write!(
                f,
                "{vm} paused: {datastore} lost here for longer than the storage-loss timeout"
            ),
            Event::StorageLossResumed { vm, datastore } => {
                write!(f, "{vm} resumed: {datastore} works again")
            }
            Event::StorageOutageHold {
                datastore,
                holding: true,
            } => write!(
                f,
                "storage outage on {datastore}: no master can claim it, every host follows the \
                 master, so its VMs keep running"
            ),
            Event::StorageOutageHold {
                datastore,
                holding: false,
            } => write!(f, "storage outage hold on {datastore} ended"),
            Event::SelfFenced { datastore, vms } => write!(
                f,
                "fenced: lost every lease covering the VMs of {datastore}, powered off {}",
                vm_list(vms)
            ),
            Event::DatastoreLost { datastore, error } => {
                write!(f, "{datastore} lost: {error}")
            }
            Event::DatastoreRestored { datastore } => write!(f, "{datastore} works again"),
            Event::ClaimAcquired { datastore, epoch } => {
                write!(f, "claimed {datastore} (epoch {})", epoch.0)
            }
            Event::ClaimLost {
                datastore,
                epoch,
                reason,
            } => write!(f, "claim of {datastore} lost (epoch {}): {reason}", epoch.0),
            Event::RestartNeeded {
                vm,
                from: Some(host),
                reason,
            } => write!(f, "{vm} needs a restart (was on {host}): {reason}"),
            Event::RestartNeeded {
                vm,
                from: None,
                reason,
            } => write!(f, "{vm} needs a restart: {reason}"),
            Event::RestartIssued {
                vm,
                target,
                epoch,
                attempt,
            } => write!(
                f,
                "restarting {vm} on {target} (attempt {attempt}, epoch {})",
                epoch.0
            ),
            Event::VmRestarted { vm, on, attempt } => {
                write!(f, "{vm} restarted on {on} (attempt {attempt})")
            }
            Event::RestartFailed {
                vm,
                target,
                attempt,
                error,
            } => write!(
                f,
                "restart of {vm} on {target} failed (attempt {attempt}): {error}"
            ),
            Event::RestartEndedByOperator { vm, on } => write!(
                f,
                "{vm} was restarted on {on} and stopped since by an operator or its guest; it \
                 stays off"
            ),
            Event::RestartGaveUp { vm, attempts } => write!(
                f,
                "gave up restarting {vm} after {}; tried again when capacity or the \
                 configuration changes",
                count(*attempts, "attempt")
            ),
            Event::RestartLimitReached {
                vm,
                restarts,
                window_ms,
            } => write!(
                f,
                "{vm} failed: it crashed again after {} within {}; HA leaves it alone until \
                 cleared (fdmctl vm clear)",
                count(*restarts, "restart"),
                span(*window_ms)
            ),
            Event::RestartLimitCleared { vm } => write!(
                f,
                "{vm} cleared by an operator: its counted restarts are forgotten"
            ),
            Event::NoCapacity { vm } => write!(f, "{vm} waits: no host can take it now"),
            Event::AntiAffinityBroken { vm, host, group } => write!(
                f,
                "{vm} placed on {host} against its anti-affinity group {group}"
            ),
            Event::PowerOnRefused { vm, from, reason } => {
                write!(f, "refused to power on {vm} for {from}: {reason}")
            }
            Event::PoweredOn { vm, attempt } => {
                write!(f, "powered on {vm} (attempt {attempt})")
            }
            Event::Adopted { vm } => write!(f, "adopted {vm}, found running at start"),
            Event::StaleCopyFound { vm, placed_on } => write!(
                f,
                "stale copy of {vm} found at start (the cluster runs it on {placed_on}): \
                 powered off and undefined"
            ),
            Event::DuplicateCopyStopSent { vm, host, kept } => write!(
                f,
                "{vm} runs on {host} and {kept}: told {host} to stop its copy, keeping {kept}'s"
            ),
            Event::StoppingStaleCopy { vm } => {
                write!(f, "stopping this host's copy of {vm}: another host runs it")
            }
            Event::ConfigApplied { generation } => {
                write!(f, "configuration generation {generation} applied")
            }
            Event::ConfigRejected { generation, reason } => {
                write!(
                    f,
                    "configuration generation {generation} rejected: {reason}"
                )
            }
            Event::ActionSuppressed { what } => write!(f, "HA is paused, not done: {what}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heartbeat_fs::records::IsolationResponse;

    /// Rust debug text that must never reach an operator.
    const DEBUG_MARKS: [&str; 10] = [
        "HostId(",
        "VmId(",
        "DatastoreId(",
        "Epoch(",
        "Time(",
        "Some(",
        "None",
        "{",
        "}",
        "\"",
    ];

    /// One event of every variant. The match makes a new variant a compile error here until it
    /// has an example (and so a rendering checked below).
    #[allow(clippy::too_many_lines, reason = "one example per event kind")]
    fn one_of_each() -> Vec<Event> {
        let (h, v, d) = (HostId(3), VmId(4), DatastoreId(1));
        let all = vec![
            Event::RoleChanged {
                from: Role::Candidate,
                to: Role::Slave { master: HostId(1) },
                reason: "master found".into(),
            },
            Event::ElectionWon {
                reachable_datastores: 2,
                candidates: 1,
            },
            Event::Yielded { to: h },
            Event::VerdictChanged {
                subject: h,
                from: Verdict::Unreachable,
                to: Verdict::Dead,
                reason: "network and datastore heartbeats stopped, leases expired, no probe answer"
                    .into(),
            },
            Event::IsolationDeclared,
            Event::IsolationEnded,
            Event::IsolationResponseApplied {
                vm: v,
                response: IsolationResponse::Shutdown,
            },
            Event::IsolationResponseDeferred {
                vm: v,
                datastore: d,
            },
            Event::OperatorStopSent { vm: v, host: h },
            Event::OperatorStopDone { vm: v },
            Event::StoppingForOperator { vm: v },
            Event::StorageLossResponseApplied {
                vm: v,
                datastore: d,
            },
            Event::StorageLossPaused {
                vm: v,
                datastore: d,
            },
            Event::StorageLossResumed {
                vm: v,
                datastore: d,
            },
            Event::StorageOutageHold {
                datastore: d,
                holding: true,
            },
            Event::StorageOutageHold {
                datastore: d,
                holding: false,
            },
            Event::SelfFenced {
                datastore: d,
                vms: vec![v, VmId(5)],
            },
            Event::SelfFenced {
                datastore: d,
                vms: vec![],
            },
            Event::DatastoreLost {
                datastore: d,
                error: "io: stale file handle".into(),
            },
            Event::DatastoreRestored { datastore: d },
            Event::ClaimAcquired {
                datastore: d,
                epoch: Epoch(7),
            },
            Event::ClaimLost {
                datastore: d,
                epoch: Epoch(7),
                reason: "taken over".into(),
            },
            Event::RestartNeeded {
                vm: v,
                from: Some(h),
                reason: "host dead".into(),
            },
            Event::RestartNeeded {
                vm: v,
                from: None,
                reason: "protected but running nowhere".into(),
            },
            Event::RestartIssued {
                vm: v,
                target: HostId(1),
                epoch: Epoch(7),
                attempt: 1,
            },
            Event::VmRestarted {
                vm: v,
                on: HostId(1),
                attempt: 1,
            },
            Event::RestartFailed {
                vm: v,
                target: HostId(1),
                attempt: 2,
                error: "hypervisor: no such image".into(),
            },
            Event::RestartEndedByOperator {
                vm: v,
                on: HostId(1),
            },
            Event::RestartGaveUp { vm: v, attempts: 4 },
            Event::RestartLimitReached {
                vm: v,
                restarts: 3,
                window_ms: 1_800_000,
            },
            Event::RestartLimitCleared { vm: v },
            Event::NoCapacity { vm: v },
            Event::AntiAffinityBroken {
                vm: v,
                host: h,
                group: "web".into(),
            },
            Event::PowerOnRefused {
                vm: v,
                from: HostId(2),
                reason: "intent names another master".into(),
            },
            Event::PoweredOn { vm: v, attempt: 1 },
            Event::Adopted { vm: v },
            Event::StaleCopyFound {
                vm: v,
                placed_on: HostId(2),
            },
            Event::DuplicateCopyStopSent {
                vm: v,
                host: h,
                kept: HostId(2),
            },
            Event::StoppingStaleCopy { vm: v },
            Event::ConfigApplied { generation: 5 },
            Event::ConfigRejected {
                generation: 6,
                reason: "host-9 is not configured".into(),
            },
            Event::ActionSuppressed {
                what: "restart of vm-4".into(),
            },
        ];
        for e in &all {
            match e {
                Event::RoleChanged { .. }
                | Event::ElectionWon { .. }
                | Event::Yielded { .. }
                | Event::VerdictChanged { .. }
                | Event::IsolationDeclared
                | Event::IsolationEnded
                | Event::IsolationResponseApplied { .. }
                | Event::IsolationResponseDeferred { .. }
                | Event::OperatorStopSent { .. }
                | Event::OperatorStopDone { .. }
                | Event::StoppingForOperator { .. }
                | Event::StorageLossResponseApplied { .. }
                | Event::StorageLossPaused { .. }
                | Event::StorageLossResumed { .. }
                | Event::StorageOutageHold { .. }
                | Event::SelfFenced { .. }
                | Event::DatastoreLost { .. }
                | Event::DatastoreRestored { .. }
                | Event::ClaimAcquired { .. }
                | Event::ClaimLost { .. }
                | Event::RestartNeeded { .. }
                | Event::RestartIssued { .. }
                | Event::VmRestarted { .. }
                | Event::RestartFailed { .. }
                | Event::RestartEndedByOperator { .. }
                | Event::RestartGaveUp { .. }
                | Event::RestartLimitReached { .. }
                | Event::RestartLimitCleared { .. }
                | Event::NoCapacity { .. }
                | Event::AntiAffinityBroken { .. }
                | Event::PowerOnRefused { .. }
                | Event::PoweredOn { .. }
                | Event::Adopted { .. }
                | Event::StaleCopyFound { .. }
                | Event::DuplicateCopyStopSent { .. }
                | Event::StoppingStaleCopy { .. }
                | Event::ConfigApplied { .. }
                | Event::ConfigRejected { .. }
                | Event::ActionSuppressed { .. } => {}
            }
        }
        all
    }

    #[test]
    fn every_event_renders_in_plain_words() {
        let all = one_of_each();
        let names: std::collections::BTreeSet<&str> = all.iter().map(Event::name).collect();
        assert_eq!(names.len(), 39, "one example of every variant: {names:?}");
        for e in &all {
            let text = e.to_string();
            for mark in DEBUG_MARKS {
                assert!(
                    !text.contains(mark),
                    "{} renders {mark:?}: {text}",
                    e.name()
                );
            }
            assert!(!text.is_empty() && !text.ends_with(' '), "{text:?}");
            // Ids as operators write them.
            let f = e.fields();
            for id in [
                f.host.map(|h| h.to_string()),
                f.vm.map(|v| v.to_string()),
                f.datastore.map(|d| d.to_string()),
            ]
            .into_iter()
            .flatten()
            {
                assert!(text.contains(&id), "{text:?} does not name {id}");
            }
            if let Some(r) = f.reason {
                assert!(text.contains(r), "{text:?} does not give its reason {r:?}");
            }
        }
    }

    #[test]
    fn renderings_read_as_the_operator_guide_shows_them() {
        let all = one_of_each();
        let text = |name: &str| {
            all.iter()
                .find(|e| e.name() == name)
                .map(Event::to_string)
                .unwrap_or_default()
        };
        assert_eq!(
            text("verdict-changed"),
            "host-3 declared dead: network and datastore heartbeats stopped, leases expired, no \
             probe answer (was unreachable)"
        );
        assert_eq!(text("vm-restarted"), "vm-4 restarted on host-1 (attempt 1)");
        assert_eq!(
            text("role-changed"),
            "role changed from candidate to slave of host-1: master found"
        );
        assert_eq!(
            text("restart-issued"),
            "restarting vm-4 on host-1 (attempt 1, epoch 7)"
        );
        assert!(text("restart-limit-reached").contains("3 restarts within 30 min"));
        assert!(text("election-won").contains("2 datastores reachable, 1 candidate"));
    }

    #[test]
    fn fields_name_what_the_event_is_about() {
        let e = Event::VerdictChanged {
            subject: HostId(3),
            from: Verdict::Alive,
            to: Verdict::Unreachable,
            reason: "network lease not yet expired".into(),
        };
        assert_eq!(
            e.fields(),
            EventFields {
                name: "verdict-changed",
                kind: "verdict",
                host: Some(HostId(3)),
                vm: None,
                datastore: None,
                verdict: Some(Verdict::Unreachable),
                reason: Some("network lease not yet expired"),
            }
        );
        let f = Event::StorageLossPaused {
            vm: VmId(4),
            datastore: DatastoreId(2),
        }
        .fields();
        assert_eq!(
            (f.host, f.vm, f.datastore, f.kind),
            (None, Some(VmId(4)), Some(DatastoreId(2)), "datastore")
        );
        let e = Event::RestartNeeded {
            vm: VmId(4),
            from: Some(HostId(2)),
            reason: "host dead".into(),
        };
        assert_eq!(e.subject(), (Some(HostId(2)), Some(VmId(4))));
        assert_eq!(e.fields().reason, Some("host dead"));
    }

    #[test]
    fn spans_and_counts_read_naturally() {
        assert_eq!(span(800), "800 ms");
        assert_eq!(span(45_000), "45 s");
        assert_eq!(span(1_500), "1.5 s");
        assert_eq!(span(1_800_000), "30 min");
        assert_eq!(span(86_400_000), "24 h");
        assert_eq!(count(1, "attempt"), "1 attempt");
        assert_eq!(count(0, "attempt"), "0 attempts");
        assert_eq!(vm_list(&[]), "none");
    }
}
