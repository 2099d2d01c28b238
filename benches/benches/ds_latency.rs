//! Datastore heartbeat latency between two processes (issue 8 item 2): from the moment a writer
//! process starts writing heartbeat sequence k until a reader process, polling the file, decodes k.
//!
//! The parent process is the writer; it re-runs this binary as the reader (env `FDM_DS_LAT_ROLE`).
//! Both stamp CLOCK_MONOTONIC, which is one clock for every process on the machine. The reader sends
//! its timestamps back over its stdout pipe when the run is over, so the pipe costs nothing during it.
//!
//! Writers (each writes fdm's real 512-byte heartbeat sector from `encode_heartbeat`):
//! - `pwrite+fdatasync`: `DatastoreDir::write_heartbeat` itself, fdm's current writer;
//! - `O_DSYNC pwrite`: the same sector through a descriptor opened with O_DSYNC;
//! - `mmap+msync`: the file mapped shared, memcpy of the sector, msync(MS_SYNC).
//!
//! Readers: `fdm` opens the file anew on every poll, preads 512 B, closes, and decodes, as
//! `read_heartbeats` does (a fresh open is what makes NFS revalidate, close-to-open consistency).
//! The floor keeps one descriptor and preads a raw 512-byte block written by the same syscalls
//! without encoding; it only looks for the changed sequence bytes.
//!
//! Both processes share one kernel, so the reader sees the writer's page cache: this measures the
//! time until another process can see the sector, not until it is durable. How long each writer
//! takes to make it durable is the "write call" column.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use fdm_benches::{Samples, iterations, md_percentiles, mono_ns};
use heartbeat_fs::codec::{DecodeError, decode_heartbeat, encode_heartbeat};
use heartbeat_fs::fs::DatastoreDir;
use heartbeat_fs::records::{HeartbeatRecord, HostFlags, SECTOR};
use heartbeat_fs::{ClusterId, HostId};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const ROLE_ENV: &str = "FDM_DS_LAT_ROLE";
const PATH_ENV: &str = "FDM_DS_LAT_PATH";
const READER_ENV: &str = "FDM_DS_LAT_READER";
const LAST_ENV: &str = "FDM_DS_LAT_LAST";
/// Sequences written before measuring: the first writes fault in pages, fill caches and let the
/// reader's loop settle.
const WARMUP: u64 = 50;
/// Idle time between a beat being seen and the next write: a real writer beats every 500 ms, so
/// back-to-back writes would find warmer caches and a busier disk queue than it does. Short enough
/// that the whole bench stays under a minute.
const GAP: Duration = Duration::from_millis(1);
/// A reader that sees no new sequence for this long gives up, so a broken writer cannot hang the bench.
const READER_STALL: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Writer {
    PwriteFdatasync,
    Dsync,
    Mmap,
}

impl Writer {
    fn name(self) -> &'static str {
        match self {
            Writer::PwriteFdatasync => "pwrite+fdatasync",
            Writer::Dsync => "O_DSYNC pwrite",
            Writer::Mmap => "mmap+memcpy+msync",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Payload {
    /// The encoded heartbeat sector, read back by fdm's reader.
    Fdm,
    /// A raw block with the sequence in its first 8 bytes, read back by the floor reader.
    Raw,
}

fn record(sequence: u64) -> HeartbeatRecord {
    HeartbeatRecord {
        cluster: ClusterId(1),
        host: HostId(1),
        incarnation: 1,
        sequence,
        flags: HostFlags::default(),
        power_on_generation: 0,
        master: HostId(1),
    }
}

fn raw_block(sequence: u64) -> [u8; SECTOR] {
    let mut b = [0x5au8; SECTOR];
    b[..8].copy_from_slice(&sequence.to_le_bytes());
    b
}

fn open_rw(path: &Path, extra_flags: i32) -> File {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .custom_flags(extra_flags)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// A shared writable mapping of the first page of a file that is exactly one sector long.
struct Mapping {
    ptr: *mut u8,
    len: usize,
    _file: File,
}

impl Mapping {
    fn new(file: File) -> Self {
        let len = SECTOR;
        // SAFETY: a fresh shared mapping of a file we hold open; nothing else in this process aliases
        // it. The kernel rounds `len` up to a page; we only touch the first SECTOR bytes, which lie
        // inside the file.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Mapping {
            ptr: ptr.cast(),
            len,
            _file: file,
        }
    }

    fn write_sync(&mut self, bytes: &[u8; SECTOR]) {
        // SAFETY: `ptr` maps at least SECTOR writable bytes (see `new`) and `bytes` is a separate
        // buffer, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr, SECTOR) };
        // SAFETY: `ptr` is the page-aligned start of our mapping of `len` bytes.
        let rc = unsafe { libc::msync(self.ptr.cast(), self.len, libc::MS_SYNC) };
        assert_eq!(rc, 0, "msync: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`, once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One writer of one payload, set up on `dir`; `write(k)` is the timed part.
enum Sink {
    Fdm(DatastoreDir),
    File(File),
    Mapped(Mapping),
}

impl Sink {
    /// Set up and write sequence 0, so that the reader starts on a complete, valid sector.
    fn new(writer: Writer, payload: Payload, dir: &Path) -> (Self, PathBuf) {
        let hb = |d: &DatastoreDir| d.root().join("hb").join("1.hb");
        let raw = dir.join("raw.bin");
        let mut sink = match (writer, payload) {
            (Writer::PwriteFdatasync, Payload::Fdm) => {
                let d = DatastoreDir::open(dir).unwrap();
                let path = hb(&d);
                (Sink::Fdm(d), path)
            }
            (Writer::PwriteFdatasync, Payload::Raw) => (Sink::File(open_rw(&raw, 0)), raw),
            (w, p) => {
                let path = match p {
                    // The same file fdm would write, so the reader's open+pread path is identical.
                    Payload::Fdm => hb(&DatastoreDir::open(dir).unwrap()),
                    Payload::Raw => raw,
                };
                if w == Writer::Dsync {
                    (Sink::File(open_rw(&path, libc::O_DSYNC)), path)
                } else {
                    let f = open_rw(&path, 0);
                    f.set_len(SECTOR as u64).unwrap();
                    (Sink::Mapped(Mapping::new(f)), path)
                }
            }
        };
        sink.0.write(writer, payload, 0);
        sink
    }

    fn write(&mut self, writer: Writer, payload: Payload, k: u64) {
        // Encoding is inside the timed part: it is part of what fdm does per beat.
        let bytes = || match payload {
            Payload::Fdm => encode_heartbeat(&record(k)),
            Payload::Raw => raw_block(k),
        };
        match self {
            Sink::Fdm(d) => d.write_heartbeat(&record(k)).unwrap(),
            Sink::File(f) => {
                f.write_all_at(&bytes(), 0).unwrap();
                if writer == Writer::PwriteFdatasync {
                    f.sync_data().unwrap();
                }
            }
            Sink::Mapped(m) => m.write_sync(&bytes()),
        }
    }
}

/// Pin this process to one CPU, so that the spinning reader and the writer never share a core (a
/// writer waking up on the reader's core would wait for it to be preempted, and the other way round).
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays inside it for cpu < CPU_SETSIZE;
    // sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn pinning() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

/// Child process: poll `path` in a tight loop, and report each new sequence on stdout as soon as it
/// shows (`seen k t`); the writer waits for that before its next write, so one beat is in flight.
fn reader_main() {
    if pinning() {
        pin_to(1);
    }
    let path = PathBuf::from(std::env::var_os(PATH_ENV).expect(PATH_ENV));
    let fdm = std::env::var(READER_ENV).expect(READER_ENV) == "fdm";
    let last: u64 = std::env::var(LAST_ENV).expect(LAST_ENV).parse().unwrap();
    let mut newest = 0u64;
    let mut torn = 0u64;
    let mut polls = 0u64;
    let kept = File::open(&path).unwrap();
    let mut buf = [0u8; SECTOR];
    // Line-buffered: each line is one write(2), after the timestamp was taken.
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    let mut progress_at = mono_ns();
    while newest < last {
        polls += 1;
        let seq = if fdm {
            let f = File::open(&path).unwrap();
            let n = f.read_at(&mut buf, 0).unwrap();
            drop(f);
            match decode_heartbeat(&buf[..n]) {
                Ok(r) => Some(r.sequence),
                // A sector caught mid-write: fdm reads it as "no new information".
                Err(DecodeError::BadCrc) => {
                    torn += 1;
                    None
                }
                Err(e) => panic!("reader: unexpected decode error {e}"),
            }
        } else {
            kept.read_exact_at(&mut buf, 0).unwrap();
            Some(u64::from_le_bytes(buf[..8].try_into().unwrap()))
        };
        let now = mono_ns();
        match seq {
            Some(s) if s > newest => {
                newest = s;
                progress_at = now;
                writeln!(out, "seen {s} {now}").unwrap();
            }
            _ if now - progress_at > READER_STALL.as_nanos() as u64 => {
                panic!("reader: stuck at sequence {newest} of {last}")
            }
            _ => {}
        }
    }
    writeln!(out, "done {torn} {polls}").unwrap();
}

struct RunResult {
    latency: Samples,
    call: Samples,
    torn: Option<u64>,
    polls: u64,
}

fn run(writer: Writer, payload: Payload, dir: &Path, n: u64) -> RunResult {
    let (mut sink, path) = Sink::new(writer, payload, dir);
    let last = WARMUP + n;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(ROLE_ENV, "reader")
        .env(PATH_ENV, &path)
        .env(
            READER_ENV,
            match payload {
                Payload::Fdm => "fdm",
                Payload::Raw => "raw",
            },
        )
        .env(LAST_ENV, last.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = || lines.next().expect("reader exited early").unwrap();
    assert_eq!(next_line(), "ready");

    let mut latency = Samples::with_capacity(n as usize);
    let mut call = Samples::with_capacity(n as usize);
    for k in 1..=last {
        let t0 = mono_ns();
        sink.write(writer, payload, k);
        let t1 = mono_ns();
        let line = next_line();
        let seen: Vec<u64> = line
            .strip_prefix("seen ")
            .unwrap_or_else(|| panic!("reader said {line:?}"))
            .split(' ')
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(seen[0], k, "reader saw another sequence");
        if k > WARMUP {
            call.push(Duration::from_nanos(t1 - t0));
            latency.push(Duration::from_nanos(seen[1] - t0));
        }
        std::thread::sleep(GAP);
    }
    let line = next_line();
    let done: Vec<u64> = line
        .strip_prefix("done ")
        .unwrap_or_else(|| panic!("reader said {line:?}"))
        .split(' ')
        .map(|x| x.parse().unwrap())
        .collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "reader failed: {status}");
    RunResult {
        latency,
        call,
        torn: (payload == Payload::Fdm).then_some(done[0]),
        polls: done[1],
    }
}

fn main() {
    if std::env::var_os(ROLE_ENV).is_some() {
        reader_main();
        return;
    }
    let n = iterations(2_000) as u64;
    let disk = std::env::var("FDM_BENCH_DISK_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let mut places = Vec::new();
    if Path::new("/dev/shm").is_dir() {
        places.push(("tmpfs", PathBuf::from("/dev/shm")));
    }
    places.push(("disk", PathBuf::from(&disk)));

    if pinning() {
        pin_to(0);
    }
    // Other work on the machine shows up in the tails; the load average says how much there was.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split(' ').take(3).collect::<Vec<_>>().join(" ");
    let started = mono_ns();
    let mut md = String::new();
    writeln!(
        md,
        "# Datastore heartbeat latency, writer process -> reader process\n\n\
         {n} samples per row after {WARMUP} warm-up writes; one beat in flight: the writer waits \
         for the reader to report sequence k, then {} ms, then writes k+1. Writer and reader \
         pinned to CPUs 0 and 1. Load average at start: {load}. Latency: CLOCK_MONOTONIC from \
         just before the writer's write call (encoding included) until the reader decoded that \
         sequence. fdm reader: open + pread 512 B + close + decode on every \
         poll (as `read_heartbeats`); floor reader: one kept fd, pread 512 B, compare the sequence \
         bytes. Both poll in a tight loop. \"torn\": polls whose sector failed its CRC (fdm reader \
         only). \"write call\": how long the writer's call took (durability cost). disk = {disk}.\n",
        GAP.as_millis()
    )
    .unwrap();
    writeln!(
        md,
        "| fs | writer | payload/reader | n | torn | polls | p50 us | p99 us | p99.9 us | \
         write call p50 us | write call p99 us |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    .unwrap();
    let mut summary = Vec::new();
    for (fs, base) in &places {
        for payload in [Payload::Fdm, Payload::Raw] {
            for writer in [Writer::PwriteFdatasync, Writer::Dsync, Writer::Mmap] {
                let tmp = tempfile::tempdir_in(base).unwrap();
                let mut r = run(writer, payload, tmp.path(), n);
                let label = match payload {
                    Payload::Fdm => "fdm sector / open+pread+decode",
                    Payload::Raw => "floor: raw / kept-fd pread",
                };
                let call50 = r.call.percentile(0.5);
                writeln!(
                    md,
                    "| {fs} | {} | {label} | {} | {} | {} | {} | {:.1} | {:.1} |",
                    writer.name(),
                    r.latency.len(),
                    r.torn.map_or("-".to_string(), |t| t.to_string()),
                    r.polls,
                    md_percentiles(&mut r.latency),
                    call50 as f64 / 1e3,
                    r.call.percentile(0.99) as f64 / 1e3,
                )
                .unwrap();
                summary.push(Summary {
                    fs,
                    writer,
                    payload,
                    seen_p50: r.latency.percentile(0.5),
                    seen_p99: r.latency.percentile(0.99),
                    call_p50: call50,
                    torn: r.torn.unwrap_or(0),
                });
            }
        }
    }
    md.push('\n');
    md.push_str(&conclusion(&summary));
    fdm_benches::report::finish("ds_latency.md", md, (mono_ns() - started) as f64 / 1e9);
}

/// One row of the table, as the conclusion needs it (nanoseconds).
#[derive(Clone, Copy, Debug)]
struct Summary<'a> {
    fs: &'a str,
    writer: Writer,
    payload: Payload,
    seen_p50: u64,
    seen_p99: u64,
    call_p50: u64,
    torn: u64,
}

/// Which writer is the fastest safe one, with the numbers just measured.
fn conclusion(s: &[Summary<'_>]) -> String {
    let us = |ns: u64| ns as f64 / 1e3;
    let get = |fs: &str, w: Writer| {
        s.iter()
            .find(|x| x.fs == fs && x.writer == w && x.payload == Payload::Fdm)
            .copied()
    };
    let mut out = String::from("## Which writer\n\n");
    for fs in ["tmpfs", "disk"] {
        let (Some(a), Some(b), Some(c)) = (
            get(fs, Writer::PwriteFdatasync),
            get(fs, Writer::Dsync),
            get(fs, Writer::Mmap),
        ) else {
            continue;
        };
        writeln!(
            out,
            "- {fs}: visible after p50/p99 {:.1}/{:.1} us (pwrite+fdatasync), {:.1}/{:.1} us \
             (O_DSYNC), {:.1}/{:.1} us (mmap+msync); durable after p50 {:.1}, {:.1}, {:.1} us; \
             torn sectors seen by the reader: {}, {}, {}.",
            us(a.seen_p50),
            us(a.seen_p99),
            us(b.seen_p50),
            us(b.seen_p99),
            us(c.seen_p50),
            us(c.seen_p99),
            us(a.call_p50),
            us(b.call_p50),
            us(c.call_p50),
            a.torn,
            b.torn,
            c.torn
        )
        .unwrap();
    }
    // Durability on disk decides: on tmpfs every writer is durable as soon as it returns.
    let verdict = match get("disk", Writer::PwriteFdatasync).zip(get("disk", Writer::Dsync)) {
        Some((a, b)) => {
            let (fd, ds) = (a.call_p50 as f64, b.call_p50 as f64);
            // Below this the two are one result: repeated runs on a shared machine move by more.
            let noise = 0.10;
            if ds < fd * (1.0 - noise) {
                format!(
                    "the fastest safe writer measured here is a pwrite through an O_DSYNC \
                     descriptor: durable on disk after {:.1} us p50 against {:.1} us for fdm's \
                     current pwrite + fdatasync, one syscall instead of two",
                    us(b.call_p50),
                    us(a.call_p50)
                )
            } else if fd < ds * (1.0 - noise) {
                format!(
                    "the fastest safe writer measured here is fdm's current pwrite + fdatasync: \
                     durable on disk after {:.1} us p50 against {:.1} us for an O_DSYNC pwrite",
                    us(a.call_p50),
                    us(b.call_p50)
                )
            } else {
                format!(
                    "fdm's current pwrite + fdatasync and a pwrite through an O_DSYNC descriptor \
                     are the fastest safe writers and tie within the noise of this machine \
                     (durable on disk after {:.1} vs {:.1} us p50, visible to the reader after \
                     {:.1} vs {:.1} us p50), so there is no reason to change fdm's writer",
                    us(a.call_p50),
                    us(b.call_p50),
                    us(a.seen_p50),
                    us(b.seen_p50)
                )
            }
        }
        None => "without disk numbers there is no verdict".to_string(),
    };
    writeln!(
        out,
        "\nOn these numbers {verdict}. The two are equally safe: O_DSYNC completes each write with \
         the durability of write + fdatasync (the data and the metadata needed to read it back). \
         Either copies the sector into the page cache while a reader may be reading it, so a \
         reader can catch it half-copied (the torn column; fdm's CRC turns that into \"no new \
         information\"). mmap + msync is not a safe heartbeat writer even where it looks as fast: \
         the memcpy lands in shared pages that readers see before msync, so visibility says \
         nothing about durability; the kernel may write the dirty page back at any other time \
         and, on a shared filesystem such as NFS, partially, so another host can read a torn \
         sector (again only \"no new information\", but a lost beat for the lease); and a write \
         error shows up as a failed msync at best, or as SIGBUS when the page is touched on a \
         vanished file or a dead mount, instead of an error return fdm can act on. Same-kernel \
         visibility (the latency columns) is not what peers on other hosts see: for them the \
         sector exists once it is durable on the shared storage, which is the write-call \
         column.\n"
    )
    .unwrap();
    out
}
