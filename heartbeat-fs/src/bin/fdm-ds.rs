//! `fdm-ds`: look at (and, for tests, exercise) a datastore's `.fdm/` directory.
//!
//! ```text
//! fdm-ds dump <mount>                        print every record, decoded or with its decode error
//! fdm-ds beat <mount> <host> <count> <ms>    write <count> heartbeats, one every <ms>
//! fdm-ds acquire <mount> <host> <hold-ms>    try to take the claim (fresh), hold it, print the outcome
//! ```
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use heartbeat_fs::fs::DatastoreDir;
use heartbeat_fs::ops::ClaimWrite;
use heartbeat_fs::records::{DatastoreClaim, HeartbeatRecord, HostFlags};
use heartbeat_fs::{ClusterId, DatastoreId, Epoch, HostId};
use std::process::ExitCode;
use std::time::Duration;

fn usage() -> ExitCode {
    eprintln!(
        "usage: fdm-ds dump <mount> | beat <mount> <host> <count> <ms> | acquire <mount> <host> <hold-ms>"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| args.get(i).and_then(|s| s.parse::<u64>().ok());
    match args.first().map(String::as_str) {
        Some("dump") if args.len() == 2 => dump(&args[1]),
        Some("beat") if args.len() == 5 => match (num(2), num(3), num(4)) {
            (Some(h), Some(n), Some(ms)) => beat(&args[1], h as u32, n, ms),
            _ => usage(),
        },
        Some("acquire") if args.len() == 4 => match (num(2), num(3)) {
            (Some(h), Some(ms)) => acquire(&args[1], h as u32, ms),
            _ => usage(),
        },
        _ => usage(),
    }
}

fn open(mount: &str) -> Option<DatastoreDir> {
    match DatastoreDir::open(mount) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("fdm-ds: {mount}: {e}");
            None
        }
    }
}

fn dump(mount: &str) -> ExitCode {
    let Some(d) = open(mount) else {
        return ExitCode::FAILURE;
    };
    match d.read_heartbeats() {
        Ok(slots) => {
            for s in slots {
                println!("heartbeat {}: {:?}", s.host, s.record);
            }
        }
        Err(e) => println!("heartbeats: {e}"),
    }
    println!("claim: {:?}", d.read_claim());
    println!("protected list: {:?}", d.read_protected_list());
    println!(
        "config: {:?}",
        d.read_config()
            .map(|c| c.map(|c| (c.generation, c.hosts.len(), c.vms.len())))
    );
    ExitCode::SUCCESS
}

fn beat(mount: &str, host: u32, count: u64, ms: u64) -> ExitCode {
    let Some(mut d) = open(mount) else {
        return ExitCode::FAILURE;
    };
    for seq in 1..=count {
        let rec = HeartbeatRecord {
            cluster: ClusterId(1),
            host: HostId(host),
            incarnation: 1,
            sequence: seq,
            flags: HostFlags::default(),
            power_on_generation: 0,
            master: HostId::NONE,
        };
        if let Err(e) = d.write_heartbeat(&rec) {
            eprintln!("fdm-ds: write: {e}");
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(ms));
    }
    ExitCode::SUCCESS
}

fn acquire(mount: &str, host: u32, hold_ms: u64) -> ExitCode {
    let Some(mut d) = open(mount) else {
        return ExitCode::FAILURE;
    };
    let current = match d.read_claim() {
        Ok(c) => c,
        Err(e) => {
            println!("error {e}");
            return ExitCode::FAILURE;
        }
    };
    // A fresh acquisition: only a free or released claim is taken (the agent core takes a held one
    // only after watching its lease lapse, which this tool does not do).
    if let Some(c) = current
        && !c.released
        && !c.owner.is_none()
    {
        println!("lost held by {}", c.owner);
        std::thread::sleep(Duration::from_millis(hold_ms));
        return ExitCode::SUCCESS;
    }
    let record = DatastoreClaim {
        cluster: ClusterId(1),
        datastore: DatastoreId(1),
        owner: HostId(host),
        owner_incarnation: 1,
        epoch: Epoch(current.map_or(0, |c| c.epoch.0) + 1),
        renewal: 0,
        released: false,
    };
    match d.write_claim(
        &record,
        ClaimWrite::Acquire {
            expect: current,
            lapsed: false,
        },
    ) {
        Ok(()) => println!("won {}", record.epoch.0),
        Err(e) => println!("lost {e}"),
    }
    std::thread::sleep(Duration::from_millis(hold_ms));
    ExitCode::SUCCESS
}
