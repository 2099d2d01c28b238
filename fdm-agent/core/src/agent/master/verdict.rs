//! The master's verdict on every other host: what its datastore heartbeat records say, the verdict,
//! a pure function of one peer and what the master knows, and the pass that judges every host.

use super::*;

/// What the master takes from one host's datastore heartbeat record (all zero: the host mounts the
/// datastore but never wrote there).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct HeartbeatSeen {
    pub(super) incarnation: u64,
    pub(super) sequence: u64,
    pub(super) flags: HostFlags,
    pub(super) power_on_generation: u64,
}

/// One host's heartbeat record as a read returned it. `(issued, now)`: the read's request and reply
/// times. A new value counts from the reply (it was surely there by then), an unchanged one from the
/// request (it was surely there no later): so that a slow read can only delay a "stopped", never
/// hasten it.
pub(super) fn observe(
    p: &mut Peer,
    d: DatastoreId,
    (issued, now): (Time, Time),
    seen: HeartbeatSeen,
) {
    let HeartbeatSeen {
        incarnation,
        sequence,
        flags,
        power_on_generation,
    } = seen;
    match p.ds.get_mut(&d) {
        Some(o) => {
            let have = (o.incarnation, o.sequence);
            if (incarnation, sequence) < have {
                // An older record than one already seen (replies out of order): old news.
                return;
            }
            if (incarnation, sequence) != have {
                o.incarnation = incarnation;
                o.sequence = sequence;
                o.last_advance = now;
            } else {
                o.last_clean_read = o.last_clean_read.max(issued);
            }
            o.flags = flags;
            o.power_on_generation = power_on_generation;
        }
        None => {
            p.ds.insert(
                d,
                DsObs {
                    incarnation,
                    sequence,
                    last_advance: now,
                    last_clean_read: now,
                    flags,
                    power_on_generation,
                },
            );
        }
    }
}

/// What the master knows that every host's verdict depends on, gathered once per evaluation.
pub(super) struct VerdictContext<'a> {
    pub(super) now: Time,
    pub(super) t: &'a Timings,
    /// The lease-wait step removed (fault knobs only).
    pub(super) skip_lease_wait: bool,
    pub(super) config: &'a ClusterView,
    /// The datastores this master mounts.
    pub(super) mounted: &'a BTreeSet<DatastoreId>,
    /// When each datastore was last read successfully.
    pub(super) ds_read_ok: &'a BTreeMap<DatastoreId, Time>,
    /// How recent a successful read must be to count as evidence.
    pub(super) read_fresh: Duration,
    /// Since when this host is master.
    pub(super) master_since: Time,
}

/// The verdict on one host and the reason, from the master's observations (the rules: `docs/protocol.md`,
/// "The master's verdicts on each host").
pub(super) fn judge(h: HostId, p: &Peer, ctx: &VerdictContext<'_>) -> (Verdict, &'static str) {
    let &VerdictContext {
        now,
        t,
        skip_lease_wait,
        master_since,
        ..
    } = ctx;
    if p.last_net
        .is_some_and(|t0| now.since(t0) < t.host_unreachable_after)
    {
        return (Verdict::Alive, "network heartbeat received");
    }
    if p.last_net.is_none() && now.since(master_since) < t.host_unreachable_after {
        return (p.verdict.unwrap_or(Verdict::Unreachable), "not heard yet");
    }
    let shared = shared_fresh_datastores(h, ctx);
    if shared.is_empty() {
        return (Verdict::Unreachable, "no shared datastore to confirm");
    }
    let evidence = datastore_evidence(p, &shared, ctx);
    if evidence.advancing {
        return if evidence.isolated {
            (
                Verdict::Isolated,
                "datastore heartbeat advancing, host reports isolation",
            )
        } else {
            (Verdict::Partitioned, "datastore heartbeat advancing")
        };
    }
    if !evidence.all_stopped {
        return (
            Verdict::Unreachable,
            "datastore heartbeat not yet confirmed stopped",
        );
    }
    // Its network lease from our acknowledgements ran from a heartbeat we received by last_net.
    if !skip_lease_wait
        && p.last_net
            .is_some_and(|t0| now.since(t0) < t.stretch(t.net_lease))
    {
        return (Verdict::Unreachable, "network lease not yet expired");
    }
    probe_verdict(p, now)
}

impl MasterState {
    /// Whether `h`'s datastore lease on the VMs of `d` has lapsed as seen on `d` itself: a recent
    /// clean read of its sector there, at least a stretched lease after its last advance.
    pub(super) fn lease_lapsed_on(
        &self,
        h: HostId,
        d: DatastoreId,
        now: Time,
        t: &Timings,
    ) -> bool {
        let read_fresh = t
            .ds_read_interval
            .saturating_mul(4)
            .saturating_add(t.datastore_call_deadline);
        self.peers
            .get(&h)
            .and_then(|p| p.ds.get(&d))
            .is_some_and(|o| {
                now.since(o.last_clean_read) < read_fresh
                    && o.last_clean_read.since(o.last_advance) >= t.stretch(t.ds_lease)
            })
    }
}

/// Datastores both of us use, that we read successfully of late.
pub(super) fn shared_fresh_datastores(h: HostId, ctx: &VerdictContext<'_>) -> Vec<DatastoreId> {
    ctx.config
        .datastores_of(h)
        .iter()
        .copied()
        .filter(|d| ctx.mounted.contains(d))
        .filter(|d| {
            ctx.ds_read_ok
                .get(d)
                .is_some_and(|t0| ctx.now.since(*t0) < ctx.read_fresh)
        })
        .collect()
}

/// What a host's datastore heartbeats say, over the datastores both of us read.
pub(super) struct DatastoreEvidence {
    /// Advanced since the network went quiet, within a lease: alive somewhere.
    advancing: bool,
    /// One that advanced carries the host's own isolation flag.
    isolated: bool,
    /// Every one is positively stopped: a clean read a lease after its last advance.
    all_stopped: bool,
}

pub(super) fn datastore_evidence(
    p: &Peer,
    shared: &[DatastoreId],
    ctx: &VerdictContext<'_>,
) -> DatastoreEvidence {
    let (now, t, skip_lease_wait) = (ctx.now, ctx.t, ctx.skip_lease_wait);
    let lease = t.stretch(t.ds_lease);
    let mut e = DatastoreEvidence {
        advancing: false,
        isolated: false,
        all_stopped: true,
    };
    for d in shared {
        match p.ds.get(d) {
            None => {
                // Not read yet: no evidence either way.
                e.all_stopped = false;
            }
            Some(o) => {
                // Advancing means alive elsewhere only if it advanced after the network went
                // quiet, by more than one write and one read: a dead host's last write, read late,
                // must not look like a partitioned host for a lease time.
                let quiet_since =
                    p.last_net.unwrap_or(Time::ZERO) + t.ds_heartbeat_interval + t.ds_read_interval;
                if now.since(o.last_advance) < lease
                    && o.last_advance > quiet_since
                    && !skip_lease_wait
                {
                    e.advancing = true;
                    e.isolated |= o.flags.contains(HostFlags::ISOLATED);
                }
                // Stopped only on positive evidence: a clean read, a lease after the last advance.
                if o.last_clean_read.since(o.last_advance) < lease && !skip_lease_wait {
                    e.all_stopped = false;
                }
            }
        }
    }
    e
}

/// Both heartbeats stopped and both leases over: dead only if a fresh liveness probe, sent after
/// we last heard the host, went unanswered.
pub(super) fn probe_verdict(p: &Peer, now: Time) -> (Verdict, &'static str) {
    match p.probe {
        Some((at, answered))
            if at >= p.last_net.unwrap_or(Time::ZERO) && now.since(at) < PROBE_REFRESH * 2 =>
        {
            if answered {
                (
                    Verdict::Unreachable,
                    "host answers the liveness probe (agent down?)",
                )
            } else {
                (
                    Verdict::Dead,
                    "network and datastore heartbeats stopped, leases expired, no probe answer",
                )
            }
        }
        _ => {
            if p.verdict == Some(Verdict::Dead) {
                (Verdict::Dead, "still dead")
            } else {
                (Verdict::Unreachable, "probing")
            }
        }
    }
}

impl MasterState {
    pub(super) fn update_verdicts(&mut self, cx: &mut Ctx<'_>, now: Time) {
        let t = cx.t;
        let skip_lease_wait = step_removed!(self, LeaseWait);
        let mounted: BTreeSet<DatastoreId> = cx.mounted.keys().copied().collect();
        let read_fresh = t
            .ds_read_interval
            .saturating_mul(4)
            .saturating_add(t.datastore_call_deadline);
        let mut changes: Vec<(HostId, Verdict, &'static str)> = Vec::new();
        let ctx = VerdictContext {
            now,
            t,
            skip_lease_wait,
            config: cx.config,
            mounted: &mounted,
            ds_read_ok: &self.ds_read_ok,
            read_fresh,
            master_since: self.since,
        };
        for (&h, p) in self.peers.iter_mut() {
            let (v, why) = judge(h, p, &ctx);
            // Probe a silent host early and keep the answer fresh, so that the probe never delays
            // a dead verdict once the leases have run out.
            let stale = p.probe.is_none_or(|(at, _)| now.since(at) >= PROBE_REFRESH);
            let silent = p
                .last_net
                .is_none_or(|t0| now.since(t0) >= t.host_unreachable_after / 2);
            if v != Verdict::Alive && silent && stale && !p.probe_in_flight {
                p.probe_in_flight = true;
                cx.out.outputs.push_back(Output::Probe { host: h });
            }
            if p.verdict != Some(v) {
                changes.push((h, v, why));
            }
            // Hosts we cannot hear: keep their power-on lists fresh, they tell isolation apart.
            if v != Verdict::Alive {
                for (&d, o) in &p.ds {
                    let known = p.power_on_lists.get(&d).map(|l| l.generation);
                    if known != Some(o.power_on_generation) {
                        p.lists_wanted.insert(d);
                    }
                }
            }
        }
        for (h, v, why) in changes {
            self.set_verdict(cx, h, v, why);
        }
    }
}
