//! Running a scenario or a sweep seed, checking expectations and invariants, and summarising.

use crate::invariants;
use crate::scenario::{Expect, Scenario};
use crate::world::{Micros, StopKind, Violation, World};
use fdm_core::FaultKnobs;
use heartbeat_fs::VmId;
use heartbeat_fs::claim::describe_restart;
use heartbeat_fs::records::RestartState;

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
    /// HA-caused downtime: VM-seconds protected VMs spent stopped by HA (isolation responses,
    /// fences) before they ran again.
    pub ha_downtime_s: f64,
    /// Stops HA made of running VMs (isolation responses, fences, aborts).
    pub ha_stops: usize,
    /// VM-seconds VMs spent paused by the storage-loss response (not downtime HA caused by a
    /// stop: the guest is frozen, not off), and how many pauses the agents made.
    pub paused_s: f64,
    pub pauses: usize,
    /// VMs still paused when the run ended (after the heal, none should be: the storage is back).
    pub paused_at_end: usize,
    /// Copies a returning host's hypervisor autostarted beside the VM's copy elsewhere, and how
    /// many of those HA stopped (`stale_copy_ended`).
    pub stale_copies: usize,
    pub stale_copies_stopped: usize,
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
        Expect::VmFailed { vm } => {
            let state = w.listed_restart_state(*vm);
            let ok = matches!(state, Some(RestartState::LimitReached { .. }));
            let shown = state.map_or("not listed".to_string(), |s| describe_restart(Some(&s)));
            (ok, format!("{vm}: {shown}"))
        }
        Expect::VmRestarts { vm, count } => {
            let n = w.power_ons.iter().filter(|(_, _, v)| v == vm).count();
            (n == *count, format!("{vm}: {n} power-ons"))
        }
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
        Expect::NoStop { from, vm } => {
            let stops: Vec<String> = w
                .agent_stops
                .iter()
                .filter(|(t, _, v, _)| *t >= *from && vm.is_none_or(|x| x == *v))
                .map(|(t, h, v, c)| format!("{v}@{h} at {:.3}s ({c:?})", *t as f64 / 1e6))
                .collect();
            (
                stops.is_empty(),
                if stops.is_empty() {
                    "no HA stop".into()
                } else {
                    format!("HA stopped {}", stops.join(", "))
                },
            )
        }
        Expect::VmPending { vm } => {
            // Waiting for HA: runs nowhere, protected (listed on its home datastore, wanted on)
            // and not failed at its restart limit; a master may not even hold the claim yet.
            let on = w.where_runs(*vm);
            let entry = w.protected_entry(*vm);
            let waiting = entry.as_ref().is_some_and(|e| {
                e.desired == heartbeat_fs::records::DesiredPower::On
                    && !matches!(e.restart, RestartState::LimitReached { .. })
            });
            let state = entry.map(|e| e.restart);
            (
                on.is_empty() && waiting,
                format!("{vm} runs on {on:?}, restart state {state:?}"),
            )
        }
        Expect::EventSeen { event, vm } => {
            let seen = w
                .events_seen
                .get(event)
                .is_some_and(|about| vm.is_none() || about.contains(vm));
            (seen, format!("{event} seen: {seen}"))
        }
        Expect::EventNotSeen { event, vm } => {
            let seen = w
                .events_seen
                .get(event)
                .is_some_and(|about| vm.is_none() || about.contains(vm));
            (!seen, format!("{event} seen: {seen}"))
        }
        Expect::VmPaused { vm, hosts } => {
            let on = w.where_runs(*vm);
            let paused = w.where_paused(*vm);
            let ok = on.len() == 1 && paused == on && (hosts.is_empty() || hosts.contains(&on[0]));
            (ok, format!("{vm} runs on {on:?}, paused on {paused:?}"))
        }
        Expect::VmNotPaused { vm } => {
            let paused = w.where_paused(*vm);
            (paused.is_empty(), format!("{vm} paused on {paused:?}"))
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
        ha_downtime_s: w.ha_downtime_s(),
        ha_stops: w.agent_stops.len(),
        paused_s: w.paused_s(),
        pauses: w.pauses,
        paused_at_end: w
            .hosts
            .iter()
            .filter(|h| h.powered)
            .map(|h| h.paused.len())
            .sum(),
        stale_copies: w.stale_copies,
        stale_copies_stopped: w.stale_copies_stopped,
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

/// Percentile of a list of seconds.
pub fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * p).round() as usize]
}
