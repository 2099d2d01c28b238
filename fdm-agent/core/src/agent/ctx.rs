//! The split borrow for role handlers: what a handler may read of the agent besides its role's
//! own state, and the outbox it writes to, borrowed apart from `role`.
//!
//! A master handler is `impl MasterState` and takes `&mut Ctx`: it can change the master's state
//! and queue outputs in one pass, with no second look-up of the role and no clone of the timings
//! to get around the borrow checker.

use super::super::cluster::ClusterView;
use super::super::config::{AgentSettings, Timings};
use super::super::time::Time;
use super::outbox::Outbox;
use super::{Agent, MasterState, MountedDs, RoleState, reachable_datastores};
use heartbeat_fs::DatastoreId;
use std::collections::BTreeMap;

pub(super) struct Ctx<'a> {
    pub(super) settings: &'a AgentSettings,
    pub(super) t: &'a Timings,
    pub(super) config: &'a ClusterView,
    /// This host's own use of its datastores (its heartbeat writes).
    pub(super) mounted: &'a BTreeMap<DatastoreId, MountedDs>,
    /// The agent is stopping: a master acquires no new claims.
    pub(super) shutting_down: bool,
    pub(super) out: &'a mut Outbox,
}

impl Agent {
    /// Runs `f` on the master's state with the shared context, if this agent is master; `None`
    /// (and `f` not run) otherwise. A master handler changes no role: what should make the master
    /// step down is returned to the caller, which does it through `step_down`.
    pub(super) fn as_master<R>(
        &mut self,
        f: impl FnOnce(&mut MasterState, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let RoleState::Master(m) = &mut self.role else {
            return None;
        };
        let mut cx = Ctx {
            settings: &self.settings,
            t: &self.t,
            config: &self.config,
            mounted: &self.mounted,
            shutting_down: self.shutting_down,
            out: &mut self.out,
        };
        Some(f(m, &mut cx))
    }
}

impl Ctx<'_> {
    /// Datastores this host wrote its heartbeat to within the lease time.
    pub(super) fn reachable_datastores(&self, now: Time) -> Vec<DatastoreId> {
        reachable_datastores(self.mounted, self.t, now)
    }
}
