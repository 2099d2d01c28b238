//! Every record fdm keeps on a shared datastore, as plain values.
//!
//! The byte layout of each is in `codec` and in `docs/formats.md`. Fixed-size records (host heartbeat,
//! datastore claim) are hand-laid little-endian blocks because many hosts rewrite them every second and
//! a reader must be able to reject a torn one by its CRC alone. Variable records (power-on lists, the
//! protected-VM list, the cluster configuration) are a fixed header plus a postcard body and are
//! replaced atomically (write temp, fsync, rename, fsync dir).

use crate::ids::{ClusterId, DatastoreId, Epoch, HostId, VmId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

mod build;

/// Size of every fixed-size record: one 512-byte sector, so that a single aligned write is as close to
/// atomic as the storage offers and a torn write is caught by the CRC.
pub const SECTOR: usize = 512;

/// State flags a host publishes in its datastore heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostFlags(pub u32);

impl HostFlags {
    /// The host has declared itself network-isolated.
    pub const ISOLATED: u32 = 1 << 0;
    /// The agent is stopping cleanly (SIGTERM); its VMs are not being abandoned.
    pub const SHUTTING_DOWN: u32 = 1 << 1;
    /// The host is in maintenance mode: no VM is placed on it.
    pub const MAINTENANCE: u32 = 1 << 2;
    /// The host believes it is the master of its partition.
    pub const MASTER: u32 = 1 << 3;
    /// The host has self-fenced its VMs on this datastore.
    pub const FENCED: u32 = 1 << 4;

    pub fn contains(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
    pub fn with(self, bit: u32, on: bool) -> Self {
        if on {
            Self(self.0 | bit)
        } else {
            Self(self.0 & !bit)
        }
    }
}

/// A host's datastore heartbeat: one sector per host per datastore, rewritten every heartbeat interval.
/// Liveness is judged by `sequence` advancing as seen on the reader's own clock, never by a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatRecord {
    pub cluster: ClusterId,
    pub host: HostId,
    /// Changes on every agent start, so that a restarted host's sequence restarting is not "stopped".
    pub incarnation: u64,
    /// Strictly increases with every write within one incarnation.
    pub sequence: u64,
    pub flags: HostFlags,
    /// Generation of this host's power-on list on the same datastore; a reader re-reads the list
    /// only when it changes.
    pub power_on_generation: u64,
    /// The master this host currently follows (itself when master), `HostId::NONE` when none.
    pub master: HostId,
}

/// Why a VM appears in a host's power-on list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PowerOnState {
    /// The host has taken the VM's lease and is starting it.
    PoweringOn,
    /// Running on this host.
    Running,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerOnEntry {
    pub vm: VmId,
    pub state: PowerOnState,
}

/// The VMs one host runs from one datastore. Writing it is the host taking the lease on those VMs; it
/// is written before a power-on and after a power-off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerOnList {
    pub cluster: ClusterId,
    pub host: HostId,
    pub incarnation: u64,
    /// Increases with every rewrite by this host (across incarnations).
    pub generation: u64,
    /// Set while the host is isolated; `isolation_powered_off` then lists what its isolation response
    /// stopped, which the master may restart.
    pub isolated: bool,
    pub entries: Vec<PowerOnEntry>,
    pub isolation_powered_off: Vec<VmId>,
}

/// The master's exclusive claim on a datastore: a lease renewed by bumping `renewal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatastoreClaim {
    pub cluster: ClusterId,
    pub datastore: DatastoreId,
    /// `HostId::NONE` when nobody holds it (never claimed, or released).
    pub owner: HostId,
    pub owner_incarnation: u64,
    pub epoch: Epoch,
    /// Bumped by every renewal; readers judge the lease by watching it advance.
    pub renewal: u64,
    /// Set by a master that stepped down cleanly: the next master need not wait for the lease.
    pub released: bool,
}

/// Restart priority levels (FDM's), lowest to highest. `Disabled` means "never restart".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub enum RestartPriority {
    Disabled,
    Lowest,
    Low,
    #[default]
    Medium,
    High,
    Highest,
}

/// What an isolated host does with a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum IsolationResponse {
    /// Hard power-off, so the master can restart it elsewhere at once.
    #[default]
    PowerOff,
    /// Clean guest shutdown, then power-off when the shutdown timeout passes.
    Shutdown,
    /// Keep it running (the datastore lease still protects against a second copy).
    LeaveRunning,
}

/// The words the operator documentation uses (`power-off`, `shutdown`, `leave-running`), for
/// events and logs; the API and `fdmctl` flags take the serde names.
impl std::fmt::Display for IsolationResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IsolationResponse::PowerOff => "power-off",
            IsolationResponse::Shutdown => "shutdown",
            IsolationResponse::LeaveRunning => "leave-running",
        })
    }
}

/// What a host does with a VM whose home datastore it lost while the cluster's network is whole
/// (a storage outage, not a host failure): see `docs/safety.md`, "Storage outages".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum StorageLossResponse {
    /// Keep it running for as long as the outage hold lasts, however long the outage.
    #[default]
    Keep,
    /// Suspend it after `storage_loss_timeout_ms`; resumed when the storage and its lease are back.
    Pause,
    /// Power it off after `storage_loss_timeout_ms`; the master restarts it when storage returns.
    PowerOff,
}

/// How many restarts of one VM HA makes within a window before it calls the VM failed and leaves
/// it alone until an operator clears it (FDM: 3 per hour; Proxmox `max_restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartLimit {
    pub max_restarts: u32,
    pub window_ms: u64,
}

impl Default for RestartLimit {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            window_ms: 3_600_000,
        }
    }
}

/// When the master restarts a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RestartPolicy {
    /// Restart after host failure and after the VM itself crashed.
    #[default]
    Always,
    /// Restart only when its host failed or isolated, not when the VM crashed on a live host.
    HostFailureOnly,
    /// Never restart (monitored only).
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Resources {
    pub cpu_mhz: u32,
    pub memory_mb: u64,
}

/// A VM's HA settings, kept with it in the protected list so a new master needs nothing else to resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VmHaSettings {
    pub priority: RestartPriority,
    pub isolation_response: IsolationResponse,
    pub restart_policy: RestartPolicy,
    pub storage_loss_response: StorageLossResponse,
    /// This VM's own restart limit; `None` takes the cluster's.
    pub restart_limit: Option<RestartLimit>,
    /// The configuration generation of the operator's last clear of the VM (`fdmctl vm clear`), 0
    /// if never. A master whose configuration carries a higher value than a protected entry forgets
    /// the VM's counted restarts and its `LimitReached` state, then records the value in the entry:
    /// a generation, not a flag, so a clear is acted on once and a later failure is not undone by
    /// the same clear (`docs/safety.md`, "Restart limits").
    pub restart_cleared: u64,
    /// The operator's last start or stop of the VM through HA (`fdmctl vm start|stop`), stamped with
    /// the configuration generation of that write; `None` if never. A master acts on a request whose
    /// generation is above what the VM's protected entry records, once (like `restart_cleared`).
    pub power_request: Option<PowerRequest>,
}

/// An operator's "start" or "stop" of a VM through HA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerRequest {
    /// The configuration generation of the write that made the request.
    pub generation: u64,
    pub power: DesiredPower,
}

/// What the operator wants the VM to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum DesiredPower {
    #[default]
    On,
    /// Powered off by an operator (or never started): never restarted.
    Off,
}

/// Where a protected VM stands in the failover machinery. Written before any power-on is issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RestartState {
    /// Running where `last_host` says, or stopped on purpose.
    #[default]
    Idle,
    /// Needs a restart and waits (for a lease to expire, capacity, higher priorities, or a retry time).
    Pending { attempts: u32 },
    /// A restart was decided and is being issued: target host, claim epoch of the deciding master,
    /// attempt number. A new master resumes from here and never picks a second target while the
    /// first one may still start it.
    Intent {
        target: HostId,
        epoch: Epoch,
        attempt: u32,
    },
    /// Every attempt failed; reported, kept, retried when something changes (capacity, config).
    Failed { attempts: u32 },
    /// Restarted `restarts` times within its restart limit's window after crashing and crashed
    /// again: HA leaves it alone (no restart anywhere) until an operator clears it
    /// (`VmHaSettings::restart_cleared`). Shown as `failed` to operators.
    LimitReached { restarts: u32 },
}

/// One restart HA made of a VM that crashed, as a protected list keeps it. The core has no wall
/// clock and hosts' monotonic clocks do not compare, so the time is an age: how long before the
/// list was written the restart was decided, on the writer's clock. A reader takes that age as the
/// age at its own reading, which is never more than the truth (the list was written before it was
/// read): a restart is never forgotten early by a new master (`docs/safety.md`, "Restart limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentRestart {
    pub age_ms: u64,
    /// The host the VM had crashed on (same-host restarts are counted per host).
    pub crashed_on: HostId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectedVm {
    pub vm: VmId,
    pub home: DatastoreId,
    pub last_host: Option<HostId>,
    pub desired: DesiredPower,
    pub settings: VmHaSettings,
    pub restart: RestartState,
    /// Restarts after a crash that are still within the VM's restart-limit window, oldest first.
    pub recent_restarts: Vec<RecentRestart>,
    /// An operator's start (`On`: not yet seen running) or stop (`Off`: not yet seen stopped)
    /// still being carried out. While a start is pending, a host's old report of the VM stopped by
    /// an operator no longer keeps it off; while a stop is pending, the VM found running is stopped
    /// rather than taken as wanted on.
    pub pending_power: Option<DesiredPower>,
}

/// The master's protected-VM list for one datastore (the VMs whose home it is), written under its claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectedVmList {
    pub cluster: ClusterId,
    pub datastore: DatastoreId,
    pub master: HostId,
    pub epoch: Epoch,
    pub generation: u64,
    pub vms: Vec<ProtectedVm>,
}

/// Cluster-wide admission control policy (computed by the management plane).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum AdmissionPolicy {
    #[default]
    Disabled,
    HostFailuresTolerated(u32),
    /// Percent of cluster CPU and memory kept free for failover.
    PercentReserved {
        cpu: u8,
        memory: u8,
    },
    DedicatedFailoverHosts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaSettings {
    /// HA paused: agents heartbeat and report but take no restart, isolation or fence action.
    pub paused: bool,
    /// Timing overrides by field name of the agent's `Timings`, in milliseconds.
    pub timings_ms: BTreeMap<String, u64>,
    /// Addresses a host pings to tell isolation from a partition of one.
    pub isolation_addresses: Vec<String>,
    pub default_isolation_response: IsolationResponse,
    /// Delays before each restart retry, in milliseconds; its length is the number of retries.
    pub restart_retry_ms: Vec<u64>,
    /// Restarts of a crashed VM on its own host before trying another host.
    pub same_host_restart_attempts: u32,
    /// Wait between two restarts of a crashed VM on its own host, in milliseconds.
    pub same_host_restart_wait_ms: u64,
    /// Restarts per VM within a window before the VM is `failed` (a VM's own limit overrides it).
    pub restart_limit: RestartLimit,
    /// Response for VMs without their own (the per-VM setting always wins once the VM is configured).
    pub default_storage_loss_response: StorageLossResponse,
    /// A storage outage held this long applies `storage_loss_response`; `None`: never by time.
    pub storage_loss_timeout_ms: Option<u64>,
    /// Standby hosts tried first for restarts.
    pub failover_hosts: Vec<HostId>,
    pub admission: AdmissionPolicy,
    /// Wait for the higher priority group to be running before starting the next one, up to this long.
    pub orchestrated_wait_ms: Option<u64>,
    pub max_concurrent_power_ons_per_host: u32,
    /// Move VMs back to a returning host (off by default).
    pub failback: bool,
}

impl Default for HaSettings {
    fn default() -> Self {
        Self {
            paused: false,
            timings_ms: BTreeMap::new(),
            isolation_addresses: Vec::new(),
            default_isolation_response: IsolationResponse::PowerOff,
            restart_retry_ms: vec![0, 2_000, 10_000, 30_000, 120_000],
            same_host_restart_attempts: 1,
            same_host_restart_wait_ms: 0,
            restart_limit: RestartLimit::default(),
            default_storage_loss_response: StorageLossResponse::Keep,
            storage_loss_timeout_ms: None,
            failover_hosts: Vec::new(),
            admission: AdmissionPolicy::Disabled,
            orchestrated_wait_ms: None,
            max_concurrent_power_ons_per_host: 8,
            failback: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostConfig {
    pub id: HostId,
    pub name: String,
    /// `ip:port` of the agent's heartbeat socket.
    pub address: String,
    pub capacity: Resources,
    pub maintenance: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatastoreMount {
    pub host: HostId,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatastoreConfig {
    pub id: DatastoreId,
    pub name: String,
    pub mounts: Vec<DatastoreMount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    pub id: VmId,
    pub name: String,
    pub home: DatastoreId,
    /// Hypervisor definition: libvirt domain XML, or the process driver's command spec.
    pub definition: String,
    pub reservation: Resources,
    pub ha: VmHaSettings,
    /// Start only after these are running (when ordering allows).
    pub depends_on: Vec<VmId>,
    /// VMs in the same group are kept on different hosts where possible.
    pub anti_affinity_group: Option<String>,
    /// Protected by HA (written to the protected list). Unprotected VMs are only reported.
    pub protected: bool,
}

/// The cluster configuration the management plane writes to every datastore. Agents use the valid copy
/// with the highest generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub cluster: ClusterId,
    pub generation: u64,
    pub ha: HaSettings,
    pub hosts: Vec<HostConfig>,
    pub datastores: Vec<DatastoreConfig>,
    pub vms: Vec<VmConfig>,
}

impl ClusterConfig {
    pub fn host(&self, id: HostId) -> Option<&HostConfig> {
        self.hosts.iter().find(|h| h.id == id)
    }
    pub fn vm(&self, id: VmId) -> Option<&VmConfig> {
        self.vms.iter().find(|v| v.id == id)
    }
    pub fn datastore(&self, id: DatastoreId) -> Option<&DatastoreConfig> {
        self.datastores.iter().find(|d| d.id == id)
    }
    /// Whether `host` mounts `ds` according to the configuration.
    pub fn mounts(&self, host: HostId, ds: DatastoreId) -> bool {
        self.datastore(ds)
            .is_some_and(|d| d.mounts.iter().any(|m| m.host == host))
    }

    /// The datastores `host` mounts according to the configuration.
    pub fn mounted_by(&self, host: HostId) -> BTreeSet<DatastoreId> {
        self.datastores
            .iter()
            .filter(|d| d.mounts.iter().any(|m| m.host == host))
            .map(|d| d.id)
            .collect()
    }

    /// The datastore layout fdm can protect: the hosts' sets of mounted datastores are nested (of any
    /// two hosts, one mounts every datastore the other mounts). The election prefers the host that
    /// reaches the most datastores, so with nested sets the master of any group of hosts (a whole
    /// cluster, or one side of a partition) mounts every datastore that any host of the group
    /// mounts, and can claim it and restart the VMs homed there. Two hosts that each mount a
    /// datastore the other does not could each be master without the other's datastore: its VMs
    /// would never be restarted. fdm does not claim a datastore through another host (a proxy), so
    /// such a layout is refused (`docs/safety.md`, "Datastore layout").
    pub fn check_layout(&self) -> Result<(), LayoutError> {
        let mut hosts: BTreeSet<HostId> = self.hosts.iter().map(|h| h.id).collect();
        hosts.extend(
            self.datastores
                .iter()
                .flat_map(|d| d.mounts.iter().map(|m| m.host)),
        );
        let sets: Vec<(HostId, BTreeSet<DatastoreId>)> =
            hosts.into_iter().map(|h| (h, self.mounted_by(h))).collect();
        for (i, (a, sa)) in sets.iter().enumerate() {
            for (b, sb) in &sets[i + 1..] {
                let only_a = sa.difference(sb).next();
                let only_b = sb.difference(sa).next();
                if let (Some(&only_a), Some(&only_b)) = (only_a, only_b) {
                    return Err(LayoutError::NotNested {
                        host_a: *a,
                        only_a,
                        host_b: *b,
                        only_b,
                    });
                }
            }
        }
        Ok(())
    }
}

/// A datastore layout fdm refuses (`ClusterConfig::check_layout`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "{host_a} mounts {only_a} but not {only_b}, and {host_b} mounts {only_b} but not {only_a}: \
         either could be master without the other's datastore, and the VMs homed there would not be \
         restarted; every host must mount all the datastores of each host that mounts fewer \
         (mount {only_b} on {host_a} or {only_a} on {host_b})"
    )]
    NotNested {
        host_a: HostId,
        only_a: DatastoreId,
        host_b: HostId,
        only_b: DatastoreId,
    },
}

/// One decision or observation of the master, as reported to the management plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportEvent {
    /// Strictly increases within one (master, incarnation); the management plane keys on all three.
    pub seq: u64,
    /// Milliseconds since the Unix epoch on the master's clock (for display only; never compared);
    /// 0 when the master could not read its clock.
    pub unix_ms: u64,
    /// The event's own name, kebab-case: `verdict-changed`, `restart-issued`, ... (empty in a
    /// report of format version 2, which did not carry it).
    pub name: String,
    /// Short machine-readable kind: `verdict`, `restart`, `isolation`, `role`, `suppressed`, ...
    pub kind: String,
    /// The host the event is about (a judged host, a restart's target), not the master.
    pub host: Option<HostId>,
    pub vm: Option<VmId>,
    pub datastore: Option<DatastoreId>,
    /// A verdict change's new verdict: `alive`, `unreachable`, `partitioned`, `isolated`, `dead`.
    pub verdict: Option<String>,
    /// Why, where the event says (a verdict's reason, an error).
    pub reason: Option<String>,
    /// The event in words, as the agent's logs and `fdm-agent status` show it.
    pub message: String,
}

/// A host as the master sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedHost {
    pub host: HostId,
    /// `alive`, `unreachable`, `partitioned`, `isolated`, `dead`.
    pub verdict: String,
    pub network_age_ms: Option<u64>,
}

/// A VM as the master sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedVm {
    pub vm: VmId,
    pub host: Option<HostId>,
    /// Power state as the host reported it (`running`, `stopped`, ...), `None` when nobody reports it.
    pub state: Option<String>,
    /// Where it stands in the restart pipeline, in words (`idle`, `waiting ...`, `restarting ...`,
    /// `failed: restart limit ...`).
    pub restart: String,
}

/// The master's report of the cluster, written to `.fdm/report` on each datastore it claims, every few
/// seconds. The management plane reads the newest one; the agents never read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterReport {
    pub cluster: ClusterId,
    pub master: HostId,
    pub master_incarnation: u64,
    pub epoch: Epoch,
    /// Increases with every report written by this master incarnation.
    pub sequence: u64,
    pub unix_ms: u64,
    pub config_generation: u64,
    pub ha_paused: bool,
    pub hosts: Vec<ReportedHost>,
    pub vms: Vec<ReportedVm>,
    /// The most recent events (bounded); the management plane de-duplicates by `seq`.
    pub events: Vec<ReportEvent>,
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use proptest::prelude::*;

    fn layout(mounts: &[Vec<u32>], hosts: u32) -> ClusterConfig {
        ClusterConfig::new(ClusterId(1))
            .with_hosts((1..=hosts).map(HostId).map(HostConfig::simulated))
            .with_layout(mounts)
    }

    /// The master the election picks among `group` at full storage health: most datastores, then
    /// the lowest id (`election::compare`).
    fn master_of(cfg: &ClusterConfig, group: &[HostId]) -> HostId {
        *group
            .iter()
            .max_by_key(|h| (cfg.mounted_by(**h).len(), std::cmp::Reverse(h.0)))
            .expect("a group has hosts")
    }

    #[test]
    fn nested_layouts_pass_and_crossed_ones_name_both_hosts() {
        assert!(
            layout(&[vec![1, 2, 3], vec![1, 2], vec![2]], 3)
                .check_layout()
                .is_ok()
        );
        let e = layout(&[vec![1, 2], vec![2, 3]], 3)
            .check_layout()
            .unwrap_err();
        assert_eq!(
            e,
            LayoutError::NotNested {
                host_a: HostId(1),
                only_a: DatastoreId(1),
                host_b: HostId(3),
                only_b: DatastoreId(2),
            }
        );
        assert!(
            e.to_string()
                .starts_with("host-1 mounts ds-1 but not ds-2, and host-3"),
            "{e}"
        );
    }

    proptest! {
        /// The rule is exactly what protection needs: a layout passes if and only if, in every group
        /// of hosts that could elect a master among themselves, the master mounts every datastore
        /// that any host of the group mounts.
        #[test]
        fn a_layout_passes_iff_every_groups_master_mounts_all_its_datastores(
            mounts in proptest::collection::vec(proptest::collection::vec(1u32..=5, 0..5), 1..4),
            groups in proptest::collection::vec(proptest::collection::btree_set(1u32..=5, 1..5), 1..8),
        ) {
            let cfg = layout(&mounts, 5);
            let complete = |group: &[HostId]| {
                let master = cfg.mounted_by(master_of(&cfg, group));
                group.iter().all(|h| cfg.mounted_by(*h).is_subset(&master))
            };
            match cfg.check_layout() {
                Ok(()) => {
                    for g in &groups {
                        let g: Vec<HostId> = g.iter().copied().map(HostId).collect();
                        prop_assert!(complete(&g), "{g:?} in {mounts:?}");
                    }
                }
                Err(LayoutError::NotNested { host_a, host_b, .. }) => {
                    prop_assert!(!complete(&[host_a, host_b]), "{mounts:?}");
                }
            }
        }
    }
}
