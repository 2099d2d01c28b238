//! Sample records shared by the heartbeat-fs tests.
#![allow(dead_code)]

use heartbeat_fs::records::*;
use heartbeat_fs::{ClusterId, DatastoreId, Epoch, HostId, VmId};
use std::collections::BTreeMap;

pub fn heartbeat() -> HeartbeatRecord {
    HeartbeatRecord {
        cluster: ClusterId(0x0123_4567_89ab_cdef),
        host: HostId(7),
        incarnation: 1_700_000_000_123,
        sequence: 42,
        flags: HostFlags(HostFlags::ISOLATED | HostFlags::MASTER),
        power_on_generation: 9,
        master: HostId(3),
    }
}

pub fn claim() -> DatastoreClaim {
    DatastoreClaim {
        cluster: ClusterId(0x0123_4567_89ab_cdef),
        datastore: DatastoreId(2),
        owner: HostId(3),
        owner_incarnation: 5,
        epoch: Epoch(11),
        renewal: 1234,
        released: false,
    }
}

pub fn power_on_list() -> PowerOnList {
    PowerOnList {
        cluster: ClusterId(1),
        host: HostId(7),
        incarnation: 2,
        generation: 5,
        isolated: true,
        entries: vec![
            PowerOnEntry {
                vm: VmId(1),
                state: PowerOnState::Running,
            },
            PowerOnEntry {
                vm: VmId(2),
                state: PowerOnState::PoweringOn,
            },
        ],
        isolation_powered_off: vec![VmId(3)],
    }
}

pub fn protected_list() -> ProtectedVmList {
    ProtectedVmList {
        cluster: ClusterId(1),
        datastore: DatastoreId(2),
        master: HostId(3),
        epoch: Epoch(11),
        generation: 4,
        vms: vec![
            ProtectedVm {
                vm: VmId(1),
                home: DatastoreId(2),
                last_host: Some(HostId(7)),
                desired: DesiredPower::On,
                settings: VmHaSettings::default(),
                restart: RestartState::Idle,
                recent_restarts: Vec::new(),
                pending_power: None,
            },
            ProtectedVm {
                vm: VmId(2),
                home: DatastoreId(2),
                last_host: None,
                desired: DesiredPower::Off,
                settings: VmHaSettings {
                    priority: RestartPriority::Highest,
                    isolation_response: IsolationResponse::LeaveRunning,
                    restart_policy: RestartPolicy::HostFailureOnly,
                    storage_loss_response: StorageLossResponse::Pause,
                    restart_limit: Some(RestartLimit {
                        max_restarts: 5,
                        window_ms: 600_000,
                    }),
                    restart_cleared: 9,
                    power_request: Some(PowerRequest {
                        generation: 8,
                        power: DesiredPower::Off,
                    }),
                },
                restart: RestartState::Intent {
                    target: HostId(4),
                    epoch: Epoch(11),
                    attempt: 2,
                },
                recent_restarts: vec![RecentRestart {
                    age_ms: 90_000,
                    crashed_on: HostId(7),
                }],
                pending_power: Some(DesiredPower::Off),
            },
        ],
    }
}

pub fn config() -> ClusterConfig {
    let mut timings = BTreeMap::new();
    timings.insert("ds_lease".to_string(), 4000);
    ClusterConfig::new(ClusterId(1))
        .with_generation(3)
        .with_ha(HaSettings {
            timings_ms: timings,
            isolation_addresses: vec!["10.0.0.1".into()],
            ..HaSettings::default()
        })
        .with_hosts([
            HostConfig::new(HostId(1), "10.0.0.11:7000").with_capacity(Resources::new(8000, 16384))
        ])
        .with_datastores([DatastoreConfig::new(DatastoreId(1)).with_mount(HostId(1), "/mnt/ds1")])
        .with_vms([VmConfig::new(VmId(1), DatastoreId(1))
            .with_name("web")
            .with_definition("sleep 1000")
            .with_reservation(Resources::new(500, 512))
            .with_anti_affinity_group("web".to_string())])
}
