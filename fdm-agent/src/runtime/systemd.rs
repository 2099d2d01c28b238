//! systemd's service notifications (`Type=notify`): ready once the agent's loop runs, a watchdog
//! ping from that loop (so a wedged loop is restarted by systemd, not only a crashed process), and
//! stopping. Without `NOTIFY_SOCKET` (not run by systemd) every call does nothing.

use sd_notify::NotifyState;
use std::time::{Duration, Instant};

pub struct Systemd {
    /// Half of `WatchdogSec`, when systemd asked for pings.
    ping_every: Option<Duration>,
    last_ping: Instant,
}

impl Systemd {
    /// Tell systemd the agent is up.
    pub fn ready() -> Self {
        notify(&[NotifyState::Ready]);
        let mut usec = 0u64;
        let ping_every = sd_notify::watchdog_enabled(false, &mut usec)
            .then(|| Duration::from_micros(usec / 2))
            .filter(|d| !d.is_zero());
        if let Some(d) = ping_every {
            tracing::info!(every_ms = d.as_millis() as u64, "systemd watchdog enabled");
        }
        Systemd {
            ping_every,
            last_ping: Instant::now(),
        }
    }

    /// Called on every turn of the agent's loop: pings the watchdog when half its time is up.
    pub fn tick(&mut self) {
        if let Some(every) = self.ping_every
            && self.last_ping.elapsed() >= every
        {
            self.last_ping = Instant::now();
            notify(&[NotifyState::Watchdog]);
        }
    }

    pub fn stopping(&self) {
        notify(&[NotifyState::Stopping]);
    }
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "systemd notification failed");
    }
}
