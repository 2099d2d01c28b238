//! The local status socket (`fdm-agent status`, maintenance commands) and the Prometheus endpoint.

use super::status_view::AgentStatus;
use super::{Input, LoopStats, Shared, lock};
use crate::core::{Agent, OperatorCommand, StatusSnapshot, Verdict};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::UnboundedSender;

/// Refresh what the status socket and `/metrics` serve.
pub(super) fn publish(
    agent: &Agent,
    st: &StatusSnapshot,
    shared: &Mutex<Shared>,
    loop_stats: &LoopStats,
) {
    let mut s = lock(shared);
    let events = s.events.iter().rev().take(20).rev();
    s.status = serde_json::to_value(AgentStatus::new(st, events)).ok();
    let stats = agent.stats();
    let mut m = String::new();
    let role = ["starting", "candidate", "slave", "master", "isolated"];
    m.push_str("# TYPE fdm_role gauge\n");
    for r in role {
        m.push_str(&format!(
            "fdm_role{{role=\"{r}\"}} {}\n",
            u8::from(st.role.name() == r)
        ));
    }
    m.push_str("# TYPE fdm_host_verdict gauge\n");
    for h in &st.hosts {
        for v in [
            Verdict::Alive,
            Verdict::Unreachable,
            Verdict::Partitioned,
            Verdict::Isolated,
            Verdict::Dead,
        ] {
            m.push_str(&format!(
                "fdm_host_verdict{{host=\"{}\",verdict=\"{}\"}} {}\n",
                h.host.0,
                v.name(),
                u8::from(h.verdict == v)
            ));
        }
        if let Some(a) = h.net_age {
            m.push_str(&format!(
                "fdm_heartbeat_age_seconds{{host=\"{}\",channel=\"network\"}} {a:.3}\n",
                h.host.0
            ));
        }
        for (d, a) in &h.ds_age {
            if let Some(a) = a {
                m.push_str(&format!("fdm_heartbeat_age_seconds{{host=\"{}\",channel=\"datastore\",datastore=\"{}\"}} {a:.3}\n", h.host.0, d.0));
            }
        }
    }
    m.push_str(&format!(
        "# TYPE fdm_restarts_issued_total counter\nfdm_restarts_issued_total {}\n",
        stats.restarts_issued
    ));
    // Failed VMs (at their restart limit) as the master sees them: 0 on a non-master, which
    // knows no protected list.
    m.push_str(&format!(
        "# TYPE fdm_vms_failed gauge\nfdm_vms_failed {}\n",
        st.vms.iter().filter(|v| v.failed).count()
    ));
    m.push_str(&format!(
        "# TYPE fdm_restart_limits_reached_total counter\nfdm_restart_limits_reached_total {}\n",
        stats.restart_limits_reached
    ));
    m.push_str(&format!(
        "# TYPE fdm_datagrams_sent_total counter\nfdm_datagrams_sent_total {}\n",
        stats.datagrams_sent
    ));
    m.push_str(&format!(
        "# TYPE fdm_datagrams_received_total counter\nfdm_datagrams_received_total {}\n",
        stats.datagrams_received
    ));
    m.push_str("# TYPE fdm_datagrams_dropped_total counter\n");
    let mut drops: Vec<_> = stats.drops.by_reason.iter().collect();
    drops.sort_by_key(|(k, _)| format!("{k:?}"));
    for (reason, n) in drops {
        m.push_str(&format!(
            "fdm_datagrams_dropped_total{{reason=\"{reason:?}\"}} {n}\n"
        ));
    }
    m.push_str(&format!(
        "fdm_datagrams_dropped_total{{reason=\"UnknownSender\"}} {}\n",
        stats.unknown_sender
    ));
    // The receive path under load: what the kernel granted and dropped (the agent did not keep up),
    // turns that had more datagrams queued than one turn handles, and how late the timers ran.
    m.push_str(&format!(
        "# TYPE fdm_udp_receive_buffer_bytes gauge\nfdm_udp_receive_buffer_bytes {}\n",
        loop_stats.receive_buffer
    ));
    m.push_str(&format!(
        "# TYPE fdm_udp_kernel_drops_total counter\nfdm_udp_kernel_drops_total {}\n",
        loop_stats.kernel_drops.total
    ));
    m.push_str(&format!(
        "# TYPE fdm_udp_full_receive_turns_total counter\nfdm_udp_full_receive_turns_total {}\n",
        loop_stats.full_receive_turns
    ));
    m.push_str(&format!(
        "# TYPE fdm_udp_receive_errors_total counter\nfdm_udp_receive_errors_total {}\n",
        loop_stats.receive_errors
    ));
    m.push_str(&format!(
        "# TYPE fdm_timers_late_total counter\nfdm_timers_late_total {}\n",
        loop_stats.late_timers
    ));
    m.push_str(&format!(
        "# TYPE fdm_timer_latest_seconds gauge\nfdm_timer_latest_seconds {:.6}\n",
        loop_stats.latest_timer.as_secs_f64()
    ));
    m.push_str(&format!(
        "# TYPE fdm_datastore_ops_failed_total counter\nfdm_datastore_ops_failed_total {}\n",
        stats.ds_ops_failed
    ));
    m.push_str(&format!(
        "# TYPE fdm_config_rejected_total counter\nfdm_config_rejected_total {}\n",
        stats.configs_rejected
    ));
    m.push_str(&format!(
        "# TYPE fdm_config_generation gauge\nfdm_config_generation {}\n",
        st.config_generation
    ));
    s.metrics = m;
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

pub(super) async fn serve_metrics(
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let body = lock(&shared).metrics.clone();
            tokio::spawn(async move {
                let mut req = [0u8; 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut conn, &mut req).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
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
