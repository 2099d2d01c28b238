//! Restart limits: the restarts HA made of a VM after it crashed, as this master counts them.
//!
//! A protected list stores each restart as an age (`RecentRestart::age_ms`) because the core has
//! no wall clock and two hosts' monotonic clocks do not compare. This master turns ages into
//! instants on its own clock when it loads a list and back into ages when it writes one. Reading
//! an age as "that long before now" makes a restart look at most as old as it is (the list was
//! written before it was read, and an age that does not fit before this clock's origin is
//! shortened), so a new master never forgets a restart before the window has passed
//! (`docs/safety.md`, "Restart limits").

use super::super::super::time::Time;
use heartbeat_fs::HostId;
use heartbeat_fs::records::RecentRestart;
use std::time::Duration;

/// One VM's restarts after a crash, oldest first: when each was decided and where it had crashed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct RestartLog(Vec<(Time, HostId)>);

impl RestartLog {
    /// The log a protected list recorded, read at `now`.
    pub(super) fn from_record(now: Time, recent: &[RecentRestart]) -> Self {
        let mut log: Vec<(Time, HostId)> = recent
            .iter()
            .map(|r| (now - Duration::from_millis(r.age_ms), r.crashed_on))
            .collect();
        // A list is written oldest first; one that is not (another writer, a bug) must still
        // count the same restarts, and the same-host streak reads the newest last.
        log.sort_by_key(|(t, _)| *t);
        RestartLog(log)
    }

    /// The log as a protected list keeps it, written at `now`.
    pub(super) fn to_record(&self, now: Time) -> Vec<RecentRestart> {
        self.0
            .iter()
            .map(|&(t, h)| RecentRestart {
                age_ms: u64::try_from(now.since(t).as_millis()).unwrap_or(u64::MAX),
                crashed_on: h,
            })
            .collect()
    }

    /// Forget the restarts that are `window` old or older. Returns whether any was forgotten.
    pub(super) fn prune(&mut self, now: Time, window: Duration) -> bool {
        let before = self.0.len();
        self.0.retain(|&(t, _)| now.since(t) < window);
        self.0.len() != before
    }

    /// Restarts counted (after `prune`, the ones within the window).
    pub(super) fn count(&self) -> u32 {
        u32::try_from(self.0.len()).unwrap_or(u32::MAX)
    }

    /// How many of the newest restarts in a row followed a crash on `host`: the same-host tries
    /// already made there.
    pub(super) fn same_host_streak(&self, host: HostId) -> u32 {
        let n = self.0.iter().rev().take_while(|(_, h)| *h == host).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    pub(super) fn record(&mut self, now: Time, crashed_on: HostId) {
        self.0.push((now, crashed_on));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: HostId = HostId(1);
    const H2: HostId = HostId(2);

    fn secs(s: u64) -> Time {
        Time::from_millis(s * 1000)
    }

    #[test]
    fn the_window_slides_and_forgets_only_what_left_it() {
        let mut log = RestartLog::default();
        log.record(secs(100), H1);
        log.record(secs(130), H1);
        let hour = Duration::from_secs(60);
        assert!(!log.prune(secs(159), hour));
        assert_eq!(log.count(), 2);
        assert!(log.prune(secs(160), hour), "100 s is 60 s old at 160 s");
        assert_eq!(log.count(), 1);
        assert!(log.prune(secs(190), hour));
        assert!(log.is_empty());
    }

    #[test]
    fn ages_survive_a_write_and_a_read_on_another_clock() {
        let mut log = RestartLog::default();
        log.record(secs(1_000), H1);
        log.record(secs(1_050), H2);
        // Written at 1,060 s on the old master's clock...
        let rec = log.to_record(secs(1_060));
        assert_eq!(rec[0].age_ms, 60_000);
        assert_eq!(rec[1].age_ms, 10_000);
        // ...read 5 s later by a master whose clock reads 200 s: the ages are taken as of the
        // reading, so each restart looks 5 s younger than it is, never older.
        let read = RestartLog::from_record(secs(200), &rec);
        assert_eq!(read, RestartLog(vec![(secs(140), H1), (secs(190), H2)]));
        // An age longer than the reader's clock has run is shortened, never lengthened.
        let young = RestartLog::from_record(secs(30), &rec);
        assert_eq!(young, RestartLog(vec![(Time::ZERO, H1), (secs(20), H2)]));
    }

    #[test]
    fn a_list_out_of_order_is_read_oldest_first() {
        let rec = [
            RecentRestart {
                age_ms: 1_000,
                crashed_on: H2,
            },
            RecentRestart {
                age_ms: 9_000,
                crashed_on: H1,
            },
        ];
        let log = RestartLog::from_record(secs(100), &rec);
        assert_eq!(log.same_host_streak(H2), 1);
        assert_eq!(log.same_host_streak(H1), 0);
    }

    #[test]
    fn the_same_host_streak_counts_the_newest_crashes_on_one_host() {
        let mut log = RestartLog::default();
        assert_eq!(log.same_host_streak(H1), 0);
        log.record(secs(1), H1);
        log.record(secs(2), H2);
        log.record(secs(3), H1);
        log.record(secs(4), H1);
        assert_eq!(log.same_host_streak(H1), 2);
        assert_eq!(log.same_host_streak(H2), 0);
    }
}
