//! The master's cluster report for the management plane (`.fdm/report` on every datastore).
//!
//! Written from threads of their own, one per datastore, latest report wins: a hung datastore
//! delays only its own copy and never the heartbeats, and reports never queue up behind it.

use crate::core::{Agent, Event, Role, StatusSnapshot};
use heartbeat_fs::fs::DatastoreDir;
use heartbeat_fs::records::{ClusterReport, ReportEvent, ReportedHost, ReportedVm};
use heartbeat_fs::{DatastoreId, Epoch};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often a master rewrites its report.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(2);
/// Events carried in each report; the management plane stores each once.
const EVENTS_KEPT: usize = 200;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug)]
pub struct Reporter {
    incarnation: u64,
    sequence: u64,
    next_event: u64,
    events: VecDeque<ReportEvent>,
    epoch: Epoch,
    last_write: Option<Instant>,
    writers: Vec<SyncSender<Arc<ClusterReport>>>,
}

impl Reporter {
    pub fn new(incarnation: u64, datastores: &[(DatastoreId, PathBuf)]) -> std::io::Result<Self> {
        let mut writers = Vec::new();
        for (id, path) in datastores {
            let (tx, rx) = sync_channel::<Arc<ClusterReport>>(1);
            let path = path.clone();
            let id = *id;
            std::thread::Builder::new()
                .name(format!("fdm-report-{}", id.0))
                .spawn(move || {
                    let mut dir: Option<DatastoreDir> = None;
                    while let Ok(report) = rx.recv() {
                        if dir.is_none() {
                            dir = DatastoreDir::open(&path).ok();
                        }
                        let result = match &dir {
                            Some(d) => d.write_report(&report).map_err(|e| e.to_string()),
                            None => Err("datastore not open".into()),
                        };
                        if let Err(e) = result {
                            // Reopen next time: the mount may have come back.
                            dir = None;
                            tracing::debug!(datastore = %id, error = %e, "report not written");
                        }
                    }
                })?;
            writers.push(tx);
        }
        Ok(Reporter {
            incarnation,
            sequence: 0,
            next_event: 1,
            events: VecDeque::new(),
            epoch: Epoch(0),
            last_write: None,
            writers,
        })
    }

    pub fn record(&mut self, e: &Event) {
        if let Event::ClaimAcquired { epoch, .. } = e {
            self.epoch = self.epoch.max(*epoch);
        }
        let (host, vm) = e.subject();
        self.events.push_back(ReportEvent {
            seq: self.next_event,
            unix_ms: unix_ms(),
            kind: e.kind().to_string(),
            host,
            vm,
            message: format!("{e:?}"),
        });
        self.next_event += 1;
        while self.events.len() > EVENTS_KEPT {
            self.events.pop_front();
        }
    }

    /// Write a report if this agent is master and the interval has passed.
    pub fn tick(&mut self, agent: &Agent, st: &StatusSnapshot) {
        if agent.role() != Role::Master
            || self
                .last_write
                .is_some_and(|t| t.elapsed() < REPORT_INTERVAL)
        {
            return;
        }
        self.last_write = Some(Instant::now());
        self.sequence += 1;
        let report = Arc::new(ClusterReport {
            cluster: agent.config().cluster,
            master: st.host,
            master_incarnation: self.incarnation,
            epoch: self.epoch,
            sequence: self.sequence,
            unix_ms: unix_ms(),
            config_generation: st.config_generation,
            ha_paused: agent.config().ha.paused,
            hosts: st
                .hosts
                .iter()
                .map(|h| ReportedHost {
                    host: h.host,
                    verdict: h.verdict.name().to_string(),
                    network_age_ms: h.net_age.map(|a| (a * 1000.0) as u64),
                })
                .collect(),
            vms: st
                .vms
                .iter()
                .map(|v| ReportedVm {
                    vm: v.vm,
                    host: v.host,
                    state: v.state.map(|s| format!("{s:?}").to_lowercase()),
                    restart: v.restart.clone(),
                })
                .collect(),
            events: self.events.iter().cloned().collect(),
        });
        for w in &self.writers {
            // Full: that datastore's writer is still busy (or hung) with the previous report.
            if let Err(TrySendError::Full(_)) = w.try_send(report.clone()) {
                tracing::debug!("previous report still being written; skipped");
            }
        }
    }
}
