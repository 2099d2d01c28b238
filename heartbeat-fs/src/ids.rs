//! Identifiers shared by every fdm crate.
//!
//! Numeric on purpose: they sit at fixed offsets in on-disk records and in every datagram, and the
//! simulator handles millions of them. Human names live in the cluster configuration.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A hypervisor host in the cluster. Assigned by the management plane; `0` is never a valid host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostId(pub u32);

/// A shared datastore (a filesystem mounted on several hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DatastoreId(pub u32);

/// A virtual machine protected (or not) by HA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VmId(pub u32);

/// The cluster every record and datagram belongs to, so that two clusters sharing a datastore or a
/// network never read each other's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub u64);

/// Generation of a datastore claim. Every successful acquisition increments it, so a command stamped
/// with an older epoch is recognisably stale.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Epoch(pub u64);

impl HostId {
    /// Marks "no host" in fixed-size records (no master known, claim not held).
    pub const NONE: HostId = HostId(0);
    pub fn is_none(self) -> bool {
        self == Self::NONE
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host-{}", self.0)
    }
}
impl fmt::Display for DatastoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ds-{}", self.0)
    }
}
impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vm-{}", self.0)
    }
}
impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}
impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}
