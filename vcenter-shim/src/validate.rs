//! Rules every write must satisfy, checked on the whole would-be inventory before anything is stored.
//!
//! Each error names the field of the request that is wrong, so an operator (or `fdmctl`) can point at
//! it. A value referring to a missing object is 400 (the request is wrong); a clash with the existing
//! inventory (duplicate id, still in use) is 409.

use crate::error::ShimError;
use crate::model::{DatastoreSpec, HostSpec, Inventory, VmSpec};
use fdm_agent::core::Timings;
use fdm_agent::core::config::{MAX_TIMING, TimingsError};
use heartbeat_fs::records::{AdmissionPolicy, HaSettings, RestartLimit};
use heartbeat_fs::{DatastoreId, HostId, VmId};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

// Every number a request carries has a range, so that no sum, product or deadline built from
// accepted values can overflow, here or in an agent. CPU needs none beyond its type: a u32 of MHz,
// summed in u128 by admission control.

/// Largest host capacity or VM reservation of memory: 1 PiB in MB (MiB, as everywhere in fdm). Far
/// beyond any machine; a u64 would let a typo claim a capacity no sum could hold.
pub const MAX_MEMORY_MB: u64 = 1 << 30;
/// Longest restart retry delay or orchestrated wait: the agent's bound on any timing (a day), which
/// keeps every deadline the agent computes from them far from overflow.
pub const MAX_WAIT_MS: u64 = MAX_TIMING.as_secs() * 1_000;
/// Most restart retries, and most restarts of a VM on its own host before another host is tried.
pub const MAX_RETRIES: u32 = 100;
/// Most power-ons one host runs at once: beyond this a failover is a boot storm, not a plan.
pub const MAX_CONCURRENT_POWER_ONS: u32 = 1_000;
/// Most host failures admission control can be asked to tolerate: more than any cluster loses and
/// still has room for its VMs (a value at or above the host count fails admission anyway).
pub const MAX_HOST_FAILURES_TOLERATED: u32 = 1_000;

/// Most restarts of a crashed VM a restart limit may allow within its window.
pub const MAX_RESTARTS: u32 = 1_000;
/// Shortest and longest restart-limit window: below a second the limit would never count two
/// restarts together; 30 days is past any crash loop anyone would want to wait out.
pub const MIN_RESTART_WINDOW_MS: u64 = 1_000;
pub const MAX_RESTART_WINDOW_MS: u64 = 30 * 24 * 3_600_000;

const MAX_NAME: usize = 200;

/// `value` (in `unit`) must not exceed `max`; `what` says what the limit is in words.
fn at_most(
    field: impl Into<String>,
    value: u64,
    max: u64,
    unit: &str,
    what: &str,
) -> Result<(), ShimError> {
    if value > max {
        return Err(ShimError::invalid(
            field,
            format!("{value}{unit} is more than the largest allowed, {max}{unit} ({what})"),
        ));
    }
    Ok(())
}

/// A restart limit, cluster-wide (`prefix` "restart_limit") or a VM's own.
fn check_restart_limit(prefix: &str, l: &RestartLimit) -> Result<(), ShimError> {
    at_most(
        format!("{prefix}.max_restarts"),
        u64::from(l.max_restarts),
        u64::from(MAX_RESTARTS),
        "",
        "restarts within the window",
    )?;
    if l.window_ms < MIN_RESTART_WINDOW_MS {
        return Err(ShimError::invalid(
            format!("{prefix}.window_ms"),
            format!(
                "{} ms is less than the shortest allowed, {MIN_RESTART_WINDOW_MS} ms",
                l.window_ms
            ),
        ));
    }
    at_most(
        format!("{prefix}.window_ms"),
        l.window_ms,
        MAX_RESTART_WINDOW_MS,
        " ms",
        "30 days",
    )
}

fn check_memory(memory_mb: u64) -> Result<(), ShimError> {
    at_most("memory_mb", memory_mb, MAX_MEMORY_MB, " MB", "1 PiB")
}

fn check_name(field: &str, name: &str) -> Result<(), ShimError> {
    if name.trim().is_empty() {
        return Err(ShimError::invalid(field, "must not be empty"));
    }
    if name.len() > MAX_NAME {
        return Err(ShimError::invalid(
            field,
            format!("longer than {MAX_NAME} bytes"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ShimError::invalid(field, "contains control characters"));
    }
    Ok(())
}

pub fn validate_host(h: &HostSpec, inv: &Inventory) -> Result<(), ShimError> {
    if h.id.is_none() {
        return Err(ShimError::invalid(
            "id",
            "host id 0 is reserved for \"no host\"",
        ));
    }
    check_name("name", &h.name)?;
    if let Some(other) = inv
        .hosts
        .values()
        .find(|o| o.id != h.id && o.name == h.name)
    {
        return Err(ShimError::conflict(
            "name",
            format!("name {:?} is already used by {}", h.name, other.id),
        ));
    }
    if h.address.parse::<SocketAddr>().is_err() {
        return Err(ShimError::invalid(
            "address",
            format!("{:?} is not an ip:port socket address", h.address),
        ));
    }
    check_memory(h.memory_mb)
}

pub fn validate_datastore(d: &DatastoreSpec, inv: &Inventory) -> Result<(), ShimError> {
    if d.id.0 == 0 {
        return Err(ShimError::invalid("id", "datastore id must be at least 1"));
    }
    check_name("name", &d.name)?;
    if let Some(other) = inv
        .datastores
        .values()
        .find(|o| o.id != d.id && o.name == d.name)
    {
        return Err(ShimError::conflict(
            "name",
            format!("name {:?} is already used by {}", d.name, other.id),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, m) in d.mounts.iter().enumerate() {
        if !inv.hosts.contains_key(&m.host) {
            return Err(ShimError::invalid(
                format!("mounts[{i}].host"),
                format!("unknown host {}", m.host),
            ));
        }
        if !seen.insert(m.host) {
            return Err(ShimError::invalid(
                format!("mounts[{i}].host"),
                format!("{} is listed twice", m.host),
            ));
        }
        if !m.path.starts_with('/') || m.path.chars().any(char::is_control) {
            return Err(ShimError::invalid(
                format!("mounts[{i}].path"),
                format!("{:?} is not an absolute path", m.path),
            ));
        }
    }
    Ok(())
}

pub fn validate_vm(v: &VmSpec, inv: &Inventory) -> Result<(), ShimError> {
    if v.id.0 == 0 {
        return Err(ShimError::invalid("id", "vm id must be at least 1"));
    }
    check_name("name", &v.name)?;
    check_memory(v.memory_mb)?;
    let Some(home) = inv.datastores.get(&v.home) else {
        return Err(ShimError::invalid(
            "home",
            format!("unknown datastore {}", v.home),
        ));
    };
    if home.mounts.is_empty() {
        return Err(ShimError::invalid(
            "home",
            format!(
                "datastore {} is mounted by no host, so no host could run the VM",
                v.home
            ),
        ));
    }
    if let Some(group) = &v.anti_affinity_group {
        check_name("anti_affinity_group", group)?;
    }
    if let Some(l) = &v.restart_limit {
        check_restart_limit("restart_limit", l)?;
    }
    let mut seen = BTreeSet::new();
    for (i, dep) in v.depends_on.iter().enumerate() {
        let field = format!("depends_on[{i}]");
        if *dep == v.id {
            return Err(ShimError::invalid(field, "a VM cannot depend on itself"));
        }
        if !inv.vms.contains_key(dep) {
            return Err(ShimError::invalid(field, format!("unknown vm {dep}")));
        }
        if !seen.insert(*dep) {
            return Err(ShimError::invalid(field, format!("{dep} is listed twice")));
        }
    }
    let mut graph: BTreeMap<VmId, &[VmId]> = inv
        .vms
        .values()
        .map(|o| (o.id, o.depends_on.as_slice()))
        .collect();
    graph.insert(v.id, &v.depends_on);
    if let Some(cycle) = find_cycle_through(v.id, &graph) {
        let path: Vec<String> = cycle.iter().map(ToString::to_string).collect();
        return Err(ShimError::invalid(
            "depends_on",
            format!("cyclic dependency: {}", path.join(" -> ")),
        ));
    }
    Ok(())
}

/// A dependency cycle through `start`, as the path `start -> ... -> start`. Only cycles through the
/// VM being written can be new, because the stored inventory was acyclic.
fn find_cycle_through(start: VmId, graph: &BTreeMap<VmId, &[VmId]>) -> Option<Vec<VmId>> {
    // Iterative DFS so that a long dependency chain cannot overflow the stack.
    let mut visited = BTreeSet::new();
    let mut stack: Vec<(VmId, usize)> = vec![(start, 0)];
    while let Some(&(node, next)) = stack.last() {
        let deps = graph.get(&node).copied().unwrap_or(&[]);
        if let Some(&dep) = deps.get(next) {
            if let Some(top) = stack.last_mut() {
                top.1 += 1;
            }
            if dep == start {
                let mut path: Vec<VmId> = stack.iter().map(|(n, _)| *n).collect();
                path.push(start);
                return Some(path);
            }
            if visited.insert(dep) {
                stack.push((dep, 0));
            }
        } else {
            stack.pop();
        }
    }
    None
}

/// The cluster's timing overrides, checked by the agent core's own rules on top of the default
/// timings, so that the shim refuses what every agent with default local timings would refuse.
/// The field named is one the request set when a problem names one (the operator's own value is
/// the likeliest to fix), else the first the core names.
fn check_timings(overrides: &BTreeMap<String, u64>) -> Result<(), ShimError> {
    let Err(problems) = Timings::default().checked_overrides(overrides) else {
        return Ok(());
    };
    let first = problems
        .iter()
        .position(|p| overrides.contains_key(p.field()))
        .unwrap_or(0);
    let mut message = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i == first {
            continue;
        }
        message.push_str(&format!("; also timings_ms.{}: {}", p.field(), reason(p)));
    }
    let Some(p) = problems.get(first) else {
        return Ok(());
    };
    Err(ShimError::invalid(
        format!("timings_ms.{}", p.field()),
        format!("{}{message}", reason(p)),
    ))
}

/// The core's reason without its own "timing `x`:" prefix: the shim names the field itself.
fn reason(p: &TimingsError) -> String {
    match p {
        TimingsError::Unknown(_) => format!(
            "unknown timing; expected one of {}",
            Timings::NAMES.join(", ")
        ),
        TimingsError::Invalid { reason, .. } => reason.clone(),
    }
}

pub fn validate_ha(ha: &HaSettings, inv: &Inventory) -> Result<(), ShimError> {
    check_timings(&ha.timings_ms)?;
    for (i, addr) in ha.isolation_addresses.iter().enumerate() {
        // IP literals only: resolving a name needs DNS, which an isolated host may not have.
        if addr.parse::<IpAddr>().is_err() {
            return Err(ShimError::invalid(
                format!("isolation_addresses[{i}]"),
                format!("{addr:?} is not an IP address"),
            ));
        }
    }
    if ha.restart_retry_ms.len() > MAX_RETRIES as usize {
        return Err(ShimError::invalid(
            "restart_retry_ms",
            format!(
                "{} retries; at most {MAX_RETRIES}",
                ha.restart_retry_ms.len()
            ),
        ));
    }
    for (i, &delay) in ha.restart_retry_ms.iter().enumerate() {
        at_most(
            format!("restart_retry_ms[{i}]"),
            delay,
            MAX_WAIT_MS,
            " ms",
            "a day",
        )?;
    }
    at_most(
        "same_host_restart_attempts",
        u64::from(ha.same_host_restart_attempts),
        u64::from(MAX_RETRIES),
        "",
        "restarts on the VM's own host",
    )?;
    at_most(
        "same_host_restart_wait_ms",
        ha.same_host_restart_wait_ms,
        MAX_WAIT_MS,
        " ms",
        "a day",
    )?;
    check_restart_limit("restart_limit", &ha.restart_limit)?;
    if let Some(wait) = ha.orchestrated_wait_ms {
        at_most("orchestrated_wait_ms", wait, MAX_WAIT_MS, " ms", "a day")?;
    }
    if ha.max_concurrent_power_ons_per_host == 0 {
        return Err(ShimError::invalid(
            "max_concurrent_power_ons_per_host",
            "must be at least 1",
        ));
    }
    at_most(
        "max_concurrent_power_ons_per_host",
        u64::from(ha.max_concurrent_power_ons_per_host),
        u64::from(MAX_CONCURRENT_POWER_ONS),
        "",
        "power-ons at once on one host",
    )?;
    let mut seen = BTreeSet::new();
    for (i, h) in ha.failover_hosts.iter().enumerate() {
        let field = format!("failover_hosts[{i}]");
        if !inv.hosts.contains_key(h) {
            return Err(ShimError::invalid(field, format!("unknown host {h}")));
        }
        if !seen.insert(*h) {
            return Err(ShimError::invalid(field, format!("{h} is listed twice")));
        }
    }
    match &ha.admission {
        AdmissionPolicy::Disabled => {}
        AdmissionPolicy::HostFailuresTolerated(n) => {
            if *n == 0 {
                return Err(ShimError::invalid(
                    "admission.HostFailuresTolerated",
                    "must tolerate at least 1 host failure (use Disabled to turn it off)",
                ));
            }
            at_most(
                "admission.HostFailuresTolerated",
                u64::from(*n),
                u64::from(MAX_HOST_FAILURES_TOLERATED),
                "",
                "host failures",
            )?;
        }
        AdmissionPolicy::PercentReserved { cpu, memory } => {
            if *cpu > 100 {
                return Err(ShimError::invalid(
                    "admission.PercentReserved.cpu",
                    "a percentage must be at most 100",
                ));
            }
            if *memory > 100 {
                return Err(ShimError::invalid(
                    "admission.PercentReserved.memory",
                    "a percentage must be at most 100",
                ));
            }
        }
        AdmissionPolicy::DedicatedFailoverHosts => {
            if ha.failover_hosts.is_empty() {
                return Err(ShimError::invalid(
                    "failover_hosts",
                    "DedicatedFailoverHosts needs at least one failover host",
                ));
            }
        }
    }
    Ok(())
}

/// Cross-object rules, re-checked after every write so that changing one object cannot silently
/// break another (e.g. dropping the last mount of a VM's home datastore).
pub fn validate_references(inv: &Inventory) -> Result<(), ShimError> {
    for d in inv.datastores.values() {
        for (i, m) in d.mounts.iter().enumerate() {
            if !inv.hosts.contains_key(&m.host) {
                return Err(ShimError::conflict(
                    format!("mounts[{i}].host"),
                    format!("{} mounts unknown host {}", d.id, m.host),
                ));
            }
        }
    }
    for v in inv.vms.values() {
        match inv.datastores.get(&v.home) {
            None => {
                return Err(ShimError::conflict(
                    "home",
                    format!("{} lives on unknown datastore {}", v.id, v.home),
                ));
            }
            Some(d) if d.mounts.is_empty() => {
                return Err(ShimError::conflict(
                    "mounts",
                    format!(
                        "{} would be mounted by no host, but {} lives on it",
                        d.id, v.id
                    ),
                ));
            }
            Some(_) => {}
        }
        if let Some(dep) = v.depends_on.iter().find(|d| !inv.vms.contains_key(d)) {
            return Err(ShimError::conflict(
                "depends_on",
                format!("{} depends on unknown vm {dep}", v.id),
            ));
        }
    }
    if let Some(h) = inv
        .ha
        .failover_hosts
        .iter()
        .find(|h| !inv.hosts.contains_key(h))
    {
        return Err(ShimError::conflict(
            "failover_hosts",
            format!("failover host {h} is not in the inventory"),
        ));
    }
    Ok(())
}

/// Which datastores each host mounts, for the hosts that mount any: what the layout rule looks at
/// (a host that mounts none is nested in every other).
fn mount_sets(inv: &Inventory) -> BTreeMap<HostId, BTreeSet<DatastoreId>> {
    let mut sets: BTreeMap<HostId, BTreeSet<DatastoreId>> = BTreeMap::new();
    for d in inv.datastores.values() {
        for m in &d.mounts {
            sets.entry(m.host).or_default().insert(d.id);
        }
    }
    sets
}

/// The datastore layout of the configuration `next` would publish, checked by the agents' own rule
/// (`ClusterConfig::check_layout`: the hosts' sets of mounted datastores must be nested). Agents
/// refuse a crossed layout and keep their last good configuration, which the operator would only
/// see in their events; refusing the write here says it where the change is made, with the same
/// words (field `mounts`).
///
/// One exception: a database written before the rule may already hold a crossed layout, and fixing
/// one can take several writes (one datastore at a time) that each leave it crossed. Refusing
/// those would leave no way out, so a write that changes the mounts of an already crossed layout is
/// accepted with the warning returned here; every other write to it is refused, because the
/// agents would refuse the configuration it publishes as well.
pub fn validate_layout(before: &Inventory, next: &Inventory) -> Result<Option<String>, ShimError> {
    let Err(crossed) = next.to_cluster_config().check_layout() else {
        return Ok(None);
    };
    let repairing = before.to_cluster_config().check_layout().is_err()
        && mount_sets(before) != mount_sets(next);
    if repairing {
        return Ok(Some(format!(
            "the datastore layout is still not nested, so agents keep their last good \
             configuration until it is: {crossed}"
        )));
    }
    Err(ShimError::invalid("mounts", crossed.to_string()))
}

/// Refuse to delete a host still named elsewhere: the operator must unmount or unlist it first,
/// rather than have the shim rewrite other objects behind their back.
pub fn check_host_removal(id: HostId, inv: &Inventory) -> Result<(), ShimError> {
    if let Some(d) = inv
        .datastores
        .values()
        .find(|d| d.mounts.iter().any(|m| m.host == id))
    {
        return Err(ShimError::conflict(
            "id",
            format!(
                "{id} still mounts datastore {}; remove the mount first",
                d.id
            ),
        ));
    }
    if inv.ha.failover_hosts.contains(&id) {
        return Err(ShimError::conflict(
            "id",
            format!("{id} is a failover host; remove it from failover_hosts first"),
        ));
    }
    Ok(())
}

pub fn check_datastore_removal(id: DatastoreId, inv: &Inventory) -> Result<(), ShimError> {
    if let Some(v) = inv.vms.values().find(|v| v.home == id) {
        return Err(ShimError::conflict(
            "id",
            format!("{id} is the home of {}; remove or move it first", v.id),
        ));
    }
    Ok(())
}

pub fn check_vm_removal(id: VmId, inv: &Inventory) -> Result<(), ShimError> {
    if let Some(v) = inv.vms.values().find(|v| v.depends_on.contains(&id)) {
        return Err(ShimError::conflict(
            "id",
            format!("{} depends on {id}; change its depends_on first", v.id),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MountSpec;
    use heartbeat_fs::ClusterId;

    fn host(id: u32) -> HostSpec {
        HostSpec {
            id: HostId(id),
            name: format!("esx{id}"),
            address: format!("10.0.0.{id}:7400"),
            cpu_mhz: 10_000,
            memory_mb: 65_536,
            maintenance: false,
        }
    }

    fn vm(id: u32, deps: &[u32]) -> VmSpec {
        VmSpec {
            id: VmId(id),
            name: format!("vm{id}"),
            home: DatastoreId(1),
            definition: String::new(),
            cpu_mhz: 1000,
            memory_mb: 1024,
            priority: Default::default(),
            isolation_response: None,
            storage_loss_response: None,
            restart_limit: None,
            restart_policy: Default::default(),
            depends_on: deps.iter().map(|d| VmId(*d)).collect(),
            anti_affinity_group: None,
            protected: true,
        }
    }

    fn inv() -> Inventory {
        let mut inv = Inventory::new(ClusterId(1));
        for id in [1, 2] {
            inv.hosts.insert(HostId(id), host(id));
        }
        inv.datastores.insert(
            DatastoreId(1),
            DatastoreSpec {
                id: DatastoreId(1),
                name: "ds1".into(),
                mounts: vec![MountSpec {
                    host: HostId(1),
                    path: "/mnt/ds1".into(),
                }],
            },
        );
        inv.datastores.insert(
            DatastoreId(2),
            DatastoreSpec {
                id: DatastoreId(2),
                name: "lonely".into(),
                mounts: vec![],
            },
        );
        inv
    }

    fn field(e: ShimError) -> (u16, String) {
        let status = e.status();
        (status, e.body().error.field.unwrap_or_default())
    }

    #[test]
    fn host_rules() {
        let inv = inv();
        assert!(validate_host(&host(3), &inv).is_ok());
        let mut h = host(3);
        h.address = "not-an-address".into();
        assert_eq!(
            field(validate_host(&h, &inv).unwrap_err()),
            (400, "address".into())
        );
        let mut h = host(3);
        h.name = "esx1".into();
        assert_eq!(
            field(validate_host(&h, &inv).unwrap_err()),
            (409, "name".into())
        );
        assert_eq!(
            field(validate_host(&host(0), &inv).unwrap_err()),
            (400, "id".into())
        );
        // Renaming a host to its own name is not a clash with itself.
        assert!(validate_host(&host(1), &inv).is_ok());
    }

    #[test]
    fn datastore_rules() {
        let inv = inv();
        let mut d = DatastoreSpec {
            id: DatastoreId(3),
            name: "ds3".into(),
            mounts: vec![
                MountSpec {
                    host: HostId(1),
                    path: "/a".into(),
                },
                MountSpec {
                    host: HostId(9),
                    path: "/b".into(),
                },
            ],
        };
        assert_eq!(
            field(validate_datastore(&d, &inv).unwrap_err()),
            (400, "mounts[1].host".into())
        );
        d.mounts[1].host = HostId(1);
        assert_eq!(
            field(validate_datastore(&d, &inv).unwrap_err()),
            (400, "mounts[1].host".into())
        );
        d.mounts[1].host = HostId(2);
        d.mounts[1].path = "relative".into();
        assert_eq!(
            field(validate_datastore(&d, &inv).unwrap_err()),
            (400, "mounts[1].path".into())
        );
        d.mounts[1].path = "/b".into();
        assert!(validate_datastore(&d, &inv).is_ok());
    }

    #[test]
    fn vm_rules() {
        let mut inv = inv();
        assert!(validate_vm(&vm(1, &[]), &inv).is_ok());
        let mut v = vm(1, &[]);
        v.home = DatastoreId(7);
        assert_eq!(
            field(validate_vm(&v, &inv).unwrap_err()),
            (400, "home".into())
        );
        v.home = DatastoreId(2);
        let err = validate_vm(&v, &inv).unwrap_err();
        assert!(err.to_string().contains("mounted by no host"), "{err}");
        assert_eq!(field(err), (400, "home".into()));
        assert_eq!(
            field(validate_vm(&vm(1, &[1]), &inv).unwrap_err()),
            (400, "depends_on[0]".into())
        );
        assert_eq!(
            field(validate_vm(&vm(1, &[5]), &inv).unwrap_err()),
            (400, "depends_on[0]".into())
        );
        let mut blank = vm(1, &[]);
        blank.name = "  ".into();
        assert_eq!(
            field(validate_vm(&blank, &inv).unwrap_err()),
            (400, "name".into())
        );

        // 1 -> 2 -> 3 stored; making 3 depend on 1 closes the loop.
        inv.vms.insert(VmId(1), vm(1, &[2]));
        inv.vms.insert(VmId(2), vm(2, &[3]));
        inv.vms.insert(VmId(3), vm(3, &[]));
        let err = validate_vm(&vm(3, &[1]), &inv).unwrap_err();
        assert!(
            err.to_string().contains("vm-3 -> vm-1 -> vm-2 -> vm-3"),
            "{err}"
        );
        assert_eq!(field(err), (400, "depends_on".into()));
        // A diamond is not a cycle.
        inv.vms.insert(VmId(4), vm(4, &[]));
        assert!(validate_vm(&vm(3, &[4]), &inv).is_ok());
        assert!(validate_vm(&vm(5, &[1, 2, 3]), &inv).is_ok());
    }

    #[test]
    fn ha_rules() {
        let inv = inv();
        let mut ha = HaSettings::default();
        assert!(validate_ha(&ha, &inv).is_ok());
        ha.timings_ms.insert("heartbeat_intervl".into(), 100);
        assert_eq!(
            field(validate_ha(&ha, &inv).unwrap_err()),
            (400, "timings_ms.heartbeat_intervl".into())
        );
        ha.timings_ms.clear();
        ha.isolation_addresses = vec!["10.0.0.254".into(), "gateway".into()];
        assert_eq!(
            field(validate_ha(&ha, &inv).unwrap_err()),
            (400, "isolation_addresses[1]".into())
        );
        ha.isolation_addresses.clear();
        ha.failover_hosts = vec![HostId(2), HostId(8)];
        assert_eq!(
            field(validate_ha(&ha, &inv).unwrap_err()),
            (400, "failover_hosts[1]".into())
        );
        ha.failover_hosts = vec![];
        ha.admission = AdmissionPolicy::PercentReserved {
            cpu: 30,
            memory: 130,
        };
        assert_eq!(
            field(validate_ha(&ha, &inv).unwrap_err()),
            (400, "admission.PercentReserved.memory".into())
        );
        ha.admission = AdmissionPolicy::DedicatedFailoverHosts;
        assert_eq!(
            field(validate_ha(&ha, &inv).unwrap_err()),
            (400, "failover_hosts".into())
        );
    }

    fn timings_error(overrides: &[(&str, u64)]) -> Option<(String, String)> {
        let mut ha = HaSettings::default();
        for (name, value) in overrides {
            ha.timings_ms.insert((*name).to_string(), *value);
        }
        validate_ha(&ha, &inv()).err().map(|e| {
            let body = e.body();
            (body.error.field.unwrap_or_default(), body.error.message)
        })
    }

    #[test]
    fn timings_follow_the_agent_rules() {
        // Far beyond a day: the shim must refuse it before any agent sees it.
        let (field, message) = timings_error(&[("ds_lease", i64::MAX as u64)]).unwrap();
        assert_eq!(field, "timings_ms.ds_lease");
        assert!(message.contains("a day"), "{message}");
        // The shim names the field itself; the core's "timing `x`:" prefix is not repeated.
        assert!(!message.contains('`'), "{message}");
        // The name the old hand-copied list lacked.
        assert_eq!(timings_error(&[("better_master_handover", 8_000)]), None);
        let (field, message) = timings_error(&[("heartbeat_intervl", 100)]).unwrap();
        assert_eq!(field, "timings_ms.heartbeat_intervl");
        assert!(
            message.starts_with("unknown timing") && message.contains("better_master_handover"),
            "{message}"
        );
        // A relation between timings, not just a size.
        let (field, message) = timings_error(&[("watchdog_timeout", 2_000)]).unwrap();
        assert_eq!(field, "timings_ms.watchdog_timeout");
        assert!(message.contains("fence_margin"), "{message}");
        // A value that breaks several rules names the field the request set, and lists the rest.
        let (field, message) = timings_error(&[("ds_lease", 100)]).unwrap();
        assert_eq!(field, "timings_ms.ds_lease");
        assert!(
            message.contains("also timings_ms.datastore_call_deadline"),
            "{message}"
        );
        // Every name the agent knows is accepted at a value the agent accepts, and the shim refuses
        // exactly what the agent refuses.
        for name in Timings::NAMES {
            for value in [
                0,
                1,
                10,
                500,
                1_000,
                3_000,
                86_400_000,
                86_400_001,
                u64::MAX,
            ] {
                let overrides = BTreeMap::from([(name.to_string(), value)]);
                let agent = Timings::default().with_overrides(&overrides);
                let shim = timings_error(&[(name, value)]);
                assert_eq!(agent.is_ok(), shim.is_none(), "{name} = {value}: {shim:?}");
            }
        }
    }

    #[test]
    fn numbers_have_ranges() {
        let inv = inv();
        let mut h = host(3);
        h.cpu_mhz = u32::MAX;
        h.memory_mb = MAX_MEMORY_MB;
        assert!(validate_host(&h, &inv).is_ok());
        h.memory_mb = MAX_MEMORY_MB + 1;
        assert_eq!(
            field(validate_host(&h, &inv).unwrap_err()),
            (400, "memory_mb".into())
        );
        h.memory_mb = u64::MAX;
        let err = validate_host(&h, &inv).unwrap_err();
        assert!(err.to_string().contains("1 PiB"), "{err}");
        let mut v = vm(1, &[]);
        v.memory_mb = MAX_MEMORY_MB;
        v.cpu_mhz = u32::MAX;
        assert!(validate_vm(&v, &inv).is_ok());
        v.memory_mb = MAX_MEMORY_MB + 1;
        assert_eq!(
            field(validate_vm(&v, &inv).unwrap_err()),
            (400, "memory_mb".into())
        );

        let check = |change: &dyn Fn(&mut HaSettings)| {
            let mut ha = HaSettings::default();
            change(&mut ha);
            validate_ha(&ha, &inv).err().map(field)
        };
        let refused = |name: &str| Some((400, name.to_string()));
        assert_eq!(
            check(&|ha| ha.restart_retry_ms = vec![0, MAX_WAIT_MS]),
            None
        );
        assert_eq!(
            check(&|ha| ha.restart_retry_ms = vec![0, MAX_WAIT_MS + 1]),
            refused("restart_retry_ms[1]")
        );
        assert_eq!(
            check(&|ha| ha.restart_retry_ms = vec![0; MAX_RETRIES as usize + 1]),
            refused("restart_retry_ms")
        );
        assert_eq!(
            check(&|ha| ha.same_host_restart_attempts = MAX_RETRIES),
            None
        );
        assert_eq!(
            check(&|ha| ha.same_host_restart_attempts = u32::MAX),
            refused("same_host_restart_attempts")
        );
        assert_eq!(
            check(&|ha| ha.same_host_restart_wait_ms = MAX_WAIT_MS + 1),
            refused("same_host_restart_wait_ms")
        );
        let limit = |max_restarts, window_ms| RestartLimit {
            max_restarts,
            window_ms,
        };
        assert_eq!(
            check(&|ha| ha.restart_limit = limit(MAX_RESTARTS, MAX_RESTART_WINDOW_MS)),
            None
        );
        assert_eq!(
            check(&|ha| ha.restart_limit = limit(0, MIN_RESTART_WINDOW_MS)),
            None
        );
        assert_eq!(
            check(&|ha| ha.restart_limit = limit(MAX_RESTARTS + 1, 60_000)),
            refused("restart_limit.max_restarts")
        );
        assert_eq!(
            check(&|ha| ha.restart_limit = limit(3, MIN_RESTART_WINDOW_MS - 1)),
            refused("restart_limit.window_ms")
        );
        assert_eq!(
            check(&|ha| ha.restart_limit = limit(3, MAX_RESTART_WINDOW_MS + 1)),
            refused("restart_limit.window_ms")
        );
        let mut v = vm(1, &[]);
        v.restart_limit = Some(limit(3, 0));
        assert_eq!(
            field(validate_vm(&v, &inv).unwrap_err()),
            (400, "restart_limit.window_ms".into())
        );
        assert_eq!(
            check(&|ha| ha.orchestrated_wait_ms = Some(MAX_WAIT_MS)),
            None
        );
        assert_eq!(
            check(&|ha| ha.orchestrated_wait_ms = Some(u64::MAX)),
            refused("orchestrated_wait_ms")
        );
        assert_eq!(
            check(&|ha| ha.max_concurrent_power_ons_per_host = MAX_CONCURRENT_POWER_ONS),
            None
        );
        assert_eq!(
            check(&|ha| ha.max_concurrent_power_ons_per_host = MAX_CONCURRENT_POWER_ONS + 1),
            refused("max_concurrent_power_ons_per_host")
        );
        assert_eq!(
            check(&|ha| ha.admission =
                AdmissionPolicy::HostFailuresTolerated(MAX_HOST_FAILURES_TOLERATED)),
            None
        );
        assert_eq!(
            check(&|ha| ha.admission = AdmissionPolicy::HostFailuresTolerated(u32::MAX)),
            refused("admission.HostFailuresTolerated")
        );
        assert_eq!(
            check(&|ha| ha.admission = AdmissionPolicy::PercentReserved {
                cpu: 100,
                memory: 100
            }),
            None
        );
        assert_eq!(
            check(&|ha| ha.admission = AdmissionPolicy::PercentReserved {
                cpu: u8::MAX,
                memory: 0
            }),
            refused("admission.PercentReserved.cpu")
        );
    }

    #[test]
    fn removals_refused_while_referenced() {
        let mut inv = inv();
        inv.vms.insert(VmId(1), vm(1, &[]));
        inv.vms.insert(VmId(2), vm(2, &[1]));
        assert_eq!(
            field(check_host_removal(HostId(1), &inv).unwrap_err()).0,
            409
        );
        assert!(check_host_removal(HostId(2), &inv).is_ok());
        assert_eq!(
            field(check_datastore_removal(DatastoreId(1), &inv).unwrap_err()).0,
            409
        );
        assert!(check_datastore_removal(DatastoreId(2), &inv).is_ok());
        assert_eq!(field(check_vm_removal(VmId(1), &inv).unwrap_err()).0, 409);
        assert!(check_vm_removal(VmId(2), &inv).is_ok());
        // Dropping the only mount of a VM's home is caught by the cross-object check.
        inv.datastores
            .get_mut(&DatastoreId(1))
            .unwrap()
            .mounts
            .clear();
        assert_eq!(
            field(validate_references(&inv).unwrap_err()),
            (409, "mounts".into())
        );
    }
}
