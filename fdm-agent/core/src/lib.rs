//! fdm-core: the sans-IO core of the fdm HA agent, and the authenticated wire envelope it speaks.
//!
//! The protocol (election, heartbeats, verdicts, isolation, self-fencing, claims and failover) as a
//! pure state machine. One [`Agent`] per host. It is fed inputs, each with the current [`Time`]
//! (`handle_*`), and drained of outputs (`poll_output`, `poll_timeout`). It owns no socket, file,
//! thread, clock or RNG, so the tokio runtime (`fdm-agent`), the simulator (`fdm-sim`) and unit tests
//! all drive the very same code.
//!
//! `clippy.toml` next to this crate's `Cargo.toml` bans clocks, sleeps, threads, files, sockets,
//! processes, environment reads and the OS-seeded `HashMap`/`HashSet`; forbidden here, so that no
//! module can allow them back.
#![forbid(clippy::disallowed_methods, clippy::disallowed_types)]
// A function longer than a screen or with more than six parameters says why, in an `allow` with
// its reason, where it is.
#![warn(clippy::too_many_lines, clippy::too_many_arguments)]

mod agent;
pub mod cluster;
pub mod config;
pub mod events;
pub mod io;
#[cfg(feature = "fault-knobs")]
pub mod knobs;
pub mod messages;
pub mod placement;
mod time;
pub mod wire;

#[cfg(test)]
mod tests;

pub use agent::{Agent, AgentStats, HostView, StartStats, StatusSnapshot, VmView};
pub use config::{AgentSettings, Timings};
pub use events::{Event, EventFields, Role, Verdict};
pub use io::{
    HypervisorAction, HypervisorEvent, OperatorCommand, Output, StopCause, Transmit, VmRunState,
};
#[cfg(feature = "fault-knobs")]
pub use knobs::{FaultKnobs, SafetyStep};
pub use time::Time;

/// Whether this build can remove safety steps (the simulator's and tests' builds only).
pub const FAULT_KNOBS_COMPILED: bool = cfg!(feature = "fault-knobs");
