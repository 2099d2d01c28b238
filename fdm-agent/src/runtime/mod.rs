//! The tokio runtime around the core: a thin loop that moves datagrams, datastore completions,
//! hypervisor results and timer expiries into the `Agent` and carries its outputs out.
//!
//! Datastore IO runs on `heartbeat_fs::fs::DatastoreExecutor` threads with a deadline and hypervisor
//! calls on blocking threads, so neither can stall the heartbeats. Datagrams are received in
//! batches with a bound per turn of the loop (`udp`), so that a flood of garbage at the port cannot
//! stall them either.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod config;
pub mod metrics;
pub mod report;
pub mod status;
pub mod status_view;
mod systemd;
mod udp;

use crate::core::{
    Agent, AgentSettings, Event, HypervisorAction, HypervisorEvent, OperatorCommand, Output,
    StopCause, Time,
};
use crate::driver::{Driver, libvirt::LibvirtDriver, process::ProcessDriver};
use anyhow::Context;
use config::AgentConfig;
use heartbeat_fs::fs::DatastoreExecutor;
use heartbeat_fs::ops::DsCompletion;
use heartbeat_fs::records::ReportEvent;
use heartbeat_fs::{HostId, VmId};
use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Inputs that arrive from helper threads and tasks.
#[derive(Debug)]
enum Input {
    /// A datastore call's answer, and when it came off the executor (its duration for the
    /// metrics ends there, not when the loop gets to it).
    Ds(DsCompletion, Instant),
    Hv(HypervisorEvent),
    Isolation(bool),
    Probe(HostId, bool),
    Command(OperatorCommand),
    /// The agent file re-read after SIGHUP (off the event loop: validation stats the datastore
    /// paths, and a hung mount must not stop the heartbeats).
    Reloaded(Box<Result<AgentConfig, config::ConfigError>>),
}

/// What `fdm-agent status` reads.
#[derive(Debug, Default)]
pub struct Shared {
    pub status: Option<serde_json::Value>,
    /// The latest events as the master's report carries them, for `fdm-agent status`.
    pub events: VecDeque<ReportEvent>,
}

/// One log line per event: its words as the message, its fields as their own keys (a JSON log's
/// `fields.host`, a text log's `host=3`), so that tools filter without parsing the words.
fn log_event(e: &Event) {
    let f = e.fields();
    tracing::info!(
        target: "fdm::event",
        event = f.name,
        kind = f.kind,
        host = f.host.map(|h| h.0),
        vm = f.vm.map(|v| v.0),
        datastore = f.datastore.map(|d| d.0),
        verdict = f.verdict.map(|v| v.name()),
        reason = f.reason,
        "{e}"
    );
}

/// The shared state, also after a thread panicked while holding it: what it holds is only ever
/// replaced whole, so it is still fit to serve, and the agent must not stop over a status page.
fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The event loop's own counters, for the metrics: how the receive path and the timers fare.
#[derive(Debug, Default)]
struct LoopStats {
    /// UDP receive buffer the kernel granted, bytes as it counts them.
    receive_buffer: usize,
    /// Datagrams the kernel dropped at the socket because its queue was full.
    kernel_drops: udp::KernelDrops,
    /// Turns of the loop that handled the full budget of datagrams: the socket had more.
    full_receive_turns: u64,
    receive_errors: u64,
    /// Timer expiries handled more than [`LATE_TIMER`] after their deadline, and the latest one.
    late_timers: u64,
    latest_timer: Duration,
}

/// A timer this late means the event loop was too busy to keep time (heartbeats every 500 ms by
/// default, a verdict turns after 1.5 s).
const LATE_TIMER: Duration = Duration::from_millis(50);

impl LoopStats {
    fn timer_fired(&mut self, deadline: Option<Time>, now: Time) {
        let Some(d) = deadline else { return };
        let late = now.since(d);
        if late > LATE_TIMER {
            self.late_timers += 1;
        }
        self.latest_timer = self.latest_timer.max(late);
    }
}

/// The core's clock: microseconds since `start` (saturating; u64 microseconds last 584 000 years).
fn clock(start: Instant) -> Time {
    Time::from_micros(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX))
}

/// When the event loop must wake for a core deadline. A deadline beyond what `Instant` can hold is
/// looked at again in an hour rather than overflowing; no deadline at all, in 100 ms (as before).
fn wake_at(start: Instant, deadline: Option<Time>) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    match deadline {
        Some(t) => start
            .checked_add(Duration::from_micros(t.as_micros()))
            .map(tokio::time::Instant::from_std)
            .or_else(|| now.checked_add(Duration::from_secs(3600)))
            .unwrap_or(now),
        None => now.checked_add(Duration::from_millis(100)).unwrap_or(now),
    }
}

/// One turn's worth of datagrams: up to [`udp::TURN_BUDGET`], fewer when the queue runs dry. Then
/// the core's timer, if it fell due meanwhile, so that a steady flood delays it by one turn at
/// most, whatever order the event loop's branches are polled in.
fn receive_turn(
    socket: &UdpSocket,
    receiver: &mut udp::Receiver,
    agent: &mut Agent,
    start: Instant,
    stats: &mut LoopStats,
) {
    let mut handled = 0;
    while handled < udp::TURN_BUDGET {
        let n = match receiver.receive(socket) {
            Ok(n) => n,
            Err(e) => {
                stats.receive_errors += 1;
                if stats.receive_errors.is_power_of_two() {
                    tracing::warn!(error = %e, times = stats.receive_errors, "receiving from the UDP socket failed");
                }
                break;
            }
        };
        // One batch arrived in one system call: one reading of the clock dates all of it.
        let t = clock(start);
        for i in 0..n {
            agent.handle_datagram(t, receiver.datagram(i));
        }
        handled += n;
        if n < udp::BATCH {
            break;
        }
    }
    if handled >= udp::TURN_BUDGET {
        stats.full_receive_turns += 1;
    }
    let deadline = agent.poll_timeout();
    let t = clock(start);
    if deadline.is_some_and(|d| d <= t) {
        stats.timer_fired(deadline, t);
        agent.handle_timeout(t);
    }
}

trait Watchdog: Send {
    fn kick(&mut self);
    /// Clean stop: disarm (the device's magic close).
    fn disarm(&mut self);
}

struct NoWatchdog;
impl Watchdog for NoWatchdog {
    fn kick(&mut self) {}
    fn disarm(&mut self) {}
}

/// `/dev/watchdog`: any write kicks it; writing 'V' before close disarms it.
struct DeviceWatchdog(std::fs::File);
impl Watchdog for DeviceWatchdog {
    fn kick(&mut self) {
        let _ = self.0.write_all(b"k");
    }
    fn disarm(&mut self) {
        let _ = self.0.write_all(b"V");
    }
}

/// A kick file for test harnesses: its content is a kick counter; a harness that sees it stop
/// changing hard-kills the host, as a hardware watchdog would reset it.
///
/// Written whole and renamed into place: a plain write truncates first, and an agent stopped (the
/// hang this watchdog exists for) between the truncation and the write would leave an empty file,
/// which the harness reads as "disarmed" and never resets.
struct FileWatchdog(std::path::PathBuf, u64);
impl FileWatchdog {
    fn put(&self, content: &str) {
        let tmp = self.0.with_extension("new");
        if std::fs::write(&tmp, content).is_ok() {
            let _ = std::fs::rename(&tmp, &self.0);
        }
    }
}
impl Watchdog for FileWatchdog {
    fn kick(&mut self) {
        self.1 += 1;
        self.put(&self.1.to_string());
    }
    fn disarm(&mut self) {
        self.put("disarmed");
    }
}

fn watchdog(spec: &str) -> anyhow::Result<Box<dyn Watchdog>> {
    if let Some(p) = spec.strip_prefix("device:") {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .with_context(|| format!("opening watchdog {p}"))?;
        Ok(Box::new(DeviceWatchdog(f)))
    } else if let Some(p) = spec.strip_prefix("file:") {
        Ok(Box::new(FileWatchdog(p.into(), 0)))
    } else {
        Ok(Box::new(NoWatchdog))
    }
}

pub fn make_driver(cfg: &AgentConfig) -> anyhow::Result<Arc<dyn Driver>> {
    Ok(match cfg.file.driver.kind.as_str() {
        "libvirt" => {
            let d = LibvirtDriver::new(cfg.file.driver.uri.as_deref().unwrap_or("qemu:///system"));
            if let Err(e) = d.check() {
                // Degraded, not fatal: heartbeats go on (so nothing here is restarted elsewhere
                // while it may run), and no VM report is sent until the inventory succeeds.
                tracing::error!(error = %e, "hypervisor unavailable at start; running on, retrying the inventory");
            }
            Arc::new(d)
        }
        _ => Arc::new(
            ProcessDriver::new(cfg.file.state_dir.join("vms"))?
                .with_host_label(cfg.host.0.to_string()),
        ),
    })
}

/// Incarnations must grow across restarts of the agent on one host: milliseconds since the epoch.
fn incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}

/// Ping an address once (ICMP through the `ping` binary); false when it does not answer or `ping`
/// is missing.
async fn ping(addr: String) -> bool {
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap_or(addr);
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    match tokio::process::Command::new("ping")
        .args(["-c", "1", "-W", "1", &host])
        .output()
        .await
    {
        Ok(o) => o.status.success(),
        Err(_) => false,
    }
}

/// Run the agent until SIGTERM/SIGINT (or `stop` fires).
pub async fn run(
    mut cfg: AgentConfig,
    stop: Option<tokio::sync::oneshot::Receiver<()>>,
) -> anyhow::Result<()> {
    for w in &cfg.warnings {
        tracing::warn!(field = %w.field, "{}", w.reason);
    }
    std::fs::create_dir_all(&cfg.file.state_dir)
        .with_context(|| format!("state dir {}", cfg.file.state_dir.display()))?;
    let driver = make_driver(&cfg)?;
    let (socket, receive_buffer) = udp::bind(cfg.bind)?;
    let start = Instant::now();
    let now = || clock(start);
    let mut loop_stats = LoopStats {
        receive_buffer,
        ..LoopStats::default()
    };
    let mut receiver = udp::Receiver::new();
    let incarnation = incarnation();
    let mut reporter = report::Reporter::new(incarnation, &cfg.datastores)?;
    let mut settings = AgentSettings::new(
        cfg.host,
        incarnation,
        cfg.cluster,
        cfg.secret,
        cfg.datastores.iter().map(|(d, _)| *d).collect(),
        cfg.timings.clone(),
    );
    settings.self_fence = cfg.file.self_fence;
    let mut agent = Agent::new(settings, Some(cfg.bootstrap_cluster()), now());
    let (tx, mut rx) = mpsc::unbounded_channel::<Input>();

    let (executor, completions) =
        DatastoreExecutor::new(&cfg.datastores, cfg.timings.datastore_call_deadline);
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("fdm-ds-bridge".into())
            .spawn(move || {
                while let Ok(c) = completions.recv() {
                    if tx.send(Input::Ds(c, Instant::now())).is_err() {
                        break;
                    }
                }
            })?;
    }
    // Unsolicited VM stops (crash, operator) are polled from the driver.
    {
        let (tx, driver) = (tx.clone(), driver.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let d = driver.clone();
                let evs = tokio::task::spawn_blocking(move || d.take_unsolicited())
                    .await
                    .unwrap_or_default();
                for e in evs {
                    if tx
                        .send(Input::Hv(HypervisorEvent::VmStopped {
                            vm: e.vm,
                            state: e.state,
                        }))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
    }
    let shared = Arc::new(Mutex::new(Shared::default()));
    if let Some(path) = cfg.file.status_socket.clone() {
        status::serve_status(path, shared.clone(), tx.clone())?;
    }
    let metrics = Arc::new(metrics::Metrics::new());
    let mut ds_timer = metrics::DsTimer::default();
    if let Some(addr) = cfg.metrics {
        metrics::serve(addr, metrics.clone())
            .await
            .with_context(|| format!("metrics endpoint {addr}"))?;
    }
    let mut watchdog = watchdog(&cfg.file.watchdog)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut stop = stop;
    let mut shutting_down: Option<Instant> = None;
    let mut known_config = u64::MAX;
    let mut last_publish: Option<Instant> = None;
    let mut events_since_publish = false;
    tracing::info!(host = %cfg.host, bind = %cfg.bind, "fdm-agent started");
    if crate::core::FAULT_KNOBS_COMPILED {
        // The knobs are all off (nothing in the configuration sets them), but such a build was
        // made for tests, with the simulator's features: say so where an operator looks.
        tracing::warn!(
            "this is a test build (fault knobs compiled in, all off); build for production with `cargo build --release -p fdm-agent`"
        );
    }
    let mut systemd = systemd::Systemd::ready();

    loop {
        // Carry out everything the core asked for.
        while let Some(out) = agent.poll_output() {
            match out {
                Output::Transmit(t) => {
                    let addr = agent
                        .config()
                        .host(t.to)
                        .and_then(|h| h.address.parse::<SocketAddr>().ok());
                    if let Some(addr) = addr {
                        let _ = socket.try_send_to(&t.payload, addr);
                    }
                }
                Output::Datastore(req) => {
                    ds_timer.submitted(&req, Instant::now());
                    executor.submit(req);
                }
                Output::Hypervisor(action) => {
                    let (tx, d) = (tx.clone(), driver.clone());
                    tokio::task::spawn_blocking(move || {
                        let _ = tx.send(Input::Hv(run_action(d.as_ref(), action)));
                    });
                }
                Output::CheckIsolation => {
                    let addrs = agent.config().ha.isolation_addresses.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        // No isolation address configured: isolation cannot be told from a partition
                        // of one, so this host never declares itself isolated (docs/operations.md).
                        let mut reachable = addrs.is_empty();
                        for a in addrs {
                            if ping(a).await {
                                reachable = true;
                                break;
                            }
                        }
                        let _ = tx.send(Input::Isolation(reachable));
                    });
                }
                Output::Probe { host } => {
                    let tx = tx.clone();
                    let addr = agent.config().host(host).map(|h| h.address.clone());
                    let icmp = cfg.file.probe == "icmp";
                    tokio::spawn(async move {
                        let answered = match (icmp, addr) {
                            (true, Some(a)) => ping(a).await,
                            _ => false,
                        };
                        let _ = tx.send(Input::Probe(host, answered));
                    });
                }
                Output::KickWatchdog => watchdog.kick(),
                Output::Event(e) => {
                    events_since_publish = true;
                    log_event(&e);
                    metrics.event(&e);
                    let reported = reporter.record(&e);
                    let mut s = lock(&shared);
                    s.events.push_back(reported);
                    while s.events.len() > 200 {
                        s.events.pop_front();
                    }
                }
            }
        }
        if agent.config().generation != known_config {
            known_config = agent.config().generation;
            let vms: Vec<(VmId, String)> = agent
                .config()
                .vms
                .iter()
                .map(|v| (v.id, v.definition.clone()))
                .collect();
            driver.set_known_vms(&vms);
        }
        systemd.tick();
        if events_since_publish
            || last_publish.is_none_or(|t| t.elapsed() >= Duration::from_millis(200))
        {
            last_publish = Some(Instant::now());
            events_since_publish = false;
            loop_stats.kernel_drops.refresh(&socket);
            let snapshot = agent.status(now());
            status::publish(&snapshot, &shared);
            metrics.publish_from(&agent, &snapshot, &loop_stats);
            reporter.tick(&agent, &snapshot);
        }
        if let Some(t0) = shutting_down
            && (t0.elapsed() > Duration::from_millis(300))
        {
            watchdog.disarm();
            tracing::info!("fdm-agent stopped");
            return Ok(());
        }
        let deadline = agent.poll_timeout();
        let sleep = tokio::time::sleep_until(wake_at(start, deadline));
        let stopper = async {
            match stop.as_mut() {
                Some(s) => {
                    let _ = s.await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = socket.readable() => {
                if r.is_ok() {
                    receive_turn(&socket, &mut receiver, &mut agent, start, &mut loop_stats);
                }
            }
            Some(input) = rx.recv() => {
                let t = now();
                match input {
                    Input::Ds(c, arrived) => {
                        ds_timer.completed(&metrics, &c, arrived);
                        agent.handle_datastore(t, c);
                    }
                    Input::Hv(e) => agent.handle_hypervisor(t, e),
                    Input::Isolation(r) => agent.handle_isolation_check(t, r),
                    Input::Probe(h, a) => agent.handle_probe(t, h, a),
                    Input::Command(c) => agent.handle_command(t, c),
                    Input::Reloaded(r) => apply_reload(&mut cfg, &mut agent, *r),
                }
            }
            _ = sleep => {
                let t = now();
                loop_stats.timer_fired(deadline, t);
                agent.handle_timeout(t);
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: handing over and stopping");
                systemd.stopping();
                agent.handle_command(now(), OperatorCommand::Shutdown);
                shutting_down = Some(Instant::now());
            }
            _ = stopper, if shutting_down.is_none() => {
                systemd.stopping();
                agent.handle_command(now(), OperatorCommand::Shutdown);
                shutting_down = Some(Instant::now());
                stop = None;
            }
            _ = hup.recv() => match cfg.source.clone() {
                Some(path) => {
                    let tx = tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let _ = tx.send(Input::Reloaded(Box::new(AgentConfig::load(&path))));
                    });
                }
                None => tracing::warn!("SIGHUP: no configuration file to reload"),
            },
        }
    }
}

/// SIGHUP: re-read the agent file. Timings and the probe apply at once; fields that only a
/// restart can apply are named in the log and keep their running values. An invalid file changes
/// nothing.
fn apply_reload(
    cfg: &mut AgentConfig,
    agent: &mut Agent,
    loaded: Result<AgentConfig, config::ConfigError>,
) {
    let path = cfg.source.clone().unwrap_or_default();
    let new = match loaded {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "SIGHUP: configuration invalid; keeping the running one");
            return;
        }
    };
    if let Err(e) = agent.set_local_timings(new.timings.clone()) {
        tracing::error!(error = %e, "SIGHUP: timings refused; keeping the running ones");
        return;
    }
    let restart = cfg.restart_needed(&new);
    cfg.file.probe = new.file.probe.clone();
    cfg.file.timings = new.file.timings.clone();
    cfg.timings = new.timings.clone();
    for w in &new.warnings {
        tracing::warn!(field = %w.field, "{}", w.reason);
    }
    tracing::info!(
        file = %path.display(),
        heartbeat_interval_ms = agent.timings().heartbeat_interval.as_millis() as u64,
        ds_lease_ms = agent.timings().ds_lease.as_millis() as u64,
        probe = %cfg.file.probe,
        restart_needed = ?restart,
        "SIGHUP: configuration reloaded (timings and probe applied)"
    );
}

fn run_action(d: &dyn Driver, action: HypervisorAction) -> HypervisorEvent {
    match action {
        HypervisorAction::PowerOn { op, vm, definition } => HypervisorEvent::PowerOnResult {
            op,
            vm,
            result: d.power_on(vm, &definition).map_err(|e| e.to_string()),
        },
        HypervisorAction::PowerOff { op, vm, cause } => {
            let result = d.power_off(vm).map_err(|e| e.to_string());
            if result.is_ok()
                && cause == StopCause::StaleCopy
                && let Err(e) = d.discard(vm)
            {
                // The copy is off, which is what matters now; the definition is removed again
                // before any later start of the VM here (the libvirt driver undefines a stale
                // definition first).
                tracing::warn!(%vm, error = %e, "stale copy stopped; removing its definition failed");
            }
            HypervisorEvent::PowerOffResult { op, vm, result }
        }
        HypervisorAction::Shutdown {
            op, vm, timeout, ..
        } => HypervisorEvent::PowerOffResult {
            op,
            vm,
            result: d.shutdown(vm, timeout).map_err(|e| e.to_string()),
        },
        HypervisorAction::Pause { op, vm } => HypervisorEvent::PauseResult {
            op,
            vm,
            result: d.pause(vm).map_err(|e| e.to_string()),
        },
        HypervisorAction::Resume { op, vm } => HypervisorEvent::ResumeResult {
            op,
            vm,
            result: d.resume(vm).map_err(|e| e.to_string()),
        },
        HypervisorAction::List { op } => match d.list() {
            Ok(running) => HypervisorEvent::Inventory { op, running },
            Err(e) => {
                // Without an inventory the agent must not assume nothing runs: retry until it works.
                tracing::error!(error = %e, "hypervisor inventory failed; retrying");
                std::thread::sleep(Duration::from_secs(1));
                run_action(d, HypervisorAction::List { op })
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deadlines_beyond_the_clock_do_not_panic() {
        let start = Instant::now();
        let now = tokio::time::Instant::now();
        // The far end of the core's clock: an hour from now, not an overflow.
        let far = wake_at(start, Some(Time(u64::MAX)));
        assert!(far >= now + Duration::from_secs(3599));
        let soon = wake_at(start, Some(Time::from_millis(5)));
        assert!(soon <= tokio::time::Instant::from_std(start) + Duration::from_millis(5));
        let idle = wake_at(start, None);
        assert!(idle >= now + Duration::from_millis(100));
        assert!(clock(start) <= Time::from_millis(60_000));
    }

    #[test]
    fn late_timers_are_counted() {
        let mut s = LoopStats::default();
        s.timer_fired(None, Time::from_millis(900));
        s.timer_fired(Some(Time::from_millis(100)), Time::from_millis(120));
        assert_eq!(s.late_timers, 0);
        s.timer_fired(Some(Time::from_millis(100)), Time::from_millis(200));
        assert_eq!(s.late_timers, 1);
        assert_eq!(s.latest_timer, Duration::from_millis(100));
        // A timer handled before its deadline (a spurious wake-up) is not late.
        s.timer_fired(Some(Time::from_millis(500)), Time::from_millis(400));
        assert_eq!(s.late_timers, 1);
    }
}
