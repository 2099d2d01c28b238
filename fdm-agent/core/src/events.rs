//! Typed events out of the core: everything an operator wants to know, with the subject and the reason.
//! The emitting host is implicit (the driver that polled it knows); the runtime logs each as one line,
//! the simulator records them in its trace, the management plane stores them.

use heartbeat_fs::{DatastoreId, Epoch, HostId, VmId};
use serde::{Deserialize, Serialize};

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

impl Event {
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
        match self {
            Event::Yielded { to } => (Some(*to), None),
            Event::VerdictChanged { subject, .. } => (Some(*subject), None),
            Event::IsolationResponseApplied { vm, .. }
            | Event::IsolationResponseDeferred { vm, .. }
            | Event::StorageLossResponseApplied { vm, .. }
            | Event::StorageLossPaused { vm, .. }
            | Event::StorageLossResumed { vm, .. }
            | Event::OperatorStopDone { vm }
            | Event::StoppingForOperator { vm }
            | Event::RestartGaveUp { vm, .. }
            | Event::RestartLimitReached { vm, .. }
            | Event::RestartLimitCleared { vm }
            | Event::NoCapacity { vm }
            | Event::PoweredOn { vm, .. }
            | Event::Adopted { vm }
            | Event::StoppingStaleCopy { vm } => (None, Some(*vm)),
            Event::StaleCopyFound { vm, placed_on } => (Some(*placed_on), Some(*vm)),
            Event::DuplicateCopyStopSent { vm, host, .. } => (Some(*host), Some(*vm)),
            Event::RestartNeeded { vm, from, .. } => (*from, Some(*vm)),
            Event::RestartIssued { vm, target, .. } | Event::RestartFailed { vm, target, .. } => {
                (Some(*target), Some(*vm))
            }
            Event::VmRestarted { vm, on, .. } | Event::RestartEndedByOperator { vm, on } => {
                (Some(*on), Some(*vm))
            }
            Event::AntiAffinityBroken { vm, host, .. } => (Some(*host), Some(*vm)),
            Event::OperatorStopSent { vm, host } => (Some(*host), Some(*vm)),
            Event::PowerOnRefused { vm, from, .. } => (Some(*from), Some(*vm)),
            _ => (None, None),
        }
    }
}
