//! `fdm-sim`: run scenario files, replay seeds, sweep random fault mixes, measure the simulator.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use fdm_core::{FaultKnobs, SafetyStep};
use fdm_sim::report;
use fdm_sim::run::{self, pct};
use fdm_sim::sweep::{self, Profile};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "fdm-sim",
    version,
    about = "Deterministic fault simulation of an fdm cluster, running the real agent core"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario file, or replay a sweep seed (`--seed S --hosts N`).
    Run {
        /// Scenario file (TOML, see docs/scenarios.md).
        scenario: Option<PathBuf>,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, default_value_t = 16)]
        hosts: u32,
        /// The sweep profile the seed belongs to: all, stale-commands, claim-handover, correlated.
        #[arg(long, default_value = "all")]
        profile: String,
        /// Remove a safety step of the core, to show the checks catch its removal: skip-lease-wait,
        /// skip-settle-wait, skip-write-ahead, skip-intent-check, skip-power-on-list,
        /// skip-isolation-record, skip-self-fence, ignore-claim-loss, skip-one-target, and the
        /// hold-without-every-host, skip-home-lease-check, skip-stale-copy-check,
        /// skip-duplicate-resolution, and the availability steps skip-isolation-owner-check,
        /// skip-outage-hold (docs/safety.md).
        #[arg(long)]
        knob: Vec<String>,
        /// Write the event trace as JSON lines.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Write a timeline picture.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Run every scenario of a directory.
    Library {
        #[arg(default_value = "sim/scenarios")]
        dir: PathBuf,
    },
    /// Random fault mixes, one per seed; every invariant checked; violations print their replay command.
    Sweep {
        #[arg(long, default_value_t = 16)]
        hosts: u32,
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Which fault kinds to draw: all, stale-commands, claim-handover, correlated (docs/scenarios.md).
        #[arg(long, default_value = "all")]
        profile: String,
        /// Remove a safety step (see `run --knob`).
        #[arg(long)]
        knob: Vec<String>,
    },
    /// Measure the simulator: events per second, and a large run's wall time.
    Bench {
        #[arg(long, default_value_t = 1024)]
        hosts: u32,
        #[arg(long, default_value_t = 50)]
        vms_per_host: u32,
        /// Simulated seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
}

fn profile(name: &str) -> anyhow::Result<Profile> {
    Profile::from_name(name).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown profile `{name}`; expected one of {}",
            Profile::ALL.map(Profile::name).join(", ")
        )
    })
}

fn knobs(names: &[String]) -> anyhow::Result<FaultKnobs> {
    let mut k = FaultKnobs::default();
    for n in names {
        match SafetyStep::from_knob(n) {
            Some(step) => k.remove(step),
            None => anyhow::bail!(
                "unknown knob `{n}`; expected one of {}",
                SafetyStep::ALL.map(SafetyStep::knob).join(", ")
            ),
        }
    }
    Ok(k)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fdm-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<bool> {
    match Cli::parse().command {
        Command::Run {
            scenario,
            seed,
            hosts,
            profile: profile_name,
            knob,
            trace,
            svg,
        } => {
            let k = knobs(&knob)?;
            let sc = match (scenario, seed) {
                (Some(p), _) => {
                    let text =
                        std::fs::read_to_string(&p).with_context(|| p.display().to_string())?;
                    let mut sc =
                        fdm_sim::scenario::parse(&text).with_context(|| p.display().to_string())?;
                    if let Some(s) = seed {
                        sc.params.seed = s;
                    }
                    sc
                }
                (None, Some(s)) => sweep::scenario(hosts, s, profile(&profile_name)?),
                (None, None) => anyhow::bail!("give a scenario file or --seed"),
            };
            let r = run::run_scenario(&sc, trace.is_some() || svg.is_some(), k);
            print!("{}", report::summary_table(&r));
            if let Some(p) = trace {
                std::fs::write(&p, report::jsonl(&r))?;
            }
            if let Some(p) = svg {
                std::fs::write(&p, report::svg(&r))?;
            }
            Ok(r.passed())
        }
        Command::Library { dir } => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            let mut failed = 0;
            for f in &files {
                let sc = match std::fs::read_to_string(f)
                    .map_err(anyhow::Error::from)
                    .and_then(|t| fdm_sim::scenario::parse(&t).map_err(anyhow::Error::from))
                {
                    Ok(sc) => sc,
                    Err(e) => {
                        println!("FAIL {}: {e}", f.display());
                        failed += 1;
                        continue;
                    }
                };
                let r = run::run_scenario(&sc, false, FaultKnobs::default());
                println!(
                    "{:<4} {}",
                    if r.passed() { "ok" } else { "FAIL" },
                    f.display()
                );
                if !r.passed() {
                    failed += 1;
                    print!("{}", report::summary_table(&r));
                }
            }
            println!("{} passed, {} failed", files.len() - failed, failed);
            Ok(failed == 0)
        }
        Command::Sweep {
            hosts,
            seeds,
            from,
            profile: profile_name,
            knob,
        } => {
            let k = knobs(&knob)?;
            let p = profile(&profile_name)?;
            let t0 = Instant::now();
            let (mut detection, mut restart, mut bad, mut events, mut false_restarts) =
                (Vec::new(), Vec::new(), 0, 0u64, 0);
            let (mut downtime, mut ha_stops, mut vm_seconds) = (0.0f64, 0usize, 0.0f64);
            let (mut paused, mut pauses, mut paused_at_end) = (0.0f64, 0usize, 0usize);
            let (mut stale, mut stale_stopped) = (0usize, 0usize);
            for seed in from..from + seeds {
                let sc = sweep::scenario(hosts, seed, p);
                let r = run::run_scenario(&sc, false, k);
                events += r.summary.events;
                detection.extend(r.summary.detection.iter().copied());
                restart.extend(r.summary.restart.iter().copied());
                false_restarts += r.summary.false_restarts;
                downtime += r.summary.ha_downtime_s;
                ha_stops += r.summary.ha_stops;
                paused += r.summary.paused_s;
                pauses += r.summary.pauses;
                paused_at_end += r.summary.paused_at_end;
                stale += r.summary.stale_copies;
                stale_stopped += r.summary.stale_copies_stopped;
                vm_seconds += r.summary.sim_seconds * sc.config.vms.len() as f64;
                if !r.violations.is_empty() {
                    bad += 1;
                    println!("seed {seed}: {} violation(s)", r.violations.len());
                    for v in r.violations.iter().take(5) {
                        println!("  @{:.3}s {}: {}", v.at as f64 / 1e6, v.invariant, v.detail);
                    }
                    println!("  last events:");
                    for l in r.world.recent.iter().rev().take(12).rev() {
                        println!(
                            "    {:>9.3}s {:>5} {}",
                            l.t,
                            l.host.map(|h| h.to_string()).unwrap_or_default(),
                            l.what
                        );
                    }
                    println!("  replay: {}", sweep::replay_command(hosts, seed, p, k));
                }
            }
            let wall = t0.elapsed().as_secs_f64();
            println!(
                "sweep: {hosts} hosts, profile {}, seeds {from}..{}: {} with violations; {events} events in {wall:.1} s ({:.0} events/s)",
                p.name(),
                from + seeds - 1,
                bad,
                events as f64 / wall
            );
            println!(
                "detection p50 {:.2} s p99 {:.2} s; restart p50 {:.2} s p99 {:.2} s (n={}); false restarts {false_restarts}",
                pct(&detection, 0.5),
                pct(&detection, 0.99),
                pct(&restart, 0.5),
                pct(&restart, 0.99),
                restart.len()
            );
            println!(
                "HA-caused downtime {downtime:.1} VM-seconds ({:.4} % of {vm_seconds:.0} VM-seconds simulated), from {ha_stops} HA stops",
                if vm_seconds > 0.0 {
                    100.0 * downtime / vm_seconds
                } else {
                    0.0
                }
            );
            println!(
                "paused by the storage-loss response {paused:.1} VM-seconds, from {pauses} pauses (frozen, not counted as downtime); {paused_at_end} VMs still paused at the end"
            );
            println!(
                "stale copies (autostarted at a returning host's boot beside the VM's copy elsewhere) {stale}, stopped by HA {stale_stopped}"
            );
            Ok(bad == 0)
        }
        Command::Bench {
            hosts,
            vms_per_host,
            seconds,
        } => {
            let text = format!(
                "name='bench'\nmodels='scale'\nduration='{seconds}s'\nexpect_all_running_at_end=true\n[cluster]\nhosts={hosts}\nhost_memory_mb=262144\nvms_per_host={vms_per_host}\ndatastores=[{all},{all}]\n[[fault]]\nat='{}s'\nkind='crash'\nhost=2\n",
                seconds / 2,
                all = format!(
                    "[{}]",
                    (1..=hosts)
                        .map(|h| h.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            );
            let sc = fdm_sim::scenario::parse(&text)?;
            let t0 = Instant::now();
            let r = run::run_scenario(&sc, false, FaultKnobs::default());
            let wall = t0.elapsed().as_secs_f64();
            print!("{}", report::summary_table(&r));
            println!(
                "bench: {hosts} hosts x {vms_per_host} VMs, {seconds} s simulated in {wall:.2} s wall: {:.0} events/s",
                r.summary.events as f64 / wall
            );
            println!("queue at the end: {} events", r.world.queued());
            Ok(r.passed())
        }
    }
}
