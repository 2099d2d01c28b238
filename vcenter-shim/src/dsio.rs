//! Datastore IO for the shim: publishing the cluster config and reading the master's report, the
//! claim record and the hosts' heartbeat records (for the status page: who holds each datastore,
//! whose heartbeats still advance there).
//!
//! Every call runs on the blocking pool under a timeout, and at most one write and one read per
//! datastore are in flight: a hung mount (NFS server gone) costs one stuck thread, never an API call
//! that waits forever or a pile of threads. A failed or timed-out write is retried in the background
//! until the datastore holds the newest generation.
// The shim is an IO process: it stamps what it reads with the real clock.
#![allow(clippy::disallowed_methods)]

use crate::model::{DatastoreSpec, MountSpec};
use heartbeat_fs::fs::DatastoreDir;
use heartbeat_fs::ops::DsError;
use heartbeat_fs::records::{
    ClusterConfig, ClusterReport, DatastoreClaim, HeartbeatRecord, HostFlags,
};
use heartbeat_fs::{DatastoreId, HostId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// Outcome of writing the config to one datastore, as returned to the API caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DsWriteResult {
    pub datastore: DatastoreId,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the shim knows of one datastore's IO, served in `/v1/state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DsStatus {
    pub datastore: DatastoreId,
    /// Its name and who mounts it where, from the inventory (empty for a datastore the inventory
    /// no longer has, and in answers of shims before these fields).
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    /// Where the shim last reached it.
    pub path: Option<String>,
    /// Highest config generation known to be on it (0: none yet).
    pub written_generation: u64,
    pub write_error: Option<String>,
    pub read_error: Option<String>,
    /// The claim record on it as the shim last read it: the master that holds the datastore.
    /// `None` before the shim has read one (no master ever claimed it, or unreadable).
    #[serde(default)]
    pub claim: Option<ClaimState>,
    #[serde(skip)]
    write_busy: bool,
    #[serde(skip)]
    read_busy: bool,
    /// Config writes and report reads that failed since the shim started (for `/metrics`).
    #[serde(skip)]
    write_failures: u64,
    #[serde(skip)]
    read_failures: u64,
}

/// A datastore's claim record as the shim reads it. The lease is judged the way agents judge it:
/// by watching `renewal` advance on the reader's own clock, never by a timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimState {
    /// The master holding it; `None` when nobody does (never claimed, or released).
    pub owner: Option<HostId>,
    pub owner_incarnation: u64,
    pub epoch: u64,
    /// The holder stepped down cleanly.
    pub released: bool,
    /// Bumped by every renewal.
    pub renewal: u64,
    /// Milliseconds since the shim saw the record change (a renewal, a new owner), or since it
    /// first read it when `since_first_read`. The shim reads every poll interval, so the record
    /// may have changed up to one interval earlier.
    pub age_ms: u64,
    /// The shim has not seen the record change since it first read it: the real age is longer.
    pub since_first_read: bool,
}

/// A host's heartbeat record on one datastore as the shim reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatState {
    pub datastore: DatastoreId,
    /// Milliseconds since the shim saw the record advance (a new sequence or incarnation), or since
    /// it first read it when `since_first_read`; up to one poll interval late, like `ClaimState`'s.
    pub age_ms: u64,
    /// The shim has not seen the record advance since it first read it: the real age is longer.
    pub since_first_read: bool,
}

/// What a host last wrote about itself in a heartbeat record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatSelf {
    pub datastore: DatastoreId,
    pub record: HeartbeatRecord,
    pub age: Duration,
}

/// A value read from a datastore, with when the shim last saw it change.
#[derive(Debug, Clone)]
struct Watched<T> {
    value: T,
    since: Instant,
    since_first_read: bool,
}

impl<T> Watched<T> {
    /// Keep `value` as read now; `same` says whether it is the value already kept, unchanged.
    fn update(slot: &mut Option<Self>, value: T, now: Instant, same: impl Fn(&T, &T) -> bool) {
        match slot {
            Some(w) if same(&w.value, &value) => w.value = value,
            Some(w) => {
                *w = Watched {
                    value,
                    since: now,
                    since_first_read: false,
                }
            }
            None => {
                *slot = Some(Watched {
                    value,
                    since: now,
                    since_first_read: true,
                })
            }
        }
    }

    fn age_ms(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// What the shim has seen of one datastore's claim and heartbeat records.
#[derive(Debug, Default)]
struct Observed {
    claim: Option<Watched<DatastoreClaim>>,
    heartbeats: BTreeMap<HostId, Watched<HeartbeatRecord>>,
}

/// What one read of a datastore found.
#[derive(Debug)]
struct DsRead {
    report: Option<ClusterReport>,
    /// `None` when the claim sector was torn (a write in progress): what was seen before stands.
    claim: Option<Option<DatastoreClaim>>,
    heartbeats: Vec<HeartbeatRecord>,
    /// Hosts whose heartbeat sector was torn in this read: what was seen before stands.
    torn: Vec<HostId>,
}

/// A host's own heartbeat flags in words.
pub fn flag_words(flags: HostFlags) -> Vec<String> {
    [
        (HostFlags::MASTER, "master"),
        (HostFlags::ISOLATED, "isolated"),
        (HostFlags::SHUTTING_DOWN, "shutting down"),
        (HostFlags::MAINTENANCE, "maintenance"),
        (HostFlags::FENCED, "fenced"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags.contains(*bit))
    .map(|(_, word)| word.to_string())
    .collect()
}

/// The role a host's own heartbeat record says it has, in the agent's words (`master`,
/// `isolated`, `slave of host-1`, `candidate`).
pub fn role_words(record: &HeartbeatRecord) -> String {
    if record.flags.contains(HostFlags::MASTER) {
        "master".into()
    } else if record.flags.contains(HostFlags::ISOLATED) {
        "isolated".into()
    } else if record.master.is_none() {
        "candidate".into()
    } else {
        format!("slave of {}", record.master)
    }
}

impl DsStatus {
    fn new(datastore: DatastoreId) -> Self {
        Self {
            datastore,
            path: None,
            name: String::new(),
            mounts: Vec::new(),
            written_generation: 0,
            write_error: None,
            read_error: None,
            claim: None,
            write_busy: false,
            read_busy: false,
            write_failures: 0,
            read_failures: 0,
        }
    }

    /// Config writes to this datastore that failed since the shim started.
    pub fn write_failures(&self) -> u64 {
        self.write_failures
    }

    /// Report reads from this datastore that failed since the shim started.
    pub fn read_failures(&self) -> u64 {
        self.read_failures
    }
}

#[derive(Debug)]
pub struct DatastoreIo {
    overrides: BTreeMap<DatastoreId, PathBuf>,
    timeout: Duration,
    desired: Mutex<Option<Arc<ClusterConfig>>>,
    status: Mutex<BTreeMap<DatastoreId, DsStatus>>,
    observed: Mutex<BTreeMap<DatastoreId, Observed>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them half-updated in a way that matters more
    // than losing the status; keep serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Paths at which the shim may find a datastore: the operator's override alone when given, else every
/// host's mount path (the shim runs where the datastores are mounted).
fn candidates(
    overrides: &BTreeMap<DatastoreId, PathBuf>,
    id: DatastoreId,
    mounts: &[String],
) -> Vec<PathBuf> {
    match overrides.get(&id) {
        Some(p) => vec![p.clone()],
        None => {
            let mut v: Vec<PathBuf> = Vec::new();
            for m in mounts {
                let p = PathBuf::from(m);
                if !v.contains(&p) {
                    v.push(p);
                }
            }
            v
        }
    }
}

/// Read a datastore's report, claim and heartbeat records. Blocking. A torn claim or heartbeat
/// sector (a write in progress) is left out of this read; a missing claim is no claim.
fn read_all(dir: &DatastoreDir) -> Result<DsRead, String> {
    let report = dir.read_report().map_err(|e| e.to_string())?;
    let claim = match dir.read_claim() {
        Ok(c) => Some(c),
        Err(DsError::Corrupt(_)) => None,
        Err(e) => return Err(format!("claim: {e}")),
    };
    let mut heartbeats = Vec::new();
    let mut torn = Vec::new();
    for slot in dir
        .read_heartbeats()
        .map_err(|e| format!("heartbeats: {e}"))?
    {
        match slot.record {
            // A record is its file's only if it names that file's host.
            Ok(r) if r.host == slot.host => heartbeats.push(r),
            Ok(_) => {}
            Err(_) => torn.push(slot.host),
        }
    }
    Ok(DsRead {
        report,
        claim,
        heartbeats,
        torn,
    })
}

/// Open the first candidate that is a mounted directory. Blocking.
fn open_first(cands: &[PathBuf]) -> Result<(PathBuf, DatastoreDir), String> {
    let mut errors = Vec::new();
    for p in cands {
        match DatastoreDir::open(p) {
            Ok(d) => return Ok((p.clone(), d)),
            Err(e) => errors.push(format!("{}: {e}", p.display())),
        }
    }
    if errors.is_empty() {
        Err("no mount path known to the shim".into())
    } else {
        Err(errors.join("; "))
    }
}

impl DatastoreIo {
    pub fn new(overrides: BTreeMap<DatastoreId, PathBuf>, timeout: Duration) -> Self {
        Self {
            overrides,
            timeout,
            desired: Mutex::new(None),
            status: Mutex::new(BTreeMap::new()),
            observed: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn overrides(&self) -> &BTreeMap<DatastoreId, PathBuf> {
        &self.overrides
    }

    /// Every datastore's IO status, with its claim as last read.
    pub fn status(&self) -> Vec<DsStatus> {
        let observed = lock(&self.observed);
        lock(&self.status)
            .values()
            .map(|st| {
                let mut st = st.clone();
                st.claim = observed
                    .get(&st.datastore)
                    .and_then(|o| o.claim.as_ref())
                    .map(|w| ClaimState {
                        owner: (!w.value.owner.is_none()).then_some(w.value.owner),
                        owner_incarnation: w.value.owner_incarnation,
                        epoch: w.value.epoch.0,
                        released: w.value.released,
                        renewal: w.value.renewal,
                        age_ms: w.age_ms(),
                        since_first_read: w.since_first_read,
                    });
                st
            })
            .collect()
    }

    /// Per host, its heartbeat record on every datastore the shim read one from, by datastore.
    pub fn heartbeats(&self) -> BTreeMap<HostId, Vec<HeartbeatState>> {
        let mut out: BTreeMap<HostId, Vec<HeartbeatState>> = BTreeMap::new();
        for (ds, o) in lock(&self.observed).iter() {
            for (host, w) in &o.heartbeats {
                out.entry(*host).or_default().push(HeartbeatState {
                    datastore: *ds,
                    age_ms: w.age_ms(),
                    since_first_read: w.since_first_read,
                });
            }
        }
        out
    }

    /// Per host, its freshest heartbeat record: what it last said about itself (role, flags).
    pub fn latest_heartbeats(&self) -> BTreeMap<HostId, HeartbeatSelf> {
        let mut out: BTreeMap<HostId, HeartbeatSelf> = BTreeMap::new();
        for (ds, o) in lock(&self.observed).iter() {
            for (host, w) in &o.heartbeats {
                let age = w.since.elapsed();
                if out.get(host).is_none_or(|h| age < h.age) {
                    out.insert(
                        *host,
                        HeartbeatSelf {
                            datastore: *ds,
                            record: w.value,
                            age,
                        },
                    );
                }
            }
        }
        out
    }

    /// Keep what a read found: a claim or heartbeat that changed restarts its age.
    fn observe(&self, id: DatastoreId, read: &DsRead, now: Instant) {
        let mut observed = lock(&self.observed);
        let o = observed.entry(id).or_default();
        match read.claim {
            Some(Some(c)) => Watched::update(&mut o.claim, c, now, |a, b| a == b),
            Some(None) => o.claim = None,
            None => {}
        }
        let mut seen = BTreeMap::new();
        for host in &read.torn {
            if let Some(w) = o.heartbeats.remove(host) {
                seen.insert(*host, w);
            }
        }
        for r in &read.heartbeats {
            let mut slot = o.heartbeats.remove(&r.host);
            Watched::update(&mut slot, *r, now, |a, b| {
                (a.incarnation, a.sequence) == (b.incarnation, b.sequence)
            });
            if let Some(w) = slot {
                seen.insert(r.host, w);
            }
        }
        o.heartbeats = seen;
    }

    fn mount_paths(d: &DatastoreSpec) -> Vec<String> {
        d.mounts.iter().map(|m| m.path.clone()).collect()
    }

    /// Make `cfg` the config to publish (unless a newer one already is) and write it to every
    /// datastore it lists, waiting at most the IO timeout.
    pub async fn publish(self: &Arc<Self>, cfg: Arc<ClusterConfig>) -> Vec<DsWriteResult> {
        {
            let mut desired = lock(&self.desired);
            // Writers publish after releasing the write gate, so an older generation can arrive last.
            if desired
                .as_ref()
                .is_some_and(|d| d.generation > cfg.generation)
            {
                return Vec::new();
            }
            *desired = Some(cfg.clone());
            let mut status = lock(&self.status);
            status.retain(|id, _| cfg.datastore(*id).is_some());
            lock(&self.observed).retain(|id, _| cfg.datastore(*id).is_some());
            for d in &cfg.datastores {
                let st = status.entry(d.id).or_insert_with(|| DsStatus::new(d.id));
                st.name = d.name.clone();
                st.mounts = d
                    .mounts
                    .iter()
                    .map(|m| MountSpec {
                        host: m.host,
                        path: m.path.clone(),
                    })
                    .collect();
            }
        }
        let mut set = JoinSet::new();
        for d in &cfg.datastores {
            let me = self.clone();
            let id = d.id;
            set.spawn(async move { me.write_one(id).await });
        }
        let mut out: Vec<DsWriteResult> = set.join_all().await;
        out.sort_by_key(|r| r.datastore);
        out
    }

    async fn write_one(self: Arc<Self>, id: DatastoreId) -> DsWriteResult {
        let fail = |error: String| DsWriteResult {
            datastore: id,
            ok: false,
            path: None,
            error: Some(error),
        };
        let Some(cfg) = lock(&self.desired).clone() else {
            return fail("nothing to publish".into());
        };
        let Some(ds) = cfg.datastore(id) else {
            return fail("not in the inventory".into());
        };
        let mounts: Vec<String> = ds.mounts.iter().map(|m| m.path.clone()).collect();
        let cands = candidates(&self.overrides, id, &mounts);
        {
            let mut status = lock(&self.status);
            let st = status.entry(id).or_insert_with(|| DsStatus::new(id));
            if st.written_generation >= cfg.generation {
                return DsWriteResult {
                    datastore: id,
                    ok: true,
                    path: st.path.clone(),
                    error: None,
                };
            }
            if st.write_busy {
                return fail(
                    "a previous write is still in progress; retrying in the background".into(),
                );
            }
            st.write_busy = true;
        }
        let (tx, rx) = oneshot::channel();
        let me = self.clone();
        let generation = cfg.generation;
        tokio::task::spawn_blocking(move || {
            let r = open_first(&cands).and_then(|(p, dir)| {
                dir.write_config(&cfg)
                    .map(|()| p)
                    .map_err(|e| e.to_string())
            });
            {
                let mut status = lock(&me.status);
                if let Some(st) = status.get_mut(&id) {
                    st.write_busy = false;
                    match &r {
                        Ok(p) => {
                            st.path = Some(p.display().to_string());
                            st.written_generation = st.written_generation.max(generation);
                            st.write_error = None;
                        }
                        Err(e) => {
                            st.write_error = Some(e.clone());
                            st.write_failures = st.write_failures.saturating_add(1);
                        }
                    }
                }
            }
            match &r {
                Ok(p) => {
                    tracing::debug!(datastore = %id, generation, path = %p.display(), "config written")
                }
                Err(e) => {
                    tracing::warn!(datastore = %id, generation, error = %e, "config write failed")
                }
            }
            // The receiver is gone when the caller timed out; the status above is what matters then.
            let _ = tx.send(r);
        });
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Ok(p))) => DsWriteResult {
                datastore: id,
                ok: true,
                path: Some(p.display().to_string()),
                error: None,
            },
            Ok(Ok(Err(e))) => fail(format!("{e}; retrying in the background")),
            Ok(Err(_)) => fail("write task failed; retrying in the background".into()),
            Err(_) => fail(format!(
                "no answer within {} ms; retrying in the background",
                self.timeout.as_millis()
            )),
        }
    }

    /// One pass of the background retry: rewrite every datastore behind the desired generation.
    pub async fn retry_pending(self: &Arc<Self>) {
        let Some(cfg) = lock(&self.desired).clone() else {
            return;
        };
        let behind: Vec<DatastoreId> = lock(&self.status)
            .values()
            .filter(|s| s.written_generation < cfg.generation && !s.write_busy)
            .map(|s| s.datastore)
            .collect();
        let mut set = JoinSet::new();
        for id in behind {
            let me = self.clone();
            set.spawn(async move { me.write_one(id).await });
        }
        set.join_all().await;
    }

    /// Read the report from every datastore in `datastores` that answers in time (and with it the
    /// claim and the heartbeat records, kept for `status` and `heartbeats`).
    pub async fn read_reports(
        self: &Arc<Self>,
        datastores: Vec<DatastoreSpec>,
    ) -> Vec<(DatastoreId, ClusterReport)> {
        let mut set = JoinSet::new();
        for d in datastores {
            let me = self.clone();
            set.spawn(async move { me.read_one(&d).await });
        }
        set.join_all().await.into_iter().flatten().collect()
    }

    async fn read_one(self: Arc<Self>, d: &DatastoreSpec) -> Option<(DatastoreId, ClusterReport)> {
        let id = d.id;
        {
            let mut status = lock(&self.status);
            let st = status.entry(id).or_insert_with(|| DsStatus::new(id));
            if st.read_busy {
                return None;
            }
            st.read_busy = true;
        }
        let cands = candidates(&self.overrides, id, &Self::mount_paths(d));
        let me = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let r = open_first(&cands).and_then(|(_, dir)| read_all(&dir));
            if let Ok(read) = &r {
                me.observe(id, read, Instant::now());
            }
            let mut status = lock(&me.status);
            if let Some(st) = status.get_mut(&id) {
                st.read_busy = false;
                st.read_error = r.as_ref().err().cloned();
                if r.is_err() {
                    st.read_failures = st.read_failures.saturating_add(1);
                }
            }
            r.map(|read| read.report)
        });
        match tokio::time::timeout(self.timeout, task).await {
            Ok(Ok(Ok(Some(report)))) => Some((id, report)),
            Ok(Ok(Ok(None))) => None,
            Ok(Ok(Err(e))) => {
                tracing::debug!(datastore = %id, error = %e, "report read failed");
                None
            }
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// Highest config generation already on any reachable datastore among `datastores` and the
    /// overrides, so that a shim started on a fresh database never publishes a generation the
    /// agents would ignore as older than what they have.
    pub async fn highest_published_generation(
        self: &Arc<Self>,
        datastores: Vec<DatastoreSpec>,
    ) -> u64 {
        let mut all: Vec<Vec<PathBuf>> = datastores
            .iter()
            .map(|d| candidates(&self.overrides, d.id, &Self::mount_paths(d)))
            .collect();
        all.extend(self.overrides.values().map(|p| vec![p.clone()]));
        let mut set = JoinSet::new();
        for cands in all {
            let timeout = self.timeout;
            set.spawn(async move {
                let task = tokio::task::spawn_blocking(move || {
                    open_first(&cands)
                        .ok()
                        .and_then(|(_, dir)| dir.read_config().ok().flatten())
                        .map(|c| c.generation)
                });
                tokio::time::timeout(timeout, task)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten()
                    .unwrap_or(0)
            });
        }
        set.join_all().await.into_iter().max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heartbeat_fs::{ClusterId, Epoch};

    fn beat(host: u32, sequence: u64, flags: HostFlags, master: u32) -> HeartbeatRecord {
        HeartbeatRecord {
            cluster: ClusterId(1),
            host: HostId(host),
            incarnation: 9,
            sequence,
            flags,
            power_on_generation: 0,
            master: HostId(master),
        }
    }

    fn claim(renewal: u64) -> DatastoreClaim {
        DatastoreClaim {
            cluster: ClusterId(1),
            datastore: DatastoreId(1),
            owner: HostId(1),
            owner_incarnation: 9,
            epoch: Epoch(2),
            renewal,
            released: false,
        }
    }

    fn read(
        claim: Option<Option<DatastoreClaim>>,
        beats: &[HeartbeatRecord],
        torn: &[u32],
    ) -> DsRead {
        DsRead {
            report: None,
            claim,
            heartbeats: beats.to_vec(),
            torn: torn.iter().map(|h| HostId(*h)).collect(),
        }
    }

    #[test]
    fn ages_count_from_the_last_change_seen_and_a_torn_read_changes_nothing() {
        let io = DatastoreIo::new(BTreeMap::new(), Duration::from_secs(1));
        lock(&io.status).insert(DatastoreId(1), DsStatus::new(DatastoreId(1)));
        let t0 = Instant::now() - Duration::from_secs(10);
        let none = HostFlags::default();
        io.observe(
            DatastoreId(1),
            &read(
                Some(Some(claim(1))),
                &[beat(1, 1, none, 1), beat(2, 1, none, 1)],
                &[],
            ),
            t0,
        );
        let hb = io.heartbeats();
        assert!(hb[&HostId(1)][0].since_first_read && hb[&HostId(1)][0].age_ms >= 10_000);
        // Host 1 beats and the claim is renewed 8 s later; host 2's sector is torn in that read.
        io.observe(
            DatastoreId(1),
            &read(Some(Some(claim(2))), &[beat(1, 2, none, 1)], &[2]),
            t0 + Duration::from_secs(8),
        );
        let hb = io.heartbeats();
        let h1 = &hb[&HostId(1)][0];
        assert!(
            !h1.since_first_read && (2_000..10_000).contains(&h1.age_ms),
            "{h1:?}"
        );
        let h2 = &hb[&HostId(2)][0];
        assert!(h2.since_first_read && h2.age_ms >= 10_000, "{h2:?}");
        let c = io.status()[0].claim.clone().expect("claim");
        assert_eq!((c.owner, c.epoch, c.renewal), (Some(HostId(1)), 2, 2));
        assert!(!c.since_first_read && c.age_ms < 10_000);
        // A torn claim keeps what was seen; a host whose file is gone is forgotten.
        io.observe(
            DatastoreId(1),
            &read(None, &[beat(1, 2, none, 1)], &[]),
            Instant::now(),
        );
        assert_eq!(io.status()[0].claim.as_ref().map(|c| c.renewal), Some(2));
        assert!(!io.heartbeats().contains_key(&HostId(2)));
        // An unchanged record keeps its age.
        let before = io.heartbeats()[&HostId(1)][0].age_ms;
        assert!(before >= 2_000, "{before}");
    }

    #[test]
    fn roles_in_the_agents_words() {
        let f = HostFlags::default();
        assert_eq!(
            role_words(&beat(1, 1, f.with(HostFlags::MASTER, true), 1)),
            "master"
        );
        assert_eq!(role_words(&beat(2, 1, f, 1)), "slave of host-1");
        assert_eq!(
            role_words(&beat(2, 1, f.with(HostFlags::ISOLATED, true), 0)),
            "isolated"
        );
        assert_eq!(role_words(&beat(2, 1, f, 0)), "candidate");
        assert_eq!(
            flag_words(
                f.with(HostFlags::SHUTTING_DOWN, true)
                    .with(HostFlags::FENCED, true)
            ),
            ["shutting down", "fenced"]
        );
    }
}
