//! The master at scale: CPU time inside its handlers per simulated second, datagrams per second it
//! receives, and its heap, at 64, 256, 1024 and 4096 hosts with 50 VMs each, in the simulator
//! (the real core, virtual time). Writes `target/bench-report/scale.md`.
//!
//! Heap: a counting global allocator; the master's heap is what dropping its `Agent` frees (the
//! cluster configuration is shared by every agent and counted once, apart).
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::print_stdout
)]

use fdm_benches::report::write_report;
use fdm_sim::detect::scale_world;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

struct Counting;
static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<u32> = std::env::var("FDM_SCALE_HOSTS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![64, 256, 1024, 4096]);
    let measure_s = 30.0;
    let mut md = String::from(
        "## The master at scale (benches/benches/scale.rs)\n\n\
         Simulated cluster, 50 VMs per host, two datastores every host mounts, no faults; after 20 s \
         of settling, the master is measured over 30 simulated seconds. CPU: wall time inside the \
         master agent's handlers (one core of this machine), per simulated second. Heap: bytes freed \
         when the master's agent is dropped (its own state); a slave's for comparison; the shared \
         cluster configuration apart.\n\n\
         | hosts | VMs | master CPU per simulated s | share of one core | datagrams/s at the master | master heap | slave heap | cluster config | wall |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for &hosts in &sizes {
        let t0 = Instant::now();
        let before_world = live();
        let mut w = scale_world(hosts, 50, 7).expect("scale world");
        let config_bytes = live() - before_world;
        w.run_until(20_000_000);
        let master = *w.masters().first().expect("a master after 20 s");
        w.profile = Some(master);
        let (busy0, dg0, now0) = (w.profile_busy_ns, w.profile_datagrams, w.now);
        w.run_until(now0 + (measure_s * 1e6) as u64);
        let secs = (w.now - now0) as f64 / 1e6;
        let cpu_ms = (w.profile_busy_ns - busy0) as f64 / 1e6 / secs;
        let dgs = (w.profile_datagrams - dg0) as f64 / secs;
        let heap_of = |w: &mut fdm_sim::world::World, h| {
            let i = w.hosts.iter().position(|x| x.id == h).expect("host");
            let before = live();
            let agent = w.hosts[i].agent.take();
            drop(agent);
            before - live()
        };
        let slave = w
            .hosts
            .iter()
            .map(|h| h.id)
            .find(|h| *h != master)
            .expect("a slave");
        let master_heap = heap_of(&mut w, master);
        let slave_heap = heap_of(&mut w, slave);
        let row = format!(
            "| {hosts} | {} | {cpu_ms:.2} ms | {:.2} % | {dgs:.0} | {:.2} MiB | {:.1} KiB | {:.1} MiB | {:.1} s |\n",
            hosts * 50,
            cpu_ms / 10.0,
            master_heap as f64 / (1 << 20) as f64,
            slave_heap as f64 / 1024.0,
            config_bytes as f64 / (1 << 20) as f64,
            t0.elapsed().as_secs_f64()
        );
        print!("{row}");
        md.push_str(&row);
    }
    md.push_str(
        "\nThe config column is everything the simulated world allocates up front (the cluster \
         configuration shared by all agents, the datastores' initial records and the world's own \
         tables), an upper bound for the configuration one real agent holds.\n",
    );
    write_report("scale.md", &md);
}
