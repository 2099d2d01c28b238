//! The master's protected-VM lists: reading them when a claim is taken, writing them under the
//! claim, and keeping them in step with the configuration.

use super::*;

impl MasterState {
    pub(super) fn on_protected_read(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Time,
        d: DatastoreId,
        list: Option<ProtectedVmList>,
    ) {
        let me = cx.settings.host;
        let cluster = cx.settings.cluster;
        let Some(epoch) = self.claims.get(&d).and_then(|c| c.held).map(|h| h.epoch) else {
            return;
        };
        let mut list = list
            .filter(|l| l.cluster == cluster && l.datastore == d)
            .unwrap_or(ProtectedVmList {
                cluster,
                datastore: d,
                master: me,
                epoch,
                generation: 0,
                vms: Vec::new(),
            });
        list.master = me;
        list.epoch = epoch;
        // Resume what a previous master left: intents go back to their target, never elsewhere
        // while that target may still start them.
        for e in &list.vms {
            if let RestartState::Intent {
                target, attempt, ..
            } = e.restart
            {
                self.tracks.insert(
                    e.vm,
                    RestartTrack {
                        home: d,
                        attempts: attempt.saturating_sub(1),
                        next_try: now,
                        from: e.last_host,
                        preferred: None,
                        excluded: Vec::new(),
                        stage: Stage::Resume { target, attempt },
                        reported_waiting: false,
                    },
                );
            }
        }
        let generation = list.generation;
        self.protected.insert(
            d,
            ProtectedDs {
                list,
                loaded: true,
                dirty: true,
                write_in_flight: None,
                durable: generation,
            },
        );
        let pd = self.protected.get_mut(&d).expect("inserted");
        let config_vms: Vec<&heartbeat_fs::records::VmConfig> = cx
            .config
            .vms
            .iter()
            .filter(|v| v.home == d && v.protected)
            .collect();
        let cleared = sync_protected_with_config(pd, &config_vms);
        for e in &pd.list.vms {
            if !e.recent_restarts.is_empty() {
                let log = RestartLog::from_record(now, &e.recent_restarts);
                self.restart_logs.insert(e.vm, log);
            }
        }
        self.reconcile_due = true;
        for vm in &cleared {
            self.restart_logs.remove(vm);
        }
        for vm in cleared {
            cx.out.emit(Event::RestartLimitCleared { vm });
        }
    }

    pub(super) fn on_protected_written(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Time,
        d: DatastoreId,
        generation: u64,
        result: Result<DsReply, DsError>,
    ) {
        let Some(pd) = self.protected.get_mut(&d) else {
            return;
        };
        pd.write_in_flight = None;
        match result {
            Ok(_) => {
                pd.durable = pd.durable.max(generation);
            }
            Err(DsError::ClaimMismatch { .. }) => {
                self.lose_claim(cx, d, "protected list write found another claim");
                return;
            }
            Err(_) => {
                pd.dirty = true;
                return;
            }
        }
        // Intents now on disk: their commands may go out.
        let mut ready: Vec<(VmId, HostId, u32)> = self
            .tracks
            .iter()
            .filter_map(|(&vm, t)| match t.stage {
                Stage::IntentWriting {
                    target,
                    attempt,
                    generation: g,
                } if t.home == d && g <= generation => Some((vm, target, attempt)),
                _ => None,
            })
            .collect();
        // Commands go out in placement order: priority first, then VM id.
        ready.sort_by_key(|(vm, _, _)| {
            let prio = cx.config.vm(*vm).map(|c| c.ha.priority).unwrap_or_default();
            (std::cmp::Reverse(prio), *vm)
        });
        let Some(epoch) = self.claims.get(&d).and_then(|c| c.held).map(|h| h.epoch) else {
            return;
        };
        for (vm, target, attempt) in ready {
            if let Some(t) = self.tracks.get_mut(&vm) {
                t.stage = Stage::Issued {
                    target,
                    attempt,
                    sent_at: now,
                };
            }
            self.issue_power_on(cx, target, power_on_command(vm, d, epoch, attempt));
        }
    }

    pub(super) fn flush_protected(&mut self, cx: &mut Ctx<'_>, now: Time) {
        let mut writes = Vec::new();
        for (&d, pd) in self.protected.iter_mut() {
            if !pd.loaded || !pd.dirty || pd.write_in_flight.is_some() {
                continue;
            }
            pd.dirty = false;
            pd.list.generation += 1;
            pd.write_in_flight = Some(pd.list.generation);
            for e in pd.list.vms.iter_mut() {
                e.recent_restarts = self
                    .restart_logs
                    .get(&e.vm)
                    .map(|log| log.to_record(now))
                    .unwrap_or_default();
            }
            writes.push((d, pd.list.clone()));
        }
        for (d, list) in writes {
            if self.held_valid(d, now, cx.t).is_none() {
                if let Some(pd) = self.protected.get_mut(&d) {
                    pd.write_in_flight = None;
                    pd.dirty = true;
                }
                continue;
            }
            let generation = list.generation;
            cx.out.ds_request(
                now,
                d,
                DsOp::WriteProtectedList(list),
                DsPurpose::ProtectedWrite { generation },
            );
        }
    }
}

/// Bring a protected list in line with the configuration: add newly protected VMs, drop VMs no longer
/// protected, refresh HA settings. Restart state and last host are kept, except that a VM an
/// operator cleared since the entry was written forgets its counted restarts and its failed state.
/// Returns the VMs cleared.
pub(super) fn sync_protected_with_config(
    pd: &mut ProtectedDs,
    config_vms: &[&heartbeat_fs::records::VmConfig],
) -> Vec<VmId> {
    let wanted: BTreeMap<VmId, &heartbeat_fs::records::VmConfig> =
        config_vms.iter().map(|v| (v.id, *v)).collect();
    pd.list.vms.retain(|e| wanted.contains_key(&e.vm));
    let mut cleared = Vec::new();
    for e in pd.list.vms.iter_mut() {
        let c = wanted[&e.vm];
        // The entry keeps the highest clear it has acted on: a master whose configuration is
        // older than the list's writer's must not let the same clear act twice later.
        let honoured = e.settings.restart_cleared;
        if c.ha.restart_cleared > honoured {
            e.recent_restarts.clear();
            if let RestartState::LimitReached { .. } = e.restart {
                e.restart = RestartState::Idle;
            }
            cleared.push(e.vm);
        }
        // An operator's start or stop, acted on once (its generation, like a clear's).
        let done = e.settings.power_request.map_or(0, |r| r.generation);
        let mut power_request = e.settings.power_request;
        if let Some(r) = c.ha.power_request
            && r.generation > done
        {
            e.desired = r.power;
            e.pending_power = Some(r.power);
            power_request = Some(r);
        }
        e.settings = c.ha.clone();
        e.settings.restart_cleared = honoured.max(c.ha.restart_cleared);
        e.settings.power_request = power_request;
        e.home = c.home;
    }
    let have: BTreeSet<VmId> = pd.list.vms.iter().map(|e| e.vm).collect();
    for (vm, c) in wanted {
        if !have.contains(&vm) {
            pd.list.vms.push(ProtectedVm {
                vm,
                home: c.home,
                last_host: None,
                desired: DesiredPower::On,
                settings: c.ha.clone(),
                restart: RestartState::Idle,
                recent_restarts: Vec::new(),
                pending_power: None,
            });
        }
    }
    pd.list.vms.sort_by_key(|e| e.vm);
    pd.dirty = true;
    cleared
}
