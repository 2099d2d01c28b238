//! fdm-benches: latency and scale benchmarks. `cargo bench -p fdm-benches` runs them; each prints a
//! table. This library holds the small statistics helpers they share.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod report;

use std::time::{Duration, Instant};

/// Latency samples in nanoseconds.
#[derive(Debug, Default)]
pub struct Samples(Vec<u64>);

impl Samples {
    pub fn with_capacity(n: usize) -> Self {
        Samples(Vec::with_capacity(n))
    }
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_nanos() as u64);
    }
    /// Time `f` once and record it.
    pub fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.push(t.elapsed());
        r
    }
    pub fn percentile(&mut self, p: f64) -> u64 {
        if self.0.is_empty() {
            return 0;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() - 1) as f64 * p).round() as usize;
        self.0[i]
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// `name  n  p50  p99  p99.9` in microseconds.
    pub fn row(&mut self, name: &str) -> String {
        let (p50, p99, p999) = (
            self.percentile(0.5),
            self.percentile(0.99),
            self.percentile(0.999),
        );
        format!(
            "{name:<44} {:>8} {:>10.2} {:>10.2} {:>10.2}",
            self.len(),
            p50 as f64 / 1e3,
            p99 as f64 / 1e3,
            p999 as f64 / 1e3
        )
    }
}

pub fn header() -> String {
    format!(
        "{:<44} {:>8} {:>10} {:>10} {:>10}",
        "operation", "n", "p50 us", "p99 us", "p99.9 us"
    )
}

/// `cargo bench` passes `--bench`; a quick smoke run (`cargo test --benches`) passes nothing.
pub fn iterations(full: usize) -> usize {
    if std::env::args().any(|a| a == "--bench") {
        full
    } else {
        (full / 100).max(10)
    }
}

/// CLOCK_MONOTONIC in nanoseconds. Unlike `Instant`, its value means the same thing in every process
/// on the machine, so latencies can be computed from timestamps taken in two processes.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `p50 | p99 | p99.9` in microseconds, as markdown table cells.
pub fn md_percentiles(s: &mut Samples) -> String {
    let us = |ns: u64| ns as f64 / 1e3;
    format!(
        "{:.1} | {:.1} | {:.1}",
        us(s.percentile(0.5)),
        us(s.percentile(0.99)),
        us(s.percentile(0.999))
    )
}
