//! The libvirt driver, through the `virsh` CLI (no C library to link). The VM definition is the
//! domain XML; its `<name>` names the domain. Tested against a real libvirtd with QEMU under TCG by
//! the multi-host suite when libvirt is installed.

use super::{Driver, DriverError, Unsolicited};
use crate::core::VmRunState;
use heartbeat_fs::VmId;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LibvirtDriver {
    uri: String,
    /// Domain name <-> VM id, from the definitions in the cluster configuration.
    names: Mutex<BTreeMap<String, VmId>>,
    /// Domains we saw running, to notice ones that stop without us.
    seen_running: Mutex<BTreeSet<VmId>>,
    stopping: Mutex<BTreeSet<VmId>>,
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
            names: Mutex::default(),
            seen_running: Mutex::default(),
            stopping: Mutex::default(),
        }
    }

    /// Whether libvirt answers at the configured URI.
    pub fn check(&self) -> Result<(), DriverError> {
        self.virsh(&["version"])
            .map(|_| ())
            .map_err(|e| DriverError::Unavailable(format!("libvirt at {}: {e}", self.uri)))
    }

    fn virsh(&self, args: &[&str]) -> Result<String, DriverError> {
        let out = Command::new("virsh")
            .arg("-q")
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .output()
            .map_err(|e| DriverError::Unavailable(format!("virsh: {e}")))?;
        if !out.status.success() {
            return Err(DriverError::Failed(format!(
                "virsh {}: {}",
                args.join(" "),
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

    fn running_names(&self) -> Result<Vec<String>, DriverError> {
        Ok(self
            .virsh(&["list", "--name", "--state-running"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    }

    fn is_running(&self, name: &str) -> Result<bool, DriverError> {
        Ok(self.running_names()?.iter().any(|n| n == name))
    }
}

impl Driver for LibvirtDriver {
    fn power_on(&self, vm: VmId, definition: &str) -> Result<(), DriverError> {
        let name = domain_name(definition)
            .ok_or_else(|| DriverError::BadDefinition(format!("{vm}: no <name>")))?;
        self.names.lock().expect("names").insert(name.clone(), vm);
        if self.is_running(&name)? {
            return Ok(());
        }
        let file =
            tempfile::NamedTempFile::new().map_err(|e| DriverError::Failed(e.to_string()))?;
        std::fs::write(file.path(), definition).map_err(|e| DriverError::Failed(e.to_string()))?;
        self.virsh(&["define", file.path().to_str().unwrap_or_default()])?;
        self.virsh(&["start", &name])?;
        self.seen_running.lock().expect("seen").insert(vm);
        Ok(())
    }

    fn power_off(&self, vm: VmId) -> Result<(), DriverError> {
        let name = self.name_of(vm)?;
        self.stopping.lock().expect("stopping").insert(vm);
        if self.is_running(&name)? {
            self.virsh(&["destroy", &name])?;
        }
        self.seen_running.lock().expect("seen").remove(&vm);
        Ok(())
    }

    fn shutdown(&self, vm: VmId, timeout: Duration) -> Result<(), DriverError> {
        let name = self.name_of(vm)?;
        self.stopping.lock().expect("stopping").insert(vm);
        if self.is_running(&name)? {
            let _ = self.virsh(&["shutdown", &name]);
            let end = Instant::now() + timeout;
            while Instant::now() < end && self.is_running(&name)? {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        self.power_off(vm)
    }

    fn list(&self) -> Result<Vec<VmId>, DriverError> {
        let names = self.names.lock().expect("names").clone();
        let running: Vec<VmId> = self
            .running_names()?
            .iter()
            .filter_map(|n| names.get(n).copied())
            .collect();
        self.seen_running
            .lock()
            .expect("seen")
            .extend(running.iter().copied());
        Ok(running)
    }

    fn take_unsolicited(&self) -> Vec<Unsolicited> {
        let Ok(running) = self.list() else {
            return Vec::new();
        };
        let mut seen = self.seen_running.lock().expect("seen");
        let mut stopping = self.stopping.lock().expect("stopping");
        let gone: Vec<VmId> = seen
            .iter()
            .copied()
            .filter(|v| !running.contains(v))
            .collect();
        let mut out = Vec::new();
        for vm in gone {
            seen.remove(&vm);
            if !stopping.remove(&vm) {
                // libvirt tells a crash apart through domstate reasons; "shut off" without our
                // asking is counted as a crash so that HA restarts it (policy permitting).
                out.push(Unsolicited {
                    vm,
                    state: VmRunState::Crashed,
                });
            }
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
        // Listing (the inventory) fails too, so the agent never takes "no answer" for "no VMs".
        assert!(d.list().is_err());
    }
}
