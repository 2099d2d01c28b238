//! The protocol's messages: the bodies carried inside the authenticated envelope (`crate::wire`),
//! encoded with postcard. Each must encode to at most `wire::MAX_BODY` bytes; lists that can grow
//! (a host's VMs) travel in numbered parts.

use heartbeat_fs::{DatastoreId, Epoch, VmId};
use serde::{Deserialize, Serialize};

use super::io::VmRunState;

/// One VM as a host reports it to its master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    pub vm: VmId,
    pub state: VmRunState,
}

/// Master -> every configured host, each heartbeat interval. `echo_seq` and `echo_token` are the
/// sequence and token of the last `SlaveHeartbeat` received from the recipient (0: none): the
/// recipient's network lease runs from the moment it sent that heartbeat, and covers VMs on the
/// datastores in `claims` only, or every datastore when `covers_all` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterHeartbeat {
    /// The master's heartbeat round; the slave echoes it back, so the master knows, on its own
    /// clock, when each host last followed it (the storage-outage hold rests on this).
    pub round: u64,
    pub echo_seq: u64,
    pub echo_token: u64,
    pub reachable_datastores: u32,
    pub claims: Vec<(DatastoreId, Epoch)>,
    /// Every configured host follows this master (storage-outage hold, `docs/safety.md`): the
    /// network lease this heartbeat grants covers every datastore, claimed or not.
    pub covers_all: bool,
    /// Ask the recipient for its full VM report (its generation differs from what the master has).
    pub want_vm_report: bool,
    pub config_generation: u64,
}

/// Slave -> its master, each heartbeat interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaveHeartbeat {
    pub seq: u64,
    /// The newest `MasterHeartbeat::round` heard from our master (0: none yet).
    pub echo_round: u64,
    /// `wire::Key::echo_token` of this host, incarnation and `seq`: what the master must echo.
    pub token: u64,
    /// Datastores this host wrote its heartbeat to within the lease time.
    pub reachable: Vec<DatastoreId>,
    pub vm_generation: u64,
    pub maintenance: bool,
    pub config_generation: u64,
}

/// A host without a master stands for election: what the election compares it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidacyNotice {
    pub reachable_datastores: u32,
    /// It is master already (an incumbent answering another candidate).
    pub incumbent: bool,
}

/// A master that steps down hands the role over: `to` becomes master, everyone else follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub to: heartbeat_fs::HostId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A host without a master stands for election (sent to every configured host).
    Candidacy(CandidacyNotice),
    /// Master -> every configured host, each heartbeat interval.
    MasterHeartbeat(MasterHeartbeat),
    /// Slave -> its master, each heartbeat interval.
    SlaveHeartbeat(SlaveHeartbeat),
    /// Slave -> master: the full list of VMs it runs, in parts of at most `VM_REPORT_PART` entries.
    VmReport(VmReport),
    /// Master -> target host: start a VM.
    PowerOn(PowerOnCommand),
    /// Target -> master: how that went.
    PowerOnResult(PowerOnResult),
    /// A master that steps down tells every host whom to follow.
    Yield(Handover),
    /// Master -> the host running a VM: an operator asked HA to stop it (`fdmctl vm stop`), or the
    /// host's copy is the second one of a VM reported on two hosts.
    PowerOff(PowerOffCommand),
}

/// Master -> host: stop this VM. Stopping never starts a second copy, so no claim epoch is
/// needed; the host takes it only from its current master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerOffCommand {
    pub vm: VmId,
    pub reason: PowerOffReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PowerOffReason {
    /// An operator asked (`fdmctl vm stop`): a clean shutdown, then power-off after the shutdown
    /// timeout; the VM ends stopped by the user.
    Operator,
    /// The VM is reported running on two hosts and the master keeps the other copy: a hard
    /// power-off, the definition removed (`StopCause::StaleCopy`).
    StaleCopy,
}

/// Slave -> master: the VMs it runs, part `part` of `parts` of the report at `generation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmReport {
    pub generation: u64,
    pub part: u16,
    pub parts: u16,
    pub vms: Vec<VmStatus>,
}

/// Master -> target host: start `vm` (its home datastore `datastore`) under claim `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerOnCommand {
    pub vm: VmId,
    pub datastore: DatastoreId,
    pub epoch: Epoch,
    pub attempt: u32,
}

/// Target -> master: how a power-on went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerOnResult {
    pub vm: VmId,
    pub attempt: u32,
    /// The VM runs there (now, or already did).
    pub running: bool,
    pub error: Option<String>,
    /// The target started the VM for this very attempt and an operator (or its guest) has stopped
    /// it since: the restart is over, and the VM is off on purpose, not failed. A resent or resumed
    /// command for the attempt must not start it a second time.
    pub stopped_by_operator: bool,
    /// The target's VM report generation once this happened: a report older than this one does
    /// not know about it yet.
    pub vm_generation: u64,
}

/// VMs per `VmReport` part: keeps each part well under the datagram budget.
pub const VM_REPORT_PART: usize = 100;

impl Message {
    /// The envelope's kind byte; pinned by golden tests, never reuse a number.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Candidacy(_) => 1,
            Message::MasterHeartbeat(_) => 2,
            Message::SlaveHeartbeat(_) => 3,
            Message::VmReport(_) => 4,
            Message::PowerOn(_) => 5,
            Message::PowerOnResult { .. } => 6,
            Message::Yield(_) => 7,
            Message::PowerOff(_) => 8,
        }
    }
}
