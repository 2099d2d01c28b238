//! fdm-sim: a deterministic discrete-event simulator that runs the real `fdm_core::Agent` of
//! every host in virtual time under injected faults (network partitions, loss, storage failures and
//! hangs, host crashes, agent hangs, clock drift, a master dying mid-failover), checks the safety and
//! liveness invariants continuously, and replays any run exactly from its seed.
//!
//! `world` is the simulated cluster, `scenario` the TOML scenario format, `sweep` draws random
//! clusters and fault mixes, `run` runs both and summarises, `invariants` holds one check per file,
//! `report` the human-readable output.

pub mod detect;
pub mod invariants;
pub mod report;
pub mod rng;
pub mod run;
pub mod scenario;
pub mod sweep;
pub mod world;
