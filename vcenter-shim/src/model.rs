//! The inventory as the operator edits it, and its translation into the `ClusterConfig` agents read.
//!
//! API specs are flatter than the on-disk records and have defaults, so that an operator can add a VM
//! with three fields; the record format stays the single source of truth for what agents see.
//!
//! The shapes of the HTTP API that are not an inventory object (the HA view, write answers, the
//! maintenance request) are here too, so that `fdm-shim` builds them and `fdmctl` reads them with
//! one definition. The other answers are the types their modules compute: `service::ClusterState`,
//! `store::StoredEvent`, `admission::AdmissionReport`, `error::ErrorBody`.

use crate::service::WriteOutcome;
use heartbeat_fs::records::{
    ClusterConfig, DatastoreConfig, DatastoreMount, HaSettings, HostConfig, IsolationResponse,
    PowerRequest, Resources, RestartLimit, RestartPolicy, RestartPriority, StorageLossResponse,
    VmConfig, VmHaSettings,
};
use heartbeat_fs::{ClusterId, DatastoreId, HostId, VmId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    pub id: HostId,
    pub name: String,
    /// `ip:port` of the agent's heartbeat socket.
    pub address: String,
    #[serde(default)]
    pub cpu_mhz: u32,
    #[serde(default)]
    pub memory_mb: u64,
    #[serde(default)]
    pub maintenance: bool,
}

impl HostSpec {
    pub const FIELDS: &'static [&'static str] = &[
        "id",
        "name",
        "address",
        "cpu_mhz",
        "memory_mb",
        "maintenance",
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    pub host: HostId,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatastoreSpec {
    pub id: DatastoreId,
    pub name: String,
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
}

impl DatastoreSpec {
    pub const FIELDS: &'static [&'static str] = &["id", "name", "mounts"];
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub id: VmId,
    pub name: String,
    pub home: DatastoreId,
    #[serde(default)]
    pub definition: String,
    #[serde(default)]
    pub cpu_mhz: u32,
    #[serde(default)]
    pub memory_mb: u64,
    #[serde(default)]
    pub priority: RestartPriority,
    /// `None` follows the cluster's `default_isolation_response`, resolved each time the config is
    /// written, so changing the cluster default reaches every VM that never chose its own.
    #[serde(default)]
    pub isolation_response: Option<IsolationResponse>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// `None` follows the cluster's `default_storage_loss_response`, like `isolation_response`.
    #[serde(default)]
    pub storage_loss_response: Option<StorageLossResponse>,
    /// `None` follows the cluster's `restart_limit`.
    #[serde(default)]
    pub restart_limit: Option<RestartLimit>,
    #[serde(default)]
    pub depends_on: Vec<VmId>,
    #[serde(default)]
    pub anti_affinity_group: Option<String>,
    #[serde(default = "yes")]
    pub protected: bool,
}

impl VmSpec {
    pub const FIELDS: &'static [&'static str] = &[
        "id",
        "name",
        "home",
        "definition",
        "cpu_mhz",
        "memory_mb",
        "priority",
        "isolation_response",
        "restart_policy",
        "storage_loss_response",
        "restart_limit",
        "depends_on",
        "anti_affinity_group",
        "protected",
    ];

    /// Whether HA would ever restart this VM, i.e. whether admission control must hold room for it.
    pub fn needs_failover_capacity(&self) -> bool {
        self.protected
            && self.priority != RestartPriority::Disabled
            && self.restart_policy != RestartPolicy::Never
    }
}

/// How a write that breaks admission control is treated. Kept in the shim's database, not in
/// `HaSettings`, because agents never act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AdmissionMode {
    #[default]
    Refuse,
    Warn,
}

/// `GET /v1/config/ha`: the cluster's `HaSettings` fields with the shim's `admission_mode` beside
/// them, one flat object, so that `PUT /v1/config/ha` sets any of them by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaView {
    #[serde(flatten)]
    pub ha: HaSettings,
    pub admission_mode: AdmissionMode,
}

impl HaView {
    pub fn of(inv: &Inventory) -> Self {
        Self {
            ha: inv.ha.clone(),
            admission_mode: inv.admission_mode,
        }
    }
}

/// The object a write stored, keyed in its answer by what it is (`"host": {...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stored {
    Host(HostSpec),
    Datastore(DatastoreSpec),
    Vm(VmSpec),
    Ha(HaView),
}

impl From<HostSpec> for Stored {
    fn from(h: HostSpec) -> Self {
        Self::Host(h)
    }
}

impl From<DatastoreSpec> for Stored {
    fn from(d: DatastoreSpec) -> Self {
        Self::Datastore(d)
    }
}

impl From<VmSpec> for Stored {
    fn from(v: VmSpec) -> Self {
        Self::Vm(v)
    }
}

/// The answer to a write that creates or changes an object: the outcome and, beside its fields, the
/// object as now stored. A removal answers the bare `WriteOutcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteAnswer {
    #[serde(flatten)]
    pub outcome: WriteOutcome,
    #[serde(flatten)]
    pub stored: Stored,
}

/// What `POST /v1/hosts/{id}/maintenance` does to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaintenanceAction {
    Enter,
    Exit,
}

/// The body of `POST /v1/hosts/{id}/maintenance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    pub action: MaintenanceAction,
}

/// Everything the shim manages, as one value: writes clone it, change it, validate the result and
/// only then persist and publish it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub cluster: ClusterId,
    pub generation: u64,
    pub ha: HaSettings,
    pub admission_mode: AdmissionMode,
    pub hosts: BTreeMap<HostId, HostSpec>,
    pub datastores: BTreeMap<DatastoreId, DatastoreSpec>,
    pub vms: BTreeMap<VmId, VmSpec>,
    /// Per VM, the generation of the write that last cleared it (`POST /v1/vms/{id}/clear`),
    /// published as `VmHaSettings::restart_cleared`. Kept beside the specs rather than in them so a
    /// `PUT` cannot set it: a number above every later generation would make the next clears
    /// ineffective. A removed VM's entry goes with it.
    pub restart_cleared: BTreeMap<VmId, u64>,
    /// Per VM, the operator's last start or stop through HA (`POST /v1/vms/{id}/start|stop`),
    /// stamped with that write's generation, published as `VmHaSettings::power_request`. Beside the
    /// specs for the same reason as `restart_cleared`.
    pub power_requests: BTreeMap<VmId, PowerRequest>,
}

impl Inventory {
    pub fn new(cluster: ClusterId) -> Self {
        Self {
            cluster,
            generation: 0,
            ha: HaSettings::default(),
            admission_mode: AdmissionMode::default(),
            hosts: BTreeMap::new(),
            datastores: BTreeMap::new(),
            vms: BTreeMap::new(),
            restart_cleared: BTreeMap::new(),
            power_requests: BTreeMap::new(),
        }
    }

    pub fn to_cluster_config(&self) -> ClusterConfig {
        ClusterConfig {
            cluster: self.cluster,
            generation: self.generation,
            ha: self.ha.clone(),
            hosts: self
                .hosts
                .values()
                .map(|h| HostConfig {
                    id: h.id,
                    name: h.name.clone(),
                    address: h.address.clone(),
                    capacity: Resources {
                        cpu_mhz: h.cpu_mhz,
                        memory_mb: h.memory_mb,
                    },
                    maintenance: h.maintenance,
                })
                .collect(),
            datastores: self
                .datastores
                .values()
                .map(|d| DatastoreConfig {
                    id: d.id,
                    name: d.name.clone(),
                    mounts: d
                        .mounts
                        .iter()
                        .map(|m| DatastoreMount {
                            host: m.host,
                            path: m.path.clone(),
                        })
                        .collect(),
                })
                .collect(),
            vms: self
                .vms
                .values()
                .map(|v| VmConfig {
                    id: v.id,
                    name: v.name.clone(),
                    home: v.home,
                    definition: v.definition.clone(),
                    reservation: Resources {
                        cpu_mhz: v.cpu_mhz,
                        memory_mb: v.memory_mb,
                    },
                    ha: VmHaSettings {
                        priority: v.priority,
                        isolation_response: v
                            .isolation_response
                            .unwrap_or(self.ha.default_isolation_response),
                        restart_policy: v.restart_policy,
                        storage_loss_response: v
                            .storage_loss_response
                            .unwrap_or(self.ha.default_storage_loss_response),
                        restart_limit: v.restart_limit,
                        restart_cleared: self.restart_cleared.get(&v.id).copied().unwrap_or(0),
                        power_request: self.power_requests.get(&v.id).copied(),
                    },
                    depends_on: v.depends_on.clone(),
                    anti_affinity_group: v.anti_affinity_group.clone(),
                    protected: v.protected,
                })
                .collect(),
        }
    }
}
