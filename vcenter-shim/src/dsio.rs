//! Datastore IO for the shim: publishing the cluster config and reading the master's report.
//!
//! Every call runs on the blocking pool under a timeout, and at most one write and one read per
//! datastore are in flight: a hung mount (NFS server gone) costs one stuck thread, never an API call
//! that waits forever or a pile of threads. A failed or timed-out write is retried in the background
//! until the datastore holds the newest generation.

use crate::model::DatastoreSpec;
use heartbeat_fs::DatastoreId;
use heartbeat_fs::fs::DatastoreDir;
use heartbeat_fs::records::{ClusterConfig, ClusterReport};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
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
    /// Where the shim last reached it.
    pub path: Option<String>,
    /// Highest config generation known to be on it (0: none yet).
    pub written_generation: u64,
    pub write_error: Option<String>,
    pub read_error: Option<String>,
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

impl DsStatus {
    fn new(datastore: DatastoreId) -> Self {
        Self {
            datastore,
            path: None,
            written_generation: 0,
            write_error: None,
            read_error: None,
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
        }
    }

    pub fn overrides(&self) -> &BTreeMap<DatastoreId, PathBuf> {
        &self.overrides
    }

    pub fn status(&self) -> Vec<DsStatus> {
        lock(&self.status).values().cloned().collect()
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
            for d in &cfg.datastores {
                status.entry(d.id).or_insert_with(|| DsStatus::new(d.id));
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

    /// Read the report from every datastore in `datastores` that answers in time.
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
            let r = open_first(&cands)
                .and_then(|(_, dir)| dir.read_report().map_err(|e| e.to_string()));
            let mut status = lock(&me.status);
            if let Some(st) = status.get_mut(&id) {
                st.read_busy = false;
                st.read_error = r.as_ref().err().cloned();
                if r.is_err() {
                    st.read_failures = st.read_failures.saturating_add(1);
                }
            }
            r
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
