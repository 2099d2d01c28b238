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

/// An event's wall-clock time for people: RFC 3339 to the second, UTC (`2026-12-02T10:11:12Z`),
/// as agents on different hosts and the shim print the same instant the same way; `-` when the
/// clock was unreadable (0).
pub fn wall_clock(unix_ms: u64) -> String {
    use std::fmt::Write;
    if unix_ms == 0 {
        return "-".into();
    }
    // A stamp past what RFC 3339 can write (year 9999) comes from a broken clock: shown as it is,
    // never a panic (humantime's Display fails there, and `to_string` would panic on that).
    let mut out = String::new();
    match UNIX_EPOCH.checked_add(Duration::from_millis(unix_ms)) {
        Some(t) if write!(out, "{}", humantime::format_rfc3339_seconds(t)).is_ok() => out,
        _ => format!("{unix_ms} ms after 1970"),
    }
}

/// `e` as the management plane stores it: its rendering for people and its fields.
pub fn report_event(seq: u64, unix_ms: u64, e: &Event) -> ReportEvent {
    let f = e.fields();
    ReportEvent {
        seq,
        unix_ms,
        name: f.name.to_string(),
        kind: f.kind.to_string(),
        host: f.host,
        vm: f.vm,
        datastore: f.datastore,
        verdict: f.verdict.map(|v| v.name().to_string()),
        reason: f.reason.map(str::to_string),
        message: e.to_string(),
    }
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

    /// Keep `e` for the next reports. Returns it as reported (numbered, stamped with the wall
    /// clock, in words and fields), which is also how `fdm-agent status` shows it.
    pub fn record(&mut self, e: &Event) -> ReportEvent {
        if let Event::ClaimAcquired { epoch, .. } = e {
            self.epoch = self.epoch.max(*epoch);
        }
        let reported = report_event(self.next_event, unix_ms(), e);
        self.events.push_back(reported.clone());
        self.next_event += 1;
        while self.events.len() > EVENTS_KEPT {
            self.events.pop_front();
        }
        reported
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
                    state: v.state.map(|s| s.name().to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Verdict;
    use heartbeat_fs::{HostId, VmId};

    #[test]
    fn a_reported_event_carries_its_words_and_its_fields() {
        let e = Event::VerdictChanged {
            subject: HostId(3),
            from: Verdict::Unreachable,
            to: Verdict::Dead,
            reason: "no probe answer".into(),
        };
        let r = report_event(7, 1_700_000_000_000, &e);
        assert_eq!(
            r,
            ReportEvent {
                seq: 7,
                unix_ms: 1_700_000_000_000,
                name: "verdict-changed".into(),
                kind: "verdict".into(),
                host: Some(HostId(3)),
                vm: None,
                datastore: None,
                verdict: Some("dead".into()),
                reason: Some("no probe answer".into()),
                message: "host-3 declared dead: no probe answer (was unreachable)".into(),
            }
        );
        let r = report_event(
            8,
            0,
            &Event::VmRestarted {
                vm: VmId(4),
                on: HostId(1),
                attempt: 1,
            },
        );
        assert_eq!((r.host, r.vm), (Some(HostId(1)), Some(VmId(4))));
        assert_eq!(r.message, "vm-4 restarted on host-1 (attempt 1)");
    }

    #[test]
    fn event_times_are_utc_to_the_second() {
        assert_eq!(wall_clock(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(wall_clock(0), "-");
        // A broken clock's stamp is shown, not a panic.
        assert_eq!(wall_clock(u64::MAX), "18446744073709551615 ms after 1970");
        assert_eq!(
            wall_clock(300_000_000_000_000),
            "300000000000000 ms after 1970"
        );
    }
}
