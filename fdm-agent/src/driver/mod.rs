//! Hypervisor drivers: how an agent starts, stops and lists VMs on its host.
//!
//! One trait, [`Driver`], with blocking calls that the runtime runs off its event loop, and a queue
//! of unsolicited events (a VM crashed or was stopped by an operator) that the runtime drains.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod command;
pub mod libvirt;
pub mod process;

use crate::core::VmRunState;
use heartbeat_fs::VmId;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DriverError {
    #[error("hypervisor unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
    #[error("bad VM definition: {0}")]
    BadDefinition(String),
    /// A hypervisor call that did not answer in time (its child process was killed).
    #[error("{command}: no answer within {:.1} s (killed)", .after.as_secs_f64())]
    Timeout { command: String, after: Duration },
    /// The hypervisor answered something this driver cannot read.
    #[error("{command}: unexpected answer '{output}'")]
    Unexpected { command: String, output: String },
}

/// A stop the driver saw without being asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsolicited {
    pub vm: VmId,
    pub state: VmRunState,
}

pub trait Driver: Send + Sync + std::fmt::Debug {
    /// Define (if needed) and start the VM. Returns once it runs.
    fn power_on(&self, vm: VmId, definition: &str) -> Result<(), DriverError>;
    /// Hard power-off. Succeeds if the VM is not running afterwards (also when it was not running).
    fn power_off(&self, vm: VmId) -> Result<(), DriverError>;
    /// Clean shutdown; hard power-off when `timeout` passes.
    fn shutdown(&self, vm: VmId, timeout: Duration) -> Result<(), DriverError>;
    /// Freeze a running VM where it stands (the storage-loss response `pause`): it keeps its
    /// memory and disks and must still be listed as running. Succeeds if it is paused already;
    /// fails if it does not run.
    fn pause(&self, vm: VmId) -> Result<(), DriverError>;
    /// Let a VM frozen by `pause` run on. Succeeds if it runs and is not paused; fails if it does
    /// not run: a resume never starts anything.
    fn resume(&self, vm: VmId) -> Result<(), DriverError>;
    /// VMs running now.
    fn list(&self) -> Result<Vec<VmId>, DriverError>;
    /// Stops seen since the last call.
    fn take_unsolicited(&self) -> Vec<Unsolicited>;
    /// The VMs of the cluster with their definitions, so that a driver can map its own names back to
    /// VM ids when it lists what runs.
    fn set_known_vms(&self, _vms: &[(VmId, String)]) {}
    /// Remove what could bring a stopped stale copy back (`StopCause::StaleCopy`): libvirt's
    /// domain definition, whose autostart flag or a careless `virsh start` would start it again
    /// while the VM runs elsewhere. Drivers that keep nothing between runs have nothing to do.
    fn discard(&self, _vm: VmId) -> Result<(), DriverError> {
        Ok(())
    }
}
