//! The shim's SQLite database: the inventory (one JSON spec per row), a few settings, and the event log.
//!
//! Specs are stored as JSON rather than as columns because they are always read and written whole,
//! and the JSON form is the API form, so a schema change is a serde default rather than a migration.
//! u64 values (incarnations, sequence numbers) are stored bit-for-bit as SQLite's i64.

use crate::error::ShimError;
use crate::model::{AdmissionMode, DatastoreSpec, HostSpec, Inventory, VmSpec};
use heartbeat_fs::records::{HaSettings, ReportEvent};
use heartbeat_fs::{ClusterId, HostId, VmId};
use rusqlite::{Connection, OptionalExtension, params};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (id INTEGER PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datastores (id INTEGER PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vms (id INTEGER PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    master INTEGER NOT NULL,
    master_incarnation INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    unix_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    host INTEGER,
    vm INTEGER,
    message TEXT NOT NULL,
    UNIQUE (master, master_incarnation, seq)
);
";

/// One event as stored, with the shim-assigned id clients page by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub id: i64,
    pub master: HostId,
    pub master_incarnation: u64,
    pub seq: u64,
    pub unix_ms: u64,
    pub kind: String,
    pub host: Option<HostId>,
    pub vm: Option<VmId>,
    pub message: String,
}

#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

fn decode<T: DeserializeOwned>(what: &str, text: &str) -> Result<T, ShimError> {
    serde_json::from_str(text).map_err(|e| ShimError::Corrupt {
        what: what.to_string(),
        message: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> Result<String, ShimError> {
    serde_json::to_string(value).map_err(|e| ShimError::Corrupt {
        what: "value to store".into(),
        message: e.to_string(),
    })
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, ShimError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    pub fn open_in_memory() -> Result<Self, ShimError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, ShimError> {
        // WAL keeps the poller's event inserts from blocking on a reader and survives a crash mid-write.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    fn meta(&self, key: &str) -> Result<Option<String>, ShimError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// The stored inventory; a fresh database gets an empty one for `cluster`. An existing database
    /// keeps its own cluster id: agents would ignore a config for another cluster.
    pub fn load_inventory(&mut self, cluster: ClusterId) -> Result<Inventory, ShimError> {
        let mut inv = Inventory::new(cluster);
        match self.meta("cluster")? {
            Some(c) => inv.cluster = ClusterId(decode("cluster id", &c)?),
            None => {
                self.conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('cluster', ?1)",
                    [cluster.0.to_string()],
                )?;
            }
        }
        if let Some(g) = self.meta("generation")? {
            inv.generation = decode("generation", &g)?;
        }
        if let Some(ha) = self.meta("ha")? {
            inv.ha = decode::<HaSettings>("HA settings", &ha)?;
        }
        if let Some(m) = self.meta("admission_mode")? {
            inv.admission_mode = decode::<AdmissionMode>("admission mode", &m)?;
        }
        if let Some(c) = self.meta("restart_cleared")? {
            inv.restart_cleared = decode("restart clears", &c)?;
        }
        if let Some(r) = self.meta("power_requests")? {
            inv.power_requests = decode("power requests", &r)?;
        }
        for spec in self.specs("hosts")? {
            let h: HostSpec = decode("host", &spec)?;
            inv.hosts.insert(h.id, h);
        }
        for spec in self.specs("datastores")? {
            let d: DatastoreSpec = decode("datastore", &spec)?;
            inv.datastores.insert(d.id, d);
        }
        for spec in self.specs("vms")? {
            let v: VmSpec = decode("vm", &spec)?;
            inv.vms.insert(v.id, v);
        }
        Ok(inv)
    }

    fn specs(&self, table: &str) -> Result<Vec<String>, ShimError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT spec FROM {table} ORDER BY id"))?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Replace the stored inventory with `inv`, atomically: a crash leaves the old or the new one.
    pub fn save_inventory(&mut self, inv: &Inventory) -> Result<(), ShimError> {
        let tx = self.conn.transaction()?;
        for (key, value) in [
            ("cluster", inv.cluster.0.to_string()),
            ("generation", inv.generation.to_string()),
            ("ha", encode(&inv.ha)?),
            ("admission_mode", encode(&inv.admission_mode)?),
            ("restart_cleared", encode(&inv.restart_cleared)?),
            ("power_requests", encode(&inv.power_requests)?),
        ] {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?;
        }
        tx.execute("DELETE FROM hosts", [])?;
        tx.execute("DELETE FROM datastores", [])?;
        tx.execute("DELETE FROM vms", [])?;
        for h in inv.hosts.values() {
            tx.execute(
                "INSERT INTO hosts (id, spec) VALUES (?1, ?2)",
                params![h.id.0, encode(h)?],
            )?;
        }
        for d in inv.datastores.values() {
            tx.execute(
                "INSERT INTO datastores (id, spec) VALUES (?1, ?2)",
                params![d.id.0, encode(d)?],
            )?;
        }
        for v in inv.vms.values() {
            tx.execute(
                "INSERT INTO vms (id, spec) VALUES (?1, ?2)",
                params![v.id.0, encode(v)?],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Store the events not seen before (keyed by master, incarnation, seq), in `seq` order, then
    /// drop the oldest beyond `retention` rows. Returns how many were new.
    pub fn insert_events(
        &mut self,
        master: HostId,
        master_incarnation: u64,
        events: &[ReportEvent],
        retention: u64,
    ) -> Result<usize, ShimError> {
        let mut sorted: Vec<&ReportEvent> = events.iter().collect();
        sorted.sort_by_key(|e| e.seq);
        let tx = self.conn.transaction()?;
        let mut added = 0;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO events
                 (master, master_incarnation, seq, unix_ms, kind, host, vm, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for e in sorted {
                added += stmt.execute(params![
                    master.0,
                    master_incarnation as i64,
                    e.seq as i64,
                    e.unix_ms as i64,
                    e.kind,
                    e.host.map(|h| h.0),
                    e.vm.map(|v| v.0),
                    e.message,
                ])?;
            }
        }
        if added > 0 {
            let keep = i64::try_from(retention).unwrap_or(i64::MAX);
            tx.execute(
                "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?1",
                [keep],
            )?;
        }
        tx.commit()?;
        Ok(added)
    }

    /// Events with an id greater than `since`, oldest first, at most `limit`.
    pub fn events_since(&self, since: i64, limit: u32) -> Result<Vec<StoredEvent>, ShimError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, master, master_incarnation, seq, unix_ms, kind, host, vm, message
             FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![since, limit], |r| {
            Ok(StoredEvent {
                id: r.get(0)?,
                master: HostId(r.get(1)?),
                master_incarnation: r.get::<_, i64>(2)? as u64,
                seq: r.get::<_, i64>(3)? as u64,
                unix_ms: r.get::<_, i64>(4)? as u64,
                kind: r.get(5)?,
                host: r.get::<_, Option<u32>>(6)?.map(HostId),
                vm: r.get::<_, Option<u32>>(7)?.map(VmId),
                message: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn event_count(&self) -> Result<u64, ShimError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MountSpec;
    use heartbeat_fs::DatastoreId;

    fn ev(seq: u64) -> ReportEvent {
        ReportEvent {
            seq,
            unix_ms: 1000 + seq,
            name: "verdict-changed".into(),
            kind: "verdict".into(),
            host: Some(HostId(2)),
            vm: None,
            datastore: None,
            verdict: Some("dead".into()),
            reason: Some("no probe answer".into()),
            message: format!("event {seq}"),
        }
    }

    #[test]
    fn inventory_round_trips() {
        let mut s = Store::open_in_memory().unwrap();
        let mut inv = s.load_inventory(ClusterId(7)).unwrap();
        assert_eq!(inv.cluster, ClusterId(7));
        inv.generation = 3;
        inv.ha.paused = true;
        inv.admission_mode = AdmissionMode::Warn;
        inv.hosts.insert(
            HostId(1),
            HostSpec {
                id: HostId(1),
                name: "a".into(),
                address: "10.0.0.1:7400".into(),
                cpu_mhz: 1,
                memory_mb: 2,
                maintenance: true,
            },
        );
        inv.datastores.insert(
            DatastoreId(1),
            DatastoreSpec {
                id: DatastoreId(1),
                name: "d".into(),
                mounts: vec![MountSpec {
                    host: HostId(1),
                    path: "/x".into(),
                }],
            },
        );
        inv.restart_cleared.insert(VmId(4), 3);
        inv.power_requests.insert(
            VmId(4),
            heartbeat_fs::records::PowerRequest {
                generation: 5,
                power: heartbeat_fs::records::DesiredPower::Off,
            },
        );
        s.save_inventory(&inv).unwrap();
        // A different default cluster does not override the stored one.
        assert_eq!(s.load_inventory(ClusterId(9)).unwrap(), inv);
    }

    #[test]
    fn events_deduplicated_ordered_and_bounded() {
        let mut s = Store::open_in_memory().unwrap();
        assert_eq!(
            s.insert_events(HostId(1), u64::MAX, &[ev(2), ev(1)], 100)
                .unwrap(),
            2
        );
        assert_eq!(
            s.insert_events(HostId(1), u64::MAX, &[ev(2), ev(3)], 100)
                .unwrap(),
            1
        );
        // Same seq from another incarnation is another event.
        assert_eq!(s.insert_events(HostId(1), 5, &[ev(1)], 100).unwrap(), 1);
        let all = s.events_since(0, 100).unwrap();
        let keys: Vec<(u64, u64)> = all.iter().map(|e| (e.master_incarnation, e.seq)).collect();
        assert_eq!(
            keys,
            vec![(u64::MAX, 1), (u64::MAX, 2), (u64::MAX, 3), (5, 1)]
        );
        assert_eq!(s.events_since(all[1].id, 100).unwrap().len(), 2);
        // Retention keeps the newest rows only.
        s.insert_events(HostId(1), 6, &[ev(1), ev(2), ev(3)], 2)
            .unwrap();
        assert_eq!(s.event_count().unwrap(), 2);
        let left = s.events_since(0, 10).unwrap();
        assert_eq!(left[0].seq, 2);
        assert_eq!(left[1].seq, 3);
    }
}
