//! `fdmctl`: the operator's command line for `fdm-shim`. See `docs/shim.md`.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::time::Duration;
use vcenter_shim::cli;

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
    /// Hosts, VMs, the master and whether HA is paused.
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

/// Named as the API's VM fields, so that the flags given serialise straight into a request body.
#[derive(Debug, clap::Args, serde::Serialize)]
struct VmFields {
    #[arg(long)]
    name: Option<String>,
    /// Home datastore id.
    #[arg(long)]
    home: Option<u32>,
    /// Hypervisor definition (libvirt XML or process command spec); `@FILE` reads it from a file.
    #[arg(long)]
    definition: Option<String>,
    #[arg(long)]
    cpu_mhz: Option<u32>,
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Disabled, Lowest, Low, Medium, High, Highest.
    #[arg(long)]
    priority: Option<String>,
    /// PowerOff, Shutdown, LeaveRunning.
    #[arg(long)]
    isolation_response: Option<String>,
    /// Always, HostFailureOnly, Never.
    #[arg(long)]
    restart_policy: Option<String>,
    /// Comma-separated VM ids this VM starts after.
    #[arg(long, value_delimiter = ',')]
    depends_on: Option<Vec<u32>>,
    #[arg(long)]
    anti_affinity_group: Option<String>,
    #[arg(long)]
    protected: Option<bool>,
}

#[derive(Debug, Subcommand)]
enum VmCmd {
    List,
    Show {
        id: u32,
    },
    Add {
        #[arg(long)]
        id: u32,
        #[command(flatten)]
        fields: VmFields,
    },
    Set {
        id: u32,
        #[command(flatten)]
        fields: VmFields,
    },
    Rm {
        id: u32,
    },
}

#[derive(Debug, Subcommand)]
enum HostCmd {
    List,
    Add {
        #[arg(long)]
        id: u32,
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
        id: u32,
    },
    Maintenance {
        action: MaintenanceAction,
        id: u32,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum MaintenanceAction {
    Enter,
    Exit,
}

#[derive(Debug, Subcommand)]
enum DsCmd {
    List,
    Add {
        #[arg(long)]
        id: u32,
        #[arg(long)]
        name: String,
        /// HOST_ID=PATH, repeatable: a host that mounts it and where.
        #[arg(long = "mount")]
        mounts: Vec<String>,
    },
    Rm {
        id: u32,
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

struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}{}", self.base.trim_end_matches('/'), path);
        let mut req = self.agent.request(method, &url);
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let resp = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        match resp {
            Ok(r) => {
                let text = r.into_string().context("reading the answer")?;
                serde_json::from_str(&text).context("the answer is not JSON")
            }
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let err = &v["error"];
                let msg = err["message"].as_str().unwrap_or(text.as_str());
                let kind = err["code"].as_str().unwrap_or("error");
                match err["field"].as_str() {
                    Some(f) => bail!("HTTP {code} ({kind}): field `{f}`: {msg}"),
                    None => bail!("HTTP {code} ({kind}): {msg}"),
                }
            }
            Err(e) => Err(anyhow!("cannot reach {url}: {e}")),
        }
    }
}

/// A client plus the output mode every command prints in.
struct Ctl {
    client: Client,
    json_out: bool,
}

impl Ctl {
    fn show(&self, path: &str, text: fn(&Value)) -> Result<()> {
        let v = self.client.call("GET", path, None)?;
        if self.json_out {
            print_json(&v);
        } else {
            text(&v);
        }
        Ok(())
    }

    /// Sends a change and prints its outcome; `what` is the text-mode summary of it.
    fn write(&self, method: &str, path: &str, body: Option<Value>, what: &str) -> Result<()> {
        let r = self.client.call(method, path, body.as_ref())?;
        if self.json_out {
            print_json(&r);
            return Ok(());
        }
        println!("{what} (config generation {})", r["generation"]);
        for w in r["warnings"].as_array().into_iter().flatten() {
            println!("warning: {}", w.as_str().unwrap_or_default());
        }
        Ok(())
    }

    /// `prefix` names the object in the summary the way `status` does (`ds-4 removed`).
    fn remove(&self, collection: &str, prefix: &str, id: u32) -> Result<()> {
        let what = format!("{prefix}-{id} removed");
        self.write("DELETE", &format!("{collection}/{id}"), None, &what)
    }

    fn events(&self, mut since: i64, follow: bool) -> Result<()> {
        loop {
            let page = self
                .client
                .call("GET", &format!("/v1/events?since={since}"), None)?;
            let page = page.as_array().map(Vec::as_slice).unwrap_or_default();
            for e in page {
                since = since.max(e["id"].as_i64().unwrap_or(since));
                if self.json_out {
                    println!("{e}");
                } else {
                    println!(
                        "{:>6}  host-{} #{:<5} {:<10} {}",
                        e["id"],
                        e["master"],
                        e["seq"],
                        e["kind"].as_str().unwrap_or(""),
                        e["message"].as_str().unwrap_or("")
                    );
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
        client: Client {
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(60))
                .build(),
            base: cli.url.clone(),
            token,
        },
        json_out: cli.output == Output::Json,
    };
    match cli.cmd {
        Cmd::Status => ctl.show("/v1/state", print_status),
        Cmd::Events { since, follow } => ctl.events(since, follow),
        Cmd::Admission => ctl.show("/v1/admission", print_admission),
        Cmd::Vm(cmd) => match cmd {
            VmCmd::List => ctl.show("/v1/vms", |v| print_table(VM_COLUMNS, v)),
            VmCmd::Show { id } => ctl.show(&format!("/v1/vms/{id}"), print_vm),
            VmCmd::Add { id, fields } => {
                let mut body = vm_body(fields)?;
                body.insert("id".into(), json!(id));
                let body = Some(Value::Object(body));
                ctl.write("POST", "/v1/vms", body, &format!("vm-{id} added"))
            }
            VmCmd::Set { id, fields } => {
                let body = vm_body(fields)?;
                if body.is_empty() {
                    bail!("nothing to set: give at least one --field");
                }
                let body = Some(Value::Object(body));
                ctl.write(
                    "PUT",
                    &format!("/v1/vms/{id}"),
                    body,
                    &format!("vm-{id} updated"),
                )
            }
            VmCmd::Rm { id } => ctl.remove("/v1/vms", "vm", id),
        },
        Cmd::Host(cmd) => match cmd {
            HostCmd::List => ctl.show("/v1/hosts", |v| print_table(HOST_COLUMNS, v)),
            HostCmd::Add {
                id,
                name,
                address,
                cpu_mhz,
                memory_mb,
            } => {
                let body = json!({"id": id, "name": name, "address": address,
                    "cpu_mhz": cpu_mhz, "memory_mb": memory_mb});
                ctl.write("POST", "/v1/hosts", Some(body), &format!("host-{id} added"))
            }
            HostCmd::Rm { id } => ctl.remove("/v1/hosts", "host", id),
            HostCmd::Maintenance { action, id } => {
                let action = match action {
                    MaintenanceAction::Enter => "enter",
                    MaintenanceAction::Exit => "exit",
                };
                ctl.write(
                    "POST",
                    &format!("/v1/hosts/{id}/maintenance"),
                    Some(json!({ "action": action })),
                    &format!("host-{id} maintenance {action}"),
                )
            }
        },
        Cmd::Datastore(cmd) => match cmd {
            DsCmd::List => ctl.show("/v1/datastores", |v| print_table(DATASTORE_COLUMNS, v)),
            DsCmd::Add { id, name, mounts } => {
                let mut ms = Vec::new();
                for m in &mounts {
                    let (host, path) = cli::id_and_path(m, "HOST_ID", "host")
                        .map_err(|e| anyhow!("--mount {e}"))?;
                    ms.push(json!({"host": host, "path": path}));
                }
                let body = json!({"id": id, "name": name, "mounts": ms});
                ctl.write(
                    "POST",
                    "/v1/datastores",
                    Some(body),
                    &format!("ds-{id} added"),
                )
            }
            DsCmd::Rm { id } => ctl.remove("/v1/datastores", "ds", id),
        },
        Cmd::Config(cmd) => match cmd {
            // The settings are nested (admission policy, timings): JSON is their readable form.
            ConfigCmd::Show => ctl.show("/v1/config/ha", print_json),
            ConfigCmd::Set { key, value } => {
                let v = serde_json::from_str::<Value>(&value).unwrap_or(Value::String(value));
                let body = Some(Value::Object(Map::from_iter([(key.clone(), v)])));
                ctl.write("PUT", "/v1/config/ha", body, &format!("{key} set"))
            }
        },
        Cmd::Ha(cmd) => {
            let paused = matches!(cmd, HaCmd::Pause);
            let what = if paused { "HA paused" } else { "HA resumed" };
            let body = Some(json!({ "paused": paused }));
            ctl.write("PUT", "/v1/config/ha", body, what)
        }
    }
}

fn vm_body(mut f: VmFields) -> Result<Map<String, Value>> {
    if let Some(path) = f.definition.as_deref().and_then(|d| d.strip_prefix('@')) {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading definition file {path}"))?;
        f.definition = Some(text);
    }
    let Value::Object(mut body) = serde_json::to_value(&f)? else {
        bail!("VM fields did not serialise to an object");
    };
    // A flag not given must be absent, not null: `vm set` sends only what changes.
    body.retain(|_, v| !v.is_null());
    Ok(body)
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn opt(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `host-1` rather than `1`, so that ids of different kinds cannot be mistaken for one another.
fn named_id(prefix: &str, id: &Value) -> String {
    match id.as_u64() {
        Some(n) => format!("{prefix}-{n}"),
        None => "-".into(),
    }
}

fn flag(v: &Value, yes: &str, no: &str) -> String {
    if v.as_bool() == Some(true) { yes } else { no }.into()
}

/// The items of a JSON array rendered by `item`, or `-` for none.
fn joined(list: &Value, item: impl Fn(&Value) -> String) -> String {
    let items: Vec<String> = list.as_array().into_iter().flatten().map(item).collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// A table column: its header and how an object's cell is rendered.
type Column = (&'static str, fn(&Value) -> String);

const HOST_COLUMNS: &[Column] = &[
    ("HOST", |h| named_id("host", &h["id"])),
    ("NAME", |h| opt(&h["name"])),
    ("ADDRESS", |h| opt(&h["address"])),
    ("CPU_MHZ", |h| opt(&h["cpu_mhz"])),
    ("MEMORY_MB", |h| opt(&h["memory_mb"])),
    ("MAINTENANCE", |h| flag(&h["maintenance"], "yes", "no")),
];

const DATASTORE_COLUMNS: &[Column] = &[
    ("DATASTORE", |d| named_id("ds", &d["id"])),
    ("NAME", |d| opt(&d["name"])),
    ("MOUNTS", |d| {
        joined(&d["mounts"], |m| {
            format!("{}:{}", named_id("host", &m["host"]), opt(&m["path"]))
        })
    }),
];

const VM_COLUMNS: &[Column] = &[
    ("VM", |v| named_id("vm", &v["id"])),
    ("NAME", |v| opt(&v["name"])),
    ("HOME", |v| named_id("ds", &v["home"])),
    ("CPU_MHZ", |v| opt(&v["cpu_mhz"])),
    ("MEMORY_MB", |v| opt(&v["memory_mb"])),
    ("PRIORITY", |v| opt(&v["priority"])),
    ("RESTART_POLICY", |v| opt(&v["restart_policy"])),
    // Absent means the VM follows the cluster's default, which can change under it.
    ("ISOLATION_RESPONSE", |v| match &v["isolation_response"] {
        Value::Null => "cluster default".into(),
        other => opt(other),
    }),
    ("PROTECTED", |v| flag(&v["protected"], "yes", "no")),
    ("DEPENDS_ON", |v| {
        joined(&v["depends_on"], |d| named_id("vm", d))
    }),
    ("ANTI_AFFINITY_GROUP", |v| opt(&v["anti_affinity_group"])),
];

/// The rows of a JSON array under `columns`, each column as wide as its widest cell, so that long
/// names and mount paths neither get cut nor push the rest out of line.
fn print_table(columns: &[Column], rows: &Value) {
    let header = columns.iter().map(|(h, _)| h.to_string()).collect();
    let cells = |row| columns.iter().map(|(_, cell)| cell(row)).collect();
    let lines: Vec<Vec<String>> = std::iter::once(header)
        .chain(rows.as_array().into_iter().flatten().map(cells))
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
    for line in lines {
        let text: String = line
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}  "))
            .collect();
        // Trimmed rather than leaving the last column unpadded, because an empty last cell (no
        // MASTER mark) would still leave the padding of the one before it.
        println!("{}", text.trim_end());
    }
}

/// One VM, a field a line: the list's columns plus the definition, too long for a table.
fn print_vm(v: &Value) {
    for (header, cell) in VM_COLUMNS {
        println!("{:<20} {}", header.to_lowercase(), cell(v));
    }
    match v["definition"].as_str() {
        Some(def) if !def.is_empty() => {
            println!("definition:");
            for line in def.lines() {
                println!("  {line}");
            }
        }
        _ => println!("{:<20} -", "definition"),
    }
}

const STATUS_HOST_COLUMNS: &[Column] = &[
    ("HOST", |h| named_id("host", &h["id"])),
    ("NAME", |h| opt(&h["name"])),
    ("VERDICT", |h| opt(&h["verdict"])),
    ("MAINTENANCE", |h| flag(&h["maintenance"], "yes", "no")),
    ("MASTER", |h| flag(&h["is_master"], "*", "")),
];

const STATUS_VM_COLUMNS: &[Column] = &[
    ("VM", |v| named_id("vm", &v["id"])),
    ("NAME", |v| opt(&v["name"])),
    ("PROTECTED", |v| flag(&v["protected"], "yes", "no")),
    ("HOST", |v| named_id("host", &v["host"])),
    ("STATE", |v| opt(&v["state"])),
    ("RESTART", |v| opt(&v["restart"])),
];

fn print_status(s: &Value) {
    if s["paused"].as_bool() == Some(true) {
        println!("*** HA PAUSED: agents take no restart, isolation or fence action ***");
    }
    println!(
        "cluster {}  config generation {}",
        opt(&s["cluster"]),
        opt(&s["config_generation"])
    );
    match s["report"].as_object() {
        Some(r) => println!(
            "master host-{} (incarnation {}, epoch {}), report seq {} from ds-{}, {} ms ago, agents on config generation {}{}",
            opt(&r["master"]),
            opt(&r["master_incarnation"]),
            opt(&r["epoch"]),
            opt(&r["sequence"]),
            opt(&r["datastore"]),
            opt(&r["age_ms"]),
            opt(&r["config_generation"]),
            if r["ha_paused"].as_bool() == Some(true) {
                " (master reports HA paused)"
            } else {
                ""
            }
        ),
        None => println!("master: unknown (no report read from any datastore yet)"),
    }
    println!();
    print_table(STATUS_HOST_COLUMNS, &s["hosts"]);
    println!();
    print_table(STATUS_VM_COLUMNS, &s["vms"]);
    let bad: Vec<String> = s["datastores"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| {
            d["written_generation"].as_u64() != s["config_generation"].as_u64()
                || !d["write_error"].is_null()
        })
        .map(|d| {
            format!(
                "ds-{} has config generation {} ({})",
                opt(&d["datastore"]),
                opt(&d["written_generation"]),
                opt(&d["write_error"])
            )
        })
        .collect();
    if !bad.is_empty() {
        println!();
        for b in bad {
            println!("warning: {b}");
        }
    }
}

fn print_admission(a: &Value) {
    let verdict = match (a["enforced"].as_bool(), a["ok"].as_bool()) {
        (Some(false), _) => "not enforced (policy Disabled)",
        (_, Some(true)) => "OK: every protected VM can be restarted",
        _ => "VIOLATED: the cluster cannot restart every protected VM",
    };
    println!("admission control: {verdict}");
    println!("policy: {}", a["policy"]);
    println!("rule: {}", opt(&a["rule"]));
    println!(
        "hosts considered: {}, protected VMs: {}",
        opt(&a["hosts_considered"]),
        opt(&a["protected_vms"])
    );
    for (label, key) in [("cpu MHz", "cpu_mhz"), ("memory MB", "memory_mb")] {
        let r = &a[key];
        println!(
            "{label:<10} capacity {:>10}  failover reserve {:>10}  available {:>10}  demand {:>10}",
            opt(&r["capacity"]),
            opt(&r["reserved_for_failover"]),
            opt(&r["available"]),
            opt(&r["demand"])
        );
    }
    for p in a["problems"].as_array().into_iter().flatten() {
        println!("problem: {}", p.as_str().unwrap_or_default());
    }
}
