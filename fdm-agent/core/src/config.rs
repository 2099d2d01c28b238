//! Every timing of the protocol in one struct. Defaults and the reason for each are in
//! `docs/timings.md`; keep the two in step.

use heartbeat_fs::{DatastoreId, HostId};
use std::collections::BTreeMap;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq)]
pub struct Timings {
    /// Network heartbeat period, slave -> master and master -> every host.
    pub heartbeat_interval: Duration,
    /// Master: no heartbeat from a slave for this long -> `Unreachable`, start checking the datastores.
    pub host_unreachable_after: Duration,
    /// Slave: no heartbeat from its master for this long -> start an election.
    pub master_lost_after: Duration,
    /// How long a candidate collects candidacies before the best one takes the role.
    pub election_window: Duration,
    /// Datastore heartbeat write period.
    pub ds_heartbeat_interval: Duration,
    /// Master: how often it reads every host's heartbeat sector (and claim records).
    pub ds_read_interval: Duration,
    /// A host's datastore heartbeat is a lease this long; a reader calls it stopped after seeing no
    /// advance for this long (scaled up by the drift bound).
    pub ds_lease: Duration,
    /// A master's acknowledgement is a lease this long on the datastores it claims.
    pub net_lease: Duration,
    /// A master's datastore claim is a lease this long.
    pub claim_lease: Duration,
    /// Claim renewal period.
    pub claim_renew_interval: Duration,
    /// A host fences this long before its last lease could expire at any reader.
    pub fence_margin: Duration,
    /// Bound on clock-rate difference between any two hosts, parts per million.
    pub max_clock_drift_ppm: u32,
    /// Heard nobody for this long -> check the isolation addresses.
    pub isolation_detect_after: Duration,
    /// Declared isolated -> wait this long (the network may come back) before the isolation response.
    pub isolation_response_delay: Duration,
    /// Clean-shutdown isolation response: power off if the guest has not stopped after this.
    pub shutdown_timeout: Duration,
    /// Master: how long a restart command may go unanswered before it is re-sent to the same target.
    pub power_on_timeout: Duration,
    /// How often the cluster configuration is re-read from the datastores.
    pub config_poll_interval: Duration,
    /// Deadline the runtime puts on every datastore call.
    pub datastore_call_deadline: Duration,
    /// Hardware (or fake) watchdog timeout armed by the runtime; never longer than `fence_margin`.
    pub watchdog_timeout: Duration,
    /// Master: an alive slave has reached strictly more datastores than the master for this long ->
    /// hand the role over to it (otherwise the VMs on storage only the slave sees go unprotected).
    pub better_master_handover: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            heartbeat_interval: ms(500),
            host_unreachable_after: ms(1_500),
            master_lost_after: ms(1_500),
            election_window: ms(1_000),
            ds_heartbeat_interval: ms(500),
            ds_read_interval: ms(250),
            ds_lease: ms(3_000),
            net_lease: ms(3_000),
            claim_lease: ms(3_000),
            claim_renew_interval: ms(500),
            fence_margin: ms(1_000),
            max_clock_drift_ppm: 10_000,
            isolation_detect_after: ms(4_000),
            isolation_response_delay: ms(2_000),
            shutdown_timeout: ms(30_000),
            power_on_timeout: ms(10_000),
            config_poll_interval: ms(5_000),
            datastore_call_deadline: ms(1_500),
            watchdog_timeout: ms(1_000),
            better_master_handover: ms(5_000),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TimingsError {
    #[error("unknown timing `{0}`; expected one of {names}", names = Timings::NAMES.join(", "))]
    Unknown(String),
    #[error("timing `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl TimingsError {
    /// The timing the error is about, as the configuration spells it.
    pub fn field(&self) -> &str {
        match self {
            TimingsError::Unknown(name) => name,
            TimingsError::Invalid { field, .. } => field,
        }
    }
}

/// No timing may be longer than a day: nothing in the protocol waits that long on purpose, and the
/// bound keeps every sum and product of timings far from overflow.
pub const MAX_TIMING: Duration = Duration::from_secs(86_400);
/// Periodic work (heartbeats, reads, renewals, polls) runs at most a hundred times a second.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// More than 10 % clock-rate error is not a clock.
pub const MAX_DRIFT_PPM: u32 = 100_000;

/// `d * ppm / 1e6`, exact, saturating: never panics whatever `d`.
fn ppm_of(d: Duration, ppm: u32) -> Duration {
    let nanos = d.as_nanos().saturating_mul(u128::from(ppm)) / 1_000_000;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

impl Timings {
    /// Every timing's name, as `timings_ms` in the cluster configuration and `[timings]` in
    /// `agent.toml` spell it: the durations in milliseconds, then `max_clock_drift_ppm` in ppm.
    pub const NAMES: [&'static str; 20] = [
        "heartbeat_interval",
        "host_unreachable_after",
        "master_lost_after",
        "election_window",
        "ds_heartbeat_interval",
        "ds_read_interval",
        "ds_lease",
        "net_lease",
        "claim_lease",
        "claim_renew_interval",
        "fence_margin",
        "isolation_detect_after",
        "isolation_response_delay",
        "shutdown_timeout",
        "power_on_timeout",
        "config_poll_interval",
        "datastore_call_deadline",
        "watchdog_timeout",
        "better_master_handover",
        "max_clock_drift_ppm",
    ];

    /// `d` stretched by the drift bound: what a reader waits so that a lease measured on a slower
    /// clock has surely expired. Saturating.
    pub fn stretch(&self, d: Duration) -> Duration {
        d.saturating_add(ppm_of(d, self.max_clock_drift_ppm))
    }
    /// `d` shrunk by the drift bound: how long a holder may trust a lease on its own clock.
    pub fn shrink(&self, d: Duration) -> Duration {
        d.saturating_sub(ppm_of(d, self.max_clock_drift_ppm))
    }

    /// How often the agent evaluates its leases, verdicts and roles (and kicks the watchdog).
    pub fn evaluate_interval(&self) -> Duration {
        (self.heartbeat_interval / 2).max(MIN_INTERVAL)
    }

    /// The duration fields, named; `NAMES` without `max_clock_drift_ppm`.
    fn durations(&self) -> [(&'static str, Duration); 19] {
        let mut copy = self.clone();
        copy.durations_mut().map(|(n, d)| (n, *d))
    }

    fn durations_mut(&mut self) -> [(&'static str, &mut Duration); 19] {
        [
            ("heartbeat_interval", &mut self.heartbeat_interval),
            ("host_unreachable_after", &mut self.host_unreachable_after),
            ("master_lost_after", &mut self.master_lost_after),
            ("election_window", &mut self.election_window),
            ("ds_heartbeat_interval", &mut self.ds_heartbeat_interval),
            ("ds_read_interval", &mut self.ds_read_interval),
            ("ds_lease", &mut self.ds_lease),
            ("net_lease", &mut self.net_lease),
            ("claim_lease", &mut self.claim_lease),
            ("claim_renew_interval", &mut self.claim_renew_interval),
            ("fence_margin", &mut self.fence_margin),
            ("isolation_detect_after", &mut self.isolation_detect_after),
            (
                "isolation_response_delay",
                &mut self.isolation_response_delay,
            ),
            ("shutdown_timeout", &mut self.shutdown_timeout),
            ("power_on_timeout", &mut self.power_on_timeout),
            ("config_poll_interval", &mut self.config_poll_interval),
            ("datastore_call_deadline", &mut self.datastore_call_deadline),
            ("watchdog_timeout", &mut self.watchdog_timeout),
            ("better_master_handover", &mut self.better_master_handover),
        ]
    }

    /// Apply overrides by field name, in milliseconds (`max_clock_drift_ppm` in ppm), then validate;
    /// the first problem.
    pub fn with_overrides(self, overrides: &BTreeMap<String, u64>) -> Result<Self, TimingsError> {
        self.checked_overrides(overrides)
            .map_err(|mut all| all.swap_remove(0))
    }

    /// Like `with_overrides`, with every problem: unknown names, values out of range, broken
    /// relations (for `check-config`, which reports everything at once).
    pub fn checked_overrides(
        mut self,
        overrides: &BTreeMap<String, u64>,
    ) -> Result<Self, Vec<TimingsError>> {
        let mut problems = Vec::new();
        for (name, &value) in overrides {
            if name == "max_clock_drift_ppm" {
                match u32::try_from(value) {
                    Ok(v) => self.max_clock_drift_ppm = v,
                    Err(_) => problems.push(TimingsError::Invalid {
                        field: "max_clock_drift_ppm",
                        reason: format!("{value} ppm; at most {MAX_DRIFT_PPM}"),
                    }),
                }
                continue;
            }
            match self
                .durations_mut()
                .into_iter()
                .find(|(field, _)| *field == name.as_str())
            {
                // Milliseconds always fit a Duration; the size is checked below.
                Some((_, slot)) => *slot = Duration::from_millis(value),
                None => problems.push(TimingsError::Unknown(name.clone())),
            }
        }
        if problems.is_empty() {
            problems = self.problems();
        }
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(problems)
        }
    }

    /// The relations the safety argument (docs/safety.md) and the promise not to stop VMs needlessly
    /// rely on; the first one broken.
    pub fn validate(&self) -> Result<(), TimingsError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every relation broken, each naming the timing to change.
    pub fn problems(&self) -> Vec<TimingsError> {
        let mut out = Problems::default();
        // Sizes first: once every value is within [0, a day], no relation below can overflow.
        if self.size_problems(&mut out) {
            self.interval_problems(&mut out);
            self.lease_problems(&mut out);
            self.renewal_problems(&mut out);
            self.watchdog_and_claim_problems(&mut out);
        }
        out.0
    }

    /// Values beyond a day, drift beyond 10 %. Returns whether every duration is within a day.
    fn size_problems(&self, out: &mut Problems) -> bool {
        let mut sized = true;
        for (field, d) in self.durations() {
            if d > MAX_TIMING {
                out.bad(
                    field,
                    format!("{}; at most {} (a day)", ms(d), ms(MAX_TIMING)),
                );
                sized = false;
            }
        }
        if self.max_clock_drift_ppm > MAX_DRIFT_PPM {
            out.bad(
                "max_clock_drift_ppm",
                format!(
                    "{} ppm; at most {MAX_DRIFT_PPM} (10 %): more drift is not a clock",
                    self.max_clock_drift_ppm
                ),
            );
        }
        sized
    }

    fn interval_problems(&self, out: &mut Problems) {
        // Zero or too fine: periodic work that would spin, waits that would not wait.
        for (field, d) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("ds_heartbeat_interval", self.ds_heartbeat_interval),
            ("ds_read_interval", self.ds_read_interval),
            ("claim_renew_interval", self.claim_renew_interval),
            ("config_poll_interval", self.config_poll_interval),
        ] {
            if d < MIN_INTERVAL {
                out.bad(field, format!("{}; at least {}", ms(d), ms(MIN_INTERVAL)));
            }
        }
        for (field, d) in [
            ("election_window", self.election_window),
            ("datastore_call_deadline", self.datastore_call_deadline),
            ("power_on_timeout", self.power_on_timeout),
            ("watchdog_timeout", self.watchdog_timeout),
            ("better_master_handover", self.better_master_handover),
            ("isolation_detect_after", self.isolation_detect_after),
        ] {
            if d.is_zero() {
                out.bad(field, "must be greater than 0".into());
            }
        }
    }

    /// Detection times against heartbeats, and each lease against what must fit inside it.
    fn lease_problems(&self, out: &mut Problems) {
        let hb = self.heartbeat_interval;
        if self.host_unreachable_after < hb * 2 {
            out.bad(
                "host_unreachable_after",
                format!(
                    "{}; at least two heartbeat intervals ({})",
                    ms(self.host_unreachable_after),
                    ms(hb * 2)
                ),
            );
        }
        if self.master_lost_after < hb * 2 {
            out.bad(
                "master_lost_after",
                format!(
                    "{}; at least two heartbeat intervals ({})",
                    ms(self.master_lost_after),
                    ms(hb * 2)
                ),
            );
        }
        if self.ds_lease < self.ds_heartbeat_interval * 3 {
            out.bad(
                "ds_lease",
                format!(
                    "{}; at least three datastore heartbeat intervals ({}), or one slow write fences VMs",
                    ms(self.ds_lease),
                    ms(self.ds_heartbeat_interval * 3)
                ),
            );
        }
        if self.ds_lease <= self.datastore_call_deadline {
            out.bad(
                "datastore_call_deadline",
                format!(
                    "{}; must be shorter than ds_lease ({}): a write may take the whole deadline",
                    ms(self.datastore_call_deadline),
                    ms(self.ds_lease)
                ),
            );
        }
        if self.ds_read_interval * 2 > self.ds_lease {
            out.bad(
                "ds_read_interval",
                format!(
                    "{}; at most half of ds_lease ({})",
                    ms(self.ds_read_interval),
                    ms(self.ds_lease / 2)
                ),
            );
        }
        if self.net_lease < hb * 3 {
            out.bad(
                "net_lease",
                format!(
                    "{}; at least three heartbeat intervals ({}), or one lost acknowledgement fences VMs",
                    ms(self.net_lease),
                    ms(hb * 3)
                ),
            );
        }
        if self.fence_margin >= self.shrink(self.ds_lease)
            || self.fence_margin >= self.shrink(self.net_lease)
            || self.fence_margin >= self.shrink(self.claim_lease)
        {
            out.bad(
                "fence_margin",
                format!(
                    "{}; must be shorter than ds_lease, net_lease and claim_lease (shrunk by the drift bound)",
                    ms(self.fence_margin)
                ),
            );
        }
    }

    fn renewal_problems(&self, out: &mut Problems) {
        // A lease must outlive two renewals plus the margin, or a host fences between two healthy
        // renewals (one slow or lost renewal must not stop VMs either).
        for (field, lease, lease_name, every, every_name) in [
            (
                "ds_lease",
                self.ds_lease,
                "ds_lease",
                self.ds_heartbeat_interval,
                "ds_heartbeat_interval",
            ),
            (
                "net_lease",
                self.net_lease,
                "net_lease",
                self.heartbeat_interval,
                "heartbeat_interval",
            ),
            (
                "claim_lease",
                self.claim_lease,
                "claim_lease",
                self.claim_renew_interval,
                "claim_renew_interval",
            ),
        ] {
            let need = self.fence_margin + every * 2;
            if self.shrink(lease) < need {
                out.bad(
                    field,
                    format!(
                        "{}; {lease_name} shrunk by the drift bound must cover fence_margin plus two {every_name}s ({}), or healthy hosts fence between renewals",
                        ms(lease),
                        ms(need)
                    ),
                );
            }
        }
        if self.fence_margin < self.ds_heartbeat_interval {
            out.bad(
                "fence_margin",
                format!(
                    "{}; at least one datastore heartbeat interval ({})",
                    ms(self.fence_margin),
                    ms(self.ds_heartbeat_interval)
                ),
            );
        }
    }

    fn watchdog_and_claim_problems(&self, out: &mut Problems) {
        if self.watchdog_timeout > self.fence_margin {
            out.bad(
                "watchdog_timeout",
                format!(
                    "{}; must not exceed fence_margin ({}): a hung agent must be reset before its leases expire",
                    ms(self.watchdog_timeout),
                    ms(self.fence_margin)
                ),
            );
        }
        let tick = self.evaluate_interval();
        if tick * 2 > self.watchdog_timeout {
            out.bad(
                "watchdog_timeout",
                format!(
                    "{}; at least twice the evaluation tick ({}, half the heartbeat interval), or a healthy host is reset between two kicks",
                    ms(self.watchdog_timeout),
                    ms(tick)
                ),
            );
        }
        if self.claim_renew_interval * 3 > self.claim_lease {
            out.bad(
                "claim_renew_interval",
                format!(
                    "{}; at most a third of claim_lease ({})",
                    ms(self.claim_renew_interval),
                    ms(self.claim_lease / 3)
                ),
            );
        }
        if self.claim_lease <= self.datastore_call_deadline {
            out.bad(
                "claim_lease",
                format!(
                    "{}; must be longer than datastore_call_deadline ({}), or a slow renewal loses the claim",
                    ms(self.claim_lease),
                    ms(self.datastore_call_deadline)
                ),
            );
        }
        let validity = self
            .shrink(self.claim_lease)
            .saturating_sub(self.fence_margin);
        if self.claim_renew_interval >= validity {
            out.bad(
                "claim_renew_interval",
                format!(
                    "{}; must be shorter than the time a master trusts its claim after a renewal (claim_lease shrunk, minus fence_margin: {})",
                    ms(self.claim_renew_interval),
                    ms(validity)
                ),
            );
        }
        let election = self.master_lost_after + self.election_window;
        if self.isolation_detect_after < election {
            out.bad(
                "isolation_detect_after",
                format!(
                    "{}; at least master_lost_after + election_window ({}), so that a lost master alone is not isolation",
                    ms(self.isolation_detect_after),
                    ms(election)
                ),
            );
        }
    }
}

/// The broken relations found so far, in the order they were checked.
#[derive(Default)]
struct Problems(Vec<TimingsError>);

impl Problems {
    fn bad(&mut self, field: &'static str, reason: String) {
        self.0.push(TimingsError::Invalid { field, reason });
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// What one agent knows about itself before any configuration is read from a datastore.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub host: HostId,
    /// Changes on every agent start (the runtime uses boot time in ms plus a counter; the simulator
    /// a counter).
    pub incarnation: u64,
    pub cluster: heartbeat_fs::ClusterId,
    /// Key for the datagram MAC.
    pub secret: [u8; 32],
    /// Datastores mounted on this host.
    pub datastores: Vec<DatastoreId>,
    pub timings: Timings,
    /// Stop VMs whose leases both lapsed (docs/safety.md). Turning it off trades the never-twice
    /// guarantee for availability during storage outages.
    pub self_fence: bool,
}

impl AgentSettings {
    /// Settings with every safety step in place.
    pub fn new(
        host: HostId,
        incarnation: u64,
        cluster: heartbeat_fs::ClusterId,
        secret: [u8; 32],
        datastores: Vec<DatastoreId>,
        timings: Timings,
    ) -> Self {
        AgentSettings {
            host,
            incarnation,
            cluster,
            secret,
            datastores,
            timings,
            self_fence: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn with(name: &str, value: u64) -> Result<Timings, TimingsError> {
        Timings::default().with_overrides(&BTreeMap::from([(name.to_string(), value)]))
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(Timings::default().problems(), Vec::new());
    }

    #[test]
    fn every_name_is_a_field_and_every_field_has_a_name() {
        let d = Timings::default();
        let names: Vec<&str> = d.durations().iter().map(|(n, _)| *n).collect();
        assert_eq!(&Timings::NAMES[..19], &names[..]);
        assert_eq!(Timings::NAMES[19], "max_clock_drift_ppm");
        for name in Timings::NAMES {
            let value = if name == "max_clock_drift_ppm" {
                u64::from(d.max_clock_drift_ppm)
            } else {
                d.durations()
                    .iter()
                    .find(|(n, dur)| *n == name && !dur.is_zero())
                    .map(|(_, dur)| dur.as_millis() as u64)
                    .unwrap()
            };
            assert_eq!(with(name, value), Ok(d.clone()), "{name}");
        }
    }

    #[test]
    fn a_value_too_large_for_any_computation_is_refused_naming_the_field() {
        for name in Timings::NAMES {
            for value in [u64::MAX, i64::MAX as u64, 86_400_001] {
                let e = with(name, value).expect_err(name);
                assert_eq!(e.field(), name, "{e}");
            }
        }
    }

    #[test]
    fn the_holes_an_operator_could_fall_into_are_refused() {
        for (name, value, field) in [
            ("claim_renew_interval", 0, "claim_renew_interval"),
            ("ds_read_interval", 0, "ds_read_interval"),
            ("election_window", 0, "election_window"),
            ("datastore_call_deadline", 0, "datastore_call_deadline"),
            ("power_on_timeout", 0, "power_on_timeout"),
            ("watchdog_timeout", 0, "watchdog_timeout"),
            ("config_poll_interval", 0, "config_poll_interval"),
            ("heartbeat_interval", 1, "heartbeat_interval"),
            ("claim_lease", 3, "fence_margin"),
            ("net_lease", 400, "net_lease"),
            ("datastore_call_deadline", 3_000, "datastore_call_deadline"),
            ("isolation_detect_after", 1_000, "isolation_detect_after"),
            ("max_clock_drift_ppm", 200_000, "max_clock_drift_ppm"),
        ] {
            let e = with(name, value).expect_err(name);
            assert_eq!(e.field(), field, "{name}={value}: {e}");
        }
        let e = with("ds_leese", 1).unwrap_err();
        assert!(matches!(e, TimingsError::Unknown(_)));
        assert!(e.to_string().contains("ds_lease"), "{e}");
    }

    #[test]
    fn the_evaluation_tick_must_fit_the_watchdog_twice() {
        // A 2.4 s heartbeat: evaluations (and kicks) every 1.2 s, a 2 s watchdog would fire between.
        let t = Timings {
            heartbeat_interval: Duration::from_millis(2_400),
            host_unreachable_after: Duration::from_millis(7_200),
            master_lost_after: Duration::from_millis(7_200),
            net_lease: Duration::from_millis(7_200),
            ds_lease: Duration::from_millis(7_200),
            claim_lease: Duration::from_millis(7_200),
            fence_margin: Duration::from_millis(2_000),
            watchdog_timeout: Duration::from_millis(2_000),
            isolation_detect_after: Duration::from_millis(9_000),
            ..Timings::default()
        };
        let fields: Vec<String> = t.problems().iter().map(|e| e.field().to_string()).collect();
        assert_eq!(fields, ["watchdog_timeout"], "{:?}", t.problems());
    }

    #[test]
    fn check_config_sees_every_problem_at_once() {
        let all = Timings::default()
            .checked_overrides(&BTreeMap::from([
                ("power_on_timeout".to_string(), 0),
                ("election_window".to_string(), 0),
            ]))
            .unwrap_err();
        let fields: Vec<&str> = all.iter().map(TimingsError::field).collect();
        assert_eq!(fields, ["election_window", "power_on_timeout"]);
    }

    proptest! {
        #[test]
        fn stretch_and_shrink_never_panic(secs in any::<u64>(), nanos in 0u32..1_000_000_000, ppm in any::<u32>()) {
            let t = Timings { max_clock_drift_ppm: ppm, ..Timings::default() };
            let d = Duration::new(secs, nanos);
            prop_assert!(t.stretch(d) >= d);
            prop_assert!(t.shrink(d) <= d);
        }

        #[test]
        fn arbitrary_overrides_validate_or_are_refused_naming_a_known_field(
            values in proptest::collection::vec(any::<u64>(), 20),
            mask in any::<u32>(),
        ) {
            let overrides: BTreeMap<String, u64> = Timings::NAMES
                .iter()
                .zip(&values)
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, (n, v))| (n.to_string(), *v))
                .collect();
            match Timings::default().checked_overrides(&overrides) {
                Ok(t) => prop_assert!(t.problems().is_empty()),
                Err(problems) => {
                    prop_assert!(!problems.is_empty());
                    for p in problems {
                        prop_assert!(Timings::NAMES.contains(&p.field()), "{}", p);
                    }
                }
            }
        }
    }
}
