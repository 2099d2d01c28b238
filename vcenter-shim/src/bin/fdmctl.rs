//! `fdmctl`: the operator's command line for `fdm-shim`. See `docs/shim.md`.
// Standard output through `fdm_agent::cli`, which ends quietly on a closed pipe where `println!`
// panics.
#![warn(clippy::print_stdout)]

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use fdm_agent::cli::{OutputFormat, Table, finish, human_age, key_values, print_line, print_lines};
use fdm_agent::runtime::report::wall_clock;
use heartbeat_fs::records::{
    AdmissionPolicy, HaSettings, IsolationResponse, RestartPolicy, RestartPriority,
    StorageLossResponse,
};
use heartbeat_fs::{DatastoreId, HostId, VmId};
use serde::Serialize;
use std::collections::BTreeMap;
use std::num::ParseIntError;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use vcenter_shim::admission::{AdmissionReport, ResourceNumbers};
use vcenter_shim::cli::{self, Word};
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
    /// Print aligned text for people or the API's JSON for tools.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text, global = true)]
    output: OutputFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The cluster now: the master and its last report, hosts, VMs and whether HA is paused.
    ///
    /// Hosts with the master's verdict and the age of their last network heartbeat; VMs with
    /// where each runs and where it stands in the restart pipeline (`failed: ...` for a VM left
    /// down at its restart limit).
    Status,
    /// The master's events, oldest first, with their ids and UTC times.
    Events {
        /// Only events with an id above this.
        #[arg(long, default_value_t = 0)]
        since: i64,
        /// Keep printing new events as they arrive (polling every second).
        #[arg(long)]
        follow: bool,
    },
    /// Whether the cluster can restart every protected VM after the tolerated failures.
    Admission,
    /// VMs: list, show, add, set, rm; clear, stop and start through HA.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Hosts: list, add, rm, and maintenance mode.
    #[command(subcommand)]
    Host(HostCmd),
    /// Datastores: list, add (with the hosts that mount them), rm.
    #[command(subcommand)]
    Datastore(DsCmd),
    /// The cluster's HA settings: show, set.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Pause or resume HA for the whole cluster.
    #[command(subcommand)]
    Ha(HaCmd),
}

// The VM flags given, named and typed as `VmSpec`'s fields, so that they serialise straight into
// a request body: `vm set` sends only what changes, `vm add` fills in the rest with `VmSpec`'s own
// defaults. (A `//` comment: clap would show a doc comment here in the commands' help.)
#[derive(Debug, clap::Args, Serialize)]
struct VmFields {
    /// The VM's name, unique in the inventory (`vm clear`, `stop` and `start` take it too).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// Its home datastore's id: the one holding its disks and its lease.
    #[arg(long, value_parser = id(DatastoreId))]
    #[serde(skip_serializing_if = "Option::is_none")]
    home: Option<DatastoreId>,
    /// Hypervisor definition (libvirt XML or process command spec); `@FILE` reads it from a file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    definition: Option<String>,
    /// CPU reserved for it, in MHz (admission control and placement).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_mhz: Option<u32>,
    /// Memory reserved for it, in MB (admission control and placement).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_mb: Option<u64>,
    /// Its restart priority: higher ones are restarted first.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<Word<RestartPriority>>,
    /// What its host does with it once isolated (default: the cluster's
    /// default_isolation_response).
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    isolation_response: Option<Word<IsolationResponse>>,
    /// When the master restarts it.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    restart_policy: Option<Word<RestartPolicy>>,
    /// What its host does once it could not write the VM's home datastore for the cluster's
    /// storage_loss_timeout_ms (default: the cluster's default_storage_loss_response;
    /// docs/operations.md).
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    storage_loss_response: Option<Word<StorageLossResponse>>,
    /// Comma-separated VM ids this VM starts after.
    #[arg(long, value_delimiter = ',', value_parser = id(VmId))]
    #[serde(skip_serializing_if = "Option::is_none")]
    depends_on: Option<Vec<VmId>>,
    /// VMs of one group are restarted on different hosts where possible.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    anti_affinity_group: Option<String>,
    /// Whether HA restarts it (true, the default for a new VM) or only lists it (false).
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
        /// The VM's id.
        #[arg(value_parser = id(VmId))]
        id: VmId,
    },
    /// Add a VM (`--name` and `--home` needed; the other fields take the API's defaults).
    Add {
        /// The new VM's id (a number, unique in the inventory).
        #[arg(long, value_parser = id(VmId))]
        id: VmId,
        #[command(flatten, next_help_heading = "VM fields")]
        fields: VmFields,
    },
    /// Change the fields given of a VM; the others keep their values.
    Set {
        /// The VM's id.
        #[arg(value_parser = id(VmId))]
        id: VmId,
        #[command(flatten, next_help_heading = "VM fields")]
        fields: VmFields,
    },
    /// Remove a VM (refused while another VM depends on it).
    Rm {
        /// The VM's id.
        #[arg(value_parser = id(VmId))]
        id: VmId,
    },
    /// Clear a VM that HA left failed at its restart limit.
    ///
    /// The VM crashed again after its allowed restarts within the window: the master forgets its
    /// counted restarts and restarts it if it is down. A clear is acted on once; a VM that keeps
    /// crashing fails again at its limit.
    Clear {
        /// The VM's id or name.
        vm: String,
    },
    /// Stop a VM through HA and keep it stopped until `fdmctl vm start`.
    ///
    /// The master has the host running it shut it down (power-off after the shutdown timeout),
    /// and HA keeps it stopped, whatever its host does, until `fdmctl vm start`.
    Stop {
        /// The VM's id or name.
        vm: String,
    },
    /// Start a VM through HA, on a host with room; HA protects it again from then on.
    ///
    /// Also after its guest or an operator stopped it at the hypervisor.
    Start {
        /// The VM's id or name.
        vm: String,
    },
}

#[derive(Debug, Subcommand)]
enum HostCmd {
    /// Every host of the inventory, as a table.
    List,
    /// Add a host (its agent reads the new configuration from the datastores).
    Add {
        /// The new host's id: the `host_id` of its agent's configuration.
        #[arg(long, value_parser = id(HostId))]
        id: HostId,
        /// The host's name, for people.
        #[arg(long)]
        name: String,
        /// ip:port of the agent's heartbeat socket (its `bind`).
        #[arg(long)]
        address: String,
        /// CPU capacity in MHz (admission control and placement).
        #[arg(long, default_value_t = 0)]
        cpu_mhz: u32,
        /// Memory capacity in MB (admission control and placement).
        #[arg(long, default_value_t = 0)]
        memory_mb: u64,
    },
    /// Remove a host (refused while it mounts a datastore or is a failover host).
    Rm {
        /// The host's id.
        #[arg(value_parser = id(HostId))]
        id: HostId,
    },
    /// Put a host in maintenance or take it out: in maintenance it receives no restarts and
    /// counts no capacity.
    Maintenance {
        /// Enter or exit maintenance.
        #[arg(value_enum)]
        action: Word<MaintenanceAction>,
        /// The host's id.
        #[arg(value_parser = id(HostId))]
        id: HostId,
    },
}

#[derive(Debug, Subcommand)]
enum DsCmd {
    /// Every datastore of the inventory with the hosts that mount it, as a table.
    List,
    /// Add a datastore and the hosts that mount it.
    Add {
        /// The new datastore's id: the `id` of its `[[datastores]]` in the agents' configuration.
        #[arg(long, value_parser = id(DatastoreId))]
        id: DatastoreId,
        /// The datastore's name, for people.
        #[arg(long)]
        name: String,
        /// HOST_ID=PATH, repeatable: a host that mounts it and where.
        #[arg(long = "mount", value_parser = mount)]
        mounts: Vec<MountSpec>,
    },
    /// Remove a datastore (refused while a VM has it as its home).
    Rm {
        /// The datastore's id.
        #[arg(value_parser = id(DatastoreId))]
        id: DatastoreId,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// The cluster's HA settings (and the shim's admission_mode), a setting a line.
    Show,
    /// Set one HA setting.
    Set {
        /// The setting, as `config show` names it.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(HA_KEYS))]
        key: String,
        /// Its value: JSON when it parses as JSON (a number, a list, an object), else a string.
        value: String,
    },
}

/// The settings `config set` takes: `HaView`'s fields (a test checks that they are all of them).
const HA_KEYS: [&str; 16] = [
    "paused",
    "timings_ms",
    "isolation_addresses",
    "default_isolation_response",
    "restart_retry_ms",
    "same_host_restart_attempts",
    "same_host_restart_wait_ms",
    "restart_limit",
    "default_storage_loss_response",
    "storage_loss_timeout_ms",
    "failover_hosts",
    "admission",
    "orchestrated_wait_ms",
    "max_concurrent_power_ons_per_host",
    "failback",
    "admission_mode",
];

#[derive(Debug, Subcommand)]
enum HaCmd {
    /// Pause HA: agents keep heartbeating and reporting but take no restart, isolation or fence
    /// action.
    Pause,
    /// Resume HA after a pause.
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

/// The API's word for an enum value without data, the one its flag takes (`cli::Word`).
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
            print_line(serde_json::to_string_pretty(answer)?)
        } else {
            print_lines(text(answer))
        }
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
                    print_line(serde_json::to_string(e)?)?;
                } else {
                    print_line(event_line(e))?;
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

fn main() -> ExitCode {
    // A closed standard output (`fdmctl events | head -1`) ends the command quietly with status 0.
    finish(run(Cli::parse()), "error", 1)
}

fn run(cli: Cli) -> Result<()> {
    let token = cli.token_file.as_deref().map(cli::read_token).transpose()?;
    let ctl = Ctl {
        client: Client::new(&cli.url, token),
        json_out: cli.output == OutputFormat::Json,
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
            HostCmd::Maintenance {
                action: Word(action),
                id,
            } => {
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

/// A table column: its header, whether its cells align right (numbers) and how a row's cell is
/// rendered.
type Column<T> = (&'static str, Align, fn(&T) -> String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}
use Align::{Left, Right};

const HOST_COLUMNS: &[Column<HostSpec>] = &[
    ("HOST", Left, |h| h.id.to_string()),
    ("NAME", Left, |h| h.name.clone()),
    ("ADDRESS", Left, |h| h.address.clone()),
    ("CPU_MHZ", Right, |h| h.cpu_mhz.to_string()),
    ("MEMORY_MB", Right, |h| h.memory_mb.to_string()),
    ("MAINTENANCE", Left, |h| yes_no(h.maintenance)),
];

const DATASTORE_COLUMNS: &[Column<DatastoreSpec>] = &[
    ("DATASTORE", Left, |d| d.id.to_string()),
    ("NAME", Left, |d| d.name.clone()),
    ("MOUNTS", Left, |d| {
        joined(&d.mounts, |m| format!("{}:{}", m.host, m.path))
    }),
];

const VM_COLUMNS: &[Column<VmSpec>] = &[
    ("VM", Left, |v| v.id.to_string()),
    ("NAME", Left, |v| v.name.clone()),
    ("HOME", Left, |v| v.home.to_string()),
    ("CPU_MHZ", Right, |v| v.cpu_mhz.to_string()),
    ("MEMORY_MB", Right, |v| v.memory_mb.to_string()),
    ("PRIORITY", Left, |v| word(&v.priority)),
    ("RESTART_POLICY", Left, |v| word(&v.restart_policy)),
    // Absent means the VM follows the cluster's default, which can change under it.
    ("ISOLATION_RESPONSE", Left, |v| {
        match &v.isolation_response {
            None => "cluster default".into(),
            Some(r) => word(r),
        }
    }),
    ("PROTECTED", Left, |v| yes_no(v.protected)),
    ("DEPENDS_ON", Left, |v| {
        joined(&v.depends_on, VmId::to_string)
    }),
    ("ANTI_AFFINITY_GROUP", Left, |v| {
        or_dash(v.anti_affinity_group.as_ref())
    }),
];

/// `rows` under `columns` (`fdm_agent::cli::Table`: each column as wide as its widest cell, so
/// that long names and mount paths neither get cut nor push the rest out of line).
fn table<T>(columns: &[Column<T>], rows: &[T]) -> Vec<String> {
    let mut t = Table::new(columns.iter().map(|(h, _, _)| *h));
    for (i, (_, align, _)) in columns.iter().enumerate() {
        if *align == Right {
            t = t.align_right(i);
        }
    }
    for row in rows {
        t.row(columns.iter().map(|(_, _, cell)| cell(row)));
    }
    t.lines()
}

/// One VM, a field a line: the list's columns plus the definition, too long for a table.
fn vm_text(v: &VmSpec) -> Vec<String> {
    let mut fields: Vec<(String, String)> = VM_COLUMNS
        .iter()
        .map(|(header, _, cell)| (header.to_lowercase(), cell(v)))
        .collect();
    // Not a column of `vm list` (rarely set, and the table is wide already).
    let storage_loss = match &v.storage_loss_response {
        None => "cluster default".into(),
        Some(r) => word(r),
    };
    fields.push(("storage_loss_response".into(), storage_loss));
    if v.definition.is_empty() {
        fields.push(("definition".into(), "-".into()));
    }
    let mut lines = key_values(fields);
    if !v.definition.is_empty() {
        lines.push("definition:".into());
        lines.extend(v.definition.lines().map(|line| format!("  {line}")));
    }
    lines
}

const STATUS_HOST_COLUMNS: &[Column<HostState>] = &[
    ("HOST", Left, |h| h.id.to_string()),
    ("NAME", Left, |h| h.name.clone()),
    ("VERDICT", Left, |h| or_dash(h.verdict.as_ref())),
    // The age of the last network heartbeat the master reported for it.
    ("NETWORK HB", Right, |h| {
        h.network_age_ms
            .map_or_else(|| "-".into(), |ms| human_age(Duration::from_millis(ms)))
    }),
    ("MAINTENANCE", Left, |h| yes_no(h.maintenance)),
    ("MASTER", Left, |h| {
        if h.is_master { "*" } else { "" }.into()
    }),
];

const STATUS_VM_COLUMNS: &[Column<VmState>] = &[
    ("VM", Left, |v| v.id.to_string()),
    ("NAME", Left, |v| v.name.clone()),
    ("PROTECTED", Left, |v| yes_no(v.protected)),
    ("HOST", Left, |v| or_dash(v.host)),
    ("STATE", Left, |v| or_dash(v.state.as_ref())),
    ("RESTART", Left, |v| or_dash(v.restart.as_ref())),
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
            "master {} (incarnation {}, epoch {}), report seq {} from {} written {}, read {} ago, agents on config generation {}{}",
            r.master,
            r.master_incarnation,
            r.epoch,
            r.sequence,
            r.datastore,
            wall_clock(r.unix_ms),
            human_age(Duration::from_millis(r.age_ms)),
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
    key_values(settings)
}

fn admission_text(a: &AdmissionReport) -> Vec<String> {
    let verdict = if !a.enforced {
        "not enforced (policy Disabled)"
    } else if a.ok {
        "OK: every protected VM can be restarted"
    } else {
        "VIOLATED: the cluster cannot restart every protected VM"
    };
    let mut resources = Table::new(["", "CAPACITY", "FAILOVER RESERVE", "AVAILABLE", "DEMAND"])
        .align_right(1)
        .align_right(2)
        .align_right(3)
        .align_right(4);
    for (label, r) in [("cpu MHz", &a.cpu_mhz), ("memory MB", &a.memory_mb)] {
        let r: &ResourceNumbers = r;
        resources.row([
            label.to_string(),
            r.capacity.to_string(),
            r.reserved_for_failover.to_string(),
            r.available.to_string(),
            r.demand.to_string(),
        ]);
    }
    let mut lines = vec![
        format!("admission control: {verdict}"),
        format!("policy: {}", policy_text(&a.policy)),
        format!("rule: {}", a.rule),
        format!(
            "hosts considered: {}, protected VMs: {}",
            a.hosts_considered, a.protected_vms
        ),
        String::new(),
    ];
    lines.extend(resources.lines());
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
    fn flag_words_are_the_api_words_and_wrong_ones_are_refused_naming_them() {
        let e = parse(&["vm", "set", "3", "--priority", "Urgent"]).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("invalid value 'Urgent' for '--priority <PRIORITY>'")
                && e.contains("[possible values: Disabled, Lowest, Low, Medium, High, Highest]"),
            "{e}"
        );
        let e = parse(&["host", "maintenance", "leave", "2"]).unwrap_err();
        assert!(
            e.to_string().contains("[possible values: enter, exit]"),
            "{e}"
        );
        let Ok(Cmd::Host(HostCmd::Maintenance { action, .. })) =
            parse(&["host", "maintenance", "exit", "2"])
        else {
            panic!("host maintenance parses");
        };
        assert_eq!(action, Word(MaintenanceAction::Exit));
        assert_eq!(word(&MaintenanceAction::Enter), "enter");
        assert_eq!(word(&RestartPolicy::HostFailureOnly), "HostFailureOnly");
        assert!(parse(&["config", "set", "paused", "true"]).is_ok());
        let e = parse(&["config", "set", "pasued", "true"]).unwrap_err();
        assert!(e.to_string().contains("[possible values: paused,"), "{e}");
    }

    #[test]
    fn config_set_takes_every_setting_config_show_names() {
        let view = HaView {
            ha: HaSettings::default(),
            admission_mode: Default::default(),
        };
        let json = serde_json::to_value(&view).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut taken = HA_KEYS.to_vec();
        keys.sort_unstable();
        taken.sort_unstable();
        assert_eq!(taken, keys);
    }

    #[test]
    fn every_command_and_flag_has_help() {
        fn check(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(arg.get_help().is_some(), "{path} {id} has no help");
            }
            for sub in cmd.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                assert!(sub.get_about().is_some(), "{path} has no help");
                check(sub, &path);
            }
        }
        use clap::CommandFactory;
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        check(&cmd, "fdmctl");
        // The help of `vm add` is its own, not a comment of the code.
        let help = cmd
            .find_subcommand("vm")
            .and_then(|vm| vm.find_subcommand("add"))
            .unwrap()
            .clone()
            .render_long_help()
            .to_string();
        assert!(help.starts_with("Add a VM"), "{help}");
        assert!(!help.contains("serialise"), "{help}");
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
