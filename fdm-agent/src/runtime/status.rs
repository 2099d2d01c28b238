//! The local status socket (`fdm-agent status`, maintenance commands). The metrics endpoint is
//! `metrics`.

use super::status_view::AgentStatus;
use super::{Input, Shared, lock};
use crate::core::{OperatorCommand, StatusSnapshot};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::UnboundedSender;

/// Refresh what the status socket serves (the metrics endpoint is `metrics`).
pub(super) fn publish(st: &StatusSnapshot, shared: &Mutex<Shared>) {
    let mut s = lock(shared);
    let events = s.events.iter().rev().take(20).rev();
    s.status = serde_json::to_value(AgentStatus::new(st, events)).ok();
}

/// Line protocol on a unix socket: `status` -> one JSON line; `maintenance on|off` -> `ok`.
pub(super) fn serve_status(
    path: PathBuf,
    shared: Arc<Mutex<Shared>>,
    tx: UnboundedSender<Input>,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::thread::Builder::new()
        .name("fdm-status".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut line = String::new();
                let mut reader = BufReader::new(&conn);
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let reply = match line.trim() {
                    "status" | "" => lock(&shared)
                        .status
                        .clone()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "{}".into()),
                    "maintenance on" => {
                        let _ = tx.send(Input::Command(OperatorCommand::Maintenance(true)));
                        "ok".into()
                    }
                    "maintenance off" => {
                        let _ = tx.send(Input::Command(OperatorCommand::Maintenance(false)));
                        "ok".into()
                    }
                    other => format!("error: unknown command `{other}`"),
                };
                let mut w = &conn;
                let _ = writeln!(w, "{reply}");
            }
        })?;
    Ok(())
}

/// Ask a running agent for its status (the `fdm-agent status` command).
pub fn query(path: &std::path::Path, command: &str) -> std::io::Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    writeln!(s, "{command}")?;
    let mut out = String::new();
    BufReader::new(s).read_line(&mut out)?;
    Ok(out.trim().to_string())
}
