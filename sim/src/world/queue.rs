//! The discrete-event queue: events ordered by virtual time and then by scheduling order (what
//! makes a run a pure function of its seed), and the dispatch of each to the world.

use super::*;

#[derive(Debug)]
pub(super) enum Ev {
    Datagram {
        to: HostId,
        payload: Vec<u8>,
    },
    Ds {
        host: HostId,
        inc: u64,
        completion: DsCompletion,
    },
    /// A datastore call reaches the storage: it takes effect now (the host's worker for that
    /// datastore runs one call at a time, like `heartbeat_fs::fs::DatastoreExecutor`).
    DsExec {
        host: HostId,
        inc: u64,
        request: DsRequest,
        /// Past the executor's deadline the caller was answered `Timeout` already; the call still
        /// takes effect, as a syscall that was under way does.
        timed_out: bool,
    },
    Hv {
        host: HostId,
        inc: u64,
        event: HypervisorEvent,
    },
    PowerOnDone {
        host: HostId,
        inc: u64,
        op: u64,
        vm: VmId,
    },
    Isolation {
        host: HostId,
        inc: u64,
    },
    Probe {
        host: HostId,
        inc: u64,
        target: HostId,
    },
    Timer {
        host: HostId,
        inc: u64,
    },
    Watchdog {
        host: HostId,
        inc: u64,
    },
    Fault(Fault),
    Boot {
        host: HostId,
    },
}

/// A queued event; ordered by time, then by the order it was scheduled (FIFO at one instant), which
/// is what makes a run a pure function of its seed.
#[derive(Debug)]
pub(super) struct Scheduled {
    pub(super) at: Micros,
    pub(super) seq: u64,
    pub(super) ev: Box<Ev>,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

impl World {
    pub(super) fn push(&mut self, at: Micros, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            ev: Box::new(ev),
        }));
    }

    pub fn schedule_fault(&mut self, at: Micros, f: Fault) {
        self.push(at, Ev::Fault(f));
    }

    /// Events waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Run until virtual time `end` (microseconds).
    pub fn run_until(&mut self, end: Micros) {
        let mut same_instant = 0u32;
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > end {
                break;
            }
            let Some(Reverse(Scheduled { at, ev, .. })) = self.queue.pop() else {
                break;
            };
            let ev = *ev;
            same_instant = if at == self.now { same_instant + 1 } else { 0 };
            use crate::invariants::time_advances;
            if same_instant > time_advances::MAX_EVENTS_AT_ONE_INSTANT {
                // Report it instead of spinning.
                self.violate(
                    time_advances::NAME,
                    time_advances::detail(same_instant, &ev),
                );
                self.queue.clear();
                break;
            }
            self.now = at;
            self.events_processed += 1;
            self.dispatch(ev);
            if !self.outside.is_empty() {
                self.watch_outside_copies();
            }
        }
        self.now = self.now.max(end);
    }

    /// A hung agent's inputs wait for the thaw (datagrams up to a socket buffer's worth).
    pub(super) fn hold_if_hung(&mut self, ev: Ev) -> Option<Ev> {
        let host = match &ev {
            Ev::Datagram { to, .. } => *to,
            Ev::Ds { host, .. }
            | Ev::Hv { host, .. }
            | Ev::Isolation { host, .. }
            | Ev::Probe { host, .. } => *host,
            _ => return Some(ev),
        };
        let Some(i) = self.idx(host) else {
            return Some(ev);
        };
        let h = &mut self.hosts[i];
        if !(h.powered && h.hung) {
            return Some(ev);
        }
        let datagrams = h
            .held
            .iter()
            .filter(|e| matches!(e, Ev::Datagram { .. }))
            .count();
        if !matches!(ev, Ev::Datagram { .. }) || datagrams < 256 {
            h.held.push(ev);
        }
        None
    }

    pub(super) fn dispatch(&mut self, ev: Ev) {
        let Some(ev) = self.hold_if_hung(ev) else {
            return;
        };
        match ev {
            Ev::Datagram { to, payload } => {
                let Some(i) = self.idx(to) else { return };
                let inc = self.hosts[i].incarnation;
                if self.profile == Some(self.hosts[i].id) {
                    self.profile_datagrams += 1;
                }
                self.deliver(i, inc, |a, now| a.handle_datagram(now, &payload));
            }
            Ev::Ds {
                host,
                inc,
                completion,
            } => {
                let Some(i) = self.idx(host) else { return };
                self.deliver(i, inc, |a, now| a.handle_datastore(now, completion));
            }
            Ev::DsExec {
                host,
                inc,
                request,
                timed_out,
            } => {
                let Some(i) = self.idx(host) else { return };
                self.ds_exec(i, inc, request, timed_out);
            }
            Ev::Hv { host, inc, event } => {
                let Some(i) = self.idx(host) else { return };
                let event = match event {
                    HypervisorEvent::Inventory { op, .. } => HypervisorEvent::Inventory {
                        op,
                        running: self.hosts[i].running.keys().copied().collect(),
                    },
                    e => e,
                };
                self.deliver(i, inc, |a, now| a.handle_hypervisor(now, event));
            }
            Ev::PowerOnDone { host, inc, op, vm } => {
                let Some(i) = self.idx(host) else { return };
                if self.hosts[i].powered && self.hosts[i].incarnation == inc {
                    self.power_on_done(i, op, vm);
                }
            }
            Ev::Isolation { host, inc } => {
                let Some(i) = self.idx(host) else { return };
                let reachable = self.hosts[i].network_up;
                self.deliver(i, inc, |a, now| a.handle_isolation_check(now, reachable));
            }
            Ev::Probe { host, inc, target } => {
                let Some(i) = self.idx(host) else { return };
                let answered = self.linked(host, target) && self.linked(target, host);
                self.deliver(i, inc, |a, now| a.handle_probe(now, target, answered));
            }
            Ev::Timer { host, inc } => {
                let Some(i) = self.idx(host) else { return };
                if self.hosts[i].timer_at != Some(self.now) || self.hosts[i].incarnation != inc {
                    return; // superseded
                }
                self.hosts[i].timer_at = None;
                self.deliver(i, inc, |a, now| a.handle_timeout(now));
                if self.hosts[i].hung {
                    // A thaw re-arms the timer.
                    self.hosts[i].timer_at = None;
                }
            }
            Ev::Watchdog { host, inc } => {
                let Some(i) = self.idx(host) else { return };
                let h = &mut self.hosts[i];
                if h.incarnation != inc || !h.powered {
                    return;
                }
                h.watchdog_pending = false;
                let timeout = us(self.params.timings.watchdog_timeout);
                let last = h.last_kick.unwrap_or(0);
                if self.now.saturating_sub(last) >= timeout {
                    self.log(Some(host), "watchdog fired: host reset".into());
                    self.crash(host, true);
                    self.refresh_whole();
                } else {
                    h.watchdog_pending = true;
                    self.push(last + timeout, Ev::Watchdog { host, inc });
                }
            }
            Ev::Fault(f) => {
                self.apply(f);
                self.refresh_whole();
            }
            Ev::Boot { host } => {
                self.boot(host);
                self.refresh_whole();
            }
        }
    }
}
