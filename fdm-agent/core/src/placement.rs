//! Restart placement: which VM goes where, in which order. Pure; the master calls it with a snapshot.
//!
//! Order: priority, then VM id. Host choice: the same host for a crashed VM when it has room, then
//! dedicated failover hosts, then hosts without a VM of the same anti-affinity group, then the host
//! with the most free memory left, the fewest VMs, the lowest id. Deterministic for the same input.

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

/// Plan the restarts: highest priority first (then VM id), each onto the best host that fits.
///
/// `Disabled` requests are left out of both lists (the caller never asks for them). A dependency
/// counts as met only when it is running: vSphere starts dependents after their dependency is up, so a
/// dependency placed in this same plan still makes the dependent wait for the next round. A
/// dependency that is neither running nor requested (off on purpose, unknown) is ignored, so nothing
/// deadlocks on it; a cycle simply waits.
pub fn plan_restarts(input: &PlanInput) -> RestartPlan {
    let mut hosts = input.hosts.clone();
    hosts.sort_by_key(|h| h.host);
    let mut order: Vec<&RestartRequest> = input
        .requests
        .iter()
        .filter(|r| r.priority != RestartPriority::Disabled)
        .collect();
    order.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.vm.cmp(&b.vm)));
    let requested: BTreeSet<VmId> = order.iter().map(|r| r.vm).collect();
    let mut plan = RestartPlan::default();
    for r in order {
        if let Some(p) = input.hold_below
            && r.priority < p
        {
            plan.waiting.push((r.vm, WaitReason::HigherPriority));
            continue;
        }
        if let Some(&dep) = r
            .depends_on
            .iter()
            .find(|d| requested.contains(d) && !input.running.contains(d))
        {
            plan.waiting.push((r.vm, WaitReason::Dependency(dep)));
            continue;
        }
        match choose(&hosts, r, input.max_concurrent_per_host) {
            Ok((i, broke)) => {
                let h = &mut hosts[i];
                h.used = Resources {
                    cpu_mhz: h.used.cpu_mhz.saturating_add(r.reservation.cpu_mhz),
                    memory_mb: h.used.memory_mb.saturating_add(r.reservation.memory_mb),
                };
                h.powering_on += 1;
                h.vm_count += 1;
                if let Some(g) = &r.anti_affinity_group {
                    h.groups.push(g.clone());
                }
                plan.placements.push(Placement {
                    vm: r.vm,
                    host: h.host,
                    broke_anti_affinity: broke,
                });
            }
            Err(why) => plan.waiting.push((r.vm, why)),
        }
    }
    plan
}

fn fits(h: &HostCandidate, need: Resources) -> bool {
    let cpu = h.used.cpu_mhz.checked_add(need.cpu_mhz);
    let mem = h.used.memory_mb.checked_add(need.memory_mb);
    cpu.is_some_and(|c| c <= h.capacity.cpu_mhz) && mem.is_some_and(|m| m <= h.capacity.memory_mb)
}

/// Free memory after placing `need`, as a fraction of capacity (higher is emptier).
fn free_after(h: &HostCandidate, need: Resources) -> f64 {
    if h.capacity.memory_mb == 0 {
        return 0.0;
    }
    let used = h.used.memory_mb.saturating_add(need.memory_mb);
    h.capacity.memory_mb.saturating_sub(used) as f64 / h.capacity.memory_mb as f64
}

fn choose(
    hosts: &[HostCandidate],
    r: &RestartRequest,
    cap: u32,
) -> Result<(usize, Option<String>), WaitReason> {
    let suitable: Vec<usize> = (0..hosts.len())
        .filter(|&i| {
            let h = &hosts[i];
            h.datastores.contains(&r.home)
                && !r.excluded_hosts.contains(&h.host)
                && fits(h, r.reservation)
        })
        .collect();
    if suitable.is_empty() {
        return Err(WaitReason::NoCapacity);
    }
    let free: Vec<usize> = suitable
        .into_iter()
        .filter(|&i| hosts[i].powering_on < cap)
        .collect();
    if free.is_empty() {
        return Err(WaitReason::HostsBusy);
    }
    if let Some(p) = r.preferred_host
        && let Some(&i) = free.iter().find(|&&i| hosts[i].host == p)
    {
        let broke = breaks_group(&hosts[i], r);
        return Ok((i, broke));
    }
    let best = free
        .iter()
        .copied()
        .min_by(|&a, &b| {
            let (ha, hb) = (&hosts[a], &hosts[b]);
            // Standby hosts first, then hosts without the VM's anti-affinity group, then the emptiest.
            hb.failover_host
                .cmp(&ha.failover_host)
                .then(
                    breaks_group(ha, r)
                        .is_some()
                        .cmp(&breaks_group(hb, r).is_some()),
                )
                .then(free_after(hb, r.reservation).total_cmp(&free_after(ha, r.reservation)))
                .then(ha.vm_count.cmp(&hb.vm_count))
                .then(ha.host.cmp(&hb.host))
        })
        .expect("free is not empty");
    Ok((best, breaks_group(&hosts[best], r)))
}

fn breaks_group(h: &HostCandidate, r: &RestartRequest) -> Option<String> {
    let g = r.anti_affinity_group.as_ref()?;
    h.groups.contains(g).then(|| g.clone())
}
