//! The agent's own configuration file (`/etc/fdm/agent.toml`), with every error reported at once.

use crate::core::Timings;
use crate::core::config::TimingsError;
use heartbeat_fs::records::{ClusterConfig, HaSettings, HostConfig, Resources};
use heartbeat_fs::{ClusterId, DatastoreId, HostId};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
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
        return refuse_zero(out);
    }
    let secret = <[u8; 32]>::try_from(bytes).map_err(|_| {
        format!(
            "{} bytes; need 32 raw bytes or 64 hex characters",
            bytes.len()
        )
    })?;
    refuse_zero(secret)
}

/// An all-zero key is what an empty or truncated-then-padded file looks like, and anyone can
/// guess it: every datagram would authenticate to the whole network.
fn refuse_zero(secret: [u8; 32]) -> Result<[u8; 32], String> {
    if secret == [0; 32] {
        return Err(
            "all 32 bytes are zero, which is no secret; generate one with \
             `head -c 32 /dev/urandom | xxd -p -c 64`"
                .into(),
        );
    }
    Ok(secret)
}

/// A timing problem as `check-config` prints it: the name under `[timings]` and the reason, without
/// the name again.
fn timing_problem(e: &TimingsError) -> (String, String) {
    match e {
        // Escaped: a quoted TOML key may hold a newline, which would forge a line of the report.
        TimingsError::Unknown(name) => (
            name.escape_debug().to_string(),
            format!(
                "unknown timing; expected one of {}",
                Timings::NAMES.join(", ")
            ),
        ),
        TimingsError::Invalid { field, reason } => ((*field).to_string(), reason.clone()),
    }
}

/// `Some(None)` for `none`, `Some(Some(path))` for `device:` and `file:`, `None` for anything else.
fn watchdog_path(spec: &str) -> Option<Option<&str>> {
    if spec == "none" {
        return Some(None);
    }
    spec.strip_prefix("device:")
        .or_else(|| spec.strip_prefix("file:"))
        .map(Some)
}

/// Whether a seed address is where `bind` listens: the same address, or the same port when `bind`
/// listens on every address (the seed then says which one the other hosts use).
fn same_endpoint(seed: SocketAddr, bind: SocketAddr) -> bool {
    seed == bind || (bind.ip().is_unspecified() && seed.port() == bind.port())
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
        let bound = match file.bind.parse::<SocketAddr>() {
            // Port 0 binds a random port that no other host can know or reach.
            Ok(a) if a.port() == 0 => {
                bad(
                    "bind",
                    format!(
                        "`{}`: port 0; give the port the other hosts send to",
                        file.bind
                    ),
                );
                None
            }
            Ok(a) => Some(a),
            Err(e) => {
                bad("bind", format!("`{}`: {e}", file.bind));
                None
            }
        };
        let bind = bound.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let metrics = file
            .metrics
            .as_ref()
            .and_then(|m| match m.parse::<SocketAddr>() {
                Ok(a) if a.port() == 0 => {
                    bad(
                        "metrics",
                        format!("`{m}`: port 0 is a random port no scraper can find"),
                    );
                    None
                }
                Ok(a) => Some(a),
                Err(e) => {
                    bad("metrics", format!("`{m}`: {e}"));
                    None
                }
            });
        if file.state_dir.as_os_str().is_empty() {
            bad("state_dir", "empty; give a directory".into());
        }
        if file
            .status_socket
            .as_ref()
            .is_some_and(|s| s.as_os_str().is_empty())
        {
            bad(
                "status_socket",
                "empty; give a path or leave the field out".into(),
            );
        }
        let timings = match Timings::default().checked_overrides(&file.timings) {
            Ok(t) => t,
            Err(all) => {
                for e in &all {
                    let (name, reason) = timing_problem(e);
                    bad(&format!("timings.{name}"), reason);
                }
                Timings::default()
            }
        };
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
        match watchdog_path(&file.watchdog) {
            Some(Some(path)) if path.trim().is_empty() => bad(
                "watchdog",
                format!(
                    "`{}`: no path after the colon; e.g. `device:/dev/watchdog`",
                    file.watchdog
                ),
            ),
            Some(_) => {}
            None => bad(
                "watchdog",
                format!(
                    "`{}`: expected `none`, `device:<path>` or `file:<path>`",
                    file.watchdog
                ),
            ),
        }
        for (i, a) in file.isolation_addresses.iter().enumerate() {
            // IP literals only: resolving a name needs DNS, which an isolated host may not have
            // (the management plane refuses names for the same reason).
            if a.parse::<IpAddr>().is_err() {
                bad(
                    &format!("isolation_addresses[{i}]"),
                    format!("`{a}` is not an IP address"),
                );
            }
        }
        let mut seen = BTreeSet::new();
        let mut paths: BTreeMap<PathBuf, usize> = BTreeMap::new();
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
            } else if let Some(first) = paths.get(&p) {
                // One directory under two ids would count twice in the election, and the records
                // of both ids (heartbeats, claims) would land in the same files.
                bad(
                    &format!("datastores[{i}].path"),
                    format!(
                        "{} is also datastores[{first}].path; one directory is one datastore",
                        p.display()
                    ),
                );
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
            paths.entry(p.clone()).or_insert(i);
            datastores.push((DatastoreId(d.id), p));
        }
        let mut seed_ids = BTreeSet::new();
        for (i, s) in file.seed_hosts.iter().enumerate() {
            if s.id == 0 || !seed_ids.insert(s.id) {
                bad(
                    &format!("seed_hosts[{i}].id"),
                    format!("{} is zero or a duplicate", s.id),
                );
            }
            match s.address.parse::<SocketAddr>() {
                Err(_) => bad(
                    &format!("seed_hosts[{i}].address"),
                    format!("`{}` is not ip:port", s.address),
                ),
                Ok(a) if a.port() == 0 || a.ip().is_unspecified() => bad(
                    &format!("seed_hosts[{i}].address"),
                    format!(
                        "`{}`: no host can be reached at port 0 or an unspecified address",
                        s.address
                    ),
                ),
                // The bootstrap configuration takes this host's address from its own seed entry,
                // so a different one would send every heartbeat meant for it elsewhere.
                Ok(a) if s.id == file.host_id && bound.is_some_and(|b| !same_endpoint(a, b)) => {
                    bad(
                        &format!("seed_hosts[{i}].address"),
                        format!(
                            "`{}` names this host (host_id {}) at another address than bind ({})",
                            s.address, file.host_id, file.bind
                        ),
                    )
                }
                Ok(_) => {}
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
        // Capacities are unknown until the real configuration is read.
        let host = |id: HostId, address: String| {
            HostConfig::new(id, address)
                .with_name(format!("host-{}", id.0))
                .with_capacity(Resources::default())
        };
        let mut hosts: Vec<HostConfig> = self
            .file
            .seed_hosts
            .iter()
            .map(|s| host(HostId(s.id), s.address.clone()))
            .collect();
        if !hosts.iter().any(|h| h.id == self.host) {
            hosts.push(host(self.host, self.bind.to_string()));
        }
        ClusterConfig::new(self.cluster)
            .with_generation(0)
            .with_ha(HaSettings {
                isolation_addresses: self.file.isolation_addresses.clone(),
                ..HaSettings::default()
            })
            .with_hosts(hosts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
            "timings.ds_leese",
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

    /// The fields of the problems `text` has, or a panic if it parses.
    fn refused(text: &str, d: &tempfile::TempDir) -> Vec<String> {
        match AgentConfig::parse(text, d.path()) {
            Err(ConfigError::Invalid(p)) => p.into_iter().map(|p| p.field).collect(),
            Err(e) => panic!("not a validation error: {e}"),
            Ok(_) => panic!("accepted:\n{text}"),
        }
    }

    /// GOOD with `extra` top-level fields (before any table).
    fn good_with(extra: &str) -> String {
        format!("{extra}\n{GOOD}")
    }

    #[test]
    fn an_all_zero_secret_is_refused() {
        let d = dir_with_secret();
        for zero in [vec![0u8; 32], "0".repeat(64).into_bytes()] {
            std::fs::write(d.path().join("secret"), zero).unwrap();
            assert_eq!(refused(GOOD, &d), ["secret_file"]);
        }
        assert!(parse_secret(&[0u8; 32]).unwrap_err().contains("no secret"));
    }

    #[test]
    fn seed_ids_must_be_positive_and_unique() {
        let d = dir_with_secret();
        let text = format!(
            "{GOOD}[[seed_hosts]]\nid = 0\naddress = \"127.0.0.1:7002\"\n\
             [[seed_hosts]]\nid = 2\naddress = \"127.0.0.1:7003\"\n\
             [[seed_hosts]]\nid = 2\naddress = \"127.0.0.1:7004\"\n"
        );
        assert_eq!(refused(&text, &d), ["seed_hosts[0].id", "seed_hosts[2].id"]);
    }

    #[test]
    fn a_seed_naming_this_host_must_name_its_bind_address() {
        let d = dir_with_secret();
        let seed = |addr: &str| format!("{GOOD}[[seed_hosts]]\nid = 1\naddress = \"{addr}\"\n");
        assert_eq!(
            refused(&seed("127.0.0.1:7002"), &d),
            ["seed_hosts[0].address"]
        );
        assert_eq!(
            refused(&seed("127.0.0.2:7001"), &d),
            ["seed_hosts[0].address"]
        );
        // The demo and the testbed list every host, this one included, at its bind address.
        AgentConfig::parse(&seed("127.0.0.1:7001"), d.path()).expect("own address");
        // Bound to every address: the seed says which one the others use.
        let wildcard = seed("10.0.0.1:7001").replace("127.0.0.1:7001", "0.0.0.0:7001");
        AgentConfig::parse(&wildcard, d.path()).expect("wildcard bind");
    }

    #[test]
    fn a_seed_nobody_can_reach_is_refused() {
        let d = dir_with_secret();
        for addr in ["127.0.0.1:0", "0.0.0.0:7002", "nonsense"] {
            let text = format!("{GOOD}[[seed_hosts]]\nid = 2\naddress = \"{addr}\"\n");
            assert_eq!(refused(&text, &d), ["seed_hosts[0].address"], "{addr}");
        }
    }

    #[test]
    fn a_watchdog_needs_a_path() {
        let d = dir_with_secret();
        for spec in ["device:", "file:", "file: ", "hope"] {
            let text = good_with(&format!("watchdog = \"{spec}\""));
            assert_eq!(refused(&text, &d), ["watchdog"], "{spec}");
        }
        for spec in ["none", "device:/dev/watchdog", "file:/tmp/kicks"] {
            let text = good_with(&format!("watchdog = \"{spec}\""));
            AgentConfig::parse(&text, d.path()).expect(spec);
        }
    }

    #[test]
    fn isolation_addresses_are_ip_literals() {
        let d = dir_with_secret();
        let text =
            good_with(r#"isolation_addresses = ["10.0.0.254", "gateway.example", "fd00::1", ""]"#);
        assert_eq!(
            refused(&text, &d),
            ["isolation_addresses[1]", "isolation_addresses[3]"]
        );
    }

    #[test]
    fn every_timing_problem_is_its_own_problem() {
        let d = dir_with_secret();
        let with_timings = |t: &str| GOOD.replace("ds_lease = 4000", t);
        // A 3 ms claim lease, a net lease shorter than three heartbeats, a zero interval.
        let text = with_timings("claim_lease = 3\nnet_lease = 1000\nconfig_poll_interval = 0");
        let fields = refused(&text, &d);
        for f in [
            "timings.claim_lease",
            "timings.net_lease",
            "timings.config_poll_interval",
        ] {
            assert!(fields.iter().any(|x| x == f), "{f} missing from {fields:?}");
        }
        assert!(
            fields.iter().all(|f| f.starts_with("timings.")),
            "{fields:?}"
        );
        // A watchdog that the evaluation tick cannot kick in time.
        let text = with_timings("heartbeat_interval = 2000\nwatchdog_timeout = 1000");
        assert!(refused(&text, &d).contains(&"timings.watchdog_timeout".to_string()));
        // Unknown names are named as written, each on its own.
        let text = with_timings("ds_leese = 4000\nhartbeat = 1");
        assert_eq!(refused(&text, &d), ["timings.ds_leese", "timings.hartbeat"]);
        // A timing beyond a day.
        let text = with_timings(&format!("datastore_call_deadline = {}", i64::MAX));
        assert!(refused(&text, &d).contains(&"timings.datastore_call_deadline".to_string()));
    }

    #[test]
    fn timing_reasons_are_plain_words() {
        let d = dir_with_secret();
        let text = GOOD.replace("ds_lease = 4000", "claim_lease = 3\n\"bad\\nname\" = 1");
        let Err(e) = AgentConfig::parse(&text, d.path()) else {
            panic!("accepted")
        };
        let report = e.to_string();
        assert_eq!(report.lines().count(), 1, "{report}");
        assert!(
            report.starts_with("timings.bad\\nname: unknown timing"),
            "{report}"
        );
        let text = GOOD.replace("ds_lease = 4000", "claim_lease = 3");
        let report = AgentConfig::parse(&text, d.path()).unwrap_err().to_string();
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("timings.claim_lease: 3 ms;")),
            "{report}"
        );
        assert!(!report.contains("Invalid {"), "{report}");
    }

    #[test]
    fn unreachable_sockets_and_empty_paths_are_refused() {
        let d = dir_with_secret();
        let text = GOOD
            .replace("127.0.0.1:7001", "127.0.0.1:0")
            .replace("state_dir = \"state\"", "state_dir = \"\"");
        assert_eq!(refused(&text, &d), ["bind", "state_dir"]);
        let text = good_with("metrics = \"127.0.0.1:0\"\nstatus_socket = \"\"");
        assert_eq!(refused(&text, &d), ["metrics", "status_socket"]);
    }

    #[test]
    fn one_directory_is_one_datastore() {
        let d = dir_with_secret();
        // The same directory spelled twice, relative and absolute.
        let text = format!(
            "{GOOD}[[datastores]]\nid = 2\npath = \"{}\"\n",
            d.path().join("ds1/").display()
        )
        .replace("[timings]\nds_lease = 4000\n", "");
        assert_eq!(refused(&text, &d), ["datastores[1].path"]);
    }

    proptest! {
        /// Whatever numbers the `[timings]` table holds: no panic, and either a valid configuration
        /// or problems each naming a known timing.
        #[test]
        fn arbitrary_timings_parse_or_name_known_timings(
            values in proptest::collection::vec(
                proptest::option::weighted(
                    0.7,
                    prop_oneof![
                        any::<u64>(),
                        0u64..20_000,
                        Just(86_400_000u64),
                        Just(86_400_001u64),
                    ],
                ),
                Timings::NAMES.len(),
            ),
        ) {
            let d = dir_with_secret();
            let mut text = GOOD.replace("ds_lease = 4000\n", "");
            let mut beyond_toml = false;
            for (name, v) in Timings::NAMES.iter().zip(&values) {
                if let Some(v) = v {
                    text.push_str(&format!("{name} = {v}\n"));
                    // TOML integers are signed 64-bit: larger ones are not TOML at all.
                    beyond_toml |= i64::try_from(*v).is_err();
                }
            }
            match AgentConfig::parse(&text, d.path()) {
                Ok(c) => {
                    prop_assert!(!beyond_toml);
                    prop_assert!(c.timings.problems().is_empty());
                }
                Err(ConfigError::Parse { .. }) => prop_assert!(beyond_toml),
                Err(ConfigError::Invalid(problems)) => {
                    prop_assert!(!beyond_toml);
                    prop_assert!(!problems.is_empty());
                    for p in problems {
                        let name = p.field.strip_prefix("timings.");
                        prop_assert!(
                            name.is_some_and(|n| Timings::NAMES.contains(&n)),
                            "{}: {}", p.field, p.reason
                        );
                    }
                }
                Err(e) => prop_assert!(false, "{}", e),
            }
        }
    }
}
