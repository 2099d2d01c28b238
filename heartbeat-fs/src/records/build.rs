//! Constructors and chained setters for the configuration records: the one way the unit tests, the
//! simulator, the demo, the benches, the multi-host testbed and the fuzz targets build a cluster.
//!
//! Each record has a `new` with the identifiers it cannot do without and defaults for the rest, and
//! `with_*` setters for what differs; `ClusterConfig` adds its hosts, datastores and VMs and has two
//! shorthands for the usual datastore layouts (`with_layout`, `with_shared_datastores`). The fields
//! stay public: a test that edits a configuration in place still can.
//!
//! ```
//! use heartbeat_fs::records::*;
//! use heartbeat_fs::{ClusterId, DatastoreId, HostId, VmId};
//!
//! // Three hosts; ds1 mounted by all of them, ds2 by host 3 only.
//! let config = ClusterConfig::new(ClusterId(7))
//!     .with_hosts((1..=3).map(HostId).map(HostConfig::simulated))
//!     .with_layout(&[vec![1, 2, 3], vec![3]])
//!     .with_vms([VmConfig::new(VmId(1), DatastoreId(2)).with_priority(RestartPriority::High)]);
//! assert_eq!(config.datastore(DatastoreId(2)).unwrap().name, "ds2");
//! assert_eq!(config.mounted_by(HostId(3)).len(), 2);
//! assert!(config.check_layout().is_ok());
//! ```

use super::*;

impl Resources {
    pub const fn new(cpu_mhz: u32, memory_mb: u64) -> Self {
        Self { cpu_mhz, memory_mb }
    }
}

impl ClusterConfig {
    /// Generation 1 of `cluster`'s configuration: default HA settings, no hosts, datastores or VMs.
    pub fn new(cluster: ClusterId) -> Self {
        Self {
            cluster,
            generation: 1,
            ha: HaSettings::default(),
            hosts: Vec::new(),
            datastores: Vec::new(),
            vms: Vec::new(),
        }
    }

    pub fn with_generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    pub fn with_ha(mut self, ha: HaSettings) -> Self {
        self.ha = ha;
        self
    }

    /// Adds `hosts` after those already configured.
    pub fn with_hosts(mut self, hosts: impl IntoIterator<Item = HostConfig>) -> Self {
        self.hosts.extend(hosts);
        self
    }

    /// Adds `datastores` after those already configured.
    pub fn with_datastores(
        mut self,
        datastores: impl IntoIterator<Item = DatastoreConfig>,
    ) -> Self {
        self.datastores.extend(datastores);
        self
    }

    /// Adds `vms` after those already configured.
    pub fn with_vms(mut self, vms: impl IntoIterator<Item = VmConfig>) -> Self {
        self.vms.extend(vms);
        self
    }

    /// Adds one datastore for each entry of `mounts`, numbered on after those already configured
    /// (`ds1`, `ds2`, ...): datastore `dsN` is mounted at `/dsN` by the hosts whose numbers its
    /// entry lists, in that order. The layout of clusters whose datastores are not directories (unit
    /// tests, the simulator).
    pub fn with_layout<M: AsRef<[u32]>>(mut self, mounts: &[M]) -> Self {
        for hosts in mounts {
            let id = self.next_datastore();
            let mut d = DatastoreConfig::new(id);
            for &h in hosts.as_ref() {
                d = d.with_mount(HostId(h), format!("/ds{}", id.0));
            }
            self.datastores.push(d);
        }
        self
    }

    /// Adds one datastore for each of `paths`, numbered on after those already configured (`ds1`,
    /// `ds2`, ...), each mounted at its path by every host configured so far: the layout of a
    /// cluster whose hosts all see the same shared directories.
    pub fn with_shared_datastores<P: Into<String>>(
        mut self,
        paths: impl IntoIterator<Item = P>,
    ) -> Self {
        for path in paths {
            let path = path.into();
            let mut d = DatastoreConfig::new(self.next_datastore());
            for h in &self.hosts {
                d = d.with_mount(h.id, path.clone());
            }
            self.datastores.push(d);
        }
        self
    }

    fn next_datastore(&self) -> DatastoreId {
        DatastoreId(self.datastores.len() as u32 + 1)
    }
}

impl HostConfig {
    /// Host `id` with its heartbeat socket at `address` (`ip:port`), named `h<id>`, with a capacity
    /// of 16 GHz and 16 GiB, not in maintenance.
    pub fn new(id: HostId, address: impl Into<String>) -> Self {
        Self {
            id,
            name: format!("h{}", id.0),
            address: address.into(),
            capacity: Resources::new(16_000, 16_384),
            maintenance: false,
        }
    }

    /// Host `id` of a cluster that opens no socket (unit tests, the simulator, fuzzing): `new` with a
    /// made-up address, `10.0.0.<id>:7000` for ids below 250 and on into `10.0.<id / 250>.*`.
    pub fn simulated(id: HostId) -> Self {
        Self::new(id, format!("10.0.{}.{}:7000", id.0 / 250, id.0 % 250))
    }

    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub fn with_capacity(mut self, capacity: Resources) -> Self {
        self.capacity = capacity;
        self
    }
}

impl DatastoreConfig {
    /// Datastore `id`, named `ds<id>`, mounted by no host.
    pub fn new(id: DatastoreId) -> Self {
        Self {
            id,
            name: format!("ds{}", id.0),
            mounts: Vec::new(),
        }
    }

    /// Also mounted by `host`, at `path` there.
    pub fn with_mount(mut self, host: HostId, path: impl Into<String>) -> Self {
        self.mounts.push(DatastoreMount {
            host,
            path: path.into(),
        });
        self
    }
}

impl VmConfig {
    /// VM `id` homed on datastore `home`, named `vm<id>`, with an empty definition, a reservation of
    /// 1 GHz and 1 GiB and the default HA settings (medium priority, powered off by an isolated
    /// host, restarted always); protected, depending on no VM, in no anti-affinity group.
    pub fn new(id: VmId, home: DatastoreId) -> Self {
        Self {
            id,
            name: format!("vm{}", id.0),
            home,
            definition: String::new(),
            reservation: Resources::new(1_000, 1_024),
            ha: VmHaSettings::default(),
            depends_on: Vec::new(),
            anti_affinity_group: None,
            protected: true,
        }
    }

    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub fn with_definition(mut self, definition: impl Into<String>) -> Self {
        self.definition = definition.into();
        self
    }

    pub fn with_reservation(mut self, reservation: Resources) -> Self {
        self.reservation = reservation;
        self
    }

    pub fn with_ha(mut self, ha: VmHaSettings) -> Self {
        self.ha = ha;
        self
    }

    pub fn with_priority(mut self, priority: RestartPriority) -> Self {
        self.ha.priority = priority;
        self
    }

    pub fn with_isolation_response(mut self, response: IsolationResponse) -> Self {
        self.ha.isolation_response = response;
        self
    }

    pub fn with_depends_on(mut self, vms: impl IntoIterator<Item = VmId>) -> Self {
        self.depends_on = vms.into_iter().collect();
        self
    }

    pub fn with_anti_affinity_group(mut self, group: impl Into<Option<String>>) -> Self {
        self.anti_affinity_group = group.into();
        self
    }
}
