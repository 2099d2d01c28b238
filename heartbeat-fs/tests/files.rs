//! Real files: heartbeats seen across processes, torn writes, claim contention, error kinds, and a
//! hung datastore that never blocks the caller. Run on tmpfs (/dev/shm) and on a disk directory.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use heartbeat_fs::claim::IntentQuery;
use heartbeat_fs::fs::{DatastoreDir, DatastoreExecutor};
use heartbeat_fs::ops::{ClaimWrite, DsError, DsOp, DsReply, DsRequest, IoKind};
use heartbeat_fs::records::{DatastoreClaim, HeartbeatRecord};
use heartbeat_fs::{DatastoreId, Epoch, HostId, VmId};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const TOOL: &str = env!("CARGO_BIN_EXE_fdm-ds");

/// Both kinds of storage the agent runs on: tmpfs and a disk-backed directory.
fn stores() -> Vec<tempfile::TempDir> {
    let mut v = vec![
        tempfile::Builder::new()
            .prefix("fdm-disk-")
            .tempdir_in(std::env::temp_dir())
            .unwrap(),
    ];
    if Path::new("/dev/shm").is_dir() {
        v.push(
            tempfile::Builder::new()
                .prefix("fdm-tmpfs-")
                .tempdir_in("/dev/shm")
                .unwrap(),
        );
    }
    if Path::new("/var/tmp").is_dir() {
        v.push(
            tempfile::Builder::new()
                .prefix("fdm-var-")
                .tempdir_in("/var/tmp")
                .unwrap(),
        );
    }
    v
}

fn seq_of(d: &DatastoreDir, host: u32) -> Option<u64> {
    d.read_heartbeats()
        .unwrap()
        .into_iter()
        .find(|s| s.host == HostId(host))
        .and_then(|s| s.record.ok())
        .map(|r| r.sequence)
}

#[test]
fn another_process_sees_the_sequence_advance() {
    for store in stores() {
        let mut child = Command::new(TOOL)
            .args(["beat", store.path().to_str().unwrap(), "5", "60", "25"])
            .spawn()
            .unwrap();
        let d = DatastoreDir::open(store.path()).unwrap();
        let start = Instant::now();
        let mut seen = Vec::new();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(s) = seq_of(&d, 5)
                && seen.last() != Some(&s)
            {
                seen.push(s);
            }
            if seen.last() == Some(&60) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(child.wait().unwrap().success());
        assert_eq!(
            seen.last(),
            Some(&60),
            "{}: saw {seen:?}",
            store.path().display()
        );
        assert!(
            seen.len() >= 5,
            "the reader saw the sequence advance step by step: {seen:?}"
        );
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "never goes back: {seen:?}"
        );
    }
}

#[test]
fn torn_heartbeat_is_no_new_information() {
    for store in stores() {
        let mut d = DatastoreDir::open(store.path()).unwrap();
        d.write_heartbeat(&common::heartbeat()).unwrap();
        let path = d.root().join("hb").join("7.hb");
        // Half a sector of a newer write landed, the rest is the old one.
        let mut bytes = std::fs::read(&path).unwrap();
        let mut newer = common::heartbeat();
        newer.sequence += 1;
        let fresh = heartbeat_fs::codec::encode_heartbeat(&newer);
        bytes[..256].copy_from_slice(&fresh[..256]);
        std::fs::write(&path, &bytes).unwrap();
        let slot = d
            .read_heartbeats()
            .unwrap()
            .into_iter()
            .find(|s| s.host == HostId(7))
            .unwrap();
        assert!(slot.record.is_err(), "a torn sector must not decode");
        // Truncated and zeroed files too.
        std::fs::write(&path, &bytes[..100]).unwrap();
        assert!(d.read_heartbeats().unwrap()[0].record.is_err());
        std::fs::write(&path, [0u8; 512]).unwrap();
        assert!(d.read_heartbeats().unwrap()[0].record.is_err());
        // The next good write is read again.
        d.write_heartbeat(&newer).unwrap();
        assert_eq!(seq_of(&d, 7), Some(43));
    }
}

#[test]
fn claim_contention_between_processes_has_one_winner() {
    for store in stores() {
        let p = store.path().to_str().unwrap().to_string();
        // Let the directory exist before both race.
        DatastoreDir::open(&p).unwrap();
        let a = Command::new(TOOL)
            .args(["acquire", &p, "1", "800"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let b = Command::new(TOOL)
            .args(["acquire", &p, "2", "800"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let oa = String::from_utf8(a.wait_with_output().unwrap().stdout).unwrap();
        let ob = String::from_utf8(b.wait_with_output().unwrap().stdout).unwrap();
        let wins = [&oa, &ob].iter().filter(|o| o.starts_with("won")).count();
        assert_eq!(wins, 1, "exactly one winner: {oa:?} / {ob:?}");
        let d = DatastoreDir::open(&p).unwrap();
        let holder = d.read_claim().unwrap().expect("claimed").owner;
        let winner = if oa.starts_with("won") {
            HostId(1)
        } else {
            HostId(2)
        };
        assert_eq!(holder, winner, "the loser sees who holds it");
    }
}

fn claim(owner: u32, epoch: u64, renewal: u64) -> DatastoreClaim {
    DatastoreClaim {
        owner: HostId(owner),
        epoch: Epoch(epoch),
        renewal,
        ..common::claim()
    }
}

#[test]
fn claim_renew_and_takeover_follow_the_lease_rules() {
    let store = tempfile::tempdir().unwrap();
    let mut a = DatastoreDir::open(store.path()).unwrap();
    let mut b = DatastoreDir::open(store.path()).unwrap();
    a.write_claim(
        &claim(1, 1, 0),
        ClaimWrite::Acquire {
            expect: None,
            lapsed: false,
        },
    )
    .unwrap();
    a.write_claim(&claim(1, 1, 1), ClaimWrite::Renew).unwrap();
    // b finds the lock held and the claim not stale from its point of view (expects nothing).
    assert_eq!(
        b.write_claim(
            &claim(2, 2, 0),
            ClaimWrite::Acquire {
                expect: None,
                lapsed: false,
            }
        ),
        Err(DsError::Contended)
    );
    // b watched the lease lapse (expects exactly what is on disk): it may take over despite the lock.
    b.write_claim(
        &claim(2, 2, 0),
        ClaimWrite::Acquire {
            expect: Some(claim(1, 1, 1)),
            lapsed: true,
        },
    )
    .unwrap();
    // a's renewal now finds another owner.
    assert!(
        matches!(a.write_claim(&claim(1, 1, 2), ClaimWrite::Renew), Err(DsError::ClaimMismatch { current: Some(c) }) if c.owner == HostId(2))
    );
    // A stale expectation loses the compare.
    assert!(matches!(
        a.write_claim(
            &claim(1, 3, 0),
            ClaimWrite::Acquire {
                expect: Some(claim(1, 1, 1)),
                lapsed: true,
            }
        ),
        Err(DsError::ClaimMismatch { .. })
    ));
    // Release lets the next one in without waiting.
    let mut released = claim(2, 2, 1);
    released.released = true;
    b.write_claim(&released, ClaimWrite::Release).unwrap();
    a.write_claim(
        &claim(1, 3, 0),
        ClaimWrite::Acquire {
            expect: Some(released),
            lapsed: false,
        },
    )
    .unwrap();
}

#[test]
fn a_lock_left_by_a_former_master_gives_way_once_the_record_lapsed() {
    let store = tempfile::tempdir().unwrap();
    let mut a = DatastoreDir::open(store.path()).unwrap();
    let mut b = DatastoreDir::open(store.path()).unwrap();
    let mut c = DatastoreDir::open(store.path()).unwrap();
    let acquire = |expect, lapsed| ClaimWrite::Acquire { expect, lapsed };
    a.write_claim(&claim(1, 1, 0), acquire(None, false))
        .unwrap();
    // a's storage hung; c watched the lease lapse and took over without the lock, then released.
    c.write_claim(&claim(3, 2, 0), acquire(Some(claim(1, 1, 0)), true))
        .unwrap();
    let mut released = claim(3, 2, 1);
    released.released = true;
    c.write_claim(&released, ClaimWrite::Release).unwrap();
    // a still holds the lock. A fresh look at a released claim could be a rival mid-acquire: wait.
    assert_eq!(
        b.write_claim(&claim(2, 3, 0), acquire(Some(released), false)),
        Err(DsError::Contended)
    );
    // The same released record for a whole lease: the lock is stale.
    b.write_claim(&claim(2, 3, 0), acquire(Some(released), true))
        .unwrap();
    assert_eq!(b.read_claim().unwrap().map(|r| r.owner), Some(HostId(2)));
}

#[test]
fn protected_list_and_intent_check_respect_the_claim() {
    let store = tempfile::tempdir().unwrap();
    let mut d = DatastoreDir::open(store.path()).unwrap();
    let list = common::protected_list(); // master 3, epoch 11, vm 2 intent -> host 4 attempt 2
    assert!(matches!(
        d.write_protected_list(&list),
        Err(DsError::ClaimMismatch { .. })
    ));
    d.write_claim(
        &claim(3, 11, 0),
        ClaimWrite::Acquire {
            expect: None,
            lapsed: false,
        },
    )
    .unwrap();
    d.write_protected_list(&list).unwrap();
    assert_eq!(d.read_protected_list().unwrap(), Some(list));
    assert_eq!(
        d.check_intent(&IntentQuery {
            owner: HostId(3),
            epoch: Epoch(11),
            vm: VmId(2),
            target: HostId(4),
            attempt: 2
        }),
        Ok(DsReply::IntentConfirmed)
    );
    for (owner, epoch, target, attempt) in
        [(3, 10, 4, 2), (5, 11, 4, 2), (3, 11, 5, 2), (3, 11, 4, 1)]
    {
        let r = d.check_intent(&IntentQuery {
            owner: HostId(owner),
            epoch: Epoch(epoch),
            vm: VmId(2),
            target: HostId(target),
            attempt,
        });
        assert!(
            matches!(r, Ok(DsReply::IntentRefused { .. })),
            "{owner} {epoch} {target} {attempt}: {r:?}"
        );
    }
}

#[test]
fn lists_and_config_replace_atomically() {
    let store = tempfile::tempdir().unwrap();
    let d = DatastoreDir::open(store.path()).unwrap();
    assert_eq!(d.read_config().unwrap(), None);
    d.write_config(&common::config()).unwrap();
    assert_eq!(d.read_config().unwrap(), Some(common::config()));
    d.write_power_on_list(&common::power_on_list()).unwrap();
    assert_eq!(
        d.read_power_on_list(HostId(7)).unwrap(),
        Some(common::power_on_list())
    );
    assert_eq!(d.read_power_on_list(HostId(8)).unwrap(), None);
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(d.root())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    // A corrupt config is a typed error, not a panic and not "no config".
    std::fs::write(d.root().join("config"), b"garbage").unwrap();
    assert!(matches!(d.read_config(), Err(DsError::Corrupt(_))));
}

#[test]
fn errors_have_the_right_kind() {
    let missing = DatastoreDir::open("/nonexistent/fdm-datastore");
    assert!(matches!(
        missing,
        Err(DsError::Io {
            kind: IoKind::Missing,
            ..
        })
    ));
    let store = tempfile::tempdir().unwrap();
    let file = store.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        DatastoreDir::open(&file),
        Err(DsError::Io {
            kind: IoKind::Missing,
            ..
        })
    ));
    // The datastore directory disappears under a running agent.
    let mut d = DatastoreDir::open(store.path()).unwrap();
    std::fs::remove_dir_all(d.root()).unwrap();
    let r = d.write_power_on_list(&common::power_on_list());
    assert!(
        matches!(
            r,
            Err(DsError::Io {
                kind: IoKind::Missing,
                ..
            })
        ),
        "{r:?}"
    );
    let _ = d.write_heartbeat(&HeartbeatRecord {
        host: HostId(99),
        ..common::heartbeat()
    });
}

fn hung_store() -> (tempfile::TempDir, PathBuf) {
    // A FIFO in place of the heartbeat directory entry blocks `open` for reading until a writer
    // appears: a stand-in for an NFS server that stopped answering.
    let store = tempfile::tempdir().unwrap();
    DatastoreDir::open(store.path()).unwrap();
    let fifo = store.path().join(".fdm").join("claim");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: plain libc call with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    (store, fifo)
}

#[test]
fn hung_datastore_times_out_and_never_blocks_the_caller() {
    let (store, fifo) = hung_store();
    let healthy = tempfile::tempdir().unwrap();
    let deadline = Duration::from_millis(300);
    let (ex, done) = DatastoreExecutor::new(
        &[
            (DatastoreId(1), store.path().to_path_buf()),
            (DatastoreId(2), healthy.path().to_path_buf()),
        ],
        deadline,
    );
    let t0 = Instant::now();
    ex.submit(DsRequest {
        id: 1,
        datastore: DatastoreId(1),
        op: DsOp::ReadClaim,
    });
    ex.submit(DsRequest {
        id: 2,
        datastore: DatastoreId(2),
        op: DsOp::WriteHeartbeat(common::heartbeat()),
    });
    assert!(
        t0.elapsed() < Duration::from_millis(50),
        "submit never blocks"
    );
    let mut got = std::collections::BTreeMap::new();
    while got.len() < 2 {
        let c = done
            .recv_timeout(Duration::from_secs(5))
            .expect("every request completes");
        got.insert(c.id, (c.result, t0.elapsed()));
    }
    assert_eq!(
        got[&2].0,
        Ok(DsReply::Written),
        "the healthy datastore is unaffected"
    );
    assert!(got[&2].1 < deadline);
    assert_eq!(got[&1].0, Err(DsError::Timeout));
    assert!(
        got[&1].1 >= deadline && got[&1].1 < deadline * 3,
        "timed out at {:?}",
        got[&1].1
    );
    // While the worker is stuck, further calls to that datastore fail at once.
    let t1 = Instant::now();
    ex.submit(DsRequest {
        id: 3,
        datastore: DatastoreId(1),
        op: DsOp::ReadHeartbeats,
    });
    let c = done.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((c.id, c.result), (3, Err(DsError::Busy)));
    assert!(t1.elapsed() < Duration::from_millis(100));
    // Unknown datastores are refused, not lost.
    ex.submit(DsRequest {
        id: 4,
        datastore: DatastoreId(9),
        op: DsOp::ReadClaim,
    });
    let c = done.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (c.id, c.result),
        (4, Err(DsError::NotMounted(DatastoreId(9))))
    );
    // Unstick the worker so the test exits cleanly.
    let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
}
