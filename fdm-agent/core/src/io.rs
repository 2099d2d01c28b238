//! What goes into the core and what comes out, besides datastore operations (`heartbeat_fs::ops`).

use super::events::Event;
use heartbeat_fs::ops::DsRequest;
use heartbeat_fs::{HostId, VmId};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A datagram to send. The runtime maps the host id to its address from the cluster configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: HostId,
    pub payload: Vec<u8>,
}

/// Why the agent asks the hypervisor to stop a VM (kept in logs and reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopCause {
    /// Isolation response.
    Isolation,
    /// Both leases lapsed: self-fencing.
    Fence,
    /// The master refused or cancelled a power-on that had started.
    Abort,
    /// An operator asked HA to stop it (`fdmctl vm stop`): it ends stopped by the user.
    Operator,
    /// The VM's home datastore was lost at this host for longer than `storage_loss_timeout_ms` and
    /// its `storage_loss_response` is power-off: the master restarts it where the storage is.
    StorageLoss,
    /// A copy the cluster does not hold here: found running at the agent's start (a libvirt
    /// autostart, an agent that died without its watchdog) while the protected list places the VM
    /// on another host or a start of it elsewhere is in flight, or named by the master as the
    /// second copy of a VM reported on two hosts. Powered off hard (it shares its disks with the
    /// copy the cluster keeps) and its definition removed, so that no later boot brings it back.
    StaleCopy,
}

/// A request to this host's hypervisor driver. Every action is answered by a
/// [`HypervisorEvent`] carrying the same `op` number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HypervisorAction {
    /// Define (from `definition`) if needed, then start.
    PowerOn {
        op: u64,
        vm: VmId,
        definition: String,
    },
    /// Hard power-off.
    PowerOff { op: u64, vm: VmId, cause: StopCause },
    /// Clean guest shutdown; the driver powers off hard when `timeout` passes.
    Shutdown {
        op: u64,
        vm: VmId,
        timeout: Duration,
        cause: StopCause,
    },
    /// List what runs on this host now (answered by `Inventory`), used at start to adopt VMs.
    List { op: u64 },
    /// Freeze the VM where it stands (libvirt `suspend`, `SIGSTOP` for a process): the storage-loss
    /// response `pause`. A paused VM keeps its memory and its disks, so it is still a running VM
    /// for every safety purpose. Answered by `PauseResult`; pausing a paused VM succeeds.
    Pause { op: u64, vm: VmId },
    /// Let a VM paused by `Pause` run on (libvirt `resume`, `SIGCONT`). Answered by
    /// `ResumeResult`; resuming a VM that is not paused succeeds, one that is not running fails
    /// (a resume never starts anything).
    Resume { op: u64, vm: VmId },
}

/// What the hypervisor says about a VM on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmRunState {
    /// Being started by this agent.
    PoweringOn,
    Running,
    /// Stopped by an operator or by the guest itself (a clean guest shutdown).
    StoppedByUser,
    /// Crashed (QEMU died, guest panic with destroy-on-crash, process exited non-zero).
    Crashed,
    /// Stopped by this agent (isolation response, fence).
    StoppedByAgent,
}

impl VmRunState {
    /// In words, as status, reports and logs show it.
    pub fn name(self) -> &'static str {
        match self {
            VmRunState::PoweringOn => "powering on",
            VmRunState::Running => "running",
            VmRunState::StoppedByUser => "stopped by user",
            VmRunState::Crashed => "crashed",
            VmRunState::StoppedByAgent => "stopped by agent",
        }
    }
}

impl std::fmt::Display for VmRunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HypervisorEvent {
    /// Answer to `PowerOn`.
    PowerOnResult {
        op: u64,
        vm: VmId,
        result: Result<(), String>,
    },
    /// Answer to `PowerOff` / `Shutdown`: the VM is not running any more (or the driver failed).
    PowerOffResult {
        op: u64,
        vm: VmId,
        result: Result<(), String>,
    },
    /// Answer to `Pause`: the VM is frozen (`Ok`), or the driver failed and it may run on.
    PauseResult {
        op: u64,
        vm: VmId,
        result: Result<(), String>,
    },
    /// Answer to `Resume`: the VM runs on (`Ok`), or the driver failed and it may still be frozen.
    ResumeResult {
        op: u64,
        vm: VmId,
        result: Result<(), String>,
    },
    /// Answer to `List`: every VM the hypervisor runs now.
    Inventory { op: u64, running: Vec<VmId> },
    /// A VM stopped without the agent asking (crash, operator, guest shutdown).
    VmStopped { vm: VmId, state: VmRunState },
    /// A VM started without the agent asking (operator).
    VmStarted { vm: VmId },
}

/// Commands from the operator (local status socket or the management plane).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorCommand {
    /// Enter or leave maintenance mode for this host.
    Maintenance(bool),
    /// Stop the agent: a master hands its claims over first.
    Shutdown,
}

/// Everything the core asks its driver to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Transmit(Transmit),
    Datastore(DsRequest),
    Hypervisor(HypervisorAction),
    /// Ping the isolation addresses; answer with `Agent::handle_isolation_check`.
    CheckIsolation,
    /// Ping this host's management address (liveness probe); answer with `Agent::handle_probe`.
    Probe {
        host: HostId,
    },
    /// Every lease that covers a running VM is live: the watchdog may be kicked.
    KickWatchdog,
    Event(Event),
}
