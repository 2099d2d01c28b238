//! The master's failover work: which protected VMs must be restarted, where, the intents and
//! commands that restart them, and what a power-on result or a silent target means.

use super::*;
use crate::messages::{PowerOffCommand, PowerOffReason};

/// How often an operator's stop is resent to a host that still runs the VM (a clean shutdown can
/// take a while; the host ignores a stop it is already carrying out).
const STOP_RESEND: Duration = Duration::from_secs(5);

/// What `reconcile` needs of the agent besides the master's state, gathered once per pass.
pub(super) struct ReconcileContext<'a> {
    now: Time,
    me: HostId,
    /// The first restart delay (ms).
    retry0: u64,
    same_host_attempts: u32,
    /// The wait before each same-host restart after the first (ms).
    same_host_wait: u64,
    config: &'a ClusterView,
    /// This host's own VMs, as its hypervisor last reported them.
    local: BTreeMap<VmId, VmRunState>,
}

impl MasterState {
    /// Our own VMs are reported directly, including the ones gone from our list altogether (a
    /// power-on that failed here): a stale "runs on the master" would hide a lost VM forever.
    pub(super) fn note_own_vms(&mut self, me: HostId, local: &BTreeMap<VmId, VmRunState>) {
        let active = |s: &VmRunState| matches!(s, VmRunState::Running | VmRunState::PoweringOn);
        for (vm, on) in self.running.iter_mut() {
            if on.contains(&me) && !local.get(vm).is_some_and(active) {
                on.remove(&me);
            }
        }
        for (vm, s) in local {
            if active(s) {
                self.running.entry(*vm).or_default().insert(me);
            }
        }
    }

    /// The hosts a VM runs on as far as evidence goes. Reports from hosts we cannot hear are stale;
    /// an isolated host's power-on list is the better authority for what its isolation response
    /// stopped.
    pub(super) fn running_on(&self, d: DatastoreId, vm: VmId) -> Vec<HostId> {
        self.running
            .get(&vm)
            .map(|s| {
                s.iter()
                    .copied()
                    .filter(|&h| match self.verdict(h) {
                        Some(Verdict::Dead) => false,
                        Some(Verdict::Isolated) => !self.powered_off_by_isolation(h, d, vm),
                        _ => true,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One protected-list entry: the entry as it must now read, if it changes.
    pub(super) fn reconcile_entry(
        &mut self,
        ctx: &ReconcileContext<'_>,
        d: DatastoreId,
        e: &ProtectedVm,
        events: &mut Vec<Event>,
    ) -> Option<ProtectedVm> {
        // Gone from the configuration: the list drops it when it next follows the config.
        ctx.config.vm(e.vm)?;
        if let RestartState::LimitReached { .. } = e.restart {
            // Failed: left alone wherever it is until an operator clears it (the clear arrives
            // with the configuration, `sync_protected_with_config`).
            return None;
        }
        match e.pending_power {
            Some(DesiredPower::Off) => return self.carry_out_stop(ctx, d, e, events),
            Some(DesiredPower::On) => return self.carry_out_start(ctx, d, e, events),
            None => {}
        }
        if let Some(h) = self.resolve_duplicates(ctx, d, e) {
            return self.found_running(e, h);
        }
        if self.tracks.contains_key(&e.vm) || e.desired == DesiredPower::Off {
            // In progress, or off on purpose.
            return None;
        }
        let stopped_at = e
            .last_host
            .is_none()
            .then(|| {
                if ctx.local.get(&e.vm) == Some(&VmRunState::StoppedByUser) {
                    Some(ctx.me)
                } else {
                    stopped_by_user_on(self, e.vm)
                }
            })
            .flatten();
        if let Some(h) = stopped_at {
            // Stopped by an operator (or its guest) before any report showed it running:
            // off on purpose, not lost.
            let mut ne = e.clone();
            ne.last_host = Some(h);
            ne.desired = DesiredPower::Off;
            return Some(ne);
        }
        match e.last_host {
            None => self.never_seen_running(ctx, d, e, events),
            Some(h) => self.judge_last_host(ctx, (d, h), e, events),
        }
    }

    /// The host the VM lives on, if it runs anywhere. A VM reported running on two hosts that both
    /// answer (a copy HA did not start: a libvirt autostart at a returning host's boot, an agent
    /// that died without its watchdog while the VM was restarted elsewhere) keeps one copy: the
    /// one a restart in flight targets, else the one the protected list places, else the lowest
    /// host; the others are told to stop (resent while they run). Reports of hosts we do not hear,
    /// or whose newest report has not arrived yet, are not trusted for this: such a report may be
    /// stale, and the copy may be gone.
    fn resolve_duplicates(
        &mut self,
        ctx: &ReconcileContext<'_>,
        d: DatastoreId,
        e: &ProtectedVm,
    ) -> Option<HostId> {
        let on = self.running_on(d, e.vm);
        let first = *on.first()?;
        let live: Vec<HostId> = on
            .iter()
            .copied()
            .filter(|&h| h == ctx.me || self.verdict(h) == Some(Verdict::Alive))
            // Only reports the host says are current: a host back from isolation is heard (alive)
            // before its new report arrives, and its old one still shows the VMs its isolation
            // response powered off (the lab caught the master stopping the real copy for that).
            .filter(|&h| {
                h == ctx.me
                    || self
                        .peers
                        .get(&h)
                        .is_some_and(|p| p.vm_gen_have == Some(p.vm_gen_reported))
            })
            .collect();
        if live.len() < 2 || step_removed!(self, DuplicateResolution) {
            self.stale_stop_sent.remove(&e.vm);
            return Some(first);
        }
        let targeted = self.tracks.get(&e.vm).and_then(|tr| match tr.stage {
            Stage::IntentWriting { target, .. }
            | Stage::Issued { target, .. }
            | Stage::Resume { target, .. } => Some(target),
            _ => None,
        });
        let keep = targeted
            .filter(|t| live.contains(t))
            .or(e.last_host.filter(|h| live.contains(h)))
            .unwrap_or(live[0]);
        let due = self
            .stale_stop_sent
            .get(&e.vm)
            .is_none_or(|&t| ctx.now.since(t) >= STOP_RESEND);
        if due {
            self.stale_stop_sent.insert(e.vm, ctx.now);
            for h in live.into_iter().filter(|&h| h != keep) {
                self.stale_stops.push((h, e.vm, keep));
            }
        }
        Some(keep)
    }

    /// Running (or starting) on `h`: that is where it lives now.
    pub(super) fn found_running(&mut self, e: &ProtectedVm, h: HostId) -> Option<ProtectedVm> {
        let mut ne = e.clone();
        ne.last_host = Some(h);
        ne.desired = DesiredPower::On;
        let stage = self.tracks.get(&e.vm).map(|tr| &tr.stage);
        if matches!(stage, Some(Stage::Issued { target, .. } | Stage::Resume { target, .. }) if *target == h)
        {
            // The power-on result will close the track.
        } else if matches!(stage, Some(Stage::Waiting)) {
            self.tracks.remove(&e.vm);
            ne.restart = RestartState::Idle;
        } else if stage.is_none() && e.restart != RestartState::Idle {
            ne.restart = RestartState::Idle;
        }
        (ne != *e).then_some(ne)
    }

    /// An operator asked HA to stop the VM: no restart of it, a stop to every host running it
    /// (resent while it runs), and the request done once it runs nowhere.
    fn carry_out_stop(
        &mut self,
        ctx: &ReconcileContext<'_>,
        d: DatastoreId,
        e: &ProtectedVm,
        events: &mut Vec<Event>,
    ) -> Option<ProtectedVm> {
        self.tracks.remove(&e.vm);
        let mut ne = e.clone();
        ne.desired = DesiredPower::Off;
        ne.restart = RestartState::Idle;
        let on = self.running_on(d, e.vm);
        if on.is_empty() {
            self.stop_sent.remove(&e.vm);
            ne.pending_power = None;
            events.push(Event::OperatorStopDone { vm: e.vm });
            return Some(ne);
        }
        let due = self
            .stop_sent
            .get(&e.vm)
            .is_none_or(|&t| ctx.now.since(t) >= STOP_RESEND);
        if due {
            self.stop_sent.insert(e.vm, ctx.now);
            for h in on {
                self.stop_commands.push((h, e.vm));
            }
        }
        (ne != *e).then_some(ne)
    }

    /// An operator asked HA to start the VM: a host's old report of it stopped on purpose no longer
    /// keeps it off; it is restarted like a VM running nowhere, and the request is done once it runs.
    fn carry_out_start(
        &mut self,
        ctx: &ReconcileContext<'_>,
        d: DatastoreId,
        e: &ProtectedVm,
        events: &mut Vec<Event>,
    ) -> Option<ProtectedVm> {
        let running = self.running_on(d, e.vm);
        // A stop we sent (an earlier request) may still be on its way into the reports: "running"
        // then is stale, and taking it as the start done would leave the VM off for good.
        if let Some(&sent) = self.stop_sent.get(&e.vm) {
            if !running.is_empty() && ctx.now.since(sent) < STOP_RESEND * 2 {
                return None;
            }
            self.stop_sent.remove(&e.vm);
        }
        if let Some(&h) = running.first() {
            let mut ne = self.found_running(e, h).unwrap_or_else(|| e.clone());
            ne.pending_power = None;
            return Some(ne);
        }
        if self.tracks.contains_key(&e.vm) {
            return None;
        }
        let next_try = ctx.now + Duration::from_millis(ctx.retry0);
        self.tracks
            .insert(e.vm, RestartTrack::waiting(d, next_try, None, None));
        events.push(Event::RestartNeeded {
            vm: e.vm,
            from: None,
            reason: "started by an operator".to_string(),
        });
        let mut ne = pending(e);
        ne.desired = DesiredPower::On;
        Some(ne)
    }

    /// Protected but never seen running (a new master's list, written before any report came in).
    /// Start it only when every host that mounts its datastore is dead or has reported, completely,
    /// that it does not run it.
    pub(super) fn never_seen_running(
        &mut self,
        ctx: &ReconcileContext<'_>,
        d: DatastoreId,
        e: &ProtectedVm,
        events: &mut Vec<Event>,
    ) -> Option<ProtectedVm> {
        let cfg = ctx.config.vm(e.vm)?;
        let active =
            |s: Option<VmRunState>| matches!(s, Some(VmRunState::Running | VmRunState::PoweringOn));
        let nowhere = ctx.config.hosts_of(d).iter().all(|&h| {
            if h == ctx.me {
                return !active(ctx.local.get(&e.vm).copied());
            }
            match self.verdict(h) {
                Some(Verdict::Dead) => true,
                Some(Verdict::Alive) => {
                    reported_state(self.peers.get(&h), e.vm).is_some_and(|s| !active(s))
                }
                _ => false,
            }
        });
        if !(nowhere && restart_allowed(cfg, false)) {
            return None;
        }
        let next_try = ctx.now + Duration::from_millis(ctx.retry0);
        self.tracks
            .insert(e.vm, RestartTrack::waiting(d, next_try, None, None));
        events.push(Event::RestartNeeded {
            vm: e.vm,
            from: None,
            reason: "protected but running nowhere".to_string(),
        });
        Some(pending(e))
    }

    /// Last seen on `h` and running nowhere now (home datastore `d`): what `h`'s verdict and
    /// report say to do.
    pub(super) fn judge_last_host(
        &mut self,
        ctx: &ReconcileContext<'_>,
        (d, h): (DatastoreId, HostId),
        e: &ProtectedVm,
        events: &mut Vec<Event>,
    ) -> Option<ProtectedVm> {
        let cfg = ctx.config.vm(e.vm)?;
        let state = if h == ctx.me {
            Some(ctx.local.get(&e.vm).copied())
        } else {
            match reported_state(self.peers.get(&h), e.vm) {
                // Gone from its list after an operator stopped it there: still stopped.
                Some(None)
                    if self
                        .peers
                        .get(&h)
                        .is_some_and(|p| p.user_stopped_gone.contains(&e.vm)) =>
                {
                    Some(Some(VmRunState::StoppedByUser))
                }
                s => s,
            }
        };
        let stopped_by_isolation = self.powered_off_by_isolation(h, d, e.vm);
        match restart_decision(self.verdict(h), state, stopped_by_isolation) {
            Decision::Restart { reason, same_host } => {
                if !restart_allowed(cfg, same_host) {
                    return None;
                }
                let track = if same_host {
                    match self.restart_after_crash(ctx, (d, h), e.vm) {
                        Ok(track) => track,
                        Err((restarts, window_ms)) => {
                            return Some(limit_reached(e, (restarts, window_ms), events));
                        }
                    }
                } else {
                    let next_try = ctx.now + Duration::from_millis(ctx.retry0);
                    RestartTrack::waiting(d, next_try, Some(h), None)
                };
                self.tracks.insert(e.vm, track);
                events.push(Event::RestartNeeded {
                    vm: e.vm,
                    from: Some(h),
                    reason: reason.to_string(),
                });
                Some(pending(e))
            }
            Decision::DesiredOff => {
                let mut ne = e.clone();
                ne.desired = DesiredPower::Off;
                Some(ne)
            }
            Decision::Wait => None,
        }
    }
}

impl MasterState {
    /// A VM crashed on `h` (alive): the restart's track, counted against the VM's restart limit,
    /// or, when the limit allows no more, the restarts made within the window and its length
    /// (ms). Only
    /// restarts after a crash count: a host failure is not the VM's doing, and a VM moved by a
    /// run of host failures must not end up failed.
    pub(super) fn restart_after_crash(
        &mut self,
        ctx: &ReconcileContext<'_>,
        (d, h): (DatastoreId, HostId),
        vm: VmId,
    ) -> Result<RestartTrack, (u32, u64)> {
        let limit = restart_limit_of(ctx, vm);
        let log = self.restart_logs.entry(vm).or_default();
        log.prune(ctx.now, Duration::from_millis(limit.window_ms));
        let restarts = log.count();
        if restarts >= limit.max_restarts {
            return Err((restarts, limit.window_ms));
        }
        // Same-host tries: the first at once, each further one after the wait, then another
        // host. Counted from the log, so within the window and across a master change.
        let tries = log.same_host_streak(h);
        log.record(ctx.now, h);
        let same_host = tries < ctx.same_host_attempts;
        let delay = if same_host && tries > 0 {
            ctx.same_host_wait
        } else {
            ctx.retry0
        };
        let next_try = ctx.now + Duration::from_millis(delay);
        let mut track = RestartTrack::waiting(d, next_try, Some(h), same_host.then_some(h));
        if !same_host {
            // Its own host had its tries (or has none): another host.
            track.excluded.push(h);
        }
        Ok(track)
    }

    /// Forget restarts that left their window; a list whose counts changed is written again so
    /// that the ages on disk stay close to the truth for the next master.
    pub(super) fn prune_restart_logs(&mut self, ctx: &ReconcileContext<'_>) {
        let mut changed: BTreeSet<VmId> = BTreeSet::new();
        for (vm, log) in self.restart_logs.iter_mut() {
            let limit = restart_limit_of(ctx, *vm);
            if log.prune(ctx.now, Duration::from_millis(limit.window_ms)) {
                changed.insert(*vm);
            }
        }
        self.restart_logs.retain(|_, log| !log.is_empty());
        for pd in self.protected.values_mut() {
            if pd.list.vms.iter().any(|e| changed.contains(&e.vm)) {
                pd.dirty = true;
            }
        }
    }
}

/// The VM's restart limit: its own, else the cluster's.
fn restart_limit_of(ctx: &ReconcileContext<'_>, vm: VmId) -> RestartLimit {
    ctx.config
        .vm(vm)
        .and_then(|c| c.ha.restart_limit)
        .unwrap_or(ctx.config.ha.restart_limit)
}

/// The protected-list entry of a VM that reached its restart limit: `restarts` within `window_ms`.
fn limit_reached(
    e: &ProtectedVm,
    (restarts, window_ms): (u32, u64),
    events: &mut Vec<Event>,
) -> ProtectedVm {
    let mut ne = e.clone();
    ne.restart = RestartState::LimitReached { restarts };
    events.push(Event::RestartLimitReached {
        vm: e.vm,
        restarts,
        window_ms,
    });
    ne
}

/// The VM's policy lets HA restart it (`same_host`: a restart of a VM that failed on a live host).
pub(super) fn restart_allowed(cfg: &heartbeat_fs::records::VmConfig, same_host: bool) -> bool {
    let by_policy = match cfg.ha.restart_policy {
        RestartPolicy::Never => false,
        RestartPolicy::HostFailureOnly => !same_host,
        RestartPolicy::Always => true,
    };
    by_policy && cfg.ha.priority != RestartPriority::Disabled
}

/// The protected-list entry with a restart pending.
pub(super) fn pending(e: &ProtectedVm) -> ProtectedVm {
    let mut ne = e.clone();
    ne.restart = RestartState::Pending { attempts: 0 };
    ne
}

impl Agent {
    // ----- evaluation ----------------------------------------------------------------------------

    pub(in crate::agent) fn master_evaluate(&mut self, now: Time) {
        if self.hand_over_to_better_connected(now) {
            return;
        }
        let Some(due) = self.as_master(|m, cx| {
            m.expire_claims(cx, now);
            m.update_verdicts(cx, now);
            m.load_missing_lists(cx, now);
            m.take_reconcile_due(now)
        }) else {
            return;
        };
        if due {
            let local: BTreeMap<VmId, VmRunState> = self
                .vms
                .statuses()
                .into_iter()
                .map(|s| (s.vm, s.state))
                .collect();
            self.as_master(|m, cx| m.reconcile(cx, now, local));
        }
        self.as_master(|m, cx| m.follow_up_restarts(cx, now));
        self.schedule_restarts(now);
        self.as_master(|m, cx| m.flush_protected(cx, now));
    }

    /// The election ranks hosts by the datastores they reach, but only when there is no master; a
    /// master elected while storage was down would otherwise keep the role after the storage comes
    /// back to others but not to it, and nobody would protect the VMs there. When an alive slave has
    /// reached strictly more datastores for `better_master_handover`, hand over to the best one.
    pub(super) fn hand_over_to_better_connected(&mut self, now: Time) -> bool {
        let mine = self.reachable_datastores(now).len() as u32;
        let Some(Some(best)) = self.as_master(|m, cx| m.better_connected_successor(cx, now, mine))
        else {
            return false;
        };
        self.emit(Event::Yielded { to: best });
        self.step_down(now, Some(best), "a slave reaches more datastores");
        true
    }

    pub(in crate::agent) fn master_on_power_on_result(
        &mut self,
        now: Time,
        from: HostId,
        r: PowerOnResult,
    ) {
        self.as_master(|m, cx| m.on_power_on_result(cx, now, from, r));
    }

    /// Place the restarts that are due, write their intents.
    pub(super) fn schedule_restarts(&mut self, now: Time) {
        if self.paused() {
            self.as_master(|m, cx| m.report_paused_restarts(cx));
            return;
        }
        let me_as_target = TargetSelf {
            host: self.settings.host,
            reachable: self.reachable_datastores(now).into_iter().collect(),
            maintenance: self.maintenance || self.shutting_down,
        };
        self.as_master(|m, cx| m.schedule_restarts(cx, now, &me_as_target));
    }
}

impl MasterState {
    /// Whether a reconcile pass is due (asked for, or two seconds since the last); taking it
    /// starts the next wait.
    fn take_reconcile_due(&mut self, now: Time) -> bool {
        let due = self.reconcile_due || now.since(self.last_reconcile) >= Duration::from_secs(2);
        if due {
            self.reconcile_due = false;
            self.last_reconcile = now;
        }
        due
    }

    /// The slave to hand over to, once one has reached more datastores than we do (`mine`) for
    /// `better_master_handover`.
    fn better_connected_successor(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Time,
        mine: u32,
    ) -> Option<HostId> {
        let best = self.best_successor(cx.settings.host).filter(|h| {
            self.peers
                .get(h)
                .is_some_and(|p| p.reachable.len() as u32 > mine)
        });
        let Some(best) = best else {
            self.better_since = None;
            return None;
        };
        let since = match self.better_since {
            Some((h, t)) if h == best => t,
            _ => {
                self.better_since = Some((best, now));
                now
            }
        };
        (now.since(since) >= cx.t.better_master_handover).then_some(best)
    }

    fn expire_claims(&mut self, cx: &mut Ctx<'_>, now: Time) {
        let expired: Vec<DatastoreId> = self
            .claims
            .iter()
            .filter(|(d, c)| c.held.is_some() && self.held_valid(**d, now, cx.t).is_none())
            .map(|(&d, _)| d)
            .collect();
        for d in expired {
            self.lose_claim(cx, d, "could not renew within the lease");
        }
    }

    fn load_missing_lists(&mut self, cx: &mut Ctx<'_>, now: Time) {
        let need = self
            .claims
            .iter()
            .filter(|(d, c)| c.held.is_some() && self.protected.get(d).is_none_or(|p| !p.loaded))
            .map(|(&d, _)| d);
        for d in need {
            if !cx
                .out
                .has_inflight(d, |p| matches!(p, DsPurpose::ProtectedRead))
            {
                cx.out
                    .ds_request(now, d, DsOp::ReadProtectedList, DsPurpose::ProtectedRead);
            }
        }
    }

    /// Decide, for every protected VM, whether it must be restarted, and open a restart track.
    /// `local`: the master's own VMs as its hypervisor last reported them.
    fn reconcile(&mut self, cx: &mut Ctx<'_>, now: Time, local: BTreeMap<VmId, VmRunState>) {
        let t = cx.t;
        let ha = &cx.config.ha;
        let ctx = ReconcileContext {
            now,
            me: cx.settings.host,
            retry0: ha.restart_retry_ms.first().copied().unwrap_or(0),
            same_host_attempts: ha.same_host_restart_attempts,
            same_host_wait: ha.same_host_restart_wait_ms,
            config: cx.config,
            local,
        };
        let mut events = Vec::new();
        self.note_own_vms(ctx.me, &ctx.local);
        self.prune_restart_logs(&ctx);
        let ds_list: Vec<DatastoreId> = self.protected.keys().copied().collect();
        for d in ds_list {
            if self.settled(d, now, t).is_none() || !self.protected[&d].loaded {
                continue;
            }
            let n = self.protected[&d].list.vms.len();
            for i in 0..n {
                let e = self.protected[&d].list.vms[i].clone();
                if let Some(ne) = self.reconcile_entry(&ctx, d, &e, &mut events) {
                    let pd = self.protected.get_mut(&d).expect("listed");
                    pd.list.vms[i] = ne;
                    pd.dirty = true;
                }
            }
        }
        let stops = std::mem::take(&mut self.stop_commands);
        let stale = std::mem::take(&mut self.stale_stops);
        for e in events {
            if let Event::RestartLimitReached { .. } = e {
                cx.out.stats.restart_limits_reached += 1;
            }
            cx.out.emit(e);
        }
        for (host, vm) in stops {
            cx.out.emit(Event::OperatorStopSent { vm, host });
            let reason = PowerOffReason::Operator;
            cx.out
                .send(host, &Message::PowerOff(PowerOffCommand { vm, reason }));
        }
        for (host, vm, kept) in stale {
            cx.out.emit(Event::DuplicateCopyStopSent { vm, host, kept });
            let reason = PowerOffReason::StaleCopy;
            cx.out
                .send(host, &Message::PowerOff(PowerOffCommand { vm, reason }));
        }
    }

    /// Power-on commands that went unanswered, targets that died, intents of a previous master.
    fn follow_up_restarts(&mut self, cx: &mut Ctx<'_>, now: Time) {
        let t = cx.t;
        let f = self.follow_ups(now, t);
        let sends = self.resend_power_ons(f.resend, now, t);
        self.restamp_intents(f.restamp, now, t);
        self.abandon_targets(f.abandon, now);
        for (target, msg) in sends {
            cx.out.send(target, &msg);
        }
    }

    fn on_power_on_result(&mut self, cx: &mut Ctx<'_>, now: Time, from: HostId, r: PowerOnResult) {
        if r.running {
            self.note_started(from, r.vm, r.vm_generation);
        }
        let Some(tr) = self.tracks.get(&r.vm).cloned() else {
            return;
        };
        let Stage::Issued {
            target, attempt: a, ..
        } = tr.stage
        else {
            return;
        };
        if target != from || a != r.attempt {
            return;
        }
        let (vm, attempt) = (r.vm, r.attempt);
        let stats = if tr.is_restart() {
            &mut cx.out.stats.restarts
        } else {
            &mut cx.out.stats.placements
        };
        if r.stopped_by_operator || r.running {
            // Done: running there, or started and then stopped on purpose (not a failure to retry
            // elsewhere).
            let desired = if r.stopped_by_operator {
                DesiredPower::Off
            } else {
                DesiredPower::On
            };
            self.restart_ended(vm, tr.home, from, desired);
            if r.stopped_by_operator {
                stats.ended_by_operator += 1;
            } else {
                stats.succeeded += 1;
            }
            cx.out.emit(if r.stopped_by_operator {
                Event::RestartEndedByOperator { vm, on: from }
            } else {
                Event::VmRestarted {
                    vm,
                    on: from,
                    attempt,
                }
            });
            return;
        }
        let (attempts, gave_up) =
            self.restart_failed(vm, from, &cx.config.ha.restart_retry_ms, now);
        stats.failed += 1;
        if gave_up {
            stats.gave_up += 1;
        }
        cx.out.emit(Event::RestartFailed {
            vm,
            target: from,
            attempt,
            error: r.error.unwrap_or_else(|| "unknown error".into()),
        });
        if gave_up {
            cx.out.emit(Event::RestartGaveUp { vm, attempts });
        }
    }

    /// HA is paused: say once per waiting restart that it does not happen.
    fn report_paused_restarts(&mut self, cx: &mut Ctx<'_>) {
        for (&vm, tr) in self.tracks.iter_mut() {
            if tr.stage == Stage::Waiting && !tr.reported_waiting {
                tr.reported_waiting = true;
                cx.out.emit(Event::ActionSuppressed {
                    what: format!("restart of {vm}"),
                });
            }
        }
    }
}

impl MasterState {
    /// Place the restarts that are due and write their intents; the commands whose intents are
    /// already durable go out at once.
    fn schedule_restarts(&mut self, cx: &mut Ctx<'_>, now: Time, me_as_target: &TargetSelf) {
        let (t, config) = (cx.t, cx.config);
        let due = self.due_restarts(now, t);
        if due.is_empty() {
            return;
        }
        let plan = placement::plan_restarts(&PlanInput {
            hosts: self.restart_candidates(config, me_as_target),
            requests: self.restart_requests(config, &due),
            running: self.running_vms(),
            max_concurrent_per_host: config.ha.max_concurrent_power_ons_per_host.max(1),
            hold_below: self.hold_below(config, now),
        });
        let mut events = Vec::new();
        let early_commands = self.write_intents(&plan, now, t, &mut events);
        self.note_waiting(&plan, &mut events);
        for e in events {
            if let Event::NoCapacity { vm } = e {
                // Its track is still waiting: it says whether this is a restart.
                self.start_stats(&mut cx.out.stats, vm).no_capacity += 1;
            }
            cx.out.emit(e);
        }
        for (vm, target, d, epoch, attempt) in early_commands {
            self.issue_power_on(cx, target, power_on_command(vm, d, epoch, attempt));
        }
        // Generations above assume one write per pass: flush now so they line up.
        self.flush_protected(cx, now);
    }
}

/// What `follow_up_restarts` found to do: `(vm, target, attempt, datastore)` to resend or to
/// re-stamp under this master's epoch, `(vm, target)` to give up on.
#[derive(Default)]
pub(super) struct FollowUps {
    resend: Vec<(VmId, HostId, u32, DatastoreId)>,
    restamp: Vec<(VmId, HostId, u32, DatastoreId)>,
    abandon: Vec<(VmId, HostId)>,
}

impl MasterState {
    pub(super) fn follow_ups(&self, now: Time, t: &Timings) -> FollowUps {
        let mut f = FollowUps::default();
        for (&vm, tr) in &self.tracks {
            match tr.stage {
                Stage::Issued {
                    target,
                    attempt,
                    sent_at,
                } => {
                    let v = self.verdict(target);
                    let overdue = now.since(sent_at) >= t.power_on_timeout;
                    if v == Some(Verdict::Dead) || (overdue && step_removed!(self, OneTarget)) {
                        f.abandon.push((vm, target));
                    } else if overdue && v == Some(Verdict::Alive) {
                        f.resend.push((vm, target, attempt, tr.home));
                    }
                }
                Stage::Resume { target, attempt } => match self.verdict(target) {
                    Some(Verdict::Dead) => f.abandon.push((vm, target)),
                    Some(Verdict::Alive) => f.restamp.push((vm, target, attempt, tr.home)),
                    _ => {}
                },
                _ => {}
            }
        }
        f
    }

    /// Power-on commands that went unanswered by a live target: the same attempt again, under the
    /// claim as it is now.
    pub(super) fn resend_power_ons(
        &mut self,
        resend: Vec<(VmId, HostId, u32, DatastoreId)>,
        now: Time,
        t: &Timings,
    ) -> Vec<(HostId, Message)> {
        let mut sends = Vec::new();
        for (vm, target, attempt, d) in resend {
            let Some(epoch) = self.held_valid(d, now, t) else {
                continue;
            };
            if let Some(tr) = self.tracks.get_mut(&vm) {
                tr.stage = Stage::Issued {
                    target,
                    attempt,
                    sent_at: now,
                };
            }
            sends.push((
                target,
                Message::PowerOn(PowerOnCommand {
                    vm,
                    datastore: d,
                    epoch,
                    attempt,
                }),
            ));
        }
        sends
    }

    /// Intents of a previous master whose target lives: written again under our epoch.
    pub(super) fn restamp_intents(
        &mut self,
        restamp: Vec<(VmId, HostId, u32, DatastoreId)>,
        now: Time,
        t: &Timings,
    ) {
        for (vm, target, attempt, d) in restamp {
            let Some(epoch) = self.held_valid(d, now, t) else {
                continue;
            };
            let Some(pd) = self.protected.get_mut(&d) else {
                continue;
            };
            let generation = pd.list.generation + 1;
            if let Some(e) = pd.list.vms.iter_mut().find(|e| e.vm == vm) {
                e.restart = RestartState::Intent {
                    target,
                    epoch,
                    attempt,
                };
                pd.dirty = true;
            }
            if let Some(tr) = self.tracks.get_mut(&vm) {
                tr.stage = Stage::IntentWriting {
                    target,
                    attempt,
                    generation,
                };
            }
        }
    }

    /// The target died: its lease on the VM expired with it, so another host may start it.
    pub(super) fn abandon_targets(&mut self, abandon: Vec<(VmId, HostId)>, now: Time) {
        for (vm, target) in abandon {
            if let Some(tr) = self.tracks.get_mut(&vm) {
                tr.attempts += 1;
                tr.excluded.push(target);
                tr.stage = Stage::Waiting;
                tr.next_try = now;
                let d = tr.home;
                let attempts = tr.attempts;
                if let Some(e) = self
                    .protected
                    .get_mut(&d)
                    .and_then(|pd| pd.list.vms.iter_mut().find(|e| e.vm == vm))
                {
                    e.restart = RestartState::Pending { attempts };
                }
                if let Some(pd) = self.protected.get_mut(&d) {
                    pd.dirty = true;
                }
            }
        }
    }
}

impl MasterState {
    /// A target says it runs `vm`. Its reports up to this generation do not know the VM runs
    /// there: until a newer one arrives, none of them may say it does not.
    pub(super) fn note_started(&mut self, from: HostId, vm: VmId, vm_generation: u64) {
        if let Some(p) = self.peers.get_mut(&from) {
            let newer_than_report = p.vm_gen_have.is_none_or(|g| vm_generation >= g);
            p.vm_gen_reported = p.vm_gen_reported.max(vm_generation);
            if newer_than_report {
                self.running.entry(vm).or_default().insert(from);
            }
        }
    }

    /// A restart is over: the VM lives on `on`, powered as `desired`.
    pub(super) fn restart_ended(
        &mut self,
        vm: VmId,
        d: DatastoreId,
        on: HostId,
        desired: DesiredPower,
    ) {
        self.tracks.remove(&vm);
        if let Some(pd) = self.protected.get_mut(&d) {
            if let Some(e) = pd.list.vms.iter_mut().find(|e| e.vm == vm) {
                e.restart = RestartState::Idle;
                e.last_host = Some(on);
                e.desired = desired;
            }
            pd.dirty = true;
        }
    }

    /// A power-on failed on `on`: wait for the next delay of the retry schedule and try another
    /// host, or give up for now once the schedule is used up. Returns the attempts so far and
    /// whether it gave up.
    pub(super) fn restart_failed(
        &mut self,
        vm: VmId,
        on: HostId,
        retry: &[u64],
        now: Time,
    ) -> (u32, bool) {
        let Some((d, attempts)) = self.tracks.get(&vm).map(|tr| (tr.home, tr.attempts + 1)) else {
            return (0, false);
        };
        let gave_up = attempts as usize >= retry.len().max(1);
        let delay = if gave_up {
            retry.last().copied().unwrap_or(60_000).max(60_000)
        } else {
            retry.get(attempts as usize).copied().unwrap_or(0)
        };
        if let Some(tr) = self.tracks.get_mut(&vm) {
            tr.attempts = attempts;
            tr.stage = Stage::Waiting;
            tr.next_try = now + Duration::from_millis(delay);
            tr.excluded.push(on);
            tr.preferred = None;
            tr.reported_waiting = false;
            if gave_up {
                // Start over with every host on the next round: the failure may have been theirs.
                tr.excluded.clear();
            }
        }
        if let Some(pd) = self.protected.get_mut(&d) {
            if let Some(e) = pd.list.vms.iter_mut().find(|e| e.vm == vm) {
                e.restart = if gave_up {
                    RestartState::Failed { attempts }
                } else {
                    RestartState::Pending { attempts }
                };
            }
            pd.dirty = true;
        }
        (attempts, gave_up)
    }
}

/// The master's own host as a restart target (its verdict is not in its peer table).
pub(super) struct TargetSelf {
    host: HostId,
    reachable: BTreeSet<DatastoreId>,
    maintenance: bool,
}

/// A restart that the master has decided but not yet sent: `(vm, target, datastore, epoch, attempt)`.
pub(super) type EarlyCommand = (VmId, HostId, DatastoreId, Epoch, u32);

impl MasterState {
    /// Whether `d`'s protected list records exactly this intent and we hold `d`'s claim at its
    /// epoch.
    pub(super) fn intent_recorded(
        &self,
        vm: VmId,
        (target, attempt): (HostId, u32),
        d: DatastoreId,
        epoch: Epoch,
    ) -> bool {
        let held = self
            .claims
            .get(&d)
            .and_then(|c| c.held)
            .is_some_and(|h| h.epoch == epoch);
        let recorded = self.protected.get(&d).is_some_and(|pd| {
            pd.list.vms.iter().any(|e| {
                e.vm == vm
                    && e.restart
                        == RestartState::Intent {
                            target,
                            epoch,
                            attempt,
                        }
            })
        });
        held && recorded
    }

    /// Waiting restarts whose time has come, on datastores whose claim is settled.
    pub(super) fn due_restarts(&self, now: Time, t: &Timings) -> Vec<VmId> {
        self.tracks
            .iter()
            .filter(|(vm, tr)| {
                tr.stage == Stage::Waiting
                    && tr.next_try <= now
                    && self.settled(tr.home, now, t).is_some()
                    && self.previous_host_let_go(**vm, tr, now, t)
            })
            .map(|(&vm, _)| vm)
            .collect()
    }

    /// Whether the host a restart takes the VM from still lets it go, now, as the intent is about
    /// to be written: a dead host's lease must have lapsed **on the VM's own datastore** (its dead
    /// verdict may rest on other datastores while it still renews this one, which the master could
    /// not read then), and a host that is heard of again (partitioned, unreachable) holds the
    /// restart back until it reports.
    fn previous_host_let_go(&self, vm: VmId, tr: &RestartTrack, now: Time, t: &Timings) -> bool {
        let Some(h) = tr.from else {
            return true;
        };
        match self.verdict(h) {
            Some(Verdict::Dead) => {
                let skip_wait = step_removed!(self, LeaseWait);
                let skip_home = step_removed!(self, HomeLeaseCheck);
                skip_wait || skip_home || self.lease_lapsed_on(h, tr.home, now, t)
            }
            Some(Verdict::Isolated) => self.powered_off_by_isolation(h, tr.home, vm),
            Some(Verdict::Alive) | None => true,
            Some(Verdict::Unreachable | Verdict::Partitioned) => false,
        }
    }

    /// Hosts that can take VMs now, with what they run and what is on its way to them.
    pub(super) fn restart_candidates(
        &self,
        config: &ClusterView,
        me: &TargetSelf,
    ) -> Vec<HostCandidate> {
        let mut in_flight: BTreeMap<HostId, (u32, Resources)> = BTreeMap::new();
        for (vm, tr) in &self.tracks {
            if let Stage::IntentWriting { target, .. }
            | Stage::Issued { target, .. }
            | Stage::Resume { target, .. } = tr.stage
            {
                let r = config.vm(*vm).map(|c| c.reservation).unwrap_or_default();
                let e = in_flight.entry(target).or_default();
                e.0 += 1;
                e.1 = add(e.1, r);
            }
        }
        let mut used: BTreeMap<HostId, (Resources, u32, Vec<String>)> = BTreeMap::new();
        for (vm, on) in &self.running {
            for h in on {
                let cfg = config.vm(*vm);
                let e = used.entry(*h).or_default();
                e.0 = add(e.0, cfg.map(|c| c.reservation).unwrap_or_default());
                e.1 += 1;
                if let Some(g) = cfg.and_then(|c| c.anti_affinity_group.clone()) {
                    e.2.push(g);
                }
            }
        }
        let mut hosts = Vec::new();
        for hc in &config.hosts {
            let (alive, maintenance, reachable) = if hc.id == me.host {
                (true, me.maintenance, me.reachable.clone())
            } else {
                match self.peers.get(&hc.id) {
                    Some(p) if p.verdict == Some(Verdict::Alive) => {
                        (true, p.maintenance, p.reachable.iter().copied().collect())
                    }
                    _ => (false, true, BTreeSet::new()),
                }
            };
            if !alive || maintenance || hc.maintenance {
                continue;
            }
            let (u, count, groups) = used.get(&hc.id).cloned().unwrap_or_default();
            let (pending, pr) = in_flight.get(&hc.id).copied().unwrap_or_default();
            hosts.push(HostCandidate {
                host: hc.id,
                capacity: hc.capacity,
                used: add(u, pr),
                datastores: reachable,
                failover_host: config.ha.failover_hosts.contains(&hc.id),
                powering_on: pending,
                groups,
                vm_count: count,
            });
        }
        hosts
    }

    pub(super) fn restart_requests(
        &self,
        config: &ClusterView,
        due: &[VmId],
    ) -> Vec<RestartRequest> {
        due.iter()
            .filter_map(|vm| {
                let c = config.vm(*vm)?;
                let tr = &self.tracks[vm];
                Some(RestartRequest {
                    vm: *vm,
                    home: tr.home,
                    reservation: c.reservation,
                    priority: c.ha.priority,
                    depends_on: c.depends_on.clone(),
                    anti_affinity_group: c.anti_affinity_group.clone(),
                    preferred_host: tr.preferred,
                    excluded_hosts: tr.excluded.clone(),
                })
            })
            .collect()
    }

    /// Orchestrated restarts: the highest priority still starting (within the configured wait),
    /// below which nothing is placed yet.
    pub(super) fn hold_below(&self, config: &ClusterView, now: Time) -> Option<RestartPriority> {
        config.ha.orchestrated_wait_ms.and_then(|wait| {
            self.tracks
                .iter()
                .filter(|(_, tr)| match tr.stage {
                    Stage::Issued { sent_at, .. } => {
                        now.since(sent_at) < Duration::from_millis(wait)
                    }
                    Stage::IntentWriting { .. } => true,
                    _ => false,
                })
                .filter_map(|(vm, _)| config.vm(*vm).map(|c| c.ha.priority))
                .max()
        })
    }

    pub(super) fn running_vms(&self) -> BTreeSet<VmId> {
        self.running
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(&v, _)| v)
            .collect()
    }

    /// Write each placement's intent into its protected list (the write-ahead step). Returns the
    /// commands to send at once, which exist only with the write-ahead step removed.
    pub(super) fn write_intents(
        &mut self,
        plan: &RestartPlan,
        now: Time,
        t: &Timings,
        events: &mut Vec<Event>,
    ) -> Vec<EarlyCommand> {
        let mut early_commands = Vec::new();
        for p in &plan.placements {
            let Some(tr) = self.tracks.get(&p.vm) else {
                continue;
            };
            let d = tr.home;
            let Some(epoch) = self.settled(d, now, t) else {
                continue;
            };
            let attempt = tr.attempts + 1;
            let Some(pd) = self.protected.get_mut(&d) else {
                continue;
            };
            let generation = pd.list.generation + 1;
            if let Some(e) = pd.list.vms.iter_mut().find(|e| e.vm == p.vm) {
                e.restart = RestartState::Intent {
                    target: p.host,
                    epoch,
                    attempt,
                };
            } else {
                continue;
            }
            pd.dirty = true;
            let early = step_removed!(self, WriteAheadIntent);
            if let Some(tr) = self.tracks.get_mut(&p.vm) {
                tr.stage = if early {
                    Stage::Issued {
                        target: p.host,
                        attempt,
                        sent_at: now,
                    }
                } else {
                    Stage::IntentWriting {
                        target: p.host,
                        attempt,
                        generation,
                    }
                };
            }
            if early {
                early_commands.push((p.vm, p.host, d, epoch, attempt));
            }
            if let Some(group) = p.broke_anti_affinity.clone() {
                events.push(Event::AntiAffinityBroken {
                    vm: p.vm,
                    host: p.host,
                    group,
                });
            }
        }
        early_commands
    }

    /// Restarts the plan could not place: reported once each.
    pub(super) fn note_waiting(&mut self, plan: &RestartPlan, events: &mut Vec<Event>) {
        for (vm, why) in &plan.waiting {
            if let Some(tr) = self.tracks.get_mut(vm)
                && !tr.reported_waiting
            {
                tr.reported_waiting = true;
                if *why == WaitReason::NoCapacity {
                    events.push(Event::NoCapacity { vm: *vm });
                }
            }
        }
    }
}

pub(super) fn add(a: Resources, b: Resources) -> Resources {
    Resources {
        cpu_mhz: a.cpu_mhz.saturating_add(b.cpu_mhz),
        memory_mb: a.memory_mb.saturating_add(b.memory_mb),
    }
}

/// A host whose complete, current report says an operator (or the guest) stopped `vm`, or no
/// longer lists a VM an earlier report of it showed stopped so: one we hear, or one that died after
/// that report (its death does not undo the stop, which may not have reached a protected list yet).
pub(super) fn stopped_by_user_on(m: &MasterState, vm: VmId) -> Option<HostId> {
    m.peers.iter().find_map(|(&h, p)| {
        let state = reported_state(Some(p), vm);
        let stopped = state == Some(Some(VmRunState::StoppedByUser))
            || (state == Some(None) && p.user_stopped_gone.contains(&vm));
        let heard = matches!(m.verdict(h), Some(Verdict::Alive | Verdict::Dead));
        (heard && stopped).then_some(h)
    })
}

pub(super) fn reported_state(p: Option<&Peer>, vm: VmId) -> Option<Option<VmRunState>> {
    let p = p?;
    // Only a complete, current report says what is NOT there (generation 0: not inventoried yet).
    if p.vm_gen_reported == 0 || p.vm_gen_have != Some(p.vm_gen_reported) {
        return None;
    }
    Some(p.vms.get(&vm).copied())
}

pub(super) enum Decision {
    Restart {
        reason: &'static str,
        same_host: bool,
    },
    DesiredOff,
    Wait,
}

/// Whether a protected VM last seen on a host must be restarted, from the host's verdict and what it
/// reports. `state`: None = no complete report; Some(None) = reported absent.
/// `stopped_by_isolation`: the host recorded that its isolation response powered the VM off.
pub(super) fn restart_decision(
    verdict: Option<Verdict>,
    state: Option<Option<VmRunState>>,
    stopped_by_isolation: bool,
) -> Decision {
    match verdict {
        Some(Verdict::Alive) => match state {
            Some(Some(VmRunState::Crashed)) => Decision::Restart {
                reason: "VM crashed",
                same_host: true,
            },
            Some(Some(VmRunState::StoppedByUser)) => Decision::DesiredOff,
            Some(Some(VmRunState::StoppedByAgent)) => Decision::Restart {
                reason: "stopped by its host's agent (fence or isolation)",
                same_host: false,
            },
            Some(None) => Decision::Restart {
                reason: "host runs without it (host restarted)",
                same_host: false,
            },
            _ => Decision::Wait,
        },
        // Its last complete report said an operator stopped it: its host's death does not undo
        // that (the stop may never have reached the protected list, the datastore being away).
        Some(Verdict::Dead) if state == Some(Some(VmRunState::StoppedByUser)) => {
            Decision::DesiredOff
        }
        Some(Verdict::Dead) => Decision::Restart {
            reason: "host dead",
            same_host: false,
        },
        Some(Verdict::Isolated) => {
            if stopped_by_isolation {
                Decision::Restart {
                    reason: "powered off by its isolated host",
                    same_host: false,
                }
            } else {
                Decision::Wait
            }
        }
        _ => Decision::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heartbeat_fs::records::VmConfig;

    fn vm(restart_policy: RestartPolicy, priority: RestartPriority) -> VmConfig {
        let mut v = VmConfig::new(VmId(1), DatastoreId(1)).with_priority(priority);
        v.ha.restart_policy = restart_policy;
        v
    }

    #[test]
    fn restart_policy_and_priority_decide_what_ha_restarts() {
        use RestartPolicy::{Always, HostFailureOnly, Never};
        // (policy, priority, after a host failure, after a failure on a live host)
        let cases = [
            (Always, RestartPriority::Medium, true, true),
            (HostFailureOnly, RestartPriority::Medium, true, false),
            (Never, RestartPriority::Medium, false, false),
            (Always, RestartPriority::Disabled, false, false),
            (HostFailureOnly, RestartPriority::Disabled, false, false),
            (Always, RestartPriority::Lowest, true, true),
        ];
        for (policy, priority, host_failure, same_host) in cases {
            let cfg = vm(policy, priority);
            assert_eq!(
                restart_allowed(&cfg, false),
                host_failure,
                "{policy:?} at {priority:?} after a host failure"
            );
            assert_eq!(
                restart_allowed(&cfg, true),
                same_host,
                "{policy:?} at {priority:?} on a live host"
            );
        }
    }
}
