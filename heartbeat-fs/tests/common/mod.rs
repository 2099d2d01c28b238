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
                },
                restart: RestartState::Intent {
                    target: HostId(4),
                    epoch: Epoch(11),
                    attempt: 2,
                },
            },
        ],
    }
}

pub fn config() -> ClusterConfig {
    let mut timings = BTreeMap::new();
    timings.insert("ds_lease".to_string(), 4000);
    ClusterConfig {
        cluster: ClusterId(1),
        generation: 3,
        ha: HaSettings {
            timings_ms: timings,
            isolation_addresses: vec!["10.0.0.1".into()],
            ..HaSettings::default()
        },
        hosts: vec![HostConfig {
            id: HostId(1),
            name: "h1".into(),
            address: "10.0.0.11:7000".into(),
            capacity: Resources {
                cpu_mhz: 8000,
                memory_mb: 16384,
            },
            maintenance: false,
        }],
        datastores: vec![DatastoreConfig {
            id: DatastoreId(1),
            name: "ds1".into(),
            mounts: vec![DatastoreMount {
                host: HostId(1),
                path: "/mnt/ds1".into(),
            }],
        }],
        vms: vec![VmConfig {
            id: VmId(1),
            name: "web".into(),
            home: DatastoreId(1),
            definition: "sleep 1000".into(),
            reservation: Resources {
                cpu_mhz: 500,
                memory_mb: 512,
            },
            ha: VmHaSettings::default(),
            depends_on: vec![],
            anti_affinity_group: Some("web".into()),
            protected: true,
        }],
    }
}
