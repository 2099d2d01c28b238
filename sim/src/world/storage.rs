//! The simulated storage: one worker per host and datastore, its latency, a hung or stuck mount,
//! and the executor's deadline, as `heartbeat-fs::fs` behaves.

use super::*;
use heartbeat_fs::ops::{DsReply, RequestId};

/// A call to a datastore whose worker is stuck is refused this soon (the executor is busy).
const BUSY_ANSWER_US: Micros = 50;

impl World {
    /// A datastore request of host `i`: queued behind its worker, answered at completion or at
    /// the deadline.
    pub(super) fn datastore_call(&mut self, i: usize, req: DsRequest) {
        let (h, inc) = (self.hosts[i].id, self.hosts[i].incarnation);
        let d = req.datastore;
        let deadline = us(self.params.timings.datastore_call_deadline);
        let lat = self.params.ds_latency_us + self.rng.below(self.params.ds_latency_us.max(1));
        let host = &mut self.hosts[i];
        let hung = host.ds_hung.contains(&d);
        if host.ds_stuck.contains(&d) {
            self.answer_ds(
                h,
                inc,
                (req.id, d),
                Err(DsError::Busy),
                self.now + BUSY_ANSWER_US,
            );
            return;
        }
        if hung {
            // The call never returns; the executor answers Timeout at the deadline and the
            // worker stays stuck until the storage comes back.
            host.ds_stuck.insert(d);
            self.answer_ds(
                h,
                inc,
                (req.id, d),
                Err(DsError::Timeout),
                self.now + deadline,
            );
            return;
        }
        // The call waits for the worker, then takes the storage's latency; it takes effect
        // (and is answered) when it completes.
        let start = host
            .ds_busy_until
            .get(&d)
            .copied()
            .unwrap_or(0)
            .max(self.now);
        let done = start + lat;
        host.ds_busy_until.insert(d, done);
        let deadline_at = self.now + deadline;
        if start >= deadline_at {
            // Still queued at the deadline: answered Timeout, never run.
            self.answer_ds(h, inc, (req.id, d), Err(DsError::Timeout), deadline_at);
            return;
        }
        let timed_out = done > deadline_at;
        if timed_out {
            self.answer_ds(h, inc, (req.id, d), Err(DsError::Timeout), deadline_at);
        }
        self.push(
            done,
            Ev::DsExec {
                host: h,
                inc,
                request: req,
                timed_out,
            },
        );
    }

    /// A datastore call of host `i` reaches the storage now.
    pub(super) fn ds_exec(&mut self, i: usize, inc: u64, req: DsRequest, timed_out: bool) {
        let host = &mut self.hosts[i];
        // A call of an agent process that died (or a host that lost power) never ran.
        if !host.powered || host.incarnation != inc {
            return;
        }
        let h = host.id;
        let d = req.datastore;
        let lost = host.ds_lost.contains(&d) || self.ds_dead.contains(&d);
        let torn = matches!(req.op, DsOp::WriteHeartbeat(_)) && host.torn_next.remove(&d);
        let result = if lost {
            Err(DsError::Io {
                kind: IoKind::Io,
                message: "EIO".into(),
            })
        } else if let Some(store) = self.ds.get_mut(&d) {
            if torn {
                store.tear_heartbeat(h);
                Ok(heartbeat_fs::ops::DsReply::Written)
            } else {
                let claim_write = matches!(req.op, DsOp::WriteClaim { .. });
                let r = store.execute(
                    Caller {
                        host: h,
                        incarnation: inc,
                    },
                    req.op,
                );
                if claim_write && r.is_ok() {
                    match store.current_claim().map(|c| c.released) {
                        Some(false) => {
                            self.claim_renewed_at.insert(d, self.now);
                        }
                        Some(true) => {
                            self.claim_released_at.insert(d, self.now);
                        }
                        None => {}
                    }
                }
                r
            }
        } else {
            Err(DsError::NotMounted(d))
        };
        if timed_out {
            return;
        }
        let c = DsCompletion {
            id: req.id,
            datastore: d,
            result,
        };
        self.push(
            self.now,
            Ev::Ds {
                host: h,
                inc,
                completion: c,
            },
        );
    }

    /// Host `h` (incarnation `inc`) gets the answer to its datastore request `id` on `d` at `at`.
    fn answer_ds(
        &mut self,
        h: HostId,
        inc: u64,
        (id, d): (RequestId, DatastoreId),
        result: Result<DsReply, DsError>,
        at: Micros,
    ) {
        let completion = DsCompletion {
            id,
            datastore: d,
            result,
        };
        self.push(
            at,
            Ev::Ds {
                host: h,
                inc,
                completion,
            },
        );
    }
}
