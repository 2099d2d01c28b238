//! Failure detection, fdm against foca (SWIM) on the same simulated network: host death to the
//! first "dead"/"down" declaration, and false declarations about live hosts, at several cluster
//! sizes and packet-loss rates. Writes `target/bench-report/detection.md` and the CDF plot
//! `target/bench-report/detection-cdf.svg`.
//!
//! Seeds per cell: `FDM_DETECT_SEEDS` (default 1000 at 16 and 128 hosts), `FDM_DETECT_SEEDS_BIG`
//! at 1024 hosts (default a tenth of that), `FOCA_SEEDS` for the peer (default 200).
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::print_stdout
)]

#[path = "support/foca_sim.rs"]
mod foca_sim;

use fdm_benches::report::{Cdf, write_report};
use fdm_sim::detect::{DetectParams, DetectRun, run};
use std::time::Instant;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `seeds` independent simulations on every core.
fn parallel<T: Send>(seeds: u64, f: impl Fn(u64) -> T + Sync) -> Vec<T> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicU64::new(1);
    let out = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed > seeds {
                        break;
                    }
                    let r = f(seed);
                    out.lock().expect("results").push((seed, r));
                }
            });
        }
    });
    let mut v = out.into_inner().expect("results");
    v.sort_by_key(|(s, _)| *s);
    v.into_iter().map(|(_, r)| r).collect()
}

fn pct(v: &[f64], p: f64) -> f64 {
    fdm_sim::run::pct(v, p)
}

struct Cell {
    hosts: u32,
    loss: f64,
    seeds: u64,
    dead: Vec<f64>,
    restart: Vec<f64>,
    missed: u64,
    false_dead: u64,
    host_hours: f64,
    wall: f64,
}

fn fdm_cell(hosts: u32, loss: f64, seeds: u64) -> Cell {
    let t0 = Instant::now();
    let runs: Vec<DetectRun> = parallel(seeds, |seed| {
        run(&DetectParams {
            hosts,
            vms_per_host: 2,
            loss,
            seed,
            crash: true,
            settle_s: 12.0,
            observe_s: 15.0,
            timings: Default::default(),
        })
        .unwrap_or_else(|e| panic!("{e} (replay: hosts {hosts}, loss {loss}, seed {seed})"))
    });
    let mut c = Cell {
        hosts,
        loss,
        seeds,
        dead: runs.iter().filter_map(|r| r.dead_s).collect(),
        restart: runs.iter().filter_map(|r| r.first_restart_s).collect(),
        missed: runs.iter().filter(|r| r.dead_s.is_none()).count() as u64,
        false_dead: runs.iter().map(|r| r.false_dead).sum(),
        host_hours: runs.iter().map(|r| r.host_seconds).sum::<f64>() / 3600.0,
        wall: 0.0,
    };
    c.wall = t0.elapsed().as_secs_f64();
    c
}

/// Runs without any death: every "dead" verdict and every restart is false.
fn fdm_false_positives(hosts: u32, loss: f64, seeds: u64, seconds: f64) -> (u64, u64, f64) {
    let runs = parallel(seeds, |seed| {
        run(&DetectParams {
            hosts,
            vms_per_host: 2,
            loss,
            seed: seed + 1_000_000,
            crash: false,
            settle_s: 15.0,
            observe_s: seconds,
            timings: Default::default(),
        })
        .unwrap_or_else(|e| panic!("{e}"))
    });
    (
        runs.iter().map(|r| r.false_dead).sum(),
        runs.iter().map(|r| r.false_restarts).sum(),
        runs.iter().map(|r| r.host_seconds).sum::<f64>() / 3600.0,
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seeds = env_u64("FDM_DETECT_SEEDS", 1000);
    let foca_seeds = env_u64("FOCA_SEEDS", 200);
    // 1024-host runs cost ~0.6 core-seconds each: a tenth of the seeds keeps the whole report
    // within its time budget; FDM_DETECT_SEEDS_BIG=1000 runs the full count (about 25 minutes).
    let big_seeds = env_u64("FDM_DETECT_SEEDS_BIG", (seeds / 10).max(1));
    let started = Instant::now();
    let mut md = String::new();
    md.push_str("## Failure detection in the simulator (benches/benches/detection.rs)\n\n");
    md.push_str(
        "One random slave dies (power loss) in a settled cluster of `hosts`, 2 VMs per host, two \
         shared datastores, every datagram lost independently with probability `loss`; latency \
         200 us + uniform 0-300 us. fdm: crash to the master's `dead` verdict and to the first \
         restart issued. foca (SWIM, its `Config::new_lan` defaults) on the same network model: \
         crash to the first member declaring it down, and to every member having it down.\n\n",
    );
    md.push_str("| system | hosts | loss | runs | detect p50 | p90 | p99 | max | first restart p50 | p99 | missed | false dead/down per host-hour | wall |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut fdm16: Vec<(f64, Vec<f64>)> = Vec::new();
    let mut foca16: Vec<(f64, Vec<f64>)> = Vec::new();
    for &hosts in &[16u32, 128, 1024] {
        for &loss in &[0.0, 0.05, 0.20] {
            let n = if hosts >= 1024 { big_seeds } else { seeds };
            let c = fdm_cell(hosts, loss, n);
            let row = format!(
                "| fdm | {} | {:.0}% | {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {} | {:.3} | {:.0} s |\n",
                c.hosts,
                c.loss * 100.0,
                c.seeds,
                pct(&c.dead, 0.5),
                pct(&c.dead, 0.9),
                pct(&c.dead, 0.99),
                pct(&c.dead, 1.0),
                pct(&c.restart, 0.5),
                pct(&c.restart, 0.99),
                c.missed,
                c.false_dead as f64 / c.host_hours.max(1e-9),
                c.wall
            );
            print!("{row}");
            md.push_str(&row);
            if hosts == 16 {
                fdm16.push((loss, c.dead.clone()));
            }
            if hosts <= 128 {
                let f = foca_row(hosts, loss, foca_seeds);
                print!("{}", f.0);
                md.push_str(&f.0);
                if hosts == 16 {
                    foca16.push((loss, f.1));
                }
            }
        }
    }
    md.push_str(
        "\n`missed`: runs where no verdict came within the 15 s observed. foca at 1024 members is \
         not run (see the foca section).\n\n",
    );
    // False positives over long runs without any death.
    md.push_str("### False positives without any death (16 hosts)\n\n| system | loss | host-hours | false dead/down | false restarts |\n|---|---|---|---|---|\n");
    for &loss in &[0.05, 0.20] {
        let (fd, fr, hh) = fdm_false_positives(16, loss, (seeds / 20).max(1), 600.0);
        let row = format!("| fdm | {:.0}% | {hh:.1} | {fd} | {fr} |\n", loss * 100.0);
        print!("{row}");
        md.push_str(&row);
        let f = foca_false_positives(16, loss, (foca_seeds / 10).max(1), 600.0);
        let row = format!(
            "| foca | {:.0}% | {:.1} | {} | - |\n",
            loss * 100.0,
            f.1,
            f.0
        );
        print!("{row}");
        md.push_str(&row);
    }
    // fdm's trade-off: every detection timing scaled; detection against false verdicts under loss.
    md.push_str("\n### fdm trade-off: all detection timings scaled (16 hosts)\n\n| loss | scale | ds lease | detect p50 | p99 | false dead per host-hour (crash runs + 600 s runs without death) |\n|---|---|---|---|---|---|\n");
    for (loss, f) in [0.05, 0.20]
        .into_iter()
        .flat_map(|l| [0.25, 0.5, 1.0, 2.0].into_iter().map(move |f| (l, f)))
    {
        let t = fdm_sim::detect::scaled_timings(f);
        let n = (seeds / 5).max(1);
        let runs = parallel(n, |seed| {
            let base = DetectParams {
                hosts: 16,
                vms_per_host: 2,
                loss,
                seed,
                crash: true,
                settle_s: 12.0,
                observe_s: 15.0,
                timings: t.clone(),
            };
            let crash = run(&base).unwrap_or_else(|e| panic!("{e}"));
            let quiet = run(&DetectParams {
                crash: false,
                observe_s: 600.0,
                seed: seed + 2_000_000,
                ..base
            })
            .unwrap_or_else(|e| panic!("{e}"));
            (crash, quiet)
        });
        let dead: Vec<f64> = runs.iter().filter_map(|(c, _)| c.dead_s).collect();
        let fd: u64 = runs.iter().map(|(c, q)| c.false_dead + q.false_dead).sum();
        let hh: f64 = runs
            .iter()
            .map(|(c, q)| c.host_seconds + q.host_seconds)
            .sum::<f64>()
            / 3600.0;
        let row = format!(
            "| {:.0}% | x{f} | {} ms | {:.2} s | {:.2} s | {:.3} ({fd} in {hh:.0} host-hours) |\n",
            loss * 100.0,
            t["ds_lease"],
            pct(&dead, 0.5),
            pct(&dead, 0.99),
            fd as f64 / hh.max(1e-9)
        );
        print!("{row}");
        md.push_str(&row);
    }
    md.push_str("\nfoca's trade-off (probe period, RTT, suspicion time) is in the foca section.\n");
    let mut cdf = Cdf::new("Host death to first declaration, 16 hosts", "seconds");
    for (loss, v) in &fdm16 {
        cdf.series(format!("fdm, {:.0}% loss", loss * 100.0), v.clone());
    }
    for (loss, v) in &foca16 {
        cdf.series(format!("foca, {:.0}% loss", loss * 100.0), v.clone());
    }
    md.push_str("\n![detection CDF](detection-cdf.svg)\n");
    md.push_str(&format!(
        "\nWall time of this benchmark: {:.0} s.\n",
        started.elapsed().as_secs_f64()
    ));
    write_report("detection.md", &md);
    write_report("detection-cdf.svg", &cdf.svg());
}

/// foca without any death: every "down" is false. (false downs, member-hours)
fn foca_false_positives(members: u32, loss: f64, seeds: u64, seconds: f64) -> (u64, f64) {
    let runs = parallel(seeds, |seed| {
        foca_sim::run(&foca_sim::FocaParams {
            members: members as usize,
            loss,
            seed: seed + 1_000_000,
            settle_s: 15.0,
            observe_s: seconds,
            crash: false,
            config: foca_sim::FocaConfigKind::Lan,
        })
    });
    (
        runs.iter().map(|r| r.false_downs).sum(),
        runs.iter().map(|r| r.member_seconds).sum::<f64>() / 3600.0,
    )
}

/// One foca row and its first-down samples.
fn foca_row(members: u32, loss: f64, seeds: u64) -> (String, Vec<f64>) {
    let t0 = Instant::now();
    let runs = parallel(seeds, |seed| {
        foca_sim::run(&foca_sim::FocaParams {
            members: members as usize,
            loss,
            seed,
            settle_s: 15.0,
            observe_s: 25.0,
            crash: true,
            config: foca_sim::FocaConfigKind::Lan,
        })
    });
    let first: Vec<f64> = runs.iter().filter_map(|r| r.first_down_s).collect();
    let all: Vec<f64> = runs.iter().filter_map(|r| r.all_down_s).collect();
    let missed = runs.iter().filter(|r| r.first_down_s.is_none()).count();
    let fd: u64 = runs.iter().map(|r| r.false_downs).sum();
    let hh: f64 = runs.iter().map(|r| r.member_seconds).sum::<f64>() / 3600.0;
    (
        format!(
            "| foca | {members} | {:.0}% | {seeds} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | all down p50 {:.2} s | p99 {:.2} s | {missed} | {:.3} | {:.0} s |\n",
            loss * 100.0,
            pct(&first, 0.5),
            pct(&first, 0.9),
            pct(&first, 0.99),
            pct(&first, 1.0),
            pct(&all, 0.5),
            pct(&all, 0.99),
            fd as f64 / hh.max(1e-9),
            t0.elapsed().as_secs_f64()
        ),
        first,
    )
}
