//! The `fdm-agent` binary: run the agent, check its configuration, ask a running agent for its status,
//! or run the local demo cluster.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
// Standard output through `fdm_agent::cli`, which ends quietly on a closed pipe where `println!`
// panics.
#![warn(clippy::print_stdout)]

mod demo;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fdm_agent::cli::{LogFormat, OutputFormat, finish, print_line, print_lines};
use fdm_agent::runtime::config::{AgentConfig, ConfigError};
use fdm_agent::runtime::status_view::AgentStatus;
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
    /// How log lines (on standard error) are written.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "FDM_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (until SIGTERM: a master hands its role over first).
    Run {
        /// The agent's configuration file (docs/operations.md).
        #[arg(long, default_value = "/etc/fdm/agent.toml")]
        config: PathBuf,
    },
    /// Check a configuration file and report every error with its field.
    CheckConfig {
        /// The configuration file to check.
        #[arg(long, default_value = "/etc/fdm/agent.toml")]
        config: PathBuf,
    },
    /// Show a running agent's role, master, host verdicts, VMs and last events.
    Status {
        /// The agent's status socket (`status_socket` in its configuration).
        #[arg(long, default_value = "/run/fdm/agent.sock")]
        socket: PathBuf,
        /// Print aligned text for people or the agent's JSON for tools.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
        /// The same as `--output json` (kept for scripts written before `--output`).
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Run a local 4-host cluster, kill a host and narrate the failover with measured timings.
    ///
    /// Loopback UDP, temporary datastores, process VMs; needs no root.
    Demo {
        /// Keep the temporary directory (logs, datastores) for inspection.
        #[arg(long)]
        keep: bool,
        /// Kill the master instead of a slave.
        #[arg(long)]
        kill_master: bool,
    },
}

fn init_logs(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // journald and log files get plain text; colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_logs(cli.log_format, "info");
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
        Command::CheckConfig { config } => {
            let (lines, code) = check_config(&config);
            match print_lines(lines) {
                Ok(()) => code,
                Err(e) => finish(Err(e), "fdm-agent", 1),
            }
        }
        Command::Status {
            socket,
            output,
            json,
        } => {
            let output = if json { OutputFormat::Json } else { output };
            finish(status(&socket, output), "fdm-agent", 1)
        }
        Command::Demo { keep, kill_master } => {
            init_logs(cli.log_format, "warn");
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

/// What `check-config` prints, and its exit status: 0 for a valid file, 2 for an invalid one.
fn check_config(config: &std::path::Path) -> (Vec<String>, ExitCode) {
    let file = config.display();
    match AgentConfig::load(config) {
        Ok(c) => {
            let mut lines: Vec<String> = c
                .warnings
                .iter()
                .map(|w| format!("{file}: warning: {}: {}", w.field, w.reason))
                .collect();
            lines.push(format!(
                "{file}: ok ({}, {} datastores{})",
                c.host,
                c.datastores.len(),
                if c.warnings.is_empty() {
                    ""
                } else {
                    ", with warnings"
                }
            ));
            (lines, ExitCode::SUCCESS)
        }
        Err(ConfigError::Invalid(problems)) => (
            problems
                .iter()
                .map(|p| format!("{file}: {}: {}", p.field, p.reason))
                .collect(),
            ExitCode::from(2),
        ),
        Err(e) => (vec![e.to_string()], ExitCode::from(2)),
    }
}

fn status(socket: &std::path::Path, output: OutputFormat) -> anyhow::Result<()> {
    let raw = fdm_agent::runtime::status::query(socket, "status")
        .with_context(|| format!("is an agent running? cannot reach {}", socket.display()))?;
    if output == OutputFormat::Json {
        return print_line(raw);
    }
    if raw == "{}" {
        anyhow::bail!(
            "the agent at {} has no status yet: it is starting",
            socket.display()
        );
    }
    let status: AgentStatus = serde_json::from_str(&raw).with_context(|| {
        format!("the agent's status is not what this fdm-agent reads (another version?): {raw}")
    })?;
    print_lines(status.text())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_command_and_flag_has_help() {
        fn check(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" {
                    assert!(arg.get_help().is_some(), "{path} {id} has no help");
                }
            }
            for sub in cmd.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                assert!(sub.get_about().is_some(), "{path} has no help");
                check(sub, &path);
            }
        }
        Cli::command().debug_assert();
        check(&Cli::command(), "fdm-agent");
    }

    #[test]
    fn status_takes_output_and_the_old_json_flag() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("fdm-agent").chain(args.iter().copied()))
                .map(|c| c.command)
        };
        let Ok(Command::Status { output, json, .. }) = parse(&["status", "--output", "json"])
        else {
            panic!("status --output json parses");
        };
        assert_eq!((output, json), (OutputFormat::Json, false));
        let Ok(Command::Status { output, json, .. }) = parse(&["status", "--json"]) else {
            panic!("status --json parses");
        };
        assert_eq!((output, json), (OutputFormat::Text, true));
        let help = Cli::command()
            .find_subcommand_mut("status")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(
            help.contains("--output") && !help.contains("--json"),
            "{help}"
        );
    }
}
