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
    #[error("unknown timing `{0}`")]
    Unknown(String),
    #[error("timing `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Timings {
    /// `d` stretched by the drift bound: what a reader waits so that a lease measured on a slower
    /// clock has surely expired.
    pub fn stretch(&self, d: Duration) -> Duration {
        d + d * self.max_clock_drift_ppm / 1_000_000
    }
    /// `d` shrunk by the drift bound: how long a holder may trust a lease on its own clock.
    pub fn shrink(&self, d: Duration) -> Duration {
        d.saturating_sub(d * self.max_clock_drift_ppm / 1_000_000)
    }

    fn fields_mut(&mut self) -> [(&'static str, &mut Duration); 19] {
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

    /// Apply overrides by field name, in milliseconds (`max_clock_drift_ppm` in ppm), then validate.
    pub fn with_overrides(
        mut self,
        overrides: &BTreeMap<String, u64>,
    ) -> Result<Self, TimingsError> {
        for (name, &value) in overrides {
            if name == "max_clock_drift_ppm" {
                self.max_clock_drift_ppm =
                    u32::try_from(value).map_err(|_| TimingsError::Invalid {
                        field: "max_clock_drift_ppm",
                        reason: "too large".into(),
                    })?;
                continue;
            }
            let mut found = false;
            for (field, slot) in self.fields_mut() {
                if field == name {
                    *slot = Duration::from_millis(value);
                    found = true;
                }
            }
            if !found {
                return Err(TimingsError::Unknown(name.clone()));
            }
        }
        self.validate()?;
        Ok(self)
    }

    /// The relations the safety argument (docs/safety.md) relies on.
    pub fn validate(&self) -> Result<(), TimingsError> {
        let bad = |field, reason: &str| {
            Err(TimingsError::Invalid {
                field,
                reason: reason.into(),
            })
        };
        if self.heartbeat_interval.is_zero() || self.ds_heartbeat_interval.is_zero() {
            return bad("heartbeat_interval", "must be positive");
        }
        if self.host_unreachable_after < self.heartbeat_interval * 2 {
            return bad(
                "host_unreachable_after",
                "must be at least two heartbeat intervals",
            );
        }
        if self.master_lost_after < self.heartbeat_interval * 2 {
            return bad(
                "master_lost_after",
                "must be at least two heartbeat intervals",
            );
        }
        if self.ds_lease < self.ds_heartbeat_interval * 3 {
            return bad(
                "ds_lease",
                "must be at least three datastore heartbeat intervals",
            );
        }
        if self.fence_margin >= self.shrink(self.ds_lease)
            || self.fence_margin >= self.shrink(self.net_lease)
        {
            return bad("fence_margin", "must be shorter than the leases");
        }
        if self.fence_margin < self.ds_heartbeat_interval {
            return bad(
                "fence_margin",
                "must be at least one datastore heartbeat interval",
            );
        }
        if self.watchdog_timeout > self.fence_margin {
            return bad("watchdog_timeout", "must not exceed fence_margin");
        }
        if self.claim_renew_interval * 3 > self.claim_lease {
            return bad(
                "claim_renew_interval",
                "must be at most a third of claim_lease",
            );
        }
        if self.max_clock_drift_ppm > 100_000 {
            return bad("max_clock_drift_ppm", "more than 10% drift is not a clock");
        }
        Ok(())
    }
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
    /// Stop VMs whose leases both lapsed (DESIGN.md section 4). Turning it off trades the
    /// never-twice guarantee for availability during storage outages; see docs/safety.md.
    pub self_fence: bool,
    /// Safety switches that exist only so the simulator can prove its checker catches their removal.
    pub fault_knobs: FaultKnobs,
}

/// Sim-only switches that remove a safety step. Never set outside tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultKnobs {
    /// Restart a dead host's VMs without waiting for its datastore lease to expire.
    pub skip_lease_wait: bool,
    /// Power on without checking the command's claim epoch and intent against the datastore.
    pub skip_intent_check: bool,
}
