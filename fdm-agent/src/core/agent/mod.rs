//! The agent state machine. (API fixed; internals being written.)

use super::config::AgentSettings;
use super::events::{Role, Verdict};
use super::io::{HypervisorEvent, OperatorCommand, Output, VmRunState};
use super::time::Time;
use heartbeat_fs::ops::DsCompletion;
use heartbeat_fs::records::ClusterConfig;
use heartbeat_fs::{DatastoreId, HostId, VmId};
use std::collections::VecDeque;

/// Counters for metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AgentStats {
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub drops: crate::wire::DropCounters,
    pub ds_ops_issued: u64,
    pub ds_ops_failed: u64,
    pub restarts_issued: u64,
}

/// The master's view of one host, for status and reports.
#[derive(Debug, Clone, PartialEq)]
pub struct HostView {
    pub host: HostId,
    pub verdict: Verdict,
    /// Seconds since the last network heartbeat, if any.
    pub net_age: Option<f64>,
    /// Per datastore: seconds since the heartbeat sequence last advanced.
    pub ds_age: Vec<(DatastoreId, Option<f64>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VmView {
    pub vm: VmId,
    pub host: Option<HostId>,
    pub state: Option<VmRunState>,
    pub restart: String,
}

/// What `fdm-agent status` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusSnapshot {
    pub host: HostId,
    pub role: Role,
    pub master: Option<HostId>,
    pub hosts: Vec<HostView>,
    pub vms: Vec<VmView>,
    pub config_generation: u64,
}

#[derive(Debug)]
pub struct Agent {
    settings: AgentSettings,
    role: Role,
    outputs: VecDeque<Output>,
    stats: AgentStats,
    config: Option<ClusterConfig>,
}

impl Agent {
    /// A fresh agent. `config` is the bootstrap cluster configuration (from the local config file's
    /// seed or a previous datastore read); the newest valid copy on the datastores replaces it.
    pub fn new(settings: AgentSettings, config: Option<ClusterConfig>, now: Time) -> Self {
        let _ = now;
        Agent {
            settings,
            role: Role::Starting,
            outputs: VecDeque::new(),
            stats: AgentStats::default(),
            config,
        }
    }

    pub fn handle_datagram(&mut self, now: Time, payload: &[u8]) {
        let _ = (now, payload);
    }
    pub fn handle_datastore(&mut self, now: Time, completion: DsCompletion) {
        let _ = (now, completion);
    }
    pub fn handle_hypervisor(&mut self, now: Time, event: HypervisorEvent) {
        let _ = (now, event);
    }
    /// Answer to `Output::CheckIsolation`: whether any isolation address answered.
    pub fn handle_isolation_check(&mut self, now: Time, reachable: bool) {
        let _ = (now, reachable);
    }
    /// Answer to `Output::Probe`.
    pub fn handle_probe(&mut self, now: Time, host: HostId, answered: bool) {
        let _ = (now, host, answered);
    }
    pub fn handle_command(&mut self, now: Time, command: OperatorCommand) {
        let _ = (now, command);
    }
    /// A timer fired (or the driver is not sure: spurious calls are no-ops).
    pub fn handle_timeout(&mut self, now: Time) {
        let _ = now;
    }
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }
    /// The earliest time `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        None
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn host(&self) -> HostId {
        self.settings.host
    }
    pub fn stats(&self) -> &AgentStats {
        &self.stats
    }
    pub fn status(&self, now: Time) -> StatusSnapshot {
        let _ = now;
        StatusSnapshot {
            host: self.settings.host,
            role: self.role,
            master: None,
            hosts: Vec::new(),
            vms: Vec::new(),
            config_generation: self.config.as_ref().map_or(0, |c| c.generation),
        }
    }
}
