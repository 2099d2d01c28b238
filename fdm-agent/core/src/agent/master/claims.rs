//! The master's datastore claims: acquiring, renewing, releasing and losing them, and when a
//! claim is settled enough to act under (`docs/safety.md`, step 1).

use super::*;

impl MasterState {
    /// Until when our claim on `d` is ours to trust, if we hold it.
    pub(in crate::agent) fn claim_valid_until(&self, d: DatastoreId, t: &Timings) -> Option<Time> {
        let h = self.claims.get(&d)?.held?;
        Some(h.last_renew_start + t.shrink(t.claim_lease) - t.fence_margin)
    }

    pub(super) fn held_valid(&self, d: DatastoreId, now: Time, t: &Timings) -> Option<Epoch> {
        let h = self.claims.get(&d)?.held?;
        if step_removed!(self, DropOnClaimLoss) {
            return Some(h.epoch);
        }
        (now < self.claim_valid_until(d, t)?).then_some(h.epoch)
    }

    /// Holding the claim long enough that every network lease granted by an earlier holder expired.
    ///
    /// Also requires a renewal that started after any rival's racing acquisition write must have
    /// landed: a renewal re-checks owner and epoch on disk, so it confirms the compare-and-write.
    pub(super) fn settled(&self, d: DatastoreId, now: Time, t: &Timings) -> Option<Epoch> {
        let epoch = self.held_valid(d, now, t)?;
        if step_removed!(self, SettleWait) {
            return Some(epoch);
        }
        let h = self.claims.get(&d)?.held?;
        let confirmed = h.last_renew_start >= h.acquired_at + t.datastore_call_deadline;
        (confirmed && now.since(h.acquired_at) >= t.stretch(t.net_lease)).then_some(epoch)
    }
}

impl Agent {
    pub(in crate::agent) fn master_renew_claims(&mut self, now: Time) {
        let held: Vec<(DatastoreId, HeldClaim)> = self
            .role
            .master()
            .map(|m| {
                m.claims
                    .iter()
                    .filter_map(|(&d, c)| c.held.map(|h| (d, h)))
                    .collect()
            })
            .unwrap_or_default();
        for (d, h) in held {
            if self.has_inflight(d, |p| matches!(p, DsPurpose::ClaimWrite(_))) {
                continue;
            }
            let record = DatastoreClaim {
                cluster: self.settings.cluster,
                datastore: d,
                owner: self.settings.host,
                owner_incarnation: self.settings.incarnation,
                epoch: h.epoch,
                renewal: h.renewal + 1,
                released: false,
            };
            self.ds_request(
                now,
                d,
                DsOp::WriteClaim {
                    record,
                    mode: ClaimWrite::Renew,
                },
                DsPurpose::ClaimWrite(ClaimWriteSent {
                    started: now,
                    mode: ClaimWriteKind::Renew,
                    record,
                }),
            );
        }
    }

    pub(in crate::agent) fn master_release_claims(&mut self, now: Time) {
        let held: Vec<(DatastoreId, HeldClaim)> = self
            .role
            .master()
            .map(|m| {
                m.claims
                    .iter()
                    .filter_map(|(&d, c)| c.held.map(|h| (d, h)))
                    .collect()
            })
            .unwrap_or_default();
        for (d, h) in held {
            let record = DatastoreClaim {
                cluster: self.settings.cluster,
                datastore: d,
                owner: self.settings.host,
                owner_incarnation: self.settings.incarnation,
                epoch: h.epoch,
                renewal: h.renewal + 1,
                released: true,
            };
            self.ds_request(
                now,
                d,
                DsOp::WriteClaim {
                    record,
                    mode: ClaimWrite::Release,
                },
                DsPurpose::ClaimWrite(ClaimWriteSent {
                    started: now,
                    mode: ClaimWriteKind::Release,
                    record,
                }),
            );
            self.emit(Event::ClaimLost {
                datastore: d,
                epoch: h.epoch,
                reason: "stepping down".into(),
            });
        }
    }

    pub(super) fn try_acquire(
        &mut self,
        now: Time,
        d: DatastoreId,
        current: Option<DatastoreClaim>,
        lapsed: bool,
    ) {
        if self.role() != Role::Master || self.shutting_down {
            return;
        }
        let epoch = Epoch(current.map_or(0, |c| c.epoch.0) + 1);
        let record = DatastoreClaim {
            cluster: self.settings.cluster,
            datastore: d,
            owner: self.settings.host,
            owner_incarnation: self.settings.incarnation,
            epoch,
            renewal: 0,
            released: false,
        };
        self.ds_request(
            now,
            d,
            DsOp::WriteClaim {
                record,
                mode: ClaimWrite::Acquire {
                    expect: current,
                    lapsed,
                },
            },
            DsPurpose::ClaimWrite(ClaimWriteSent {
                started: now,
                mode: ClaimWriteKind::Acquire,
                record,
            }),
        );
    }

    pub(super) fn on_claim_read(
        &mut self,
        now: Time,
        issued: Time,
        d: DatastoreId,
        current: Option<DatastoreClaim>,
    ) {
        let me = self.settings.host;
        let lease = self.t.stretch(self.t.claim_lease);
        let Some(m) = self.role.master_mut() else {
            return;
        };
        let c = m.claims.entry(d).or_default();
        if c.held.is_some() {
            return;
        }
        let same = c.seen.map(|s| (s.owner, s.epoch, s.renewal, s.released))
            == current.map(|s| (s.owner, s.epoch, s.renewal, s.released));
        if !same || !c.read_once {
            c.seen = current;
            c.seen_since = Some(now);
            c.read_once = true;
        }
        // From when the record was surely there (the reply of the first read that showed it) to
        // when it surely still was (the request of the latest one): a read delayed in a queue or
        // on the network must not make a live holder's record look older than it is.
        let lapsed = c.seen_since.is_some_and(|t0| issued.since(t0) >= lease);
        let acquirable = match current {
            None => true,
            Some(rec) if rec.released || rec.owner == me || rec.owner.is_none() => true,
            Some(_) => lapsed,
        };
        if acquirable {
            self.try_acquire(now, d, current, lapsed);
        }
    }

    pub(super) fn on_claim_written(
        &mut self,
        now: Time,
        d: DatastoreId,
        sent: ClaimWriteSent,
        result: Result<DsReply, DsError>,
    ) {
        let ClaimWriteSent {
            started,
            mode,
            record,
        } = sent;
        match (mode, result) {
            (ClaimWriteKind::Acquire, Ok(_)) => {
                let Some(m) = self.role.master_mut() else {
                    return;
                };
                let c = m.claims.entry(d).or_default();
                c.held = Some(HeldClaim {
                    epoch: record.epoch,
                    renewal: record.renewal,
                    last_renew_start: started,
                    acquired_at: started,
                });
                self.emit(Event::ClaimAcquired {
                    datastore: d,
                    epoch: record.epoch,
                });
                self.ds_request(now, d, DsOp::ReadProtectedList, DsPurpose::ProtectedRead);
            }
            (ClaimWriteKind::Acquire, Err(DsError::ClaimMismatch { current })) => {
                let Some(m) = self.role.master_mut() else {
                    return;
                };
                let c = m.claims.entry(d).or_default();
                c.seen = current;
                c.seen_since = Some(now);
            }
            (ClaimWriteKind::Acquire, Err(_)) => {}
            (ClaimWriteKind::Renew, Ok(_)) => {
                let Some(m) = self.role.master_mut() else {
                    return;
                };
                if let Some(h) = m.claims.get_mut(&d).and_then(|c| c.held.as_mut())
                    && h.epoch == record.epoch
                {
                    h.renewal = h.renewal.max(record.renewal);
                    if started > h.last_renew_start {
                        h.last_renew_start = started;
                    }
                }
            }
            (ClaimWriteKind::Renew, Err(DsError::ClaimMismatch { current })) => {
                self.lose_claim(d, "another master holds it now");
                let Some(m) = self.role.master_mut() else {
                    return;
                };
                let c = m.claims.entry(d).or_default();
                c.seen = current;
                c.seen_since = Some(now);
            }
            (ClaimWriteKind::Renew, Err(_)) => {
                // Keep trying: the claim is lost by time in master_evaluate if this goes on.
            }
            (ClaimWriteKind::Release, _) => {}
        }
    }

    pub(super) fn lose_claim(&mut self, d: DatastoreId, reason: &str) {
        if step_removed!(self, DropOnClaimLoss) {
            return;
        }
        let Some(m) = self.role.master_mut() else {
            return;
        };
        let Some(c) = m.claims.get_mut(&d) else {
            return;
        };
        let Some(h) = c.held.take() else { return };
        c.seen = None;
        c.seen_since = None;
        c.read_once = false;
        if let Some(pd) = m.protected.get_mut(&d) {
            pd.loaded = false;
        }
        // Stop issuing at once; in-flight commands fail the target's intent check or complete under
        // the intent already written.
        let vms: Vec<VmId> = m
            .tracks
            .iter()
            .filter(|(_, t)| t.home == d)
            .map(|(&vm, _)| vm)
            .collect();
        for vm in vms {
            m.tracks.remove(&vm);
        }
        self.emit(Event::ClaimLost {
            datastore: d,
            epoch: h.epoch,
            reason: reason.to_string(),
        });
    }
}
