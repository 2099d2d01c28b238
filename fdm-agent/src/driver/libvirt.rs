//! The libvirt driver, through the `virsh` CLI (no C library to link). The VM definition is the
//! domain XML; its `<name>` names the domain. Tested against a real libvirtd with QEMU under TCG by
//! the multi-host suite (`tests/multihost_libvirt.rs`) when libvirt is installed.
//!
//! # Stops told apart
//! The driver polls `virsh list --all` (every domain with its state, one call). A domain it saw
//! running that is no longer active is read with `virsh domstate --reason` and reported as:
//!
//! | libvirt state (reason)                      | reported          | why                                    |
//! |---------------------------------------------|-------------------|----------------------------------------|
//! | running, idle, in shutdown, pmsuspended     | still running     | QEMU runs                              |
//! | paused (any reason: user, I/O error, ...)   | still running     | QEMU holds the guest's memory and disks: a copy elsewhere would run twice |
//! | shut off (shutdown)                         | `StoppedByUser`   | the guest powered off, or `virsh shutdown` |
//! | shut off (destroyed)                        | `StoppedByUser`   | `virsh destroy` by an operator (fdm's own stops are not reported) |
//! | shut off (migrated)                         | `StoppedByUser`   | migrated away: it runs on the destination |
//! | shut off (saved), shut off (from snapshot)  | `StoppedByUser`   | `virsh save`/`managedsave`, a snapshot revert: operator actions |
//! | shut off (crashed), shut off (failed)       | `Crashed`         | QEMU died or failed                    |
//! | shut off (daemon), shut off (unknown), other | `Crashed`        | no clean reason: restart (the domain is off here, so a restart cannot make a second copy) |
//! | crashed (on_crash=preserve)                 | `Crashed`         | the guest is dead; the driver destroys the domain first so that its disks are free |
//! | domain gone (undefined, transient)          | `Crashed`         | no reason left to read                 |
//!
//! `StoppedByUser` makes the master mark the VM off (not restarted); `Crashed` makes it restart.
//!
//! # Definitions
//! Domains fdm starts are persistent (`virsh define`) with autostart off, not transient: a
//! transient domain vanishes when it stops, and with it the reason above. A stale definition of
//! the same name (left by an earlier run of the VM here) is undefined first, with its managed
//! save: its memory image is older than the disks and must never be restored. The core starts a
//! VM only after taking its lease, so the stale copy is not anyone's. Autostart is disabled on
//! every domain of a cluster VM when the driver learns the cluster's VMs and every
//! [`AUTOSTART_RECHECK`] after: libvirt would otherwise start a stale copy at the host's next boot,
//! before any agent runs, while the VM may run elsewhere.
//!
//! # Pause and resume
//! The storage-loss response `pause` is `virsh suspend`, its end `virsh resume`. A paused domain
//! is active (table above): it stays listed as running and is never reported as a stop. A resume
//! is made only of a domain paused by a user (`virsh suspend`, ours) or by QEMU's own I/O error
//! policy (`error_policy='stop'`, which pauses a guest whose storage fails): a domain paused by
//! libvirt for a migration, a save, a dump, a snapshot, a watchdog or a crash is not ours to let
//! run, and the resume fails (the core retries it later).
//!
//! Every `virsh` call has a deadline (below, per kind of call); `virsh` runs with `LC_ALL=C`
//! because the state words it prints are translated.

use super::command::output_within;
use super::{Driver, DriverError, Unsolicited};
use crate::core::VmRunState;
use heartbeat_fs::VmId;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Queries (list, domstate, version): libvirtd answers in tens of milliseconds, but the first call
/// on a fresh libvirtd probes QEMU's capabilities (4 to 7 s on the 2-core test machine).
const QUERY_DEADLINE: Duration = Duration::from_secs(20);
/// define, undefine, autostart: libvirtd writes or removes a file under /etc/libvirt.
const CONFIG_DEADLINE: Duration = Duration::from_secs(20);
/// start: QEMU's own start plus memory allocation (a large guest's pages), storage and network
/// setup, which take tens of seconds on a loaded host; a start killed too early may still come up.
const START_DEADLINE: Duration = Duration::from_secs(90);
/// destroy: libvirt sends SIGTERM, waits 10 s, then SIGKILL and waits again for a QEMU stuck in
/// IO; ours lies beyond both so that libvirt's answer, not our kill, decides.
const DESTROY_DEADLINE: Duration = Duration::from_secs(60);
/// shutdown: `virsh shutdown` only asks the guest (ACPI); the wait for the guest is
/// [`Driver::shutdown`]'s own timeout.
const SHUTDOWN_REQUEST_DEADLINE: Duration = Duration::from_secs(20);
/// suspend, resume: QEMU stops the vCPUs and drains the guest's in-flight IO first, which waits
/// on the very storage whose loss made us pause.
const PAUSE_DEADLINE: Duration = Duration::from_secs(30);
/// The deadlines of the kinds of `virsh` call (the constants above; tests shorten them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub query: Duration,
    pub config: Duration,
    pub start: Duration,
    pub destroy: Duration,
    pub shutdown_request: Duration,
    pub pause: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            query: QUERY_DEADLINE,
            config: CONFIG_DEADLINE,
            start: START_DEADLINE,
            destroy: DESTROY_DEADLINE,
            shutdown_request: SHUTDOWN_REQUEST_DEADLINE,
            pause: PAUSE_DEADLINE,
        }
    }
}

/// How often the autostart flags of the cluster's domains are checked again (an operator may set
/// one by hand); also checked whenever the cluster's VMs change.
pub const AUTOSTART_RECHECK: Duration = Duration::from_secs(60);

/// A domain's state, as `virsh` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    Running,
    /// `idle`: blocked on a resource.
    Idle,
    Paused,
    InShutdown,
    ShutOff,
    /// Kept after a guest crash (`on_crash` = preserve): QEMU still exists.
    Crashed,
    PmSuspended,
    /// `no state`, or a word this driver does not know (a newer libvirt).
    NoState,
}

/// virsh's words, longest first where one ends another.
const STATE_WORDS: &[(&str, DomainState)] = &[
    ("in shutdown", DomainState::InShutdown),
    ("shut off", DomainState::ShutOff),
    ("pmsuspended", DomainState::PmSuspended),
    ("no state", DomainState::NoState),
    ("running", DomainState::Running),
    ("paused", DomainState::Paused),
    ("crashed", DomainState::Crashed),
    ("idle", DomainState::Idle),
];

impl DomainState {
    fn from_words(s: &str) -> Option<DomainState> {
        let s = s.trim();
        STATE_WORDS.iter().find(|(w, _)| *w == s).map(|(_, st)| *st)
    }

    /// Whether QEMU still exists for the domain (it holds the guest's memory and disks). A state
    /// this driver cannot read counts as active: a stop it cannot see is never reported.
    pub fn is_active(self) -> bool {
        self != DomainState::ShutOff
    }
}

/// What HA makes of a domain's state and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// QEMU runs (also paused): not stopped, never to be started elsewhere.
    Active,
    /// Crashed and kept by libvirt: dead, but QEMU still holds the disks until destroyed.
    CrashedPreserved,
    Stopped(VmRunState),
}

/// The table in the module comment.
pub fn classify(state: DomainState, reason: &str) -> Seen {
    match state {
        DomainState::Crashed => Seen::CrashedPreserved,
        DomainState::ShutOff => Seen::Stopped(match reason.trim() {
            "shutdown" | "destroyed" | "migrated" | "saved" | "from snapshot" => {
                VmRunState::StoppedByUser
            }
            // crashed, failed, daemon, unknown, and any reason a newer libvirt adds: restart. The
            // domain is off here, so a restart never makes a second copy; not restarting a VM
            // that died would be the outage HA exists to prevent.
            _ => VmRunState::Crashed,
        }),
        _ => Seen::Active,
    }
}

/// Whether a resume may let a domain in `state` (`reason`) run: only one paused by a user (our
/// `virsh suspend`) or by QEMU for an I/O error; `Ok(false)` when there is nothing to resume.
pub fn resumable(state: DomainState, reason: &str) -> Result<bool, String> {
    match state {
        DomainState::Paused => match reason.trim() {
            "user" | "I/O error" => Ok(true),
            other => Err(format!("paused by libvirt ({other}): not HA's to resume")),
        },
        DomainState::ShutOff | DomainState::Crashed => Err("not running".to_string()),
        _ => Ok(false),
    }
}

/// `virsh domstate --reason` output: `shut off (destroyed)`, `paused (I/O error)`.
pub fn parse_domstate(out: &str) -> Option<(DomainState, String)> {
    let line = out.lines().map(str::trim).find(|l| !l.is_empty())?;
    let (state, reason) = match line.split_once(" (") {
        Some((s, r)) => (s, r.strip_suffix(')')?),
        None => (line, ""),
    };
    Some((DomainState::from_words(state)?, reason.trim().to_string()))
}

/// `virsh -q list --all` output, one domain a line: ` 3    web-1   running`, ` -    db   shut off`.
/// The state is matched at the end of the line (its words contain spaces, and so may a name).
/// Errors name the first line that cannot be read: a listing read wrongly would make a running
/// VM look gone.
pub fn parse_list(out: &str) -> Result<BTreeMap<String, DomainState>, String> {
    let mut m = BTreeMap::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((_id, rest)) = line.split_once(char::is_whitespace) else {
            return Err(line.to_string());
        };
        let rest = rest.trim();
        let known = STATE_WORDS.iter().find_map(|(w, st)| {
            let name = rest.strip_suffix(w)?;
            // A whole word: "web-1   running", not "xrunning".
            name.ends_with(char::is_whitespace)
                .then(|| (name.trim().to_string(), *st))
        });
        let (name, state) = match known {
            Some(k) => k,
            // A state word this driver does not know: the name is the first word (no spaces
            // assumed), the state unreadable (so: active, never reported as a stop).
            None => match rest.split_once(char::is_whitespace) {
                Some((name, _)) => (name.to_string(), DomainState::NoState),
                None => return Err(line.to_string()),
            },
        };
        if name.is_empty() {
            return Err(line.to_string());
        }
        m.insert(name, state);
    }
    Ok(m)
}

#[derive(Debug)]
pub struct LibvirtDriver {
    uri: String,
    deadlines: Deadlines,
    /// Domain name <-> VM id, from the definitions in the cluster configuration.
    names: Mutex<BTreeMap<String, VmId>>,
    /// Whether `set_known_vms` has run: until then a listing cannot be mapped to VMs, and an
    /// inventory taken then would say that nothing runs.
    known: AtomicBool,
    /// Domains we saw running, to notice ones that stop without us.
    seen_running: Mutex<BTreeSet<VmId>>,
    /// Stops we are making: their ends are not unsolicited.
    stopping: Mutex<BTreeSet<VmId>>,
    /// Counts finished starts and stops: a listing taken while one ran is not used to decide
    /// what runs (it may predate the stop).
    changes: AtomicU64,
    /// When the autostart flags were last checked; None: due.
    autostart_checked: Mutex<Option<Instant>>,
}

/// The `<name>` of a domain XML.
pub fn domain_name(xml: &str) -> Option<String> {
    let start = xml.find("<name>")? + "<name>".len();
    let end = xml[start..].find("</name>")? + start;
    let name = xml[start..end].trim();
    (!name.is_empty()).then(|| name.to_string())
}

impl LibvirtDriver {
    /// Never fails: libvirt may be down when the agent starts (and come back later), and an agent
    /// that refused to start would leave the VMs already running here unprotected. The runtime
    /// calls [`LibvirtDriver::check`] to say so in the log.
    pub fn new(uri: &str) -> Self {
        LibvirtDriver {
            uri: uri.to_string(),
            deadlines: Deadlines::default(),
            names: Mutex::default(),
            known: AtomicBool::new(false),
            seen_running: Mutex::default(),
            stopping: Mutex::default(),
            changes: AtomicU64::new(0),
            autostart_checked: Mutex::new(None),
        }
    }

    pub fn with_deadlines(mut self, deadlines: Deadlines) -> Self {
        self.deadlines = deadlines;
        self
    }

    /// Whether libvirt answers at the configured URI.
    pub fn check(&self) -> Result<(), DriverError> {
        self.virsh(&["version"], self.deadlines.query)
            .map(|_| ())
            .map_err(|e| DriverError::Unavailable(format!("libvirt at {}: {e}", self.uri)))
    }

    fn virsh(&self, args: &[&str], deadline: Duration) -> Result<String, DriverError> {
        let what = format!("virsh {}", args.join(" "));
        let mut cmd = Command::new("virsh");
        cmd.env("LC_ALL", "C")
            .arg("-q")
            .arg("-c")
            .arg(&self.uri)
            .args(args);
        let out = output_within(cmd, &what, deadline)?;
        if !out.status.success() {
            return Err(DriverError::Failed(format!(
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn name_of(&self, vm: VmId) -> Result<String, DriverError> {
        self.names
            .lock()
            .expect("names")
            .iter()
            .find(|(_, v)| **v == vm)
            .map(|(n, _)| n.clone())
            .ok_or_else(|| DriverError::BadDefinition(format!("{vm}: no domain definition known")))
    }

    /// Every domain libvirt knows here, with its state.
    fn domains(&self) -> Result<BTreeMap<String, DomainState>, DriverError> {
        let out = self.virsh(&["list", "--all"], self.deadlines.query)?;
        parse_list(&out).map_err(|line| DriverError::Unexpected {
            command: "virsh list --all".into(),
            output: line,
        })
    }

    fn state_of(&self, name: &str) -> Result<DomainState, DriverError> {
        Ok(self
            .domains()?
            .get(name)
            .copied()
            .unwrap_or(DomainState::ShutOff))
    }

    fn reason_of(&self, name: &str) -> Result<(DomainState, String), DriverError> {
        let out = self.virsh(&["domstate", "--reason", name], self.deadlines.query)?;
        parse_domstate(&out).ok_or_else(|| DriverError::Unexpected {
            command: format!("virsh domstate --reason {name}"),
            output: out.trim().to_string(),
        })
    }

    fn destroy(&self, name: &str) -> Result<(), DriverError> {
        self.virsh(&["destroy", name], self.deadlines.destroy)
            .map(|_| ())
    }

    /// Turn autostart off on every domain of a cluster VM that has it, when due.
    fn check_autostart(&self) {
        if !self.known.load(Ordering::Acquire) {
            return;
        }
        {
            let checked = self.autostart_checked.lock().expect("autostart");
            if checked.is_some_and(|t| t.elapsed() < AUTOSTART_RECHECK) {
                return;
            }
        }
        let out = match self.virsh(
            &["list", "--all", "--autostart", "--name"],
            self.deadlines.query,
        ) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the domains' autostart flags; retrying");
                return;
            }
        };
        let names = self.names.lock().expect("names").clone();
        let mut all_done = true;
        for name in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Some(vm) = names.get(name) else {
                // Not a cluster VM: not ours to change.
                continue;
            };
            match self.virsh(&["autostart", "--disable", name], self.deadlines.config) {
                Ok(_) => tracing::warn!(
                    vm = %vm,
                    domain = name,
                    "autostart disabled: libvirt would start this HA-protected domain by itself at the host's next boot, while the VM may run on another host"
                ),
                Err(e) => {
                    all_done = false;
                    tracing::error!(vm = %vm, domain = name, error = %e, "cannot disable autostart; retrying");
                }
            }
        }
        if all_done {
            *self.autostart_checked.lock().expect("autostart") = Some(Instant::now());
        }
    }

    /// Remove an inactive definition (and its managed save) before defining the VM again: a
    /// domain XML without a UUID cannot be defined over one, and a stale managed save would
    /// restore an old memory image over newer disks.
    fn undefine(&self, name: &str) -> Result<(), DriverError> {
        self.virsh(
            &[
                "undefine",
                "--managed-save",
                "--snapshots-metadata",
                "--keep-nvram",
                name,
            ],
            self.deadlines.config,
        )
        .map(|_| ())
    }

    /// The cluster VMs active here, and every domain with its state; records the active ones as
    /// seen running (unless a start or stop finished meanwhile: the listing may predate it).
    #[allow(clippy::type_complexity)]
    fn listing(&self) -> Result<(Vec<VmId>, BTreeMap<String, DomainState>), DriverError> {
        if !self.known.load(Ordering::Acquire) {
            return Err(DriverError::Unavailable(
                "the cluster's VM definitions are not known yet".into(),
            ));
        }
        self.check_autostart();
        let before = self.changes.load(Ordering::Acquire);
        let domains = self.domains()?;
        let names = self.names.lock().expect("names").clone();
        let running: Vec<VmId> = domains
            .iter()
            .filter(|(_, s)| s.is_active())
            .filter_map(|(n, _)| names.get(n).copied())
            .collect();
        if self.changes.load(Ordering::Acquire) == before {
            self.seen_running
                .lock()
                .expect("seen")
                .extend(running.iter().copied());
        }
        Ok((running, domains))
    }

    /// Stop `name` if it runs and forget our stop afterwards.
    fn stop_now(&self, vm: VmId, name: &str) -> Result<(), DriverError> {
        let r = match self.state_of(name) {
            Ok(s) if s.is_active() => self.destroy(name),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if r.is_ok() {
            self.seen_running.lock().expect("seen").remove(&vm);
        }
        self.stopping.lock().expect("stopping").remove(&vm);
        self.changes.fetch_add(1, Ordering::AcqRel);
        r
    }
}

impl Driver for LibvirtDriver {
    fn power_on(&self, vm: VmId, definition: &str) -> Result<(), DriverError> {
        let name = domain_name(definition)
            .ok_or_else(|| DriverError::BadDefinition(format!("{vm}: no <name>")))?;
        self.names.lock().expect("names").insert(name.clone(), vm);
        let state = self.domains()?.get(&name).copied();
        match state.map(|s| classify(s, "")) {
            Some(Seen::Active) => {
                // Already running (or paused) here: a second start would fail, and the VM
                // must not be started anywhere else either.
                self.seen_running.lock().expect("seen").insert(vm);
                return Ok(());
            }
            Some(Seen::CrashedPreserved) => {
                self.destroy(&name)?;
                self.undefine(&name)?;
            }
            Some(Seen::Stopped(_)) => self.undefine(&name)?,
            None => {}
        }
        let file =
            tempfile::NamedTempFile::new().map_err(|e| DriverError::Failed(e.to_string()))?;
        std::fs::write(file.path(), definition).map_err(|e| DriverError::Failed(e.to_string()))?;
        let path = file.path().to_str().ok_or_else(|| {
            DriverError::Failed(format!("temporary file path {}", file.path().display()))
        })?;
        // A new definition has autostart off (the undefine above removed any flag).
        self.virsh(&["define", path], self.deadlines.config)?;
        let r = self.virsh(&["start", &name], self.deadlines.start);
        self.changes.fetch_add(1, Ordering::AcqRel);
        r?;
        self.seen_running.lock().expect("seen").insert(vm);
        Ok(())
    }

    fn power_off(&self, vm: VmId) -> Result<(), DriverError> {
        let name = self.name_of(vm)?;
        self.stopping.lock().expect("stopping").insert(vm);
        self.stop_now(vm, &name)
    }

    fn shutdown(&self, vm: VmId, timeout: Duration) -> Result<(), DriverError> {
        let name = self.name_of(vm)?;
        self.stopping.lock().expect("stopping").insert(vm);
        if self.state_of(&name).is_ok_and(DomainState::is_active) {
            // A guest without ACPI support ignores this: the hard stop below follows.
            if let Err(e) = self.virsh(&["shutdown", &name], self.deadlines.shutdown_request) {
                tracing::warn!(vm = %vm, error = %e, "guest shutdown request failed; powering off");
            }
            let end = Instant::now() + timeout;
            while Instant::now() < end && self.state_of(&name).is_ok_and(DomainState::is_active) {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        self.stop_now(vm, &name)
    }

    fn pause(&self, vm: VmId) -> Result<(), DriverError> {
        let name = self.name_of(vm)?;
        match self.state_of(&name)? {
            DomainState::Paused => Ok(()),
            DomainState::ShutOff | DomainState::Crashed => Err(DriverError::Failed(format!(
                "{vm}: domain {name} is not running"
            ))),
            _ => self
                .virsh(&["suspend", &name], self.deadlines.pause)
                .map(|_| ()),
        }
    }

    fn resume(&self, vm: VmId) -> Result<(), DriverError> {
        let name = self.name_of(vm)?;
        let (state, reason) = self.reason_of(&name)?;
        match resumable(state, &reason) {
            Ok(true) => self
                .virsh(&["resume", &name], self.deadlines.pause)
                .map(|_| ()),
            Ok(false) => Ok(()),
            Err(why) => Err(DriverError::Failed(format!("{vm}: domain {name} {why}"))),
        }
    }

    fn list(&self) -> Result<Vec<VmId>, DriverError> {
        self.listing().map(|(running, _)| running)
    }

    fn discard(&self, vm: VmId) -> Result<(), DriverError> {
        let name = self.name_of(vm)?;
        match self.state_of(&name) {
            Ok(s) if s.is_active() => Err(DriverError::Failed(format!(
                "{vm}: domain {name} runs again; not undefined"
            ))),
            Ok(_) => self.undefine(&name),
            // Gone already, or libvirt did not answer: nothing to undefine now, and a later start
            // of the VM here undefines a stale definition first.
            Err(e) => {
                tracing::debug!(%vm, error = %e, "stale copy's domain not read; left for the next start");
                Ok(())
            }
        }
    }

    fn take_unsolicited(&self) -> Vec<Unsolicited> {
        let before: BTreeSet<VmId> = self.seen_running.lock().expect("seen").clone();
        // Libvirt unreachable: nothing is reported (a stop we cannot see is not a crash).
        let Ok((running, domains)) = self.listing() else {
            return Vec::new();
        };
        let mut stopped: Vec<(VmId, String, VmRunState, String)> = Vec::new();
        for vm in before.iter().copied().filter(|v| !running.contains(v)) {
            let Ok(name) = self.name_of(vm) else { continue };
            let seen = match domains.get(&name) {
                None => Seen::Stopped(VmRunState::Crashed),
                Some(&s) => match self.reason_of(&name) {
                    Ok((s, reason)) => match classify(s, &reason) {
                        Seen::Stopped(st) => {
                            stopped.push((vm, name, st, reason));
                            continue;
                        }
                        other => other,
                    },
                    // Gone between the two calls, or libvirt did not answer: next poll.
                    Err(_) => classify(s, ""),
                },
            };
            match seen {
                Seen::Active => {}
                Seen::CrashedPreserved => {
                    // The guest is dead; QEMU holds its disks until destroyed, and a restart
                    // (here or elsewhere) needs them free.
                    match self.destroy(&name) {
                        Ok(()) => stopped.push((vm, name, VmRunState::Crashed, "crashed".into())),
                        Err(e) => {
                            tracing::error!(vm = %vm, error = %e, "cannot destroy a crashed domain")
                        }
                    }
                }
                Seen::Stopped(st) => {
                    stopped.push((vm, name, st, "domain gone".into()));
                }
            }
        }
        let mut seen = self.seen_running.lock().expect("seen");
        let mut stopping = self.stopping.lock().expect("stopping");
        let mut out = Vec::new();
        for (vm, name, state, reason) in stopped {
            // Stopped by us meanwhile (or already reported): not unsolicited.
            if !seen.remove(&vm) || stopping.remove(&vm) {
                continue;
            }
            tracing::info!(vm = %vm, domain = name, reason = reason, state = state.name(), "domain stopped without the agent");
            out.push(Unsolicited { vm, state });
        }
        out
    }

    fn set_known_vms(&self, vms: &[(VmId, String)]) {
        let mut names = self.names.lock().expect("names");
        for (vm, def) in vms {
            if let Some(n) = domain_name(def) {
                names.insert(n, *vm);
            }
        }
        // New names: their autostart flags are checked on the next call that talks to libvirt
        // (this one runs on the agent's event loop and must not wait for virsh).
        *self.autostart_checked.lock().expect("autostart") = None;
        self.known.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names_come_from_the_xml() {
        assert_eq!(
            domain_name("<domain type='qemu'><name> web-1 </name></domain>"),
            Some("web-1".into())
        );
        assert_eq!(domain_name("<domain/>"), None);
        assert_eq!(domain_name("<name></name>"), None);
    }

    #[test]
    fn missing_libvirt_is_a_clear_error() {
        let d = LibvirtDriver::new("test+unix:///default?socket=/nonexistent/fdm-test.sock");
        let r = d.check();
        assert!(matches!(r, Err(DriverError::Unavailable(_))), "{r:?}");
        d.set_known_vms(&[]);
        // Listing (the inventory) fails too, so the agent never takes "no answer" for "no VMs".
        assert!(d.list().is_err());
        // And no stop is reported from a libvirt that does not answer.
        assert!(d.take_unsolicited().is_empty());
    }

    #[test]
    fn a_hung_libvirtd_is_a_timeout_not_a_hang() {
        if Command::new("virsh").arg("--version").output().is_err() {
            eprintln!("SKIPPED: virsh missing");
            return;
        }
        // A socket that accepts connections (the kernel completes them into the backlog) and
        // never answers: a libvirtd that hangs.
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("libvirt-sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let d = LibvirtDriver::new(&format!("qemu+unix:///system?socket={}", sock.display()))
            .with_deadlines(Deadlines {
                query: Duration::from_millis(800),
                ..Deadlines::default()
            });
        d.set_known_vms(&[]);
        let t0 = Instant::now();
        match d.list() {
            Err(DriverError::Timeout { command, after }) => {
                assert_eq!(command, "virsh list --all");
                assert_eq!(after, Duration::from_millis(800));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        assert!(d.take_unsolicited().is_empty());
    }

    #[test]
    fn no_inventory_before_the_cluster_vms_are_known() {
        // An inventory taken before the names are known would say that nothing runs here.
        let d = LibvirtDriver::new("test+unix:///default?socket=/nonexistent/fdm-test.sock");
        match d.list() {
            Err(DriverError::Unavailable(m)) => assert!(m.contains("not known yet"), "{m}"),
            other => panic!("expected unavailable, got {other:?}"),
        }
    }

    /// `virsh domstate --reason` outputs (libvirt 9.0, QEMU 7.2: the first eight seen on the test
    /// machine; the others are virsh's words for the other reasons) and what HA makes of them.
    #[test]
    fn domstate_reasons_map_to_run_states() {
        use VmRunState::{Crashed, StoppedByUser};
        let table: &[(&str, Seen)] = &[
            ("running (booted)\n", Seen::Active),
            ("running (unpaused)\n", Seen::Active),
            ("paused (user)\n", Seen::Active),
            ("shut off (destroyed)\n", Seen::Stopped(StoppedByUser)),
            ("shut off (shutdown)\n", Seen::Stopped(StoppedByUser)),
            ("shut off (crashed)\n", Seen::Stopped(Crashed)),
            ("shut off (unknown)\n", Seen::Stopped(Crashed)),
            ("running (migrated)\n", Seen::Active),
            ("paused (I/O error)\n", Seen::Active),
            ("paused (migrating)\n", Seen::Active),
            ("paused (watchdog)\n", Seen::Active),
            ("paused (crashed)\n", Seen::Active),
            ("paused (post-copy failed)\n", Seen::Active),
            ("in shutdown (unknown)\n", Seen::Active),
            ("pmsuspended (unknown)\n", Seen::Active),
            ("idle (unknown)\n", Seen::Active),
            ("shut off (migrated)\n", Seen::Stopped(StoppedByUser)),
            ("shut off (saved)\n", Seen::Stopped(StoppedByUser)),
            ("shut off (from snapshot)\n", Seen::Stopped(StoppedByUser)),
            ("shut off (failed)\n", Seen::Stopped(Crashed)),
            ("shut off (daemon)\n", Seen::Stopped(Crashed)),
            ("shut off (something new)\n", Seen::Stopped(Crashed)),
            ("crashed (panicked)\n", Seen::CrashedPreserved),
            ("crashed (unknown)\n", Seen::CrashedPreserved),
            ("\nshut off\n", Seen::Stopped(Crashed)),
        ];
        for (out, want) in table {
            let (state, reason) =
                parse_domstate(out).unwrap_or_else(|| panic!("cannot parse {out:?}"));
            assert_eq!(classify(state, &reason), *want, "{out:?}");
        }
    }

    /// Only our own pause (or QEMU's I/O error pause) is let run again; a resume never starts a
    /// domain that is off.
    #[test]
    fn resumes_only_what_a_storage_loss_paused() {
        let cases: &[(&str, Result<bool, ()>)] = &[
            ("paused (user)\n", Ok(true)),
            ("paused (I/O error)\n", Ok(true)),
            ("running (unpaused)\n", Ok(false)),
            ("running (booted)\n", Ok(false)),
            ("idle (unknown)\n", Ok(false)),
            ("paused (migrating)\n", Err(())),
            ("paused (saving)\n", Err(())),
            ("paused (watchdog)\n", Err(())),
            ("paused (crashed)\n", Err(())),
            ("paused (post-copy)\n", Err(())),
            ("shut off (destroyed)\n", Err(())),
            ("crashed (panicked)\n", Err(())),
        ];
        for (out, want) in cases {
            let (state, reason) = parse_domstate(out).unwrap();
            assert_eq!(resumable(state, &reason).map_err(|_| ()), *want, "{out:?}");
        }
    }

    #[test]
    fn pause_and_resume_without_libvirt_fail_cleanly() {
        let d = LibvirtDriver::new("test+unix:///default?socket=/nonexistent/fdm-test.sock");
        d.set_known_vms(&[(VmId(1), "<domain><name>web-1</name></domain>".into())]);
        assert!(d.pause(VmId(1)).is_err());
        assert!(d.resume(VmId(1)).is_err());
        assert!(matches!(
            d.pause(VmId(2)),
            Err(DriverError::BadDefinition(_))
        ));
    }

    #[test]
    fn unreadable_domstate_is_none() {
        for out in [
            "",
            "\n",
            "error: failed to get domain 'x'",
            "shut off (destroyed",
            "teleported (user)",
        ] {
            assert_eq!(parse_domstate(out), None, "{out:?}");
        }
    }

    #[test]
    fn list_lines_are_read_with_their_states() {
        // `virsh -q list --all`, libvirt 9.0.
        let out = " 4    t1      running\n 7    t9      paused\n -    g1      shut off\n -    t3 x    shut off\n 9    w       in shutdown\n 10   c       crashed\n";
        let m = parse_list(out).unwrap();
        assert_eq!(m.get("t1"), Some(&DomainState::Running));
        assert_eq!(m.get("t9"), Some(&DomainState::Paused));
        assert_eq!(m.get("g1"), Some(&DomainState::ShutOff));
        assert_eq!(
            m.get("t3 x"),
            Some(&DomainState::ShutOff),
            "names may hold spaces"
        );
        assert_eq!(m.get("w"), Some(&DomainState::InShutdown));
        assert_eq!(m.get("c"), Some(&DomainState::Crashed));
        assert_eq!(m.len(), 6);
        assert!(m["t9"].is_active(), "a paused domain is active");
        assert!(!m["g1"].is_active());
        assert_eq!(parse_list("").unwrap().len(), 0);
    }

    #[test]
    fn an_unknown_state_word_is_active_and_a_broken_line_an_error() {
        let m = parse_list(" 3   web-1   hibernating\n").unwrap();
        assert_eq!(m.get("web-1"), Some(&DomainState::NoState));
        assert!(
            m["web-1"].is_active(),
            "a state we cannot read is never a stop"
        );
        assert_eq!(parse_list("garbage\n"), Err("garbage".to_string()));
        assert!(parse_list(" 3 running\n").is_err(), "no name");
    }
}
