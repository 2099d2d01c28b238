//! Random sweeps (swarm testing): every seed draws a cluster, valid timings, HA settings and a
//! subset of fault kinds, injects a few faults during the first minute, heals everything, and
//! checks every invariant a heal bound later. A profile narrows the fault kinds to those that
//! stress one part of the argument, so that a bounded number of seeds reaches its corner cases.

use crate::rng::Rng;
use crate::scenario::Scenario;
use crate::world::{Fault, Micros, SimParams};
use fdm_core::{FaultKnobs, Timings};
use heartbeat_fs::records::*;
use heartbeat_fs::{ClusterId, DatastoreId, HostId, VmId};
use std::time::Duration;

/// After the heal, every invariant must hold within this bound.
pub const HEAL_BOUND: Micros = 90_000_000;
/// Faults happen in the first minute; then everything heals.
pub const FAULT_PHASE: Micros = 60_000_000;

/// Every fault kind the sweep knows.
const ALL_KINDS: &[&str] = &[
    "crash",
    "partition",
    "isolate",
    "ds-loss",
    "ds-hang",
    "agent-restart",
    "agent-hang",
    "loss",
    "crash-master",
    "crash-master-on-restart",
    "torn",
    "vm-crash",
    "duplicate",
    "delay",
    "ds-dead",
    "one-way",
    "unprotect",
    "rack",
    "long-delay",
    "vm-stop",
    "vm-stop-after-master-change",
    "power-on-fails",
    "stall-command",
    "network-outage",
    "ds-outage",
    "crash-loop",
    "operator-power",
];

/// Which fault kinds a sweep draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Every kind (what CI and `fdm-sim sweep` run by default).
    All,
    /// Commands that arrive late, twice, or after the VM moved on: long delays, duplicates, VM
    /// crashes, failing power-ons, hosts and racks that die and return.
    StaleCommands,
    /// A claim that changes hands while leases granted under the old one may live: racks whose
    /// network and storage fail together or one after the other, hung agents and storage,
    /// masters that die.
    ClaimHandover,
    /// Faults that hit every host at once and that HA must ride out without stopping anything:
    /// the whole network down, a datastore lost by everyone, with crashes and operator stops
    /// mixed in.
    Correlated,
}

impl Profile {
    pub const ALL: [Profile; 4] = [
        Profile::All,
        Profile::StaleCommands,
        Profile::ClaimHandover,
        Profile::Correlated,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Profile::All => "all",
            Profile::StaleCommands => "stale-commands",
            Profile::ClaimHandover => "claim-handover",
            Profile::Correlated => "correlated",
        }
    }

    pub fn from_name(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == name)
    }

    fn kinds(self) -> &'static [&'static str] {
        match self {
            Profile::All => ALL_KINDS,
            Profile::StaleCommands => &[
                "stall-command",
                "long-delay",
                "duplicate",
                "vm-crash",
                "power-on-fails",
                "rack",
                "crash",
                "crash-master",
                "crash-master-on-restart",
            ],
            Profile::ClaimHandover => &[
                "rack",
                "partition",
                "ds-loss",
                "ds-hang",
                "agent-hang",
                "crash-master",
            ],
            Profile::Correlated => &[
                "network-outage",
                "ds-outage",
                "crash-loop",
                "operator-power",
                "vm-stop",
                "crash",
                "isolate",
                "ds-loss",
            ],
        }
    }
}

/// Valid timings for a seed: the defaults half of the time, otherwise every duration scaled and
/// jittered independently, redrawn until `Timings::validate` accepts them. The safety argument must
/// hold for every combination `validate` lets through, not only for the defaults.
fn timings(r: &mut Rng) -> Timings {
    if r.chance(0.5) {
        return Timings::default();
    }
    let base = Timings::default();
    for _ in 0..100 {
        let scale = *r.pick(&[0.5, 0.75, 1.0, 1.5, 2.0]);
        let mut jitter = |d: Duration| {
            let f = scale * (0.6 + r.unit() * 1.4);
            Duration::from_millis(((d.as_millis() as f64) * f).round().max(1.0) as u64)
        };
        let t = Timings {
            heartbeat_interval: jitter(base.heartbeat_interval),
            host_unreachable_after: jitter(base.host_unreachable_after),
            master_lost_after: jitter(base.master_lost_after),
            election_window: jitter(base.election_window),
            ds_heartbeat_interval: jitter(base.ds_heartbeat_interval),
            ds_read_interval: jitter(base.ds_read_interval),
            ds_lease: jitter(base.ds_lease),
            net_lease: jitter(base.net_lease),
            claim_lease: jitter(base.claim_lease),
            claim_renew_interval: jitter(base.claim_renew_interval),
            fence_margin: jitter(base.fence_margin),
            isolation_detect_after: jitter(base.isolation_detect_after),
            isolation_response_delay: jitter(base.isolation_response_delay),
            shutdown_timeout: jitter(base.shutdown_timeout),
            power_on_timeout: jitter(base.power_on_timeout),
            config_poll_interval: jitter(base.config_poll_interval),
            datastore_call_deadline: jitter(base.datastore_call_deadline),
            watchdog_timeout: jitter(base.watchdog_timeout),
            better_master_handover: jitter(base.better_master_handover),
            max_clock_drift_ppm: base.max_clock_drift_ppm,
        };
        if t.validate().is_ok() {
            return t;
        }
    }
    base
}

fn shuffled(r: &mut Rng, hosts: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = (1..=hosts).collect();
    for i in (1..ids.len()).rev() {
        let j = r.below(i as u64 + 1) as usize;
        ids.swap(i, j);
    }
    ids
}

/// A datastore layout fdm protects (`ClusterConfig::check_layout`: the hosts' datastore sets are
/// nested), drawn so that the master does not always mount every datastore: one to three
/// datastores, each mounted by a prefix of one random order of the hosts, the first one not always
/// by every host, at least one by every host (a host with no datastore has no secondary channel).
/// When the hosts at the front of the order die or lose storage, the next master mounts fewer.
fn layout(r: &mut Rng, hosts: u32) -> Vec<Vec<u32>> {
    let order = shuffled(r, hosts);
    let n = 1 + r.below(3) as usize;
    let mut lens: Vec<usize> = (0..n)
        .map(|_| 2 + r.below(u64::from(hosts) - 1) as usize)
        .collect();
    if !lens.contains(&(hosts as usize)) {
        let k = r.below(n as u64) as usize;
        lens[k] = hosts as usize;
    }
    lens.into_iter()
        .map(|len| {
            let mut m = order[..len].to_vec();
            m.sort_unstable();
            m
        })
        .collect()
}

/// The master the election picks at full health: the host that mounts the most datastores, the
/// lowest id among equals.
fn first_master(datastores: &[Vec<u32>], hosts: u32) -> HostId {
    let count = |h: u32| datastores.iter().filter(|d| d.contains(&h)).count();
    (1..=hosts)
        .max_by_key(|&h| (count(h), std::cmp::Reverse(h)))
        .map(HostId)
        .unwrap_or(HostId(1))
}

/// The scenario of one sweep seed.
pub fn scenario(hosts: u32, seed: u64, profile: Profile) -> Scenario {
    let mut r = Rng::new(seed ^ 0x5eed_f00d);
    let datastores = layout(&mut Rng::new(seed ^ 0x1a70_u64), hosts);
    let first_master = first_master(&datastores, hosts);
    let mut vms = Vec::new();
    let mut placement = Vec::new();
    let mut id = 1;
    for h in 1..=hosts {
        let mine: Vec<u32> = (1..=datastores.len() as u32)
            .filter(|&d| datastores[d as usize - 1].contains(&h))
            .collect();
        for _ in 0..2 {
            let home = *r.pick(&mine);
            let response = match r.below(3) {
                0 => IsolationResponse::PowerOff,
                1 => IsolationResponse::Shutdown,
                _ => IsolationResponse::LeaveRunning,
            };
            let priority = *r.pick(&[
                RestartPriority::Low,
                RestartPriority::Medium,
                RestartPriority::High,
            ]);
            vms.push(
                VmConfig::new(VmId(id), DatastoreId(home))
                    .with_reservation(Resources::new(500, 1_024))
                    .with_priority(priority)
                    .with_isolation_response(response),
            );
            placement.push((HostId(h), VmId(id)));
            id += 1;
        }
    }
    let timings = timings(&mut r);
    // The storage-loss response, from its own stream so that the rest of a seed stays as it was:
    // half the seeds apply it after 5-30 s without the datastore, power-off for a random half of
    // the VMs; the correlated profile pauses half of the others (only it makes that draw, so
    // the other profiles' seeds stay as they were).
    let mut sl = Rng::new(seed ^ 0x5707_a6e1);
    let storage_loss_timeout_ms = sl.chance(0.5).then(|| 5_000 + sl.below(25_000));
    for v in &mut vms {
        if sl.chance(0.5) {
            v.ha.storage_loss_response = StorageLossResponse::PowerOff;
        } else if profile == Profile::Correlated && sl.chance(0.5) {
            v.ha.storage_loss_response = StorageLossResponse::Pause;
        }
    }
    let config = ClusterConfig::new(ClusterId(seed))
        .with_ha(HaSettings {
            restart_retry_ms: vec![0, 2_000, 5_000, 10_000],
            same_host_restart_attempts: *r.pick(&[0, 1, 2]),
            storage_loss_timeout_ms,
            ..HaSettings::default()
        })
        .with_hosts(crate::scenario::host_configs(hosts, |_| 32_768))
        .with_layout(&datastores)
        .with_vms(vms);
    let enabled: Vec<&str> = profile
        .kinds()
        .iter()
        .copied()
        .filter(|_| r.chance(0.5))
        .collect();
    let mut faults = Vec::new();
    let n = 1 + r.below(6);
    let host = |r: &mut Rng| HostId(1 + r.below(hosts as u64) as u32);
    let nds = datastores.len() as u64;
    for _ in 0..n {
        if enabled.is_empty() {
            break;
        }
        let mut at = 5_000_000 + r.below(55_000_000);
        let f = match *r.pick(&enabled) {
            "crash" => Fault::Crash {
                host: host(&mut r),
                reboot: r.chance(0.5),
            },
            "partition" => {
                let split = 1 + r.below(hosts as u64 - 1) as u32;
                let ids = shuffled(&mut r, hosts);
                let (a, b) = ids.split_at(split as usize);
                Fault::Partition {
                    groups: vec![
                        a.iter().map(|h| HostId(*h)).collect(),
                        b.iter().map(|h| HostId(*h)).collect(),
                    ],
                }
            }
            "isolate" => Fault::Isolate { host: host(&mut r) },
            "ds-loss" => Fault::DsLoss {
                host: host(&mut r),
                ds: DatastoreId(1 + r.below(nds) as u32),
            },
            "ds-hang" => Fault::DsHang {
                host: host(&mut r),
                ds: DatastoreId(1 + r.below(nds) as u32),
            },
            "agent-restart" => Fault::AgentRestart { host: host(&mut r) },
            "agent-hang" => Fault::AgentHang { host: host(&mut r) },
            "loss" => Fault::Loss {
                p: *r.pick(&[0.05, 0.2, 0.5]),
            },
            "crash-master" => Fault::CrashMaster {
                reboot: r.chance(0.5),
            },
            "crash-master-on-restart" => Fault::CrashMasterOnRestart,
            "torn" => Fault::TornWrite {
                host: host(&mut r),
                ds: DatastoreId(1 + r.below(nds) as u32),
            },
            "vm-crash" => Fault::VmCrash {
                vm: VmId(1 + r.below(hosts as u64 * 2) as u32),
            },
            "duplicate" => Fault::Duplicate { p: 0.2 },
            "delay" => Fault::Delay {
                latency_us: 20_000,
                jitter_us: 200_000,
            },
            "ds-dead" => Fault::DsDead {
                ds: DatastoreId(1 + r.below(nds) as u32),
            },
            "unprotect" => {
                // Protection comes back within 20 s, well inside the heal bound, so the end
                // checks cover the VM again.
                let vm = VmId(1 + r.below(hosts as u64 * 2) as u32);
                let back = at + 1 + r.below(20_000_000);
                faults.push((
                    back,
                    Fault::Protect {
                        vm,
                        protected: true,
                    },
                ));
                Fault::Protect {
                    vm,
                    protected: false,
                }
            }
            "rack" => {
                // Half the racks hold the first master.
                let size = 1 + r.below(hosts as u64 / 2) as u32;
                let ids = shuffled(&mut r, hosts);
                let mut rack: Vec<HostId> =
                    ids[..size as usize].iter().map(|h| HostId(*h)).collect();
                if r.chance(0.5) && !rack.contains(&first_master) {
                    rack[0] = first_master;
                }
                if r.chance(0.5) {
                    Fault::RackCut { hosts: rack }
                } else {
                    // The rack's network goes first; its storage paths fail seconds later (iSCSI
                    // and NFS sessions time out after the heartbeats), by then the other side has
                    // its own master watching the claims.
                    // Never after the heal: storage lost then would never come back, and the
                    // checks after the heal bound would blame the agents for it.
                    let later = (at + 1_000_000 + r.below(9_000_000)).min(FAULT_PHASE - 1);
                    for &h in &rack {
                        for d in 1..=nds as u32 {
                            faults.push((
                                later,
                                Fault::DsLoss {
                                    host: h,
                                    ds: DatastoreId(d),
                                },
                            ));
                        }
                    }
                    let rest: Vec<HostId> = (1..=hosts)
                        .map(HostId)
                        .filter(|h| !rack.contains(h))
                        .collect();
                    Fault::Partition {
                        groups: vec![rack, rest],
                    }
                }
            }
            "long-delay" => Fault::DelaySpike {
                p: *r.pick(&[0.02, 0.1, 0.3]),
                max_us: *r.pick(&[2_000_000, 8_000_000, 20_000_000]),
            },
            "vm-stop" => {
                // Operators stop VMs at any moment, the cluster's first seconds included.
                if r.chance(0.4) {
                    at = r.below(5_000_000);
                }
                Fault::VmStop {
                    vm: VmId(1 + r.below(hosts as u64 * 2) as u32),
                }
            }
            "vm-stop-after-master-change" => Fault::VmStopAfterMasterChange {
                vm: VmId(1 + r.below(hosts as u64 * 2) as u32),
            },
            "stall-command" => Fault::StallNextCommand {
                hold_us: 2_000_000 + r.below(20_000_000),
            },
            "operator-power" => {
                // An operator stops a VM through HA, and half the time starts it again later.
                let vm = VmId(1 + r.below(hosts as u64 * 2) as u32);
                if r.chance(0.5) {
                    let back = (at + 1_000_000 + r.below(20_000_000)).min(FAULT_PHASE - 1);
                    faults.push((back, Fault::PowerRequest { vm, on: true }));
                }
                Fault::PowerRequest { vm, on: false }
            }
            "crash-loop" => Fault::CrashLoop {
                // A guest that dies a few seconds after every boot, for the rest of the run: its
                // restart limit must end the loop (the end checks accept it failed).
                vm: VmId(1 + r.below(hosts as u64 * 2) as u32),
                after_us: 2_000_000 + r.below(13_000_000),
            },
            "network-outage" => {
                // A core switch dies: every host cut off from every other for 1-40 s.
                let back = (at + 1_000_000 + r.below(39_000_000)).min(FAULT_PHASE - 1);
                for h in 1..=hosts {
                    faults.push((back, Fault::Unisolate { host: HostId(h) }));
                }
                for h in 2..=hosts {
                    faults.push((at, Fault::Isolate { host: HostId(h) }));
                }
                Fault::Isolate { host: HostId(1) }
            }
            "ds-outage" => {
                // An NFS server failover or a controller reboot: a datastore gone for every host
                // for 1 s to most of the fault phase, then back by itself.
                at = 2_000_000 + r.below(20_000_000);
                let ds = DatastoreId(1 + r.below(nds) as u32);
                let back = (at + 1_000_000 + r.below(57_000_000)).min(FAULT_PHASE - 1);
                faults.push((back, Fault::DsAlive { ds }));
                Fault::DsDead { ds }
            }
            "power-on-fails" => {
                let h = host(&mut r);
                let back = at + 1 + r.below(30_000_000);
                faults.push((
                    back,
                    Fault::PowerOnFails {
                        host: h,
                        fails: false,
                    },
                ));
                Fault::PowerOnFails {
                    host: h,
                    fails: true,
                }
            }
            _ => Fault::CutOneWay {
                from: host(&mut r),
                to: host(&mut r),
            },
        };
        faults.push((at, f));
    }
    faults.push((FAULT_PHASE, Fault::HealAll));
    let mut drift = std::collections::BTreeMap::new();
    for h in 1..=hosts {
        if r.chance(0.3) {
            drift.insert(HostId(h), r.below(2_001) as i64 - 1_000);
        }
    }
    // Hosts that come back with their VMs autostarted by the hypervisor (a libvirt autostart left
    // on), on half the seeds of the profiles that draw correlated faults; from its own stream, so
    // that the faults of a seed stay as they were.
    let autostart = matches!(profile, Profile::All | Profile::Correlated)
        && Rng::new(seed ^ 0xa770_57a7).chance(0.5);
    let params = SimParams {
        seed,
        drift_ppm: drift,
        timings,
        autostart,
        ..SimParams::default()
    };
    Scenario {
        name: format!("sweep seed {seed}"),
        models: format!("random fault mix ({})", profile.name()),
        config,
        params,
        placement,
        faults,
        expects: Vec::new(),
        duration: FAULT_PHASE + HEAL_BOUND,
        all_running_at_end: true,
    }
}

/// The one command that replays a sweep seed.
pub fn replay_command(hosts: u32, seed: u64, profile: Profile, knobs: FaultKnobs) -> String {
    let mut c = format!("cargo run --release -p fdm-sim -- run --hosts {hosts} --seed {seed}");
    if profile != Profile::All {
        c.push_str(" --profile ");
        c.push_str(profile.name());
    }
    for step in knobs.steps() {
        c.push_str(" --knob ");
        c.push_str(step.knob());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_protectable_and_not_all_mounted_everywhere() {
        let mut partial = 0;
        let mut first_not_everywhere = 0;
        for seed in 1..=200 {
            let sc = scenario(8, seed, Profile::All);
            sc.config
                .check_layout()
                .expect("the sweep draws layouts fdm accepts");
            let everywhere = |d: &DatastoreConfig| d.mounts.len() == 8;
            partial += usize::from(!sc.config.datastores.iter().all(everywhere));
            first_not_everywhere += usize::from(!everywhere(&sc.config.datastores[0]));
            for (at, f) in &sc.faults {
                // After the heal only what restores: a fault then would never be healed.
                let restores = matches!(
                    f,
                    Fault::HealAll
                        | Fault::Protect {
                            protected: true,
                            ..
                        }
                        | Fault::PowerOnFails { fails: false, .. }
                );
                assert!(*at < FAULT_PHASE || restores, "seed {seed}: {f:?} at {at}");
            }
            for (h, vm) in &sc.placement {
                let home = sc.config.vm(*vm).expect("placed VMs are configured").home;
                assert!(sc.config.mounts(*h, home), "seed {seed}: {vm} on {h}");
            }
        }
        assert!(
            partial > 50 && first_not_everywhere > 20,
            "{partial} {first_not_everywhere}"
        );
    }
}
