//! The status socket's answer (`fdm-agent status`): one type for the JSON the agent writes and the
//! command reads, and its text for people.

use crate::cli::{Table, human_age_secs, key_values};
use crate::core::{Role, StatusSnapshot};
use crate::runtime::report::wall_clock;
use heartbeat_fs::records::ReportEvent;
use heartbeat_fs::{DatastoreId, HostId, VmId};
use serde::{Deserialize, Serialize};

/// What an agent knows of the cluster, as `fdm-agent status --output json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// This agent's host.
    pub host: HostId,
    /// `starting`, `candidate`, `master`, `isolated`, or `slave of host-N`.
    pub role: String,
    /// The master this agent follows (itself on the master); `null` while it knows none.
    pub master: Option<HostId>,
    pub config_generation: u64,
    /// The master's verdicts on every host; empty on other agents, which judge no host.
    pub hosts: Vec<HostStatus>,
    /// On the master, every protected VM; on another agent, the VMs it runs.
    pub vms: Vec<VmStatus>,
    /// The last events (up to 20), oldest first.
    pub events: Vec<ReportEvent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    pub host: HostId,
    /// `alive`, `unreachable`, `partitioned`, `isolated` or `dead`.
    pub verdict: String,
    /// Seconds since its last network heartbeat; `null` before the first.
    pub net_age_s: Option<f64>,
    /// Per datastore, seconds since its heartbeat there last advanced.
    pub ds_age_s: Vec<DatastoreAge>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatastoreAge {
    pub datastore: DatastoreId,
    /// `null` before the first heartbeat read there.
    pub age_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmStatus {
    pub vm: VmId,
    /// On the master, the host running it (or that last ran it); `null` on other agents, whose
    /// VMs all run on their own host.
    pub host: Option<HostId>,
    /// `running`, `stopped`, ...; on the master `running` or `null` (running nowhere it knows).
    pub state: Option<String>,
    /// Where it stands in the restart pipeline, in words (empty on non-masters).
    pub restart: String,
    /// Left down at its restart limit until an operator clears it.
    pub failed: bool,
}

fn role_name(r: Role) -> String {
    match r {
        Role::Slave { master } => format!("slave of {master}"),
        r => r.name().to_string(),
    }
}

impl AgentStatus {
    /// The status of the core's snapshot with the last events.
    pub fn new<'a>(st: &StatusSnapshot, events: impl IntoIterator<Item = &'a ReportEvent>) -> Self {
        AgentStatus {
            host: st.host,
            role: role_name(st.role),
            master: st.master,
            config_generation: st.config_generation,
            hosts: st
                .hosts
                .iter()
                .map(|h| HostStatus {
                    host: h.host,
                    verdict: h.verdict.name().to_string(),
                    net_age_s: h.net_age,
                    ds_age_s: h
                        .ds_age
                        .iter()
                        .map(|&(datastore, age_s)| DatastoreAge { datastore, age_s })
                        .collect(),
                })
                .collect(),
            vms: st
                .vms
                .iter()
                .map(|v| VmStatus {
                    vm: v.vm,
                    host: v.host,
                    state: v.state.map(|s| s.name().to_string()),
                    restart: v.restart.clone(),
                    failed: v.failed,
                })
                .collect(),
            events: events.into_iter().cloned().collect(),
        }
    }

    fn is_master(&self) -> bool {
        self.master == Some(self.host)
    }

    /// The status for people: a summary, the hosts' verdicts and heartbeat ages, the VMs and the
    /// last events with their wall-clock times (UTC).
    pub fn text(&self) -> Vec<String> {
        let master = match self.master {
            Some(m) if m == self.host => format!("{m} (this host)"),
            Some(m) => m.to_string(),
            None => "none known".into(),
        };
        let mut lines = key_values([
            ("agent on", self.host.to_string()),
            ("role", self.role.clone()),
            ("master", master),
            ("config generation", self.config_generation.to_string()),
        ]);

        lines.push(String::new());
        if self.hosts.is_empty() {
            lines.push(match self.master {
                Some(m) if m != self.host => {
                    format!("host verdicts: kept by the master, see `fdm-agent status` on {m}")
                }
                _ => "host verdicts: none (only a master judges hosts)".into(),
            });
        } else {
            let mut hosts: Vec<&HostStatus> = self.hosts.iter().collect();
            hosts.sort_by_key(|h| h.host);
            let mut t =
                Table::new(["HOST", "VERDICT", "NETWORK HB", "DATASTORE HB"]).align_right(2);
            for h in hosts {
                let (net, ds) = if h.host == self.host {
                    ("this host".into(), "-".into())
                } else {
                    (age(h.net_age_s), datastore_ages(&h.ds_age_s))
                };
                t.row([h.host.to_string(), h.verdict.clone(), net, ds]);
            }
            lines.extend(t.lines());
        }

        lines.push(String::new());
        if self.vms.is_empty() {
            lines.push(if self.is_master() {
                "VMs: none protected".into()
            } else {
                "VMs: none running here".into()
            });
        } else {
            let mut vms: Vec<&VmStatus> = self.vms.iter().collect();
            vms.sort_by_key(|v| v.vm);
            let mut t = Table::new(["VM", "HOST", "STATE", "RESTART"]);
            for v in vms {
                let host = match v.host {
                    Some(h) => h.to_string(),
                    // A non-master lists only the VMs it runs.
                    None if !self.is_master() => self.host.to_string(),
                    None => "-".into(),
                };
                let state = v.state.clone().unwrap_or_else(|| "not running".into());
                let restart = if v.restart.is_empty() {
                    "-".into()
                } else {
                    v.restart.clone()
                };
                t.row([v.vm.to_string(), host, state, restart]);
            }
            lines.extend(t.lines());
        }

        lines.push(String::new());
        if self.events.is_empty() {
            lines.push("events: none yet".into());
        } else {
            let mut t = Table::new(["TIME (UTC)", "EVENT"]);
            for e in &self.events {
                t.row([wall_clock(e.unix_ms), e.message.clone()]);
            }
            lines.extend(t.lines());
        }
        lines
    }
}

/// A heartbeat's age, or `never` before the first.
fn age(secs: Option<f64>) -> String {
    secs.map_or_else(|| "never".into(), human_age_secs)
}

/// `ds-1 0.2 s, ds-2 never`, or `-` for none.
fn datastore_ages(ages: &[DatastoreAge]) -> String {
    if ages.is_empty() {
        return "-".into();
    }
    ages.iter()
        .map(|d| format!("{} {}", d.datastore, age(d.age_s)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(unix_ms: u64, message: &str) -> ReportEvent {
        ReportEvent {
            seq: 1,
            unix_ms,
            name: "verdict-changed".into(),
            kind: "verdict".into(),
            host: Some(HostId(3)),
            vm: None,
            datastore: None,
            verdict: Some("dead".into()),
            reason: None,
            message: message.into(),
        }
    }

    fn master() -> AgentStatus {
        AgentStatus {
            host: HostId(1),
            role: "master".into(),
            master: Some(HostId(1)),
            config_generation: 9,
            hosts: vec![
                HostStatus {
                    host: HostId(3),
                    verdict: "dead".into(),
                    net_age_s: Some(242.5),
                    ds_age_s: vec![
                        DatastoreAge {
                            datastore: DatastoreId(1),
                            age_s: Some(240.1),
                        },
                        DatastoreAge {
                            datastore: DatastoreId(2),
                            age_s: None,
                        },
                    ],
                },
                HostStatus {
                    host: HostId(1),
                    verdict: "alive".into(),
                    net_age_s: Some(0.0),
                    ds_age_s: vec![],
                },
                HostStatus {
                    host: HostId(2),
                    verdict: "alive".into(),
                    net_age_s: Some(0.230732),
                    ds_age_s: vec![DatastoreAge {
                        datastore: DatastoreId(1),
                        age_s: Some(1.25),
                    }],
                },
            ],
            vms: vec![
                VmStatus {
                    vm: VmId(4),
                    host: Some(HostId(1)),
                    state: Some("running".into()),
                    restart: "restarting on host-1 from host-3 (attempt 1)".into(),
                    failed: false,
                },
                VmStatus {
                    vm: VmId(2),
                    host: None,
                    state: None,
                    restart: "idle".into(),
                    failed: false,
                },
            ],
            events: vec![event(
                1_796_283_721_000,
                "host-3 declared dead: network and datastore heartbeats stopped",
            )],
        }
    }

    #[test]
    fn the_masters_status_reads_as_aligned_words() {
        let text = master().text().join("\n");
        assert_eq!(
            text,
            "\
agent on           host-1
role               master
master             host-1 (this host)
config generation  9

HOST    VERDICT  NETWORK HB  DATASTORE HB
host-1  alive     this host  -
host-2  alive         0.2 s  ds-1 1.2 s
host-3  dead          4 min  ds-1 4 min, ds-2 never

VM    HOST    STATE        RESTART
vm-2  -       not running  idle
vm-4  host-1  running      restarting on host-1 from host-3 (attempt 1)

TIME (UTC)            EVENT
2026-12-03T07:42:01Z  host-3 declared dead: network and datastore heartbeats stopped"
        );
    }

    #[test]
    fn a_slaves_status_names_its_own_host_and_the_master() {
        let mut s = master();
        s.host = HostId(2);
        s.role = "slave of host-1".into();
        s.hosts.clear();
        s.vms = vec![VmStatus {
            vm: VmId(2),
            host: None,
            state: Some("running".into()),
            restart: String::new(),
            failed: false,
        }];
        s.events.clear();
        let text = s.text().join("\n");
        assert!(text.contains("master             host-1\n"), "{text}");
        assert!(
            text.contains("host verdicts: kept by the master, see `fdm-agent status` on host-1"),
            "{text}"
        );
        assert!(text.contains("vm-2  host-2  running  -"), "{text}");
        assert!(text.ends_with("events: none yet"), "{text}");
        s.master = None;
        s.vms.clear();
        let text = s.text().join("\n");
        assert!(text.contains("master             none known"), "{text}");
        assert!(text.contains("VMs: none running here"), "{text}");
        for raw in ["null", "None", "Some(", "HostId("] {
            assert!(!text.contains(raw), "{raw} in {text}");
        }
    }

    #[test]
    fn the_json_keeps_its_field_names() {
        let json = serde_json::to_value(master()).unwrap();
        assert_eq!(json["host"], 1);
        assert_eq!(json["master"], 1);
        assert_eq!(
            json["hosts"][0]["ds_age_s"][1]["age_s"],
            serde_json::Value::Null
        );
        assert_eq!(json["hosts"][0]["ds_age_s"][0]["datastore"], 1);
        assert_eq!(json["vms"][1]["host"], serde_json::Value::Null);
        let back: AgentStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, master());
    }
}
