//! Admission control: can the cluster still restart every protected VM after the failures its policy
//! says it tolerates?
//!
//! Computed by the management plane, as vCenter does, from the configured capacities and
//! reservations (not from live usage). Hosts in maintenance contribute no capacity. The demand is the
//! sum of reservations of the VMs HA would restart: protected, priority not `Disabled`, restart policy
//! not `Never`. The rules per policy are documented in `docs/shim.md`.

use crate::model::{HostSpec, Inventory, VmSpec};
use heartbeat_fs::records::AdmissionPolicy;
use serde::{Deserialize, Serialize};

/// Totals in u128: a sum over up to 2^32 hosts or VMs (their ids are u32) of values up to 2^64 cannot
/// overflow it, whatever the database holds (rows stored before the shim bounded its inputs are
/// never re-validated). With validated inputs every figure also fits a u64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ResourceNumbers {
    /// Capacity of the hosts that may run VMs (not in maintenance).
    pub capacity: u128,
    /// Part of `capacity` the policy keeps for failover.
    pub reserved_for_failover: u128,
    /// What protected VMs may use: `capacity - reserved_for_failover`.
    pub available: u128,
    /// Sum of the reservations of the VMs HA restarts.
    pub demand: u128,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionReport {
    pub policy: AdmissionPolicy,
    /// False when the policy is `Disabled`: `ok` is then always true.
    pub enforced: bool,
    pub ok: bool,
    /// One line saying which rule was applied.
    pub rule: String,
    pub hosts_considered: usize,
    pub protected_vms: usize,
    pub cpu_mhz: ResourceNumbers,
    pub memory_mb: ResourceNumbers,
    /// Why `ok` is false, one line per broken condition.
    pub problems: Vec<String>,
}

fn fits(vm: &VmSpec, h: &HostSpec) -> bool {
    u64::from(vm.cpu_mhz) <= u64::from(h.cpu_mhz) && vm.memory_mb <= h.memory_mb
}

fn numbers(capacity: u128, reserved: u128, demand: u128) -> ResourceNumbers {
    let reserved = reserved.min(capacity);
    ResourceNumbers {
        capacity,
        reserved_for_failover: reserved,
        available: capacity - reserved,
        demand,
    }
}

fn total(values: impl Iterator<Item = u64>) -> u128 {
    values.map(u128::from).sum()
}

/// Sum of the `n` largest values.
fn largest_sum(mut values: Vec<u64>, n: usize) -> u128 {
    values.sort_unstable_by(|a, b| b.cmp(a));
    total(values.into_iter().take(n))
}

pub fn evaluate(inv: &Inventory) -> AdmissionReport {
    let active: Vec<&HostSpec> = inv.hosts.values().filter(|h| !h.maintenance).collect();
    let protected: Vec<&VmSpec> = inv
        .vms
        .values()
        .filter(|v| v.needs_failover_capacity())
        .collect();
    let cpu_cap = total(active.iter().map(|h| u64::from(h.cpu_mhz)));
    let mem_cap = total(active.iter().map(|h| h.memory_mb));
    let cpu_demand = total(protected.iter().map(|v| u64::from(v.cpu_mhz)));
    let mem_demand = total(protected.iter().map(|v| v.memory_mb));
    let mut problems = Vec::new();
    let policy = inv.ha.admission.clone();

    let check_totals = |cpu: &ResourceNumbers,
                        mem: &ResourceNumbers,
                        problems: &mut Vec<String>| {
        if cpu.demand > cpu.available {
            problems.push(format!(
                "protected VMs reserve {} MHz CPU but only {} MHz is available after the failover reserve",
                cpu.demand, cpu.available
            ));
        }
        if mem.demand > mem.available {
            problems.push(format!(
                "protected VMs reserve {} MB memory but only {} MB is available after the failover reserve",
                mem.demand, mem.available
            ));
        }
    };

    let (rule, cpu, mem) = match &policy {
        AdmissionPolicy::Disabled => (
            "disabled: no capacity is kept for failover".to_string(),
            numbers(cpu_cap, 0, cpu_demand),
            numbers(mem_cap, 0, mem_demand),
        ),
        AdmissionPolicy::HostFailuresTolerated(n) => {
            // More failures than usize counts hosts means every host: the check below fails it.
            let n = usize::try_from(*n).unwrap_or(usize::MAX);
            let cpu = numbers(
                cpu_cap,
                largest_sum(active.iter().map(|h| u64::from(h.cpu_mhz)).collect(), n),
                cpu_demand,
            );
            let mem = numbers(
                mem_cap,
                largest_sum(active.iter().map(|h| h.memory_mb).collect(), n),
                mem_demand,
            );
            if n >= active.len() && !protected.is_empty() {
                problems.push(format!(
                    "{n} host failure(s) tolerated but only {} host(s) are available",
                    active.len()
                ));
            } else {
                check_totals(&cpu, &mem, &mut problems);
                // The survivors of the worst case: the n largest hosts (by memory, then CPU) gone.
                let mut by_size = active.clone();
                by_size.sort_by_key(|h| std::cmp::Reverse((h.memory_mb, h.cpu_mhz)));
                let survivors = &by_size[n.min(by_size.len())..];
                for v in &protected {
                    if !survivors.iter().any(|h| fits(v, h)) {
                        problems.push(format!(
                            "{} ({} MHz, {} MB) fits on no host left after losing the {n} largest",
                            v.id, v.cpu_mhz, v.memory_mb
                        ));
                    }
                }
            }
            (
                format!(
                    "host failures tolerated: the {n} largest hosts' CPU and memory (each resource separately) are held back; the remaining capacity must hold every protected VM's reservation and each VM must fit on one surviving host"
                ),
                cpu,
                mem,
            )
        }
        AdmissionPolicy::PercentReserved {
            cpu: pc,
            memory: pm,
        } => {
            let cpu = numbers(cpu_cap, cpu_cap * u128::from(*pc) / 100, cpu_demand);
            let mem = numbers(mem_cap, mem_cap * u128::from(*pm) / 100, mem_demand);
            check_totals(&cpu, &mem, &mut problems);
            (
                format!(
                    "percentage reserved: {pc}% of CPU and {pm}% of memory are kept free; protected VMs' reservations must fit in the rest"
                ),
                cpu,
                mem,
            )
        }
        AdmissionPolicy::DedicatedFailoverHosts => {
            let is_failover = |h: &&HostSpec| inv.ha.failover_hosts.contains(&h.id);
            let failover: Vec<&HostSpec> = active.iter().copied().filter(is_failover).collect();
            let regular: Vec<&HostSpec> =
                active.iter().copied().filter(|h| !is_failover(h)).collect();
            let fo_cpu = total(failover.iter().map(|h| u64::from(h.cpu_mhz)));
            let fo_mem = total(failover.iter().map(|h| h.memory_mb));
            let cpu = numbers(cpu_cap, fo_cpu, cpu_demand);
            let mem = numbers(mem_cap, fo_mem, mem_demand);
            if failover.is_empty() {
                problems
                    .push("no failover host is available (none set, or all in maintenance)".into());
            } else {
                check_totals(&cpu, &mem, &mut problems);
                // Losing the largest regular host must be absorbed by the failover hosts alone; it
                // cannot have held more than all protected VMs.
                let worst_cpu = regular
                    .iter()
                    .map(|h| u128::from(h.cpu_mhz))
                    .max()
                    .unwrap_or(0)
                    .min(cpu_demand);
                let worst_mem = regular
                    .iter()
                    .map(|h| u128::from(h.memory_mb))
                    .max()
                    .unwrap_or(0)
                    .min(mem_demand);
                if worst_cpu > fo_cpu {
                    problems.push(format!(
                        "failover hosts have {fo_cpu} MHz CPU but losing the largest host can displace {worst_cpu} MHz"
                    ));
                }
                if worst_mem > fo_mem {
                    problems.push(format!(
                        "failover hosts have {fo_mem} MB memory but losing the largest host can displace {worst_mem} MB"
                    ));
                }
                for v in &protected {
                    if !failover.iter().any(|h| fits(v, h)) {
                        problems.push(format!(
                            "{} ({} MHz, {} MB) fits on no failover host",
                            v.id, v.cpu_mhz, v.memory_mb
                        ));
                    }
                }
            }
            (
                "dedicated failover hosts: failover hosts run no VMs; the other hosts must hold every protected VM, and the failover hosts must absorb the largest other host's share and fit each protected VM".to_string(),
                cpu,
                mem,
            )
        }
    };
    let enforced = policy != AdmissionPolicy::Disabled;
    AdmissionReport {
        policy,
        enforced,
        ok: !enforced || problems.is_empty(),
        rule,
        hosts_considered: active.len(),
        protected_vms: protected.len(),
        cpu_mhz: cpu,
        memory_mb: mem,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heartbeat_fs::records::RestartPolicy;
    use heartbeat_fs::{ClusterId, DatastoreId, HostId, VmId};

    /// Hosts and VMs numbered from 1, given as (CPU MHz, memory MB); every VM protected.
    fn inv(hosts: &[(u32, u64)], vms: &[(u32, u64)]) -> Inventory {
        let mut inv = Inventory::new(ClusterId(1));
        for (n, &(cpu_mhz, memory_mb)) in (1..).zip(hosts) {
            let h = HostSpec {
                id: HostId(n),
                name: format!("h{n}"),
                address: "10.0.0.1:1".into(),
                cpu_mhz,
                memory_mb,
                maintenance: false,
            };
            inv.hosts.insert(h.id, h);
        }
        for (n, &(cpu_mhz, memory_mb)) in (1..).zip(vms) {
            let v = VmSpec {
                cpu_mhz,
                memory_mb,
                ..vm(n)
            };
            inv.vms.insert(v.id, v);
        }
        inv
    }

    fn vm(n: u32) -> VmSpec {
        VmSpec {
            id: VmId(n),
            name: format!("v{n}"),
            home: DatastoreId(1),
            definition: String::new(),
            cpu_mhz: 0,
            memory_mb: 0,
            priority: Default::default(),
            isolation_response: None,
            storage_loss_response: None,
            restart_limit: None,
            restart_policy: Default::default(),
            depends_on: vec![],
            anti_affinity_group: None,
            protected: true,
        }
    }

    /// A copy of vm-`from` under a new id: adds the same demand again.
    fn copy_vm(inv: &mut Inventory, from: u32, to: u32) {
        let v = VmSpec {
            id: VmId(to),
            ..inv.vms[&VmId(from)].clone()
        };
        inv.vms.insert(v.id, v);
    }

    #[test]
    fn disabled_always_admits() {
        let i = inv(&[(1000, 1000)], &[(5000, 5000)]);
        let r = evaluate(&i);
        assert!(r.ok && !r.enforced);
        assert_eq!(r.cpu_mhz.demand, 5000);
    }

    #[test]
    fn host_failures_tolerated() {
        // Three hosts of 10 GHz / 64 GB; one failure leaves 20 GHz / 128 GB.
        let mut i = inv(
            &[(10_000, 65_536), (10_000, 65_536), (10_000, 65_536)],
            &[(8_000, 60_000), (8_000, 60_000)],
        );
        i.ha.admission = AdmissionPolicy::HostFailuresTolerated(1);
        let r = evaluate(&i);
        assert!(r.ok, "{r:?}");
        assert_eq!(r.memory_mb.available, 131_072);
        assert_eq!(r.cpu_mhz.reserved_for_failover, 10_000);

        // A third such VM needs 24 GHz: more than the 20 GHz left.
        copy_vm(&mut i, 1, 3);
        let r = evaluate(&i);
        assert!(!r.ok);
        assert!(r.problems.iter().any(|p| p.contains("MHz CPU")), "{r:?}");

        // ... unless it is never restarted.
        i.vms.get_mut(&VmId(3)).unwrap().restart_policy = RestartPolicy::Never;
        assert!(evaluate(&i).ok);

        // Two tolerated failures on three hosts: 10 GHz left for 16 GHz.
        i.ha.admission = AdmissionPolicy::HostFailuresTolerated(2);
        assert!(!evaluate(&i).ok);
        // As many failures as hosts: impossible.
        i.ha.admission = AdmissionPolicy::HostFailuresTolerated(3);
        let r = evaluate(&i);
        assert!(!r.ok && r.problems[0].contains("only 3 host"), "{r:?}");
    }

    #[test]
    fn host_failures_tolerated_needs_a_host_the_vm_fits_on() {
        // Plenty of total room, but the one big VM only fits the big host, which is the one lost.
        let mut i = inv(
            &[(40_000, 256_000), (8_000, 32_000), (8_000, 32_000)],
            &[(1_000, 100_000)],
        );
        i.ha.admission = AdmissionPolicy::HostFailuresTolerated(1);
        let r = evaluate(&i);
        assert!(!r.ok);
        assert!(r.problems.iter().any(|p| p.contains("vm-1")), "{r:?}");
    }

    #[test]
    fn maintenance_hosts_do_not_count() {
        let mut i = inv(&[(10_000, 10_000), (10_000, 10_000)], &[(4_000, 4_000)]);
        i.ha.admission = AdmissionPolicy::HostFailuresTolerated(1);
        assert!(evaluate(&i).ok);
        i.hosts.get_mut(&HostId(2)).unwrap().maintenance = true;
        let r = evaluate(&i);
        assert!(!r.ok);
        assert_eq!(r.hosts_considered, 1);
    }

    #[test]
    fn percent_reserved() {
        let mut i = inv(&[(10_000, 10_000), (10_000, 10_000)], &[(10_000, 5_000)]);
        i.ha.admission = AdmissionPolicy::PercentReserved {
            cpu: 50,
            memory: 25,
        };
        let r = evaluate(&i);
        assert!(r.ok, "{r:?}");
        assert_eq!(r.cpu_mhz.available, 10_000);
        assert_eq!(r.memory_mb.available, 15_000);
        i.ha.admission = AdmissionPolicy::PercentReserved {
            cpu: 51,
            memory: 25,
        };
        let r = evaluate(&i);
        assert!(!r.ok);
        assert_eq!(r.problems.len(), 1);
    }

    #[test]
    fn largest_values_sum_exactly() {
        // The request that used to panic the handler, and beyond: even values the shim now refuses
        // (a database written before the bounds) are summed without overflow.
        let big = (u32::MAX, u64::MAX);
        let mut i = inv(&[big, big, big], &[big, big, big, big]);
        let four = 4 * u128::from(u64::MAX);
        for policy in [
            AdmissionPolicy::Disabled,
            AdmissionPolicy::HostFailuresTolerated(1),
            AdmissionPolicy::HostFailuresTolerated(u32::MAX),
            AdmissionPolicy::PercentReserved {
                cpu: 100,
                memory: 100,
            },
            AdmissionPolicy::PercentReserved {
                cpu: u8::MAX,
                memory: 50,
            },
            AdmissionPolicy::DedicatedFailoverHosts,
        ] {
            i.ha.admission = policy.clone();
            i.ha.failover_hosts = vec![HostId(3)];
            let r = evaluate(&i);
            assert_eq!(r.memory_mb.capacity, 3 * u128::from(u64::MAX), "{policy:?}");
            assert_eq!(r.memory_mb.demand, four, "{policy:?}");
            assert_eq!(r.cpu_mhz.demand, 4 * u128::from(u32::MAX), "{policy:?}");
            for n in [&r.cpu_mhz, &r.memory_mb] {
                assert_eq!(
                    n.available + n.reserved_for_failover,
                    n.capacity,
                    "{policy:?}"
                );
            }
            // Four VMs never fit three hosts' worth, whatever the policy holds back.
            assert_eq!(
                r.ok,
                policy == AdmissionPolicy::Disabled,
                "{policy:?}: {r:?}"
            );
        }
        i.ha.admission = AdmissionPolicy::PercentReserved {
            cpu: 50,
            memory: 50,
        };
        let r = evaluate(&i);
        assert_eq!(
            r.memory_mb.reserved_for_failover,
            3 * u128::from(u64::MAX) / 2
        );
    }

    #[test]
    fn dedicated_failover_hosts() {
        let mut i = inv(
            &[(10_000, 10_000), (10_000, 10_000), (10_000, 10_000)],
            &[(6_000, 6_000), (6_000, 6_000)],
        );
        i.ha.admission = AdmissionPolicy::DedicatedFailoverHosts;
        i.ha.failover_hosts = vec![HostId(3)];
        let r = evaluate(&i);
        assert!(r.ok, "{r:?}");
        assert_eq!(r.cpu_mhz.available, 20_000);
        // 18 GHz of VMs still fit on the two regular hosts, and losing one displaces at most 10 GHz.
        copy_vm(&mut i, 1, 3);
        assert!(evaluate(&i).ok);
        // A fourth no longer fits outside the failover host.
        copy_vm(&mut i, 1, 4);
        assert!(!evaluate(&i).ok);
        i.vms.remove(&VmId(4));
        // A failover host too small to absorb the largest regular host.
        i.hosts.get_mut(&HostId(3)).unwrap().cpu_mhz = 7_000;
        let r = evaluate(&i);
        assert!(!r.ok);
        assert!(r.problems.iter().any(|p| p.contains("displace")), "{r:?}");
        // The failover host in maintenance: nothing can absorb a failure.
        i.hosts.get_mut(&HostId(3)).unwrap().maintenance = true;
        let r = evaluate(&i);
        assert!(!r.ok && r.problems[0].contains("no failover host"));
    }
}
