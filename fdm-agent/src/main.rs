//! The `fdm-agent` binary: run the agent, check its configuration, ask a running agent for its status,
//! or run the local demo cluster.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod demo;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fdm_agent::runtime::config::{AgentConfig, ConfigError};
use fdm_agent::runtime::report::wall_clock;
use heartbeat_fs::records::ReportEvent;
use std::path::PathBuf;
use std::process::ExitCode;

/// The version, and whether this build can remove safety steps: a build with the simulator's
/// `fdm-core/fault-knobs` feature (any build or test of the whole workspace, which has the simulator)
/// must be told apart from a release build (`cargo build --release -p fdm-agent`) by anyone who
/// installs it.
const VERSION: &str = if fdm_agent::core::FAULT_KNOBS_COMPILED {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (test build: fault knobs compiled in, all off; build for production with `cargo build --release -p fdm-agent`)"
    )
} else {
    env!("CARGO_PKG_VERSION")
};

#[derive(Parser)]
#[command(
    name = "fdm-agent",
    version = VERSION,
    about = "fdm: high availability for VMs on hosts with shared datastores"
)]
struct Cli {
    /// Log format: `text` or `json`.
    #[arg(long, global = true, default_value = "text", env = "FDM_LOG_FORMAT")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (until SIGTERM: a master hands its role over first).
    Run {
        #[arg(long, default_value = "/etc/fdm/agent.toml")]
        config: PathBuf,
    },
    /// Check a configuration file and report every error with its field.
    CheckConfig {
        #[arg(long, default_value = "/etc/fdm/agent.toml")]
        config: PathBuf,
    },
    /// Show a running agent's role, master, host verdicts, VMs and last events.
    Status {
        /// The agent's status socket (`status_socket` in its configuration).
        #[arg(long, default_value = "/run/fdm/agent.sock")]
        socket: PathBuf,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a local 4-host cluster (loopback UDP, temporary datastores, process VMs), kill a host,
    /// and narrate the failover with measured timings. Needs no root.
    Demo {
        /// Keep the temporary directory (logs, datastores) for inspection.
        #[arg(long)]
        keep: bool,
        /// Kill the master instead of a slave.
        #[arg(long)]
        kill_master: bool,
    },
}

fn init_logs(format: &str, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // journald and log files get plain text; colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_logs(&cli.log_format, "info");
            let cfg = match AgentConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("fdm-agent: {}: {e}", config.display());
                    return ExitCode::from(2);
                }
            };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("fdm-agent: tokio: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(fdm_agent::runtime::run(cfg, None)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fdm-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { config } => match AgentConfig::load(&config) {
            Ok(c) => {
                for w in &c.warnings {
                    println!("{}: warning: {}: {}", config.display(), w.field, w.reason);
                }
                println!(
                    "{}: ok (host {}, {} datastores{})",
                    config.display(),
                    c.host.0,
                    c.datastores.len(),
                    if c.warnings.is_empty() {
                        ""
                    } else {
                        ", with warnings"
                    }
                );
                ExitCode::SUCCESS
            }
            Err(ConfigError::Invalid(problems)) => {
                for p in problems {
                    println!("{}: {}: {}", config.display(), p.field, p.reason);
                }
                ExitCode::from(2)
            }
            Err(e) => {
                println!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Status { socket, json } => match status(&socket, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fdm-agent: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Demo { keep, kill_master } => {
            init_logs(&cli.log_format, "warn");
            match demo::run(keep, kill_master) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("fdm-agent demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn status(socket: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let raw = fdm_agent::runtime::status::query(socket, "status")
        .with_context(|| format!("is an agent running? cannot reach {}", socket.display()))?;
    if json {
        println!("{raw}");
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&raw)?;
    println!(
        "host {}  role {}  master {}  config generation {}",
        v["host"],
        v["role"].as_str().unwrap_or("?"),
        v["master"],
        v["config_generation"]
    );
    if let Some(hosts) = v["hosts"].as_array().filter(|h| !h.is_empty()) {
        println!("\nHOST  VERDICT       NET AGE");
        for h in hosts {
            println!(
                "{:<5} {:<13} {}",
                h["host"],
                h["verdict"].as_str().unwrap_or("?"),
                h["net_age_s"]
            );
        }
    }
    if let Some(vms) = v["vms"].as_array().filter(|v| !v.is_empty()) {
        println!("\nVM    HOST  STATE     RESTART");
        for vm in vms {
            println!(
                "{:<5} {:<5} {:<9} {}",
                vm["vm"],
                vm["host"],
                vm["state"].as_str().unwrap_or("-"),
                vm["restart"].as_str().unwrap_or("")
            );
        }
    }
    // The events as the master's report carries them: a wall-clock time and the event in words.
    let events: Vec<ReportEvent> = serde_json::from_value(v["events"].clone()).unwrap_or_default();
    if !events.is_empty() {
        println!("\nlast events:");
        for e in &events {
            println!("  {}  {}", wall_clock(e.unix_ms), e.message);
        }
    }
    Ok(())
}
