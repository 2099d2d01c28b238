//! The agent's own configuration file (`/etc/fdm/agent.toml`), with every error reported at once.

use crate::core::Timings;
use heartbeat_fs::records::{ClusterConfig, HaSettings, HostConfig, Resources};
use heartbeat_fs::{ClusterId, DatastoreId, HostId};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub host_id: u32,
    pub cluster_id: u64,
    /// 32 bytes, raw or as 64 hex characters.
    pub secret_file: PathBuf,
    pub bind: String,
    pub state_dir: PathBuf,
    pub status_socket: Option<PathBuf>,
    pub metrics: Option<String>,
    #[serde(default)]
    pub isolation_addresses: Vec<String>,
    /// `icmp` (ping the host's address) or `none` (no probe: rely on leases and the watchdog).
    #[serde(default = "default_probe")]
    pub probe: String,
    /// `none`, `device:/dev/watchdog` or `file:<path>` (a kick file a test harness watches).
    #[serde(default = "default_watchdog")]
    pub watchdog: String,
    #[serde(default = "yes")]
    pub self_fence: bool,
    pub driver: DriverConfig,
    #[serde(default)]
    pub datastores: Vec<DatastoreEntry>,
    #[serde(default)]
    pub timings: BTreeMap<String, u64>,
    /// Bootstrap peers until the cluster configuration is read from a datastore.
    #[serde(default)]
    pub seed_hosts: Vec<SeedHost>,
}

fn default_probe() -> String {
    "icmp".into()
}
fn default_watchdog() -> String {
    "none".into()
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriverConfig {
    /// `process` or `libvirt`.
    pub kind: String,
    pub uri: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatastoreEntry {
    pub id: u32,
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedHost {
    pub id: u32,
    pub address: String,
}

/// One problem with the file: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub field: String,
    pub reason: String,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: not valid TOML for an agent configuration: {reason}")]
    Parse { path: String, reason: String },
    #[error("{}", .0.iter().map(|p| format!("{}: {}", p.field, p.reason)).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

/// Everything the runtime needs, validated.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub file: AgentFile,
    pub host: HostId,
    pub cluster: ClusterId,
    pub secret: [u8; 32],
    pub bind: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub timings: Timings,
    pub datastores: Vec<(DatastoreId, PathBuf)>,
    /// Problems the agent starts with anyway (a datastore not mounted yet): logged at start and by
    /// `check-config`. The agent retries such a datastore on every call, so a mount that comes back
    /// later is used without a restart.
    pub warnings: Vec<ConfigProblem>,
    /// The file it was loaded from (re-read on SIGHUP).
    pub source: Option<PathBuf>,
}

pub fn parse_secret(bytes: &[u8]) -> Result<[u8; 32], String> {
    let text = std::str::from_utf8(bytes).map(str::trim).unwrap_or("");
    if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        return Ok(out);
    }
    <[u8; 32]>::try_from(bytes).map_err(|_| {
        format!(
            "{} bytes; need 32 raw bytes or 64 hex characters",
            bytes.len()
        )
    })
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut cfg =
            Self::parse(&text, path.parent().unwrap_or(Path::new("."))).map_err(|e| match e {
                ConfigError::Parse { reason, .. } => ConfigError::Parse {
                    path: path.display().to_string(),
                    reason,
                },
                e => e,
            })?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parse and validate; relative paths are taken from `base`. Collects every problem.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let file: AgentFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: String::new(),
            reason: e.to_string(),
        })?;
        let mut problems = Vec::new();
        let mut bad = |field: &str, reason: String| {
            problems.push(ConfigProblem {
                field: field.into(),
                reason,
            })
        };
        if file.host_id == 0 {
            bad("host_id", "must be positive".into());
        }
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let secret = match std::fs::read(resolve(&file.secret_file)) {
            Ok(b) => parse_secret(&b).unwrap_or_else(|e| {
                bad("secret_file", e);
                [0; 32]
            }),
            Err(e) => {
                bad(
                    "secret_file",
                    format!("{}: {e}", file.secret_file.display()),
                );
                [0; 32]
            }
        };
        let bind = file.bind.parse().unwrap_or_else(|e| {
            bad("bind", format!("`{}`: {e}", file.bind));
            SocketAddr::from(([0, 0, 0, 0], 0))
        });
        let metrics = file.metrics.as_ref().and_then(|m| match m.parse() {
            Ok(a) => Some(a),
            Err(e) => {
                bad("metrics", format!("`{m}`: {e}"));
                None
            }
        });
        let timings = Timings::default()
            .with_overrides(&file.timings)
            .unwrap_or_else(|e| {
                bad("timings", e.to_string());
                Timings::default()
            });
        match file.driver.kind.as_str() {
            "process" => {}
            "libvirt" => {
                if file.driver.uri.is_none() {
                    bad("driver.uri", "libvirt needs a connection URI".into());
                }
            }
            other => bad(
                "driver.kind",
                format!("`{other}`: expected `process` or `libvirt`"),
            ),
        }
        if !matches!(file.probe.as_str(), "icmp" | "none") {
            bad(
                "probe",
                format!("`{}`: expected `icmp` or `none`", file.probe),
            );
        }
        if !(file.watchdog == "none"
            || file.watchdog.starts_with("device:")
            || file.watchdog.starts_with("file:"))
        {
            bad(
                "watchdog",
                format!(
                    "`{}`: expected `none`, `device:<path>` or `file:<path>`",
                    file.watchdog
                ),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut datastores = Vec::new();
        let mut warnings = Vec::new();
        for (i, d) in file.datastores.iter().enumerate() {
            if d.id == 0 || !seen.insert(d.id) {
                bad(
                    &format!("datastores[{i}].id"),
                    format!("{} is zero or a duplicate", d.id),
                );
            }
            let p = resolve(&d.path);
            if d.path.as_os_str().is_empty() {
                bad(&format!("datastores[{i}].path"), "empty".into());
            } else if !p.is_dir() {
                // Not fatal: refusing to start would leave this host's running VMs unprotected
                // (and unreported) because one mount is late or down.
                warnings.push(ConfigProblem {
                    field: format!("datastores[{i}].path"),
                    reason: format!(
                        "{} is not a mounted directory now; the agent starts without it and retries",
                        p.display()
                    ),
                });
            }
            datastores.push((DatastoreId(d.id), p));
        }
        for (i, s) in file.seed_hosts.iter().enumerate() {
            if s.address.parse::<SocketAddr>().is_err() {
                bad(
                    &format!("seed_hosts[{i}].address"),
                    format!("`{}` is not ip:port", s.address),
                );
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        Ok(AgentConfig {
            host: HostId(file.host_id),
            cluster: ClusterId(file.cluster_id),
            secret,
            bind,
            metrics,
            timings,
            datastores,
            warnings,
            source: None,
            file,
        })
    }

    /// Fields that differ from `other` and that only a restart can apply (sockets, identity,
    /// datastores, driver, watchdog). Timings and the probe are applied live on SIGHUP.
    pub fn restart_needed(&self, other: &AgentConfig) -> Vec<&'static str> {
        let (a, b) = (&self.file, &other.file);
        let mut v = Vec::new();
        let mut check = |name, differs: bool| {
            if differs {
                v.push(name);
            }
        };
        check("host_id", a.host_id != b.host_id);
        check("cluster_id", a.cluster_id != b.cluster_id);
        check("secret_file", self.secret != other.secret);
        check("bind", self.bind != other.bind);
        check("state_dir", a.state_dir != b.state_dir);
        check("status_socket", a.status_socket != b.status_socket);
        check("metrics", self.metrics != other.metrics);
        check(
            "driver",
            a.driver.kind != b.driver.kind || a.driver.uri != b.driver.uri,
        );
        check("datastores", self.datastores != other.datastores);
        check("watchdog", a.watchdog != b.watchdog);
        check("self_fence", a.self_fence != b.self_fence);
        check(
            "seed_hosts",
            a.seed_hosts
                .iter()
                .map(|s| (s.id, &s.address))
                .ne(b.seed_hosts.iter().map(|s| (s.id, &s.address))),
        );
        check(
            "isolation_addresses",
            a.isolation_addresses != b.isolation_addresses,
        );
        v
    }

    /// The bootstrap cluster configuration (generation 0): this host and the seed hosts. The real
    /// one is read from the datastores.
    pub fn bootstrap_cluster(&self) -> ClusterConfig {
        let mut hosts: Vec<HostConfig> = self
            .file
            .seed_hosts
            .iter()
            .map(|s| HostConfig {
                id: HostId(s.id),
                name: format!("host-{}", s.id),
                address: s.address.clone(),
                capacity: Resources::default(),
                maintenance: false,
            })
            .collect();
        if !hosts.iter().any(|h| h.id == self.host) {
            hosts.push(HostConfig {
                id: self.host,
                name: format!("host-{}", self.host.0),
                address: self.bind.to_string(),
                capacity: Resources::default(),
                maintenance: false,
            });
        }
        ClusterConfig {
            cluster: self.cluster,
            generation: 0,
            ha: HaSettings {
                isolation_addresses: self.file.isolation_addresses.clone(),
                ..HaSettings::default()
            },
            hosts,
            datastores: Vec::new(),
            vms: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with_secret() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("secret"), "ab".repeat(32)).unwrap();
        std::fs::create_dir(d.path().join("ds1")).unwrap();
        d
    }

    const GOOD: &str = r#"
host_id = 1
cluster_id = 7
secret_file = "secret"
bind = "127.0.0.1:7001"
state_dir = "state"
[driver]
kind = "process"
[[datastores]]
id = 1
path = "ds1"
[timings]
ds_lease = 4000
"#;

    #[test]
    fn a_good_file_parses() {
        let d = dir_with_secret();
        let c = AgentConfig::parse(GOOD, d.path()).unwrap();
        assert_eq!(c.host, HostId(1));
        assert_eq!(c.secret, [0xab; 32]);
        assert_eq!(c.timings.ds_lease, std::time::Duration::from_millis(4000));
        assert_eq!(c.bootstrap_cluster().hosts.len(), 1);
    }

    #[test]
    fn every_error_is_reported_with_its_field() {
        let d = dir_with_secret();
        let text = r#"
host_id = 0
cluster_id = 7
secret_file = "missing"
bind = "nonsense"
state_dir = "state"
probe = "telepathy"
[driver]
kind = "xen"
[[datastores]]
id = 1
path = "nowhere"
[[datastores]]
id = 1
path = "ds1"
[timings]
ds_leese = 4000
"#;
        let Err(ConfigError::Invalid(p)) = AgentConfig::parse(text, d.path()) else {
            panic!("must be invalid")
        };
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        for f in [
            "host_id",
            "secret_file",
            "bind",
            "timings",
            "driver.kind",
            "probe",
            "datastores[1].id",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn a_datastore_not_mounted_yet_is_a_warning_not_an_error() {
        let d = dir_with_secret();
        let text = GOOD.replace("path = \"ds1\"", "path = \"not-mounted\"");
        let c = AgentConfig::parse(&text, d.path()).expect("starts anyway");
        assert_eq!(c.datastores.len(), 1);
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(c.warnings[0].field, "datastores[0].path");
        assert!(c.warnings[0].reason.contains("retries"));
    }

    #[test]
    fn unknown_fields_and_bad_toml_are_errors() {
        let d = dir_with_secret();
        assert!(matches!(
            AgentConfig::parse("host_id = ", d.path()),
            Err(ConfigError::Parse { .. })
        ));
        let extra = format!("surprise = 1\n{GOOD}");
        assert!(matches!(
            AgentConfig::parse(&extra, d.path()),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn secrets_are_raw_or_hex() {
        assert_eq!(parse_secret(&[5u8; 32]).unwrap(), [5u8; 32]);
        assert_eq!(
            parse_secret(format!("{}\n", "0f".repeat(32)).as_bytes()).unwrap(),
            [0x0f; 32]
        );
        assert!(parse_secret(b"short").is_err());
    }
}
