//! The process driver: a VM is a supervised child process (`sh -c <definition>`) in its own process
//! group. Pid files in the state directory let a restarted agent adopt what still runs. Used by the
//! demo and the multi-host tests, where real VMs would cost too much.
//!
//! A pause is `SIGSTOP` to the VM's process group and a resume `SIGCONT`: a stopped process is
//! alive (not a zombie), so it stays listed as running, and the watcher's `wait` does not return
//! for a stop (no `WUNTRACED`), so a pause is never reported as an exit.

use super::{Driver, DriverError, Unsolicited};
use crate::core::VmRunState;
use heartbeat_fs::VmId;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Shared {
    /// Stops we asked for: their exits are not unsolicited.
    stopping: BTreeSet<VmId>,
    events: Vec<Unsolicited>,
}

#[derive(Debug)]
pub struct ProcessDriver {
    state_dir: PathBuf,
    shared: Arc<Mutex<Shared>>,
    /// Adopted or started pids being watched.
    watched: Mutex<BTreeMap<VmId, i32>>,
    /// Exported to VM processes as `FDM_HOST`, so that a VM can say where it runs.
    host_label: String,
}

/// `(vm, pid)` of every pid file in a process-driver state directory, alive or not.
pub fn pid_files(state_dir: &Path) -> Vec<(VmId, i32)> {
    let Ok(rd) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name
                .strip_prefix("vm-")?
                .strip_suffix(".pid")?
                .parse()
                .ok()?;
            let pid = std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((VmId(id), pid))
        })
        .collect()
}

/// The VMs running in a process-driver state directory, by id, with their pids: the driver's own
/// record of what runs on its host (also read by the demo and the tests' double-run monitors).
pub fn running_vm_pids(state_dir: &Path) -> Vec<(VmId, i32)> {
    let mut v: Vec<(VmId, i32)> = pid_files(state_dir)
        .into_iter()
        .filter(|(_, pid)| alive(*pid))
        .collect();
    v.sort();
    v
}

/// Whether `pid` is a live process (not a zombie waiting to be reaped).
pub fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0 && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn signal_group(pid: i32, sig: i32) {
    // SAFETY: signalling a process group we created; errors (already gone) are ignored.
    unsafe {
        libc::kill(-pid, sig);
    }
}

/// Like `signal_group`, for the callers that must know whether the signal was sent.
fn signal_group_checked(pid: i32, sig: i32) -> std::io::Result<()> {
    // SAFETY: signalling a process group we created; no memory is passed.
    if unsafe { libc::kill(-pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether `pid` is stopped by a signal (`T` in `/proc/<pid>/stat`).
pub fn is_stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

impl ProcessDriver {
    pub fn new(state_dir: impl Into<PathBuf>) -> Result<Self, DriverError> {
        let state_dir = state_dir.into();
        std::fs::create_dir_all(&state_dir).map_err(|e| {
            DriverError::Unavailable(format!("state dir {}: {e}", state_dir.display()))
        })?;
        let d = ProcessDriver {
            state_dir,
            shared: Arc::default(),
            watched: Mutex::default(),
            host_label: String::new(),
        };
        // Adopt what a previous agent left running.
        for (vm, pid) in d.pid_files() {
            if alive(pid) {
                d.watch(vm, pid, None);
            } else {
                let _ = std::fs::remove_file(d.pid_path(vm));
            }
        }
        Ok(d)
    }

    fn pid_path(&self, vm: VmId) -> PathBuf {
        self.state_dir.join(format!("vm-{}.pid", vm.0))
    }

    fn pid_files(&self) -> Vec<(VmId, i32)> {
        pid_files(&self.state_dir)
    }

    /// Watch a VM's process until it exits; report the exit unless we caused it.
    fn watch(&self, vm: VmId, pid: i32, child: Option<std::process::Child>) {
        self.watched.lock().expect("watched").insert(vm, pid);
        let shared = self.shared.clone();
        let pid_path = self.pid_path(vm);
        std::thread::spawn(move || {
            let state = match child {
                Some(mut c) => match c.wait() {
                    Ok(s) if s.success() => VmRunState::StoppedByUser,
                    Ok(s) if s.signal() == Some(libc::SIGTERM) => VmRunState::StoppedByUser,
                    _ => VmRunState::Crashed,
                },
                None => {
                    // Not our child (adopted): poll.
                    while alive(pid) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    VmRunState::Crashed
                }
            };
            let mut s = shared.lock().expect("shared");
            if !s.stopping.remove(&vm) {
                s.events.push(Unsolicited { vm, state });
            }
            if std::fs::read_to_string(&pid_path)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
                == Some(pid)
            {
                let _ = std::fs::remove_file(&pid_path);
            }
        });
    }

    fn running_pid(&self, vm: VmId) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_path(vm))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        alive(pid).then_some(pid)
    }

    fn stop(&self, vm: VmId, grace: Option<Duration>) -> Result<(), DriverError> {
        let Some(pid) = self.running_pid(vm) else {
            return Ok(());
        };
        self.shared.lock().expect("shared").stopping.insert(vm);
        if let Some(grace) = grace {
            signal_group(pid, libc::SIGTERM);
            // A paused (stopped) VM would see its SIGTERM only when continued: let it run so
            // that it can shut down cleanly; a running one ignores the SIGCONT.
            signal_group(pid, libc::SIGCONT);
            let end = Instant::now() + grace;
            while alive(pid) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        signal_group(pid, libc::SIGKILL);
        let end = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        if alive(pid) {
            return Err(DriverError::Failed(format!(
                "{vm} (pid {pid}) survived SIGKILL"
            )));
        }
        let _ = std::fs::remove_file(self.pid_path(vm));
        Ok(())
    }

    /// Set the `FDM_HOST` value VM processes see.
    pub fn with_host_label(mut self, label: impl Into<String>) -> Self {
        self.host_label = label.into();
        self
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

impl Driver for ProcessDriver {
    fn power_on(&self, vm: VmId, definition: &str) -> Result<(), DriverError> {
        if self.running_pid(vm).is_some() {
            return Ok(());
        }
        if definition.trim().is_empty() {
            return Err(DriverError::BadDefinition(format!("{vm}: empty command")));
        }
        let child = Command::new("sh")
            .arg("-c")
            .arg(definition)
            .env("FDM_VM", vm.0.to_string())
            .env("FDM_HOST", &self.host_label)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| DriverError::Failed(format!("{vm}: spawn: {e}")))?;
        let pid = child.id() as i32;
        std::fs::write(self.pid_path(vm), pid.to_string())
            .map_err(|e| DriverError::Failed(format!("{vm}: pid file: {e}")))?;
        self.watch(vm, pid, Some(child));
        // A command that dies at once did not start.
        std::thread::sleep(Duration::from_millis(20));
        if !alive(pid) {
            return Err(DriverError::Failed(format!(
                "{vm}: exited right after start"
            )));
        }
        Ok(())
    }

    fn power_off(&self, vm: VmId) -> Result<(), DriverError> {
        self.stop(vm, None)
    }

    fn shutdown(&self, vm: VmId, timeout: Duration) -> Result<(), DriverError> {
        self.stop(vm, Some(timeout))
    }

    fn pause(&self, vm: VmId) -> Result<(), DriverError> {
        let Some(pid) = self.running_pid(vm) else {
            return Err(DriverError::Failed(format!("{vm} is not running")));
        };
        // Takes effect at once, or for a process in uninterruptible IO (its storage hangs)
        // when that IO returns: either way the guest does no more work until resumed.
        signal_group_checked(pid, libc::SIGSTOP)
            .map_err(|e| DriverError::Failed(format!("{vm} (pid {pid}): SIGSTOP: {e}")))
    }

    fn resume(&self, vm: VmId) -> Result<(), DriverError> {
        let Some(pid) = self.running_pid(vm) else {
            return Err(DriverError::Failed(format!("{vm} is not running")));
        };
        signal_group_checked(pid, libc::SIGCONT)
            .map_err(|e| DriverError::Failed(format!("{vm} (pid {pid}): SIGCONT: {e}")))
    }

    fn list(&self) -> Result<Vec<VmId>, DriverError> {
        Ok(running_vm_pids(&self.state_dir)
            .into_iter()
            .map(|(vm, _)| vm)
            .collect())
    }

    fn take_unsolicited(&self) -> Vec<Unsolicited> {
        std::mem::take(&mut self.shared.lock().expect("shared").events)
    }
}

/// Start a VM process the way the driver does, outside any agent (the demo's initial placement).
pub fn start_detached(
    state_dir: &Path,
    host_label: &str,
    vm: VmId,
    definition: &str,
) -> std::io::Result<i32> {
    std::fs::create_dir_all(state_dir)?;
    let child = Command::new("sh")
        .arg("-c")
        .arg(definition)
        .env("FDM_VM", vm.0.to_string())
        .env("FDM_HOST", host_label)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let pid = child.id() as i32;
    std::fs::write(state_dir.join(format!("vm-{}.pid", vm.0)), pid.to_string())?;
    // Reap it in the background so that it never lingers as a zombie of ours.
    std::thread::spawn(move || {
        let mut c = child;
        let _ = c.wait();
    });
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_lists_kills_and_reports_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let d = ProcessDriver::new(dir.path()).unwrap();
        d.power_on(VmId(1), "sleep 30").unwrap();
        d.power_on(VmId(2), "sleep 0.3; exit 3").unwrap();
        assert_eq!(d.list().unwrap(), vec![VmId(1), VmId(2)]);
        d.power_off(VmId(1)).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(d.list().unwrap(), Vec::<VmId>::new());
        let ev = d.take_unsolicited();
        assert_eq!(
            ev,
            vec![Unsolicited {
                vm: VmId(2),
                state: VmRunState::Crashed
            }],
            "only the crash is unsolicited"
        );
        assert!(
            d.power_on(VmId(3), "exit 1").is_err(),
            "a command that dies at once did not start"
        );
        assert!(d.power_on(VmId(4), "   ").is_err());
    }

    #[test]
    fn a_paused_vm_is_still_running_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let d = ProcessDriver::new(dir.path()).unwrap();
        d.power_on(VmId(1), "sleep 30").unwrap();
        let pid = d.running_pid(VmId(1)).unwrap();
        d.pause(VmId(1)).unwrap();
        d.pause(VmId(1)).expect("pausing a paused VM succeeds");
        let end = Instant::now() + Duration::from_secs(5);
        while !is_stopped(pid) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(is_stopped(pid), "SIGSTOP reached the VM's process");
        // A stopped process is neither gone nor an exit: listed, and nothing reported.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(d.list().unwrap(), vec![VmId(1)]);
        assert!(d.take_unsolicited().is_empty(), "a pause is not a stop");
        d.resume(VmId(1)).unwrap();
        let end = Instant::now() + Duration::from_secs(5);
        while is_stopped(pid) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!is_stopped(pid), "SIGCONT reached it");
        d.resume(VmId(1)).expect("resuming a running VM succeeds");
        assert_eq!(d.list().unwrap(), vec![VmId(1)]);
        // A paused VM can be powered off (the fence of a paused VM).
        d.pause(VmId(1)).unwrap();
        d.power_off(VmId(1)).unwrap();
        assert!(d.list().unwrap().is_empty());
        assert!(
            d.take_unsolicited().is_empty(),
            "our own stop is not unsolicited"
        );
        // Neither a pause nor a resume touches a VM that does not run.
        assert!(d.pause(VmId(1)).is_err());
        assert!(d.resume(VmId(1)).is_err());
        assert!(d.resume(VmId(2)).is_err());
    }

    #[test]
    fn a_paused_vm_shuts_down_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let d = ProcessDriver::new(dir.path()).unwrap();
        // Exits 0 on SIGTERM, which it can only see once continued.
        d.power_on(VmId(3), "trap 'exit 0' TERM; while :; do sleep 0.05; done")
            .unwrap();
        d.pause(VmId(3)).unwrap();
        let t0 = Instant::now();
        d.shutdown(VmId(3), Duration::from_secs(10)).unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "shut down without waiting for the timeout: {:?}",
            t0.elapsed()
        );
        assert!(d.list().unwrap().is_empty());
    }

    #[test]
    fn a_new_driver_adopts_running_vms() {
        let dir = tempfile::tempdir().unwrap();
        start_detached(dir.path(), "h", VmId(7), "sleep 30").unwrap();
        let d = ProcessDriver::new(dir.path()).unwrap();
        assert_eq!(d.list().unwrap(), vec![VmId(7)]);
        d.shutdown(VmId(7), Duration::from_millis(200)).unwrap();
        assert!(d.list().unwrap().is_empty());
    }
}
