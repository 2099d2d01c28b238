//! Running a scenario or a sweep seed, checking expectations and invariants, and summarising.

use crate::invariants;
use crate::rng::Rng;
use crate::scenario::{Expect, Scenario};
use crate::world::{Fault, Micros, SimParams, StopKind, Violation, World};
use fdm_agent::core::FaultKnobs;
use heartbeat_fs::records::*;
use heartbeat_fs::{ClusterId, DatastoreId, HostId, VmId};

#[derive(Debug, Clone)]
pub struct ExpectResult {
    pub at: Micros,
    pub expect: Expect,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Host crash -> master's dead verdict, seconds.
    pub detection: Vec<f64>,
    /// Host crash -> each of its VMs running again, seconds.
    pub restart: Vec<f64>,
    pub restarts: usize,
    pub false_restarts: usize,
    pub messages: u64,
    pub events: u64,
    pub sim_seconds: f64,
}

#[derive(Debug)]
pub struct Report {
    pub name: String,
    pub seed: u64,
    pub expectations: Vec<ExpectResult>,
    pub violations: Vec<Violation>,
    pub summary: Summary,
    pub world: World,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.expectations.iter().all(|e| e.ok)
    }
}

fn check(w: &World, e: &Expect) -> (bool, String) {
    match e {
        Expect::VmOn { vm, hosts } => {
            let on = w.where_runs(*vm);
            let ok = on.len() == 1 && (hosts.is_empty() || hosts.contains(&on[0]));
            (ok, format!("{vm} runs on {on:?}"))
        }
        Expect::VmStopped { vm } => {
            let on = w.where_runs(*vm);
            (on.is_empty(), format!("{vm} runs on {on:?}"))
        }
        Expect::AllRunning => {
            let bad: Vec<String> = w
                .config
                .vms
                .iter()
                .filter(|v| !w.operator_stopped.contains(&v.id) && w.where_runs(v.id).len() != 1)
                .map(|v| format!("{}@{:?}", v.id, w.where_runs(v.id)))
                .collect();
            (
                bad.is_empty(),
                if bad.is_empty() {
                    "all running once".into()
                } else {
                    format!("not once: {}", bad.join(" "))
                },
            )
        }
        Expect::Verdict { host, verdict } => {
            let seen: Vec<String> = w
                .masters()
                .into_iter()
                .filter_map(|m| w.verdict(m, *host).map(|v| format!("{}:{}", m, v.name())))
                .collect();
            let ok = seen.iter().any(|s| s.ends_with(&format!(":{verdict}")));
            (ok, format!("masters' verdicts on {host}: {seen:?}"))
        }
        Expect::Master { host } => {
            let m = w.masters();
            (m.contains(host), format!("masters {m:?}"))
        }
        Expect::Masters { count } => {
            let m = w.masters();
            (m.len() == *count, format!("masters {m:?}"))
        }
        Expect::NoRestarts => (
            w.power_ons.is_empty(),
            format!("{} power-ons", w.power_ons.len()),
        ),
        Expect::Restarts { count } => (
            w.power_ons.len() == *count,
            format!("{} power-ons", w.power_ons.len()),
        ),
        Expect::StartOrder { vms } => {
            let first: Vec<Option<Micros>> = vms
                .iter()
                .map(|vm| {
                    w.power_ons
                        .iter()
                        .find(|(_, _, v)| v == vm)
                        .map(|(t, _, _)| *t)
                })
                .collect();
            let ok = first.iter().all(Option::is_some) && first.windows(2).all(|p| p[0] <= p[1]);
            let shown: Vec<String> = vms
                .iter()
                .zip(&first)
                .map(|(vm, t)| {
                    format!(
                        "{vm}@{}",
                        t.map_or("never".into(), |t| format!("{:.3}s", t as f64 / 1e6))
                    )
                })
                .collect();
            (ok, format!("first power-ons: {}", shown.join(" ")))
        }
        Expect::Role { host, role } => {
            let r = w.agent(*host).map(|a| a.role());
            let name = r
                .map(|r| r.name().to_string())
                .unwrap_or_else(|| "down".into());
            (name == *role, format!("{host} is {name}"))
        }
    }
}

pub fn summarize(w: &World) -> Summary {
    let mut s = Summary {
        detection: w
            .detections
            .iter()
            .map(|(_, c, d)| (d - c) as f64 / 1e6)
            .collect(),
        restarts: w.power_ons.len(),
        false_restarts: w
            .violations
            .iter()
            .filter(|v| v.invariant == "no_false_restart")
            .count(),
        messages: w.messages,
        events: w.events_processed,
        sim_seconds: w.now as f64 / 1e6,
        ..Summary::default()
    };
    // Crash -> running again, for every VM a crash took down.
    let mut lost: Vec<(VmId, Micros)> = Vec::new();
    for (t, h) in &w.crashes {
        for (vm, (st, sh, kind)) in &w.stops {
            if sh == h && st == t && *kind == StopKind::HostCrash {
                lost.push((*vm, *t));
            }
        }
    }
    for (vm, t) in lost {
        if let Some((pt, _, _)) = w.power_ons.iter().find(|(pt, _, v)| *v == vm && pt >= &t) {
            s.restart.push((pt - t) as f64 / 1e6);
        }
    }
    s
}

/// Run a scenario to its end.
pub fn run_scenario(sc: &Scenario, trace: bool, knobs: FaultKnobs) -> Report {
    let mut params = sc.params.clone();
    params.trace = trace;
    params.knobs = knobs;
    let mut w = World::new(sc.config.clone(), params, &sc.placement);
    for (at, f) in &sc.faults {
        w.schedule_fault(*at, f.clone());
    }
    let mut expectations = Vec::new();
    let mut checks = sc.expects.clone();
    checks.sort_by_key(|(t, _)| *t);
    for (at, e) in checks {
        w.run_until(at);
        let (ok, detail) = check(&w, &e);
        expectations.push(ExpectResult {
            at,
            expect: e,
            ok,
            detail,
        });
    }
    w.run_until(sc.duration);
    let mut violations = w.violations.clone();
    violations.extend(invariants::final_checks(&w, sc.all_running_at_end));
    let summary = summarize(&w);
    Report {
        name: sc.name.clone(),
        seed: sc.params.seed,
        expectations,
        violations,
        summary,
        world: w,
    }
}

/// Random cluster and fault mix for a sweep seed (swarm testing: each seed enables a random subset
/// of fault kinds). Fault phase 0-60 s, everything healed at 60 s, checked at 60 s + `heal_bound`.
pub fn sweep_scenario(hosts: u32, seed: u64) -> Scenario {
    let mut r = Rng::new(seed ^ 0x5eed_f00d);
    let ds2: Vec<u32> = (1..=hosts).filter(|_| r.chance(0.7)).collect();
    let mut datastores = vec![(1..=hosts).collect::<Vec<u32>>()];
    if ds2.len() >= 2 {
        datastores.push(ds2.clone());
    }
    let mut vms = Vec::new();
    let mut placement = Vec::new();
    let mut id = 1;
    for h in 1..=hosts {
        for k in 0..2 {
            let home = if k == 1 && ds2.contains(&h) && datastores.len() > 1 {
                2
            } else {
                1
            };
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
            vms.push(VmConfig {
                id: VmId(id),
                name: format!("vm{id}"),
                home: DatastoreId(home),
                definition: String::new(),
                reservation: Resources {
                    cpu_mhz: 500,
                    memory_mb: 1_024,
                },
                ha: VmHaSettings {
                    priority,
                    isolation_response: response,
                    restart_policy: RestartPolicy::Always,
                },
                depends_on: vec![],
                anti_affinity_group: None,
                protected: true,
            });
            placement.push((HostId(h), VmId(id)));
            id += 1;
        }
    }
    let config = ClusterConfig {
        cluster: ClusterId(seed),
        generation: 1,
        ha: HaSettings {
            restart_retry_ms: vec![0, 2_000, 5_000, 10_000],
            ..HaSettings::default()
        },
        hosts: crate::scenario::host_configs(hosts, |_| 32_768),
        datastores: crate::scenario::datastore_configs(&datastores),
        vms,
    };
    let kinds = [
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
    ];
    let enabled: Vec<&str> = kinds.iter().copied().filter(|_| r.chance(0.5)).collect();
    let mut faults = Vec::new();
    let n = 1 + r.below(6);
    let host = |r: &mut Rng| HostId(1 + r.below(hosts as u64) as u32);
    let nds = datastores.len() as u64;
    for _ in 0..n {
        if enabled.is_empty() {
            break;
        }
        let at = 5_000_000 + r.below(55_000_000);
        let f = match *r.pick(&enabled) {
            "crash" => Fault::Crash {
                host: host(&mut r),
                reboot: r.chance(0.5),
            },
            "partition" => {
                let split = 1 + r.below(hosts as u64 - 1) as u32;
                let mut ids: Vec<u32> = (1..=hosts).collect();
                for i in (1..ids.len()).rev() {
                    let j = r.below(i as u64 + 1) as usize;
                    ids.swap(i, j);
                }
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
            _ => Fault::CutOneWay {
                from: host(&mut r),
                to: host(&mut r),
            },
        };
        faults.push((at, f));
    }
    faults.push((60_000_000, Fault::HealAll));
    let mut drift = std::collections::BTreeMap::new();
    for h in 1..=hosts {
        if r.chance(0.3) {
            drift.insert(HostId(h), r.below(2_001) as i64 - 1_000);
        }
    }
    let params = SimParams {
        seed,
        drift_ppm: drift,
        ..SimParams::default()
    };
    Scenario {
        name: format!("sweep seed {seed}"),
        models: "random fault mix".into(),
        config,
        params,
        placement,
        faults,
        expects: Vec::new(),
        duration: 60_000_000 + HEAL_BOUND,
        all_running_at_end: true,
    }
}

/// After the heal, every invariant must hold within this bound.
pub const HEAL_BOUND: Micros = 90_000_000;

/// The one command that replays a sweep seed.
pub fn replay_command(hosts: u32, seed: u64, knobs: FaultKnobs) -> String {
    let mut c = format!("cargo run --release -p fdm-sim -- run --hosts {hosts} --seed {seed}");
    if knobs.skip_lease_wait {
        c.push_str(" --knob skip-lease-wait");
    }
    if knobs.skip_intent_check {
        c.push_str(" --knob skip-intent-check");
    }
    c
}

/// Percentile of a list of seconds.
pub fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * p).round() as usize]
}
