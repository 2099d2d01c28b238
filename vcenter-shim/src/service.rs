//! The shim's core: the current inventory, the write path (validate, admission, persist, publish) and
//! the report poller. The HTTP layer in `api` only parses requests and formats answers.
// The shim is an IO process: it stamps report ages with the real clock.
#![allow(clippy::disallowed_methods)]

use crate::admission::{self, AdmissionReport};
use crate::dsio::{self, DatastoreIo, DsStatus, DsWriteResult, HeartbeatState};
use crate::error::ShimError;
use crate::model::{AdmissionMode, Inventory};
use crate::store::{Retention, Store, StoredEvent};
use crate::validate;
use fdm_agent::core::Timings;
use fdm_agent::runtime::report::REPORT_INTERVAL;
use heartbeat_fs::records::{ClusterReport, ReportedHost, ReportedVm, RestartPriority};
use heartbeat_fs::{ClusterId, DatastoreId, HostId, VmId};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Answer to every successful write (a removal answers only this; other writes answer
/// `model::WriteAnswer`, this and the object stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// Config generation the write produced.
    pub generation: u64,
    /// Accepted, but worth telling the operator (admission control broken in `warn` mode, ...).
    pub warnings: Vec<String>,
    /// Per-datastore result of publishing the new config.
    pub datastores: Vec<DsWriteResult>,
}

/// How admission control treats a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionGate {
    /// A VM write: refused (in `refuse` mode) when it adds demand to a cluster that then fails.
    Vm { field: &'static str },
    /// Anything else (hosts, policy): never refused, only warned about, so that an operator can always
    /// put a host in maintenance or fix the policy.
    WarnOnly,
}

#[derive(Debug, Clone)]
struct CurrentReport {
    report: ClusterReport,
    datastore: DatastoreId,
    received: Instant,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportSummary {
    pub master: HostId,
    pub master_incarnation: u64,
    pub epoch: u64,
    pub sequence: u64,
    pub unix_ms: u64,
    pub config_generation: u64,
    pub ha_paused: bool,
    /// Datastore the newest report was read from.
    pub datastore: DatastoreId,
    /// Milliseconds since the shim last read a new report.
    pub age_ms: u64,
    /// Beyond this `age_ms` the report is stale: its master has missed several reports (it is
    /// gone, or cannot write to any datastore the shim reads). Three report intervals plus two of
    /// the shim's poll intervals.
    #[serde(default)]
    pub stale_after_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostState {
    pub id: HostId,
    pub name: String,
    pub maintenance: bool,
    /// The master's verdict; `None` when no report mentions the host.
    pub verdict: Option<String>,
    /// Milliseconds since the master last heard the host's network heartbeat (from its report).
    pub network_age_ms: Option<u64>,
    pub is_master: bool,
    /// The role the host's own freshest datastore heartbeat states (`master`, `slave of host-1`,
    /// `isolated`, `candidate`); a dead host's is the last it wrote. `None` when the shim has read
    /// no heartbeat of it.
    #[serde(default)]
    pub role: Option<String>,
    /// The other flags of that heartbeat, in words (`shutting down`, `maintenance`, `fenced`, ...).
    #[serde(default)]
    pub flags: Vec<String>,
    /// Its heartbeat record on each datastore the shim reads, with how long ago the shim saw it
    /// advance.
    #[serde(default)]
    pub datastore_heartbeats: Vec<HeartbeatState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    pub id: VmId,
    pub name: String,
    pub protected: bool,
    pub home: DatastoreId,
    pub host: Option<HostId>,
    pub state: Option<String>,
    pub restart: Option<String>,
    /// Its restart priority, from the inventory.
    #[serde(default)]
    pub priority: RestartPriority,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster: ClusterId,
    /// The shim's clock when it answered, in milliseconds since the Unix epoch: what the ages in
    /// this answer count back from.
    #[serde(default)]
    pub unix_ms: u64,
    pub config_generation: u64,
    pub paused: bool,
    pub admission_mode: AdmissionMode,
    /// The datastore heartbeat lease and the claim lease of the cluster's timings (the agents'
    /// defaults with `timings_ms` on top): a heartbeat or claim that has not advanced for longer
    /// has lapsed in the agents' eyes.
    #[serde(default)]
    pub ds_lease_ms: u64,
    #[serde(default)]
    pub claim_lease_ms: u64,
    pub report: Option<ReportSummary>,
    pub hosts: Vec<HostState>,
    pub vms: Vec<VmState>,
    pub datastores: Vec<DsStatus>,
}

#[derive(Debug)]
pub struct Shim {
    store: Arc<Mutex<Store>>,
    current: RwLock<Arc<Inventory>>,
    /// Serialises writes: each one starts from the inventory the previous one produced.
    write_gate: tokio::sync::Mutex<()>,
    io: Arc<DatastoreIo>,
    report: Mutex<Option<CurrentReport>>,
    event_retention: Retention,
    /// `ReportSummary::stale_after_ms`, set from the poll interval by `spawn_background`.
    report_stale_after_ms: AtomicU64,
}

/// When a report is stale, given how often the shim reads the datastores.
fn stale_after(poll_every: Duration) -> u64 {
    let d = REPORT_INTERVAL * 3 + poll_every * 2;
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The shim's wall clock in milliseconds since the Unix epoch (0 before 1970: a broken clock).
fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What every write must pass beyond its own object's rules, on the whole would-be inventory `next`:
/// references between objects, the datastore layout the agents accept, and admission control
/// (`gate`). Returns the warnings to answer with. Pure (no IO), so that tests drive exactly the
/// decisions `Shim::write` takes.
pub fn check_write(
    before: &Inventory,
    next: &Inventory,
    gate: AdmissionGate,
) -> Result<Vec<String>, ShimError> {
    validate::validate_references(next)?;
    let mut warnings = Vec::new();
    warnings.extend(validate::validate_layout(before, next)?);
    let after = admission::evaluate(next);
    if !after.ok {
        let old = admission::evaluate(before);
        let adds_demand = after.cpu_mhz.demand > old.cpu_mhz.demand
            || after.memory_mb.demand > old.memory_mb.demand;
        let summary = after.problems.join("; ");
        match gate {
            AdmissionGate::Vm { field }
                if adds_demand && next.admission_mode == AdmissionMode::Refuse =>
            {
                return Err(ShimError::Admission {
                    field: field.to_string(),
                    message: summary,
                    report: Box::new(after),
                });
            }
            _ => warnings.push(format!(
                "admission control: the cluster cannot restart every protected VM: {summary}"
            )),
        }
    }
    Ok(warnings)
}

impl Shim {
    pub fn new(
        mut store: Store,
        default_cluster: ClusterId,
        io: DatastoreIo,
        event_retention: Retention,
    ) -> Result<Self, ShimError> {
        let inv = store.load_inventory(default_cluster)?;
        Ok(Self {
            store: Arc::new(Mutex::new(store)),
            current: RwLock::new(Arc::new(inv)),
            write_gate: tokio::sync::Mutex::new(()),
            io: Arc::new(io),
            report: Mutex::new(None),
            event_retention,
            report_stale_after_ms: AtomicU64::new(stale_after(Duration::from_secs(1))),
        })
    }

    pub fn inventory(&self) -> Arc<Inventory> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn admission(&self) -> AdmissionReport {
        admission::evaluate(&self.inventory())
    }

    /// Run at startup: make sure the next generation is above anything already on the datastores
    /// (the database may be new or restored from a backup), then republish the current config so a
    /// datastore that missed the last write before a shim restart catches up.
    pub async fn start(&self) -> Result<(), ShimError> {
        let _gate = self.write_gate.lock().await;
        let inv = self.inventory();
        let on_disk = self
            .io
            .highest_published_generation(inv.datastores.values().cloned().collect())
            .await;
        let mut next = (*inv).clone();
        if on_disk > next.generation {
            tracing::warn!(
                database = next.generation,
                datastores = on_disk,
                "datastores hold a newer config generation than the database; continuing above it"
            );
            next.generation = on_disk
                .checked_add(1)
                .ok_or(ShimError::GenerationExhausted(on_disk))?;
            self.persist(next.clone()).await?;
        }
        if next.generation > 0 && !next.datastores.is_empty() {
            let io = self.io.clone();
            let cfg = Arc::new(next.to_cluster_config());
            // Only a database written before the shim checked layouts can hold a crossed one: the
            // agents refuse it and keep their last good configuration; say so where it can be fixed.
            if let Err(e) = cfg.check_layout() {
                tracing::warn!(error = %e, "the stored datastore layout is not nested; agents refuse this configuration until the mounts are fixed");
            }
            tokio::spawn(async move { io.publish(cfg).await });
        }
        Ok(())
    }

    async fn persist(&self, next: Inventory) -> Result<(), ShimError> {
        let store = self.store.clone();
        let saved = next.clone();
        tokio::task::spawn_blocking(move || lock(&store).save_inventory(&saved))
            .await
            .map_err(|e| ShimError::Corrupt {
                what: "database task".into(),
                message: e.to_string(),
            })??;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        Ok(())
    }

    /// The one write path: apply `change` to a copy of the inventory, check it, run admission
    /// control, store it with the next generation and publish it to the datastores. Returns what
    /// `change` returned (the object it stored, for the answer) with the outcome.
    pub async fn write<F, R>(
        &self,
        gate: AdmissionGate,
        change: F,
    ) -> Result<(R, WriteOutcome), ShimError>
    where
        F: FnOnce(&mut Inventory) -> Result<R, ShimError>,
    {
        let guard = self.write_gate.lock().await;
        let before = self.inventory();
        let mut next = (*before).clone();
        let changed = change(&mut next)?;
        let mut warnings = check_write(&before, &next, gate)?;
        next.generation = next
            .generation
            .checked_add(1)
            .ok_or(ShimError::GenerationExhausted(next.generation))?;
        let generation = next.generation;
        let cfg = Arc::new(next.to_cluster_config());
        self.persist(next).await?;
        drop(guard);
        tracing::info!(generation, "inventory changed");
        let datastores = self.io.publish(cfg).await;
        for d in datastores.iter().filter(|d| !d.ok) {
            warnings.push(format!(
                "config generation {generation} not yet on {}: {}",
                d.datastore,
                d.error.as_deref().unwrap_or("unknown error")
            ));
        }
        let outcome = WriteOutcome {
            generation,
            warnings,
            datastores,
        };
        Ok((changed, outcome))
    }

    /// Events in the database now; an answer at all says the database works (`/readyz`).
    pub fn events_stored(&self) -> Result<u64, ShimError> {
        lock(&self.store).event_count()
    }

    pub fn events_since(&self, since: i64, limit: u32) -> Result<Vec<StoredEvent>, ShimError> {
        lock(&self.store).events_since(since, limit)
    }

    /// One poll: read every datastore's report, store the events never stored before, apply the
    /// event retention, keep the newest report.
    pub async fn poll_reports(&self) {
        let inv = self.inventory();
        let reports = self
            .io
            .read_reports(inv.datastores.values().cloned().collect())
            .await;
        let mut batches = Vec::new();
        for (ds, report) in &reports {
            if report.cluster != inv.cluster {
                tracing::warn!(datastore = %ds, cluster = %report.cluster, "report from another cluster ignored");
                continue;
            }
            if !report.events.is_empty() {
                batches.push((
                    *ds,
                    report.master,
                    report.master_incarnation,
                    report.events.clone(),
                ));
            }
        }
        // Every poll prunes, also with no report to read (no master), so that age retention runs.
        let store = self.store.clone();
        let retention = self.event_retention;
        let stored = tokio::task::spawn_blocking(move || {
            let mut store = lock(&store);
            let now = unix_ms_now();
            for (ds, master, inc, events) in batches {
                match store.insert_events(master, inc, &events, now) {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(datastore = %ds, new = n, "events stored"),
                    Err(e) => tracing::warn!(error = %e, "storing events failed"),
                }
            }
            if let Err(e) = store.prune_events(now, retention) {
                tracing::warn!(error = %e, "deleting old events failed");
            }
        })
        .await;
        if let Err(e) = stored {
            tracing::warn!(error = %e, "event task failed");
        }
        for (ds, report) in reports {
            if report.cluster != inv.cluster {
                continue;
            }
            let mut cur = lock(&self.report);
            let newer = match cur.as_ref() {
                None => true,
                Some(c) => {
                    (report.unix_ms, report.sequence) > (c.report.unix_ms, c.report.sequence)
                }
            };
            if newer {
                *cur = Some(CurrentReport {
                    report,
                    datastore: ds,
                    received: Instant::now(),
                });
            }
        }
    }

    pub async fn retry_pending_writes(&self) {
        self.io.retry_pending().await;
    }

    pub fn state(&self) -> ClusterState {
        let inv = self.inventory();
        let cur = lock(&self.report).clone();
        let report = cur.as_ref().map(|c| &c.report);
        let reported_host = |id: HostId| -> Option<&ReportedHost> {
            report.and_then(|r| r.hosts.iter().find(|h| h.host == id))
        };
        let reported_vm = |id: VmId| -> Option<&ReportedVm> {
            report.and_then(|r| r.vms.iter().find(|v| v.vm == id))
        };
        let timings = Timings::default()
            .with_overrides(&inv.ha.timings_ms)
            .unwrap_or_default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut heartbeats = self.io.heartbeats();
        let own = self.io.latest_heartbeats();
        let mut datastores = self.io.status();
        for d in &mut datastores {
            if let Some(spec) = inv.datastores.get(&d.datastore) {
                d.name.clone_from(&spec.name);
                d.mounts.clone_from(&spec.mounts);
            }
        }
        ClusterState {
            cluster: inv.cluster,
            unix_ms: unix_ms_now(),
            config_generation: inv.generation,
            paused: inv.ha.paused,
            admission_mode: inv.admission_mode,
            ds_lease_ms: ms(timings.ds_lease),
            claim_lease_ms: ms(timings.claim_lease),
            report: cur.as_ref().map(|c| ReportSummary {
                master: c.report.master,
                master_incarnation: c.report.master_incarnation,
                epoch: c.report.epoch.0,
                sequence: c.report.sequence,
                unix_ms: c.report.unix_ms,
                config_generation: c.report.config_generation,
                ha_paused: c.report.ha_paused,
                datastore: c.datastore,
                age_ms: u64::try_from(c.received.elapsed().as_millis()).unwrap_or(u64::MAX),
                stale_after_ms: self.report_stale_after_ms.load(Ordering::Relaxed),
            }),
            hosts: inv
                .hosts
                .values()
                .map(|h| {
                    let r = reported_host(h.id);
                    let me = own.get(&h.id);
                    HostState {
                        id: h.id,
                        name: h.name.clone(),
                        maintenance: h.maintenance,
                        verdict: r.map(|r| r.verdict.clone()),
                        network_age_ms: r.and_then(|r| r.network_age_ms),
                        is_master: report.is_some_and(|r| r.master == h.id),
                        role: me.map(|m| dsio::role_words(&m.record)),
                        flags: me
                            .map(|m| {
                                dsio::flag_words(m.record.flags)
                                    .into_iter()
                                    .filter(|w| w != "master" && w != "isolated")
                                    .collect()
                            })
                            .unwrap_or_default(),
                        datastore_heartbeats: heartbeats.remove(&h.id).unwrap_or_default(),
                    }
                })
                .collect(),
            vms: inv
                .vms
                .values()
                .map(|v| {
                    let r = reported_vm(v.id);
                    VmState {
                        id: v.id,
                        name: v.name.clone(),
                        protected: v.protected,
                        home: v.home,
                        host: r.and_then(|r| r.host),
                        state: r.and_then(|r| r.state.clone()),
                        restart: r.map(|r| r.restart.clone()),
                        priority: v.priority,
                    }
                })
                .collect(),
            datastores,
        }
    }

    /// Background loops: report polling and write retries, until the runtime stops.
    pub fn spawn_background(self: &Arc<Self>, poll_every: Duration, retry_every: Duration) {
        self.report_stale_after_ms
            .store(stale_after(poll_every), Ordering::Relaxed);
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(poll_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.poll_reports().await;
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(retry_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.retry_pending_writes().await;
            }
        });
    }
}
