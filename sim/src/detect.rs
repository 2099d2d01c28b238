//! Failure-detection experiments for the benchmarks: one host dies in a settled cluster under a given
//! packet loss, and the run says when the master called it dead and when the first restart left; or
//! nobody dies and the run counts false "dead" verdicts and restarts over its host-hours.

use crate::rng::Rng;
use crate::scenario;
use crate::world::{Fault, Micros, World};
use heartbeat_fs::HostId;

#[derive(Debug, Clone)]
pub struct DetectParams {
    pub hosts: u32,
    pub vms_per_host: u32,
    /// Independent loss of every datagram, 0..1.
    pub loss: f64,
    pub seed: u64,
    /// Crash a host (otherwise: count false positives only).
    pub crash: bool,
    /// Simulated seconds before the crash (election, claims, protected lists settled).
    pub settle_s: f64,
    /// Simulated seconds observed after it.
    pub observe_s: f64,
    /// Timing overrides by field name, milliseconds (see [`scaled_timings`]).
    pub timings: std::collections::BTreeMap<String, u64>,
}

/// Every detection-related default timing multiplied by `f` (0.5: twice as fast), keeping the
/// relations `Timings::validate` requires.
pub fn scaled_timings(f: f64) -> std::collections::BTreeMap<String, u64> {
    [
        ("heartbeat_interval", 500),
        ("host_unreachable_after", 1500),
        ("master_lost_after", 1500),
        ("election_window", 1000),
        ("ds_heartbeat_interval", 500),
        ("ds_read_interval", 250),
        ("ds_lease", 3000),
        ("net_lease", 3000),
        ("claim_lease", 3000),
        ("claim_renew_interval", 500),
        ("fence_margin", 1000),
        ("watchdog_timeout", 1000),
        ("isolation_detect_after", 4000),
        ("isolation_response_delay", 2000),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ((v as f64 * f).round() as u64).max(1)))
    .collect()
}

#[derive(Debug, Clone, Default)]
pub struct DetectRun {
    /// Crash to the master's "dead" verdict, seconds.
    pub dead_s: Option<f64>,
    /// Crash to the first restart issued for one of its VMs, seconds.
    pub first_restart_s: Option<f64>,
    /// "Dead" verdicts on hosts that were up.
    pub false_dead: u64,
    /// Restarts issued while no host had died (false restarts), in a run without crash.
    pub false_restarts: u64,
    /// Live hosts x simulated seconds observed, for rates per host-hour.
    pub host_seconds: f64,
    pub events: u64,
    pub messages: u64,
}

fn scenario_text(p: &DetectParams, duration_s: f64) -> String {
    let all = (1..=p.hosts)
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let timings: String = p
        .timings
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    format!(
        "name='detect'\nmodels='failure detection under loss'\nseed={seed}\nduration='{duration_s}s'\n\
         expect_all_running_at_end=false\n[cluster]\nhosts={hosts}\nhost_memory_mb=262144\n\
         vms_per_host={vms}\ndatastores=[[{all}],[{all}]]\n[network]\nloss={loss}\n[timings]\n{timings}",
        seed = p.seed,
        hosts = p.hosts,
        vms = p.vms_per_host,
        loss = p.loss,
    )
}

/// One run. The crashed host is a random slave of the master at crash time, so that the figure is
/// host death to verdict (master death adds an election and the claim lease; see docs/timings.md).
pub fn run(p: &DetectParams) -> Result<DetectRun, String> {
    let duration_s = p.settle_s + p.observe_s;
    let sc = scenario::parse(&scenario_text(p, duration_s)).map_err(|e| e.to_string())?;
    let mut w = World::new(sc.config.clone(), sc.params.clone(), &sc.placement);
    let mut rng = Rng::new(p.seed ^ 0xdead_5eed);
    // A random phase within a heartbeat period, so detection is not sampled at one phase only.
    let settle: Micros = (p.settle_s * 1e6) as Micros + rng.below(1_000_000);
    w.run_until(settle);
    let mut out = DetectRun::default();
    let crashed = if p.crash {
        let master = w.masters().first().copied();
        let slaves: Vec<HostId> = w
            .hosts
            .iter()
            .map(|h| h.id)
            .filter(|h| Some(*h) != master)
            .collect();
        let victim = slaves[rng.below(slaves.len() as u64) as usize];
        w.schedule_fault(
            w.now,
            Fault::Crash {
                host: victim,
                reboot: false,
            },
        );
        Some(victim)
    } else {
        None
    };
    let crash_at = w.now;
    let issued_before = w.restarts_issued.len();
    let false_before = w.false_dead.len();
    w.run_until(settle + (p.observe_s * 1e6) as Micros);
    if let Some(victim) = crashed {
        out.dead_s = w
            .detections
            .iter()
            .find(|(h, c, _)| *h == victim && *c >= crash_at)
            .map(|(_, c, d)| (d - c) as f64 / 1e6);
        out.first_restart_s = w.restarts_issued[issued_before..]
            .iter()
            .map(|(t, _)| (t - crash_at) as f64 / 1e6)
            .reduce(f64::min);
    } else {
        out.false_restarts = (w.restarts_issued.len() - issued_before) as u64;
    }
    out.false_dead = (w.false_dead.len() - false_before) as u64;
    let live = p.hosts as f64 - f64::from(u8::from(crashed.is_some()));
    out.host_seconds = live * p.observe_s;
    out.events = w.events_processed;
    out.messages = w.messages;
    // The safety invariants hold in these runs too; a violation makes the figure meaningless.
    if let Some(v) = w.violations.first() {
        return Err(format!(
            "seed {}: invariant {} broken: {}",
            p.seed, v.invariant, v.detail
        ));
    }
    Ok(out)
}

/// Master CPU and memory at scale: the time spent inside the master agent's handlers per simulated
/// second, and its heap, are measured by the caller around [`World::run_until`]; this builds the
/// world for it.
pub fn scale_world(hosts: u32, vms_per_host: u32, seed: u64) -> Result<World, String> {
    let p = DetectParams {
        hosts,
        vms_per_host,
        loss: 0.0,
        seed,
        crash: false,
        settle_s: 0.0,
        observe_s: 0.0,
        timings: Default::default(),
    };
    let sc = scenario::parse(&scenario_text(&p, 3600.0)).map_err(|e| e.to_string())?;
    Ok(World::new(
        sc.config.clone(),
        sc.params.clone(),
        &sc.placement,
    ))
}
