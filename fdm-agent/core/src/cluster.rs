//! The cluster configuration as the core uses it: shared cheaply (`Arc`) and indexed, because the
//! master looks VMs and mounts up on every evaluation and a cluster can hold tens of thousands of VMs.

use heartbeat_fs::records::{ClusterConfig, HostConfig, VmConfig};
use heartbeat_fs::{DatastoreId, HostId, VmId};
use std::collections::BTreeMap;
use std::ops::Deref;

#[derive(Debug)]
pub struct ClusterView {
    cfg: ClusterConfig,
    vms: BTreeMap<VmId, usize>,
    hosts: BTreeMap<HostId, usize>,
    host_ds: BTreeMap<HostId, Vec<DatastoreId>>,
    ds_hosts: BTreeMap<DatastoreId, Vec<HostId>>,
}

impl ClusterView {
    pub fn new(cfg: ClusterConfig) -> Self {
        let vms = cfg.vms.iter().enumerate().map(|(i, v)| (v.id, i)).collect();
        let hosts = cfg
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.id, i))
            .collect();
        let mut host_ds: BTreeMap<HostId, Vec<DatastoreId>> = BTreeMap::new();
        let mut ds_hosts: BTreeMap<DatastoreId, Vec<HostId>> = BTreeMap::new();
        for d in &cfg.datastores {
            for m in &d.mounts {
                host_ds.entry(m.host).or_default().push(d.id);
                ds_hosts.entry(d.id).or_default().push(m.host);
            }
        }
        ClusterView {
            cfg,
            vms,
            hosts,
            host_ds,
            ds_hosts,
        }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    pub fn vm(&self, id: VmId) -> Option<&VmConfig> {
        self.vms.get(&id).map(|&i| &self.cfg.vms[i])
    }

    pub fn host(&self, id: HostId) -> Option<&HostConfig> {
        self.hosts.get(&id).map(|&i| &self.cfg.hosts[i])
    }

    /// Datastores `host` mounts, per the configuration.
    pub fn datastores_of(&self, host: HostId) -> &[DatastoreId] {
        self.host_ds.get(&host).map_or(&[], Vec::as_slice)
    }

    /// Hosts that mount `ds`, per the configuration.
    pub fn hosts_of(&self, ds: DatastoreId) -> &[HostId] {
        self.ds_hosts.get(&ds).map_or(&[], Vec::as_slice)
    }
}

impl Deref for ClusterView {
    type Target = ClusterConfig;
    fn deref(&self) -> &ClusterConfig {
        &self.cfg
    }
}
