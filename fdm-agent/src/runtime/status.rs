//! The local status socket (`fdm-agent status`, maintenance commands). The metrics endpoint is
//! `metrics`.

use super::{Input, Shared, lock};
use crate::core::{OperatorCommand, Role, StatusSnapshot};
use heartbeat_fs::records::ReportEvent;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::UnboundedSender;

fn role_name(r: Role) -> String {
    match r {
        Role::Slave { master } => format!("slave of {master}"),
        r => r.name().to_string(),
    }
}

/// Refresh what the status socket serves.
pub(super) fn publish(st: &StatusSnapshot, shared: &Mutex<Shared>) {
    let hosts: Vec<serde_json::Value> = st
        .hosts
        .iter()
        .map(|h| {
            serde_json::json!({
                "host": h.host.0, "verdict": h.verdict.name(), "net_age_s": h.net_age,
                "ds_age_s": h.ds_age.iter().map(|(d, a)| serde_json::json!({"datastore": d.0, "age_s": a})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let vms: Vec<serde_json::Value> = st
        .vms
        .iter()
        .map(|v| serde_json::json!({"vm": v.vm.0, "host": v.host.map(|h| h.0), "state": v.state.map(|s| s.name()), "restart": v.restart, "failed": v.failed}))
        .collect();
    let mut s = lock(shared);
    let events: Vec<&ReportEvent> = s.events.iter().rev().take(20).rev().collect();
    s.status = Some(serde_json::json!({
        "host": st.host.0, "role": role_name(st.role), "master": st.master.map(|m| m.0),
        "config_generation": st.config_generation, "hosts": hosts, "vms": vms, "events": events,
    }));
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
