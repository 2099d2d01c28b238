//! fdm-agent: the HA agent installed on every hypervisor host.
//!
//! `core` is the protocol as a pure state machine (election, heartbeats, verdicts, isolation,
//! self-fencing, claims and failover); `wire` is the authenticated datagram envelope it speaks.
//! The runtime, the hypervisor drivers and the `fdm-agent` binary drive that core on real hosts; the
//! simulator (`fdm-sim`) drives the same core in virtual time.

pub mod core;
pub mod wire;
