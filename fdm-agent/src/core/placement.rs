//! Restart placement: which VM goes where, in which order. Pure; the master calls it with a snapshot.
//! (Interface fixed; the planner body is being written.)

use heartbeat_fs::records::{Resources, RestartPriority};
use heartbeat_fs::{DatastoreId, HostId, VmId};
use std::collections::BTreeSet;

/// A host that could take restarted VMs, as the master sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCandidate {
    pub host: HostId,
    pub capacity: Resources,
    /// Reservations of what runs there plus restarts already in flight to it.
    pub used: Resources,
    /// Datastores the host can reach now.
    pub datastores: BTreeSet<DatastoreId>,
    /// A dedicated failover (standby) host: tried first.
    pub failover_host: bool,
    /// Power-ons in flight to this host now.
    pub powering_on: u32,
    /// Anti-affinity groups of the VMs already on this host (one entry per VM).
    pub groups: Vec<String>,
    /// VMs on the host (for spreading).
    pub vm_count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartRequest {
    pub vm: VmId,
    pub home: DatastoreId,
    pub reservation: Resources,
    pub priority: RestartPriority,
    pub depends_on: Vec<VmId>,
    pub anti_affinity_group: Option<String>,
    /// Same-host restart of a crashed VM: this host first.
    pub preferred_host: Option<HostId>,
    /// Hosts this VM must not go to (it failed there on this round).
    pub excluded_hosts: Vec<HostId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanInput {
    pub hosts: Vec<HostCandidate>,
    pub requests: Vec<RestartRequest>,
    /// VMs running now anywhere (dependencies count as met when running).
    pub running: BTreeSet<VmId>,
    /// Cap on power-ons in flight per host.
    pub max_concurrent_per_host: u32,
    /// Orchestrated restart: VMs below this priority wait (a higher group is still starting).
    pub hold_below: Option<RestartPriority>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub vm: VmId,
    pub host: HostId,
    /// The anti-affinity group that could not be honoured, if any.
    pub broke_anti_affinity: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// No host has room (or sees the datastore).
    NoCapacity,
    /// A dependency is still waiting to start.
    Dependency(VmId),
    /// A higher priority group is still starting (orchestrated restart).
    HigherPriority,
    /// Every suitable host is at its concurrent power-on cap.
    HostsBusy,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RestartPlan {
    /// In the order the power-ons should be issued.
    pub placements: Vec<Placement>,
    pub waiting: Vec<(VmId, WaitReason)>,
}

/// Placeholder: places nothing. Replaced by the real planner.
pub fn plan_restarts(input: &PlanInput) -> RestartPlan {
    RestartPlan {
        placements: Vec::new(),
        waiting: input
            .requests
            .iter()
            .map(|r| (r.vm, WaitReason::NoCapacity))
            .collect(),
    }
}
