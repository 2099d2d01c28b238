//! `fdmctl`: the operator's command line for `fdm-shim`. See `docs/shim.md`.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use fdm_agent::runtime::report::wall_clock;
use heartbeat_fs::records::{
    AdmissionPolicy, HaSettings, IsolationResponse, RestartPolicy, RestartPriority,
    StorageLossResponse,
};
use heartbeat_fs::{DatastoreId, HostId, VmId};
use serde::Serialize;
use serde::de::{DeserializeOwned, IntoDeserializer};
use std::collections::BTreeMap;
use std::num::ParseIntError;
use std::path::PathBuf;
use std::time::Duration;
use vcenter_shim::admission::{AdmissionReport, ResourceNumbers};
use vcenter_shim::cli;
use vcenter_shim::client::Client;
use vcenter_shim::model::{
    DatastoreSpec, HaView, HostSpec, MaintenanceAction, MountSpec, VmSpec, WriteAnswer,
};
use vcenter_shim::service::{ClusterState, HostState, VmState, WriteOutcome};
use vcenter_shim::store::StoredEvent;

#[derive(Debug, Parser)]
#[command(
    name = "fdmctl",
    version,
    about = "Operate an fdm cluster through fdm-shim"
)]
struct Cli {
    /// Base URL of fdm-shim.
    #[arg(
        long,
        env = "FDM_URL",
        default_value = "http://127.0.0.1:7480",
        global = true
    )]
    url: String,
    /// File holding the API bearer token.
    #[arg(long, env = "FDM_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Hosts, VMs (with where each stands in the restart pipeline: `failed: ...` for a VM left
    /// down at its restart limit), the master and whether HA is paused.
    Status,
    /// The master's events, oldest first.
    Events {
        /// Only events with an id above this.
        #[arg(long, default_value_t = 0)]
        since: i64,
        /// Keep printing new events as they arrive.
        #[arg(long)]
        follow: bool,
    },
    /// Whether the cluster can restart every protected VM after the tolerated failures.
    Admission,
    /// VMs: list, show, add, set, rm, and clear a VM failed at its restart limit.
    #[command(subcommand)]
    Vm(VmCmd),
    #[command(subcommand)]
    Host(HostCmd),
    #[command(subcommand)]
    Datastore(DsCmd),
    #[command(subcommand)]
    Config(ConfigCmd),
    #[command(subcommand)]
    Ha(HaCmd),
}

/// The VM flags given, named and typed as `VmSpec`'s fields, so that they serialise straight into
/// a request body: `vm set` sends only what changes, `vm add` fills in the rest with `VmSpec`'s own
/// defaults.
#[derive(Debug, clap::Args, Serialize)]
struct VmFields {
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// Home datastore id.
    #[arg(long, value_parser = id(DatastoreId))]
    #[serde(skip_serializing_if = "Option::is_none")]
    home: Option<DatastoreId>,
    /// Hypervisor definition (libvirt XML or process command spec); `@FILE` reads it from a file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    definition: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_mhz: Option<u32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_mb: Option<u64>,
    /// Disabled, Lowest, Low, Medium, High, Highest.
    #[arg(long, value_parser = parse_word::<RestartPriority>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<RestartPriority>,
    /// PowerOff, Shutdown, LeaveRunning.
    #[arg(long, value_parser = parse_word::<IsolationResponse>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    isolation_response: Option<IsolationResponse>,
    /// Always, HostFailureOnly, Never.
    #[arg(long, value_parser = parse_word::<RestartPolicy>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    restart_policy: Option<RestartPolicy>,
    /// Keep, Pause, PowerOff: what its host does once it could not write the VM's home datastore
    /// for the cluster's storage_loss_timeout_ms (docs/operations.md).
    #[arg(long, value_parser = parse_word::<StorageLossResponse>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    storage_loss_response: Option<StorageLossResponse>,
    /// Comma-separated VM ids this VM starts after.
    #[arg(long, value_delimiter = ',', value_parser = id(VmId))]
    #[serde(skip_serializing_if = "Option::is_none")]
    depends_on: Option<Vec<VmId>>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    anti_affinity_group: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    protected: Option<bool>,
}

impl VmFields {
    fn is_empty(&self) -> bool {
        // Destructured so that a new field cannot be forgotten here.
        let Self {
            name,
            home,
            definition,
            cpu_mhz,
            memory_mb,
            priority,
            isolation_response,
            restart_policy,
            storage_loss_response,
            depends_on,
            anti_affinity_group,
            protected,
        } = self;
        name.is_none()
            && home.is_none()
            && definition.is_none()
            && cpu_mhz.is_none()
            && memory_mb.is_none()
            && priority.is_none()
            && isolation_response.is_none()
            && restart_policy.is_none()
            && storage_loss_response.is_none()
            && depends_on.is_none()
            && anti_affinity_group.is_none()
            && protected.is_none()
    }

    /// Replaces an `@FILE` definition with the file's text.
    fn read_definition(&mut self) -> Result<()> {
        if let Some(path) = self.definition.as_deref().and_then(|d| d.strip_prefix('@')) {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading definition file {path}"))?;
            self.definition = Some(text);
        }
        Ok(())
    }
}

/// The VM `vm add` creates: the flags given with `VmSpec`'s defaults for the others, read through
/// serde so that those defaults are the ones the server applies, written once in `VmSpec`.
fn new_vm(id: VmId, fields: &VmFields) -> Result<VmSpec> {
    if fields.name.is_none() {
        bail!("vm add needs --name");
    }
    if fields.home.is_none() {
        bail!("vm add needs --home");
    }
    #[derive(Serialize)]
    struct Given<'a> {
        id: VmId,
        #[serde(flatten)]
        fields: &'a VmFields,
    }
    let given = serde_json::to_string(&Given { id, fields })?;
    serde_json::from_str(&given).context("the VM flags do not make a VM")
}

#[derive(Debug, Subcommand)]
enum VmCmd {
    /// Every VM of the inventory, as a table.
    List,
    /// One VM, a field a line (with its definition).
    Show {
        #[arg(value_parser = id(VmId))]
        id: VmId,
    },
    /// Add a VM (`--name` and `--home` needed; the other fields take the API's defaults).
    Add {
        #[arg(long, value_parser = id(VmId))]
        id: VmId,
        #[command(flatten)]
        fields: VmFields,
    },
    /// Change the fields given of a VM; the others keep their values.
    Set {
        #[arg(value_parser = id(VmId))]
        id: VmId,
        #[command(flatten)]
        fields: VmFields,
    },
    /// Remove a VM (refused while another VM depends on it).
    Rm {
        #[arg(value_parser = id(VmId))]
        id: VmId,
    },
    /// Clear a VM that HA left failed at its restart limit (it crashed again after its allowed
    /// restarts within the window): the master forgets its counted restarts and restarts it if it
    /// is down. A clear is acted on once; a VM that keeps crashing fails again at its limit.
    Clear {
        /// The VM's id or name.
        vm: String,
    },
    /// Stop a VM through HA: the master has the host running it shut it down (power-off after the
    /// shutdown timeout), and HA keeps it stopped, whatever its host does, until `fdmctl vm start`.
    Stop {
        /// The VM's id or name.
        vm: String,
    },
    /// Start a VM through HA, on a host with room (also after its guest or an operator stopped
    /// it): HA protects it again from then on.
    Start {
        /// The VM's id or name.
        vm: String,
    },
}

#[derive(Debug, Subcommand)]
enum HostCmd {
    List,
    Add {
        #[arg(long, value_parser = id(HostId))]
        id: HostId,
        #[arg(long)]
        name: String,
        /// ip:port of the agent's heartbeat socket.
        #[arg(long)]
        address: String,
        #[arg(long, default_value_t = 0)]
        cpu_mhz: u32,
        #[arg(long, default_value_t = 0)]
        memory_mb: u64,
    },
    Rm {
        #[arg(value_parser = id(HostId))]
        id: HostId,
    },
    Maintenance {
        /// enter or exit.
        #[arg(value_parser = parse_word::<MaintenanceAction>)]
        action: MaintenanceAction,
        #[arg(value_parser = id(HostId))]
        id: HostId,
    },
}

#[derive(Debug, Subcommand)]
enum DsCmd {
    List,
    Add {
        #[arg(long, value_parser = id(DatastoreId))]
        id: DatastoreId,
        #[arg(long)]
        name: String,
        /// HOST_ID=PATH, repeatable: a host that mounts it and where.
        #[arg(long = "mount", value_parser = mount)]
        mounts: Vec<MountSpec>,
    },
    Rm {
        #[arg(value_parser = id(DatastoreId))]
        id: DatastoreId,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// The cluster HA settings (and the shim's admission_mode).
    Show,
    /// Set one HA setting; VALUE is JSON when it parses as JSON, else a string.
    Set { key: String, value: String },
}

#[derive(Debug, Subcommand)]
enum HaCmd {
    /// Agents keep heartbeating and reporting but take no restart, isolation or fence action.
    Pause,
    Resume,
}

/// A parser of an id flag into its type (`id(VmId)`), so that ids of different kinds cannot be
/// passed for one another.
fn id<T>(wrap: fn(u32) -> T) -> impl Fn(&str) -> Result<T, ParseIntError> + Clone {
    move |s| s.parse().map(wrap)
}

/// A VM named by its id (digits) or its name (names are unique in the inventory).
fn vm_by_id_or_name(c: &Client, given: &str) -> Result<VmId> {
    if let Ok(id) = given.parse::<u32>() {
        return Ok(VmId(id));
    }
    match c.vms()?.into_iter().find(|v| v.name == given) {
        Some(v) => Ok(v.id),
        None => bail!("no VM is named {given:?} (give its name or its id)"),
    }
}

/// `--mount HOST_ID=PATH`.
fn mount(s: &str) -> Result<MountSpec, String> {
    let (host, path) = cli::id_and_path(s, "HOST_ID", "host")?;
    Ok(MountSpec {
        host: HostId(host),
        path: path.to_string(),
    })
}

/// A flag's word as the API's enum value (`High`, `HostFailureOnly`, `enter`): the words the API
/// takes are the only ones accepted, and a wrong one is refused naming the right ones.
fn parse_word<T: DeserializeOwned>(s: &str) -> Result<T, String> {
    T::deserialize(IntoDeserializer::<serde::de::value::Error>::into_deserializer(s))
        .map_err(|e| e.to_string())
}

/// The API's word for an enum value without data, the one `parse_word` reads back.
fn word<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v)
        .ok()
        .and_then(|json| serde_json::from_str::<String>(&json).ok())
        .unwrap_or_else(|| "?".into())
}

/// The policy as the API names it, with its numbers in words.
fn policy_text(p: &AdmissionPolicy) -> String {
    match p {
        AdmissionPolicy::Disabled => "Disabled".into(),
        AdmissionPolicy::HostFailuresTolerated(1) => "HostFailuresTolerated: 1 host failure".into(),
        AdmissionPolicy::HostFailuresTolerated(n) => {
            format!("HostFailuresTolerated: {n} host failures")
        }
        AdmissionPolicy::PercentReserved { cpu, memory } => {
            format!("PercentReserved: {cpu}% of CPU and {memory}% of memory")
        }
        AdmissionPolicy::DedicatedFailoverHosts => "DedicatedFailoverHosts".into(),
    }
}

/// A client plus the output mode every command prints in.
struct Ctl {
    client: Client,
    json_out: bool,
}

impl Ctl {
    /// An answer as JSON, or as the lines `text` makes of it.
    fn show<T: Serialize>(&self, answer: &T, text: impl Fn(&T) -> Vec<String>) -> Result<()> {
        if self.json_out {
            println!("{}", serde_json::to_string_pretty(answer)?);
        } else {
            for line in text(answer) {
                println!("{line}");
            }
        }
        Ok(())
    }

    /// Prints a write's answer; `what` is the text-mode summary of it.
    fn wrote<T: Serialize>(&self, answer: &T, outcome: &WriteOutcome, what: &str) -> Result<()> {
        self.show(answer, |_| write_text(outcome, what))
    }

    fn wrote_object(&self, answer: &WriteAnswer, what: &str) -> Result<()> {
        self.wrote(answer, &answer.outcome, what)
    }

    fn removed(&self, answer: &WriteOutcome, what: impl std::fmt::Display) -> Result<()> {
        self.wrote(answer, answer, &format!("{what} removed"))
    }

    fn events(&self, mut since: i64, follow: bool) -> Result<()> {
        loop {
            let page = self.client.events_since(since)?;
            for e in &page {
                since = since.max(e.id);
                if self.json_out {
                    println!("{}", serde_json::to_string(e)?);
                } else {
                    println!("{}", event_line(e));
                }
            }
            // The server caps a page, so only an empty one says everything has been printed.
            if page.is_empty() {
                if !follow {
                    return Ok(());
                }
                // A CLI polling loop, not the sans-IO core the ban protects.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let token = cli.token_file.as_deref().map(cli::read_token).transpose()?;
    let ctl = Ctl {
        client: Client::new(&cli.url, token),
        json_out: cli.output == Output::Json,
    };
    let c = &ctl.client;
    match cli.cmd {
        Cmd::Status => ctl.show(&c.state()?, status_text),
        Cmd::Events { since, follow } => ctl.events(since, follow),
        Cmd::Admission => ctl.show(&c.admission()?, admission_text),
        Cmd::Vm(cmd) => match cmd {
            VmCmd::List => ctl.show(&c.vms()?, |vms| table(VM_COLUMNS, vms)),
            VmCmd::Show { id } => ctl.show(&c.vm(id)?, vm_text),
            VmCmd::Add { id, mut fields } => {
                fields.read_definition()?;
                let answer = c.add_vm(&new_vm(id, &fields)?)?;
                ctl.wrote_object(&answer, &format!("{id} added"))
            }
            VmCmd::Set { id, mut fields } => {
                if fields.is_empty() {
                    bail!("nothing to set: give at least one --field");
                }
                fields.read_definition()?;
                let answer = c.update_vm(id, &fields)?;
                ctl.wrote_object(&answer, &format!("{id} updated"))
            }
            VmCmd::Rm { id } => ctl.removed(&c.remove_vm(id)?, id),
            VmCmd::Clear { vm } => {
                let id = vm_by_id_or_name(c, &vm)?;
                let answer = c.clear_vm(id)?;
                ctl.wrote_object(&answer, &format!("{id} cleared"))
            }
            VmCmd::Stop { vm } => {
                let id = vm_by_id_or_name(c, &vm)?;
                let answer = c.stop_vm(id)?;
                ctl.wrote_object(&answer, &format!("{id}: stop requested"))
            }
            VmCmd::Start { vm } => {
                let id = vm_by_id_or_name(c, &vm)?;
                let answer = c.start_vm(id)?;
                ctl.wrote_object(&answer, &format!("{id}: start requested"))
            }
        },
        Cmd::Host(cmd) => match cmd {
            HostCmd::List => ctl.show(&c.hosts()?, |hosts| table(HOST_COLUMNS, hosts)),
            HostCmd::Add {
                id,
                name,
                address,
                cpu_mhz,
                memory_mb,
            } => {
                let host = HostSpec {
                    id,
                    name,
                    address,
                    cpu_mhz,
                    memory_mb,
                    maintenance: false,
                };
                ctl.wrote_object(&c.add_host(&host)?, &format!("{id} added"))
            }
            HostCmd::Rm { id } => ctl.removed(&c.remove_host(id)?, id),
            HostCmd::Maintenance { action, id } => {
                let answer = c.maintenance(id, action)?;
                ctl.wrote_object(&answer, &format!("{id} maintenance {}", word(&action)))
            }
        },
        Cmd::Datastore(cmd) => match cmd {
            DsCmd::List => ctl.show(&c.datastores()?, |ds| table(DATASTORE_COLUMNS, ds)),
            DsCmd::Add { id, name, mounts } => {
                let datastore = DatastoreSpec { id, name, mounts };
                ctl.wrote_object(&c.add_datastore(&datastore)?, &format!("{id} added"))
            }
            DsCmd::Rm { id } => ctl.removed(&c.remove_datastore(id)?, id),
        },
        Cmd::Config(cmd) => match cmd {
            ConfigCmd::Show => ctl.show(&c.ha()?, ha_text),
            ConfigCmd::Set { key, value } => {
                // The one untyped request: the operator names the field, and its value is theirs
                // to write in JSON (a policy, a map of timings); the server reads it into the
                // field's type and names what does not fit.
                let value = serde_json::from_str::<serde_json::Value>(&value)
                    .unwrap_or(serde_json::Value::String(value));
                let answer = c.update_ha(&BTreeMap::from([(key.as_str(), value)]))?;
                ctl.wrote_object(&answer, &format!("{key} set"))
            }
        },
        Cmd::Ha(cmd) => {
            let paused = matches!(cmd, HaCmd::Pause);
            let what = if paused { "HA paused" } else { "HA resumed" };
            let answer = c.update_ha(&HaPause { paused })?;
            ctl.wrote_object(&answer, what)
        }
    }
}

/// The body of `ha pause` and `ha resume`: the one `HaView` field they set.
#[derive(Debug, Serialize)]
struct HaPause {
    paused: bool,
}

fn write_text(outcome: &WriteOutcome, what: &str) -> Vec<String> {
    std::iter::once(format!("{what} (config generation {})", outcome.generation))
        .chain(outcome.warnings.iter().map(|w| format!("warning: {w}")))
        .collect()
}

/// An event for people: its id (what `--since` takes), when it happened (UTC), the master that
/// reported it and its number there, its kind and the event in words.
fn event_line(e: &StoredEvent) -> String {
    format!(
        "{:>6}  {}  {} #{:<5} {:<10} {}",
        e.id,
        wall_clock(e.unix_ms),
        e.master,
        e.seq,
        e.kind,
        e.message
    )
}

/// An absent value as `-`.
fn or_dash(v: Option<impl std::fmt::Display>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn yes_no(v: bool) -> String {
    if v { "yes" } else { "no" }.into()
}

/// The items rendered by `item`, or `-` for none.
fn joined<T>(list: &[T], item: impl Fn(&T) -> String) -> String {
    if list.is_empty() {
        "-".into()
    } else {
        list.iter().map(item).collect::<Vec<_>>().join(", ")
    }
}

/// A table column: its header and how a row's cell is rendered.
type Column<T> = (&'static str, fn(&T) -> String);

const HOST_COLUMNS: &[Column<HostSpec>] = &[
    ("HOST", |h| h.id.to_string()),
    ("NAME", |h| h.name.clone()),
    ("ADDRESS", |h| h.address.clone()),
    ("CPU_MHZ", |h| h.cpu_mhz.to_string()),
    ("MEMORY_MB", |h| h.memory_mb.to_string()),
    ("MAINTENANCE", |h| yes_no(h.maintenance)),
];

const DATASTORE_COLUMNS: &[Column<DatastoreSpec>] = &[
    ("DATASTORE", |d| d.id.to_string()),
    ("NAME", |d| d.name.clone()),
    ("MOUNTS", |d| {
        joined(&d.mounts, |m| format!("{}:{}", m.host, m.path))
    }),
];

const VM_COLUMNS: &[Column<VmSpec>] = &[
    ("VM", |v| v.id.to_string()),
    ("NAME", |v| v.name.clone()),
    ("HOME", |v| v.home.to_string()),
    ("CPU_MHZ", |v| v.cpu_mhz.to_string()),
    ("MEMORY_MB", |v| v.memory_mb.to_string()),
    ("PRIORITY", |v| word(&v.priority)),
    ("RESTART_POLICY", |v| word(&v.restart_policy)),
    // Absent means the VM follows the cluster's default, which can change under it.
    ("ISOLATION_RESPONSE", |v| match &v.isolation_response {
        None => "cluster default".into(),
        Some(r) => word(r),
    }),
    ("PROTECTED", |v| yes_no(v.protected)),
    ("DEPENDS_ON", |v| joined(&v.depends_on, VmId::to_string)),
    ("ANTI_AFFINITY_GROUP", |v| {
        or_dash(v.anti_affinity_group.as_ref())
    }),
];

/// `rows` under `columns`, each column as wide as its widest cell, so that long names and mount
/// paths neither get cut nor push the rest out of line.
fn table<T>(columns: &[Column<T>], rows: &[T]) -> Vec<String> {
    let header = columns.iter().map(|(h, _)| h.to_string()).collect();
    let cells = |row| columns.iter().map(|(_, cell)| cell(row)).collect();
    let lines: Vec<Vec<String>> = std::iter::once(header)
        .chain(rows.iter().map(cells))
        .collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    lines
        .iter()
        .map(|line| {
            let text: String = line
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}  "))
                .collect();
            // Trimmed rather than leaving the last column unpadded, because an empty last cell
            // (no MASTER mark) would still leave the padding of the one before it.
            text.trim_end().to_string()
        })
        .collect()
}

/// One VM, a field a line: the list's columns plus the definition, too long for a table.
fn vm_text(v: &VmSpec) -> Vec<String> {
    let mut lines: Vec<String> = VM_COLUMNS
        .iter()
        .map(|(header, cell)| format!("{:<20} {}", header.to_lowercase(), cell(v)))
        .collect();
    // Not a column of `vm list` (rarely set, and the table is wide already).
    let storage_loss = match &v.storage_loss_response {
        None => "cluster default".into(),
        Some(r) => word(r),
    };
    lines.push(format!("{:<20} {storage_loss}", "storage_loss_response"));
    if v.definition.is_empty() {
        lines.push(format!("{:<20} -", "definition"));
    } else {
        lines.push("definition:".into());
        lines.extend(v.definition.lines().map(|line| format!("  {line}")));
    }
    lines
}

const STATUS_HOST_COLUMNS: &[Column<HostState>] = &[
    ("HOST", |h| h.id.to_string()),
    ("NAME", |h| h.name.clone()),
    ("VERDICT", |h| or_dash(h.verdict.as_ref())),
    ("MAINTENANCE", |h| yes_no(h.maintenance)),
    ("MASTER", |h| if h.is_master { "*" } else { "" }.into()),
];

const STATUS_VM_COLUMNS: &[Column<VmState>] = &[
    ("VM", |v| v.id.to_string()),
    ("NAME", |v| v.name.clone()),
    ("PROTECTED", |v| yes_no(v.protected)),
    ("HOST", |v| or_dash(v.host)),
    ("STATE", |v| or_dash(v.state.as_ref())),
    ("RESTART", |v| or_dash(v.restart.as_ref())),
];

fn status_text(s: &ClusterState) -> Vec<String> {
    let mut lines = Vec::new();
    if s.paused {
        lines.push("*** HA PAUSED: agents take no restart, isolation or fence action ***".into());
    }
    // The cluster id in decimal, as `fdm-shim --cluster-id` takes it.
    lines.push(format!(
        "cluster {}  config generation {}",
        s.cluster.0, s.config_generation
    ));
    lines.push(match &s.report {
        Some(r) => format!(
            "master {} (incarnation {}, epoch {}), report seq {} from {}, {} ms ago, agents on config generation {}{}",
            r.master,
            r.master_incarnation,
            r.epoch,
            r.sequence,
            r.datastore,
            r.age_ms,
            r.config_generation,
            if r.ha_paused {
                " (master reports HA paused)"
            } else {
                ""
            }
        ),
        None => "master: unknown (no report read from any datastore yet)".into(),
    });
    lines.push(String::new());
    lines.extend(table(STATUS_HOST_COLUMNS, &s.hosts));
    lines.push(String::new());
    lines.extend(table(STATUS_VM_COLUMNS, &s.vms));
    let bad: Vec<String> = s
        .datastores
        .iter()
        .filter(|d| d.written_generation != s.config_generation || d.write_error.is_some())
        .map(|d| {
            format!(
                "warning: {} has config generation {} ({})",
                d.datastore,
                d.written_generation,
                or_dash(d.write_error.as_ref())
            )
        })
        .collect();
    if !bad.is_empty() {
        lines.push(String::new());
        lines.extend(bad);
    }
    lines
}

/// The HA settings a line each, under the names `config set` takes.
fn ha_text(view: &HaView) -> Vec<String> {
    // Destructured so that a new setting cannot be left out.
    let HaView {
        ha:
            HaSettings {
                paused,
                timings_ms,
                isolation_addresses,
                default_isolation_response,
                restart_retry_ms,
                same_host_restart_attempts,
                same_host_restart_wait_ms,
                restart_limit,
                default_storage_loss_response,
                storage_loss_timeout_ms,
                failover_hosts,
                admission,
                orchestrated_wait_ms,
                max_concurrent_power_ons_per_host,
                failback,
            },
        admission_mode,
    } = view;
    let timings: Vec<(&String, &u64)> = timings_ms.iter().collect();
    let settings = [
        ("paused", yes_no(*paused)),
        ("timings_ms", joined(&timings, |(k, v)| format!("{k}={v}"))),
        (
            "isolation_addresses",
            joined(isolation_addresses, String::clone),
        ),
        (
            "default_isolation_response",
            word(default_isolation_response),
        ),
        ("restart_retry_ms", joined(restart_retry_ms, u64::to_string)),
        (
            "same_host_restart_attempts",
            same_host_restart_attempts.to_string(),
        ),
        (
            "same_host_restart_wait_ms",
            same_host_restart_wait_ms.to_string(),
        ),
        (
            "restart_limit",
            format!(
                "{} restarts per {} ms",
                restart_limit.max_restarts, restart_limit.window_ms
            ),
        ),
        (
            "default_storage_loss_response",
            word(default_storage_loss_response),
        ),
        (
            "storage_loss_timeout_ms",
            or_dash(storage_loss_timeout_ms.as_ref()),
        ),
        ("failover_hosts", joined(failover_hosts, HostId::to_string)),
        ("admission", policy_text(admission)),
        (
            "orchestrated_wait_ms",
            or_dash(orchestrated_wait_ms.as_ref()),
        ),
        (
            "max_concurrent_power_ons_per_host",
            max_concurrent_power_ons_per_host.to_string(),
        ),
        ("failback", yes_no(*failback)),
        ("admission_mode", word(admission_mode)),
    ];
    let width = settings.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    settings
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}"))
        .collect()
}

fn admission_text(a: &AdmissionReport) -> Vec<String> {
    let verdict = if !a.enforced {
        "not enforced (policy Disabled)"
    } else if a.ok {
        "OK: every protected VM can be restarted"
    } else {
        "VIOLATED: the cluster cannot restart every protected VM"
    };
    let resource = |label: &str, r: &ResourceNumbers| {
        format!(
            "{label:<10} capacity {:>10}  failover reserve {:>10}  available {:>10}  demand {:>10}",
            r.capacity, r.reserved_for_failover, r.available, r.demand
        )
    };
    let mut lines = vec![
        format!("admission control: {verdict}"),
        format!("policy: {}", policy_text(&a.policy)),
        format!("rule: {}", a.rule),
        format!(
            "hosts considered: {}, protected VMs: {}",
            a.hosts_considered, a.protected_vms
        ),
        resource("cpu MHz", &a.cpu_mhz),
        resource("memory MB", &a.memory_mb),
    ];
    lines.extend(a.problems.iter().map(|p| format!("problem: {p}")));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use vcenter_shim::api;

    fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("fdmctl").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn flag_words_are_the_api_words_and_read_back() {
        fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(all: &[T]) {
            for v in all {
                let w = word(v);
                assert_eq!(serde_json::to_string(v).unwrap(), format!("\"{w}\""));
                assert_eq!(parse_word::<T>(&w).as_ref(), Ok(v));
            }
        }
        use RestartPriority::*;
        check(&[Disabled, Lowest, Low, Medium, High, Highest]);
        check(&[
            IsolationResponse::PowerOff,
            IsolationResponse::Shutdown,
            IsolationResponse::LeaveRunning,
        ]);
        check(&[
            RestartPolicy::Always,
            RestartPolicy::HostFailureOnly,
            RestartPolicy::Never,
        ]);
        check(&[MaintenanceAction::Enter, MaintenanceAction::Exit]);
        assert_eq!(word(&MaintenanceAction::Enter), "enter");
        assert_eq!(
            parse_word::<RestartPolicy>("Sometimes"),
            Err(
                "unknown variant `Sometimes`, expected one of `Always`, `HostFailureOnly`, `Never`"
                    .into()
            )
        );
        let e = parse(&["vm", "set", "3", "--priority", "Urgent"]).unwrap_err();
        assert!(e.to_string().contains("'--priority <PRIORITY>'"), "{e}");
        let e = parse(&["host", "maintenance", "leave", "2"]).unwrap_err();
        assert!(e.to_string().contains("expected `enter` or `exit`"), "{e}");
    }

    #[test]
    fn vm_add_is_a_spec_with_the_servers_defaults() {
        let Ok(Cmd::Vm(VmCmd::Add { id, fields })) =
            parse(&["vm", "add", "--id", "3", "--name", "db", "--home", "1"])
        else {
            panic!("vm add parses");
        };
        let vm = new_vm(id, &fields).unwrap();
        let server: VmSpec =
            api::from_value(serde_json::json!({"id": 3, "name": "db", "home": 1})).unwrap();
        assert_eq!(vm, server);
        assert!(vm.protected);
        let Ok(Cmd::Vm(VmCmd::Add { id, fields })) =
            parse(&["vm", "add", "--id", "3", "--home", "1"])
        else {
            panic!("vm add parses");
        };
        assert_eq!(
            new_vm(id, &fields).unwrap_err().to_string(),
            "vm add needs --name"
        );
    }

    #[test]
    fn vm_set_sends_only_the_flags_given() {
        let Ok(Cmd::Vm(VmCmd::Set { id, fields })) = parse(&[
            "vm",
            "set",
            "3",
            "--priority",
            "High",
            "--depends-on",
            "6,7",
            "--home",
            "2",
        ]) else {
            panic!("vm set parses");
        };
        assert_eq!(id, VmId(3));
        assert!(!fields.is_empty());
        assert_eq!(
            serde_json::to_string(&fields).unwrap(),
            r#"{"home":2,"priority":"High","depends_on":[6,7]}"#
        );
        let Ok(Cmd::Vm(VmCmd::Set { fields, .. })) =
            parse(&["vm", "set", "3", "--storage-loss-response", "Pause"])
        else {
            panic!("vm set parses");
        };
        assert_eq!(
            serde_json::to_string(&fields).unwrap(),
            r#"{"storage_loss_response":"Pause"}"#
        );
        assert!(parse(&["vm", "set", "3", "--storage-loss-response", "Freeze"]).is_err());
        let Ok(Cmd::Vm(VmCmd::Set { fields, .. })) = parse(&["vm", "set", "3"]) else {
            panic!("vm set parses");
        };
        assert!(fields.is_empty());
        assert_eq!(serde_json::to_string(&fields).unwrap(), "{}");
    }

    #[test]
    fn ha_settings_are_a_line_each_under_their_config_set_names() {
        let mut view = HaView {
            ha: HaSettings::default(),
            admission_mode: Default::default(),
        };
        view.ha.timings_ms.insert("ds_lease".into(), 9000);
        view.ha.timings_ms.insert("heartbeat_interval".into(), 500);
        view.ha.failover_hosts = vec![HostId(3), HostId(4)];
        view.ha.admission = AdmissionPolicy::DedicatedFailoverHosts;
        let lines = ha_text(&view);
        let json = serde_json::to_value(&view).unwrap();
        let names: Vec<&str> = lines
            .iter()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        keys.sort_unstable();
        assert_eq!(sorted, keys, "one line per setting");
        let line = |name: &str| {
            let l = lines
                .iter()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap();
            l[name.len()..].trim().to_string()
        };
        assert_eq!(line("paused"), "no");
        assert_eq!(line("timings_ms"), "ds_lease=9000, heartbeat_interval=500");
        assert_eq!(line("isolation_addresses"), "-");
        assert_eq!(line("default_isolation_response"), "PowerOff");
        assert_eq!(line("restart_retry_ms"), "0, 2000, 10000, 30000, 120000");
        assert_eq!(line("failover_hosts"), "host-3, host-4");
        assert_eq!(line("admission"), "DedicatedFailoverHosts");
        assert_eq!(line("orchestrated_wait_ms"), "-");
        assert_eq!(line("admission_mode"), "refuse");
    }

    #[test]
    fn policies_read_as_words() {
        assert_eq!(policy_text(&AdmissionPolicy::Disabled), "Disabled");
        assert_eq!(
            policy_text(&AdmissionPolicy::HostFailuresTolerated(1)),
            "HostFailuresTolerated: 1 host failure"
        );
        assert_eq!(
            policy_text(&AdmissionPolicy::HostFailuresTolerated(2)),
            "HostFailuresTolerated: 2 host failures"
        );
        assert_eq!(
            policy_text(&AdmissionPolicy::PercentReserved {
                cpu: 10,
                memory: 25
            }),
            "PercentReserved: 10% of CPU and 25% of memory"
        );
    }
}
