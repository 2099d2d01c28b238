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

impl MasterState {
    fn held_claims(&self) -> Vec<(DatastoreId, HeldClaim)> {
        self.claims
            .iter()
            .filter_map(|(&d, c)| c.held.map(|h| (d, h)))
            .collect()
    }

    /// Our claim record on `d` at `epoch`, `renewal`: only the renewal and the released flag
    /// differ between acquiring, renewing and releasing.
    fn our_claim(cx: &Ctx<'_>, d: DatastoreId, epoch: Epoch, renewal: u64) -> DatastoreClaim {
        DatastoreClaim {
            cluster: cx.settings.cluster,
            datastore: d,
            owner: cx.settings.host,
            owner_incarnation: cx.settings.incarnation,
            epoch,
            renewal,
            released: false,
        }
    }

    fn write_claim(cx: &mut Ctx<'_>, now: Time, record: DatastoreClaim, mode: ClaimWrite) {
        let kind = match mode {
            ClaimWrite::Acquire { .. } => ClaimWriteKind::Acquire,
            ClaimWrite::Renew => ClaimWriteKind::Renew,
            ClaimWrite::Release => ClaimWriteKind::Release,
        };
        cx.out.ds_request(
            now,
            record.datastore,
            DsOp::WriteClaim { record, mode },
            DsPurpose::ClaimWrite(ClaimWriteSent {
                started: now,
                mode: kind,
                record,
            }),
        );
    }

    pub(in crate::agent) fn renew_claims(&mut self, cx: &mut Ctx<'_>, now: Time) {
        for (d, h) in self.held_claims() {
            if cx
                .out
                .has_inflight(d, |p| matches!(p, DsPurpose::ClaimWrite(_)))
            {
                continue;
            }
            let record = Self::our_claim(cx, d, h.epoch, h.renewal + 1);
            Self::write_claim(cx, now, record, ClaimWrite::Renew);
        }
    }

    pub(in crate::agent) fn release_claims(&mut self, cx: &mut Ctx<'_>, now: Time) {
        for (d, h) in self.held_claims() {
            let record = DatastoreClaim {
                released: true,
                ..Self::our_claim(cx, d, h.epoch, h.renewal + 1)
            };
            Self::write_claim(cx, now, record, ClaimWrite::Release);
            cx.out.emit(Event::ClaimLost {
                datastore: d,
                epoch: h.epoch,
                reason: "stepping down".into(),
            });
        }
    }

    fn try_acquire(
        cx: &mut Ctx<'_>,
        now: Time,
        d: DatastoreId,
        current: Option<DatastoreClaim>,
        lapsed: bool,
    ) {
        if cx.shutting_down {
            return;
        }
        let epoch = Epoch(current.map_or(0, |c| c.epoch.0) + 1);
        let record = Self::our_claim(cx, d, epoch, 0);
        let mode = ClaimWrite::Acquire {
            expect: current,
            lapsed,
        };
        Self::write_claim(cx, now, record, mode);
    }

    pub(super) fn on_claim_read(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Time,
        issued: Time,
        d: DatastoreId,
        current: Option<DatastoreClaim>,
    ) {
        let me = cx.settings.host;
        let lease = cx.t.stretch(cx.t.claim_lease);
        let c = self.claims.entry(d).or_default();
        if c.held.is_some() {
            return;
        }
        let same = c.seen.map(|s| (s.owner, s.epoch, s.renewal, s.released))
            == current.map(|s| (s.owner, s.epoch, s.renewal, s.released));
        if !same || !c.read_once {
            c.note_seen(current, now);
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
            Self::try_acquire(cx, now, d, current, lapsed);
        }
    }

    pub(super) fn on_claim_written(
        &mut self,
        cx: &mut Ctx<'_>,
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
                let c = self.claims.entry(d).or_default();
                c.held = Some(HeldClaim {
                    epoch: record.epoch,
                    renewal: record.renewal,
                    last_renew_start: started,
                    acquired_at: started,
                });
                cx.out.emit(Event::ClaimAcquired {
                    datastore: d,
                    epoch: record.epoch,
                });
                cx.out
                    .ds_request(now, d, DsOp::ReadProtectedList, DsPurpose::ProtectedRead);
            }
            (ClaimWriteKind::Acquire, Err(DsError::ClaimMismatch { current })) => {
                self.claims.entry(d).or_default().note_seen(current, now);
            }
            (ClaimWriteKind::Acquire, Err(_)) => {}
            (ClaimWriteKind::Renew, Ok(_)) => {
                if let Some(h) = self.claims.get_mut(&d).and_then(|c| c.held.as_mut())
                    && h.epoch == record.epoch
                {
                    h.renewal = h.renewal.max(record.renewal);
                    if started > h.last_renew_start {
                        h.last_renew_start = started;
                    }
                }
            }
            (ClaimWriteKind::Renew, Err(DsError::ClaimMismatch { current })) => {
                self.lose_claim(cx, d, "another master holds it now");
                self.claims.entry(d).or_default().note_seen(current, now);
            }
            (ClaimWriteKind::Renew, Err(_)) => {
                // Keep trying: the claim is lost by time in master_evaluate if this goes on.
            }
            (ClaimWriteKind::Release, _) => {}
        }
    }

    pub(super) fn lose_claim(&mut self, cx: &mut Ctx<'_>, d: DatastoreId, reason: &str) {
        if step_removed!(self, DropOnClaimLoss) {
            return;
        }
        let Some(c) = self.claims.get_mut(&d) else {
            return;
        };
        let Some(h) = c.held.take() else { return };
        c.seen = None;
        c.seen_since = None;
        c.read_once = false;
        if let Some(pd) = self.protected.get_mut(&d) {
            pd.loaded = false;
        }
        // Stop issuing at once; in-flight commands fail the target's intent check or complete under
        // the intent already written.
        self.tracks.retain(|_, t| t.home != d);
        cx.out.emit(Event::ClaimLost {
            datastore: d,
            epoch: h.epoch,
            reason: reason.to_string(),
        });
    }
}

impl ClaimTrack {
    /// The record now reads as `current`, and has since `now` as far as we know.
    fn note_seen(&mut self, current: Option<DatastoreClaim>, now: Time) {
        self.seen = current;
        self.seen_since = Some(now);
    }
}
