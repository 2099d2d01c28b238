//! Datastore operations on real files under `<mount>/.fdm/` (layout in `docs/formats.md`).
//!
//! [`DatastoreDir`] runs one operation at a time, blocking. [`DatastoreExecutor`] runs them for an
//! agent: one worker thread per datastore, a deadline on every call, and a completion for every
//! request, so that a hung mount (NFS server gone, FUSE daemon stopped) never blocks the caller and
//! never piles up threads.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use crate::claim::{self, IntentQuery, LockAfter, LockHolder};
use crate::codec::{self, DecodeError};
use crate::ids::{DatastoreId, HostId};
use crate::ops::{
    ClaimWrite, DsCompletion, DsError, DsOp, DsReply, DsRequest, HeartbeatSlot, IoKind,
};
use crate::records::{
    ClusterConfig, ClusterReport, DatastoreClaim, HeartbeatRecord, PowerOnList, ProtectedVmList,
    SECTOR,
};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Everything fdm keeps lives below this directory of a datastore.
pub const FDM_DIR: &str = ".fdm";

fn io_err(e: io::Error) -> DsError {
    let kind = match e.raw_os_error() {
        Some(libc::EIO) => IoKind::Io,
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => IoKind::NoSpace,
        Some(libc::ESTALE) => IoKind::Stale,
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => IoKind::PermissionDenied,
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => IoKind::Missing,
        Some(libc::ENOTCONN) => IoKind::NotConnected,
        _ => match e.kind() {
            io::ErrorKind::NotFound => IoKind::Missing,
            io::ErrorKind::PermissionDenied => IoKind::PermissionDenied,
            _ => IoKind::Other,
        },
    };
    DsError::Io {
        kind,
        message: e.to_string(),
    }
}

/// One datastore as seen from this host.
#[derive(Debug)]
pub struct DatastoreDir {
    root: PathBuf,
    /// Our own heartbeat sector, kept open: one positioned write + sync_data per beat.
    heartbeat: Option<(HostId, File)>,
    /// The claim lock, held for the tenure of a claim.
    claim_lock: Option<File>,
}

impl DatastoreDir {
    /// Open the datastore mounted at `mount`, creating `.fdm/` and its subdirectories if needed.
    /// A missing mount path is `IoKind::Missing`: fdm never creates the mount point itself, so that a
    /// datastore that failed to mount is not silently replaced by an empty local directory.
    pub fn open(mount: impl AsRef<Path>) -> Result<Self, DsError> {
        let mount = mount.as_ref();
        let meta = fs::metadata(mount).map_err(io_err)?;
        if !meta.is_dir() {
            return Err(DsError::Io {
                kind: IoKind::Missing,
                message: format!("{} is not a directory", mount.display()),
            });
        }
        let root = mount.join(FDM_DIR);
        for sub in ["", "hb", "poweron"] {
            fs::create_dir_all(root.join(sub)).map_err(io_err)?;
        }
        Ok(DatastoreDir {
            root,
            heartbeat: None,
            claim_lock: None,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn heartbeat_path(&self, host: HostId) -> PathBuf {
        self.root.join("hb").join(format!("{}.hb", host.0))
    }
    fn power_on_path(&self, host: HostId) -> PathBuf {
        self.root.join("poweron").join(format!("{}.pol", host.0))
    }

    /// Write our heartbeat sector in place and flush it to stable storage.
    pub fn write_heartbeat(&mut self, rec: &HeartbeatRecord) -> Result<(), DsError> {
        let reopen = !matches!(&self.heartbeat, Some((h, _)) if *h == rec.host);
        if reopen {
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(self.heartbeat_path(rec.host))
                .map_err(io_err)?;
            self.heartbeat = Some((rec.host, f));
        }
        let (_, f) = self.heartbeat.as_ref().expect("opened above");
        let sector = codec::encode_heartbeat(rec);
        let r = f.write_all_at(&sector, 0).and_then(|_| f.sync_data());
        if let Err(e) = r {
            // A stale handle (NFS) must not poison every later write.
            self.heartbeat = None;
            return Err(io_err(e));
        }
        Ok(())
    }

    /// Read every host's heartbeat sector. Each file is opened anew so that a shared filesystem
    /// revalidates it (close-to-open consistency); nothing is served from a mapping or a cache of ours.
    pub fn read_heartbeats(&self) -> Result<Vec<HeartbeatSlot>, DsError> {
        let mut slots = Vec::new();
        for entry in fs::read_dir(self.root.join("hb")).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name();
            let Some(host) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".hb"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let record = match read_capped(&entry.path(), SECTOR + 1) {
                Ok(Some(bytes)) => codec::decode_heartbeat(&bytes),
                Ok(None) => continue,
                Err(e) => return Err(e),
            };
            slots.push(HeartbeatSlot {
                host: HostId(host),
                record,
            });
        }
        slots.sort_by_key(|s| s.host);
        Ok(slots)
    }

    pub fn write_power_on_list(&self, list: &PowerOnList) -> Result<(), DsError> {
        replace_atomically(
            &self.power_on_path(list.host),
            &codec::encode_power_on_list(list),
        )
    }

    pub fn read_power_on_list(&self, host: HostId) -> Result<Option<PowerOnList>, DsError> {
        read_record(&self.power_on_path(host), codec::decode_power_on_list)
    }

    pub fn read_claim(&self) -> Result<Option<DatastoreClaim>, DsError> {
        read_record(&self.root.join("claim"), codec::decode_claim)
    }

    /// Write the claim record. The decision is [`claim::decide_claim_write`]'s, shared with the
    /// in-memory datastore; this only reads, writes and holds the lock file.
    pub fn write_claim(
        &mut self,
        record: &DatastoreClaim,
        mode: ClaimWrite,
    ) -> Result<(), DsError> {
        let current = self.read_claim_lenient()?;
        let mut taken: Option<File> = None;
        let decision = claim::decide_claim_write(current, record, mode, || {
            if self.claim_lock.is_some() {
                return Ok(LockHolder::Caller);
            }
            match try_lock_file(&self.root.join("claim.lock"))? {
                Some(f) => {
                    taken = Some(f);
                    Ok(LockHolder::Free)
                }
                None => Ok(LockHolder::Other),
            }
        })?;
        if let Ok(Some(rec)) = &decision.outcome {
            // A failed write leaves the lock as it was: `taken` is dropped here.
            write_sector(&self.root.join("claim"), &codec::encode_claim(rec))?;
        }
        match decision.lock {
            LockAfter::Unchanged => {}
            LockAfter::Held => {
                if self.claim_lock.is_none() {
                    self.claim_lock = taken;
                }
            }
            LockAfter::NotHeld => self.claim_lock = None,
        }
        decision.outcome.map(|_| ())
    }

    /// Whether this handle holds the claim lock (tests compare it with the in-memory model).
    pub fn holds_claim_lock(&self) -> bool {
        self.claim_lock.is_some()
    }

    /// A corrupt claim sector reads as "no claim" for the compare: a torn write must not block a
    /// takeover forever (the lease rules still apply: the caller watched the old one lapse).
    fn read_claim_lenient(&self) -> Result<Option<DatastoreClaim>, DsError> {
        match self.read_claim() {
            Err(DsError::Corrupt(_)) => Ok(None),
            r => r,
        }
    }

    /// Replace the protected list, but only while the claim on disk names the list's master at the
    /// list's epoch: a deposed master cannot overwrite its successor's list.
    pub fn write_protected_list(&self, list: &ProtectedVmList) -> Result<(), DsError> {
        claim::protected_write_allowed(&self.read_claim_strict()?, list)?;
        replace_atomically(
            &self.root.join("protected.list"),
            &codec::encode_protected_list(list),
        )
    }

    pub fn read_protected_list(&self) -> Result<Option<ProtectedVmList>, DsError> {
        read_record(
            &self.root.join("protected.list"),
            codec::decode_protected_list,
        )
    }

    pub fn read_config(&self) -> Result<Option<ClusterConfig>, DsError> {
        read_record(&self.root.join("config"), codec::decode_config)
    }

    pub fn write_config(&self, cfg: &ClusterConfig) -> Result<(), DsError> {
        replace_atomically(&self.root.join("config"), &codec::encode_config(cfg))
    }

    /// The master's cluster report for the management plane (not read by agents).
    pub fn write_report(&self, report: &ClusterReport) -> Result<(), DsError> {
        replace_atomically(&self.root.join("report"), &codec::encode_report(report))
    }

    pub fn read_report(&self) -> Result<Option<ClusterReport>, DsError> {
        read_record(&self.root.join("report"), codec::decode_report)
    }

    /// The target's check before a power-on (see `DsOp::CheckIntent`).
    pub fn check_intent(&self, q: &IntentQuery) -> Result<DsReply, DsError> {
        claim::check_intent(&self.read_claim_strict()?, q, || self.read_protected_list())
    }

    /// The claim as the gated operations see it: IO errors are errors, a corrupt record is the
    /// decode error (which the rule turns into `Corrupt`).
    fn read_claim_strict(&self) -> Result<Result<Option<DatastoreClaim>, DecodeError>, DsError> {
        match self.read_claim() {
            Ok(c) => Ok(Ok(c)),
            Err(DsError::Corrupt(e)) => Ok(Err(e)),
            Err(e) => Err(e),
        }
    }

    pub fn execute(&mut self, op: DsOp) -> Result<DsReply, DsError> {
        match op {
            DsOp::WriteHeartbeat(r) => self.write_heartbeat(&r).map(|_| DsReply::Written),
            DsOp::ReadHeartbeats => self.read_heartbeats().map(DsReply::Heartbeats),
            DsOp::WritePowerOnList(l) => self.write_power_on_list(&l).map(|_| DsReply::Written),
            DsOp::ReadPowerOnList { host } => {
                self.read_power_on_list(host).map(DsReply::PowerOnList)
            }
            DsOp::ReadClaim => self.read_claim().map(DsReply::Claim),
            DsOp::WriteClaim { record, mode } => {
                self.write_claim(&record, mode).map(|_| DsReply::Written)
            }
            DsOp::WriteProtectedList(l) => self.write_protected_list(&l).map(|_| DsReply::Written),
            DsOp::ReadProtectedList => self.read_protected_list().map(DsReply::ProtectedList),
            DsOp::ReadConfig { newer_than } => self
                .read_config()
                .map(|c| DsReply::Config(c.filter(|c| c.generation > newer_than).map(Box::new))),
            DsOp::WriteConfig(c) => self.write_config(&c).map(|_| DsReply::Written),
            DsOp::CheckIntent {
                owner,
                epoch,
                vm,
                target,
                attempt,
            } => self.check_intent(&IntentQuery {
                owner,
                epoch,
                vm,
                target,
                attempt,
            }),
        }
    }
}

/// Take the claim lock file's lock: `Some(file)` when taken, `None` when another open file holds it.
fn try_lock_file(path: &Path) -> Result<Option<File>, DsError> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err)?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(io_err(e)),
    }
}

/// Read at most `cap` bytes of a file; `None` if it does not exist.
fn read_capped(path: &Path, cap: usize) -> Result<Option<Vec<u8>>, DsError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let mut buf = Vec::new();
    f.take(cap as u64).read_to_end(&mut buf).map_err(io_err)?;
    Ok(Some(buf))
}

fn read_record<T>(
    path: &Path,
    decode: fn(&[u8]) -> Result<T, DecodeError>,
) -> Result<Option<T>, DsError> {
    match read_capped(path, codec::VARIABLE_HEADER + codec::MAX_BODY + 1)? {
        None => Ok(None),
        Some(bytes) => decode(&bytes).map(Some).map_err(DsError::Corrupt),
    }
}

/// One sector, written in place and flushed.
fn write_sector(path: &Path, sector: &[u8; SECTOR]) -> Result<(), DsError> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err)?;
    f.write_all_at(sector, 0)
        .and_then(|_| f.sync_data())
        .map_err(io_err)
}

/// Write a temporary file, flush it, rename it over the target, flush the directory: a reader sees
/// the old record or the new one, never a mix.
fn replace_atomically(path: &Path, bytes: &[u8]) -> Result<(), DsError> {
    let dir = path.parent().expect("records live in a directory");
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("record");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let r = (|| {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.map_err(io_err)
}

/// The job a worker is inside right now: its deadline and its completion flag.
type CurrentJob = Arc<Mutex<Option<(Instant, Arc<AtomicBool>)>>>;
/// Every job not yet completed: deadline, request id, datastore, completion flag.
type PendingJobs = Arc<Mutex<Vec<(Instant, u64, DatastoreId, Arc<AtomicBool>)>>>;

#[derive(Debug)]
struct Job {
    request: DsRequest,
    deadline: Instant,
    done: Arc<AtomicBool>,
}

#[derive(Debug)]
struct Worker {
    jobs: Sender<Job>,
    /// The job the worker is inside right now, with its deadline.
    current: CurrentJob,
}

/// Runs datastore requests off the caller's thread: one worker per datastore, a deadline per call.
///
/// Every submitted request gets exactly one completion on [`DatastoreExecutor::completions`]:
/// its result, `Timeout` when the deadline passed first (the worker may stay stuck in the syscall),
/// `Busy` at once when that datastore's worker is stuck past a deadline, or `NotMounted`.
#[derive(Debug)]
pub struct DatastoreExecutor {
    workers: HashMap<DatastoreId, Worker>,
    deadline: Duration,
    tx: Sender<DsCompletion>,
    pending: PendingJobs,
    stop: Arc<AtomicBool>,
}

impl DatastoreExecutor {
    /// `mounts`: datastore id and mount path. A datastore whose directory cannot be opened still gets
    /// a worker: every call to it fails with the open error until it can be opened.
    pub fn new(
        mounts: &[(DatastoreId, PathBuf)],
        deadline: Duration,
    ) -> (Self, Receiver<DsCompletion>) {
        let (tx, rx) = mpsc::channel();
        let pending: PendingJobs = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = HashMap::new();
        for (id, path) in mounts {
            let (jtx, jrx) = mpsc::channel::<Job>();
            let current: CurrentJob = Arc::default();
            let (cur, out, path, id) = (current.clone(), tx.clone(), path.clone(), *id);
            thread::Builder::new()
                .name(format!("fdm-ds-{}", id.0))
                .spawn(move || worker(path, id, jrx, cur, out))
                .expect("spawn datastore worker");
            workers.insert(id, Worker { jobs: jtx, current });
        }
        // The deadline watcher: completes overdue requests with Timeout.
        let (p, out, s) = (pending.clone(), tx.clone(), stop.clone());
        thread::Builder::new()
            .name("fdm-ds-deadlines".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(20));
                    let now = Instant::now();
                    let mut p = p.lock().expect("pending lock");
                    p.retain(|(deadline, id, ds, done)| {
                        if done.load(Ordering::Acquire) {
                            return false;
                        }
                        if now < *deadline {
                            return true;
                        }
                        if !done.swap(true, Ordering::AcqRel) {
                            let _ = out.send(DsCompletion {
                                id: *id,
                                datastore: *ds,
                                result: Err(DsError::Timeout),
                            });
                        }
                        false
                    });
                }
            })
            .expect("spawn deadline watcher");
        (
            DatastoreExecutor {
                workers,
                deadline,
                tx,
                pending,
                stop,
            },
            rx,
        )
    }

    /// Hand a request over; never blocks.
    pub fn submit(&self, request: DsRequest) {
        let (id, ds) = (request.id, request.datastore);
        let Some(w) = self.workers.get(&ds) else {
            let _ = self.tx.send(DsCompletion {
                id,
                datastore: ds,
                result: Err(DsError::NotMounted(ds)),
            });
            return;
        };
        let now = Instant::now();
        let stuck = w
            .current
            .lock()
            .expect("current lock")
            .as_ref()
            .is_some_and(|(deadline, _)| now >= *deadline);
        if stuck {
            let _ = self.tx.send(DsCompletion {
                id,
                datastore: ds,
                result: Err(DsError::Busy),
            });
            return;
        }
        let done = Arc::new(AtomicBool::new(false));
        let deadline = deadline_after(now, self.deadline);
        self.pending
            .lock()
            .expect("pending lock")
            .push((deadline, id, ds, done.clone()));
        if w.jobs
            .send(Job {
                request,
                deadline,
                done: done.clone(),
            })
            .is_err()
            && !done.swap(true, Ordering::AcqRel)
        {
            let _ = self.tx.send(DsCompletion {
                id,
                datastore: ds,
                result: Err(DsError::Busy),
            });
        }
    }
}

/// `now + deadline`, never panicking whatever the caller configured. Past a day a deadline guards
/// nothing (every lease has long expired), and the cut keeps the sum far from the clock's limit.
fn deadline_after(now: Instant, deadline: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400);
    now.checked_add(deadline.min(FAR))
        // A clock that cannot go a day further is broken: time the call out rather than panic.
        .unwrap_or(now)
}

impl Drop for DatastoreExecutor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn worker(
    path: PathBuf,
    id: DatastoreId,
    jobs: Receiver<Job>,
    current: CurrentJob,
    out: Sender<DsCompletion>,
) {
    let mut dir: Option<DatastoreDir> = None;
    for job in jobs {
        if job.done.load(Ordering::Acquire) {
            continue; // timed out while queued
        }
        *current.lock().expect("current lock") = Some((job.deadline, job.done.clone()));
        let result = match dir.as_mut() {
            Some(d) => d.execute(job.request.op),
            None => match DatastoreDir::open(&path) {
                Ok(mut d) => {
                    let r = d.execute(job.request.op);
                    dir = Some(d);
                    r
                }
                Err(e) => Err(e),
            },
        };
        // A datastore that went away (unmounted, stale) is reopened on the next call.
        if matches!(
            result,
            Err(DsError::Io {
                kind: IoKind::Missing | IoKind::Stale | IoKind::NotConnected,
                ..
            })
        ) {
            dir = None;
        }
        *current.lock().expect("current lock") = None;
        if !job.done.swap(true, Ordering::AcqRel) {
            let _ = out.send(DsCompletion {
                id: job.request.id,
                datastore: id,
                result,
            });
        }
    }
}

#[cfg(test)]
mod executor_tests {
    use super::*;

    #[test]
    fn an_absurd_deadline_neither_panics_nor_loses_the_completion() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ex, done) =
            DatastoreExecutor::new(&[(DatastoreId(1), dir.path().to_path_buf())], Duration::MAX);
        ex.submit(DsRequest {
            id: 7,
            datastore: DatastoreId(1),
            op: DsOp::ReadClaim,
        });
        let c = done
            .recv_timeout(Duration::from_secs(5))
            .expect("the call completes");
        assert_eq!(c.id, 7);
        assert!(!matches!(c.result, Err(DsError::Timeout)), "{:?}", c.result);
    }
}
