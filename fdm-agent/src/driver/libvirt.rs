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

// The monitoring types live here until they move to the core (see the file).
#[path = "guest.rs"]
pub mod guest;

use super::command::output_within;
use super::{Driver, DriverError, Unsolicited};
use crate::core::VmRunState;
pub use guest::{GuestPing, IoCounters, MonitorOutcome};
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
/// reset: QEMU resets the vCPUs and devices at once (62 ms measured on the test machine); the
/// margin is for a loaded host, as for the queries.
const RESET_DEADLINE: Duration = Duration::from_secs(20);
/// The deadlines of the kinds of `virsh` call (the constants above; tests shorten them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub query: Duration,
    pub config: Duration,
    pub start: Duration,
    pub destroy: Duration,
    pub shutdown_request: Duration,
    pub pause: Duration,
    pub reset: Duration,
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
            reset: RESET_DEADLINE,
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
    /// Whether each VM's domain has a guest agent channel, read once from its XML (a start
    /// forgets it: the new definition may differ).
    agent_channel: Mutex<BTreeMap<VmId, bool>>,
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
            agent_channel: Mutex::default(),
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
        let (what, out) = self.virsh_output(args, deadline)?;
        if !out.status.success() {
            return Err(DriverError::Failed(format!(
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A `virsh` call whose failure the caller reads itself (the guest agent's error texts).
    fn virsh_output(
        &self,
        args: &[&str],
        deadline: Duration,
    ) -> Result<(String, std::process::Output), DriverError> {
        let what = format!("virsh {}", args.join(" "));
        let mut cmd = Command::new("virsh");
        cmd.env("LC_ALL", "C")
            .arg("-q")
            .arg("-c")
            .arg(&self.uri)
            .args(args);
        let out = output_within(cmd, &what, deadline)?;
        Ok((what, out))
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

/// The name of the QEMU guest agent's virtio-serial port, in the domain XML and in the guest.
pub const AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";
/// Beyond a guest agent call's own timeout, what `virsh` may take before libvirtd answers: after
/// an agent timeout, libvirt first re-synchronises with the agent (`guest-sync`, its own 5 s wait;
/// measured 5.09 s for a call with `--timeout 2`), then sends the command. Past this margin it is
/// libvirtd that does not answer, not the guest: an error, never `NoAnswer`.
const AGENT_MARGIN: Duration = Duration::from_secs(6);
/// The start of a monitor command's output kept for the report (stdout, then stderr).
pub const MONITOR_OUTPUT_MAX: usize = 4096;
/// Domain statistics beyond this many lines are not read: a bounded parse of a bounded report
/// (a domain with hundreds of disks and NICs stays under it).
const DOMSTATS_MAX_LINES: usize = 20_000;

/// What libvirt's failure of a `virsh qemu-agent-command` says, from its error text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentFailure {
    /// The domain has no guest agent channel: no agent can ever answer.
    #[error("no guest agent channel")]
    NotConfigured,
    /// A channel exists but no agent answered: not connected (not started, dead, guest booting or
    /// hung), a timeout, or the domain does not run (paused domains included).
    #[error("the guest agent did not answer")]
    NoAnswer,
    /// The agent answered with an error (the command is unknown or disabled, the program cannot
    /// be run, a bad argument): the text after libvirt's prefix.
    #[error("the guest agent refused: {0}")]
    Refused(String),
    /// Anything else (no such domain, libvirtd errors): the whole text.
    #[error("{0}")]
    Other(String),
}

/// libvirt 9.0's error texts (`LC_ALL=C`), as `virsh` printed them on the test machine.
pub fn classify_agent_failure(stderr: &str) -> AgentFailure {
    let text = stderr.trim();
    let text = text.strip_prefix("error: ").unwrap_or(text);
    if text.contains("QEMU guest agent is not configured") {
        return AgentFailure::NotConfigured;
    }
    const NO_ANSWER: &[&str] = &[
        "Guest agent is not responding",
        "guest agent is not connected",
        "Guest agent not available for now",
        "domain is not running",
        "timed out",
    ];
    if NO_ANSWER.iter().any(|w| text.contains(w)) {
        return AgentFailure::NoAnswer;
    }
    const REFUSED: &str = "unable to execute QEMU agent command ";
    if let Some(at) = text.find(REFUSED) {
        let rest = &text[at + REFUSED.len()..];
        // `'guest-exec': Guest agent command failed, error was '...'`: keep what follows the name.
        let why = rest.split_once(": ").map_or(rest, |(_, w)| w);
        return AgentFailure::Refused(why.trim().to_string());
    }
    AgentFailure::Other(text.to_string())
}

/// The `return` member of a guest agent's answer (`{"return":{...}}`).
pub fn parse_agent_return(out: &str) -> Result<serde_json::Value, String> {
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).map_err(|e| format!("not JSON: {e}"))?;
    match v {
        serde_json::Value::Object(mut m) => m
            .remove("return")
            .ok_or_else(|| "no 'return' member".to_string()),
        _ => Err("not a JSON object".to_string()),
    }
}

/// `guest-exec-status`'s answer: still running, or exited with its code (None when a signal
/// killed it) and the start of its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecStatus {
    Running,
    Exited {
        exit_code: Option<i32>,
        output: String,
    },
}

pub fn parse_exec_status(ret: &serde_json::Value) -> Result<ExecStatus, String> {
    use base64::Engine as _;
    let exited = ret
        .get("exited")
        .and_then(serde_json::Value::as_bool)
        .ok_or_else(|| "field 'exited' missing or not a boolean".to_string())?;
    if !exited {
        return Ok(ExecStatus::Running);
    }
    let exit_code = match ret.get("exitcode") {
        None => None,
        Some(c) => Some(
            c.as_i64()
                .and_then(|c| i32::try_from(c).ok())
                .ok_or_else(|| format!("field 'exitcode' is not an exit code: {c}"))?,
        ),
    };
    let mut bytes = Vec::new();
    for field in ["out-data", "err-data"] {
        let Some(data) = ret.get(field) else { continue };
        let data = data
            .as_str()
            .ok_or_else(|| format!("field '{field}' is not a string"))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("field '{field}' is not base64: {e}"))?;
        bytes.extend_from_slice(&decoded);
        if bytes.len() >= MONITOR_OUTPUT_MAX {
            break;
        }
    }
    bytes.truncate(MONITOR_OUTPUT_MAX);
    Ok(ExecStatus::Exited {
        exit_code,
        output: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// Sums the byte counters of `virsh domstats --block --interface`: `block.N.rd.bytes` and
/// `block.N.wr.bytes` into disk bytes, `net.N.rx.bytes` and `net.N.tx.bytes` into net bytes.
/// Other lines are ignored; a counter that is not a number is an error naming it.
pub fn parse_domstats_io(out: &str) -> Result<IoCounters, String> {
    let mut io = IoCounters::default();
    for line in out.lines().take(DOMSTATS_MAX_LINES) {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        let mut parts = key.split('.');
        let (Some(kind), Some(index), Some(dir), Some("bytes"), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            continue;
        };
        if index.parse::<u32>().is_err() {
            continue;
        }
        let total = match (kind, dir) {
            ("block", "rd" | "wr") => &mut io.disk_bytes,
            ("net", "rx" | "tx") => &mut io.net_bytes,
            _ => continue,
        };
        let n: u64 = value
            .trim()
            .parse()
            .map_err(|_| format!("{key} is not a byte count: '{}'", value.trim()))?;
        *total = total
            .checked_add(n)
            .ok_or_else(|| format!("{key}: byte counters overflow"))?;
    }
    Ok(io)
}

/// `virsh`'s `--timeout` takes whole seconds (at least 1).
fn agent_timeout_secs(timeout: Duration) -> u64 {
    let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    secs.max(1)
}

/// Guest monitoring through the QEMU guest agent (issue 17): inherent methods until the
/// `Driver` trait has them (wired at merge).
impl LibvirtDriver {
    /// Whether the VM's domain has a guest agent channel, read from its XML once.
    fn has_agent_channel(&self, vm: VmId, name: &str) -> Result<bool, DriverError> {
        if let Some(&has) = self.agent_channel.lock().expect("agent channel").get(&vm) {
            return Ok(has);
        }
        let xml = self.virsh(&["dumpxml", name], self.deadlines.query)?;
        // The channel's target name is the one place this name appears in a domain XML.
        let has = xml.contains(AGENT_CHANNEL);
        self.agent_channel
            .lock()
            .expect("agent channel")
            .insert(vm, has);
        Ok(has)
    }

    /// One guest agent command: the `return` member of its answer, or what libvirt's failure says.
    fn agent_command(
        &self,
        name: &str,
        command: &serde_json::Value,
        timeout: Duration,
    ) -> Result<Result<serde_json::Value, AgentFailure>, DriverError> {
        let json = command.to_string();
        let secs = agent_timeout_secs(timeout).to_string();
        let deadline = Duration::from_secs(agent_timeout_secs(timeout))
            .checked_add(AGENT_MARGIN)
            .ok_or_else(|| DriverError::BadDefinition("guest agent timeout too large".into()))?;
        let (what, out) = self.virsh_output(
            &["qemu-agent-command", name, &json, "--timeout", &secs],
            deadline,
        )?;
        if !out.status.success() {
            return Ok(Err(classify_agent_failure(&String::from_utf8_lossy(
                &out.stderr,
            ))));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        parse_agent_return(&stdout)
            .map(Ok)
            .map_err(|why| DriverError::Unexpected {
                command: what,
                output: format!("{}: {why}", stdout.trim()),
            })
    }

    /// Liveness of the guest's agent: `guest-ping`, answered within `timeout` or not. A domain
    /// without the agent channel is `Unavailable` (never `NoAnswer`, which would make a guest
    /// that cannot answer look hung); a libvirtd that does not answer is an error.
    pub fn guest_ping(&self, vm: VmId, timeout: Duration) -> Result<GuestPing, DriverError> {
        let name = self.name_of(vm)?;
        if !self.has_agent_channel(vm, &name)? {
            return Ok(GuestPing::Unavailable);
        }
        match self.agent_command(
            &name,
            &serde_json::json!({"execute": "guest-ping"}),
            timeout,
        )? {
            Ok(_) => Ok(GuestPing::Answered),
            Err(AgentFailure::NotConfigured) => {
                self.agent_channel
                    .lock()
                    .expect("agent channel")
                    .insert(vm, false);
                Ok(GuestPing::Unavailable)
            }
            Err(AgentFailure::NoAnswer) => Ok(GuestPing::NoAnswer),
            // An agent that answers with an error is alive.
            Err(AgentFailure::Refused(_)) => Ok(GuestPing::Answered),
            Err(AgentFailure::Other(e)) => Err(DriverError::Failed(format!(
                "virsh qemu-agent-command {name} guest-ping: {e}"
            ))),
        }
    }

    /// The VM's disk and network byte counters since its start (`virsh domstats`).
    pub fn io_counters(&self, vm: VmId) -> Result<IoCounters, DriverError> {
        let name = self.name_of(vm)?;
        let out = self.virsh(
            &["domstats", "--block", "--interface", &name],
            self.deadlines.query,
        )?;
        parse_domstats_io(&out).map_err(|why| DriverError::Unexpected {
            command: format!("virsh domstats --block --interface {name}"),
            output: why,
        })
    }

    /// Run an application monitor command in the guest (`guest-exec` with its output captured,
    /// then `guest-exec-status` until it exits). `argv[0]` is the program (looked up in the
    /// guest's PATH). An agent that does not answer within `timeout` gives `TimedOut`, as does a
    /// command still running then: either way the application was not shown alive in time.
    pub fn run_in_guest(
        &self,
        vm: VmId,
        argv: &[String],
        timeout: Duration,
    ) -> Result<MonitorOutcome, DriverError> {
        let (program, args) = argv.split_first().ok_or_else(|| {
            DriverError::BadDefinition(format!("{vm}: monitor command: argv is empty"))
        })?;
        let name = self.name_of(vm)?;
        if !self.has_agent_channel(vm, &name)? {
            return Ok(MonitorOutcome::Unavailable);
        }
        let end = Instant::now().checked_add(timeout).ok_or_else(|| {
            DriverError::BadDefinition(format!("{vm}: monitor timeout too large"))
        })?;
        let exec = serde_json::json!({
            "execute": "guest-exec",
            "arguments": {"path": program, "arg": args, "capture-output": true},
        });
        let pid = match self.agent_command(&name, &exec, timeout)? {
            Ok(ret) => ret
                .get("pid")
                .and_then(serde_json::Value::as_i64)
                .ok_or_else(|| DriverError::Unexpected {
                    command: format!("virsh qemu-agent-command {name} guest-exec"),
                    output: ret.to_string(),
                })?,
            Err(f) => return self.exec_failure(&name, f),
        };
        let status = serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": pid}});
        // Short pauses first: a `pidof` or `test -e` exits within milliseconds.
        let mut pause = Duration::from_millis(50);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.kill_in_guest(&name, pid);
                return Ok(MonitorOutcome::TimedOut);
            }
            let ret = match self.agent_command(&name, &status, left)? {
                Ok(ret) => ret,
                Err(f) => return self.exec_failure(&name, f),
            };
            match parse_exec_status(&ret).map_err(|why| DriverError::Unexpected {
                command: format!("virsh qemu-agent-command {name} guest-exec-status"),
                output: format!("{ret}: {why}"),
            })? {
                ExecStatus::Exited {
                    exit_code: Some(0), ..
                } => return Ok(MonitorOutcome::Passed),
                ExecStatus::Exited { exit_code, output } => {
                    return Ok(MonitorOutcome::Failed { exit_code, output });
                }
                ExecStatus::Running => {}
            }
            std::thread::sleep(pause.min(end.saturating_duration_since(Instant::now())));
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    fn exec_failure(&self, name: &str, f: AgentFailure) -> Result<MonitorOutcome, DriverError> {
        match f {
            AgentFailure::NotConfigured => Ok(MonitorOutcome::Unavailable),
            AgentFailure::NoAnswer => Ok(MonitorOutcome::TimedOut),
            // guest-exec disabled (`qemu-ga -b guest-exec`) or unknown (an old agent): this
            // guest cannot run monitor commands at all.
            AgentFailure::Refused(why)
                if why.contains("has been disabled") || why.contains("has not been found") =>
            {
                Ok(MonitorOutcome::Unavailable)
            }
            // The program could not be started (not found, not executable): the check fails, as
            // a shell would fail it with 127.
            AgentFailure::Refused(why) => Ok(MonitorOutcome::Failed {
                exit_code: None,
                output: why,
            }),
            AgentFailure::Other(e) => Err(DriverError::Failed(format!(
                "virsh qemu-agent-command {name} guest-exec: {e}"
            ))),
        }
    }

    /// A monitor command that outlived its timeout is killed, so that hung checks do not pile up
    /// in the guest. Best effort: guest-exec has no kill of its own, so this runs the guest's
    /// `kill`; a failure is only logged.
    fn kill_in_guest(&self, name: &str, pid: i64) {
        let kill = serde_json::json!({
            "execute": "guest-exec",
            "arguments": {"path": "kill", "arg": ["-KILL", pid.to_string()]},
        });
        match self.agent_command(name, &kill, Duration::from_secs(1)) {
            Ok(Ok(_)) => {}
            Ok(Err(f)) => {
                tracing::debug!(domain = name, pid, failure = %f, "timed-out monitor command not killed")
            }
            Err(e) => {
                tracing::debug!(domain = name, pid, error = %e, "timed-out monitor command not killed")
            }
        }
    }

    /// Hard reset of the guest (`virsh reset`: as the reset button, no guest shutdown): the
    /// answer to a guest that stopped answering.
    pub fn reset(&self, vm: VmId) -> Result<(), DriverError> {
        let name = self.name_of(vm)?;
        self.virsh(&["reset", &name], self.deadlines.reset)
            .map(|_| ())
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
        self.agent_channel
            .lock()
            .expect("agent channel")
            .remove(&vm);
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

    /// libvirt 9.0's texts for `virsh qemu-agent-command`, recorded on the test machine (QEMU 7.2,
    /// qemu-ga 7.2 in the tiny guest of `scripts/build-test-guest.sh`).
    #[test]
    fn agent_error_texts_are_told_apart() {
        use AgentFailure::*;
        let table: &[(&str, AgentFailure)] = &[
            // a domain without the channel
            (
                "error: argument unsupported: QEMU guest agent is not configured\n",
                NotConfigured,
            ),
            // booting, qemu-ga not started yet (and just after `virsh reset`)
            (
                "error: Guest agent is not responding: QEMU guest agent is not connected\n",
                NoAnswer,
            ),
            // qemu-ga stopped (SIGSTOP) in the guest: the ping times out, then libvirt's sync fails
            (
                "error: Guest agent is not responding: Guest agent not available for now\n",
                NoAnswer,
            ),
            // `virsh suspend`ed, or shut off
            (
                "error: Requested operation is not valid: domain is not running\n",
                NoAnswer,
            ),
            (
                "error: internal error: unable to execute QEMU agent command 'guest-exec': Guest agent command failed, error was 'Failed to execute child process \u{201c}/nonexistent\u{201d} (No such file or directory)'\n",
                Refused(
                    "Guest agent command failed, error was 'Failed to execute child process \u{201c}/nonexistent\u{201d} (No such file or directory)'".into(),
                ),
            ),
            (
                "error: internal error: unable to execute QEMU agent command 'guest-exec-status': Invalid parameter 'pid'\n",
                Refused("Invalid parameter 'pid'".into()),
            ),
            (
                "error: failed to get domain 'nosuch'\n",
                Other("failed to get domain 'nosuch'".into()),
            ),
        ];
        for (text, want) in table {
            assert_eq!(classify_agent_failure(text), *want, "{text}");
        }
    }

    #[test]
    fn agent_answers_are_read() {
        assert_eq!(
            parse_agent_return("{\"return\":{}}\n"),
            Ok(serde_json::json!({}))
        );
        assert_eq!(
            parse_agent_return("{\"return\":{\"pid\":145}}\n").unwrap()["pid"],
            145
        );
        for bad in ["", "{}", "[1]", "{\"return\":", "error"] {
            assert!(parse_agent_return(bad).is_err(), "{bad:?}");
        }
    }

    /// `guest-exec-status` answers recorded on the test machine: `pidof app` (pid 98), `sh -c
    /// 'pidof app; echo err >&2; exit 3'`, a `sleep 30` still running, a shell killed by SIGKILL.
    #[test]
    fn exec_status_answers_are_read() {
        let read = |json: &str| parse_exec_status(&parse_agent_return(json).unwrap());
        assert_eq!(
            read(
                r#"{"return":{"exitcode":0,"out-data":"OTgK","out-truncated":false,"exited":true}}"#
            ),
            Ok(ExecStatus::Exited {
                exit_code: Some(0),
                output: "98\n".into()
            })
        );
        assert_eq!(
            read(
                r#"{"return":{"exitcode":3,"err-data":"ZXJyCg==","out-data":"OTgK","err-truncated":false,"out-truncated":false,"exited":true}}"#
            ),
            Ok(ExecStatus::Exited {
                exit_code: Some(3),
                output: "98\nerr\n".into()
            })
        );
        assert_eq!(
            read(r#"{"return":{"exited":false}}"#),
            Ok(ExecStatus::Running)
        );
        assert_eq!(
            read(r#"{"return":{"signal":9,"exited":true}}"#),
            Ok(ExecStatus::Exited {
                exit_code: None,
                output: String::new()
            })
        );
        let e = read(r#"{"return":{"exitcode":0}}"#).unwrap_err();
        assert!(e.contains("'exited'"), "{e}");
        let e = read(r#"{"return":{"exited":true,"exitcode":"x"}}"#).unwrap_err();
        assert!(e.contains("'exitcode'"), "{e}");
        let e = read(r#"{"return":{"exited":true,"out-data":"%%%"}}"#).unwrap_err();
        assert!(e.contains("'out-data'"), "{e}");
    }

    #[test]
    fn a_long_output_is_cut() {
        use base64::Engine as _;
        let big = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 100_000]);
        let ret =
            serde_json::json!({"exited": true, "exitcode": 1, "out-data": big, "err-data": big});
        match parse_exec_status(&ret).unwrap() {
            ExecStatus::Exited { output, .. } => assert_eq!(output.len(), MONITOR_OUTPUT_MAX),
            other => panic!("{other:?}"),
        }
    }

    /// `virsh domstats --block --interface` of the tiny guest with its 8 MiB disk (recorded),
    /// with a NIC's lines as libvirt prints them added.
    #[test]
    fn domstats_byte_counters_are_summed() {
        let out = "Domain: 'hgga'\n  net.count=1\n  net.0.name=vnet0\n  net.0.rx.bytes=1000\n  net.0.rx.pkts=10\n  net.0.tx.bytes=234\n  net.0.tx.drop=0\n  block.count=1\n  block.0.name=vda\n  block.0.path=/tmp/hg-lv/disk.img\n  block.0.backingIndex=1\n  block.0.rd.reqs=2\n  block.0.rd.bytes=4608\n  block.0.rd.times=150070\n  block.0.wr.reqs=15\n  block.0.wr.bytes=3932160\n  block.0.wr.times=3814486\n  block.0.fl.reqs=15\n  block.0.fl.times=16975767\n  block.0.allocation=262144\n  block.0.capacity=8388608\n  block.0.physical=266240\n\n";
        assert_eq!(
            parse_domstats_io(out),
            Ok(IoCounters {
                disk_bytes: 4608 + 3_932_160,
                net_bytes: 1234
            })
        );
        // A domain without disks or NICs (recorded).
        assert_eq!(
            parse_domstats_io("Domain: 'hgnc'\n  net.count=0\n  block.count=0\n"),
            Ok(IoCounters::default())
        );
        let e = parse_domstats_io("  block.1.wr.bytes=12x\n").unwrap_err();
        assert!(e.contains("block.1.wr.bytes"), "{e}");
        let e = parse_domstats_io(&format!(
            "  block.0.rd.bytes={}\n  block.1.rd.bytes=1\n",
            u64::MAX
        ))
        .unwrap_err();
        assert!(e.contains("overflow"), "{e}");
    }

    #[test]
    fn agent_timeouts_are_whole_seconds() {
        assert_eq!(agent_timeout_secs(Duration::ZERO), 1);
        assert_eq!(agent_timeout_secs(Duration::from_millis(300)), 1);
        assert_eq!(agent_timeout_secs(Duration::from_secs(2)), 2);
        assert_eq!(agent_timeout_secs(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn guest_calls_without_libvirt_fail_cleanly() {
        let d = LibvirtDriver::new("test+unix:///default?socket=/nonexistent/fdm-test.sock");
        d.set_known_vms(&[(VmId(1), "<domain><name>web-1</name></domain>".into())]);
        let t = Duration::from_secs(1);
        assert!(d.guest_ping(VmId(1), t).is_err());
        assert!(d.io_counters(VmId(1)).is_err());
        assert!(d.reset(VmId(1)).is_err());
        assert!(matches!(
            d.run_in_guest(VmId(1), &[], t),
            Err(DriverError::BadDefinition(_))
        ));
        assert!(matches!(
            d.guest_ping(VmId(2), t),
            Err(DriverError::BadDefinition(_))
        ));
    }

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
