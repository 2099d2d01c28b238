//! The agent's metrics endpoint (`metrics = "ADDR"` in the agent file), through the Prometheus
//! project's `prometheus-client`: `GET /metrics` in the Prometheus text format, or OpenMetrics when
//! the scraper asks for it (Prometheus does); `GET /healthz` for the event loop's liveness; 404 for
//! any other path and 405 for another method. Every metric is listed in `docs/operations.md`.
//!
//! Two kinds of source. What the core knows (its role, its verdicts, its counters) is copied into
//! a [`View`] each time the event loop publishes its status and encoded from that copy at scrape
//! time: one scrape shows one moment of the core, and a host that left the configuration leaves no
//! stale series behind. What only the runtime sees (how long each datastore call took, whether the
//! last heartbeat write worked, verdict transitions as they are announced) lives in metrics the
//! loop updates as it happens. The core stays without IO: it is never asked for a clock.

use crate::core::{Agent, AgentStats, Event, HostView, Role, StartStats, StatusSnapshot, Verdict};
use crate::wire::WireError;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use heartbeat_fs::ops::{DsCompletion, DsError, DsOp, DsRequest, RequestId};
use heartbeat_fs::{HostId, VmId};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The `Content-Type` of an OpenMetrics answer.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bucket bounds of the datastore call histogram, seconds. A healthy local or NFS write with its
/// `fsync` takes a few milliseconds; the default call deadline is 1.5 s and a lease runs out
/// after a few seconds, so the upper buckets tell a slow datastore from one about to be lost.
const DS_CALL_BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The event loop publishes several times a second; a copy older than this means it is stuck
/// (a handler that blocks, a busy loop), which is what `/healthz` is there to tell.
const LOOP_STALL: Duration = Duration::from_secs(5);

/// Datastore calls whose completion never came are forgotten after this long (the executor
/// answers every call by its deadline, so only a bug could leave one; the map must not grow).
const FORGET_CALL: Duration = Duration::from_secs(600);

/// The event loop's own counters, as [`super::LoopStats`] holds them at publication.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct LoopView {
    pub receive_buffer: u64,
    pub kernel_drops: u64,
    pub full_receive_turns: u64,
    pub receive_errors: u64,
    pub late_timers: u64,
    pub latest_timer: Duration,
}

/// What the core showed at the last publication.
#[derive(Debug, Clone, Default)]
pub(super) struct View {
    pub role: Option<Role>,
    pub hosts: Vec<HostView>,
    pub vms_failed: u64,
    pub vms_protected: u64,
    pub ha_paused: bool,
    pub config_generation: u64,
    pub stats: AgentStats,
    pub event_loop: LoopView,
    /// When it was taken: the liveness of the loop.
    pub at: Option<Instant>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DsCallLabels {
    datastore: u32,
    op: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DsErrorLabels {
    datastore: u32,
    error: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatastoreLabels {
    datastore: u32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    host: u32,
    from: &'static str,
    to: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    /// `true` in a test build (fault knobs compiled in, all off): never in production.
    fault_knobs: bool,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

type HistogramFamily = Family<DsCallLabels, Histogram, fn() -> Histogram>;

/// Seconds from a host's last heartbeat to its dead verdict: the defaults take a few seconds
/// (the verdict after 1.5 s, then the datastore leases must run out); longer means slow storage
/// or long leases.
const DETECTION_BUCKETS: [f64; 11] = [
    1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0,
];

/// Seconds from a restart's decision to the VM running: a VM's boot time, retries after the
/// configured delays, a wait for capacity.
const RESTART_BUCKETS: [f64; 11] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

fn restart_histogram() -> Histogram {
    Histogram::new(RESTART_BUCKETS)
}

fn ds_call_histogram() -> Histogram {
    Histogram::new(DS_CALL_BUCKETS)
}

/// The agent's metrics: shared by the event loop (which updates them) and the HTTP task (which
/// encodes them).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    view: Arc<Mutex<View>>,
    ds_calls: HistogramFamily,
    ds_failed: Family<DsErrorLabels, Counter>,
    ds_up: Family<DatastoreLabels, Gauge>,
    verdict_transitions: Family<TransitionLabels, Counter>,
    detection: Histogram,
    restart_duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    /// VMs whose restart (or first placement) was decided and that do not run yet: when, and
    /// whether it is a restart.
    restarts_pending: Mutex<HashMap<VmId, (Instant, bool)>>,
}

fn count<T>(it: impl Iterator<Item = T>) -> u64 {
    u64::try_from(it.count()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only ever replaced whole or counted into: still fit to serve after a panic elsewhere.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        registry.register(
            "fdm_build",
            "The agent's build: its version, and whether it is a test build with fault knobs compiled in",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                fault_knobs: crate::core::FAULT_KNOBS_COMPILED,
            }),
        );
        let view = Arc::new(Mutex::new(View::default()));
        registry.register_collector(Box::new(CoreCollector { view: view.clone() }));
        let ds_calls =
            HistogramFamily::new_with_constructor(ds_call_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "fdm_datastore_call_duration",
            "Datastore calls of this host by datastore and operation, from submission until the answer (a timed-out call counts with the deadline it ran into)",
            Unit::Seconds,
            ds_calls.clone(),
        );
        let ds_failed = Family::<DsErrorLabels, Counter>::default();
        registry.register(
            "fdm_datastore_ops_failed",
            "Datastore calls of this host that failed, by datastore and error",
            ds_failed.clone(),
        );
        let ds_up = Family::<DatastoreLabels, Gauge>::default();
        registry.register(
            "fdm_datastore_up",
            "1 when this host's last heartbeat write to the datastore succeeded, 0 when it failed (absent until the first write answered)",
            ds_up.clone(),
        );
        let verdict_transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "fdm_host_verdict_transitions",
            "Changes of this master's verdict on a host, by host and verdicts before and after",
            verdict_transitions.clone(),
        );
        let detection = Histogram::new(DETECTION_BUCKETS);
        registry.register_with_unit(
            "fdm_host_failure_detection",
            "For each host this master declared dead: the time from the last network heartbeat it heard from the host to the verdict (the failure itself came at most one heartbeat interval after that heartbeat)",
            Unit::Seconds,
            detection.clone(),
        );
        let restart_duration =
            Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                restart_histogram as fn() -> Histogram,
            );
        registry.register_with_unit(
            "fdm_restart_duration",
            "From this master's decision to restart (or first place) a VM to the target's answer that it runs, by kind (restart or placement)",
            Unit::Seconds,
            restart_duration.clone(),
        );
        Metrics {
            registry,
            view,
            ds_calls,
            ds_failed,
            ds_up,
            verdict_transitions,
            detection,
            restart_duration,
            restarts_pending: Mutex::new(HashMap::new()),
        }
    }

    /// A new copy of the core's state, taken by the event loop.
    pub(super) fn publish(&self, view: View) {
        *lock(&self.view) = view;
    }

    /// Copy what the core and the event loop show now (called where the loop publishes its
    /// status).
    pub(super) fn publish_from(&self, agent: &Agent, st: &StatusSnapshot, l: &super::LoopStats) {
        let config = agent.config();
        // A VM removed from the configuration while its restart was pending will never answer.
        lock(&self.restarts_pending).retain(|vm, _| config.vm(*vm).is_some());
        self.publish(View {
            role: Some(st.role),
            hosts: st.hosts.clone(),
            // Failed VMs as the master sees them: 0 on a non-master, which knows no protected list.
            vms_failed: count(st.vms.iter().filter(|v| v.failed)),
            vms_protected: count(config.vms.iter().filter(|v| v.protected)),
            ha_paused: config.ha.paused,
            config_generation: st.config_generation,
            stats: agent.stats().clone(),
            event_loop: LoopView {
                receive_buffer: u64::try_from(l.receive_buffer).unwrap_or(u64::MAX),
                kernel_drops: l.kernel_drops.total,
                full_receive_turns: l.full_receive_turns,
                receive_errors: l.receive_errors,
                late_timers: l.late_timers,
                latest_timer: l.latest_timer,
            },
            at: Some(Instant::now()),
        });
    }

    /// An event out of the core: the ones that move a live metric.
    pub(super) fn event(&self, e: &Event) {
        self.event_at(e, Instant::now());
    }

    fn event_at(&self, e: &Event, now: Instant) {
        match e {
            Event::VerdictChanged {
                subject, from, to, ..
            } => {
                self.verdict_transitions
                    .get_or_create(&TransitionLabels {
                        host: subject.0,
                        from: from.name(),
                        to: to.name(),
                    })
                    .inc();
                if *to == Verdict::Dead
                    && let Some(age) = self.network_age_now(*subject, now)
                {
                    self.detection.observe(age);
                }
            }
            Event::RestartNeeded { vm, from, .. } => {
                // The first decision counts: a restart retried keeps its start.
                lock(&self.restarts_pending)
                    .entry(*vm)
                    .or_insert((now, from.is_some()));
            }
            Event::VmRestarted { vm, .. } => {
                if let Some((t0, restart)) = lock(&self.restarts_pending).remove(vm) {
                    let kind = if restart { "restart" } else { "placement" };
                    self.restart_duration
                        .get_or_create(&KindLabels { kind })
                        .observe(now.saturating_duration_since(t0).as_secs_f64());
                }
            }
            // Over without the VM running again: nothing to time. A VM that gave up waits for
            // capacity and stays pending: when it does run, the whole wait was the restart's.
            Event::RestartEndedByOperator { vm, .. }
            | Event::RestartLimitReached { vm, .. }
            | Event::OperatorStopDone { vm } => {
                lock(&self.restarts_pending).remove(vm);
            }
            // A new master does not know the old one's decisions; and this one's are void.
            Event::RoleChanged {
                from: Role::Master, ..
            } => lock(&self.restarts_pending).clear(),
            _ => {}
        }
    }

    /// Seconds since this master last heard `host` on the network, now: its age in the last
    /// copy plus the time since (nothing was heard in between, or the verdict would not be dead).
    fn network_age_now(&self, host: HostId, now: Instant) -> Option<f64> {
        let v = lock(&self.view);
        let age = v.hosts.iter().find(|h| h.host == host)?.net_age?;
        let since = now.saturating_duration_since(v.at?).as_secs_f64();
        Some(age + since)
    }

    /// A datastore call answered, `took` after it was submitted (`None`: it was never timed).
    fn ds_completed(&self, op: Option<&'static str>, c: &DsCompletion, took: Option<Duration>) {
        let datastore = c.datastore.0;
        if let Err(e) = &c.result {
            self.ds_failed
                .get_or_create(&DsErrorLabels {
                    datastore,
                    error: error_name(e),
                })
                .inc();
        }
        // Calls that never reached the storage (it is still busy with an earlier call that hangs,
        // or it is not mounted here) answer at once: timing them would make a hung datastore
        // look fast. They are counted as failures above.
        let reached_storage = !matches!(c.result, Err(DsError::Busy | DsError::NotMounted(_)));
        if let (Some(op), Some(took), true) = (op, took, reached_storage) {
            self.ds_calls
                .get_or_create(&DsCallLabels { datastore, op })
                .observe(took.as_secs_f64());
        }
        if op == Some(HEARTBEAT_WRITE) {
            self.ds_up
                .get_or_create(&DatastoreLabels { datastore })
                .set(i64::from(c.result.is_ok()));
        }
    }

    /// The exposition: OpenMetrics (ends in `# EOF`) or the Prometheus text format.
    pub fn encode(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        }
        Ok(out)
    }

    /// Whether the event loop published recently.
    fn loop_alive(&self) -> bool {
        lock(&self.view)
            .at
            .is_some_and(|t| t.elapsed() < LOOP_STALL)
    }
}

/// Times the datastore calls the event loop submits, by request id, until they complete.
#[derive(Debug, Default)]
pub(super) struct DsTimer {
    started: HashMap<RequestId, (Instant, &'static str)>,
}

impl DsTimer {
    pub(super) fn submitted(&mut self, req: &DsRequest, at: Instant) {
        if self.started.len() >= 4096 {
            self.started
                .retain(|_, (t, _)| at.saturating_duration_since(*t) < FORGET_CALL);
        }
        self.started.insert(req.id, (at, op_name(&req.op)));
    }

    /// `c` reached the event loop's bridge at `arrived`.
    pub(super) fn completed(&mut self, metrics: &Metrics, c: &DsCompletion, arrived: Instant) {
        let started = self.started.remove(&c.id);
        let took = started.map(|(t, _)| arrived.saturating_duration_since(t));
        metrics.ds_completed(started.map(|(_, op)| op), c, took);
    }
}

const HEARTBEAT_WRITE: &str = "write_heartbeat";

fn op_name(op: &DsOp) -> &'static str {
    match op {
        DsOp::WriteHeartbeat(_) => HEARTBEAT_WRITE,
        DsOp::ReadHeartbeats => "read_heartbeats",
        DsOp::WritePowerOnList(_) => "write_power_on_list",
        DsOp::ReadPowerOnList { .. } => "read_power_on_list",
        DsOp::ReadClaim => "read_claim",
        DsOp::WriteClaim { .. } => "write_claim",
        DsOp::WriteProtectedList(_) => "write_protected_list",
        DsOp::ReadProtectedList => "read_protected_list",
        DsOp::ReadConfig { .. } => "read_config",
        DsOp::WriteConfig(_) => "write_config",
        DsOp::CheckIntent { .. } => "check_intent",
    }
}

fn error_name(e: &DsError) -> &'static str {
    use heartbeat_fs::ops::IoKind;
    match e {
        DsError::Timeout => "timeout",
        DsError::Busy => "busy",
        DsError::Io { kind, .. } => match kind {
            IoKind::Io => "io",
            IoKind::NoSpace => "no_space",
            IoKind::Stale => "stale",
            IoKind::PermissionDenied => "permission_denied",
            IoKind::Missing => "missing",
            IoKind::NotConnected => "not_connected",
            IoKind::Other => "other",
        },
        DsError::Corrupt(_) => "corrupt",
        DsError::Contended => "contended",
        DsError::ClaimMismatch { .. } => "claim_mismatch",
        DsError::NotMounted(_) => "not_mounted",
    }
}

fn drop_reason(e: WireError) -> &'static str {
    match e {
        WireError::Truncated => "truncated",
        WireError::Oversized => "oversized",
        WireError::BadMagic => "bad_magic",
        WireError::UnknownVersion => "unknown_version",
        WireError::BadLength => "bad_length",
        WireError::WrongCluster => "wrong_cluster",
        WireError::WrongRecipient => "wrong_recipient",
        WireError::StaleRecipient => "stale_recipient",
        WireError::UnboundRecipient => "unbound_recipient",
        WireError::BadMac => "bad_mac",
        WireError::Replay => "replay",
        WireError::StaleIncarnation => "stale_incarnation",
        WireError::MalformedBody => "malformed_body",
        WireError::BodyTooLarge => "body_too_large",
    }
}

const ROLES: [&str; 5] = ["starting", "candidate", "slave", "master", "isolated"];
const VERDICTS: [Verdict; 5] = [
    Verdict::Alive,
    Verdict::Unreachable,
    Verdict::Partitioned,
    Verdict::Isolated,
    Verdict::Dead,
];
const OUTCOMES: [&str; 5] = [
    "succeeded",
    "failed",
    "gave_up",
    "no_capacity",
    "ended_by_operator",
];

fn outcomes(s: &StartStats) -> [u64; 5] {
    [
        s.succeeded,
        s.failed,
        s.gave_up,
        s.no_capacity,
        s.ended_by_operator,
    ]
}

/// Encodes the [`View`] at scrape time, each family whole and in one place.
#[derive(Debug)]
struct CoreCollector {
    view: Arc<Mutex<View>>,
}

/// One family: its descriptor, then each of its samples. The help ends in a full stop, as the
/// registry writes it for the metrics registered with it.
fn family<'a>(
    enc: &'a mut DescriptorEncoder,
    name: &'a str,
    help: &str,
    unit: Option<&'a Unit>,
    kind: MetricType,
) -> Result<MetricEncoder<'a>, std::fmt::Error> {
    enc.encode_descriptor(name, &format!("{help}."), unit, kind)
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl prometheus_client::encoding::EncodeGaugeValue,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(family(enc, name, help, None, MetricType::Gauge)?)
}

/// A counter: `name` without `_total`, which the encoder appends.
fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(family(enc, name, help, None, MetricType::Counter)?)
}

fn labelled<S: EncodeLabelSet, M: EncodeMetric>(
    f: &mut MetricEncoder,
    labels: &S,
    metric: M,
) -> Result<(), std::fmt::Error> {
    metric.encode(f.encode_family(labels)?)
}

impl Collector for CoreCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let v = lock(&self.view).clone();
        let e = &mut enc;
        if let Some(role) = v.role {
            let mut f = family(
                e,
                "fdm_role",
                "1 for this agent's role in its partition, 0 for the others",
                None,
                MetricType::Gauge,
            )?;
            for r in ROLES {
                labelled(
                    &mut f,
                    &[("role", r)],
                    ConstGauge::new(u32::from(role.name() == r)),
                )?;
            }
        }
        if !v.hosts.is_empty() {
            let mut f = family(
                e,
                "fdm_host_verdict",
                "This master's verdict on each host: 1 for the current one, 0 for the others",
                None,
                MetricType::Gauge,
            )?;
            for h in &v.hosts {
                for verdict in VERDICTS {
                    labelled(
                        &mut f,
                        &[
                            ("host", h.host.0.to_string()),
                            ("verdict", verdict.name().into()),
                        ],
                        ConstGauge::new(u32::from(h.verdict == verdict)),
                    )?;
                }
            }
        }
        let ages = v
            .hosts
            .iter()
            .any(|h| h.net_age.is_some() || h.ds_age.iter().any(|(_, a)| a.is_some()));
        if ages {
            let mut f = family(
                e,
                "fdm_heartbeat_age",
                "Seconds since this master last heard a host, on the network or through a datastore's heartbeat",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            for h in &v.hosts {
                let host = h.host.0.to_string();
                if let Some(a) = h.net_age {
                    labelled(
                        &mut f,
                        &[("host", host.clone()), ("channel", "network".into())],
                        ConstGauge::new(a),
                    )?;
                }
                for (d, a) in &h.ds_age {
                    if let Some(a) = a {
                        labelled(
                            &mut f,
                            &[
                                ("host", host.clone()),
                                ("channel", "datastore".into()),
                                ("datastore", d.0.to_string()),
                            ],
                            ConstGauge::new(*a),
                        )?;
                    }
                }
            }
        }
        gauge(
            e,
            "fdm_vms_protected",
            "VMs the cluster configuration protects",
            v.vms_protected,
        )?;
        gauge(
            e,
            "fdm_vms_failed",
            "VMs at their restart limit, which HA leaves alone until an operator clears them (as a master sees them; 0 elsewhere)",
            v.vms_failed,
        )?;
        gauge(
            e,
            "fdm_ha_paused",
            "1 while HA is paused in the configuration this agent runs: no restart, isolation or fencing action is taken",
            u32::from(v.ha_paused),
        )?;
        gauge(
            e,
            "fdm_config_generation",
            "Generation of the cluster configuration this agent runs",
            v.config_generation,
        )?;
        let s = &v.stats;
        counter(
            e,
            "fdm_config_rejected",
            "Cluster configurations read from a datastore and refused (their timings are invalid); the agent keeps the one it runs",
            s.configs_rejected,
        )?;
        counter(
            e,
            "fdm_restarts_issued",
            "Power-on commands this agent sent as master to bring back VMs lost from a host (crash, dead host, isolation response); each attempt one",
            s.restarts.issued,
        )?;
        counter(
            e,
            "fdm_placements_issued",
            "Power-on commands this agent sent as master for first placements (VMs that ran nowhere yet, or started by an operator); each attempt one",
            s.placements.issued,
        )?;
        for (name, help, stats) in [
            (
                "fdm_restart_outcomes",
                "How this master's restarts ended, by outcome",
                &s.restarts,
            ),
            (
                "fdm_placement_outcomes",
                "How this master's first placements ended, by outcome",
                &s.placements,
            ),
        ] {
            let mut f = family(e, name, help, None, MetricType::Counter)?;
            for (outcome, n) in OUTCOMES.into_iter().zip(outcomes(stats)) {
                labelled(&mut f, &[("outcome", outcome)], ConstCounter::new(n))?;
            }
        }
        counter(
            e,
            "fdm_restart_limits_reached",
            "VMs this agent as master declared failed at their restart limit",
            s.restart_limits_reached,
        )?;
        counter(
            e,
            "fdm_datagrams_sent",
            "Datagrams this agent sent",
            s.datagrams_sent,
        )?;
        counter(
            e,
            "fdm_datagrams_received",
            "Datagrams this agent received",
            s.datagrams_received,
        )?;
        {
            let mut f = family(
                e,
                "fdm_datagrams_dropped",
                "Datagrams this agent dropped, by reason",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in &s.drops.by_reason {
                labelled(
                    &mut f,
                    &[("reason", drop_reason(*reason))],
                    ConstCounter::new(*n),
                )?;
            }
            labelled(
                &mut f,
                &[("reason", "unknown_sender")],
                ConstCounter::new(s.unknown_sender),
            )?;
        }
        // The receive path under load: what the kernel granted and dropped (the agent did not
        // keep up), turns that had more datagrams queued than one turn handles, and how late the
        // timers ran.
        let l = &v.event_loop;
        ConstGauge::new(l.receive_buffer).encode(family(
            e,
            "fdm_udp_receive_buffer",
            "UDP receive buffer the kernel granted the agent's socket",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?)?;
        counter(
            e,
            "fdm_udp_kernel_drops",
            "Datagrams the kernel dropped at the agent's socket because its queue was full",
            l.kernel_drops,
        )?;
        counter(
            e,
            "fdm_udp_full_receive_turns",
            "Turns of the event loop that handled their full budget of datagrams (more were queued)",
            l.full_receive_turns,
        )?;
        counter(
            e,
            "fdm_udp_receive_errors",
            "Errors receiving from the UDP socket",
            l.receive_errors,
        )?;
        counter(
            e,
            "fdm_timers_late",
            "Timer expiries handled more than 50 ms after their deadline",
            l.late_timers,
        )?;
        ConstGauge::new(l.latest_timer.as_secs_f64()).encode(family(
            e,
            "fdm_timer_latest",
            "The latest any timer expiry was handled after its deadline, since the agent started",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

/// Serve `/metrics` and `/healthz` on `addr` (unauthenticated, as the agent has always served
/// its metrics: bind it to an address only the scraper reaches).
pub(super) async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = router(metrics);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(())
}

/// The routes: GET (and HEAD) on the two paths; axum answers 405 with `Allow` for another
/// method on them, and any other path is 404.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(metrics)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found: the agent serves GET /metrics and GET /healthz\n",
    )
        .into_response()
}

/// Prometheus asks for OpenMetrics in its `Accept` header; curl and the Prometheus text format's
/// other readers do not, and get the older format.
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

async fn scrape(State(m): State<Arc<Metrics>>, headers: HeaderMap) -> Response {
    let open = wants_openmetrics(&headers);
    match m.encode(open) {
        Ok(body) => {
            let kind = if open {
                OPENMETRICS
            } else {
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
            };
            (
                [(header::CONTENT_TYPE, HeaderValue::from_static(kind))],
                body,
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed\n",
        )
            .into_response(),
    }
}

async fn healthz(State(m): State<Arc<Metrics>>) -> Response {
    if m.loop_alive() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the event loop has not published for 5 s\n",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::HostView;
    use heartbeat_fs::DatastoreId;
    use heartbeat_fs::ops::DsReply;

    /// `fdm_datastore_up` as the text format shows it, by datastore.
    fn datastores_up(m: &Metrics) -> Vec<(DatastoreId, i64)> {
        let text = m.encode(false).unwrap_or_default();
        let mut out: Vec<(DatastoreId, i64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("fdm_datastore_up{datastore=\""))
            .filter_map(|l| {
                let (d, v) = l.split_once("\"} ")?;
                Some((DatastoreId(d.parse().ok()?), v.parse().ok()?))
            })
            .collect();
        out.sort();
        out
    }

    fn completion(id: RequestId, ds: u32, result: Result<DsReply, DsError>) -> DsCompletion {
        DsCompletion {
            id,
            datastore: DatastoreId(ds),
            result,
        }
    }

    fn request(id: RequestId, ds: u32, op: DsOp) -> DsRequest {
        DsRequest {
            id,
            datastore: DatastoreId(ds),
            op,
        }
    }

    #[test]
    fn families_are_whole_and_described_once() {
        let m = Metrics::new();
        m.publish(View {
            role: Some(Role::Master),
            hosts: vec![
                HostView {
                    host: HostId(1),
                    verdict: Verdict::Alive,
                    net_age: Some(0.1),
                    ds_age: vec![(DatastoreId(1), Some(0.4))],
                },
                HostView {
                    host: HostId(2),
                    verdict: Verdict::Dead,
                    net_age: Some(9.0),
                    ds_age: vec![(DatastoreId(1), None)],
                },
            ],
            ..View::default()
        });
        for open in [false, true] {
            let text = m.encode(open).unwrap();
            let mut seen = Vec::new();
            let mut current = "";
            for l in text.lines() {
                if let Some(rest) = l.strip_prefix("# TYPE ") {
                    let name = rest.split(' ').next().unwrap();
                    assert!(!seen.contains(&name), "{name} described twice:\n{text}");
                    seen.push(name);
                    current = name;
                } else if !l.starts_with('#') {
                    assert!(
                        l.starts_with(current),
                        "{l} outside its family {current}:\n{text}"
                    );
                }
            }
            assert!(text.contains("fdm_host_verdict{host=\"2\",verdict=\"dead\"} 1"));
            assert!(text.contains("fdm_build_info{version=\""), "{text}");
            assert_eq!(text.ends_with("# EOF\n"), open);
        }
    }

    #[test]
    fn datastore_calls_are_timed_and_a_busy_one_is_not() {
        let m = Metrics::new();
        let mut timer = DsTimer::default();
        let t0 = Instant::now();
        let hb = || DsOp::ReadHeartbeats;
        timer.submitted(&request(1, 1, hb()), t0);
        timer.submitted(&request(2, 1, hb()), t0);
        timer.submitted(&request(3, 2, hb()), t0);
        let later = t0 + Duration::from_millis(30);
        timer.completed(&m, &completion(1, 1, Ok(DsReply::Written)), later);
        timer.completed(&m, &completion(2, 1, Err(DsError::Busy)), later);
        timer.completed(&m, &completion(3, 2, Err(DsError::Timeout)), later);
        // Never submitted through the timer: counted, not timed.
        timer.completed(&m, &completion(9, 2, Err(DsError::Timeout)), later);
        let text = m.encode(false).unwrap();
        let count = |ds: u32| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!(
                        "fdm_datastore_call_duration_seconds_count{{datastore=\"{ds}\",op=\"read_heartbeats\"}} "
                    ))
                })
                .map(|v| v.to_string())
        };
        assert_eq!(count(1).as_deref(), Some("1"), "{text}");
        assert_eq!(count(2).as_deref(), Some("1"), "{text}");
        assert!(
            text.contains("fdm_datastore_ops_failed_total{datastore=\"2\",error=\"timeout\"} 2")
        );
        assert!(text.contains("fdm_datastore_ops_failed_total{datastore=\"1\",error=\"busy\"} 1"));
        assert!(timer.started.is_empty());
    }

    #[test]
    fn the_last_heartbeat_write_says_whether_a_datastore_is_up() {
        let m = Metrics::new();
        let mut timer = DsTimer::default();
        let t0 = Instant::now();
        let write = || {
            DsOp::WriteHeartbeat(heartbeat_fs::records::HeartbeatRecord {
                cluster: heartbeat_fs::ClusterId(1),
                host: HostId(1),
                incarnation: 1,
                sequence: 1,
                flags: heartbeat_fs::records::HostFlags::default(),
                power_on_generation: 0,
                master: HostId(1),
            })
        };
        timer.submitted(&request(1, 1, write()), t0);
        timer.submitted(&request(2, 2, write()), t0);
        timer.completed(&m, &completion(1, 1, Ok(DsReply::Written)), t0);
        timer.completed(&m, &completion(2, 2, Err(DsError::Timeout)), t0);
        assert_eq!(
            datastores_up(&m),
            vec![(DatastoreId(1), 1), (DatastoreId(2), 0)]
        );
    }

    #[test]
    fn verdict_changes_are_counted_by_host_and_verdicts() {
        let m = Metrics::new();
        for _ in 0..2 {
            m.event(&Event::VerdictChanged {
                subject: HostId(3),
                from: Verdict::Alive,
                to: Verdict::Unreachable,
                reason: String::new(),
            });
        }
        let text = m.encode(false).unwrap();
        assert!(
            text.contains(
                "fdm_host_verdict_transitions_total{host=\"3\",from=\"alive\",to=\"unreachable\"} 2"
            ),
            "{text}"
        );
    }

    #[test]
    fn openmetrics_is_served_to_whoever_asks_for_it() {
        let mut h = HeaderMap::new();
        assert!(!wants_openmetrics(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            ),
        );
        assert!(wants_openmetrics(&h));
    }

    #[test]
    fn the_timer_map_stays_bounded() {
        let mut timer = DsTimer::default();
        let t0 = Instant::now();
        for id in 0..5000 {
            timer.submitted(&request(id, 1, DsOp::ReadClaim), t0);
        }
        // All still young: kept (every one gets an answer by its deadline).
        assert_eq!(timer.started.len(), 5000);
        let late = t0 + FORGET_CALL + Duration::from_secs(1);
        timer.submitted(&request(9999, 1, DsOp::ReadClaim), late);
        assert_eq!(timer.started.len(), 1);
    }

    #[test]
    fn detection_and_restart_times_come_from_the_events() {
        let m = Metrics::new();
        let t0 = Instant::now();
        m.publish(View {
            hosts: vec![HostView {
                host: HostId(2),
                verdict: Verdict::Unreachable,
                net_age: Some(4.0),
                ds_age: Vec::new(),
            }],
            at: Some(t0),
            ..View::default()
        });
        m.event_at(
            &Event::VerdictChanged {
                subject: HostId(2),
                from: Verdict::Unreachable,
                to: Verdict::Dead,
                reason: String::new(),
            },
            t0 + Duration::from_secs(3),
        );
        let vm = VmId(7);
        let needed = Event::RestartNeeded {
            vm,
            from: Some(HostId(2)),
            reason: String::new(),
        };
        m.event_at(&needed, t0);
        // A retry's second decision does not move the start.
        m.event_at(&needed, t0 + Duration::from_secs(5));
        m.event_at(
            &Event::VmRestarted {
                vm,
                on: HostId(1),
                attempt: 2,
            },
            t0 + Duration::from_secs(12),
        );
        let text = m.encode(false).unwrap();
        assert!(
            text.contains("fdm_host_failure_detection_seconds_sum 7"),
            "{text}"
        );
        assert!(
            text.contains("fdm_restart_duration_seconds_sum{kind=\"restart\"} 12"),
            "{text}"
        );
        assert!(lock(&m.restarts_pending).is_empty());
    }

    #[test]
    fn health_follows_the_event_loop() {
        let m = Metrics::new();
        assert!(!m.loop_alive(), "nothing published yet");
        m.publish(View {
            at: Some(Instant::now()),
            ..View::default()
        });
        assert!(m.loop_alive());
        // A copy older than the stall limit: the loop is stuck.
        if let Some(old) = Instant::now().checked_sub(LOOP_STALL + Duration::from_secs(1)) {
            m.publish(View {
                at: Some(old),
                ..View::default()
            });
            assert!(!m.loop_alive());
        }
    }
}
