//! fdm-sim: deterministic simulation harness (being built, issue 4).
