//! fdm-benches: latency and scale benchmarks (being built, issue 8).
