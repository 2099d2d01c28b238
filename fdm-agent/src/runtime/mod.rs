//! The tokio runtime around the core: a thin loop that moves datagrams, datastore completions,
//! hypervisor results and timer expiries into the `Agent` and carries its outputs out.
//!
//! Datastore IO runs on `heartbeat_fs::fs::DatastoreExecutor` threads with a deadline and hypervisor
//! calls on blocking threads, so neither can stall the heartbeats.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod config;
pub mod report;
pub mod status;

use crate::core::{
    Agent, AgentSettings, HypervisorAction, HypervisorEvent, OperatorCommand, Output, Time,
};
use crate::driver::{Driver, libvirt::LibvirtDriver, process::ProcessDriver};
use anyhow::Context;
use config::AgentConfig;
use heartbeat_fs::fs::DatastoreExecutor;
use heartbeat_fs::ops::DsCompletion;
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
    Ds(DsCompletion),
    Hv(HypervisorEvent),
    Isolation(bool),
    Probe(HostId, bool),
    Command(OperatorCommand),
    /// The agent file re-read after SIGHUP (off the event loop: validation stats the datastore
    /// paths, and a hung mount must not stop the heartbeats).
    Reloaded(Box<Result<AgentConfig, config::ConfigError>>),
}

/// What `fdm-agent status` and `/metrics` read.
#[derive(Debug, Default)]
pub struct Shared {
    pub status: Option<serde_json::Value>,
    pub metrics: String,
    pub events: VecDeque<String>,
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
struct FileWatchdog(std::path::PathBuf, u64);
impl Watchdog for FileWatchdog {
    fn kick(&mut self) {
        self.1 += 1;
        let _ = std::fs::write(&self.0, self.1.to_string());
    }
    fn disarm(&mut self) {
        let _ = std::fs::write(&self.0, "disarmed");
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

fn udp_socket(bind: SocketAddr) -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    let _ = s.set_recv_buffer_size(1 << 20);
    let _ = s.set_send_buffer_size(1 << 20);
    if bind.is_ipv4() {
        // DSCP CS6 (network control): heartbeats ahead of bulk traffic where the network honours it.
        let _ = s.set_tos(0xc0);
    }
    s.set_nonblocking(true)?;
    s.bind(&bind.into())
        .with_context(|| format!("binding {bind}"))?;
    Ok(UdpSocket::from_std(s.into())?)
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
    let socket = Arc::new(udp_socket(cfg.bind)?);
    let start = Instant::now();
    let now = || Time::from_micros(start.elapsed().as_micros() as u64);
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
                    if tx.send(Input::Ds(c)).is_err() {
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
    if let Some(addr) = cfg.metrics {
        status::serve_metrics(addr, shared.clone()).await?;
    }
    let mut watchdog = watchdog(&cfg.file.watchdog)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut stop = stop;
    let mut buf = vec![0u8; 2048];
    let mut shutting_down: Option<Instant> = None;
    let mut known_config = u64::MAX;
    let mut last_publish = Instant::now() - Duration::from_secs(1);
    let mut events_since_publish = false;
    tracing::info!(host = %cfg.host, bind = %cfg.bind, "fdm-agent started");
    if crate::core::FAULT_KNOBS_COMPILED {
        // The knobs are all off (nothing in the configuration sets them), but such a build was
        // made for tests, with the simulator's features: say so where an operator looks.
        tracing::warn!(
            "this is a test build (fault knobs compiled in, all off); build for production with `cargo build --release -p fdm-agent`"
        );
    }

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
                Output::Datastore(req) => executor.submit(req),
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
                    reporter.record(&e);
                    let line = format!("{e:?}");
                    tracing::info!(target: "fdm::event", event = %line);
                    let mut s = shared.lock().expect("shared");
                    s.events
                        .push_back(format!("{:.3} {line}", start.elapsed().as_secs_f64()));
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
        if events_since_publish || last_publish.elapsed() >= Duration::from_millis(200) {
            last_publish = Instant::now();
            events_since_publish = false;
            let snapshot = agent.status(now());
            status::publish(&agent, &snapshot, &shared);
            reporter.tick(&agent, &snapshot);
        }
        if let Some(t0) = shutting_down
            && (t0.elapsed() > Duration::from_millis(300))
        {
            watchdog.disarm();
            tracing::info!("fdm-agent stopped");
            return Ok(());
        }
        let deadline = agent
            .poll_timeout()
            .map(|t| start + Duration::from_micros(t.as_micros()));
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let stopper = async {
            match stop.as_mut() {
                Some(s) => {
                    let _ = s.await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, _)) = r {
                    agent.handle_datagram(now(), &buf[..n]);
                }
            }
            Some(input) = rx.recv() => {
                let t = now();
                match input {
                    Input::Ds(c) => agent.handle_datastore(t, c),
                    Input::Hv(e) => agent.handle_hypervisor(t, e),
                    Input::Isolation(r) => agent.handle_isolation_check(t, r),
                    Input::Probe(h, a) => agent.handle_probe(t, h, a),
                    Input::Command(c) => agent.handle_command(t, c),
                    Input::Reloaded(r) => apply_reload(&mut cfg, &mut agent, *r),
                }
            }
            _ = sleep => agent.handle_timeout(now()),
            _ = term.recv() => {
                tracing::info!("SIGTERM: handing over and stopping");
                agent.handle_command(now(), OperatorCommand::Shutdown);
                shutting_down = Some(Instant::now());
            }
            _ = stopper, if shutting_down.is_none() => {
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
        HypervisorAction::PowerOff { op, vm, .. } => HypervisorEvent::PowerOffResult {
            op,
            vm,
            result: d.power_off(vm).map_err(|e| e.to_string()),
        },
        HypervisorAction::Shutdown {
            op, vm, timeout, ..
        } => HypervisorEvent::PowerOffResult {
            op,
            vm,
            result: d.shutdown(vm, timeout).map_err(|e| e.to_string()),
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
