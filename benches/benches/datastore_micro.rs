//! Heartbeat-sector write (pwrite + fdatasync) and read (open + read + decode) latency, on tmpfs and
//! on a disk directory; and the raw floor of the same syscalls without fdm's encoding.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use fdm_benches::{Samples, header, iterations};
use heartbeat_fs::fs::DatastoreDir;
use heartbeat_fs::records::{HeartbeatRecord, HostFlags};
use heartbeat_fs::{ClusterId, HostId};
use std::os::unix::fs::FileExt;
use std::path::Path;

fn bench(dir: &Path, label: &str, n: usize) {
    let mut d = DatastoreDir::open(dir).unwrap();
    let mut write = Samples::with_capacity(n);
    let mut read = Samples::with_capacity(n);
    for seq in 1..=n as u64 {
        let rec = HeartbeatRecord {
            cluster: ClusterId(1),
            host: HostId(1),
            incarnation: 1,
            sequence: seq,
            flags: HostFlags::default(),
            power_on_generation: 0,
            master: HostId(1),
        };
        write.time(|| d.write_heartbeat(&rec).unwrap());
        let slots = read.time(|| d.read_heartbeats().unwrap());
        assert_eq!(slots[0].record.as_ref().unwrap().sequence, seq);
    }
    println!(
        "{}",
        write.row(&format!("{label}: heartbeat write+fdatasync"))
    );
    println!(
        "{}",
        read.row(&format!("{label}: read all sectors (1 host)"))
    );
    // The floor: the same syscalls on a raw 512-byte block.
    let path = dir.join("raw.bin");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let block = [0x5au8; 512];
    let mut raw = Samples::with_capacity(n);
    let mut raw_read = Samples::with_capacity(n);
    let mut buf = [0u8; 512];
    for _ in 0..n {
        raw.time(|| {
            f.write_all_at(&block, 0).unwrap();
            f.sync_data().unwrap();
        });
        raw_read.time(|| {
            let g = std::fs::File::open(&path).unwrap();
            g.read_exact_at(&mut buf, 0).unwrap();
        });
    }
    println!(
        "{}",
        raw.row(&format!("{label}: floor pwrite+fdatasync 512 B"))
    );
    println!(
        "{}",
        raw_read.row(&format!("{label}: floor open+pread 512 B"))
    );
}

fn main() {
    let n = iterations(5_000);
    println!("{}", header());
    if Path::new("/dev/shm").is_dir() {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        bench(t.path(), "tmpfs", n);
    }
    let disk = std::env::var("FDM_BENCH_DISK_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let t = tempfile::tempdir_in(&disk).unwrap();
    bench(t.path(), &format!("disk ({disk})"), n);
}
