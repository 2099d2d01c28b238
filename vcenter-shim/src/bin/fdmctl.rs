//! `fdmctl`: the operator's command line for `fdm-shim`. See `docs/shim.md`.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::time::Duration;

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

#[derive(Debug, clap::Args)]
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

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let token = match &cli.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading token file {}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let client = Client {
        agent: ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(60))
            .build(),
        base: cli.url.clone(),
        token,
    };
    let json_out = cli.output == Output::Json;
    match cli.cmd {
        Cmd::Status => {
            let s = client.call("GET", "/v1/state", None)?;
            if json_out {
                print_json(&s);
            } else {
                print_status(&s);
            }
        }
        Cmd::Events { since, follow } => {
            let mut since = since;
            loop {
                let evs = client.call("GET", &format!("/v1/events?since={since}"), None)?;
                for e in evs.as_array().into_iter().flatten() {
                    since = since.max(e["id"].as_i64().unwrap_or(since));
                    if json_out {
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
                if !follow {
                    break;
                }
                // A CLI polling loop, not the sans-IO core the ban protects.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Cmd::Admission => {
            let a = client.call("GET", "/v1/admission", None)?;
            if json_out {
                print_json(&a);
            } else {
                print_admission(&a);
            }
        }
        Cmd::Vm(cmd) => match cmd {
            VmCmd::List => show(&client.call("GET", "/v1/vms", None)?, json_out),
            VmCmd::Show { id } => show(
                &client.call("GET", &format!("/v1/vms/{id}"), None)?,
                json_out,
            ),
            VmCmd::Add { id, fields } => {
                let mut body = vm_body(fields)?;
                body.insert("id".into(), json!(id));
                let r = client.call("POST", "/v1/vms", Some(&Value::Object(body)))?;
                report_write(&r, json_out, &format!("vm-{id} added"));
            }
            VmCmd::Set { id, fields } => {
                let body = vm_body(fields)?;
                if body.is_empty() {
                    bail!("nothing to set: give at least one --field");
                }
                let r = client.call("PUT", &format!("/v1/vms/{id}"), Some(&Value::Object(body)))?;
                report_write(&r, json_out, &format!("vm-{id} updated"));
            }
            VmCmd::Rm { id } => {
                let r = client.call("DELETE", &format!("/v1/vms/{id}"), None)?;
                report_write(&r, json_out, &format!("vm-{id} removed"));
            }
        },
        Cmd::Host(cmd) => match cmd {
            HostCmd::List => show(&client.call("GET", "/v1/hosts", None)?, json_out),
            HostCmd::Add {
                id,
                name,
                address,
                cpu_mhz,
                memory_mb,
            } => {
                let body = json!({"id": id, "name": name, "address": address,
                    "cpu_mhz": cpu_mhz, "memory_mb": memory_mb});
                let r = client.call("POST", "/v1/hosts", Some(&body))?;
                report_write(&r, json_out, &format!("host-{id} added"));
            }
            HostCmd::Rm { id } => {
                let r = client.call("DELETE", &format!("/v1/hosts/{id}"), None)?;
                report_write(&r, json_out, &format!("host-{id} removed"));
            }
            HostCmd::Maintenance { action, id } => {
                let action = match action {
                    MaintenanceAction::Enter => "enter",
                    MaintenanceAction::Exit => "exit",
                };
                let r = client.call(
                    "POST",
                    &format!("/v1/hosts/{id}/maintenance"),
                    Some(&json!({ "action": action })),
                )?;
                report_write(&r, json_out, &format!("host-{id} maintenance {action}"));
            }
        },
        Cmd::Datastore(cmd) => match cmd {
            DsCmd::List => show(&client.call("GET", "/v1/datastores", None)?, json_out),
            DsCmd::Add { id, name, mounts } => {
                let mut ms = Vec::new();
                for m in &mounts {
                    let (h, p) = m
                        .split_once('=')
                        .ok_or_else(|| anyhow!("--mount {m:?}: expected HOST_ID=PATH"))?;
                    let h: u32 = h
                        .parse()
                        .map_err(|_| anyhow!("--mount {m:?}: {h:?} is not a host id"))?;
                    ms.push(json!({"host": h, "path": p}));
                }
                let body = json!({"id": id, "name": name, "mounts": ms});
                let r = client.call("POST", "/v1/datastores", Some(&body))?;
                report_write(&r, json_out, &format!("ds-{id} added"));
            }
            DsCmd::Rm { id } => {
                let r = client.call("DELETE", &format!("/v1/datastores/{id}"), None)?;
                report_write(&r, json_out, &format!("ds-{id} removed"));
            }
        },
        Cmd::Config(cmd) => match cmd {
            ConfigCmd::Show => show(&client.call("GET", "/v1/config/ha", None)?, json_out),
            ConfigCmd::Set { key, value } => {
                let v = serde_json::from_str::<Value>(&value).unwrap_or(Value::String(value));
                let mut body = Map::new();
                body.insert(key.clone(), v);
                let r = client.call("PUT", "/v1/config/ha", Some(&Value::Object(body)))?;
                report_write(&r, json_out, &format!("{key} set"));
            }
        },
        Cmd::Ha(cmd) => {
            let paused = matches!(cmd, HaCmd::Pause);
            let r = client.call("PUT", "/v1/config/ha", Some(&json!({ "paused": paused })))?;
            let what = if paused { "HA paused" } else { "HA resumed" };
            report_write(&r, json_out, what);
        }
    }
    Ok(())
}

fn vm_body(f: VmFields) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    if let Some(v) = f.name {
        put("name", json!(v));
    }
    if let Some(v) = f.home {
        put("home", json!(v));
    }
    if let Some(v) = f.definition {
        let text = match v.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading definition file {path}"))?,
            None => v,
        };
        put("definition", json!(text));
    }
    if let Some(v) = f.cpu_mhz {
        put("cpu_mhz", json!(v));
    }
    if let Some(v) = f.memory_mb {
        put("memory_mb", json!(v));
    }
    if let Some(v) = f.priority {
        put("priority", json!(v));
    }
    if let Some(v) = f.isolation_response {
        put("isolation_response", json!(v));
    }
    if let Some(v) = f.restart_policy {
        put("restart_policy", json!(v));
    }
    if let Some(v) = f.depends_on {
        put("depends_on", json!(v));
    }
    if let Some(v) = f.anti_affinity_group {
        put("anti_affinity_group", json!(v));
    }
    if let Some(v) = f.protected {
        put("protected", json!(v));
    }
    Ok(m)
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn show(v: &Value, _json_out: bool) {
    // Lists and objects have no better text form than indented JSON.
    print_json(v);
}

fn report_write(r: &Value, json_out: bool, what: &str) {
    if json_out {
        print_json(r);
        return;
    }
    println!("{what} (config generation {})", r["generation"]);
    for w in r["warnings"].as_array().into_iter().flatten() {
        println!("warning: {}", w.as_str().unwrap_or_default());
    }
}

fn opt(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

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
    println!(
        "{:<10} {:<20} {:<12} {:<11} {:<6}",
        "HOST", "NAME", "VERDICT", "MAINTENANCE", "MASTER"
    );
    for h in s["hosts"].as_array().into_iter().flatten() {
        println!(
            "{:<10} {:<20} {:<12} {:<11} {:<6}",
            format!("host-{}", opt(&h["id"])),
            opt(&h["name"]),
            opt(&h["verdict"]),
            if h["maintenance"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            if h["is_master"].as_bool() == Some(true) {
                "*"
            } else {
                ""
            }
        );
    }
    println!();
    println!(
        "{:<10} {:<20} {:<9} {:<10} {:<10} {:<8}",
        "VM", "NAME", "PROTECTED", "HOST", "STATE", "RESTART"
    );
    for v in s["vms"].as_array().into_iter().flatten() {
        let host = match v["host"].as_u64() {
            Some(h) => format!("host-{h}"),
            None => "-".into(),
        };
        println!(
            "{:<10} {:<20} {:<9} {:<10} {:<10} {:<8}",
            format!("vm-{}", opt(&v["id"])),
            opt(&v["name"]),
            if v["protected"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            host,
            opt(&v["state"]),
            opt(&v["restart"])
        );
    }
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
