//! foca (SWIM, the peer fdm's detection is compared with) on fdm's simulated network: crash to
//! the first and to the last "down", and false downs per member-hour, at 16 and 128 members and
//! 0 / 5 / 20 % loss with foca's own LAN defaults; then, at 16 members and 5 % loss, how far
//! faster probing and a shorter suspicion buy detection time with false downs.
//!
//! Seeds per cell: `FOCA_SEEDS` (default 50 under `cargo bench`, 2 in a `cargo test --benches`
//! smoke run). One 1024-member run shows the simulator's cost at that size (`FOCA_BIG=0` skips it,
//! `FOCA_BIG=1` forces it in a smoke run).
//! Under `cargo bench` it writes the tables to `<target dir>/bench-report/foca_peer.md` too.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::print_stdout
)]

#[path = "support/foca_sim.rs"]
mod foca_sim;

use foca_sim::{FocaConfigKind, FocaParams, FocaRun};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const SETTLE_S: f64 = 10.0;
const OBSERVE_S: f64 = 30.0;

/// The columns both tables share: detected, first down p50/p99, all down p50/p99, false downs and
/// rejoins per member-hour.
fn detection_cols(cell: &Cell) -> String {
    format!(
        "{} | {} | {} | {} | {} | {:.2} | {:.1}",
        cell.detected(),
        secs(pct(&cell.first(), 0.5)),
        secs(pct(&cell.first(), 0.99)),
        secs(pct(&cell.all(), 0.5)),
        secs(pct(&cell.all(), 0.99)),
        cell.false_downs_per_member_hour(),
        cell.rejoins_per_member_hour(),
    )
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let seeds = env_u64("FOCA_SEEDS", if full { 50 } else { 2 }).max(1);
    let mut md = String::new();

    let _ = writeln!(
        md,
        "## foca {} on fdm's simulated network\n\n\
         `Config::new_lan(members)` unmodified. Network: each datagram lost with probability `loss`, \
         else delivered after 200 µs + U(0, 300 µs). {SETTLE_S:.0} s to join and converge, then \
         the last member crashes and {OBSERVE_S:.0} s are observed. {seeds} seeds per row. \
         Detection is from the crash; all down is when no live member holds it active any more; \
         p99 over {seeds} runs is close to the maximum. False downs are `MemberDown` about a live \
         member after the settle period; identities renew after a false down, so one host can be \
         downed again. Rejoins are live members renewing their identity because they were told \
         the cluster holds them down, which foca 2.0 also does after a refuted suspicion. \
         `converged`: runs where every member saw every other at the crash.\n",
        FOCA_VERSION
    );
    let _ = writeln!(
        md,
        "| members | loss | runs | converged | detected | first down p50 | p99 | all down p50 | p99 | false downs / member-hour | rejoins / member-hour | datagrams / run | wall / run |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for members in [16, 128] {
        for loss in [0.0, 0.05, 0.20] {
            let cell = run_cell(members, loss, FocaConfigKind::Lan, seeds);
            if loss == 0.0 {
                sanity_check(&cell);
            }
            let _ = writeln!(
                md,
                "| {members} | {:.0}% | {} | {} | {} | {:.0} | {:.0} ms |",
                loss * 100.0,
                cell.runs.len(),
                cell.converged(),
                detection_cols(&cell),
                cell.datagrams_per_run(),
                cell.wall_ms_per_run(),
            );
            print!(
                "{}",
                md.lines()
                    .last()
                    .map_or(String::new(), |l| format!("{l}\n"))
            );
        }
    }

    let _ = writeln!(
        md,
        "\n### Trade-off: 16 members, 5% and 20% loss\n\n\
         `new_lan(16)` with probe period, probe RTT and suspect-to-down replaced (gossip, \
         announce and dissemination stay LAN). The first row is the LAN default.\n"
    );
    let _ = writeln!(
        md,
        "| loss | probe period | probe rtt | suspect→down | detected | first down p50 | p99 | all down p50 | p99 | false downs / member-hour | rejoins / member-hour |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    let variants = [
        (FocaConfigKind::Lan, "1000 ms", "500 ms", "4816 ms"),
        (fast(500, 200, 2000), "500 ms", "200 ms", "2000 ms"),
        (fast(300, 100, 1000), "300 ms", "100 ms", "1000 ms"),
        (fast(200, 50, 500), "200 ms", "50 ms", "500 ms"),
        (fast(100, 20, 200), "100 ms", "20 ms", "200 ms"),
        (fast(50, 10, 100), "50 ms", "10 ms", "100 ms"),
    ];
    for (loss, (kind, period, rtt, s2d)) in [0.05, 0.20]
        .into_iter()
        .flat_map(|l| variants.iter().map(move |v| (l, *v)))
    {
        let cell = run_cell(16, loss, kind, seeds);
        let _ = writeln!(
            md,
            "| {:.0}% | {period} | {rtt} | {s2d} | {} |",
            loss * 100.0,
            detection_cols(&cell),
        );
        print!(
            "{}",
            md.lines()
                .last()
                .map_or(String::new(), |l| format!("{l}\n"))
        );
    }

    if env_u64("FOCA_BIG", u64::from(full)) != 0 {
        let t = Instant::now();
        let r = foca_sim::run(&FocaParams {
            members: 1024,
            loss: 0.0,
            seed: 1,
            settle_s: SETTLE_S,
            observe_s: OBSERVE_S,
            crash: true,
            config: FocaConfigKind::Lan,
        });
        let _ = writeln!(
            md,
            "\n1024 members, 0% loss, one run of {:.0} simulated s: {:.1} s wall, converged {}, \
             first down {}, all down {}, {} datagrams.",
            SETTLE_S + OBSERVE_S,
            t.elapsed().as_secs_f64(),
            r.converged,
            secs(r.first_down_s),
            secs(r.all_down_s),
            r.datagrams
        );
    }

    println!("\n{md}");
    // A smoke run's handful of seeds must not replace the report of a real one.
    if !full {
        println!("smoke run (no --bench): report not written");
        return;
    }
    match write_report("foca_peer.md", &md) {
        Ok(path) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write the report: {e}"),
    }
}

/// The version `Cargo.lock` resolved when this was written; keep it in step when foca is bumped.
const FOCA_VERSION: &str = "2.0.0";

fn fast(probe_period_ms: u64, probe_rtt_ms: u64, suspect_to_down_ms: u64) -> FocaConfigKind {
    FocaConfigKind::Fast {
        probe_period_ms,
        probe_rtt_ms,
        suspect_to_down_ms,
    }
}

/// A lossless network with a crash must produce a detection in every run; a table built on a
/// simulator that never delivers "down" would otherwise look like perfect accuracy.
fn sanity_check(cell: &Cell) {
    let missed = cell.runs.len() - cell.first().len();
    assert!(
        missed == 0,
        "foca_sim is broken: with 0% loss, {missed} of {} runs at {} members never declared the \
         crashed member down",
        cell.runs.len(),
        cell.members
    );
    let errors: u64 = cell.runs.iter().map(|r| r.foca_errors).sum();
    assert!(errors == 0, "foca_sim fed foca {errors} invalid inputs");
}

struct Cell {
    members: usize,
    runs: Vec<FocaRun>,
    wall_s: Vec<f64>,
}

impl Cell {
    fn first(&self) -> Vec<f64> {
        self.runs.iter().filter_map(|r| r.first_down_s).collect()
    }
    fn all(&self) -> Vec<f64> {
        self.runs.iter().filter_map(|r| r.all_down_s).collect()
    }
    fn detected(&self) -> String {
        format!("{}/{}", self.first().len(), self.runs.len())
    }
    fn converged(&self) -> String {
        let c = self.runs.iter().filter(|r| r.converged).count();
        format!("{c}/{}", self.runs.len())
    }
    fn false_downs_per_member_hour(&self) -> f64 {
        self.per_member_hour(|r| r.false_downs)
    }
    fn rejoins_per_member_hour(&self) -> f64 {
        self.per_member_hour(|r| r.rejoins)
    }
    fn per_member_hour(&self, count: impl Fn(&FocaRun) -> u64) -> f64 {
        let total: u64 = self.runs.iter().map(count).sum();
        let hours: f64 = self.runs.iter().map(|r| r.member_seconds).sum::<f64>() / 3600.0;
        if hours > 0.0 {
            total as f64 / hours
        } else {
            0.0
        }
    }
    fn datagrams_per_run(&self) -> f64 {
        let d: u64 = self.runs.iter().map(|r| r.datagrams).sum();
        d as f64 / self.runs.len().max(1) as f64
    }
    fn wall_ms_per_run(&self) -> f64 {
        self.wall_s.iter().sum::<f64>() * 1e3 / self.wall_s.len().max(1) as f64
    }
}

fn run_cell(members: usize, loss: f64, config: FocaConfigKind, seeds: u64) -> Cell {
    let results = parallel(seeds, |seed| {
        let t = Instant::now();
        let r = foca_sim::run(&FocaParams {
            members,
            loss,
            seed,
            settle_s: SETTLE_S,
            observe_s: OBSERVE_S,
            crash: true,
            config,
        });
        (r, t.elapsed().as_secs_f64())
    });
    let (runs, wall_s) = results.into_iter().unzip();
    Cell {
        members,
        runs,
        wall_s,
    }
}

/// Runs seeds `1..=seeds` on every core; results come back in seed order so a table does not
/// depend on scheduling.
fn parallel<T: Send>(seeds: u64, f: impl Fn(u64) -> T + Sync) -> Vec<T> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = AtomicU64::new(1);
    let out = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed > seeds {
                        break;
                    }
                    let r = f(seed);
                    out.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((seed, r));
                }
            });
        }
    });
    let mut v = out.into_inner().unwrap_or_else(|p| p.into_inner());
    v.sort_by_key(|(s, _)| *s);
    v.into_iter().map(|(_, r)| r).collect()
}

/// Nearest-rank percentile; `None` for no samples.
fn pct(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() - 1) as f64 * p).round() as usize;
    s.get(i).copied()
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |s| format!("{s:.2} s"))
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `<target dir>/bench-report/<file>`: `CARGO_TARGET_DIR` when absolute, else the ancestor of this
/// binary that holds cargo's `CACHEDIR.TAG` (cargo runs benches from the package directory, so a
/// relative `target/` would land beside the real one).
fn write_report(file: &str, text: &str) -> std::io::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            exe.ancestors()
                .find(|d| d.join("CACHEDIR.TAG").is_file())
                .map(|d| d.to_path_buf())
        })
        .unwrap_or_else(|| "target".into());
    let dir = target.join("bench-report");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(file);
    std::fs::write(&path, text)?;
    Ok(path)
}
