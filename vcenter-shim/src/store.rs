//! The shim's SQLite database: the inventory (one JSON spec per row), a few settings, and the event log.
//! Its schema is versioned (`MIGRATIONS`): a shim opens a database of an older one by bringing it
//! up to date, and refuses one of a newer shim.
//!
//! Specs are stored as JSON rather than as columns because they are always read and written whole,
//! and the JSON form is the API form, so a schema change is a serde default rather than a migration.
//! u64 values (incarnations, sequence numbers) are stored bit-for-bit as SQLite's i64.

use crate::error::ShimError;
use crate::model::{AdmissionMode, DatastoreSpec, HostSpec, Inventory, VmSpec};
use heartbeat_fs::records::{HaSettings, ReportEvent};
use heartbeat_fs::{ClusterId, DatastoreId, HostId, VmId};
use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// The schema, one step per shim version that changed it; `PRAGMA user_version` says how many a
/// database has had. Step 1 is the schema shims created before there were steps, written with `IF
/// NOT EXISTS` so that such a database (at version 0) passes through it unchanged.
const SCHEMA_STEPS: &[M<'static>] = &[
    M::up(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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
         );",
    ),
    // Events gain their structured fields and the shim's receive time (retention by age), and
    // every source (master, incarnation) its high-water mark: the newest seq ever stored from it,
    // kept after retention deleted the events themselves, so that a report still carrying them
    // never stores them again. Rows of older databases keep their ids; their mark is the newest
    // seq still stored.
    M::up(
        "ALTER TABLE events ADD COLUMN name TEXT NOT NULL DEFAULT '';
         ALTER TABLE events ADD COLUMN datastore INTEGER;
         ALTER TABLE events ADD COLUMN verdict TEXT;
         ALTER TABLE events ADD COLUMN reason TEXT;
         ALTER TABLE events ADD COLUMN received_ms INTEGER NOT NULL DEFAULT 0;
         UPDATE events SET received_ms = unix_ms;
         CREATE INDEX events_received ON events (received_ms);
         CREATE TABLE event_sources (
             master INTEGER NOT NULL,
             master_incarnation INTEGER NOT NULL,
             high_seq INTEGER NOT NULL,
             PRIMARY KEY (master, master_incarnation)
         ) WITHOUT ROWID;
         INSERT INTO event_sources (master, master_incarnation, high_seq)
             SELECT master, master_incarnation, MAX(seq) FROM events
             GROUP BY master, master_incarnation;",
    ),
];
const MIGRATIONS: Migrations<'static> = Migrations::from_slice(SCHEMA_STEPS);

/// One event as stored, with the shim-assigned id clients page by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// From one sequence: every stored event gets the next id, and ids are never reused.
    pub id: i64,
    /// The master that reported it, with its incarnation and its own number for the event.
    pub master: HostId,
    pub master_incarnation: u64,
    pub seq: u64,
    /// When it happened, on the master's clock, in milliseconds since the Unix epoch (the shim's
    /// receive time when the master sent none).
    pub unix_ms: u64,
    /// When the shim stored it, on the shim's clock: what retention by age goes by, so that a
    /// master with a wrong clock can neither keep its events forever nor have them dropped at once.
    pub received_ms: u64,
    /// The event's kebab-case name (`verdict-changed`); empty for events of older masters.
    pub name: String,
    pub kind: String,
    /// The host the event is about (not the master).
    pub host: Option<HostId>,
    pub vm: Option<VmId>,
    pub datastore: Option<DatastoreId>,
    /// A verdict change's new verdict.
    pub verdict: Option<String>,
    pub reason: Option<String>,
    /// The event in words.
    pub message: String,
}

/// How many events the database keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The newest this many are kept; older ones are deleted.
    pub max_events: u64,
    /// Events received longer ago are deleted; `None` keeps them whatever their age.
    pub max_age: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_events: 10_000,
            max_age: Some(Duration::from_secs(30 * 24 * 3600)),
        }
    }
}

/// A u64 as SQLite's i64, bit for bit (the module's convention for incarnations and sequences).
fn to_sql(v: u64) -> i64 {
    v as i64
}

fn from_sql(v: i64) -> u64 {
    v as u64
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

    fn init(mut conn: Connection) -> Result<Self, ShimError> {
        // WAL keeps the poller's event inserts from blocking on a reader and survives a crash mid-write.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        MIGRATIONS.to_latest(&mut conn)?;
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

    /// Store the events of one report (from `master`'s incarnation `master_incarnation`) that were
    /// never stored before, in `seq` order, each with the next id; returns how many. "Never
    /// before" goes by the source's high-water mark, not by the rows still there: a report repeats
    /// its master's recent events, and one that retention already deleted must not come back with
    /// a new id (a client following the ids would see it twice). `received_ms` is the shim's clock.
    pub fn insert_events(
        &mut self,
        master: HostId,
        master_incarnation: u64,
        events: &[ReportEvent],
        received_ms: u64,
    ) -> Result<usize, ShimError> {
        let tx = self.conn.transaction()?;
        let high: Option<u64> = tx
            .query_row(
                "SELECT high_seq FROM event_sources WHERE master = ?1 AND master_incarnation = ?2",
                params![master.0, to_sql(master_incarnation)],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(from_sql);
        let mut new: Vec<&ReportEvent> = events
            .iter()
            .filter(|e| high.is_none_or(|h| e.seq > h))
            .collect();
        new.sort_by_key(|e| e.seq);
        new.dedup_by_key(|e| e.seq);
        {
            // A plain INSERT: the mark leaves nothing for the UNIQUE key to refuse, and an
            // ignored insert would still use up an AUTOINCREMENT id.
            let mut stmt = tx.prepare_cached(
                "INSERT INTO events (master, master_incarnation, seq, unix_ms, received_ms, name,
                     kind, host, vm, datastore, verdict, reason, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            for e in &new {
                let unix_ms = if e.unix_ms == 0 {
                    received_ms
                } else {
                    e.unix_ms
                };
                stmt.execute(params![
                    master.0,
                    to_sql(master_incarnation),
                    to_sql(e.seq),
                    to_sql(unix_ms),
                    to_sql(received_ms),
                    e.name,
                    e.kind,
                    e.host.map(|h| h.0),
                    e.vm.map(|v| v.0),
                    e.datastore.map(|d| d.0),
                    e.verdict,
                    e.reason,
                    e.message,
                ])?;
            }
        }
        if let Some(last) = new.last() {
            tx.execute(
                "INSERT INTO event_sources (master, master_incarnation, high_seq)
                 VALUES (?1, ?2, ?3)
                 ON CONFLICT (master, master_incarnation) DO UPDATE SET high_seq = excluded.high_seq",
                params![master.0, to_sql(master_incarnation), to_sql(last.seq)],
            )?;
        }
        tx.commit()?;
        Ok(new.len())
    }

    /// Delete the events beyond `retention` at `now_ms` (the shim's clock): those received longer
    /// ago than its age, then the oldest beyond its count. Returns how many went. The sources'
    /// marks stay (one small row per master incarnation), so nothing deleted is stored again.
    pub fn prune_events(&mut self, now_ms: u64, retention: Retention) -> Result<usize, ShimError> {
        let tx = self.conn.transaction()?;
        let mut deleted = 0;
        if let Some(age) = retention.max_age {
            let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
            let cutoff = i64::try_from(now_ms.saturating_sub(age_ms)).unwrap_or(i64::MAX);
            deleted += tx.execute("DELETE FROM events WHERE received_ms < ?1", [cutoff])?;
        }
        // By id, not by count arithmetic on ids: they are consecutive only while no transaction
        // that took ids rolled back.
        let keep = i64::try_from(retention.max_events).unwrap_or(i64::MAX);
        deleted += tx.execute(
            "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?1)",
            [keep],
        )?;
        tx.commit()?;
        Ok(deleted)
    }

    /// Events with an id greater than `since`, oldest first, at most `limit`.
    pub fn events_since(&self, since: i64, limit: u32) -> Result<Vec<StoredEvent>, ShimError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, master, master_incarnation, seq, unix_ms, received_ms, name, kind, host, vm,
                 datastore, verdict, reason, message
             FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![since, limit], |r| {
            Ok(StoredEvent {
                id: r.get(0)?,
                master: HostId(r.get(1)?),
                master_incarnation: from_sql(r.get(2)?),
                seq: from_sql(r.get(3)?),
                unix_ms: from_sql(r.get(4)?),
                received_ms: from_sql(r.get(5)?),
                name: r.get(6)?,
                kind: r.get(7)?,
                host: r.get::<_, Option<u32>>(8)?.map(HostId),
                vm: r.get::<_, Option<u32>>(9)?.map(VmId),
                datastore: r.get::<_, Option<u32>>(10)?.map(DatastoreId),
                verdict: r.get(11)?,
                reason: r.get(12)?,
                message: r.get(13)?,
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

    /// What a master's report carries: its newest events, `first..=last`.
    fn window(first: u64, last: u64) -> Vec<ReportEvent> {
        (first..=last).map(ev).collect()
    }

    #[test]
    fn events_deduplicated_ordered_and_bounded() {
        let mut s = Store::open_in_memory().unwrap();
        assert_eq!(
            s.insert_events(HostId(1), u64::MAX, &[ev(2), ev(1)], 5000)
                .unwrap(),
            2
        );
        assert_eq!(
            s.insert_events(HostId(1), u64::MAX, &[ev(2), ev(3)], 5000)
                .unwrap(),
            1
        );
        // Same seq from another incarnation is another event.
        assert_eq!(s.insert_events(HostId(1), 5, &[ev(1)], 5000).unwrap(), 1);
        let all = s.events_since(0, 100).unwrap();
        let keys: Vec<(u64, u64)> = all.iter().map(|e| (e.master_incarnation, e.seq)).collect();
        assert_eq!(
            keys,
            vec![(u64::MAX, 1), (u64::MAX, 2), (u64::MAX, 3), (5, 1)]
        );
        assert_eq!(s.events_since(all[1].id, 100).unwrap().len(), 2);
        // Retention keeps the newest rows only.
        s.insert_events(HostId(1), 6, &[ev(1), ev(2), ev(3)], 5000)
            .unwrap();
        let retention = Retention {
            max_events: 2,
            max_age: None,
        };
        assert_eq!(s.prune_events(5000, retention).unwrap(), 5);
        assert_eq!(s.event_count().unwrap(), 2);
        let left = s.events_since(0, 10).unwrap();
        assert_eq!((left[0].seq, left[1].seq), (2, 3));
        assert_eq!(left[0].master_incarnation, 6);
    }

    #[test]
    fn each_event_is_stored_once_with_its_fields_and_times() {
        let mut s = Store::open_in_memory().unwrap();
        let mut clockless = ev(2);
        clockless.unix_ms = 0;
        clockless.datastore = Some(DatastoreId(3));
        s.insert_events(HostId(1), 9, &[ev(1), clockless], 7777)
            .unwrap();
        let got = s.events_since(0, 10).unwrap();
        assert_eq!(
            got[0],
            StoredEvent {
                id: 1,
                master: HostId(1),
                master_incarnation: 9,
                seq: 1,
                unix_ms: 1001,
                received_ms: 7777,
                name: "verdict-changed".into(),
                kind: "verdict".into(),
                host: Some(HostId(2)),
                vm: None,
                datastore: None,
                verdict: Some("dead".into()),
                reason: Some("no probe answer".into()),
                message: "event 1".into(),
            }
        );
        // A master that could not read its clock: the shim's receive time stands in.
        assert_eq!(got[1].unix_ms, 7777);
        assert_eq!(got[1].datastore, Some(DatastoreId(3)));
    }

    /// Reports repeat their master's recent events every few seconds: the repeats must use up no
    /// id (an ignored INSERT into an AUTOINCREMENT table does), so that ids count events.
    #[test]
    fn ids_come_from_one_sequence_and_repeats_use_none() {
        let mut s = Store::open_in_memory().unwrap();
        for last in 1..=5 {
            for _ in 0..50 {
                s.insert_events(HostId(1), 3, &window(1, last), 1000)
                    .unwrap();
            }
        }
        // A second master's events share the sequence.
        s.insert_events(HostId(2), 4, &window(1, 2), 1000).unwrap();
        let ids: Vec<i64> = s
            .events_since(0, 100)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, (1..=7).collect::<Vec<i64>>());
    }

    /// The bug of issue 16: retention deleted events that reports still carried, the next report
    /// stored them again with new ids, and `fdmctl events --follow` printed history again. Here a
    /// follower pages by id through reports that slide on while retention, by count and by age,
    /// deletes under it: it sees every event exactly once, in order.
    #[test]
    fn events_followed_across_a_retention_pass_are_never_seen_twice() {
        let mut s = Store::open_in_memory().unwrap();
        let retention = Retention {
            max_events: 4,
            max_age: Some(Duration::from_secs(60)),
        };
        let mut seen: Vec<StoredEvent> = Vec::new();
        let mut since = 0;
        let mut now = 1_000_000;
        // 40 events; each report carries the newest 10 (more than retention keeps).
        for last in 1..=40u64 {
            let report = window(last.saturating_sub(9).max(1), last);
            s.insert_events(HostId(1), 7, &report, now).unwrap();
            // Reports are read more often than they change: the same report again.
            s.insert_events(HostId(1), 7, &report, now).unwrap();
            s.prune_events(now, retention).unwrap();
            assert!(s.event_count().unwrap() <= 4);
            // The follower reads every other round: some events are deleted before it reads them
            // (retention is allowed to drop what nobody read), none is shown twice.
            if last % 2 == 0 {
                for e in s.events_since(since, 1000).unwrap() {
                    since = e.id;
                    seen.push(e);
                }
            }
            now += 30_000;
        }
        let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
        let mut unique = seqs.clone();
        unique.dedup();
        assert_eq!(seqs, unique, "an event was seen twice: {seqs:?}");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert_eq!(seqs.last(), Some(&40));
        // With a retention of 4 and a read every 2 events, nothing was missed either.
        assert_eq!(seqs, (1..=40).collect::<Vec<u64>>());
        // Ids count events: 40 stored, 40 ids.
        assert_eq!(seen.last().map(|e| e.id), Some(40));

        // Past the age limit everything goes, and the master's next report (repeating its last
        // ten) stores nothing again.
        now += 61_000;
        s.prune_events(now, retention).unwrap();
        assert_eq!(s.event_count().unwrap(), 0);
        assert_eq!(
            s.insert_events(HostId(1), 7, &window(31, 40), now).unwrap(),
            0
        );
        assert_eq!(
            s.insert_events(HostId(1), 7, &window(32, 41), now).unwrap(),
            1
        );
        let next = s.events_since(since, 10).unwrap();
        assert_eq!(
            next.iter().map(|e| (e.id, e.seq)).collect::<Vec<_>>(),
            [(41, 41)]
        );
    }

    /// Age goes by the shim's clock: a master whose clock is a year behind does not have its
    /// events deleted at once.
    #[test]
    fn retention_by_age_goes_by_the_receive_time() {
        let mut s = Store::open_in_memory().unwrap();
        let day = Duration::from_secs(24 * 3600);
        let retention = Retention {
            max_events: 100,
            max_age: Some(day),
        };
        let now: u64 = 1_700_000_000_000;
        s.insert_events(HostId(1), 1, &window(1, 3), now).unwrap();
        assert_eq!(s.prune_events(now + 1000, retention).unwrap(), 0);
        assert_eq!(s.event_count().unwrap(), 3);
        s.insert_events(HostId(1), 1, &window(1, 4), now + 86_400_000)
            .unwrap();
        // A day and a second later only the event received a day later is left.
        assert_eq!(s.prune_events(now + 86_401_000, retention).unwrap(), 3);
        let left = s.events_since(0, 10).unwrap();
        assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn the_schema_steps_are_valid() {
        MIGRATIONS.validate().unwrap();
    }

    /// A database written by a shim before the schema had versions: its inventory and events stay,
    /// its events get the new columns, and what it stored is not stored again.
    #[test]
    fn an_older_shims_database_is_brought_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE hosts (id INTEGER PRIMARY KEY, spec TEXT NOT NULL);
                 CREATE TABLE datastores (id INTEGER PRIMARY KEY, spec TEXT NOT NULL);
                 CREATE TABLE vms (id INTEGER PRIMARY KEY, spec TEXT NOT NULL);
                 CREATE TABLE events (
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
                 INSERT INTO meta VALUES ('cluster', '4');
                 INSERT INTO events (id, master, master_incarnation, seq, unix_ms, kind, host, vm, message)
                     VALUES (9361, 1, 7, 28, 5000, 'verdict', 3, NULL, 'VerdictChanged { .. }');",
            )
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(
            s.load_inventory(ClusterId(1)).unwrap().cluster,
            ClusterId(4)
        );
        let old = s.events_since(0, 10).unwrap();
        assert_eq!(old.len(), 1);
        assert_eq!(
            (old[0].id, old[0].received_ms, old[0].name.as_str()),
            (9361, 5000, "")
        );
        // The master still carries events 19..=28 and adds 29: only 29 is new, with the next id.
        assert_eq!(
            s.insert_events(HostId(1), 7, &window(19, 29), 6000)
                .unwrap(),
            1
        );
        let new = s.events_since(9361, 10).unwrap();
        assert_eq!((new[0].id, new[0].seq), (9362, 29));
        drop(s);
        // Opened again: nothing left to migrate.
        Store::open(&path).unwrap();
    }
}
