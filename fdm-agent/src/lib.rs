//! fdm-agent: the HA agent installed on every hypervisor host.
//!
//! `core` (the crate `fdm-core`, re-exported) is the protocol as a pure state machine (election,
//! heartbeats, verdicts, isolation, self-fencing, claims and failover); `wire` (`fdm_core::wire`) is
//! the authenticated datagram envelope it speaks. `runtime` drives that core on a real host with
//! tokio (UDP, datastore IO off-thread with deadlines, timers, signals), and `driver` holds the
//! hypervisor drivers it acts through; `wait` polls with a limit, for the demo and the tests that
//! watch agents from outside; `cli` is what the command-line tools (`fdm-agent`, and `fdmctl` in
//! `vcenter-shim`) print and how. The simulator (`fdm-sim`) drives the same core in virtual time, on
//! `fdm-core` without this crate.

pub use fdm_core as core;
pub use fdm_core::wire;

pub mod cli;
pub mod driver;
pub mod runtime;
pub mod wait;
