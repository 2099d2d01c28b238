//! The storage-outage hold (`docs/safety.md`, "Storage outages"): while every configured host
//! follows this master, no other master can take a datastore's claim before every lease this
//! master grants has run out, so its acknowledgements may cover every datastore, claimed or not,
//! and a datastore lost by everyone (an NFS failover, a controller reboot) stops no VM.
//!
//! "Follows" is measured on the master's own clock: each heartbeat round is numbered, the slave
//! echoes the newest round it heard, and a host counts while its echo names a round sent less than
//! `follow_window` ago. A delayed datagram can only make an echo look older, never younger.

use super::super::super::config::Timings;
use super::super::super::time::Time;
use super::MasterState;
use heartbeat_fs::HostId;
use std::collections::VecDeque;
use std::time::Duration;

/// Rounds remembered; an echo of an older round is too old to count whatever the timings (at most
/// a hundred rounds a second, `MIN_INTERVAL`, and `follow_window` is at most a claim lease).
const ROUNDS_KEPT: usize = 512;

/// The master's numbered heartbeat rounds and when each was first sent.
#[derive(Debug, Clone, Default)]
pub(super) struct HeartbeatRounds {
    current: u64,
    sent: VecDeque<(u64, Time)>,
}

impl HeartbeatRounds {
    /// Start the next round at `now`.
    pub(super) fn next(&mut self, now: Time) -> u64 {
        self.current += 1;
        self.sent.push_back((self.current, now));
        while self.sent.len() > ROUNDS_KEPT {
            self.sent.pop_front();
        }
        self.current
    }

    /// The round a heartbeat sent now belongs to (starting one if none was sent yet).
    pub(super) fn current(&mut self, now: Time) -> u64 {
        if self.current == 0 {
            self.next(now)
        } else {
            self.current
        }
    }

    fn sent_at(&self, round: u64) -> Option<Time> {
        let first = self.sent.front()?.0;
        let i = usize::try_from(round.checked_sub(first)?).ok()?;
        self.sent
            .get(i)
            .filter(|(r, _)| *r == round)
            .map(|(_, t)| *t)
    }
}

/// How recent a host's echo must be for it to count as following. A host that followed us at a
/// round sent at `m` can act as a master only after taking a claim, which takes
/// `stretch(claim_lease)` of watching plus `stretch(net_lease)` of settling after `m`; the leases
/// we grant while counting it end by `m + follow_window + net_lease`. `stretch(follow_window)` is
/// at most `claim_lease`, so they end first, whatever the drift.
pub(super) fn follow_window(t: &Timings) -> Duration {
    t.host_unreachable_after.min(t.shrink(t.claim_lease))
}

impl MasterState {
    /// Whether every configured host but us echoed a round of ours sent within the follow window.
    pub(super) fn whole_membership(&self, now: Time, hosts: &[HostId], t: &Timings) -> bool {
        let window = follow_window(t);
        hosts.iter().filter(|&&h| h != self.me).all(|h| {
            self.peers
                .get(h)
                .and_then(|p| self.rounds.sent_at(p.echo_round))
                .is_some_and(|m| now.since(m) < window)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_is_known_by_its_first_send_time_until_it_is_forgotten() {
        let mut r = HeartbeatRounds::default();
        assert_eq!(r.current(Time(5)), 1);
        assert_eq!(
            r.current(Time(9)),
            1,
            "same round until the next one starts"
        );
        for i in 0..ROUNDS_KEPT as u64 {
            r.next(Time(100 + i));
        }
        assert_eq!(r.sent_at(1), None, "forgotten: too old to count");
        assert_eq!(r.sent_at(2), Some(Time(100)));
        assert_eq!(r.sent_at(0), None);
        assert_eq!(r.sent_at(u64::MAX), None);
    }
}
