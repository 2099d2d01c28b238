//! What the invariants, expectations and reports read off the world: where VMs run, who is
//! master, what the datastores record. Read-only.

use super::*;

impl World {
    /// Can a datagram go from `a` to `b` now?
    pub fn linked(&self, a: HostId, b: HostId) -> bool {
        let (Some(ia), Some(ib)) = (self.idx(a), self.idx(b)) else {
            return false;
        };
        let (ha, hb) = (&self.hosts[ia], &self.hosts[ib]);
        ha.powered
            && hb.powered
            && ha.network_up
            && hb.network_up
            && self.groups.get(&a) == self.groups.get(&b)
            && !self.oneway.contains(&(a, b))
    }

    /// HA-caused downtime so far, VM-seconds: protected VMs HA stopped, until they run again
    /// (still-open spans count up to now).
    pub fn ha_downtime_s(&self) -> f64 {
        let open: u128 = self
            .ha_down_since
            .values()
            .map(|&t| u128::from(self.now.saturating_sub(t)))
            .sum();
        (self.ha_downtime_us + open) as f64 / 1e6
    }

    /// VM-seconds VMs spent paused by the storage-loss response so far (open spans up to now).
    pub fn paused_s(&self) -> f64 {
        let open: u128 = self
            .hosts
            .iter()
            .flat_map(|h| h.paused.values())
            .map(|&t| u128::from(self.now.saturating_sub(t)))
            .sum();
        (self.paused_us + open) as f64 / 1e6
    }

    /// `vm`'s entry in its home datastore's protected list, as last written.
    pub fn protected_entry(&self, vm: VmId) -> Option<heartbeat_fs::records::ProtectedVm> {
        let home = self.config.vm(vm)?.home;
        let list = self.ds.get(&home)?.protected_list()?;
        list.vms.iter().find(|e| e.vm == vm).cloned()
    }

    /// The restart state of `vm` in its home datastore's protected list, as last written.
    pub fn restart_state(&self, vm: VmId) -> Option<heartbeat_fs::records::RestartState> {
        let home = self.config.vm(vm)?.home;
        let list = self.ds.get(&home)?.protected_list()?;
        list.vms
            .iter()
            .find(|e| e.vm == vm)
            .map(|e| e.restart.clone())
    }

    /// Hosts whose running, unhung agent is master.
    pub fn masters(&self) -> Vec<HostId> {
        self.hosts
            .iter()
            .filter(|h| {
                h.powered && !h.hung && h.agent.as_ref().is_some_and(|a| a.role() == Role::Master)
            })
            .map(|h| h.id)
            .collect()
    }

    pub fn agent(&self, h: HostId) -> Option<&Agent> {
        let i = self.idx(h)?;
        let host = &self.hosts[i];
        if host.powered && !host.hung {
            host.agent.as_ref()
        } else {
            None
        }
    }

    /// The VM's restart state in its home datastore's protected list, as on disk.
    pub fn listed_restart_state(&self, vm: VmId) -> Option<RestartState> {
        let home = self.config.vm(vm)?.home;
        self.ds
            .get(&home)?
            .protected_list()?
            .vms
            .iter()
            .find(|e| e.vm == vm)
            .map(|e| e.restart.clone())
    }

    /// Where a VM runs now (powered hosts).
    pub fn where_runs(&self, vm: VmId) -> Vec<HostId> {
        self.hosts
            .iter()
            .filter(|h| h.powered && h.running.contains_key(&vm))
            .map(|h| h.id)
            .collect()
    }

    /// Whether `h`'s copy of `vm` is one the hypervisor started on its own and that still runs.
    pub fn is_outside_copy(&self, h: HostId, vm: VmId) -> bool {
        self.outside.get(&(h, vm)).is_some_and(|&at| {
            self.idx(h).is_some_and(|i| {
                self.hosts[i].powered && self.hosts[i].running.get(&vm) == Some(&at)
            })
        })
    }

    /// Where a VM is paused now (by the storage-loss response; it runs there too).
    pub fn where_paused(&self, vm: VmId) -> Vec<HostId> {
        self.hosts
            .iter()
            .filter(|h| h.powered && h.paused.contains_key(&vm))
            .map(|h| h.id)
            .collect()
    }

    /// Connected groups of live agents (symmetric links only).
    pub fn components(&self) -> Vec<Vec<HostId>> {
        let live: Vec<HostId> = self
            .hosts
            .iter()
            .filter(|h| h.powered && !h.hung && h.agent.is_some())
            .map(|h| h.id)
            .collect();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for &s in &live {
            if !seen.insert(s) {
                continue;
            }
            let mut comp = vec![s];
            let mut stack = vec![s];
            while let Some(x) = stack.pop() {
                for &y in &live {
                    if !seen.contains(&y) && self.linked(x, y) && self.linked(y, x) {
                        seen.insert(y);
                        comp.push(y);
                        stack.push(y);
                    }
                }
            }
            comp.sort();
            out.push(comp);
        }
        out
    }

    pub fn network_up(&self, h: HostId) -> bool {
        self.idx(h).is_some_and(|i| self.hosts[i].network_up)
    }

    pub fn has_oneway_cuts(&self) -> bool {
        !self.oneway.is_empty()
    }

    pub fn verdict(&self, master: HostId, of: HostId) -> Option<Verdict> {
        self.agent(master)?.verdict_of(of)
    }
}
