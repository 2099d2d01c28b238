//! fdm-agent: the HA agent installed on every hypervisor host.
//!
//! `core` is the protocol as a pure state machine (election, heartbeats, verdicts, isolation,
//! self-fencing, claims and failover); `wire` is the authenticated datagram envelope it speaks.
//! `runtime` drives that core on a real host with tokio (UDP, datastore IO off-thread with deadlines,
//! timers, signals), and `driver` holds the hypervisor drivers it acts through. The simulator
//! (`fdm-sim`) drives the same core in virtual time.

pub mod core;
pub mod driver;
pub mod runtime;
pub mod wire;
