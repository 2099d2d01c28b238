//! What a driver reports about the inside of a guest (VM and application monitoring, issue 17).
// moves to fdm-core io.rs at merge

/// The answer to a liveness ping of the guest's agent (the QEMU guest agent for libvirt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestPing {
    /// The guest's agent answered: the guest runs its userspace.
    Answered,
    /// An agent is configured for the VM but did not answer in time (hung guest, agent not
    /// started yet or dead): the sign that heartbeat monitoring acts on.
    NoAnswer,
    /// No agent can exist for this VM (no channel in its definition, a hypervisor without the
    /// feature): monitoring is unavailable and must never be taken for a hang.
    Unavailable,
}

/// Cumulative IO of a VM since its start, as the hypervisor counts it: a guest whose heartbeat
/// stops but whose IO goes on is busy, not hung.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoCounters {
    /// Bytes read plus bytes written, over every disk.
    pub disk_bytes: u64,
    /// Bytes received plus bytes sent, over every interface.
    pub net_bytes: u64,
}

/// The result of an application monitor command run inside the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorOutcome {
    /// The command exited with status 0.
    Passed,
    /// The command exited non-zero (or was killed by a signal: no exit code), with the start of
    /// what it printed.
    Failed {
        exit_code: Option<i32>,
        output: String,
    },
    /// The command had not exited when its timeout passed.
    TimedOut,
    /// The command could not be run: no guest agent, or the agent refused (guest-exec disabled).
    Unavailable,
}
