//! Random crash / partition / datastore-loss sequences on a few hosts: a VM never runs twice and
//! a protected VM is never lost (until the simulator takes over this job at scale).

use super::harness::*;
use heartbeat_fs::records::{IsolationResponse, RestartPriority};
use heartbeat_fs::{DatastoreId, HostId};
use proptest::prelude::*;
use std::time::Duration;

#[derive(Debug, Clone)]
enum Fault {
    Crash(u32),
    Partition(u32),
    LoseDs(u32, u32),
    Isolate(u32),
    RestartAgent(u32),
    Wait(u32),
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        (1u32..=4).prop_map(Fault::Crash),
        (1u32..=4).prop_map(Fault::Partition),
        ((1u32..=4), (1u32..=2)).prop_map(|(h, d)| Fault::LoseDs(h, d)),
        (1u32..=4).prop_map(Fault::Isolate),
        (1u32..=4).prop_map(Fault::RestartAgent),
        (1u32..=8).prop_map(Fault::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn never_twice_and_never_lost(faults in proptest::collection::vec(fault(), 1..6)) {
        let vms = (1..=8)
            .map(|i| vm(i, (i % 2) + 1, RestartPriority::Medium, if i % 3 == 0 { IsolationResponse::LeaveRunning } else { IsolationResponse::PowerOff }))
            .collect();
        let mut c = Cluster::new(config(4, &[&[1, 2, 3, 4], &[1, 2, 3, 4]], vms));
        for i in 1..=8 {
            c.place(HostId((i - 1) % 4 + 1), i);
        }
        c.run_secs(12.0);
        for f in &faults {
            match *f {
                Fault::Crash(h) => if c.hosts[&HostId(h)].powered { c.crash_host(HostId(h)) },
                Fault::Partition(h) => {
                    let others: Vec<u32> = (1..=4).filter(|&o| o != h).collect();
                    c.partition(&[&[h], &others]);
                }
                Fault::LoseDs(h, d) => { c.hosts.get_mut(&HostId(h)).unwrap().ds_lost.insert(DatastoreId(d)); }
                Fault::Isolate(h) => c.hosts.get_mut(&HostId(h)).unwrap().network_up = false,
                Fault::RestartAgent(h) => if c.hosts[&HostId(h)].agent.is_some() { c.restart_agent(HostId(h)) },
                Fault::Wait(s) => c.run_secs(s as f64),
            }
            c.run_secs(1.5);
        }
        // Heal everything; the harness has checked "never twice" at every tick.
        c.heal();
        let ids: Vec<HostId> = c.hosts.keys().copied().collect();
        for h in ids {
            let hs = c.hosts.get_mut(&h).unwrap();
            hs.network_up = true;
            hs.ds_lost.clear();
            if !hs.powered { c.boot_host(h); }
        }
        let all_back = c.run_until(Duration::from_secs(90), |c| {
            (1..=8).all(|v| c.where_runs(v).len() == 1) && c.masters().len() == 1
        });
        prop_assert!(all_back.is_some(), "not every VM runs again after heal: {:?}",
            (1..=8).map(|v| (v, c.where_runs(v))).collect::<Vec<_>>());
        prop_assert_eq!(c.masters().len(), 1);
    }
}
